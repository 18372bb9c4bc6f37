"""Prefix reuse (a prefix shared by several prompts prefilled once) changes no sample."""

from __future__ import annotations

import numpy as np
import pytest

from critique_jax.sampling import Buckets, Sampler, SamplingParams, prepare_calls
from critique_jax.sampling.prefixes import cluster_prompts, common_prefix_len
from tests.test_sampling import sampling_model

SYSTEM = [40, 41, 42, 43]  # shared by every prompt, too short to be worth sharing alone
X0 = [5, 9, 2, 7, 7, 1, 3, 8, 8, 6, 4, 2]
X1 = [11, 3, 3, 9, 1, 2, 2, 5, 6, 7, 10, 12]
# Refinement-like prompts: (system, x, y0) shared by the critiques of one group, each with
# its own critique tail of a different length; plus an unrelated prompt.
PROMPTS = [
    SYSTEM + X0 + [20, 21],
    SYSTEM + X0 + [22, 23, 24, 25, 26],
    SYSTEM + X0 + [27],
    SYSTEM + X1 + [28, 29, 30],
    SYSTEM + X1 + [31, 32],
    [13, 14, 15],
]
# Power-of-two widths, for which these prompts' two-block prefill computes fewer slots.
PLAIN = Buckets(min_length=8, length_steps=1, max_batch=16, share_prefix=0)
SHARED = Buckets(min_length=8, length_steps=1, max_batch=16, share_prefix=6)
GREEDY = SamplingParams(max_new_tokens=5, temperature=0.0, stop_token_ids=())
SAMPLED = SamplingParams(
    max_new_tokens=5, temperature=1.0, top_k=20, stop_token_ids=(), n=2, seed=7
)


@pytest.fixture(scope="module")
def model():
    return sampling_model()


def test_common_prefix_and_clusters():
    assert common_prefix_len([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2
    ids = cluster_prompts(PROMPTS, min_shared=6, max_size=16)
    assert ids[0] == ids[1] == ids[2]
    assert ids[3] == ids[4] != ids[0]
    assert ids[5] not in (ids[0], ids[3])
    # The system text alone (4 tokens) is below the threshold: no cluster at all.
    assert len(set(cluster_prompts(PROMPTS, min_shared=17, max_size=16))) == len(PROMPTS)


def test_shared_calls_compute_fewer_prefill_tokens(model):
    cfg, _ = model
    engine = Sampler(cfg, buckets=SHARED).engine
    shared = prepare_calls(engine, PROMPTS, SAMPLED, SHARED)
    plain = prepare_calls(engine, PROMPTS, SAMPLED, PLAIN)
    assert all(c.shared is not None for c in shared)
    assert sum(c.prefill_tokens for c in shared) < sum(c.prefill_tokens for c in plain)
    assert sum(c.prompt_tokens for c in shared) == sum(map(len, PROMPTS))


@pytest.mark.parametrize("sp", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_prefix_reuse_gives_the_same_tokens_and_logprobs(model, sp):
    cfg, params = model
    plain = Sampler(cfg, buckets=PLAIN).generate_ids(params, PROMPTS, sp)
    shared = Sampler(cfg, buckets=SHARED).generate_ids(params, PROMPTS, sp)
    for a_samples, b_samples in zip(plain, shared, strict=True):
        for a, b in zip(a_samples, b_samples, strict=True):
            assert a.token_ids == b.token_ids
            assert a.finish_reason == b.finish_reason
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
