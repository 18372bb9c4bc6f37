"""Test-time supervision: the modes' logic with a scripted actor, and the stage end to end on
the demo world with a tiny model and the oracle critic."""

import json
from pathlib import Path

import pytest

from critique_jax.config import ConfigError, ModelSpec
from critique_jax.data.demo_world import generate_problems, inject_error, templated_critique
from critique_jax.data.prompts import ANSWER_FORMAT
from critique_jax.data.sources import ProblemSource
from critique_jax.pipelines.roles import CriticSpec, OracleCritic
from critique_jax.pipelines.test_time import (
    Config,
    TTSSettings,
    parallel_records,
    results_table,
    run,
    run_test_time,
    sequential_outcome,
    sequential_records,
    summarize_parallel,
    summarize_sequential,
)
from critique_jax.sampling import Completion, SamplingParams
from critique_jax.train import build_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class ScriptedActor:
    """Solves from a per-question plan of sample texts; refines with the reference solution.
    A completion's token count is its number of words."""

    def __init__(self, problems, plans):
        self.by_question = {p.question: p for p in problems}
        self.plans = plans
        self.calls = []

    def chat(self, conversations, sp):
        self.calls.append((len(conversations), sp.n))
        out = []
        for conv in conversations:
            question = conv[0]["content"].removesuffix(f"\n\n{ANSWER_FORMAT}")
            p = self.by_question[question]
            texts = self.plans[p.id] if len(conv) == 1 else [p.solution] * sp.n
            out.append([_completion(texts[j % len(texts)]) for j in range(sp.n)])
        return out


def _completion(text):
    n = len(text.split())
    return Completion(tuple(range(n)), (0.0,) * n, "stop", text)


@pytest.fixture(scope="module")
def world():
    easy, hard = generate_problems(2, seed=3, levels=(2,))
    wrong_a = inject_error(hard, 1, seed=0)
    wrong_b = next(w for s in range(1, 20) if (w := inject_error(hard, 2, seed=s)) != wrong_a)
    plans = {easy.id: [easy.solution], hard.id: [wrong_a, wrong_a, hard.solution, wrong_b]}
    critic = OracleCritic({p.question: p for p in (easy, hard)}, templated_critique)
    return [easy, hard], plans, critic


def _by_k(points):
    return {p["k"]: p for p in points}


def test_parallel_modes_votes_and_tokens(world):
    problems, plans, critic = world
    actor = ScriptedActor(problems, plans)
    s = TTSSettings(ks=[1, 4])
    records = parallel_records(actor, critic, problems, s)
    # One fan-out solve call for every question, then one refine call for the rejected ones.
    assert actor.calls == [(2, 4), (3, 1)]
    summary = summarize_parallel(records, s.ks, s.weights)
    assert set(summary) == {"majority", "oracle", "critic_filter", "critic_weighted", "refine_vote"}
    words = {pid: [len(t.split()) for t in plan * 4][:4] for pid, plan in plans.items()}
    # K=1: the hard question's first sample is wrong; only refining fixes it.
    k1 = {m: _by_k(pts)[1]["accuracy"] for m, pts in summary.items()}
    assert k1 == {
        "majority": 0.5,
        "oracle": 0.5,
        "critic_filter": 0.5,
        "critic_weighted": 0.5,
        "refine_vote": 1.0,
    }
    # K=4: two equal wrong answers outvote the right one unless the critic intervenes.
    k4 = {m: _by_k(pts)[4] for m, pts in summary.items()}
    assert k4["majority"]["accuracy"] == 0.5
    for mode in ("oracle", "critic_filter", "critic_weighted", "refine_vote"):
        assert k4[mode]["accuracy"] == 1.0, mode
    actor_tokens = (sum(words[problems[0].id]) + sum(words[problems[1].id])) / 2
    assert k4["majority"]["tokens_per_question"] == actor_tokens
    assert k4["critic_weighted"]["critic_tokens_per_question"] == 0  # the oracle is free
    refine_tokens = 3 * len(problems[1].solution.split()) / 2  # three wrong samples refined
    assert k4["refine_vote"]["tokens_per_question"] == actor_tokens + refine_tokens
    assert k4["majority"]["by_level"] == {"2": 0.5}


