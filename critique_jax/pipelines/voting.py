"""Answer aggregation for test-time supervision: majority vote and the critic as a verifier.

Pure functions over final answers (strings, or None where a sample states no answer). Answers
are grouped by mathematical equivalence (`is_equiv`), so "1/2", "0.5" and "\\frac{1}{2}" are
one vote. A vote returns the *index* of the winning sample (the first sample of the winning
group that votes), so callers read its stored correctness instead of re-checking the gold.

Tie rule, everywhere: the group with the larger total weight wins; on equal weight the group
with more samples; then the group whose first voting sample comes first. Deterministic, and with K=1
the vote is the sample itself.

The critic as verifier, from its final verdict per sample (True Correct, False Wrong, None when
the critique has no parseable verdict):
- `filtered_vote` drops the answers the critic calls Wrong and votes over the rest; when it
  would drop every answer it falls back to the plain vote (a critic that rejects everything
  carries no ranking signal).
- `weighted_vote` weights each vote by its verdict (`VerdictWeights`): Wrong answers still
  count a little, so they settle votes the accepted answers leave open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from critique_jax.data.math import is_equiv


def equivalence_labels(answers: Sequence[str | None]) -> list[int | None]:
    """Per answer, the index of the first answer equivalent to it (None for no answer).

    Each answer is compared with the first member of each existing group, so a prefix of the
    labels is the labelling of the prefix: label a K_max-sample run once, then vote on its
    first k samples with `labels[:k]`.
    """
    labels: list[int | None] = []
    heads: list[int] = []
    for i, answer in enumerate(answers):
        if answer is None or not answer.strip():
            labels.append(None)
            continue
        head = next(
            (h for h in heads if answer == answers[h] or is_equiv(answer, answers[h])), None
        )
        if head is None:
            heads.append(i)
            head = i
        labels.append(head)
    return labels


def vote(
    answers: Sequence[str | None],
    weights: Sequence[float] | None = None,
    labels: Sequence[int | None] | None = None,
) -> int | None:
    """Index of the winning answer (the first voting sample of the winning group) under the
    module's tie rule; samples of weight 0 do not vote. None when nothing votes. `labels`
    (from `equivalence_labels`) saves regrouping."""
    if weights is not None and len(weights) != len(answers):
        raise ValueError(f"{len(weights)} weights for {len(answers)} answers")
    labels = equivalence_labels(answers) if labels is None else labels[: len(answers)]
    groups: dict[int, list[float]] = {}  # label -> [weight, votes, first voting index]
    for i, label in enumerate(labels):
        w = 1.0 if weights is None else float(weights[i])
        if label is None or w <= 0:
            continue
        entry = groups.setdefault(label, [0.0, 0, i])
        entry[0] += w
        entry[1] += 1
    if not groups:
        return None
    return int(max(groups.values(), key=lambda g: (g[0], g[1], -g[2]))[2])


def majority_vote(
    answers: Sequence[str | None], labels: Sequence[int | None] | None = None
) -> int | None:
    """The most frequent answer (up to equivalence)."""
    return vote(answers, None, labels)


def filtered_vote(
    answers: Sequence[str | None],
    verdicts: Sequence[bool | None],
    labels: Sequence[int | None] | None = None,
) -> int | None:
    """Majority over the answers the critic does not call Wrong; all of them when it calls
    every answer Wrong."""
    _check_verdicts(answers, verdicts)
    keep = [1.0 if v is not False else 0.0 for v in verdicts]
    winner = vote(answers, keep, labels)
    return winner if winner is not None else vote(answers, None, labels)


@dataclass(frozen=True)
class VerdictWeights:
    """Vote weight of a sample by the critic's final verdict on it."""

    correct: float = 1.0
    unknown: float = 0.5  # no parseable verdict
    wrong: float = 0.1

    def __post_init__(self) -> None:
        if min(self.correct, self.unknown, self.wrong) < 0:
            raise ValueError(f"verdict weights must be >= 0, got {self}")

    def of(self, verdict: bool | None) -> float:
        return self.unknown if verdict is None else self.correct if verdict else self.wrong


DEFAULT_WEIGHTS = VerdictWeights()


def weighted_vote(
    answers: Sequence[str | None],
    verdicts: Sequence[bool | None],
    weights: VerdictWeights = DEFAULT_WEIGHTS,
    labels: Sequence[int | None] | None = None,
) -> int | None:
    """Vote with each sample weighted by its verdict; the plain vote when all weights are 0."""
    _check_verdicts(answers, verdicts)
    winner = vote(answers, [weights.of(v) for v in verdicts], labels)
    return winner if winner is not None else vote(answers, None, labels)


def _check_verdicts(answers: Sequence[str | None], verdicts: Sequence[bool | None]) -> None:
    if len(verdicts) != len(answers):
        raise ValueError(f"{len(verdicts)} verdicts for {len(answers)} answers")
