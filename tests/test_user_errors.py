"""User errors end with one clear line and exit code 2 before any work; faults never hang.

One test per case (issue 17). Each asserts the message (it names the key or file and the fix)
and that nothing already on disk changed. CLIs are called in-process through their `main`.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
        if p.is_file() and p.name != ".lock"  # the run_dir lock: no result of a run
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
    from critique_jax.pipelines.rco import Config

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
    from critique_jax.checkpoints.train_state import Checkpointer, CheckpointWriteError

    (tmp_path / "checkpoints").write_text("a file where the directory should be")
    with pytest.raises(CheckpointWriteError, match=r"checkpoints is not writable.*another run_dir"):
        Checkpointer(tmp_path / "checkpoints")
    assert (tmp_path / "checkpoints").read_text() == "a file where the directory should be"


def test_failed_save_raises_and_leaves_no_thread_waiting(tmp_path):
    """The hang: a step directory that cannot be created left orbax's writer threads
    (non-daemon) waiting ~20 minutes at exit. Now save raises, close ends every thread."""
    import jax.numpy as jnp

    from critique_jax.checkpoints.train_state import Checkpointer, CheckpointWriteError

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


# --------------------------------------------------------------------------- model files


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    """A tiny model exported as an HF directory (no tokenizer: loading fails before it)."""
    from critique_jax.checkpoints.hf import save_hf
    from critique_jax.models import preset
    from critique_jax.pipelines.loading import init_sharded_params

    cfg = preset("tiny", num_layers=2)
    return save_hf(cfg, init_sharded_params(cfg, 0, None), tmp_path_factory.mktemp("m") / "hf")


@pytest.fixture
def model_dir(tiny_hf, tmp_path) -> Path:
    """A copy of the tiny HF directory, for a test to damage."""
    return Path(shutil.copytree(tiny_hf, tmp_path / "model"))


def run_cli_main(capsys, main, *args: str) -> str:
    """Call a CLI main; assert exit 2 and exactly one error line without a traceback."""
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(("error:", "config error:"))]
    assert len(lines) == 1, err
    return lines[0]


def sample_refused(capsys, model_dir: Path, *extra: str, model: str | None = None) -> str:
    from critique_jax import sample

    before = snapshot(model_dir)
    line = run_cli_main(
        capsys, sample.main, "--model", model or str(model_dir), "--prompt", "hi", *extra
    )
    assert snapshot(model_dir) == before
    return line


def _weights(model_dir: Path) -> Path:
    return model_dir / "model.safetensors"


def test_truncated_safetensors_is_named(capsys, model_dir):
    data = _weights(model_dir).read_bytes()
    _weights(model_dir).write_bytes(data[: len(data) // 2])
    line = sample_refused(capsys, model_dir)
    assert f"{_weights(model_dir)} is not a valid safetensors file" in line
    assert "(truncated)" in line and "download or copy it again" in line


def test_empty_safetensors_is_named(capsys, model_dir):
    _weights(model_dir).write_bytes(b"")
    line = sample_refused(capsys, model_dir)
    assert "model.safetensors is not a valid safetensors file: it has 0 bytes" in line


def test_random_bytes_safetensors_is_named(capsys, model_dir):
    import numpy as np

    _weights(model_dir).write_bytes(np.random.default_rng(0).bytes(4096))
    line = sample_refused(capsys, model_dir)
    assert "model.safetensors is not a valid safetensors file: its header claims" in line


def test_safetensors_with_a_garbage_header_is_named(capsys, model_dir):
    import struct

    _weights(model_dir).write_bytes(struct.pack("<Q", 6) + b"\xff{}{}{" + b"\0" * 64)
    line = sample_refused(capsys, model_dir)
    assert "its header is not JSON" in line


def test_config_json_not_json_is_named(capsys, model_dir):
    (model_dir / "config.json").write_text('{"model_type": "llama",')
    line = sample_refused(capsys, model_dir)
    assert f"{model_dir / 'config.json'} is not valid JSON (line 1" in line


def test_config_json_missing_field_is_named(capsys, model_dir):
    import json

    hf = json.loads((model_dir / "config.json").read_text())
    del hf["hidden_size"]
    (model_dir / "config.json").write_text(json.dumps(hf))
    line = sample_refused(capsys, model_dir)
    assert "config.json lacks the field 'hidden_size'" in line


def test_config_json_wrong_type_is_named(capsys, model_dir):
    import json

    hf = json.loads((model_dir / "config.json").read_text())
    hf["num_attention_heads"] = "four"
    (model_dir / "config.json").write_text(json.dumps(hf))
    line = sample_refused(capsys, model_dir)
    assert "config.json has a value of the wrong type or range" in line


def test_config_json_foreign_model_type_is_named(capsys, model_dir):
    (model_dir / "config.json").write_text('{"model_type": "gpt2"}')
    line = sample_refused(capsys, model_dir)
    assert "config.json: model_type 'gpt2' is not supported" in line


def test_non_finite_weights_are_refused(capsys, model_dir):
    import numpy as np
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(_weights(model_dir)))
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name] = tensors[name].copy()
    tensors[name][0, :3] = [np.nan, np.inf, np.nan]
    save_file(tensors, str(_weights(model_dir)), metadata={"format": "pt"})
    line = sample_refused(capsys, model_dir)
    assert f"tensor {name} in {_weights(model_dir)} has 3 non-finite values" in line


def test_missing_relative_dir_is_missing_not_a_hub_id(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    line = sample_refused(capsys, tmp_path / "runs", model="runs/sft")
    assert "checkpoint directory runs/sft does not exist (relative to" in line
    assert "hub" not in line


def test_missing_nested_dir_is_missing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = sample_refused(capsys, tmp_path, model="runs/sft/hf")
    assert "checkpoint directory runs/sft/hf does not exist" in line


def test_hub_ids_are_still_recognised():
    from critique_jax.checkpoints.hf import looks_like_hub_id

    assert looks_like_hub_id("Qwen/Qwen2.5-0.5B-Instruct")
    assert not looks_like_hub_id("./Qwen/x") and not looks_like_hub_id("/abs/x")
    assert not looks_like_hub_id("runs/a/b")


def test_check_hf_refuses_a_damaged_checkpoint(capsys, model_dir):
    from critique_jax import check_hf

    pytest.importorskip("torch")
    _weights(model_dir).write_bytes(b"\0" * 4)
    before = snapshot(model_dir)
    line = run_cli_main(capsys, check_hf.main, str(model_dir))
    assert "model.safetensors is not a valid safetensors file: it has 4 bytes" in line
    assert snapshot(model_dir) == before


def test_sample_bad_sampling_flag_is_refused(capsys, model_dir):
    line = sample_refused(capsys, model_dir, "--temperature", "-1")
    assert "temperature=-1.0 must be >= 0" in line


def test_one_layer_model_round_trips(tmp_path):
    """A 1-layer scanned stack is still [1, ...] inside and per-layer tensors outside:
    export, re-import (scanned and not) and transformers' load all agree."""
    import jax
    import numpy as np

    torch = pytest.importorskip("torch")
    import transformers as tr

    from critique_jax.checkpoints.hf import SafetensorsIndex, load_hf, save_hf
    from critique_jax.models import Transformer, preset
    from critique_jax.pipelines.loading import init_sharded_params

    cfg = preset("tiny", num_layers=1)
    params = init_sharded_params(cfg, 0, None)
    out = save_hf(cfg, params, tmp_path / "hf")
    q = SafetensorsIndex(out).get("model.layers.0.self_attn.q_proj.weight")
    assert q.ndim == 2
    for scan in (True, False):
        cfg2, params2 = load_hf(out, scan_layers=scan)
        assert cfg2.num_layers == 1
        if scan:
            same = jax.tree.map(lambda a, b: np.array_equal(a, b), params, params2)
            assert all(jax.tree.leaves(same))
    ids = np.array([[3, 17, 42, 5, 9]], np.int32)
    ours = Transformer(cfg).apply({"params": params}, ids, np.arange(5, dtype=np.int32)[None])
    model = tr.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids.astype(np.int64))).logits[0].numpy()
    assert np.abs(np.asarray(ours)[0] - ref).max() < 1e-4
    resaved = save_hf(cfg2, params2, tmp_path / "hf2")
    a, b = SafetensorsIndex(out), SafetensorsIndex(resaved)
    assert set(a.tensors) == set(b.tensors)
    for name in a.tensors:
        assert np.array_equal(a.get(name), b.get(name)), name


