"""Runs the train step on 8 simulated CPU devices; test_sharded_step.py runs it as a subprocess.

XLA_FLAGS (device count) must be set before jax is imported, which is why this is a separate
process. Usage: python tests/sharded_worker.py OUT.npz. Every scenario trains the tiny
preset (fp32) for two steps on the same packed batches and records losses, gradient norms
and the parameters after the second update.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from critique_jax.config import MeshConfig, OptimConfig, TrainConfig  # noqa: E402
from critique_jax.models import preset  # noqa: E402
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
    batch = {k: np.zeros((B, T), np.int32) for k in ("inputs", "targets", "segment_ids",
                                                      "positions")}
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


def main(out: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    batches = [packed_batch(rng) for _ in range(STEPS)]
    cfg = preset("tiny")
    optim = OptimConfig(learning_rate=1e-3, warmup_steps=0, weight_decay=0.1)
    results: dict[str, np.ndarray] = {}
    params = None
    for name, (shape, micro) in SCENARIOS.items():
        devices = jax.devices()[: int(np.prod(shape))]
        trainer = Trainer(cfg, TrainConfig(steps=STEPS, batch_size=B, seq_len=T,
                                           microbatches=micro),
                          optim, MeshConfig(shape=shape), devices=devices, seed=0)
        metrics = [trainer.train_step(b) for b in batches]
        leaves = jax.tree.leaves(trainer.state.params)
        expected = jax.tree.leaves(trainer.programs.param_shardings)
        for leaf, sharding in zip(leaves, expected, strict=True):
            assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (name, leaf.sharding)
        results[f"{name}/loss"] = np.array([m["loss"] for m in metrics])
        results[f"{name}/grad_norm"] = np.array([m["grad_norm"] for m in metrics])
        results[f"{name}/weight"] = np.array([m["weight"] for m in metrics])
        results[f"{name}/params"] = np.concatenate([np.asarray(x).ravel() for x in leaves])
        embed = trainer.state.params["embed"]["embedding"]
        results[f"{name}/embed_shard_shape"] = np.array(embed.addressable_shards[0].data.shape)
        if name == "single":
            params = jax.device_get(trainer.state.params)
    # Reference log-probs of 20 rows in batches of 8 (last one padded), two meshes.
    rows = {k: np.concatenate([b[k] for b in batches])[:20] for k in batches[0]}
    for name, shape in (("single", (1, 1, 1)), ("mixed222", (2, 2, 2))):
        mesh = make_mesh(shape, jax.devices()[: int(np.prod(shape))])
        results[f"score/{name}"] = score_rows(cfg, params, rows, batch_size=8, mesh=mesh)
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1])
