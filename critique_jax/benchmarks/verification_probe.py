"""How fast a small transformer learns to check a step, compared with learning to compute it.

    python -m critique_jax.benchmarks.verification_probe --task generate
    python -m critique_jax.benchmarks.verification_probe --task verify --layers 4
    python -m critique_jax.benchmarks.verification_probe --task copy

The demo critic (README, "How this compares with the papers") writes its verdict before its
explanation, so it must check `a op b = c` within one forward pass. This probe isolates that
skill on the demo's model shape, one token per number, no prompt around it:

- `generate`: `a op b =` -> predict `c` (what the actor learns);
- `verify`: `a op b = c ?` -> Correct or Wrong, half of the `c` off by a demo-world slip;
- `copy`: `s a op b = ?` -> Correct iff `b == s` (a misread operand: a copy check).

Operands follow the demo world's levels 1-2 (values up to 15 or 21). Each step trains on a
fresh batch, so examples seen = steps * batch; test accuracy is on 2048 held-out examples
(accuracy of the argmax over the whole vocabulary at the target position). The last line
printed is one JSON object with the learning curve.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from critique_jax.models import Transformer
from critique_jax.models.config import preset
from critique_jax.models.transformer import init_params

# Tokens: 0..99 are the numbers themselves, then the symbols.
PLUS, MINUS, TIMES, EQUALS, ASK, CORRECT, WRONG, BOS = range(100, 108)
APPLY: dict[int, Callable[[int, int], int]] = {
    PLUS: lambda a, b: a + b,
    MINUS: lambda a, b: a - b,
    TIMES: lambda a, b: a * b,
}
SLIPS = (-10, -2, -1, 1, 2, 10)  # the demo world's arithmetic slips (`inject_error`)
LENGTH = 8  # every example fits; shorter ones are right-padded


def _calculation(rng: random.Random) -> tuple[int, int, int]:
    top = rng.choice((15, 21))
    a = rng.randint(2, top)
    op = rng.choice((PLUS, MINUS, TIMES) if 2 * a <= top else (PLUS, MINUS))
    if op == MINUS:
        b = rng.randint(1, a - 1)
    elif op == TIMES:
        b = rng.randint(2, min(4, top // a))
    else:
        b = rng.randint(1, top // 2)
    return a, op, b


def _off(rng: random.Random, value: int) -> int:
    """`value` with a slip, never equal to it and never negative."""
    wrong = max(0, value + rng.choice(SLIPS))
    return wrong if wrong != value else value + 1


def example(task: str, rng: random.Random) -> tuple[list[int], int]:
    """(tokens, index of the target token)."""
    a, op, b = _calculation(rng)
    c = APPLY[op](a, b)
    if task == "generate":
        return [BOS, a, op, b, EQUALS, c], 5
    right = rng.random() < 0.5
    verdict = CORRECT if right else WRONG
    if task == "verify":
        return [BOS, a, op, b, EQUALS, c if right else _off(rng, c), ASK, verdict], 7
    if task == "copy":
        s = rng.randint(1, 21)
        return [BOS, s, a, op, s if right else _off(rng, s), EQUALS, ASK, verdict], 7
    raise ValueError(f"unknown task {task!r}: generate, verify or copy")


def batch(task: str, rng: random.Random, size: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((size, LENGTH), np.int32)
    targets = np.zeros(size, np.int32)
    for i in range(size):
        seq, targets[i] = example(task, rng)
        tokens[i, : len(seq)] = seq
    return tokens, targets


def run(task: str, layers: int, steps: int, batch_size: int, lr: float, **shape: int) -> dict:
    cfg = preset("demo", vocab_size=128, num_layers=layers, max_position_embeddings=16, **shape)
    model = Transformer(cfg)
    warmup = min(50, max(1, steps // 10))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, lr / 10)
    opt = optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.01)
    inputs_len = LENGTH - 1

    def loss_and_accuracy(params, tokens, targets):
        rows = tokens.shape[0]
        positions = jnp.broadcast_to(jnp.arange(inputs_len), (rows, inputs_len))
        logits = model.apply(
            {"params": params}, tokens[:, :-1], positions, jnp.ones((rows, inputs_len), jnp.int32)
        )
        at = jnp.take_along_axis(logits, (targets - 1)[:, None, None], axis=1)[:, 0]
        answer = jnp.take_along_axis(tokens, targets[:, None], axis=1)[:, 0]
        logp = jax.nn.log_softmax(at.astype(jnp.float32))
        nll = -jnp.take_along_axis(logp, answer[:, None], axis=1)[:, 0]
        return nll.mean(), (jnp.argmax(at, -1) == answer).mean()

    @jax.jit
    def step(params, state, tokens, targets):
        (_, _), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(params, tokens, targets)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    evaluate = jax.jit(loss_and_accuracy)
    params = init_params(cfg, jax.random.key(0))
    state = opt.init(params)
    train_rng, test_rng = random.Random(0), random.Random(12345)
    test = batch(task, test_rng, 2048)
    curve, start = [], time.perf_counter()
    for i in range(1, steps + 1):
        params, state = step(params, state, *batch(task, train_rng, batch_size))
        if i % max(1, steps // 10) == 0 or i == steps:
            accuracy = float(evaluate(params, *test)[1])
            curve.append([i * batch_size, round(accuracy, 4)])
            print(f"{task}: {i * batch_size} examples, test accuracy {accuracy:.3f}", flush=True)
    return {
        "task": task,
        "layers": layers,
        **shape,
        "examples": steps * batch_size,
        "test_accuracy": curve[-1][1],
        "curve": curve,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("generate", "verify", "copy"), default="verify")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, help="hidden size (default: the demo preset's)")
    parser.add_argument("--mlp", type=int, help="MLP size (default: the demo preset's)")
    args = parser.parse_args(argv)
    shape = {"hidden_size": args.hidden, "intermediate_size": args.mlp}
    shape = {k: v for k, v in shape.items() if v is not None}
    print(json.dumps(run(args.task, args.layers, args.steps, args.batch, args.lr, **shape)))


if __name__ == "__main__":
    main()
