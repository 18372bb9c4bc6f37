"""The decode profile's split: every compiled operation lands in one group, and the groups
add up to the threads' busy time (its figures live in the benchmark, not in a test)."""

from __future__ import annotations

import json
import time

import pytest

from critique_jax.benchmarks import decode_profile
from critique_jax.benchmarks.thunk_trace import CpuUse, Thunk, thunks
from critique_jax.errors import UserError

STACK = "jit(decode)/while/body/Transformer.extend/Transformer._layers/layers_3"


@pytest.mark.parametrize(
    "op_name, group",
    [
        (f"{STACK}/attn/q/dot_general", "weight matmuls"),
        (f"{STACK}/attn/o/dot_general", "weight matmuls"),
        (f"{STACK}/mlp/down/dot_general", "weight matmuls"),
        (
            "jit(decode)/while/body/Transformer.extend/Transformer._logits/Transformer.head/"
            "embed.attend/dot_general",
            "vocabulary",
        ),
        (f"{STACK}/attn/pftkgh,pkwh->pfkgtw/dot_general", "attention"),
        (f"{STACK}/attn/dynamic_update_slice", "attention"),
        (f"{STACK}/mlp/mul", "other model ops"),
        (f"{STACK}/input_norm/rsqrt", "other model ops"),
        ("jit(decode)/while/body/jit(_where)/select_n", "sampling, loop"),
        ("", "no op_name"),
    ],
)
def test_groups_by_the_code_that_made_the_operation(op_name, group):
    assert decode_profile.group_of(op_name) == group


def test_loops_are_not_thunks_of_their_own_and_every_other_instruction_is():
    hlo = (
        '  %w = (s32[]) while(%t), condition=%c, body=%b, metadata={op_name="jit(f)/while"}\n'
        "  %ynn_fusion.3 = f32[4,8]{1,0} fusion(%p), kind=kCustom, calls=%f, "
        'metadata={op_name="jit(f)/while/body/Transformer.extend/x/attn/q/dot_general"}\n'
        "  %wrapped_convert.2 = f32[30,8]{1,0} fusion(%q), kind=kLoop, calls=%g\n"
        "  %multi = (f32[2]{0}, f32[3]{0}) fusion(%r), kind=kLoop, calls=%h, "
        'metadata={op_name="jit(f)/add"}\n'
    )
    assert thunks(hlo) == {
        "ynn_fusion.3": Thunk(
            "fusion", "jit(f)/while/body/Transformer.extend/x/attn/q/dot_general"
        ),
        "wrapped_convert.2": Thunk("fusion", ""),
        "multi": Thunk("fusion", "jit(f)/add"),
    }


def test_a_tiny_profile_accounts_for_every_thread_second(capsys):
    decode_profile.main(
        [
            "--preset",
            "tiny",
            "--prompts",
            "2",
            "--fanout",
            "2",
            "--width",
            "16",
            "--new-tokens",
            "6",
            "--repeats",
            "1",
        ]
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["rows"] == 4 and result["ms_per_step"] > 0
    assert set(result["share"]) == set(decode_profile.GROUPS)
    assert sum(result["share"].values()) == pytest.approx(1.0)
    assert result["share"]["weight matmuls"] > 0 and result["share"]["attention"] > 0
    assert result["busy"] and all(0 <= b <= 1 for b in result["busy"])
    assert result["cores_used"] > 0


def test_cpu_use_counts_work_and_not_waiting():
    with CpuUse() as waiting:
        time.sleep(0.2)
    with CpuUse() as working:
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass
    assert 0 <= waiting.cores < working.cores


def test_an_accelerator_is_refused_with_the_way_out(monkeypatch):
    monkeypatch.setattr(decode_profile.jax, "default_backend", lambda: "gpu")
    with pytest.raises(UserError, match="JAX_PLATFORMS=cpu"):
        decode_profile.main(["--preset", "tiny"])
