"""The demo's own data, beside what its stages write: the world's problems, the base model's
texts and the critic's eval set (which holds actor samples, so it is written once the actor
exists)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

from critique_jax.config import ModelSpec
from critique_jax.data.demo_world import inject_error, templated_critique
from critique_jax.data.prompts import critique_messages, solve_messages
from critique_jax.data.sources import ProblemSource, load_problems
from critique_jax.pipelines.critic_eval import build_demo_eval_set, build_sampled_eval_set
from critique_jax.pipelines.demo_stages import Config
from critique_jax.pipelines.roles import load_roles, with_demo_tokenizer
from critique_jax.pipelines.seeds import stable_seed
from critique_jax.runio import atomic_write_jsonl, this_process_writes
from critique_jax.sharding import mesh_from_config


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    if this_process_writes():
        atomic_write_jsonl(path, records)


def write_world(cfg: Config, run_dir: Path) -> None:
    """The problems (world/train.jsonl, test.jsonl), the demo tokenizer, and the base model's
    texts (world/base.jsonl): every question with its solution and, for a share of them, a
    critique of its reference solution or of an injected error (alternately, so right and
    wrong solutions are balanced)."""
    w, fmt, seed = cfg.world, cfg.critique_format, cfg.seed
    train = load_problems(ProblemSource(seed=w.train_seed, size=w.train_size, levels=w.levels))
    seen = {p.question for p in train}
    test = load_problems(ProblemSource(seed=w.test_seed, size=w.test_size, levels=w.levels))
    kept = [p for p in test if p.question not in seen]
    _write_jsonl(run_dir / "world" / "train.jsonl", [p.to_dict() for p in train])
    _write_jsonl(run_dir / "world" / "test.jsonl", [p.to_dict() for p in kept])
    model = dataclasses.replace(cfg.base.model, tokenizer=None)
    with_demo_tokenizer(model, [*train, *kept], run_dir / cfg.base.model.tokenizer)
    rng = random.Random(f"demo-base:{seed}")
    records, wrong = [], False
    for p in train:
        records.append({"messages": [*solve_messages(p.question), _assistant(p.solution)]})
        if rng.random() < w.critique_share:
            y = inject_error(p, rng.randint(1, p.level), seed) if wrong else p.solution
            prompt = critique_messages(p.question, y, fmt=fmt)
            records.append({"messages": [*prompt, _assistant(templated_critique(p, y, fmt))]})
            wrong = not wrong
    rng.shuffle(records)
    _write_jsonl(run_dir / "world" / "base.jsonl", records)


def _assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def write_eval_set(cfg: Config, run_dir: Path) -> None:
    """The critic's held-out eval set: per test question its reference solution, an injected
    error and actor samples, labelled by the verifier."""
    path = run_dir / cfg.critic_eval.eval_set.path
    if path.exists():
        return
    problems = load_problems(ProblemSource(kind="jsonl", path=str(run_dir / "world/test.jsonl")))
    mesh = mesh_from_config(cfg.critic_eval.mesh)
    actor_spec = ModelSpec(path=str(run_dir / cfg.test_time.actor.path))
    actor = load_roles(actor_spec, None, problems, mesh, cfg.seed)[0]
    assert actor is not None
    sp = cfg.world.eval_sampling.replace(seed=stable_seed(cfg.seed, "demo-eval-set"))
    records = build_demo_eval_set(problems, 1, cfg.seed)
    records += build_sampled_eval_set(actor, problems, cfg.world.eval_samples, sp)
    _write_jsonl(path, [r.to_json() for r in records])
