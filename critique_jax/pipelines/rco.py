"""The `rco` and `dpco` stages: train the critic on the critiques `rco_collect` wrote, with
RCO's least-squares objective or the DPCO baseline (DPO on pairs of critiques).

    python -m critique_jax.train --config configs/rco_demo.yaml
    python -m critique_jax.train --config configs/dpco_demo.yaml

One trainer path for both objectives (`objective`, by default the stage's name). Shared: the
collected critiques become rows (the stored prompt and critique token ids, never
re-tokenized, loss mask on the critique); a critique without a reference log-prob, too long
for train.seq_len, or (with drop_truncated) cut off at max_new_tokens is invalid; the policy
starts from the reference critic, is checked against its stored log-probs, trains on batches
of whole units (a unit's rows share a microbatch) and is exported to run_dir/hf. An objective
only chooses its units and its loss:

* rco: a unit is a group's N critiques, invalid ones masked; `losses.rco_loss` per group,
  1/(2N) sum_i (log pi(c_i|x,y0) - log pi_ref(c_i|x,y0) + log Z - CU_i / beta)^2,
  weighted by the number of groups.
* dpco: a unit is a (chosen, rejected) pair of valid critiques of one group;
  `losses.dpo_loss`, weighted by the number of pairs. `ranking: cu` takes every pair whose
  CU differs by more than `min_cu_gap`, the higher chosen, so both objectives learn from the
  same refinements and differ only in how they use them; `ranking: judge` is the paper's
  DPCO, a judge ranks the two critiques (`Judge.compare_critiques`) and ties are dropped.
  The pairs go to run_dir/pairs.jsonl (resumable).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from critique_jax import losses, scoring
from critique_jax.checkpoints.hf import save_hf
from critique_jax.config import MeshConfig, ModelSpec, OptimConfig, StageConfig, TrainConfig
from critique_jax.data.batching import BatchIterator
from critique_jax.pipelines.loading import LoadedModel, load_model
from critique_jax.pipelines.rco_collect import (
    Comparison,
    CritiqueGroup,
    Judge,
    JudgeConfig,
    collect_model_spec,
    critique_rows,
    make_judge,
    pad_id_of,
    read_groups,
)
from critique_jax.runio import RecordLog, atomic_write_json, this_process_writes
from critique_jax.sharding import Rules, data_parallel_size, mesh_from_config, rules_from_config
from critique_jax.trainer import ApplyFn, Batch, Params, Trainer

log = logging.getLogger(__name__)

PAIRS = "pairs.jsonl"
# Mean |log pi_policy - log pi_ref| per critique token above which the policy at step 0 is
# not the critic whose log-probs were stored (bf16 rounding stays far below it).
REFERENCE_TOLERANCE = 0.05
# Critiques the reference check scores (rounded up to the data-parallel size); the same row
# count as rco_collect's default score_batch_size, so the compiled scorer is shared.
REFERENCE_ROWS = 8


def unpacked_train() -> TrainConfig:
    """The default training of the critic stages: one critique per row (no packing)."""
    return TrainConfig(pack=False)


@dataclass
class Config(StageConfig):
    stage: str = "rco"
    run_dir: str = ""  # "": runs/<stage>
    objective: str = ""  # rco | dpco; "": the stage's name
    collect_dir: str = "runs/rco_collect"  # the rco_collect run_dir
    model: ModelSpec | None = None  # the reference critic; None: the one rco_collect used
    beta: float = 0.1  # rco: CU / beta is the target log-ratio scale; dpco: DPO's beta
    drop_truncated: bool = True  # mask critiques that hit max_new_tokens
    check_reference: bool = True  # step-0 policy log-probs must match the stored reference
    ranking: str = "cu"  # dpco: cu | judge
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # dpco, ranking: judge
    min_cu_gap: float = 0.0  # dpco, ranking cu: chosen.cu - rejected.cu must exceed it
    chunk_groups: int = 64  # dpco, ranking judge: groups per judge call (the unit of resume)
    train: TrainConfig = field(default_factory=unpacked_train)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        self.run_dir = self.run_dir or f"runs/{self.stage}"
        self.objective = self.objective or ("dpco" if self.stage == "dpco" else "rco")
        if self.objective not in ("rco", "dpco"):
            raise ValueError(f"objective={self.objective!r}; use rco or dpco")
        if self.ranking not in ("cu", "judge"):
            raise ValueError(f"ranking={self.ranking!r}; use cu or judge")
        if self.beta <= 0:
            raise ValueError(f"beta={self.beta} must be > 0")
        if self.train.pack:
            raise ValueError(
                "train.pack must be false: one critique per row, so that sequence "
                "log-probs and groups line up"
            )


# --------------------------------------------------------------------------- shared inputs


@dataclass
class CritiqueTable:
    """Every collected critique as one row, group by group: rows [G*N, T] and per-row
    ref_logp, cu, valid [G*N]; row g*N + i is critique i of group g."""

    rows: dict[str, np.ndarray]
    ref_logp: np.ndarray
    cu: np.ndarray
    valid: np.ndarray
    group_size: int

    @property
    def num_groups(self) -> int:
        return len(self.cu) // self.group_size


def critique_table(
    records: Sequence[CritiqueGroup], seq_len: int, pad_id: int, drop_truncated: bool
) -> CritiqueTable:
    """The rows of every critique; groups with fewer critiques are padded with invalid
    rows."""
    n = max(len(r.critiques) for r in records)
    prompts, completions, ref, cu, usable = [], [], [], [], []
    for r in records:
        for c in r.critiques + (None,) * (n - len(r.critiques)):
            prompts.append(r.prompt_ids)
            completions.append(() if c is None else c.token_ids)
            ok = (
                c is not None
                and c.ref_logp is not None
                and (c.finish_reason == "stop" or not drop_truncated)
            )
            usable.append(ok)
            ref.append(c.ref_logp if ok else 0.0)
            cu.append(c.cu if c is not None else 0.0)
    rows, fits = critique_rows(prompts, completions, seq_len, pad_id)
    valid = np.asarray(usable) & fits
    return CritiqueTable(rows, np.asarray(ref, np.float32), np.asarray(cu, np.float32), valid, n)


@dataclass(frozen=True)
class Objective:
    """What an objective hands the shared trainer path: its units as [units, unit_size, ...]
    arrays, the loss over their rows, and what the results report."""

    unit: str  # what a unit is called in layout errors
    unit_size: int
    arrays: dict[str, np.ndarray]
    loss_fn: Callable[[ApplyFn, Params, Batch], Any]
    counts: dict[str, Any]  # the first keys of results.json
    metrics: tuple[str, ...]  # the history metrics reported first and last


# --------------------------------------------------------------------------- rco


@dataclass(frozen=True)
class RCOLoss:
    """`loss_fn` for the Trainer; frozen, so equal settings share compiled programs."""

    beta: float
    group_size: int

    def __call__(self, apply_fn: ApplyFn, params: Params, batch: Batch):
        logits = apply_fn(params, batch["inputs"], batch["positions"], batch["segment_ids"])
        logps = losses.sequence_logprobs(logits, batch["targets"], batch["loss_mask"])
        shape = (-1, self.group_size)
        valid = batch["valid"].reshape(shape)
        loss = losses.rco_loss(
            logps.reshape(shape),
            batch["ref_logp"].reshape(shape),
            batch["cu"].reshape(shape),
            self.beta,
            valid,
        )
        groups = (valid.sum(axis=1) > 0).sum().astype(jnp.float32)
        count = jnp.maximum(batch["valid"].sum(), 1.0)
        logratio = ((logps - batch["ref_logp"]) * batch["valid"]).sum() / count
        return loss, {"weight": groups, "logratio": logratio}


def rco_objective(table: CritiqueTable, beta: float) -> Objective:
    """Units: the groups with at least one valid critique."""
    n = table.group_size
    per_row = dict(
        table.rows, ref_logp=table.ref_logp, cu=table.cu, valid=table.valid.astype(np.float32)
    )
    keep = table.valid.reshape(-1, n).any(axis=1)
    groups = {k: v.reshape(-1, n, *v.shape[1:])[keep] for k, v in per_row.items()}
    log.info(
        "rco: %d of %d groups have valid critiques (%d of %d critiques)",
        len(groups["cu"]),
        table.num_groups,
        int(table.valid.sum()),
        len(table.valid),
    )
    counts = {"groups": len(groups["cu"]), "critiques": int(table.valid.sum()), "group_size": n}
    return Objective("group", n, groups, RCOLoss(beta, n), counts, ("loss", "logratio"))


# --------------------------------------------------------------------------- dpco


@dataclass(frozen=True)
class RankedGroup:
    """A line of pairs.jsonl: a group's (chosen, rejected) critique indices."""

    id: str
    pairs: tuple[tuple[int, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "pairs": [list(p) for p in self.pairs]}

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> RankedGroup:
        return cls(r["id"], tuple((int(c), int(j)) for c, j in r["pairs"]))


def cu_pairs(cu: np.ndarray, valid: np.ndarray, min_gap: float) -> list[tuple[int, int]]:
    """(chosen, rejected) indices within one group: every valid pair with a CU gap."""
    idx = np.flatnonzero(valid)
    return [(int(i), int(j)) for i, j in itertools.permutations(idx, 2) if cu[i] - cu[j] > min_gap]


def judge_pairs(
    judge: Judge, records: Sequence[CritiqueGroup], valid: Sequence[np.ndarray]
) -> list[list[tuple[int, int]]]:
    """Per group, the (chosen, rejected) pairs a judge prefers; all pairs in one call."""
    asks = [
        (r, int(i), int(j))
        for r, ok in zip(records, valid, strict=True)
        for i, j in itertools.combinations(np.flatnonzero(ok), 2)
    ]
    prefs = judge.compare_critiques(
        [
            Comparison(
                r.group.question,
                r.critiques[i].text,
                r.critiques[j].text,
                r.group.answer,
                r.group.solution,
            )
            for r, i, j in asks
        ]
    )
    out: dict[str, list[tuple[int, int]]] = {r.id: [] for r in records}
    for (r, i, j), p in zip(asks, prefs, strict=True):
        if p != 0.5:
            out[r.id].append((i, j) if p > 0.5 else (j, i))
    return list(out.values())


def rank_pairs(
    cfg: Config, records: list[CritiqueGroup], table: CritiqueTable, mesh: Any
) -> dict[str, tuple[tuple[int, int], ...]]:
    """Group id -> its (chosen, rejected) pairs, written to / resumed from pairs.jsonl; the
    judge model is loaded only when some group is not ranked yet."""
    n = table.group_size
    valid = dict(zip((r.id for r in records), table.valid.reshape(-1, n), strict=True))
    cu = dict(zip((r.id for r in records), table.cu.reshape(-1, n), strict=True))
    judge: Judge | None = None

    def compute(chunk: list[CritiqueGroup], _: int) -> list[dict[str, Any]]:
        nonlocal judge
        if cfg.ranking == "cu":
            found = [cu_pairs(cu[r.id], valid[r.id], cfg.min_cu_gap) for r in chunk]
        else:
            judge = judge or make_judge(cfg.judge, mesh, cfg.seed)
            found = judge_pairs(judge, chunk, [valid[r.id] for r in chunk])
        return [RankedGroup(r.id, tuple(p)).to_json() for r, p in zip(chunk, found, strict=True)]

    with RecordLog(Path(cfg.run_dir) / PAIRS) as pairs_log:
        ranked = pairs_log.fill(records, cfg.chunk_groups, compute)
    return {g.id: g.pairs for g in map(RankedGroup.from_json, ranked)}


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


def dpco_objective(
    cfg: Config, records: list[CritiqueGroup], table: CritiqueTable, mesh: Any
) -> Objective:
    """Units: the ranked pairs, row 0 the chosen critique, row 1 the rejected one."""
    pairs = rank_pairs(cfg, records, table, mesh)
    n = table.group_size
    index = np.array(
        [[g * n + c, g * n + r] for g, rec in enumerate(records) for c, r in pairs[rec.id]],
        np.int64,
    ).reshape(-1, 2)
    arrays = {k: v[index] for k, v in dict(table.rows, ref_logp=table.ref_logp).items()}
    log.info("dpco: %d pairs from %d groups (ranking: %s)", len(index), len(records), cfg.ranking)
    counts = {"pairs": len(index), "groups": len(records), "ranking": cfg.ranking}
    metrics = ("loss", "reward_accuracy", "reward_margin")
    return Objective("pair", 2, arrays, DPOLoss(cfg.beta), counts, metrics)


# --------------------------------------------------------------------------- training


class UnitBatches:
    """Deterministic, resumable batches of whole units: a `BatchIterator` over units
    ([units, size, ...] arrays) whose batches are flattened to rows [U*size, ...]."""

    def __init__(
        self,
        units: dict[str, np.ndarray],
        units_per_batch: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ) -> None:
        self.inner = BatchIterator(units, units_per_batch, seed, process_index, process_count)

    def __iter__(self) -> UnitBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in next(self.inner).items()}

    def state(self) -> dict[str, int]:
        return self.inner.state()

    def restore(self, state: dict[str, int]) -> None:
        self.inner.restore(state)


