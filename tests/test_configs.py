"""Every shipped config parses into its stage's Config: a renamed or removed field fails here,
not in a user's run."""

from pathlib import Path

import pytest

from critique_jax.train import build_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_are_found():
    assert CONFIGS, "no configs/*.yaml next to tests/"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_parses(path):
    module, cfg = build_config(str(path), [])
    assert type(cfg) is module.Config and cfg.run_dir


def test_an_override_keeps_its_sections_other_defaults():
    """`base.train.steps=40` changes the steps of the demo's base phase, not its batch or
    sequence length (TrainConfig's own defaults), and a model override keeps the preset."""
    _, default = build_config(None, [])
    _, cfg = build_config(None, ["base.train.steps=40", "base.model.overrides.num_layers=4"])
    assert cfg.base.train.steps == 40
    assert cfg.base.train.seq_len == default.base.train.seq_len
    assert cfg.base.train.batch_size == default.base.train.batch_size
    assert cfg.base.model.preset == "demo" and cfg.base.model.overrides == {"num_layers": 4}
    assert cfg.base.model.tokenizer == default.base.model.tokenizer
