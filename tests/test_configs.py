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
