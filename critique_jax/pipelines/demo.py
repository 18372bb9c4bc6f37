"""The `demo` stage: the whole MathCritique + RCO loop on the embedded arithmetic world.

    python -m critique_jax.train                                  # this stage, its defaults
    python -m critique_jax.train --config configs/demo.yaml       # the same values, written out

No download and no accelerator: the demo world (`data.demo_world`) supplies problems, gold
answers, controlled errors and an oracle step checker; a SentencePiece tokenizer and a small
transformer (`preset: demo`) are trained from scratch. Every phase is one of the library's
stages, called through its Python API with a config built here, so the demo runs exactly the
code the real-data configs run:

1. world: train and test problems (different seeds; test questions seen in training are
   dropped), written to run_dir/world/, and the demo tokenizer (run_dir/demo_tokenizer).
2. base model (`sft` on run_dir/world/base.jsonl): the stand-in for the pretrained LLM
   the papers start from, trained from scratch on the world's texts: a solution of every
   training question and oracle critiques of reference solutions and injected errors for
   a share of them. Most of the budget: here the model learns to read, compute and write
   the critique format.
3. actor SFT from the base: iteration 0 of self-training (`self_train.iteration_zero`),
   reference solutions plus refinement examples (x, y0, c -> y') on a prefix of the
   questions, where it learns to follow a critique; greedy test accuracy -> actor_accuracy.
4. critic (`critique_data.collect`, `sft`, `critic_eval.evaluate`): AutoMathCritique with the
   oracle annotator on actor samples, injected errors and reference solutions (Monte Carlo
   soft filtering is available but off: it drops wrong annotator critiques, and the oracle
   makes none); critic SFT from the base; verdicts on a held-out eval set (per test
   question its reference solution, an injected error and actor samples, labelled by the
   verifier): accuracy against chance (the majority label's share), and balanced accuracy
   (the mean over right and wrong solutions; chance 0.5).
5. test-time supervision (`test_time.run_test_time`) with the trained critic: sequential
   critique -> refine rounds, majority vote vs critique-refine + vote vs critic-weighted vote
   at K, and the accuracy-vs-compute plot; then the same rounds with the oracle critic (the
   ceiling: what the actor makes of critiques that are right).
6. RCO (`rco_collect`, `rco_train`, `rco_eval`): N critiques x M refinements from the SFT
   critic on training (x, y0), the least-squares critic training, then the mean critique
   utility (CU) of the SFT and the RCO critic on held-out (x, y0).
7. self-training (`self_train.iteration`): one iteration of vanilla (rejection sampling) and
   critique-in-the-loop self-training from the same iteration-0 actor; the critic is the
   trained one, or the oracle when the trained critic does not beat chance
   (`self_train.critic: auto`), and the results say which.
8. one results table (printed, run_dir/results.md) and run_dir/results.json.

Resume: every phase writes into its own subdirectory and is skipped, or resumes record by
record (training: from its last checkpoint), when the stage is run again with the same
run_dir, e.g. after a kill.

Sizes: one seed of the defaults takes about 8 minutes on an idle 2-core CPU, half of it the
base phase (training from scratch).
`Config.reduced()` is the same loop at CI size (tests/test_demo.py); from the command line:
`python -c "from critique_jax.pipelines.demo import Config, run;
run(Config.reduced(run_dir='runs/demo_tiny'))"`. One generation length per kind of output
(`generation`) and shared fan-outs keep the compiled sampler programs few: each costs
seconds on a CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from critique_jax.config import (
    ConfigError,
    MeshConfig,
    ModelSpec,
    OptimConfig,
    StageConfig,
    TrainConfig,
)
from critique_jax.data.critique_format import CritiqueFormat
from critique_jax.data.demo_world import inject_error, templated_critique
from critique_jax.data.prompts import critique_messages, solve_messages
from critique_jax.data.records import Problem
from critique_jax.data.sources import ProblemSource
from critique_jax.models.config import preset
from critique_jax.pipelines import critic_eval, critique_data, rco, rco_collect, rco_eval, sft
from critique_jax.pipelines import self_train as st
from critique_jax.pipelines.demo_claims import claims, claims_table, over_seeds, seeds_table
from critique_jax.pipelines.reporting import sorted_levels, table_cell
from critique_jax.pipelines.roles import (
    Agent,
    Critic,
    CriticSpec,
    make_critic,
    with_demo_tokenizer,
)
from critique_jax.pipelines.seeds import stable_seed
from critique_jax.pipelines.test_time import TTSSettings, run_test_time
from critique_jax.runio import atomic_write_json, atomic_write_text, this_process_writes
from critique_jax.sampling import SamplingParams
from critique_jax.sharding import mesh_from_config

log = logging.getLogger(__name__)

SELF_TRAIN_CRITICS = ("auto", "trained", "oracle")


# --------------------------------------------------------------------------- config


@dataclass
class WorldConfig:
    train_size: int = 3000  # the pool of training questions; phases use prefixes of it
    test_size: int = 128
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    train_seed: int = 1
    test_seed: int = 2


@dataclass
class GenerationConfig:
    """Lengths and temperatures shared by every phase: one length per kind of output keeps
    the compiled sampler programs few."""

    solution_tokens: int = 80  # solutions and refinements (a 3-step solution is <= 68 tokens)
    critique_tokens: int = 208  # critiques (reason_first, 3 steps: <= 203)
    temperature: float = 0.7  # sampled solutions and refinements
    critique_temperature: float = 1.0  # RCO's sampled critiques: the critic's own distribution
    chunk_size: int = 128  # questions per sampling chunk: the unit of batching and resume


def _train(steps: int, batch: int, seq_len: int, pack: bool = True) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=batch,
        seq_len=seq_len,
        pack=pack,
        log_every=max(1, steps // 5),
        checkpoint_every=max(1, steps // 2),
    )


@dataclass
class BasePhase:
    """The stand-in for a pretrained base model, which the papers fine-tune into both actor
    and critic: the `sft` stage from scratch on the world's texts, a solution of every
    training question and, for a `critique_share` of them, an oracle critique of either the
    reference solution or an injected error. Here the model learns to read a question,
    compute and write critiques: most of the demo's budget."""

    critique_share: float = 0.3
    train: TrainConfig = field(default_factory=lambda: _train(800, 8, 384))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(learning_rate=3e-3, warmup_steps=20, weight_decay=0.01)
    )


