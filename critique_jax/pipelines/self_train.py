"""The `self_train` stage: critique-in-the-loop self-training of the actor, and its baseline.

    python -m critique_jax.train --config configs/self_train_demo.yaml

Iteration 0 (shared by every arm): SFT of the base actor on the training questions'
reference solutions plus refinement examples (x, y0, c -> y'), so the actor can follow
critiques. On the demo world the refinement examples are built from `inject_error` flawed
solutions, their `templated_critique` and the reference solution; elsewhere they come from a
critique dataset file (`refine_data`: refine-format records or a MathCritique release file).
`sft0.steps: 0` skips the SFT and starts from the given actor (an instruct model).

Iteration t >= 1, per arm, with the actor of iteration t-1:
1. sample K solutions per training question (T ~ 0.7), verify them against the gold answer,
   keep the correct ones (exact duplicates dropped);
2. `critique` arm: critique every wrong sample, refine it K' times, keep the correct
   refinements that show their work (`shows_work`), at most r per critique;
3. fine-tune on the kept set (x -> y). `init: iteration0` (default) starts every iteration
   from the iteration-0 weights, as in ReST-EM: the data of iteration t comes from the actor of
   iteration t-1, but errors do not compound through repeated fine-tuning of one model.
   `init: previous` continues from the iteration t-1 weights instead;
4. evaluate on the test set: greedy accuracy overall and by difficulty, pass@K, tokens per
   question, and, of the kept data, the share from hard questions. An arm that kept nothing
   is its starting actor, and evaluation is seeded, so that actor's results are reused.

The vanilla baseline (rejection sampling) is the same code path with the critic off: the
`vanilla` arm runs whenever `critic` is null, and beside the `critique` arm when `baseline` is
true. Both arms of an iteration draw the same sampler seeds, so at iteration 1 they start from
the same samples and differ only by the critic's refinements.

Shortcut guard: a kept refinement must have at least
max(min_steps, ceil(min_step_ratio * reference steps)) reasoning steps (`work_steps`: the
solution's steps once lines that only state the final answer are removed), so a refinement
that just copies an answer out of a critique is not learned. Process check (`recheck`, off by
default as in the paper): the critic critiques each kept refinement again and it is dropped
when the critique finds a wrong step, because a refinement can reach the right answer through
a wrong step (on the demo, most correct refinements did) and answer-only verification would
teach that step.

Files: run_dir/iter_0/{train,hf,results.json}; run_dir/<arm>/iter_<t>/{collect.jsonl,
collect_stats.json, kept.jsonl, train, hf, results.json}; run_dir/comparison.{json,md}.
An iteration with results.json is finished and skipped when the stage reruns; collect.jsonl
resumes chunk by chunk, train/ holds the fine-tune checkpoints, which resume.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from critique_jax.checkpoints.hf import save_hf
from critique_jax.config import (
    ConfigError,
    MeshConfig,
    ModelSpec,
    OptimConfig,
    StageConfig,
    TrainConfig,
)
from critique_jax.data.critique_format import CritiqueFormat, split_steps
from critique_jax.data.demo_world import inject_error, templated_critique
from critique_jax.data.prompts import refine_messages, solve_messages
from critique_jax.data.records import JsonRecord, Problem
from critique_jax.data.sources import ProblemSource, load_problems
from critique_jax.pipelines.finetune import (
    Example,
    SFTData,
    examples_from_records,
    finetune,
    load_sft_records,
)
from critique_jax.pipelines.loading import LoadedModel, load_model
from critique_jax.pipelines.overlong import check_oracle, fit_questions, with_skips
from critique_jax.pipelines.reporting import difficulty, mean_by_level, sorted_levels, table_cell
from critique_jax.pipelines.roles import (
    Agent,
    Critic,
    CriticSpec,
    Judged,
    make_agent,
    parsed,
    refine,
    solve,
    stage_roles,
    with_demo_tokenizer,
)
from critique_jax.pipelines.seeds import salted
from critique_jax.runio import (
    RecordLog,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    read_jsonl,
    this_process_writes,
)
from critique_jax.sampling import SamplingParams
from critique_jax.sharding import mesh_from_config

log = logging.getLogger(__name__)

INITS = ("iteration0", "previous")


@dataclass
class Config(StageConfig):
    stage: str = "self_train"
    run_dir: str = "runs/self_train"
    actor: ModelSpec = field(default_factory=lambda: ModelSpec(preset="demo"))
    critic: CriticSpec | None = field(default_factory=lambda: CriticSpec(oracle="demo"))
    baseline: bool = True  # also run the vanilla arm, for the comparison table
    train_problems: ProblemSource = field(
        default_factory=lambda: ProblemSource(split="train", seed=1, size=200)
    )
    test_problems: ProblemSource = field(default_factory=lambda: ProblemSource(seed=2, size=100))
    refine_data: SFTData | None = None  # iteration-0 refinement examples (non-demo problems)
    iterations: int = 2  # 0: iteration 0 alone (a rerun with more continues from it)
    collect_problems: int | None = None  # iterations >= 1 sample this prefix of train_problems
    init: str = "iteration0"  # iteration0 | previous
    samples: int = 4  # K
    refinements: int = 2  # K' per critique
    max_per_critique: int = 1  # r
    # Process check: critique each correct refinement again and keep it only when the critic
    # finds no wrong step. Answer-only verification keeps refinements whose steps are wrong
    # but reach the right answer, and training on them teaches the wrong steps.
    recheck: bool = False
    min_steps: int = 1
    min_step_ratio: float = 0.5
    hard_min_level: int = 3  # difficulty >= this counts as hard
    eval_samples: int = 4  # pass@K on the test set
    chunk_size: int = 64
    sample: SamplingParams = SamplingParams(max_new_tokens=256, temperature=0.7)
    critique: SamplingParams = SamplingParams(max_new_tokens=512, temperature=0.0)
    refine: SamplingParams = SamplingParams(max_new_tokens=256, temperature=0.7)
    eval: SamplingParams = SamplingParams(max_new_tokens=256, temperature=0.0)
    sft0: TrainConfig = field(default_factory=TrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        check_oracle(self.critic, self.train_problems, "train_problems")
        if self.init not in INITS:
            raise ConfigError(f"init {self.init!r}: choose one of {list(INITS)}")
        if min(self.samples, self.refinements, self.max_per_critique, self.chunk_size) < 1:
            raise ConfigError("samples, refinements, max_per_critique and chunk_size must be >= 1")
        if self.iterations < 0 or self.eval_samples < 0:
            raise ConfigError("iterations and eval_samples must be >= 0")
        if self.collect_problems is not None and self.collect_problems < 1:
            raise ConfigError("collect_problems must be >= 1, or null for all training questions")
        if self.refine_data is not None and self.refine_data.format not in (
            "refine",
            "mathcritique-refine",
        ):
            raise ConfigError(
                f"refine_data.format {self.refine_data.format!r}: use 'refine' "
                "(question, solution, critique, refinement records) or "
                "'mathcritique-refine' (a MathCritique release file)"
            )


# --------------------------------------------------------------------------- shortcut guard

_ANSWER_ONLY = re.compile(
    r"^\W*(?:(?:so|therefore|thus|hence),?\s+)?(?:the\s+)?(?:final\s+)?answer\s+is\b.*$|^\s*####",
    re.IGNORECASE,
)


def work_steps(solution: str) -> int:
    """Reasoning steps of a solution: `split_steps` after dropping the lines that only state
    the final answer ("The answer is 18.", "#### 18")."""
    body = "\n".join(ln for ln in solution.splitlines() if not _ANSWER_ONLY.match(ln))
    return len(split_steps(body))


def required_steps(problem: Problem, min_steps: int, ratio: float) -> int:
    reference = work_steps(problem.solution) if problem.solution else 0
    return max(min_steps, math.ceil(ratio * reference))


def shows_work(solution: str, problem: Problem, min_steps: int, ratio: float) -> bool:
    """The shortcut guard on refinements (see the module docstring)."""
    return work_steps(solution) >= required_steps(problem, min_steps, ratio)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class KeptItem(JsonRecord):
    """A verified solution kept for fine-tuning (x -> y): a line of kept.jsonl. A refinement
    also carries the wrong sample and the critique it was refined from."""

    id: str
    problem_id: str
    question: str
    solution: str
    answer: str  # the gold answer
    pred: str | None  # the answer extracted from `solution`
    level: int | None
    origin: str  # sample | refinement
    wrong_solution: str | None = None
    critique: str | None = None

    @classmethod
    def of(cls, p: Problem, judged: Judged, item_id: str, origin: str) -> KeptItem:
        level = difficulty(p)
        return cls(item_id, p.id, p.question, judged.text, p.answer, judged.answer, level, origin)

    def to_json(self) -> dict[str, Any]:
        extra = ("wrong_solution", "critique")  # a sample's record has neither key
        return {k: v for k, v in asdict(self).items() if v is not None or k not in extra}


@dataclass(frozen=True)
class QuestionRecord:
    """What collection did with one training question: a line of collect.jsonl. `trace` is
    its first critiqued wrong sample with the critique and the refinements, to read what the
    critic and the refiner did."""

    id: str
    level: int | None
    samples: int
    correct_samples: int
    critiqued: int
    correct_refinements: int
    shortcuts: int
    rechecked_out: int  # correct refinements the process check dropped
    kept: tuple[KeptItem, ...]
    trace: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["kept"] = [it.to_json() for it in self.kept]
        return out if self.trace is not None else {k: v for k, v in out.items() if k != "trace"}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> QuestionRecord:
        kept = tuple(KeptItem.from_json(it) for it in record["kept"])
        return cls(**{**record, "kept": kept})


# --------------------------------------------------------------------------- collection

TALLIES = ("critiqued", "correct_refinements", "shortcuts", "rechecked_out")


def collect_records(
    actor: Agent, critic: Critic | None, problems: Sequence[Problem], cfg: Config, salt: Any = 0
) -> list[QuestionRecord]:
    """Per question: the kept items (each verified correct, each text once), the counts, and
    its trace. Batched: one solve call with fan-out K, one critique call, one refine call
    with fan-out K'."""
    questions = [p.question for p in problems]
    samples = solve(actor, questions, salted(cfg.sample, "sample", salt).replace(n=cfg.samples))
    judged = [[Judged.of(c, p.answer) for c in cs] for cs, p in zip(samples, problems, strict=True)]
    kept: list[list[KeptItem]] = [[] for _ in problems]
    seen: list[set[str]] = [set() for _ in problems]
    wrong = []  # (question index, sample index, text)
    for i, (p, js) in enumerate(zip(problems, judged, strict=True)):
        for j, jd in enumerate(js):
            if not jd.correct:
                wrong.append((i, j, jd.text))
            elif jd.text.strip() not in seen[i]:
                seen[i].add(jd.text.strip())
                kept[i].append(KeptItem.of(p, jd, f"{p.id}/s{j}", "sample"))
    tallies = [dict.fromkeys(TALLIES, 0) for _ in problems]
    traces: dict[int, dict[str, Any]] = {}
    if critic is not None and wrong:
        asked = [questions[i] for i, _, _ in wrong]
        texts = [t for _, _, t in wrong]
        crits = critic.critique(asked, texts, salted(cfg.critique, "critique", salt).replace(n=1))
        critiques = [cs[0].text or "" for cs in crits]
        refine_sp = salted(cfg.refine, "refine", salt).replace(n=cfg.refinements)
        refs = refine(actor, asked, texts, critiques, refine_sp)
        candidates = []  # (wrong index, refinement index, judged): correct and showing work
        for w, ((i, _, text), rs) in enumerate(zip(wrong, refs, strict=True)):
            p = problems[i]
            tallies[i]["critiqued"] += 1
            refined = [r.text or "" for r in rs]
            traces.setdefault(
                i, {"solution": text, "critique": critiques[w], "refinements": refined}
            )
            for m, r in enumerate(rs):
                jd = Judged.of(r, p.answer)
                if not jd.correct:
                    continue
                tallies[i]["correct_refinements"] += 1
                if not shows_work(jd.text, p, cfg.min_steps, cfg.min_step_ratio):
                    tallies[i]["shortcuts"] += 1
                    continue
                candidates.append((w, m, jd))
        if cfg.recheck and candidates:
            checks = critic.critique(
                [asked[w] for w, _, _ in candidates],
                [jd.text for _, _, jd in candidates],
                salted(cfg.critique, "recheck", salt).replace(n=1),
            )
            verdicts = [parsed(cs[0]) for cs in checks]
            passed = [v.parseable and v.first_wrong_step is None for v in verdicts]
            for (w, _, _), ok in zip(candidates, passed, strict=True):
                tallies[wrong[w][0]]["rechecked_out"] += not ok
            candidates = [c for c, ok in zip(candidates, passed, strict=True) if ok]
        taken = [0] * len(wrong)
        for w, m, jd in candidates:
            i, j, text = wrong[w]
            if taken[w] < cfg.max_per_critique and jd.text.strip() not in seen[i]:
                seen[i].add(jd.text.strip())
                item = KeptItem.of(problems[i], jd, f"{problems[i].id}/s{j}/r{m}", "refinement")
                kept[i].append(replace(item, wrong_solution=text, critique=critiques[w]))
                taken[w] += 1
    return [
        QuestionRecord(
            p.id,
            difficulty(p),
            len(js),
            sum(jd.correct for jd in js),
            **tallies[i],
            kept=tuple(kept[i]),
            trace=traces.get(i),
        )
        for i, (p, js) in enumerate(zip(problems, judged, strict=True))
    ]


