"""Every backend-specific choice of the core, in one file.

The model, sampler and trainer are written once for every backend. Where one backend needs
another formulation to be fast, the choice is made here, by one switch (`on_cpu`), so a
forker sees all of them together and the core stays accelerator-neutral:

- `unroll_decode_layers`: the sampler's layer loop, unrolled on CPU, scanned elsewhere;
- `argmax`: a max-then-min argmax on CPU, `jnp.argmax` elsewhere;
- `attention_implementation`: cuDNN flash attention on GPU in half precision, XLA elsewhere;
- `cpu_allocator_advice`, `log_allocator_advice`: what to set before a CPU training run
  starts (a process setting the core cannot make itself);
- `use_compilation_cache`: compiled programs kept on disk for the next process (every
  backend; the CLIs turn it on).
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def unroll_decode_layers() -> bool:
    """Decode with the layers unrolled (per-layer parameter and KV-cache arrays) instead of
    scanned over stacked arrays. XLA:CPU copies each layer's slice out of a stacked array at
    every decode step before its matmuls; unrolled, each layer reads its own arrays in
    place. Accelerators keep the scan: one compiled layer, a shorter compile."""
    return on_cpu()


def argmax(x: jax.Array) -> jax.Array:
    """The first index of the maximum over the last axis, int32.

    XLA:CPU runs argmax's (value, index) reduction as a scalar loop (about 3 ms per decode
    step over a 49k vocabulary at batch 16); a max and a min of the matching indices are
    two vectorised reductions with the same result.
    """
    if not on_cpu():
        return jnp.argmax(x, axis=-1).astype(jnp.int32)
    top = jnp.max(x, axis=-1, keepdims=True)
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(x == top, iota, x.shape[-1] - 1), axis=-1)


def attention_implementation(dtype: jnp.dtype) -> str:
    """`jax.nn.dot_product_attention`'s implementation for causal attention when the model
    config says `attention_impl: auto`."""
    gpu = jax.default_backend() == "gpu"
    return "cudnn" if gpu and dtype in (jnp.bfloat16, jnp.float16) else "xla"


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def huge_pages_set() -> bool:
    """Whether this process started with glibc's huge-page tunable."""
    return HUGE_PAGES_TUNABLE in os.environ.get("GLIBC_TUNABLES", "")


def cpu_allocator_advice() -> str | None:
    """A line for the log when a CPU training run would fault in its memory page by page.

    XLA:CPU allocates each step's temporaries as one fresh buffer, which the kernel zero-fills
    4 KiB at a time on first touch; glibc's huge-page tunable makes malloc back it with
    transparent huge pages instead (measurements: docs/architecture.md, "Backend choices").
    glibc reads the tunable only at process start, hence advice, not a setting. It is advice
    for XLA alone: PyTorch's step is slower with it."""
    if not on_cpu() or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if huge_pages_set():
        return None
    return (
        f"CPU training: start the process with GLIBC_TUNABLES={HUGE_PAGES_TUNABLE} for "
        "faster steps (XLA's per-step buffers then use transparent huge pages; docs/"
        "architecture.md, 'Backend choices')"
    )


@functools.cache
def log_allocator_advice() -> None:
    """Log `cpu_allocator_advice` once per process, not once per trainer."""
    if advice := cpu_allocator_advice():
        logging.getLogger(__name__).info(advice)


COMPILATION_CACHE = Path("~/.cache/critique_jax/xla").expanduser()


def use_compilation_cache(path: Path = COMPILATION_CACHE, max_bytes: int = 4 << 30) -> None:
    """Keep every compiled program on disk, so the next process with the same shapes (a
    resumed run, a rerun on other data, the next stage) loads it instead of compiling: a
    third of the reduced demo's wall time on a 2-core CPU. A train step's program does not
    hold the learning rate or its schedule, so other `train.steps` reuse it. JAX's own
    settings win where given: JAX_COMPILATION_CACHE_DIR moves the cache (a shared bucket for
    a pod), JAX_ENABLE_COMPILATION_CACHE=false turns it off. Call before the first compile."""
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(path))
    defaults: dict[str, Any] = {
        # JAX keeps only programs that took over a second; most of ours take less.
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_compilation_cache_max_size": max_bytes,  # least recently used programs go first
    }
    if on_cpu():
        # JAX also turns on XLA's GPU autotuning cache, in a folder of this cache, and its
        # path goes into every program's key: a copied or moved cache would never hit.
        defaults["jax_persistent_cache_enable_xla_caches"] = "none"
    for name, value in defaults.items():
        if name.upper() not in os.environ:
            jax.config.update(name, value)
