"""The `rco_collect` stage: the critique utility (CU) of sampled critiques, for RCO and DPCO.

    python -m critique_jax.train --config configs/rco_collect_demo.yaml

For each (question x, initial response y0), a *group*:
  1. N critiques c_i from the reference critic (one sampler call, fan-out n=N, per chunk),
  2. M refinements y'_ij of y0 by the actor given c_i (fan-out n=M),
  3. PS(y'_ij, y0) in {0, 0.5, 1} from the judge, CU_i = mean_j PS(y'_ij, y0),
  4. log pi_ref(c_i | x, y0), the reference critic's sequence log-prob of the critique
     tokens, from one jitted sharded scoring pass (`critique_jax.scoring`).

run_dir/critiques.jsonl holds one record per group:

    {id, question, solution, answer, solution_is_correct, prompt_ids,
     critiques: [{text, token_ids, finish_reason, sample_logp, ref_logp,
                  refinements, ps, cu}]}

`prompt_ids` + `token_ids` are exactly the tokens the critic was sampled on, so the training
stages rebuild rows from them and never re-tokenize. `ref_logp` is None for a critique that
does not fit `seq_len` with its prompt (training masks it). `sample_logp` is the sampler's
own log-prob of the same tokens: the sampler and the scorer run one model graph, so the two
agree up to float error.

Resume: groups are processed in fixed chunks whose sampling seeds derive from (seed, chunk),
and a chunk with any unfinished group is recomputed whole; a rerun after a kill therefore
writes the same records as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from jax.sharding import Mesh

from critique_jax import scoring
from critique_jax.config import MeshConfig, ModelSpec, StageConfig, from_dict, load_yaml
from critique_jax.data.batching import Example, pad_batch
from critique_jax.data.critique_format import CritiqueFormat
from critique_jax.data.loaders import read_records
from critique_jax.data.math import verify
from critique_jax.data.prompts import critique_messages, refine_messages, solve_messages
from critique_jax.data.sources import ProblemSource, load_problems
from critique_jax.models import ModelConfig
from critique_jax.models.loading import LoadedModel, load_model
from critique_jax.pipelines.judges import ChatModel, Judge, JudgeConfig, make_judge
from critique_jax.pipelines.overlong import Skips, fit_questions, with_skips
from critique_jax.pipelines.roles import Agent, make_agent
from critique_jax.pipelines.seeds import chunk_seed
from critique_jax.runio import (
    RecordLog,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
    this_process_writes,
)
from critique_jax.sampling import SamplingParams
from critique_jax.sharding import DEFAULT_RULES, Rules, mesh_from_config, rules_from_config

log = logging.getLogger(__name__)

RECORDS = "critiques.jsonl"
INITIAL = "initial.jsonl"


@dataclass
class InitialResponses:
    """Where the y0 come from: sampled from the actor, or a JSONL/JSON file of records with
    `question`, `solution`, `answer` (the gold answer; needed by the verifier judge) and an
    optional `id`."""

    source: str = "actor"  # actor | file
    path: str = ""
    per_question: int = 1  # actor: samples per question
    sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_new_tokens=256, temperature=1.0)
    )

    def __post_init__(self) -> None:
        if self.source not in ("actor", "file"):
            raise ValueError(f"initial.source={self.source!r}; use actor or file")
        if self.source == "file" and not self.path:
            raise ValueError("initial.source: file needs initial.path")


@dataclass
class Config(StageConfig):
    stage: str = "rco_collect"
    run_dir: str = "runs/rco_collect"
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="tiny"))  # reference critic
    actor: ModelSpec | None = None  # refines (and, for initial.source: actor, solves); None: model
    problems: ProblemSource = field(default_factory=ProblemSource)  # for initial.source: actor
    initial: InitialResponses = field(default_factory=InitialResponses)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    num_critiques: int = 4  # N per group
    num_refinements: int = 5  # M per critique
    # Temperature ~1 samples the critic's own distribution: the RCO target is defined
    # relative to it, and diverse critiques give CU differences to learn from.
    critique_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_new_tokens=512, temperature=1.0)
    )
    refine_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_new_tokens=512, temperature=0.7)
    )
    seq_len: int = 1024  # prompt + critique positions for scoring (and training)
    score_batch_size: int = 8  # rows per scoring call (a multiple of the data-parallel size)
    chunk_groups: int = 64  # groups per sampling round (the unit of resume)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        for name in (
            "num_critiques",
            "num_refinements",
            "seq_len",
            "score_batch_size",
            "chunk_groups",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


@dataclass(frozen=True)
class Group:
    """One (x, y0) with its gold answer (None for open-ended tasks)."""

    id: str
    question: str
    solution: str
    answer: str | None = None


# --------------------------------------------------------------------------- models


def load_agent(
    spec: ModelSpec,
    mesh: Mesh | None,
    seed: int,
    role: str,
    critique_format: CritiqueFormat = "verdict_first",
) -> tuple[LoadedModel, Agent]:
    """The model and its agent (prompted for critiques in `critique_format`); checkpoints of
    one architecture and tokenizer share one compiled sampler (`make_agent`)."""
    model = load_model(spec, mesh=mesh, seed=seed)
    if model.tokenizer is None:
        raise ValueError(f"the {role} model needs a tokenizer: set its `tokenizer` (or `path`)")
    return model, make_agent(model, mesh, critique_format)


# --------------------------------------------------------------------------- initial responses


def groups_from_file(path: str) -> list[Group]:
    groups = []
    for i, (where, r) in enumerate(read_records(path)):
        missing = [k for k in ("question", "solution") if not isinstance(r.get(k), str)]
        if missing:
            raise ValueError(
                f"{where}: initial responses need string fields question and "
                f"solution; {missing} missing (keys: {sorted(r)})"
            )
        answer = r.get("answer")
        groups.append(
            Group(
                str(r.get("id", f"file-{i}")),
                r["question"],
                r["solution"],
                None if answer is None else str(answer),
            )
        )
    return groups


def initial_groups(
    init: InitialResponses, problems: ProblemSource, actor: ChatModel, path: Path, seed: int
) -> tuple[list[Group], Skips]:
    """The (x, y0) groups, and the over-long questions skipped (`overlong.fit_questions`).
    Sampled y0 are drawn once and kept in `path` (initial.jsonl), so a resumed run, or
    every critic of an evaluation, sees the same ones."""
    skips: Skips = {}
    if init.source == "file":
        groups = groups_from_file(init.path)
    else:
        todo, skips = fit_questions(actor, load_problems(problems), problems, "problems")
        ids = [f"{p.id}/{k}" for p in todo for k in range(init.per_question)]
        cached = [Group(**r) for r in read_jsonl(path)]
        if cached:
            if [g.id for g in cached] != ids:
                raise ValueError(
                    f"{path} holds initial responses of another problem set; "
                    "delete it to redraw them, or use a new run_dir"
                )
            return cached, skips
        sp = init.sampling.replace(n=init.per_question, seed=chunk_seed(seed, 0, 0))
        outs = actor.chat([solve_messages(p.question) for p in todo], sp)
        groups = [
            Group(f"{p.id}/{k}", p.question, c.text or "", p.answer)
            for p, samples in zip(todo, outs, strict=True)
            for k, c in enumerate(samples)
        ]
        if this_process_writes():
            atomic_write_text(
                path, "".join(json.dumps(dataclasses.asdict(g)) + "\n" for g in groups)
            )
    seen: set[str] = set()
    for g in groups:
        if g.id in seen:
            raise ValueError(f"initial responses: id {g.id!r} appears twice; ids must be unique")
        seen.add(g.id)
    return groups, skips


# --------------------------------------------------------------------------- collection


def critique_and_refine(
    critic: Agent,
    actor: ChatModel,
    judge: Judge,
    groups: Sequence[Group],
    num_critiques: int,
    num_refinements: int,
    critique_sp: SamplingParams,
    refine_sp: SamplingParams,
) -> list[dict[str, Any]]:
    """Group records (without reference log-probs): N critiques per group, M refinements per
    critique, PS of each refinement against y0 and CU of each critique. Two sampler calls
    for all groups: critiques with fan-out N, then refinements with fan-out M."""
    prompt_ids = [
        critic.sampler.encode(critique_messages(g.question, g.solution, fmt=critic.critique_format))
        for g in groups
    ]
    critiques = critic.sampler.generate_ids(
        critic.params, prompt_ids, critique_sp.replace(n=num_critiques)
    )
    flat = [(g, c) for g, cs in zip(groups, critiques, strict=True) for c in cs]
    refined = actor.chat(
        [refine_messages(g.question, g.solution, c.text or "") for g, c in flat],
        refine_sp.replace(n=num_refinements),
    )
    texts = [r.text or "" for rs in refined for r in rs]
    per = [g for g, _ in flat for _ in range(num_refinements)]
    ps = judge.compare_responses(
        [g.question for g in per], texts, [g.solution for g in per], [g.answer for g in per]
    )
    records = []
    k = 0
    for g, ids, cs in zip(groups, prompt_ids, critiques, strict=True):
        entries = []
        for c in cs:
            rs = refined[k]
            scores = ps[k * num_refinements : (k + 1) * num_refinements]
            entries.append(
                {
                    "text": c.text or "",
                    "token_ids": list(c.token_ids),
                    "finish_reason": c.finish_reason,
                    "sample_logp": float(sum(c.logprobs)),
                    "refinements": [r.text or "" for r in rs],
                    "ps": scores,
                    "cu": float(np.mean(scores)),
                }
            )
            k += 1
        records.append(
            {
                "id": g.id,
                "question": g.question,
                "solution": g.solution,
                "answer": g.answer,
                "solution_is_correct": None if g.answer is None else verify(g.solution, g.answer),
                "prompt_ids": list(ids),
                "critiques": entries,
            }
        )
    return records


class ChunkSettings(Protocol):
    """The settings `sample_chunk` reads (the collection and the evaluation configs)."""

    seed: int
    num_critiques: int
    num_refinements: int
    critique_sampling: SamplingParams
    refine_sampling: SamplingParams


def sample_chunk(
    cfg: ChunkSettings,
    critic: Agent,
    actor: ChatModel,
    judge: Judge,
    chunk: Sequence[Group],
    index: int,
) -> list[dict[str, Any]]:
    """`critique_and_refine` on one chunk with the seeds of its index: collection and
    evaluation draw alike, and every critic of an evaluation refines with the same seeds."""
    return critique_and_refine(
        critic,
        actor,
        judge,
        chunk,
        cfg.num_critiques,
        cfg.num_refinements,
        cfg.critique_sampling.replace(seed=chunk_seed(cfg.seed, index, 1)),
        cfg.refine_sampling.replace(seed=chunk_seed(cfg.seed, index, 2)),
    )


def critique_rows(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    seq_len: int,
    pad_id: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Rows [n, seq_len] of prompt + completion (one per row, the loss mask on the completion
    tokens) and a bool [n] of the ones that fit; a row that does not fit is left empty
    (mask 0) rather than truncated, since a truncated prompt changes the log-prob."""
    n = len(prompts)
    fits = np.array(
        [
            len(p) + len(c) <= seq_len + 1 and len(c) > 0
            for p, c in zip(prompts, completions, strict=True)
        ],
        bool,
    )
    rows = {
        "inputs": np.full((n, seq_len), pad_id, np.int32),
        "targets": np.full((n, seq_len), pad_id, np.int32),
        "loss_mask": np.zeros((n, seq_len), np.float32),
        "segment_ids": np.zeros((n, seq_len), np.int32),
        "positions": np.zeros((n, seq_len), np.int32),
    }
    if fits.any():
        examples = [
            Example(list(p) + list(c), [0] * len(p) + [1] * len(c))
            for p, c, ok in zip(prompts, completions, fits, strict=True)
            if ok
        ]
        packed = pad_batch(examples, seq_len, pad_id)
        for key, value in packed.items():
            rows[key][fits] = value
    return rows, fits


