"""Test scenarios that need a jax of their own (simulated device counts, several processes):
tests/sharded_worker.py run in subprocesses, since the device count must be set before jax is
imported. conftest.py's `subprocess_results` runs each job once per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("sharded_worker.py")
TIMEOUT_S = 900  # generous: the job shares a 2-core machine with the other xdist worker


def _launch(argv: list[str], log: Path, **env: str) -> subprocess.Popen:
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would stall the job
        return subprocess.Popen(
            [sys.executable, str(WORKER), *argv],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **env),
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def _wait(procs: list[subprocess.Popen], logs: list[Path]) -> None:
    """Wait for every process; a failing or hanging one is the error, with its log."""
    try:
        for proc, log in zip(procs, logs, strict=True):
            try:
                proc.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{log.name} ran over {TIMEOUT_S}s") from None
            if proc.returncode != 0:
                raise AssertionError(log.read_text()[-4000:])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def single_host(tmp: Path) -> Path:
    out, log = tmp / "single_host.npz", tmp / "single_host.log"
    _wait([_launch(["single-host", str(out)], log)], [log])
    return out


def multi_host(tmp: Path) -> Path:
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
    _wait(procs, logs)
    return out


JOBS: dict[str, Callable[[Path], Path]] = {
    "sharded-single-host": single_host,
    "sharded-multi-host": multi_host,
}


def run(name: str, tmp: Path) -> dict[str, np.ndarray]:
    """Run job `name` in `tmp`; the arrays it saved."""
    if name not in JOBS:
        raise KeyError(f"no subprocess job {name!r}; known: {sorted(JOBS)}")
    return dict(np.load(JOBS[name](tmp)))
