"""Where a stage's questions come from: the demo world, GSM8K, MATH, or a JSONL of Problems."""

from __future__ import annotations

from dataclasses import dataclass, field

from critique_jax.config import bounded
from critique_jax.data.demo_world import generate_problems
from critique_jax.data.loaders import DataError, load_gsm8k, load_math, read_records
from critique_jax.data.records import Problem


@dataclass
class ProblemSource:
    kind: str = "demo"  # demo | gsm8k | math | jsonl
    path: str = ""  # file or hub name (gsm8k, math); Problem-shaped records (jsonl)
    split: str = "test"
    limit: int | None = None
    seed: int = 0  # demo world generation seed
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])  # demo world difficulties
    size: int = 200  # demo world problems
    # A question longer than the actor's prompt limit: stop naming it (error), or skip it and
    # count it in the stage's results (skip); see pipelines.overlong.
    overlong: str = bounded("error", choices=("error", "skip"))


def load_problems(src: ProblemSource) -> list[Problem]:
    if src.kind == "demo":
        problems = generate_problems(src.size, src.seed, levels=tuple(src.levels))
    elif src.kind in ("gsm8k", "math"):
        if not src.path:
            raise DataError(
                f"problems.path is empty for kind {src.kind!r}: give a local "
                "jsonl file or a hub dataset name"
            )
        loader = load_gsm8k if src.kind == "gsm8k" else load_math
        problems = loader(src.path, split=src.split)
    elif src.kind == "jsonl":
        problems = [problem_from_record(where, r) for where, r in read_records(src.path)]
    else:
        raise DataError(f"problems.kind {src.kind!r} unknown; use demo, gsm8k, math or jsonl")
    return problems[: src.limit] if src.limit else problems


def problem_from_record(where: str, r: dict) -> Problem:
    """A `Problem` from a Problem-shaped record; wrong or missing fields name the record."""
    problems = []
    for key in ("id", "question", "answer"):
        value = r.get(key)
        if (
            key in ("id", "answer")
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            continue  # numbers become strings below
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{key!r} must be a non-empty string, got {value!r}")
    for key in ("solution", "subject", "source"):
        if key in r and not isinstance(r[key], str):
            problems.append(f"{key!r} must be a string, got {type(r[key]).__name__}")
    if r.get("level") is not None and (
        not isinstance(r["level"], int) or isinstance(r["level"], bool)
    ):
        problems.append(f"'level' must be an int or null, got {r['level']!r}")
    if problems:
        raise DataError(
            f"{where}: {'; '.join(problems)}. Fix: write Problem records "
            "{id, question, answer, solution?, level?, subject?, source?}"
        )
    fields = {k: r[k] for k in ("solution", "level", "subject", "source") if k in r}
    return Problem(id=str(r["id"]), question=r["question"], answer=str(r["answer"]), **fields)
