"""Next-token choice: temperature, top-k, top-p, min-p, greedy; per-row PRNG keys.

Which filters are on is static (`FilterSpec`, part of the compiled program) so a switched-off
filter costs nothing, e.g. no full-vocabulary sort when top_p == 1; their values
(temperature, top_p, min_p) are traced, so changing them does not recompile. top_k is static
because `lax.top_k` needs a static k.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from critique_jax.backend import argmax
from critique_jax.sampling.params import SamplingParams


@dataclass(frozen=True)
class FilterSpec:
    """Which filters a compiled sampler applies (top_p/min_p: on or off; their values are
    traced arguments)."""

    greedy: bool = False
    top_k: int = 0
    top_p: bool = False
    min_p: bool = False

    @classmethod
    def from_params(cls, sp: SamplingParams) -> FilterSpec:
        if sp.greedy:
            return cls(greedy=True)
        return cls(top_k=sp.top_k, top_p=sp.top_p < 1.0, min_p=sp.min_p > 0.0)


def _cutoff(sorted_desc: jax.Array, spec: FilterSpec, top_p, min_p) -> jax.Array:
    """The smallest logit still allowed, per row, from logits sorted in descending order.

    top-p keeps the smallest prefix whose probability reaches top_p (at least one token);
    min-p keeps tokens with p >= min_p * p_max, i.e. logit >= max + log(min_p).
    """
    cut = jnp.full(sorted_desc.shape[:-1], -jnp.inf, sorted_desc.dtype)
    if spec.top_k:
        cut = sorted_desc[..., -1]
    if spec.top_p:
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        n_keep = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1), 1)
        cut = jnp.maximum(cut, jnp.take_along_axis(sorted_desc, n_keep[..., None] - 1, -1)[..., 0])
    if spec.min_p:
        cut = jnp.maximum(cut, sorted_desc[..., 0] + jnp.log(min_p))
    return cut


def _sorted_candidates(logits: jax.Array, spec: FilterSpec) -> tuple[jax.Array, jax.Array | None]:
    """Candidates in descending order: the top k when top-k is on, else the whole vocab."""
    if spec.top_k:
        return jax.lax.top_k(logits, min(spec.top_k, logits.shape[-1]))
    if spec.top_p:
        return jnp.flip(jnp.sort(logits, axis=-1), axis=-1), None
    return jnp.max(logits, axis=-1, keepdims=True), None  # min-p needs only the max


def filter_logits(logits: jax.Array, spec: FilterSpec, temperature, top_p, min_p) -> jax.Array:
    """Temperature-scaled logits [..., V] with the disallowed tokens set to -inf.

    Ties at a cutoff are kept (as in Hugging Face's warpers).
    """
    scaled = logits / temperature
    if not (spec.top_k or spec.top_p or spec.min_p):
        return scaled
    sorted_desc, _ = _sorted_candidates(scaled, spec)
    cut = _cutoff(sorted_desc, spec, top_p, min_p)
    return jnp.where(scaled >= cut[..., None], scaled, -jnp.inf)


def sample_tokens(
    keys: jax.Array, logits: jax.Array, spec: FilterSpec, temperature, top_p, min_p
) -> jax.Array:
    """One token per row of logits [B, V] with per-row keys [B]; int32 [B].

    With top-k on, the draw happens among the k candidates only, which is what makes top-k
    sampling cheap on a large vocabulary.
    """
    if spec.greedy:
        return argmax(logits)
    u = jax.vmap(lambda key: jax.random.uniform(key, (), jnp.float32))(keys)
    if spec.top_k:
        vals, idx = _sorted_candidates(logits / temperature, spec)
        cut = _cutoff(vals, spec, top_p, min_p)
        choice = inverse_cdf(u, jnp.where(vals >= cut[..., None], vals, -jnp.inf))
        return jnp.take_along_axis(idx, choice[:, None], -1)[:, 0].astype(jnp.int32)
    return inverse_cdf(u, filter_logits(logits, spec, temperature, top_p, min_p))


CDF_BLOCK = 128


def inverse_cdf(u: jax.Array, logits: jax.Array) -> jax.Array:
    """The token of each row of logits [B, V] (-inf: never) whose slice of the cumulative
    distribution holds u [B] in [0, 1); int32 [B].

    One uniform per row instead of a Gumbel draw (a random number and two logarithms) per
    vocabulary entry, which took a tenth of a 64-row decode step on XLA:CPU (see
    docs/architecture.md). The cumulative sum runs in two levels, over blocks of
    `CDF_BLOCK` tokens, then inside the chosen block, so it is short and adds few rounding
    errors; a token of probability zero is never chosen, even when rounding puts the target
    past the last sum.
    """
    batch, vocab = logits.shape
    block = min(CDF_BLOCK, vocab)
    logits = logits.astype(jnp.float32)
    probs = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    probs = jnp.pad(probs, ((0, 0), (0, -vocab % block))).reshape(batch, -1, block)
    mass = jnp.sum(probs, axis=-1)  # [B, blocks]
    cum = jnp.cumsum(mass, axis=-1)
    target = u * cum[:, -1]
    j = _first_above(cum, target, mass)
    inside = jnp.take_along_axis(probs, j[:, None, None], 1)[:, 0]  # [B, block]
    before = jnp.take_along_axis(cum - mass, j[:, None], 1)[:, 0]
    i = _first_above(jnp.cumsum(inside, axis=-1), target - before, inside)
    return (j * block + i).astype(jnp.int32)


def _first_above(cum: jax.Array, target: jax.Array, mass: jax.Array) -> jax.Array:
    """Per row, the first index of positive mass whose running sum `cum` passes `target`
    (the last of positive mass when rounding left none)."""
    above = (cum > target[:, None]) & (mass > 0)
    last = mass.shape[-1] - 1 - jnp.argmax(jnp.flip(mass > 0, axis=-1), axis=-1)
    return jnp.where(jnp.any(above, axis=-1), jnp.argmax(above, axis=-1), last)


def row_keys(seed, prompt_index: jax.Array, sample_index: jax.Array) -> jax.Array:
    """Key of each row from (seed, prompt index, sample index): independent of the batch."""
    base = jax.random.key(seed)
    return jax.vmap(lambda p, s: jax.random.fold_in(jax.random.fold_in(base, p), s))(
        prompt_index, sample_index
    )


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax of the raw logits at the chosen tokens: the model's own log-prob."""
    logz = jax.nn.logsumexp(logits, axis=-1)
    return jnp.take_along_axis(logits, tokens[:, None], -1)[:, 0] - logz
