"""The `eval_tts` stage: test-time supervision with a critic, and the compute it costs.

    python -m critique_jax.train --config configs/eval_tts_gsm8k_qwen2.5-0.5b.yaml

Modes (docs/methods.md, "Test-time supervision"):
- sequential: y0 (greedy) -> critique -> refinement -> critique ... up to `rounds`
  refinements, stopping as soon as the critic's parsed final verdict is Correct. Reported for
  every round budget 0..R (budget 0 is the actor alone).
- parallel: K samples per question in one fan-out call, each critiqued once, then
  `majority` (actor alone, majority vote), `critic_filter` / `critic_weighted` (the critic as
  a verifier of the K samples, see `voting`), `refine_vote` (every sample the critic does not
  accept is refined with its critique, then majority over the final answers) and `oracle`
  (a perfect verifier: pass@K, the upper bound).

Compute is generated tokens per question: actor tokens plus critic tokens (an oracle critic
generates nothing and costs 0). The sweep over K uses prefixes of one K_max-sample run: the
samples are independent draws, so the first k of them are a k-sample run and every K shares
the same sampler calls. Questions go through in chunks (`chunk_size`), one batched sampler
call per step of a chunk; each chunk's per-question records are appended to JSONL, so a killed
run resumes after its last finished chunk and the metrics are recomputed from the records.

The critic is a `roles.CriticSpec`: `critic: {oracle: demo}` (the demo world's templated
critic) or `critic: {model: {path: ...}}` (a trained critic, or the actor's own checkpoint for
self-critique, which then shares the actor's weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from critique_jax.config import ConfigError, MeshConfig, ModelSpec, StageConfig
from critique_jax.data.records import Problem
from critique_jax.data.sources import ProblemSource, load_problems
from critique_jax.pipelines.overlong import Skips, check_oracle, fit_questions, with_skips
from critique_jax.pipelines.reporting import difficulty, mean_by_level, sorted_levels, table_cell
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
from critique_jax.pipelines.seeds import salted
from critique_jax.pipelines.voting import (
    DEFAULT_WEIGHTS,
    VerdictWeights,
    equivalence_labels,
    filtered_vote,
    majority_vote,
    weighted_vote,
)
from critique_jax.plots import plot_accuracy_vs_compute
from critique_jax.runio import RecordLog, atomic_write_json, atomic_write_text, this_process_writes
from critique_jax.sampling import Completion, SamplingParams
from critique_jax.sharding import mesh_from_config

MODES = ("sequential", "parallel")
# Curve names of the figure, by results key.
CURVES = {
    "majority": "actor + majority vote",
    "refine_vote": "actor + critic: critique-refine + vote",
    "critic_weighted": "actor + critic: verifier-weighted vote",
    "critic_filter": "actor + critic: verifier-filtered vote",
    "oracle": "oracle verifier (pass@K)",
    "sequential": "actor + critic: sequential rounds",
}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Attempt:
    """An actor solution judged against the gold answer (`judged.answer` is its extracted
    answer), with the critic's critique of it; `critique` is None when it was not critiqued."""

    judged: Judged
    critique: str | None = None
    verdict: bool | None = None  # the critique's parsed final verdict
    critic_tokens: int = 0

    def critiqued(self, completion: Completion) -> Self:
        """This attempt with the critic's `completion` of it."""
        return replace(
            self,
            critique=completion.text or "",
            verdict=parsed(completion).final_correct,
            critic_tokens=completion.num_tokens,
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self.judged)
        if self.critique is not None:
            out.update(
                critique=self.critique, verdict=self.verdict, critic_tokens=self.critic_tokens
            )
        return out

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> Self:
        judged = Judged(r["text"], r["answer"], r["correct"], r["tokens"])
        return cls(judged, r.get("critique"), r.get("verdict"), r.get("critic_tokens", 0))