# --------------------------------------------------------------------------- layout and model


def test_seq_len_past_the_model_context_is_refused(capsys, run_dir):
    line = refused(capsys, run_dir, "train.seq_len=4096")
    assert "train.seq_len=4096 is longer than the model's context of 1024" in line


def test_batch_not_divisible_by_microbatches_is_refused(capsys, run_dir):
    line = refused(capsys, run_dir, "train.batch_size=8", "train.microbatches=3")
    assert "train.batch_size=8 must be divisible" in line and "multiple of 3" in line


def test_mesh_larger_than_the_devices_is_refused(capsys, run_dir):
    line = refused(capsys, run_dir, "mesh.shape=[4096,1,1]")
    assert "needs 4096 devices but" in line and "set mesh.shape" in line


def test_unknown_model_override_is_refused(capsys, run_dir):
    line = refused(capsys, run_dir, "model.overrides={num_layer: 1}")
    assert "unknown model config keys ['num_layer']" in line


def test_zero_layers_is_refused(capsys, run_dir):
    line = refused(capsys, run_dir, "model.overrides={num_layers: 0}")
    assert "num_layers=0 must be a positive int" in line


def test_negative_data_limit_is_refused(capsys, run_dir):
    line = refused(capsys, run_dir, "data.limit=-3")
    assert "data.limit=-3" in line


