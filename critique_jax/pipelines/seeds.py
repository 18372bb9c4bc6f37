"""The seeds that stages derive from their run seed: the same in every process, every run and
every resume, whatever was done before, so that a chunk, round or role redrawn after a crash
draws what it drew the first time."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from critique_jax.sampling import SamplingParams


def stable_seed(*parts: Any) -> int:
    """A 31-bit seed from any parts, the same in every process and run."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def salted(sp: SamplingParams, *salt: Any) -> SamplingParams:
    """`sp` with a seed derived from its own and `salt`: distinct sampler calls (chunks,
    rounds, roles) draw independent randomness, reproducibly."""
    return sp.replace(seed=stable_seed(sp.seed, *salt))


def chunk_seed(seed: int, chunk: int, role: int) -> int:
    """RCO's sampling seed for (run seed, chunk, role). It predates `stable_seed` and is kept
    as it is: another derivation would change what RCO's collection and evaluation draw."""
    return int(np.random.SeedSequence([seed, chunk, role]).generate_state(1)[0] % 2**31)
