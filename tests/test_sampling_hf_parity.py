"""Greedy sampling is token-identical to transformers' `generate(do_sample=False)`."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tr = pytest.importorskip("transformers")

from critique_jax.checkpoints.hf import load_hf  # noqa: E402
from critique_jax.sampling import Buckets, Sampler, SamplingParams  # noqa: E402

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.15,  # peaked logits: greedy choices far from float ties, varied text
    bos_token_id=1,
    eos_token_id=3,
    pad_token_id=0,
)
FAMILIES = {
    "llama": lambda: tr.LlamaConfig(**COMMON, rope_theta=5e5, tie_word_embeddings=True),
    "qwen2": lambda: tr.Qwen2Config(**COMMON, tie_word_embeddings=False),
}
PROMPTS = [[1, 17, 42, 9, 88, 5, 61, 7, 30, 12, 99], [1, 5], [1, 70, 21, 33, 6], [1, 44, 44]]
NEW_TOKENS = 12


def hf_greedy(model, prompts: list[list[int]], eos: int) -> list[list[int]]:
    """Left-padded batch through HF generate; each row cut after its first eos."""
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :], mask[r, width - len(p) :] = p, 1
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            eos_token_id=eos,
            pad_token_id=0,
        )
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_matches_transformers_generate(family, tmp_path):
    torch.manual_seed(0)
    model = tr.AutoModelForCausalLM.from_config(FAMILIES[family]()).eval()
    model.save_pretrained(tmp_path)
    cfg, params = load_hf(tmp_path)
    want = hf_greedy(model, PROMPTS, eos=3)
    sampler = Sampler(cfg, buckets=Buckets(min_length=16))
    sp = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0, stop_token_ids=(3,))
    got = [samples[0] for samples in sampler.generate_ids(params, PROMPTS, sp)]
    assert [list(c.token_ids) for c in got] == want
    for c, w in zip(got, want, strict=True):
        assert c.finish_reason == ("stop" if w[-1] == 3 else "length")
    # The outputs are varied text, not one repeated token, so the comparison means something.
    assert len({t for w in want for t in w}) > 8
