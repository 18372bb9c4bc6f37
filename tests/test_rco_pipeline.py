"""RCO stages end to end on a small random demo-preset critic: collection (N x M structure,
CU, reference log-probs, resume, typed records), the rco and dpco objectives of the training
stage, and the evaluation table.

The critic is untrained, so its critiques are garbage and every refinement fails; the
training tests therefore give the collected critiques hand-set utilities."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critique_jax.checkpoints.hf import save_hf
from critique_jax.config import ConfigError, TrainConfig, from_dict
from critique_jax.data.demo_tokenizer import build_demo_tokenizer
from critique_jax.data.demo_world import generate_problems, inject_error, templated_critique
from critique_jax.data.prompts import ANSWER_FORMAT, CRITIQUE_INSTRUCTIONS
from critique_jax.models import Transformer, init_params, preset
from critique_jax.pipelines import rco, rco_collect, rco_eval
from critique_jax.pipelines.rco_collect import CritiqueGroup
from critique_jax.runio import read_jsonl
from critique_jax.train import STAGES

N, M, GROUPS = 3, 2, 4
SAMPLING = {"max_new_tokens": 24}
SEQ_LEN = 256
TRAIN = {
    "batch_size": GROUPS * N,
    "seq_len": SEQ_LEN,
    "pack": False,
    "log_every": 1,
    "async_checkpoint": False,
}
CU = [1.0, 0.5, 0.0]  # hand-set utilities of critiques 0, 1, 2 of every group


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rco")
    problems = generate_problems(GROUPS, 0)
    texts = [p.question + "\n" + p.solution for p in problems]
    texts += [templated_critique(p, inject_error(p, 1, 0)) for p in problems]
    tok = build_demo_tokenizer(
        texts + [*CRITIQUE_INSTRUCTIONS.values(), ANSWER_FORMAT], str(root / "tok")
    )
    cfg = preset("demo")
    params = init_params(cfg, jax.random.key(0))
    save_hf(cfg, params, root / "critic", tok)
    with open(root / "initial.jsonl", "w") as f:  # half wrong (injected slip), half right
        for i, p in enumerate(problems):
            sol = p.solution if i % 2 else inject_error(p, 1, 0)
            f.write(
                json.dumps(
                    {"id": p.id, "question": p.question, "solution": sol, "answer": p.answer}
                )
                + "\n"
            )
    return {"root": root, "cfg": cfg, "params": params, "critic": str(root / "critic")}


def collect_config(world, run_dir) -> rco_collect.Config:
    return from_dict(
        rco_collect.Config,
        {
            "run_dir": str(run_dir),
            "model": {"path": world["critic"]},
            "initial": {"source": "file", "path": str(world["root"] / "initial.jsonl")},
            "num_critiques": N,
            "num_refinements": M,
            "critique_sampling": SAMPLING,
            "refine_sampling": SAMPLING,
            "seq_len": SEQ_LEN,
            "score_batch_size": 8,
            "chunk_groups": 2,
        },
    )


@pytest.fixture(scope="module")
def collected(world):
    run_dir = world["root"] / "collect"
    result = rco_collect.run(collect_config(world, run_dir))
    return result, list(read_jsonl(run_dir / rco_collect.RECORDS))


@pytest.fixture(scope="module")
def with_cu(world, collected):
    """The collected groups with hand-set utilities (an untrained critic gets all CU equal)."""
    out = world["root"] / "collect_cu"
    out.mkdir()
    with open(out / rco_collect.RECORDS, "w") as f:
        for r in collected[1]:
            r = json.loads(json.dumps(r))
            for c, cu in zip(r["critiques"], CU, strict=True):
                c["cu"] = cu
            f.write(json.dumps(r) + "\n")
    return out


def test_records_round_trip_and_read_older_versions(collected):
    """A record read back writes the same JSON; the old name of the y0 label still reads."""
    raw = collected[1][0]
    record = CritiqueGroup.from_json(raw)
    assert json.loads(json.dumps(record.to_json())) == raw
    assert record.id == raw["id"] and record.critiques[0].token_ids == tuple(
        raw["critiques"][0]["token_ids"]
    )
    old = {k: v for k, v in raw.items() if k != "solution_is_correct"}
    old["solution_correct"] = False
    assert CritiqueGroup.from_json(old).solution_is_correct is False
    assert rco_collect.solution_label({"solution_is_correct": None}) is None


def test_collection_structure_and_cu(collected):
    result, records = collected
    assert [r["id"] for r in records] == [f"demo-0-{i}" for i in range(GROUPS)]
    assert result["groups"] == GROUPS and result["critiques"] == GROUPS * N
    for r in records:
        assert len(r["critiques"]) == N
        assert r["solution_is_correct"] == (int(r["id"].rsplit("-", 1)[1]) % 2 == 1)
        for c in r["critiques"]:
            assert len(c["refinements"]) == M and len(c["ps"]) == M
            assert all(p in (0.0, 0.5, 1.0) for p in c["ps"])
            assert c["cu"] == pytest.approx(np.mean(c["ps"]))
            assert 1 <= len(c["token_ids"]) <= SAMPLING["max_new_tokens"]
            assert c["finish_reason"] in ("stop", "length")
            assert np.isfinite(c["ref_logp"]) and c["ref_logp"] < 0


def test_reference_logps_equal_direct_scoring_and_sampler(world, collected):
    """Stored ref_logp = a plain forward's log-prob of the same tokens; the sampler's own
    log-probs of its sample agree (one graph for sampling and training)."""
    entries = [(r["prompt_ids"], c) for r in collected[1][:2] for c in r["critiques"]]
    tokens = np.zeros((len(entries), SEQ_LEN + 1), np.int32)  # right padding: causal, harmless
    for i, (prompt, c) in enumerate(entries):
        tokens[i, : len(prompt) + len(c["token_ids"])] = prompt + c["token_ids"]
    model = Transformer(world["cfg"])
    positions = jnp.broadcast_to(jnp.arange(SEQ_LEN), (len(entries), SEQ_LEN))
    logits = jax.jit(model.apply)({"params": world["params"]}, tokens[:, :-1], positions)
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    for i, (prompt, c) in enumerate(entries):
        span = range(len(prompt) - 1, len(prompt) + len(c["token_ids"]) - 1)
        direct = float(sum(logp[i, t, tokens[i, t + 1]] for t in span))
        assert c["ref_logp"] == pytest.approx(direct, abs=1e-3)
        assert c["sample_logp"] == pytest.approx(direct, abs=1e-2)


def test_collection_resumes_after_a_kill(world, collected, monkeypatch):
    """Keep 3 of 4 records plus a torn line: only the unfinished chunk is recomputed, and
    it reproduces the uninterrupted run's record."""
    run_dir = world["root"] / "collect_resume"
    run_dir.mkdir()
    lines = (world["root"] / "collect" / rco_collect.RECORDS).read_text().splitlines()
    (run_dir / rco_collect.RECORDS).write_text("\n".join(lines[:3]) + "\n" + lines[3][:50])
    chunks = []
    real = rco_collect.critique_and_refine
    monkeypatch.setattr(
        rco_collect,
        "critique_and_refine",
        lambda critic, actor, judge, groups, *a: (
            chunks.append([g.id for g in groups]) or real(critic, actor, judge, groups, *a)
        ),
    )
    rco_collect.run(collect_config(world, run_dir))
    assert chunks == [["demo-0-2", "demo-0-3"]]
    resumed = list(read_jsonl(run_dir / rco_collect.RECORDS))
    assert [r["id"] for r in resumed] == [r["id"] for r in collected[1]]
    for got, want in zip(resumed, collected[1], strict=True):
        assert [c["token_ids"] for c in got["critiques"]] == [
            c["token_ids"] for c in want["critiques"]
        ]
        assert [c["cu"] for c in got["critiques"]] == [c["cu"] for c in want["critiques"]]


