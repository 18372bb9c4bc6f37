"""One decoder-only transformer for the Llama / Mistral / Qwen2 / Qwen3 families.

RMSNorm, RoPE (default, linear, llama3 scaling), grouped-query attention, SwiGLU. The same
graph serves training (`__call__`, packed or padded batches) and sampling (`extend`, over a
preallocated KV cache), so sampler and trainer log-probs agree.

Every parameter carries logical axis names (see `critique_jax.sharding`); parameters are plain
pytrees once unboxed with `flax.linen.meta.unbox`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from critique_jax.backend import attention_implementation
from critique_jax.models.config import ModelConfig
from critique_jax.sharding import constrain

# k, v: a layer stack of [B, K, S, H] arrays (see `LayerStack`); mask: [B, S] bool; index:
# int32 scalar; and, for a fanned-out decode (see `continue_cache`), a read-only prompt
# segment prompt_k, prompt_v (stacks of [P, K, W, H]) and prompt_mask [P, W], B a multiple of P.
KVCache = dict[str, Any]

# A cache's per-layer arrays: stacked [L, ...] for a scanned model (the scan slices it), a
# tuple of L arrays for an unrolled one, so that each layer's dots read its own buffer in
# place instead of a slice copied out of the stack at every decode step.
LayerStack = jax.Array | tuple[jax.Array, ...]
CACHE_LAYER_AXES = ("batch", "kv_heads", "cache_length", "head_dim")


def _init(names: tuple[str, ...], scale: float = 0.02):
    return nn.with_logical_partitioning(nn.initializers.normal(scale), names)


def _dense(
    cfg: ModelConfig,
    features: int | tuple[int, ...],
    names: tuple[str, ...],
    name: str,
    bias: bool = False,
    axis: int | tuple[int, ...] = -1,
) -> nn.DenseGeneral:
    """A projection in the compute dtype. `names`: the kernel's logical axes, the input axes
    (`axis`) first, then the output axes (`features`), which the bias shares."""
    outputs = names[1 if isinstance(axis, int) else len(axis) :]
    return nn.DenseGeneral(
        features,
        axis=axis,
        use_bias=bias,
        dtype=cfg.jnp_dtype,
        param_dtype=cfg.jnp_param_dtype,
        name=name,
        kernel_init=_init(names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, outputs),
    )


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies, with HF's rope scaling maths (computed once, in NumPy)."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    rs = cfg.rope_scaling
    if rs.rope_type == "default":
        return inv.astype(np.float32)
    if rs.rope_type == "linear":
        return (inv / rs.factor).astype(np.float32)
    if rs.rope_type == "llama3":
        old = rs.original_max_position_embeddings
        low_wavelen = old / rs.low_freq_factor
        high_wavelen = old / rs.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
        smooth = (old / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"rope_type {rs.rope_type!r} is not supported (default, linear, llama3 are).")


def rope_tables(cfg: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """sin, cos of the rotation angles, [B, T, head_dim // 2]."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(rope_inv_freq(cfg))
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """x: [B, T, heads, head_dim], rotated in HF's half-rotation layout (dimension i pairs
    with i + head_dim // 2). Rotation in float32, result in x's dtype."""
    half = x.shape[-1] // 2
    x1, x2 = (p.astype(jnp.float32) for p in (x[..., :half], x[..., half:]))
    sin, cos = sin[:, :, None], cos[:, :, None]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RMSNorm(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        init = nn.with_logical_partitioning(nn.initializers.ones, ("norm",))
        scale = self.param("scale", init, (x.shape[-1],), cfg.jnp_param_dtype)
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + cfg.rms_norm_eps)
        return scale.astype(cfg.jnp_dtype) * xf.astype(cfg.jnp_dtype)


class Attention(nn.Module):
    cfg: ModelConfig

    def _proj(self, name: str, heads: int, head_axis: str) -> nn.DenseGeneral:
        names = ("embed", head_axis, "head_dim")
        return _dense(self.cfg, (heads, self.cfg.head_dim), names, name, self.cfg.qkv_bias)

    @nn.compact
    def __call__(self, x, sin, cos, mask, kv):
        cfg = self.cfg
        q = _over_tokens(self._proj("q", cfg.num_heads, "heads"), x)
        k = _over_tokens(self._proj("k", cfg.num_kv_heads, "kv_heads"), x)
        v = _over_tokens(self._proj("v", cfg.num_kv_heads, "kv_heads"), x)
        if cfg.qk_norm:
            q, k = RMSNorm(cfg, name="q_norm")(q), RMSNorm(cfg, name="k_norm")(k)
        q = constrain(apply_rope(q, sin, cos), ("batch", "length", "heads", "head_dim"))
        k = constrain(apply_rope(k, sin, cos), ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))

        if kv is None:
            out, new_kv = _attention(cfg, q, k, v, mask), None
        else:
            out, new_kv = _cached_attention(q, k, v, mask, *kv)
        o = _dense(cfg, cfg.hidden_size, ("heads", "head_dim", "embed"), "o", cfg.o_bias, (-2, -1))
        return _over_tokens(o, out), new_kv