def kept_stats(records: Sequence[QuestionRecord], hard_min_level: int) -> dict[str, Any]:
    """What the collection kept: counts by origin, per-level question coverage, and the share
    of kept items (and of training questions) that are hard."""
    items = [it for r in records for it in r.kept]
    levels = [r.level for r in records]

    def hard_share(levels: list[Any]) -> float | None:
        known = [lv for lv in levels if lv is not None]
        return sum(lv >= hard_min_level for lv in known) / len(known) if known else None

    def total(name: str) -> int:
        return sum(getattr(r, name) for r in records)

    return {
        "kept": len(items),
        "from_samples": sum(it.origin == "sample" for it in items),
        "from_refinements": sum(it.origin == "refinement" for it in items),
        "questions_covered": sum(bool(r.kept) for r in records) / max(len(records), 1),
        "coverage_by_level": mean_by_level(
            [r.level for r in records], [bool(r.kept) for r in records]
        ),
        "hard_share_kept": hard_share([it.level for it in items]),
        "hard_share_questions": hard_share(levels),
        "samples": total("samples"),
        "correct_samples": total("correct_samples"),
        "critiqued": total("critiqued"),
        "correct_refinements": total("correct_refinements"),
        "shortcuts_rejected": total("shortcuts"),
        "rechecked_out": total("rechecked_out"),
    }


