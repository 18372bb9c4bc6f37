"""Run-directory I/O that never loses finished work: atomic files and resumable JSONL."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import operator
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, KeysView, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jax

from critique_jax.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")


def this_process_writes() -> bool:
    """Whether this process writes run-dir files: in an SPMD run every process computes the
    same results, and process 0 alone writes them, so that no two hosts race on one file."""
    return jax.process_index() == 0


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


def atomic_write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """A whole JSONL file, one record per line, written as `atomic_write_text` does."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


class RunDirBusyError(UserError):
    """Another live run holds the run directory."""


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold `run_dir` exclusively while a run writes into it.

    Two jobs resuming one run directory would interleave records and checkpoints, so the
    second one fails at once instead. The lock is an OS file lock (`run_dir/.lock`): the OS
    drops it when its process dies, so a killed run never leaves a stale lock behind.
    filelock's Unix lock is this same flock, with no way to name the holder; and before 3.30 it
    opens the file truncated, erasing the holder's line that the busy error reports.
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
            atomic_write_jsonl(self.path, self.records)

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
        self.writer = JsonlWriter(self.path, key) if this_process_writes() else None
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


# --------------------------------------------------------------------------- resume fingerprint

FINGERPRINT_FILE = "fingerprint.json"

# Settings that do not change what a run computes (logging, checkpoint cadence, how the same
# computation is laid out on devices, gradient accumulation, remat): a rerun may change them.
PRESENTATION_KEYS = frozenset(
    {
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "async_checkpoint",
        "resume",
        "overwrite",
        "microbatches",
        "mesh",
        "remat",
        "attention_impl",
    }
)
# Config keys that name input files or directories, whose contents are fingerprinted too.
_PATH_KEYS = ("path", "tokenizer")
_HASH_WHOLE = 64 * 1024 * 1024  # larger files: size + first and last MiB


class ResumeMismatchError(UserError):
    """A rerun on a run_dir made with other settings or inputs (see `check_resume`)."""


