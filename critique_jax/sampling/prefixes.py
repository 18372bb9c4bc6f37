"""Shared prompt prefixes: a prefix common to several prompts of a call is prefilled once.

The library's workloads sample prompts that share long prefixes: the refinement prompts of
the N critiques of one (x, y0) all start with x and y0, and every chat prompt with its
template's system text. (The n samples of one prompt already share its prefill: fan-out.)
A call whose prompts share prefixes is prefilled in two blocks: the distinct prefixes
[groups, Wp], then each prompt's remainder [prompts, Ws] on top of a copy of its prefix's
cache rows. A gather then lays every row out exactly as the plain prefill would (the prompt
right-aligned in `width` slots), so decode runs the same compiled program on the same cache
either way, and only the prefill's work shrinks.

Prompts are clustered by token prefix across the whole request (`cluster_prompts`) so that
the calls keep the members of a cluster together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np

from critique_jax.sampling.buckets import Buckets


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def cluster_prompts(
    prompt_ids: Sequence[Sequence[int]], min_shared: int, max_size: int
) -> list[int]:
    """A cluster id per prompt. Clusters are runs of the prompts in token order (where
    neighbours share the longest prefixes) of at most `max_size` prompts, chosen to save the
    most prefill tokens, (size - 1) x the run's common prefix, counting only prefixes of at
    least `min_shared` tokens. A prefix shared by all (a chat template's system text) then
    does not hide the longer ones shared by a few (the question and solution of a group)."""
    order = sorted(range(len(prompt_ids)), key=lambda i: tuple(prompt_ids[i]))
    lcp = [
        common_prefix_len(prompt_ids[a], prompt_ids[b])
        for a, b in zip(order, order[1:], strict=False)
    ]
    best = [0] * (len(order) + 1)  # best[i]: most tokens saved on the first i prompts
    start = list(range(len(order) + 1))  # where the last run of that best split begins
    for i in range(1, len(order) + 1):
        best[i], start[i] = best[i - 1], i - 1
        shared = None
        for j in range(i - 2, max(i - max_size, 0) - 1, -1):
            shared = lcp[j] if shared is None else min(shared, lcp[j])
            if shared < min_shared:
                break
            if best[j] + (i - 1 - j) * shared > best[i]:
                best[i], start[i] = best[j] + (i - 1 - j) * shared, j
    ids = [0] * len(order)
    i, cluster = len(order), 0
    while i > 0:
        for k in range(start[i], i):
            ids[order[k]] = cluster
        i, cluster = start[i], cluster + 1
    return ids


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SharedPrefill:
    """Host arrays of a two-block prefill (see the module docstring); a pytree, so the
    compiled prefill takes it as one argument."""

    prefix: np.ndarray  # [groups, Wp] int32, left-padded
    prefix_mask: np.ndarray  # [groups, Wp] bool
    group: np.ndarray  # [prompts] int32: the prefix row each prompt continues
    suffix: np.ndarray  # [prompts, Ws] int32, left-padded
    suffix_mask: np.ndarray  # [prompts, Ws] bool
    source: np.ndarray  # [prompts, width] int32: slot in [prefix; suffix] of each final slot

    @property
    def tokens_computed(self) -> int:
        return self.prefix.size + self.suffix.size


def left_pad(prompts: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((len(prompts), length), np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for row, ids in enumerate(prompts):
        if len(ids):
            tokens[row, length - len(ids) :] = ids
            mask[row, length - len(ids) :] = True
    return tokens, mask


def _groups(block: Sequence[Sequence[int]], clusters: Sequence[int], min_shared: int):
    """(member rows, shared length) per group; a shared length leaves each member at least
    one token of its own, whose logits start the decode."""
    by_cluster: dict[int, list[int]] = {}
    for row, c in enumerate(clusters):
        by_cluster.setdefault(c, []).append(row)
    groups = []
    for rows in by_cluster.values():
        shared = min(len(block[r]) for r in rows) - 1
        for r in rows[1:]:
            shared = min(shared, common_prefix_len(block[rows[0]], block[r]))
        if len(rows) > 1 and shared >= min_shared:
            groups.append((rows, shared))
        else:
            groups += [([r], 0) for r in rows]
    return groups


def plan_shared_prefill(
    block: Sequence[Sequence[int]],
    clusters: Sequence[int],
    width: int,
    buckets: Buckets,
    min_shared: int,
    model_max: int,
) -> SharedPrefill | None:
    """The two-block prefill of one call's prompts (`width`: the plain prefill's width), or
    None when no prefix is shared or the two blocks would not compute fewer slots."""
    groups = _groups(block, clusters, min_shared)
    if all(len(rows) == 1 for rows, _ in groups):
        return None
    suffix_len = max(len(block[r]) - shared for rows, shared in groups if shared for r in rows)
    prefixes: list[Sequence[int]] = []
    suffixes: list[Sequence[int]] = [()] * len(block)
    group = np.zeros(len(block), np.int32)
    for rows, shared in groups:
        if len(rows) == 1:  # a prompt of its own: split it where the blocks fit it best
            shared = len(block[rows[0]]) - min(len(block[rows[0]]), suffix_len)
        group[rows] = len(prefixes)
        prefixes.append(block[rows[0]][:shared])
        for r in rows:
            suffixes[r] = block[r][shared:]
    wp = buckets.length(max(1, max(map(len, prefixes))), model_max)
    ws = buckets.length(suffix_len, model_max)
    rows_p = buckets.batch(len(prefixes), len(block))
    if rows_p * wp + len(block) * ws >= len(block) * width:
        return None
    prefix, prefix_mask = left_pad(prefixes + [()] * (rows_p - len(prefixes)), wp)
    suffix, suffix_mask = left_pad(suffixes, ws)
    source = np.zeros((len(block), width), np.int32)
    for r in range(len(block)):
        slots = np.concatenate(
            [np.flatnonzero(prefix_mask[group[r]]), wp + np.flatnonzero(suffix_mask[r])]
        )
        source[r, width - len(slots) :] = slots
    return SharedPrefill(prefix, prefix_mask, group, suffix, suffix_mask, source)
