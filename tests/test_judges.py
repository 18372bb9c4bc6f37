"""The judges of `rco_collect`: the verifier's PS table, and the pairwise model judge asked
in both orders."""

from __future__ import annotations

import re

import pytest

from critique_jax.config import ConfigError, ModelSpec, from_dict
from critique_jax.data.critique_format import StepVerdict, format_critique
from critique_jax.data.demo_tokenizer import build_demo_tokenizer
from critique_jax.data.demo_world import generate_problems
from critique_jax.data.prompts import CRITIQUE_INSTRUCTIONS
from critique_jax.pipelines.rco_collect import (
    Comparison,
    JudgeConfig,
    ModelJudge,
    VerifierJudge,
    make_judge,
    parse_rating,
    parse_verdict,
)
from critique_jax.sampling import Completion

RIGHT = "Step 1: 3 + 4 = 7\nThe answer is 7."
WRONG = "Step 1: 3 + 4 = 8\nThe answer is 8."
Q = "Ava has 3 pens. She buys 4 more. How many pens does Ava have?"


def responses(candidates, baselines, gold=None) -> list[Comparison]:
    return [Comparison(Q, c, b, gold) for c, b in zip(candidates, baselines, strict=True)]


def critiques(solutions, candidates, baselines, gold=None) -> list[Comparison]:
    items = zip(solutions, candidates, baselines, strict=True)
    return [Comparison(Q, c, b, gold, s) for s, c, b in items]


def critique(final_correct: bool) -> str:
    return format_critique(
        [StepVerdict(1, "3 + 4 = 8", final_correct, "why")], final_correct, "because"
    )


class FakeChat:
    """A judge model as a function of the prompt text; records every call."""

    def __init__(self, reply):
        self.reply = reply
        self.calls: list[int] = []

    def chat(self, conversations, sp):
        self.calls.append(len(conversations))
        return [[Completion((), (), "stop", self.reply(c[-1]["content"]))] for c in conversations]


def prefers_marked(prompt: str) -> str:
    """A fair judge: picks the side (A or B) whose text contains GOOD."""
    a = re.search(r"\[(?:Response|Critique) A\]\n(.*?)\n\n\[", prompt, re.S)[1]
    b = re.search(r"\[(?:Response|Critique) B\]\n(.*?)\n\n", prompt, re.S)[1]
    if ("GOOD" in a) == ("GOOD" in b):
        return "[[C]]"
    return "[[A]]" if "GOOD" in a else "[[B]]"


def test_verifier_ps_table():
    judge = VerifierJudge()
    cands = [RIGHT, WRONG, RIGHT, WRONG, "no answer at all"]
    bases = [WRONG, RIGHT, RIGHT, WRONG, RIGHT]
    assert judge.compare_responses(responses(cands, bases, "7")) == [1.0, 0.0, 0.5, 0.5, 0.0]
    assert judge.score([Q] * 3, [RIGHT, WRONG, ""], ["7"] * 3) == [1.0, 0.0, 0.0]


def test_verifier_ranks_critiques_by_verdict_agreement():
    judge = VerifierJudge()
    # WRONG is wrong: a critique saying "Wrong" agrees with the verifier.
    prefs = judge.compare_critiques(
        critiques(
            [WRONG, WRONG, RIGHT],
            [critique(False), critique(True), critique(True)],
            [critique(True), critique(False), "garbage"],
            "7",
        )
    )
    assert prefs == [1.0, 0.0, 1.0]
    assert judge.compare_critiques(critiques([WRONG], ["junk"], ["more junk"], "7")) == [0.5]


def test_verifier_needs_gold_answers():
    with pytest.raises(ValueError, match="gold answer"):
        VerifierJudge().compare_responses(responses([RIGHT], [WRONG]))


