"""Every backend-specific choice of the core, in one file.

The model, sampler and trainer are written once for every backend. Where one backend needs
another formulation to be fast, the choice is made here, by one switch (`on_cpu`), so a
forker sees all of them together and the core stays accelerator-neutral:

- `unroll_decode_layers`: the sampler's layer loop, unrolled on CPU, scanned elsewhere;
- `argmax`: a max-then-min argmax on CPU, `jnp.argmax` elsewhere;
- `attention_implementation`: cuDNN flash attention on GPU in half precision, XLA elsewhere;
- `restart_with_huge_pages`, `cpu_allocator_advice`: glibc's huge-page tunable for CPU
  training, which the training CLIs set by restarting themselves and the trainer otherwise
  advises (a process setting, read only at start);
- `use_compilation_cache`: compiled programs kept on disk for the next process (every
  backend; the CLIs turn it on).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

# JAX is imported by the functions that use it, so that `restart_with_huge_pages` runs
# before JAX has loaded (a second import after the restart would add a second of start-up).
if TYPE_CHECKING:
    import jax
    import jax.numpy as jnp


def on_cpu() -> bool:
    import jax

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
    import jax
    import jax.numpy as jnp

    if not on_cpu():
        return jnp.argmax(x, axis=-1).astype(jnp.int32)
    top = jnp.max(x, axis=-1, keepdims=True)
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(x == top, iota, x.shape[-1] - 1), axis=-1)


def attention_implementation(dtype: jnp.dtype) -> str:
    """`jax.nn.dot_product_attention`'s implementation for causal attention when the model
    config says `attention_impl: auto`."""
    import jax
    import jax.numpy as jnp

    gpu = jax.default_backend() == "gpu"
    return "cudnn" if gpu and dtype in (jnp.bfloat16, jnp.float16) else "xla"


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def huge_pages_set() -> bool:
    """Whether this process started with glibc's huge-page tunable."""
    return HUGE_PAGES_TUNABLE in os.environ.get("GLIBC_TUNABLES", "")


def huge_pages_supported() -> bool:
    """glibc 2.35 or newer on Linux: the first glibc with the tunable."""
    name, version = platform.libc_ver()
    if platform.system() != "Linux" or name != "glibc":
        return False
    return tuple(int(part) for part in version.split(".")[:2]) >= (2, 35)


def accelerator_may_be_found() -> bool:
    """Whether JAX may pick a GPU or TPU here, told without starting a backend (a multi-host
    run must call jax.distributed.initialize first): JAX_PLATFORMS names another platform,
    or a GPU plugin or libtpu is installed."""
    if platforms := os.environ.get("JAX_PLATFORMS"):
        return platforms != "cpu"
    plugins = importlib.util.find_spec("jax_plugins") is not None
    plugins = plugins or any(importlib.metadata.entry_points(group="jax_plugins"))
    return plugins or importlib.util.find_spec("libtpu") is not None


def restart_with_huge_pages() -> None:
    """Run this command again, in this process (exec: same id, same arguments), with glibc's
    huge-page tunable when it will train on the CPU; `cpu_allocator_advice` says why. Called
    first thing by the training CLIs. A GLIBC_TUNABLES already set, to anything, is left as
    it is: `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` keeps the allocator's default."""
    if "GLIBC_TUNABLES" in os.environ or not huge_pages_supported() or accelerator_may_be_found():
        return
    os.environ["GLIBC_TUNABLES"] = HUGE_PAGES_TUNABLE
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def cpu_allocator_advice() -> str | None:
    """A line for the log when a CPU training run would fault in its memory page by page.

    XLA:CPU allocates each step's temporaries as one fresh buffer, which the kernel zero-fills
    4 KiB at a time on first touch; glibc's huge-page tunable makes malloc back it with
    transparent huge pages instead (measurements: docs/architecture.md, "Backend choices").
    glibc reads the tunable only at process start: the training CLIs restart themselves with
    it (`restart_with_huge_pages`), a script that trains must be started with it. It is
    advice for XLA alone: PyTorch's step is slower with it."""
    if not on_cpu() or not huge_pages_supported() or huge_pages_set():
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
    import jax

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
