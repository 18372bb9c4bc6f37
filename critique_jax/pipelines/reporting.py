"""What the stages' results tables share: a problem's difficulty level, means per level, and
markdown cells, so every stage reports accuracy by difficulty in the same keys and format."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from critique_jax.data.critique_format import split_steps
from critique_jax.data.records import Problem


def difficulty(problem: Problem) -> int | None:
    """Problem.level (MATH level, demo steps), else the number of steps of the reference
    solution (GSM8K has no level), else None."""
    if problem.level is not None:
        return problem.level
    return len(split_steps(problem.solution)) if problem.solution else None


def mean_by_level(levels: Iterable[int | None], values: Iterable[float]) -> dict[str, float]:
    """Mean of `values` per difficulty level, keyed by str(level) in numeric order."""
    groups: dict[int | None, list[float]] = {}
    for level, value in zip(levels, values, strict=True):
        groups.setdefault(level, []).append(value)
    order = sorted(groups, key=lambda lv: (lv is None, lv or 0))
    return {str(lv): sum(groups[lv]) / len(groups[lv]) for lv in order}


def sorted_levels(levels: Iterable[str]) -> list[str]:
    """Level keys of `mean_by_level` dicts, numeric ones first in numeric order."""
    return sorted(levels, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))


def table_cell(x: Any, digits: int = 3) -> str:
    """A markdown table cell: "-" for a missing value, floats to `digits` decimals."""
    return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)
