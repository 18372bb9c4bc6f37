"""Checkpoint, kill, resume: the resumed run continues bit-identically; bad steps are skipped;
a non-finite loss stops the run and keeps the last good checkpoint.

All runs share one setup (same model, optimizer, mesh and loss function), so the train step
compiles once for the module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critique_jax.checkpoints.train_state import CheckpointMismatchError, CheckpointWarning
from critique_jax.config import MeshConfig, OptimConfig, TrainConfig
from critique_jax.data.batching import BatchIterator
from critique_jax.models import preset
from critique_jax.trainer import NonFiniteLossError, Trainer, sft_loss_fn

B, T, STEPS = 4, 16, 6
CFG = preset("tiny")
TRAIN = TrainConfig(
    steps=STEPS, batch_size=B, seq_len=T, checkpoint_every=2, keep_checkpoints=2, log_every=100
)
OPTIM = OptimConfig(learning_rate=1e-3, warmup_steps=2, weight_decay=0.01)


def poisonable_sft_loss(apply_fn, params, batch):
    """The SFT loss, turned NaN for a batch with a `poison` row."""
    loss, aux = sft_loss_fn(apply_fn, params, batch)
    return jnp.where(batch["poison"].any(), jnp.nan, loss), aux


def rows() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    n = 10  # 2 batches per epoch: the run crosses epochs, so the reshuffle must resume too
    tokens = rng.integers(1, 256, (n, T + 1)).astype(np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": (rng.random((n, T)) < 0.8).astype(np.float32),
        "segment_ids": np.ones((n, T), np.int32),
        "positions": np.tile(np.arange(T, dtype=np.int32), (n, 1)),
        "poison": np.zeros((n,), bool),
    }


def trainer(run_dir: Path | None) -> Trainer:
    return Trainer(
        CFG,
        TRAIN,
        OPTIM,
        MeshConfig(shape=(1, 1, 1)),
        run_dir=run_dir,
        seed=3,
        loss_fn=poisonable_sft_loss,
    )


def losses(history: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in history}


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict[int, float]]:
    run_dir = tmp_path_factory.mktemp("full")
    t = trainer(run_dir)
    history = t.fit(BatchIterator(rows(), B, seed=0))
    t.close()
    return run_dir, losses(history)


def test_kill_and_resume_is_bit_identical(uninterrupted, tmp_path):
    _, full = uninterrupted
    assert len(set(full.values())) == STEPS  # every step saw a different batch/update

    def kill_at_3(step, _record):
        if step == 3:
            raise Killed

    first = trainer(tmp_path)
    first.init_state()
    key1 = first.next_rng()  # advances the run's PRNG stream, which the checkpoint must keep
    with pytest.raises(Killed):
        first.fit(BatchIterator(rows(), B, seed=0), on_step=kill_at_3)
    first.close()
    assert first.checkpointer.steps() == [2]  # step 3 ran but was never saved

    def load_pretrained():
        raise AssertionError("initial params are loaded only when there is no checkpoint")

    # A new process builds a new Trainer and iterator.
    resumed = Trainer(
        CFG,
        TRAIN,
        OPTIM,
        MeshConfig(shape=(1, 1, 1)),
        run_dir=tmp_path,
        seed=3,
        loss_fn=poisonable_sft_loss,
        params=load_pretrained,
    )
    history = resumed.fit(BatchIterator(rows(), B, seed=0))
    resumed.close()
    assert [r["step"] for r in history] == [3, 4, 5, 6]
    assert losses(history) == {s: full[s] for s in (3, 4, 5, 6)}  # exact float equality
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert logged == [1, 2, 3, 4, 5, 6]  # the killed run's step-3 record was replaced

    never_killed = trainer(None)  # the same stream, drawn twice without interruption
    never_killed.init_state()
    expected = [jax.random.key_data(never_killed.next_rng()) for _ in range(2)]
    key2 = resumed.next_rng()  # continues the stream restored from the checkpoint
    assert np.array_equal(jax.random.key_data(key1), expected[0])
    assert np.array_equal(jax.random.key_data(key2), expected[1])


# orbax's restore of the corrupt step leaves an async callback behind that fires on a closed
# event loop: harmless noise that pytest reports as an unraisable exception.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_and_partial_checkpoints_are_skipped(uninterrupted, tmp_path):
    src, full = uninterrupted
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["4", "6"]
    for f in (ckpts / "6" / "state").rglob("*"):  # step 6: array data truncated
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"")
    (ckpts / "8" / "state").mkdir(parents=True)  # step 8: a partial copy, items missing
    (ckpts / "8" / "state" / "junk").write_text("x")

    t = trainer(run_dir)
    batches = BatchIterator(rows(), B, seed=0)
    with pytest.warns(CheckpointWarning) as caught:
        step = t.resume(batches)
    messages = " ".join(str(w.message) for w in caught)
    assert step == 4 and t.step == 4
    assert "step 8" in messages and "step 6" in messages
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("corrupt-"))[0].startswith(
        "corrupt-6-"
    )

    history = t.fit(batches)  # continues from step 4 with the restored data position
    t.close()
    assert losses(history) == {5: full[5], 6: full[6]}
    assert t.checkpointer.steps() == [4, 6]  # step 6 written again, cleanly


def test_non_finite_loss_stops_with_the_step_and_keeps_good_state(uninterrupted, tmp_path):
    _, full = uninterrupted

    def poisoned_at_3():
        for i, b in enumerate(BatchIterator(rows(), B, seed=0), start=1):
            yield {**b, "poison": np.full(B, i == 3)}

    t = trainer(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"at step 3: loss=nan.*checkpoint is step 2"):
        t.fit(poisoned_at_3())
    t.close()
    assert t.step == 2  # the poisoned update was not applied
    assert t.checkpointer.steps() == [2]
    kept = trainer(tmp_path)
    assert kept.resume() == 2
    for a, b in zip(
        jax.tree.leaves(kept.state.params), jax.tree.leaves(t.state.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kept.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["loss"] for r in records] == [full[1], full[2]]
    for key in ("loss", "grad_norm", "learning_rate", "tokens_per_s", "step_time", "mfu"):
        assert key in records[0]


def test_checkpoint_of_another_model_is_an_error_not_corruption(uninterrupted):
    run_dir, _ = uninterrupted
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    wider = CFG.replace(intermediate_size=96)
    other = Trainer(wider, TRAIN, OPTIM, MeshConfig(shape=(1, 1, 1)), run_dir=run_dir)
    with pytest.raises(CheckpointMismatchError, match=r"step 6 .*config changed"):
        other.resume()
    other.close()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
