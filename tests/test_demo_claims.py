"""The claims' paired differences and bars, on hand-made results."""

from __future__ import annotations

import pytest

from critique_jax.pipelines.demo_claims import CLAIMS, claims, claims_table, over_seeds


def results(seed: int = 0, lift: float = 0.1) -> dict:
    r = {
        "seed": seed,
        "actor_accuracy": 0.6,
        "refine_accuracy": 0.6 + lift,
        "actor_accuracy_by_difficulty": {"1": 0.9, "2": 0.6, "3": 0.3},
        "refine_accuracy_by_difficulty": {"1": 0.9, "2": 0.65, "3": 0.3 + 2 * lift},
        "majority_vote_accuracy": 0.65,
        "critique_majority_vote_accuracy": 0.7,
        "critic_weighted_vote_accuracy": 0.72,
        "cu_sft_critic": 0.3,
        "cu_rco_critic": 0.35,
        "self_train_vanilla_accuracy": 0.6,
        "self_train_critique_accuracy": 0.62,
        "self_train_kept": {
            "vanilla": {"coverage_by_level": {"1": 1.0, "2": 0.8, "3": 0.4}},
            "critique": {"coverage_by_level": {"1": 1.0, "2": 0.9, "3": 0.6}},
        },
        "sequential_accuracy_by_rounds": {"0": 0.6, "1": 0.6 + lift, "2": 0.65 + lift},
    }
    r["claims"] = claims(r)
    return r


def test_every_claim_holds_on_results_that_show_it():
    got = claims(results())
    assert set(got) == {c.name for c in CLAIMS}
    assert all(c["holds"] for c in got.values()), got
    assert got["refine_beats_actor"]["difference"] == pytest.approx(0.1)
    assert got["refine_gains_most_on_hardest"]["difference"] == pytest.approx(0.15)
    assert got["critique_self_train_keeps_more_hard"]["difference"] == pytest.approx(0.2)
    assert got["second_round_helps"]["difference"] == pytest.approx(0.05)


def test_bars_are_inclusive_or_strict_as_stated():
    r = results(lift=0.02)  # refine gains 2 points: below the 3-point bar
    r["cu_rco_critic"] = r["cu_sft_critic"]  # a tie is not "greater"
    r["critique_majority_vote_accuracy"] = r["majority_vote_accuracy"]  # a tie is ">="
    got = claims(r)
    assert not got["refine_beats_actor"]["holds"]
    assert not got["rco_cu_gt_sft"]["holds"]
    assert got["critique_vote_ge_vote"]["holds"]


def test_over_seeds_holds_only_in_every_seed():
    runs = [results(0), results(1, lift=0.01), results(2)]
    summary = over_seeds(runs, ["actor_accuracy", "refine_accuracy"])
    assert summary["seeds"] == [0, 1, 2]
    beats = summary["claims"]["refine_beats_actor"]
    assert beats["per_seed_difference"] == pytest.approx([0.1, 0.01, 0.1])
    assert not beats["holds"]
    assert summary["claims"]["rco_cu_gt_sft"]["holds"]
    refine = summary["metrics"]["refine_accuracy"]
    assert refine["mean"] == pytest.approx(0.67) and refine["sd"] == pytest.approx(0.05196, 1e-3)
    rows = claims_table(summary["claims"])
    assert rows[2].endswith("| +0.100, +0.010, +0.100 | no |")
