"""The text API: prompts (strings or chat messages) in, `Completion`s out."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from jax.sharding import Mesh

from critique_jax.data.batching import encode_prompt
from critique_jax.data.prompts import render
from critique_jax.models import ModelConfig
from critique_jax.sampling.buckets import Buckets
from critique_jax.sampling.engine import Engine, Params
from critique_jax.sampling.generate import generate_tokens
from critique_jax.sampling.params import Completion, SamplingParams
from critique_jax.sampling.stops import apply_stop_strings
from critique_jax.sharding import data_parallel_size

Prompt = str | Sequence[dict[str, str]]


class Sampler:
    """Samples from any parameters of one architecture; cheap to build, since the compiled
    programs are jit's, shared by every Sampler of the architecture (one per shape bucket).

    Params are an argument of `generate`, not state: updated params do not recompile.
    On a mesh, batch rows are split over (data, fsdp) and heads over tensor, exactly as in
    training; batch buckets are rounded up to the data-parallel size. unroll_layers: see
    `Engine` (None: unroll the layer loop on CPU, where it decodes about 2x faster).
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        tokenizer: Any = None,
        mesh: Mesh | None = None,
        buckets: Buckets | None = None,
        unroll_layers: bool | None = None,
    ):
        self.cfg = model_cfg
        self.tokenizer = tokenizer
        self.engine = Engine(model_cfg, mesh, unroll_layers)
        buckets = buckets or Buckets()
        multiple = math.lcm(buckets.multiple, 1 if mesh is None else data_parallel_size(mesh))
        self.buckets = dataclasses.replace(buckets, multiple=multiple)

    def default_stop_ids(self) -> tuple[int, ...]:
        """The tokenizer's eos id and the model config's eos id(s)."""
        ids: list[int] = []
        for eos in (getattr(self.tokenizer, "eos_token_id", None), self.cfg.eos_token_id):
            if eos is not None:
                ids.extend(eos if isinstance(eos, (list, tuple)) else [eos])
        return tuple(dict.fromkeys(int(i) for i in ids))

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt, identical to the prompt part of a training example: chat
        messages are rendered by `data.prompts.render` (the chat template, or its plain
        fallback) with the generation prompt, then encoded by `batching.encode_prompt`."""
        tok = self._need_tokenizer()
        text = prompt if isinstance(prompt, str) else render(tok, list(prompt))
        return encode_prompt(tok, text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._need_tokenizer().decode(list(token_ids), skip_special_tokens=True)

    def generate(
        self, params: Params, prompts: Sequence[Prompt], sp: SamplingParams
    ) -> list[list[Completion]]:
        """n completions per prompt (outer list: prompts in order; inner: samples)."""
        self._need_tokenizer()
        return self.generate_ids(params, [self.encode(p) for p in prompts], sp)

    def generate_ids(
        self, params: Params, prompt_ids: Sequence[Sequence[int]], sp: SamplingParams
    ) -> list[list[Completion]]:
        """Like `generate` from token ids. Without a tokenizer, text is None and stop
        strings are not allowed."""
        if sp.stop_strings and self.tokenizer is None:
            raise ValueError("stop_strings need a tokenizer: pass one to Sampler(...).")
        stop_ids = self.stop_ids(sp)
        results = generate_tokens(self.engine, params, prompt_ids, sp, stop_ids, self.buckets)
        return self.finish(results, sp)

    def stop_ids(self, sp: SamplingParams) -> tuple[int, ...]:
        """The stop ids a request decodes with (its own, else the default ones)."""
        return self.default_stop_ids() if sp.stop_token_ids is None else sp.stop_token_ids

    def finish(self, results: list[list[Completion]], sp: SamplingParams) -> list[list[Completion]]:
        """Token-level results with their text (and stop strings applied) when there is a
        tokenizer; unchanged without one."""
        if self.tokenizer is None:
            return results
        stop_ids = set(self.stop_ids(sp))
        return [[self._finish(c, sp, stop_ids) for c in samples] for samples in results]

    def _finish(self, c: Completion, sp: SamplingParams, stop_ids: set[int]) -> Completion:
        ends_on_stop = c.finish_reason == "stop" and c.token_ids and c.token_ids[-1] in stop_ids
        body = c.token_ids[:-1] if ends_on_stop else c.token_ids
        c = Completion(c.token_ids, c.logprobs, c.finish_reason, self.decode(body))
        return apply_stop_strings(c, sp.stop_strings, self.decode) if sp.stop_strings else c

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(
                "this Sampler has no tokenizer: pass one to Sampler(...) or use "
                "generate_ids with token ids."
            )
        return self.tokenizer
