"""Loaders on small files written here, plus the real files from ../shared when present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from critique_jax.data.loaders import (
    DataError,
    load_chat_records,
    load_gsm8k,
    load_math,
    load_mathcritique,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def write_json(path: Path, rows: object) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


GSM8K_ROWS = [
    {
        "question": "A robe takes 2 bolts of blue fiber and half that much white fiber.  "
        "How many bolts in total does it take?",
        "answer": "It takes 2/2=<<2/2=1>>1 bolt of white fiber\n"
        "So the total amount of fabric is 2+1=<<2+1=3>>3 bolts of fabric\n#### 3",
    },
    {
        "question": "How much in total?",
        "answer": "They pay 1,000+600=<<1000+600=1600>>1,600.\n#### 1,600",
    },
]


def test_load_gsm8k_local(tmp_path: Path) -> None:
    problems = load_gsm8k(str(write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS)))
    assert [p.answer for p in problems] == ["3", "1600"]
    assert problems[0].solution == (
        "It takes 2/2=1 bolt of white fiber\nSo the total amount of fabric is 2+1=3 bolts of fabric"
    )
    assert problems[0].id == "gsm8k/test/0" and problems[0].source == "gsm8k"
    assert problems[1].question == "How much in total?"
    assert len(load_gsm8k(str(write_json(tmp_path / "t.json", GSM8K_ROWS)), limit=1)) == 1


def test_load_gsm8k_hub_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # the hub itself is unreachable here; check the call and the conversion of its rows
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name: str, config: str | None, split: str) -> object:
        calls.append((name, config, split))
        return datasets.Dataset.from_list(GSM8K_ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    problems = load_gsm8k("openai/gsm8k", split="train", limit=1)
    assert calls == [("openai/gsm8k", "main", "train")]
    assert [(p.id, p.answer) for p in problems] == [("gsm8k/train/0", "3")]


def test_load_math_local(tmp_path: Path) -> None:
    rows = [
        {  # Hendrycks layout: gold from the last box, level string, type
            "problem": "Find the distance.",
            "level": "Level 4",
            "type": "Algebra",
            "solution": "First $\\boxed{1}$; so the distance is $\\boxed{\\sqrt{1+\\frac{1}{4}}}$.",
            "unique_id": "test/algebra/2.json",
        },
        {  # MATH500 layout: explicit answer, int level, subject
            "problem": "Compute $1+1$.",
            "solution": "It is $\\boxed{2}$.",
            "answer": "2",
            "subject": "Prealgebra",
            "level": 1,
        },
        {"problem": "Bad data.", "level": "Level ?", "type": "Algebra", "solution": "$\\boxed{}$"},
    ]
    problems = load_math(str(write_jsonl(tmp_path / "math.jsonl", rows)))
    assert len(problems) == 2  # the record without a gold answer is skipped
    first, second = problems
    assert (first.answer, first.level, first.subject) == ("\\sqrt{1+\\frac{1}{4}}", 4, "Algebra")
    assert first.id == "test/algebra/2.json"
    assert (second.answer, second.level, second.subject, second.id) == (
        "2",
        1,
        "Prealgebra",
        "math/math/1",
    )
    with pytest.raises(DataError, match="no record has a gold answer"):
        load_math(str(write_jsonl(tmp_path / "none.jsonl", rows[2:])))


MC_INSTRUCTION = (
    "Samantha bought a crate of 30 eggs for $5. How many eggs will she have left? Please also "
    "give your final number in the format of 'The answer is [your answer].'\n\n"
    "Assistant:Let's break it down step by step:\n\nShe sold 30 / 2 = <<30/2=15>>15 eggs\n"
    "The answer is 15.\n<|end_of_text|>\nHuman: I have made a step-by-step critic for your "
    "solution. Please read the following critic and use this critic as a reference to provide "
    "a new detailed, step-by-step solution. Please also give your final number in the format "
    "of 'The answer is [your answer].'\n\n"
    "Step sentence: She sold 30 / 2 = 15 eggs\nCorrectness of the step: Wrong\n"
    "Explanation: Half is not implied.\n\n"
    "Correctness of the final answer: Wrong\nExplanation: 25 eggs must be sold.\n"
)


def test_load_mathcritique(tmp_path: Path) -> None:
    rec = {"instruction": MC_INSTRUCTION, "input": "", "output": "She sells 25.\nThe answer is 5."}
    [parsed] = load_mathcritique(write_json(tmp_path / "mc.json", [rec]))
    assert parsed == {
        "question": "Samantha bought a crate of 30 eggs for $5. How many eggs will she have left?",
        "solution": "Let's break it down step by step:\n\nShe sold 30 / 2 = <<30/2=15>>15 eggs\n"
        "The answer is 15.",
        "critique": "Step sentence: She sold 30 / 2 = 15 eggs\nCorrectness of the step: Wrong\n"
        "Explanation: Half is not implied.\n\n"
        "Correctness of the final answer: Wrong\nExplanation: 25 eggs must be sold.",
        "refinement": "She sells 25.\nThe answer is 5.",
    }


@pytest.mark.parametrize(
    ("instruction", "message"),
    [
        ("Q only, no turns", "Assistant:"),
        (MC_INSTRUCTION.replace("<|end_of_text|>", ""), "end_of_text"),
        (MC_INSTRUCTION.split("Correctness of the final")[0], "Correctness of the final answer"),
    ],
)
def test_load_mathcritique_unsplittable(tmp_path: Path, instruction: str, message: str) -> None:
    ok = {"instruction": MC_INSTRUCTION, "output": "fine"}
    path = write_json(tmp_path / "mc.json", [ok, {"instruction": instruction, "output": "x"}])
    with pytest.raises(DataError, match=message) as err:
        load_mathcritique(path)
    assert "mc.json record 1" in str(err.value) and "Fix:" in str(err.value)


def test_load_chat_records(tmp_path: Path) -> None:
    rows = [
        {
            "system": "Be brief.",
            "conversations": [
                {"from": "human", "value": "1+1?"},
                {"from": "gpt", "value": "2"},
                {"from": "human", "value": "2+2?"},
                {"from": "gpt", "value": "4"},
            ],
        },
        {"instruction": "Add.", "input": "3 and 4", "output": "7"},
        {"instruction": "Add 1 and 1.", "input": "", "output": "2", "history": [["Hi", "Hello"]]},
        {"messages": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]},
    ]
    chats = load_chat_records(write_jsonl(tmp_path / "chat.jsonl", rows))
    assert chats[0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert chats[1] == [
        {"role": "user", "content": "Add.\n\n3 and 4"},
        {"role": "assistant", "content": "7"},
    ]
    assert [m["content"] for m in chats[2]] == ["Hi", "Hello", "Add 1 and 1.", "2"]
    assert chats[3] == rows[3]["messages"]
    assert load_chat_records(write_json(tmp_path / "chat.json", rows)) == chats


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GSM8K_ROWS[0]) + "\n\n{not json}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl line 3: invalid JSON.*Fix:"):
        load_gsm8k(str(path))


@pytest.mark.parametrize(
    ("loader", "row", "message"),
    [
        (load_gsm8k, {"question": "q"}, r"line 2: missing or empty string field 'answer'"),
        (load_gsm8k, {"question": "q", "answer": "no marker"}, r"line 2: .*'#### N'"),
        (load_math, {"problem": "p"}, r"line 2: missing or empty string field 'solution'"),
        (load_math, {"problem": "p", "solution": "$\\boxed{1}$", "level": "hard"}, "level"),
        (load_chat_records, {"text": "t"}, r"line 2: neither chat, ShareGPT nor Alpaca"),
        (load_chat_records, {"messages": [{"role": "bot", "content": "c"}]}, "'messages'"),
        (load_chat_records, {"conversations": [{"from": "bot", "value": "v"}]}, "'from'"),
        (load_chat_records, {"conversations": [{"from": "gpt"}]}, "no string 'value'"),
        (load_chat_records, {"instruction": "i", "output": "o", "history": [["x"]]}, "history"),
    ],
)
def test_malformed_records(tmp_path: Path, loader, row: dict, message: str) -> None:
    good = {
        load_gsm8k: GSM8K_ROWS[0],
        load_math: {"problem": "p", "solution": "$\\boxed{1}$"},
        load_chat_records: {"instruction": "i", "output": "o"},
    }[loader]
    path = write_jsonl(tmp_path / "data.jsonl", [good, row])
    with pytest.raises(DataError, match=message) as err:
        loader(str(path))
    assert "data.jsonl" in str(err.value) and "Fix:" in str(err.value)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_chat_records(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="not a list"):
        load_chat_records(write_json(tmp_path / "obj.json", {"instruction": "i"}))
    with pytest.raises(DataError, match=r"record 1: record is a str"):
        load_chat_records(
            write_json(tmp_path / "mixed.json", [{"instruction": "i", "output": "o"}, "s"])
        )
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="extension"):
        load_chat_records(csv)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")
def test_real_files() -> None:
    gsm8k = load_gsm8k(str(SHARED_DATA / "gsm8k" / "test.jsonl"))
    math500 = load_math(str(SHARED_DATA / "math" / "math500_test.jsonl"))
    assert (len(gsm8k), len(math500)) == (1319, 500)
    assert gsm8k[0].answer == "18"
    assert all(p.answer.strip() and "," not in p.answer for p in gsm8k)
    assert all(p.answer.strip() and p.level in range(1, 6) for p in math500)
    for name in ("gsm8k", "math"):
        records = load_mathcritique(
            SHARED_DATA / "mathcritique" / f"Meta-Llama-3-8B-{name}-sftdata_0_new.json"
        )
        assert len(records) == 100
        assert all(
            all(r[k] for k in ("question", "solution", "critique", "refinement")) for r in records
        )
