"""Where a decode step's time goes on XLA:CPU: one traced decode call, split by what each
compiled operation computes.

    python -m critique_jax.benchmarks.decode_profile --model HF_DIR
    python -m critique_jax.benchmarks.decode_profile --preset smollm2-135m --prompts 8 --fanout 4

The shape is the rollouts benchmark's critique stage by default: 8 prompts of 384 tokens, 4
samples each at T = 1 (so 32 decode rows reading each prompt's keys and values once), 64
new tokens with no stop token, every row decoding every step. Token values do not change the
cost, so the prompts are random tokens; `--preset` uses random weights of a preset's shape
(nothing to download), `--model` a checkpoint's own.

XLA:CPU runs a program as a list of thunks (a matmul, a fused loop, a copy) on a pool of
threads, several at once when independent. The trace records each thunk's time on its
thread; each is put in one group by the model code that made it (its op_name):

  weight matmuls    the q, k, v, o and MLP projections
  vocabulary        the output projection onto the vocabulary
  attention         scores, softmax and values over the cache, the cache writes, their layouts
  other model ops   norms, residual adds, rotary embedding, masks, the embedding lookup
  sampling, loop    the token draw, its log-prob, the loop's bookkeeping
  no op_name        what XLA made on its own (layout copies, moved converts)

`busy` is, for each thread that ran thunks (XLA's pool, and the caller's thread, which runs
some inline), its thunk time over the traced call's wall time: what is left is time it waited
for work (a step's chain of small operations leaves the other thread idle). The last line
printed is one JSON object. CPU only: on an accelerator the trace holds kernels, not thunks,
and it says so.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from critique_jax.checkpoints.hf import load_hf
from critique_jax.errors import UserError, run_main
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


class Thunk(NamedTuple):
    kind: str  # the HLO opcode: dot, fusion, copy, ...
    op_name: str  # the JAX call stack that emitted it; "" for what XLA made on its own


def thunks(hlo_text: str) -> dict[str, Thunk]:
    """Instruction name -> Thunk, for the instructions of a compiled program's text that run
    as thunks of their own (not a loop, whose span holds its body's thunks)."""
    instruction = re.compile(
        r"^\s*(?:ROOT )?%?([\w.\-]+) = (?:\(.*?\)|\S+) (\w[\w-]*)\((.*)$", re.M
    )
    op_name = re.compile(r'op_name="([^"]*)"')
    found = {}
    for name, kind, rest in instruction.findall(hlo_text):
        if kind not in ("while", "conditional", "call"):
            named = op_name.search(rest)
            found[name] = Thunk(kind, named.group(1) if named else "")
    return found


def trace_seconds(trace_dir: Path, names: Mapping[str, Thunk]) -> tuple[Counter, Counter]:
    """Seconds per thunk (by instruction name) and per thread, from the trace that
    `jax.profiler.trace` wrote; spans that are not thunks of `names` (the executor's own,
    waits, loops) are left out."""
    traces = sorted(trace_dir.rglob("*.xplane.pb"))
    if not traces:
        raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
    seconds: Counter = Counter()
    threads: Counter = Counter()
    for plane in jax.profiler.ProfileData.from_file(str(traces[-1])).planes:
        for line in plane.lines:
            for event in line.events:
                name = event.name.removeprefix("end: ")
                if name in names:
                    seconds[name] += event.duration_ns / 1e9
                    threads[line.name] += event.duration_ns / 1e9
    return seconds, threads


def build(args: argparse.Namespace) -> tuple[ModelConfig, Any]:
    """The model config and parameters: a checkpoint's own, or random ones of a preset."""
    if args.model:
        cfg, params = load_hf(args.model, dtype=args.dtype, param_dtype=args.dtype)
    else:
        cfg = preset(args.preset, dtype=args.dtype, param_dtype=args.dtype)
        params = init_params(cfg, jax.random.key(0))
    return cfg, params


def profile(args: argparse.Namespace) -> dict:
    if jax.default_backend() != "cpu":
        raise UserError(
            f"decode_profile splits XLA:CPU thunks; this backend is {jax.default_backend()!r}. "
            "Run it with JAX_PLATFORMS=cpu, or profile an accelerator with jax.profiler and "
            "TensorBoard."
        )
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
    seconds = []
    for _ in range(args.repeats):
        state = start()
        began = time.perf_counter()
        run(state)
        seconds.append(time.perf_counter() - began)
    state = start()
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            began = time.perf_counter()
            run(state)
            traced = time.perf_counter() - began
        per_thunk, threads = trace_seconds(Path(trace_dir), names)
    groups: Counter = Counter()
    for name, s in per_thunk.items():
        groups[group_of(names[name].op_name)] += s
    steps = new - 1  # the first token comes from the prefill
    busy = sum(threads.values())
    return dict(
        model=args.model or args.preset,
        rows=rows,
        prompts=args.prompts,
        width=args.width,
        new_tokens=new,
        ms_per_step=1e3 * min(seconds) / steps,
        traced_ms_per_step=1e3 * traced / steps,
        busy=sorted((t / traced for t in threads.values()), reverse=True),
        thread_ms_per_step={g: 1e3 * groups[g] / steps for g in GROUPS},
        share={g: groups[g] / busy if busy else 0.0 for g in GROUPS},
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
    print(
        f"{result['ms_per_step']:.1f} ms per decode step, {result['rows']} rows; threads "
        f"busy {busy} of the traced call. Thread time per step:"
    )
    for group in GROUPS:
        ms, share = result["thread_ms_per_step"][group], result["share"][group]
        print(f"  {group:16s} {ms:7.1f} ms  {share:5.1%}")
    print(json.dumps(result))


if __name__ == "__main__":
    run_main(main)
