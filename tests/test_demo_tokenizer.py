import time
from pathlib import Path

import pytest
import sentencepiece as spm
import transformers

from critique_jax.data.demo_tokenizer import (
    CHAT_TOKENS,
    SPACED_DIGITS,
    _train_sentencepiece,
    build_demo_tokenizer,
)
from critique_jax.data.demo_world import generate_problems, inject_error, templated_critique


def _demo_texts(n: int = 150) -> list[str]:
    texts = []
    for p in generate_problems(n, seed=0, levels=(1, 2, 3, 4, 5)):
        flawed = inject_error(p, p.level, seed=0)
        texts += [p.question, p.solution, flawed, templated_critique(p, flawed)]
        texts.append(templated_critique(p, p.solution))
    return texts


TEXTS = _demo_texts()
EXTRA = ["  two  spaces\tand tab\n\n", "unicode: ü é 中文 ∑", "<0x41> literal", "(a) [b] {c} #$%&"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "demo_tokenizer"
    start = time.perf_counter()
    tok = build_demo_tokenizer(TEXTS, str(out))
    return tok, out, time.perf_counter() - start


def test_build_is_fast_and_fills_vocab(built):
    tok, out, seconds = built
    assert seconds < 20
    assert len(tok) == 512
    assert sorted(p.name for p in out.iterdir()) == [
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert not list(out.parent.glob(".demo_tokenizer-*"))  # temp dir renamed away


def test_smaller_vocab_is_respected(tmp_path):
    assert len(build_demo_tokenizer(TEXTS, str(tmp_path / "t"), vocab_size=400)) == 400


def test_round_trip_is_lossless(built):
    tok, _, _ = built
    for text in TEXTS + EXTRA:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids


def test_digits_are_single_tokens_the_first_with_its_space(built):
    tok, _, _ = built
    for d in "0123456789":
        assert len(tok.encode(d)) == 1 and len(tok.encode(f" {d}")) == 1
    for piece in tok.get_vocab():
        digits = sum(ch.isdigit() for ch in piece)
        assert digits == 0 or piece.startswith("<0x") or piece.lstrip("▁").isdigit() and digits == 1
    assert tok.convert_ids_to_tokens(tok.encode("= 120"))[-3:] == ["▁1", "2", "0"]
    assert tok.convert_ids_to_tokens(tok.encode("x120"))[-3:] == ["1", "2", "0"]


def test_special_tokens(built):
    tok, _, _ = built
    assert tok.eos_token == "<|end|>"
    ids = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    assert len(ids) == 4 and max(ids) < len(tok)
    for t in CHAT_TOKENS:
        assert len(tok.encode(t)) == 1
    assert tok.encode("hi") == tok.encode("hi", add_special_tokens=False)  # plain encode adds none


def test_chat_template(built):
    tok, _, _ = built
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": TEXTS[0]},
        {"role": "assistant", "content": TEXTS[1]},
    ]
    full = tok.apply_chat_template(messages)["input_ids"]
    prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True)["input_ids"]
    assert full[0] == tok.bos_token_id and full[-1] == tok.eos_token_id
    assert full[: len(prompt)] == prompt
    assert tok.decode(full[len(prompt) : -1]) == TEXTS[1]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert tok.encode(rendered) == full
    with pytest.raises(Exception, match="roles"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_reload_and_reuse(built):
    tok, out, _ = built
    again = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in TEXTS[:50] + EXTRA:
        assert again.encode(text) == tok.encode(text)
    assert again.eos_token_id == tok.eos_token_id and again.chat_template == tok.chat_template
    reused = build_demo_tokenizer([], str(out))  # existing dir: no training, no texts needed
    assert reused.encode(TEXTS[2]) == tok.encode(TEXTS[2])
    with pytest.raises(ValueError, match="delete"):
        build_demo_tokenizer([], str(out), vocab_size=450)


def test_deterministic(built, tmp_path):
    _, out, _ = built
    build_demo_tokenizer(TEXTS, str(tmp_path / "again"))
    first = (Path(out) / "tokenizer.json").read_text()
    assert (tmp_path / "again" / "tokenizer.json").read_text() == first


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="non-empty texts"):
        build_demo_tokenizer(["", "  \n"], str(tmp_path / "t"))
    with pytest.raises(ValueError, match="too small"):
        build_demo_tokenizer(TEXTS, str(tmp_path / "t"), vocab_size=300)
    assert not (tmp_path / "t").exists()


def test_matches_the_sentencepiece_model_but_for_spaced_digits(built):
    tok, _, _ = built
    sp = spm.SentencePieceProcessor(
        model_proto=_train_sentencepiece(TEXTS, 512 - len(SPACED_DIGITS))
    )
    for text in TEXTS + EXTRA:
        pieces = tok.convert_ids_to_tokens(tok.encode(text))
        unjoined = [q for p in pieces for q in (["▁", p[1:]] if p in SPACED_DIGITS else [p])]
        assert unjoined == sp.encode_as_pieces(text)
        ids = [i for i in tok.encode(text) if tok.convert_ids_to_tokens(i) not in SPACED_DIGITS]
        assert all(tok.convert_ids_to_tokens(i) == sp.id_to_piece(i) for i in ids)
