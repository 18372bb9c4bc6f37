"""The record types every stage reads and writes, so stages agree on field names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """A question with a verifiable gold answer (GSM8K, MATH, the demo world)."""

    id: str
    question: str
    answer: str  # gold final answer, already extracted (e.g. "18", "\\frac{1}{2}")
    solution: str = ""  # reference step-by-step solution, when the dataset has one
    level: int | None = None  # difficulty: MATH level 1-5, demo world number of steps
    subject: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Problem:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
