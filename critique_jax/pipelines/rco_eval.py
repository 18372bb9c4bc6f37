"""The `eval_rco` stage: compare critics by how much their critiques improve refinements.

    python -m critique_jax.train --config configs/eval_rco_demo.yaml

Every critic in `critics` (e.g. the initial critic, +DPCO, +RCO) critiques the same held-out
(x, y0) groups (`num_critiques` samples each), the same actor refines each critique
`num_refinements` times with the same seeds (common random numbers: differences between
critics are not sampling noise of the actor), and the judge scores the refinements:

* mean CU: mean over critiques of CU = mean_j PS(y'_j, y0), PS in {0, 0.5, 1};
* RQS: the judge's absolute score of the refinements themselves (verifier: the share that
  is correct, on [0, 1]; model judge: a 1-10 rating);
* refinement accuracy (when gold answers exist), split into `fixed` (y0 wrong, refinement
  right) and `broken` (y0 right, refinement wrong), the critic's final-verdict accuracy on
  y0, and the critique length in tokens (inference compute).

Outputs in run_dir: initial.jsonl (the shared y0), critics/<name>.jsonl (per-group records,
resumable), comparison.json and comparison.md.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from critique_jax.config import ModelSpec, to_dict
from critique_jax.data.critique_format import parse_critique
from critique_jax.data.math import verify
from critique_jax.data.records import JsonRecord
from critique_jax.pipelines.overlong import with_skips
from critique_jax.pipelines.rco_collect import (
    ChatModel,
    CritiqueGroup,
    CritiqueSample,
    Group,
    Judge,
    Rollouts,
    judged_groups,
    load_agent,
    sample_chunk,
    solution_label,
)
from critique_jax.runio import RecordLog, atomic_write_json, atomic_write_text, this_process_writes
from critique_jax.sharding import mesh_from_config

log = logging.getLogger(__name__)


@dataclass
class CriticEntry:
    name: str
    model: ModelSpec


@dataclass
class Config(Rollouts):
    stage: str = "eval_rco"
    run_dir: str = "runs/eval_rco"
    critics: list[CriticEntry] = field(default_factory=list)  # the first is the baseline
    num_critiques: int = 2  # per (x, y0) and critic
    num_refinements: int = 4  # per critique

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.critics:
            raise ValueError(
                "critics is empty: list the critic checkpoints to compare, each "
                "as {name: ..., model: {path: ...}}"
            )
        names = [c.name for c in self.critics]
        if len(set(names)) != len(names) or not all(n and "/" not in n for n in names):
            raise ValueError(f"critic names {names} must be unique, non-empty, without '/'")


@dataclass(frozen=True)
class EvaluatedCritique(JsonRecord):
    """A critique as the evaluation keeps it: its length rather than its tokens, and the
    judge's absolute score of each refinement (`scores`, aligned with `refinements`)."""

    text: str
    finish_reason: str
    sample_logp: float
    refinements: tuple[str, ...]
    ps: tuple[float, ...]
    cu: float
    num_tokens: int
    scores: tuple[float | None, ...]

    @classmethod
    def of(cls, c: CritiqueSample, scores: tuple[float | None, ...]) -> EvaluatedCritique:
        return cls(
            c.text,
            c.finish_reason,
            c.sample_logp,
            c.refinements,
            c.ps,
            c.cu,
            len(c.token_ids),
            scores,
        )


@dataclass(frozen=True)
class EvaluatedGroup:
    """A line of critics/<name>.jsonl: a group's keys as in critiques.jsonl, without the
    prompt tokens."""

    group: Group
    solution_is_correct: bool | None
    critiques: tuple[EvaluatedCritique, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.group.to_json(),
            "solution_is_correct": self.solution_is_correct,
            "critiques": [c.to_json() for c in self.critiques],
        }

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> EvaluatedGroup:
        critiques = tuple(EvaluatedCritique.from_json(c) for c in r["critiques"])
        return cls(Group.from_json(r), solution_label(r), critiques)