def _over_tokens(layer, x: jax.Array) -> jax.Array:
    """layer(x) with x's leading [B, T] merged into one token axis (a free reshape).

    A weight gradient is then a matmul contracting one token axis; contracting B and T
    together, XLA:CPU first copies the activation gradient into a transposed layout.
    """
    b, t = x.shape[:2]
    y = layer(x.reshape(b * t, *x.shape[2:]))
    return y.reshape(b, t, *y.shape[1:])


def _attention(cfg: ModelConfig, q, k, v, mask):
    """mask None: plain causal attention (cuDNN flash attention can take it on GPU)."""
    impl = cfg.attention_impl
    if impl == "auto":
        impl = attention_implementation(q.dtype)
    if impl == "cudnn" and mask is None:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    return block_causal_attention(q, k, v, mask)


def block_causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None
) -> jax.Array:
    """Causal self-attention a block of queries at a time: the queries of block i attend
    only the keys up to the block's end, so the masked upper triangle of the [T, T] scores is
    never computed: (n + 1) / 2n of the full work with n blocks. At most 8 blocks of at
    least 64 queries, so the unrolled blocks stay few. `mask` [B, 1, T, T] (packed
    sequences, sliding windows) must be causal; None is plain causal.

    A block's keys are the concatenation of the blocks up to it, not a prefix slice, so the
    backward pass splits their gradient instead of padding it to the full length.
    """
    t = q.shape[1]
    block = max(64, -(-t // 8))
    splits = list(range(block, t, block))
    qs, ks, vs = (jnp.split(x, splits, axis=1) for x in (q, k, v))
    outs = []
    for i, start in enumerate([0, *splits]):
        end = min(start + block, t)
        if mask is None:
            causal = jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :]
            block_mask = causal[None, None]
        else:
            block_mask = mask[:, :, start:end, :end]
        kb, vb = (jnp.concatenate(x[: i + 1], axis=1) for x in (ks, vs))
        outs.append(_grouped_attention(qs[i], kb, vb, block_mask))
    return jnp.concatenate(outs, axis=1)


@jax.checkpoint
def _grouped_attention(q, k, v, mask):
    """Attention with query heads grouped by kv head (GQA) instead of repeating k, v.

    Checkpointed: the backward pass recomputes the [T, S] scores and probabilities from q, k,
    v instead of the forward pass storing them for every layer (O(T^2) memory per layer,
    which took longer to write and read back than to recompute).

    q [B, T, N, H], k, v [B, S, K, H]; mask [B or 1, 1, T, S]. Heads lead the
    sequence, so each (row, kv head) is one [G*T, H] x [S, H] score matmul and one
    [G*T, S] x [S, H] value matmul, with no transpose of the [T, S] scores between them.
    The maths is jax.nn.dot_product_attention's XLA path (fp32 scores and softmax).
    """
    b, t, heads, dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    q = q.reshape(b, t, kv_heads, group, dim).transpose(0, 2, 3, 1, 4)
    q = q.reshape(b, kv_heads, group * t, dim)
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    scores = jnp.einsum("bkqh,bksh->bkqs", q, k, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, kv_heads, group, t, -1) * jnp.float32(1 / math.sqrt(dim))
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkqs,bksh->bkqh", probs.reshape(b, kv_heads, group * t, -1), v)
    out = out.reshape(b, kv_heads, group, t, dim).transpose(0, 3, 1, 2, 4)
    return out.reshape(b, t, heads, dim)


def _cached_attention(q, k, v, mask, kv, prompt_kv, layer, index):
    """Write the chunk's k, v into layer `layer` of the cache's layer stacks at slot
    `index`, then attend over that layer's slots, and over its prompt segment when the cache
    has one.

    The stacks travel through the layer loop and each layer updates its own array in place,
    so a decode step writes one slot per layer instead of rebuilding the whole cache. Heads
    lead the slots so each (row, kv head) is one contiguous [S, H] matrix the score and
    value dots read as is. Query heads are grouped by kv head (GQA) instead of repeating
    k, v.

    The prompt segment (one [P, K, W, H] array per layer) is shared by the B // P rows that
    sample the same prompt (fan-out): their queries are stacked into one [rows x heads, W]
    block per prompt, so a decode step reads each prompt's keys and values once, not once
    per sample.
    """
    cache_k, cache_v = _write(kv[0], layer, k, index), _write(kv[1], layer, v, index)
    k, v = _read(cache_k, layer, q.dtype), _read(cache_v, layer, q.dtype)
    b, t, heads, dim = q.shape
    kv_heads = k.shape[1]
    q = q.reshape(b, t, kv_heads, heads // kv_heads, dim)
    scores = jnp.einsum("btkgh,bksh->bkgts", q, k, preferred_element_type=jnp.float32)
    prompt = prompt_kv is not None
    if prompt:
        pk, pv = (_read(x, layer, q.dtype) for x in prompt_kv)
        p, width = pk.shape[0], pk.shape[2]
        qp = q.reshape(p, b // p, t, kv_heads, heads // kv_heads, dim)
        prompt_scores = jnp.einsum(
            "pftkgh,pkwh->pfkgtw", qp, pk, preferred_element_type=jnp.float32
        )
        scores = jnp.concatenate([prompt_scores.reshape(*scores.shape[:-1], width), scores], -1)
    scores = jnp.where(mask[:, :, None], scores / math.sqrt(dim), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if prompt:
        probs, prompt_probs = probs[..., width:], probs[..., :width]
    # probs as the left operand: a plain [G*T, S] @ [S, H] matmul per (row, kv head).
    out = jnp.einsum("bkgts,bksh->bkgth", probs, v)
    if prompt:
        # kv heads ahead of samples: [P, K, F x G x T, W] @ [P, K, W, H] is a plain batched
        # matmul (contracting "pfkgtw,pkwh" as it is took XLA:CPU 5x longer).
        prompt_probs = prompt_probs.reshape(p, b // p, kv_heads, -1, width).swapaxes(1, 2)
        prompt_out = jnp.einsum("pkqw,pkwh->pkqh", prompt_probs.reshape(p, kv_heads, -1, width), pv)
        prompt_out = prompt_out.reshape(p, kv_heads, b // p, -1, dim).swapaxes(1, 2)
        out = out + prompt_out.reshape(out.shape)
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, heads, dim)
    return out, (cache_k, cache_v)


def _read(stack: LayerStack, layer, dtype) -> jax.Array:
    """One layer's [B, K, S, H] array, in the compute dtype."""
    if isinstance(stack, tuple):
        x = stack[layer]
    else:
        x = jax.lax.dynamic_index_in_dim(stack, layer, keepdims=False)
    return constrain(x, CACHE_LAYER_AXES).astype(dtype)


def _write(stack: LayerStack, layer, x: jax.Array, index) -> LayerStack:
    """The stack with a chunk x [B, T, K, H] written into layer `layer` at slot `index`."""
    x = jnp.swapaxes(x, 1, 2)  # the cache's heads-first layout
    if isinstance(stack, tuple):
        new = jax.lax.dynamic_update_slice(
            stack[layer], x.astype(stack[layer].dtype), (0, 0, index, 0)
        )
        return stack[:layer] + (new,) + stack[layer + 1 :]
    return jax.lax.dynamic_update_slice(stack, x[None].astype(stack.dtype), (layer, 0, 0, index, 0))


def map_layers(fn: Callable[..., jax.Array], *stacks: LayerStack) -> LayerStack:
    """`fn` applied to each layer's [B, K, S, H] arrays of one or more stacks."""
    if isinstance(stacks[0], tuple):
        return tuple(fn(*xs) for xs in zip(*stacks, strict=True))
    return jax.vmap(fn)(*stacks)


def map_kv(fn: Callable[..., jax.Array], *caches: KVCache, segment: str = "") -> KVCache:
    """{k, v}: `map_layers(fn)` over the caches' key and value stacks (`segment="prompt_"`:
    those of the shared prompt segment)."""
    return {name: map_layers(fn, *(c[segment + name] for c in caches)) for name in ("k", "v")}


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        gate = _over_tokens(_dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "gate"), x)
        up = _over_tokens(_dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "up"), x)
        h = constrain(nn.silu(gate) * up, ("batch", "length", "mlp"))
        return _over_tokens(_dense(cfg, cfg.hidden_size, ("mlp", "embed"), "down"), h)


class DecoderLayer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, carry, ctx: dict[str, Any], layer):
        """carry: (activations, stacked (k, v) cache or None); layer: this layer's index into
        the cache. Returns (new carry, None), the shape `nn.scan` wants."""
        x, kv = carry
        cfg = self.cfg
        h = RMSNorm(cfg, name="input_norm")(x)
        layer_kv = None if kv is None else (kv, ctx["prompt_kv"], layer, ctx["index"])
        attn, new_kv = Attention(cfg, name="attn")(h, ctx["sin"], ctx["cos"], ctx["mask"], layer_kv)
        x = x + attn
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg, name="post_attn_norm")(x))
        return (constrain(x, ("batch", "length", "embed")), new_kv), None


