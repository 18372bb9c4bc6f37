"""Token-level generation: bucket a request into calls, run them, collect the samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from critique_jax.sampling.buckets import Buckets, plan_calls
from critique_jax.sampling.engine import DecodeOut, Engine, Params
from critique_jax.sampling.filters import FilterSpec
from critique_jax.sampling.params import Completion, SamplingParams


def stop_array(stop_ids: Sequence[int]) -> np.ndarray:
    """Stop ids padded with -1 (never a token) to 8 or the next power of two: one compiled
    shape for every usual request."""
    size = max(8, 1 << max(0, len(stop_ids) - 1).bit_length())
    out = np.full((size,), -1, np.int32)
    out[: len(stop_ids)] = stop_ids
    return out


def _left_pad(prompts: list[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((len(prompts), length), np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for row, ids in enumerate(prompts):
        tokens[row, length - len(ids) :] = ids
        mask[row, length - len(ids) :] = True
    return tokens, mask


@dataclass(frozen=True)
class CallInputs:
    """Host arrays of one compiled call: the left-padded prompt block and its decode rows."""

    tokens: np.ndarray  # [prompts, width] int32, left-padded
    token_mask: np.ndarray  # [prompts, width] bool
    fanout: int
    prompt_index: np.ndarray  # [rows] int32 (-1: padding row)
    sample_index: np.ndarray  # [rows] int32
    active: np.ndarray  # [rows] bool


def prepare_calls(
    engine: Engine, prompt_ids: Sequence[Sequence[int]], sp: SamplingParams, buckets: Buckets
) -> list[CallInputs]:
    """Validate the prompts and split them into bucketed calls; raises (a prompt too long
    for the largest bucket, a token outside the vocabulary) before any work is dispatched."""
    vocab = engine.cfg.vocab_size
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} has no tokens; every prompt needs at least one token.")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(
                f"prompt {i} has token ids {bad[:5]} outside the vocabulary "
                f"[0, {vocab}); is the tokenizer the model's own?"
            )
    lengths = [len(ids) for ids in prompt_ids]
    model_max = engine.cfg.max_position_embeddings
    calls = []
    for call in plan_calls(lengths, sp.n, buckets):
        width = buckets.length(max(lengths[p] for p in call.prompts if p >= 0), model_max)
        block = [prompt_ids[p] if p >= 0 else [0] for p in call.prompts]
        tokens, mask = _left_pad(block, width)
        calls.append(CallInputs(tokens, mask, call.fanout, *call.row_indices(sp.n)))
    return calls


def run_call(
    engine: Engine, params: Params, call: CallInputs, sp: SamplingParams, stop_ids: Sequence[int]
) -> DecodeOut:
    """Dispatch one prefill + decode; returns device arrays without waiting for them.
    `params` must have gone through `engine.prepare`."""
    width = call.tokens.shape[1]
    prefilled = engine.prefill(
        params, call.tokens, call.token_mask, call.fanout, width + sp.max_new_tokens
    )
    return engine.decode(
        params,
        prefilled,
        FilterSpec.from_params(sp),
        sp.max_new_tokens,
        call.prompt_index,
        call.sample_index,
        call.active,
        stop_array(stop_ids),
        sp.seed,
        1.0 if sp.greedy else sp.temperature,
        sp.top_p,
        sp.min_p,
    )


def generate_tokens(
    engine: Engine,
    params: Params,
    prompt_ids: Sequence[Sequence[int]],
    sp: SamplingParams,
    stop_ids: Sequence[int],
    buckets: Buckets,
) -> list[list[Completion]]:
    """n samples per prompt (outer list: prompt, inner: sample), text left None.

    Every call is dispatched before any result is fetched, so host-side work overlaps with
    the device and there is one device-to-host transfer per call.
    """
    calls = prepare_calls(engine, prompt_ids, sp, buckets)
    params = engine.prepare(params)
    pending = [(call, run_call(engine, params, call, sp, stop_ids)) for call in calls]
    results: list[list[Completion | None]] = [[None] * sp.n for _ in prompt_ids]
    for call, out in pending:
        out = engine.fetch(out)
        for row in np.flatnonzero(call.active):
            n = int(out.lengths[row])
            results[call.prompt_index[row]][call.sample_index[row]] = Completion(
                token_ids=tuple(out.tokens[row, :n].tolist()),
                logprobs=tuple(out.logprobs[row, :n].tolist()),
                finish_reason="stop" if out.stopped[row] else "length",
            )
    return results  # type: ignore[return-value]
