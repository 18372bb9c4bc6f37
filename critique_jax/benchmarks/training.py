"""Train-step throughput: critique_jax's sharded step against a transformers PyTorch step.

    python -m critique_jax.benchmarks.training --model smollm2-135m --batch 4 --seq 256
    python -m critique_jax.benchmarks.training --model HF_DIR --batch 8 --seq 1024 \\
        --dtype bfloat16

Both sides train the same architecture (a preset, or an HF directory's config.json; random
weights, since speed does not depend on them) on the same random token batch: forward,
next-token cross-entropy, backward, global-norm clipping and an AdamW update. Ours runs the
`Trainer` step (data parallel over all local devices unless --mesh is given); PyTorch runs
`AutoModelForCausalLM.from_config` (SDPA attention) with `torch.optim.AdamW`. With
`--dtype bfloat16` ours keeps fp32 master parameters and computes in bf16, and PyTorch uses
`torch.autocast` to bf16 with fp32 parameters: the same mixed-precision recipe. PyTorch runs
in a child process that never imports JAX, so neither side shares its process (thread pools,
allocator) with the other.

Each side runs `--warmup` untimed steps (ours: the first also compiles; `compile_s` is its
extra time; PyTorch's CPU step was still getting faster at its second step, hence two) and then
`--steps` timed steps, each timed alone; tokens/s = batch * seq / median step time. MFU uses
the FLOP formula of `critique_jax.metrics` against the device's bf16 peak (None on CPU unless
--peak-flops); without a peak, each side's FLOP rate is given as a fraction of the matmul rate
XLA reaches here at the step's token count (`matmul_fraction`,
`benchmarks.roofline.matmul_flops`). On a CPU, our side runs with glibc's huge-page tunable
(`backend.restart_with_huge_pages`; `malloc_hugetlb` in the JSON says whether it was set) and
the PyTorch child without it, which is faster for PyTorch.

`--remat` sets what our backward pass recomputes instead of storing (`ModelConfig.remat`).
Each side's peak memory (`ours_peak_mb`, `torch_peak_mb`) is its device's peak allocation
when the device keeps one, else its process's peak RSS (`peak_of`, `torch_peak_of` say which:
on a TPU host PyTorch runs on the CPU). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from critique_jax.errors import run_main

if TYPE_CHECKING:  # the PyTorch child process never imports JAX
    from critique_jax.trainer import Trainer


def model_config(model: str, dtype: str, remat: str = "none"):
    """A preset name or an HF directory; bf16 means bf16 compute over fp32 parameters;
    `remat` is ModelConfig's (what the backward pass recomputes instead of storing)."""
    from critique_jax.checkpoints.hf import config_from_hf, read_hf_config
    from critique_jax.config import ConfigError
    from critique_jax.models.config import PRESETS, preset

    if Path(model).expanduser().is_dir():
        return config_from_hf(
            read_hf_config(model), dtype=dtype, param_dtype="float32", remat=remat
        )
    if model not in PRESETS:
        raise ConfigError(
            f"--model {model!r} is neither an HF checkpoint directory nor a preset; give a "
            f"directory with config.json or one of {sorted(PRESETS)}"
        )
    return preset(model, dtype=dtype, param_dtype="float32", remat=remat)


def peak_memory(device_peak_mb: float | None) -> dict[str, Any]:
    """`peak_mb` and what it measured (`peak_of`): the device's peak allocation when it keeps
    one, else this process's peak resident memory (each side runs in a process of its own)."""
    if device_peak_mb is not None:
        return {"peak_mb": device_peak_mb, "peak_of": "device memory"}
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = kib / (2**20 if sys.platform == "darwin" else 2**10)  # macOS counts bytes
    return {"peak_mb": rss, "peak_of": "host RSS"}


