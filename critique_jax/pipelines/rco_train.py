"""The `rco` stage: train the critic with RCO's least-squares objective on collected CU.

    python -m critique_jax.train --config configs/rco_demo.yaml

Reads the groups `rco_collect` wrote (N critiques per (x, y0), each with its tokens, CU and
reference log-prob) and minimises `losses.rco_loss`: per group,

    1/(2N) sum_i (log pi(c_i|x,y0) - log pi_ref(c_i|x,y0) + log Z - CU_i / beta)^2

on the sharded engine. A batch is G whole groups laid out as G*N rows (one critique per
row, loss mask on the critique tokens), so a group's N critiques share a microbatch; the
loss's weight is the number of groups. Critiques that cannot be used (no reference
log-prob, too long for train.seq_len, or cut off at max_new_tokens when drop_truncated) are
masked inside their group. The policy starts from the reference critic (by default the
model rco_collect sampled from); the trained critic is exported to run_dir/hf.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from critique_jax import losses, scoring
from critique_jax.config import MeshConfig, ModelSpec, OptimConfig, StageConfig, TrainConfig
from critique_jax.data.batching import BatchIterator
from critique_jax.models.hf import save_hf
from critique_jax.models.loading import LoadedModel, load_model
from critique_jax.pipelines.rco_collect import (
    collect_model_spec,
    critique_rows,
    pad_id_of,
    read_groups,
)
from critique_jax.runio import atomic_write_json, this_process_writes
from critique_jax.sharding import (
    Rules,
    data_parallel_size,
    mesh_from_config,
    rules_from_config,
)
from critique_jax.trainer import ApplyFn, Batch, Params, Trainer

log = logging.getLogger(__name__)

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
    run_dir: str = "runs/rco"
    collect_dir: str = "runs/rco_collect"  # the rco_collect run_dir
    model: ModelSpec | None = None  # the reference critic; None: the one rco_collect used
    beta: float = 0.1  # CU / beta is the target log-ratio scale
    drop_truncated: bool = True  # mask critiques that hit max_new_tokens
    check_reference: bool = True  # step-0 policy log-probs must match the stored reference
    train: TrainConfig = field(default_factory=unpacked_train)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        check_train(self.train, self.beta)


def check_train(train: TrainConfig, beta: float) -> None:
    if beta <= 0:
        raise ValueError(f"beta={beta} must be > 0")
    if train.pack:
        raise ValueError(
            "train.pack must be false: one critique per row, so that sequence "
            "log-probs and groups line up"
        )


# --------------------------------------------------------------------------- data


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
    records: list[dict[str, Any]], seq_len: int, pad_id: int, drop_truncated: bool
) -> CritiqueTable:
    """Rows from the stored prompt and critique token ids (never re-tokenized). A critique
    is valid when it has a reference log-prob, fits seq_len and (with drop_truncated)
    ended on a stop token; groups with fewer critiques are padded with invalid rows."""
    n = max(len(r["critiques"]) for r in records)
    prompts, completions, ref, cu, usable = [], [], [], [], []
    for r in records:
        crits = r["critiques"] + [None] * (n - len(r["critiques"]))  # short groups: padding
        for c in crits:
            prompts.append(r["prompt_ids"])
            completions.append([] if c is None else c["token_ids"])
            ok = (
                c is not None
                and c.get("ref_logp") is not None
                and (c["finish_reason"] == "stop" or not drop_truncated)
            )
            usable.append(ok)
            ref.append(c["ref_logp"] if ok else 0.0)
            cu.append(c["cu"] if c is not None else 0.0)
    rows, fits = critique_rows(prompts, completions, seq_len, pad_id)
    valid = np.asarray(usable) & fits
    return CritiqueTable(rows, np.asarray(ref, np.float32), np.asarray(cu, np.float32), valid, n)


def group_arrays(table: CritiqueTable) -> dict[str, np.ndarray]:
    """[G, N, ...] arrays of the groups that have at least one valid critique."""
    n = table.group_size
    per_row = dict(
        table.rows, ref_logp=table.ref_logp, cu=table.cu, valid=table.valid.astype(np.float32)
    )
    keep = table.valid.reshape(-1, n).any(axis=1)
    return {k: v.reshape(-1, n, *v.shape[1:])[keep] for k, v in per_row.items()}


class GroupBatches:
    """Deterministic, resumable batches of whole groups: a `BatchIterator` over groups
    ([num_groups, size, ...] arrays) whose batches are flattened to rows [G*size, ...]."""

    def __init__(
        self,
        groups: dict[str, np.ndarray],
        groups_per_batch: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ) -> None:
        self.inner = BatchIterator(groups, groups_per_batch, seed, process_index, process_count)

    def __iter__(self) -> GroupBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in next(self.inner).items()}

    def state(self) -> dict[str, int]:
        return self.inner.state()

    def restore(self, state: dict[str, int]) -> None:
        self.inner.restore(state)


def check_group_layout(train: TrainConfig, group_size: int, num_groups: int, what: str) -> int:
    """Groups per batch; every microbatch must hold whole groups."""
    rows = train.batch_size // train.microbatches
    if train.batch_size % train.microbatches or rows % group_size:
        raise ValueError(
            f"train.batch_size={train.batch_size} / train.microbatches={train.microbatches} "
            f"must be a multiple of the {what} size {group_size}, so that no {what} is split "
            f"across microbatches; use a batch size that is a multiple of "
            f"{group_size * train.microbatches}"
        )
    per_batch = train.batch_size // group_size
    if num_groups < per_batch:
        raise ValueError(
            f"only {num_groups} usable {what}s for {per_batch} per batch "
            f"(train.batch_size={train.batch_size}); collect more data or "
            "lower train.batch_size"
        )
    return per_batch


# --------------------------------------------------------------------------- model


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


# --------------------------------------------------------------------------- loss


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


def train_groups(
    model: LoadedModel,
    groups: dict[str, np.ndarray],
    group_size: int,
    loss_fn: Any,
    train: TrainConfig,
    optim: OptimConfig,
    mesh_cfg: MeshConfig,
    run_dir: Path,
    seed: int,
    what: str = "group",
) -> tuple[list[dict[str, Any]], Path]:
    """Train `model` on batches of whole groups ([num, group_size, ...] arrays) and export
    it to run_dir/hf; (history, dir). Checkpoints and resumes in run_dir like every
    training stage."""
    per_batch = check_group_layout(train, group_size, len(groups["ref_logp"]), what)
    trainer = Trainer(
        model.cfg,
        train,
        optim,
        mesh_cfg,
        loss_fn=loss_fn,
        run_dir=run_dir,
        params=model.params,
        seed=seed,
    )
    batches = GroupBatches(groups, per_batch, seed, jax.process_index(), jax.process_count())
    try:
        history = trainer.fit(batches)
        out = save_hf(model.cfg, trainer.state.params, run_dir / "hf", model.tokenizer)
    finally:
        trainer.close()
    return history, out


def history_summary(history: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    if not history:
        return {}
    first, last = history[0], history[-1]
    return {
        "steps_run": len(history),
        **{f"first_{k}": first[k] for k in keys},
        **{f"last_{k}": last[k] for k in keys},
    }


class TrainSettings(Protocol):
    """What `prepare` and `train_and_report` read: the rco and the dpco stage configs."""

    run_dir: str
    seed: int
    collect_dir: str
    model: ModelSpec | None
    beta: float
    drop_truncated: bool
    check_reference: bool
    train: TrainConfig
    optim: OptimConfig
    mesh: MeshConfig


@dataclass
class Setup:
    """What the rco and dpco stages start from: the collected groups as a table and the
    policy (the reference critic), on the stage's mesh."""

    records: list[dict[str, Any]]
    model: LoadedModel
    table: CritiqueTable
    mesh: Any
    rules: Rules