# --------------------------------------------------------------------------- iteration 0


# The share of demo questions that also get a refinement example of their correct reference
# solution (its critique finds no error; the target is the same solution). Without them every
# refinement the actor sees changes the solution; on the demo, adding them took greedy
# accuracy from 0.62 to 0.70 and cut the right solutions broken by refinement (RCO eval).
KEEP_SHARE = 0.5


def iteration0_examples(
    problems: Sequence[Problem],
    refine_data: SFTData | None,
    seed: int = 0,
    critique_format: CritiqueFormat = "verdict_first",
) -> list[Example]:
    """Reference solutions (x -> y) plus refinement examples (x, y0, c -> y'): demo ones
    from injected errors and the oracle critique in `critique_format` (and, for KEEP_SHARE
    of the questions, the correct reference solution kept as it is), otherwise from
    `refine_data`."""
    examples: list[Example] = [
        (solve_messages(p.question), p.solution) for p in problems if p.solution
    ]
    if problems and all(p.source == "demo" for p in problems):
        rng = random.Random(seed)
        for p in problems:
            flawed = inject_error(p, rng.randint(1, p.level or 1), seed)
            kept = [p.solution] if rng.random() < KEEP_SHARE else []
            for y0 in (flawed, *kept):
                critique = templated_critique(p, y0, critique_format)
                examples.append((refine_messages(p.question, y0, critique), p.solution))
    elif refine_data is not None:
        records, where = load_sft_records(refine_data)
        examples += examples_from_records(records, "refine", where)
    else:
        log.warning(
            "no refine_data: iteration 0 teaches reference solutions only, so the "
            "actor has not learned to follow critiques"
        )
    return examples


