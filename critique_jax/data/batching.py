"""Tokenize (prompt, completion) pairs and lay them out as padded or packed model batches.

Batch layout: every array is [B, T] (T = seq_len); integer arrays are int32, `loss_mask`
float32. An example of n tokens fills one *segment* of n - 1 positions:

    inputs      = tokens[:-1]
    targets     = tokens[1:]        (the next token within the same segment)
    loss_mask   = example.loss_mask[1:]  (1 where `targets` is a supervised token)
    segment_ids = k                 (1, 2, ... per sequence in the row; 0 = padding)
    positions   = 0 .. n - 2        (restart at 0 in every segment)

Padding positions hold `pad_id` in inputs/targets, mask 0, segment 0, position 0. The
model's attention is causal and never crosses segments, so a packed row computes the same
per-sequence values as one sequence per row. The first token of an example is never a
target (nothing precedes it), which is why an example of n tokens needs only n - 1 slots.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class Example:
    """One token sequence; `loss_mask[i]` = 1 when tokens[i] is a predicted target
    (completion tokens and the final eos), 0 for prompt tokens."""

    tokens: list[int]
    loss_mask: list[int]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.loss_mask):
            raise ValueError(
                f"Example has {len(self.tokens)} tokens but {len(self.loss_mask)} mask "
                "entries; build both from the same token list."
            )


def _tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether `add_special_tokens=True` would start a sequence with BOS (Llama yes, Qwen no)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    return list(tokenizer("", add_special_tokens=True)["input_ids"])[:1] == [bos]


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a rendered prompt, exactly as training sees it and the sampler feeds it.

    Tokenized with `add_special_tokens=False` (a post-processor could otherwise append
    EOS/SEP); BOS is prepended only when the tokenizer would add one itself and the prompt
    does not already start with it (a chat template usually renders the BOS text).
    """
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if _tokenizer_adds_bos(tokenizer) and prompt_ids[:1] != [bos]:
        prompt_ids.insert(0, bos)
    return prompt_ids


def tokenize_example(tokenizer: Any, prompt: str, completion: str, add_eos: bool = True) -> Example:
    """Tokenize a rendered prompt and its completion into an `Example`.

    Prompt and completion are tokenized separately, so the loss mask boundary is exact and
    the prompt tokens are the same ones the sampler feeds before generating. Both are
    tokenized with `add_special_tokens=False` (a post-processor could otherwise append
    EOS/SEP to the prompt); BOS is then prepended to the prompt only when the tokenizer would
    add one itself and the prompt does not already start with it (a chat template usually
    renders the BOS text, which the tokenizer parses into the BOS id). With `add_eos`, the
    tokenizer's `eos_token_id` ends the completion unless it already does.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if add_eos:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError(
                "add_eos=True but the tokenizer has no eos_token_id; set tokenizer.eos_token "
                "or pass add_eos=False."
            )
        if completion_ids[-1:] != [eos]:
            completion_ids.append(eos)
    return Example(
        tokens=prompt_ids + completion_ids,
        loss_mask=[0] * len(prompt_ids) + [1] * len(completion_ids),
    )


@dataclass
class FitStats:
    """What `fit_examples` had to do to make examples fit in seq_len positions."""

    num_examples: int = 0
    truncated_prompt: int = 0  # prompt shortened from the left, completion kept whole
    truncated_completion: int = 0  # completion cut on the right (prompt already minimal)
    dropped: int = 0  # no supervised target left (or none to begin with)


def _fit_one(example: Example, seq_len: int, stats: FitStats) -> Example | None:
    tokens, mask = list(example.tokens), list(example.loss_mask)
    excess = len(tokens) - (seq_len + 1)
    if excess > 0:
        prompt_len = next((i for i, m in enumerate(mask) if m), len(mask))
        # Keep token 0 (BOS, an attention sink for Llama-family models) and drop the oldest
        # prompt tokens after it.
        cut = min(excess, max(prompt_len - 1, 0))
        if cut:
            tokens, mask = tokens[:1] + tokens[1 + cut :], mask[:1] + mask[1 + cut :]
            excess -= cut
        if excess > 0:
            tokens, mask = tokens[: seq_len + 1], mask[: seq_len + 1]
            stats.truncated_completion += 1
        else:
            stats.truncated_prompt += 1
    if not any(mask[1:]):
        stats.dropped += 1
        return None
    return Example(tokens, mask)


def fit_examples(examples: Sequence[Example], seq_len: int) -> tuple[list[Example], FitStats]:
    """Make every example fit in seq_len positions (seq_len + 1 tokens).

    Too-long examples lose prompt tokens from the left (after token 0) first, so the
    completion survives whole; only if the prompt is already down to one token is the
    completion cut on the right. Examples left with no supervised target are dropped. The
    counts are returned and logged as a warning when anything was truncated or dropped.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}.")
    stats = FitStats(num_examples=len(examples))
    fitted = [f for ex in examples if (f := _fit_one(ex, seq_len, stats)) is not None]
    if stats.truncated_prompt or stats.truncated_completion or stats.dropped:
        logger.warning(
            "fit to seq_len=%d: %d of %d examples had their prompt truncated, %d their "
            "completion truncated, %d were dropped (no target token left)",
            seq_len,
            stats.truncated_prompt,
            stats.num_examples,
            stats.truncated_completion,
            stats.dropped,
        )
    if not fitted:
        raise ValueError(
            f"No example has a target token within seq_len={seq_len} (out of "
            f"{len(examples)}); check that completions are not empty or raise seq_len."
        )
    return fitted, stats