_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Transformer(nn.Module):
    """`__call__` for training and scoring; `extend` to run a chunk through a KV cache."""

    cfg: ModelConfig

    def setup(self) -> None:
        cfg = self.cfg
        self.embed = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=cfg.jnp_dtype,
            param_dtype=cfg.jnp_param_dtype,
            embedding_init=_init(("vocab", "embed")),
            name="embed",
        )
        layer = DecoderLayer
        if cfg.remat != "none":
            layer = nn.remat(
                layer, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers
            )
        if cfg.scan_layers:
            self.layers = nn.scan(
                layer,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, 0),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, name="layers")
        else:
            self.layers = [layer(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.final_norm = RMSNorm(cfg, name="final_norm")
        if not cfg.tie_word_embeddings:
            self.lm_head = _dense(cfg, cfg.vocab_size, ("embed", "vocab"), "lm_head")

    def _layers(self, x, ctx, kv):
        if self.cfg.scan_layers:
            (x, kv), _ = self.layers((x, kv), ctx, jnp.arange(self.cfg.num_layers))
            return x, kv
        for i, layer in enumerate(self.layers):
            (x, kv), _ = layer((x, kv), ctx, i)
        return x, kv

    def _logits(self, x):
        return self.head(self.final_norm(x))

    def head(self, x: jax.Array) -> jax.Array:
        """Final hidden states [B, T, E] -> float32 logits [B, T, V]."""
        if self.cfg.tie_word_embeddings:
            logits = _over_tokens(self.embed.attend, x)
        else:
            logits = _over_tokens(self.lm_head, x)
        return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array | None = None,
        *,
        hidden: bool = False,
    ) -> jax.Array:
        """tokens, positions, segment_ids: [B, T] -> float32 logits [B, T, V], or with
        `hidden` the final hidden states [B, T, E] that `head` maps to those logits (a loss
        can then project the vocabulary a few tokens at a time).

        segment_ids (0 = padding) keeps packed sequences from attending to each other; leave
        it None for right-padded rows, which then take the plain causal (flash) path.
        """
        x = constrain(self.embed(tokens), ("batch", "length", "embed"))
        sin, cos = rope_tables(self.cfg, positions)
        mask = self._train_mask(segment_ids, positions)
        x, _ = self._layers(x, dict(sin=sin, cos=cos, mask=mask), None)
        x = self.final_norm(x)
        return x if hidden else self.head(x)

    def _train_mask(self, segment_ids, positions):
        if segment_ids is None and self.cfg.sliding_window is None:
            return None
        t = positions.shape[1]
        mask = jnp.tril(jnp.ones((t, t), bool))[None]
        if segment_ids is not None:
            mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
        if self.cfg.sliding_window is not None:
            mask = mask & (positions[:, :, None] - positions[:, None, :] < self.cfg.sliding_window)
        return mask[:, None]

    def extend(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        token_mask: jax.Array,
        cache: KVCache,
        last_only: bool = False,
    ) -> tuple[jax.Array, KVCache]:
        """Run a chunk [B, T] written at cache slots index..index+T; prefill and decode alike.

        token_mask [B, T] marks real tokens (False for left padding). A query attends to valid
        cache slots at or before its own slot; slots are shared across rows, positions are
        per row, so left-padded prompts of different lengths decode together.

        Returns logits [B, T, V], or with `last_only` [B, 1, V] at each row's last real token
        (a prefill that only samples next needs no more, and the vocabulary projection of a
        whole prompt is large).
        """
        t = tokens.shape[1]
        index = cache["index"]
        kv_mask = jax.lax.dynamic_update_slice(cache["mask"], token_mask, (0, index))
        slots = jnp.arange(kv_mask.shape[1])
        q_slots = index + jnp.arange(t)
        mask = (slots[None, :] <= q_slots[:, None])[None] & kv_mask[:, None, :]
        window = self.cfg.sliding_window
        if window is not None:
            mask = mask & (q_slots[:, None] - slots[None, :] < window)[None]
        prompt_kv = None
        if "prompt_k" in cache:  # the prompt segment precedes every slot of the cache
            prompt_kv = (cache["prompt_k"], cache["prompt_v"])
            prompt_mask = cache["prompt_mask"]
            width = prompt_mask.shape[1]
            prompt_mask = jnp.repeat(prompt_mask, tokens.shape[0] // prompt_mask.shape[0], 0)
            prompt_mask = jnp.broadcast_to(prompt_mask[:, None], (tokens.shape[0], t, width))
            if window is not None:
                distance = width + q_slots[:, None] - jnp.arange(width)[None, :]
                prompt_mask = prompt_mask & (distance < window)[None]
            mask = jnp.concatenate([prompt_mask, mask], axis=-1)
        x = constrain(self.embed(tokens), ("batch", "length", "embed"))
        sin, cos = rope_tables(self.cfg, positions)
        ctx = dict(sin=sin, cos=cos, mask=mask[:, None], index=index, prompt_kv=prompt_kv)
        x, (k, v) = self._layers(x, ctx, (cache["k"], cache["v"]))
        if last_only:
            last = t - 1 - jnp.argmax(token_mask[:, ::-1], axis=1)
            x = jnp.take_along_axis(x, last[:, None, None], axis=1)
        new_cache = dict(cache, k=k, v=v, mask=kv_mask, index=index + t)
        return self._logits(x), new_cache


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> KVCache:
    """An empty KV cache with `length` slots per row (k, v stacked when the layers are
    scanned, one array per layer when they are unrolled)."""
    shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
    dtype = dtype or cfg.jnp_dtype

    def stack() -> LayerStack:
        if cfg.scan_layers:
            return jnp.zeros((cfg.num_layers, *shape), dtype)
        return tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))

    return dict(
        k=stack(),
        v=stack(),
        mask=jnp.zeros((batch, length), bool),
        index=jnp.zeros((), jnp.int32),
    )


