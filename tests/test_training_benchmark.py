"""The training benchmark's own options and report on a tiny preset (its speed figures live
in the README, measured by the benchmark, not in a test)."""

from __future__ import annotations

import json

import pytest

from critique_jax.benchmarks import training


def test_a_tiny_run_reports_its_remat_and_peak_memory(capsys):
    argv = ["--model", "tiny", "--batch", "2", "--seq", "16", "--steps", "1", "--warmup", "1"]
    training.main([*argv, "--no-torch", "--remat", "dots"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["remat"] == "dots" and result["ours_tokens_per_s"] > 0
    assert result["peak_of"] == "host RSS" and result["ours_peak_mb"] > 0
    assert result["torch_peak_mb"] is None and result["torch_peak_of"] is None
    assert result["ratio"] is None


def test_an_unknown_remat_policy_is_named_with_the_choices(capsys):
    with pytest.raises(SystemExit) as stop:
        training.main(["--model", "tiny", "--remat", "everything"])
    assert stop.value.code == 2
    assert "--remat 'everything': choose one of none, full, dots" in capsys.readouterr().err