# --------------------------------------------------------------------------- data files


def _critique_record(**fields) -> str:
    import json

    record = {"question": "What is 2 + 3?", "solution": "2 + 3 = 5.", "critique": "Correct."}
    return json.dumps({**record, **fields}) + "\n"


def data_refused(capsys, run_dir: Path, data: Path) -> str:
    before = snapshot(data.parent)
    line = refused(capsys, run_dir, f"data.path={data}")
    assert snapshot(data.parent) == before
    return line


def test_non_utf8_data_is_named_with_its_line(capsys, run_dir, tmp_path):
    data = tmp_path / "data" / "sft.jsonl"
    data.parent.mkdir()
    latin1 = _critique_record().replace("Correct.", "Caf\u00e9")
    data.write_bytes(_critique_record().encode() + latin1.encode("latin-1"))
    line = data_refused(capsys, run_dir, data)
    assert f"{data} line 2: not UTF-8 text" in line and "save the file as UTF-8" in line


def test_wrong_field_type_is_named_with_its_line(capsys, run_dir, tmp_path):
    data = tmp_path / "data" / "sft.jsonl"
    data.parent.mkdir()
    data.write_text(_critique_record() + _critique_record(question=123))
    line = data_refused(capsys, run_dir, data)
    assert f"{data} line 2: format 'critique' needs string fields" in line
    assert "question (int)" in line


def test_empty_data_file_is_named(capsys, run_dir, tmp_path):
    data = tmp_path / "data" / "sft.jsonl"
    data.parent.mkdir()
    data.write_text("\n\n")
    line = data_refused(capsys, run_dir, data)
    assert f"{data}: the file is empty" in line


def test_empty_json_list_is_named(capsys, run_dir, tmp_path):
    data = tmp_path / "data" / "sft.json"
    data.parent.mkdir()
    data.write_text("[]")
    line = data_refused(capsys, run_dir, data)
    assert f"{data}: the file holds no records" in line


def test_missing_data_file_is_named(capsys, run_dir, tmp_path):
    line = refused(capsys, run_dir, f"data.path={tmp_path / 'none.jsonl'}")
    assert "none.jsonl: file not found" in line