@dataclass(frozen=True)
class Sample(Attempt):
    """A parallel sample; once critiqued, `refined` is its refinement with the critique, None
    when the critic accepted it."""

    refined: Judged | None = None

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.critique is not None:
            out["refined"] = None if self.refined is None else asdict(self.refined)
        return out

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> Self:
        refined = None if r.get("refined") is None else Judged(**r["refined"])
        return replace(super().from_json(r), refined=refined)


@dataclass(frozen=True)
class TTSRecord:
    """One question's attempts: a line of sequential.jsonl (`rounds` y0, y1, ..., each with
    the critique of it but the last, unless the critic accepted it) or of parallel.jsonl
    (`samples`)."""

    id: str
    level: int | None
    gold: str  # the gold answer
    rounds: tuple[Attempt, ...] = ()
    samples: tuple[Sample, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "level": self.level, "gold": self.gold}
        if self.rounds:
            out["rounds"] = [a.to_json() for a in self.rounds]
        else:
            out["samples"] = [s.to_json() for s in self.samples]
        return out

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> TTSRecord:
        rounds = tuple(Attempt.from_json(a) for a in r.get("rounds", ()))
        samples = tuple(Sample.from_json(s) for s in r.get("samples", ()))
        return cls(r["id"], r["level"], r["gold"], rounds, samples)


# --------------------------------------------------------------------------- settings


@dataclass
class TTSSettings:
    """What to run and how to sample. `n` of each SamplingParams is set by the mode."""

    modes: list[str] = field(default_factory=lambda: list(MODES))
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    rounds: int = 3
    first: SamplingParams = SamplingParams(max_new_tokens=512, temperature=0.0)  # sequential y0
    sample: SamplingParams = SamplingParams(max_new_tokens=512, temperature=0.7)  # parallel samples
    critique: SamplingParams = SamplingParams(max_new_tokens=1024, temperature=0.0)
    refine: SamplingParams = SamplingParams(max_new_tokens=512, temperature=0.0)
    weights: VerdictWeights = field(default_factory=VerdictWeights)
    chunk_size: int = 64

    def __post_init__(self) -> None:
        bad = sorted(set(self.modes) - set(MODES))
        if bad or not self.modes:
            raise ConfigError(f"tts.modes {self.modes}: choose from {list(MODES)}")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"tts.ks {self.ks} must be a non-empty list of K >= 1")
        if self.rounds < 0 or self.chunk_size < 1:
            raise ConfigError("tts.rounds must be >= 0 and tts.chunk_size >= 1")


# --------------------------------------------------------------------------- sampling


def sequential_records(
    actor: Agent, critic: Critic, problems: Sequence[Problem], s: TTSSettings, salt: Any = 0
) -> list[TTSRecord]:
    """Critique-refine rounds per question; `rounds[i]` is y_i with the critique of y_i
    (none on the last one). One batched call per round and role."""
    questions = [p.question for p in problems]
    first = solve(actor, questions, salted(s.first, "first", salt).replace(n=1))
    rounds = [[Attempt(Judged.of(c[0], p.answer))] for c, p in zip(first, problems, strict=True)]
    active = list(range(len(problems)))
    for r in range(s.rounds):
        crits = critic.critique(
            [questions[i] for i in active],
            [rounds[i][-1].judged.text for i in active],
            salted(s.critique, "critique", r, salt).replace(n=1),
        )
        for i, cs in zip(active, crits, strict=True):
            rounds[i][-1] = rounds[i][-1].critiqued(cs[0])
        active = [i for i in active if rounds[i][-1].verdict is not True]
        if not active:
            break
        refs = refine(
            actor,
            [questions[i] for i in active],
            [rounds[i][-1].judged.text for i in active],
            [rounds[i][-1].critique for i in active],
            salted(s.refine, "refine", r, salt).replace(n=1),
        )
        for i, cs in zip(active, refs, strict=True):
            rounds[i].append(Attempt(Judged.of(cs[0], problems[i].answer)))
    return [
        TTSRecord(p.id, difficulty(p), p.answer, rounds=tuple(rounds[i]))
        for i, p in enumerate(problems)
    ]


