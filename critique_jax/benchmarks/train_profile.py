"""Where a train step's time goes on XLA:CPU: one traced step of the training benchmark's
`Trainer`, split by what each compiled operation computes.

    python -m critique_jax.benchmarks.train_profile --model HF_DIR --batch 4 --seq 512
    python -m critique_jax.benchmarks.train_profile --model smollm2-135m --dtype bfloat16

The step is `benchmarks.training`'s (the same model config and `--remat`, random batch, AdamW
with global-norm clipping, and glibc's huge-page tunable). Each thunk of the traced step goes in
one group by the code that made it (its op_name; `benchmarks.thunk_trace`):

  weight matmuls     the q, k, v, o and MLP projections and their gradient matmuls
  vocabulary         the output projection, the fused cross-entropy and its gradients
  attention          rotary, scores, softmax and values: forward, recomputed and backward
  other layer ops    norms, the MLP's activation, residuals, the layer scan's saved values
  optimizer          gradient clipping, the AdamW update, the step's bookkeeping
  no op_name         what XLA made on its own: layout copies, converts it moved

`matmul_share` is the share of the busy thread time spent in matmuls (a dot, or a fusion
around one) whatever their group: the rest is what a faster step could remove without a faster
matmul kernel. Thunks of the two threads can overlap, so thread seconds may add up to more than
the step's wall time; `taskset -c 0` in front runs them one at a time. `busy` is each
thread's own thunk time over the traced step's; `cores_used`, the process's CPU seconds over
the wall seconds of the fastest untimed step, says how busy the cores were (the decode
profile explains the difference). The last line printed is one JSON object. CPU only, like
the decode profile.
"""

from __future__ import annotations

import argparse
import re

import jax

from critique_jax.benchmarks.thunk_trace import (
    CpuUse,
    Thunk,
    print_split,
    require_cpu,
    thunks,
    traced_split,
)
from critique_jax.benchmarks.training import make_trainer, model_config, random_batch
from critique_jax.errors import run_main
from critique_jax.models.config import REMAT_POLICIES
from critique_jax.sharding import mesh_context, replicated
from critique_jax.trainer import train_step

GROUPS = (
    "weight matmuls",
    "vocabulary",
    "attention",
    "other layer ops",
    "optimizer",
    "no op_name",
)
_PROJECTION = re.compile(r"/(attn/[qkvo]|mlp/(gate|up|down))/")


def is_matmul(thunk: Thunk) -> bool:
    """A dot, or a fusion XLA built around one (a gradient's dot may carry its transpose's
    op_name, so the opcode decides for a plain dot)."""
    return thunk.kind == "dot" or thunk.op_name.endswith("dot_general")


def group_of(thunk: Thunk) -> str:
    op = thunk.op_name
    if not op:
        return "no op_name"
    if "cross_entropy" in op or "Transformer.head" in op:
        return "vocabulary"
    if is_matmul(thunk) and _PROJECTION.search(op):
        return "weight matmuls"
    if "/attn/" in op:
        return "attention"
    if "Transformer" in op:
        return "other layer ops"
    return "optimizer"


def profile(args: argparse.Namespace) -> dict:
    require_cpu("train_profile")
    cfg = model_config(args.model, args.dtype, args.remat)
    local = random_batch(cfg.vocab_size, args.batch, args.seq)
    trainer = make_trainer(cfg, local, args.repeats + 2, (1, 1, 1))
    batch = trainer.shard_batch(local)
    rate = jax.device_put(trainer.learning_rates[0], replicated(trainer.mesh))
    # Compiled once, ahead of time: the program that runs is the one whose text names the
    # thunks.
    with mesh_context(trainer.mesh, trainer.rules):
        lowered = train_step.lower(trainer.state, batch, rate, setup=trainer.setup)
    compiled = lowered.compile()
    names = thunks(compiled.as_text())
    state = trainer.state

    def step():
        nonlocal state
        state, metrics = compiled(state, batch, rate)  # the state is donated
        jax.block_until_ready(metrics)

    step()  # warm-up
    runs = []
    for _ in range(args.repeats):
        with CpuUse() as used:
            step()
        runs.append(used)
    fastest = min(runs, key=lambda used: used.seconds)
    split = traced_split(step, names, group_of, GROUPS)
    busy = sum(split.seconds.values())
    matmuls = sum(s for name, s in split.per_thunk.items() if is_matmul(names[name]))
    return dict(
        model=args.model,
        batch=args.batch,
        seq=args.seq,
        dtype=args.dtype,
        remat=args.remat,
        step_s=fastest.seconds,
        traced_s=split.wall,
        busy=split.busy,
        cores_used=fastest.cores,
        thread_s=split.seconds,
        share=split.share,
        matmul_share=matmuls / busy if busy else 0.0,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="preset or HF directory")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--remat", choices=REMAT_POLICIES, default="none")
    parser.add_argument("--repeats", type=int, default=2, help="untraced steps (min kept)")
    result = profile(parser.parse_args(argv))
    busy = ", ".join(f"{b:.0%}" for b in result["busy"])
    header = (
        f"{result['step_s']:.2f} s per train step, {result['cores_used']:.2f} cores used; threads "
        f"running their own thunks {busy} of the traced step; "
        f"matmuls {result['matmul_share']:.1%} of the busy time. Thread time per step:"
    )
    print_split(header, result["thread_s"], result["share"], "s", result)


if __name__ == "__main__":
    from critique_jax.backend import restart_with_huge_pages

    restart_with_huge_pages()
    run_main(main)
