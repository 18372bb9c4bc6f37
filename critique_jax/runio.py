"""Run-directory I/O that never loses finished work: atomic files and resumable JSONL."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import operator
import os
import socket
import tempfile
from collections.abc import Callable, Hashable, Iterable, Iterator, KeysView, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jax

log = logging.getLogger(__name__)

T = TypeVar("T")


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


class RunDirBusyError(RuntimeError):
    """Another live run holds the run directory."""


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold `run_dir` exclusively while a run writes into it.

    Two jobs resuming one run directory would interleave records and checkpoints, so the
    second one fails at once instead. The lock is an OS file lock (`run_dir/.lock`): the OS
    drops it when its process dies, so a killed run never leaves a stale lock behind.
    """
    path = Path(run_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunDirBusyError(
                f"run_dir {run_dir} is in use by {holder}; wait for that run to finish, "
                "or pass another run_dir"
            ) from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


class RecordLog:
    """A run-dir JSONL record log keyed by `key`, for SPMD programs: process 0 appends through
    a `JsonlWriter` (one fsynced line per record; a torn last line from a kill is dropped),
    and every process reads the records, so all processes take the same resume decisions."""

    def __init__(self, path: str | Path, key: str = "id") -> None:
        self.path = Path(path)
        self.key = key
        self.writer = JsonlWriter(self.path, key) if jax.process_index() == 0 else None
        found = self.writer.records if self.writer is not None else read_jsonl(self.path)
        self.records: dict[Any, dict[str, Any]] = {r[key]: r for r in found if key in r}

    @property
    def done(self) -> KeysView:
        """The keys of the records on disk or written since."""
        return self.records.keys()

    def write_all(self, records: Iterable[dict[str, Any]]) -> None:
        """Append the records whose key is not done yet (a recomputed chunk adds only what
        is missing)."""
        for r in records:
            if r[self.key] in self.records:
                continue
            self.records[r[self.key]] = r
            if self.writer is not None:
                self.writer.write(r)

    def fill(
        self,
        items: Sequence[T],
        chunk_size: int,
        compute: Callable[[list[T], int], Iterable[dict[str, Any]]],
        item_key: Callable[[T], Hashable] = operator.attrgetter("id"),
    ) -> list[dict[str, Any]]:
        """The record of every item (the one whose key is `item_key(item)`), in item order.

        Chunks are fixed slices of `items`, computed by `compute(chunk, chunk_index)`. A
        chunk whose items all have records is skipped; any other is computed whole (its seeds
        may then depend on its index alone, so a resumed run writes what an uninterrupted one
        would) and only its missing records are appended.
        """
        keys = [item_key(it) for it in items]
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"item keys must be unique to resume by key; {self.path} would mix "
                "records of different items"
            )
        for start in range(0, len(items), chunk_size):
            if all(k in self.records for k in keys[start : start + chunk_size]):
                continue
            self.write_all(compute(list(items[start : start + chunk_size]), start // chunk_size))
            log.info("%s: %d/%d", self.path.name, min(start + chunk_size, len(items)), len(items))
        missing = [k for k in keys if k not in self.records]
        if missing:
            raise ValueError(
                f"{self.path}: compute returned no record for {missing[:5]}; it must return "
                f"one record per item with {self.key!r} set to the item's key"
            )
        return [self.records[k] for k in keys]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