def parallel_records(
    actor: Agent, critic: Critic | None, problems: Sequence[Problem], s: TTSSettings, salt: Any = 0
) -> list[TTSRecord]:
    """max(ks) samples per question, each critiqued; those the critic does not accept are
    refined once (`refined`). Three batched calls: solve (fan-out), critique, refine."""
    k = max(s.ks)
    questions = [p.question for p in problems]
    samples = solve(actor, questions, salted(s.sample, "sample", salt).replace(n=k))
    per_q = [
        [Sample(Judged.of(c, p.answer)) for c in cs]
        for cs, p in zip(samples, problems, strict=True)
    ]
    if critic is not None:
        flat = [(i, j) for i in range(len(problems)) for j in range(k)]
        crits = critic.critique(
            [questions[i] for i, _ in flat],
            [per_q[i][j].judged.text for i, j in flat],
            salted(s.critique, "critique", salt).replace(n=1),
        )
        for (i, j), cs in zip(flat, crits, strict=True):
            per_q[i][j] = per_q[i][j].critiqued(cs[0])
        todo = [(i, j) for i, j in flat if per_q[i][j].verdict is not True]
        if todo:
            refs = refine(
                actor,
                [questions[i] for i, _ in todo],
                [per_q[i][j].judged.text for i, j in todo],
                [per_q[i][j].critique for i, j in todo],
                salted(s.refine, "refine", salt).replace(n=1),
            )
            for (i, j), cs in zip(todo, refs, strict=True):
                per_q[i][j] = replace(per_q[i][j], refined=Judged.of(cs[0], problems[i].answer))
    return [
        TTSRecord(p.id, difficulty(p), p.answer, samples=tuple(per_q[i]))
        for i, p in enumerate(problems)
    ]


# --------------------------------------------------------------------------- metrics


def _point(
    records: Sequence[TTSRecord], outcomes: Sequence[tuple[bool, float, float]], **extra: Any
) -> dict[str, Any]:
    """Accuracy and mean tokens of per-question (correct, actor tokens, critic tokens)."""
    n = max(len(records), 1)
    actor = sum(a for _, a, _ in outcomes) / n
    critic = sum(c for _, _, c in outcomes) / n
    return {
        **extra,
        "accuracy": sum(ok for ok, _, _ in outcomes) / n,
        "tokens_per_question": actor + critic,
        "actor_tokens_per_question": actor,
        "critic_tokens_per_question": critic,
        "by_level": mean_by_level([r.level for r in records], [ok for ok, _, _ in outcomes]),
    }


def sequential_outcome(rounds: Sequence[Attempt], budget: int) -> tuple[bool, int, int]:
    """(correct, actor tokens, critic tokens) of the sequential run with at most `budget`
    refinements, read off a run with more: it stops where the critic first says Correct."""
    actor = critic = 0
    for i, step in enumerate(rounds):
        actor += step.judged.tokens
        if i == budget or step.critique is None:
            return step.judged.correct, actor, critic
        critic += step.critic_tokens
        if step.verdict is True:
            return step.judged.correct, actor, critic
    raise ValueError("a sequential record must end with an uncritiqued or accepted round")


def summarize_sequential(records: Sequence[TTSRecord], rounds: int) -> list[dict[str, Any]]:
    points = []
    for budget in range(rounds + 1):
        outcomes = [sequential_outcome(r.rounds, budget) for r in records]
        points.append(_point(records, outcomes, rounds=budget, label=f"R={budget}"))
    return points


def _final(sample: Sample) -> Judged:
    return sample.refined or sample.judged


