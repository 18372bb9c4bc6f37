"""The jitted KV-cache sampler against full forwards, NumPy references and its own contract."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critique_jax.models import Transformer, init_params, preset
from critique_jax.models.transformer import init_cache
from critique_jax.sampling import Buckets, Completion, Sampler, SamplingParams
from critique_jax.sampling.buckets import plan_calls
from critique_jax.sampling.engine import Engine
from critique_jax.sampling.filters import (
    FilterSpec,
    filter_logits,
    inverse_cdf,
    sample_tokens,
)
from critique_jax.sampling.stops import apply_stop_strings

PROMPTS = [[5, 9, 2], [7, 1, 4, 4, 8, 3, 2, 9], [3], [12, 6, 6, 1, 2]]
GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0, stop_token_ids=())
SAMPLED = SamplingParams(
    max_new_tokens=6, temperature=1.0, top_k=20, stop_token_ids=(), n=2, seed=3
)


BUCKETS = Buckets(min_length=8, max_batch=16)


def sampling_model():
    """The tiny model these tests sample from (also built by sharded_worker.py on a mesh)."""
    cfg = preset("tiny")
    params = init_params(cfg, jax.random.key(0))
    # Sharper logits than the 0.02 init gives, so greedy choices are far from ties.
    params["embed"]["embedding"] = params["embed"]["embedding"] * 20.0
    return cfg, params


@pytest.fixture(scope="module")
def model():
    return sampling_model()


@pytest.fixture(scope="module")
def sampler(model):
    return Sampler(model[0], buckets=BUCKETS)


@pytest.fixture(scope="module")
def greedy(model, sampler):
    return sampler.generate_ids(model[1], PROMPTS, GREEDY)


@pytest.fixture(scope="module")
def sampled(model, sampler):
    return sampler.generate_ids(model[1], PROMPTS, SAMPLED)


def full_forward_logprobs(cfg, params, seqs: list[list[int]], width: int = 32) -> np.ndarray:
    """log softmax of a plain (uncached) forward; sequences right-padded to one width, which
    causal attention makes harmless and which keeps this to one compiled shape."""
    tokens = np.zeros((len(seqs), width), np.int32)
    for r, ids in enumerate(seqs):
        tokens[r, : len(ids)] = ids
    positions = jnp.broadcast_to(jnp.arange(width), tokens.shape)
    logits = Transformer(cfg).apply({"params": params}, jnp.asarray(tokens), positions)
    return np.asarray(jax.nn.log_softmax(logits, axis=-1))


def test_prefill_logits_equal_full_forward_for_left_padded_rows(model, sampler):
    cfg, params = model
    width = 8
    tokens = np.zeros((len(PROMPTS), width), np.int32)
    mask = np.zeros((len(PROMPTS), width), bool)
    for r, ids in enumerate(PROMPTS):
        tokens[r, width - len(ids) :], mask[r, width - len(ids) :] = ids, True
    # The shapes generate_ids uses for PROMPTS under GREEDY, so nothing extra compiles.
    engine = sampler.engine
    prefilled = engine.prefill(engine.prepare(params), tokens, mask, 1)
    last = prefilled.logits
    assert list(np.asarray(prefilled.lengths)) == [len(p) for p in PROMPTS]
    ref = full_forward_logprobs(cfg, params, PROMPTS)
    for r, ids in enumerate(PROMPTS):
        got = np.asarray(jax.nn.log_softmax(last[r]))
        np.testing.assert_allclose(got, ref[r, len(ids) - 1], atol=2e-5)


def test_extend_last_only_gives_each_rows_last_real_token(model):
    """Left-padded, right-padded and full rows: [B, 1, V] logits at the last True of the mask."""
    cfg, params = model
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    tokens = np.where(mask, np.arange(1, 16).reshape(3, 5), 0).astype(np.int32)
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int32)

    def run(last_only: bool) -> jax.Array:
        cache = init_cache(cfg, 3, 8)
        logits, _ = Transformer(cfg).apply(
            {"params": params},
            tokens,
            positions,
            mask,
            cache,
            last_only=last_only,
            method=Transformer.extend,
        )
        return logits

    full, last = jax.jit(lambda: (run(False), run(True)))()
    assert last.shape == (3, 1, cfg.vocab_size)
    for row, col in enumerate([4, 2, 4]):
        np.testing.assert_allclose(last[row, 0], full[row, col], atol=1e-5)


@pytest.mark.parametrize("sp", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_decode_tokens_and_logprobs_match_full_forward(model, greedy, sampled, sp):
    cfg, params = model
    results = greedy if sp is GREEDY else sampled
    seqs = [
        ids + list(c.token_ids)
        for ids, samples in zip(PROMPTS, results, strict=True)
        for c in samples
    ]
    refs = iter(full_forward_logprobs(cfg, params, seqs))
    for ids, samples in zip(PROMPTS, results, strict=True):
        assert len(samples) == sp.n
        for c in samples:
            assert c.finish_reason == "length" and c.num_tokens == sp.max_new_tokens
            steps = next(refs)[len(ids) - 1 : len(ids) - 1 + c.num_tokens]
            want = steps[np.arange(c.num_tokens), c.token_ids]
            np.testing.assert_allclose(c.logprobs, want, atol=1e-4)
            if sp.greedy:
                assert list(steps.argmax(-1)) == list(c.token_ids)


def test_stop_ids_end_rows_and_max_new_tokens_caps_the_rest(model, sampler, greedy):
    # Stop on the third greedy token of row 0 and the second of row 1: two stop ids at once.
    stops = (greedy[0][0].token_ids[2], greedy[1][0].token_ids[1])
    out = sampler.generate_ids(model[1], PROMPTS, GREEDY.replace(stop_token_ids=stops))
    for full, (c,) in zip(greedy, out, strict=True):
        ids = list(full[0].token_ids)
        first = next((i for i, t in enumerate(ids) if t in stops), None)
        if first is None:
            assert c.finish_reason == "length" and list(c.token_ids) == ids
        else:
            assert c.finish_reason == "stop" and list(c.token_ids) == ids[: first + 1]
            assert c.logprobs == full[0].logprobs[: first + 1]
    assert out[0][0].num_tokens <= 3 and out[1][0].num_tokens <= 2


def test_greedy_fanout_rows_are_identical(model, sampler, greedy):
    out = sampler.generate_ids(model[1], PROMPTS, GREEDY.replace(n=2))
    for samples, (single,) in zip(out, greedy, strict=True):
        assert all(s.token_ids == single.token_ids for s in samples)
        for s in samples:
            np.testing.assert_allclose(s.logprobs, single.logprobs, atol=1e-5)


def test_samples_do_not_depend_on_batch_composition_or_bucketing(model, sampled):
    params = model[1]
    # One call per prompt (batch bucket 2 = one prompt x 2 samples) in another length bucket
    # (16, not 8: other left padding): other companions, other shapes, the same samples.
    split = Sampler(model[0], buckets=Buckets(min_length=16, max_batch=2))
    alone = split.generate_ids(params, PROMPTS, SAMPLED)
    assert [[c.token_ids for c in s] for s in alone] == [[c.token_ids for c in s] for s in sampled]
    for a, b in zip(alone, sampled, strict=True):
        for ca, cb in zip(a, b, strict=True):
            np.testing.assert_allclose(ca.logprobs, cb.logprobs, atol=1e-5)
    # The two samples of a prompt, and the same prompt under another seed, differ.
    assert sampled[1][0].token_ids != sampled[1][1].token_ids
    reseeded = split.generate_ids(params, PROMPTS[:1], SAMPLED.replace(seed=4))
    assert reseeded[0][0].token_ids != sampled[0][0].token_ids


def _staggered(reference: Sampler, params) -> tuple[SamplingParams, list]:
    """Sampling params whose stop ids end half of the rows at their second token and a
    quarter at their fourth (16 rows: 4 samples of 4 prompts), and `reference`'s samples."""
    sp = SAMPLED.replace(n=4, max_new_tokens=8)
    free = reference.generate_ids(params, PROMPTS, sp)
    stops = {c.token_ids[1] for s in free[:2] for c in s} | {c.token_ids[3] for c in free[2]}
    sp = sp.replace(stop_token_ids=tuple(stops))
    return sp, reference.generate_ids(params, PROMPTS, sp)


