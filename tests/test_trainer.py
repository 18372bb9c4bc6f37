"""Trainer pieces on one CPU device: optimizer, config errors, mixed precision, evaluation,
metrics, launch environment. (Non-finite loss handling is in test_checkpoint.py.)"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from critique_jax.config import MeshConfig, OptimConfig, TrainConfig
from critique_jax.distributed import detect_launcher, slurm_local_device_ids
from critique_jax.metrics import MetricsLogger, peak_flops_per_device, training_flops_per_token
from critique_jax.models import abstract_params, preset
from critique_jax.trainer import (
    Trainer,
    learning_rate_schedule,
    make_optimizer,
    train_step,
    weight_decay_mask,
)

B, T = 4, 16


def batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 256, (B, T + 1)).astype(np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": (rng.random((B, T)) < 0.8).astype(np.float32),
        "segment_ids": np.ones((B, T), np.int32),
        "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1)),
        "extra": np.zeros((B, 3), np.float32),  # loss functions may need more keys
    }


# --------------------------------------------------------------------------- optimizer


def test_schedule_warmup_then_decay():
    optim = OptimConfig(learning_rate=1.0, warmup_steps=4, end_lr_ratio=0.1, schedule="cosine")
    lr = learning_rate_schedule(optim, total_steps=14)
    assert [float(lr(s)) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert float(lr(4)) == pytest.approx(1.0)
    assert float(lr(9)) == pytest.approx(0.55)  # halfway through the cosine: mean of 1, 0.1
    assert float(lr(14)) == pytest.approx(0.1)
    linear = learning_rate_schedule(
        OptimConfig(learning_rate=1.0, schedule="linear", end_lr_ratio=0.0), total_steps=10
    )
    assert float(linear(5)) == pytest.approx(0.5)
    const = learning_rate_schedule(OptimConfig(learning_rate=2.0, schedule="constant"), 10)
    assert float(const(7)) == 2.0
    with pytest.raises(ValueError, match="schedule"):
        learning_rate_schedule(OptimConfig(schedule="exp"), 10)


def test_weight_decay_skips_norms_and_biases_of_scanned_layers():
    cfg = preset("tiny", qkv_bias=True, qk_norm=True)
    params = nn.meta.unbox(abstract_params(cfg))
    mask = weight_decay_mask(params)
    layers = params["layers"]
    assert layers["input_norm"]["scale"].shape == (cfg.num_layers, cfg.hidden_size)  # 2-D
    assert layers["attn"]["q"]["bias"].ndim == 3  # [L, heads, head_dim]
    assert not mask["layers"]["input_norm"]["scale"]
    assert not mask["layers"]["attn"]["q_norm"]["scale"]
    assert not mask["layers"]["attn"]["q"]["bias"]
    assert not mask["final_norm"]["scale"]
    assert mask["layers"]["attn"]["q"]["kernel"]
    assert mask["layers"]["mlp"]["up"]["kernel"]
    assert mask["embed"]["embedding"]


def test_adamw_decays_masked_params_only():
    optim = OptimConfig(learning_rate=0.1, weight_decay=0.5, grad_clip=1.0)
    tx = make_optimizer(optim)  # its state holds the rate, 0.1, until a step sets it
    params = {"w": {"kernel": jnp.ones((2, 2))}, "n": {"scale": jnp.ones((2,))}}
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"]["kernel"], 1 - 0.1 * 0.5)  # lr * wd * w
    np.testing.assert_allclose(new["n"]["scale"], 1.0)
    big = {"w": {"kernel": jnp.full((2, 2), 100.0)}, "n": {"scale": jnp.zeros((2,))}}
    clipped, _ = optax.clip_by_global_norm(1.0).update(big, None)
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0)


# --------------------------------------------------------------------------- errors


def test_bad_mesh_and_batch_rejected_before_compiling():
    cfg, optim = preset("tiny"), OptimConfig()
    with pytest.raises(ValueError, match=r"needs 8 devices but 1 are available"):
        Trainer(cfg, TrainConfig(batch_size=8), optim, MeshConfig(shape=(2, 2, 2)))
    with pytest.raises(ValueError, match=r"batch_size=6 .*microbatches=4"):
        Trainer(cfg, TrainConfig(batch_size=6, microbatches=4), optim, MeshConfig((1, 1, 1)))
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        Trainer(
            cfg,
            TrainConfig(batch_size=4),
            optim,
            MeshConfig(shape=(1, 1, 1), rules=[["mlp", "model"]]),
        )


def test_rules_override_changes_parameter_shardings_only_for_named_axes():
    cfg, optim = preset("tiny"), OptimConfig()
    default = Trainer(cfg, TrainConfig(batch_size=4), optim, MeshConfig((1, 1, 1)))
    no_fsdp = Trainer(
        cfg,
        TrainConfig(batch_size=4),
        optim,
        MeshConfig((1, 1, 1), rules=[["embed", None], ["batch", ["data"]]]),
    )
    embed = lambda t: t.param_shardings["embed"]["embedding"].spec  # noqa: E731
    assert tuple(embed(default)) == ("tensor", "fsdp")
    assert tuple(embed(no_fsdp)) == ("tensor", None)  # vocab rule kept, embed overridden
    assert no_fsdp.rules[:2] == (("embed", None), ("batch", ("data",)))


def test_trainers_of_one_setup_share_the_compiled_step():
    cfg, train = preset("tiny"), TrainConfig(steps=3, batch_size=B, seq_len=T)
    optim = OptimConfig(learning_rate=1e-3, weight_decay=0.05)  # a setup no other test uses
    first = Trainer(cfg, train, optim, MeshConfig((1, 1, 1)))
    first.train_step(batch(0))
    compiled = train_step._cache_size()
    # Another Trainer with another rate, schedule, warmup and run length: the rate is an
    # input of the step, so no new program.
    again = Trainer(
        cfg,
        dataclasses.replace(train, steps=50),
        OptimConfig(learning_rate=3e-2, weight_decay=0.05, warmup_steps=7, schedule="linear"),
    )
    for i in range(2):
        again.train_step(batch(i))
        first.train_step(batch(i))
    assert train_step._cache_size() == compiled


def test_each_step_runs_at_its_scheduled_rate():
    optim = OptimConfig(learning_rate=1e-2, warmup_steps=2, end_lr_ratio=0.1)
    train = TrainConfig(steps=6, batch_size=B, seq_len=T)
    t = Trainer(preset("tiny"), train, optim, MeshConfig((1, 1, 1)))
    rates = [t.train_step(batch(i))["learning_rate"] for i in range(8)]
    schedule = learning_rate_schedule(optim, train.steps)
    # past the end the schedule holds its final rate
    expected = [float(schedule(min(s, train.steps))) for s in range(8)]
    assert rates == pytest.approx(expected, rel=1e-6)
    assert rates[:2] == pytest.approx([5e-3, 1e-2]) and rates[-1] == pytest.approx(1e-3)


# --------------------------------------------------------------------------- precision


def test_fp32_master_params_with_bf16_compute_and_given_params():
    cfg = preset("tiny", dtype="bfloat16", param_dtype="float32")
    given = jax.tree.map(
        lambda x: np.asarray(x, np.float32),
        jax.device_get(jax.jit(lambda r: _init(cfg, r))(jax.random.key(7))),
    )
    train = TrainConfig(steps=2, batch_size=B, seq_len=T, log_every=100)
    t = Trainer(cfg, train, OptimConfig(learning_rate=1e-2), MeshConfig((1, 1, 1)), params=given)
    m1 = t.train_step(batch(0))
    m2 = t.train_step(batch(0))
    assert m2["loss"] < m1["loss"]  # same batch twice: the update helped
    leaves = jax.tree.leaves(t.state.params)
    assert all(x.dtype == jnp.float32 for x in leaves)
    assert all(
        x.dtype == jnp.float32
        for x in jax.tree.leaves(t.state.opt_state)
        if hasattr(x, "dtype") and x.ndim > 0
    )


def _init(cfg, rng):
    from critique_jax.models import init_params

    return init_params(cfg, rng)


@pytest.mark.parametrize("tied", [True, False])
def test_sft_loss_fn_gradients_equal_those_of_the_full_logits(tied):
    """The trainer's loss projects the vocabulary in chunks with a hand-made gradient; every
    parameter's gradient (a tied embedding gets the input's and the head's) is autodiff's
    through the whole [B, T, V] logits."""
    from critique_jax import losses
    from critique_jax.trainer import make_apply_fn, sft_loss_fn

    cfg = preset("tiny", tie_word_embeddings=tied, vocab_size=300)
    params = _init(cfg, jax.random.key(3))
    apply_fn, data = make_apply_fn(cfg), batch(1)

    def full(p):
        logits = apply_fn(p, data["inputs"], data["positions"], data["segment_ids"])
        return losses.sft_loss(logits, data["targets"], data["loss_mask"])

    (want_loss, want_aux), want = jax.jit(jax.value_and_grad(full, has_aux=True))(params)
    (got_loss, got_aux), got = jax.jit(
        jax.value_and_grad(lambda p: sft_loss_fn(apply_fn, p, data), has_aux=True)
    )(params)
    assert float(got_loss) == pytest.approx(float(want_loss), rel=1e-6)
    assert float(got_aux["accuracy"]) == float(want_aux["accuracy"])
    assert set(got) == set(want) and ("lm_head" in got) is not tied
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-4, atol=1e-6)


# --------------------------------------------------------------------------- remat


@functools.cache  # the remat-free baseline is shared by the cases a worker runs
def _loss_and_grads(cfg) -> tuple[jax.Array, dict]:
    """SFT loss and its parameter gradients on batch(0), from the same random parameters
    whatever `cfg.remat` is (a policy adds no parameters)."""
    from critique_jax.losses import sft_loss
    from critique_jax.models import Transformer, init_params

    data = batch(0)
    params = init_params(cfg, jax.random.key(0))

    def loss(p):
        logits = Transformer(cfg).apply(
            {"params": p}, data["inputs"], data["positions"], data["segment_ids"]
        )
        return sft_loss(logits, data["targets"], data["loss_mask"])[0]

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize(
    "remat, scan_layers", [("full", True), ("dots", True), ("dots_no_batch", True), ("full", False)]
)
def test_remat_changes_what_is_stored_not_what_is_computed(remat, scan_layers):
    base = preset("tiny", scan_layers=scan_layers)
    want_loss, want_grads = _loss_and_grads(base)
    loss, grads = _loss_and_grads(dataclasses.replace(base, remat=remat))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    jax.tree.map(
        lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7),
        grads,
        want_grads,
    )


# --------------------------------------------------------------------------- metrics


def test_flop_formula_by_hand():
    cfg = preset("tiny")  # untied: the input table is a lookup, not counted
    n = cfg.num_params() - cfg.vocab_size * cfg.hidden_size
    attention = 6 * cfg.num_layers * cfg.num_heads * cfg.head_dim * 128
    assert training_flops_per_token(cfg, 128) == 6 * n + attention
    tied = preset("smollm2-135m")
    assert training_flops_per_token(tied, 1) == pytest.approx(
        6 * tied.num_params() + 6 * 30 * 9 * 64
    )
    assert 130e6 < tied.num_params() < 140e6


def test_peak_flops_table():
    class Dev:
        platform = "gpu"
        device_kind = "NVIDIA H100 80GB HBM3"

    assert peak_flops_per_device(Dev()) == 989e12
    Dev.platform, Dev.device_kind = "tpu", "TPU v5 lite"
    assert peak_flops_per_device(Dev()) == 197e12
    assert peak_flops_per_device(jax.devices("cpu")[0]) is None


def test_metrics_logger_replaces_records_after_resume(tmp_path):
    log = MetricsLogger(tmp_path, total_steps=4, enabled=True, tensorboard=False)
    for step in (1, 2, 3):
        log.log(step, {"loss": 1.0 / step, "mfu": None, "weight": np.float32(7)})
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # torn by a kill mid-write
    log = MetricsLogger(tmp_path, total_steps=4, initial_step=2, enabled=True, tensorboard=False)
    log.log(3, {"loss": math.pi})
    log.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[2]["loss"] == math.pi and records[0]["weight"] == 7.0


# --------------------------------------------------------------------------- launch env


def test_detect_launcher():
    assert detect_launcher({}) is None
    explicit = {"COORDINATOR_ADDRESS": "h0:1234", "NUM_PROCESSES": "4", "PROCESS_ID": "2"}
    assert detect_launcher(explicit) == "explicit"
    assert detect_launcher({**explicit, "NUM_PROCESSES": "1"}) is None
    with pytest.raises(ValueError, match="PROCESS_ID"):
        detect_launcher({"COORDINATOR_ADDRESS": "h0:1234", "NUM_PROCESSES": "4"})
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "n[1-2]"}
    assert detect_launcher(slurm) == "slurm"
    assert detect_launcher({**slurm, "SLURM_NTASKS": "1"}) is None
    assert detect_launcher({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}) == "tpu"
    assert detect_launcher({"TPU_WORKER_HOSTNAMES": "t0"}) is None
    assert detect_launcher({"CRITIQUE_JAX_MULTIHOST": "1"}) == "tpu"


def test_slurm_local_devices():
    per_node = {"SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_GPUS_ON_NODE": "8"}
    assert slurm_local_device_ids(per_node) == list(range(8))
    per_gpu = {"SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_GPUS_ON_NODE": "8"}
    assert slurm_local_device_ids(per_gpu) is None


def test_cpu_training_is_advised_to_use_huge_pages_until_it_does(monkeypatch):
    """The advice names the tunable while it is missing and goes away once it is set."""
    import platform

    from critique_jax import backend

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the advice is for glibc on Linux")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert backend.HUGE_PAGES_TUNABLE in backend.cpu_allocator_advice()
    monkeypatch.setenv("GLIBC_TUNABLES", f"glibc.malloc.arena_max=2:{backend.HUGE_PAGES_TUNABLE}")
    assert backend.cpu_allocator_advice() is None


RESTART_PROBE = """
import os, sys
from critique_jax.backend import restart_with_huge_pages
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\\n")
restart_with_huge_pages()
print(os.environ.get("GLIBC_TUNABLES"), *sys.argv[2:])
"""


@pytest.mark.parametrize(
    ("env", "tunables"),
    [
        ({"JAX_PLATFORMS": "cpu"}, "glibc.malloc.hugetlb=1"),
        (
            {"JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
            "glibc.malloc.hugetlb=0",
        ),
        ({"JAX_PLATFORMS": "cuda"}, "None"),  # not a CPU run
    ],
)
def test_training_clis_restart_themselves_with_huge_pages(tmp_path, env, tunables):
    """Once, as the same process with the same arguments; not where the user set
    GLIBC_TUNABLES (to anything) or a GPU may run the step."""
    from critique_jax import backend

    if not backend.huge_pages_supported():
        pytest.skip("the tunable is glibc's on Linux")
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAX_PLATFORMS")}
    pids = tmp_path / "pids"
    proc = subprocess.run(
        [sys.executable, "-c", RESTART_PROBE, str(pids), "a", "b=c"],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.split() == [tunables, "a", "b=c"]
    runs = pids.read_text().split()
    assert len(runs) == (2 if tunables == backend.HUGE_PAGES_TUNABLE else 1)
    assert len(set(runs)) == 1


def test_an_installed_gpu_plugin_rules_out_the_restart(monkeypatch):
    """Without JAX_PLATFORMS, an installed plugin means JAX may pick a GPU: no restart."""
    import importlib.util

    from critique_jax import backend

    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: find_spec("os") if name == "jax_plugins" else None
    )
    assert backend.accelerator_may_be_found()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(backend.importlib.metadata, "entry_points", lambda group: [])
    assert not backend.accelerator_may_be_found()


def test_training_benchmark_runs_pytorch_without_the_huge_page_tunable():
    """The tunable slows PyTorch's step, so its child process drops it and keeps the rest."""
    from critique_jax.benchmarks.training import without_huge_pages

    env = {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    assert without_huge_pages(env) == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert without_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) == {}


