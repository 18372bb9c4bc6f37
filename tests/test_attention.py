"""Training attention runs the causal triangle in query blocks; it equals one dense masked
attention (`jax.nn.dot_product_attention`'s XLA path) in values and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critique_jax.models.transformer import block_causal_attention

B, T, HEADS, KV_HEADS, DIM = 2, 150, 4, 2, 16  # blocks of 64, 64 and 22 queries


def _packed_mask(rng) -> np.ndarray:
    """Causal within each packed sequence; 0 ids are padding (attend to nothing else)."""
    ids = np.sort(rng.integers(0, 4, (B, T)), axis=1)
    causal = np.tril(np.ones((T, T), bool))
    return ((ids[:, :, None] == ids[:, None, :]) & causal)[:, None]


@pytest.mark.parametrize("packed", [False, True])
def test_block_causal_attention_equals_dense_attention(packed):
    rng = np.random.default_rng(0)
    shapes = [(B, T, n, DIM) for n in (HEADS, KV_HEADS, KV_HEADS)]
    q, k, v = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes)
    mask = jnp.asarray(_packed_mask(rng)) if packed else None
    dense_mask = mask if packed else jnp.tril(jnp.ones((T, T), bool))[None, None]
    weights = jnp.asarray(rng.normal(size=(B, T, HEADS, DIM)), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * weights)

    def ours(q, k, v):
        return block_causal_attention(q, k, v, mask)

    def dense(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=dense_mask, implementation="xla")

    np.testing.assert_allclose(ours(q, k, v), dense(q, k, v), atol=2e-5)
    grads = (jax.jit(jax.grad(loss(fn), (0, 1, 2)))(q, k, v) for fn in (ours, dense))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
