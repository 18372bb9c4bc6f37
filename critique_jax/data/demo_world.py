"""A synthetic multi-step arithmetic world where the whole critique pipeline runs on a laptop.

Problems are short templated word problems ("Ava has 7 marbles. She buys 5 more. ...") whose
solution is a chain of small calculations, one per step, each quoting the sentence it acts on:

    Step 1: She buys 5 more, so 7 + 5 = 12.
    Step 2: Then she loses 3, so 12 - 3 = 9.
    Step 3: She doubles them, so 9 * 2 = 18.
    The answer is 18.

Quoting the sentence is the chain of thought that makes the world learnable from scratch in
minutes: without it the model must count sentences to find the k-th operand, which a tiny
transformer learns slowly; with it, each step copies the sentence after the one it quoted
last (an induction head) and then reads the operand next to it.

Difficulty (`Problem.level`) is the number of steps (1..5); numbers also grow with the level
but every value stays in 1..39 with no negative intermediate results, so a tiny transformer
trained from scratch can learn the arithmetic. Because the true computation is known exactly,
the world also provides controlled flawed solutions (`inject_error`, a known first-error
step) and an oracle step-level critic (`templated_critique`) that plays the annotator model.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from critique_jax.data.critique_format import (
    CritiqueFormat,
    StepVerdict,
    format_critique,
    split_steps,
)
from critique_jax.data.records import Problem

MAX_LEVEL = 5
MAX_VALUE = 39

_PEOPLE = (
    ("Ava", "she"),
    ("Ben", "he"),
    ("Mia", "she"),
    ("Leo", "he"),
    ("Zoe", "she"),
    ("Sam", "he"),
    ("Lily", "she"),
    ("Max", "he"),
)
_ITEMS = ("marbles", "apples", "stickers", "coins", "books", "shells", "cards", "pens")
_ADD = ("{p} buys {n} more.", "{p} finds {n} more.", "{p} gets {n} more.")
_SUB = ("{p} gives away {n}.", "{p} loses {n}.", "{p} sells {n}.")
_MUL = {2: "{p} doubles them.", 3: "{p} triples them."}
_MUL_ANY = "{p} now has {n} times as many."


@dataclass(frozen=True)
class _Calc:
    """One solution step: `left op right = result`, and the question's sentence it acts on."""

    left: int
    op: str
    right: int
    result: int
    sentence: str = ""

    def expr(self) -> str:
        return f"{self.left} {self.op} {self.right}"


def _apply(left: int, op: str, right: int) -> int:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    return left * right


def _max_value(level: int) -> int:
    """Numbers grow with the level: at most 15, 21, 27, 33, then 39. Small numbers keep the
    table of facts (a op b = c) small enough to learn from scratch in minutes."""
    return min(MAX_VALUE, 9 + 6 * level)


