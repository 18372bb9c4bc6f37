"""make_agent's sampler cache: keyed by what a tokenizer is, not by which object holds it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from critique_jax.config import ConfigError, ModelSpec
from critique_jax.models.config import preset
from critique_jax.models.loading import LoadedModel
from critique_jax.pipelines.roles import (
    CriticSpec,
    OracleCritic,
    load_roles,
    make_agent,
    tokenizer_key,
)

CFG = preset("demo")


def save_tokenizer(out: Path, words: list[str], chat_template: str | None = None) -> Path:
    vocab = {w: i for i, w in enumerate(["[UNK]", "<eos>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>")
    tok.chat_template = chat_template
    tok.save_pretrained(str(out))
    return out


def agent_of(directory: Path):
    return make_agent(LoadedModel(CFG, None, AutoTokenizer.from_pretrained(str(directory))))


def test_reloading_a_tokenizer_reuses_the_compiled_sampler(tmp_path):
    words = save_tokenizer(tmp_path / "a", ["two", "plus", "three"])
    first, second = agent_of(words), agent_of(words)
    assert first.sampler is second.sampler
    # A copy saved beside another checkpoint is the same tokenizer too.
    copy = tmp_path / "copy"
    AutoTokenizer.from_pretrained(str(words)).save_pretrained(str(copy))
    assert agent_of(copy).sampler is first.sampler


def test_a_different_tokenizer_never_shares_a_sampler(tmp_path):
    base = agent_of(save_tokenizer(tmp_path / "a", ["two", "plus", "three"]))
    other_vocab = agent_of(save_tokenizer(tmp_path / "b", ["two", "plus", "four"]))
    other_order = agent_of(save_tokenizer(tmp_path / "c", ["plus", "two", "three"]))
    templated = agent_of(
        save_tokenizer(tmp_path / "d", ["two", "plus", "three"], "{{ messages[0].content }}")
    )
    samplers = {id(a.sampler) for a in (base, other_vocab, other_order, templated)}
    assert len(samplers) == 4
    assert len({tokenizer_key(a.tokenizer) for a in (base, other_vocab, templated)}) == 3


def test_the_sampler_key_includes_the_model_config(tmp_path):
    tok = AutoTokenizer.from_pretrained(str(save_tokenizer(tmp_path / "a", ["x"])))
    wider = preset("demo", num_layers=CFG.num_layers + 1)
    assert make_agent(LoadedModel(CFG, None, tok)).sampler is not (
        make_agent(LoadedModel(wider, None, tok)).sampler
    )
    assert tokenizer_key(None) is None


def test_critic_spec_and_load_roles_with_an_oracle():
    with pytest.raises(ConfigError, match="exactly one"):
        CriticSpec(model=ModelSpec(preset="demo"), oracle="demo")
    with pytest.raises(ConfigError, match="unknown"):
        CriticSpec(oracle="nope")
    actor, critic = load_roles(None, CriticSpec(oracle="demo"), [])
    assert actor is None and isinstance(critic, OracleCritic)
    assert load_roles(None, None, []) == (None, None)
