"""Where a decode step's time goes on XLA:CPU: one traced decode call, split by what each
compiled operation computes.

    python -m critique_jax.benchmarks.decode_profile --model HF_DIR
    python -m critique_jax.benchmarks.decode_profile --preset smollm2-135m --prompts 8 --fanout 4

The shape is the rollouts benchmark's critique stage by default: 8 prompts of 384 tokens, 4
samples each at T = 1 (so 32 decode rows reading each prompt's keys and values once), 64
new tokens with no stop token, every row decoding every step. Token values do not change the
cost, so the prompts are random tokens; `--preset` uses random weights of a preset's shape
(nothing to download), `--model` a checkpoint's own.

Each thunk of the traced call (`benchmarks.thunk_trace`) is put in one group by the model
code that made it (its op_name):

  weight matmuls    the q, k, v, o and MLP projections
  vocabulary        the output projection onto the vocabulary
  attention         scores, softmax and values over the cache, the cache writes, their layouts
  other model ops   norms, residual adds, rotary embedding, masks, the embedding lookup
  sampling, loop    the token draw, its log-prob, the loop's bookkeeping
  no op_name        what XLA made on its own (layout copies, moved converts)

`busy` is, for each thread that ran thunks (XLA's pool, and the caller's thread, which runs
some inline), the share of the traced call's wall time it spent running thunks of its own.
It is not how busy the cores were: a thread also works inside another thread's thunk (a
matmul split across the pool), which no thunk's time shows. `cores_used` says that: the
process's CPU seconds over the wall seconds of the fastest untimed repeat (`thunk_trace.CpuUse`).
The last line printed is one JSON object. CPU only: on an accelerator the trace holds
kernels, not thunks, and it says so.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import jax
import numpy as np

from critique_jax.benchmarks.thunk_trace import (
    CpuUse,
    print_split,
    require_cpu,
    thunks,
    traced_split,
)
from critique_jax.checkpoints.hf import load_hf
from critique_jax.errors import run_main
from critique_jax.models import ModelConfig, init_params, preset
from critique_jax.sampling.engine import Engine, Rows, decode
from critique_jax.sampling.filters import FilterSpec
from critique_jax.sampling.generate import knobs
from critique_jax.sampling.params import SamplingParams

GROUPS = (
    "weight matmuls",
    "vocabulary",
    "attention",
    "other model ops",
    "sampling, loop",
    "no op_name",
)
_PROJECTION = re.compile(r"/(attn/[qkvo]|mlp/(gate|up|down))/dot_general")


def group_of(op_name: str) -> str:
    """The group of a thunk from its op_name (the JAX call stack that emitted it)."""
    if not op_name:
        return "no op_name"
    if _PROJECTION.search(op_name):
        return "weight matmuls"
    if "Transformer.head" in op_name:
        return "vocabulary"
    if "/attn/" in op_name:
        return "attention"
    if "Transformer.extend" in op_name:
        return "other model ops"
    return "sampling, loop"


def build(args: argparse.Namespace) -> tuple[ModelConfig, Any]:
    """The model config and parameters: a checkpoint's own, or random ones of a preset."""
    if args.model:
        cfg, params = load_hf(args.model, dtype=args.dtype, param_dtype=args.dtype)
    else:
        cfg = preset(args.preset, dtype=args.dtype, param_dtype=args.dtype)
        params = init_params(cfg, jax.random.key(0))
    return cfg, params


def profile(args: argparse.Namespace) -> dict:
    require_cpu("decode_profile")
    cfg, params = build(args)
    engine = Engine(cfg)
    params = engine.prepare(params)
    rows = args.prompts * args.fanout
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.prompts, args.width))
    mask = np.ones(tokens.shape, bool)
    sp = SamplingParams(max_new_tokens=args.new_tokens, temperature=args.temperature, n=args.fanout)
    spec, placed = FilterSpec.from_params(sp), engine.place_knobs(knobs(sp, []))
    sample_rows = Rows(
        np.repeat(np.arange(args.prompts, dtype=np.int32), args.fanout),
        np.tile(np.arange(args.fanout, dtype=np.int32), args.prompts),
        np.ones(rows, bool),
    )
    prefilled = engine.prefill(params, tokens.astype(np.int32), mask, args.fanout)
    new = args.new_tokens

    def start():
        return jax.block_until_ready(engine.start(prefilled, sample_rows, placed, spec, new, new))

    # Compiled once, ahead of time: the program that runs is the one whose text names the
    # thunks.
    lowered = decode.lower(params, start(), placed, cfg=engine.run_cfg, spec=spec, max_new=new)
    compiled = lowered.compile()
    names = thunks(compiled.as_text())

    def run(state):
        return jax.block_until_ready(compiled(params, state, placed))

    run(start())  # warm-up
    runs = []
    for _ in range(args.repeats):
        state = start()
        with CpuUse() as used:
            run(state)
        runs.append(used)
    fastest = min(runs, key=lambda used: used.seconds)
    state = start()
    split = traced_split(lambda: run(state), names, lambda t: group_of(t.op_name), GROUPS)
    steps = new - 1  # the first token comes from the prefill
    return dict(
        model=args.model or args.preset,
        rows=rows,
        prompts=args.prompts,
        width=args.width,
        new_tokens=new,
        ms_per_step=1e3 * fastest.seconds / steps,
        traced_ms_per_step=1e3 * split.wall / steps,
        busy=split.busy,
        cores_used=fastest.cores,
        thread_ms_per_step={g: 1e3 * s / steps for g, s in split.seconds.items()},
        share=split.share,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="HF checkpoint directory (its own weights)")
    source.add_argument("--preset", default="smollm2-135m", help="random weights of this shape")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--fanout", type=int, default=4, help="samples per prompt")
    parser.add_argument("--width", type=int, default=384, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3, help="untraced timings (min kept)")
    args = parser.parse_args(argv)
    result = profile(args)
    busy = ", ".join(f"{b:.0%}" for b in result["busy"])
    header = (
        f"{result['ms_per_step']:.1f} ms per decode step, {result['rows']} rows, "
        f"{result['cores_used']:.2f} cores used; threads running their own thunks {busy} of "
        "the traced call. Thread time per step:"
    )
    print_split(header, result["thread_ms_per_step"], result["share"], "ms", result)


if __name__ == "__main__":
    run_main(main)