CACHE_PROBE = """
import jax, jax.numpy as jnp
from critique_jax.backend import use_compilation_cache
use_compilation_cache()
events = []
jax.monitoring.register_event_listener(lambda name, **_: events.append(name))
jax.jit(lambda x: jnp.tanh(x) * 3 + 1)(jnp.ones(5))
print("hit" if "/jax/compilation_cache/cache_hits" in events else "miss")
"""


def test_the_next_process_loads_compiled_programs_from_disk(tmp_path):
    """Under ~/.cache by default; JAX's own switch turns it off."""
    cache_settings = ("JAX_COMPILATION_CACHE", "JAX_ENABLE_COMPILATION_CACHE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(cache_settings)}
    env["HOME"] = str(tmp_path)

    def probe(**extra: str) -> str:
        run = subprocess.run(
            [sys.executable, "-c", CACHE_PROBE], env=env | extra, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-2000:]
        return run.stdout.strip()

    assert probe() == "miss"
    assert any((tmp_path / ".cache" / "critique_jax" / "xla").iterdir())
    assert probe() == "hit"
    assert probe(JAX_ENABLE_COMPILATION_CACHE="false") == "miss"
    # On CPU no path goes into the programs' keys: a copied cache serves another machine.
    copy = tmp_path / "copied"
    shutil.copytree(tmp_path / ".cache" / "critique_jax" / "xla", copy)
    assert probe(JAX_COMPILATION_CACHE_DIR=str(copy)) == "hit"
