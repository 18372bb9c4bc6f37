"""One Flax decoder for the Llama / Mistral / Qwen2 / Qwen3 families (HF import and export:
`critique_jax.checkpoints.hf`)."""

from critique_jax.models.config import PRESETS, ModelConfig, RopeScaling, preset
from critique_jax.models.transformer import (
    KVCache,
    Transformer,
    abstract_params,
    add_slots,
    constrain_cache,
    continue_cache,
    init_cache,
    init_params,
    map_layers,
    select_rows,
)

__all__ = [
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "RopeScaling",
    "Transformer",
    "abstract_params",
    "add_slots",
    "constrain_cache",
    "continue_cache",
    "init_cache",
    "init_params",
    "map_layers",
    "preset",
    "select_rows",
]
