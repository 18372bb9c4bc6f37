"""Shared test helpers: locating real checkpoints built by ../shared/tools/real_models.py, and
the background subprocess jobs of subprocess_jobs.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# Unit tests compile many small programs: XLA's backend optimisations cost ~3x the compile
# time and buy nothing at these sizes. Set before anything imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import subprocess_jobs  # noqa: E402

_JOBS: dict[str, subprocess_jobs.Job] = {}
_TMP: list[Path] = []


def real_model_dir(name: str) -> Path:
    """The HF directory of a real model (e.g. 'smollm2-135m'), or skip the test."""
    root = Path(
        os.environ.get("REAL_MODELS_DIR", Path.home() / ".cache" / "critique_jax" / "real_models")
    )
    directory = root / name / "hf"
    if not (directory / "config.json").exists():
        pytest.skip(f"{name} not built (python ../shared/tools/real_models.py {name})")
    return directory


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "subprocess_job(name): the test reads a job of tests/subprocess_jobs.py"
    )


def _start(name: str) -> subprocess_jobs.Job:
    if name not in _JOBS:
        if name not in subprocess_jobs.JOBS:
            raise KeyError(f"no subprocess job {name!r}; known: {sorted(subprocess_jobs.JOBS)}")
        if not _TMP:
            _TMP.append(Path(tempfile.mkdtemp(prefix="critique_jax_jobs_")))
        tmp = _TMP[0] / name
        tmp.mkdir()
        _JOBS[name] = subprocess_jobs.JOBS[name](tmp)
    return _JOBS[name]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the jobs the selected tests need now, so they run while earlier tests do."""
    for item in session.items:
        for mark in item.iter_markers("subprocess_job"):
            _start(*mark.args)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for job in _JOBS.values():
        job.stop()
    for tmp in _TMP:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def subprocess_results() -> Callable[[str], dict[str, np.ndarray]]:
    """name -> the arrays the job saved (waits for it; starts it if it was not started)."""
    cache: dict[str, dict[str, np.ndarray]] = {}

    def get(name: str) -> dict[str, np.ndarray]:
        if name not in cache:
            cache[name] = _start(name).result()
        return cache[name]

    return get
