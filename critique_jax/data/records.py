"""The record types every stage reads and writes, so stages agree on field names, and
`JsonRecord`, how a stage's own record becomes a JSONL line and back."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from critique_jax.config import to_dict


class JsonRecord:
    """A frozen dataclass written as one JSON object, so that a stage's records are written
    and read in one place. `to_json`: its fields by name, as JSON holds them (tuples as
    lists). `from_json`: the fields read back, JSON lists as the tuples a field declares;
    keys that are not fields (a line may carry its group's keys too) are ignored, absent
    ones take the field's default. `disk_names` maps a field to its key on disk where the
    two differ. Records that nest records override the two."""

    disk_names: ClassVar[dict[str, str]] = {}

    def to_json(self) -> dict[str, Any]:
        return {self.disk_names.get(k, k): v for k, v in to_dict(self).items()}

    @classmethod
    def from_json(cls, r: Mapping[str, Any]) -> Self:
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key = cls.disk_names.get(f.name, f.name)
            if key in r:
                value = r[key]
                tuple_field = str(f.type).startswith("tuple")
                values[f.name] = tuple(value) if tuple_field and isinstance(value, list) else value
        return cls(**values)


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
