"""Shape buckets and the split of a request into compiled calls.

Every distinct (batch, prompt length) shape is a new XLA program, so both are rounded up to
a few sizes above a floor, capped at a maximum: batches to powers of two, prompt lengths to
`length_steps` sizes per octave (2: 256, 384, 512, 768, ...), since every padded slot of a
prompt is computed by the prefill and read by every decode step. A request with more rows
than the largest batch is split into several calls (never rejected); a prompt longer than
the largest length bucket is an error, raised before anything runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from critique_jax.errors import UserError


class PromptError(UserError):
    """A prompt the model cannot take (empty, too long, token ids outside its vocabulary)."""


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _round_up(n: int, steps: int) -> int:
    """The smallest size >= n of the form 2^k * (1 + j / steps), 0 <= j < steps."""
    top = _next_pow2(n)
    step = max(top // 2 // steps, 1)
    return min(top, top // 2 + -(-(n - top // 2) // step) * step)


@dataclass(frozen=True)
class Buckets:
    """min_length/max_length: prompt-length buckets (max_length None = the model's maximum
    context). length_steps: prompt-length buckets per octave (1: powers of two; more pad
    less and compile more programs). min_batch: the smallest prompts-per-call bucket.
    max_batch: the most decode rows (prompts x samples) per call. multiple: every batch is a
    multiple of it (set to the number of data-parallel devices so rows split evenly over
    them). share_prefix: prompts of a call that share at least this many leading tokens
    prefill them once (0: never; see `sampling.prefixes`). compact_to: once at most half
    of a call's decode rows are live, they go on in a batch of half the size, down to
    this many rows (0: never; see `generate.decode_call`). decode_slots: a call's decode
    starts with cache room for max(decode_slots, max_new_tokens / 4) tokens per row and
    doubles it as the rows fill it, so a step attends over about the filled slots (0: room
    for max_new_tokens from the start); each size is a compiled decode program."""

    min_length: int = 32
    max_length: int | None = None
    length_steps: int = 2
    min_batch: int = 1
    max_batch: int = 64
    multiple: int = 1
    share_prefix: int = 32
    compact_to: int = 8
    decode_slots: int = 64

    def __post_init__(self) -> None:
        sizes = (self.min_length, self.length_steps, self.min_batch, self.max_batch, self.multiple)
        if min(sizes) < 1:
            raise ValueError(f"bucket sizes must be positive: {self}")
        if min(self.share_prefix, self.compact_to, self.decode_slots) < 0:
            raise ValueError(
                f"share_prefix, compact_to and decode_slots must be >= 0 (0 = off): {self}"
            )
        if self.max_length is not None and self.max_length < self.min_length:
            raise ValueError(f"max_length={self.max_length} < min_length={self.min_length}")
        if self.max_batch < self.min_batch:
            raise ValueError(f"max_batch={self.max_batch} < min_batch={self.min_batch}")

    def length(self, n: int, model_max: int) -> int:
        """The prompt-length bucket of a prompt block of `n` tokens."""
        cap = min(self.max_length or model_max, model_max)
        if n > cap:
            raise PromptError(
                f"prompt of {n} tokens is longer than the largest prompt bucket ({cap} tokens: "
                f"max_length={self.max_length}, model max_position_embeddings={model_max}). "
                "Shorten or truncate the prompt, or raise Buckets.max_length."
            )
        return min(max(_round_up(n, self.length_steps), self.min_length), cap)

    def slots(self, max_new: int, filled: int = 0) -> int:
        """The decode cache room per row once `filled` slots are filled (see decode_slots):
        the first size, doubled until a slot is free, at most `max_new`."""
        size = max(self.decode_slots, max_new // 4) if self.decode_slots else max_new
        while size <= filled:
            size *= 2
        return min(size, max_new)

    def batch(self, n: int, cap: int) -> int:
        """The batch bucket of `n` rows, at most `cap` (rounded up to `multiple`)."""
        b = min(max(_next_pow2(n), self.min_batch), max(cap, 1))
        return -(-b // self.multiple) * self.multiple


@dataclass(frozen=True)
class Call:
    """One prefill + decode: `prompts` (indices into the request, -1 = padding slot), each
    fanned out to `fanout` rows whose sample indices start at its `sample_starts` entry."""

    prompts: tuple[int, ...]
    fanout: int
    sample_starts: tuple[int, ...]

    def row_indices(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per decode row: prompt index, sample index, and whether the row is real."""
        prompt = np.repeat(np.asarray(self.prompts, np.int32), self.fanout)
        starts = np.repeat(np.asarray(self.sample_starts, np.int32), self.fanout)
        sample = starts + np.tile(np.arange(self.fanout, dtype=np.int32), len(self.prompts))
        active = (prompt >= 0) & (sample < n)
        return prompt, sample, active


def plan_calls(
    lengths: list[int], n: int, buckets: Buckets, order: Sequence[int] | None = None
) -> list[Call]:
    """Group prompts (in `order`, by default sorted by length so a call pads little) into
    calls of at most `max_batch` decode rows; when n alone exceeds max_batch, a prompt's
    samples are cut into chunks that fill the calls' slots. Rows are keyed by (prompt,
    sample) index, so the grouping does not change any sample."""
    if order is None:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if n > buckets.max_batch:
        slots = buckets.batch(1, 1)
        fanout = max(buckets.max_batch // slots, 1)
        chunks = [(p, s) for p in order for s in range(0, n, fanout)]
        chunks += [(-1, 0)] * (-len(chunks) % slots)
        return [
            Call(tuple(p for p, _ in group), fanout, tuple(s for _, s in group))
            for group in (chunks[i : i + slots] for i in range(0, len(chunks), slots))
        ]
    per_call = buckets.max_batch // n
    calls = []
    for start in range(0, len(order), per_call):
        chunk = tuple(order[start : start + per_call])
        size = buckets.batch(len(chunk), per_call)
        calls.append(Call(chunk + (-1,) * (size - len(chunk)), n, (0,) * size))
    return calls
