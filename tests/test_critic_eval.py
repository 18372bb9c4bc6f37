"""eval_critic: metrics on hand-made cases, oracle and constant critics on the demo eval set,
the closed loop with an untrained actor, eval-set files, and the stage's resume."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from critique_jax.config import ConfigError, ModelSpec, from_dict
from critique_jax.data.critique_format import format_critique, parse_critique, split_steps
from critique_jax.data.demo_world import generate_problems, templated_critique
from critique_jax.data.loaders import DataError
from critique_jax.pipelines import critic_eval as ce
from critique_jax.pipelines.critique_data import LabelledSolution
from critique_jax.pipelines.loading import load_model
from critique_jax.pipelines.roles import OracleCritic, make_agent, with_demo_tokenizer
from critique_jax.runio import read_jsonl
from critique_jax.sampling import SamplingParams

PROBLEMS = generate_problems(6, seed=3, levels=(1, 2, 3))
QUESTIONS = {p.question: p for p in PROBLEMS}
GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0)
ORACLE = OracleCritic(QUESTIONS, templated_critique)
ALWAYS_CORRECT = OracleCritic(
    QUESTIONS, lambda p, s, fmt: format_critique([], True, "Looks right.", fmt)
)


@pytest.fixture(scope="module")
def eval_set():
    return ce.build_demo_eval_set(PROBLEMS, wrong_per_problem=2, seed=0)


@pytest.fixture(scope="module")
def actor(tmp_path_factory):
    tok = tmp_path_factory.mktemp("tok") / "demo_tokenizer"
    return make_agent(load_model(with_demo_tokenizer(ModelSpec(preset="demo"), PROBLEMS, tok)))


def test_demo_eval_set_has_references_and_known_first_errors(eval_set):
    assert len(eval_set) == 18 and len({r.id for r in eval_set}) == 18
    for r in eval_set:
        p = QUESTIONS[r.question]
        if r.kind == "reference":
            assert r.solution_is_correct and r.first_error_step is None
        else:
            k = r.first_error_step
            assert not r.solution_is_correct and 1 <= k <= len(split_steps(p.solution))


def test_perfect_oracle_scores_one(eval_set):
    outputs, m = ce.evaluate_critic(ORACLE, eval_set, GREEDY)
    assert m["verdict_accuracy"] == m["first_error"]["accuracy"] == 1.0
    assert m["first_error"]["n"] == 12 and m["unparseable_rate"] == 0.0
    assert m["wrong_precision"] == m["wrong_recall"] == m["balanced_accuracy"] == 1.0
    assert m["quote_fidelity"] == 1.0
    assert m["tokens"]["critique_per_question"] == 0  # an oracle generates nothing
    assert all(v["verdict_accuracy"] == 1.0 for v in m["by_level"].values())
    assert [o.id for o in outputs] == [r.id for r in eval_set]


def test_constant_correct_critic_gets_the_base_rate(eval_set):
    _, m = ce.evaluate_critic(ALWAYS_CORRECT, eval_set, GREEDY)
    assert m["verdict_accuracy"] == pytest.approx(m["base_rate_correct"]) == pytest.approx(1 / 3)
    assert m["wrong_recall"] == 0.0 and m["wrong_precision"] is None
    assert m["balanced_accuracy"] == 0.5  # right on every right solution, on no wrong one
    assert m["first_error"]["accuracy"] == 0.0
    assert m["quote_fidelity"] is None  # it quotes no step


def test_metrics_on_hand_made_outputs():
    records = [
        LabelledSolution(i, "q", "s", "1", correct, step, level)
        for i, correct, step, level in [
            ("a", True, None, 1),
            ("b", True, None, 1),
            ("c", False, 2, 2),
            ("d", False, 1, 2),
        ]
    ]

    def out(i, verdict, step, refinements, parseable=True, quotes=(2, 2)):
        return ce.EvalCritique(
            id=i,
            critique="",
            parseable=parseable,
            verdict=verdict,
            first_wrong_step=step,
            quoted_steps=quotes[0],
            verbatim_quotes=quotes[1],
            checked_steps=0,
            agreeing_checks=0,
            tokens=10,
            refinements=tuple(refinements),
            refine_tokens=5 * len(refinements),
        )

    outputs = [
        out("d", None, 3, [False, False], parseable=False, quotes=(0, 0)),
        out("a", True, None, [], quotes=(3, 1)),
        out("b", False, 1, [True, False]),
        out("c", False, 2, [True, True]),
    ]
    m = ce.critic_metrics(records, outputs, closed=True)
    assert m["verdict_accuracy"] == 0.5 and m["verdict_accuracy_parseable"] == pytest.approx(2 / 3)
    assert m["unparseable_rate"] == 0.25
    assert m["wrong_precision"] == 0.5 and m["wrong_recall"] == 0.5
    assert m["balanced_accuracy"] == 0.5  # right solutions 1/2 (a), wrong 1/2 (c; d unparseable)
    assert m["first_error"] == {"n": 2, "accuracy": 0.5}
    assert m["quote_fidelity"] == 5 / 7  # (1 + 2 + 2) verbatim of (3 + 2 + 2) quoted
    assert m["by_level"]["1"] == {"n": 2, "verdict_accuracy": 0.5}
    assert m["tokens"] == {"critique_per_question": 10, "refine_per_question": 7.5}
    loop = m["closed_loop"]  # final correctness per record: a 1, b 0.5, c 1, d 0
    assert loop["initial_accuracy"] == 0.5 and loop["accuracy"] == 0.625
    assert loop["gain"] == 0.125 and loop["refined_share"] == 0.75
    assert loop["wrong_fixed"] == 0.5 and loop["correct_broken"] == 0.25
    with pytest.raises(ValueError, match="no critique"):
        ce.critic_metrics(records, outputs[1:])
    with pytest.raises(ValueError, match="no refinements"):
        ce.critic_metrics(records, [replace(o, refinements=()) for o in outputs], closed=True)


def test_closed_loop_and_stage_resume(actor, eval_set, tmp_path):
    cfg = from_dict(
        ce.Config,
        {
            "run_dir": str(tmp_path),
            "actor": {"preset": "demo"},
            "eval_set": {
                "problems": {"kind": "demo", "size": 6, "seed": 3, "levels": [1, 2, 3]},
                "wrong_per_problem": 2,
            },
            "refinements": 2,
            "refine_sampling": {"max_new_tokens": 16},
            "chunk_size": 8,
        },
    )
    results = ce.evaluate(cfg, eval_set, ORACLE, actor)
    loop = results["closed_loop"]
    # The oracle passes every correct solution and flags every wrong one; the untrained actor
    # fixes none, so the closed loop neither gains nor loses.
    assert loop["refined_share"] == pytest.approx(2 / 3) and loop["wrong_fixed"] == 0.0
    assert loop["accuracy"] == loop["initial_accuracy"] and loop["correct_broken"] == 0.0
    assert results["tokens"]["refine_per_question"] > 0
    assert json.loads((tmp_path / "results.json").read_text()) == results
    lines = (tmp_path / "critiques.jsonl").read_text()
    outputs = [json.loads(ln) for ln in lines.splitlines()]
    assert [o["id"] for o in outputs] == [r.id for r in eval_set]
    assert all(len(o["refinements"]) == 2 for o in outputs if o["verdict"] is False)

    # Killed while writing the last chunk (records 16-17): a rerun completes it identically.
    kept = lines.splitlines(keepends=True)
    (tmp_path / "critiques.jsonl").write_text("".join(kept[:16]) + kept[16][:30])
    assert ce.evaluate(cfg, eval_set, ORACLE, actor) == results
    assert (tmp_path / "critiques.jsonl").read_text() == lines


def test_sampled_eval_set_is_labelled_by_the_verifier(actor):
    sp = SamplingParams(max_new_tokens=16, temperature=1.0, seed=1)
    records = ce.build_sampled_eval_set(actor, PROBLEMS[:3], 2, sp)
    assert records and all(r.first_error_step is None for r in records)
    assert all(r.solution_is_correct is False for r in records)  # an untrained actor
    assert len({(r.problem_id, r.solution) for r in records}) == len(records)


def test_stage_run_with_an_oracle_needs_no_model(tmp_path):
    overrides = {
        "run_dir": str(tmp_path),
        "refinements": 0,
        "eval_set": {"problems": {"kind": "demo", "size": 4, "seed": 5}},
    }
    cfg = from_dict(ce.Config, overrides)
    results = ce.run(cfg)
    assert results["n"] == 8 and results["verdict_accuracy"] == 1.0
    assert "closed_loop" not in results
    saved = list(read_jsonl(tmp_path / "eval_set.jsonl"))
    assert len(saved) == 8
    read = ce.read_eval_set(tmp_path / "eval_set.jsonl")
    assert [(r.id, r.gold) for r in read] == [(r["id"], r["answer"]) for r in saved]
    # An eval-set file (e.g. collect_critiques' solutions.jsonl) drives the same evaluation.
    again = from_dict(
        ce.Config,
        {
            **overrides,
            "run_dir": str(tmp_path / "again"),
            "eval_set": {**overrides["eval_set"], "path": str(tmp_path / "eval_set.jsonl")},
        },
    )
    assert ce.run(again) == results


def test_eval_set_files_are_checked(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "solution": "s", "answer": "1"}) + "\n")
    with pytest.raises(DataError, match="solution_is_correct"):
        ce.read_eval_set(bad)
    good = tmp_path / "good.jsonl"
    good.write_text(
        json.dumps(
            {"id": 7, "question": "q", "solution": "s", "answer": "1", "solution_is_correct": False}
        )
        + "\n"
    )
    (r,) = ce.read_eval_set(good)
    assert r == LabelledSolution("7", "q", "s", "1", False)


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="needs an `actor:`"):
        from_dict(ce.Config, {"refinements": 2})
    with pytest.raises(ConfigError, match="oracle"):
        from_dict(
            ce.Config,
            {
                "refinements": 0,
                "eval_set": {"problems": {"kind": "gsm8k"}},
                "actor": {"preset": "demo"},
            },
        )


def test_oracle_critiques_parse(eval_set):
    outputs = ce.critique_outputs(ORACLE, eval_set[:3], GREEDY)
    assert all(parse_critique(o.critique).parseable for o in outputs)
