"""Tokenization, padding, packing, truncation and the resumable batch iterator."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from critique_jax.data.batching import (
    BatchIterator,
    Example,
    fit_examples,
    pack_examples,
    pad_batch,
    tokenize_example,
)

VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "a": 4, "b": 5, "c": 6, "Q:": 7, "A:": 8}


def make_tokenizer(with_bos: bool) -> PreTrainedTokenizerFast:
    """Whitespace WordLevel tokenizer; with_bos mimics Llama (BOS added), else Qwen (none)."""
    tk = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    if with_bos:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
        special["bos_token"] = "<s>"
    return PreTrainedTokenizerFast(tokenizer_object=tk, **special)


def test_tokenize_example_masks_prompt_and_adds_eos():
    tok = make_tokenizer(with_bos=True)
    ex = tokenize_example(tok, "Q: a b A:", "c a")
    assert ex.tokens == [1, 7, 4, 5, 8, 6, 4, 2]
    assert ex.loss_mask == [0, 0, 0, 0, 0, 1, 1, 1]
    # A rendered chat template that already starts with BOS does not get a second one.
    assert tokenize_example(tok, "<s> Q: a", "c").tokens == [1, 7, 4, 6, 2]
    # A completion that already ends with EOS keeps a single EOS; add_eos=False adds none.
    assert tokenize_example(tok, "Q:", "c </s>").tokens == [1, 7, 6, 2]
    assert tokenize_example(tok, "Q:", "c", add_eos=False).tokens == [1, 7, 6]


def test_tokenize_example_without_bos_tokenizer():
    tok = make_tokenizer(with_bos=False)
    ex = tokenize_example(tok, "Q: a", "b")
    assert ex.tokens == [7, 4, 5, 2]
    assert ex.loss_mask == [0, 0, 1, 1]
    tok.eos_token = None
    with pytest.raises(ValueError, match="eos_token_id"):
        tokenize_example(tok, "Q: a", "b")


def test_packed_row_hand_checked():
    a = Example([1, 7, 4, 6, 2], [0, 0, 0, 1, 1])  # 4 positions
    b = Example([1, 8, 5, 2], [0, 0, 1, 1])  # 3 positions
    rows = pack_examples([a, b], seq_len=8, pad_id=0)
    assert {k: v.dtype for k, v in rows.items()} == {
        "inputs": np.int32,
        "targets": np.int32,
        "loss_mask": np.float32,
        "segment_ids": np.int32,
        "positions": np.int32,
    }
    np.testing.assert_array_equal(rows["inputs"], [[1, 7, 4, 6, 1, 8, 5, 0]])
    np.testing.assert_array_equal(rows["targets"], [[7, 4, 6, 2, 8, 5, 2, 0]])
    np.testing.assert_array_equal(rows["loss_mask"], [[0, 0, 1, 1, 0, 1, 1, 0]])
    np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 1, 2, 2, 2, 0]])
    np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 3, 0, 1, 2, 0]])

    padded = pad_batch([a, b], seq_len=5, pad_id=0)
    np.testing.assert_array_equal(padded["inputs"], [[1, 7, 4, 6, 0], [1, 8, 5, 0, 0]])
    np.testing.assert_array_equal(padded["targets"], [[7, 4, 6, 2, 0], [8, 5, 2, 0, 0]])
    np.testing.assert_array_equal(padded["loss_mask"], [[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(padded["segment_ids"], [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(padded["positions"], [[0, 1, 2, 3, 0], [0, 1, 2, 0, 0]])


def test_first_fit_uses_earliest_row_with_room():
    # Positions needed: 5, 5, 3, 2 with seq_len 8 -> row 0: [5, 3], row 1: [5, 2].
    exs = [Example(list(range(10, 10 + n + 1)), [0] + [1] * n) for n in (5, 5, 3, 2)]
    rows = pack_examples(exs, seq_len=8, pad_id=0)
    np.testing.assert_array_equal(
        rows["segment_ids"], [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 2, 2, 0]]
    )
    assert rows["inputs"][0, 5] == 10 and rows["inputs"][1, 5] == 10


def _segments(rows: dict[str, np.ndarray]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Each segment back as (tokens, loss_mask over targets), from the batch arrays."""
    out = []
    for r in range(rows["inputs"].shape[0]):
        for s in set(rows["segment_ids"][r].tolist()) - {0}:
            sel = rows["segment_ids"][r] == s
            tokens = [*rows["inputs"][r, sel].tolist(), int(rows["targets"][r, sel][-1])]
            out.append((tuple(tokens), tuple(rows["loss_mask"][r, sel].astype(int).tolist())))
    return out


