"""Dataset questions a stage's roles cannot take, found before any sampling.

An oracle critic knows the demo world's computations only (`check_oracle`, at config time).

A question whose solve prompt is longer than the actor's longest prompt would abort a stage
midway (the sampler refuses it). Every stage that puts dataset questions into the actor's
prompts calls `fit_questions` on them first: with the problem source's `overlong: error`
(the default) the stage stops, naming the questions; with `overlong: skip` it drops them,
logs how many, and its results carry `overlong_skipped: {section: count}` (`with_skips`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from critique_jax.config import ConfigError
from critique_jax.data.loaders import DataError
from critique_jax.data.prompts import solve_messages
from critique_jax.data.records import Problem
from critique_jax.data.sources import ProblemSource
from critique_jax.sampling import Sampler

log = logging.getLogger(__name__)

Skips = dict[str, int]  # config section (e.g. "test_problems") -> questions skipped


def check_oracle(critic: Any, problems: ProblemSource, where: str) -> None:
    """An oracle critic (a `CriticSpec` with `oracle`) checks demo-world problems only:
    generated ones, or a JSONL of them (the demo writes its world so)."""
    if critic is not None and critic.oracle is not None and problems.kind not in ("demo", "jsonl"):
        raise ConfigError(
            f"critic.oracle: {critic.oracle} checks demo-world problems, but "
            f"{where}.kind is {problems.kind!r}; use `critic: {{model: "
            "{path: <critic HF dir>}}` for real data"
        )


def prompt_limit(sampler: Sampler) -> int:
    """The longest prompt the sampler takes: its largest bucket, at most the context."""
    context = sampler.cfg.max_position_embeddings
    return min(sampler.buckets.max_length or context, context)


def fit_questions(
    actor: Any, problems: Sequence[Problem], source: ProblemSource, section: str
) -> tuple[list[Problem], Skips]:
    """`problems` whose solve prompt fits `actor` (an `Agent`), and the skip count by
    `section`, the config section `source` came from (empty unless `source.overlong` is
    skip). A scripted actor without a sampler (the Python API) encodes nothing: all kept."""
    sampler = getattr(actor, "sampler", None)
    if sampler is None:
        return list(problems), {}
    cap = prompt_limit(sampler)
    lengths = [len(sampler.encode(solve_messages(p.question))) for p in problems]
    too_long = [(p.id, n) for p, n in zip(problems, lengths, strict=True) if n > cap]
    where = source.path or source.kind
    shown = ", ".join(f"{pid} ({n} tokens)" for pid, n in too_long[:5])
    if too_long and source.overlong == "error":
        raise DataError(
            f"{where}: {len(too_long)} of {len(problems)} questions do not fit the actor's "
            f"prompt limit of {cap} tokens: {shown}. Fix: set {section}.overlong=skip to skip "
            "them (counted in the results), shorten them, or use a model with a longer context"
        )
    if source.overlong != "skip":
        return list(problems), {}
    if too_long:
        log.warning(
            "%s: skipping %d of %d questions longer than the actor's prompt limit of %d "
            "tokens (%s.overlong=skip): %s",
            where,
            len(too_long),
            len(problems),
            cap,
            section,
            shown,
        )
    kept = [p for p, n in zip(problems, lengths, strict=True) if n <= cap]
    return kept, {section: len(too_long)}


def with_skips(results: dict[str, Any], skips: Skips | None) -> dict[str, Any]:
    """`results` plus `overlong_skipped` when a source skips over-long questions."""
    return {**results, "overlong_skipped": skips} if skips else results
