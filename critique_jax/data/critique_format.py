"""Step-level critique text: one writer for annotators and critics, one tolerant parser.

Two orders (docs/methods.md, "Critique formats"), chosen by a stage's `critique_format`.
*verdict_first*, MathCritique's released data:

    Step 1 sentence: <step text>
    Correctness of the step: Correct
    Explanation: <why>

    Step 2 sentence: <step text>
    Correctness of the step: Wrong
    Explanation: <why>

    Correctness of the final answer: Wrong
    Explanation: <why>

*reason_first*: after each step sentence the critic's own check of the step (it recomputes
the step from the question and the earlier steps) and only then the verdict; an explanation
is optional. A small critic cannot check a step inside the single forward pass that writes a
verdict, but it can recompute the step and then compare two short texts:

    Step 2 sentence: <step text>
    Check: 12 - 3 = 9
    Correctness of the step: Wrong
    Explanation: 12 - 3 = 9, not 8.

    Correctness of the final answer: Wrong
    Explanation: <why>

`parse_critique` reads this and the variants that critics and the released MathCritique data
produce: any case, extra spaces or blank lines between fields, `Step sentence:` without a
number, markdown bullets and `**bold**` around labels and verdicts, fields spanning several
lines, a missing explanation, and a last `Step sentence:` (often "The answer is ...") directly
followed by the final verdict. It never raises: text without a Correct/Wrong final verdict
(garbage, a generation cut off before the end) comes back with `parseable=False`, keeping
whatever complete steps it had, so a critic can still be scored on where it locates the error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

CritiqueFormat = Literal["verdict_first", "reason_first"]
FORMATS: tuple[str, ...] = get_args(CritiqueFormat)


@dataclass(frozen=True)
class StepVerdict:
    """The critic's judgement of one solution step; `index` is 1-based. `check` is the
    critic's own recomputation of the step (reason_first; empty in verdict_first)."""

    index: int
    sentence: str
    correct: bool
    explanation: str
    check: str = ""


@dataclass(frozen=True)
class Critique:
    """A parsed critique. `final_correct` is None when the text has no final verdict."""

    steps: tuple[StepVerdict, ...]
    final_correct: bool | None
    final_explanation: str
    parseable: bool

    @property
    def first_wrong_step(self) -> int | None:
        """Index of the first step judged Wrong, or None when no step is."""
        return next((s.index for s in self.steps if not s.correct), None)


def _verdict_word(correct: bool) -> str:
    return "Correct" if correct else "Wrong"


# Markdown that may decorate a label: bullets, headings, quotes, list numbers, bold/italics.
_LABEL_PREFIX = r"^[\s>#*_\-]*(?:\d+[.)]\s+)?[\s*_]*"
_HEADER = re.compile(
    _LABEL_PREFIX + r"(?:"
    r"(?P<step>step\s*(?P<num>\d+)?\s*sentence)"
    r"|(?P<final>correctness\s+of\s+(?:the\s+)?final\s+answer)"
    r"|(?P<verdict>correctness\s+of\s+(?:the\s+)?step(?:\s*\d+)?)"
    r"|(?P<explanation>explanation)"
    r"|(?P<check>check)"
    r")[\s*_]*:[\s*_]*(?P<value>.*)$",
    re.IGNORECASE,
)
# "not correct" and "incorrect" must be tried before "correct".
_VERDICT = re.compile(
    r"^[\W_]*(?P<word>not\s+correct|incorrect|wrong|false|correct|right|true)\b", re.IGNORECASE
)
_TRUE_WORDS = {"correct", "right", "true"}


def _parse_verdict(value: str) -> bool | None:
    m = _VERDICT.match(value)
    if m is None:
        return None
    return m.group("word").lower() in _TRUE_WORDS


@dataclass
class _StepBlock:
    index: int
    sentence: list[str] = field(default_factory=list)
    explanation: list[str] = field(default_factory=list)
    check: list[str] = field(default_factory=list)
    verdict: bool | None = None
    has_verdict_line: bool = False


def _join(lines: list[str]) -> str:
    return "\n".join(lines).strip()


def parse_critique(text: str) -> Critique:
    """Parse critique text (see the module docstring for what is tolerated). Never raises.

    Steps whose verdict line is missing are dropped; a verdict word other than
    Correct/Wrong (or right/incorrect/...) makes the critique unparseable. Parsing stops at
    the first label after the final verdict's explanation, so a run-on generation that
    starts another critique does not leak into this one.
    """
    blocks: list[_StepBlock] = []
    final_seen = False
    final_correct: bool | None = None
    final_expl: list[str] = []
    final_expl_seen = False
    target: list[str] | None = None  # the field that unlabelled lines continue
    n_step_headers = 0

    for line in text.splitlines():
        m = _HEADER.match(line)
        if m is None:
            if target is not None:
                target.append(line)
            continue
        value = m.group("value").strip()
        if final_seen and (not m.group("explanation") or final_expl_seen):
            break
        if m.group("step"):
            n_step_headers += 1
            num = m.group("num")
            blocks.append(_StepBlock(index=int(num) if num else n_step_headers))
            target = blocks[-1].sentence
            target.append(value)
        elif m.group("verdict"):
            if not blocks or blocks[-1].has_verdict_line:  # a verdict with no sentence label
                n_step_headers += 1
                blocks.append(_StepBlock(index=n_step_headers))
            blocks[-1].has_verdict_line = True
            blocks[-1].verdict = _parse_verdict(value)
            target = None
        elif m.group("check"):
            if not blocks or blocks[-1].has_verdict_line:  # reason_first: a check opens a step
                n_step_headers += 1
                blocks.append(_StepBlock(index=n_step_headers))
            target = blocks[-1].check
            target.append(value)
        elif m.group("final"):
            final_seen = True
            final_correct = _parse_verdict(value)
            target = None
        else:  # explanation
            if final_seen:
                final_expl_seen = True
                target = final_expl
            elif blocks:
                target = blocks[-1].explanation
            else:
                target = None
                continue
            target.append(value)

    steps = tuple(
        StepVerdict(b.index, _join(b.sentence), b.verdict, _join(b.explanation), _join(b.check))
        for b in blocks
        if b.verdict is not None
    )
    bad_verdict = any(b.has_verdict_line and b.verdict is None for b in blocks)
    return Critique(
        steps=steps,
        final_correct=final_correct,
        final_explanation=_join(final_expl),
        parseable=final_correct is not None and not bad_verdict,
    )


