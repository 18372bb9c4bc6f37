"""A small real tokenizer for the demo world: SentencePiece, wrapped as a Hugging Face fast one.

The demo model is trained from scratch, so it needs its own vocabulary: a SentencePiece
BPE model trained on demo texts, with digits split into single tokens (so arithmetic is
learnable digit by digit) but the first digit of a number joined to the space before it
("▁1", "2" for " 12": with a separate "▁" token, copying a number from the question means
looking two tokens back, which a tiny model learns slowly), byte fallback (any text
encodes, nothing becomes <unk>), and no text normalization (encode/decode is lossless,
newlines included). It is wrapped as a `PreTrainedTokenizerFast` and saved with
`save_pretrained`, so the rest of the library treats it exactly like a real model's
tokenizer: `AutoTokenizer.from_pretrained(out_dir)`.

Special tokens: `<unk>`, `<s>` (bos), `<pad>`, and the chat markers `<|system|>`, `<|user|>`,
`<|assistant|>`, `<|end|>`; eos is `<|end|>`, so generation stops at the end of a turn. Plain
`encode` adds no special tokens; the chat template starts with bos, so chat-rendered text
tokenizes the same whether it is rendered with `tokenize=True` or rendered to a string first.
A conversation renders as

    <s><|user|>\\n{content}<|end|><|assistant|>\\n{content}<|end|>

with no separator after `<|end|>`, so the prompt rendered with `add_generation_prompt=True`
is a token-level prefix of the full conversation and an assistant turn ends with eos.
"""

from __future__ import annotations

import io
import os
import shutil
import string
import tempfile
from collections.abc import Iterable

import sentencepiece as spm
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

UNK, BOS, PAD = "<unk>", "<s>", "<pad>"
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
EOS = "<|end|>"
SEED = 0

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('demo chat roles: system, user, assistant; got ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# Every printable ASCII character gets a token even if the training texts lack it, so prompt
# templates written later do not fall back to bytes for ordinary punctuation.
_REQUIRED_CHARS = "".join(c for c in string.printable if not c.isspace())
# "▁0".."▁9": the first digit of a number, with the space before it.
SPACED_DIGITS = tuple(f"▁{d}" for d in string.digits)
# 256 byte tokens + 7 special tokens + 94 ASCII characters + 10 spaced digits, and room for
# some learned pieces.
MIN_VOCAB_SIZE = 384


def _train_sentencepiece(texts: Iterable[str], vocab_size: int) -> bytes:
    lines = [line for text in texts for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("build_demo_tokenizer needs some non-empty texts to train on")
    model = io.BytesIO()
    spm.set_random_generator_seed(SEED)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        # BPE rather than unigram: on a small templated corpus it learns whole words.
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus may not support the full size
        split_digits=True,
        byte_fallback=True,
        character_coverage=1.0,
        required_chars=_REQUIRED_CHARS,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        unk_id=0,
        bos_id=1,
        eos_id=-1,
        pad_id=2,
        unk_piece=UNK,
        bos_piece=BOS,
        pad_piece=PAD,
        user_defined_symbols=list(CHAT_TOKENS),
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def _to_hf(model_proto: bytes) -> transformers.PreTrainedTokenizerFast:
    """The same BPE as a `tokenizers` backend: merges ranked by sentencepiece piece scores."""
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    special = {UNK, BOS, PAD, *CHAT_TOKENS}
    merged = [  # pieces that BPE training made by merging two others
        i
        for i, piece in enumerate(vocab)
        if len(piece) > 1 and piece not in special and not sp.is_byte(i)
    ]
    merges = []
    for piece in SPACED_DIGITS:  # first: a digit after a space always joins it
        vocab.setdefault(piece, len(vocab))
        merges.append(("▁", piece[1:]))
    for i in sorted(merged, key=lambda i: (-sp.get_score(i), i)):  # higher score merges first
        piece = sp.id_to_piece(i)
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        merges += [(a, b) for a, b in splits if a in vocab and b in vocab]
    backend = Tokenizer(BPE(vocab, merges, unk_token=UNK, byte_fallback=True, fuse_unk=True))
    # Spaces become "▁" and start a new word, as in sentencepiece (no dummy prefix).
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never", split=True)
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (UNK, BOS, PAD, *CHAT_TOKENS)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[t for t in CHAT_TOKENS if t != EOS],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_demo_tokenizer(
    texts: Iterable[str], out_dir: str, vocab_size: int = 512
) -> transformers.PreTrainedTokenizerBase:
    """Train (or reuse) the demo tokenizer in `out_dir` and return it loaded from disk.

    `out_dir` is a cache keyed by path: when it already holds a tokenizer, `texts` are
    ignored and that tokenizer is returned. A new one is built in a temporary sibling
    directory and renamed into place, so a crash never leaves a half-written tokenizer and
    concurrent builders agree on one result. Training is deterministic (fixed seed, one
    thread). `len(tokenizer) <= vocab_size`; it is smaller only when the texts are too few
    to fill the vocabulary. The 256 byte tokens, 7 special tokens and the printable ASCII
    characters are always included, hence `vocab_size >= MIN_VOCAB_SIZE`.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for the demo tokenizer: byte fallback, "
            f"special tokens and ASCII characters need {MIN_VOCAB_SIZE} or more"
        )
    if os.path.exists(os.path.join(out_dir, "tokenizer.json")):
        return _load(out_dir, vocab_size)
    tokenizer = _to_hf(_train_sentencepiece(texts, vocab_size - len(SPACED_DIGITS)))
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".demo_tokenizer-", dir=parent)
    try:
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, out_dir)
    except OSError:
        if not os.path.exists(os.path.join(out_dir, "tokenizer.json")):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # left over only when another builder won
    return _load(out_dir, vocab_size)


def _load(out_dir: str, vocab_size: int) -> transformers.PreTrainedTokenizerBase:
    tokenizer = transformers.AutoTokenizer.from_pretrained(out_dir)
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer in {out_dir} has {len(tokenizer)} tokens, more than the requested "
            f"vocab_size={vocab_size}; delete {out_dir} to rebuild it"
        )
    return tokenizer