# --------------------------------------------------------------------------- evaluation


def evaluation_keys(cfg: Config) -> tuple[str, ...]:
    """The keys `evaluate_actor` writes into an iteration's results."""
    return ("accuracy", "by_level", "tokens_per_question", f"pass@{cfg.eval_samples}")


def evaluate_actor(actor: Agent, problems: Sequence[Problem], cfg: Config) -> dict[str, Any]:
    """Greedy accuracy (overall, by difficulty), tokens per question, and pass@K; every
    actor is evaluated with the same sampler seeds."""
    if not problems:
        return {"accuracy": None, "by_level": {}, "tokens_per_question": 0.0}
    questions = [p.question for p in problems]
    greedy = solve(actor, questions, cfg.eval.replace(n=1))
    judged = [Judged.of(cs[0], p.answer) for cs, p in zip(greedy, problems, strict=True)]
    out = {
        "accuracy": sum(jd.correct for jd in judged) / len(judged),
        "by_level": mean_by_level([difficulty(p) for p in problems], [jd.correct for jd in judged]),
        "tokens_per_question": sum(jd.tokens for jd in judged) / len(judged),
    }
    if cfg.eval_samples:
        sampled = solve(actor, questions, salted(cfg.sample, "eval").replace(n=cfg.eval_samples))
        hits = [
            any(Judged.of(c, p.answer).correct for c in cs)
            for cs, p in zip(sampled, problems, strict=True)
        ]
        out[f"pass@{cfg.eval_samples}"] = sum(hits) / len(hits)
    return out