def continue_cache(prompt_cache: KVCache, fanout: int, length: int) -> KVCache:
    """The cache that `fanout` samples of each prompt decode into, with `length` empty slots
    per sample row for the tokens they generate.

    fanout > 1: the prefill's cache, read but never copied, becomes the shared prompt
    segment (row b reads prompt row b // fanout), so a decode step reads each prompt's keys
    and values once for all its samples. fanout 1 has nothing to share: the empty slots are
    appended to the prompt's own rows (one copy per call), and each step attends over one
    segment, which is cheaper than two.
    """
    prompts = prompt_cache["mask"].shape[0]

    def empty(x: jax.Array) -> jax.Array:
        return jnp.zeros((prompts * fanout, x.shape[1], length, x.shape[3]), x.dtype)

    own = dict(
        map_kv(empty, prompt_cache),
        mask=jnp.zeros((prompts * fanout, length), bool),
        index=jnp.zeros((), jnp.int32),
    )
    if fanout == 1:
        return _one_segment(prompt_cache, own)
    return dict(
        own,
        prompt_k=prompt_cache["k"],
        prompt_v=prompt_cache["v"],
        prompt_mask=prompt_cache["mask"],
    )


def add_slots(cache: KVCache, extra: int) -> KVCache:
    """The cache with `extra` empty slots after its last (the rows' own slots, never the
    shared prompt segment): decode grows the cache as the rows fill it, so that each step
    attends over about the filled slots instead of all `max_new_tokens` of them."""

    def pad(x: jax.Array) -> jax.Array:
        return jnp.pad(x, [(0, 0), (0, 0), (0, extra), (0, 0)])

    return dict(cache, **map_kv(pad, cache), mask=jnp.pad(cache["mask"], [(0, 0), (0, extra)]))