def _empty_rows(num_rows: int, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    return {
        "inputs": np.full((num_rows, seq_len), pad_id, np.int32),
        "targets": np.full((num_rows, seq_len), pad_id, np.int32),
        "loss_mask": np.zeros((num_rows, seq_len), np.float32),
        "segment_ids": np.zeros((num_rows, seq_len), np.int32),
        "positions": np.zeros((num_rows, seq_len), np.int32),
    }


def _write_segment(
    rows: dict[str, np.ndarray], row: int, start: int, example: Example, segment: int
) -> None:
    n = len(example.tokens) - 1
    span = slice(start, start + n)
    rows["inputs"][row, span] = example.tokens[:-1]
    rows["targets"][row, span] = example.tokens[1:]
    rows["loss_mask"][row, span] = example.loss_mask[1:]
    rows["segment_ids"][row, span] = segment
    rows["positions"][row, span] = np.arange(n)


def pad_batch(examples: Sequence[Example], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """One example per row, right-padded to seq_len (see the module docstring for layout).

    Rows of dropped examples are omitted, so the row count can be below len(examples); use
    `fit_examples` first when rows must line up with the input examples.
    """
    fitted, _ = fit_examples(examples, seq_len)
    rows = _empty_rows(len(fitted), seq_len, pad_id)
    for i, ex in enumerate(fitted):
        _write_segment(rows, i, 0, ex, 1)
    return rows


class _FirstFit:
    """Max segment tree over row free space: the lowest-index row with room in O(log R)."""

    def __init__(self, num_rows: int, capacity: int) -> None:
        self.size = 1 << max(num_rows - 1, 0).bit_length()
        self.tree = [0] * (2 * self.size)
        self.tree[self.size : self.size + num_rows] = [capacity] * num_rows
        for i in range(self.size - 1, 0, -1):
            self.tree[i] = max(self.tree[2 * i], self.tree[2 * i + 1])

    def take(self, need: int) -> int:
        """Reserve `need` slots in the first row that has them; the caller ensures one does."""
        i = 1
        while i < self.size:
            i = 2 * i if self.tree[2 * i] >= need else 2 * i + 1
        self.tree[i] -= need
        row = i - self.size
        i //= 2
        while i:
            self.tree[i] = max(self.tree[2 * i], self.tree[2 * i + 1])
            i //= 2
        return row


def pack_examples(examples: Sequence[Example], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Greedy first-fit packing: each example, in order, goes into the first row with room.

    Each example keeps its tokens contiguous in one segment (never split across rows).
    """
    fitted, _ = fit_examples(examples, seq_len)
    first_fit = _FirstFit(len(fitted), seq_len)
    used: list[int] = [0] * len(fitted)
    segments: list[int] = [0] * len(fitted)
    placements = []
    for ex in fitted:
        row = first_fit.take(len(ex.tokens) - 1)
        segments[row] += 1
        placements.append((row, used[row], segments[row]))
        used[row] += len(ex.tokens) - 1
    num_rows = max(row for row, _, _ in placements) + 1
    rows = _empty_rows(num_rows, seq_len, pad_id)
    for ex, (row, start, segment) in zip(fitted, placements, strict=True):
        _write_segment(rows, row, start, ex, segment)
    logger.info(
        "packed %d examples into %d rows of %d (%.1f%% of positions used)",
        len(fitted),
        num_rows,
        seq_len,
        100.0 * sum(used) / (num_rows * seq_len),
    )
    return rows


class BatchIterator:
    """Endless, deterministic, resumable batches over a fixed set of rows.

    Epoch e visits the rows in the order `default_rng([seed, e]).permutation(num_rows)`, cut
    into `num_rows // batch_size` global batches (the remainder waits for a later epoch's
    shuffle). Each process receives its contiguous `batch_size // process_count` rows of
    the global batch, which is what `jax.make_array_from_process_local_data` expects. The
    position (`state()`) does not depend on the process count, so a run can resume on a
    different number of hosts and still see the same global batches.
    """

    def __init__(
        self,
        rows: dict[str, np.ndarray],
        batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ) -> None:
        if not rows:
            raise ValueError("BatchIterator got no arrays; pass the dict from pack_examples.")
        sizes = {k: len(v) for k, v in rows.items()}
        num_rows = next(iter(sizes.values()))
        if any(n != num_rows for n in sizes.values()):
            raise ValueError(f"Row arrays disagree on the number of rows: {sizes}.")
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(
                f"process_index={process_index} is not in [0, process_count={process_count})."
            )
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(
                f"batch_size={batch_size} must be a positive multiple of process_count="
                f"{process_count} so every process gets the same number of rows."
            )
        if num_rows < batch_size:
            raise ValueError(
                f"Only {num_rows} rows for batch_size={batch_size}; lower the batch size or "
                "add data (with packing, fewer rows than examples is normal)."
            )
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.num_rows = num_rows
        self.local_batch_size = batch_size // process_count
        self._local = slice(
            process_index * self.local_batch_size, (process_index + 1) * self.local_batch_size
        )
        self._epoch = 0
        self._batch = 0
        self._perm_epoch = -1
        self._perm = np.empty(0, np.int64)

    @property
    def batches_per_epoch(self) -> int:
        return self.num_rows // self.batch_size

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, self._epoch]).permutation(self.num_rows)
            self._perm_epoch = self._epoch
        return self._perm

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._batch >= self.batches_per_epoch:
            self._epoch, self._batch = self._epoch + 1, 0
        start = self._batch * self.batch_size
        idx = self._permutation()[start : start + self.batch_size][self._local]
        self._batch += 1
        return {k: v[idx] for k, v in self.rows.items()}

    def state(self) -> dict[str, int]:
        """Position of the next batch (JSON-serializable; saved with the checkpoint)."""
        return {
            "epoch": self._epoch,
            "batch_in_epoch": self._batch,
            "seed": self.seed,
            "num_rows": self.num_rows,
            "batch_size": self.batch_size,
        }

    def restore(self, state: dict[str, int]) -> None:
        """Continue from a `state()`; the data, seed and batch size must be the same."""
        for key in ("seed", "num_rows", "batch_size"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"Cannot resume the data iterator: saved {key}={state[key]} but this run "
                    f"has {key}={getattr(self, key)}. Resume with the same data and config, "
                    "or start a fresh run."
                )
        self._epoch, self._batch = int(state["epoch"]), int(state["batch_in_epoch"])