@pytest.mark.parametrize("builder", [pack_examples, pad_batch])
def test_every_target_token_kept_exactly_once(builder):
    rng = np.random.default_rng(0)
    exs = []
    for i in range(40):
        p, c = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        tokens = [100 + i] + rng.integers(4, 50, size=p + c - 1).tolist()  # unique first token
        exs.append(Example(tokens, [0] * p + [1] * c))
    rows = builder(exs, seq_len=12, pad_id=0)
    expected = sorted((tuple(e.tokens), tuple(e.loss_mask[1:])) for e in exs)
    assert sorted(_segments(rows)) == expected
    assert rows["loss_mask"].sum() == sum(sum(e.loss_mask[1:]) for e in exs)
    # targets are inputs shifted left by one wherever t and t+1 share a segment
    same = (rows["segment_ids"][:, 1:] == rows["segment_ids"][:, :-1]) & (
        rows["segment_ids"][:, 1:] > 0
    )
    assert np.all(rows["targets"][:, :-1][same] == rows["inputs"][:, 1:][same])
    if builder is pack_examples:
        assert rows["inputs"].shape[0] < len(exs)


def test_truncation_keeps_completion_then_cuts_right(caplog):
    long_prompt = Example([1, 7, 4, 5, 4, 5, 8, 6, 6, 2], [0] * 7 + [1] * 3)
    long_completion = Example([1, 7, 6, 6, 6, 6, 6, 2], [0, 0] + [1] * 6)
    no_target = Example([1, 7, 4], [0, 0, 0])
    with caplog.at_level(logging.WARNING, logger="critique_jax.data.batching"):
        fitted, stats = fit_examples([long_prompt, long_completion, no_target], seq_len=5)
    # Prompt cut from the left after token 0 (BOS); the completion survives whole.
    assert fitted[0] == Example([1, 5, 8, 6, 6, 2], [0, 0, 0, 1, 1, 1])
    # Prompt [1, 7] is already minimal: drop 7 as well, then cut the completion on the right.
    assert fitted[1] == Example([1, 6, 6, 6, 6, 6], [0, 1, 1, 1, 1, 1])
    assert len(fitted) == 2
    assert (stats.truncated_prompt, stats.truncated_completion, stats.dropped) == (1, 1, 1)
    assert "dropped" in caplog.text
    rows = pad_batch([long_prompt, long_completion, no_target], seq_len=5, pad_id=0)
    assert rows["inputs"].shape == (2, 5)
    with pytest.raises(ValueError, match="No example has a target"):
        pack_examples([no_target], seq_len=5, pad_id=0)


def _rows(n: int) -> dict[str, np.ndarray]:
    ids = np.arange(n, dtype=np.int32)[:, None]
    return {"inputs": np.repeat(ids, 3, axis=1), "loss_mask": np.ones((n, 3), np.float32)}


def _take(it: BatchIterator, k: int) -> list[np.ndarray]:
    return [next(it)["inputs"][:, 0].copy() for _ in range(k)]


def test_iterator_deterministic_epochs():
    a = _take(BatchIterator(_rows(10), 4, seed=3), 7)
    same_seed = _take(BatchIterator(_rows(10), 4, seed=3), 7)
    other_seed = _take(BatchIterator(_rows(10), 4, seed=4), 7)
    for x, y in zip(a, same_seed, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, other_seed, strict=True))
    # 10 rows / batch 4 -> 2 batches per epoch with no repeated row inside an epoch,
    # and a new shuffle each epoch.
    for e in range(3):
        assert len(set(np.concatenate(a[2 * e : 2 * e + 2]).tolist())) == 8
    assert not np.array_equal(np.concatenate(a[0:2]), np.concatenate(a[2:4]))


def test_iterator_resume_gives_identical_next_batches():
    it = BatchIterator(_rows(10), 4, seed=0)
    _take(it, 3)  # stop mid-epoch 1
    saved = json.loads(json.dumps(it.state()))
    expected = _take(it, 5)
    resumed = BatchIterator(_rows(10), 4, seed=0)
    resumed.restore(saved)
    for x, y in zip(_take(resumed, 5), expected, strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="saved seed=0"):
        BatchIterator(_rows(10), 4, seed=1).restore(saved)


def test_process_split_covers_global_batch():
    global_batches = _take(BatchIterator(_rows(12), 6, seed=5), 4)
    parts = [
        _take(BatchIterator(_rows(12), 6, seed=5, process_index=p, process_count=3), 4)
        for p in range(3)
    ]
    for step, g in enumerate(global_batches):
        local = [parts[p][step] for p in range(3)]
        assert all(len(x) == 2 for x in local)
        np.testing.assert_array_equal(np.concatenate(local), g)


def test_iterator_errors():
    with pytest.raises(ValueError, match="multiple of process_count"):
        BatchIterator(_rows(10), 5, seed=0, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="Only 3 rows"):
        BatchIterator(_rows(3), 4, seed=0)
