"""The `demo` stage: the whole MathCritique + RCO loop on the embedded arithmetic world.

    python -m critique_jax.train                                  # this stage, its defaults
    python -m critique_jax.train --config configs/demo.yaml       # the same values, written out

No download and no accelerator: the demo world (`data.demo_world`) supplies problems, gold
answers, controlled errors and an oracle step checker; a SentencePiece tokenizer and a small
transformer (`preset: demo`) are trained from scratch. The demo is a list of the library's
stages, each run through its own `run(config)` with the config of its section
(`demo_stages`), reading what the stages before it wrote into run_dir:

1. world: train and test problems (test questions seen in training dropped), the demo
   tokenizer, and the base model's texts (run_dir/world, run_dir/demo_tokenizer).
2. base (`sft`): the stand-in for the pretrained LLM the papers start from, trained from
   scratch on the world's texts: most of the budget.
3. self_train, iteration 0: the actor, SFT from the base on reference solutions and
   refinement examples (x, y0, c -> y'), where it learns to follow a critique.
4. critic_data (AutoMathCritique with the oracle annotator), critic_sft (from the base) and
   critic_eval (verdicts on each test question's reference solution, an injected error and
   actor samples; chance is the majority label's share).
5. test_time: critique -> refine rounds and votes at K with the trained critic, then the
   rounds with the oracle critic (the ceiling).
6. rco_collect, rco, rco_eval: critique utility of the SFT critic's critiques, RCO training,
   and the mean CU of both critics on held-out (x, y0).
7. self_train, iteration 1: vanilla and critique-in-the-loop self-training from the same
   actor; the critic is `self_train_critic` (auto: the trained one if it beats chance).
8. one results table (printed, run_dir/results.md) from the stages' results files, and the
   papers' claims checked on it (`demo_claims`).

Resume: a stage whose run_dir holds its results is skipped; the others resume on their own.
`Config.reduced()` (configs/demo_reduced.yaml) is the same list at CI size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from critique_jax.config import StageConfig
from critique_jax.models.config import preset
from critique_jax.pipelines.demo_claims import (
    ROWS,
    demo_results,
    over_seeds,
    results_table,
    seeds_table,
)
from critique_jax.pipelines.demo_data import write_eval_set, write_world
from critique_jax.pipelines.demo_stages import Config
from critique_jax.pipelines.roles import CriticSpec
from critique_jax.runio import atomic_write_json, atomic_write_text, this_process_writes

log = logging.getLogger(__name__)

PATH_KEYS = ("run_dir", "path", "tokenizer", "collect_dir")
RESULTS = ("results.json", "summary.json")  # a stage that wrote one of these is finished


class Clock:
    """Wall and CPU seconds per stage, added to those of the earlier runs of the same run_dir
    (`earlier`), so a resumed demo still reports what each stage cost; on a shared machine
    the CPU time shows how much of a slow stage was spent waiting."""

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


def in_run_dir(node: Any, root: Path) -> Any:
    """`node` (a stage config or a section of one) with its relative paths under `root`."""
    if not dataclasses.is_dataclass(node):
        return [in_run_dir(v, root) for v in node] if isinstance(node, list) else node
    changes = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if f.name in PATH_KEYS and isinstance(value, str) and value:
            changes[f.name] = str(root / value)
        elif dataclasses.is_dataclass(value) or isinstance(value, list):
            changes[f.name] = in_run_dir(value, root)
    return dataclasses.replace(node, **changes)


def stage_fields(cfg: Config) -> list[dataclasses.Field]:
    """The stage sections of the demo's config, in run order (self_train's iteration 0 runs
    second, its iteration last)."""
    return [f for f in dataclasses.fields(cfg) if isinstance(getattr(cfg, f.name), StageConfig)]


def run_stage(stage_cfg: StageConfig, cfg: Config, **changes: Any) -> None:
    """A stage of the demo through its own `run`, unless its results are already written."""
    from critique_jax.train import STAGES  # the CLI's table of stage modules

    stage_cfg = in_run_dir(stage_cfg, Path(cfg.run_dir))
    stage_cfg = dataclasses.replace(
        stage_cfg, seed=cfg.seed, critique_format=cfg.critique_format, **changes
    )
    where = Path(stage_cfg.run_dir)
    if any((where / name).exists() for name in RESULTS):
        log.info("demo: results in %s are kept, not recomputed (delete it to rerun)", where)
        return
    importlib.import_module(STAGES[stage_cfg.stage]).run(stage_cfg)


def self_train_critic(cfg: Config, run_dir: Path) -> str:
    """trained, or oracle when asked for or when the trained critic's verdicts do not beat
    chance, the majority label's share (`self_train_critic: auto`)."""
    if cfg.self_train_critic != "auto":
        return cfg.self_train_critic
    verdicts = _read(run_dir / cfg.critic_eval.run_dir / "results.json")
    base = verdicts["base_rate_correct"]
    return "trained" if verdicts["verdict_accuracy"] > max(base, 1 - base) else "oracle"


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
    clock = Clock(_read(run_dir / "results.json").get("timings"))
    start = time.perf_counter()
    with clock("world"):
        if not (run_dir / "world" / "base.jsonl").exists():
            write_world(cfg, run_dir)
    with clock("base"):
        run_stage(cfg.base, cfg)
    with clock("actor_sft"):
        run_stage(cfg.self_train, cfg, iterations=0)
    for f in stage_fields(cfg)[2:]:  # after base and self_train's iteration 0
        with clock(f.name):
            if f.name == "critic_eval":
                write_eval_set(cfg, run_dir)
            run_stage(getattr(cfg, f.name), cfg)
    with clock("self_train"):
        which = self_train_critic(cfg, run_dir)
        critic = cfg.critic_eval.critic if which == "trained" else CriticSpec(oracle="demo")
        run_stage(cfg.self_train, cfg, critic=in_run_dir(critic, run_dir))
    model = preset(cfg.base.model.preset, **cfg.base.model.overrides)
    sizes = {"train_questions": cfg.world.train_size, "levels": list(cfg.world.levels)}
    sizes |= {"rco_n": cfg.rco_collect.num_critiques, "rco_m": cfg.rco_collect.num_refinements}
    sizes["model_params"] = model.num_params()
    dirs = {f.name: run_dir / getattr(cfg, f.name).run_dir for f in stage_fields(cfg)}
    results = demo_results(dirs, cfg.seed, sizes, which)
    results["timings"] = clock.phases
    results["wall_s"] = round(time.perf_counter() - start, 1)
    results["paths"] |= {
        "results": str(run_dir / "results.json"),
        "table": str(run_dir / "results.md"),
    }
    table = results_table(results)
    if this_process_writes():
        atomic_write_json(run_dir / "results.json", results)
        atomic_write_text(run_dir / "results.md", table)
        print(table)
        for name, path in results["paths"].items():
            print(f"{name}: {path}")
    details = ("rco_eval", "self_train_kept", "critique_collection")
    return {k: v for k, v in results.items() if k not in details}


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}
