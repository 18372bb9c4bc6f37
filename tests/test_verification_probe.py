"""The learnability probe behind the README's account of the demo critic: its labels are the
truth, and a run trains and reports a curve."""

import random

import pytest

from critique_jax.benchmarks import verification_probe as vp


@pytest.mark.parametrize("task", ["generate", "verify", "copy"])
def test_examples_are_labelled_by_the_truth(task):
    rng = random.Random(0)
    labels = []
    for _ in range(500):
        tokens, target = vp.example(task, rng)
        assert len(tokens) <= vp.LENGTH and target == len(tokens) - 1
        if task == "generate":
            _, a, op, b, _, c = tokens
            assert c == vp.APPLY[op](a, b)
        elif task == "verify":
            _, a, op, b, _, c, _, label = tokens
            labels.append(label)
            assert (label == vp.CORRECT) == (c == vp.APPLY[op](a, b))
        else:
            _, s, _, _, b, _, _, label = tokens
            labels.append(label)
            assert (label == vp.CORRECT) == (b == s)
    if labels:  # balanced classes: chance is 0.5
        assert 0.4 < labels.count(vp.CORRECT) / len(labels) < 0.6


def test_run_reports_a_curve():
    out = vp.run("verify", layers=1, steps=3, batch_size=4, lr=1e-3)
    assert out["examples"] == 12 and [x for x, _ in out["curve"]] == [4, 8, 12]
    assert 0.0 <= out["test_accuracy"] <= 1.0
