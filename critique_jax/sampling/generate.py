"""Token-level generation: bucket a request into calls, run them, collect the samples."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from critique_jax.sampling.buckets import Buckets, PromptError, plan_calls
from critique_jax.sampling.engine import DecodeOut, Engine, Knobs, Params, Rows
from critique_jax.sampling.filters import FilterSpec
from critique_jax.sampling.params import Completion, SamplingParams
from critique_jax.sampling.prefixes import (
    SharedPrefill,
    cluster_prompts,
    left_pad,
    plan_shared_prefill,
)

log = logging.getLogger(__name__)


def stop_array(stop_ids: Sequence[int]) -> np.ndarray:
    """Stop ids padded with -1 (never a token) to 8 or the next power of two: one compiled
    shape for every usual request."""
    size = max(8, 1 << max(0, len(stop_ids) - 1).bit_length())
    out = np.full((size,), -1, np.int32)
    out[: len(stop_ids)] = stop_ids
    return out


@dataclass(frozen=True)
class CallInputs:
    """Host arrays of one compiled call: the left-padded prompt block and its decode rows."""

    tokens: np.ndarray  # [prompts, width] int32, left-padded
    token_mask: np.ndarray  # [prompts, width] bool
    fanout: int
    prompt_index: np.ndarray  # [rows] int32 (-1: padding row)
    sample_index: np.ndarray  # [rows] int32
    active: np.ndarray  # [rows] bool
    prompts: np.ndarray  # [prompts] int32: request index of each prompt slot (-1: padding)
    shared: SharedPrefill | None = None  # prefill in two blocks (see `sampling.prefixes`)

    @property
    def prefill_tokens(self) -> int:
        """Token slots the prefill computes (padding included)."""
        return self.tokens.size if self.shared is None else self.shared.tokens_computed

    @property
    def prompt_tokens(self) -> int:
        """Real prompt tokens of the call's real prompts."""
        return int(self.token_mask[self.prompts >= 0].sum())


def _order(lengths: list[int], clusters: list[int]) -> list[int]:
    """Prompts by cluster (clusters by their longest member), then by length: calls keep a
    cluster's prompts together and pad little."""
    longest: dict[int, int] = {}
    for c, n in zip(clusters, lengths, strict=True):
        longest[c] = max(longest.get(c, 0), n)
    return sorted(
        range(len(lengths)), key=lambda i: (longest[clusters[i]], clusters[i], lengths[i])
    )