def test_rco_stage_loss_decreases_and_exports(world, with_cu):
    run_dir = world["root"] / "rco"
    cfg = from_dict(
        rco.Config,
        {
            "run_dir": str(run_dir),
            "collect_dir": str(with_cu),
            "model": {"path": world["critic"]},
            "beta": 0.5,
            "drop_truncated": False,
            "train": {**TRAIN, "steps": 4},
            "optim": {"learning_rate": 2e-4, "schedule": "constant"},
        },
    )
    result = rco.run(cfg)
    assert result["groups"] == GROUPS and result["group_size"] == N
    assert result["reference_gap"] < 1e-3
    assert result["first_logratio"] == pytest.approx(0.0, abs=1e-3)  # policy = reference
    assert result["steps_run"] == 4 and result["last_loss"] < 0.7 * result["first_loss"]
    assert (run_dir / "hf" / "config.json").exists()
    world["rco_hf"] = str(run_dir / "hf")


def test_rco_masks_unusable_critiques_and_checks_layout(with_cu):
    def edit(r: CritiqueGroup, i: int, **changes) -> CritiqueGroup:
        crits = list(r.critiques)
        crits[i] = dataclasses.replace(crits[i], **changes)
        return dataclasses.replace(r, critiques=tuple(crits))

    records = [
        dataclasses.replace(
            r, critiques=tuple(dataclasses.replace(c, finish_reason="stop") for c in r.critiques)
        )
        for r in rco_collect.read_groups(with_cu)
    ]
    records[0] = edit(records[0], 1, finish_reason="length")  # cut off at max_new_tokens
    records[1] = dataclasses.replace(records[1], critiques=records[1].critiques[:2])  # padded
    records[2] = edit(records[2], 0, ref_logp=None)  # was too long to score
    table = rco.critique_table(records, SEQ_LEN, 0, drop_truncated=True)
    assert table.group_size == N and table.num_groups == GROUPS
    valid = table.valid.reshape(GROUPS, N)
    assert valid.sum() == GROUPS * N - 3
    assert not valid[0, 1] and not valid[1, 2] and not valid[2, 0]
    assert table.rows["loss_mask"][1 * N + 2].sum() == 0  # the padding row has no targets
    assert (
        rco.critique_table(records, SEQ_LEN, 0, drop_truncated=False).valid.sum() == GROUPS * N - 2
    )
    short = rco.critique_table(records, 100, 0, drop_truncated=False)
    assert short.valid.sum() == 0  # prompts (~175 tokens) do not fit 100 positions
    with pytest.raises(ValueError, match="multiple of the group size 3"):
        rco.check_unit_layout(TrainConfig(batch_size=8), N, GROUPS, "group")
    with pytest.raises(ConfigError, match="pack"):
        from_dict(rco.Config, {"train": {"pack": True}})


