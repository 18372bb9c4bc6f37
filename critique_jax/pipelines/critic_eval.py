"""The `eval_critic` stage: how good a critic is as a verifier and as a guide for refinement.

    python -m critique_jax.train --config configs/eval_critic_demo.yaml

Eval records (`LabelledSolution`): question, solution, answer (gold), solution_is_correct
(the verifier's label), optionally first_error_step (known for controlled error insertion)
and level. They come from a JSONL file (`eval_set.path`; collect_critiques' solutions.jsonl
is one) or are built from `eval_set.problems`: in the demo world each problem's reference
solution plus `wrong_per_problem` solutions with an injected error; elsewhere (GSM8K, MATH)
actor samples labelled by the verifier.

Metrics (results.json in run_dir; per-record critiques, `EvalCritique`, in critiques.jsonl):
- verdict accuracy (the final verdict equals the label; an unparseable critique counts as
  wrong), precision and recall of the verdict "Wrong", the unparseable rate, by level too;
- first-error-step accuracy on records whose first error is known;
- the closed loop: the actor refines M times with every critique whose verdict is not
  "Correct" (a solution the critic passes stays as it is); closed-loop accuracy against the
  initial accuracy, the share of wrong solutions fixed and of correct ones broken;
- generated tokens per question (critique, refinement), to compare critics at equal compute.

`evaluate_critic` is the in-memory API (the demo and the RCO evaluation call it); the stage
adds chunking and record-by-record resume like collect_critiques.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from critique_jax.config import ConfigError, MeshConfig, ModelSpec, StageConfig
from critique_jax.data.critique_format import check_agreement, verbatim_quotes
from critique_jax.data.loaders import DataError, read_records
from critique_jax.data.records import JsonRecord, Problem
from critique_jax.data.sources import ProblemSource, load_problems
from critique_jax.pipelines.critique_data import (
    LabelledSolution,
    SolutionRecord,
    chunks,
    demo_insertions,
    reference_solution,
    refine_verified,
    sample_solutions,
)
from critique_jax.pipelines.overlong import Skips, fit_questions, with_skips
from critique_jax.pipelines.roles import Agent, Critic, CriticSpec, parsed, stage_roles
from critique_jax.pipelines.seeds import salted
from critique_jax.runio import (
    RecordLog,
    atomic_write_json,
    atomic_write_jsonl,
    read_jsonl,
    this_process_writes,
)
from critique_jax.sampling import SamplingParams
from critique_jax.sharding import mesh_from_config

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("question", "solution", "answer", "solution_is_correct")


@dataclass
class EvalSetConfig:
    path: str = ""  # JSONL of eval records; empty: build from `problems` (run_dir/eval_set.jsonl)
    problems: ProblemSource = field(default_factory=ProblemSource)
    wrong_per_problem: int = 1  # demo world: injected-error solutions beside each reference
    samples_per_question: int = 2  # other sources: actor samples per question
    sampling: SamplingParams = SamplingParams(max_new_tokens=512, temperature=0.7)


@dataclass
class Config(StageConfig):
    stage: str = "eval_critic"
    run_dir: str = "runs/eval_critic"
    critic: CriticSpec = field(default_factory=lambda: CriticSpec(oracle="demo"))
    actor: ModelSpec | None = None  # refines in the closed loop; samples non-demo eval sets
    eval_set: EvalSetConfig = field(default_factory=EvalSetConfig)
    critique_sampling: SamplingParams = SamplingParams(max_new_tokens=1024, temperature=0.0)
    refinements: int = 0  # M refinements per critique in the closed loop (it needs `actor`)
    refine_sampling: SamplingParams = SamplingParams(max_new_tokens=512, temperature=0.7)
    chunk_size: int = 128  # records per chunk: the unit of batching and of resume
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        problems = []
        builds = not self.eval_set.path
        if self.refinements < 0 or self.chunk_size < 1:
            problems.append("refinements must be >= 0 and chunk_size >= 1")
        if self.refinements > 0 and self.actor is None:
            problems.append("the closed loop (refinements > 0) needs an `actor:` model")
        if builds and self.eval_set.problems.kind != "demo" and self.actor is None:
            problems.append(
                "building a non-demo eval set samples the actor: set `actor:` "
                "or give `eval_set.path`"
            )
        if self.critic.oracle is not None and self.eval_set.problems.kind != "demo":
            problems.append(
                f"critic.oracle: {self.critic.oracle} needs eval_set.problems.kind: "
                "demo (it checks solutions against the demo world's problems)"
            )
        if problems:
            raise ConfigError("eval_critic: " + "; ".join(problems))


# --------------------------------------------------------------------------- eval sets


def build_demo_eval_set(
    problems: Sequence[Problem], wrong_per_problem: int = 1, seed: int = 0
) -> list[SolutionRecord]:
    """Per demo problem: its reference solution (correct) and `wrong_per_problem` solutions
    with an arithmetic slip at a random step (first_error_step known)."""
    records = []
    for p in problems:
        records.append(reference_solution(p))
        records += demo_insertions([p], wrong_per_problem, seed)
    return records


def build_sampled_eval_set(
    actor: Agent, problems: Sequence[Problem], samples_per_question: int, sp: SamplingParams
) -> list[SolutionRecord]:
    """Distinct non-empty actor samples (temperature > 0 for several per question), labelled
    by the verifier; the first error step is unknown."""
    seen, records = set(), []
    for r in sample_solutions(actor, problems, samples_per_question, sp):
        key = (r.problem_id, r.solution.strip())
        if r.solution.strip() and key not in seen:
            seen.add(key)
            records.append(r)
    return records


def read_eval_set(path: str | Path) -> list[LabelledSolution]:
    """Eval records from a JSONL/JSON file (an id defaults to the record's index); a record
    without the required fields is named."""
    records = []
    for i, (where, r) in enumerate(read_records(path)):
        missing = [f for f in REQUIRED_FIELDS if f not in r]
        if missing or not isinstance(r["solution_is_correct"], bool):
            raise DataError(
                f"{where}: an eval record needs {list(REQUIRED_FIELDS)} with a bool "
                f"solution_is_correct (missing: {missing}). Fix: write records like "
                "collect_critiques' solutions.jsonl"
            )
        records.append(LabelledSolution.from_json({**r, "id": str(r.get("id", i))}))
    return records


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvalCritique(JsonRecord):
    """A line of critiques.jsonl: the critic's critique of one eval record, what it parses
    to, how many of its step quotes and checks hold, and the verified closed-loop
    refinements guided by it."""

    id: str  # the eval record's
    critique: str
    parseable: bool
    verdict: bool | None  # the parsed final verdict; None when unparseable
    first_wrong_step: int | None
    quoted_steps: int
    verbatim_quotes: int  # quoted steps that are the solution's own
    checked_steps: int
    agreeing_checks: int  # checked steps whose verdict follows from the check
    tokens: int
    refinements: tuple[bool, ...] = ()  # whether each refinement verifies
    refine_tokens: int = 0

    @classmethod
    def from_json(cls, r: Mapping[str, Any]) -> EvalCritique:
        """Lines written before quotes and checks were counted lack the counts: 0."""
        counts = ("quoted_steps", "verbatim_quotes", "checked_steps", "agreeing_checks")
        return super().from_json({**dict.fromkeys(counts, 0), **r})


def critique_outputs(
    critic: Critic, records: Sequence[LabelledSolution], sp: SamplingParams
) -> list[EvalCritique]:
    """One critique per record (no reference answer: this is the critic at test time)."""
    if not records:
        return []
    outs = critic.critique(
        [r.question for r in records], [r.solution for r in records], sp.replace(n=1)
    )
    results = []
    for r, (c, *_) in zip(records, outs, strict=True):
        crit = parsed(c)
        quoted, verbatim = verbatim_quotes(crit, r.solution)
        checked, agreeing = check_agreement(crit)
        results.append(
            EvalCritique(
                id=r.id,
                critique=c.text or "",
                parseable=crit.parseable,
                verdict=crit.final_correct if crit.parseable else None,
                first_wrong_step=crit.first_wrong_step,
                quoted_steps=quoted,
                verbatim_quotes=verbatim,
                checked_steps=checked,
                agreeing_checks=agreeing,
                tokens=c.num_tokens,
            )
        )
    return results


def closed_loop(
    actor: Agent,
    records: Sequence[LabelledSolution],
    outputs: Sequence[EvalCritique],
    m: int,
    sp: SamplingParams,
) -> list[EvalCritique]:
    """The outputs with their verified refinements: the actor refines m times with each
    critique that does not say Correct."""
    pairs = zip(records, outputs, strict=True)
    todo = [(i, r) for i, (r, o) in enumerate(pairs) if o.verdict is not True]
    judged = refine_verified(
        actor,
        [r.question for _, r in todo],
        [r.solution for _, r in todo],
        [outputs[i].critique for i, _ in todo],
        [r.gold for _, r in todo],
        sp.replace(n=m),
    )
    refined = list(outputs)
    for (i, _), outs in zip(todo, judged, strict=True):
        refinements = tuple(j.correct for j in outs)
        tokens = sum(j.tokens for j in outs)
        refined[i] = replace(outputs[i], refinements=refinements, refine_tokens=tokens)
    return refined


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def critic_metrics(
    records: Sequence[LabelledSolution], outputs: Sequence[EvalCritique], closed: bool = False
) -> dict[str, Any]:
    """Verdict, first-error and (with `closed`) closed-loop metrics; outputs match records by
    id. "Wrong" is the positive class of precision/recall, as a verifier flags errors."""
    by_id = {o.id: o for o in outputs}
    missing = [r.id for r in records if r.id not in by_id]
    if missing:
        raise ValueError(f"no critique for eval records {missing[:5]}; rerun the evaluation")
    pairs = [(r, by_id[r.id]) for r in records]
    labels = [r.solution_is_correct for r, _ in pairs]
    hits = [o.verdict == r.solution_is_correct for r, o in pairs]
    flagged = [o.verdict is False for _, o in pairs]
    true_flags = sum(f and not lab for f, lab in zip(flagged, labels, strict=True))
    known = [(r, o) for r, o in pairs if r.first_error_step is not None]
    levels: dict[str, list[bool]] = defaultdict(list)
    for (r, _), hit in zip(pairs, hits, strict=True):
        levels[str(r.level)].append(hit)
    per_label = [
        [h for h, lab in zip(hits, labels, strict=True) if lab is want] for want in (True, False)
    ]
    n = len(pairs)
    quoted = sum(o.quoted_steps for _, o in pairs)
    checked = sum(o.checked_steps for _, o in pairs)
    metrics: dict[str, Any] = {
        "n": n,
        "base_rate_correct": _mean(labels),
        "verdict_accuracy": _mean(hits),
        # the mean of the accuracies on right and on wrong solutions: 0.5 for any verdict
        # that ignores the solution, whatever the labels' balance
        "balanced_accuracy": _mean([_mean(h) for h in per_label]) if all(per_label) else None,
        "verdict_accuracy_parseable": _mean(
            [h for h, (_, o) in zip(hits, pairs, strict=True) if o.parseable]
        ),
        "unparseable_rate": _mean([not o.parseable for _, o in pairs]),
        "wrong_precision": true_flags / sum(flagged) if any(flagged) else None,
        "wrong_recall": true_flags / labels.count(False) if False in labels else None,
        # the share of quoted steps that are the solution's own: a critic must read y0
        "quote_fidelity": sum(o.verbatim_quotes for _, o in pairs) / quoted if quoted else None,
        # reason_first: the share of checked steps whose verdict follows from the check
        "check_agreement": (
            sum(o.agreeing_checks for _, o in pairs) / checked if checked else None
        ),
        "first_error": {
            "n": len(known),
            "accuracy": _mean([o.first_wrong_step == r.first_error_step for r, o in known]),
        },
        "by_level": {
            lv: {"n": len(h), "verdict_accuracy": _mean(h)} for lv, h in sorted(levels.items())
        },
        "tokens": {
            "critique_per_question": _mean([o.tokens for _, o in pairs]),
            "refine_per_question": _mean([o.refine_tokens for _, o in pairs]),
        },
    }
    if closed:
        metrics["closed_loop"] = _closed_loop_metrics(pairs)
    return metrics


def _closed_loop_metrics(
    pairs: Sequence[tuple[LabelledSolution, EvalCritique]],
) -> dict[str, Any]:
    final = []
    for r, o in pairs:
        if o.verdict is True:
            final.append(float(r.solution_is_correct))
        elif o.refinements:
            final.append(sum(o.refinements) / len(o.refinements))
        else:
            raise ValueError(
                f"record {r.id}: its critique does not say Correct but it has "
                "no refinements; run the closed loop (refinements > 0) first"
            )
    labels = [r.solution_is_correct for r, _ in pairs]
    initial, accuracy = _mean([float(x) for x in labels]), _mean(final)
    return {
        "initial_accuracy": initial,
        "accuracy": accuracy,
        "gain": None if accuracy is None else accuracy - initial,
        "refined_share": _mean([o.verdict is not True for _, o in pairs]),
        "wrong_fixed": _mean([f for f, lab in zip(final, labels, strict=True) if not lab]),
        "correct_broken": _mean([1 - f for f, lab in zip(final, labels, strict=True) if lab]),
    }


def evaluate_critic(
    critic: Critic,
    records: Sequence[LabelledSolution],
    critique_sp: SamplingParams,
    actor: Agent | None = None,
    refinements: int = 0,
    refine_sp: SamplingParams | None = None,
) -> tuple[list[EvalCritique], dict[str, Any]]:
    """(per-record outputs, metrics) in memory; the closed loop runs when `refinements` > 0
    (it needs the actor and refine_sp)."""
    outputs = critique_outputs(critic, records, critique_sp)
    if refinements > 0:
        if actor is None or refine_sp is None:
            raise ValueError("the closed loop needs the actor and refine_sp")
        outputs = closed_loop(actor, records, outputs, refinements, refine_sp)
    return outputs, critic_metrics(records, outputs, closed=refinements > 0)


# --------------------------------------------------------------------------- the stage


def evaluate(
    cfg: Config,
    records: Sequence[LabelledSolution],
    critic: Critic,
    actor: Agent | None,
    skips: Skips | None = None,
) -> dict[str, Any]:
    """Critique (and refine) chunk by chunk, skipping chunks whose outputs are on disk, then
    write results.json from all outputs (with `skips`, the over-long questions left out)."""
    run_dir = Path(cfg.run_dir)
    out_log = RecordLog(run_dir / "critiques.jsonl")
    try:
        for index, chunk in enumerate(chunks(records, cfg.chunk_size)):
            if all(r.id in out_log.done for r in chunk):
                continue
            sp = salted(cfg.critique_sampling, cfg.seed, "critique", index)
            outputs = critique_outputs(critic, chunk, sp)
            if cfg.refinements > 0:
                assert actor is not None
                sp = salted(cfg.refine_sampling, cfg.seed, "refine", index)
                outputs = closed_loop(actor, chunk, outputs, cfg.refinements, sp)
            out_log.write_all(o.to_json() for o in outputs)
            log.info("chunk %d: %d critiques", index, len(outputs))
    finally:
        out_log.close()
    outputs = [EvalCritique.from_json(r) for r in read_jsonl(run_dir / "critiques.jsonl")]
    results = with_skips(critic_metrics(records, outputs, closed=cfg.refinements > 0), skips)
    if this_process_writes():
        atomic_write_json(run_dir / "results.json", results)
    return results


def load_eval_set(
    cfg: Config, problems: Sequence[Problem], actor: Agent | None
) -> Sequence[LabelledSolution]:
    """The configured eval set; a built one is saved once as run_dir/eval_set.jsonl and
    reused by reruns."""
    if cfg.eval_set.path:
        return read_eval_set(cfg.eval_set.path)
    path = Path(cfg.run_dir) / "eval_set.jsonl"
    if path.exists():
        return read_eval_set(path)
    es = cfg.eval_set
    if es.problems.kind == "demo":
        records = build_demo_eval_set(problems, es.wrong_per_problem, cfg.seed)
    else:
        assert actor is not None
        sp = salted(es.sampling, cfg.seed, "eval_set")
        records = build_sampled_eval_set(actor, problems, es.samples_per_question, sp)
    if this_process_writes():
        atomic_write_jsonl(path, (r.to_json() for r in records))
    return records


def run(cfg: Config) -> dict[str, Any]:
    es = cfg.eval_set
    needs_problems = not es.path or cfg.critic.oracle is not None
    problems = load_problems(es.problems) if needs_problems else []
    actor, critic = stage_roles(cfg, cfg.actor, cfg.critic, problems, mesh_from_config(cfg.mesh))
    assert critic is not None
    skips: Skips = {}
    if actor is not None and not es.path:  # the eval set is built from the actor's answers
        problems, skips = fit_questions(actor, problems, es.problems, "eval_set.problems")
    records = load_eval_set(cfg, problems, actor)
    if not records:
        raise ValueError("the eval set is empty: check eval_set.path or eval_set.problems")
    if cfg.critic.oracle is not None:
        known = {p.question for p in problems}
        unknown = [r.id for r in records if r.question not in known]
        if unknown:
            raise DataError(
                f"eval records {unknown[:5]} are not questions of eval_set.problems, "
                "which the oracle critic checks against. Fix: give the problems the "
                "eval set was built from (same demo size and seed)"
            )
    return evaluate(cfg, records, critic, actor, skips)