def summarize_parallel(
    records: Sequence[TTSRecord], ks: Sequence[int], weights: VerdictWeights = DEFAULT_WEIGHTS
) -> dict[str, list[dict]]:
    """Points per mode and K (see the module docstring for the modes)."""
    k_max = max(ks)
    short = [r.id for r in records if len(r.samples) < k_max]
    if short:
        raise ValueError(
            f"record {short[0]!r} has fewer than K={k_max} samples: the run "
            "directory holds records of another run; use a new run_dir"
        )
    with_critic = bool(records) and records[0].samples[0].critique is not None
    labels = [equivalence_labels([s.judged.answer for s in r.samples]) for r in records]
    final_labels = (
        [equivalence_labels([_final(s).answer for s in r.samples]) for r in records]
        if with_critic
        else []
    )
    out: dict[str, list[dict]] = {m: [] for m in CURVES if m != "sequential"}
    for k in sorted(ks):
        rows = {m: [] for m in out}
        for n, r in enumerate(records):
            ss = r.samples[:k]
            firsts = [s.judged for s in ss]
            answers = [j.answer for j in firsts]
            actor = sum(j.tokens for j in firsts)
            rows["majority"].append((_pick(firsts, majority_vote(answers, labels[n])), actor, 0))
            rows["oracle"].append((any(j.correct for j in firsts), actor, 0))
            if not with_critic:
                continue
            critic = sum(s.critic_tokens for s in ss)
            verdicts = [s.verdict for s in ss]
            rows["critic_filter"].append(
                (_pick(firsts, filtered_vote(answers, verdicts, labels[n])), actor, critic)
            )
            rows["critic_weighted"].append(
                (_pick(firsts, weighted_vote(answers, verdicts, weights, labels[n])), actor, critic)
            )
            finals = [_final(s) for s in ss]
            refine_tokens = sum(s.refined.tokens for s in ss if s.refined)
            winner = majority_vote([f.answer for f in finals], final_labels[n])
            rows["refine_vote"].append((_pick(finals, winner), actor + refine_tokens, critic))
        for m, outcomes in rows.items():
            if outcomes:
                out[m].append(_point(records, outcomes, k=k, label=f"K={k}"))
    return {m: pts for m, pts in out.items() if pts}


def _pick(solutions: Sequence[Judged], index: int | None) -> bool:
    return index is not None and solutions[index].correct


def critic_diagnostics(records: Sequence[TTSRecord]) -> dict[str, Any]:
    """How good the critic is as a verifier of the samples, and what refining did."""
    samples = [s for r in records for s in r.samples if s.critique is not None]
    if not samples:
        return {}
    judged = [s for s in samples if s.verdict is not None]
    refined = [(s.judged.correct, s.refined.correct) for s in samples if s.refined]
    return {
        "samples": len(samples),
        "unparseable_verdicts": 1 - len(judged) / len(samples),
        "verdict_accuracy": (
            sum(s.verdict == s.judged.correct for s in judged) / len(judged) if judged else None
        ),
        "refined": len(refined),
        "wrong_to_correct": sum(not before and after for before, after in refined),
        "correct_to_wrong": sum(before and not after for before, after in refined),
    }


