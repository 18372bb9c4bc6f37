"""Judges: who decides whether a refinement beats the response it refines (RCO's PS).

PS(y', y0) is 1 when the refinement y' is better than the initial response y0, 0.5 for a
tie and 0 when it is worse. Two judges implement the same interface:

* `VerifierJudge` (math): correctness against the gold answer decides. y' better when it is
  correct and y0 is not, worse when y0 is correct and y' is not, a tie otherwise.
* `ModelJudge` (open-ended tasks): a local checkpoint is prompted to compare two responses,
  once in each order. Only a verdict that holds in both orders counts; anything else (the
  two orders disagree, a tie, an unreadable reply) is a tie, so a judge that always prefers
  the first position gives 0.5: position bias cancels.

Both also rank two critiques of the same solution directly (the DPCO baseline's pairs) and
give an absolute score of one response (RQS): the verifier's is correctness (0 or 1), the
model judge's a 1-10 rating.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from jax.sharding import Mesh

from critique_jax.config import ModelSpec
from critique_jax.data.critique_format import parse_critique
from critique_jax.data.math import verify
from critique_jax.data.prompts import Messages
from critique_jax.models.loading import load_model
from critique_jax.pipelines.roles import make_agent
from critique_jax.sampling import Completion, SamplingParams

log = logging.getLogger(__name__)

BETTER, TIE, WORSE = 1.0, 0.5, 0.0
Gold = str | None


class Judge(Protocol):
    """What RCO, DPCO and their evaluation ask of a judge (all lists aligned item by item)."""

    scale: float  # the best possible `score`

    def compare_responses(
        self,
        questions: Sequence[str],
        candidates: Sequence[str],
        baselines: Sequence[str],
        golds: Sequence[Gold],
    ) -> list[float]:
        """PS(candidate, baseline) in {0, 0.5, 1} for each item."""
        ...

    def compare_critiques(
        self,
        questions: Sequence[str],
        solutions: Sequence[str],
        candidates: Sequence[str],
        baselines: Sequence[str],
        golds: Sequence[Gold],
    ) -> list[float]:
        """1 when critique `candidate` of `solution` is the better one, 0 when `baseline` is,
        0.5 for a tie."""
        ...

    def score(
        self, questions: Sequence[str], responses: Sequence[str], golds: Sequence[Gold]
    ) -> list[float | None]:
        """Absolute quality of each response on [0, scale]; None when unreadable."""
        ...


# --------------------------------------------------------------------------- verifier


def _need_golds(golds: Sequence[Gold]) -> None:
    if any(g is None for g in golds):
        raise ValueError(
            "the verifier judge needs the gold answer of every question; give "
            "records an `answer` or use judge.kind: model"
        )


def preference(better: bool, worse: bool) -> float:
    return BETTER if better and not worse else WORSE if worse and not better else TIE


@dataclass(frozen=True)
class VerifierJudge:
    """Answer checking against gold answers: the judge RCO uses for math."""

    scale: float = 1.0

    def compare_responses(
        self,
        questions: Sequence[str],
        candidates: Sequence[str],
        baselines: Sequence[str],
        golds: Sequence[Gold],
    ) -> list[float]:
        _need_golds(golds)
        out = []
        for cand, base, gold in zip(candidates, baselines, golds, strict=True):
            c, b = verify(cand, gold), verify(base, gold)
            out.append(preference(c and not b, b and not c))
        return out

    def compare_critiques(
        self,
        questions: Sequence[str],
        solutions: Sequence[str],
        candidates: Sequence[str],
        baselines: Sequence[str],
        golds: Sequence[Gold],
    ) -> list[float]:
        """The critique whose final verdict agrees with the verifier on `solution` wins."""
        _need_golds(golds)
        out = []
        for sol, cand, base, gold in zip(solutions, candidates, baselines, golds, strict=True):
            truth = verify(sol, gold)
            c = parse_critique(cand).final_correct == truth
            b = parse_critique(base).final_correct == truth
            out.append(preference(c and not b, b and not c))
        return out

    def score(
        self, questions: Sequence[str], responses: Sequence[str], golds: Sequence[Gold]
    ) -> list[float | None]:
        _need_golds(golds)
        return [float(verify(r, g)) for r, g in zip(responses, golds, strict=True)]


# --------------------------------------------------------------------------- model judge

_VERDICT_RULE = (
    'Reply with "[[A]]" if A is better, "[[B]]" if B is better, or "[[C]]" for a tie, then stop.'
)
COMPARE_RESPONSES = (
    """Compare two responses to the same question.

Question: {question}

[Response A]
{a}

[Response B]
{b}

Which response is better: more correct, complete and helpful? """
    + _VERDICT_RULE
)

COMPARE_CRITIQUES = (
    """Compare two critiques of the same solution.

Question: {question}

[Solution]
{solution}

[Critique A]
{a}

[Critique B]
{b}

Which critique would better help the author correct the solution: accurate about which steps
are wrong, and specific about how to fix them? """
    + _VERDICT_RULE
)

SCORE_RESPONSE = """Rate the response to the question below on a scale of 1 to 10 (10: fully
correct, complete and helpful; 1: useless).

