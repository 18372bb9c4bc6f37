"""Rollout throughput on the library's own workload: N critiques x M refinements per (x, y0).

    python -m critique_jax.benchmarks.rollouts --model HF_DIR
    python -m critique_jax.benchmarks.rollouts --model HF_DIR --questions 8 --critiques 4 \\
        --refinements 4 --new-tokens 128 --data gsm8k_test.jsonl

The RCO collection shape (`pipelines.rco_collect.critique_and_refine`): GSM8K questions with
their reference solution as y0; the critic prompt of each (x, y0) sampled N times at T = 1,
then the refinement prompt of every critique sampled M times (the pipeline's refine
temperature, 0.7). Prompts are rendered by the project's templates
(`data.prompts.critique_messages`, `refine_messages`, `render`) and encoded by the Sampler,
exactly as the pipeline does. Both sides get the same prompts: the refinement prompts are
built from our critiques and given to transformers too. transformers runs `generate` with
`num_return_sequences` (which prefills every return sequence) on the same prompts in calls of
at most as many rows as ours, with the same eos ids and limits. A greedy n = 1 pass over
the same critique and refinement prompts checks the outputs are token-identical.

Reported per side: generated tokens / s over the sampled workload (prefill + decode), the
prefill tokens computed (padded rows x width, what the device runs) and the real prompt
tokens, the prefill / decode time split, and peak memory (host RSS during the side's run;
device peak on an accelerator) and the 1-minute load average before and after it (the
machine's other load, which both sides share). Ours is timed on its second run of the
workload (the first compiles; `compile_s` is the difference). The last line printed is one
JSON object. `--data` is a local GSM8K .json/.jsonl file or a hub name (default
`openai/gsm8k`, test split); given a local file that does not exist, it prints a JSON
object with `skipped` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import jax
import numpy as np

from critique_jax.benchmarks import roofline
from critique_jax.checkpoints.hf import load_hf
from critique_jax.data.loaders import load_gsm8k
from critique_jax.data.prompts import critique_messages, refine_messages
from critique_jax.data.records import Problem
from critique_jax.data.tokenizers import load_tokenizer
from critique_jax.errors import run_main
from critique_jax.models import ModelConfig
from critique_jax.sampling import Completion, Sampler, SamplingParams, prepare_calls
from critique_jax.sampling.generate import collect, decode_call, prefill_call


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms):
    XLA's and PyTorch's allocations are invisible to tracemalloc."""

    def __enter__(self) -> PeakRSS:
        self.peak = self.start = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def mb(self) -> float:
        return self.peak / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Stage:
    """Counters of one side over the stages it ran."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_tokens: int = 0  # slots computed: rows x padded width, summed over calls
    prompt_tokens: int = 0  # real prompt tokens of every row the side prefilled
    generated: int = 0
    decode_bytes: int = 0  # what decode must read: parameters and attended KV slots, per step
    decode_flops: int = 0  # matmul FLOPs of every decode step's rows (padding rows included)
    outputs: list[list[list[int]]] = field(default_factory=list)

    def add(self, other: Stage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def add_decode(self, cfg: ModelConfig, weights: int, rows: int, steps: int, slots: int) -> None:
        """Count `steps` decode steps of `rows` rows that read `weights` parameter bytes
        each and `slots` KV slots in all."""
        self.decode_bytes += steps * weights + roofline.kv_bytes(cfg, slots)
        self.decode_flops += steps * roofline.decode_flops(cfg, rows)

    def summary(self) -> dict[str, Any]:
        """The counters (not the outputs) and the throughput they give."""
        total = self.prefill_s + self.decode_s
        skip = ("outputs", "generated")
        counters = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        throughput = dict(tokens_per_s=self.generated / total, generated_tokens=self.generated)
        return dict(seconds=total, **throughput, **counters)


def load_questions(source: str | Path, count: int) -> list[Problem]:
    """The first `count` GSM8K test problems (each with its reference solution)."""
    return load_gsm8k(source, limit=count)


def critique_prompts(sampler: Sampler, problems: Sequence[Problem]) -> list[list[int]]:
    return [sampler.encode(critique_messages(p.question, p.solution)) for p in problems]


def refine_prompts(
    sampler: Sampler, problems: Sequence[Problem], critiques: Sequence[Sequence[Completion]]
) -> list[list[int]]:
    """One refinement prompt per critique, as `rco_collect` builds them."""
    return [
        sampler.encode(refine_messages(p.question, p.solution, c.text or ""))
        for p, cs in zip(problems, critiques, strict=True)
        for c in cs
    ]


def run_ours(
    sampler: Sampler, params: Any, prompts: list[list[int]], sp: SamplingParams
) -> tuple[list[list[Completion]], Stage]:
    """`Sampler.generate_ids` phase by phase (the same functions, with a wait after each
    phase so prefill and decode are timed apart)."""
    engine, stop_ids = sampler.engine, sampler.stop_ids(sp)
    calls = prepare_calls(engine, prompts, sp, sampler.buckets)
    params = jax.block_until_ready(engine.prepare(params))
    stage, pending = Stage(), []
    for call in calls:
        start = time.perf_counter()
        prefilled = jax.block_until_ready(prefill_call(engine, params, call, sp))
        stage.prefill_s += time.perf_counter() - start
        start = time.perf_counter()
        pieces = decode_call(engine, params, prefilled, call, sp, stop_ids, sampler.buckets)
        pending.append((call, jax.block_until_ready(pieces)))
        stage.decode_s += time.perf_counter() - start
        stage.prefill_tokens += call.prefill_tokens
        stage.prompt_tokens += call.prompt_tokens * call.fanout
    start = time.perf_counter()
    results = sampler.finish(collect(engine, pending, len(prompts), sp.n), sp)
    stage.decode_s += time.perf_counter() - start
    weights = roofline.param_bytes(params)
    for call, pieces in pending:
        step = 1
        for k, (batch_rows, out) in enumerate(pieces):
            end = int(np.max(engine.fetch(out.lengths)))
            # A step reads each prompt's segment once and every row's own decode slots (as
            # many as the cache has grown to); after a compaction each row holds a copy of
            # its prompt.
            rows, width = len(batch_rows), call.tokens.shape[1]
            prompts = call.token_mask.shape[0] if k == 0 else rows
            own = sum(sampler.buckets.slots(sp.max_new_tokens, t - 1) for t in range(step, end))
            slots = (end - step) * prompts * width + rows * own
            stage.add_decode(engine.cfg, weights, rows, end - step, slots)
            step = end
    stage.generated = sum(c.num_tokens for cs in results for c in cs)
    stage.outputs = [[list(c.token_ids) for c in cs] for cs in results]
    return results, stage


class _Clock:
    """A generate streamer that only timestamps: the first put is the prompt, the second the
    first new token, so their gap is the prefill."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        self.times.append(time.perf_counter())


