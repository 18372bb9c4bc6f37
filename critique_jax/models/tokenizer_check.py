"""Is a tokenizer the model's own? A foreign one whose ids fit the embedding samples fluent
garbage with no error, so every pairing (`models.hf.load_tokenizer`) is checked here.

Two signs give a foreign tokenizer away without knowing where it came from:
- config.json's eos/bos ids must be special (or added) tokens of the tokenizer: a model's
  stop and start tokens are its tokenizer's specials, and another tokenizer has ordinary
  text (or nothing) at those ids;
- the tokenizer must fill the embedding up to the padding real models use: Llama 3 and
  SmolLM2 have exactly as many rows as tokens, Qwen2.5 151936 rows for 151665 tokens (7B:
  152064). `PADDING_SLACK` allows that and more; demo-sized models (a few hundred rows)
  always pass, since a demo tokenizer built from few texts may not fill its vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from critique_jax.errors import UserError
from critique_jax.models.config import ModelConfig

# Rows an embedding may have beyond its own tokenizer: at least this many, or 1/32 of them.
PADDING_SLACK = 1024


class TokenizerMismatch(UserError):
    """A tokenizer that is not the one its model was trained with."""


def padding_slack(vocab_size: int) -> int:
    return max(PADDING_SLACK, vocab_size // 32)


def special_ids(tokenizer: Any) -> set[int]:
    """The ids of the tokenizer's special and added tokens (eos, bos, chat markers...)."""
    ids = set(getattr(tokenizer, "all_special_ids", []))
    ids.update(getattr(tokenizer, "added_tokens_decoder", {}))
    return ids


def config_ids(cfg: ModelConfig) -> dict[str, int]:
    """config.json's special ids by name (eos_token_id may be a list); none for presets."""
    eos = cfg.eos_token_id
    eos_ids = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
    named = {f"eos_token_id {i}": i for i in eos_ids}
    if cfg.bos_token_id is not None:
        named[f"bos_token_id {cfg.bos_token_id}"] = cfg.bos_token_id
    return named


def mismatches(tokenizer: Any, cfg: ModelConfig) -> list[str]:
    """Why `tokenizer` cannot be `cfg`'s own, in words (empty when nothing says so)."""
    n, specials = len(tokenizer), special_ids(tokenizer)
    found = [
        f"the model's {name} is {'not a special token' if i < n else 'past the end'} of the "
        f"tokenizer"
        for name, i in config_ids(cfg).items()
        if i not in specials
    ]
    if cfg.vocab_size - n > padding_slack(cfg.vocab_size):
        found.append(
            f"the tokenizer has {n} tokens for an embedding of {cfg.vocab_size} rows (a model's "
            f"own tokenizer leaves at most {padding_slack(cfg.vocab_size)} rows of padding)"
        )
    return found


def check_own_tokenizer(
    tokenizer: Any, cfg: ModelConfig, tokenizer_dir: str | Path, model: str | Path
) -> None:
    """Raise `TokenizerMismatch` naming both paths when `tokenizer` is not `model`'s own."""
    found = mismatches(tokenizer, cfg)
    if found:
        raise TokenizerMismatch(
            f"the tokenizer in {tokenizer_dir} is not the one model {model} was trained with: "
            f"{'; '.join(found)}. Fix: pair the model with its own tokenizer (in a config, "
            "set model.tokenizer to it or leave it unset to use the one saved with the "
            "checkpoint; in an HF directory, save it there with save_pretrained)"
        )