def _random_chain(rng: random.Random, level: int) -> tuple[int, list[_Calc]]:
    top = _max_value(level)
    start = rng.randint(2, top // 2)
    cur, calcs = start, []
    for _ in range(level):
        ops = ["-"] if cur >= 2 else []
        if cur < top:
            ops.append("+")
        if cur * 2 <= top:
            ops.append("*")
        op = rng.choice(ops)
        if op == "+":
            right = rng.randint(1, min(top - cur, top // 2))
        elif op == "-":
            right = rng.randint(1, cur - 1)
        else:
            right = rng.randint(2, min(4, top // cur))
        calcs.append(_Calc(cur, op, right, _apply(cur, op, right)))
        cur = calcs[-1].result
    return start, calcs


def _sentence(rng: random.Random, calc: _Calc, pronoun: str, first: bool) -> str:
    if calc.op == "+":
        template = rng.choice(_ADD)
    elif calc.op == "-":
        template = rng.choice(_SUB)
    else:
        choices = [_MUL_ANY] + ([_MUL[calc.right]] if calc.right in _MUL else [])
        template = rng.choice(choices)
    then = not first and rng.random() < 0.5
    text = template.format(p=pronoun, n=calc.right)
    return f"Then {text}" if then else text[0].upper() + text[1:]


def _render_solution(calcs: Sequence[_Calc]) -> str:
    lines = [
        f"Step {i}: {c.sentence.rstrip('.')}, so {c.expr()} = {c.result}."
        for i, c in enumerate(calcs, start=1)
    ]
    lines.append(f"The answer is {calcs[-1].result}.")
    return "\n".join(lines)


def generate_problems(n: int, seed: int, levels: Sequence[int] = (1, 2, 3)) -> list[Problem]:
    """`n` distinct problems, deterministic in `seed`; levels cycle through `levels` in order.

    Ids are `demo-<seed>-<i>`, so sets drawn with different seeds never share an id (they
    may share a question text; split train/test by seed and deduplicate by question if that
    matters).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not levels or any(not 1 <= lv <= MAX_LEVEL for lv in levels):
        raise ValueError(f"levels must be a non-empty sequence in 1..{MAX_LEVEL}, got {levels!r}")
    rng = random.Random(seed)
    problems: list[Problem] = []
    seen: set[str] = set()
    while len(problems) < n:
        level = levels[len(problems) % len(levels)]
        name, pronoun = rng.choice(_PEOPLE)
        item = rng.choice(_ITEMS)
        start, calcs = _random_chain(rng, level)
        sentences = [_sentence(rng, c, pronoun, i == 0) for i, c in enumerate(calcs)]
        calcs = [dataclasses.replace(c, sentence=s) for c, s in zip(calcs, sentences, strict=True)]
        question = " ".join(
            [f"{name} has {start} {item}.", *sentences, f"How many {item} does {name} have?"]
        )
        if question in seen:
            continue
        seen.add(question)
        problems.append(
            Problem(
                id=f"demo-{seed}-{len(problems)}",
                question=question,
                answer=str(calcs[-1].result),
                solution=_render_solution(calcs),
                level=level,
                subject="arithmetic",
                source="demo",
            )
        )
    return problems


_REF_STEP = re.compile(r"^Step (\d+): (.+), so (\d+) ([-+*]) (\d+) = (\d+)\.$")


def _reference_calcs(problem: Problem) -> list[_Calc]:
    """The true computation, read back from the reference solution."""
    lines = problem.solution.splitlines()[:-1]
    matches = [_REF_STEP.match(line) for line in lines]
    if problem.source != "demo" or not lines or not all(matches):
        raise ValueError(
            f"problem {problem.id!r} (source={problem.source!r}) is not a demo-world problem "
            "with a reference solution; make it with demo_world.generate_problems"
        )
    return [_Calc(int(m[3]), m[4], int(m[5]), int(m[6]), f"{m[2]}.") for m in matches]


_ERROR_DELTAS = (-10, -2, -1, 1, 2, 10)


def inject_error(problem: Problem, step: int, seed: int) -> str:
    """A flawed solution whose first error is at `step` (1-based): either an arithmetic slip
    (the right operands, a wrong result) or a misread operand (the number of the step's
    sentence misread, the arithmetic right), the two kinds of error a trained actor makes.

    The wrong value is carried forward correctly through the later steps, so the final
    answer is wrong too (each step is injective in its input). Values stay non-negative and,
    when some error allows it, within 0..MAX_VALUE. The kind and the size of the error
    depend on (problem, step, seed) only.
    """
    calcs = _reference_calcs(problem)
    if not 1 <= step <= len(calcs):
        raise ValueError(f"step must be in 1..{len(calcs)} for problem {problem.id!r}, got {step}")
    rng = random.Random(f"{problem.id}:{step}:{seed}")
    deltas = list(_ERROR_DELTAS)
    rng.shuffle(deltas)
    misread = rng.random() < 0.5  # the preferred kind; the other one when it cannot apply
    true = calcs[step - 1]
    candidates = []
    for delta in deltas:
        right = true.right + delta
        errors = [(False, _with_result(true, true.result + delta))]
        if right >= 1:
            errors.append(
                (
                    True,
                    dataclasses.replace(
                        true, right=right, result=_apply(true.left, true.op, right)
                    ),
                )
            )
        for kind, wrong in errors:
            bad = [*calcs[: step - 1], wrong]
            for c in calcs[step:]:
                left = bad[-1].result
                bad.append(dataclasses.replace(c, left=left, result=_apply(left, c.op, c.right)))
            values = [c.result for c in bad]
            if min(values) >= 0 and wrong.result != true.result:
                candidates.append((kind != misread, max(values) > MAX_VALUE, bad))
    # a slip with delta > 0 keeps every value above the true one, so some candidate exists.
    *_, bad = min(candidates, key=lambda c: c[:2])
    return _render_solution(bad)


def _with_result(calc: _Calc, result: int) -> _Calc:
    return dataclasses.replace(calc, result=result)


_EQUATION = re.compile(r"(\d+)\s*([-+*x×])\s*(\d+)\s*=\s*(-?\d+)")
_ANSWER = re.compile(r"answer\s+is\s*:?\s*\$?(?:\\boxed\{)?\s*(-?\d+)", re.IGNORECASE)
_CORRECT_STEP = "The arithmetic is right."


def _final_answer(text: str) -> int | None:
    found = _ANSWER.findall(text)
    return int(found[-1]) if found else None


def _check_step(step: str, ref: _Calc) -> tuple[str, str | None]:
    """(the step recomputed, None when `step` computes `ref` correctly or else a short
    explanation of the error). The recomputation keeps the step's own operand order when
    it swapped the operands of + or *, so a right step's check repeats its equation."""
    m = _EQUATION.search(step)
    if m is None:
        return f"{ref.expr()} = {ref.result}", (
            f"There is no calculation here; this step should compute {ref.expr()}."
        )
    left, op, right, result = int(m[1]), m[2], int(m[3]), int(m[4])
    op = "*" if op in "x×" else op
    swapped = op == ref.op and op in "+*" and (right, left) == (ref.left, ref.right)
    check = f"{right} {op} {left}" if swapped else ref.expr()
    check = f"{check} = {ref.result}"
    if op != ref.op or ((left, right) != (ref.left, ref.right) and not swapped):
        return check, f"It should be {ref.expr()} = {ref.result}, not {left} {op} {right}."
    if result != ref.result:
        return check, f"{left} {op} {right} = {ref.result}, not {result}."
    return check, None


def templated_critique(
    problem: Problem, solution_text: str, fmt: CritiqueFormat = "verdict_first"
) -> str:
    """The oracle critic: check each step of any solution text against the true computation.

    Step k of `split_steps(solution_text)` must compute step k of the reference (operands
    of + and * in either order); the critique stops at the first wrong step. The final
    verdict compares the stated final answer ("The answer is N") with the gold answer. In
    reason_first each step carries its recomputation (`Check: a op b = c`, the true one)
    before the verdict, and only wrong steps an explanation.
    """
    calcs = _reference_calcs(problem)
    verdicts: list[StepVerdict] = []
    for i, step in enumerate(split_steps(solution_text), start=1):
        if i > len(calcs):
            check = f"the problem has only {len(calcs)} steps"
            error = f"The problem needs only {len(calcs)} steps; this step is extra."
        else:
            check, error = _check_step(step, calcs[i - 1])
        explanation = error or ("" if fmt == "reason_first" else _CORRECT_STEP)
        verdicts.append(StepVerdict(i, step, error is None, explanation, check))
        if error is not None:
            break

    answer = _final_answer(solution_text)
    final_correct = answer == int(problem.answer)
    explanation = _final_explanation(calcs, verdicts, answer, final_correct)
    return format_critique(verdicts, final_correct, explanation, fmt)


def _final_explanation(
    calcs: Sequence[_Calc], verdicts: Sequence[StepVerdict], answer: int | None, correct: bool
) -> str:
    wrong = next((v.index for v in verdicts if not v.correct), None)
    if correct:
        if wrong is None:
            return f"The answer {answer} is right."
        return f"The answer {answer} is right, but step {wrong} is wrong."
    if wrong is not None:
        if answer is None:
            return f"Step {wrong} is wrong and there is no final answer."
        return f"Step {wrong} is wrong, so the answer {answer} is wrong."
    if len(verdicts) < len(calcs):
        return f"The steps stop early: {calcs[len(verdicts)].expr()} is still missing."
    if answer is None:
        return f"The steps give {calcs[-1].result}, but there is no final answer."
    return f"The steps give {calcs[-1].result}, but the answer says {answer}."
