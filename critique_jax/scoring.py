"""Sequence log-probs of many rows under a frozen model, jitted and sharded.

RCO and DPO need log pi_ref(c | x, y0) of every critique under the reference critic. They
are computed once, before training, with `score_rows`, and travel in the training batches
as plain per-row arrays, so the reference model never has to sit in memory next to the
policy during training.

Rows use the layout of `critique_jax.data.batching` (`pad_batch`: one sequence per row,
`loss_mask` on the completion tokens); the log-prob of a row is the sum over its masked
targets (a packed row would sum over all its segments).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from critique_jax import losses
from critique_jax.models import ModelConfig, Transformer, abstract_params
from critique_jax.sharding import (
    DEFAULT_RULES,
    Rules,
    batch_sharding,
    data_parallel_size,
    global_from_host,
    make_mesh,
    mesh_context,
    param_shardings,
    place,
    replicated,
)

SCORE_KEYS = ("inputs", "targets", "loss_mask", "positions", "segment_ids")


@functools.lru_cache(maxsize=1)
def _default_mesh() -> Mesh:
    return make_mesh((-1, 1, 1))


@functools.lru_cache(maxsize=8)
def _scorer(model_cfg: ModelConfig, mesh: Mesh, rules: Rules):
    """(param shardings, jitted score(params, batch) -> [B] log-probs) for one setup."""
    model = Transformer(model_cfg)
    shardings = param_shardings(abstract_params(model_cfg), mesh, rules)

    def score(params, batch):
        logits = model.apply(
            {"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"]
        )
        return losses.sequence_logprobs(logits, batch["targets"], batch["loss_mask"])

    fn = jax.jit(
        score, in_shardings=(shardings, batch_sharding(mesh, rules)), out_shardings=replicated(mesh)
    )
    return shardings, fn


def _setup(model_cfg: ModelConfig, mesh: Mesh | None, rules: Rules):
    mesh = mesh or _default_mesh()
    rules = tuple(rules)
    shardings, fn = _scorer(model_cfg, mesh, rules)
    return mesh, rules, shardings, fn


def _score_batch(fn, params, batch: dict[str, np.ndarray], mesh: Mesh, rules: Rules):
    missing = [k for k in SCORE_KEYS if k not in batch]
    if missing:
        raise KeyError(f"scoring batch lacks {missing}; build rows with data.batching.pad_batch")
    host = {k: np.asarray(batch[k]) for k in SCORE_KEYS}
    with mesh_context(mesh, rules):
        return fn(params, global_from_host(host, mesh, rules))


def _check_rows(rows: int, mesh: Mesh, rules: Rules) -> None:
    dp = data_parallel_size(mesh, rules)
    if rows % dp:
        raise ValueError(
            f"{rows} rows cannot be split over the data-parallel size {dp} of mesh "
            f"{dict(mesh.shape)}; use a multiple of {dp}."
        )


def sequence_logprobs(
    model_cfg: ModelConfig,
    params: Any,
    batch: dict[str, np.ndarray],
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
) -> np.ndarray:
    """log pi(completion | prompt) of each row, float32 [B].

    Every process passes the same full batch (B must divide over the data-parallel size);
    `mesh` defaults to data parallelism over all devices. `params` are placed onto the
    mesh (no copy when they already live there, e.g. a Trainer's `state.params`).
    """
    mesh, rules, shardings, fn = _setup(model_cfg, mesh, rules)
    _check_rows(len(batch["inputs"]), mesh, rules)
    return np.asarray(_score_batch(fn, place(params, shardings), batch, mesh, rules))


def score_rows(
    model_cfg: ModelConfig,
    params: Any,
    rows: dict[str, np.ndarray],
    batch_size: int,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
) -> np.ndarray:
    """Sequence log-probs of all N rows, float32 [N], in fixed batches of `batch_size`.

    The last batch is padded with empty rows (no targets), so one compiled program serves
    every batch; results of padding rows are dropped.
    """
    mesh, rules, shardings, fn = _setup(model_cfg, mesh, rules)
    _check_rows(batch_size, mesh, rules)
    params = place(params, shardings)
    n = len(rows["inputs"])
    outputs = []
    for start in range(0, n, batch_size):
        chunk = {k: np.asarray(rows[k][start : start + batch_size]) for k in SCORE_KEYS}
        real = len(chunk["inputs"])
        if real < batch_size:
            chunk = {k: _pad_rows(v, batch_size) for k, v in chunk.items()}
        outputs.append((real, _score_batch(fn, params, chunk, mesh, rules)))
    if not outputs:
        return np.zeros((0,), np.float32)
    return np.concatenate([np.asarray(out)[:real] for real, out in outputs]).astype(np.float32)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    pad = np.zeros((rows - len(x),) + x.shape[1:], x.dtype)
    return np.concatenate([x, pad])