def test_non_numeric_gsm8k_gold_is_refused(tmp_path):
    import json

    from critique_jax.data.loaders import DataError, load_gsm8k

    data = tmp_path / "gsm8k.jsonl"
    rows = [
        {"question": "Ava has 7 and buys 11. How many?", "answer": "7 + 11 = 18\n#### 18"},
        {"question": "Ben has 9 and buys 9. How many?", "answer": "9 + 9 = 18\n#### eighteen"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"gsm8k.jsonl line 2: .*'eighteen' after '####' is not a"):
        load_gsm8k(data)
    assert [p.answer for p in load_gsm8k(data, limit=1)] == ["18"]


def test_problem_record_with_wrong_types_is_named(tmp_path):
    import json

    from critique_jax.data.loaders import DataError
    from critique_jax.data.sources import ProblemSource, load_problems

    data = tmp_path / "problems.jsonl"
    data.write_text(
        json.dumps({"id": 1, "question": "What is 2 + 3?", "answer": 5})
        + "\n"
        + json.dumps({"id": "b", "question": ["What?"], "answer": "5"})
        + "\n"
    )
    with pytest.raises(DataError, match=r"problems.jsonl line 2: 'question' must be a non-empty"):
        load_problems(ProblemSource(kind="jsonl", path=str(data)))
    data.write_text(json.dumps({"id": 1, "question": "What is 2 + 3?", "answer": 5}) + "\n")
    (problem,) = load_problems(ProblemSource(kind="jsonl", path=str(data)))
    assert problem.id == "1" and problem.answer == "5"


# --------------------------------------------------------------------------- resume


def _earlier_run(run_dir: Path, *overrides: str) -> None:
    """What an earlier sft run on run_dir left: its config.yaml and fingerprint.json."""
    from critique_jax.config import save_yaml, to_dict
    from critique_jax.runio import write_fingerprint

    _, cfg = train_cli.build_config(str(SFT_CONFIG), [f"run_dir={run_dir}", *overrides])
    save_yaml(cfg, run_dir / "config.yaml")
    write_fingerprint(run_dir, to_dict(cfg))


def test_rerun_with_other_settings_is_refused(capsys, run_dir):
    _earlier_run(run_dir, "train.steps=200")
    line = refused(capsys, run_dir, "train.steps=400", "optim.learning_rate=0.01")
    assert f"run_dir {run_dir} holds a run made with other settings" in line
    assert "train.steps: 200 -> 400" in line and "optim.learning_rate: 0.001 -> 0.01" in line
    assert "overwrite=true" in line


def test_rerun_with_changed_input_contents_is_refused(capsys, run_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text(_critique_record())
    _earlier_run(run_dir, f"data.path={data}")
    data.write_text(_critique_record(critique="Wrong."))
    line = refused(capsys, run_dir, f"data.path={data}")
    assert "data.path (contents):" in line


def test_legacy_config_yaml_is_compared_too(capsys, run_dir):
    (run_dir / "config.yaml").write_text("stage: sft\ntrain: {steps: 7}\n")
    line = refused(capsys, run_dir)
    assert "train.steps: 7 -> 200" in line


def test_presentation_settings_may_change(run_dir):
    from critique_jax.config import to_dict
    from critique_jax.runio import check_resume

    _earlier_run(run_dir, "train.log_every=50", "train.checkpoint_every=100")
    before = snapshot(run_dir)
    _, cfg = train_cli.build_config(
        str(SFT_CONFIG),
        [
            f"run_dir={run_dir}",
            "train.log_every=1",
            "train.checkpoint_every=5",
            "mesh.shape=[1,1,1]",
        ],
    )
    check_resume(run_dir, to_dict(cfg))  # accepted: no error
    assert snapshot(run_dir) == before


def test_overwrite_moves_the_earlier_run_aside(run_dir):
    from critique_jax.config import to_dict
    from critique_jax.runio import check_resume

    _earlier_run(run_dir, "train.steps=200")
    before = snapshot(run_dir)
    _, cfg = train_cli.build_config(
        str(SFT_CONFIG), [f"run_dir={run_dir}", "train.steps=300", "overwrite=true"]
    )
    check_resume(run_dir, to_dict(cfg), overwrite=cfg.overwrite)
    (aside,) = run_dir.parent.glob("run.replaced-*")
    assert snapshot(aside) == before and snapshot(run_dir) == {}


def test_user_error_during_a_resumed_run_keeps_config_yaml(capsys, run_dir, tmp_path):
    """config.yaml is replaced only for a run that goes on: a data error on a resumed run
    leaves the earlier config.yaml and fingerprint as they were."""
    data = tmp_path / "bad.jsonl"
    data.write_text("\n")
    _earlier_run(run_dir, f"data.path={data}")
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text() + "# kept\n")
    line = refused(capsys, run_dir, f"data.path={data}", "train.log_every=7")
    assert "the file is empty" in line


def test_a_refused_first_run_leaves_no_settings_behind(capsys, tmp_path):
    """A fresh run refused for a bad input writes no config.yaml or fingerprint, so the
    corrected rerun is not refused as a run 'made with other settings'."""
    from critique_jax.runio import check_resume

    run_dir = tmp_path / "fresh"
    _, line = run_train(
        capsys,
        "--config",
        str(SFT_CONFIG),
        f"run_dir={run_dir}",
        f"data.path={tmp_path / 'missing.jsonl'}",
    )
    assert "missing.jsonl: file not found" in line
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "fingerprint.json").exists()
    _, fixed = train_cli.build_config(str(SFT_CONFIG), [f"run_dir={run_dir}", "data.path=x"])
    from critique_jax.config import to_dict

    check_resume(run_dir, to_dict(fixed))  # accepted


