"""Supervised fine-tuning on (messages, completion) examples: the core of every SFT stage.

Actor SFT, critic SFT, refinement SFT, self-training and self-talk all reduce to this: render
each example through the chat template, mask the loss to the completion, pack, and train on
the sharded engine. Records name their shape with `format` (`SFTData`, `load_sft_records`,
`examples_from_records`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from critique_jax.config import ConfigError, MeshConfig, OptimConfig, TrainConfig
from critique_jax.data.batching import BatchIterator, pack_examples, pad_batch, tokenize_example
from critique_jax.data.critique_format import CritiqueFormat
from critique_jax.data.loaders import (
    DataError,
    load_chat_records,
    load_mathcritique,
    read_records,
)
from critique_jax.data.prompts import (
    Messages,
    critique_messages,
    refine_messages,
    render_example,
    solve_messages,
)
from critique_jax.pipelines.loading import LoadedModel
from critique_jax.trainer import Trainer

log = logging.getLogger(__name__)

Example = tuple[Messages, str]  # (prompt messages, completion text)

# format -> (fields a record needs, how it becomes messages + completion given the critique
# format that critique prompts are written in)
FORMATS = {
    "solve": (
        ("question", "solution"),
        lambda r, cf: (solve_messages(r["question"]), r["solution"]),
    ),
    "critique": (
        ("question", "solution", "critique"),
        lambda r, cf: (critique_messages(r["question"], r["solution"], fmt=cf), r["critique"]),
    ),
    "refine": (
        ("question", "solution", "critique", "refinement"),
        lambda r, cf: (
            refine_messages(r["question"], r["solution"], r["critique"]),
            r["refinement"],
        ),
    ),
    "chat": (("messages",), lambda r, cf: (r["messages"][:-1], r["messages"][-1]["content"])),
}


@dataclass
class SFTData:
    """A file of SFT records and the shape they have (see `FORMATS`)."""

    path: str = ""
    format: str = "critique"  # solve | critique | refine | chat | mathcritique-critique | ...
    limit: int | None = None


def load_sft_records(data: SFTData) -> tuple[list[dict[str, Any]], list[str]]:
    """(records, their locations); `mathcritique-*` formats read MathCritique release files."""
    if not data.path:
        raise ConfigError("data.path is empty: point it at a JSONL/JSON file of records")
    if data.format.startswith("mathcritique-"):
        records = load_mathcritique(data.path)
        where = [f"{data.path} record {i}" for i in range(len(records))]
    elif data.format == "chat":
        records = [{"messages": m} for m in load_chat_records(data.path)]
        where = [f"{data.path} record {i}" for i in range(len(records))]
    else:
        pairs = read_records(data.path)
        records, where = [r for _, r in pairs], [loc for loc, _ in pairs]
    n = data.limit or len(records)
    return records[:n], where[:n]


def examples_from_records(
    records: Iterable[dict[str, Any]],
    fmt: str,
    locations: Sequence[str] | None = None,
    critique_format: CritiqueFormat = "verdict_first",
) -> list[Example]:
    """Turn data records into SFT examples; a bad record is named (file and line) with the fix.
    `critique` records are prompted with the instruction of `critique_format`, the format
    their critiques are written in."""
    if fmt not in FORMATS:
        raise DataError(f"data format {fmt!r} unknown; choose one of {sorted(FORMATS)}")
    fields, build = FORMATS[fmt]
    out = []
    for i, r in enumerate(records):
        where = locations[i] if locations is not None else f"record {i}"
        missing = [f for f in fields if f not in r]
        if missing:
            raise DataError(
                f"{where}: format {fmt!r} needs fields {list(fields)}"
                f" but {missing} are missing; fix the record or the data.format"
            )
        wrong = [
            f"{f} ({type(r[f]).__name__})"
            for f in fields
            if f != "messages" and not isinstance(r[f], str)
        ]
        if wrong:
            raise DataError(
                f"{where}: format {fmt!r} needs string fields {list(fields)} but "
                f"{', '.join(wrong)} are not strings; store them as JSON strings"
            )
        if fmt == "chat" and (not r["messages"] or r["messages"][-1]["role"] != "assistant"):
            raise DataError(
                f"{where}: a chat record must end with an assistant "
                "message (the completion to learn)"
            )
        out.append(build(r, critique_format))
    return out


def build_rows(
    tokenizer: Any, examples: Sequence[Example], seq_len: int, pack: bool = True
) -> dict[str, Any]:
    """Tokenize with the loss on completions only; pack several examples per row or pad."""
    tokenized = [
        tokenize_example(tokenizer, *render_example(tokenizer, messages, completion), add_eos=True)
        for messages, completion in examples
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return (pack_examples if pack else pad_batch)(tokenized, seq_len, pad_id)


def finetune(
    model: LoadedModel,
    examples: Sequence[Example],
    train: TrainConfig,
    optim: OptimConfig,
    mesh: MeshConfig | None = None,
    run_dir: str | Path | None = None,
    seed: int = 0,
) -> Any:
    """Train `model` on `examples` for train.steps; returns the trained params.

    `model.params` are consumed (their buffers are donated to the first step): keep a copy
    first when the starting point is still needed, e.g. as an RCO/DPO reference.

    With a run_dir the run checkpoints and resumes there (a killed stage continues from its
    last checkpoint with the same data order).
    """
    if model.tokenizer is None:
        raise ConfigError("fine-tuning needs a tokenizer: set model.tokenizer (or model.path)")
    rows = build_rows(model.tokenizer, examples, train.seq_len, train.pack)
    n_rows = len(rows["inputs"])
    batch = train.batch_size
    if n_rows < batch:  # small datasets (demo, unit tests): repeat rows to fill one batch
        reps = -(-batch // n_rows)
        rows = {k: v.repeat(reps, axis=0) for k, v in rows.items()}
    log.info(
        "fine-tuning on %d examples in %d rows of %d tokens", len(examples), n_rows, train.seq_len
    )
    trainer = Trainer(
        model.cfg, train, optim, mesh, run_dir=run_dir, params=model.params, seed=seed
    )
    batches = BatchIterator(rows, batch, seed, jax.process_index(), jax.process_count())
    try:
        trainer.fit(batches)
        return trainer.state.params
    finally:
        trainer.close()
