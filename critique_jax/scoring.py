"""Sequence log-probs of many rows under a frozen model, jitted and sharded.

RCO and DPO need log pi_ref(c | x, y0) of every critique under the reference critic: computed
once before training (`score_rows`), they travel in the batches as per-row arrays, so the
reference model never sits in memory next to the policy. Rows use `data.batching.pad_batch`'s
layout (one sequence per row, `loss_mask` on the completion).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from critique_jax import losses
from critique_jax.models import ModelConfig, Transformer, abstract_params
from critique_jax.sharding import (
    DEFAULT_RULES,
    Rules,
    batch_sharding,
    data_parallel_size,
    make_mesh,
    mesh_context,
    param_shardings,
    place,
)

SCORE_KEYS = ("inputs", "targets", "loss_mask", "positions", "segment_ids")


@functools.partial(jax.jit, static_argnames=("cfg", "rules"))
def score(params: Any, batch: dict[str, jax.Array], *, cfg: ModelConfig, rules: Rules):
    """[B] sequence log-probs, replicated; `rules` is static since the model's sharding hints
    read them. Call under `mesh_context` with params and batch on their shardings."""
    logits = Transformer(cfg).apply(
        {"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"]
    )
    out = losses.sequence_logprobs(logits, batch["targets"], batch["loss_mask"])
    return jax.lax.with_sharding_constraint(out, PartitionSpec())


def _score_batch(cfg, params, batch: dict[str, np.ndarray], mesh: Mesh, rules: Rules):
    missing = [k for k in SCORE_KEYS if k not in batch]
    if missing:
        raise KeyError(f"scoring batch lacks {missing}; build rows with data.batching.pad_batch")
    host = {k: np.asarray(batch[k]) for k in SCORE_KEYS}
    with mesh_context(mesh, rules):
        return score(params, place(host, batch_sharding(mesh, rules)), cfg=cfg, rules=rules)


def _placed(cfg: ModelConfig, params: Any, rows: int, mesh: Mesh | None, rules: Rules):
    """(mesh, params on their shardings) after checking that `rows` split over the mesh."""
    mesh = mesh or make_mesh((-1, 1, 1))
    dp = data_parallel_size(mesh, rules)
    if rows % dp:
        raise ValueError(
            f"{rows} rows cannot be split over the data-parallel size {dp} of mesh "
            f"{dict(mesh.shape)}; use a multiple of {dp}."
        )
    return mesh, place(params, param_shardings(abstract_params(cfg), mesh, rules))


def sequence_logprobs(
    model_cfg: ModelConfig,
    params: Any,
    batch: dict[str, np.ndarray],
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
) -> np.ndarray:
    """log pi(completion | prompt) of each row, float32 [B]. Every process passes the same
    full batch; `mesh` defaults to data parallelism over all devices; params already on the
    mesh (a Trainer's `state.params`) are not copied."""
    rules = tuple(rules)
    mesh, params = _placed(model_cfg, params, len(batch["inputs"]), mesh, rules)
    return np.asarray(_score_batch(model_cfg, params, batch, mesh, rules))


def score_rows(
    model_cfg: ModelConfig,
    params: Any,
    rows: dict[str, np.ndarray],
    batch_size: int,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
) -> np.ndarray:
    """Sequence log-probs of all N rows, float32 [N], in batches of `batch_size`; the last
    is padded with empty rows, so one compiled program serves every batch."""
    rules = tuple(rules)
    mesh, params = _placed(model_cfg, params, batch_size, mesh, rules)
    outputs = []
    for start in range(0, len(rows["inputs"]), batch_size):
        chunk = {k: np.asarray(rows[k][start : start + batch_size]) for k in SCORE_KEYS}
        real = len(chunk["inputs"])
        if real < batch_size:
            chunk = {k: _pad_rows(v, batch_size) for k, v in chunk.items()}
        outputs.append((real, _score_batch(model_cfg, params, chunk, mesh, rules)))
    if not outputs:
        return np.zeros((0,), np.float32)
    return np.concatenate([np.asarray(out)[:real] for real, out in outputs]).astype(np.float32)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    pad = np.zeros((rows - len(x),) + x.shape[1:], x.dtype)
    return np.concatenate([x, pad])
