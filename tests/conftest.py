"""Shared test helpers: locating real checkpoints built by ../shared/tools/real_models.py, the
results of the subprocess jobs of subprocess_jobs.py, and how pytest-xdist shares the tests out
(pyproject's addopts run them on every core with `--dist loadgroup`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# Unit tests compile many small programs: XLA's backend optimisations cost ~3x the compile
# time and buy nothing at these sizes. Set before anything imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
# The CLIs keep compiled programs under ~/.cache (backend.use_compilation_cache); tests that
# call them in-process leave it alone. tests/test_demo.py runs the CLI as a user does.
os.environ.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")


def _pin_xdist_worker() -> None:
    """Give each xdist worker its own share of the cores (Linux), before jax sizes its thread
    pool by them: two workers that each run XLA on every core oversubscribe a small machine
    (the suite took 221 s pinned against 232 s unpinned on 2 cores)."""
    worker, count = (
        os.environ.get("PYTEST_XDIST_WORKER"),
        os.environ.get("PYTEST_XDIST_WORKER_COUNT"),
    )
    if worker is None or count is None or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    share = cpus[int(worker.removeprefix("gw")) :: int(count)]
    if share:
        os.sched_setaffinity(0, share)


_pin_xdist_worker()

import subprocess_jobs  # noqa: E402


def real_model_dir(name: str) -> Path:
    """The HF directory of a real model (e.g. 'smollm2-135m'), or skip the test."""
    root = Path(
        os.environ.get("REAL_MODELS_DIR", Path.home() / ".cache" / "critique_jax" / "real_models")
    )
    directory = root / name / "hf"
    if not (directory / "config.json").exists():
        pytest.skip(f"{name} not built (python ../shared/tools/real_models.py {name})")
    return directory


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """xdist groups: one worker runs all of a file (its module fixtures are built once), and
    one runs every file with a test that reads a subprocess job (each job runs once). Groups
    with a slow test go first (addopts keep this order), so they start at once instead of
    finishing last."""
    files = {item: item.nodeid.split("::")[0] for item in items}
    jobs = {files[item] for item in items if "subprocess_results" in item.fixturenames}
    groups = {item: "subprocess-jobs" if files[item] in jobs else files[item] for item in items}
    slow = {groups[item] for item in items if item.get_closest_marker("slow")}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    items.sort(key=lambda item: groups[item] not in slow)


@pytest.fixture(scope="session")
def subprocess_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], dict[str, np.ndarray]]:
    """name -> the arrays the job saved (run on first use, once per session)."""
    cache: dict[str, dict[str, np.ndarray]] = {}

    def get(name: str) -> dict[str, np.ndarray]:
        if name not in cache:
            cache[name] = subprocess_jobs.run(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return get
