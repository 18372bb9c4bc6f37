"""Sample from a Hugging Face checkpoint with the jitted sampler.

    python -m critique_jax.sample --model HF_DIR --prompt "What is 12 * 7?" --chat \\
        --max-new-tokens 128 --temperature 0.7 --top-p 0.95 --n 2 --stop "</answer>"
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from critique_jax.backend import use_compilation_cache
from critique_jax.checkpoints.hf import load_hf
from critique_jax.data.tokenizers import load_tokenizer
from critique_jax.errors import DEBUG_ENV, UserError, debug_requested, exit_cli, run_cli
from critique_jax.models import abstract_params
from critique_jax.sampling import Buckets, Sampler, SamplingParams
from critique_jax.sharding import make_mesh, param_shardings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="HF checkpoint directory")
    p.add_argument(
        "--prompt", action="append", required=True, help="prompt text; repeat for several prompts"
    )
    p.add_argument(
        "--chat",
        action="store_true",
        help="send each prompt as a user message through the chat template",
    )
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--min-p", type=float, default=0.0, help="0 = off")
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string; repeatable")
    p.add_argument(
        "--stop-token-id",
        type=int,
        action="append",
        default=None,
        help="stop token id; repeatable (default: the tokenizer's eos)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="compute and parameter dtype",
    )
    p.add_argument(
        "--mesh",
        default=None,
        help="data,fsdp,tensor mesh shape, e.g. 1,1,-1 (default: one device)",
    )
    p.add_argument("--max-batch", type=int, default=64, help="most decode rows per call")
    p.add_argument("--json", action="store_true", help="one JSON object per sample")
    p.add_argument(
        "--debug", action="store_true", help=f"tracebacks for user errors too (or {DEBUG_ENV}=1)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: _sample(args), debug_requested(args.debug))


def _sample(args: argparse.Namespace) -> int:
    use_compilation_cache()
    try:
        sp = SamplingParams(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            n=args.n,
            seed=args.seed,
            stop_strings=tuple(args.stop),
            stop_token_ids=None if args.stop_token_id is None else tuple(args.stop_token_id),
        )
        mesh = make_mesh([int(x) for x in args.mesh.split(",")]) if args.mesh else None
    except ValueError as e:
        raise UserError(str(e)) from e
    shardings = None if mesh is None else (lambda c: param_shardings(abstract_params(c), mesh))
    cfg, params = load_hf(args.model, shardings=shardings, dtype=args.dtype, param_dtype=args.dtype)
    tokenizer = load_tokenizer(args.model, cfg)
    sampler = Sampler(cfg, tokenizer, mesh=mesh, buckets=Buckets(max_batch=args.max_batch))
    prompts = [[{"role": "user", "content": p}] if args.chat else p for p in args.prompt]
    start = time.perf_counter()
    results = sampler.generate(params, prompts, sp)
    seconds = time.perf_counter() - start
    for i, samples in enumerate(results):
        for j, c in enumerate(samples):
            if args.json:
                print(
                    json.dumps(
                        dict(
                            prompt=i,
                            sample=j,
                            text=c.text,
                            finish_reason=c.finish_reason,
                            num_tokens=c.num_tokens,
                            logprob=sum(c.logprobs),
                            token_ids=list(c.token_ids),
                        )
                    )
                )
            else:
                print(f"=== prompt {i} sample {j} ({c.num_tokens} tokens, {c.finish_reason})")
                print(c.text)
    tokens = sum(c.num_tokens for samples in results for c in samples)
    print(f"{tokens} tokens in {seconds:.1f} s (including compilation)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    exit_cli(main())
