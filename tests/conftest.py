"""Shared test helpers: locating real checkpoints built by ../shared/tools/real_models.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Unit tests compile many small programs: XLA's backend optimisations cost ~3x the compile
# time and buy nothing at these sizes. Set before anything imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")


def real_model_dir(name: str) -> Path:
    """The HF directory of a real model (e.g. 'smollm2-135m'), or skip the test."""
    root = Path(
        os.environ.get("REAL_MODELS_DIR", Path.home() / ".cache" / "critique_jax" / "real_models")
    )
    directory = root / name / "hf"
    if not (directory / "config.json").exists():
        pytest.skip(f"{name} not built (python ../shared/tools/real_models.py {name})")
    return directory
