import random
import re

import pytest

from critique_jax.data.critique_format import parse_critique, split_steps
from critique_jax.data.demo_world import (
    MAX_VALUE,
    generate_problems,
    inject_error,
    templated_critique,
)
from critique_jax.data.records import Problem

STEP = re.compile(r"^Step (\d+): (.+), so (\d+) ([-+*]) (\d+) = (\d+)\.$")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@pytest.fixture(scope="module")
def problems():
    return generate_problems(60, seed=3, levels=(1, 2, 3, 4, 5))


def _solve_question(question: str) -> int:
    """An independent reading of the question templates, to check the generated solutions."""
    value = int(re.match(r"\w+ has (\d+) \w+\.", question)[1])
    for sentence in re.split(r"(?<=\.) ", question)[1:-1]:
        if m := re.search(r"(?:buys|finds|gets) (\d+) more\.", sentence):
            value += int(m[1])
        elif m := re.search(r"(?:gives away|loses|sells) (\d+)\.", sentence):
            value -= int(m[1])
        elif m := re.search(r"has (\d+) times as many\.", sentence):
            value *= int(m[1])
        elif "doubles them" in sentence:
            value *= 2
        elif "triples them" in sentence:
            value *= 3
        else:
            raise AssertionError(f"unknown sentence {sentence!r}")
    return value


def _calcs(solution: str) -> list[tuple[int, str, int, int]]:
    lines = solution.splitlines()
    return [
        tuple(int(g) if g.isdigit() else g for g in STEP.match(ln).groups()[2:])
        for ln in lines[:-1]
    ]


def test_deterministic_in_seed():
    assert generate_problems(20, seed=1) == generate_problems(20, seed=1)
    assert generate_problems(20, seed=1) != generate_problems(20, seed=2)
    assert generate_problems(5, seed=1) == generate_problems(20, seed=1)[:5]


def test_records(problems):
    assert len({p.id for p in problems}) == len(problems) == 60
    assert len({p.question for p in problems}) == len(problems)
    assert [p.level for p in problems[:10]] == [1, 2, 3, 4, 5] * 2
    assert all(p.source == "demo" for p in problems)
    assert {p.id for p in problems}.isdisjoint(p.id for p in generate_problems(60, seed=4))
    assert generate_problems(0, seed=0) == []


def test_solutions_are_correct_and_small(problems):
    for p in problems:
        *steps, last = p.solution.splitlines()
        assert last == f"The answer is {p.answer}."
        assert int(p.answer) == _solve_question(p.question), p.question
        calcs = _calcs(p.solution)
        assert len(calcs) == len(steps) == p.level
        assert [int(STEP.match(s)[1]) for s in steps] == list(range(1, p.level + 1))
        assert f"has {calcs[0][0]} " in p.question
        quoted = [f"{STEP.match(s)[2]}." for s in steps]  # each step quotes its sentence
        assert quoted == re.split(r"(?<=\.) ", p.question)[1:-1]
        for (a, op, b, c), nxt in zip(calcs, calcs[1:] + [(int(p.answer),)], strict=True):
            assert OPS[op](a, b) == c and 1 <= c <= MAX_VALUE and nxt[0] == c
        assert split_steps(p.solution) == [*steps[:-1], f"{steps[-1]}\n{last}"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="levels"):
        generate_problems(3, seed=0, levels=(0, 1))
    with pytest.raises(ValueError, match="levels"):
        generate_problems(3, seed=0, levels=())
    p = generate_problems(1, seed=0, levels=(2,))[0]
    with pytest.raises(ValueError, match="step must be in 1..2"):
        inject_error(p, 3, seed=0)
    gsm = Problem(id="g1", question="q", answer="3", solution="1 + 2 = 3", source="gsm8k")
    with pytest.raises(ValueError, match="not a demo-world problem"):
        templated_critique(gsm, "x")


def test_correct_solution_gets_all_correct(problems):
    for p in problems:
        c = parse_critique(templated_critique(p, p.solution))
        assert c.parseable and c.final_correct is True
        assert len(c.steps) == p.level and all(s.correct for s in c.steps)
        assert c.first_wrong_step is None


