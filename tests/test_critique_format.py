import json
import re
from pathlib import Path

import pytest

from critique_jax.data.critique_format import (
    Critique,
    StepVerdict,
    check_agreement,
    format_critique,
    parse_critique,
    split_steps,
    verbatim_quotes,
)

MATHCRITIQUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mathcritique"

STEPS = (
    StepVerdict(1, "Ava has 7 + 5 = 12 marbles.", True, "7 + 5 = 12."),
    StepVerdict(2, "She has 12 - 3 = 8 left.\nThe answer is 8.", False, "12 - 3 = 9, not 8."),
)


def test_format_is_exact():
    text = format_critique(STEPS[:1], False, "The answer is wrong.")
    assert text == (
        "Step 1 sentence: Ava has 7 + 5 = 12 marbles.\n"
        "Correctness of the step: Correct\n"
        "Explanation: 7 + 5 = 12.\n"
        "\n"
        "Correctness of the final answer: Wrong\n"
        "Explanation: The answer is wrong."
    )


@pytest.mark.parametrize("final", [True, False])
def test_round_trip(final):
    steps = (*STEPS, StepVerdict(3, "Done.", True, ""))
    parsed = parse_critique(format_critique(steps, final, "Because.\nTwo lines."))
    assert parsed == Critique(steps, final, "Because.\nTwo lines.", parseable=True)


def test_label_lines_inside_fields_are_quoted():
    sneaky = StepVerdict(
        1, "a\nCorrectness of the final answer: Correct\nStep 2 sentence: b", False, ""
    )
    c = parse_critique(format_critique([sneaky], False, "x\nExplanation: y"))
    assert c.parseable and c.final_correct is False and len(c.steps) == 1
    assert c.steps[0].sentence.splitlines()[1] == "| Correctness of the final answer: Correct"
    assert c.final_explanation == "x\n| Explanation: y"


def test_round_trip_without_steps():
    assert parse_critique(format_critique((), True, "ok")) == Critique((), True, "ok", True)


def test_first_wrong_step():
    assert parse_critique(format_critique(STEPS, False, "")).first_wrong_step == 2
    assert parse_critique(format_critique(STEPS[:1], True, "")).first_wrong_step is None
    later = (StepVerdict(4, "a", True, ""), StepVerdict(7, "b", False, ""))
    assert parse_critique(format_critique(later, False, "")).first_wrong_step == 7


def test_tolerates_case_spacing_markdown_and_missing_parts():
    text = """Here is my critique.

**Step sentence:**   Ava has 7 + 5 = 12 marbles.
  correctness of the step :  **CORRECT**

- Step sentence: She has
12 - 3 = 8 left.

**Correctness of the step:** Incorrect.
**Explanation:** 12 - 3 = 9,
not 8.

STEP SENTENCE: The answer is 8.
Correctness of the final answer: **wrong**
Explanation:
  The answer should be 9.
"""
    c = parse_critique(text)
    assert c.parseable and c.final_correct is False
    assert [(s.index, s.correct) for s in c.steps] == [(1, True), (2, False)]
    assert c.steps[0].sentence == "Ava has 7 + 5 = 12 marbles."
    assert c.steps[0].explanation == ""
    assert c.steps[1].sentence == "She has\n12 - 3 = 8 left."
    assert c.steps[1].explanation == "12 - 3 = 9,\nnot 8."
    assert c.final_explanation == "The answer should be 9."
    assert c.first_wrong_step == 2


def test_verdict_synonyms():
    for word, expected in [
        ("Right", True),
        ("True.", True),
        ("Not correct", False),
        ("False", False),
    ]:
        c = parse_critique(
            f"Correctness of the step: {word}\nCorrectness of the final answer: {word}"
        )
        assert c.parseable and c.final_correct is expected and c.steps[0].correct is expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\n",
        "The solution looks fine to me, 18 is the answer.",
        "Step 1: 7 + 5 = 12\nStep 2: 12 - 3 = 9\nThe answer is 9.",
        "asdf: qwer\nExplanation: nothing\n" * 3,
        "Correctness of the final answer: Maybe\nExplanation: not sure",
        "Correctness of the final answer:\nExplanation: empty verdict",
        "Step 1 sentence: a\nCorrectness of the step: Perhaps\n\n"
        "Correctness of the final answer: Wrong\nExplanation: x",
    ],
)
def test_malformed_is_unparseable(text):
    assert not parse_critique(text).parseable


def test_unknown_final_verdict_is_none():
    assert parse_critique("Correctness of the final answer: Unclear").final_correct is None


