"""Final-answer extraction and equivalence checking for GSM8K and MATH.

The verifier decides which samples count as correct everywhere in the library (data
collection, RCO judging, self-training, evaluation), so it must be lenient about notation
(``\\dfrac`` vs ``\\frac``, ``0.5`` vs ``\\frac12``, ``$1,000`` vs ``1000``), strict about
values, and must never raise on whatever a model happens to generate.
"""

from __future__ import annotations

import logging
import math
import re
import threading

from math_verify import parse
from math_verify import verify as symbolic_verify
from math_verify.errors import TimeoutException

logger = logging.getLogger(__name__)

# math-verify bounds each parse/compare with signal.alarm, in whole seconds.
TIMEOUT_S = 3
# Longer "answers" are almost always runaway generations; sympy on them is slow and pointless.
MAX_SYMBOLIC_CHARS = 300

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# No leading \b: generations sometimes hold a literal "\n" right before "The answer is".
_ANSWER_IS_RE = re.compile(r"(?:the\s+(?:final\s+)?answer|final\s+answer)\s+is\b\s*:?", re.I)
_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
_UNIT_TEXT_RE = re.compile(r"\s*\\(?:text|textbf|mbox|mathrm)\{[^{}]*\}(?:\^\{?[23]\}?)?\s*$")
_UNIT_WORD_RE = re.compile(r"\s+[A-Za-z]{2,}\.?(?:\^\{?[23]\}?)?\s*$")
_DEGREE_RE = re.compile(r"\^\s*\{?\\circ\}?|\\circ|°|\\degree")
# The placeholder of the prompts' answer instruction (End with "The answer is X."): weak
# models copy it ("The answer is X.", "The answer is X, which is ..."), which states no
# answer; counted as one, the copies would form a majority-vote group of their own.
_PLACEHOLDER_RE = re.compile(r"[\"']?X[\"'.]*(?:,|$)")


def _boxed_content(text: str, start: int) -> tuple[str, int] | None:
    """Content of the box whose command ends at ``start``, and where the box ends.

    Handles nested braces (escaped ``\\{``/``\\}`` do not count) and the brace-less
    ``\\boxed 2`` form that appears in the MATH training set.
    """
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        m = re.match(r"[^\s$]+", text[i:])
        if m is None:
            return None
        return m.group(0).rstrip(".,;"), i + m.end()
    depth = 0
    j = i
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
        j += 1
    return None  # unbalanced: the generation was cut off inside the box


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``."""
    for m in reversed(list(_BOX_RE.finditer(text))):
        found = _boxed_content(text, m.end())
        if found is not None:
            return found[0].strip()
    return None


def _clean_answer_is(tail: str) -> str:
    """Strip the decoration models put around "The answer is X."."""
    s = tail.strip().rstrip(" .")
    if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s.strip("$").strip()
    elif s.startswith("$") and _NUMBER_RE.fullmatch(s[1:].replace(",", "")):
        s = s[1:]  # "$18" is dollars, not a math delimiter
    return s.rstrip(" .")


def extract_answer(text: str | None) -> str | None:
    """The final answer stated in a solution, or None when it states none.

    Precedence: GSM8K's ``#### N`` (commas stripped), then the last complete
    ``\\boxed{}``/``\\fbox{}``, then the last "The answer is ..." that is not a copy of the
    prompt's placeholder ("The answer is X."). A box beats a later "the answer is" because
    MATH prose says things like "the answer is yes!" after it.
    """
    if not isinstance(text, str):
        return None
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
        ans = tail.replace(",", "").strip().rstrip(".").strip().lstrip("$").strip()
        return ans or None
    boxed = last_boxed(text)
    if boxed:
        return boxed
    said = [m for m in _ANSWER_IS_RE.finditer(text) if not _is_placeholder(text, m.end())]
    if not said:
        return None
    return _clean_answer_is(text[said[-1].end() :].split("\n", 1)[0]) or None


def _is_placeholder(text: str, start: int) -> bool:
    """Whether the "answer is" statement ending at `start` copies the instruction's "X"."""
    return _PLACEHOLDER_RE.match(_clean_answer_is(text[start:].split("\n", 1)[0])) is not None


