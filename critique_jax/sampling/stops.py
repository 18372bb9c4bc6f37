"""Stop strings, applied to decoded text after generation.

Matching on text (not inside the compiled loop) keeps the loop free of tokenizer logic; the
cost is that a row runs on past its stop string until the batch ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from critique_jax.sampling.params import Completion


def first_stop(text: str, stop_strings: Sequence[str]) -> tuple[int, str] | None:
    """(position, string) of the earliest stop string in text, or None."""
    hits = [(pos, s) for s in stop_strings if (pos := text.find(s)) >= 0]
    return min(hits) if hits else None


def apply_stop_strings(
    completion: Completion, stop_strings: Sequence[str], decode: Callable[[Sequence[int]], str]
) -> Completion:
    """Cut the text before the earliest stop string and the tokens after the one completing it.

    The kept tokens are the shortest prefix whose text contains the stop string (found by
    bisection: a longer prefix never loses it), so token_ids, logprobs and text stay aligned.
    """
    hit = first_stop(completion.text or "", stop_strings)
    if hit is None:
        return completion
    pos, stop = hit
    ids = completion.token_ids
    lo, hi = 1, len(ids)  # decode(ids[:hi]) contains the stop string
    while lo < hi:
        mid = (lo + hi) // 2
        if stop in decode(ids[:mid]):
            hi = mid
        else:
            lo = mid + 1
    return Completion(
        token_ids=ids[:hi],
        logprobs=completion.logprobs[:hi],
        finish_reason="stop",
        text=completion.text[:pos],
    )