def prepare(cfg: TrainSettings) -> Setup:
    mesh = mesh_from_config(cfg.mesh)
    records = read_groups(cfg.collect_dir)
    model = load_policy(cfg.model, cfg.collect_dir, mesh, cfg.seed)
    table = critique_table(
        records, cfg.train.seq_len, pad_id_of(model.tokenizer), cfg.drop_truncated
    )
    return Setup(records, model, table, mesh, rules_from_config(cfg.mesh.rules))


def train_and_report(
    cfg: TrainSettings,
    setup: Setup,
    arrays: dict[str, np.ndarray],
    group_size: int,
    loss_fn: Any,
    counts: dict[str, Any],
    metrics: tuple[str, ...],
    what: str = "group",
) -> dict[str, Any]:
    """Check the reference (when asked), train on `arrays` and export; the results (`counts`
    first) go to run_dir/results.json."""
    gap = None
    if cfg.check_reference:
        gap = check_reference(setup.model, setup.table, setup.mesh, setup.rules)
    run_dir = Path(cfg.run_dir)
    history, out = train_groups(
        setup.model,
        arrays,
        group_size,
        loss_fn,
        cfg.train,
        cfg.optim,
        cfg.mesh,
        run_dir,
        cfg.seed,
        what=what,
    )
    result = {
        **counts,
        "beta": cfg.beta,
        "reference_gap": gap,
        **history_summary(history, metrics),
        "hf_dir": str(out),
    }
    if this_process_writes():
        atomic_write_json(run_dir / "results.json", result)
    return result


def run(cfg: Config) -> dict[str, Any]:
    setup = prepare(cfg)
    table = setup.table
    groups = group_arrays(table)
    log.info(
        "rco: %d of %d groups have valid critiques (%d of %d critiques)",
        len(groups["cu"]),
        table.num_groups,
        int(table.valid.sum()),
        len(table.valid),
    )
    counts = {
        "groups": len(groups["cu"]),
        "critiques": int(table.valid.sum()),
        "group_size": table.group_size,
    }
    return train_and_report(
        cfg,
        setup,
        groups,
        table.group_size,
        RCOLoss(cfg.beta, table.group_size),
        counts,
        ("loss", "logratio"),
    )