def check_unit_layout(train: TrainConfig, unit_size: int, num_units: int, unit: str) -> int:
    """Units per batch; every microbatch must hold whole units."""
    rows = train.batch_size // train.microbatches
    if train.batch_size % train.microbatches or rows % unit_size:
        raise ValueError(
            f"train.batch_size={train.batch_size} / train.microbatches={train.microbatches} "
            f"must be a multiple of the {unit} size {unit_size}, so that no {unit} is split "
            f"across microbatches; use a batch size that is a multiple of "
            f"{unit_size * train.microbatches}"
        )
    per_batch = train.batch_size // unit_size
    if num_units < per_batch:
        raise ValueError(
            f"only {num_units} usable {unit}s for {per_batch} per batch "
            f"(train.batch_size={train.batch_size}); collect more data or "
            "lower train.batch_size"
        )
    return per_batch


def load_policy(spec: ModelSpec | None, collect_dir: str, mesh: Any, seed: int) -> LoadedModel:
    model = load_model(spec or collect_model_spec(collect_dir), mesh=mesh, seed=seed)
    if model.tokenizer is None:
        raise ValueError("the critic needs a tokenizer (to export it): set model.tokenizer")
    return model


def reference_gap(model: LoadedModel, table: CritiqueTable, mesh: Any, rules: Rules) -> float:
    """Mean |log pi_model(c) - stored log pi_ref(c)| per critique token, over a few valid
    critiques; ~0 when `model` is the reference critic."""
    dp = data_parallel_size(mesh, rules)
    batch_size = -(-REFERENCE_ROWS // dp) * dp
    idx = np.flatnonzero(table.valid)[:batch_size]
    if not len(idx):
        return 0.0
    rows = {k: v[idx] for k, v in table.rows.items()}
    logps = scoring.score_rows(model.cfg, model.params, rows, batch_size, mesh, rules)
    ntokens = rows["loss_mask"].sum(axis=1)
    return float(np.mean(np.abs(logps - table.ref_logp[idx]) / ntokens))


def check_reference(model: LoadedModel, table: CritiqueTable, mesh: Any, rules: Rules) -> float:
    gap = reference_gap(model, table, mesh, rules)
    if gap > REFERENCE_TOLERANCE:
        raise ValueError(
            f"the critic being trained is not the reference critic the collection scored: "
            f"its log-probs differ from the stored ones by {gap:.3f} per token on average. "
            "Set `model:` to the checkpoint rco_collect sampled from (or leave it unset), "
            "or set check_reference: false to train from another starting point on purpose."
        )
    return gap


def history_summary(history: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    if not history:
        return {}
    first, last = history[0], history[-1]
    return {
        "steps_run": len(history),
        **{f"first_{k}": first[k] for k in keys},
        **{f"last_{k}": last[k] for k in keys},
    }


def run(cfg: Config) -> dict[str, Any]:
    """Check the reference (when asked), train the objective's units and export; the results
    go to run_dir/results.json. Checkpoints and resumes in run_dir like every training
    stage."""
    run_dir = Path(cfg.run_dir)
    mesh = mesh_from_config(cfg.mesh)
    rules = rules_from_config(cfg.mesh.rules)
    records = read_groups(cfg.collect_dir)
    model = load_policy(cfg.model, cfg.collect_dir, mesh, cfg.seed)
    pad_id = pad_id_of(model.tokenizer)
    table = critique_table(records, cfg.train.seq_len, pad_id, cfg.drop_truncated)
    if cfg.objective == "rco":
        objective = rco_objective(table, cfg.beta)
    else:
        objective = dpco_objective(cfg, records, table, mesh)
    gap = check_reference(model, table, mesh, rules) if cfg.check_reference else None
    arrays = objective.arrays
    per_batch = check_unit_layout(
        cfg.train, objective.unit_size, len(arrays["ref_logp"]), objective.unit
    )
    trainer = Trainer(
        model.cfg,
        cfg.train,
        cfg.optim,
        cfg.mesh,
        loss_fn=objective.loss_fn,
        run_dir=run_dir,
        params=model.params,
        seed=cfg.seed,
    )
    batches = UnitBatches(arrays, per_batch, cfg.seed, jax.process_index(), jax.process_count())
    try:
        history = trainer.fit(batches)
        out = save_hf(model.cfg, trainer.state.params, run_dir / "hf", model.tokenizer)
    finally:
        trainer.close()
    result = {
        **objective.counts,
        "beta": cfg.beta,
        "reference_gap": gap,
        **history_summary(history, objective.metrics),
        "hf_dir": str(out),
    }
    if this_process_writes():
        atomic_write_json(run_dir / "results.json", result)
    return result
