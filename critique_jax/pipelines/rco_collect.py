"""The `rco_collect` stage: the critique utility (CU) of sampled critiques, for RCO and DPCO.

    python -m critique_jax.train --config configs/rco_collect_demo.yaml

For each (question x, initial response y0), a *group*:
  1. N critiques c_i from the reference critic (one sampler call, fan-out n=N, per chunk),
  2. M refinements y'_ij of y0 by the actor given c_i (fan-out n=M),
  3. PS(y'_ij, y0) in {0, 0.5, 1} from a judge, CU_i = mean_j PS(y'_ij, y0),
  4. log pi_ref(c_i | x, y0), the reference critic's sequence log-prob of the critique
     tokens, from one jitted sharded scoring pass (`critique_jax.scoring`).

run_dir/critiques.jsonl holds one `CritiqueGroup` per line. The judges (who decides whether
a refinement beats y0) live here too: the evaluation and DPCO's judge ranking use them.

Resume: groups are processed in fixed chunks whose sampling seeds derive from (seed, chunk),
and a chunk with any unfinished group is recomputed whole; a rerun after a kill therefore
writes the same records as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from jax.sharding import Mesh

from critique_jax import scoring
from critique_jax.config import MeshConfig, ModelSpec, StageConfig, from_dict, load_yaml
from critique_jax.data.batching import Example, pad_batch
from critique_jax.data.critique_format import CritiqueFormat, parse_critique
from critique_jax.data.loaders import read_records
from critique_jax.data.math import verify
from critique_jax.data.prompts import Messages, critique_messages, refine_messages, solve_messages
from critique_jax.data.records import JsonRecord
from critique_jax.data.sources import ProblemSource, load_problems
from critique_jax.models import ModelConfig
from critique_jax.pipelines.loading import LoadedModel, load_model
from critique_jax.pipelines.overlong import Skips, fit_questions, with_skips
from critique_jax.pipelines.roles import Agent, make_agent
from critique_jax.pipelines.seeds import chunk_seed
from critique_jax.runio import (
    RecordLog,
    atomic_write_json,
    atomic_write_jsonl,
    read_jsonl,
    this_process_writes,
)
from critique_jax.sampling import Completion, SamplingParams
from critique_jax.sharding import DEFAULT_RULES, Rules, mesh_from_config, rules_from_config

log = logging.getLogger(__name__)

RECORDS = "critiques.jsonl"
INITIAL = "initial.jsonl"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Group(JsonRecord):
    """One (x, y0) with its gold answer (None for open-ended tasks): a line of initial.jsonl,
    and the leading keys of every group record."""

    id: str
    question: str
    solution: str
    answer: str | None = None


def solution_label(r: dict[str, Any]) -> bool | None:
    """The verifier's label of y0 in a group record; records written before the name was
    shared say `solution_correct`."""
    return r.get("solution_is_correct", r.get("solution_correct"))


@dataclass(frozen=True)
class CritiqueSample(JsonRecord):
    """A critique c_i of a group: its tokens, its M refinements, their PS against y0 and
    CU_i = mean PS. `sample_logp` is the sampler's log-prob of the tokens, `ref_logp` the
    scorer's (one model graph: they agree up to float error); `ref_logp` is None until
    scored, or when prompt + critique do not fit `seq_len` (training masks it)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    sample_logp: float
    refinements: tuple[str, ...]
    ps: tuple[float, ...]
    cu: float
    ref_logp: float | None = None


@dataclass(frozen=True)
class CritiqueGroup:
    """A line of critiques.jsonl. `prompt_ids` + a critique's `token_ids` are exactly the
    tokens the critic was sampled on, so training rebuilds rows and never re-tokenizes."""

    group: Group
    solution_is_correct: bool | None  # None without a gold answer
    prompt_ids: tuple[int, ...]
    critiques: tuple[CritiqueSample, ...]

    @property
    def id(self) -> str:
        return self.group.id

    def to_json(self) -> dict[str, Any]:
        return {
            **self.group.to_json(),
            "solution_is_correct": self.solution_is_correct,
            "prompt_ids": list(self.prompt_ids),
            "critiques": [c.to_json() for c in self.critiques],
        }

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> CritiqueGroup:
        return cls(
            Group.from_json(r),
            solution_label(r),
            tuple(r["prompt_ids"]),
            tuple(CritiqueSample.from_json(c) for c in r["critiques"]),
        )


