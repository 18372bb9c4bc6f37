"""The three things every pipeline asks of a model: solve, critique, refine.

An `Agent` is a model that can generate (params + a Sampler shared by models of the same
architecture). A critic is anything with `critique(...)`: a trained `Agent`, or an oracle such
as the demo world's templated critic. Prompts always come from `critique_jax.data.prompts`, so
training and inference see identical text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from jax.sharding import Mesh

from critique_jax.data.critique_format import Critique, parse_critique
from critique_jax.data.math import extract_answer, is_equiv
from critique_jax.data.prompts import critique_messages, refine_messages, solve_messages
from critique_jax.data.records import Problem
from critique_jax.models.loading import LoadedModel
from critique_jax.sampling import Completion, Sampler, SamplingParams


@dataclass
class Agent:
    """Parameters plus the sampler that runs them."""

    params: Any
    sampler: Sampler

    @property
    def tokenizer(self) -> Any:
        return self.sampler.tokenizer

    def chat(self, conversations: Sequence[list[dict[str, str]]],
             sp: SamplingParams) -> list[list[Completion]]:
        return self.sampler.generate(self.params, conversations, sp)

    def critique(self, questions: Sequence[str], solutions: Sequence[str], sp: SamplingParams,
                 references: Sequence[str] | None = None) -> list[list[Completion]]:
        refs = references if references is not None else [None] * len(questions)
        return self.chat([critique_messages(q, s, r)
                          for q, s, r in zip(questions, solutions, refs, strict=True)], sp)


class Critic(Protocol):
    def critique(self, questions: Sequence[str], solutions: Sequence[str], sp: SamplingParams,
                 references: Sequence[str] | None = None) -> list[list[Completion]]: ...


@dataclass
class OracleCritic:
    """A critic from a function (problem, solution) -> critique text, e.g. the demo's
    templated critic; it generates no tokens, so it costs no inference compute."""

    problems: dict[str, Problem]  # question -> problem
    critique_fn: Callable[[Problem, str], str]

    def critique(self, questions: Sequence[str], solutions: Sequence[str], sp: SamplingParams,
                 references: Sequence[str] | None = None) -> list[list[Completion]]:
        return [[Completion((), (), "stop", self.critique_fn(self.problems[q], s))] * sp.n
                for q, s in zip(questions, solutions, strict=True)]


def solve(actor: Agent, questions: Sequence[str], sp: SamplingParams) -> list[list[Completion]]:
    return actor.chat([solve_messages(q) for q in questions], sp)


def refine(actor: Agent, questions: Sequence[str], solutions: Sequence[str],
           critiques: Sequence[str], sp: SamplingParams) -> list[list[Completion]]:
    return actor.chat([refine_messages(q, s, c)
                       for q, s, c in zip(questions, solutions, critiques, strict=True)], sp)


@dataclass(frozen=True)
class Judged:
    """A solution text with its extracted answer and whether it verifies."""

    text: str
    answer: str | None
    correct: bool
    tokens: int

    @classmethod
    def of(cls, completion: Completion, gold: str) -> Judged:
        text = completion.text or ""
        answer = extract_answer(text)
        return cls(text, answer, answer is not None and is_equiv(answer, gold),
                   completion.num_tokens)


def parsed(completion: Completion) -> Critique:
    return parse_critique(completion.text or "")


_SAMPLERS: dict[tuple, Sampler] = {}


def make_agent(model: LoadedModel, mesh: Mesh | None = None) -> Agent:
    """An Agent over a sampler shared by every model of the same architecture and tokenizer,
    so the actor and the critic compile once."""
    key = (model.cfg, id(model.tokenizer), mesh)
    if key not in _SAMPLERS:
        _SAMPLERS[key] = Sampler(model.cfg, model.tokenizer, mesh)
    return Agent(model.params, _SAMPLERS[key])
