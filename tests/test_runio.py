"""RecordLog: resumable chunked records that survive a kill (torn last line) and skip work."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from critique_jax.runio import RecordLog, RunDirBusyError, read_jsonl, run_dir_lock


@dataclass(frozen=True)
class Item:
    id: str


ITEMS = [Item(f"q{i}") for i in range(5)]


def computing(calls: list):
    def compute(chunk: list[Item], index: int) -> list[dict]:
        calls.append([it.id for it in chunk])
        return [{"id": it.id, "chunk": index} for it in chunk]

    return compute


def test_fill_computes_every_chunk_once_and_returns_records_in_item_order(tmp_path):
    calls: list = []
    with RecordLog(tmp_path / "r.jsonl") as log:
        records = log.fill(ITEMS, 2, computing(calls))
    assert calls == [["q0", "q1"], ["q2", "q3"], ["q4"]]
    assert [r["id"] for r in records] == [it.id for it in ITEMS]
    assert list(read_jsonl(tmp_path / "r.jsonl")) == records
    with RecordLog(tmp_path / "r.jsonl") as log:
        assert log.fill(ITEMS, 2, computing(calls)) == records
    assert len(calls) == 3  # nothing recomputed


def test_a_torn_chunk_is_recomputed_whole_and_only_missing_records_are_written(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordLog(path) as log:
        full = log.fill(ITEMS, 2, computing([]))
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:7])  # q3 torn by a kill
    calls: list = []
    with RecordLog(path) as log:
        assert set(log.done) == {"q0", "q1", "q2"}
        assert log.fill(ITEMS, 2, computing(calls)) == full
    assert calls == [["q2", "q3"], ["q4"]]
    assert [json.loads(ln)["id"] for ln in path.read_text().splitlines()] == [
        "q0",
        "q1",
        "q2",
        "q3",
        "q4",
    ]


def test_write_all_skips_done_keys_and_fill_names_bad_input(tmp_path):
    with RecordLog(tmp_path / "r.jsonl") as log:
        log.write_all([{"id": "a", "v": 1}, {"id": "a", "v": 2}, {"id": "b", "v": 3}])
        with pytest.raises(ValueError, match="unique"):
            log.fill([Item("x"), Item("x")], 2, computing([]))
        with pytest.raises(ValueError, match="no record for"):
            log.fill([Item("c")], 2, lambda chunk, i: [])
    assert [r["v"] for r in read_jsonl(tmp_path / "r.jsonl")] == [1, 3]


def test_run_dir_lock_is_exclusive_and_released(tmp_path):
    with run_dir_lock(tmp_path):
        with pytest.raises(RunDirBusyError, match=r"in use by pid \d+ on .*pass another run_dir"):
            with run_dir_lock(tmp_path):
                pass
    with run_dir_lock(tmp_path):  # released on exit
        pass
