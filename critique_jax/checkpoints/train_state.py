"""Train-state checkpoints with orbax: async saves, keep-last-N, resume onto shardings.

A checkpoint step holds two items: `state` (the TrainState pytree: step, params, optimizer
state, PRNG key data; every process writes its own shards) and `data` (JSON: the data
iterator's position and anything else the driver needs to continue exactly). orbax writes a
step into a temporary directory and renames it when complete, so a killed save leaves no
step behind; a step directory that is there but cannot be read (copied partially, disk
trouble) is moved aside with a warning on resume and the previous step is used instead.

A checkpoint directory that cannot be written is refused when the `Checkpointer` is made,
before any training; a save that fails later (a full disk) raises `CheckpointWriteError`
naming the directory, and `close()` always shuts orbax's manager down, so a failed save ends
the process instead of leaving orbax's background threads waiting.
"""

from __future__ import annotations

import os
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from critique_jax.errors import USER_ERRNOS, UserError
from critique_jax.runio import this_process_writes


class CheckpointWarning(UserWarning):
    """A checkpoint step was unreadable and skipped."""


class CheckpointMismatchError(UserError):
    """A readable checkpoint holds a differently shaped state (another model or optimizer)."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (permissions, a full disk)."""


def _async_options() -> ocp.AsyncOptions:
    # Step directories are made synchronously in save(): made asynchronously, a directory
    # that cannot be created leaves orbax's writer threads (non-daemon) waiting ~20 min for
    # it, so the process hangs at exit instead of reporting the error.
    try:
        return ocp.AsyncOptions(create_directories_asynchronously=False)
    except TypeError:  # an orbax without the option
        return ocp.AsyncOptions()


# How a failed write reads once tensorstore / orbax has wrapped the OSError in a ValueError;
# the most specific first (the OS's words, then tensorstore's status codes).
_WRITE_FAILURES = (
    "No space left on device",
    "Disk quota exceeded",
    "Permission denied",
    "Operation not permitted",
    "Read-only file system",
    "RESOURCE_EXHAUSTED",
    "PERMISSION_DENIED",
)


def _chain(error: BaseException | None) -> list[BaseException]:
    """`error` and what caused it (at most 10 deep)."""
    chain: list[BaseException] = []
    while error is not None and len(chain) < 10:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def write_failure_cause(error: BaseException) -> str | None:
    """What refused the write, in the OS's words where the error (or a cause) has them."""
    text = " ".join(str(e) for e in _chain(error))
    return next((marker for marker in _WRITE_FAILURES if marker in text), None)


def is_write_failure(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is the disk refusing a write, not a bug."""
    os_refusal = any(isinstance(e, OSError) and e.errno in USER_ERRNOS for e in _chain(error))
    return os_refusal or write_failure_cause(error) is not None


def check_writable(directory: Path) -> None:
    """Create `directory` and a probe file in it, or raise `CheckpointWriteError`."""
    probe = directory / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CheckpointWriteError(
            f"checkpoint directory {directory} is not writable ({type(e).__name__}: "
            f"{e.strerror or e}); make it writable, or pass another run_dir"
        ) from e


class Checkpointer:
    """One run's checkpoints under `directory` (normally run_dir/checkpoints)."""

    def __init__(self, directory: str | Path, keep: int = 2, async_save: bool = True) -> None:
        if keep < 1:
            raise ValueError(f"keep_checkpoints={keep}: keep at least 1 checkpoint.")
        self.directory = Path(directory).absolute()
        if this_process_writes():
            check_writable(self.directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
                create=True,
                async_options=_async_options(),
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
            },
        )

    def steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data: dict[str, Any] | None = None) -> None:
        """Start saving `state` and `data` at `step` (asynchronously when configured)."""
        if step in self._manager.all_steps():
            return
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data or {})
                ),
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - orbax re-raises a failed earlier save here
            if not is_write_failure(e):
                raise
            raise self._write_error(step, e) from e

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, data) of the newest readable step, or None when there is none.

        `abstract_state` is the state's pytree of `jax.ShapeDtypeStruct`s with shardings;
        arrays are restored directly onto them. Unreadable steps are moved aside (renamed
        `corrupt-<step>-<time>`) with a warning, and the next older step is tried. A readable
        step whose arrays do not match `abstract_state` (the config changed) raises
        `CheckpointMismatchError` and touches nothing.
        """
        self._manager.reload()
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                saved = self._manager.item_metadata(step)["state"]
                if saved is None:
                    raise FileNotFoundError("the state item has no readable metadata")
            except Exception as e:  # noqa: BLE001 - any failure to read means: skip this step
                self._set_aside(step, e)
                continue
            _check_layout(step, _shapes(saved.tree), _shapes(abstract_state))
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as e:  # noqa: BLE001
                self._set_aside(step, e)
                continue
            return step, restored.state, dict(restored.data or {})
        return None

    def _set_aside(self, step: int, error: Exception) -> None:
        bad = self.directory / str(step)
        aside = self.directory / f"corrupt-{step}-{int(time.time())}"
        warnings.warn(
            f"checkpoint step {step} in {self.directory} cannot be restored "
            f"({type(error).__name__}: {str(error)[:300]}); moving it to {aside.name} and "
            "resuming from the previous checkpoint",
            CheckpointWarning,
            stacklevel=3,
        )
        if this_process_writes() and bad.exists():
            bad.rename(aside)
        if jax.process_count() > 1:  # every process must see the same steps before saving
            multihost_utils.sync_global_devices(f"checkpoint_set_aside_{step}")
        self._manager.reload()

    def wait(self) -> None:
        """Block until pending async saves are on disk; `CheckpointWriteError` if one failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - orbax re-raises the writer's error as is
            if not is_write_failure(e):
                raise
            raise self._write_error(None, e) from e

    def close(self) -> None:
        """Wait for pending saves, then shut the manager down, even when a save failed."""
        try:
            self.wait()
        finally:
            try:
                self._manager.close()
            except Exception:  # noqa: BLE001 - the failed save was reported by wait()
                pass

    def _write_error(self, step: int | None, error: Exception) -> CheckpointWriteError:
        latest = None
        with_steps = ""
        try:
            self._manager.reload()
            latest = self._manager.latest_step()
        except Exception:  # noqa: BLE001 - only for the message
            pass
        if latest is not None:
            with_steps = f"; the last complete checkpoint is step {latest}"
        what = f"checkpoint step {step}" if step is not None else "a checkpoint"
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        cause = write_failure_cause(error) or "the write failed"
        return CheckpointWriteError(
            f"saving {what} in {self.directory} failed: {cause} ({reason}){with_steps}; "
            "free disk space or fix the directory's permissions, then rerun to resume"
        )


def _shapes(tree: Any) -> list[tuple[tuple[int, ...], str]]:
    """The sorted (shape, dtype) of every array leaf: a layout fingerprint of a state that
    does not depend on how orbax names tree nodes."""
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    return sorted((tuple(x.shape), str(x.dtype)) for x in leaves)


def _check_layout(step: int, saved: list, expected: list) -> None:
    if saved == expected:
        return
    only_saved = sorted(set(saved) - set(expected))[:3]
    only_expected = sorted(set(expected) - set(saved))[:3]
    raise CheckpointMismatchError(
        f"checkpoint step {step} holds {len(saved)} arrays, this run's state has "
        f"{len(expected)}; (shape, dtype) only in the checkpoint: {only_saved}, only in this "
        f"run: {only_expected}. The model or optimizer config changed since it was saved: "
        "resume with the same config, or start a new run_dir."
    )
