"""The embedded demo end to end at CI size (`Config.reduced()`), through the CLI: every stage
runs (through its own `run`), results.json holds every headline key, the critic writes the
reason-first format, every claim is reported, and a rerun resumes instead of recomputing;
then `sample` on its actor and `check_hf` on its base model. Also: the written-out
configs/demo.yaml is exactly the stage's embedded defaults.

The CLIs run as a user runs them: in a subprocess (tests/conftest.py turns XLA's backend
optimisations off for the unit tests, and this test trains for dozens of steps), keeping
compiled programs on disk, and with the interpreter `CRITIQUE_JAX_CLI_PYTHON` names. CI
(.ci/run) points it at a new virtual environment with the package alone, no extras, so a
run-time dependency that only the test extra brings in fails here; elsewhere it is this
interpreter.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from critique_jax.config import save_yaml
from critique_jax.pipelines.demo import Config, stage_fields
from critique_jax.pipelines.demo_claims import CLAIMS
from critique_jax.train import STAGES, build_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # minutes: under xdist it starts first

REQUIRED = (
    "actor_accuracy",
    "critic_verdict_accuracy",
    "refine_accuracy",
    "majority_vote_accuracy",
    "critique_majority_vote_accuracy",
    "cu_sft_critic",
    "cu_rco_critic",
    "self_train_vanilla_accuracy",
    "self_train_critique_accuracy",
)
BY_DIFFICULTY = (
    "self_train_vanilla_accuracy_by_difficulty",
    "self_train_critique_accuracy_by_difficulty",
)


CLI_PYTHON = os.environ.get("CRITIQUE_JAX_CLI_PYTHON", sys.executable)


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    as_a_user = ("XLA_FLAGS", "JAX_ENABLE_COMPILATION_CACHE")  # set by tests/conftest.py
    env = {k: v for k, v in os.environ.items() if k not in as_a_user}
    return subprocess.run(
        [CLI_PYTHON, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def run_demo(config: Path) -> subprocess.CompletedProcess:
    return run_cli("critique_jax.train", "--config", str(config))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo")
    config = run_dir / "reduced.yaml"
    save_yaml(Config.reduced(run_dir=str(run_dir)), config)
    proc = run_demo(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    return run_dir, config, proc.stdout, results


def test_results_have_every_key(demo):
    run_dir, _, stdout, results = demo
    missing = [
        k for k in ("seed", "timings", "sizes", *REQUIRED, *BY_DIFFICULTY) if k not in results
    ]
    assert not missing, f"results.json lacks {missing}"
    assert results["seed"] == 0
    for key in REQUIRED:
        assert 0.0 <= results[key] <= 1.0, (key, results[key])
    for key in BY_DIFFICULTY:
        assert set(results[key]) == {"1", "2"}, (key, results[key])
    table = (run_dir / "results.md").read_text()
    assert table.startswith("# critique_jax demo (seed 0") and table in stdout
    assert Path(results["paths"]["plot"]).is_file()
    for key in ("actor_hf", "critic_hf", "rco_critic_hf"):
        assert (Path(results["paths"][key]) / "config.json").is_file(), key


def test_results_carry_every_claim(demo):
    """The papers' claims are paired differences in results.json and rows of the table; at
    CI size they are not expected to hold (the seeds command checks them at demo size)."""
    run_dir, _, stdout, results = demo
    assert set(results["claims"]) == {c.name for c in CLAIMS}
    for entry in results["claims"].values():
        assert isinstance(entry["holds"], bool) and -1.0 <= entry["difference"] <= 1.0
    assert all(c.statement in stdout for c in CLAIMS)


def test_critic_writes_the_reason_first_format(demo):
    """The critic learns the format at CI size: its critiques parse and carry a check line."""
    run_dir, *_, results = demo
    assert results["critic_unparseable_rate"] <= 0.2, results["critic_unparseable_rate"]
    assert "Check: " in (run_dir / "critic_eval" / "critiques.jsonl").read_text()


def test_rerun_resumes_without_recomputing(demo):
    run_dir, config, _, first = demo
    proc = run_demo(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((run_dir / "results.json").read_text())
    for key in REQUIRED:
        assert again[key] == first[key], key
    assert again["wall_s"] < first["wall_s"] / 2, (again["timings"], first["timings"])
    assert "results in" in proc.stderr and "are kept, not recomputed" in proc.stderr
    # a phase skipped on resume keeps the seconds it cost the first time
    assert again["timings"]["base"]["wall_s"] >= first["timings"]["base"]["wall_s"] > 0


def test_sample_runs_on_the_demo_actor(demo):
    run_dir, *_ = demo
    actor = run_dir / "self_train" / "iter_0" / "hf"
    proc = run_cli("critique_jax.sample", "--model", str(actor), "--prompt", "Ava has 3 pens.")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "=== prompt 0 sample 0" in proc.stdout, proc.stdout


def test_check_hf_on_the_demo_base_model(demo):
    """With torch (the test extra), the exported base model gives transformers' logits;
    without it (CI's package-only environment), a one-line error says what to install."""
    run_dir, *_ = demo
    proc = run_cli("critique_jax.check_hf", str(run_dir / "base" / "hf"))
    probe = [CLI_PYTHON, "-c", "import importlib.util as u; exit(u.find_spec('torch') is None)"]
    if subprocess.run(probe).returncode == 0:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is True
    else:
        assert proc.returncode != 0
        assert "pip install torch" in proc.stderr, proc.stderr[-3000:]


def test_yaml_is_the_embedded_default():
    _, from_yaml = build_config(str(ROOT / "configs" / "demo.yaml"), [])
    _, embedded = build_config(None, [])
    assert from_yaml == embedded == Config()


def test_sections_are_the_stages_own_configs():
    """The demo is a list of stage configs, each run by its stage's own `run`."""
    cfg = Config()
    sections = stage_fields(cfg)
    assert [f.name for f in sections][:2] == ["base", "self_train"]
    for f in sections:
        section = getattr(cfg, f.name)
        assert type(section) is importlib.import_module(STAGES[section.stage]).Config, f.name


def test_reduced_yaml_is_the_reduced_config():
    _, from_yaml = build_config(str(ROOT / "configs" / "demo_reduced.yaml"), [])
    assert from_yaml == Config.reduced(run_dir="runs/demo_reduced")