def settings_of(config: dict[str, Any]) -> dict[str, Any]:
    """The config minus presentation keys (at any depth): what determines the outputs, as
    JSON data (so a saved fingerprint compares equal to the config it was made from)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in PRESENTATION_KEYS}
        return node

    return json.loads(json.dumps(strip(config), default=str))


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= _HASH_WHOLE:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return f"{size}:{h.hexdigest()[:16]}"


def _path_digest(path: Path) -> str | None:
    """A file's digest, or a directory's over its top-level files (an HF directory, a
    previous stage's run_dir); None when the path does not exist here."""
    if path.is_file():
        return _file_digest(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.name}={_file_digest(p)};".encode())
        return f"dir:{h.hexdigest()[:16]}"
    return None


def inputs_of(config: dict[str, Any], run_dir: str | Path) -> dict[str, str]:
    """key -> digest of every input file or directory the config names (keys `path`,
    `tokenizer`, `*_dir` but run_dir), except those inside run_dir itself (the run's own
    outputs) and those that do not exist here (hub names, not yet written)."""
    own = Path(run_dir).resolve()
    out: dict[str, str] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}{k}" if not where else f"{where}.{k}")
            return
        key = where.rsplit(".", 1)[-1]
        if not isinstance(node, str) or not node or key == "run_dir":
            return
        if key not in _PATH_KEYS and not key.endswith("_dir"):
            return
        path = Path(node).expanduser().resolve()
        if path == own or own in path.parents:
            return
        digest = _path_digest(path)
        if digest is not None:
            out[where] = f"{node} {digest}"

    walk(config, "")
    return out


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    """'key: old -> new' for values that differ under keys both configs have (a key only
    one side has is a field added or removed by a code change, not a setting change)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in old.keys() & new.keys():
            out += _differences(old[k], new[k], f"{where}.{k}" if where else str(k))
        return sorted(out)
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def check_resume(run_dir: str | Path, config: dict[str, Any], overwrite: bool = False) -> None:
    """Refuse to continue a run_dir that holds a run made with other settings or inputs.

    The settings are the config minus `PRESENTATION_KEYS` (config.yaml, or fingerprint.json
    of runs made since it exists); the inputs are digests of the files the config names.
    With `overwrite`, the run_dir's previous contents are moved aside to
    `<run_dir>.replaced-<time>` and the run starts fresh. A run written by other code (see
    `code_version`) resumes with a warning: results already there are kept, not recomputed.
    """
    import yaml

    run_dir = Path(run_dir)
    fp_file, cfg_file = run_dir / FINGERPRINT_FILE, run_dir / "config.yaml"
    old_settings = old_inputs = None
    old_code: list[str] = []
    if fp_file.is_file():
        try:
            saved = json.loads(fp_file.read_text())
            old_settings, old_inputs = saved["settings"], saved["inputs"]
            old_code = list(saved.get("code", []))
        except (ValueError, KeyError, TypeError):
            old_settings = None
    if old_settings is None and cfg_file.is_file():
        try:
            loaded = yaml.safe_load(cfg_file.read_text())
        except yaml.YAMLError:
            loaded = None
        old_settings = settings_of(loaded) if isinstance(loaded, dict) else None
    if old_settings is None:
        return
    changed = _differences(old_settings, settings_of(config))
    if old_inputs is not None:
        new_inputs = inputs_of(config, run_dir)
        changed += [
            f"{k} (contents): {old_inputs[k]} -> {new_inputs[k]}"
            for k in sorted(old_inputs.keys() & new_inputs.keys())
            if old_inputs[k] != new_inputs[k]
        ]
    if overwrite and changed:
        _move_aside(run_dir)
        return
    if not changed:
        other = [v for v in old_code if v != code_version()]
        if other:
            log.warning(
                "%s holds results written by critique_jax %s; this is %s. They are kept, not "
                "recomputed: pass overwrite=true to move them aside and rerun with this code",
                run_dir,
                ", ".join(other),
                code_version(),
            )
        return
    shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
    raise ResumeMismatchError(
        f"run_dir {run_dir} holds a run made with other settings or inputs ({shown}); its "
        "results would mix with or stand for this run's. Use another run_dir, restore those "
        "settings to resume it, or pass overwrite=true to move its contents aside and start "
        "fresh"
    )


def _move_aside(run_dir: Path) -> Path:
    """Move everything in run_dir but its lock into a sibling `<name>.replaced-<time>`."""
    aside = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    aside.mkdir(parents=True, exist_ok=False)
    for entry in run_dir.iterdir():
        if entry.name != ".lock":
            entry.rename(aside / entry.name)
    log.warning("overwrite=true: moved the previous contents of %s to %s", run_dir, aside)
    return aside


def write_fingerprint(run_dir: str | Path, config: dict[str, Any]) -> None:
    """The run's settings and input digests (what `check_resume` compares), and every code
    version that has written into the run_dir."""
    path = Path(run_dir) / FINGERPRINT_FILE
    try:
        code = list(json.loads(path.read_text()).get("code", []))
    except (OSError, ValueError, AttributeError):
        code = []
    if code_version() not in code:
        code.append(code_version())
    atomic_write_json(
        path,
        {"settings": settings_of(config), "inputs": inputs_of(config, run_dir), "code": code},
    )


@functools.cache
def code_version() -> str:
    """The installed critique_jax version, and the git commit it runs from (`.dirty` with
    uncommitted changes) when the package sits in a git checkout of this project."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        out = version("critique_jax")
    except PackageNotFoundError:
        out = "unknown"
    package = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(package), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        if Path(git("rev-parse", "--show-toplevel").strip()) != package.parent:
            return out
        commit = git("rev-parse", "--short=12", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):
        return out
    return f"{out}+{commit}" + (".dirty" if dirty else "")
