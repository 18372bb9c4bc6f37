"""Critique-in-the-loop self-training: what one iteration keeps (scripted actor, oracle critic),
and the stage end to end with a tiny model (iteration 0, one iteration of both arms, table)."""

import dataclasses
import json
from pathlib import Path

import pytest

from critique_jax.config import ModelSpec, OptimConfig, TrainConfig
from critique_jax.data.critique_format import parse_critique
from critique_jax.data.demo_world import generate_problems, inject_error, templated_critique
from critique_jax.data.math import verify
from critique_jax.data.prompts import ANSWER_FORMAT
from critique_jax.data.sources import ProblemSource
from critique_jax.pipelines.roles import CriticSpec, OracleCritic
from critique_jax.pipelines.self_train import (
    Config,
    KeptItem,
    QuestionRecord,
    collect_records,
    comparison_table,
    evaluation_keys,
    iteration0_examples,
    kept_stats,
    required_steps,
    run,
    work_steps,
)
from critique_jax.sampling import Completion, SamplingParams
from critique_jax.train import build_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class ScriptedActor:
    """Samples from a per-question plan; each refinement call answers, per sample index:
    0 a shortcut (right answer, no work), 1 and 2 a right solution with work (distinct
    texts), 3 a wrong solution."""

    def __init__(self, problems, plans):
        self.by_question = {p.question: p for p in problems}
        self.plans = plans
        self.refine_calls = 0

    def chat(self, conversations, sp):
        out = []
        for conv in conversations:
            p = self.by_question[conv[0]["content"].removesuffix(f"\n\n{ANSWER_FORMAT}")]
            if len(conv) == 1:
                texts = [self.plans[p.id][j % len(self.plans[p.id])] for j in range(sp.n)]
            else:
                self.refine_calls += 1
                c = self.refine_calls
                texts = [
                    f"The answer is {p.answer}.",
                    f"Let me redo it (try {c}a).\n{p.solution}",
                    f"Let me redo it (try {c}b).\n{p.solution}",
                    inject_error(p, 1, seed=c),
                ][: sp.n]
            out.append([Completion((1,) * 5, (0.0,) * 5, "stop", t) for t in texts])
        return out


@pytest.fixture(scope="module")
def world():
    (easy,) = generate_problems(1, seed=7, levels=(1,))
    (hard,) = generate_problems(1, seed=8, levels=(3,))
    plans = {
        easy.id: [easy.solution],
        hard.id: [
            inject_error(hard, 1, 0),
            hard.solution,
            inject_error(hard, 2, 0),
            inject_error(hard, 1, 0),
        ],
    }
    critic = OracleCritic({p.question: p for p in (easy, hard)}, templated_critique)
    cfg = Config(samples=4, refinements=4, max_per_critique=1, min_step_ratio=0.5, hard_min_level=3)
    return [easy, hard], plans, critic, cfg


def _verifies(item):
    return verify(item.solution, item.answer)


def test_collection_keeps_only_verified_work(world):
    problems, plans, critic, cfg = world
    hard_problem = problems[1]
    easy, hard = collect_records(ScriptedActor(problems, plans), critic, problems, cfg)
    items = easy.kept + hard.kept
    assert items and all(_verifies(it) for it in items)
    assert len({it.id for it in items}) == len(items)
    # Four identical correct samples of the easy question are kept once.
    assert [it.origin for it in easy.kept] == ["sample"]
    # Three wrong samples critiqued; per critique 3 correct refinements, 1 a shortcut, and
    # at most max_per_critique=1 kept.
    assert (hard.critiqued, hard.correct_refinements, hard.shortcuts) == (3, 9, 3)
    refinements = [it for it in hard.kept if it.origin == "refinement"]
    assert len(refinements) == 3
    for it in refinements:
        assert work_steps(it.solution) >= required_steps(hard_problem, 1, 0.5) == 2
        assert templated_critique(hard_problem, it.wrong_solution) == it.critique
    trace = hard.trace  # the first wrong sample, its critique and its refinements
    assert trace["critique"] == templated_critique(hard_problem, trace["solution"])
    assert len(trace["refinements"]) == cfg.refinements and easy.trace is None
    assert [QuestionRecord.from_json(r.to_json()) for r in (easy, hard)] == [easy, hard]
    assert "trace" not in easy.to_json() and "wrong_solution" not in easy.kept[0].to_json()
    stats = kept_stats([easy, hard], hard_min_level=3)
    assert stats["kept"] == 5 and stats["from_refinements"] == 3
    assert stats["hard_share_kept"] == pytest.approx(4 / 5)
    assert stats["hard_share_questions"] == pytest.approx(1 / 2)


