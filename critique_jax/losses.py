"""Training losses: masked SFT cross-entropy, sequence log-probs, RCO and DPO.

Every function is pure `jnp`, jit-friendly, and computes in float32 whatever the logits dtype
(bf16 logits are upcast inside the reductions), so a bf16 model trains with fp32 loss math.

Shapes: `logits` [B, T, V] are the model outputs at each input position, `targets` [B, T]
the token each position must predict (the batch layout of `critique_jax.data.batching`), and
`loss_mask` [B, T] (bool or float) marks the supervised targets.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(targets[b, t] | prefix) = logits[b, t, y] - logsumexp_v logits[b, t, v], in fp32.

    Written as a gather minus a logsumexp rather than a full `log_softmax`: the fp32 upcast
    feeds straight into the two reductions, so XLA fuses it and at most one [B, T, V] fp32
    array exists (the backward pass needs one for the softmax anyway).
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - lse


def sft_loss(
    logits: jax.Array, targets: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, Metrics]:
    """Next-token cross-entropy averaged over supervised target tokens.

    loss = -sum_{b,t} m[b,t] * log p(targets[b,t]) / max(sum_{b,t} m[b,t], 1)

    The `max(., 1)` keeps an all-zero mask finite (loss 0, zero gradient) instead of NaN.
    Metrics: `ntokens` (number of supervised tokens) and `accuracy` (share of supervised
    tokens whose argmax prediction equals the target).
    """
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
    """`token_logprobs(head(hidden), targets)` and `argmax(head(hidden)) == targets`, [B, T]
    each, from final hidden states [B, T, E], computed `chunk` positions of every row at a time.

    Each chunk's logits [B, chunk, V] exist only inside its step, and the backward pass
    recomputes them (`jax.checkpoint`): no [B, T, V] float32 logits or softmax is ever held.
    Chunks split T, not B, so rows stay sharded over the batch axes. The values equal the
    unchunked ones; the head's gradient sums the chunks' parts in another order.
    """
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
    """log pi(completion | prompt) per row: sum_t m[b,t] * log p(targets[b,t]); shape [B].

    For a packed row this sums over every segment in the row; score one sequence per row
    (`pad_batch`) when a per-sequence value is needed.
    """
    mask = loss_mask.astype(jnp.float32)
    return (token_logprobs(logits, targets) * mask).sum(axis=-1)


def rco_loss(
    policy_logps: jax.Array,
    ref_logps: jax.Array,
    utilities: jax.Array,
    beta: float,
    mask: jax.Array | None = None,
) -> jax.Array:
    """RCO least-squares critique loss (Yu et al. 2025), inputs [G, N] (G groups = (x, y0)).

    For group g with valid critiques V_g (all N when `mask` is None) and n_g = |V_g|:

        log Z_g = logsumexp_{j in V_g}(CU_gj / beta) - log n_g          (stop_gradient)
        L_g     = 1/(2 n_g) * sum_{i in V_g} (pi_gi - ref_gi + log Z_g - CU_gi / beta)^2

    where pi / ref are sequence log-probs of critique i under the policy / reference critic.
    The loss is the plain mean of L_g over groups with n_g > 0: every (x, y0) weighs the same
    whatever its number of valid critiques. Groups with n_g = 0 are left out of both the sum
    and the count, and an all-masked input gives 0. Masked entries may hold any value, even
    inf or NaN: they are replaced before any arithmetic, so neither the loss nor the gradient
    sees them.
    """
    policy_logps = policy_logps.astype(jnp.float32)
    ref_logps = ref_logps.astype(jnp.float32)
    scaled = utilities.astype(jnp.float32) / beta
    if mask is None:
        valid = jnp.ones(scaled.shape, dtype=bool)
    else:
        valid = mask.astype(bool)
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
    """DPO loss (the DPCO baseline), inputs are sequence log-probs [P] of P preference pairs.

    r_c = beta * (pi_c - ref_c), r_r = beta * (pi_r - ref_r)
    loss = mean_p -log sigmoid(r_c - r_r)      (computed as softplus(r_r - r_c), stable)

    Metrics: `reward_accuracy` = mean(r_c > r_r), `reward_margin` = mean(r_c - r_r).
    """
    f32 = jnp.float32
    chosen_reward = beta * (policy_chosen.astype(f32) - ref_chosen.astype(f32))
    rejected_reward = beta * (policy_rejected.astype(f32) - ref_rejected.astype(f32))
    margin = chosen_reward - rejected_reward
    loss = jax.nn.softplus(-margin).mean()
    metrics = {
        "reward_accuracy": (margin > 0).astype(f32).mean(),
        "reward_margin": margin.mean(),
    }
    return loss, metrics