# --------------------------------------------------------------------------- driver


class Models:
    """Loads the configured actor or one of its exported checkpoints; every iteration's actor
    runs the same compiled programs (jit's cache keys them by architecture and shape)."""

    def __init__(self, spec: ModelSpec, mesh: Any, seed: int) -> None:
        self.spec, self.mesh, self.seed = spec, mesh, seed

    def load(self, hf_dir: Path | None = None) -> LoadedModel:
        spec = (
            self.spec
            if hf_dir is None
            else ModelSpec(path=str(hf_dir), overrides=self.spec.overrides)
        )
        return load_model(spec, self.mesh, self.seed)

    def agent(self, hf_dir: Path) -> Agent:
        return make_agent(self.load(hf_dir), self.mesh)


def _train_and_export(
    models: Models,
    init: Path | None,
    examples: Sequence[Example],
    train: TrainConfig,
    cfg: Config,
    out: Path,
) -> None:
    """Fine-tune from `init` (None: the configured actor) and export to out/hf; with no
    examples or no steps the starting weights are exported unchanged. Once exported, the
    fine-tune checkpoints are no longer needed to resume and are deleted (they hold the
    optimizer state: several times the model's size, per iteration and arm)."""
    model = models.load(init)
    params = model.params
    if examples and train.steps > 0:
        params = finetune(model, examples, train, cfg.optim, cfg.mesh, out / "train", cfg.seed)
    save_hf(model.cfg, params, out / "hf", model.tokenizer)
    if this_process_writes():
        shutil.rmtree(out / "train" / "checkpoints", ignore_errors=True)


def _finished(out: Path) -> dict[str, Any] | None:
    path = out / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def iteration_zero(
    cfg: Config, models: Models, train: Sequence[Problem], test: Sequence[Problem], out: Path
) -> dict[str, Any]:
    if (done := _finished(out)) is not None:
        return done
    examples = iteration0_examples(train, cfg.refine_data, cfg.seed, cfg.critique_format)
    if not (out / "hf" / "config.json").exists():
        _train_and_export(models, None, examples, cfg.sft0, cfg, out)
    results = {
        "arm": "shared",
        "iteration": 0,
        "examples": len(examples),
        **evaluate_actor(models.agent(out / "hf"), test, cfg),
    }
    if this_process_writes():
        atomic_write_json(out / "results.json", results)
    return results


def _collect(
    cfg: Config, actor: Agent, critic: Critic | None, train: Sequence[Problem], t: int, out: Path
) -> None:
    """Collect iteration t's kept set into out/kept.jsonl (stats first: kept.jsonl marks the
    collection finished). A function of its own, so the sampling actor's weights are freed
    before the fine-tune loads its starting weights."""
    with RecordLog(out / "collect.jsonl") as log_:
        found = log_.fill(
            train,
            cfg.chunk_size,
            lambda chunk, i: [
                r.to_json() for r in collect_records(actor, critic, chunk, cfg, salt=(t, i))
            ],
        )
    records = [QuestionRecord.from_json(r) for r in found]
    if this_process_writes():
        atomic_write_json(out / "collect_stats.json", kept_stats(records, cfg.hard_min_level))
        atomic_write_jsonl(out / "kept.jsonl", (it.to_json() for r in records for it in r.kept))