def timed(fn, steps: int) -> list[float]:
    """Wall time of each of `steps` calls (the median resists other load on the machine)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def random_batch(vocab: int, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    tokens = np.random.default_rng(seed).integers(0, vocab, (batch, seq + 1)).astype(np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": np.ones((batch, seq), np.float32),
        "positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1)),
    }


def make_trainer(
    cfg,
    batch: dict[str, np.ndarray],
    steps: int,
    mesh: tuple[int, int, int],
    peak: float | None = None,
) -> Trainer:
    """The benchmark's `Trainer` (AdamW, global-norm clipping), its state initialised."""
    from critique_jax.config import MeshConfig, OptimConfig, TrainConfig
    from critique_jax.trainer import Trainer

    b, t = batch["inputs"].shape
    train = TrainConfig(steps=steps, batch_size=b, seq_len=t, log_every=10**9)
    trainer = Trainer(
        cfg,
        train,
        OptimConfig(learning_rate=1e-5, weight_decay=0.01),
        MeshConfig(shape=mesh),
        peak_flops=peak,
    )
    trainer.init_state()
    return trainer


def run_ours(
    cfg,
    batch: dict[str, np.ndarray],
    steps: int,
    warmup: int,
    mesh: tuple[int, int, int],
    peak: float | None,
) -> dict[str, Any]:
    from critique_jax.benchmarks import roofline
    from critique_jax.metrics import mfu, training_flops_per_token

    b, t = batch["inputs"].shape
    trainer = make_trainer(cfg, batch, warmup + steps, mesh, peak)
    start = time.perf_counter()
    trainer.train_step(batch)  # compiles, then runs the first warm-up step
    first_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        trainer.train_step(batch)
    times = timed(lambda: trainer.train_step(batch), steps)  # each step waits for metrics
    compile_s = first_s - float(np.median(times))
    n_dev = trainer.mesh.devices.size
    flops = training_flops_per_token(cfg, t) * b * t
    result = {
        "tokens_per_s": b * t / float(np.median(times)),
        "step_s": [round(x, 4) for x in times],
        "compile_s": compile_s,
        "mfu": mfu(flops, float(np.median(times)), n_dev, trainer.peak_flops),
        "devices": n_dev,
        **peak_memory(roofline.device_peak_mb()),
    }
    trainer.state = None  # free parameters and optimizer state before the PyTorch run
    gc.collect()
    return result


def run_torch(spec: dict[str, Any]) -> dict[str, Any]:
    """The PyTorch step (in the child process; see `--torch-worker`)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    if spec.get("model_dir"):
        hf_config = AutoConfig.from_pretrained(spec["model_dir"])
    else:
        fields = dict(spec["hf_config"])
        hf_config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    net = net.float().to(device)  # fp32 master parameters, as ours
    net.train()
    opt = torch.optim.AdamW(
        net.parameters(), lr=1e-5, weight_decay=0.01, betas=(0.9, 0.95), eps=1e-8
    )
    batch = np.load(spec["batch"])
    inputs = torch.as_tensor(batch["inputs"], dtype=torch.long, device=device)
    targets = torch.as_tensor(batch["targets"], dtype=torch.long, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=spec["bf16"])

    def step() -> float:
        with autocast:
            logits = net(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # waits for the step, as ours does

    for _ in range(spec["warmup"]):
        step()
    times = timed(step, spec["steps"])
    b, t = inputs.shape
    device_peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {
        "tokens_per_s": b * t / float(np.median(times)),
        "step_s": [round(x, 4) for x in times],
        "threads": torch.get_num_threads(),
        **peak_memory(device_peak),
    }


def without_huge_pages(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without glibc's huge-page tunable: it helps XLA's step and slows PyTorch's
    (see `backend.cpu_allocator_advice`), so each side runs as it is fastest."""
    from critique_jax.backend import HUGE_PAGES_TUNABLE  # here: the PyTorch child has no JAX

    kept = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and t != HUGE_PAGES_TUNABLE]
    out = {k: v for k, v in env.items() if k != "GLIBC_TUNABLES"}
    if kept:
        out["GLIBC_TUNABLES"] = ":".join(kept)
    return out