def check_format(fmt: str) -> None:
    """Raise for a critique format that is not one of FORMATS, naming the choices."""
    if fmt not in FORMATS:
        raise ValueError(f"critique_format {fmt!r} unknown; choose one of {list(FORMATS)}")


def format_critique(
    steps: Sequence[StepVerdict],
    final_correct: bool,
    final_explanation: str,
    fmt: CritiqueFormat = "verdict_first",
) -> str:
    """Render a critique in format `fmt`; `parse_critique` inverts it.

    verdict_first writes every step's explanation (empty ones too, as the released data
    does) and no check; reason_first writes the check before the verdict and an explanation
    only when there is one. A continuation line of a multi-line field that would read as a
    label (a quoted solution that itself contains critique text) is prefixed with "| ", so
    the rendered critique always parses back to the verdicts it was given.
    """
    check_format(fmt)
    blocks = [_step_block(s, fmt) for s in steps]
    blocks.append(
        f"Correctness of the final answer: {_verdict_word(final_correct)}\n"
        f"Explanation: {_quote(final_explanation)}"
    )
    return "\n\n".join(blocks)


def _step_block(step: StepVerdict, fmt: CritiqueFormat) -> str:
    lines = [f"Step {step.index} sentence: {_quote(step.sentence)}"]
    if fmt == "reason_first":
        lines.append(f"Check: {_quote(step.check)}")
    lines.append(f"Correctness of the step: {_verdict_word(step.correct)}")
    if fmt == "verdict_first" or step.explanation.strip():
        lines.append(f"Explanation: {_quote(step.explanation)}")
    return "\n".join(lines)


def _quote(value: str) -> str:
    first, *rest = value.strip().splitlines() or [""]
    return "\n".join([first] + [f"| {ln}" if _HEADER.match(ln) else ln for ln in rest])


_ANSWER_LINE = re.compile(
    r"^\W*(?:so,?\s+|therefore,?\s+|thus,?\s+)?the\s+(?:final\s+)?answer\s+is\b", re.I
)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def split_steps(solution: str) -> list[str]:
    """Split a solution into the steps a critique judges one by one.

    Rule: a solution containing a blank line (MATH style, LaTeX paragraphs) is split into
    paragraphs; otherwise (GSM8K and demo style) into non-empty lines. Steps are stripped.
    A trailing "The answer is ..." step is merged into the step before it (joined with a
    newline), because it states the result of that step rather than doing new work: step k
    of a critique then is the k-th reasoning step, and the final verdict judges the answer.
    """
    text = solution.strip()
    if not text:
        return []
    parts = _BLANK_LINE.split(text) if _BLANK_LINE.search(text) else text.splitlines()
    steps = [p.strip() for p in parts if p.strip()]
    if len(steps) > 1 and _ANSWER_LINE.match(steps[-1]):
        steps[-2:] = [f"{steps[-2]}\n{steps[-1]}"]
    return steps


def verbatim_quotes(critique: Critique, solution: str) -> tuple[int, int]:
    """(steps the critique quotes, of those quoted verbatim): step k's sentence is step k of
    `solution` (`split_steps`), up to whitespace. A critic that re-solves the problem instead
    of reading the solution writes its own steps here, and its verdicts then judge those."""
    steps = [" ".join(s.split()) for s in split_steps(solution)]
    verbatim = sum(
        1 <= v.index <= len(steps) and " ".join(v.sentence.split()) == steps[v.index - 1]
        for v in critique.steps
    )
    return len(critique.steps), verbatim


_RESULT = re.compile(r"=\s*(-?\d+(?:\.\d+)?)")


def check_agreement(critique: Critique) -> tuple[int, int]:
    """(steps whose check and sentence both state a result `= N`, of those whose verdict
    follows from them: Correct exactly when the check's result is the step's). A reason-first
    critic that recomputes a step but then ignores its own check scores low here whatever
    its verdict accuracy, which tells apart "cannot compute" from "does not compare"."""
    comparable = agreeing = 0
    for step in critique.steps:
        check, stated = _RESULT.search(step.check), _RESULT.search(step.sentence)
        if check and stated:
            comparable += 1
            agreeing += step.correct == (float(check[1]) == float(stated[1]))
    return comparable, agreeing
