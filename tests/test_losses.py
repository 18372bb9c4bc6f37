"""Losses against hand computations and independent NumPy references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critique_jax.losses import (
    dpo_loss,
    rco_loss,
    sequence_logprobs,
    sft_loss,
    sft_loss_chunked,
    token_logprobs,
)


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def np_rco(policy, ref, cu, beta, mask):
    """Loop-per-group reference: mean over groups with a valid critique of L_g."""
    group_losses = []
    for g in range(policy.shape[0]):
        idx = [i for i in range(policy.shape[1]) if mask[g, i]]
        if not idx:
            continue
        s = np.array([cu[g, i] / beta for i in idx], dtype=np.float64)
        log_z = math.log(np.exp(s - s.max()).sum()) + s.max() - math.log(len(idx))
        res = [policy[g, i] - ref[g, i] + log_z - cu[g, i] / beta for i in idx]
        group_losses.append(sum(r * r for r in res) / (2 * len(idx)))
    return float(np.mean(group_losses)) if group_losses else 0.0


def test_sft_loss_hand_computed():
    # Position 0: logits [ln 2, 0, 0] = probs [1/2, 1/4, 1/4], target 2 -> log p = -log 4,
    #             not the top logit (wrong).
    # Position 1: logits [0, ln 3, 0] = probs [1/5, 3/5, 1/5], target 1 -> log p = log(3/5),
    #             the top logit (right).
    # Position 2: masked out (would be a huge loss if counted).
    # loss = (log 4 - log(3/5)) / 2 = log(20 / 3) / 2; accuracy = 1/2; ntokens = 2.
    logits = jnp.array([[[math.log(2.0), 0.0, 0.0], [0.0, math.log(3.0), 0.0], [10.0, 0.0, 0.0]]])
    targets = jnp.array([[2, 1, 1]])
    mask = jnp.array([[1, 1, 0]])
    loss, metrics = sft_loss(logits, targets, mask)
    assert float(loss) == pytest.approx(math.log(20.0 / 3.0) / 2, rel=1e-6)
    assert float(metrics["ntokens"]) == 2.0
    assert float(metrics["accuracy"]) == pytest.approx(0.5)
    seq = sequence_logprobs(logits, targets, mask)
    assert seq.shape == (1,)
    assert float(seq[0]) == pytest.approx(-math.log(4.0) + math.log(3.0 / 5.0), rel=1e-6)


def test_sft_loss_all_masked_is_finite():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    targets = jnp.zeros((2, 3), jnp.int32)
    mask = jnp.zeros((2, 3), bool)
    loss, metrics = sft_loss(logits, targets, mask)
    grad = jax.grad(lambda lg: sft_loss(lg, targets, mask)[0])(logits)
    assert float(loss) == 0.0 and float(metrics["ntokens"]) == 0.0
    assert bool(jnp.all(grad == 0))


def test_token_logprobs_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, size=(2, 4))
    expected = np.take_along_axis(np_log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    got = jax.jit(token_logprobs)(jnp.asarray(logits), jnp.asarray(targets))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_sequence_logprobs_sums_masked_tokens():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 6)).astype(np.float32)
    targets = rng.integers(0, 6, size=(3, 5))
    mask = rng.integers(0, 2, size=(3, 5)).astype(np.float32)
    per_tok = np.take_along_axis(np_log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    got = sequence_logprobs(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), (per_tok * mask).sum(-1), rtol=1e-5, atol=1e-5)


def test_bf16_logits_computed_in_fp32():
    rng = np.random.default_rng(2)
    logits32 = rng.normal(size=(2, 3, 11)).astype(np.float32) * 4
    logits16 = jnp.asarray(logits32, dtype=jnp.bfloat16)
    targets = jnp.asarray(rng.integers(0, 11, size=(2, 3)))
    mask = jnp.ones((2, 3))
    loss16, _ = jax.jit(sft_loss)(logits16, targets, mask)
    loss_ref, _ = sft_loss(logits16.astype(jnp.float32), targets, mask)
    assert loss16.dtype == jnp.float32
    assert token_logprobs(logits16, targets).dtype == jnp.float32
    assert float(loss16) == pytest.approx(float(loss_ref), rel=1e-6)
    grad = jax.grad(lambda lg: sft_loss(lg, targets, mask)[0])(logits16)
    assert grad.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grad)))


def _rco_inputs(seed: int, groups: int = 5, n: int = 4):
    rng = np.random.default_rng(seed)
    policy = rng.normal(size=(groups, n)) * 5 - 20
    ref = policy + rng.normal(size=(groups, n))
    cu = rng.choice([0.0, 0.1, 0.5, 0.8, 1.0], size=(groups, n))
    return policy, ref, cu


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_rco_loss_matches_numpy_unmasked(beta):
    policy, ref, cu = _rco_inputs(0)
    got = rco_loss(jnp.asarray(policy), jnp.asarray(ref), jnp.asarray(cu), beta)
    expected = np_rco(policy, ref, cu, beta, np.ones(policy.shape, bool))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_rco_loss_matches_numpy_masked_and_empty_group():
    policy, ref, cu = _rco_inputs(1)
    mask = np.array(
        [[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 0, 1]], dtype=bool
    )
    # Garbage in masked slots must not leak into the loss or the gradient.
    policy_bad = np.where(mask, policy, -np.inf)
    ref_bad = np.where(mask, ref, np.nan)
    args = (jnp.asarray(ref_bad), jnp.asarray(cu), 0.5, jnp.asarray(mask))
    got = jax.jit(rco_loss, static_argnums=3)(jnp.asarray(policy_bad), *args)
    expected = np_rco(policy, ref, cu, 0.5, mask)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    grad = jax.grad(rco_loss)(jnp.asarray(policy_bad), *args)
    assert bool(jnp.all(jnp.isfinite(grad)))
    assert bool(jnp.all(grad[~mask] == 0))


def test_rco_loss_all_masked_is_zero():
    z = jnp.zeros((2, 3))
    mask = jnp.zeros((2, 3), bool)
    assert float(rco_loss(z, z, z, 1.0, mask)) == 0.0
    assert bool(jnp.all(jax.grad(rco_loss)(z, z, z, 1.0, mask) == 0))


def test_rco_gradient_analytic_and_zero_at_optimum():
    policy, ref, cu = _rco_inputs(2, groups=3, n=4)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    beta = 0.5
    s = cu / beta
    log_z = np.array(
        [np.log(np.exp(s[g][mask[g]]).mean()) if mask[g].any() else 0.0 for g in range(3)]
    )
    # d loss / d pi_gi = residual_gi / (n_g * number of non-empty groups).
    residual = policy - ref + log_z[:, None] - s
    n_g = np.maximum(mask.sum(-1, keepdims=True), 1)
    n_groups = 2  # the third group has no valid critique
    expected = np.where(mask, residual / n_g / n_groups, 0.0)
    grad = jax.grad(rco_loss)(
        jnp.asarray(policy), jnp.asarray(ref), jnp.asarray(cu), beta, jnp.asarray(mask)
    )
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-5)

    # At pi - ref = CU/beta - log Z the loss and its gradient vanish.
    optimum = ref - log_z[:, None] + s
    args = (jnp.asarray(ref), jnp.asarray(cu), beta, jnp.asarray(mask))
    assert float(rco_loss(jnp.asarray(optimum), *args)) == pytest.approx(0.0, abs=1e-8)
    grad0 = jax.grad(rco_loss)(jnp.asarray(optimum), *args)
    np.testing.assert_allclose(np.asarray(grad0), 0.0, atol=1e-5)


def test_dpo_loss_matches_numpy():
    rng = np.random.default_rng(3)
    pc, pr, rc, rr = (rng.normal(size=6) * 3 - 30 for _ in range(4))
    beta = 0.2
    margin = beta * ((pc - rc) - (pr - rr))
    expected = np.mean(np.log1p(np.exp(-margin)))
    loss, metrics = jax.jit(dpo_loss, static_argnums=4)(
        *(jnp.asarray(a) for a in (pc, pr, rc, rr)), beta
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["reward_accuracy"]) == pytest.approx(np.mean(margin > 0))
    assert float(metrics["reward_margin"]) == pytest.approx(np.mean(margin), rel=1e-5)
    # A large margin stays finite (softplus, not log(sigmoid)).
    big, _ = dpo_loss(jnp.array([0.0]), jnp.array([1e4]), jnp.array([0.0]), jnp.array([0.0]), 1.0)
    assert float(big) == pytest.approx(1e4)


def test_a_target_tied_with_the_top_logit_counts_as_predicted():
    """Both SFT losses read accuracy off the max the softmax needs, not an argmax."""
    logits = jnp.zeros((1, 2, 4))
    targets, mask = jnp.array([[3, 0]]), jnp.ones((1, 2))
    assert float(sft_loss(logits, targets, mask)[1]["accuracy"]) == 1.0
    hidden = jnp.ones((1, 2, 3))
    _, metrics = sft_loss_chunked(lambda w, x: x @ w, jnp.zeros((3, 4)), hidden, targets, mask)
    assert float(metrics["accuracy"]) == 1.0


@pytest.mark.parametrize("chunk", [3, 4, 16])
def test_chunked_sft_loss_equals_unchunked(chunk):
    # T = 7 is no multiple of 3 or 4: the last chunk is padded; 16 > T is one chunk.
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(2, 7, 5)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(5, 11)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, (2, 7)), jnp.int32)
    mask = jnp.asarray(rng.random((2, 7)) < 0.7, jnp.float32)

    def head(x, w):
        return x @ w

    def full(x, w):
        return sft_loss(head(x, w), targets, mask)

    def chunked(x, w):
        return sft_loss_chunked(lambda p, h: head(h, p), w, x, targets, mask, chunk=chunk)

    (loss, aux), grads = jax.value_and_grad(full, argnums=(0, 1), has_aux=True)(hidden, kernel)
    chunked = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))
    (closs, caux), cgrads = chunked(hidden, kernel)
    assert float(closs) == pytest.approx(float(loss), rel=1e-6)
    assert float(caux["accuracy"]) == float(aux["accuracy"])
    assert float(caux["ntokens"]) == float(aux["ntokens"])
    for got, want in zip(cgrads, grads, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