def read_groups(collect_dir: str | Path) -> list[CritiqueGroup]:
    """The records `rco_collect` wrote in `collect_dir`, or a clear error."""
    path = Path(collect_dir) / RECORDS
    records = [CritiqueGroup.from_json(r) for r in read_jsonl(path)]
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


# --------------------------------------------------------------------------- judges
#
# PS(y', y0) is 1 when the refinement y' is better than y0, 0.5 for a tie, 0 when worse. The
# verifier judge (math) decides by correctness against the gold answer; the model judge
# (open-ended tasks) prompts a checkpoint to compare, once in each order, and only a verdict
# that holds in both orders counts, so position bias cancels. Both also rank two critiques of
# one solution (DPCO's judge ranking) and score one response (RQS).

BETTER, TIE, WORSE = 1.0, 0.5, 0.0
Gold = str | None


@dataclass(frozen=True)
class Comparison:
    """What a judge compares: `candidate` against `baseline`, two responses to `question`
    (or two critiques of its `solution`, which `compare_critiques` requires), with the gold
    answer where known."""

    question: str
    candidate: str
    baseline: str
    gold: Gold = None
    solution: str | None = None


class Judge(Protocol):
    """What RCO, DPCO and their evaluation ask of a judge (one answer per item)."""

    scale: float  # the best possible `score`

    def compare_responses(self, items: Sequence[Comparison]) -> list[float]:
        """PS(candidate, baseline) in {0, 0.5, 1} for each item."""
        ...

    def compare_critiques(self, items: Sequence[Comparison]) -> list[float]:
        """1 when critique `candidate` of `solution` is the better one, 0 when `baseline` is,
        0.5 for a tie."""
        ...

    def score(
        self, questions: Sequence[str], responses: Sequence[str], golds: Sequence[Gold]
    ) -> list[float | None]:
        """Absolute quality of each response on [0, scale]; None when unreadable."""
        ...


class ChatModel(Protocol):
    """What refines and judges: an `Agent`, or a scripted stand-in."""

    def chat(
        self, conversations: Sequence[Messages], sp: SamplingParams
    ) -> list[list[Completion]]: ...


def _need_golds(golds: Sequence[Gold]) -> None:
    if any(g is None for g in golds):
        raise ValueError(
            "the verifier judge needs the gold answer of every question; give "
            "records an `answer` or use judge.kind: model"
        )


def _need_solutions(items: Sequence[Comparison]) -> None:
    if any(it.solution is None for it in items):
        raise ValueError(
            "compare_critiques needs the solution both critiques judge: set each "
            "Comparison's `solution`"
        )


def preference(better: bool, worse: bool) -> float:
    return BETTER if better and not worse else WORSE if worse and not better else TIE


@dataclass(frozen=True)
class VerifierJudge:
    """Answer checking against gold answers: the judge RCO uses for math."""

    scale: float = 1.0

    def compare_responses(self, items: Sequence[Comparison]) -> list[float]:
        _need_golds([it.gold for it in items])
        out = []
        for it in items:
            c, b = verify(it.candidate, it.gold), verify(it.baseline, it.gold)
            out.append(preference(c and not b, b and not c))
        return out

    def compare_critiques(self, items: Sequence[Comparison]) -> list[float]:
        """The critique whose final verdict agrees with the verifier on `solution` wins."""
        _need_golds([it.gold for it in items])
        _need_solutions(items)
        out = []
        for it in items:
            truth = verify(it.solution, it.gold)
            c = parse_critique(it.candidate).final_correct == truth
            b = parse_critique(it.baseline).final_correct == truth
            out.append(preference(c and not b, b and not c))
        return out

    def score(
        self, questions: Sequence[str], responses: Sequence[str], golds: Sequence[Gold]
    ) -> list[float | None]:
        _need_golds(golds)
        return [float(verify(r, g)) for r, g in zip(responses, golds, strict=True)]


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


