"""The compiled core: prefill a left-padded prompt block, then decode in a `lax.while_loop`.

Prefill runs the prompt block through `Transformer.extend` once, filling a KV cache of
`prompt bucket` slots. Decode continues `fanout` sample rows from each prompt
(`continue_cache`): the prompt's cache is one segment that all its samples read, so
the n samples of a prompt share one prefill and, at every decode step, one read of the
prompt's keys and values; each row writes its new tokens into a segment of its own. Decode
feeds one token per step through the same `extend` (the training graph), writes tokens and
log-probs into preallocated buffers, and stops when every row has hit a stop id or
`max_new_tokens` is reached, or when the rows' own cache slots are full (`grow` adds more:
a step attends over about the filled slots, not all `max_new_tokens`), or, when asked, once
at most a given number of rows are live (`compact` then gathers those rows into a smaller
batch). `generate.decode_call` drives the three.

Parameters are an argument of every compiled function, never a constant: the actor and the
critic share one compiled sampler when their architecture matches, and new parameters after
a training step do not recompile.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from critique_jax.backend import unroll_decode_layers
from critique_jax.models import ModelConfig
from critique_jax.models.transformer import (
    KVCache,
    Transformer,
    abstract_params,
    add_slots,
    constrain_cache,
    continue_cache,
    init_cache,
    map_kv,
    select_rows,
)
from critique_jax.sampling.filters import FilterSpec, row_keys, sample_tokens, token_logprobs
from critique_jax.sampling.prefixes import SharedPrefill
from critique_jax.sharding import named, param_shardings, place

Params = Any


def _pytree(cls):
    return jax.tree_util.register_dataclass(dataclass(frozen=True)(cls))


@_pytree
class DecodeOut:
    """Device arrays of one call: tokens/logprobs [B, max_new]; lengths, stopped [B]."""

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    stopped: jax.Array


@_pytree
class Prefilled:
    """A prefill's result: the prompts' cache (one row per prompt), and per sample row
    (B = prompts x fanout) the logits of its first token [B, V] and its prompt length [B]."""

    cache: KVCache
    logits: jax.Array
    lengths: jax.Array


@_pytree
class Rows:
    """Per decode row: its prompt and sample index (which key its random stream, so a sample
    does not depend on the batch it ran in) and whether it is real (not padding)."""

    prompt_index: jax.Array
    sample_index: jax.Array
    active: jax.Array


@_pytree
class Knobs:
    """The traced sampling values: changing them does not recompile."""

    stop_ids: jax.Array  # [S] int32, padded with -1
    seed: jax.Array
    temperature: jax.Array
    top_p: jax.Array
    min_p: jax.Array


@_pytree
class DecodeState:
    """The `while_loop` carry, one entry per decode row: `step` tokens are written to
    `out`; `last` is fed next; `keys` seed each row's random stream, `prompt_lengths` place
    its positions. Everything a row needs travels here, so `compact` can drop rows."""

    step: jax.Array
    last: jax.Array
    cache: KVCache
    out: DecodeOut
    done: jax.Array
    keys: jax.Array
    prompt_lengths: jax.Array


def _repeat(x: jax.Array, fanout: int) -> jax.Array:
    """Each row `fanout` times over the leading axis: one per sample of its prompt."""
    return x if fanout == 1 else jnp.repeat(x, fanout, axis=0)


def _positions(token_mask: jax.Array, start: jax.Array | int = 0) -> jax.Array:
    """Position of each real token of left-padded rows, counting from `start` [B, 1]."""
    return (start + jnp.maximum(jnp.cumsum(token_mask, axis=-1) - 1, 0)).astype(jnp.int32)


def _extend(cfg: ModelConfig, params, tokens, positions, token_mask, cache, last_only=False):
    return Transformer(cfg).apply(
        {"params": params},
        tokens,
        positions,
        token_mask,
        cache,
        last_only=last_only,
        method=Transformer.extend,
    )


def _fan_out(cache: KVCache, logits, token_mask, fanout: int) -> Prefilled:
    """The logits and lengths of every sample row; the cache stays one row per prompt."""
    lengths = jnp.sum(token_mask, axis=-1, dtype=jnp.int32)
    return Prefilled(cache, _repeat(logits[:, 0], fanout), _repeat(lengths, fanout))


@functools.partial(jax.jit, static_argnames=("cfg", "fanout"))
def prefill(params, tokens, token_mask, *, cfg: ModelConfig, fanout: int) -> Prefilled:
    """Left-padded prompts [P, W] -> their cache and the first logits of P x fanout rows."""
    cache = constrain_cache(init_cache(cfg, *tokens.shape))
    positions = _positions(token_mask)
    logits, cache = _extend(cfg, params, tokens, positions, token_mask, cache, last_only=True)
    return _fan_out(cache, logits, token_mask, fanout)


@functools.partial(jax.jit, static_argnames=("cfg", "fanout"))
def prefill_shared(
    params, shared: SharedPrefill, token_mask, *, cfg: ModelConfig, fanout: int
) -> Prefilled:
    """`prefill`'s result computed in two blocks (see `sampling.prefixes`): the shared
    prefixes once, each prompt's remainder on a copy of its prefix's cache rows, then every
    row gathered into the plain prefill's layout (the prompt right-aligned in `width`
    slots), so decode cannot tell the two apart."""
    width = token_mask.shape[1]
    prefix, prefix_mask, group = shared.prefix, shared.prefix_mask, shared.group
    cache = constrain_cache(
        init_cache(cfg, prefix.shape[0], prefix.shape[1] + shared.suffix.shape[1])
    )
    _, cache = _extend(cfg, params, prefix, _positions(prefix_mask), prefix_mask, cache)
    cache = select_rows(cache, group)  # each prompt continues its prefix's rows
    start = jnp.sum(prefix_mask, axis=-1, dtype=jnp.int32)[group][:, None]
    positions = _positions(shared.suffix_mask, start)
    logits, cache = _extend(
        cfg, params, shared.suffix, positions, shared.suffix_mask, cache, last_only=True
    )

    def relayout(x):  # [B, K, S, H] -> [B, K, width, H]
        return jnp.take_along_axis(x, shared.source[:, None, :, None], axis=2)

    cache = dict(map_kv(relayout, cache), mask=token_mask, index=jnp.int32(width))
    cache = constrain_cache(cache)
    return _fan_out(cache, logits, token_mask, fanout)


def _choose(state_keys, logits, step, spec: FilterSpec, knobs: Knobs):
    """Each row's token from its logits [B, V] at `step`, and the token's log-prob."""
    step_keys = jax.vmap(jax.random.fold_in, (0, None))(state_keys, step)
    tok = sample_tokens(step_keys, logits, spec, knobs.temperature, knobs.top_p, knobs.min_p)
    return tok, token_logprobs(logits, tok)


def _is_stop(tok, knobs: Knobs):
    return jnp.any(tok[:, None] == knobs.stop_ids[None, :], axis=-1)


@functools.partial(jax.jit, static_argnames=("spec", "max_new", "slots"))
def start(
    prefilled: Prefilled, rows: Rows, knobs: Knobs, *, spec: FilterSpec, max_new: int, slots: int
) -> DecodeState:
    """The decode state after each row's first token (sampled from the prefill's logits),
    with the cache its samples continue into (`continue_cache`), `slots` own slots
    per row."""
    batch = prefilled.logits.shape[0]
    keys = row_keys(knobs.seed, rows.prompt_index, rows.sample_index)
    first, lp = _choose(keys, prefilled.logits, 0, spec, knobs)
    stopped = rows.active & _is_stop(first, knobs)
    out = DecodeOut(
        tokens=jnp.zeros((batch, max_new), jnp.int32).at[:, 0].set(first),
        logprobs=jnp.zeros((batch, max_new), jnp.float32).at[:, 0].set(lp),
        lengths=rows.active.astype(jnp.int32),
        stopped=stopped,
    )
    fanout = batch // prefilled.cache["mask"].shape[0]
    cache = constrain_cache(continue_cache(prefilled.cache, fanout, slots))
    done = ~rows.active | stopped
    return DecodeState(jnp.int32(1), first, cache, out, done, keys, prefilled.lengths)


@functools.partial(jax.jit, static_argnames=("cfg", "spec", "max_new", "live_floor"))
def decode(
    params,
    state: DecodeState,
    knobs: Knobs,
    *,
    cfg: ModelConfig,
    spec: FilterSpec,
    max_new: int,
    live_floor: int = 0,
) -> DecodeState:
    """Decode in a `while_loop` until every row has hit a stop id or made `max_new`
    tokens, or the cache has no empty slot left (the caller can `grow` it and go on), or
    (live_floor > 0) until at most `live_floor` rows are still live, so that the caller can
    `compact` the batch and go on with fewer rows."""
    batch = state.last.shape[0]

    def cond(state: DecodeState):
        live = jnp.sum(~state.done)
        room = state.cache["index"] < state.cache["mask"].shape[1]
        return (state.step < max_new) & room & (live > live_floor) & (live > 0)

    def body(state: DecodeState) -> DecodeState:
        positions = (state.prompt_lengths + state.step - 1)[:, None]
        ones = jnp.ones((batch, 1), bool)
        logits, cache = _extend(cfg, params, state.last[:, None], positions, ones, state.cache)
        new, lp = _choose(state.keys, logits[:, 0], state.step, spec, knobs)
        live = ~state.done
        new = jnp.where(live, new, 0)
        hit = live & _is_stop(new, knobs)
        out = state.out
        out = DecodeOut(
            tokens=jax.lax.dynamic_update_slice(out.tokens, new[:, None], (0, state.step)),
            logprobs=jax.lax.dynamic_update_slice(
                out.logprobs, jnp.where(live, lp, 0.0)[:, None], (0, state.step)
            ),
            lengths=out.lengths + live,
            stopped=out.stopped | hit,
        )
        return dataclasses.replace(
            state, step=state.step + 1, last=new, cache=cache, out=out, done=state.done | hit
        )

    return jax.lax.while_loop(cond, body, state)


@jax.jit
def compact(state: DecodeState, keep: jax.Array, valid: jax.Array) -> DecodeState:
    """The state of rows `keep` only (a smaller batch; rows with `valid` False are padding,
    done from the start), their cache from `select_rows`."""
    cache = select_rows(state.cache, keep)
    rows = jax.tree.map(lambda x: x[keep], dataclasses.replace(state, cache={}, step=None))
    return dataclasses.replace(
        rows, step=state.step, cache=constrain_cache(cache), done=rows.done | ~valid
    )


@functools.partial(jax.jit, static_argnames="extra")
def grow(state: DecodeState, extra: int) -> DecodeState:
    """The state with `extra` more empty cache slots per row (`add_slots`)."""
    return dataclasses.replace(state, cache=constrain_cache(add_slots(state.cache, extra)))


@functools.partial(jax.jit, static_argnames="num_layers")
def unstack_layers(params: Params, num_layers: int) -> Params:
    """Scanned parameters (`layers` stacked on a leading axis) as the per-layer tree of the
    same model built with `scan_layers=False` (`layers_0`, `layers_1`, ...)."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    return out


