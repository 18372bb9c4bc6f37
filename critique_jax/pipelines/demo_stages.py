"""The demo's config: the demo world, then each stage's own config at demo size, in run order.

Paths in a stage's section (`run_dir`, model and data paths, `collect_dir`) are relative to
the demo's run_dir, so `run_dir=...` moves the whole chain; the demo's seed and critique
format replace each stage's. Embedded here rather than read from configs/ so that an
installed copy runs without the repository; configs/demo.yaml writes the same values out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from critique_jax.config import ConfigError, ModelSpec, OptimConfig, StageConfig, TrainConfig
from critique_jax.data.critique_format import CritiqueFormat
from critique_jax.data.sources import ProblemSource
from critique_jax.pipelines import critic_eval, critique_data, rco, rco_collect, rco_eval, sft
from critique_jax.pipelines import self_train as st
from critique_jax.pipelines import test_time as tt
from critique_jax.pipelines.finetune import SFTData
from critique_jax.pipelines.roles import CriticSpec
from critique_jax.sampling import SamplingParams

SELF_TRAIN_CRITICS = ("auto", "trained", "oracle")


@dataclass
class WorldConfig:
    """The demo world's problems and the base model's texts (run_dir/world)."""

    train_size: int = 3000  # the pool of training questions; stages use prefixes of it
    test_size: int = 128  # test questions also seen in training are dropped
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    train_seed: int = 1
    test_seed: int = 2
    # the base model's texts: every training solution and, for this share of the questions,
    # an oracle critique of the reference solution or of an injected error
    critique_share: float = 0.3
    # the critic's eval set: per test question its reference, an injected error and these
    # actor samples (run_dir/critic_eval/eval_set.jsonl)
    eval_samples: int = 1
    eval_sampling: SamplingParams = field(default_factory=lambda: _sp(80, 0.7))


def _sp(tokens: int, temperature: float) -> SamplingParams:
    return SamplingParams(max_new_tokens=tokens, temperature=temperature)


def _train(steps: int, batch: int, seq_len: int, pack: bool = True) -> TrainConfig:
    every = {"log_every": max(1, steps // 5), "checkpoint_every": max(1, steps // 2)}
    return TrainConfig(steps=steps, batch_size=batch, seq_len=seq_len, pack=pack, **every)


def _optim(lr: float, warmup: int, decay: float = 0.01) -> OptimConfig:
    return OptimConfig(learning_rate=lr, warmup_steps=warmup, weight_decay=decay)


FULL = {  # one length per kind of output keeps the compiled sampler programs few
    "world": {},
    "solution_tokens": 80,  # solutions and refinements (a 3-step solution is <= 68 tokens)
    "critique_tokens": 208,  # critiques (reason_first, 3 steps: <= 203)
    "chunk": 128,  # questions per sampling chunk: the unit of batching and resume
    "base_steps": 800,  # the base model, trained from scratch: most of the budget
    "actor": (640, 80),  # iteration 0: questions, steps
    "critic": (512, 160),  # critiqued questions, critic SFT steps
    "k": [1, 2, 4],  # parallel samples: votes at every K
    "rco": (64, 4, 2, 2, _train(32, 16, 384, pack=False)),  # questions, N, M, eval N, train
    "self_train": (384, 4, 2, 16),  # questions, K, K', steps
}
# CI size (about three minutes on a 2-core CPU): levels 1-2, a few dozen questions per
# stage. The critic trains longest (64 steps: after 24 its reason-first critiques did not
# parse, 90% of them).
REDUCED = {
    "world": {"train_size": 1000, "test_size": 32, "levels": [1, 2]},
    "solution_tokens": 56,
    "critique_tokens": 144,
    "chunk": 64,
    "base_steps": 200,
    "actor": (64, 24),
    "critic": (32, 64),
    "k": [1, 2],
    "rco": (16, 2, 1, 2, _train(4, 8, 384, pack=False)),
    "self_train": (32, 2, 1, 24),
}


def stage_defaults(size: dict[str, Any]) -> dict[str, Any]:
    """The demo's sections at `size` (FULL or REDUCED)."""
    tokens, crit_tokens, chunk = size["solution_tokens"], size["critique_tokens"], size["chunk"]
    world = WorldConfig(**size["world"], eval_sampling=_sp(tokens, 0.7))
    levels = world.levels
    solution, greedy, critique = _sp(tokens, 0.7), _sp(tokens, 0.0), _sp(crit_tokens, 0.0)
    test = ProblemSource(kind="jsonl", path="world/test.jsonl")
    actor, critic = ModelSpec(path="self_train/iter_0/hf"), ModelSpec(path="critic_sft/hf")
    (actor_n, actor_steps), (critic_n, critic_steps) = size["actor"], size["critic"]
    rco_n, n, m, eval_n, rco_train = size["rco"]
    st_n, k, k_refine, st_steps = size["self_train"]

    def train_source(n: int) -> ProblemSource:
        return ProblemSource(split="train", seed=world.train_seed, size=n, levels=levels)

    tts = tt.TTSSettings(["sequential", "parallel"], size["k"], 2, greedy, solution, critique,
                         greedy, chunk_size=chunk)  # fmt: skip
    rollouts = {
        "actor": actor,
        "initial": rco_collect.InitialResponses(sampling=solution),
        "critique_sampling": _sp(crit_tokens, 1.0),  # the critic's own distribution
        "refine_sampling": solution,
        "chunk_groups": chunk,
    }
    return {
        "world": world,
        "base": sft.Config(
            run_dir="base",
            model=ModelSpec(preset="demo", tokenizer="demo_tokenizer"),
            data=SFTData(path="world/base.jsonl", format="chat"),
            train=_train(size["base_steps"], 8, 384),
            optim=_optim(3e-3, 20),
        ),
        "self_train": st.Config(  # iteration 0 (the actor) first, the iteration last
            run_dir="self_train",
            actor=ModelSpec(path="base/hf"),
            critic=None,  # set by self_train_critic
            train_problems=train_source(actor_n),
            test_problems=test,
            iterations=1,
            collect_problems=st_n,
            samples=k,
            refinements=k_refine,
            recheck=True,  # critique kept refinements again: drop those with a wrong step
            eval_samples=0,
            chunk_size=chunk,
            sample=solution,
            critique=critique,
            refine=solution,
            eval=greedy,
            sft0=_train(actor_steps, 8, 512),
            train=_train(st_steps, 8, 512),
            optim=_optim(1e-3, 8),
        ),
        "critic_data": critique_data.Config(
            run_dir="critic_data",
            problems=train_source(critic_n),
            actor=actor,
            annotator=CriticSpec(oracle="demo"),
            solutions=critique_data.SolutionsConfig(1, solution, 0.3, include_reference=True),
            # 3 injected errors per question instead of 1, with 160 steps instead of 60, took
            # first-error-step accuracy from 0.17 to 0.56 (seed 0)
            insertion=critique_data.InsertionConfig(method="demo", per_question=3),
            critiques=critique_data.CritiqueConfig(per_solution=1),
            # Monte Carlo soft filter off: it drops wrong annotator critiques, the oracle's
            # are right, and a weak actor would fail most refinements of wrong solutions
            filter=critique_data.FilterConfig(refinements=0, tau=0.5, sampling=solution),
            chunk_size=chunk,
        ),
        "critic_sft": sft.Config(
            run_dir="critic_sft",
            model=ModelSpec(path="base/hf"),
            data=SFTData(path="critic_data/critic_sft.jsonl"),
            train=_train(critic_steps, 8, 512),
            optim=_optim(1e-3, 8),
        ),
        "critic_eval": critic_eval.Config(
            run_dir="critic_eval",
            critic=CriticSpec(model=critic),
            eval_set=critic_eval.EvalSetConfig(path="critic_eval/eval_set.jsonl"),
            critique_sampling=critique,
            chunk_size=chunk,
        ),
        "test_time": tt.Config(
            run_dir="test_time",
            actor=actor,
            critic=CriticSpec(model=critic),
            problems=test,
            tts=tts,
        ),
        "test_time_oracle": tt.Config(  # the ceiling: what the actor makes of right critiques
            run_dir="test_time_oracle",
            actor=actor,
            critic=CriticSpec(oracle="demo"),
            problems=test,
            tts=dataclasses.replace(tts, modes=["sequential"]),
        ),
        "rco_collect": rco_collect.Config(
            run_dir="rco_collect",
            model=critic,
            problems=train_source(rco_n),
            num_critiques=n,
            num_refinements=m,
            seq_len=rco_train.seq_len,
            score_batch_size=rco.REFERENCE_ROWS,  # one scoring program for both stages
            **rollouts,
        ),
        "rco": rco.Config(
            run_dir="rco",
            collect_dir="rco_collect",
            model=critic,
            beta=0.5,  # CU / beta: target log-ratios within 2 nats of each other
            train=rco_train,
            optim=OptimConfig(learning_rate=1e-4, warmup_steps=3),
        ),
        "rco_eval": rco_eval.Config(
            run_dir="rco_eval",
            critics=[
                rco_eval.CriticEntry("sft", critic),
                rco_eval.CriticEntry("rco", ModelSpec(path="rco/hf")),
            ],
            problems=dataclasses.replace(test, limit=rco_n),
            num_critiques=eval_n,
            num_refinements=m,
            **rollouts,
        ),
    }