@dataclass
class ModelJudge:
    """A checkpoint prompted as a pairwise judge, asked in both orders; anything but a
    verdict that holds in both orders is a tie. Every call puts all its prompts into one
    sampler call. `unreadable` counts replies with no verdict or rating."""

    model: ChatModel
    sampling: SamplingParams = SamplingParams(max_new_tokens=32, temperature=0.0)
    scale: float = 10.0
    unreadable: int = 0

    def _ask(self, prompts: list[str]) -> list[str]:
        convs = [[{"role": "user", "content": p}] for p in prompts]
        return [samples[0].text or "" for samples in self.model.chat(convs, self.sampling)]

    def _both_orders(self, first_prompts: list[str], second_prompts: list[str]) -> list[float]:
        """first_prompts show the candidate as A, second_prompts as B."""
        verdicts = [parse_verdict(r) for r in self._ask(first_prompts + second_prompts)]
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

    def compare_responses(self, items: Sequence[Comparison]) -> list[float]:
        fmt = COMPARE_RESPONSES.format
        return self._both_orders(
            [fmt(question=it.question, a=it.candidate, b=it.baseline) for it in items],
            [fmt(question=it.question, a=it.baseline, b=it.candidate) for it in items],
        )

    def compare_critiques(self, items: Sequence[Comparison]) -> list[float]:
        _need_solutions(items)
        fmt = COMPARE_CRITIQUES.format
        return self._both_orders(
            [
                fmt(question=it.question, solution=it.solution, a=it.candidate, b=it.baseline)
                for it in items
            ],
            [
                fmt(question=it.question, solution=it.solution, a=it.baseline, b=it.candidate)
                for it in items
            ],
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


# --------------------------------------------------------------------------- config


@dataclass
class InitialResponses:
    """Where the y0 come from: sampled from the actor, or a JSONL/JSON file of records with
    `question`, `solution`, `answer` (the gold answer; needed by the verifier judge) and an
    optional `id`."""

    source: str = "actor"  # actor | file
    path: str = ""
    per_question: int = 1  # actor: samples per question
    sampling: SamplingParams = SamplingParams(max_new_tokens=256, temperature=1.0)

    def __post_init__(self) -> None:
        if self.source not in ("actor", "file"):
            raise ValueError(f"initial.source={self.source!r}; use actor or file")
        if self.source == "file" and not self.path:
            raise ValueError("initial.source: file needs initial.path")


@dataclass
class Rollouts(StageConfig):
    """The settings collection and evaluation share: N critiques x M refinements of the same
    (x, y0) groups, judged alike."""

    actor: ModelSpec | None = None  # refines (and, for initial.source: actor, solves)
    problems: ProblemSource = field(default_factory=ProblemSource)  # for initial.source: actor
    initial: InitialResponses = field(default_factory=InitialResponses)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    num_critiques: int = 4  # N per group
    num_refinements: int = 5  # M per critique
    # Temperature ~1 samples the critic's own distribution: the RCO target is defined
    # relative to it, and diverse critiques give CU differences to learn from.
    critique_sampling: SamplingParams = SamplingParams(max_new_tokens=512, temperature=1.0)
    refine_sampling: SamplingParams = SamplingParams(max_new_tokens=512, temperature=0.7)
    chunk_groups: int = 64  # groups per sampling round (the unit of resume)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        for name in ("num_critiques", "num_refinements", "chunk_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


@dataclass
class Config(Rollouts):
    stage: str = "rco_collect"
    run_dir: str = "runs/rco_collect"
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="tiny"))  # reference critic
    seq_len: int = 1024  # prompt + critique positions for scoring (and training)
    score_batch_size: int = 8  # rows per scoring call (a multiple of the data-parallel size)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("seq_len", "score_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


# --------------------------------------------------------------------------- initial responses


def load_agent(
    spec: ModelSpec,
    mesh: Mesh | None,
    seed: int,
    role: str,
    critique_format: CritiqueFormat = "verdict_first",
) -> tuple[LoadedModel, Agent]:
    """The model and its agent (prompted for critiques in `critique_format`); checkpoints of
    one architecture run the same compiled programs."""
    model = load_model(spec, mesh=mesh, seed=seed)
    if model.tokenizer is None:
        raise ValueError(f"the {role} model needs a tokenizer: set its `tokenizer` (or `path`)")
    return model, make_agent(model, mesh, critique_format)


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
        cached = [Group.from_json(r) for r in read_jsonl(path)]
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
            atomic_write_jsonl(path, (g.to_json() for g in groups))
    seen: set[str] = set()
    for g in groups:
        if g.id in seen:
            raise ValueError(f"initial responses: id {g.id!r} appears twice; ids must be unique")
        seen.add(g.id)
    return groups, skips


