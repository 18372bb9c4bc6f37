"""The rollouts benchmark's plumbing that needs no checkpoint (its speed lives in the benchmark)."""

from __future__ import annotations

import json

from critique_jax.benchmarks import rollouts


def test_missing_data_file_skips_cleanly(tmp_path, capsys):
    rollouts.main(["--model", str(tmp_path), "--data", str(tmp_path / "absent.jsonl")])
    assert "absent.jsonl" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"]


def test_hf_rows_are_cut_after_the_first_stop_id():
    assert rollouts._trim([5, 6, 2, 0, 0], {2}) == [5, 6, 2]
    assert rollouts._trim([5, 6, 7], {2}) == [5, 6, 7]


def test_stage_totals():
    a = rollouts.Stage(prefill_s=1.0, decode_s=3.0, prefill_tokens=10, generated=8)
    a.add(rollouts.Stage(prefill_s=1.0, decode_s=3.0, prefill_tokens=5, generated=8))
    summary = a.summary()
    assert summary["tokens_per_s"] == 2.0 and summary["prefill_tokens"] == 15