def results_table(results: dict[str, Any]) -> str:
    """Markdown: one row per curve point (mode and K, or sequential round budget) with its
    accuracy, accuracy by difficulty and generated tokens per question, then the critic's
    verifier diagnostics; the figure's numbers in a form that reads without plotting."""
    rows = [(CURVES[m], p) for m, pts in results.get("parallel", {}).items() for p in pts]
    rows += [(CURVES["sequential"], p) for p in results.get("sequential", [])]
    levels = sorted_levels({lv for _, p in rows for lv in p["by_level"]})
    head = [
        "mode",
        "budget",
        "accuracy",
        *(f"level {lv}" for lv in levels),
        "tokens/q",
        "actor tokens/q",
        "critic tokens/q",
    ]
    lines = [
        f"Test-time supervision: {results['questions']} questions, K in {results['ks']}, "
        f"up to {results['rounds']} sequential refinements.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|" + "---:|" * (len(head) - 2),
    ]
    for name, p in rows:
        cells = [
            name,
            p["label"],
            table_cell(p["accuracy"]),
            *(table_cell(p["by_level"].get(lv)) for lv in levels),
            table_cell(p["tokens_per_question"], 1),
            table_cell(p["actor_tokens_per_question"], 1),
            table_cell(p["critic_tokens_per_question"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    diag = results.get("critic_diagnostics")
    if diag:
        lines += ["", "| critic as verifier | value |", "|---|---:|"]
        lines += [f"| {k} | {table_cell(v)} |" for k, v in diag.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- driver


def fill_records(
    path: Path,
    make: Callable[..., list[TTSRecord]],
    actor: Agent,
    critic: Critic | None,
    problems: Sequence[Problem],
    s: TTSSettings,
) -> list[TTSRecord]:
    """The record of every problem in `path`, where the chunks that lack one are made by
    `make` (`sequential_records` or `parallel_records`) and appended (see `RecordLog.fill`)."""

    def compute(chunk: list[Problem], i: int) -> list[dict[str, Any]]:
        return [r.to_json() for r in make(actor, critic, chunk, s, salt=i)]

    with RecordLog(path) as log_:
        found = log_.fill(problems, s.chunk_size, compute)
    return [TTSRecord.from_json(r) for r in found]


def run_test_time(
    actor: Agent,
    critic: Critic | None,
    problems: Sequence[Problem],
    s: TTSSettings,
    out_dir: str | Path,
    title: str = "",
    skips: Skips | None = None,
) -> dict[str, Any]:
    """Run the configured modes on `problems`, resuming from the records in `out_dir`;
    writes results.json, results.md (`results_table`) and accuracy_vs_compute.png there and
    returns the results (with `skips`, the over-long questions left out of `problems`)."""
    out = Path(out_dir)
    if "sequential" in s.modes and critic is None:
        raise ConfigError(
            "the sequential mode needs a critic: set `critic` or drop 'sequential' from tts.modes"
        )
    results: dict[str, Any] = {
        "questions": len(problems),
        "ks": sorted(s.ks),
        "rounds": s.rounds,
        "critic": critic is not None,
    }
    results = with_skips(results, skips)
    if "sequential" in s.modes:
        records = fill_records(
            out / "sequential.jsonl", sequential_records, actor, critic, problems, s
        )
        results["sequential"] = summarize_sequential(records, s.rounds)
    if "parallel" in s.modes:
        records = fill_records(out / "parallel.jsonl", parallel_records, actor, critic, problems, s)
        results["parallel"] = summarize_parallel(records, s.ks, s.weights)
        results["critic_diagnostics"] = critic_diagnostics(records)
    curves = {CURVES[m]: pts for m, pts in results.get("parallel", {}).items()}
    if "sequential" in results:
        curves[CURVES["sequential"]] = results["sequential"]
    if this_process_writes():
        if problems:
            results["plot"] = str(
                plot_accuracy_vs_compute(curves, out / "accuracy_vs_compute.png", title)
            )
        atomic_write_json(out / "results.json", results)
        atomic_write_text(out / "results.md", results_table(results))
    return results


@dataclass
class Config(StageConfig):
    stage: str = "eval_tts"
    run_dir: str = "runs/eval_tts"
    actor: ModelSpec = field(default_factory=lambda: ModelSpec(preset="demo"))
    critic: CriticSpec | None = field(default_factory=lambda: CriticSpec(oracle="demo"))
    problems: ProblemSource = field(default_factory=ProblemSource)
    tts: TTSSettings = field(default_factory=TTSSettings)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        check_oracle(self.critic, self.problems, "problems")


def run(cfg: Config) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    problems = load_problems(cfg.problems)
    actor, critic = stage_roles(cfg, cfg.actor, cfg.critic, problems, mesh_from_config(cfg.mesh))
    assert actor is not None
    problems, skips = fit_questions(actor, problems, cfg.problems, "problems")
    title = f"{cfg.problems.kind}: {len(problems)} questions"
    return run_test_time(actor, critic, problems, cfg.tts, run_dir, title, skips)
