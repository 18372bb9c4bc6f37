"""User errors: inputs a user can fix (a config key, a file, a directory), told in one line.

Every CLI (`train`, `sample`, `check_hf`) catches `UserError` in its `main`, prints
`error: <message>` on stderr and exits with code 2; `--debug` or CRITIQUE_JAX_DEBUG=1 shows the
traceback too. Anything else is an internal error and keeps its traceback. Messages name the
problem, the offending key/file/record and the fix.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable

DEBUG_ENV = "CRITIQUE_JAX_DEBUG"

# OS errors that mean "this machine's disk or permissions", which the user fixes, not a bug.
USER_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.ENOTDIR}
)


class UserError(ValueError):
    """An input that cannot be used as given; the message names it and the fix."""


def debug_requested(flag: bool = False) -> bool:
    """`--debug` given, or CRITIQUE_JAX_DEBUG set to anything but 0."""
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def user_error_message(e: BaseException) -> str | None:
    """The one-line message of a user error, or None for an internal error."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError) and e.errno in USER_ERRNOS:
        where = f" {e.filename}" if e.filename else ""
        return (
            f"cannot write{where}: {e.strerror or e} (errno {errno.errorcode.get(e.errno, '')}); "
            "free disk space or fix the permissions, or choose another run_dir / output path"
        )
    return None


def run_cli(main: Callable[[], int], debug: bool) -> int:
    """Run `main()`; a user error becomes `error: ...` on stderr and exit code 2."""
    try:
        return main()
    except (UserError, OSError) as e:
        message = user_error_message(e)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        kind = "config error" if type(e).__name__ == "ConfigError" else "error"
        print(f"{kind}: {' '.join(message.split())}", file=sys.stderr)
        return 2


def exit_cli(code: int) -> None:
    """Exit a CLI with `code`. After a failure (code != 0) with a user error or with library
    threads still alive (orbax's writers after a failed save), skip interpreter teardown:
    it would wait on those threads or print their shutdown noise. A successful run always
    exits normally, so nothing still being written is cut off."""
    sys.stdout.flush()
    sys.stderr.flush()
    lingering = [
        t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
    ]
    if code != 0 and (code == 2 or lingering):
        os._exit(code)
    sys.exit(code)


def run_main(main: Callable[[], int | None]) -> None:
    """The `__main__` of a CLI without its own --debug flag (the benchmarks): user errors as
    one line and exit code 2, CRITIQUE_JAX_DEBUG=1 for the traceback."""
    exit_cli(run_cli(lambda: main() or 0, debug_requested()))


class _NoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def _closed_loop_callback(unraisable: sys.UnraisableHookArgs) -> bool:
    """tensorstore's writer threads still reporting to the asyncio loop orbax closed after
    a failed save: Python prints each as a bare traceback (one per pending write)."""
    exc = unraisable.exc_value
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def quiet_library_tracebacks(names: tuple[str, ...] = ("absl", "orbax")) -> None:
    """Log those libraries' errors as one line, without the traceback (orbax logs every
    failed background write with one; the CLI then reports the error once, by its cause),
    and drop the closed-loop callbacks of a failed save's pending writes."""
    for name in names:
        logging.getLogger(name).addFilter(_NoTraceback())
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if not _closed_loop_callback(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