def _assert_same_samples(out, expected) -> None:
    for a, b in zip(out, expected, strict=True):
        for ca, cb in zip(a, b, strict=True):
            assert (ca.token_ids, ca.finish_reason) == (cb.token_ids, cb.finish_reason)
            np.testing.assert_allclose(ca.logprobs, cb.logprobs, atol=1e-5)


@pytest.mark.parametrize("unroll", [True, False])
def test_dropping_finished_rows_mid_decode_changes_no_sample(model, monkeypatch, unroll):
    """Once half the rows have stopped, the live ones go on in a smaller batch (`compact`,
    from the shared prompt segment and then from single-segment rows): same samples."""
    cfg, params = model
    never = Sampler(cfg, buckets=dataclasses.replace(BUCKETS, compact_to=0), unroll_layers=unroll)
    sp, expected = _staggered(never, params)
    compactions = []
    original = Engine.compact
    monkeypatch.setattr(
        Engine, "compact", lambda self, *a: compactions.append(len(a[1])) or original(self, *a)
    )
    compacting = Sampler(
        cfg, buckets=dataclasses.replace(BUCKETS, compact_to=2), unroll_layers=unroll
    )
    out = compacting.generate_ids(params, PROMPTS, sp)
    assert compactions[:2] == [8, 4]  # 16 rows -> 8 -> 4
    assert any(c.finish_reason == "length" for s in out for c in s)
    _assert_same_samples(out, expected)


