"""A model's tokenizer: loaded from its checkpoint and checked to be the model's own.

A foreign tokenizer whose ids fit the embedding samples fluent garbage with no error, so
`load_tokenizer` checks every pairing for two signs: config.json's eos/bos ids must be
special (or added) tokens of the tokenizer, and the tokenizer must fill the embedding up to
the padding real models use (Qwen2.5: 151936 rows for 151665 tokens; Llama 3, SmolLM2:
none). Demo-sized models always pass the second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from critique_jax.checkpoints.hf import CheckpointFormatError, resolve_checkpoint_dir
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


def load_tokenizer(
    path: str | Path, cfg: ModelConfig | None = None, model: str | Path | None = None
):
    """AutoTokenizer from `path`; with `cfg`, checks it is the own tokenizer of that model
    (`model`, named in errors; default: `path`, the tokenizer saved with the checkpoint)."""
    from transformers import AutoTokenizer

    directory = resolve_checkpoint_dir(path, "tokenizer directory")
    try:
        tok = AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds here
        raise CheckpointFormatError(
            f"no usable tokenizer in {directory} ({type(e).__name__}: {e}); save one there with "
            "tokenizer.save_pretrained(dir) or set model.tokenizer to another directory."
        ) from e
    if cfg is not None:
        check_vocab(tok, cfg)
        check_own_tokenizer(tok, cfg, directory, model or directory)
    return tok


def check_vocab(tokenizer: Any, cfg: ModelConfig) -> None:
    """Refuse a tokenizer whose ids would index past the model's embedding."""
    if len(tokenizer) > cfg.vocab_size:
        raise CheckpointFormatError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has only "
            f"{cfg.vocab_size} rows: token ids past {cfg.vocab_size - 1} would index out of "
            "range. Use the tokenizer saved with this checkpoint, or resize the embedding."
        )