def evaluated(judge: Judge, records: list[CritiqueGroup]) -> list[EvaluatedGroup]:
    """The records with the judge's score of every refinement, in one judge call."""
    groups = [r.group for r in records for c in r.critiques for _ in c.refinements]
    texts = [t for r in records for c in r.critiques for t in c.refinements]
    scores = iter(judge.score([g.question for g in groups], texts, [g.answer for g in groups]))
    return [
        EvaluatedGroup(
            r.group,
            r.solution_is_correct,
            tuple(
                EvaluatedCritique.of(c, tuple(next(scores) for _ in c.refinements))
                for c in r.critiques
            ),
        )
        for r in records
    ]


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def critic_metrics(records: list[EvaluatedGroup], scale: float) -> dict[str, Any]:
    crits = [(r, c) for r in records for c in r.critiques]
    scores = [s for _, c in crits for s in c.scores if s is not None]
    out: dict[str, Any] = {
        "mean_cu": _mean([c.cu for _, c in crits]),
        "rqs": _mean(scores),
        "rqs_scale": scale,
        "critique_tokens": _mean([c.num_tokens for _, c in crits]),
        "parseable": _mean([parse_critique(c.text).parseable for _, c in crits]),
    }
    golds = [(r, c) for r, c in crits if r.group.answer is not None]
    if golds:
        right = {0: [], 1: []}
        for r, c in golds:
            right[int(r.solution_is_correct)] += [verify(t, r.group.answer) for t in c.refinements]
        out["refinement_accuracy"] = _mean(right[0] + right[1])
        out["fixed"] = _mean(right[0])  # y0 wrong -> refinement right
        out["broken"] = _mean([not ok for ok in right[1]])  # y0 right -> refinement wrong
        out["verdict_accuracy"] = _mean(
            [parse_critique(c.text).final_correct == r.solution_is_correct for r, c in golds]
        )
    return out


COLUMNS = (
    ("mean_cu", "mean CU"),
    ("rqs", "RQS"),
    ("refinement_accuracy", "refine acc"),
    ("fixed", "fixed"),
    ("broken", "broken"),
    ("verdict_accuracy", "verdict acc"),
    ("parseable", "parseable"),
    ("critique_tokens", "tokens/critique"),
)


def comparison_markdown(table: dict[str, Any]) -> str:
    rows = table["critics"]
    cols = [(k, title) for k, title in COLUMNS if any(r.get(k) is not None for r in rows)]
    base = rows[0]["mean_cu"]
    lines = [
        f"RCO evaluation: {table['groups']} groups, {table['critiques_per_group']} critiques x "
        f"{table['refinements_per_critique']} refinements each, judge: {table['judge']} "
        f"(RQS on [0, {rows[0]['rqs_scale']:g}]).",
        "",
        "| critic | " + " | ".join(t for _, t in cols) + " | CU vs first |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    for r in rows:
        cells = [
            "-" if r.get(k) is None else f"{r[k]:.3f}" if k != "critique_tokens" else f"{r[k]:.1f}"
            for k, _ in cols
        ]
        delta = r["mean_cu"] - base
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {delta:+.3f} |")
    return "\n".join(lines) + "\n"


def run(cfg: Config, actor: ChatModel | None = None) -> dict[str, Any]:
    """The stage; `actor`, when given (Python API), is used instead of `cfg.actor`: any
    object with `chat(conversations, sp)`, e.g. a scripted refiner in a synthetic world."""
    run_dir = Path(cfg.run_dir)
    mesh = mesh_from_config(cfg.mesh)
    if actor is None:
        if cfg.actor is None:
            raise ValueError("actor is not set: give the model that refines (actor: {path: ...})")
        _, actor = load_agent(cfg.actor, mesh, cfg.seed, "actor")
    judge, groups, skips = judged_groups(cfg, actor, mesh)
    results = []
    for entry in cfg.critics:
        critic_model, critic = load_agent(
            entry.model, mesh, cfg.seed, f"critic {entry.name!r}", cfg.critique_format
        )

        def compute(chunk: list[Group], index: int, critic=critic) -> list[dict[str, Any]]:
            records = sample_chunk(cfg, critic, actor, judge, chunk, index)
            return [r.to_json() for r in evaluated(judge, records)]

        path = run_dir / "critics" / f"{entry.name}.jsonl"
        with RecordLog(path) as log_:
            records = [
                EvaluatedGroup.from_json(r) for r in log_.fill(groups, cfg.chunk_groups, compute)
            ]
        metrics = critic_metrics(records, judge.scale)
        log.info("eval_rco %s: %s", entry.name, metrics)
        results.append({"name": entry.name, "model": to_dict(entry.model), **metrics})
        del critic, critic_model
        gc.collect()
    table = {
        "judge": cfg.judge.kind,
        "groups": len(groups),
        "critiques_per_group": cfg.num_critiques,
        "refinements_per_critique": cfg.num_refinements,
        "critics": results,
    }
    table = with_skips(table, skips)
    if this_process_writes():
        atomic_write_json(run_dir / "comparison.json", table)
        atomic_write_text(run_dir / "comparison.md", comparison_markdown(table))
    return table