@pytest.mark.parametrize("compact_to", [0, 2])
def test_growing_the_cache_mid_decode_changes_no_sample(model, monkeypatch, compact_to):
    """A decode that starts with room for 2 tokens per row and doubles it as the rows fill
    it (2 -> 4 -> 8 slots), alone and between compactions, samples what a decode with room
    for every token from the start samples."""
    cfg, params = model
    at_once = Sampler(cfg, buckets=dataclasses.replace(BUCKETS, compact_to=0, decode_slots=0))
    sp, expected = _staggered(at_once, params)
    grown = []
    original = Engine.grow
    monkeypatch.setattr(Engine, "grow", lambda self, *a: grown.append(a[1]) or original(self, *a))
    buckets = dataclasses.replace(BUCKETS, compact_to=compact_to, decode_slots=2)
    assert [buckets.slots(8, filled) for filled in (0, 2, 3, 4, 7)] == [2, 4, 4, 8, 8]
    out = Sampler(cfg, buckets=buckets).generate_ids(params, PROMPTS, sp)
    assert grown == [2, 4]  # 2 -> 4 -> 8 slots
    _assert_same_samples(out, expected)


def test_scanned_and_unrolled_layer_loops_sample_the_same(model, sampler, sampled):
    """CPU samplers unroll the layer loop on per-layer weight copies; accelerators scan."""
    assert sampler.engine.unstack  # this module's sampler runs unrolled (on CPU)
    scanned = Sampler(model[0], buckets=sampler.buckets, unroll_layers=False)
    out = scanned.generate_ids(model[1], PROMPTS, SAMPLED)
    for a, b in zip(out, sampled, strict=True):
        for ca, cb in zip(a, b, strict=True):
            assert ca.token_ids == cb.token_ids
            np.testing.assert_allclose(ca.logprobs, cb.logprobs, atol=1e-5)


