"""Resolve a config's `model:` section into (ModelConfig, sharded params, tokenizer).

Stages hand models to each other as HF directories (config.json + safetensors + tokenizer),
so every stage output is also a checkpoint transformers can load.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh

from critique_jax.checkpoints.hf import load_hf
from critique_jax.config import ModelSpec
from critique_jax.data.tokenizers import load_tokenizer
from critique_jax.models.config import ModelConfig, preset
from critique_jax.models.transformer import abstract_params, init_params
from critique_jax.sharding import DEFAULT_RULES, param_shardings


@dataclass
class LoadedModel:
    cfg: ModelConfig
    params: Any
    tokenizer: Any | None


@functools.partial(jax.jit, static_argnames=("cfg", "mesh", "rules"))
def _init(rng: jax.Array, *, cfg: ModelConfig, mesh: Mesh | None, rules) -> Any:
    if mesh is None:
        return init_params(cfg, rng)
    shardings = param_shardings(abstract_params(cfg), mesh, rules)
    params = nn.meta.unbox(init_params(cfg, rng, boxed=True))
    return jax.lax.with_sharding_constraint(params, shardings)


def init_sharded_params(cfg: ModelConfig, seed: int, mesh: Mesh | None, rules=DEFAULT_RULES):
    """Random parameters created directly on their shards (never a full host copy)."""
    return _init(jax.random.key(seed), cfg=cfg, mesh=mesh, rules=tuple(rules))


def load_model(
    spec: ModelSpec, mesh: Mesh | None = None, seed: int = 0, rules=DEFAULT_RULES
) -> LoadedModel:
    if spec.preset is not None:
        cfg = preset(spec.preset, **spec.overrides)
        tokenizer = (
            load_tokenizer(spec.tokenizer, cfg, f"preset {spec.preset!r}")
            if spec.tokenizer
            else None
        )
        return LoadedModel(cfg, init_sharded_params(cfg, seed, mesh, rules), tokenizer)
    shardings = None
    if mesh is not None:
        shardings = lambda cfg: param_shardings(abstract_params(cfg), mesh, rules)  # noqa: E731
    cfg, params = load_hf(spec.path, shardings=shardings, **spec.overrides)
    tokenizer = load_tokenizer(spec.tokenizer or spec.path, cfg, spec.path)
    return LoadedModel(cfg, params, tokenizer)