class LuckyActor(ScriptedActor):
    """Refinements: one with a wrong step 1 but the right final answer, then the reference."""

    def chat(self, conversations, sp):
        if len(conversations[0]) == 1:
            return super().chat(conversations, sp)
        out = []
        for conv in conversations:
            p = self.by_question[conv[0]["content"].removesuffix(f"\n\n{ANSWER_FORMAT}")]
            lines = p.solution.splitlines()
            lucky = "\n".join([lines[0].replace(" = ", " = 1"), *lines[1:]])
            texts = [lucky, p.solution][: sp.n]
            out.append([Completion((1,) * 5, (0.0,) * 5, "stop", t) for t in texts])
        return out


@pytest.mark.parametrize("recheck", [False, True])
def test_recheck_drops_refinements_with_a_wrong_step(world, recheck):
    problems, plans, critic, cfg = world
    cfg = dataclasses.replace(cfg, refinements=2, recheck=recheck)
    _, hard = collect_records(LuckyActor(problems, plans), critic, problems, cfg)
    refinements = [it for it in hard.kept if it.origin == "refinement"]
    wrong_steps = [
        parse_critique(templated_critique(problems[1], it.solution)).first_wrong_step
        for it in refinements
    ]
    assert hard.correct_refinements == 2 * hard.critiqued == 6
    # Answer-only verification keeps the lucky text (once: texts are kept once per question;
    # the right one is already kept as a sample); the recheck drops all three lucky ones.
    assert hard.rechecked_out == (3 if recheck else 0)
    assert wrong_steps == ([] if recheck else [1])


def test_vanilla_is_the_same_path_without_the_critic(world):
    problems, plans, _, cfg = world
    actor = ScriptedActor(problems, plans)
    easy, hard = collect_records(actor, None, problems, cfg)
    assert actor.refine_calls == 0
    assert [it.origin for it in easy.kept + hard.kept] == ["sample", "sample"]
    assert all(_verifies(it) for it in easy.kept + hard.kept)
    assert kept_stats([easy, hard], 3)["hard_share_kept"] == pytest.approx(1 / 2)


def test_work_steps_guard():
    assert work_steps("The answer is 12.") == 0
    assert work_steps("Step 1: 7 + 5 = 12\nThe answer is 12.") == 1
    assert work_steps("Ava has 7.\nShe buys 5: 12.\n#### 12") == 2
    assert work_steps("First paragraph.\n\nSecond one \\boxed{3}.\n\nThe answer is 3.") == 2


def test_iteration0_examples_on_the_demo_world():
    problems = generate_problems(3, seed=0, levels=(1, 2))
    examples = iteration0_examples(problems, None, seed=0)
    solves, refines = examples[:3], examples[3:]
    assert [target for _, target in solves] == [p.solution for p in problems]
    refine_prompt, target = refines[0]
    assert len(refine_prompt) == 3 and target == problems[0].solution
    assert "Wrong" in refine_prompt[2]["content"]
    # A correct solution whose critique finds no error is kept as it is.
    kept = [(prompt, t) for prompt, t in refines if prompt[1]["content"] == t]
    assert 1 <= len(kept) < len(problems)  # some questions, not all
    assert all("Wrong" not in prompt[2]["content"] for prompt, _ in kept)