def test_stage_name_picks_the_objective():
    assert STAGES["rco"] == STAGES["dpco"] == rco.__name__
    assert from_dict(rco.Config, {}).objective == "rco"
    dpco = from_dict(rco.Config, {"stage": "dpco"})
    assert dpco.objective == "dpco" and dpco.run_dir == "runs/dpco"
    with pytest.raises(ConfigError, match="use cu or judge"):
        from_dict(rco.Config, {"stage": "dpco", "ranking": "votes"})


def test_dpco_stage_runs(world, with_cu):
    run_dir = world["root"] / "dpco"
    cfg = from_dict(
        rco.Config,
        {
            "stage": "dpco",
            "run_dir": str(run_dir),
            "collect_dir": str(with_cu),
            "model": {"path": world["critic"]},
            "beta": 0.5,
            "drop_truncated": False,
            "train": {**TRAIN, "steps": 2, "batch_size": 24},
            "optim": {"learning_rate": 2e-4, "schedule": "constant"},
        },
    )
    result = rco.run(cfg)
    assert result["pairs"] == GROUPS * 3  # CU 1 > 0.5 > 0: three ordered pairs per group
    pairs = list(read_jsonl(run_dir / rco.PAIRS))
    assert all(sorted(map(tuple, p["pairs"])) == [(0, 1), (0, 2), (1, 2)] for p in pairs)
    assert result["first_loss"] == pytest.approx(np.log(2), abs=1e-3)
    assert result["last_loss"] < result["first_loss"]
    assert (run_dir / "hf" / "config.json").exists()


def test_judge_ranking_orders_pairs_and_drops_ties(with_cu):
    """ranking: judge asks once per unordered pair of valid critiques, in one call."""

    class Judge:
        def compare_critiques(self, items):
            return [(1.0, 0.5, 0.0)[k % 3] for k in range(len(items))]

    records = rco_collect.read_groups(with_cu)[:2]
    valid = [np.array([True, True, True]), np.array([True, False, True])]
    pairs = rco.judge_pairs(Judge(), records, valid)
    assert pairs == [[(0, 1), (2, 1)], [(0, 2)]]


def test_eval_table_compares_critics(world, with_cu):
    if "rco_hf" not in world:
        pytest.skip("needs the rco stage's export")
    run_dir = world["root"] / "eval"
    cfg = from_dict(
        rco_eval.Config,
        {
            "run_dir": str(run_dir),
            "actor": {"path": world["critic"]},
            "critics": [
                {"name": "initial", "model": {"path": world["critic"]}},
                {"name": "rco", "model": {"path": world["rco_hf"]}},
            ],
            "initial": {"source": "file", "path": str(world["root"] / "initial.jsonl")},
            "num_critiques": N,
            "num_refinements": M,
            "critique_sampling": SAMPLING,
            "refine_sampling": SAMPLING,
            "chunk_groups": 2,
        },
    )
    table = rco_eval.run(cfg)
    saved = json.loads((run_dir / "comparison.json").read_text())
    assert saved == json.loads(json.dumps(table))
    assert [c["name"] for c in saved["critics"]] == ["initial", "rco"]
    for c in saved["critics"]:
        assert 0.0 <= c["mean_cu"] <= 1.0 and c["rqs_scale"] == 1.0
        assert c["rqs"] == pytest.approx(c["refinement_accuracy"])  # verifier judge
    md = (run_dir / "comparison.md").read_text()
    assert "| initial |" in md and "| rco |" in md and "mean CU" in md
    assert len(list(read_jsonl(run_dir / "critics" / "rco.jsonl"))) == GROUPS
