"""Answer extraction and equivalence on real GSM8K / MATH gold answers (copied literally)."""

from __future__ import annotations

import threading

import pytest

from critique_jax.data.math import extract_answer, gsm8k_gold, is_equiv, math_gold

# (prediction, gold, expected). Golds are verbatim from GSM8K test / MATH500 / MATH test.
EQUIV_CASES = [
    # GSM8K numbers: thousands separators, currency, units words, decimals
    ("18", "18", True),
    ("70,000", "70000", True),
    ("$70,000.00", "70000", True),
    ("2125", "2,125", True),
    ("1450000", "1,450,000", True),
    ("18 dollars", "18", True),
    ("\\$18", "18", True),
    ("15 eggs", "15", True),
    ("17", "18", False),
    ("-18", "18", False),
    ("1,8", "18", False),  # a pair of numbers, not a thousands separator
    ("16", "1600", False),
    ("18 dollars", "19", False),
    # fractions, \dfrac vs \frac, decimals, mixed numbers
    ("\\frac{17}{50}", "\\dfrac{17}{50}", True),
    ("0.34", "\\dfrac{17}{50}", True),
    ("0.5", "\\frac{1}{2}", True),
    ("\\frac12", "\\frac{1}{2}", True),
    ("1/2", "\\frac{1}{2}", True),
    ("1.8", "1\\frac{4}{5}", True),
    ("-0.96", "-\\frac{24}{25}", True),
    ("0.33", "\\frac{1}{3}", False),
    ("\\frac{1}{3}", "\\frac{1}{2}", False),
    # thousands separators in LaTeX, currency, units
    ("10080", "10,\\!080", True),
    ("11111111100", "11,\\! 111,\\! 111,\\! 100", True),
    ("32348", "\\$32,\\!348", True),
    ("18.9", "\\$18.90", True),
    ("864", "864 \\mbox{ inches}^2", True),
    ("15 cm^2", "15\\mbox{ cm}^2", True),
    ("5.4", "5.4 \\text{ cents}", True),
    ("10081", "10,\\!080", False),
    # degrees
    ("270/7", "\\frac{270}7\\text{ degrees}", True),
    ("145", "145^\\circ", True),
    ("145^{\\circ}", "145^\\circ", True),
    ("145 degrees", "145^\\circ", True),
    ("60^\\circ", "30^\\circ", False),
    # percentages
    ("44", "44\\%", True),
    ("44%", "44\\%", True),
    ("45", "44\\%", False),
    # intervals and sets
    ("(2, \\infty)", "(2,\\infty)", True),
    ("(-\\infty,0]", "(-\\infty, 0]", True),
    ("(-\\infty,2)\\cup(3,\\infty)", "(-\\infty, 2) \\cup (3, \\infty)", True),
    ("[2,\\infty)", "(2,\\infty)", False),
    ("(-\\infty,0)", "(-\\infty, 0]", False),
    ("\\{-2, 1\\pm\\sqrt5\\}", "\\{1\\pm\\sqrt{5},-2\\}", True),
    ("1,-2", "-2,1", True),
    ("3,5,7", "3, 5, 7", True),
    ("3, 5", "3, 5, 7", False),
    ("\\{1,-2\\}", "\\{1\\pm\\sqrt{5},-2\\}", False),
    # tuples, pi, sqrt, negatives, complex, expressions
    ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("(15,29)", "(15,-29)", False),
    ("-\\pi/6", "-\\frac{\\pi}{6}", True),
    ("288\\pi", "288 \\pi", True),
    ("2\\pi+18", "18+2\\pi", True),
    ("7", "7\\pi", False),
    ("\\sqrt{117}", "3\\sqrt{13}", True),
    ("-\\sqrt 3", "-\\sqrt{3}", True),
    ("\\sqrt{3}", "-\\sqrt{3}", False),
    ("\\sqrt{65}", "\\sqrt{66}", False),
    ("1+\\sqrt{19}, 1-\\sqrt{19}", "1 \\pm \\sqrt{19}", True),
    ("-50", "-50", True),
    ("9i+6", "6+9i", True),
    ("6-9i", "6+9i", False),
    ("15x-80", "15x - 80", True),
    ("15x+80", "15x - 80", False),
    ("y=-2x", "y = -2x", True),
    ("6.72\\times10^{-5}", ".0000672", True),
    (
        "\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}",
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
        True,
    ),
    # text answers and multiple choice
    ("Evelyn", "\\text{Evelyn}", True),
    ("Bob", "\\text{Evelyn}", False),
    ("even", "\\text{even}", True),
    ("odd", "\\text{even}", False),
    ("B", "\\text{(B)}", True),
    ("(C)", "\\text{(B)}", False),
    # nothing usable
    (None, "18", False),
    ("", "18", False),
    ("x", "18", False),
]