def _default(name: str) -> Any:
    return field(default_factory=lambda: stage_defaults(FULL)[name])


@dataclass
class Config(StageConfig):
    stage: str = "demo"
    run_dir: str = "runs/demo"
    critique_format: CritiqueFormat = "reason_first"  # a small critic recomputes, then judges
    seeds: int = 1  # > 1: the demo for seeds 0..seeds-1 (run_dir/seed_<s>) and their summary
    # the self-training critic: the trained one, the oracle, or auto (trained when its
    # verdicts beat chance, else the oracle)
    self_train_critic: str = "auto"
    world: WorldConfig = _default("world")
    base: sft.Config = _default("base")  # the stand-in for a pretrained base model
    self_train: st.Config = _default("self_train")
    critic_data: critique_data.Config = _default("critic_data")
    critic_sft: sft.Config = _default("critic_sft")
    critic_eval: critic_eval.Config = _default("critic_eval")
    test_time: tt.Config = _default("test_time")
    test_time_oracle: tt.Config = _default("test_time_oracle")
    rco_collect: rco_collect.Config = _default("rco_collect")
    rco: rco.Config = _default("rco")
    rco_eval: rco_eval.Config = _default("rco_eval")

    def __post_init__(self) -> None:
        if self.base.model.preset is None:
            raise ConfigError("demo: base.model must be a preset (trained from scratch)")
        if self.test_time.tts.rounds < 2:
            raise ConfigError("demo: test_time.tts.rounds must be >= 2 (claim (e))")
        if self.seeds < 1:
            raise ConfigError(f"demo: seeds must be >= 1, got {self.seeds}")
        if self.self_train_critic not in SELF_TRAIN_CRITICS:
            raise ConfigError(
                f"self_train_critic {self.self_train_critic!r}: choose one of "
                f"{list(SELF_TRAIN_CRITICS)}"
            )

    @classmethod
    def reduced(cls, **changes: Any) -> Config:
        """The same loop at CI size (REDUCED)."""
        return cls(**{**stage_defaults(REDUCED), **changes})
