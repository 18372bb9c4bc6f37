"""Train-step scenarios on simulated CPU devices, run as subprocesses by test_sharded_step.py.

XLA_FLAGS (device count) must be set before jax is imported, which is why these are separate
processes. Every scenario trains the tiny preset (fp32) for two steps on the same packed
batches and records losses, gradient norms and the parameters after the second update.

    python tests/sharded_worker.py single-host OUT.npz
        one process, 8 devices: meshes (1,1,1), (8,1,1), (1,8,1), (2,2,2), accumulation,
        and test_sampling.py's sampled request on a (2,2,2) mesh
    python tests/sharded_worker.py multi-host OUT.npz RUN_DIR   (with COORDINATOR_ADDRESS,
        NUM_PROCESSES=2, PROCESS_ID set): 2 processes x 2 devices, mesh (2,2,1); each process
        feeds only its rows; checkpoints, then a new Trainer restores onto the same shards
"""

from __future__ import annotations

import dataclasses
import os
import sys

MODE = sys.argv[1]
DEVICES = 8 if MODE == "single-host" else 2
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count={DEVICES} --xla_backend_optimization_level=0"
    # The unfused CPU emitters compile these small programs ~3x faster. Every result compared
    # here comes from this same process setup (the sampling check allows 1e-4).
    + " --xla_cpu_use_fusion_emitters=false"
)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from critique_jax.config import MeshConfig, OptimConfig, TrainConfig  # noqa: E402
from critique_jax.distributed import initialize_distributed  # noqa: E402
from critique_jax.models import preset  # noqa: E402
from critique_jax.sampling import Sampler  # noqa: E402
from critique_jax.scoring import score_rows  # noqa: E402
from critique_jax.sharding import make_mesh  # noqa: E402
from critique_jax.trainer import Trainer  # noqa: E402

B, T, STEPS = 16, 32, 2
SCENARIOS = {  # name: (mesh shape, microbatches)
    "single": ((1, 1, 1), 1),
    "data8": ((8, 1, 1), 1),
    "fsdp8": ((1, 8, 1), 1),
    "mixed222": ((2, 2, 2), 1),
    "mixed222_accum4": ((2, 2, 2), 4),
}


def packed_batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Rows of two packed segments of random lengths, then padding (segment 0)."""
    batch = {
        k: np.zeros((B, T), np.int32) for k in ("inputs", "targets", "segment_ids", "positions")
    }
    batch["loss_mask"] = np.zeros((B, T), np.float32)
    for r in range(B):
        start = 0
        for seg in (1, 2):
            n = int(rng.integers(4, T // 2))
            tokens = rng.integers(1, 256, n + 1)
            span = slice(start, start + n)
            batch["inputs"][r, span], batch["targets"][r, span] = tokens[:-1], tokens[1:]
            batch["segment_ids"][r, span] = seg
            batch["positions"][r, span] = np.arange(n)
            batch["loss_mask"][r, span] = rng.random(n) < 0.7
            start += n
    return batch


CFG = preset("tiny")
OPTIM = OptimConfig(learning_rate=1e-3, warmup_steps=0, weight_decay=0.1)


def batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [packed_batch(rng) for _ in range(STEPS)]


def flat(params) -> np.ndarray:
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(params)])


def single_host(out: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    cfg, optim = CFG, OPTIM
    data = batches()
    results: dict[str, np.ndarray] = {}
    params = None
    for name, (shape, micro) in SCENARIOS.items():
        devices = jax.devices()[: int(np.prod(shape))]
        trainer = Trainer(
            cfg,
            TrainConfig(steps=STEPS, batch_size=B, seq_len=T, microbatches=micro),
            optim,
            MeshConfig(shape=shape),
            devices=devices,
            seed=0,
        )
        metrics = [trainer.train_step(b) for b in data]
        leaves = jax.tree.leaves(trainer.state.params)
        expected = jax.tree.leaves(trainer.param_shardings)
        for leaf, sharding in zip(leaves, expected, strict=True):
            assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (name, leaf.sharding)
        results[f"{name}/loss"] = np.array([m["loss"] for m in metrics])
        results[f"{name}/grad_norm"] = np.array([m["grad_norm"] for m in metrics])
        results[f"{name}/weight"] = np.array([m["weight"] for m in metrics])
        results[f"{name}/params"] = flat(leaves)
        embed = trainer.state.params["embed"]["embedding"]
        results[f"{name}/embed_shard_shape"] = np.array(embed.addressable_shards[0].data.shape)
        if name == "single":
            params = jax.device_get(trainer.state.params)
    # Reference log-probs of 20 rows in batches of 8 (last one padded), two meshes.
    rows = {k: np.concatenate([b[k] for b in data])[:20] for k in data[0]}
    for name, shape in (("single", (1, 1, 1)), ("mixed222", (2, 2, 2))):
        mesh = make_mesh(shape, jax.devices()[: int(np.prod(shape))])
        results[f"score/{name}"] = score_rows(cfg, params, rows, batch_size=8, mesh=mesh)
    # test_sampling.py's sampled request on data=2, fsdp=2, tensor=2, the decode cache
    # growing on the mesh (room for 2 -> 4 -> 6 tokens per row).
    import test_sampling as ts

    sample_cfg, sample_params = ts.sampling_model()
    buckets = dataclasses.replace(ts.BUCKETS, decode_slots=2)
    assert buckets.slots(ts.SAMPLED.max_new_tokens) == 2
    sampler = Sampler(sample_cfg, mesh=make_mesh((2, 2, 2)), buckets=buckets)
    for r, row in enumerate(sampler.generate_ids(sample_params, ts.PROMPTS, ts.SAMPLED)):
        for j, c in enumerate(row):
            results[f"sample/{r}/{j}/token_ids"] = np.array(c.token_ids)
            results[f"sample/{r}/{j}/logprobs"] = np.array(c.logprobs)
    np.savez(out, **results)


def multi_host(out: str, run_dir: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process on CPU
    assert initialize_distributed(), "set COORDINATOR_ADDRESS, NUM_PROCESSES, PROCESS_ID"
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    rank, rows = jax.process_index(), B // 2
    local = [{k: v[rank * rows : (rank + 1) * rows] for k, v in b.items()} for b in batches()]
    train = TrainConfig(steps=STEPS, batch_size=B, seq_len=T, log_every=100)
    trainer = Trainer(CFG, train, OPTIM, MeshConfig(shape=(2, 2, 1)), run_dir=run_dir, seed=0)
    history = trainer.fit(iter(local))
    trainer.close()
    trained = multihost_utils.process_allgather(trainer.state.params, tiled=True)
    again = Trainer(CFG, train, OPTIM, MeshConfig(shape=(2, 2, 1)), run_dir=run_dir, seed=0)
    assert again.resume() == STEPS
    restored = multihost_utils.process_allgather(again.state.params, tiled=True)
    again.close()
    if rank == 0:
        np.savez(
            out,
            loss=np.array([r["loss"] for r in history]),
            grad_norm=np.array([r["grad_norm"] for r in history]),
            params=flat(trained),
            restored=flat(restored),
        )


if __name__ == "__main__":
    if MODE == "single-host":
        single_host(sys.argv[2])
    else:
        multi_host(sys.argv[2], sys.argv[3])