def test_requests_larger_than_the_batch_bucket_are_split():
    calls = plan_calls([3, 1, 2, 5, 4], n=3, buckets=Buckets(max_batch=8))
    rows = [r for c in calls for r in zip(*c.row_indices(3), strict=True) if r[2]]
    assert sorted((int(p), int(s)) for p, s, _ in rows) == [
        (p, s) for p in range(5) for s in range(3)
    ]
    assert all(len(c.prompts) * c.fanout <= 8 for c in calls)
    many = plan_calls([1, 1], n=20, buckets=Buckets(max_batch=8))
    assert [(c.prompts, c.sample_starts) for c in many] == [
        ((p,), (s,)) for p in (0, 1) for s in (0, 8, 16)
    ]
    # Four data-parallel slots per call: the chunks of one prompt's samples share a call.
    wide = plan_calls([1, 1], n=20, buckets=Buckets(max_batch=8, multiple=4))
    assert [(c.prompts, c.sample_starts, c.fanout) for c in wide] == [
        ((0, 0, 0, 0), (0, 2, 4, 6), 2),
        ((0, 0, 0, 0), (8, 10, 12, 14), 2),
        ((0, 0, 1, 1), (16, 18, 0, 2), 2),
        ((1, 1, 1, 1), (4, 6, 8, 10), 2),
        ((1, 1, 1, 1), (12, 14, 16, 18), 2),
    ]
    odd = plan_calls([1], n=11, buckets=Buckets(max_batch=8, multiple=4))
    assert [(c.prompts, c.sample_starts) for c in odd] == [
        ((0, 0, 0, 0), (0, 2, 4, 6)),
        ((0, 0, -1, -1), (8, 10, 0, 0)),
    ]
    rows = [r for c in odd for r in zip(*c.row_indices(11), strict=True) if r[2]]
    assert sorted(int(s) for _, s, _ in rows) == list(range(11))


def test_bucket_shapes_and_errors():
    b = Buckets(min_length=16, max_length=256, max_batch=64, multiple=4)
    assert [b.length(n, 4096) for n in (1, 16, 17, 25, 200)] == [16, 16, 24, 32, 256]
    pow2 = dataclasses.replace(b, length_steps=1)
    assert [pow2.length(n, 4096) for n in (17, 100, 129)] == [32, 128, 256]
    assert b.length(60, model_max=64) == 64
    assert [b.batch(n, 64) for n in (1, 3, 5, 64)] == [4, 4, 8, 64]
    with pytest.raises(ValueError, match="longer than the largest prompt bucket"):
        b.length(257, 4096)


def test_too_long_prompt_raises_before_running(model, sampler):
    long = [1] * (model[0].max_position_embeddings + 1)
    with pytest.raises(ValueError, match="Shorten or truncate"):
        sampler.generate_ids(model[1], [PROMPTS[0], long], GREEDY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sampler.generate_ids(model[1], [[model[0].vocab_size]], GREEDY)


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-1),
        dict(top_p=0.0),
        dict(top_k=-2),
        dict(min_p=1.0),
        dict(n=0),
        dict(max_new_tokens=0),
        dict(stop_strings=("",)),
    ],
)
def test_sampling_params_validation(bad):
    with pytest.raises(ValueError, match="invalid SamplingParams"):
        SamplingParams(**bad)


# ----------------------------------------------------------------- filters, against NumPy


def np_allowed(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float
) -> np.ndarray:
    """Hugging Face's warper order written out in float64: temperature, top-k, top-p, min-p."""
    x = logits.astype(np.float64) / temperature
    allowed = np.ones_like(x, bool)
    if top_k:
        allowed &= x >= np.sort(x)[-top_k]
    if top_p < 1:
        order = np.argsort(-np.where(allowed, x, -np.inf))
        p = np.exp(np.where(allowed, x, -np.inf) - x.max())
        p = p / p.sum()
        before = np.cumsum(p[order]) - p[order]
        keep = order[before < top_p]
        mask = np.zeros_like(allowed)
        mask[keep] = True
        allowed &= mask
    if min_p:
        allowed &= x >= x.max() + np.log(min_p)
    return allowed


FILTER_CASES = [
    (1.0, 3, 1.0, 0.0),
    (1.0, 0, 0.6, 0.0),
    (0.7, 0, 1.0, 0.3),
    (0.7, 5, 0.8, 0.0),
    (1.5, 6, 0.9, 0.1),
    (1.0, 0, 1.0, 0.0),
]


@pytest.mark.parametrize("temperature,top_k,top_p,min_p", FILTER_CASES)
def test_filter_logits_allows_exactly_the_reference_set(temperature, top_k, top_p, min_p):
    logits = np.random.default_rng(0).normal(size=(32, 50)).astype(np.float32) * 2
    spec = FilterSpec.from_params(
        SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    )
    got = np.isfinite(
        np.asarray(filter_logits(jnp.asarray(logits), spec, temperature, top_p, min_p))
    )
    want = np.stack([np_allowed(row, temperature, top_k, top_p, min_p) for row in logits])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("temperature,top_k,top_p,min_p", FILTER_CASES)
