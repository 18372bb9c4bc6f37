"""make_agent: every agent has its own Sampler and tokenizer; compiled programs are jit's own,
shared by every agent of one architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from critique_jax.config import ConfigError, ModelSpec
from critique_jax.models.config import preset
from critique_jax.pipelines.loading import LoadedModel, init_sharded_params
from critique_jax.pipelines.roles import CriticSpec, OracleCritic, load_roles, make_agent
from critique_jax.sampling import SamplingParams, engine

CFG = preset("demo")
GREEDY = SamplingParams(max_new_tokens=3, temperature=0.0)


def save_tokenizer(out: Path, words: list[str]) -> Path:
    vocab = {w: i for i, w in enumerate(["[UNK]", "<eos>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>")
    tok.save_pretrained(str(out))
    return out


def agent_of(directory: Path, params=None):
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    return make_agent(LoadedModel(CFG, params, tokenizer))


def cache_sizes() -> tuple[int, int]:
    return engine.prefill._cache_size(), engine.decode._cache_size()


def test_agents_of_one_architecture_share_compiled_programs(tmp_path):
    params = init_sharded_params(CFG, 0, None)
    words = save_tokenizer(tmp_path / "a", ["two", "plus", "three"])
    first = agent_of(words, params)
    first.chat([[{"role": "user", "content": "two plus three"}]], GREEDY)
    compiled = cache_sizes()
    # A reloaded tokenizer, another tokenizer: new Samplers, the same programs.
    for other in (agent_of(words, params), agent_of(save_tokenizer(tmp_path / "b", ["x"]), params)):
        assert other.sampler is not first.sampler
        other.chat([[{"role": "user", "content": "two plus three"}]], GREEDY)
        assert cache_sizes() == compiled


def test_an_agent_decodes_with_its_own_tokenizer(tmp_path):
    base = agent_of(save_tokenizer(tmp_path / "a", ["two", "plus", "three"]))
    other = agent_of(save_tokenizer(tmp_path / "b", ["two", "plus", "four"]))
    assert base.sampler.decode([4]) == "three" and other.sampler.decode([4]) == "four"


def test_critic_spec_and_load_roles_with_an_oracle():
    with pytest.raises(ConfigError, match="exactly one"):
        CriticSpec(model=ModelSpec(preset="demo"), oracle="demo")
    with pytest.raises(ConfigError, match="unknown"):
        CriticSpec(oracle="nope")
    actor, critic = load_roles(None, CriticSpec(oracle="demo"), [])
    assert actor is None and isinstance(critic, OracleCritic)
    assert load_roles(None, None, []) == (None, None)