@pytest.mark.parametrize(("prediction", "gold", "expected"), EQUIV_CASES)
def test_is_equiv_table(prediction: str | None, gold: str, expected: bool) -> None:
    assert is_equiv(prediction, gold) is expected


@pytest.mark.parametrize(
    "junk", ["}{", "\\boxed{", "\\frac{1}{0}", "{{{{", "\\left(", "$$", "\\" * 7, "a" * 5000]
)
def test_is_equiv_never_raises(junk: str) -> None:
    assert is_equiv(junk, "18") is False
    assert is_equiv("18", junk) is False


def test_is_equiv_off_main_thread() -> None:
    # math-verify's signal timeouts raise ValueError off the main thread; is_equiv must not.
    results: list[bool] = []

    def work() -> None:
        results.extend([is_equiv("0.5", "\\frac{1}{2}"), is_equiv("\\sqrt{3}", "-\\sqrt{3}")])

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert results == [True, False]


EXTRACT_CASES = [
    # GSM8K reference answer (test row 0): "#### N" wins
    (
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
        "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.\n#### 18",
        "18",
    ),
    ("So the total is 1600.\n#### 1,600", "1600"),
    # nested braces (MATH500 precalculus/807)
    (
        "Therefore, the polar coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
        "\\left( 3, \\frac{\\pi}{2} \\right)",
    ),
    ("so $x = \\boxed{\\frac{\\sqrt{3}}{2}}$.", "\\frac{\\sqrt{3}}{2}"),
    # escaped braces do not count
    ("The roots are $\\boxed{\\{1\\pm\\sqrt{5},-2\\}}$.", "\\{1\\pm\\sqrt{5},-2\\}"),
    # several boxes: the last one
    ("First $\\boxed{1}$, then after checking, $\\boxed{2}$.", "2"),
    # MathCritique solution: boxed answer and "The answer is $\boxed{}$"
    ("Thus the solutions are $x = \\boxed{3,4}$. The answer is $\\boxed{3,4}$.\n", "3,4"),
    # \fbox and the brace-less / spaced forms of the MATH data
    ("Find $\\fbox{12}$.", "12"),
    ("our answer is $\\boxed 2$.", "2"),
    ("= \\sqrt{64 + 225} = \\boxed {17}.$$", "17"),
    # a box beats later prose that says "the answer is"
    ("$\\boxed{24}$, so the answer is yes! Check it.", "24"),
    # "The answer is ..." (last occurrence; period, $ and : stripped)
    ("Samantha will have 30 - 15 = 15 eggs left.\nThe answer is 15.", "15"),
    ("The answer is $18.", "18"),
    ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("The answer is: 42", "42"),
    ("The answer is 12.5.", "12.5"),
    ("The answer is 5.\nWait, that is wrong.\nThe answer is 6.", "6"),
    ("The final answer is 7", "7"),
    ("he saves $8 - $6 = 2 dollars per day.\\n\\nThe answer is 2", "2"),
    # a copy of the prompt's placeholder states no answer (seen from SmolLM2-135M on GSM8K)
    ("A: 24 x 2 = 48\n\nThe answer is X.", None),
    ('Write a corrected solution. End with "The answer is X."', None),
    ("So 3 + 4 = 7.\nThe answer is 7.\n\nEnd with The answer is X.", "7"),
    ("The answer is X, which is the total number of sheep.", None),
    ("The answer is X = 12.", "X = 12"),
    ("The answer is $x$.", "x"),  # a MATH answer that is a variable is an answer
    # nothing stated
    ("I am not sure how to solve this.", None),
    ("", None),
    ("so the result is $\\boxed{\\frac{1}{2", None),  # cut off inside the box
    ("The answer is", None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_CASES)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_extracted_answers_verify() -> None:
    solution = "Half of 34 is 17, over 50 people.\nThe answer is $\\frac{17}{50}$."
    assert is_equiv(extract_answer(solution), "\\dfrac{17}{50}")
    assert not is_equiv(extract_answer("No idea."), "\\dfrac{17}{50}")


def test_gold_helpers() -> None:
    assert gsm8k_gold("It takes 2/2=<<2/2=1>>1 bolt\n#### 3") == "3"
    assert gsm8k_gold("Total 1,450,000 dollars.\n#### 1,450,000") == "1450000"
    solution = (
        "Since the numerator is always nonzero, ... Therefore, the graph has "
        "$\\boxed{2}$ vertical asymptotes."
    )
    assert math_gold(solution) == "2"
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no final line")
    with pytest.raises(ValueError, match="boxed"):
        math_gold("Therefore there are $\\boxed{}$ primes in that range.")