def test_sequential_stops_when_the_critic_accepts(world):
    problems, plans, critic = world
    actor = ScriptedActor(problems, plans)
    records = sequential_records(actor, critic, problems, TTSSettings(rounds=3))
    easy, hard = (r.rounds for r in records)
    assert [s.verdict for s in easy] == [True]
    assert [s.verdict for s in hard] == [False, True]  # refined once, then accepted
    points = summarize_sequential(records, 3)
    assert [p["accuracy"] for p in points] == [0.5, 1.0, 1.0, 1.0]
    y0, y1 = (len(s.judged.text.split()) for s in hard)
    assert sequential_outcome(hard, 0) == (False, y0, 0)
    assert sequential_outcome(hard, 2) == (True, y0 + y1, 0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tts")
    # One temperature and few shapes: every distinct sampler shape is a compile.
    sp = SamplingParams(max_new_tokens=12, temperature=0.7)
    cfg = Config(
        run_dir=str(run_dir),
        actor=ModelSpec(
            preset="tiny", overrides={"vocab_size": 512, "max_position_embeddings": 1024}
        ),
        critic=CriticSpec(oracle="demo"),
        problems=ProblemSource(kind="demo", size=2, seed=5, levels=[1, 2]),
        tts=TTSSettings(ks=[1, 2], rounds=1, first=sp, sample=sp, refine=sp, chunk_size=2),
    )
    return cfg, run(cfg)


def test_stage_end_to_end_on_the_demo_world(tiny_run):
    cfg, results = tiny_run
    run_dir = cfg.run_dir
    assert results["questions"] == 2 and results["critic"] is True
    for mode in ("majority", "oracle", "critic_filter", "critic_weighted", "refine_vote"):
        points = results["parallel"][mode]
        assert [p["k"] for p in points] == [1, 2]
        for p in points:
            assert 0.0 <= p["accuracy"] <= 1.0
            assert p["actor_tokens_per_question"] > 0
            assert p["critic_tokens_per_question"] == 0  # oracle critic
    assert [p["rounds"] for p in results["sequential"]] == [0, 1]
    # An untrained model writes garbage: the oracle rejects it and everything is refined.
    diag = results["critic_diagnostics"]
    assert diag["samples"] == 4 and diag["refined"] == 4
    with open(f"{run_dir}/results.json") as f:
        assert json.load(f) == results
    with open(f"{run_dir}/accuracy_vs_compute.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    lines = open(f"{run_dir}/parallel.jsonl").read().splitlines()
    assert len(lines) == 2 and len(json.loads(lines[0])["samples"]) == 2
    assert open(f"{run_dir}/results.md").read() == results_table(results)


def test_stage_resumes_from_its_records(tiny_run):
    cfg, results = tiny_run

    class NoSampling:
        def chat(self, *a):
            raise AssertionError("every question has a record: nothing should be sampled")

    from critique_jax.data.sources import load_problems
    from critique_jax.pipelines.roles import load_roles

    problems = load_problems(cfg.problems)
    _, critic = load_roles(None, cfg.critic, problems)
    again = run_test_time(NoSampling(), critic, problems, cfg.tts, cfg.run_dir, "")
    assert again["parallel"] == results["parallel"]
    assert again["sequential"] == results["sequential"]


def test_results_table_has_a_row_per_point(world):
    problems, plans, critic = world
    s = TTSSettings(ks=[1, 4], rounds=1)
    results = {"questions": 2, "ks": s.ks, "rounds": 1}
    results["parallel"] = summarize_parallel(
        parallel_records(ScriptedActor(problems, plans), critic, problems, s), s.ks
    )
    results["sequential"] = summarize_sequential(
        sequential_records(ScriptedActor(problems, plans), critic, problems, s), 1
    )
    results["critic_diagnostics"] = {"samples": 8, "verdict_accuracy": None}
    table = results_table(results)
    rows = [r for ln in table.splitlines() if len(r := ln.split(" | ")) > 2 and r[1][1:2] == "="]
    assert len(rows) == 5 * 2 + 2  # five parallel modes at two K, sequential at R=0 and R=1
    majority_k4 = next(r for r in rows if "majority" in r[0] and r[1] == "K=4")
    point = _by_k(results["parallel"]["majority"])[4]
    assert majority_k4[2] == f"{point['accuracy']:.3f}"
    assert majority_k4[-3] == f"{point['tokens_per_question']:.1f}"
    assert "| verdict_accuracy | - |" in table


def test_settings_validation():
    with pytest.raises(ConfigError, match="modes"):
        TTSSettings(modes=["beam"])
    with pytest.raises(ConfigError, match="demo-world"):
        Config(problems=ProblemSource(kind="gsm8k", path="x.jsonl"))  # the oracle critic
    problems = generate_problems(1, seed=0)
    with pytest.raises(ConfigError, match="needs a critic"):
        run_test_time(None, None, problems, TTSSettings(), "/nonexistent")


@pytest.mark.parametrize(
    "name",
    [
        "eval_tts_demo",
        "eval_tts_gsm8k_qwen2.5-0.5b",
        "eval_tts_math_qwen2.5-0.5b",
        "eval_tts_gsm8k_smollm2-135m",
        "eval_tts_math_smollm2-135m",
    ],
)
def test_config_files_parse(name):
    _, cfg = build_config(str(CONFIGS / f"{name}.yaml"), [])
    assert isinstance(cfg, Config) and cfg.stage == "eval_tts"