@dataclass
class ActorPhase:
    """Actor SFT from the base: iteration 0 of self-training on the first `problems`
    questions, reference solutions plus refinement examples (x, y0, c -> y'), where the
    actor learns to follow a critique."""

    problems: int = 640
    train: TrainConfig = field(default_factory=lambda: _train(80, 8, 512))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(learning_rate=1e-3, warmup_steps=8, weight_decay=0.01)
    )


@dataclass
class CriticPhase:
    problems: int = 512  # training questions whose solutions are critiqued
    samples: int = 1  # actor samples per question (temperature > 0)
    correct_share: float = 0.3  # share of correct solutions among the critiqued ones
    # injected errors per question (known first-error step); 3 instead of 1, with 160 steps
    # instead of 60, took first-error-step accuracy from 0.17 to 0.56 and verbatim quotes
    # from 0.55 to 0.64 (seed 0)
    insertions: int = 3
    # Monte Carlo soft filter: M refinements per critique of a wrong solution, kept when at
    # least tau verify. It exists to drop wrong annotator critiques; the oracle's are right by
    # construction, and with a weak actor the filter would drop most critiques of wrong
    # solutions, so it is off (0) by default.
    refinements: int = 0
    tau: float = 0.5
    eval_samples: int = 1  # eval set: actor samples per test question (+ reference, insertion)
    train: TrainConfig = field(default_factory=lambda: _train(160, 8, 512))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(learning_rate=1e-3, warmup_steps=8, weight_decay=0.01)
    )


@dataclass
class TTSPhase:
    k: int = 4  # parallel samples per question (votes at every power of 2 up to K)
    rounds: int = 2  # sequential critique -> refine rounds (claim (e) compares 2 with 1)


@dataclass
class RCOPhase:
    problems: int = 64  # training (x, y0) groups
    eval_problems: int = 64  # held-out (x, y0) groups (test questions)
    critiques: int = 4  # N per group
    refinements: int = 2  # M per critique
    eval_critiques: int = 2
    eval_refinements: int = 2
    beta: float = 0.5  # CU / beta: target log-ratios within 2 nats of each other
    train: TrainConfig = field(default_factory=lambda: _train(32, 16, 384, pack=False))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(learning_rate=1e-4, warmup_steps=3)
    )


@dataclass
class SelfTrainPhase:
    problems: int = 384  # training questions sampled per iteration
    samples: int = 4  # K per question
    refinements: int = 2  # K' per critique of a wrong sample
    critic: str = "auto"  # auto (trained if it beats chance, else oracle) | trained | oracle
    recheck: bool = True  # critique kept refinements again: drop those with a wrong step
    train: TrainConfig = field(default_factory=lambda: _train(16, 8, 512))