def test_an_empty_override_value_is_named(capsys, run_dir):
    line = refused(capsys, run_dir, "run_dir=")
    assert "run_dir has no value (`run_dir=` or null); give it a str value" in line


def test_disk_full_names_the_cause():
    from critique_jax.checkpoints.train_state import write_failure_cause

    wrapped = ValueError('RESOURCE_EXHAUSTED: Error writing "a/0": No space left on device')
    assert write_failure_cause(wrapped) == "No space left on device"
    cut = ValueError("RESOURCE_EXHAUSTED: Error writing")  # the OS's words cut off
    assert write_failure_cause(cut) == "RESOURCE_EXHAUSTED"
    assert write_failure_cause(ValueError("shapes differ")) is None


def test_closed_loop_callbacks_of_a_failed_save_print_nothing(capsys, monkeypatch):
    """After a failed save, tensorstore's pending writes call into orbax's closed asyncio
    loop; Python printed each as a bare traceback before the one-line error."""
    import gc
    import sys

    from critique_jax.errors import quiet_library_tracebacks

    class Raises:
        def __init__(self, message: str) -> None:
            self.message = message

        def __del__(self) -> None:
            raise RuntimeError(self.message)

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    quiet_library_tracebacks()
    Raises("Event loop is closed")
    Raises("another bug")
    gc.collect()
    err = capsys.readouterr().err
    assert "Event loop is closed" not in err and "RuntimeError: another bug" in err


# --------------------------------------------------------------------------- CLI plumbing