def iteration(
    cfg: Config,
    arm: str,
    t: int,
    critic: Critic | None,
    models: Models,
    train: Sequence[Problem],
    test: Sequence[Problem],
    run_dir: Path,
) -> dict[str, Any]:
    """One self-training iteration of one arm (critic None: vanilla), resumable."""
    out = run_dir / arm / f"iter_{t}"
    if (done := _finished(out)) is not None:
        return done
    prev = run_dir / "iter_0" / "hf" if t == 1 else run_dir / arm / f"iter_{t - 1}" / "hf"
    if not (out / "kept.jsonl").exists():
        _collect(cfg, models.agent(prev), critic, train, t, out)
    items = [KeptItem.from_json(r) for r in read_jsonl(out / "kept.jsonl")]
    init = run_dir / "iter_0" / "hf" if cfg.init == "iteration0" else prev
    if not (out / "hf" / "config.json").exists():
        if not items:
            log.warning("%s iteration %d kept nothing: the actor is not fine-tuned", arm, t)
        examples = [(solve_messages(it.question), it.solution) for it in items]
        _train_and_export(models, init, examples, cfg.train, cfg, out)
    if items:
        evaluation = evaluate_actor(models.agent(out / "hf"), test, cfg)
    else:  # the actor is `init` unchanged, and evaluation is seeded: its results stand
        done = json.loads((init.parent / "results.json").read_text())
        evaluation = {k: v for k, v in done.items() if k in evaluation_keys(cfg)}
    results = {
        "arm": arm,
        "iteration": t,
        "trained_on": len(items),
        "collection": json.loads((out / "collect_stats.json").read_text()),
        **evaluation,
    }
    if this_process_writes():
        atomic_write_json(out / "results.json", results)
    return results


def comparison_table(rows: Sequence[dict[str, Any]], eval_samples: int) -> str:
    """Markdown: one row per (arm, iteration), accuracy by difficulty and what was kept."""
    levels = sorted_levels({lv for r in rows for lv in r.get("by_level", {})})
    pass_key = f"pass@{eval_samples}"
    head = ["arm", "iter", "accuracy", *(f"level {lv}" for lv in levels), pass_key]
    head += ["tokens/q", "kept", "from refinements", "hard share kept"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        kept = r.get("collection", {})
        cells = [
            r["arm"],
            r["iteration"],
            r.get("accuracy"),
            *(r.get("by_level", {}).get(lv) for lv in levels),
            r.get(pass_key),
            r.get("tokens_per_question"),
            kept.get("kept"),
            kept.get("from_refinements"),
            kept.get("hard_share_kept"),
        ]
        lines.append("| " + " | ".join(table_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _write_comparison(run_dir: Path, rows: list[dict[str, Any]], cfg: Config) -> None:
    if not this_process_writes():
        return
    atomic_write_json(run_dir / "comparison.json", rows)
    title = "# Self-training: vanilla (rejection sampling) vs critique-in-the-loop\n\n"
    atomic_write_text(run_dir / "comparison.md", title + comparison_table(rows, cfg.eval_samples))


def split_problems(cfg: Config) -> tuple[list[Problem], list[Problem]]:
    """Training and test problems, without test questions that also appear in training."""
    train = load_problems(cfg.train_problems)
    seen = {p.question for p in train}
    test = load_problems(cfg.test_problems)
    kept = [p for p in test if p.question not in seen]
    log.info("dropped %d test questions that are also training questions", len(test) - len(kept))
    return train, kept


def run(cfg: Config) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    mesh = mesh_from_config(cfg.mesh)
    train, test = split_problems(cfg)
    tokenizer_dir = run_dir / "demo_tokenizer"
    spec = with_demo_tokenizer(cfg.actor, [*train, *test], tokenizer_dir)
    models = Models(spec, mesh, cfg.seed)
    actor = make_agent(models.load(), mesh)  # questions too long for it: an error, or skipped
    train, train_skips = fit_questions(actor, train, cfg.train_problems, "train_problems")
    test, test_skips = fit_questions(actor, test, cfg.test_problems, "test_problems")
    arms: dict[str, Critic | None] = {}
    if cfg.critic is None or cfg.baseline:
        arms["vanilla"] = None
    if cfg.critic is not None:
        arms["critique"] = stage_roles(cfg, None, cfg.critic, train, mesh)[1]
    rows = [iteration_zero(cfg, models, train, test, run_dir / "iter_0")]
    _write_comparison(run_dir, rows, cfg)
    collect = train[: cfg.collect_problems]
    for t in range(1, cfg.iterations + 1):
        for arm, critic in arms.items():
            rows.append(iteration(cfg, arm, t, critic, models, collect, test, run_dir))
            _write_comparison(run_dir, rows, cfg)
    results = {
        "arms": list(arms),
        "iterations": cfg.iterations,
        "rows": rows,
        "table": str(run_dir / "comparison.md"),
    }
    return with_skips(results, {**train_skips, **test_skips})