@pytest.mark.parametrize("judge", [VerifierJudge(), ModelJudge(FakeChat(prefers_marked))])
def test_comparing_critiques_needs_their_solution(judge):
    with pytest.raises(ValueError, match="`solution`"):
        judge.compare_critiques(responses([critique(True)], [critique(False)], "7"))


def test_position_biased_judge_gives_ties_in_both_orders():
    fake = FakeChat(lambda prompt: "[[A]] A is clearly better.")
    judge = ModelJudge(fake)
    prefs = judge.compare_responses(responses(["GOOD x", "y", "z"], ["w", "GOOD v", "u"]))
    assert prefs == [0.5, 0.5, 0.5]
    assert judge.compare_critiques(critiques([WRONG], ["c1"], ["c2"])) == [0.5]
    assert fake.calls == [6, 2]  # both orders of every item in one sampler call


def test_consistent_judge_decides_and_ties_stay_ties():
    fake = FakeChat(prefers_marked)
    judge = ModelJudge(fake)
    cands = ["GOOD refinement", "bad refinement", "GOOD one", "plain"]
    bases = ["bad original", "GOOD original", "GOOD two", "plain too"]
    assert judge.compare_responses(responses(cands, bases)) == [1.0, 0.0, 0.5, 0.5]
    prefs = judge.compare_critiques(
        critiques([WRONG] * 2, ["GOOD critique", "meh"], ["meh", "GOOD critique"])
    )
    assert prefs == [1.0, 0.0]
    assert judge.unreadable == 0


def test_unreadable_verdicts_count_as_ties():
    judge = ModelJudge(FakeChat(lambda prompt: "I cannot decide"))
    assert judge.compare_responses(responses(["a"], ["b"])) == [0.5]
    assert judge.unreadable == 2


def test_parse_verdict_and_rating():
    assert parse_verdict("The verdict: [[B]]") == "B"
    assert parse_verdict("[[A]] then later [[C]]") == "tie"
    assert parse_verdict("B. Response B is more complete") == "B"
    assert parse_verdict("Tie, both are fine") == "tie"
    assert parse_verdict("Both are fine") is None
    assert parse_rating("Rating: [[7]]") == 7.0
    assert parse_rating("rating: 8.5 out of 10") == 8.5
    assert parse_rating("I give it 3") == 3.0
    assert parse_rating("Rating: [[11]]") is None
    assert parse_rating("no number") is None


def test_model_judge_scores_and_config():
    judge = ModelJudge(FakeChat(lambda prompt: "Rating: [[9]]" if "GOOD" in prompt else "??"))
    assert judge.score([Q, Q], ["GOOD answer", "other"], [None, None]) == [9.0, None]
    assert judge.unreadable == 1
    with pytest.raises(ConfigError, match="judge.model"):
        from_dict(JudgeConfig, {"kind": "model"})
    with pytest.raises(ConfigError, match="verifier or model"):
        from_dict(JudgeConfig, {"kind": "oracle"})


def test_model_judge_runs_a_local_checkpoint(tmp_path):
    """The whole path through make_judge: a (random) checkpoint answers in {0, 0.5, 1}."""
    problems = generate_problems(20, 0)
    tok_dir = tmp_path / "tok"
    build_demo_tokenizer(
        [p.question + "\n" + p.solution for p in problems] + [*CRITIQUE_INSTRUCTIONS.values()],
        str(tok_dir),
    )
    spec = ModelSpec(preset="tiny", tokenizer=str(tok_dir), overrides={"vocab_size": 512})
    judge = make_judge(JudgeConfig(kind="model", model=spec, max_new_tokens=4))
    assert isinstance(judge, ModelJudge) and judge.scale == 10.0
    prefs = judge.compare_responses(responses([RIGHT, WRONG], [WRONG, RIGHT]))
    assert all(p in (0.0, 0.5, 1.0) for p in prefs)
    scores = judge.score([Q], [RIGHT], [None])
    assert scores[0] is None or 1.0 <= scores[0] <= 10.0
