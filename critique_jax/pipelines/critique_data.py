"""The `collect_critiques` stage: AutoMathCritique data collection (MathCritique, first half).

    python -m critique_jax.train --config configs/collect_critiques_demo.yaml

For each chunk of questions:
1. flawed solutions: K actor samples at temperature > 0, verified against the gold answer;
   the wrong ones are kept (with a final answer unless `require_answer: false`), plus
   controlled error insertion at a step k (an annotator model rewrites step k of a correct
   solution and continues; `method: demo` uses `demo_world.inject_error`), which records the
   known first-error step, plus a share of correct solutions (a critic must also say Correct);
2. critiques: the annotator critiques each kept solution step by step, knowing the gold
   answer, and the critique is cut at its first wrong step (several samples per solution
   when the annotator is a model);
3. soft filtering by Monte Carlo refinement: a critique is kept when its final verdict agrees
   with the verifier and, for a wrong solution, at least `tau` of M actor refinements guided
   by it verify.

Outputs in run_dir: solutions.jsonl (a `SolutionRecord` per sampled, inserted or reference
solution; `selected` marks the critiqued ones; the records are also an eval set for
`eval_critic`), critiques.jsonl (a `CollectedCritique` per critique, with its filter
statistics), critic_sft.jsonl (the kept ones as `critique`-format SFT records) and
summary.json.

Resume: a chunk is a fixed slice of the problem list with its own sampling seeds, so it
computes the same records whenever it runs. Its solutions are written last, so a chunk is done
when all of them are on disk; a rerun recomputes unfinished chunks and appends only the
records whose id is not in a file yet, which gives the files of one uninterrupted run.
"""

from __future__ import annotations

import logging
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from critique_jax.config import ConfigError, MeshConfig, ModelSpec, StageConfig
from critique_jax.data.critique_format import (
    Critique,
    CritiqueFormat,
    format_critique,
    split_steps,
)
from critique_jax.data.demo_world import inject_error
from critique_jax.data.math import extract_answer, verify
from critique_jax.data.prompts import insert_error_messages
from critique_jax.data.records import JsonRecord, Problem
from critique_jax.data.sources import ProblemSource, load_problems
from critique_jax.pipelines.overlong import Skips, fit_questions, with_skips
from critique_jax.pipelines.roles import (
    Agent,
    Critic,
    CriticSpec,
    Judged,
    parsed,
    refine,
    solve,
    stage_roles,
)
from critique_jax.pipelines.seeds import salted, stable_seed
from critique_jax.runio import RecordLog, atomic_write_json, read_jsonl, this_process_writes
from critique_jax.sampling import SamplingParams
from critique_jax.sharding import mesh_from_config

log = logging.getLogger(__name__)

INSERTION_METHODS = ("none", "model", "demo")


# --------------------------------------------------------------------------- config

# Every phase has its own SamplingParams; its `n` is set by the phase's count field
# (samples_per_question, per_solution, refinements) and its seed is combined with the stage
# seed, the phase and the chunk index, so every chunk samples reproducibly.


@dataclass
class SolutionsConfig:
    samples_per_question: int = 4  # K actor samples per question (one fan-out call)
    sampling: SamplingParams = SamplingParams(max_new_tokens=512, temperature=0.8)
    correct_share: float = 0.2  # target share of correct solutions among the critiqued ones
    require_answer: bool = True  # drop wrong solutions that state no final answer (cut off)
    include_reference: bool = False  # reference solutions join the pool of correct ones


@dataclass
class InsertionConfig:
    method: str = "none"  # none | model (the annotator model) | demo (demo_world.inject_error)
    per_question: int = 1
    sampling: SamplingParams = SamplingParams(max_new_tokens=512, temperature=0.7)


@dataclass
class CritiqueConfig:
    per_solution: int = 2  # critique samples per solution from a model annotator (oracle: 1)
    sampling: SamplingParams = SamplingParams(max_new_tokens=1024, temperature=0.7)


@dataclass
class FilterConfig:
    refinements: int = 4  # M actor refinements per critique of a wrong solution (0: no MC)
    tau: float = 0.5  # keep when at least this fraction of the refinements verify
    sampling: SamplingParams = SamplingParams(max_new_tokens=512, temperature=0.7)


