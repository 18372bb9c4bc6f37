"""One Flax decoder for the Llama / Mistral / Qwen2 / Qwen3 families, with HF import/export."""

from critique_jax.models.config import PRESETS, ModelConfig, RopeScaling, preset
from critique_jax.models.transformer import (
    CACHE_LOGICAL_AXES,
    KVCache,
    Transformer,
    abstract_params,
    continue_cache,
    init_cache,
    init_params,
)

__all__ = [
    "CACHE_LOGICAL_AXES",
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "RopeScaling",
    "Transformer",
    "abstract_params",
    "continue_cache",
    "init_cache",
    "init_params",
    "preset",
]
