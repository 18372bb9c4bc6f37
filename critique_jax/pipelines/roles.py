"""The three things every pipeline asks of a model: solve, critique, refine.

An `Agent` is a model that can generate (params + a Sampler, whose compiled programs every
model of the same architecture shares). A critic is anything with `critique(...)`: a trained
`Agent`, or an oracle such as the demo world's templated critic. Prompts always come from
`critique_jax.data.prompts`, so training and inference see identical text. Stages describe
their critic as a `CriticSpec` and load their roles here (`load_roles`), so every stage
resolves models and tokenizers alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from jax.sharding import Mesh

from critique_jax.config import ConfigError, ModelSpec, StageConfig
from critique_jax.data.critique_format import Critique, CritiqueFormat, parse_critique
from critique_jax.data.demo_tokenizer import build_demo_tokenizer
from critique_jax.data.demo_world import templated_critique
from critique_jax.data.math import extract_answer, verify
from critique_jax.data.prompts import (
    ANSWER_FORMAT,
    CRITIQUE_INSTRUCTIONS,
    critique_messages,
    refine_messages,
    solve_messages,
)
from critique_jax.data.records import Problem
from critique_jax.models.config import preset
from critique_jax.pipelines.loading import LoadedModel, load_model
from critique_jax.sampling import Completion, Sampler, SamplingParams


@dataclass
class Agent:
    """Parameters plus the sampler that runs them; as a critic it is prompted for critiques
    in `critique_format`."""

    params: Any
    sampler: Sampler
    critique_format: CritiqueFormat = "verdict_first"

    @property
    def tokenizer(self) -> Any:
        return self.sampler.tokenizer

    def chat(
        self, conversations: Sequence[list[dict[str, str]]], sp: SamplingParams
    ) -> list[list[Completion]]:
        return self.sampler.generate(self.params, conversations, sp)

    def critique(
        self,
        questions: Sequence[str],
        solutions: Sequence[str],
        sp: SamplingParams,
        references: Sequence[str] | None = None,
    ) -> list[list[Completion]]:
        refs = references if references is not None else [None] * len(questions)
        return self.chat(
            [
                critique_messages(q, s, r, self.critique_format)
                for q, s, r in zip(questions, solutions, refs, strict=True)
            ],
            sp,
        )


class Critic(Protocol):
    critique_format: CritiqueFormat

    def critique(
        self,
        questions: Sequence[str],
        solutions: Sequence[str],
        sp: SamplingParams,
        references: Sequence[str] | None = None,
    ) -> list[list[Completion]]: ...


@dataclass
class OracleCritic:
    """A critic from a function (problem, solution, format) -> critique text, e.g. the demo's
    templated critic; it generates no tokens, so it costs no inference compute."""

    problems: dict[str, Problem]  # question -> problem
    critique_fn: Callable[[Problem, str, CritiqueFormat], str]
    critique_format: CritiqueFormat = "verdict_first"

    def critique(
        self,
        questions: Sequence[str],
        solutions: Sequence[str],
        sp: SamplingParams,
        references: Sequence[str] | None = None,
    ) -> list[list[Completion]]:
        return [
            [
                Completion(
                    (), (), "stop", self.critique_fn(self.problems[q], s, self.critique_format)
                )
            ]
            * sp.n
            for q, s in zip(questions, solutions, strict=True)
        ]


def solve(actor: Agent, questions: Sequence[str], sp: SamplingParams) -> list[list[Completion]]:
    return actor.chat([solve_messages(q) for q in questions], sp)


def refine(
    actor: Agent,
    questions: Sequence[str],
    solutions: Sequence[str],
    critiques: Sequence[str],
    sp: SamplingParams,
) -> list[list[Completion]]:
    return actor.chat(
        [refine_messages(q, s, c) for q, s, c in zip(questions, solutions, critiques, strict=True)],
        sp,
    )


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
        return cls(text, extract_answer(text), verify(text, gold), completion.num_tokens)


def parsed(completion: Completion) -> Critique:
    return parse_critique(completion.text or "")


def make_agent(
    model: LoadedModel, mesh: Mesh | None = None, critique_format: CritiqueFormat = "verdict_first"
) -> Agent:
    """An Agent over a new Sampler: the sampler's programs are global jits keyed by the
    architecture, so the actor, the critic and every checkpoint of a stage compile once."""
    return Agent(model.params, Sampler(model.cfg, model.tokenizer, mesh), critique_format)


# --------------------------------------------------------------------------- critics and loading

# Oracle critics by name: functions (problem, solution text, format) -> critique text.
ORACLES: dict[str, Callable[[Problem, str, CritiqueFormat], str]] = {"demo": templated_critique}


@dataclass
class CriticSpec:
    """A critic or annotator: a model, or an oracle that needs none (`oracle: demo`, the demo
    world's step checker, which knows the true computation)."""

    model: ModelSpec | None = None
    oracle: str | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.oracle is None):
            raise ConfigError("give exactly one of `model: {preset|path: ...}` or `oracle: demo`")
        if self.oracle is not None and self.oracle not in ORACLES:
            raise ConfigError(f"oracle {self.oracle!r} unknown; oracles: {sorted(ORACLES)}")