@dataclass
class Config(StageConfig):
    stage: str = "collect_critiques"
    run_dir: str = "runs/collect_critiques"
    problems: ProblemSource = field(default_factory=ProblemSource)
    actor: ModelSpec = field(default_factory=lambda: ModelSpec(preset="demo"))
    annotator: CriticSpec = field(default_factory=lambda: CriticSpec(oracle="demo"))
    solutions: SolutionsConfig = field(default_factory=SolutionsConfig)
    insertion: InsertionConfig = field(default_factory=InsertionConfig)
    critiques: CritiqueConfig = field(default_factory=CritiqueConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    chunk_size: int = 128  # questions per chunk: the unit of batching and of resume
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.solutions.samples_per_question < 1:
            problems.append("solutions.samples_per_question must be >= 1")
        if not 0 <= self.solutions.correct_share <= 1:
            problems.append("solutions.correct_share must be in [0, 1]")
        if self.insertion.method not in INSERTION_METHODS:
            problems.append(f"insertion.method must be one of {INSERTION_METHODS}")
        if self.insertion.method == "model" and self.annotator.model is None:
            problems.append("insertion.method: model needs a model annotator (annotator.model)")
        if self.insertion.method == "demo" and self.problems.kind != "demo":
            problems.append("insertion.method: demo needs problems.kind: demo")
        if self.annotator.oracle == "demo" and self.problems.kind != "demo":
            problems.append("annotator.oracle: demo needs problems.kind: demo")
        if self.insertion.per_question < 0 or self.critiques.per_solution < 1:
            problems.append("insertion.per_question must be >= 0, critiques.per_solution >= 1")
        if self.filter.refinements < 0 or not 0 <= self.filter.tau <= 1:
            problems.append("filter.refinements must be >= 0 and filter.tau in [0, 1]")
        if self.chunk_size < 1:
            problems.append("chunk_size must be >= 1")
        if problems:
            raise ConfigError("collect_critiques: " + "; ".join(problems))


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class LabelledSolution(JsonRecord):
    """A solution with the verifier's label and, for an inserted error, its known first wrong
    step: a line of an `eval_critic` eval set (every `SolutionRecord` is one)."""

    id: str
    question: str
    solution: str
    gold: str  # the gold answer, `answer` on disk
    solution_is_correct: bool
    first_error_step: int | None = None
    level: int | None = None

    disk_names: ClassVar[dict[str, str]] = {"gold": "answer"}


@dataclass(frozen=True, kw_only=True)
class SolutionRecord(LabelledSolution):
    """A line of solutions.jsonl: a sampled, inserted or reference solution of a problem, its
    extracted answer `pred`, and whether it was `selected` for critique."""

    problem_id: str
    kind: str  # sample | insert | reference
    pred: str | None
    tokens: int
    selected: bool = False

    @classmethod
    def of(
        cls,
        problem: Problem,
        sid: str,
        kind: str,
        text: str,
        tokens: int,
        first_error_step: int | None = None,
    ) -> SolutionRecord:
        """The solution verified. An inserted error whose final answer still verifies did
        not take: such a record keeps no first-error step (and is never selected)."""
        correct = verify(text, problem.answer)
        return cls(
            id=sid,
            question=problem.question,
            solution=text,
            gold=problem.answer,
            solution_is_correct=correct,
            first_error_step=None if correct else first_error_step,
            level=problem.level,
            problem_id=problem.id,
            kind=kind,
            pred=extract_answer(text),
            tokens=tokens,
        )

    def to_json(self) -> dict[str, Any]:
        """The fields in the order solutions.jsonl has always had them."""
        return {
            "id": self.id,
            "problem_id": self.problem_id,
            "question": self.question,
            "answer": self.gold,
            "level": self.level,
            "kind": self.kind,
            "solution": self.solution,
            "pred": self.pred,
            "solution_is_correct": self.solution_is_correct,
            "first_error_step": self.first_error_step,
            "tokens": self.tokens,
            "selected": self.selected,
        }


@dataclass(frozen=True)
class CollectedCritique(JsonRecord):
    """A line of critiques.jsonl: the annotator's critique of a selected solution, what it
    parses to, and the soft filter's refinements and decision (`kept`)."""

    id: str
    solution_id: str
    problem_id: str
    question: str
    solution: str
    gold: str  # the gold answer, `answer` on disk
    level: int | None
    group: str  # the solution's row of the keep-rate table (`kind_group`)
    solution_is_correct: bool
    first_error_step: int | None
    critique: str
    parseable: bool
    verdict: bool | None  # the parsed final verdict; None when unparseable
    first_wrong_step: int | None
    verdict_agrees: bool
    first_error_agrees: bool | None  # None without a known first error
    tokens: int
    refinements: tuple[bool, ...] = ()  # whether each Monte Carlo refinement verifies
    refine_correct_frac: float | None = None
    refine_tokens: int = 0
    kept: bool = False

    disk_names: ClassVar[dict[str, str]] = {"gold": "answer"}

    def sft_json(self) -> dict[str, Any]:
        """The critique in the `critique` SFT format (question, solution, critique)."""
        keys = (
            "id",
            "question",
            "solution",
            "critique",
            "answer",
            "level",
            "group",
            "solution_is_correct",
            "first_error_step",
        )
        record = self.to_json()
        return {k: record[k] for k in keys}


# --------------------------------------------------------------------------- shared helpers


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """Fixed slices; a slice's content and index do not depend on how far a run got."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def critique_text(critique: Critique, fmt: CritiqueFormat) -> str:
    """A parsed critique rewritten in format `fmt`, cut after its first wrong step (critiques
    stop at the first error)."""
    first = critique.first_wrong_step
    steps = [s for s in critique.steps if first is None or s.index <= first]
    return format_critique(steps, bool(critique.final_correct), critique.final_explanation, fmt)


def refine_verified(
    actor: Agent,
    questions: Sequence[str],
    solutions: Sequence[str],
    critiques: Sequence[str],
    golds: Sequence[str],
    sp: SamplingParams,
) -> list[list[Judged]]:
    """sp.n actor refinements per (question, solution, critique), each verified."""
    if not questions:
        return []
    outs = refine(actor, questions, solutions, critiques, sp)
    return [[Judged.of(c, g) for c in comps] for comps, g in zip(outs, golds, strict=True)]


def keep_critique(
    verdict: bool | None, solution_correct: bool, refinements: Sequence[bool], tau: float
) -> bool:
    """The soft filter: the verdict agrees with the verifier and, for a wrong solution with
    refinements, at least a fraction `tau` of them verify."""
    if verdict is None or verdict != solution_correct:
        return False
    if solution_correct or not refinements:
        return True
    return sum(refinements) / len(refinements) >= tau


# --------------------------------------------------------------------------- solutions


def sample_ids(problem: Problem, k: int) -> list[str]:
    return [f"{problem.id}/sample{j}" for j in range(k)]


def sample_solutions(
    actor: Agent, problems: Sequence[Problem], k: int, sp: SamplingParams
) -> list[SolutionRecord]:
    outs = solve(actor, [p.question for p in problems], sp.replace(n=k))
    return [
        SolutionRecord.of(p, sid, "sample", c.text or "", c.num_tokens)
        for p, comps in zip(problems, outs, strict=True)
        for sid, c in zip(sample_ids(p, k), comps, strict=True)
    ]


def reference_solution(problem: Problem) -> SolutionRecord:
    """The dataset's own solution, ending like the actor's ("The answer is X.") when it
    states no final answer itself (GSM8K references lose their `#### N` line on loading)."""
    text = problem.solution.strip()
    if extract_answer(text) is None:
        text = f"{text}\nThe answer is {problem.answer}."
    return SolutionRecord.of(problem, f"{problem.id}/reference", "reference", text, 0)


def _insertion_step(problem: Problem, j: int, n_steps: int, seed: int) -> int:
    return random.Random(stable_seed(seed, problem.id, "insert", j)).randint(1, n_steps)


def demo_insertions(
    problems: Sequence[Problem], per_question: int, seed: int
) -> list[SolutionRecord]:
    """`demo_world.inject_error` at a random step: a known first error, no model needed."""
    out = []
    for p in problems:
        n_steps = len(split_steps(p.solution))
        for j in range(per_question):
            step = _insertion_step(p, j, n_steps, seed)
            text = inject_error(p, step, stable_seed(seed, p.id, j))
            out.append(SolutionRecord.of(p, f"{p.id}/insert{j}", "insert", text, 0, step))
    return out


_PARAGRAPHS = re.compile(r"\n[ \t]*\n")


def model_insertions(
    annotator: Agent,
    problems: Sequence[Problem],
    sampled: Sequence[SolutionRecord],
    per_question: int,
    sp: SamplingParams,
    seed: int,
) -> list[SolutionRecord]:
    """The annotator rewrites step k of a correct solution (the question's first correct
    sample, else its reference solution) with a mistake and continues from there."""
    correct = {}
    for r in sampled:
        if r.solution_is_correct:
            correct.setdefault(r.problem_id, r.solution)
    jobs = []  # (problem, j, steps before, step, separator)
    for p in problems:
        source = correct.get(p.id) or p.solution
        steps = split_steps(source)
        if not steps:
            continue
        sep = "\n\n" if _PARAGRAPHS.search(source.strip()) else "\n"
        for j in range(per_question):
            step = _insertion_step(p, j, len(steps), seed)
            jobs.append((p, j, steps[: step - 1], step, sep))
    if not jobs:
        return []
    prompts = [insert_error_messages(p.question, before, step) for p, _, before, step, _ in jobs]
    outs = annotator.chat(prompts, sp.replace(n=1))
    records = []
    for (p, j, before, step, sep), (c,) in zip(jobs, outs, strict=True):
        text = sep.join([*before, (c.text or "").strip()])
        records.append(
            SolutionRecord.of(p, f"{p.id}/insert{j}", "insert", text, c.num_tokens, step)
        )
    return records


def select_solutions(
    records: Sequence[SolutionRecord], correct_share: float, require_answer: bool, seed: int
) -> list[SolutionRecord]:
    """The records with the solutions to critique `selected`: every distinct wrong one (with
    a final answer when `require_answer`), then correct ones up to `correct_share` of the
    total, spread over questions (each question's first correct solution before any second
    one)."""
    seen: set[tuple[str, str]] = set()
    wrong, pool = [], []
    rank: dict[str, int] = defaultdict(int)
    for r in records:
        key = (r.problem_id, r.solution.strip())
        if key in seen or not r.solution.strip():
            continue
        seen.add(key)
        if r.solution_is_correct and r.kind != "insert":
            pool.append((rank[r.problem_id], stable_seed(seed, r.id), r))
            rank[r.problem_id] += 1
        elif not r.solution_is_correct and (r.pred is not None or not require_answer):
            wrong.append(r)
    if correct_share >= 1:
        n_correct = len(pool)
    else:
        n_correct = min(len(pool), round(len(wrong) * correct_share / (1 - correct_share)))
    pool.sort(key=lambda t: t[:2])
    chosen = {r.id for r in [*wrong, *(t[2] for t in pool[:n_correct])]}
    return [replace(r, selected=r.id in chosen) for r in records]


# --------------------------------------------------------------------------- critiques


def kind_group(solution: SolutionRecord) -> str:
    """sample-wrong | sample-correct | insert | reference: the rows of the keep-rate table."""
    if solution.kind == "sample":
        return "sample-correct" if solution.solution_is_correct else "sample-wrong"
    return solution.kind


def annotate(
    annotator: Critic,
    solutions: Sequence[SolutionRecord],
    n: int,
    sp: SamplingParams,
) -> list[CollectedCritique]:
    """n critiques per solution from the annotator, given the gold answer; parseable ones are
    cut at their first wrong step; identical critiques of one solution are kept once."""
    if not solutions:
        return []
    outs = annotator.critique(
        [s.question for s in solutions],
        [s.solution for s in solutions],
        sp.replace(n=n),
        references=[s.gold for s in solutions],
    )
    records = []
    for s, comps in zip(solutions, outs, strict=True):
        seen = set()
        for i, c in enumerate(comps):
            crit = parsed(c)
            verdict = crit.final_correct if crit.parseable else None
            text = critique_text(crit, annotator.critique_format) if crit.parseable else c.text
            if text in seen:
                continue
            seen.add(text)
            known = s.first_error_step
            records.append(
                CollectedCritique(
                    id=f"{s.id}/critique{i}",
                    solution_id=s.id,
                    problem_id=s.problem_id,
                    question=s.question,
                    solution=s.solution,
                    gold=s.gold,
                    level=s.level,
                    group=kind_group(s),
                    solution_is_correct=s.solution_is_correct,
                    first_error_step=known,
                    critique=text,
                    parseable=crit.parseable,
                    verdict=verdict,
                    first_wrong_step=crit.first_wrong_step,
                    verdict_agrees=verdict == s.solution_is_correct,
                    first_error_agrees=None if known is None else crit.first_wrong_step == known,
                    tokens=c.num_tokens,
                )
            )
    return records


def soft_filter(
    actor: Agent, critiques: Sequence[CollectedCritique], m: int, tau: float, sp: SamplingParams
) -> list[CollectedCritique]:
    """The critiques with the filter statistics and `kept` set: the actor refines M times
    with each critique whose verdict rightly says Wrong, and the refinements are verified."""
    out = list(critiques)
    todo = [i for i, c in enumerate(out) if c.verdict_agrees and not c.solution_is_correct]
    if m > 0:
        judged = refine_verified(
            actor,
            [out[i].question for i in todo],
            [out[i].solution for i in todo],
            [out[i].critique for i in todo],
            [out[i].gold for i in todo],
            sp.replace(n=m),
        )
        for i, outs in zip(todo, judged, strict=True):
            refinements = tuple(j.correct for j in outs)
            out[i] = replace(
                out[i],
                refinements=refinements,
                refine_correct_frac=sum(refinements) / m,
                refine_tokens=sum(j.tokens for j in outs),
            )
    return [
        replace(c, kept=keep_critique(c.verdict, c.solution_is_correct, c.refinements, tau))
        for c in out
    ]


# --------------------------------------------------------------------------- the stage


@dataclass
class Collector:
    """Everything one chunk needs: the models, the annotator and the config."""

    cfg: Config
    actor: Agent
    annotator: Critic

    def seed(self, sp: SamplingParams, phase: str, chunk: int) -> SamplingParams:
        return salted(sp, self.cfg.seed, phase, chunk)

    def chunk(
        self, problems: Sequence[Problem], index: int
    ) -> tuple[list[SolutionRecord], list[CollectedCritique]]:
        """(solutions, critiques) of one chunk."""
        cfg = self.cfg
        sc, ic = cfg.solutions, cfg.insertion
        solutions = sample_solutions(
            self.actor, problems, sc.samples_per_question, self.seed(sc.sampling, "solve", index)
        )
        if ic.method == "demo":
            solutions += demo_insertions(problems, ic.per_question, cfg.seed)
        elif ic.method == "model":
            assert isinstance(self.annotator, Agent)
            solutions += model_insertions(
                self.annotator,
                problems,
                solutions,
                ic.per_question,
                self.seed(ic.sampling, "insert", index),
                cfg.seed,
            )
        if sc.include_reference:
            solutions += [reference_solution(p) for p in problems if p.solution.strip()]
        solutions = select_solutions(
            solutions, sc.correct_share, sc.require_answer, stable_seed(cfg.seed, index)
        )
        n = 1 if cfg.annotator.oracle is not None else cfg.critiques.per_solution
        critiques = annotate(
            self.annotator,
            [s for s in solutions if s.selected],
            n,
            self.seed(cfg.critiques.sampling, "critique", index),
        )
        fc = cfg.filter
        critiques = soft_filter(
            self.actor, critiques, fc.refinements, fc.tau, self.seed(fc.sampling, "refine", index)
        )
        return solutions, critiques


def _rate(num: float, den: float) -> float | None:
    return num / den if den else None


def _keep_table(critiques: Sequence[CollectedCritique], key: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[CollectedCritique]] = defaultdict(list)
    for c in critiques:
        groups[str(getattr(c, key))].append(c)
    return {
        g: {
            "critiques": len(cs),
            "kept": sum(c.kept for c in cs),
            "keep_rate": _rate(sum(c.kept for c in cs), len(cs)),
        }
        for g, cs in sorted(groups.items())
    }


def summarize(
    solutions: Sequence[SolutionRecord], critiques: Sequence[CollectedCritique], n_sft: int
) -> dict[str, Any]:
    """Counts, rates and generated tokens of a collection run, from its records."""
    samples = [s for s in solutions if s.kind == "sample"]
    inserts = [s for s in solutions if s.kind == "insert"]
    refined = [c.refine_correct_frac for c in critiques if c.refine_correct_frac is not None]
    known = [c.first_error_agrees for c in critiques if c.first_error_agrees is not None]
    kept = sum(c.kept for c in critiques)
    selected: dict[str, int] = defaultdict(int)
    for s in solutions:
        if s.selected:
            selected[kind_group(s)] += 1
    tokens = {
        "solve": sum(s.tokens for s in samples),
        "insert": sum(s.tokens for s in inserts),
        "critique": sum(c.tokens for c in critiques),
        "refine": sum(c.refine_tokens for c in critiques),
    }
    tokens["total"] = sum(tokens.values())
    return {
        "problems": len({s.problem_id for s in solutions}),
        "samples": len(samples),
        "sample_accuracy": _rate(sum(s.solution_is_correct for s in samples), len(samples)),
        "sample_answered_rate": _rate(sum(s.pred is not None for s in samples), len(samples)),
        "insertions": len(inserts),
        "insertions_flawed": sum(not s.solution_is_correct for s in inserts),
        "selected": dict(sorted(selected.items())),
        "critiques": len(critiques),
        "parseable_rate": _rate(sum(c.parseable for c in critiques), len(critiques)),
        "verdict_agree_rate": _rate(sum(c.verdict_agrees for c in critiques), len(critiques)),
        "first_error_agree_rate": _rate(sum(known), len(known)),
        "mean_refine_correct_frac": _rate(sum(refined), len(refined)),
        "kept": kept,
        "keep_rate": _rate(kept, len(critiques)),
        "keep_by_kind": _keep_table(critiques, "group"),
        "keep_by_level": _keep_table(critiques, "level"),
        "sft_records": n_sft,
        "tokens": tokens,
        "critique_tokens_per_kept": _rate(tokens["critique"], kept),
    }


def collect(
    cfg: Config,
    problems: Sequence[Problem],
    actor: Agent,
    annotator: Critic,
    skips: Skips | None = None,
) -> dict[str, Any]:
    """Collect over all chunks (skipping finished ones), then write summary.json (with
    `skips`, the over-long questions left out of `problems`). Callers with models in memory
    (the demo, tests) use this; `run` loads the models first."""
    run_dir = Path(cfg.run_dir)
    collector = Collector(cfg, actor, annotator)
    names = ("critiques", "critic_sft", "solutions")  # solutions last: they mark a chunk done
    logs = {name: RecordLog(run_dir / f"{name}.jsonl") for name in names}
    k = cfg.solutions.samples_per_question
    try:
        for index, chunk in enumerate(chunks(problems, cfg.chunk_size)):
            if all(i in logs["solutions"].done for p in chunk for i in sample_ids(p, k)):
                continue
            solutions, critiques = collector.chunk(chunk, index)
            logs["critiques"].write_all(c.to_json() for c in critiques)
            logs["critic_sft"].write_all(c.sft_json() for c in critiques if c.kept)
            logs["solutions"].write_all(s.to_json() for s in solutions)
            log.info(
                "chunk %d: %d solutions, %d critiques, %d kept",
                index,
                len(solutions),
                len(critiques),
                sum(c.kept for c in critiques),
            )
    finally:
        for lg in logs.values():
            lg.close()
    summary = summarize(
        [SolutionRecord.from_json(r) for r in read_jsonl(run_dir / "solutions.jsonl")],
        [CollectedCritique.from_json(r) for r in read_jsonl(run_dir / "critiques.jsonl")],
        sum(1 for _ in read_jsonl(run_dir / "critic_sft.jsonl")),
    )
    summary = with_skips(summary, skips)
    if this_process_writes():
        atomic_write_json(run_dir / "summary.json", summary)
    return summary


def run(cfg: Config) -> dict[str, Any]:
    problems = load_problems(cfg.problems)
    if not problems:
        raise ValueError("no problems to collect critiques for: check the `problems:` section")
    actor, annotator = stage_roles(
        cfg, cfg.actor, cfg.annotator, problems, mesh_from_config(cfg.mesh)
    )
    assert actor is not None and annotator is not None
    problems, skips = fit_questions(actor, problems, cfg.problems, "problems")
    return collect(cfg, problems, actor, annotator, skips)