def test_comparison_table_layout():
    rows = [
        {
            "arm": "shared",
            "iteration": 0,
            "accuracy": 0.5,
            "by_level": {"1": 1.0, "2": 0.0},
            "pass@4": 0.75,
            "tokens_per_question": 20.0,
        },
        {
            "arm": "critique",
            "iteration": 1,
            "accuracy": 0.75,
            "by_level": {"10": 0.5},
            "pass@4": 1.0,
            "tokens_per_question": 21.0,
            "collection": {"kept": 7, "from_refinements": 3, "hard_share_kept": 0.4},
        },
    ]
    lines = comparison_table(rows, 4).splitlines()
    assert lines[0].split(" | ")[3:6] == ["level 1", "level 2", "level 10"]
    assert lines[2].startswith("| shared | 0 | 0.500 | 1.000 | 0.000 | - | 0.750 |")
    assert lines[3].endswith("| 7 | 3 | 0.400 |")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    sp = SamplingParams(max_new_tokens=12, temperature=0.7)  # one temperature: fewer compiles
    train = TrainConfig(steps=2, batch_size=2, seq_len=512, log_every=1, async_checkpoint=False)
    cfg = Config(
        run_dir=str(tmp_path_factory.mktemp("self_train")),
        actor=ModelSpec(
            preset="tiny", overrides={"vocab_size": 512, "max_position_embeddings": 1024}
        ),
        critic=CriticSpec(oracle="demo"),
        train_problems=ProblemSource(kind="demo", size=2, seed=11, levels=[1, 2]),
        test_problems=ProblemSource(kind="demo", size=2, seed=12, levels=[1, 2]),
        iterations=1,
        samples=2,
        refinements=2,
        eval_samples=2,
        chunk_size=2,
        sample=sp,
        critique=sp,
        refine=sp,
        eval=sp,
        sft0=train,
        train=train,
        optim=OptimConfig(learning_rate=1e-3),
    )
    return cfg, run(cfg)


def test_stage_runs_both_arms_and_writes_the_table(tiny_run):
    cfg, results = tiny_run
    run_dir = Path(cfg.run_dir)
    assert results["arms"] == ["vanilla", "critique"]
    rows = json.loads((run_dir / "comparison.json").read_text())
    assert [(r["arm"], r["iteration"]) for r in rows] == [
        ("shared", 0),
        ("vanilla", 1),
        ("critique", 1),
    ]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and "pass@2" in r and set(r["by_level"]) == {"1", "2"}
    md = (run_dir / "comparison.md").read_text()
    assert "| vanilla | 1 |" in md and "| critique | 1 |" in md
    for arm in ("vanilla", "critique"):
        out = run_dir / arm / "iter_1"
        kept = [json.loads(x) for x in (out / "kept.jsonl").read_text().splitlines()]
        assert all(verify(it["solution"], it["answer"]) for it in kept)  # whatever the model
        assert [KeptItem.from_json(it).to_json() for it in kept] == kept  # the keys on disk
        stats = json.loads((out / "collect_stats.json").read_text())
        assert stats["samples"] == 4 and stats["kept"] == len(kept)
        assert (out / "hf" / "config.json").exists()
    for row in rows[1:]:  # an arm that kept nothing is the iteration-0 actor: not re-evaluated
        if row["trained_on"] == 0:
            assert {k: row[k] for k in evaluation_keys(cfg)} == {
                k: rows[0][k] for k in evaluation_keys(cfg)
            }
    # The oracle rejects the untrained model's wrong samples: only that arm critiques them.
    assert rows[1]["collection"]["critiqued"] == 0
    assert rows[2]["collection"]["critiqued"] == 4 - rows[2]["collection"]["correct_samples"]


def test_stage_resumes_finished_iterations(tiny_run):
    cfg, results = tiny_run
    assert run(cfg)["rows"] == results["rows"]  # read back from results.json, nothing rerun


def test_config_file_parses():
    _, cfg = build_config(str(CONFIGS / "self_train_demo.yaml"), [])
    assert isinstance(cfg, Config) and cfg.critic.oracle == "demo" and cfg.baseline
