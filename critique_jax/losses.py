"""Training losses: masked SFT cross-entropy, sequence log-probs, RCO and DPO.

Pure `jnp`, in float32 whatever the logits dtype, so a bf16 model trains with fp32 loss math.
Shapes: `logits` [B, T, V], `targets` [B, T] (the layout of `data.batching`), `loss_mask`
[B, T] (bool or float) marking the supervised targets.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(targets | prefix) in fp32: a gather minus a logsumexp, not a `log_softmax`, so
    XLA fuses the upcast into the reductions and holds at most one [B, T, V] fp32 array."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - lse


def sft_loss(
    logits: jax.Array, targets: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, Metrics]:
    """-sum m * log p(targets) / max(sum m, 1) (an all-zero mask gives 0, not NaN); metrics
    `ntokens` (supervised tokens) and `accuracy` (their share predicted by the argmax)."""
    correct = jnp.argmax(logits, axis=-1) == targets
    return _masked_sft(token_logprobs(logits, targets), correct, loss_mask)


def _masked_sft(
    logps: jax.Array, correct: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, Metrics]:
    mask = loss_mask.astype(jnp.float32)
    ntokens = mask.sum()
    denom = jnp.maximum(ntokens, 1.0)
    loss = -(logps * mask).sum() / denom
    accuracy = (correct.astype(jnp.float32) * mask).sum() / denom
    return loss, {"ntokens": ntokens, "accuracy": accuracy}


def chunked_token_stats(
    head: Callable[[jax.Array], jax.Array], hidden: jax.Array, targets: jax.Array, chunk: int
) -> tuple[jax.Array, jax.Array]:
    """`token_logprobs(head(hidden), targets)` and `argmax(head(hidden)) == targets` [B, T]
    from hidden states [B, T, E], `chunk` positions at a time: each chunk's logits exist only
    inside its (rematerialised) step, so no [B, T, V] array is held; chunks split T, not B,
    so rows stay sharded."""
    b, t, _ = hidden.shape
    chunk = min(chunk, t)
    pad = -t % chunk
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))

    @jax.checkpoint
    def stats(xy: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        x, y = xy
        logits = head(x)
        return token_logprobs(logits, y), jnp.argmax(logits, axis=-1) == y

    def by_chunk(x: jax.Array) -> jax.Array:  # [B, T + pad, ...] -> [n, B, chunk, ...]
        return jnp.swapaxes(x.reshape(b, -1, chunk, *x.shape[2:]), 0, 1)

    logps, correct = jax.lax.map(stats, (by_chunk(hidden), by_chunk(targets)))
    unchunk = lambda x: jnp.swapaxes(x, 0, 1).reshape(b, -1)[:, :t]  # noqa: E731
    return unchunk(logps), unchunk(correct)


def sft_loss_chunked(
    head: Callable[[jax.Array], jax.Array],
    hidden: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array,
    chunk: int = 128,
) -> tuple[jax.Array, Metrics]:
    """`sft_loss(head(hidden), targets, loss_mask)` through `chunked_token_stats`."""
    logps, correct = chunked_token_stats(head, hidden, targets, chunk)
    return _masked_sft(logps, correct, loss_mask)


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
