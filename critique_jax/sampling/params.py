"""What a caller asks of the sampler (`SamplingParams`) and what it gets back (`Completion`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """One generation request, applied to every prompt of a call.

    temperature 0 is greedy decoding. top_k 0, top_p 1 and min_p 0 switch those filters off.
    Filters apply in Hugging Face's order: temperature, top-k, top-p, min-p.
    stop_token_ids None means the tokenizer's (and model config's) eos ids; () means none.
    stop_strings are matched on the decoded text after generation (see `Completion`).
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    n: int = 1
    stop_token_ids: tuple[int, ...] | None = None
    stop_strings: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.stop_strings, str):
            raise ValueError(
                "invalid SamplingParams: stop_strings must be a tuple of strings, "
                f"not the string {self.stop_strings!r}"
            )
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} must be in (0, 1] (1 = off)")
        if not 0 <= self.min_p < 1:
            problems.append(f"min_p={self.min_p} must be in [0, 1) (0 = off)")
        if self.n < 1:
            problems.append(f"n={self.n} must be >= 1")
        if any(not s for s in self.stop_strings):
            problems.append("stop_strings must not contain the empty string")
        if problems:
            raise ValueError("invalid SamplingParams: " + "; ".join(problems))
        # Lists from YAML/CLI become tuples so the params stay hashable.
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **changes) -> SamplingParams:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Completion:
    """One sample.

    token_ids and logprobs cover every generated token, including the stop token or the
    token that completed a stop string, so a trainer scoring them also learns to stop;
    text excludes the stop token and anything from the stop string on. logprobs[i] is
    log softmax of the model's *raw* logits at token_ids[i] (no temperature or filters):
    the model's own probability, the quantity RCO and the trainer recompute.
    text is None when the sampler has no tokenizer.
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason
    text: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)