def test_cli_exit_code_and_one_stderr_line(tmp_path):
    """The real process: exit code 2 and a single stderr line (no traceback, no logs)."""
    import os
    import sys

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "CRITIQUE_JAX_DEBUG"}
    proc = subprocess.run(
        [sys.executable, "-m", "critique_jax.train", "--config", str(empty)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"config error: config file {empty} is empty; give at least `stage:` and its sections "
        "(see configs/*.yaml), or drop --config to run the demo"
    ]


@pytest.mark.parametrize(
    "module, message",
    [
        ("sampling", "does not exist"),
        ("rollouts", "does not exist"),
        ("training", "neither an HF checkpoint directory nor a preset"),
        ("decode_profile", "does not exist"),
    ],
)
def test_benchmark_clis_name_a_missing_model_in_one_line(tmp_path, module, message):
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CRITIQUE_JAX_DEBUG"}
    missing = tmp_path / "no_model"
    args = ["--model", str(missing)]
    if module == "rollouts":  # without data it skips before reading the model
        data = tmp_path / "gsm8k.jsonl"
        data.write_text('{"question": "What is 2 + 3?", "answer": "2 + 3 = 5\\n#### 5"}\n')
        args += ["--data", str(data)]
    proc = subprocess.run(
        [sys.executable, "-m", f"critique_jax.benchmarks.{module}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and message in lines[0] and str(missing) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_internal_errors_keep_their_traceback(run_dir, monkeypatch):
    from critique_jax.pipelines import sft

    def broken(cfg):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(sft, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        train_cli.main(["--config", str(SFT_CONFIG), f"run_dir={run_dir}", "data.path=x.jsonl"])


def test_disk_refusals_are_told_apart_from_bugs():
    import errno

    from critique_jax.checkpoints.train_state import is_write_failure

    full = ValueError('RESOURCE_EXHAUSTED: Error writing "a/0": No space left on device')
    assert is_write_failure(full)
    assert is_write_failure(OSError(errno.ENOSPC, "No space left on device"))
    wrapped = ValueError("commit failed")
    wrapped.__cause__ = PermissionError(errno.EACCES, "Permission denied")
    assert is_write_failure(wrapped)
    assert not is_write_failure(ValueError("shapes (3,) and (4,) do not match"))


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_rerun_with_the_same_config_resumes(path, tmp_path):
    """Every shipped config (the demo's included) is accepted again on its own run_dir, by
    the fingerprint and by the config.yaml of runs made before fingerprints existed."""
    from critique_jax.config import save_yaml, to_dict
    from critique_jax.runio import FINGERPRINT_FILE, check_resume, write_fingerprint

    _, cfg = train_cli.build_config(str(path), [f"run_dir={tmp_path}"])
    save_yaml(cfg, tmp_path / "config.yaml")
    check_resume(tmp_path, to_dict(cfg))
    write_fingerprint(tmp_path, to_dict(cfg))
    _, again = train_cli.build_config(str(path), [f"run_dir={tmp_path}"])
    check_resume(tmp_path, to_dict(again))
    assert (tmp_path / FINGERPRINT_FILE).is_file() and (tmp_path / "config.yaml").is_file()


def test_rerun_with_other_code_resumes_with_a_warning(tmp_path, monkeypatch, caplog):
    """Results written by another code version are kept (a fork's every edit would otherwise
    throw them away), and the log says so and how to recompute; the fingerprint lists every
    version that wrote into the run_dir."""
    from critique_jax import runio
    from critique_jax.config import to_dict

    _, cfg = train_cli.build_config(None, [f"run_dir={tmp_path}"])
    monkeypatch.setattr(runio, "code_version", lambda: "0.1.0+aaaa")
    runio.write_fingerprint(tmp_path, to_dict(cfg))
    with caplog.at_level(logging.WARNING, logger="critique_jax.runio"):
        runio.check_resume(tmp_path, to_dict(cfg))
    assert not caplog.records
    monkeypatch.setattr(runio, "code_version", lambda: "0.1.0+bbbb")
    with caplog.at_level(logging.WARNING, logger="critique_jax.runio"):
        runio.check_resume(tmp_path, to_dict(cfg))
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "critique_jax 0.1.0+aaaa; this is 0.1.0+bbbb" in warning and "overwrite=true" in warning
    runio.write_fingerprint(tmp_path, to_dict(cfg))
    saved = json.loads((tmp_path / runio.FINGERPRINT_FILE).read_text())
    assert saved["code"] == ["0.1.0+aaaa", "0.1.0+bbbb"]


def test_code_version_names_the_package_version():
    from importlib.metadata import version

    from critique_jax.runio import code_version

    assert code_version().startswith(version("critique_jax"))


def test_missing_tokenizer_dir_is_named(capsys, run_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text(_critique_record())
    line = refused(capsys, run_dir, f"data.path={data}", f"model.tokenizer={tmp_path / 'tok'}")
    assert f"tokenizer directory {tmp_path / 'tok'} does not exist" in line


def _words_actor(context: int = 512):
    """An actor whose prompt is one token per character of the question."""
    from types import SimpleNamespace

    from critique_jax.models import preset
    from critique_jax.sampling import Buckets

    sampler = SimpleNamespace(
        encode=lambda messages: [0] * len(messages[-1]["content"]),
        buckets=Buckets(),
        cfg=preset("tiny", max_position_embeddings=context),
    )
    return SimpleNamespace(sampler=sampler)


def _questions():
    from critique_jax.data.records import Problem

    return [Problem("q0", "short?", "1"), Problem("q1", "x" * 600, "2")]


def test_over_long_question_is_named_before_sampling():
    from critique_jax.data.loaders import DataError
    from critique_jax.data.sources import ProblemSource
    from critique_jax.pipelines.overlong import fit_questions

    source = ProblemSource(kind="gsm8k", path="test.jsonl")
    with pytest.raises(DataError, match=r"test.jsonl: 1 of 2 questions .* 512 tokens: q1 \(6"):
        fit_questions(_words_actor(), _questions(), source, "problems")
    with pytest.raises(DataError, match=r"set test_problems.overlong=skip to skip them"):
        fit_questions(_words_actor(), _questions(), source, "test_problems")
    assert fit_questions(_words_actor(), _questions()[:1], source, "problems") == (
        _questions()[:1],
        {},
    )


def test_over_long_questions_are_skipped_and_counted(caplog):
    from critique_jax.data.sources import ProblemSource
    from critique_jax.pipelines.overlong import fit_questions, with_skips

    source = ProblemSource(kind="gsm8k", path="test.jsonl", overlong="skip")
    kept, skips = fit_questions(_words_actor(), _questions(), source, "problems")
    assert [p.id for p in kept] == ["q0"] and skips == {"problems": 1}
    assert "skipping 1 of 2 questions" in caplog.text and "q1 (6" in caplog.text
    assert with_skips({"questions": 1}, skips) == {"questions": 1, "overlong_skipped": skips}
    assert with_skips({"questions": 1}, {}) == {"questions": 1}


def test_overlong_takes_only_error_or_skip(capsys, run_dir):
    line = refused(
        capsys, run_dir, "problems.overlong=drop", config=REPO / "configs" / "eval_tts_demo.yaml"
    )
    assert "problems.overlong='drop': choose one of ['error', 'skip']" in line


# --------------------------------------------------------------------------- foreign tokenizers


class _Tokenizer:
    """What the pairing check reads of a tokenizer: its size and its special ids."""

    def __init__(self, size: int, specials: tuple[int, ...]) -> None:
        self.size, self.all_special_ids, self.added_tokens_decoder = size, list(specials), {}

    def __len__(self) -> int:
        return self.size


def _word_tokenizer(out: Path) -> Path:
    """A 5-token tokenizer: [UNK], <eos>, then ordinary words at ids 2, 3, 4."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "<eos>", "two", "plus", "three"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>")
    tok.save_pretrained(str(out))
    return out


def test_tokenizer_without_the_models_specials_is_refused(capsys, tiny_hf, run_dir, tmp_path):
    """A tokenizer whose vocabulary fits the embedding but has ordinary words at the ids
    config.json names as the model's eos and bos."""
    import json

    model = Path(shutil.copytree(tiny_hf, tmp_path / "model"))
    hf_config = json.loads((model / "config.json").read_text())
    specials = {"bos_token_id": 3, "eos_token_id": 2}
    (model / "config.json").write_text(json.dumps({**hf_config, **specials}))
    foreign = _word_tokenizer(tmp_path / "foreign")
    data = tmp_path / "sft.jsonl"
    data.write_text(_critique_record())
    before = snapshot(tmp_path / "model")
    line = refused(
        capsys, run_dir, f"data.path={data}", f"model={{path: {model}, tokenizer: {foreign}}}"
    )
    assert f"the tokenizer in {foreign} is not the one model {model} was trained with" in line
    assert "the model's eos_token_id 2 is not a special token of the tokenizer" in line
    assert "bos_token_id 3" in line and "pair the model with its own tokenizer" in line
    assert snapshot(tmp_path / "model") == before


def test_tokenizer_far_smaller_than_the_embedding_is_refused():
    """SmolLM2's 49152-token tokenizer with a Qwen2.5 model (151936 rows): the ids fit."""
    from critique_jax.data.tokenizers import TokenizerMismatch, check_own_tokenizer
    from critique_jax.models import preset

    smollm2 = _Tokenizer(49152, (0, 1, 2))
    with pytest.raises(TokenizerMismatch, match=r"has 49152 tokens for an embedding of 151936"):
        check_own_tokenizer(smollm2, preset("qwen2.5-0.5b"), "smollm2/hf", "qwen/hf")


def test_real_tokenizer_pairings_are_accepted():
    """Qwen2.5 (151665 tokens in 151936 rows; 7B: 152064), Llama 3 and SmolLM2 (equal)."""
    from critique_jax.data.tokenizers import mismatches
    from critique_jax.models import preset

    qwen = preset("qwen2.5-0.5b", bos_token_id=151643, eos_token_id=151645)
    assert mismatches(_Tokenizer(151665, (151643, 151645)), qwen) == []
    assert mismatches(_Tokenizer(151665, (151643, 151645)), qwen.replace(vocab_size=152064)) == []
    llama = preset("llama3-8b", bos_token_id=128000, eos_token_id=(128001, 128009))
    assert mismatches(_Tokenizer(128256, (128000, 128001, 128009)), llama) == []
    assert mismatches(_Tokenizer(380, (0, 1, 2)), preset("demo")) == []  # a small demo one


def test_the_real_smollm2_tokenizer_is_its_models_own():
    from critique_jax.checkpoints.hf import config_from_hf, read_hf_config
    from critique_jax.data.tokenizers import load_tokenizer

    real = Path.home() / ".cache/critique_jax/real_models/smollm2-135m/hf"
    if not (real / "tokenizer.json").is_file():
        pytest.skip(f"no real SmolLM2 directory at {real}")
    assert len(load_tokenizer(real, config_from_hf(read_hf_config(real)))) == 49152
