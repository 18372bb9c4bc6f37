"""The train profile's split: each compiled operation lands in one group by the code that
made it, and the groups add up to the threads' busy time (its figures live in the benchmark,
not in a test)."""

from __future__ import annotations

import json

import pytest

from critique_jax.benchmarks import train_profile
from critique_jax.benchmarks.thunk_trace import Thunk
from critique_jax.errors import UserError

LAYER = "jit(train_step)/jvp(Transformer)/Transformer._layers/while/body/closed_call/layers"
GRAD = "jit(train_step)/transpose(jvp(Transformer))/Transformer._layers/while/body/closed_call"


@pytest.mark.parametrize(
    "kind, op_name, group",
    [
        ("fusion", f"{LAYER}/attn/q/dot_general", "weight matmuls"),
        ("dot", f"{GRAD}/layers/mlp/down/transpose", "weight matmuls"),
        ("fusion", f"{LAYER}/attn/bkqh,bksh->bkqs/dot_general", "attention"),
        ("fusion", f"{LAYER}/attn/reduce_max", "attention"),
        ("fusion", f"{LAYER}/mlp/jit(silu)/div", "other layer ops"),
        ("fusion", f"{LAYER}/input_norm/rsqrt", "other layer ops"),
        ("fusion", "jit(train_step)/jvp(cross_entropy)/while/body/closed_call/exp", "vocabulary"),
        (
            "dot",
            "jit(train_step)/jvp(cross_entropy)/while/body/closed_call/"
            "transpose(jvp(Transformer.head))/embed.attend/dot_general",
            "vocabulary",
        ),
        ("fusion", "jit(train_step)/jit(_where)/select_n", "optimizer"),
        ("fusion", "", "no op_name"),
    ],
)
def test_groups_by_the_code_that_made_the_operation(kind, op_name, group):
    assert train_profile.group_of(Thunk(kind, op_name)) == group


def test_a_matmul_is_a_dot_or_a_fusion_around_one():
    assert train_profile.is_matmul(Thunk("dot", f"{GRAD}/layers/mlp/up/transpose"))
    assert train_profile.is_matmul(Thunk("fusion", f"{LAYER}/mlp/gate/dot_general"))
    assert not train_profile.is_matmul(Thunk("fusion", f"{LAYER}/attn/reduce_max"))


def test_a_tiny_profile_accounts_for_every_thread_second(capsys):
    train_profile.main(["--model", "tiny", "--batch", "2", "--seq", "16", "--repeats", "1"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step_s"] > 0 and set(result["share"]) == set(train_profile.GROUPS)
    assert sum(result["share"].values()) == pytest.approx(1.0)
    for group in ("weight matmuls", "vocabulary", "attention", "optimizer"):
        assert result["share"][group] > 0, group
    assert 0 < result["matmul_share"] < 1
    assert result["busy"] and all(0 <= b <= 1 for b in result["busy"])
    assert result["cores_used"] > 0


def test_an_accelerator_is_refused_with_the_way_out(monkeypatch):
    monkeypatch.setattr(train_profile.jax, "default_backend", lambda: "gpu")
    with pytest.raises(UserError, match="JAX_PLATFORMS=cpu"):
        train_profile.main(["--model", "tiny"])
