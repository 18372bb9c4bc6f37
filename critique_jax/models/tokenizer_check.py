"""Is a tokenizer the model's own? A foreign one whose ids fit the embedding samples fluent
garbage with no error, so `models.hf.load_tokenizer` checks every pairing for two signs:
config.json's eos/bos ids must be special (or added) tokens of the tokenizer, and the
tokenizer must fill the embedding up to the padding real models use (Qwen2.5: 151936 rows for
151665 tokens; Llama 3, SmolLM2: none). Demo-sized models always pass the second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from critique_jax.errors import UserError
from critique_jax.models.config import ModelConfig


class TokenizerMismatch(UserError):
    """A tokenizer that is not the one its model was trained with."""


def padding_slack(vocab_size: int) -> int:
    """Rows an embedding may have beyond its own tokenizer: 1024, or 1/32 of them."""
    return max(1024, vocab_size // 32)


def mismatches(tokenizer: Any, cfg: ModelConfig) -> list[str]:
    """Why `tokenizer` cannot be `cfg`'s own, in words (empty when nothing says so)."""
    n = len(tokenizer)
    specials = set(getattr(tokenizer, "all_special_ids", []))
    specials.update(getattr(tokenizer, "added_tokens_decoder", {}))
    eos = cfg.eos_token_id
    named = {
        f"eos_token_id {i}": i
        for i in (() if eos is None else eos if isinstance(eos, tuple | list) else (eos,))
    }
    if cfg.bos_token_id is not None:
        named[f"bos_token_id {cfg.bos_token_id}"] = cfg.bos_token_id
    found = [
        f"the model's {name} is {'not a special token' if i < n else 'past the end'} of the "
        f"tokenizer"
        for name, i in named.items()
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