def _trim(row: list[int], stop_ids: set[int]) -> list[int]:
    """Generated ids up to and including the first stop id (what our Completion holds)."""
    for i, t in enumerate(row):
        if t in stop_ids:
            return row[: i + 1]
    return row


def run_hf(
    model: Any,
    prompts: list[list[int]],
    sp: SamplingParams,
    stop_ids: Sequence[int],
    pad_id: int,
    max_rows: int,
    cfg: ModelConfig,
    weights: int,
) -> Stage:
    """transformers `generate` with num_return_sequences=n on prompts sorted by length (as
    ours are), at most `max_rows` rows per call; `cfg` and `weights` (parameter bytes) size
    the decode's reads."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    per_call = max(max_rows // sp.n, 1)
    outputs: list[list[list[int]]] = [[] for _ in prompts]
    stage = Stage()
    sampling = (
        dict(do_sample=False)
        if sp.greedy
        else dict(do_sample=True, temperature=sp.temperature, top_k=0, top_p=sp.top_p)
    )
    for start in range(0, len(order), per_call):
        chunk = order[start : start + per_call]
        width = max(len(prompts[i]) for i in chunk)
        ids = np.full((len(chunk), width), pad_id, np.int64)
        mask = np.zeros_like(ids)
        for r, i in enumerate(chunk):
            ids[r, width - len(prompts[i]) :], mask[r, width - len(prompts[i]) :] = prompts[i], 1
        clock = _Clock()
        torch.manual_seed(sp.seed + start)
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor(ids, device=device),
                attention_mask=torch.tensor(mask, device=device),
                max_new_tokens=sp.max_new_tokens,
                num_return_sequences=sp.n,
                eos_token_id=list(stop_ids),
                pad_token_id=pad_id,
                streamer=clock,
                **sampling,
            )
        if device.type == "cuda":
            torch.cuda.synchronize()
        clock.end()
        stage.prefill_s += clock.times[1] - clock.times[0]
        stage.decode_s += clock.times[-1] - clock.times[1]
        stage.prefill_tokens += len(chunk) * sp.n * width
        stage.prompt_tokens += sp.n * int(mask.sum())
        rows = out[:, width:].tolist()
        for r, i in enumerate(chunk):
            outputs[i] = [_trim(row, set(stop_ids)) for row in rows[r * sp.n : (r + 1) * sp.n]]
        # Each return sequence attends to its own copy of the prompt and what it generated.
        steps = out.shape[1] - width - 1
        slots = len(rows) * sum(width + 1 + t for t in range(steps))
        stage.add_decode(cfg, weights, len(rows), steps, slots)
    stage.outputs = outputs
    stage.generated = sum(len(row) for rows in outputs for row in rows)
    return stage


def workload(
    sampler: Sampler,
    params: Any,
    problems: Sequence[Problem],
    critique_sp: SamplingParams,
    refine_sp: SamplingParams,
) -> tuple[list[list[int]], list[list[int]], Stage, Stage]:
    """Our side of the sampled workload: critiques, then refinements of each."""
    crit_prompts = critique_prompts(sampler, problems)
    critiques, crit_stage = run_ours(sampler, params, crit_prompts, critique_sp)
    ref_prompts = refine_prompts(sampler, problems, critiques)
    _, ref_stage = run_ours(sampler, params, ref_prompts, refine_sp)
    return crit_prompts, ref_prompts, crit_stage, ref_stage


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="HF checkpoint directory")
    p.add_argument(
        "--data", default="openai/gsm8k", help="GSM8K: a local .json/.jsonl file or a hub name"
    )
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--critiques", type=int, default=4, help="N per (x, y0)")
    p.add_argument("--refinements", type=int, default=4, help="M per critique")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--dtype", default="float32", help="both sides' compute dtype")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-hf", action="store_true", help="only run critique_jax")
    p.add_argument("--skip-greedy", action="store_true", help="no greedy identity pass")
    args = p.parse_args(argv)

    local = args.data.endswith((".json", ".jsonl"))
    if local and not Path(args.data).is_file():
        print(json.dumps(dict(skipped=f"no GSM8K file at {args.data}; pass --data")))
        return
    problems = load_questions(args.data, args.questions)
    cfg, params = load_hf(args.model, dtype=args.dtype, param_dtype=args.dtype)
    tokenizer = load_tokenizer(args.model, cfg)
    sampler = Sampler(cfg, tokenizer)
    critique_sp = SamplingParams(
        max_new_tokens=args.new_tokens, temperature=1.0, n=args.critiques, seed=args.seed
    )
    refine_sp = SamplingParams(
        max_new_tokens=args.new_tokens, temperature=0.7, n=args.refinements, seed=args.seed + 1
    )

    start = time.perf_counter()
    workload(sampler, params, problems, critique_sp, refine_sp)
    first = time.perf_counter() - start
    load_before = os.getloadavg()[0]
    with PeakRSS() as ours_mem:
        crit_prompts, ref_prompts, crit, ref = workload(
            sampler, params, problems, critique_sp, refine_sp
        )
    ours = Stage()
    ours.add(crit)
    ours.add(ref)
    result: dict[str, Any] = dict(
        model=args.model,
        device=jax.devices()[0].device_kind,
        dtype=args.dtype,
        questions=len(problems),
        critiques=args.critiques,
        refinements=args.refinements,
        new_tokens=args.new_tokens,
        critique_prompt_tokens=[min(map(len, crit_prompts)), max(map(len, crit_prompts))],
        refine_prompt_tokens=[min(map(len, ref_prompts)), max(map(len, ref_prompts))],
        ours=dict(
            ours.summary(),
            critique_stage=crit.summary(),
            refine_stage=ref.summary(),
            compile_s=first - (ours.prefill_s + ours.decode_s),
            peak_rss_mb=ours_mem.mb,
            device_peak_mb=roofline.device_peak_mb(),
            load_avg=[load_before, os.getloadavg()[0]],
        ),
    )
    greedy_sp = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0)
    greedy_prompts = crit_prompts + ref_prompts
    if not args.skip_greedy:
        _, greedy_ours = run_ours(sampler, params, greedy_prompts, greedy_sp)

    hf: Stage | None = None
    if not args.skip_hf:
        import torch
        from transformers import AutoModelForCausalLM

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(
            args.model, dtype=getattr(torch, args.dtype)
        ).to(device)
        model.eval()
        stop_ids = sampler.stop_ids(critique_sp)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        rows = sampler.buckets.max_batch
        hf_args = (stop_ids, pad, rows, cfg, roofline.param_bytes(params))
        run_hf(model, crit_prompts[:1], greedy_sp.replace(max_new_tokens=2), *hf_args)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        load_before = os.getloadavg()[0]
        with PeakRSS() as hf_mem:
            hf = run_hf(model, crit_prompts, critique_sp, *hf_args)
            hf.add(run_hf(model, ref_prompts, refine_sp, *hf_args))
        result["hf"] = dict(
            hf.summary(),
            peak_rss_mb=hf_mem.mb,
            device_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
            torch_threads=torch.get_num_threads(),
            load_avg=[load_before, os.getloadavg()[0]],
        )
        result["ratio"] = (
            ours.generated
            / (ours.prefill_s + ours.decode_s)
            / (hf.generated / (hf.prefill_s + hf.decode_s))
        )
        result["prefill_tokens_ratio"] = hf.prefill_tokens / ours.prefill_tokens
        if not args.skip_greedy:
            greedy_hf = run_hf(model, greedy_prompts, greedy_sp, *hf_args)
            same = [a == b for a, b in zip(greedy_ours.outputs, greedy_hf.outputs, strict=True)]
            result["greedy"] = dict(
                rows=len(same),
                rows_identical=sum(same),
                outputs_identical=all(same),
            )
    # Measured last, so that they do not load the machine during either side's run.
    bandwidth, source = roofline.bandwidth(jax.devices()[0])
    matmul = roofline.matmul_flops(sampler.buckets.max_batch, cfg, cfg.jnp_dtype)
    result.update(bandwidth_gbps=bandwidth and bandwidth / 1e9, bandwidth_source=source)
    result.update(matmul_gflops=matmul / 1e9)
    for side, stage in (("ours", ours), ("hf", hf)):
        if stage is not None:
            result[side].update(decode_bounds(stage, bandwidth, matmul))
    print(json.dumps(result))


def decode_bounds(stage: Stage, bandwidth: float | None, matmul: float) -> dict[str, Any]:
    """The least time the side's decode could take: reading what it must read at the
    device's bandwidth, or doing its matmuls at the device's rate, whichever is longer."""
    memory_s = None if bandwidth is None else stage.decode_bytes / bandwidth
    compute_s = stage.decode_flops / matmul
    return dict(
        decode_memory_bound_s=memory_s,
        decode_compute_bound_s=compute_s,
        decode_bound_fraction=max(memory_s or 0.0, compute_s) / stage.decode_s,
    )


if __name__ == "__main__":
    run_main(main)
