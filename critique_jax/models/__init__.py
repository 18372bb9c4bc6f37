"""One Flax decoder for the Llama / Mistral / Qwen2 / Qwen3 families (its KV cache operations:
`models.transformer`; HF import and export: `critique_jax.checkpoints.hf`)."""

from critique_jax.models.config import PRESETS, ModelConfig, RopeScaling, preset
from critique_jax.models.transformer import KVCache, Transformer, abstract_params, init_params

__all__ = [
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "RopeScaling",
    "Transformer",
    "abstract_params",
    "init_params",
    "preset",
]