def pad_id_of(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def add_reference_logps(
    records: list[dict[str, Any]],
    model_cfg: ModelConfig,
    params: Any,
    pad_id: int,
    seq_len: int,
    batch_size: int,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
) -> None:
    """Set `ref_logp` of every critique in place: its sequence log-prob under `params`
    (None when prompt + critique exceed seq_len)."""
    entries = [(r["prompt_ids"], c) for r in records for c in r["critiques"]]
    rows, fits = critique_rows(
        [p for p, _ in entries], [c["token_ids"] for _, c in entries], seq_len, pad_id
    )
    logps = scoring.score_rows(
        model_cfg, params, {k: v[fits] for k, v in rows.items()}, batch_size, mesh, rules
    )
    scored = iter(logps.tolist())
    for (_, c), ok in zip(entries, fits, strict=True):
        c["ref_logp"] = next(scored) if ok else None


def solution_is_correct(record: dict[str, Any]) -> bool | None:
    """The verifier's label of a group's initial solution (None without a gold answer), named
    as in collect_critiques' records; files written before that name was shared say
    `solution_correct`, and a resumed run still reads them."""
    return record.get("solution_is_correct", record.get("solution_correct"))


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    crits = [c for r in records for c in r["critiques"]]
    if not crits:
        return {"groups": 0, "critiques": 0}
    cus = np.array([c["cu"] for c in crits])
    spread = [len({c["cu"] for c in r["critiques"]}) > 1 for r in records]
    labels = [solution_is_correct(r) for r in records]
    correct = [label for label in labels if label is not None]
    return {
        "groups": len(records),
        "critiques": len(crits),
        "mean_cu": float(cus.mean()),
        # Groups whose critiques differ in CU: the ones RCO (and DPCO's pairs) learn from.
        "groups_with_cu_spread": float(np.mean(spread)),
        "scored_critiques": float(np.mean([c.get("ref_logp") is not None for c in crits])),
        "stopped_critiques": float(np.mean([c["finish_reason"] == "stop" for c in crits])),
        "initial_accuracy": float(np.mean(correct)) if correct else None,
    }


def read_groups(collect_dir: str | Path) -> list[dict[str, Any]]:
    """The records `rco_collect` wrote in `collect_dir`, or a clear error."""
    path = Path(collect_dir) / RECORDS
    records = list(read_jsonl(path))
    if not records:
        raise FileNotFoundError(
            f"no critique records in {path}; run the rco_collect stage "
            "first (or point collect_dir at its run_dir)"
        )
    return records


def collect_model_spec(collect_dir: str | Path) -> ModelSpec:
    """The reference critic `rco_collect` sampled from (its saved config.yaml)."""
    path = Path(collect_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: set `model:` to the reference critic that rco_collect sampled from"
        )
    return from_dict(ModelSpec, load_yaml(path)["model"], "model")


def run(cfg: Config, actor: ChatModel | None = None) -> dict[str, Any]:
    """The stage; `actor`, when given (Python API), is used instead of `cfg.actor`: any
    object with `chat(conversations, sp)`, e.g. a scripted refiner in a synthetic world."""
    run_dir = Path(cfg.run_dir)
    mesh = mesh_from_config(cfg.mesh)
    rules = rules_from_config(cfg.mesh.rules)
    critic_model, critic = load_agent(cfg.model, mesh, cfg.seed, "critic", cfg.critique_format)
    if actor is None:
        actor = critic
        if cfg.actor is not None:
            _, actor = load_agent(cfg.actor, mesh, cfg.seed, "actor")
    judge = make_judge(cfg.judge, mesh, cfg.seed)
    groups, skips = initial_groups(cfg.initial, cfg.problems, actor, run_dir / INITIAL, cfg.seed)
    if cfg.judge.kind == "verifier" and any(g.answer is None for g in groups):
        raise ValueError(
            "judge.kind: verifier needs gold answers; the initial responses have "
            "none (add `answer` to the file records or use judge.kind: model)"
        )

    def compute(chunk: list[Group], index: int) -> list[dict[str, Any]]:
        records = sample_chunk(cfg, critic, actor, judge, chunk, index)
        add_reference_logps(
            records,
            critic_model.cfg,
            critic.params,
            pad_id_of(critic.tokenizer),
            cfg.seq_len,
            cfg.score_batch_size,
            mesh,
            rules,
        )
        return records

    with RecordLog(run_dir / RECORDS) as log_:
        records = log_.fill(groups, cfg.chunk_groups, compute)
    result = with_skips(summarize(records), skips)
    result["records"] = str(run_dir / RECORDS)
    if this_process_writes():
        atomic_write_json(run_dir / "summary.json", result)
    return result