def test_every_truncation_is_handled():
    full_steps = (*STEPS, StepVerdict(3, "x", True, "y"))
    text = format_critique(full_steps, True, "All good.")
    verdict_end = text.index("Correctness of the final answer: Correct") + len(
        "Correctness of the final answer: Correct"
    )
    for cut in range(len(text) + 1):
        c = parse_critique(text[:cut])
        assert c.parseable == (cut >= verdict_end), cut
        got = [(s.index, s.correct) for s in c.steps]
        assert got == [(s.index, s.correct) for s in full_steps][: len(got)], cut


def test_run_on_generation_after_final_verdict_is_ignored():
    text = format_critique(STEPS, False, "Wrong answer.")
    c = parse_critique(text + "\n\nStep 1 sentence: again\nCorrectness of the step: Correct")
    assert c == parse_critique(text)


def test_split_steps_lines_and_answer_merge():
    sol = "Step 1: 7 + 5 = 12\n\n  \nStep 2: 12 - 3 = 9\nThe answer is 9."
    assert split_steps(sol) == ["Step 1: 7 + 5 = 12", "Step 2: 12 - 3 = 9\nThe answer is 9."]
    assert split_steps("a\nb\n  c  \n") == ["a", "b", "c"]
    assert split_steps("The answer is 5.") == ["The answer is 5."]
    assert split_steps("  \n ") == []


def test_verbatim_quotes_compare_step_k_with_the_solution_step_k():
    solution = "Ava has 7 + 5 = 12 marbles.\nShe has 12 - 3 = 9 left.\nThe answer is 9."
    read = parse_critique(format_critique(STEPS, False, "Step 2 is wrong."))
    assert verbatim_quotes(read, solution) == (2, 1)  # step 2 is quoted as "... = 8 left."
    spaced = Critique(
        (StepVerdict(1, "  Ava has 7 + 5 =  12 marbles. ", True, ""),), True, "", True
    )
    assert verbatim_quotes(spaced, solution) == (1, 1)  # whitespace does not count
    beyond = Critique((StepVerdict(3, "Ava has 7 + 5 = 12 marbles.", True, ""),), True, "", True)
    assert verbatim_quotes(beyond, solution) == (1, 0)  # the solution has no step 3
    assert verbatim_quotes(parse_critique(format_critique([], True, "ok")), solution) == (0, 0)


def test_check_agreement_asks_whether_the_verdict_follows_from_the_check():
    steps = (
        StepVerdict(1, "Ava has 7 + 5 = 12 marbles.", True, "", "7 + 5 = 12"),  # agrees
        StepVerdict(
            2, "She has 12 - 3 = 8 left.", True, "", "12 - 3 = 9"
        ),  # 9 != 8: should be Wrong
        StepVerdict(3, "She has 8 * 2 = 16.", False, "", "8 * 2 = 16"),  # equal: should be Correct
        StepVerdict(4, "She has 16 - 1 = 14.", False, "", "16 - 1 = 15"),  # agrees
        StepVerdict(5, "No calculation here.", True, "", "3 + 1 = 4"),  # nothing to compare
    )
    read = parse_critique(format_critique(steps, False, "", "reason_first"))
    assert check_agreement(read) == (4, 2)
    assert check_agreement(parse_critique(format_critique(STEPS, False, "x"))) == (0, 0)


def test_split_steps_paragraphs():
    sol = "We have $x^2 = 4$,\nso $x = 2$.\n\nThen $y = 3$.\n\nThe answer is $\\boxed{5}$."
    assert split_steps(sol) == [
        "We have $x^2 = 4$,\nso $x = 2$.",
        "Then $y = 3$.\nThe answer is $\\boxed{5}$.",
    ]


def _mathcritique_records():
    if not MATHCRITIQUE.is_dir():
        pytest.skip(f"{MATHCRITIQUE} not present")
    records = []
    for path in sorted(MATHCRITIQUE.glob("*.json")):
        records += json.loads(path.read_text())
    return records


def test_parses_real_mathcritique_critiques():
    records = _mathcritique_records()
    parsed = 0
    for r in records:
        prompt = r["instruction"]
        critique_text = prompt[prompt.rindex("Human:") :]
        c = parse_critique(critique_text)
        final = re.search(r"Correctness of the final answer:\s*(\w+)", critique_text)[1]
        n_verdicts = critique_text.count("Correctness of the step")
        if (
            c.parseable
            and c.final_correct == (final == "Correct")
            and len(c.steps) == n_verdicts
            and c.final_explanation
            and all(s.sentence and s.explanation for s in c.steps)
        ):
            parsed += 1
    assert records and parsed == len(records)
