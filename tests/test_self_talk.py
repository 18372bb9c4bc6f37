"""Self-talk: trajectories round-trip through their markers, and the stage trains and
evaluates a tiny model end to end."""

import json
from pathlib import Path

import pytest

from critique_jax.config import ConfigError, ModelSpec, OptimConfig, TrainConfig
from critique_jax.data.demo_world import generate_problems, inject_error, templated_critique
from critique_jax.data.math import extract_answer
from critique_jax.data.sources import ProblemSource
from critique_jax.pipelines.self_talk import (
    CHECK,
    CONFIRM,
    CORRECT_IT,
    MARKERS,
    SOLUTION_CLOSE,
    SOLUTION_OPEN,
    Config,
    build_trajectory,
    demo_records,
    final_answer,
    run,
    solutions,
    trajectory_from_record,
)
from critique_jax.sampling import SamplingParams
from critique_jax.train import build_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

(PROBLEM,) = generate_problems(1, seed=4, levels=(3,))
FLAWED = inject_error(PROBLEM, 2, seed=0)


def test_correction_trajectory_round_trips():
    critique = templated_critique(PROBLEM, FLAWED)
    text = build_trajectory(FLAWED, critique, PROBLEM.solution)
    positions = [text.index(m) for m in (SOLUTION_OPEN, SOLUTION_CLOSE, CHECK, CORRECT_IT)]
    assert positions == sorted(positions)
    assert text.count(SOLUTION_OPEN) == 2 and CONFIRM not in text
    assert solutions(text) == [FLAWED, PROBLEM.solution]
    assert final_answer(text) == PROBLEM.answer != extract_answer(FLAWED)
    # The critique quotes the flawed steps, yet only the last solution block counts.
    assert critique in text


def test_confirmed_trajectory_and_fallbacks():
    critique = templated_critique(PROBLEM, PROBLEM.solution)
    text = build_trajectory(PROBLEM.solution, critique)
    assert text.endswith(CONFIRM) and CORRECT_IT not in text
    assert final_answer(text) == PROBLEM.answer
    assert final_answer("Step 1: 2 + 2 = 4\nThe answer is 4.") == "4"  # no marker: plain
    assert final_answer(f"{SOLUTION_OPEN}\nThe answer is 9.\nunfinished") == "9"  # unclosed
    assert final_answer(f"{SOLUTION_OPEN}\nno answer here{SOLUTION_CLOSE}") is None
    assert len(set(MARKERS)) == 5


def test_trajectory_from_record_follows_the_verdict():
    wrong = {
        "question": PROBLEM.question,
        "solution": FLAWED,
        "critique": templated_critique(PROBLEM, FLAWED),
    }
    assert trajectory_from_record(wrong) is None  # rejected, nothing to correct with
    fixed = trajectory_from_record({**wrong, "refinement": PROBLEM.solution})
    assert final_answer(fixed) == PROBLEM.answer
    right = {
        "question": PROBLEM.question,
        "solution": PROBLEM.solution,
        "critique": templated_critique(PROBLEM, PROBLEM.solution),
        "refinement": "ignored",
    }
    assert trajectory_from_record(right).endswith(CONFIRM)


def test_demo_records_end_on_the_gold_answer():
    problems = generate_problems(8, seed=1)
    records = demo_records(problems, correct_share=0.5, seed=0)
    assert 0 < sum(r["refinement"] is None for r in records) < len(records)
    for p, r in zip(problems, records, strict=True):
        assert final_answer(trajectory_from_record(r)) == p.answer


def test_config_rejects_unusable_data_formats():
    from critique_jax.pipelines.sft import SFTData

    with pytest.raises(ConfigError, match="data.format"):
        Config(data=SFTData(path="x.jsonl", format="critique"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = Config(
        run_dir=str(tmp_path_factory.mktemp("self_talk")),
        model=ModelSpec(
            preset="tiny", overrides={"vocab_size": 512, "max_position_embeddings": 1024}
        ),
        train_problems=ProblemSource(kind="demo", size=4, seed=1, levels=[1, 2]),
        test_problems=ProblemSource(kind="demo", size=2, seed=2, levels=[1, 2]),
        generate=SamplingParams(max_new_tokens=16, temperature=0.0),
        train=TrainConfig(steps=2, batch_size=2, seq_len=512, log_every=1, async_checkpoint=False),
        optim=OptimConfig(learning_rate=1e-3),
    )
    return cfg, run(cfg)


def test_stage_trains_and_evaluates_in_one_generation(tiny_run):
    cfg, results = tiny_run
    run_dir = Path(cfg.run_dir)
    assert results["trajectories"] == 4 and results["questions"] == 2
    assert 0 <= results["accuracy"] <= 1 and results["tokens_per_question"] > 0
    assert (run_dir / "hf" / "config.json").exists()
    lines = (run_dir / "trajectories.jsonl").read_text().splitlines()
    assert all(CHECK in json.loads(x)["trajectory"] for x in lines)
    assert json.loads((run_dir / "results.json").read_text()) == results


def test_stage_resumes_from_the_exported_model(tiny_run):
    cfg, results = tiny_run
    assert run(cfg) == results


def test_config_file_parses():
    _, cfg = build_config(str(CONFIGS / "self_talk_demo.yaml"), [])
    assert isinstance(cfg, Config) and cfg.data is None