def test_sampled_distribution_matches_the_filtered_target(temperature, top_k, top_p, min_p):
    probs = np.array([0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.03, 0.02])
    logits = np.log(probs).astype(np.float32)
    allowed = np_allowed(logits, temperature, top_k, top_p, min_p)
    target = np.where(allowed, np.exp(logits / temperature), 0.0)
    target = target / target.sum()
    draws = 40_000
    spec = FilterSpec.from_params(
        SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    )
    keys = jax.random.split(jax.random.key(0), draws)
    tokens = np.asarray(
        sample_tokens(keys, jnp.broadcast_to(logits, (draws, 8)), spec, temperature, top_p, min_p)
    )
    assert allowed[tokens].all(), "a token outside the allowed set was sampled"
    freq = np.bincount(tokens, minlength=8) / draws
    # Each cell within 5 standard errors of its target: a false alarm has odds ~1e-6.
    sigma = np.sqrt(target * (1 - target) / draws)
    assert np.all(np.abs(freq - target) <= 5 * sigma + 1e-12), (freq, target)


def test_greedy_is_argmax():
    logits = np.random.default_rng(1).normal(size=(4, 30)).astype(np.float32)
    logits[0, [4, 9]] = logits[0].max() + 1.0  # a tie: the first index wins, as in argmax
    keys = jax.random.split(jax.random.key(0), 4)
    got = sample_tokens(keys, jnp.asarray(logits), FilterSpec(greedy=True), 1.0, 1.0, 0.0)
    np.testing.assert_array_equal(np.asarray(got), logits.argmax(-1))
    assert int(got[0]) == 4


@pytest.mark.parametrize("vocab", [30, 300, 1000])
def test_inverse_cdf_picks_the_token_whose_interval_holds_u(vocab):
    """Against NumPy's cumulative sum over the whole row (the blocks, when there are
    several, must not change the answer), with u away from the interval edges."""
    rng = np.random.default_rng(vocab)
    logits = (rng.normal(size=(64, vocab)) * 3).astype(np.float32)
    logits[:, rng.random(vocab) < 0.3] = -np.inf
    u = rng.random(64).astype(np.float32)
    probs = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    cum = np.cumsum(probs / probs.sum(-1, keepdims=True), axis=-1)
    want = np.array([np.searchsorted(c, x, side="right") for c, x in zip(cum, u, strict=True)])
    edge = np.min(np.abs(cum - u[:, None]), axis=-1)
    assert (edge > 1e-5).sum() >= 48  # most rows are compared
    got = np.asarray(inverse_cdf(jnp.asarray(u), jnp.asarray(logits)))
    np.testing.assert_array_equal(got[edge > 1e-5], want[edge > 1e-5])
    assert np.isfinite(logits[np.arange(64), got]).all()


def test_inverse_cdf_never_picks_a_token_of_probability_zero():
    """u at the ends of [0, 1): rounding must not step onto the -inf tokens around the
    allowed ones, in the first, a middle and the last block."""
    logits = np.full((3, 1000), -np.inf, np.float32)
    logits[0, [0, 1]] = 0.0
    logits[1, [500, 700]] = [0.0, -30.0]  # the second has probability ~1e-13
    logits[2, [990, 998]] = 0.0
    for u in (0.0, np.nextafter(np.float32(1), np.float32(0))):
        got = np.asarray(inverse_cdf(jnp.full((3,), u, jnp.float32), jnp.asarray(logits)))
        assert np.isfinite(logits[np.arange(3), got]).all(), (u, got)


# ----------------------------------------------------------------- text level


def char_decode(ids) -> str:
    return "".join(chr(ord("a") + i) for i in ids)


def test_stop_strings_cut_text_and_keep_the_completing_token():
    ids = (0, 1, 2, 3, 4, 5)  # "abcdef"
    c = Completion(ids, tuple(-0.1 * i for i in range(6)), "length", char_decode(ids))
    out = apply_stop_strings(c, ("de", "f", "zz"), char_decode)
    assert out.text == "abc" and out.finish_reason == "stop"
    assert out.token_ids == (0, 1, 2, 3, 4) and out.logprobs == c.logprobs[:5]
    assert apply_stop_strings(c, ("zz",), char_decode) is c


