"""The embedded demo end to end at CI size (`Config.reduced()`): every phase runs, the results
hold every headline key, the critic beats chance and critique -> refine does not hurt; the
written-out configs/demo.yaml is exactly the stage's defaults; a rerun resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from critique_jax.pipelines.demo import Config, run
from critique_jax.train import build_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

REQUIRED = (
    "seed",
    "actor_accuracy",
    "critic_verdict_accuracy",
    "refine_accuracy",
    "majority_vote_accuracy",
    "critique_majority_vote_accuracy",
    "cu_sft_critic",
    "cu_rco_critic",
    "self_train_vanilla_accuracy",
    "self_train_critique_accuracy",
    "self_train_vanilla_accuracy_by_difficulty",
    "self_train_critique_accuracy_by_difficulty",
    "timings",
    "sizes",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo")
    cfg = Config.reduced(run_dir=str(run_dir))
    return cfg, run(cfg)


def test_results_have_every_key(demo):
    cfg, returned = demo
    written = json.loads((Path(cfg.run_dir) / "results.json").read_text())
    missing = [k for k in REQUIRED if k not in written]
    assert not missing, f"results.json lacks {missing}"
    assert written["seed"] == cfg.seed
    for key in REQUIRED[1:10]:
        assert 0.0 <= written[key] <= 1.0, (key, written[key])
    assert set(written["self_train_critique_accuracy_by_difficulty"]) == {"1", "2"}
    assert returned["actor_accuracy"] == written["actor_accuracy"]
    assert (Path(cfg.run_dir) / "results.md").read_text().startswith("# critique_jax demo")
    assert Path(written["paths"]["plot"]).is_file()
    for key in ("actor_hf", "critic_hf", "rco_critic_hf"):
        assert (Path(written["paths"][key]) / "config.json").is_file(), key


def test_critic_beats_chance(demo):
    _, results = demo
    assert results["critic_verdict_accuracy"] > results["critic_verdict_chance"]


def test_critique_refine_does_not_lower_accuracy(demo):
    _, results = demo
    assert results["refine_accuracy"] >= results["actor_accuracy"]


def test_rerun_resumes_without_recomputing(demo):
    cfg, first = demo
    again = run(cfg)
    for key in REQUIRED[1:10]:
        assert again[key] == first[key], key
    phases = again["timings"]
    assert phases["actor_sft"]["wall_s"] < 15, phases


def test_yaml_is_the_embedded_default():
    _, from_yaml = build_config(str(CONFIGS / "demo.yaml"), [])
    _, embedded = build_config(None, [])
    assert from_yaml == embedded == Config()
