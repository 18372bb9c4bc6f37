"""The `dpco` stage: the DPCO baseline, DPO on pairs of critiques of the same (x, y0).

    python -m critique_jax.train --config configs/dpco_demo.yaml

Pairs are built from the groups `rco_collect` wrote (so DPCO and RCO train on the same
critiques, with the same stored reference log-probs). `ranking` picks the chosen critique:

* `cu` (the default, for math): every pair of valid critiques of a group whose utilities
  differ by more than `min_cu_gap`, the higher-CU critique chosen. The preference then comes
  from the same refinements RCO learns from, and the two methods differ only in how they
  use it (pairwise DPO vs. least squares on the utilities themselves).
* `judge`: the paper's DPCO, a judge ranks the two critiques directly
  (`Judge.compare_critiques`): a model judge is asked in both orders and only a consistent
  verdict counts; the verifier judge prefers the critique whose final verdict agrees with
  the verifier on y0. Ties are dropped.

The chosen pairs go to run_dir/pairs.jsonl (one record per group, resumable), the trained
critic to run_dir/hf. A batch is P pairs as 2P rows (chosen, rejected), loss weight P.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from critique_jax import losses
from critique_jax.config import MeshConfig, ModelSpec, OptimConfig, StageConfig, TrainConfig
from critique_jax.pipelines.judges import Judge, JudgeConfig, make_judge
from critique_jax.pipelines.rco_train import (
    CritiqueTable,
    check_train,
    prepare,
    train_and_report,
    unpacked_train,
)
from critique_jax.runio import RecordLog
from critique_jax.trainer import ApplyFn, Batch, Params

log = logging.getLogger(__name__)

PAIRS = "pairs.jsonl"


@dataclass
class Config(StageConfig):
    stage: str = "dpco"
    run_dir: str = "runs/dpco"
    collect_dir: str = "runs/rco_collect"
    model: ModelSpec | None = None  # the reference critic; None: the one rco_collect used
    ranking: str = "cu"  # cu | judge
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # for ranking: judge
    min_cu_gap: float = 0.0  # ranking cu: chosen.cu - rejected.cu must exceed it
    chunk_groups: int = 64  # ranking judge: groups per judge call (the unit of resume)
    beta: float = 0.1
    drop_truncated: bool = True
    check_reference: bool = True
    train: TrainConfig = field(default_factory=unpacked_train)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        if self.ranking not in ("cu", "judge"):
            raise ValueError(f"ranking={self.ranking!r}; use cu or judge")
        check_train(self.train, self.beta)


def cu_pairs(cu: np.ndarray, valid: np.ndarray, min_gap: float) -> list[tuple[int, int]]:
    """(chosen, rejected) indices within one group: every valid pair with a CU gap."""
    idx = np.flatnonzero(valid)
    return [(int(i), int(j)) for i, j in itertools.permutations(idx, 2) if cu[i] - cu[j] > min_gap]


def judge_pairs(
    judge: Judge, records: list[dict[str, Any]], valid: list[np.ndarray]
) -> list[list[tuple[int, int]]]:
    """Per group, the (chosen, rejected) pairs a judge prefers; all pairs in one call."""
    asks = [
        (g, int(i), int(j))
        for g, (r, ok) in enumerate(zip(records, valid, strict=True))
        for i, j in itertools.combinations(np.flatnonzero(ok), 2)
    ]
    crit = [[c["text"] for c in r["critiques"]] for r in records]
    prefs = judge.compare_critiques(
        [records[g]["question"] for g, _, _ in asks],
        [records[g]["solution"] for g, _, _ in asks],
        [crit[g][i] for g, i, _ in asks],
        [crit[g][j] for g, _, j in asks],
        [records[g]["answer"] for g, _, _ in asks],
    )
    out: list[list[tuple[int, int]]] = [[] for _ in records]
    for (g, i, j), p in zip(asks, prefs, strict=True):
        if p != 0.5:
            out[g].append((i, j) if p > 0.5 else (j, i))
    return out


def rank_pairs(
    cfg: Config, records: list[dict[str, Any]], table: CritiqueTable, run_dir: Path, mesh: Any
) -> dict[str, list[tuple[int, int]]]:
    """Group id -> its (chosen, rejected) pairs, written to / resumed from pairs.jsonl; the
    judge model is loaded only when some group is not ranked yet."""
    n = table.group_size
    valid = list(table.valid.reshape(-1, n))
    cu = table.cu.reshape(-1, n)
    index = {r["id"]: g for g, r in enumerate(records)}
    judge: Judge | None = None

    def compute(chunk: list[dict[str, Any]], _: int) -> list[dict[str, Any]]:
        nonlocal judge
        groups = [index[r["id"]] for r in chunk]
        if cfg.ranking == "cu":
            found = [cu_pairs(cu[g], valid[g], cfg.min_cu_gap) for g in groups]
        else:
            judge = judge or make_judge(cfg.judge, mesh, cfg.seed)
            found = judge_pairs(judge, chunk, [valid[g] for g in groups])
        return [
            {"id": r["id"], "pairs": [list(p) for p in pairs]}
            for r, pairs in zip(chunk, found, strict=True)
        ]

    with RecordLog(run_dir / PAIRS) as pairs_log:
        ranked = pairs_log.fill(records, cfg.chunk_groups, compute, itemgetter("id"))
    return {r["id"]: [tuple(p) for p in r["pairs"]] for r in ranked}


def pair_arrays(
    table: CritiqueTable, records: list[dict[str, Any]], pairs: dict[str, list[tuple[int, int]]]
) -> dict[str, np.ndarray]:
    """[P, 2, ...] arrays: row 0 the chosen critique, row 1 the rejected one."""
    n = table.group_size
    index = np.array(
        [
            [g * n + c, g * n + r]
            for g, rec in enumerate(records)
            for c, r in pairs.get(rec["id"], [])
        ],
        np.int64,
    ).reshape(-1, 2)
    per_row = dict(table.rows, ref_logp=table.ref_logp)
    return {k: v[index] for k, v in per_row.items()}


@dataclass(frozen=True)
class DPOLoss:
    """`loss_fn` for the Trainer over rows (chosen, rejected, chosen, ...); weight = pairs."""

    beta: float

    def __call__(self, apply_fn: ApplyFn, params: Params, batch: Batch):
        logits = apply_fn(params, batch["inputs"], batch["positions"], batch["segment_ids"])
        logps = losses.sequence_logprobs(logits, batch["targets"], batch["loss_mask"])
        pi, ref = logps.reshape(-1, 2), batch["ref_logp"].reshape(-1, 2)
        loss, metrics = losses.dpo_loss(pi[:, 0], pi[:, 1], ref[:, 0], ref[:, 1], self.beta)
        return loss, {"weight": jnp.float32(pi.shape[0]), **metrics}


def run(cfg: Config) -> dict[str, Any]:
    setup = prepare(cfg)
    pairs = rank_pairs(cfg, setup.records, setup.table, Path(cfg.run_dir), setup.mesh)
    arrays = pair_arrays(setup.table, setup.records, pairs)
    log.info(
        "dpco: %d pairs from %d groups (ranking: %s)",
        len(arrays["ref_logp"]),
        len(setup.records),
        cfg.ranking,
    )
    counts = {"pairs": len(arrays["ref_logp"]), "groups": len(setup.records)}
    return train_and_report(
        cfg,
        setup,
        arrays,
        2,
        DPOLoss(cfg.beta),
        {**counts, "ranking": cfg.ranking},
        ("loss", "reward_accuracy", "reward_margin"),
        what="pair",
    )
