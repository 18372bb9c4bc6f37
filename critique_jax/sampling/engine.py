"""The compiled core: prefill a left-padded prompt block, then decode in a `lax.while_loop`.

Prefill runs the prompt block through `Transformer.extend` once, filling a KV cache of
`prompt bucket` slots. Decode continues `fanout` sample rows from each prompt
(`models.continue_cache`): the prompt's cache is one segment that all its samples read, so
the n samples of a prompt share one prefill and, at every decode step, one read of the
prompt's keys and values; each row writes its new tokens into a segment of its own. Decode
feeds one token per step through the same `extend` (the training graph), writes tokens and
log-probs into preallocated buffers, and stops when every row has hit a stop id or
`max_new_tokens` is reached.

Parameters are an argument of every compiled function, never a constant: the actor and the
critic share one compiled sampler when their architecture matches, and new parameters after
a training step do not recompile.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from critique_jax.models import (
    CACHE_LOGICAL_AXES,
    ModelConfig,
    Transformer,
    abstract_params,
    continue_cache,
    init_cache,
)
from critique_jax.sampling.filters import FilterSpec, row_keys, sample_tokens, token_logprobs
from critique_jax.sampling.prefixes import SharedPrefill
from critique_jax.sharding import constrain, named, param_shardings

Params = Any


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DecodeOut:
    """Device arrays of one call: tokens/logprobs [B, max_new]; lengths, stopped [B]."""

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    stopped: jax.Array


def _repeat(x: jax.Array, fanout: int, axis: int) -> jax.Array:
    return x if fanout == 1 else jnp.repeat(x, fanout, axis=axis)


def _positions(token_mask: jax.Array, start: jax.Array | int = 0) -> jax.Array:
    """Position of each real token of left-padded rows, counting from `start` [B, 1]."""
    return (start + jnp.maximum(jnp.cumsum(token_mask, axis=-1) - 1, 0)).astype(jnp.int32)


def _empty_cache(cfg: ModelConfig, batch: int, length: int):
    cache = init_cache(cfg, batch, length)
    return {k: constrain(v, CACHE_LOGICAL_AXES[k]) for k, v in cache.items()}


def _extend(model: Transformer, params, tokens, positions, token_mask, cache):
    return model.apply(
        {"params": params},
        tokens,
        positions,
        token_mask,
        cache,
        last_only=True,
        method=Transformer.extend,
    )


def _fan_out(cache, logits, token_mask, fanout: int):
    """(prompt cache, last logits [B, V], prompt lengths [B]) with B = prompts x `fanout`:
    the logits and lengths of every sample row; the cache stays one row per prompt."""
    lengths = jnp.sum(token_mask, axis=-1, dtype=jnp.int32)
    return cache, _repeat(logits[:, 0], fanout, 0), _repeat(lengths, fanout, 0)


def _prefill(model: Transformer, fanout: int, params, tokens, token_mask):
    cache = _empty_cache(model.cfg, *tokens.shape)
    logits, cache = _extend(model, params, tokens, _positions(token_mask), token_mask, cache)
    return _fan_out(cache, logits, token_mask, fanout)


def _prefill_shared(
    model: Transformer,
    fanout: int,
    params,
    prefix,
    prefix_mask,
    group,
    suffix,
    suffix_mask,
    source,
    token_mask,
):
    """Prefill the shared prefixes once, each prompt's remainder on a copy of its prefix's
    cache rows, then gather every row into the plain prefill's layout (the prompt right-
    aligned in `width` slots), so decode cannot tell the two apart."""
    width = token_mask.shape[1]
    cache = _empty_cache(model.cfg, prefix.shape[0], prefix.shape[1] + suffix.shape[1])
    _, cache = _extend(model, params, prefix, _positions(prefix_mask), prefix_mask, cache)
    cache = dict(
        k=cache["k"][:, group],
        v=cache["v"][:, group],
        mask=cache["mask"][group],
        index=cache["index"],
    )
    start = jnp.sum(prefix_mask, axis=-1, dtype=jnp.int32)[group][:, None]
    logits, cache = _extend(
        model, params, suffix, _positions(suffix_mask, start), suffix_mask, cache
    )

    def relayout(kv):
        kv = jnp.take_along_axis(kv, source[None, :, None, :, None], axis=3)
        return constrain(kv, CACHE_LOGICAL_AXES["k"])

    cache = dict(
        k=relayout(cache["k"]),
        v=relayout(cache["v"]),
        mask=token_mask,
        index=jnp.int32(width),
    )
    return _fan_out(cache, logits, token_mask, fanout)


def _decode(
    model: Transformer,
    spec: FilterSpec,
    max_new: int,
    params,
    cache,
    logits,
    prompt_lengths,
    prompt_index,
    sample_index,
    active,
    stop_ids,
    seed,
    temperature,
    top_p,
    min_p,
):
    batch = logits.shape[0]
    cache = continue_cache(cache, batch // cache["k"].shape[1], max_new)
    cache = {k: constrain(v, CACHE_LOGICAL_AXES[k]) for k, v in cache.items()}
    keys = row_keys(seed, prompt_index, sample_index)

    def choose(step_logits, step):
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, step)
        tok = sample_tokens(step_keys, step_logits, spec, temperature, top_p, min_p)
        return tok, token_logprobs(step_logits, tok)

    def is_stop(tok):
        return jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)

    tok, lp = choose(logits, 0)
    out_tok = jnp.zeros((batch, max_new), jnp.int32).at[:, 0].set(tok)
    out_lp = jnp.zeros((batch, max_new), jnp.float32).at[:, 0].set(lp)
    stopped = active & is_stop(tok)
    done = ~active | stopped
    lengths = active.astype(jnp.int32)

    def cond(c):
        return (c[0] < max_new) & ~jnp.all(c[6])

    def body(c):
        step, tok, cache, out_tok, out_lp, lengths, done, stopped = c
        positions = (prompt_lengths + step - 1)[:, None]
        step_logits, cache = model.apply(
            {"params": params},
            tok[:, None],
            positions,
            jnp.ones((batch, 1), bool),
            cache,
            method=Transformer.extend,
        )
        new, lp = choose(step_logits[:, 0], step)
        live = ~done
        new = jnp.where(live, new, 0)
        out_tok = jax.lax.dynamic_update_slice(out_tok, new[:, None], (0, step))
        out_lp = jax.lax.dynamic_update_slice(out_lp, jnp.where(live, lp, 0.0)[:, None], (0, step))
        hit = live & is_stop(new)
        return (step + 1, new, cache, out_tok, out_lp, lengths + live, done | hit, stopped | hit)

    carry = (jnp.int32(1), tok, cache, out_tok, out_lp, lengths, done, stopped)
    _, _, _, out_tok, out_lp, lengths, _, stopped = jax.lax.while_loop(cond, body, carry)
    return DecodeOut(out_tok, out_lp, lengths, stopped)


_COMPILED: dict[tuple, Any] = {}


def _global(host: np.ndarray | np.generic, sharding: NamedSharding) -> jax.Array:
    """A host array (identical on every process) as a global array on `sharding`."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def unstack_layers(params: Params, num_layers: int) -> Params:
    """Scanned parameters (`layers` stacked on a leading axis) as the per-layer tree of the
    same model built with `scan_layers=False` (`layers_0`, `layers_1`, ...)."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    return out


class Engine:
    """Compiled prefill and decode for one architecture (and mesh); shapes vary by bucket.

    unroll_layers: decode with the layers unrolled (the same model with scan_layers=False)
    on per-layer copies of scanned parameters. Inside a scanned layer loop, XLA:CPU copies
    each layer's weights out of the stacked arrays at every step, which doubles the memory
    traffic of a decode step; unrolled, it reads them in place (about 2x faster decode at
    batch 1 on CPU). The cost is a copy of the parameters per `generate` call. None (the
    default) unrolls on CPU only.
    """

    def __init__(
        self, cfg: ModelConfig, mesh: Mesh | None = None, unroll_layers: bool | None = None
    ):
        if unroll_layers is None:
            unroll_layers = jax.default_backend() == "cpu"
        self.cfg = cfg
        self.unstack = cfg.scan_layers and unroll_layers
        self.run_cfg = cfg.replace(scan_layers=False) if self.unstack else cfg
        self.mesh = mesh
        self.model = Transformer(self.run_cfg)
        if mesh is not None:
            self.param_shardings = param_shardings(abstract_params(self.run_cfg), mesh)

    def prepare(self, params: Params) -> Params:
        """The parameters in the layout the compiled functions take (see unroll_layers)."""
        if not self.unstack or "layers" not in params:
            return params

        def shardings():
            return (param_shardings(abstract_params(self.cfg), self.mesh),), self.param_shardings

        fn = functools.partial(unstack_layers, num_layers=self.cfg.num_layers)
        return self._call(("unstack",), fn, shardings, params)

    def _call(self, key: tuple, fn, shardings, *args):
        """Run `fn`, jitted once per static `key` and shared by every Engine of the same
        config and mesh (two Samplers of one architecture, e.g. actor and critic, compile
        once). On a mesh, `shardings()` gives (in, out) shardings, host arrays become global
        arrays (each process places only its own shards: multi-host safe), and the call is
        traced under the mesh so the model's sharding hints apply."""
        key = (self.run_cfg, self.mesh, *key)
        if key not in _COMPILED:
            kw: dict[str, Any] = {}
            if self.mesh is not None:
                kw["in_shardings"], kw["out_shardings"] = shardings()
            _COMPILED[key] = (jax.jit(fn, **kw), kw.get("in_shardings"))
        jitted, in_shardings = _COMPILED[key]
        if self.mesh is None:
            return jitted(*args)
        args = [
            _global(a, sh) if isinstance(a, np.ndarray | np.generic) else a
            for a, sh in zip(args, in_shardings, strict=True)
        ]
        with jax.set_mesh(self.mesh):
            return jitted(*args)

    def _named(self, *names: str | None) -> NamedSharding:
        if not names:
            return NamedSharding(self.mesh, PartitionSpec())
        return named(self.mesh, *names)

    def _cache_shardings(self) -> dict[str, NamedSharding]:
        """Shardings of a prefill's cache (no prompt segment)."""
        keys = ("k", "v", "mask", "index")
        return {k: named(self.mesh, *CACHE_LOGICAL_AXES[k]) for k in keys}

    def prefill(
        self,
        params: Params,
        tokens: np.ndarray,
        token_mask: np.ndarray,
        fanout: int,
    ):
        """Left-padded prompts [B, P] -> (cache, last logits, prompt lengths): the cache one
        row per prompt, logits and lengths for B * fanout sample rows."""

        def fn(params, tokens, token_mask):
            return _prefill(self.model, fanout, params, tokens, token_mask)

        def shardings():
            rows = self._named("batch", "length")
            ins = (self.param_shardings, rows, rows)
            return ins, (
                self._cache_shardings(),
                self._named("batch", "vocab"),
                self._named("batch"),
            )

        return self._call(("prefill", fanout), fn, shardings, params, tokens, token_mask)

    def prefill_shared(
        self,
        params: Params,
        shared: SharedPrefill,
        token_mask: np.ndarray,
        fanout: int,
    ):
        """`prefill`'s result for the prompts `token_mask` marks, computed in two blocks
        (see `sampling.prefixes`)."""

        def fn(params, *arrays):
            return _prefill_shared(self.model, fanout, params, *arrays)

        def shardings():
            rows, row = self._named("batch", "length"), self._named("batch")
            ins = (self.param_shardings, rows, rows, row, rows, rows, rows, rows)
            return ins, (
                self._cache_shardings(),
                self._named("batch", "vocab"),
                self._named("batch"),
            )

        arrays = (
            shared.prefix,
            shared.prefix_mask,
            shared.group,
            shared.suffix,
            shared.suffix_mask,
            shared.source,
            token_mask,
        )
        key = ("prefill_shared", fanout)
        return self._call(key, fn, shardings, params, *arrays)

    def decode(
        self,
        params: Params,
        prefilled,
        spec: FilterSpec,
        max_new: int,
        prompt_index: np.ndarray,
        sample_index: np.ndarray,
        active: np.ndarray,
        stop_ids: np.ndarray,
        seed: int,
        temperature: float,
        top_p: float,
        min_p: float,
    ) -> DecodeOut:
        """Decode `max_new` tokens for every sample row of `prefill`'s output."""
        cache, logits, lengths = prefilled

        def fn(params, cache, logits, lengths, *rest):
            return _decode(self.model, spec, max_new, params, cache, logits, lengths, *rest)

        def shardings():
            row, rows, rep = self._named("batch"), self._named("batch", None), self._named()
            cache_sh = self._cache_shardings()
            ins = (
                self.param_shardings,
                cache_sh,
                self._named("batch", "vocab"),
                row,
                row,
                row,
                row,
                rep,
                rep,
                rep,
                rep,
                rep,
            )
            return ins, DecodeOut(rows, rows, row, row)

        return self._call(
            ("decode", spec, max_new),
            fn,
            shardings,
            params,
            cache,
            logits,
            lengths,
            prompt_index,
            sample_index,
            active,
            stop_ids,
            np.int32(seed),
            np.float32(temperature),
            np.float32(top_p),
            np.float32(min_p),
        )

    def fetch(self, out: DecodeOut) -> DecodeOut:
        """Device results as NumPy on this host (gathered across processes on multi-host)."""
        if jax.process_count() == 1:
            return jax.device_get(out)
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(out, tiled=True)
