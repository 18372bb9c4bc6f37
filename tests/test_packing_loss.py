"""Packing is exact: a tiny random model scores each sequence the same packed or alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from critique_jax.data.batching import Example, pack_examples, pad_batch
from critique_jax.losses import sft_loss, token_logprobs
from critique_jax.models import Transformer, init_params, preset

SEQ_LEN = 24


def _examples() -> list[Example]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(7):
        p, c = int(rng.integers(2, 7)), int(rng.integers(2, 6))
        tokens = [10 + i] + rng.integers(20, 256, size=p + c - 1).tolist()  # unique first token
        out.append(Example(tokens, [0] * p + [1] * c))
    return out


def _per_segment_logprobs(rows, logits) -> dict[tuple[int, ...], float]:
    """sum of target log-probs of each segment, keyed by the segment's input tokens."""
    lp = np.asarray(token_logprobs(logits, jnp.asarray(rows["targets"]))) * rows["loss_mask"]
    out = {}
    for r in range(rows["inputs"].shape[0]):
        for s in set(rows["segment_ids"][r].tolist()) - {0}:
            sel = rows["segment_ids"][r] == s
            out[tuple(rows["inputs"][r, sel].tolist())] = float(lp[r, sel].sum())
    return out


def test_packed_and_padded_sequence_logprobs_agree():
    cfg = preset("tiny")
    params = init_params(cfg, jax.random.key(0))
    # Larger weights than the 0.02 init, so attention is far from uniform and any leak
    # across segments would show.
    params = jax.tree.map(lambda x: x * 10 if x.ndim > 1 else x, params)
    model = Transformer(cfg)
    apply = jax.jit(lambda tokens, pos, seg: model.apply({"params": params}, tokens, pos, seg))

    exs = _examples()
    packed = pack_examples(exs, SEQ_LEN, pad_id=0)
    padded = pad_batch(exs, SEQ_LEN, pad_id=0)
    assert packed["inputs"].shape[0] < padded["inputs"].shape[0]

    def run(rows, use_segments=True):
        seg = jnp.asarray(rows["segment_ids"]) if use_segments else None
        return apply(jnp.asarray(rows["inputs"]), jnp.asarray(rows["positions"]), seg)

    packed_logits, padded_logits = run(packed), run(padded, use_segments=False)
    got = _per_segment_logprobs(packed, packed_logits)
    want = _per_segment_logprobs(padded, padded_logits)
    assert got.keys() == want.keys() and len(got) == len(exs)
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-4, atol=1e-4)

    def loss(rows, logits):
        return float(sft_loss(logits, jnp.asarray(rows["targets"]), rows["loss_mask"])[0])

    assert abs(loss(packed, packed_logits) - loss(padded, padded_logits)) < 1e-4

    # The check has teeth: without segment ids, packed sequences attend to their neighbours.
    leaky = _per_segment_logprobs(packed, run(packed, use_segments=False))
    assert max(abs(leaky[k] - want[k]) for k in want) > 1e-2
