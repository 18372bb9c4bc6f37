"""Run-directory I/O that never loses finished work: atomic files and resumable JSONL."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; a torn last line (a kill mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                return
            raise ValueError(
                f"{path}:{i + 1}: corrupt JSONL record ({e}); delete the line "
                "or the file to recompute it"
            ) from e


class JsonlWriter:
    """Append-only record log keyed by `key`, so a killed stage resumes after its last record.

    Each record is one line, flushed and fsynced; a torn final line from a kill is dropped
    (and truncated away) when the file is reopened.
    """

    def __init__(self, path: str | Path, key: str = "id") -> None:
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = list(read_jsonl(self.path))
        self.done = {r[key] for r in self.records if key in r}
        self._rewrite_if_torn()
        self._file = self.path.open("a")

    def _rewrite_if_torn(self) -> None:
        if (
            self.path.exists()
            and self.path.read_text()
            and not self.path.read_text().endswith("\n")
        ):
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.append(record)
        if self.key in record:
            self.done.add(record[self.key])

    def write_all(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.write(r)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