def with_demo_tokenizer(spec: ModelSpec, problems: Sequence[Problem], out_dir: Path) -> ModelSpec:
    """A preset model without a tokenizer gets the demo tokenizer (built once in `out_dir`
    from the demo world's texts) when the problems are demo-world ones; anything else that
    has no tokenizer is a config error, because sampling needs one."""
    if spec.preset is None or spec.tokenizer is not None:
        return spec
    if not problems or any(p.source != "demo" for p in problems):
        raise ConfigError(
            f"model preset {spec.preset!r} has no tokenizer: set its `tokenizer:` to a tokenizer "
            "directory (only demo-world problems get the demo tokenizer built automatically)"
        )
    texts = [ANSWER_FORMAT, *CRITIQUE_INSTRUCTIONS.values()]
    for p in problems:
        texts += [p.question, p.solution]
        texts += [templated_critique(p, p.solution, fmt) for fmt in CRITIQUE_INSTRUCTIONS]
    vocab = preset(spec.preset, **spec.overrides).vocab_size
    build_demo_tokenizer(texts, str(out_dir), vocab_size=vocab)
    return dataclasses.replace(spec, tokenizer=str(out_dir))


def load_models(
    actor: ModelSpec | None, critic: CriticSpec | None, mesh: Mesh | None, seed: int
) -> tuple[LoadedModel | None, LoadedModel | None]:
    """(actor, critic model); one model when both specs are equal, so self-critique shares
    the actor's weights."""
    actor_model = load_model(actor, mesh, seed) if actor is not None else None
    if critic is None or critic.model is None:
        return actor_model, None
    if actor_model is not None and critic.model == actor:
        return actor_model, actor_model
    return actor_model, load_model(critic.model, mesh, seed)


def make_critic(
    spec: CriticSpec,
    model: LoadedModel | None,
    problems: Sequence[Problem],
    mesh: Mesh | None,
    critique_format: CritiqueFormat = "verdict_first",
) -> Critic:
    if spec.oracle is not None:
        oracle = ORACLES[spec.oracle]
        return OracleCritic({p.question: p for p in problems}, oracle, critique_format)
    if model is None:
        raise ValueError("a model critic needs its loaded model")
    return make_agent(model, mesh, critique_format)


def load_roles(
    actor: ModelSpec | None,
    critic: CriticSpec | None,
    problems: Sequence[Problem],
    mesh: Mesh | None = None,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
    critique_format: CritiqueFormat = "verdict_first",
) -> tuple[Agent | None, Critic | None]:
    """The actor and the critic of a stage (None where its spec is None); the critic writes
    `critique_format`. An oracle must know every problem it judges; with `tokenizer_dir`,
    preset models on demo problems get the demo tokenizer built there."""
    if tokenizer_dir is not None:
        out = Path(tokenizer_dir)
        if actor is not None:
            actor = with_demo_tokenizer(actor, problems, out)
        if critic is not None and critic.model is not None:
            critic = dataclasses.replace(
                critic, model=with_demo_tokenizer(critic.model, problems, out)
            )
    actor_model, critic_model = load_models(actor, critic, mesh, seed)
    agent = make_agent(actor_model, mesh) if actor_model is not None else None
    if critic is None:
        return agent, None
    return agent, make_critic(critic, critic_model, problems, mesh, critique_format)


def stage_roles(
    stage: StageConfig,
    actor: ModelSpec | None,
    critic: CriticSpec | None,
    problems: Sequence[Problem],
    mesh: Mesh | None,
) -> tuple[Agent | None, Critic | None]:
    """`load_roles` as a stage calls it: seeded by the stage, the critic writing the stage's
    critique format, a demo tokenizer built in the stage's run_dir/demo_tokenizer."""
    tokenizer_dir = Path(stage.run_dir) / "demo_tokenizer"
    return load_roles(
        actor, critic, problems, mesh, stage.seed, tokenizer_dir, stage.critique_format
    )