def prepare_calls(
    engine: Engine, prompt_ids: Sequence[Sequence[int]], sp: SamplingParams, buckets: Buckets
) -> list[CallInputs]:
    """Validate the prompts and split them into bucketed calls; raises (a prompt too long
    for the largest bucket, a token outside the vocabulary) before any work is dispatched.
    Prompts sharing a prefix of at least `buckets.share_prefix` tokens go to the same call
    and prefill it once (not for sliding-window models, whose mask counts cache slots)."""
    vocab = engine.cfg.vocab_size
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise PromptError(f"prompt {i} has no tokens; every prompt needs at least one token.")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise PromptError(
                f"prompt {i} has token ids {bad[:5]} outside the vocabulary "
                f"[0, {vocab}); is the tokenizer the model's own?"
            )
    lengths = [len(ids) for ids in prompt_ids]
    model_max = engine.cfg.max_position_embeddings
    longest = max(lengths, default=0)
    if longest + sp.max_new_tokens > model_max:
        log.warning(
            "a prompt of %d tokens + max_new_tokens=%d passes the model's context of %d "
            "positions (max_position_embeddings): tokens past it are generated at positions "
            "the model was not trained on",
            longest,
            sp.max_new_tokens,
            model_max,
        )
    share = buckets.share_prefix if engine.cfg.sliding_window is None else 0
    clusters = (
        cluster_prompts(prompt_ids, share, max(buckets.max_batch // sp.n, 1))
        if share
        else list(range(len(prompt_ids)))
    )
    calls = []
    for call in plan_calls(lengths, sp.n, buckets, _order(lengths, clusters)):
        width = buckets.length(max(lengths[p] for p in call.prompts if p >= 0), model_max)
        block = [prompt_ids[p] if p >= 0 else [0] for p in call.prompts]
        tokens, mask = left_pad(block, width)
        shared = None
        if share:
            # A padding slot is a cluster of its own (ids below every real cluster's).
            ids = [clusters[p] if p >= 0 else -1 - k for k, p in enumerate(call.prompts)]
            shared = plan_shared_prefill(block, ids, width, buckets, share, model_max)
        prompts = np.asarray(call.prompts, np.int32)
        calls.append(
            CallInputs(tokens, mask, call.fanout, *call.row_indices(sp.n), prompts, shared)
        )
    return calls


def prefill_call(engine: Engine, params: Params, call: CallInputs, sp: SamplingParams):
    """Dispatch one call's prefill (the cache and the first logits, not waited for)."""
    if call.shared is None:
        return engine.prefill(params, call.tokens, call.token_mask, call.fanout)
    return engine.prefill_shared(params, call.shared, call.token_mask, call.fanout)


def knobs(sp: SamplingParams, stop_ids: Sequence[int]) -> Knobs:
    """The request's traced sampling values, as host arrays."""
    return Knobs(
        stop_ids=stop_array(stop_ids),
        seed=np.int32(sp.seed),
        temperature=np.float32(1.0 if sp.greedy else sp.temperature),
        top_p=np.float32(sp.top_p),
        min_p=np.float32(sp.min_p),
    )


# One call's decode output in pieces: each piece's rows (their index in the call's batch,
# -1 for padding) and its outputs; a later piece's rows supersede the earlier ones.
Pieces = list[tuple[np.ndarray, DecodeOut]]


def decode_call(
    engine: Engine,
    params: Params,
    prefilled,
    call: CallInputs,
    sp: SamplingParams,
    stop_ids: Sequence[int],
    buckets: Buckets,
) -> Pieces:
    """Decode one call from its `prefill_call` output.

    Rows finish at different steps, and a finished row still costs its share of every step
    after. So once at most half the rows are live (and the batch can halve to at least
    `buckets.compact_to` rows), the loop returns, the live rows are gathered into a batch
    of half the size, and decoding goes on with those. A row's samples do not depend on the
    batch it runs in (its random stream is keyed by prompt and sample index). The cache
    starts with room for `buckets.slots` tokens per row; when the rows fill it, the loop
    returns too and the cache grows to the next size."""
    spec = FilterSpec.from_params(sp)
    max_new = sp.max_new_tokens
    placed = engine.place_knobs(knobs(sp, stop_ids))
    rows = Rows(call.prompt_index, call.sample_index, call.active)
    slots = buckets.slots(max_new)
    state = engine.start(prefilled, rows, placed, spec, max_new, slots)
    batch_rows = np.arange(len(call.active))
    pieces: Pieces = []
    while True:
        batch = len(batch_rows)
        floor = batch // 2 if buckets.compact_to and batch // 2 >= buckets.compact_to else 0
        state = engine.decode(params, state, placed, spec, max_new, floor)
        if not floor and slots == max_new:
            break
        done, lengths = engine.fetch((state.done, state.out.lengths))
        live = np.flatnonzero(~done)
        made = int(lengths[live].max()) if live.size else max_new  # a live row's step
        if made >= max_new:
            break
        if floor and live.size <= floor:
            size = buckets.batch(live.size, batch // 2)
            keep = np.zeros(size, np.int32)
            keep[: live.size] = live
            valid = np.arange(size) < live.size
            pieces.append((batch_rows, state.out))
            state = engine.compact(state, keep, valid)
            batch_rows = np.where(valid, batch_rows[keep], -1)
        if made > slots:  # every slot is filled: the last token fed was the slots-th
            grown = buckets.slots(max_new, made)
            state = engine.grow(state, grown - slots)
            slots = grown
    pieces.append((batch_rows, state.out))
    return pieces


def collect(
    engine: Engine, pending: Sequence[tuple[CallInputs, Pieces]], num_prompts: int, n: int
) -> list[list[Completion]]:
    """Fetch every call's output and arrange the samples by (prompt, sample) index."""
    results: list[list[Completion | None]] = [[None] * n for _ in range(num_prompts)]
    for call, pieces in pending:
        for batch_rows, out in pieces:
            out = engine.fetch(out)
            for i, row in enumerate(batch_rows):
                if row < 0 or not call.active[row]:
                    continue
                length = int(out.lengths[i])
                results[call.prompt_index[row]][call.sample_index[row]] = Completion(
                    token_ids=tuple(out.tokens[i, :length].tolist()),
                    logprobs=tuple(out.logprobs[i, :length].tolist()),
                    finish_reason="stop" if out.stopped[i] else "length",
                )
    return results  # type: ignore[return-value]


def generate_tokens(
    engine: Engine,
    params: Params,
    prompt_ids: Sequence[Sequence[int]],
    sp: SamplingParams,
    stop_ids: Sequence[int],
    buckets: Buckets,
) -> list[list[Completion]]:
    """n samples per prompt (outer list: prompt, inner: sample), text left None."""
    calls = prepare_calls(engine, prompt_ids, sp, buckets)
    params = engine.prepare(params)
    pending = []
    for call in calls:
        prefilled = prefill_call(engine, params, call, sp)
        pending.append((call, decode_call(engine, params, prefilled, call, sp, stop_ids, buckets)))
    return collect(engine, pending, len(prompt_ids), sp.n)
