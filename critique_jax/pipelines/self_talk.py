"""The `self_talk` stage: one model that solves, checks itself and corrects in one generation.

    python -m critique_jax.train --config configs/self_talk_demo.yaml

A trajectory stitches a solution, its critique and, when the critique finds an error, the
refinement into one response with explicit reflection markers (the constants below):

    <solution>
    {y0}
    </solution>
    Let me check my work.
    {critique}
    Let me correct it.
    <solution>
    {y'}
    </solution>

When the critique accepts y0, the response ends with the critique and "My solution is
correct." instead of a second solution. The final answer of a self-talk response is the one
stated in its last <solution> block (`final_answer`), so answers quoted inside a critique
never count; a response without any marker is read as a plain solution.

Data: refine-format records (question, solution, critique, refinement; e.g. critique data
collected by `collect_critiques`) or a MathCritique release file (`data.format:
mathcritique-refine`); without `data`, demo-world trajectories are built from
`train_problems` (flawed solutions from `inject_error`, critiques from `templated_critique`,
the reference solution as refinement; a share `correct_share` starts from the reference
solution and is accepted). The model is fine-tuned on (solve prompt -> trajectory) and
evaluated with one greedy generation per test question: accuracy of the final answer, of the
first solution (the gain is what self-correction adds), tokens per question, and how often it
checks and corrects itself. Resumes: fine-tune checkpoints in train/, the exported model in
hf/, predictions in predictions.jsonl.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from critique_jax.data.critique_format import CritiqueFormat, parse_critique
from critique_jax.data.demo_world import inject_error, templated_critique
from critique_jax.data.math import extract_answer, verify
from critique_jax.data.prompts import solve_messages
from critique_jax.data.records import Problem
from critique_jax.data.sources import ProblemSource, load_problems
from critique_jax.pipelines.finetune import Example, SFTData, finetune, load_sft_records
from critique_jax.pipelines.loading import LoadedModel, load_model
from critique_jax.pipelines.overlong import fit_questions, with_skips
from critique_jax.pipelines.reporting import difficulty, mean_by_level
from critique_jax.pipelines.roles import Agent, make_agent, solve, with_demo_tokenizer
from critique_jax.runio import RecordLog, atomic_write_json, atomic_write_jsonl, this_process_writes
from critique_jax.sampling import SamplingParams
from critique_jax.sharding import mesh_from_config

log = logging.getLogger(__name__)

SOLUTION_OPEN = "<solution>"
SOLUTION_CLOSE = "</solution>"
CHECK = "Let me check my work."
CORRECT_IT = "Let me correct it."
CONFIRM = "My solution is correct."
MARKERS = (SOLUTION_OPEN, SOLUTION_CLOSE, CHECK, CORRECT_IT, CONFIRM)


def _block(solution: str) -> str:
    return f"{SOLUTION_OPEN}\n{solution.strip()}\n{SOLUTION_CLOSE}"


def build_trajectory(solution: str, critique: str, refinement: str | None = None) -> str:
    """One self-talk response: y0, the check, then the correction (or the confirmation when
    `refinement` is None)."""
    parts = [_block(solution), CHECK, critique.strip()]
    parts += [CORRECT_IT, _block(refinement)] if refinement is not None else [CONFIRM]
    return "\n".join(parts)


def solutions(text: str) -> list[str]:
    """The solution blocks of a response, in order (an unclosed last block runs to the end)."""
    out = []
    for chunk in text.split(SOLUTION_OPEN)[1:]:
        out.append(chunk.split(SOLUTION_CLOSE, 1)[0].strip())
    return out


def final_answer(text: str) -> str | None:
    """The answer stated in the last solution block; the whole text when there is none."""
    return extract_answer((solutions(text) or [text])[-1])


def trajectory_from_record(record: dict[str, Any]) -> str | None:
    """The trajectory of a (question, solution, critique, refinement) record: confirmed when
    the critique's final verdict is Correct, corrected when a refinement is given; None for a
    rejected solution without a refinement (nothing to learn the correction from)."""
    if parse_critique(record["critique"]).final_correct is True:
        return build_trajectory(record["solution"], record["critique"])
    if record.get("refinement"):
        return build_trajectory(record["solution"], record["critique"], record["refinement"])
    return None


def demo_records(
    problems: Sequence[Problem],
    correct_share: float,
    seed: int = 0,
    critique_format: CritiqueFormat = "verdict_first",
) -> list[dict[str, Any]]:
    """Demo-world (question, solution, critique, refinement) records from the oracle, its
    critiques in `critique_format`."""
    rng = random.Random(seed)
    records = []
    for p in problems:
        if rng.random() < correct_share:
            y0, refinement = p.solution, None
        else:
            y0, refinement = inject_error(p, rng.randint(1, p.level or 1), seed), p.solution
        records.append(
            {
                "question": p.question,
                "solution": y0,
                "critique": templated_critique(p, y0, critique_format),
                "refinement": refinement,
            }
        )
    return records


def trajectories(records: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(question, trajectory) of every record that makes one."""
    out = []
    for r in records:
        trajectory = trajectory_from_record(r)
        if trajectory is not None:
            out.append((r["question"], trajectory))
    return out


