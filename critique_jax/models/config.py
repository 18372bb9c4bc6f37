"""The architecture hyper-parameters of the one decoder that covers Llama, Mistral, Qwen2, Qwen3."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
# The positive int fields, in the order presets list them.
_SIZES = "vocab_size hidden_size intermediate_size num_layers num_heads num_kv_heads head_dim"
SIZE_FIELDS = (*_SIZES.split(), "max_position_embeddings")


@dataclass(frozen=True)
class RopeScaling:
    """HF `rope_scaling` / `rope_parameters`: only the types whose maths we implement."""

    rope_type: str = "default"  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    model_type: str = "llama"
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 (and Llama's `attention_bias`)
    o_bias: bool = False  # Llama's `attention_bias` also biases o_proj
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    sliding_window: int | None = None  # Mistral v0.1
    max_position_embeddings: int = 4096
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype; logits are always returned in float32
    scan_layers: bool = True  # nn.scan over layers: compile time flat in depth
    remat: str = "none"  # none | full | dots | dots_no_batch
    attention_impl: str = "auto"  # auto: cuDNN flash attention on GPU when shapes allow

    def __post_init__(self) -> None:
        for name in SIZE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int.")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {self.model_type!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}. Convert the checkpoint to one of these "
                "architectures or add the family to critique_jax/models."
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads="
                f"{self.num_kv_heads} (grouped-query attention)."
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; choose one of {REMAT_POLICIES}.")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl={self.attention_impl!r}; choose one of {ATTENTION_IMPLS}."
            )
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"{name}={getattr(self, name)!r}; use float32 or bfloat16.")

    @property
    def jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count, for FLOP and memory estimates."""
        e, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        attn = e * h * (2 * self.num_heads + 2 * self.num_kv_heads)
        if self.qkv_bias:
            attn += h * (self.num_heads + 2 * self.num_kv_heads)
        if self.o_bias:
            attn += e
        norms = 2 * e + (2 * h if self.qk_norm else 0)
        per_layer = attn + 3 * e * f + norms
        embed = self.vocab_size * e * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embed + e

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(names)}")
        d = dict(d)
        if isinstance(d.get("rope_scaling"), dict):
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        if isinstance(d.get("eos_token_id"), list):
            d["eos_token_id"] = tuple(d["eos_token_id"])
        return cls(**d)


def _arch(*sizes: int, **extra: Any) -> dict[str, Any]:
    return dict(zip(SIZE_FIELDS, sizes, strict=True), **extra)


_SMOLLM2 = dict(rope_theta=1e5, rms_norm_eps=1e-5, tie_word_embeddings=True)
_QWEN25 = dict(model_type="qwen2", rope_theta=1e6, tie_word_embeddings=True, qkv_bias=True)

# Named architectures that need no download: `model: {preset: NAME}` in a config.
PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests: a few hundred thousand parameters, compiles in seconds on CPU.
    "tiny": _arch(256, 64, 128, 2, 4, 2, 16, 512),
    # The embedded demo, trained from scratch in minutes on 2 cores: two layers are the fewest
    # that can copy numbers from the question (an induction circuit).
    "demo": _arch(512, 128, 384, 2, 4, 2, 32, 1024),
    # Shapes of real families, for benchmarks and the accelerator recipes.
    "smollm2-135m": _arch(49152, 576, 1536, 30, 9, 3, 64, 8192, **_SMOLLM2),
    "qwen2.5-0.5b": _arch(151936, 896, 4864, 24, 14, 2, 64, 32768, **_QWEN25),
    "qwen2.5-1.5b": _arch(151936, 1536, 8960, 28, 12, 2, 128, 32768, **_QWEN25),
    "llama3-8b": _arch(
        128256, 4096, 14336, 32, 32, 8, 128, 8192, rope_theta=5e5, rms_norm_eps=1e-5
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides})
