"""Where a stage's questions come from: the demo world, GSM8K, MATH, or a JSONL of Problems."""

from __future__ import annotations

from dataclasses import dataclass, field

from critique_jax.data.demo_world import generate_problems
from critique_jax.data.loaders import load_gsm8k, load_math, read_records
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


def load_problems(src: ProblemSource) -> list[Problem]:
    if src.kind == "demo":
        problems = generate_problems(src.size, src.seed, levels=tuple(src.levels))
    elif src.kind in ("gsm8k", "math"):
        if not src.path:
            raise ValueError(
                f"problems.path is empty for kind {src.kind!r}: give a local "
                "jsonl file or a hub dataset name"
            )
        loader = load_gsm8k if src.kind == "gsm8k" else load_math
        problems = loader(src.path, split=src.split)
    elif src.kind == "jsonl":
        problems = [Problem.from_dict(r) for _, r in read_records(src.path)]
    else:
        raise ValueError(f"problems.kind {src.kind!r} unknown; use demo, gsm8k, math or jsonl")
    return problems[: src.limit] if src.limit else problems