class Engine:
    """The compiled prefill and decode for one architecture, placed on an optional mesh.

    The functions are jitted once at module level and compiled per static configuration
    and shape (jit's own cache), so two Engines of one architecture, e.g. the actor's and
    the critic's, share their programs. On a mesh, host arrays become global arrays (each
    process places only its own shards: multi-host safe) and the calls are traced under the
    mesh, so the model's sharding hints apply.

    unroll_layers: decode with the layers unrolled (the same model with scan_layers=False)
    on per-layer copies of scanned parameters. Inside a scanned layer loop, XLA:CPU copies
    each layer's weights out of the stacked arrays at every step; unrolled, it reads them
    in place. The cost is a copy of the parameters per `generate` call. None (the default):
    `backend.unroll_decode_layers`.
    """

    def __init__(
        self, cfg: ModelConfig, mesh: Mesh | None = None, unroll_layers: bool | None = None
    ):
        if unroll_layers is None:
            unroll_layers = unroll_decode_layers()
        self.cfg = cfg
        self.unstack = cfg.scan_layers and unroll_layers
        self.run_cfg = cfg.replace(scan_layers=False) if self.unstack else cfg
        self.mesh = mesh

    def prepare(self, params: Params) -> Params:
        """The parameters in the layout the compiled functions take (see unroll_layers)."""
        if not self.unstack or "layers" not in params:
            return params
        params = self._run(unstack_layers, params, num_layers=self.cfg.num_layers)
        if self.mesh is not None:
            params = place(params, param_shardings(abstract_params(self.run_cfg), self.mesh))
        return params

    def prefill(self, params: Params, tokens: np.ndarray, token_mask: np.ndarray, fanout: int):
        """Left-padded prompts [P, W] -> `Prefilled`: the cache one row per prompt, logits
        and lengths for P * fanout sample rows."""
        tokens, token_mask = self._place(("batch", "length"), tokens, token_mask)
        return self._run(prefill, params, tokens, token_mask, cfg=self.run_cfg, fanout=fanout)

    def prefill_shared(
        self, params: Params, shared: SharedPrefill, token_mask: np.ndarray, fanout: int
    ):
        """`prefill`'s result for the prompts `token_mask` marks, computed in two blocks
        (see `sampling.prefixes`)."""
        (token_mask,) = self._place(("batch", "length"), token_mask)
        shared = jax.tree.map(lambda x: self._place(("batch",), x)[0], shared)
        return self._run(
            prefill_shared, params, shared, token_mask, cfg=self.run_cfg, fanout=fanout
        )

    def place_knobs(self, knobs: Knobs) -> Knobs:
        """Host knobs as the compiled functions take them: replicated over the mesh."""
        return jax.tree.map(lambda x: self._place((), x)[0], knobs)

    def start(
        self,
        prefilled: Prefilled,
        rows: Rows,
        knobs: Knobs,
        spec: FilterSpec,
        max_new: int,
        slots: int,
    ) -> DecodeState:
        """The decode state after each sample row's first token, with `slots` cache slots
        per row for its tokens; `rows` holds host arrays, placed here, `knobs` come from
        `place_knobs`."""
        rows = jax.tree.map(lambda x: self._place(("batch",), x)[0], rows)
        return self._run(start, prefilled, rows, knobs, spec=spec, max_new=max_new, slots=slots)

    def grow(self, state: DecodeState, extra: int) -> DecodeState:
        """The state with `extra` more cache slots per row (see `grow`)."""
        return self._run(grow, state, extra=extra)

    def decode(
        self,
        params: Params,
        state: DecodeState,
        knobs: Knobs,
        spec: FilterSpec,
        max_new: int,
        live_floor: int = 0,
    ) -> DecodeState:
        """Decode from `state` until every row is done, or at most `live_floor` are live."""
        return self._run(
            decode,
            params,
            state,
            knobs,
            cfg=self.run_cfg,
            spec=spec,
            max_new=max_new,
            live_floor=live_floor,
        )

    def compact(self, state: DecodeState, keep: np.ndarray, valid: np.ndarray) -> DecodeState:
        """The state of rows `keep` only (see `compact`)."""
        keep, valid = self._place(("batch",), keep, valid)
        return self._run(compact, state, keep, valid)

    def fetch(self, out: DecodeOut) -> DecodeOut:
        """Device results as NumPy on this host (gathered across processes on multi-host)."""
        if jax.process_count() == 1:
            return jax.device_get(out)
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(out, tiled=True)

    def _place(self, names: tuple[str, ...], *arrays: np.ndarray) -> list:
        """Host arrays as they go into a call: on the mesh, sharded by their leading axes'
        logical names (or replicated when `names` is empty)."""
        if self.mesh is None:
            return list(arrays)
        sharding = named(self.mesh, *names) if names else NamedSharding(self.mesh, PartitionSpec())
        return [place(np.asarray(a), sharding) for a in arrays]

    def _run(self, fn, *args, **static):
        if self.mesh is None:
            return fn(*args, **static)
        with jax.set_mesh(self.mesh):
            return fn(*args, **static)
