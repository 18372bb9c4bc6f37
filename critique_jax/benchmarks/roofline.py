"""What bounds a decode step: the bytes it must read and the FLOPs it must do, against what
this device delivers.

A decode step reads every parameter once and every KV slot its attention covers (masked
attention reads all the slots of its cache, filled or not); at the batch sizes sampling
runs, that makes it bound by memory bandwidth before FLOPs. On an accelerator the bandwidth
is the chip's published peak; on a CPU it is measured (the best of a few reads of a buffer
larger than the caches), as is the matmul rate XLA:CPU reaches at decode shapes, so a CPU
figure says how close a run comes to what this machine can do, not to a datasheet.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from critique_jax.models import ModelConfig

# Peak memory bandwidth (bytes/s) by `device_kind` substring, most specific first.
PEAK_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("A10G", 0.6e12),
    ("L4", 0.3e12),
    ("TPU v6 lite", 1.64e12),
    ("TPU v5 lite", 0.819e12),
    ("TPU v5", 2.765e12),
    ("TPU v4", 1.228e12),
)


def device_peak_mb() -> float | None:
    """The accelerator's peak allocated memory in MiB (None on a CPU, which keeps no count)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def _best_seconds(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def bandwidth(device: jax.Device) -> tuple[float | None, str]:
    """Bytes/s and where the figure comes from ("published" or "measured")."""
    if device.platform == "cpu":
        x = jnp.ones((256 * 2**20,), jnp.float32)  # 1 GiB: far larger than any cache
        return x.nbytes / _best_seconds(jax.jit(jnp.sum), x), "measured"
    kind = device.device_kind
    return next((bw for name, bw in PEAK_BANDWIDTH if name in kind), None), "published"


def matmul_flops(rows: int, cfg: ModelConfig, dtype) -> float:
    """FLOP/s of one decode-shaped matmul ([rows, hidden] x [hidden, intermediate]) whose
    weight fits in cache: the rate this device's dot kernels reach with no memory stall."""
    x = jnp.ones((rows, cfg.hidden_size), dtype)
    w = jnp.ones((cfg.hidden_size, cfg.intermediate_size), dtype)
    seconds = _best_seconds(jax.jit(jnp.dot), x, w, repeats=20)
    return 2 * rows * cfg.hidden_size * cfg.intermediate_size / seconds


def kv_bytes(cfg: ModelConfig, slots: int) -> int:
    """Bytes of keys and values in `slots` cache slots, over all layers."""
    itemsize = np.dtype(cfg.jnp_dtype).itemsize
    return 2 * cfg.num_layers * slots * cfg.num_kv_heads * cfg.head_dim * itemsize


def param_bytes(params) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(params))


def decode_flops(cfg: ModelConfig, rows: int) -> int:
    """Matmul FLOPs of one decode step of `rows` rows (every weight but the embedding
    lookup, which is a gather; attention's few FLOPs left out)."""
    lookup = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size
    return 2 * (cfg.num_params() - lookup) * rows