def torch_in_child(
    cfg, model: str, batch: dict[str, np.ndarray], steps: int, warmup: int
) -> dict[str, Any]:
    from critique_jax.checkpoints.hf import config_to_hf

    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "batch.npz", **batch)
        hf_config = config_to_hf(cfg)
        hf_config.pop("torch_dtype")
        spec = {
            "hf_config": hf_config,
            "batch": str(Path(tmp) / "batch.npz"),
            "steps": steps,
            "warmup": warmup,
            "bf16": cfg.dtype == "bfloat16",
            "model_dir": model if Path(model).expanduser().is_dir() else None,
        }
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "critique_jax.benchmarks.training",
                "--torch-worker",
                str(Path(tmp) / "spec.json"),
            ],
            capture_output=True,
            text=True,
            env=without_huge_pages(os.environ),
        )
    if proc.returncode:
        raise RuntimeError(f"the PyTorch run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="preset name or HF checkpoint directory")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument(
        "--remat", default="none", help="what our backward pass recomputes (ModelConfig.remat)"
    )
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor (-1: fill)")
    p.add_argument(
        "--peak-flops",
        type=float,
        default=None,
        help="per-device peak FLOP/s for MFU (default: known accelerators)",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--torch-worker", help=argparse.SUPPRESS)  # internal: the child process
    args = p.parse_args(argv)
    if args.torch_worker:
        print(json.dumps(run_torch(json.loads(Path(args.torch_worker).read_text()))))
        return
    if not args.model:
        p.error("--model is required")
    from critique_jax.models.config import REMAT_POLICIES  # not before: the child has no JAX

    if args.remat not in REMAT_POLICIES:
        p.error(f"--remat {args.remat!r}: choose one of {', '.join(REMAT_POLICIES)}")

    import jax

    from critique_jax.backend import huge_pages_set
    from critique_jax.benchmarks import roofline
    from critique_jax.metrics import peak_flops_per_device, training_flops_per_token

    cfg = model_config(args.model, args.dtype, args.remat)
    mesh = tuple(int(x) for x in args.mesh.split(","))
    batch = random_batch(cfg.vocab_size, args.batch, args.seq)
    peak = args.peak_flops or peak_flops_per_device()

    def matmul_rate() -> float:
        return roofline.matmul_flops(args.batch * args.seq, cfg, cfg.jnp_dtype)

    # With no published peak (a CPU), the rate XLA's dot kernels reach at this step's token
    # count is the yardstick: each side's FLOPs per second as a fraction of it. It is measured
    # before and after the two runs and the best kept: a shared CPU can lose a core for
    # seconds (one run measured 110 GFLOP/s where the next measured 212).
    before = None if peak else matmul_rate()
    # PyTorch first: its child exits and frees the device, while JAX's allocator keeps the
    # memory it grew to (an accelerator would otherwise have none left for the child).
    theirs = None
    if not args.no_torch:
        theirs = torch_in_child(cfg, args.model, batch, args.steps, args.warmup)
        print(f"transformers/torch: {theirs}", flush=True)
    ours = run_ours(cfg, batch, args.steps, args.warmup, mesh, peak)
    print(f"critique_jax: {ours}", flush=True)
    torch_tps = theirs["tokens_per_s"] if theirs else None
    rate = None if peak else max(before, matmul_rate())

    def matmul_fraction(tokens_per_s: float | None) -> float | None:
        if rate is None or tokens_per_s is None:
            return None
        return round(training_flops_per_token(cfg, args.seq) * tokens_per_s / rate, 3)

    print(
        json.dumps(
            {
                "ours_tokens_per_s": round(ours["tokens_per_s"], 1),
                "torch_tokens_per_s": round(torch_tps, 1) if torch_tps else None,
                "ratio": round(ours["tokens_per_s"] / torch_tps, 3) if torch_tps else None,
                "mfu": ours["mfu"],
                "matmul_gflops": round(rate / 1e9, 1) if rate else None,
                "ours_matmul_fraction": matmul_fraction(ours["tokens_per_s"]),
                "torch_matmul_fraction": matmul_fraction(torch_tps),
                "ours_peak_mb": round(ours["peak_mb"]),
                "torch_peak_mb": round(theirs["peak_mb"]) if theirs else None,
                "peak_of": ours["peak_of"],
                "torch_peak_of": theirs["peak_of"] if theirs else None,
                "model": args.model,
                "params": cfg.num_params(),
                "batch": args.batch,
                "seq": args.seq,
                "dtype": args.dtype,
                "remat": args.remat,
                "device": jax.devices()[0].device_kind,
                "cpu_count": os.cpu_count(),
                "malloc_hugetlb": huge_pages_set(),
            }
        )
    )


if __name__ == "__main__":
    from critique_jax.backend import restart_with_huge_pages

    restart_with_huge_pages()
    run_main(main)