def gsm8k_gold(answer_field: str) -> str:
    """Gold number of a GSM8K ``answer`` field ("reasoning ... #### 1,600" -> "1600")."""
    if "####" not in answer_field:
        raise ValueError(f"GSM8K answer has no '#### N' line: {answer_field[-80:]!r}")
    gold = answer_field.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise ValueError(f"GSM8K answer has an empty '####' line: {answer_field[-80:]!r}")
    if not _NUMBER_RE.fullmatch(gold):
        raise ValueError(
            f"GSM8K gold answer {gold!r} after '####' is not a number "
            "(GSM8K answers are numbers, e.g. '#### 18')"
        )
    return gold


def math_gold(solution: str) -> str:
    """Gold answer of a MATH solution: the content of its last ``\\boxed{}``."""
    gold = last_boxed(solution)
    if not gold:
        raise ValueError(f"MATH solution has no non-empty \\boxed{{}}: {solution[-80:]!r}")
    return gold


def _to_number(s: str) -> float | None:
    """Plain number behind currency, percent, thousands separators and units, else None."""
    s = s.strip().rstrip(".").strip()
    s = s.replace("{,}", ",").replace("\\!", "").replace("\\,", "").replace("−", "-")
    s = _DEGREE_RE.sub("", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    for _ in range(3):  # "15 \text{ cm}^2", "5 square feet"
        stripped = _UNIT_WORD_RE.sub("", _UNIT_TEXT_RE.sub("", s))
        if stripped == s:
            break
        s = stripped
    s = _THOUSANDS_RE.sub("", s).replace(" ", "")
    if not _NUMBER_RE.fullmatch(s):
        return None
    return float(s)


def _normalize(s: str) -> str:
    """Notation-free form of an answer for a last-resort string comparison."""
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    for junk in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "$", " "):
        s = s.replace(junk, "")
    return s.rstrip(".").lower()


def _symbolic_equiv(prediction: str, gold: str) -> bool:
    """math-verify on both answers, boxed so that bare LaTeX parses.

    math-verify's timeouts use ``signal.alarm``, which only works on the main thread (it
    raises ValueError elsewhere), so off the main thread the check runs without a timeout.
    To verify in parallel, use processes rather than threads so each keeps its timeout.
    """
    if len(prediction) > MAX_SYMBOLIC_CHARS or len(gold) > MAX_SYMBOLIC_CHARS:
        return False
    t = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=t)
        pred_parsed = parse("\\boxed{" + prediction + "}", parsing_timeout=t)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(symbolic_verify(gold_parsed, pred_parsed, timeout_seconds=t))
    except (Exception, TimeoutException):  # odd model output must never crash a pipeline
        logger.debug("math-verify failed on %r vs %r", prediction, gold, exc_info=True)
        return False


def is_equiv(prediction: str | None, gold: str) -> bool:
    """Whether a predicted final answer means the same as the gold answer.

    True when any check passes, cheapest first: a numeric comparison (relative tolerance
    1e-6) after stripping currency, percent, thousands separators, degrees and trailing
    units; a normalized string match; math-verify (symbolic: fractions, radicals, sets,
    intervals, tuples, matrices). Pass extracted answers (see ``extract_answer``), not
    whole solutions.
    """
    if not isinstance(prediction, str) or not isinstance(gold, str):
        return False
    prediction, gold = prediction.strip(), gold.strip()
    if not prediction or not gold:
        return False
    pred_num, gold_num = _to_number(prediction), _to_number(gold)
    if pred_num is not None and gold_num is not None:
        if math.isclose(pred_num, gold_num, rel_tol=1e-6):
            return True
    if _normalize(prediction) == _normalize(gold):
        return True
    return _symbolic_equiv(prediction, gold)


def verify(text: str | None, gold: str) -> bool:
    """Whether a solution states the gold answer: the one check of a text against its gold
    answer that every stage uses, so that they all count the same samples as correct."""
    return is_equiv(extract_answer(text), gold)
