"""Greedy decode throughput: critique_jax's jitted sampler against transformers `generate`.

    python -m critique_jax.benchmarks.sampling --model HF_DIR --batch 16 --new-tokens 128

Same checkpoint and dtype (--dtype, float32 by default), same token ids, greedy, eos ignored
so every row makes exactly `--new-tokens` tokens; checks the outputs are identical.
Throughput counts prefill + decode of the second (compiled) call; `compile_s` is the first
call's extra time. The last line printed is one JSON object.

It also reports the decode step's roofline (`benchmarks.roofline`): the bytes one step must
read (all parameters + every slot of the KV cache) over the measured step time, as a fraction
of the device's memory bandwidth (published on an accelerator, measured on a CPU), and the
FLOPs it does against the matmul rate the device reaches at the same batch.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from critique_jax.benchmarks import roofline
from critique_jax.checkpoints.hf import load_hf
from critique_jax.data.tokenizers import load_tokenizer
from critique_jax.errors import run_main
from critique_jax.sampling import Buckets, Sampler, SamplingParams, prepare_calls
from critique_jax.sampling.generate import decode_call

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "What is 17 times 23?",
    "Explain why the sky is blue.",
    "Write a short poem about the sea.",
    "A train travels 60 miles in 1.5 hours. What is its average speed in miles per hour?",
    "List three prime numbers greater than 50.",
    "What is the capital of France, and what river runs through it?",
    "Solve for x: 3x + 7 = 22.",
]


def make_prompts(tokenizer, batch: int) -> list[list[int]]:
    """`batch` distinct prompts of mixed lengths."""
    texts = [f"Question {i + 1}: {QUESTIONS[i % len(QUESTIONS)]}\nAnswer:" for i in range(batch)]
    return [tokenizer(t)["input_ids"] for t in texts]


def run_ours(model_dir: str, prompts: list[list[int]], new_tokens: int, dtype: str) -> dict:
    cfg, params = load_hf(model_dir, dtype=dtype, param_dtype=dtype)
    sampler = Sampler(cfg, buckets=Buckets(max_batch=max(64, len(prompts))))
    sp = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, stop_token_ids=())
    start = time.perf_counter()
    sampler.generate_ids(params, prompts, sp)
    first = time.perf_counter() - start
    start = time.perf_counter()
    results = sampler.generate_ids(params, prompts, sp)
    run = time.perf_counter() - start

    # Phases of the (single) call, timed apart for the roofline.
    (call,) = prepare_calls(sampler.engine, prompts, sp, sampler.buckets)
    params = jax.block_until_ready(sampler.engine.prepare(params))
    width = call.tokens.shape[1]
    start = time.perf_counter()
    prefilled = jax.block_until_ready(
        sampler.engine.prefill(params, call.tokens, call.token_mask, 1)
    )
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(
        decode_call(sampler.engine, params, prefilled, call, sp, (), sampler.buckets)
    )
    decode_s = time.perf_counter() - start

    step_s = decode_s / max(new_tokens - 1, 1)
    # Every prompt slot (read once per prompt) and every row's own decode slots.
    slots = len(call.tokens) * width + len(call.prompt_index) * new_tokens
    step_bytes = roofline.param_bytes(params) + roofline.kv_bytes(cfg, slots)
    step_flops = roofline.decode_flops(cfg, len(prompts))
    device = jax.devices()[0]
    bandwidth, source = roofline.bandwidth(device)
    matmul = roofline.matmul_flops(len(prompts), cfg, cfg.jnp_dtype)
    return dict(
        tokens=[list(s[0].token_ids) for s in results],
        ours_tokens_per_s=len(prompts) * new_tokens / run,
        compile_s=first - run,
        prefill_ms=prefill_s * 1e3,
        decode_step_ms=step_s * 1e3,
        bytes_per_step=step_bytes,
        roofline_fraction=None if bandwidth is None else step_bytes / step_s / bandwidth,
        bandwidth_gbps=None if bandwidth is None else bandwidth / 1e9,
        bandwidth_source=source,
        flops_per_step=step_flops,
        matmul_fraction=step_flops / step_s / matmul,
        matmul_gflops=matmul / 1e9,
        device=device.device_kind,
    )


def run_hf(
    model_dir: str, prompts: list[list[int]], new_tokens: int, pad_id: int, dtype: str
) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model = model.to(device).eval()
    model.generation_config.eos_token_id = None  # exactly new_tokens per row, like ours
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), pad_id, np.int64)
    mask = np.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :], mask[r, width - len(p) :] = p, 1
    kw = dict(
        input_ids=torch.tensor(ids, device=device),
        attention_mask=torch.tensor(mask, device=device),
        do_sample=False,
        pad_token_id=pad_id,
    )
    with torch.no_grad():
        model.generate(**kw, max_new_tokens=2)  # warm-up
        start = time.perf_counter()
        out = model.generate(**kw, max_new_tokens=new_tokens)
        out = out.cpu()
        seconds = time.perf_counter() - start
    return dict(
        tokens=out[:, width:].tolist(),
        hf_tokens_per_s=len(prompts) * new_tokens / seconds,
        torch_threads=torch.get_num_threads(),
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="HF checkpoint directory")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--dtype", default="float32", help="both sides' parameters and compute")
    p.add_argument("--skip-hf", action="store_true", help="only time critique_jax")
    args = p.parse_args(argv)

    tokenizer = load_tokenizer(args.model)
    prompts = make_prompts(tokenizer, args.batch)
    ours = run_ours(args.model, prompts, args.new_tokens, args.dtype)
    result = dict(
        model=args.model,
        batch=args.batch,
        new_tokens=args.new_tokens,
        dtype=args.dtype,
        prompt_tokens=[min(map(len, prompts)), max(map(len, prompts))],
    )
    hf_tokens = None
    if not args.skip_hf:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        hf = run_hf(args.model, prompts, args.new_tokens, pad, args.dtype)
        hf_tokens = hf.pop("tokens")
        result.update(hf)
    ours_tokens = ours.pop("tokens")
    identical = None if hf_tokens is None else ours_tokens == hf_tokens
    if identical is False:
        result["rows_identical"] = sum(a == b for a, b in zip(ours_tokens, hf_tokens, strict=True))
    hf_rate = result.get("hf_tokens_per_s")
    result.update(ours)
    result.update(
        ratio=None if hf_rate is None else ours["ours_tokens_per_s"] / hf_rate,
        outputs_identical=identical,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    run_main(main)