def select_rows(cache: KVCache, rows: jax.Array) -> KVCache:
    """The cache of decode rows `rows` only. A shared prompt segment is copied into each
    selected row ahead of its own slots (one segment): the few rows a decode keeps after
    others finished have little left to share."""

    def take(index: jax.Array) -> Callable[[jax.Array], jax.Array]:
        return lambda x: x[index]

    own = dict(
        map_kv(take(rows), cache),
        mask=cache["mask"][rows],
        index=cache["index"],
    )
    if "prompt_k" not in cache:
        return own
    source = rows // (cache["mask"].shape[0] // cache["prompt_mask"].shape[0])
    prompt = dict(map_kv(take(source), cache, segment="prompt_"), mask=cache["prompt_mask"][source])
    return _one_segment(prompt, own)


def _one_segment(prompt: KVCache, own: KVCache) -> KVCache:
    """Each row's prompt slots followed by its own slots, as one segment (the own cache's
    `index` counts from the end of the prompt)."""

    def join(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.concatenate([a, b], axis=2)

    return dict(
        map_kv(join, prompt, own),
        mask=jnp.concatenate([prompt["mask"], own["mask"]], axis=1),
        index=own["index"] + prompt["mask"].shape[1],
    )


def constrain_cache(cache: KVCache) -> KVCache:
    """The cache with each array's logical sharding hint."""

    def one(name: str, x):
        if name == "index":
            return x
        if name.endswith("mask"):
            return constrain(x, ("batch", "cache_length"))
        return map_layers(lambda a: constrain(a, CACHE_LAYER_AXES), x)

    return {name: one(name, x) for name, x in cache.items()}


def init_params(cfg: ModelConfig, rng: jax.Array, boxed: bool = False):
    """Random parameters (boxed with logical names when `boxed`, else a plain pytree)."""
    model = Transformer(cfg)
    tokens = jnp.zeros((1, 1), jnp.int32)
    variables = model.init(rng, tokens, tokens)
    params = variables["params"]
    return params if boxed else nn.meta.unbox(params)


def abstract_params(cfg: ModelConfig):
    """Boxed ShapeDtypeStructs of the parameters, without allocating them."""
    return jax.eval_shape(lambda r: init_params(cfg, r, boxed=True), jax.random.key(0))
