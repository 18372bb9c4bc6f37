"""The run-dir records of collect_critiques, eval_critic and eval_tts: lines in the on-disk
format (as the stages wrote them when records were plain dicts) read and write back
unchanged, key order included, so old run directories resume and compare byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest

from critique_jax.pipelines.critic_eval import EvalCritique
from critique_jax.pipelines.critique_data import (
    CollectedCritique,
    LabelledSolution,
    SolutionRecord,
)
from critique_jax.pipelines.roles import Judged
from critique_jax.pipelines.test_time import Attempt, Sample, TTSRecord

QUESTION = "Mia has 4 apples. She loses 2. How many apples does Mia have?"
WRONG = "Step 1: She loses 4, so 4 - 4 = 3.\nThe answer is 3."
CRITIQUE = (
    "Step 1 sentence: ...\nCorrectness of the step: Wrong\n\nCorrectness of the final answer: Wrong"
)

SOLUTION_LINE = {
    "id": "demo-1-0/sample0",
    "problem_id": "demo-1-0",
    "question": QUESTION,
    "answer": "2",
    "level": 1,
    "kind": "sample",
    "solution": WRONG,
    "pred": "3",
    "solution_is_correct": False,
    "first_error_step": None,
    "tokens": 21,
    "selected": True,
}
CRITIQUE_LINE = {
    "id": "demo-1-0/sample0/critique0",
    "solution_id": "demo-1-0/sample0",
    "problem_id": "demo-1-0",
    "question": QUESTION,
    "solution": WRONG,
    "answer": "2",
    "level": 1,
    "group": "sample-wrong",
    "solution_is_correct": False,
    "first_error_step": None,
    "critique": CRITIQUE,
    "parseable": True,
    "verdict": False,
    "first_wrong_step": 1,
    "verdict_agrees": True,
    "first_error_agrees": None,
    "tokens": 0,
    "refinements": [True, False],
    "refine_correct_frac": 0.5,
    "refine_tokens": 48,
    "kept": True,
}
SFT_LINE = {
    "id": "demo-1-0/sample0/critique0",
    "question": QUESTION,
    "solution": WRONG,
    "critique": CRITIQUE,
    "answer": "2",
    "level": 1,
    "group": "sample-wrong",
    "solution_is_correct": False,
    "first_error_step": None,
}
EVAL_CRITIQUE_LINE = {
    "id": "demo-2-0/reference",
    "critique": CRITIQUE,
    "parseable": True,
    "verdict": False,
    "first_wrong_step": 1,
    "quoted_steps": 1,
    "verbatim_quotes": 0,
    "checked_steps": 1,
    "agreeing_checks": 1,
    "tokens": 110,
    "refinements": [False, True],
    "refine_tokens": 48,
}


def judged(text: str, answer: str | None, correct: bool) -> dict[str, Any]:
    return {"text": text, "answer": answer, "correct": correct, "tokens": 24}


def critiqued(text: str, answer: str | None, correct: bool, verdict: bool | None) -> dict:
    return {
        **judged(text, answer, correct),
        "critique": CRITIQUE,
        "verdict": verdict,
        "critic_tokens": 113,
    }


RIGHT = "Step 1: She loses 2, so 4 - 2 = 2.\nThe answer is 2."
SEQUENTIAL_LINE = {
    "id": "demo-1-0",
    "level": 1,
    "gold": "2",
    "rounds": [critiqued(WRONG, "3", False, False), judged(RIGHT, "2", True)],
}
PARALLEL_LINE = {
    "id": "demo-1-0",
    "level": 1,
    "gold": "2",
    "samples": [
        {**critiqued(WRONG, "3", False, False), "refined": judged(RIGHT, "2", True)},
        {**critiqued(RIGHT, "2", True, True), "refined": None},
        {**critiqued("no answer", None, False, None), "refined": judged(WRONG, "3", False)},
    ],
}
PARALLEL_WITHOUT_CRITIC_LINE = {
    "id": "demo-1-0",
    "level": None,
    "gold": "2",
    "samples": [judged(WRONG, "3", False), judged(RIGHT, "2", True)],
}


@pytest.mark.parametrize(
    ("cls", "line"),
    [
        (SolutionRecord, SOLUTION_LINE),
        (CollectedCritique, CRITIQUE_LINE),
        (EvalCritique, EVAL_CRITIQUE_LINE),
        (TTSRecord, SEQUENTIAL_LINE),
        (TTSRecord, PARALLEL_LINE),
        (TTSRecord, PARALLEL_WITHOUT_CRITIC_LINE),
    ],
)
def test_on_disk_lines_read_and_write_back_unchanged(cls, line):
    record = cls.from_json(json.loads(json.dumps(line)))
    assert json.dumps(record.to_json()) == json.dumps(line)  # same keys, values and order
    assert cls.from_json(record.to_json()) == record


def test_gold_answers_and_predictions_have_their_own_names():
    solution = SolutionRecord.from_json(SOLUTION_LINE)
    assert (solution.gold, solution.pred, solution.selected) == ("2", "3", True)
    critique = CollectedCritique.from_json(CRITIQUE_LINE)
    assert critique.gold == "2" and critique.refinements == (True, False)
    assert critique.sft_json() == SFT_LINE
    parallel = TTSRecord.from_json(PARALLEL_LINE)
    first = parallel.samples[0]
    assert parallel.gold == "2" and first.judged.answer == "3" and not parallel.rounds
    assert first.refined == Judged(RIGHT, "2", True, 24)
    assert parallel.samples[1].refined is None and parallel.samples[1].verdict is True
    rounds = TTSRecord.from_json(SEQUENTIAL_LINE).rounds
    assert [type(a) for a in rounds] == [Attempt, Attempt] and rounds[1].critique is None
    assert all(type(s) is Sample for s in parallel.samples)


def test_a_solution_line_is_an_eval_record():
    """eval_critic reads collect_critiques' solutions.jsonl (or any file with the required
    fields) as its eval set: the gold answer, label and known first error, nothing else."""
    assert LabelledSolution.from_json(SOLUTION_LINE) == LabelledSolution(
        "demo-1-0/sample0", QUESTION, WRONG, "2", False, None, 1
    )


def test_eval_critiques_written_before_quotes_and_checks_were_counted():
    counts = ("quoted_steps", "verbatim_quotes", "checked_steps", "agreeing_checks")
    old = {k: v for k, v in EVAL_CRITIQUE_LINE.items() if k not in counts}
    record = EvalCritique.from_json(old)
    assert [getattr(record, k) for k in counts] == [0, 0, 0, 0]
    assert record.to_json() == {**EVAL_CRITIQUE_LINE, **dict.fromkeys(counts, 0)}
