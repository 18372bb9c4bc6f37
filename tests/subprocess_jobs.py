"""Test scenarios that need a jax of their own (simulated device counts, several processes),
run by tests/sharded_worker.py in subprocesses.

conftest.py starts every job that a selected test names with `@pytest.mark.subprocess_job`
as soon as collection finishes, at low priority. The test process mostly keeps one core busy
(XLA compiles on one thread), so on a 2-core machine the jobs run on the other core while the
tests before theirs run; their tests then only wait for the results.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("sharded_worker.py")
TIMEOUT_S = 900  # from the start of the session: the job shares the machine with the tests


@dataclass
class Job:
    """Running processes, their log files, and where the results will be."""

    procs: list[subprocess.Popen]
    logs: list[Path]
    out: Path

    def result(self) -> dict[str, np.ndarray]:
        """Wait for every process; the results, or the failing process's log as the error."""
        for proc, log in zip(self.procs, self.logs, strict=True):
            try:
                proc.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.stop()
                raise AssertionError(f"{log.name} ran over {TIMEOUT_S}s") from None
            if proc.returncode != 0:
                self.stop()
                raise AssertionError(log.read_text()[-4000:])
        return dict(np.load(self.out))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _launch(argv: list[str], log: Path, **env: str) -> subprocess.Popen:
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would stall the job
        return subprocess.Popen(
            [sys.executable, str(WORKER), *argv],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **env),
            stdout=f,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.nice(5),  # the tests in the foreground come first
        )


def single_host(tmp: Path) -> Job:
    out = tmp / "single_host.npz"
    log = tmp / "single_host.log"
    return Job([_launch(["single-host", str(out)], log)], [log], out)


def multi_host(tmp: Path) -> Job:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out, logs = tmp / "multi_host.npz", [tmp / f"multi_host_{rank}.log" for rank in range(2)]
    procs = [
        _launch(
            ["multi-host", str(out), str(tmp / "run")],
            logs[rank],
            COORDINATOR_ADDRESS=f"localhost:{port}",
            NUM_PROCESSES="2",
            PROCESS_ID=str(rank),
        )
        for rank in range(2)
    ]
    return Job(procs, logs, out)


JOBS: dict[str, Callable[[Path], Job]] = {
    "sharded-single-host": single_host,
    "sharded-multi-host": multi_host,
}