def judged_groups(
    cfg: Rollouts, actor: ChatModel, mesh: Mesh | None
) -> tuple[Judge, list[Group], Skips]:
    """The judge and the (x, y0) groups of a collection or an evaluation."""
    judge = make_judge(cfg.judge, mesh, cfg.seed)
    path = Path(cfg.run_dir) / INITIAL
    groups, skips = initial_groups(cfg.initial, cfg.problems, actor, path, cfg.seed)
    if cfg.judge.kind == "verifier" and any(g.answer is None for g in groups):
        raise ValueError(
            "judge.kind: verifier needs gold answers; the initial responses have "
            "none (add `answer` to the file records or use judge.kind: model)"
        )
    return judge, groups, skips


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
) -> list[CritiqueGroup]:
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
        [Comparison(g.question, t, g.solution, g.answer) for g, t in zip(per, texts, strict=True)]
    )

    def sample(k: int, c: Completion) -> CritiqueSample:
        scores = tuple(ps[k * num_refinements : (k + 1) * num_refinements])
        refinements = tuple(r.text or "" for r in refined[k])
        logp = float(sum(c.logprobs))
        cu = float(np.mean(scores))
        return CritiqueSample(
            c.text or "", tuple(c.token_ids), c.finish_reason, logp, refinements, scores, cu
        )

    samples = iter([sample(k, c) for k, (_, c) in enumerate(flat)])
    return [
        CritiqueGroup(
            g,
            None if g.answer is None else verify(g.solution, g.answer),
            tuple(ids),
            tuple(next(samples) for _ in cs),
        )
        for g, ids, cs in zip(groups, prompt_ids, critiques, strict=True)
    ]


def sample_chunk(
    cfg: Rollouts, critic: Agent, actor: ChatModel, judge: Judge, chunk: Sequence[Group], index: int
) -> list[CritiqueGroup]:
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


def with_reference_logps(
    records: list[CritiqueGroup],
    model_cfg: ModelConfig,
    params: Any,
    pad_id: int,
    seq_len: int,
    batch_size: int,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
) -> list[CritiqueGroup]:
    """`records` with `ref_logp` of every critique: its sequence log-prob under `params`
    (None when prompt + critique exceed seq_len)."""
    entries = [(r.prompt_ids, c) for r in records for c in r.critiques]
    rows, fits = critique_rows(
        [p for p, _ in entries], [c.token_ids for _, c in entries], seq_len, pad_id
    )
    logps = scoring.score_rows(
        model_cfg, params, {k: v[fits] for k, v in rows.items()}, batch_size, mesh, rules
    )
    scored = iter(logps.tolist())
    ref_logps = iter([next(scored) if ok else None for ok in fits])
    return [
        dataclasses.replace(
            r,
            critiques=tuple(dataclasses.replace(c, ref_logp=next(ref_logps)) for c in r.critiques),
        )
        for r in records
    ]


def summarize(records: Sequence[CritiqueGroup]) -> dict[str, Any]:
    crits = [c for r in records for c in r.critiques]
    if not crits:
        return {"groups": 0, "critiques": 0}
    cus = np.array([c.cu for c in crits])
    spread = [len({c.cu for c in r.critiques}) > 1 for r in records]
    correct = [r.solution_is_correct for r in records if r.solution_is_correct is not None]
    return {
        "groups": len(records),
        "critiques": len(crits),
        "mean_cu": float(cus.mean()),
        # Groups whose critiques differ in CU: the ones RCO (and DPCO's pairs) learn from.
        "groups_with_cu_spread": float(np.mean(spread)),
        "scored_critiques": float(np.mean([c.ref_logp is not None for c in crits])),
        "stopped_critiques": float(np.mean([c.finish_reason == "stop" for c in crits])),
        "initial_accuracy": float(np.mean(correct)) if correct else None,
    }


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
    judge, groups, skips = judged_groups(cfg, actor, mesh)

    def compute(chunk: list[Group], index: int) -> list[dict[str, Any]]:
        records = with_reference_logps(
            sample_chunk(cfg, critic, actor, judge, chunk, index),
            critic_model.cfg,
            critic.params,
            pad_id_of(critic.tokenizer),
            cfg.seq_len,
            cfg.score_batch_size,
            mesh,
            rules,
        )
        return [r.to_json() for r in records]

    with RecordLog(run_dir / RECORDS) as log_:
        records = [CritiqueGroup.from_json(r) for r in log_.fill(groups, cfg.chunk_groups, compute)]
    result = with_skips(summarize(records), skips)
    result["records"] = str(run_dir / RECORDS)
    if this_process_writes():
        atomic_write_json(run_dir / "summary.json", result)
    return result