@dataclass
class Config(StageConfig):
    stage: str = "demo"
    run_dir: str = "runs/demo"
    critique_format: CritiqueFormat = "reason_first"  # a small critic recomputes, then judges
    seeds: int = 1  # > 1: the demo for seeds 0..seeds-1 (run_dir/seed_<s>) and their summary
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="demo"))
    world: WorldConfig = field(default_factory=WorldConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    base: BasePhase = field(default_factory=BasePhase)
    actor: ActorPhase = field(default_factory=ActorPhase)
    critic: CriticPhase = field(default_factory=CriticPhase)
    tts: TTSPhase = field(default_factory=TTSPhase)
    rco: RCOPhase = field(default_factory=RCOPhase)
    self_train: SelfTrainPhase = field(default_factory=SelfTrainPhase)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        if self.model.preset is None:
            raise ConfigError("demo: model must be a preset (trained from scratch on the world)")
        if self.tts.k < 1 or self.tts.rounds < 2:
            raise ConfigError("demo: tts.k must be >= 1 and tts.rounds >= 2 (claim (e))")
        if self.seeds < 1:
            raise ConfigError(f"demo: seeds must be >= 1, got {self.seeds}")
        if self.self_train.critic not in SELF_TRAIN_CRITICS:
            raise ConfigError(
                f"self_train.critic {self.self_train.critic!r}: choose one of "
                f"{list(SELF_TRAIN_CRITICS)}"
            )
        w = self.world
        needs = {
            "actor.problems": self.actor.problems,
            "critic.problems": self.critic.problems,
            "rco.problems": self.rco.problems,
            "self_train.problems": self.self_train.problems,
        }
        too_many = [k for k, v in needs.items() if not 1 <= v <= w.train_size]
        if too_many or not 1 <= self.rco.eval_problems <= w.test_size:
            raise ConfigError(
                f"demo: {too_many or ['rco.eval_problems']} must be between 1 and the "
                "world's train_size (test_size for rco.eval_problems)"
            )

    @classmethod
    def reduced(cls, **changes: Any) -> Config:
        """The same loop at CI size (about three minutes on a 2-core CPU): levels 1-2, a few
        dozen questions per phase, tens of training steps after a short base phase. Iteration
        0, critic SFT and self-training share one optimizer and row shape; the critic trains
        longest (64 steps: after 24 its reason-first critiques did not parse, 90% of them)."""
        step = _train(24, 8, 512)
        optim = ActorPhase().optim
        cfg = cls(
            world=WorldConfig(train_size=1000, test_size=32, levels=[1, 2]),
            generation=GenerationConfig(solution_tokens=56, critique_tokens=144, chunk_size=64),
            base=BasePhase(train=_train(200, 8, 384)),
            actor=ActorPhase(problems=64, train=step, optim=optim),
            critic=CriticPhase(problems=32, samples=1, train=_train(64, 8, 512), optim=optim),
            tts=TTSPhase(k=2),
            rco=RCOPhase(
                problems=16,
                eval_problems=16,
                critiques=2,
                eval_critiques=2,
                refinements=1,
                eval_refinements=1,
                train=_train(4, 8, 384, pack=False),
            ),
            self_train=SelfTrainPhase(problems=32, samples=2, refinements=1, train=step),
        )
        return dataclasses.replace(cfg, **changes)


# --------------------------------------------------------------------------- helpers


class Clock:
    """Wall and CPU seconds per phase, added to the seconds recorded by the earlier runs of
    the same run_dir (`earlier`), so a resumed demo still reports what each phase cost; on a
    shared machine the CPU time shows how much of a slow phase was spent waiting."""

    def __init__(self, earlier: dict[str, dict[str, float]] | None = None) -> None:
        self.earlier = earlier or {}
        self.phases: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        log.info("demo: %s", name)
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        spent = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
        log.info("demo: %s took %.1f s (%.1f s CPU)", name, spent["wall_s"], spent["cpu_s"])
        before = self.earlier.get(name, {})
        self.phases[name] = {k: round(v + before.get(k, 0.0), 1) for k, v in spent.items()}


def _done(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _sp(tokens: int, temperature: float) -> SamplingParams:
    return SamplingParams(max_new_tokens=tokens, temperature=temperature)


def _source(cfg: Config, split: str, size: int | None = None) -> ProblemSource:
    """The world's training or test problems (a prefix of them when `size` is smaller: the
    demo world generates problems one by one from its seed)."""
    w = cfg.world
    seed = w.train_seed if split == "train" else w.test_seed
    size = size or (w.train_size if split == "train" else w.test_size)
    return ProblemSource(kind="demo", split=split, seed=seed, size=size, levels=list(w.levels))


def self_train_config(cfg: Config, run_dir: Path, actor: ModelSpec) -> st.Config:
    """The self_train stage config the demo's actor phases share (iteration 0 from `actor`,
    and the iterations of both arms); the critic is passed to `iteration` directly."""
    g, s = cfg.generation, cfg.self_train
    return st.Config(
        run_dir=str(run_dir),
        seed=cfg.seed,
        critique_format=cfg.critique_format,
        actor=actor,
        critic=None,
        train_problems=_source(cfg, "train"),
        test_problems=_source(cfg, "test"),
        iterations=1,
        samples=s.samples,
        refinements=s.refinements,
        recheck=s.recheck,
        eval_samples=0,
        chunk_size=g.chunk_size,
        sample=_sp(g.solution_tokens, g.temperature),
        critique=_sp(g.critique_tokens, 0.0),
        refine=_sp(g.solution_tokens, g.temperature),
        eval=_sp(g.solution_tokens, 0.0),
        sft0=cfg.actor.train,
        train=s.train,
        optim=cfg.actor.optim,
        mesh=cfg.mesh,
    )


def _write_problems(path: Path, problems: list[Problem]) -> None:
    if this_process_writes():
        atomic_write_text(path, "".join(json.dumps(p.to_dict()) + "\n" for p in problems))


def _at(points: list[dict[str, Any]], key: str, value: int) -> dict[str, Any]:
    return next(p for p in points if p[key] == value)


# --------------------------------------------------------------------------- phases


def base_records(
    train: list[Problem], share: float, seed: int, fmt: CritiqueFormat
) -> list[dict[str, Any]]:
    """The base model's texts as chat records: every question with its solution and, for a
    `share` of the questions, a critique (in format `fmt`) of its reference solution or of
    an injected error (alternately, so right and wrong solutions are balanced)."""
    rng = random.Random(f"demo-base:{seed}")
    records, wrong = [], False
    for p in train:
        records.append({"messages": [*solve_messages(p.question), _assistant(p.solution)]})
        if rng.random() < share:
            y = inject_error(p, rng.randint(1, p.level), seed) if wrong else p.solution
            critique = templated_critique(p, y, fmt)
            prompt = critique_messages(p.question, y, fmt=fmt)
            records.append({"messages": [*prompt, _assistant(critique)]})
            wrong = not wrong
    rng.shuffle(records)
    return records


def _assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def base_sft(cfg: Config, run_dir: Path, spec: ModelSpec, train: list[Problem]) -> Path:
    """Train the base model from scratch (the `sft` stage on `base_records`); returns its
    HF directory, where actor and critic SFT start."""
    out = run_dir / "base"
    if _done(out / "results.json") is None:
        data = run_dir / "world" / "base.jsonl"
        records = base_records(train, cfg.base.critique_share, cfg.seed, cfg.critique_format)
        if this_process_writes():
            atomic_write_text(data, "".join(json.dumps(r) + "\n" for r in records))
        sft.run(
            sft.Config(
                run_dir=str(out),
                seed=cfg.seed,
                critique_format=cfg.critique_format,
                model=spec,
                data=sft.SFTData(path=str(data), format="chat"),
                train=cfg.base.train,
                optim=cfg.base.optim,
                mesh=cfg.mesh,
            )
        )
    return out / "hf"


def collect_critiques(
    cfg: Config, run_dir: Path, train: list[Problem], actor: Agent, actor_hf: Path, mesh: Any
) -> dict[str, Any]:
    """AutoMathCritique with the oracle annotator on the actor's samples, injected errors and
    reference solutions; returns the collection summary (critic_sft.jsonl holds the data)."""
    c, g = cfg.critic, cfg.generation
    problems = train[: c.problems]
    collect_cfg = critique_data.Config(
        run_dir=str(run_dir / "critic_data"),
        seed=cfg.seed,
        critique_format=cfg.critique_format,
        problems=_source(cfg, "train", c.problems),
        actor=ModelSpec(path=str(actor_hf)),
        annotator=CriticSpec(oracle="demo"),
        solutions=critique_data.SolutionsConfig(
            samples_per_question=c.samples,
            sampling=_sp(g.solution_tokens, g.temperature),
            correct_share=c.correct_share,
            include_reference=True,
        ),
        insertion=critique_data.InsertionConfig(method="demo", per_question=c.insertions),
        critiques=critique_data.CritiqueConfig(per_solution=1),
        filter=critique_data.FilterConfig(
            refinements=c.refinements, tau=c.tau, sampling=_sp(g.solution_tokens, g.temperature)
        ),
        chunk_size=g.chunk_size,
        mesh=cfg.mesh,
    )
    annotator = make_critic(CriticSpec(oracle="demo"), None, problems, mesh, cfg.critique_format)
    done = _done(run_dir / "critic_data" / "summary.json")
    return done or critique_data.collect(collect_cfg, problems, actor, annotator)


def train_critic(cfg: Config, run_dir: Path, base_hf: Path) -> Path:
    """Critic SFT on the kept critiques, from the base model (as the actor)."""
    out = run_dir / "critic_sft"
    if _done(out / "results.json") is None:
        sft.run(
            sft.Config(
                run_dir=str(out),
                seed=cfg.seed,
                critique_format=cfg.critique_format,
                model=ModelSpec(path=str(base_hf)),
                data=sft.SFTData(path=str(run_dir / "critic_data" / "critic_sft.jsonl")),
                train=cfg.critic.train,
                optim=cfg.critic.optim,
                mesh=cfg.mesh,
            )
        )
    return out / "hf"


def evaluate_critic(
    cfg: Config,
    run_dir: Path,
    test: list[Problem],
    actor: Agent,
    critic: Agent,
    critic_hf: Path,
) -> dict[str, Any]:
    """Verdict accuracy on held-out solutions: per test question its reference solution, an
    injected error and actor samples, labelled by the verifier."""
    g = cfg.generation
    out = run_dir / "critic_eval"
    eval_set = out / "eval_set.jsonl"
    if eval_set.exists():
        records = critic_eval.read_eval_set(eval_set)
    else:
        sp = _sp(g.solution_tokens, g.temperature).replace(
            seed=stable_seed(cfg.seed, "demo-eval-set")
        )
        records = critic_eval.build_demo_eval_set(test, 1, cfg.seed)
        records += critic_eval.build_sampled_eval_set(actor, test, cfg.critic.eval_samples, sp)
        if this_process_writes():
            atomic_write_text(eval_set, "".join(json.dumps(r) + "\n" for r in records))
    eval_cfg = critic_eval.Config(
        run_dir=str(out),
        seed=cfg.seed,
        critique_format=cfg.critique_format,
        critic=CriticSpec(model=ModelSpec(path=str(critic_hf))),
        eval_set=critic_eval.EvalSetConfig(path=str(eval_set)),
        critique_sampling=_sp(g.critique_tokens, 0.0),
        refinements=0,
        chunk_size=g.chunk_size,
        mesh=cfg.mesh,
    )
    metrics = critic_eval.evaluate(eval_cfg, records, critic, None)
    base = metrics["base_rate_correct"]
    metrics["chance"] = max(base, 1 - base)  # always answering the majority label
    return metrics


def rco_phase(
    cfg: Config, run_dir: Path, actor: Agent, critic_hf: Path, test_path: Path
) -> dict[str, Any]:
    """Critique utility of the SFT critic's critiques, RCO training, and the mean CU of both
    critics on held-out (x, y0)."""
    r, g = cfg.rco, cfg.generation
    collect_dir, train_dir = run_dir / "rco_collect", run_dir / "rco"
    initial = rco_collect.InitialResponses(
        source="actor", per_question=1, sampling=_sp(g.solution_tokens, g.temperature)
    )
    critique_sp = _sp(g.critique_tokens, g.critique_temperature)
    refine_sp = _sp(g.solution_tokens, g.temperature)
    summary = _done(collect_dir / "summary.json") or rco_collect.run(
        rco_collect.Config(
            run_dir=str(collect_dir),
            seed=cfg.seed,
            critique_format=cfg.critique_format,
            model=ModelSpec(path=str(critic_hf)),
            problems=_source(cfg, "train", r.problems),
            initial=initial,
            judge=rco_collect.JudgeConfig(kind="verifier"),
            num_critiques=r.critiques,
            num_refinements=r.refinements,
            critique_sampling=critique_sp,
            refine_sampling=refine_sp,
            seq_len=r.train.seq_len,
            score_batch_size=rco.REFERENCE_ROWS,  # one scoring program for both
            chunk_groups=g.chunk_size,
            mesh=cfg.mesh,
        ),
        actor=actor,
    )
    trained = _done(train_dir / "results.json") or rco.run(
        rco.Config(
            run_dir=str(train_dir),
            seed=cfg.seed,
            critique_format=cfg.critique_format,
            collect_dir=str(collect_dir),
            model=ModelSpec(path=str(critic_hf)),
            beta=r.beta,
            train=r.train,
            optim=r.optim,
            mesh=cfg.mesh,
        )
    )
    table = rco_eval.run(
        rco_eval.Config(
            run_dir=str(run_dir / "rco_eval"),
            seed=cfg.seed,
            critique_format=cfg.critique_format,
            critics=[
                rco_eval.CriticEntry("sft", ModelSpec(path=str(critic_hf))),
                rco_eval.CriticEntry("rco", ModelSpec(path=str(train_dir / "hf"))),
            ],
            problems=ProblemSource(kind="jsonl", path=str(test_path), limit=r.eval_problems),
            initial=initial,
            judge=rco_collect.JudgeConfig(kind="verifier"),
            num_critiques=r.eval_critiques,
            num_refinements=r.eval_refinements,
            critique_sampling=critique_sp,
            refine_sampling=refine_sp,
            chunk_groups=g.chunk_size,
            mesh=cfg.mesh,
        ),
        actor=actor,
    )
    by_name = {c["name"]: c for c in table["critics"]}
    return {"collect": summary, "train": trained, "eval": by_name}


def choose_self_train_critic(
    cfg: Config, critic_metrics: dict[str, Any], critic: Agent, train: list[Problem], mesh: Any
) -> tuple[str, Critic]:
    """The trained critic, or the oracle when asked for or when the trained critic's verdicts
    do not beat chance (`self_train.critic: auto`)."""
    choice = cfg.self_train.critic
    if choice == "auto":
        beats = critic_metrics["verdict_accuracy"] > critic_metrics["chance"]
        choice = "trained" if beats else "oracle"
    if choice == "trained":
        return "trained", critic
    return "oracle", make_critic(CriticSpec(oracle="demo"), None, train, mesh, cfg.critique_format)


# --------------------------------------------------------------------------- results

ROWS = (
    ("actor_accuracy", "actor (SFT), greedy"),
    ("refine_accuracy", "actor + 1 critique -> refine round"),
    ("second_round_accuracy", "actor + 2 critique -> refine rounds"),
    ("oracle_refine_accuracy", "  the same, 1 round with the oracle critic (the ceiling)"),
    ("oracle_second_round_accuracy", "  the same, 2 rounds with the oracle critic"),
    ("critic_verdict_accuracy", "critic verdict accuracy (held-out)"),
    ("critic_verdict_chance", "  chance (majority label)"),
    ("critic_balanced_accuracy", "critic balanced accuracy (chance 0.5)"),
    ("critic_first_error_accuracy", "critic first-error-step accuracy"),
    ("critic_quote_fidelity", "critic steps quoted verbatim"),
    ("critic_check_agreement", "critic verdicts that follow from its own check"),
    ("majority_vote_accuracy", "majority vote @K"),
    ("critique_majority_vote_accuracy", "critique -> refine, then majority vote @K"),
    ("critic_weighted_vote_accuracy", "critic-weighted vote @K (critic as verifier)"),
    ("pass_at_k", "pass@K (oracle verifier)"),
    ("cu_sft_critic", "mean CU, SFT critic (held-out)"),
    ("cu_rco_critic", "mean CU, RCO critic (held-out)"),
    ("self_train_vanilla_accuracy", "self-training, vanilla (rejection sampling)"),
    ("self_train_critique_accuracy", "self-training, critique-in-the-loop"),
)
BY_LEVEL = (
    ("actor_accuracy_by_difficulty", "actor"),
    ("refine_accuracy_by_difficulty", "actor + critique -> refine"),
    ("oracle_refine_accuracy_by_difficulty", "actor + oracle critique -> refine"),
    ("self_train_vanilla_accuracy_by_difficulty", "self-train vanilla"),
    ("self_train_critique_accuracy_by_difficulty", "self-train critique-in-the-loop"),
)


def results_table(results: dict[str, Any]) -> str:
    """Markdown: the headline metrics, then accuracy by difficulty (number of steps)."""
    k = results["sizes"]["k"]
    lines = [
        f"# critique_jax demo (seed {results['seed']}, K={k}, "
        f"self-training critic: {results['self_train_critic']})",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    lines += [f"| {title} | {table_cell(results.get(key))} |" for key, title in ROWS]
    levels = sorted_levels({lv for key, _ in BY_LEVEL for lv in results[key]})
    lines += [
        "",
        "| accuracy by difficulty | " + " | ".join(f"level {lv}" for lv in levels) + " |",
        "|---|" + "---:|" * len(levels),
    ]
    for key, title in BY_LEVEL:
        lines.append(
            f"| {title} | " + " | ".join(table_cell(results[key].get(lv)) for lv in levels) + " |"
        )
    lines += ["", *claims_table(results["claims"])]
    times = results["timings"]
    lines += ["", "| phase (all runs of this run_dir) | wall s | CPU s |", "|---|---:|---:|"]
    lines += [f"| {name} | {t['wall_s']} | {t['cpu_s']} |" for name, t in times.items()]
    total = {k: round(sum(t[k] for t in times.values()), 1) for k in ("wall_s", "cpu_s")}
    lines.append(f"| total | {total['wall_s']} | {total['cpu_s']} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the stage


def run(cfg: Config) -> dict[str, Any]:
    """The demo for one seed, or (seeds > 1) for seeds 0..seeds-1 and their summary."""
    return run_one(cfg) if cfg.seeds == 1 else run_seeds(cfg)


def run_seeds(cfg: Config) -> dict[str, Any]:
    """Each seed in run_dir/seed_<s> (resumable like one run), then mean +- sd per metric
    and the claims' per-seed paired differences, read back from each seed's results.json."""
    runs = []
    for seed in range(cfg.seeds):
        one = dataclasses.replace(cfg, seed=seed, seeds=1, run_dir=f"{cfg.run_dir}/seed_{seed}")
        run_one(one)
        runs.append(json.loads((Path(one.run_dir) / "results.json").read_text()))
    summary = over_seeds(runs, [key for key, _ in ROWS])
    table = seeds_table(summary, ROWS)
    run_dir = Path(cfg.run_dir)
    if this_process_writes():
        atomic_write_json(run_dir / "results.json", summary)
        atomic_write_text(run_dir / "results.md", table)
        print(table)
    return {"claims": summary["claims"], "results": str(run_dir / "results.json")}


def run_one(cfg: Config) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    clock = Clock((_done(run_dir / "results.json") or {}).get("timings"))
    start = time.perf_counter()
    mesh = mesh_from_config(cfg.mesh)
    st_dir = run_dir / "self_train"
    world_dir = run_dir / "world"

    with clock("world"):
        train, test = st.split_problems(self_train_config(cfg, st_dir, cfg.model))
        _write_problems(world_dir / "train.jsonl", train)
        _write_problems(world_dir / "test.jsonl", test)
        spec = with_demo_tokenizer(cfg.model, [*train, *test], run_dir / "demo_tokenizer")

    with clock("base"):
        base_hf = base_sft(cfg, run_dir, spec, train)
    base = ModelSpec(path=str(base_hf))
    st_cfg = self_train_config(cfg, st_dir, base)
    models = st.Models(base, mesh, cfg.seed)
    with clock("actor_sft"):
        iter0 = train[: cfg.actor.problems]
        actor_res = st.iteration_zero(st_cfg, models, iter0, test, st_dir / "iter_0")
    actor_hf = st_dir / "iter_0" / "hf"
    actor = models.agent(actor_hf)

    with clock("critic_data"):
        collection = collect_critiques(cfg, run_dir, train, actor, actor_hf, mesh)
    with clock("critic_sft"):
        critic_hf = train_critic(cfg, run_dir, base_hf)
    # shares the actor's tokenizer object and sampler
    critic = dataclasses.replace(models.agent(critic_hf), critique_format=cfg.critique_format)
    with clock("critic_eval"):
        verdicts = evaluate_critic(cfg, run_dir, test, actor, critic, critic_hf)

    with clock("test_time"):
        k = cfg.tts.k
        settings = TTSSettings(
            modes=["sequential", "parallel"],
            ks=sorted({1, *(2**i for i in range(k.bit_length()) if 2**i <= k), k}),
            rounds=cfg.tts.rounds,
            first=_sp(cfg.generation.solution_tokens, 0.0),
            sample=_sp(cfg.generation.solution_tokens, cfg.generation.temperature),
            critique=_sp(cfg.generation.critique_tokens, 0.0),
            refine=_sp(cfg.generation.solution_tokens, 0.0),
            chunk_size=cfg.generation.chunk_size,
        )
        title = f"demo world: {len(test)} test questions, trained critic"
        tts = run_test_time(actor, critic, test, settings, run_dir / "test_time", title)
        # the same rounds with the oracle critic: what the actor makes of critiques that are
        # right, the ceiling a trained critic is measured against
        oracle = make_critic(CriticSpec(oracle="demo"), None, test, mesh, cfg.critique_format)
        oracle_seq = run_test_time(
            actor,
            oracle,
            test,
            dataclasses.replace(settings, modes=["sequential"]),
            run_dir / "test_time_oracle",
            f"demo world: {len(test)} test questions, oracle critic",
        )["sequential"]

    with clock("rco"):
        rco = rco_phase(cfg, run_dir, actor, critic_hf, world_dir / "test.jsonl")

    with clock("self_train"):
        which, st_critic = choose_self_train_critic(cfg, verdicts, critic, train, mesh)
        subset = train[: cfg.self_train.problems]
        rows = [actor_res]
        for arm, arm_critic in (("vanilla", None), ("critique", st_critic)):
            rows.append(st.iteration(st_cfg, arm, 1, arm_critic, models, subset, test, st_dir))
        if this_process_writes():
            atomic_write_text(st_dir / "comparison.md", st.comparison_table(rows, 0))
    vanilla, critique = rows[1], rows[2]

    seq, par = tts["sequential"], tts["parallel"]
    refined = _at(seq, "rounds", 1)
    results = {
        "seed": cfg.seed,
        "actor_accuracy": actor_res["accuracy"],
        "actor_accuracy_by_difficulty": actor_res["by_level"],
        "critic_verdict_accuracy": verdicts["verdict_accuracy"],
        "critic_verdict_chance": verdicts["chance"],
        "critic_balanced_accuracy": verdicts["balanced_accuracy"],
        "critic_first_error_accuracy": verdicts["first_error"]["accuracy"],
        "critic_quote_fidelity": verdicts["quote_fidelity"],
        "critic_check_agreement": verdicts["check_agreement"],
        "critic_unparseable_rate": verdicts["unparseable_rate"],
        "refine_accuracy": refined["accuracy"],
        "refine_accuracy_by_difficulty": refined["by_level"],
        "second_round_accuracy": _at(seq, "rounds", 2)["accuracy"],
        "oracle_refine_accuracy": _at(oracle_seq, "rounds", 1)["accuracy"],
        "oracle_refine_accuracy_by_difficulty": _at(oracle_seq, "rounds", 1)["by_level"],
        "oracle_second_round_accuracy": _at(oracle_seq, "rounds", 2)["accuracy"],
        "tts_initial_accuracy": _at(seq, "rounds", 0)["accuracy"],
        "sequential_accuracy_by_rounds": {str(p["rounds"]): p["accuracy"] for p in seq},
        "majority_vote_accuracy": _at(par["majority"], "k", k)["accuracy"],
        "critique_majority_vote_accuracy": _at(par["refine_vote"], "k", k)["accuracy"],
        "critic_weighted_vote_accuracy": _at(par["critic_weighted"], "k", k)["accuracy"],
        "pass_at_k": _at(par["oracle"], "k", k)["accuracy"],
        "cu_sft_critic": rco["eval"]["sft"]["mean_cu"],
        "cu_rco_critic": rco["eval"]["rco"]["mean_cu"],
        "rco_eval": rco["eval"],
        "self_train_critic": which,
        "self_train_vanilla_accuracy": vanilla["accuracy"],
        "self_train_critique_accuracy": critique["accuracy"],
        "self_train_vanilla_accuracy_by_difficulty": vanilla["by_level"],
        "self_train_critique_accuracy_by_difficulty": critique["by_level"],
        "self_train_kept": {"vanilla": vanilla["collection"], "critique": critique["collection"]},
        "critique_collection": collection,
        "sizes": {
            "train_questions": len(train),
            "test_questions": len(test),
            "levels": list(cfg.world.levels),
            "k": k,
            "rco_n": cfg.rco.critiques,
            "rco_m": cfg.rco.refinements,
            "critic_sft_records": collection["sft_records"],
            "model_params": preset(cfg.model.preset, **cfg.model.overrides).num_params(),
        },
        "timings": clock.phases,
        "wall_s": round(time.perf_counter() - start, 1),
        "paths": {
            "results": str(run_dir / "results.json"),
            "table": str(run_dir / "results.md"),
            "plot": tts.get("plot"),
            "actor_hf": str(actor_hf),
            "critic_hf": str(critic_hf),
            "rco_critic_hf": str(run_dir / "rco" / "hf"),
            "self_train_vanilla_hf": str(st_dir / "vanilla" / "iter_1" / "hf"),
            "self_train_critique_hf": str(st_dir / "critique" / "iter_1" / "hf"),
            "self_train_table": str(st_dir / "comparison.md"),
            "rco_table": str(run_dir / "rco_eval" / "comparison.md"),
        },
    }
    results["claims"] = claims(results)
    table = results_table(results)
    if this_process_writes():
        atomic_write_json(run_dir / "results.json", results)
        atomic_write_text(run_dir / "results.md", table)
        print(table)
        for name, path in results["paths"].items():
            print(f"{name}: {path}")
    details = ("rco_eval", "self_train_kept", "critique_collection")
    return {k: v for k, v in results.items() if k not in details}
