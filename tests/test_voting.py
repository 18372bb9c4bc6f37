"""Majority vote and the critic as a verifier, on hand-made answers."""

import pytest

from critique_jax.pipelines.voting import (
    VerdictWeights,
    equivalence_labels,
    filtered_vote,
    majority_vote,
    vote,
    weighted_vote,
)


def test_equivalent_forms_are_one_vote():
    answers = ["1/2", "3", "0.5", "\\frac{1}{2}", None, "3"]
    assert equivalence_labels(answers) == [0, 1, 0, 0, None, 1]
    # 1/2 has three votes in three notations against two for 3.
    assert majority_vote(answers) == 0


def test_ties_break_by_count_then_first_occurrence():
    assert majority_vote(["7", "5", "5", "7"]) == 0  # equal counts: the first group wins
    assert majority_vote(["5", "7", "7", "5"]) == 0
    assert majority_vote(["4", "9", "9"]) == 1
    # Equal weight, more samples wins: 9 twice at 0.5 vs 4 once at 1.0.
    assert vote(["4", "9", "9"], [1.0, 0.5, 0.5]) == 1
    assert vote(["4", "9", "9"], [1.5, 0.5, 0.5]) == 0


def test_no_answer_and_single_sample():
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    assert majority_vote(["12"]) == 0
    assert majority_vote([None, " ", "8"]) == 2


def test_prefix_labels_vote_like_the_prefix():
    answers = ["2", "3", "3", "2", "2"]
    labels = equivalence_labels(answers)
    for k in range(1, len(answers) + 1):
        assert majority_vote(answers[:k], labels) == majority_vote(answers[:k])


def test_filtered_vote_drops_wrong_and_falls_back():
    answers = ["5", "5", "6"]
    assert filtered_vote(answers, [False, False, True]) == 2
    # Unknown verdicts are kept; a tie of one vote each goes to the first voting sample.
    assert filtered_vote(answers, [False, None, True]) == 1
    assert filtered_vote(answers, [False, False, False]) == 0  # all filtered: plain vote
    assert filtered_vote(["5", None], [False, True]) == 0  # the kept one has no answer


def test_weighted_vote_by_verdict():
    answers = ["5", "5", "5", "6"]
    w = VerdictWeights(correct=1.0, unknown=0.5, wrong=0.1)
    assert weighted_vote(answers, [False, False, False, True], w) == 3  # 0.3 < 1.0
    assert weighted_vote(answers, [None, None, None, True], w) == 0  # 1.5 > 1.0
    zero = VerdictWeights(correct=1.0, unknown=0.0, wrong=0.0)
    assert weighted_vote(answers, [False, False, False, False], zero) == 0  # fallback
    assert weighted_vote(["0.5", "1/2", "2"], [None, None, True], w) == 0  # 1.0 vs 1.0: count
    with pytest.raises(ValueError, match="verdicts"):
        weighted_vote(answers, [True])
    with pytest.raises(ValueError, match=">= 0"):
        VerdictWeights(wrong=-1.0)