def predict(agent: Agent, problems: Sequence[Problem], sp: SamplingParams) -> list[dict]:
    """One generation per question, read as a self-talk response."""
    outs = solve(agent, [p.question for p in problems], sp.replace(n=1))
    records = []
    for p, cs in zip(problems, outs, strict=True):
        text = cs[0].text or ""
        blocks = solutions(text) or [text]  # no solution block: the whole text is one
        records.append(
            {
                "id": p.id,
                "level": difficulty(p),
                "gold": p.answer,
                "text": text,
                "answer": extract_answer(blocks[-1]),
                "correct": verify(blocks[-1], p.answer),
                "first_correct": verify(blocks[0], p.answer),
                "tokens": cs[0].num_tokens,
                "checked": CHECK in text,
                "corrected": CORRECT_IT in text,
            }
        )
    return records


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n = max(len(records), 1)
    return {
        "questions": len(records),
        "accuracy": sum(r["correct"] for r in records) / n,
        "first_solution_accuracy": sum(r["first_correct"] for r in records) / n,
        "by_level": mean_by_level([r["level"] for r in records], [r["correct"] for r in records]),
        "tokens_per_question": sum(r["tokens"] for r in records) / n,
        "checked": sum(r["checked"] for r in records) / n,
        "corrected": sum(r["corrected"] for r in records) / n,
    }


@dataclass
class Config(StageConfig):
    stage: str = "self_talk"
    run_dir: str = "runs/self_talk"
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="demo"))
    data: SFTData | None = None  # None: demo trajectories from train_problems
    train_problems: ProblemSource = field(
        default_factory=lambda: ProblemSource(split="train", seed=1, size=200)
    )
    test_problems: ProblemSource = field(default_factory=lambda: ProblemSource(seed=2, size=100))
    correct_share: float = 0.25
    generate: SamplingParams = SamplingParams(max_new_tokens=512, temperature=0.0)
    chunk_size: int = 64
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        if self.data is not None and self.data.format not in ("refine", "mathcritique-refine"):
            raise ConfigError(
                f"data.format {self.data.format!r}: use 'refine' (question, "
                "solution, critique, refinement records) or "
                "'mathcritique-refine' (a MathCritique release file)"
            )
        if not 0 <= self.correct_share <= 1:
            raise ConfigError(f"correct_share={self.correct_share} must be in [0, 1]")


def run(cfg: Config) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    mesh = mesh_from_config(cfg.mesh)
    test = load_problems(cfg.test_problems)
    if cfg.data is not None:
        train: list[Problem] = []
        records, _ = load_sft_records(cfg.data)
    else:
        train = load_problems(cfg.train_problems)
        records = demo_records(train, cfg.correct_share, cfg.seed, cfg.critique_format)
        seen = {p.question for p in train}
        test = [p for p in test if p.question not in seen]  # held-out questions only
    pairs = trajectories(records)
    if not pairs:
        raise ValueError(
            "no self-talk trajectories: every record is a rejected solution "
            "without a refinement; give records with refinements"
        )
    if this_process_writes():
        atomic_write_jsonl(
            run_dir / "trajectories.jsonl", ({"question": q, "trajectory": t} for q, t in pairs)
        )
    examples: list[Example] = [(solve_messages(q), t) for q, t in pairs]
    spec = with_demo_tokenizer(cfg.model, [*train, *test], run_dir / "demo_tokenizer")
    hf = run_dir / "hf"
    trained = (hf / "config.json").exists()
    if trained:
        spec = ModelSpec(path=str(hf), overrides=spec.overrides)
    model = load_model(spec, mesh, cfg.seed)
    test, skips = fit_questions(make_agent(model, mesh), test, cfg.test_problems, "test_problems")
    if not trained:
        params = finetune(
            model, examples, cfg.train, cfg.optim, cfg.mesh, run_dir / "train", cfg.seed
        )
        save_hf(model.cfg, params, hf, model.tokenizer)
        model = LoadedModel(model.cfg, params, model.tokenizer)
    agent = make_agent(model, mesh)
    with RecordLog(run_dir / "predictions.jsonl") as log_:
        predictions = log_.fill(
            test, cfg.chunk_size, lambda chunk, _: predict(agent, chunk, cfg.generate)
        )
    results = {"trajectories": len(examples), "hf_dir": str(hf), **summarize(predictions)}
    results = with_skips(results, skips)
    if this_process_writes():
        atomic_write_json(run_dir / "results.json", results)
    return results
