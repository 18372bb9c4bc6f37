"""User errors end with one clear line and exit code 2 before any work; faults never hang.

One test per case (issue 17). Each asserts the message (it names the key or file and the fix)
and that nothing already on disk changed. CLIs are called in-process through their `main`.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from critique_jax import train as train_cli
from critique_jax.config import ConfigError, OptimConfig, TrainConfig, from_dict

REPO = Path(__file__).resolve().parents[1]
SFT_CONFIG = REPO / "configs" / "critic_sft_demo.yaml"


def snapshot(root: Path) -> dict[str, str]:
    """path -> sha256 of every file under root: 'nothing already written changed'."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_train(capsys, *args: str) -> tuple[int, str]:
    code = train_cli.main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return code, lines[0]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run_dir holding an earlier run's files, which a refused run must not touch."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.yaml").write_text("stage: sft\n")
    (d / "results.json").write_text("{}\n")
    return d


def refused(capsys, run_dir: Path, *overrides: str, config: Path | None = SFT_CONFIG) -> str:
    """Run the train CLI on run_dir; assert exit 2, one line, and run_dir unchanged."""
    before = snapshot(run_dir)
    args = (["--config", str(config)] if config else []) + [f"run_dir={run_dir}", *overrides]
    code, line = run_train(capsys, *args)
    assert code == 2, line
    assert snapshot(run_dir) == before
    return line


# --------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.steps=-5", "train.steps=-5 is out of range: it must be >= 0"),
        ("train.steps=0", "train.steps=0: the sft stage must train at least one step"),
        ("train.batch_size=0", "train.batch_size=0 is out of range: it must be >= 1"),
        ("train.seq_len=0", "train.seq_len=0 is out of range"),
        ("train.microbatches=0", "train.microbatches=0 is out of range"),
        ("train.checkpoint_every=-1", "train.checkpoint_every=-1 is out of range"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints=0 is out of range"),
        ("train.log_every=0", "train.log_every=0 is out of range"),
        ("optim.learning_rate=-1e-3", "optim.learning_rate=-0.001 is out of range: it must be > 0"),
        ("optim.learning_rate=.nan", "optim.learning_rate=nan is out of range"),
        ("optim.warmup_steps=-2", "optim.warmup_steps=-2 is out of range: it must be >= 0"),
        ("optim.b2=1.5", "optim.b2=1.5 is out of range"),
        ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 is out of range"),
        ("optim.schedule=cosin", "optim.schedule='cosin': choose one of"),
        ("seed=-1", "seed=-1 is out of range: it must be >= 0"),
        ("run_dir=''", "run_dir is empty"),
    ],
    ids=lambda v: v if "=" in v else "",
)
def test_bad_value_is_refused_before_work(capsys, run_dir, override, message):
    line = refused(capsys, run_dir, override)
    assert line.startswith("config error: ") and message in line, line


def test_python_api_checks_ranges_too():
    with pytest.raises(ConfigError, match=r"train.batch_size=0 is out of range"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"optim.learning_rate=-1.0 .* gradient ascent"):
        OptimConfig(learning_rate=-1.0)
    from critique_jax.pipelines.rco_train import Config

    with pytest.raises(ConfigError, match=r"critic.optim.warmup_steps=-1 is out of range"):
        from_dict(Config, {"optim": {"warmup_steps": -1}}, "critic")


def test_default_configs_are_in_range():
    TrainConfig()
    OptimConfig()


# --------------------------------------------------------------------------- config files


def test_empty_config_file_is_refused(capsys, run_dir, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    line = refused(capsys, run_dir, config=empty)
    assert f"config file {empty} is empty" in line and "configs/*.yaml" in line


def test_duplicate_yaml_key_is_refused(capsys, run_dir, tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text(SFT_CONFIG.read_text() + "train: {steps: 5}\n")
    line = refused(capsys, run_dir, config=dup)
    assert f"config file {dup} is not valid YAML" in line
    assert "duplicate key 'train'" in line and "keep one of them" in line


def test_duplicate_key_in_override_is_refused(capsys, run_dir):
    line = refused(capsys, run_dir, "train={steps: 2, steps: 3}")
    assert "duplicate key 'steps'" in line


def test_missing_config_file_is_refused(capsys, run_dir, tmp_path):
    line = refused(capsys, run_dir, config=tmp_path / "nope.yaml")
    assert "nope.yaml does not exist" in line and "--config configs/" in line


def test_config_file_not_utf8_is_refused(capsys, run_dir, tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("stage: sft\nrun_dir: caf\xe9\n".encode("latin-1"))
    line = refused(capsys, run_dir, config=bad)
    assert "latin1.yaml is not UTF-8" in line


def test_unknown_key_is_refused(capsys, run_dir):
    line = refused(capsys, run_dir, "train.stepz=3")
    assert "unknown config key(s) ['train.stepz']" in line and "steps" in line


def test_debug_shows_the_traceback(capsys, run_dir, monkeypatch):
    monkeypatch.setenv("CRITIQUE_JAX_DEBUG", "1")
    assert train_cli.main(["--config", str(SFT_CONFIG), f"run_dir={run_dir}", "seed=-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "config error: seed=-1" in err


# --------------------------------------------------------------------------- checkpoints


def _immutable(path: Path) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not available")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i is not permitted here")


def _mutable(path: Path) -> None:
    subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def _orbax_threads() -> list[str]:
    return [
        t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
    ]


def test_unwritable_checkpoint_dir_is_refused_at_start(tmp_path):
    from critique_jax.checkpoint import Checkpointer, CheckpointWriteError

    (tmp_path / "checkpoints").write_text("a file where the directory should be")
    with pytest.raises(CheckpointWriteError, match=r"checkpoints is not writable.*another run_dir"):
        Checkpointer(tmp_path / "checkpoints")
    assert (tmp_path / "checkpoints").read_text() == "a file where the directory should be"


def test_failed_save_raises_and_leaves_no_thread_waiting(tmp_path):
    """The hang: a step directory that cannot be created left orbax's writer threads
    (non-daemon) waiting ~20 minutes at exit. Now save raises, close ends every thread."""
    import jax.numpy as jnp

    from critique_jax.checkpoint import Checkpointer, CheckpointWriteError

    directory = tmp_path / "checkpoints"
    ckpt = Checkpointer(directory)
    ckpt.save(1, {"w": jnp.ones(4)}, {"iterator": 1})
    ckpt.wait()
    _immutable(directory)
    try:
        with pytest.raises(CheckpointWriteError, match=r"saving checkpoint step 2 in .*failed"):
            ckpt.save(2, {"w": jnp.ones(4)}, {"iterator": 2})
            ckpt.wait()
        ckpt.close()
    finally:
        _mutable(directory)
    assert not _orbax_threads(), _orbax_threads()
    assert ckpt.steps() == [1]