Question: {question}

[Response]
{response}

Reply with "Rating: [[X]]" where X is a whole number from 1 to 10."""

_BRACKETED = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_LEADING = re.compile(r"^\W*(A|B|C|tie)\b", re.IGNORECASE)
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]|rating\s*:?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"^\D*?(\d+(?:\.\d+)?)")


def parse_verdict(text: str) -> str | None:
    """'A', 'B', 'tie', or None when the reply names none: the last `[[X]]`, else a reply
    that starts with the letter."""
    found = _BRACKETED.findall(text or "")
    if found:
        letter = found[-1]
    else:
        m = _LEADING.match(text or "")
        if m is None:
            return None
        letter = m[1].upper()
    return "tie" if letter in ("C", "TIE") else letter


def parse_rating(text: str, scale: float = 10.0) -> float | None:
    """The rating in 1..scale: `[[X]]`, `Rating: X`, else the first number; None if none."""
    m = _RATING.search(text or "")
    value = (m[1] or m[2]) if m else None
    if value is None:
        m = _NUMBER.match(text or "")
        value = m[1] if m else None
    if value is None or not 1.0 <= float(value) <= scale:
        return None
    return float(value)


class ChatModel(Protocol):
    def chat(
        self, conversations: Sequence[Messages], sp: SamplingParams
    ) -> list[list[Completion]]: ...


@dataclass
class ModelJudge:
    """A checkpoint prompted as a pairwise judge, asked in both orders.

    Every call puts all its prompts (both orders of every item) into one sampler call.
    `unreadable` counts replies with no verdict or rating (they count as ties / None).
    """

    model: ChatModel
    sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_new_tokens=32, temperature=0.0)
    )
    scale: float = 10.0
    unreadable: int = 0

    def _ask(self, prompts: list[str]) -> list[str]:
        convs = [[{"role": "user", "content": p}] for p in prompts]
        return [samples[0].text or "" for samples in self.model.chat(convs, self.sampling)]

    def _both_orders(self, first_prompts: list[str], second_prompts: list[str]) -> list[float]:
        """first_prompts show the candidate as A, second_prompts as B."""
        replies = self._ask(first_prompts + second_prompts)
        verdicts = [parse_verdict(r) for r in replies]
        missing = sum(v is None for v in verdicts)
        if missing:
            self.unreadable += missing
            log.warning(
                "judge: %d of %d replies had no [[A]]/[[B]]/[[C]] verdict (ties)",
                missing,
                len(verdicts),
            )
        n = len(first_prompts)
        return [
            preference(v1 == "A" and v2 == "B", v1 == "B" and v2 == "A")
            for v1, v2 in zip(verdicts[:n], verdicts[n:], strict=True)
        ]

    def compare_responses(
        self,
        questions: Sequence[str],
        candidates: Sequence[str],
        baselines: Sequence[str],
        golds: Sequence[Gold],
    ) -> list[float]:
        items = list(zip(questions, candidates, baselines, strict=True))
        fmt = COMPARE_RESPONSES.format
        return self._both_orders(
            [fmt(question=q, a=c, b=b) for q, c, b in items],
            [fmt(question=q, a=b, b=c) for q, c, b in items],
        )

    def compare_critiques(
        self,
        questions: Sequence[str],
        solutions: Sequence[str],
        candidates: Sequence[str],
        baselines: Sequence[str],
        golds: Sequence[Gold],
    ) -> list[float]:
        items = list(zip(questions, solutions, candidates, baselines, strict=True))
        fmt = COMPARE_CRITIQUES.format
        return self._both_orders(
            [fmt(question=q, solution=s, a=c, b=b) for q, s, c, b in items],
            [fmt(question=q, solution=s, a=b, b=c) for q, s, c, b in items],
        )

    def score(
        self, questions: Sequence[str], responses: Sequence[str], golds: Sequence[Gold]
    ) -> list[float | None]:
        prompts = [
            SCORE_RESPONSE.format(question=q, response=r)
            for q, r in zip(questions, responses, strict=True)
        ]
        ratings = [parse_rating(r, self.scale) for r in self._ask(prompts)]
        self.unreadable += sum(r is None for r in ratings)
        return ratings


# --------------------------------------------------------------------------- config


@dataclass
class JudgeConfig:
    kind: str = "verifier"  # verifier (math: gold answers) | model (a local checkpoint)
    model: ModelSpec | None = None  # the judge checkpoint, for kind: model
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.kind not in ("verifier", "model"):
            raise ValueError(f"judge.kind={self.kind!r}; use verifier or model")
        if self.kind == "model" and self.model is None:
            raise ValueError("judge.kind: model needs judge.model (a preset or an HF dir)")


def make_judge(cfg: JudgeConfig, mesh: Mesh | None = None, seed: int = 0) -> Judge:
    if cfg.kind == "verifier":
        return VerifierJudge()
    loaded = load_model(cfg.model, mesh=mesh, seed=seed)
    if loaded.tokenizer is None:
        raise ValueError("the judge model needs a tokenizer: set judge.model.tokenizer")
    sp = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    return ModelJudge(make_agent(loaded, mesh), sp)
