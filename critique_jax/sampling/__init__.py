"""Jitted KV-cache sampling: prefill + `lax.while_loop` decode, fan-out, shape buckets.

    sampler = Sampler(cfg, tokenizer, mesh)
    completions = sampler.generate(params, ["What is 2+3?"], SamplingParams(n=4, temperature=0.7))

Modules: params (the request and result types), filters (temperature/top-k/top-p/min-p and
per-row keys), buckets (shape buckets, splitting a request into calls), engine (the compiled
prefill and decode), generate (token-level driver), stops (stop strings), sampler (text API).
"""

from critique_jax.sampling.buckets import Buckets
from critique_jax.sampling.generate import prepare_calls
from critique_jax.sampling.params import Completion, SamplingParams
from critique_jax.sampling.sampler import Sampler

__all__ = ["Buckets", "Completion", "Sampler", "SamplingParams", "prepare_calls"]
