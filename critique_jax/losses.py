"""Training losses: masked SFT cross-entropy, sequence log-probs, RCO and DPO.

Pure `jnp`, in float32 whatever the logits dtype, so a bf16 model trains with fp32 loss math.
Shapes: `logits` [B, T, V], `targets` [B, T] (the layout of `data.batching`), `loss_mask`
[B, T] (bool or float) marking the supervised targets.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(targets | prefix) in fp32: a gather minus a logsumexp, not a `log_softmax`, so
    XLA fuses the upcast into the reductions and holds at most one [B, T, V] fp32 array."""
    logits = logits.astype(jnp.float32)
    return _picked(logits, targets) - jax.nn.logsumexp(logits, axis=-1)


def _picked(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The logit of each target."""
    return jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def sft_loss(
    logits: jax.Array, targets: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, Metrics]:
    """-sum m * log p(targets) / max(sum m, 1) (an all-zero mask gives 0, not NaN); metrics
    `ntokens` (supervised tokens) and `accuracy` (their share where the target has the top
    logit; a tie with another token counts as correct)."""
    logits = logits.astype(jnp.float32)
    mask = loss_mask.astype(jnp.float32)
    denom = jnp.maximum(mask.sum(), 1.0)
    correct = _picked(logits, targets) >= jnp.max(logits, axis=-1)
    loss = -(token_logprobs(logits, targets) * mask).sum() / denom
    return loss, {"ntokens": mask.sum(), "accuracy": (correct * mask).sum() / denom}


Head = Callable[[Any, jax.Array], jax.Array]  # (head params, hidden [..., E]) -> logits [..., V]


def sft_loss_chunked(
    head: Head,
    head_params: Any,
    hidden: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array,
    chunk: int = 128,
) -> tuple[jax.Array, Metrics]:
    """`sft_loss(head(head_params, hidden), targets, loss_mask)` without a [B, T, V] array:
    the vocabulary is projected `chunk` positions at a time (chunks split T, not B, so rows
    stay sharded), and each chunk's gradient is made in the same pass (a fused linear
    cross-entropy). The backward pass then only scales those gradients, so each chunk runs
    one projection and its two gradient matmuls, where rematerialising the chunk would run
    the projection twice. The accuracy comes from the softmax's own max, not an argmax
    (measurements: docs/architecture.md, "The SFT loss over a large vocabulary")."""
    mask = loss_mask.astype(jnp.float32)
    weights = mask / jnp.maximum(mask.sum(), 1.0)
    loss, correct = _fused_cross_entropy(head, chunk, head_params, hidden, targets, weights)
    accuracy = (correct.astype(jnp.float32) * weights).sum()
    return loss, {"ntokens": mask.sum(), "accuracy": accuracy}


def _chunked_cross_entropy(head: Head, chunk: int, head_params, hidden, targets, weights):
    """-sum weights * log p(targets), top-logit hits [B, T], and the loss's gradients with
    respect to head_params and hidden, a chunk of positions per scan step."""
    b, t, _ = hidden.shape
    chunk = min(chunk, t)
    pad = -t % chunk

    def by_chunk(x: jax.Array) -> jax.Array:  # [B, T, ...] -> [n, B, chunk, ...]
        x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
        return jnp.swapaxes(x.reshape(b, -1, chunk, *x.shape[2:]), 0, 1)

    def unchunk(x: jax.Array) -> jax.Array:
        return jnp.swapaxes(x, 0, 1).reshape(b, -1, *x.shape[3:])[:, :t]

    def step(grad_params, xs):
        x, y, w = xs
        logits, project_back = jax.vjp(head, head_params, x)
        logits = logits.astype(jnp.float32)
        top = jnp.max(logits, axis=-1, keepdims=True)
        exp = jnp.exp(logits - top)
        total = jnp.sum(exp, axis=-1, keepdims=True)
        picked = _picked(logits, y)
        logps = picked - (top + jnp.log(total))[..., 0]
        hit = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1) == y[..., None]
        grad_logits = w[..., None] * (exp / total - hit)  # d(-w log p) / d logits
        grad_p, grad_x = project_back(grad_logits)
        grad_params = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_params, grad_p)
        return grad_params, (-(w * logps).sum(), picked >= top[..., 0], grad_x)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), head_params)
    chunks = (by_chunk(hidden), by_chunk(targets), by_chunk(weights))
    grad_params, (chunk_losses, correct, grad_x) = jax.lax.scan(step, zeros, chunks)
    return chunk_losses.sum(), unchunk(correct), grad_params, unchunk(grad_x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused_cross_entropy(head: Head, chunk: int, head_params, hidden, targets, weights):
    loss, correct, _, _ = _chunked_cross_entropy(head, chunk, head_params, hidden, targets, weights)
    return loss, correct


def _fused_forward(head: Head, chunk: int, head_params, hidden, targets, weights):
    loss, correct, grad_p, grad_x = _chunked_cross_entropy(
        head, chunk, head_params, hidden, targets, weights
    )
    return (loss, correct), (grad_p, grad_x, head_params, hidden)


def _fused_backward(head: Head, chunk: int, saved, cotangents):
    grad_p, grad_x, head_params, hidden = saved
    scale = cotangents[0]  # the loss's; `correct` has none
    grad_p = jax.tree.map(lambda g, p: (scale * g).astype(p.dtype), grad_p, head_params)
    return grad_p, (scale * grad_x).astype(hidden.dtype), None, None


_fused_cross_entropy.defvjp(_fused_forward, _fused_backward)


def sequence_logprobs(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """log pi(completion | prompt) per row [B]: sum_t m * log p(targets) (over every segment
    of a packed row)."""
    mask = loss_mask.astype(jnp.float32)
    return (token_logprobs(logits, targets) * mask).sum(axis=-1)


def rco_loss(
    policy_logps: jax.Array,
    ref_logps: jax.Array,
    utilities: jax.Array,
    beta: float,
    mask: jax.Array | None = None,
) -> jax.Array:
    """RCO least-squares critique loss (Yu et al. 2025; docs/methods.md), inputs [G, N].

    For group g (one (x, y0)) with valid critiques V_g (`mask`; all when None), n_g = |V_g|:
        log Z_g = logsumexp_{j in V_g}(CU_gj / beta) - log n_g          (stop_gradient)
        L_g     = 1/(2 n_g) * sum_{i in V_g} (pi_gi - ref_gi + log Z_g - CU_gi / beta)^2
    averaged over the groups with n_g > 0 (0 when there are none). Masked entries may hold
    inf or NaN: they are replaced before any arithmetic.
    """
    policy_logps = policy_logps.astype(jnp.float32)
    ref_logps = ref_logps.astype(jnp.float32)
    scaled = utilities.astype(jnp.float32) / beta
    valid = jnp.ones(scaled.shape, dtype=bool) if mask is None else mask.astype(bool)
    n_valid = valid.sum(axis=-1).astype(jnp.float32)
    has_valid = n_valid > 0
    lse = jax.nn.logsumexp(jnp.where(valid, scaled, -jnp.inf), axis=-1)
    log_z = jnp.where(has_valid, lse - jnp.log(jnp.maximum(n_valid, 1.0)), 0.0)
    log_z = jax.lax.stop_gradient(log_z)
    residual = policy_logps - ref_logps + log_z[:, None] - scaled
    residual = jnp.where(valid, residual, 0.0)
    group_loss = (residual**2).sum(axis=-1) / (2.0 * jnp.maximum(n_valid, 1.0))
    n_groups = has_valid.sum().astype(jnp.float32)
    return group_loss.sum() / jnp.maximum(n_groups, 1.0)  # empty groups have group_loss 0


def dpo_loss(
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    ref_chosen: jax.Array,
    ref_rejected: jax.Array,
    beta: float,
) -> tuple[jax.Array, Metrics]:
    """DPO loss (the DPCO baseline) of P pairs' sequence log-probs [P]: mean softplus(r_r - r_c)
    with r = beta * (pi - ref); metrics `reward_accuracy` (r_c > r_r) and `reward_margin`."""
    f32 = jnp.float32
    chosen_reward = beta * (policy_chosen.astype(f32) - ref_chosen.astype(f32))
    rejected_reward = beta * (policy_rejected.astype(f32) - ref_rejected.astype(f32))
    margin = chosen_reward - rejected_reward
    metrics = {"reward_accuracy": (margin > 0).astype(f32).mean(), "reward_margin": margin.mean()}
    return jax.nn.softplus(-margin).mean(), metrics