def test_injected_errors(problems):
    seen_solutions, kinds = set(), {False: 0, True: 0}
    for p in problems:
        for step in range(1, p.level + 1):
            flawed = inject_error(p, step, seed=0)
            assert flawed == inject_error(p, step, seed=0)
            seen_solutions.update(inject_error(p, step, seed=s) for s in range(3))
            *_, last = flawed.splitlines()
            assert last != f"The answer is {p.answer}." and last.startswith("The answer is ")
            ref, bad = _calcs(p.solution), _calcs(flawed)
            assert bad[: step - 1] == ref[: step - 1]
            a, op, b, wrong = bad[step - 1]
            misread = b != ref[step - 1][2]
            kinds[misread] += 1
            for i, (a_, op_, b_, c_) in enumerate(bad, start=1):
                # a slip: wrong result; a misread operand: right arithmetic on the wrong number
                assert (OPS[op_](a_, b_) == c_) == (i != step or misread) and c_ >= 0
                left = ref[0][0] if i == 1 else bad[i - 2][3]  # the error is carried forward
                assert (a_, op_) == (left, ref[i - 1][1]) and (b_ == ref[i - 1][2]) == (
                    i != step or not misread
                )
            text = templated_critique(p, flawed)
            c = parse_critique(text)
            assert c.parseable and c.final_correct is False
            assert c.first_wrong_step == step and len(c.steps) == step
            ra, rop, rb, rc = ref[step - 1]
            assert c.steps[-1].explanation == (
                f"It should be {ra} {rop} {rb} = {rc}, not {a} {op} {b}."
                if misread
                else f"{a} {op} {b} = {rc}, not {wrong}."
            )
    assert len(seen_solutions) > sum(p.level for p in problems)  # seeds vary the error
    assert min(kinds.values()) > 0.3 * sum(kinds.values()), kinds  # both kinds occur


@pytest.mark.parametrize("garbage", ["", "blah blah\nfoo 12", "The answer is", "7 + 5"])
def test_garbage_gets_parseable_wrong_critique(problems, garbage):
    p = problems[2]
    c = parse_critique(templated_critique(p, garbage))
    assert c.parseable and c.final_correct is False
    assert c.first_wrong_step == (1 if split_steps(garbage) else None)


def test_random_fragments_get_consistent_critiques(problems):
    """Model samples mix solution lines, critique lines and blank lines; the oracle must cope."""
    rng = random.Random(0)
    pool = []
    for p in problems[:10]:
        pool += p.solution.splitlines() + templated_critique(p, p.solution).splitlines()
    pool += ["", "  ", "The answer is 7.", "Step 1: 3 +", "**Correctness of the step:** Wrong"]
    for p in problems[:20]:
        for _ in range(10):
            text = "\n".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
            c = parse_critique(templated_critique(p, text))
            stated = re.findall(r"answer is (\d+)", text)
            assert c.parseable
            assert c.final_correct == (bool(stated) and stated[-1] == p.answer)
            assert [s.index for s in c.steps] == list(range(1, len(c.steps) + 1))
            assert all(s.correct for s in c.steps[:-1])


def test_partial_and_odd_solutions():
    p = next(q for q in generate_problems(40, seed=5, levels=(3,)) if "+" in q.solution)
    lines = p.solution.splitlines()
    # stops early: every step right, final Wrong, no step blamed
    c = parse_critique(templated_critique(p, "\n".join(lines[:2])))
    assert c.final_correct is False and c.first_wrong_step is None and len(c.steps) == 2
    assert "missing" in c.final_explanation
    # right steps, wrong stated answer
    c = parse_critique(templated_critique(p, "\n".join(lines[:-1]) + "\nThe answer is 100."))
    assert c.final_correct is False and c.first_wrong_step is None
    assert "the answer says 100" in c.final_explanation
    # an extra step after a complete solution
    extra = "\n".join(lines[:-1] + ["Step 4: 1 + 1 = 2", lines[-1]])
    assert parse_critique(templated_critique(p, extra)).first_wrong_step == 4
    # swapped operands of + are fine; the wrong operation is not
    i = next(i for i, ln in enumerate(lines) if " + " in ln)
    a, _, b, c_ = _calcs(p.solution)[i]
    swapped = lines.copy()
    swapped[i] = f"Step {i + 1}: {b} + {a} = {c_}"
    assert parse_critique(templated_critique(p, "\n".join(swapped))).first_wrong_step is None
    swapped[i] = f"Step {i + 1}: {a} * {b} = {a * b}"
    c = parse_critique(templated_critique(p, "\n".join(swapped)))
    assert c.first_wrong_step == i + 1 and c.steps[-1].explanation.startswith("It should be")
    # a wrong step that still reaches the right answer: final verdict follows the answer
    lucky = lines.copy()
    lucky[0] = lucky[0].replace(" = ", " = 1")
    c = parse_critique(templated_critique(p, "\n".join(lucky)))
    assert c.final_correct is True and c.first_wrong_step == 1