@pytest.fixture(scope="module")
def text_sampler(tmp_path_factory):
    from critique_jax.data.demo_tokenizer import build_demo_tokenizer

    texts = ["Question: what is 12 plus 30? Answer: 42.\n" * 4, "The answer is 7.\n"]
    tok = build_demo_tokenizer(texts, str(tmp_path_factory.mktemp("tok") / "tok"), 384)
    cfg = preset("tiny", vocab_size=384)
    params = init_params(cfg, jax.random.key(1))
    # min_batch=2: one- and two-prompt requests share a compiled shape.
    return Sampler(cfg, tok, buckets=Buckets(min_length=32, min_batch=2, max_batch=8)), params


def test_text_api_chat_template_stop_tokens_and_strings(text_sampler):
    sampler, params = text_sampler
    tok = sampler.tokenizer
    assert sampler.default_stop_ids() == (tok.eos_token_id,)
    chat = [{"role": "user", "content": "what is 2 plus 3?"}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert sampler.encode(chat) == tok.encode(rendered, add_special_tokens=False)
    sp = SamplingParams(max_new_tokens=8, temperature=0.0, stop_token_ids=())
    (plain,), (from_chat,) = sampler.generate(params, ["The answer is", chat], sp)
    for c in (plain, from_chat):
        assert c.finish_reason == "length" and c.text == sampler.decode(c.token_ids)
    # A stop token is kept in token_ids but not in the text.
    stop_id = plain.token_ids[2]
    (early,) = sampler.generate(params, ["The answer is"], sp.replace(stop_token_ids=(stop_id,)))[0]
    first = plain.token_ids.index(stop_id)
    assert early.finish_reason == "stop" and early.token_ids == plain.token_ids[: first + 1]
    assert early.text == sampler.decode(plain.token_ids[:first])
    # A stop string taken from the greedy text itself: the text ends before it.
    assert len(plain.text) >= 3, plain
    stop = plain.text[1:3]
    (cut,) = sampler.generate(params, ["The answer is"], sp.replace(stop_strings=(stop,)))[0]
    assert cut.finish_reason == "stop" and cut.text == plain.text[: plain.text.find(stop)]
    assert stop in sampler.decode(cut.token_ids)
    assert stop not in sampler.decode(cut.token_ids[:-1])


# ----------------------------------------------------------------- sharded


def test_sharded_mesh_matches_single_device(sampled, subprocess_results):
    """data=2, fsdp=2, tensor=2 on 8 simulated CPU devices (sharded_worker.py), the decode
    cache growing on the mesh: the same samples as one device."""
    result = subprocess_results("sharded-single-host")
    sharded = [k for k in result if k.startswith("sample/") and k.endswith("/token_ids")]
    assert len(sampled) == len(PROMPTS) and len(sharded) == len(PROMPTS) * SAMPLED.n
    for r, row in enumerate(sampled):
        assert len(row) == SAMPLED.n
        for j, s in enumerate(row):
            assert list(s.token_ids) == result[f"sample/{r}/{j}/token_ids"].tolist()
            np.testing.assert_allclose(s.logprobs, result[f"sample/{r}/{j}/logprobs"], atol=1e-4)


def test_sliding_window_decode_matches_full_forward(model):
    """A window shorter than prompt + generation: the fanned-out decode masks prompt slots
    and its own slots by distance exactly as the training forward masks by position."""
    cfg, params = model
    cfg = cfg.replace(sliding_window=4)
    results = Sampler(cfg, buckets=BUCKETS).generate_ids(params, PROMPTS, SAMPLED)
    seqs = [ids + list(c.token_ids) for ids, cs in zip(PROMPTS, results, strict=True) for c in cs]
    refs = iter(full_forward_logprobs(cfg, params, seqs))
    for ids, samples in zip(PROMPTS, results, strict=True):
        for c in samples:
            steps = next(refs)[len(ids) - 1 : len(ids) - 1 + c.num_tokens]
            want = steps[np.arange(c.num_tokens), c.token_ids]
            np.testing.assert_allclose(c.logprobs, want, atol=1e-4)
