"""collect_critiques (AutoMathCritique) on the demo world with an untrained demo-preset actor:
well-formed records, the soft filter, controlled insertion, resume, and the CLI entry point."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from critique_jax.config import ConfigError, ModelSpec, from_dict
from critique_jax.data.critique_format import StepVerdict, parse_critique, split_steps
from critique_jax.data.demo_world import generate_problems, templated_critique
from critique_jax.pipelines import critique_data as cd
from critique_jax.pipelines.finetune import examples_from_records
from critique_jax.pipelines.loading import load_model
from critique_jax.pipelines.roles import make_agent, make_critic, with_demo_tokenizer
from critique_jax.runio import read_jsonl, run_dir_lock
from critique_jax.train import main

PROBLEMS = generate_problems(6, seed=0, levels=(1, 2, 3))
BY_ID = {p.id: p for p in PROBLEMS}
OUTPUTS = ("solutions.jsonl", "critiques.jsonl", "critic_sft.jsonl", "summary.json")

BASE: dict[str, Any] = {
    "problems": {"kind": "demo", "size": 6, "levels": [1, 2, 3]},
    "solutions": {
        "samples_per_question": 1,
        "correct_share": 0.5,
        "require_answer": False,
        "include_reference": True,
        "sampling": {"max_new_tokens": 16, "temperature": 1.0},
    },
    "insertion": {"method": "demo", "per_question": 1},
    "critiques": {"per_solution": 1},
    "filter": {"refinements": 2, "tau": 0.0, "sampling": {"max_new_tokens": 16}},
    "chunk_size": 2,
}


def make_config(run_dir: Path, **sections: dict[str, Any]) -> cd.Config:
    data = copy.deepcopy(BASE)
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    return from_dict(cd.Config, {**data, "run_dir": str(run_dir)})


@pytest.fixture(scope="module")
def actor(tmp_path_factory):
    tok = tmp_path_factory.mktemp("tok") / "demo_tokenizer"
    spec = with_demo_tokenizer(ModelSpec(preset="demo"), PROBLEMS, tok)
    return make_agent(load_model(spec, seed=0))


def run_collect(cfg: cd.Config, actor, annotator=None) -> dict[str, Any]:
    from critique_jax.data.sources import load_problems

    problems = load_problems(cfg.problems)
    if annotator is None:
        annotator = make_critic(cfg.annotator, None, problems, None)
    return cd.collect(cfg, problems, actor, annotator)


def records(run_dir: Path, name: str) -> list[dict[str, Any]]:
    return list(read_jsonl(run_dir / f"{name}.jsonl"))


@pytest.fixture(scope="module")
def full_run(actor, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    summary = run_collect(make_config(run_dir), actor)
    return run_dir, summary


def check_kept(critiques: list[dict[str, Any]]) -> None:
    for c in critiques:
        if c["kept"]:
            parsed = parse_critique(c["critique"])
            assert parsed.parseable and c["parseable"]
            assert parsed.final_correct == c["solution_is_correct"] == c["verdict"]


def test_oracle_run_writes_well_formed_records(full_run):
    run_dir, summary = full_run
    solutions, critiques = records(run_dir, "solutions"), records(run_dir, "critiques")
    sft = records(run_dir, "critic_sft")
    # 6 problems x (1 sample + 1 insertion + 1 reference), every id once.
    assert len(solutions) == 18 and len({s["id"] for s in solutions}) == 18
    selected = [s for s in solutions if s["selected"]]
    assert sorted(c["solution_id"] for c in critiques) == sorted(s["id"] for s in selected)
    # The untrained actor states no answer: all samples are wrong and (require_answer off)
    # critiqued; the 6 insertions too; correct_share 0.5 admits all 6 references.
    assert summary["selected"] == {"insert": 6, "reference": 6, "sample-wrong": 6}

    for s in solutions:
        if s["kind"] != "insert":
            continue
        p, k = BY_ID[s["problem_id"]], s["first_error_step"]
        steps, ref = split_steps(s["solution"]), split_steps(p.solution)
        assert 1 <= k <= len(ref) and steps[: k - 1] == ref[: k - 1] and steps[k - 1] != ref[k - 1]
        assert not s["solution_is_correct"]
        assert parse_critique(templated_critique(p, s["solution"])).first_wrong_step == k

    check_kept(critiques)
    inserted = [c for c in critiques if c["group"] == "insert"]
    assert inserted and all(c["first_error_agrees"] for c in inserted)
    for c in critiques:
        if not c["solution_is_correct"]:  # tau 0: refined M times, kept on the verdict alone
            assert len(c["refinements"]) == 2 and c["refine_correct_frac"] is not None
            assert c["refine_tokens"] > 0
    assert [r["id"] for r in sft] == [c["id"] for c in critiques if c["kept"]]
    examples = examples_from_records(sft, "critique")
    assert len(examples) == len(sft) == summary["sft_records"] == summary["kept"] == 18
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert summary["keep_by_level"]["3"]["critiques"] == 6 and summary["tokens"]["solve"] > 0


def test_soft_filter_drops_critiques_whose_refinements_fail(actor, tmp_path):
    """With tau 0.5 an actor that never refines correctly keeps only the Correct critiques."""
    cfg = make_config(tmp_path, filter={"tau": 0.5}, problems={"limit": 2})
    summary = run_collect(cfg, actor)
    critiques = records(tmp_path, "critiques")
    check_kept(critiques)
    for c in critiques:
        assert c["kept"] == c["solution_is_correct"]
        if not c["solution_is_correct"]:
            assert c["refine_correct_frac"] == 0.0
    assert summary["keep_by_kind"]["insert"]["keep_rate"] == 0.0
    assert summary["keep_by_kind"]["reference"]["keep_rate"] == 1.0


def test_model_annotator_inserts_and_critiques(actor, tmp_path):
    cfg = make_config(
        tmp_path,
        annotator={"model": {"preset": "demo"}},
        problems={"limit": 2},
        insertion={"method": "model", "sampling": {"max_new_tokens": 24}},
        critiques={"per_solution": 2, "sampling": {"max_new_tokens": 24, "temperature": 1.0}},
        filter={"refinements": 0},  # the Monte Carlo filter is covered above
    )
    summary = run_collect(cfg, actor, annotator=actor)
    solutions, critiques = records(tmp_path, "solutions"), records(tmp_path, "critiques")
    inserts = [s for s in solutions if s["kind"] == "insert"]
    assert len(inserts) == 2 and summary["tokens"]["insert"] > 0
    for s in inserts:  # no correct sample: the error goes into the reference solution
        ref, k = split_steps(BY_ID[s["problem_id"]].solution), s["first_error_step"]
        assert 1 <= k <= len(ref)
        assert s["solution"].startswith("\n".join(ref[: k - 1]))
    per_solution: dict[str, int] = {}
    for c in critiques:
        per_solution[c["solution_id"]] = per_solution.get(c["solution_id"], 0) + 1
        assert c["tokens"] > 0
    assert set(per_solution) == {s["id"] for s in solutions if s["selected"]}
    assert max(per_solution.values()) <= 2 and len({c["id"] for c in critiques}) == len(critiques)
    check_kept(critiques)


def test_resume_after_a_limited_run_and_after_a_kill(actor, full_run, tmp_path):
    full_dir, _ = full_run
    # A run cut short (4 of 6 problems), then the full run: the same files as one full run.
    limited = tmp_path / "limited"
    run_collect(make_config(limited, problems={"limit": 4}), actor)
    assert len(records(limited, "solutions")) == 12
    run_collect(make_config(limited), actor)
    for name in OUTPUTS:
        assert (limited / name).read_text() == (full_dir / name).read_text(), name

    # A kill while the last chunk (problems 4, 5) was being written: some of its critiques on
    # disk, the last one torn, none of its SFT records or solutions.
    killed = tmp_path / "killed"
    shutil.copytree(full_dir, killed)
    last = {p.id for p in PROBLEMS[4:]}
    for name in ("critiques", "critic_sft", "solutions"):
        lines = (full_dir / f"{name}.jsonl").read_text().splitlines(keepends=True)
        keep = [ln for ln in lines if json.loads(ln)["id"].split("/")[0] not in last]
        if name == "critiques":
            tail = [ln for ln in lines if ln not in keep]
            keep += tail[:2] + [tail[2][:40]]
        (killed / f"{name}.jsonl").write_text("".join(keep))
    run_collect(make_config(killed), actor)
    for name in OUTPUTS:
        assert (killed / name).read_text() == (full_dir / name).read_text(), name


def test_cli_runs_the_shipped_demo_config(actor, tmp_path, capsys):
    config = Path(__file__).resolve().parents[1] / "configs" / "collect_critiques_demo.yaml"
    tokenizer = actor.tokenizer.name_or_path  # the demo tokenizer already built for PROBLEMS
    args = [
        f"run_dir={tmp_path}",
        "problems.size=3",
        "solutions.samples_per_question=1",
        "solutions.sampling.max_new_tokens=8",
        "filter.refinements=0",
        "chunk_size=3",
        f"actor.tokenizer={tokenizer}",
    ]
    with run_dir_lock(tmp_path):  # a second job on a busy run_dir stops before writing
        assert main(["--config", str(config), *args]) == 2
    assert "in use by pid" in capsys.readouterr().err
    assert not (tmp_path / "config.yaml").exists()
    assert main(["--config", str(config), *args]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["problems"] == 3 and summary["selected"]["insert"] == 3
    sft = records(tmp_path, "critic_sft")
    assert sft and len(examples_from_records(sft, "critique")) == summary["kept"]


def test_keep_critique_rules():
    assert cd.keep_critique(True, True, [], 0.5)
    assert not cd.keep_critique(False, True, [], 0.5)  # a correct solution called Wrong
    assert not cd.keep_critique(None, False, [True], 0.5)  # unparseable
    assert not cd.keep_critique(True, False, [True, True], 0.5)  # a wrong one called Correct
    assert cd.keep_critique(False, False, [True, False], 0.5)
    assert not cd.keep_critique(False, False, [True, False, False], 0.5)
    assert cd.keep_critique(False, False, [], 0.5)  # no Monte Carlo refinement asked for


def test_select_solutions_dedupes_and_balances_correct_ones():
    def rec(pid: str, i: int, text: str, correct: bool, pred: str | None = "1", kind="sample"):
        return cd.SolutionRecord(
            id=f"{pid}/s{i}",
            question="q",
            solution=text,
            gold="1",
            solution_is_correct=correct,
            problem_id=pid,
            kind=kind,
            pred=pred,
            tokens=0,
        )

    recs = [
        rec("a", 0, "x", False),
        rec("a", 1, "x", False),
        rec("a", 2, "y", False, None),
        rec("a", 3, "c1", True),
        rec("a", 4, "c2", True),
        rec("b", 0, "z", False),
        rec("b", 1, "c3", True),
        rec("b", 2, "", False),
        rec("b", 3, "c4", True, kind="insert"),  # an insertion that did not take
    ]
    chosen = {
        r.id
        for r in cd.select_solutions(recs, correct_share=0.5, require_answer=True, seed=0)
        if r.selected
    }
    # wrong: a/s0 (a/s1 duplicates it, a/s2 states no answer, b/s2 is empty) and b/s0; two
    # correct ones for share 0.5, one per question before any question's second; never a
    # failed insertion.
    assert chosen == {"a/s0", "b/s0", "a/s3", "b/s1"}
    again = cd.select_solutions(recs, correct_share=0.0, require_answer=False, seed=0)
    assert {r.id for r in again if r.selected} == {"a/s0", "a/s2", "b/s0"}


def test_an_insertion_that_keeps_the_right_answer_records_no_first_error():
    p = PROBLEMS[0]
    took = cd.SolutionRecord.of(p, "x", "insert", "The answer is 100.", 0, first_error_step=1)
    failed = cd.SolutionRecord.of(p, "y", "insert", f"The answer is {p.answer}.", 0, 1)
    assert took.first_error_step == 1 and not took.solution_is_correct
    assert failed.first_error_step is None and failed.solution_is_correct


def test_critique_text_stops_at_the_first_wrong_step():
    steps = [
        StepVerdict(1, "a", True, "ok"),
        StepVerdict(2, "b", False, "bad"),
        StepVerdict(3, "c", False, "worse"),
    ]
    from critique_jax.data.critique_format import format_critique

    text = format_critique(steps, False, "no")
    cut = parse_critique(cd.critique_text(parse_critique(text), "verdict_first"))
    assert [s.index for s in cut.steps] == [1, 2] and cut.final_correct is False


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="needs a model annotator"):
        make_config(Path("x"), insertion={"method": "model"})
    with pytest.raises(ConfigError, match="correct_share"):
        make_config(Path("x"), solutions={"correct_share": 1.5})
    with pytest.raises(ConfigError, match="exactly one"):
        make_config(Path("x"), annotator={"oracle": "demo", "model": {"preset": "demo"}})
    with pytest.raises(ConfigError, match="no tokenizer"):
        with_demo_tokenizer(ModelSpec(preset="demo"), [], Path("x"))
