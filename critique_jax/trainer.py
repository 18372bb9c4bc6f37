"""The sharded training engine every training stage shares (critic SFT, RCO, DPCO, actor).

`TrainState` lives on the mesh: parameters by their logical axes, optimizer moments like
their parameters, scalars replicated. `train_step` is one top-level jit; batches are dicts of
[B, ...] arrays sharded by rows, so losses with extra keys (reference log-probs, utilities,
pairs) need no trainer change. A loss is `loss_fn(apply_fn, params, batch) -> (loss, aux)`
with `aux["weight"]` its denominator; gradient accumulation combines microbatches by that
weight, so it equals one step on the whole batch. A non-finite loss or gradient leaves the
state unchanged and stops the run with `NonFiniteLossError`. Mixed precision:
`ModelConfig(param_dtype="float32", dtype="bfloat16")` keeps fp32 master parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from critique_jax import losses
from critique_jax.backend import log_allocator_advice
from critique_jax.checkpoints.train_state import Checkpointer
from critique_jax.config import ConfigError, MeshConfig, OptimConfig, TrainConfig
from critique_jax.metrics import (
    MetricsLogger,
    mfu,
    peak_flops_per_device,
    training_flops_per_token,
)
from critique_jax.models import ModelConfig, Transformer, abstract_params, init_params
from critique_jax.sharding import (
    Rules,
    batch_axes,
    data_parallel_size,
    mesh_context,
    mesh_from_config,
    mesh_processes,
    param_shardings,
    place,
    replicated,
    rules_from_config,
    shard_batch,
)

log = logging.getLogger(__name__)

Params = Any
Batch = dict[str, jax.Array]


# The model: (params, inputs, positions, segment_ids=None) -> float32 logits [B, T, V]; with
# `hidden=True`, (the final hidden states [B, T, E], the head (head params, hidden) -> logits,
# the head's params), so a loss can project the vocabulary a chunk at a time.
ApplyFn = Callable[..., Any]
LossFn = Callable[[ApplyFn, Params, Batch], tuple[jax.Array, dict[str, jax.Array]]]

# Never weight-decayed, by name: scanned layers stack a norm scale into [L, E], so not by ndim.
NO_DECAY_NAMES = ("scale", "bias")


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient of a step was NaN/inf; the state was not updated."""


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Params
    opt_state: optax.OptState
    rng: jax.Array  # uint32 key data: the run's PRNG stream, checkpointed with the state


def learning_rate_schedule(optim: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup (step s < W: lr * (s + 1) / W, so the first update is not zero), then
    cosine / linear decay to lr * end_lr_ratio at `total_steps`, or constant."""
    peak, warmup = optim.learning_rate, optim.warmup_steps
    decay_steps = max(total_steps - warmup, 1)
    if optim.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=optim.end_lr_ratio)
    elif optim.schedule == "linear":
        decay = optax.linear_schedule(peak, peak * optim.end_lr_ratio, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if not warmup:
        return decay
    warm = optax.linear_schedule(peak / warmup, peak, warmup - 1)
    return optax.join_schedules([warm, decay], [warmup])


def weight_decay_mask(params: Params) -> Any:
    """True for parameters that get weight decay: all but norm scales and biases."""

    def decays(path, _) -> bool:
        return getattr(path[-1], "key", getattr(path[-1], "name", None)) not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(optim: OptimConfig) -> optax.GradientTransformation:
    """AdamW (decay scaled by the learning rate, as in PyTorch) after global-norm clipping.

    The learning rate is a hyperparameter in the optimizer state (`optax.inject_hyperparams`)
    that `train_step` sets from its `learning_rate` argument, so the compiled step does not
    depend on the rate, its schedule or the run's length (`STEP_OPTIM_FIELDS`)."""

    def adamw(learning_rate: jax.Array) -> optax.GradientTransformation:
        tx = optax.adamw(
            learning_rate,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=weight_decay_mask,
        )
        if optim.grad_clip > 0:
            tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
        return tx

    return optax.inject_hyperparams(adamw)(learning_rate=optim.learning_rate)


# The optimizer settings a compiled step depends on. The learning rate comes from the host
# at every step (`Trainer.learning_rates`), so another rate, warmup or `train.steps` (a rerun,
# the next stage) reuses the compiled step instead of compiling its own.
STEP_OPTIM_FIELDS = ("weight_decay", "b1", "b2", "eps", "grad_clip")


def step_optim(optim: OptimConfig) -> tuple:
    """`StepSetup.optim`: OptimConfig's fields, with only `STEP_OPTIM_FIELDS` taken from
    `optim` (the others at their defaults, since the step never reads them)."""
    return dataclasses.astuple(
        OptimConfig(**{name: getattr(optim, name) for name in STEP_OPTIM_FIELDS})
    )


def learning_rates(optim: OptimConfig, total_steps: int) -> np.ndarray:
    """The rate of every step 0..total_steps, computed once by one jitted program: the
    compiled float32 arithmetic a schedule inside the step had (evaluated eagerly, op by op,
    some steps' rates round differently)."""
    schedule = jax.vmap(learning_rate_schedule(optim, total_steps))
    return np.asarray(jax.jit(schedule)(np.arange(total_steps + 1, dtype=np.int32)))


def make_apply_fn(model_cfg: ModelConfig) -> ApplyFn:
    model = Transformer(model_cfg)
    # what `Transformer.head` reads: the tied embedding, or the untied output projection
    head_key = "embed" if model_cfg.tie_word_embeddings else "lm_head"

    def head(head_params: Params, x: jax.Array) -> jax.Array:
        return model.apply({"params": head_params}, x, method=Transformer.head)

    def apply_fn(params, inputs, positions, segment_ids=None, *, hidden=False):
        out = model.apply({"params": params}, inputs, positions, segment_ids, hidden=hidden)
        if not hidden:
            return out
        return out, head, {head_key: params[head_key]}

    return apply_fn


def sft_loss_fn(apply_fn: ApplyFn, params: Params, batch: Batch):
    """Next-token cross-entropy on `loss_mask` targets (weight: their count), named for
    profiles; without `segment_ids` the model takes its plain causal (GPU: flash) path."""
    hidden, head, head_params = apply_fn(
        params, batch["inputs"], batch["positions"], batch.get("segment_ids"), hidden=True
    )
    loss, aux = jax.named_call(losses.sft_loss_chunked, name="cross_entropy")(
        head, head_params, hidden, batch["targets"], batch["loss_mask"]
    )
    return loss, {"weight": aux["ntokens"], "accuracy": aux["accuracy"]}


@dataclass(frozen=True)
class StepSetup:
    """What the compiled functions depend on besides shapes: their static argument, so
    jit's own cache shares one program between every Trainer of a setup."""

    model_cfg: ModelConfig
    optim: tuple  # `step_optim` (OptimConfig itself is mutable, so unhashable)
    microbatches: int
    mesh: Mesh
    rules: Rules
    loss_fn: LossFn

    @property
    def tx(self) -> optax.GradientTransformation:
        return make_optimizer(OptimConfig(*self.optim))

    def abstract_state(self) -> TrainState:
        """The state as ShapeDtypeStructs with their shardings, allocating nothing."""
        shapes = jax.eval_shape(lambda r: new_state(self, r), jax.random.key(0))
        params = param_shardings(abstract_params(self.model_cfg), self.mesh, self.rules)
        rep = replicated(self.mesh)
        opt = optax.tree_map_params(
            self.tx, lambda _, s: s, shapes.opt_state, params, transform_non_params=lambda _: rep
        )
        shardings = TrainState(step=rep, params=params, opt_state=opt, rng=rep)
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
        )

    def shardings(self) -> TrainState:
        return jax.tree.map(lambda x: x.sharding, self.abstract_state())


def new_state(setup: StepSetup, rng: jax.Array, params: Params | None = None) -> TrainState:
    """A fresh state of `params`, or of random parameters when None."""
    params = init_params(setup.model_cfg, rng) if params is None else params
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=setup.tx.init(params),
        rng=jax.random.key_data(jax.random.fold_in(rng, 1)),
    )


# Shardings are constrained inside rather than given to jit (in/out_shardings would need
# one jax.jit per setup): inputs already live on theirs (`place`, `shard_batch`).
@functools.partial(jax.jit, static_argnames="setup", donate_argnames="params")
def init_state(rng: jax.Array, params: Params | None = None, *, setup: StepSetup) -> TrainState:
    """`new_state` made directly on its shards; given params are donated."""
    return jax.lax.with_sharding_constraint(new_state(setup, rng, params), setup.shardings())


def _loss_and_grad(setup: StepSetup, params: Params, batch: Batch):
    apply_fn = make_apply_fn(setup.model_cfg)
    (loss, aux), grads = jax.value_and_grad(
        lambda p: setup.loss_fn(apply_fn, p, batch), has_aux=True
    )(params)
    if "weight" not in aux:
        raise KeyError("loss_fn must return aux['weight'] (the loss's denominator)")
    aux = dict(aux)
    weight = jnp.asarray(aux.pop("weight"), jnp.float32)
    return loss.astype(jnp.float32), weight, aux, grads


def _accumulate(setup: StepSetup, params: Params, batch: Batch, shardings: Any):
    """`_loss_and_grad` over contiguous row blocks (a scan), combined by weight."""
    n = setup.microbatches
    micro_rows = NamedSharding(setup.mesh, PartitionSpec(None, batch_axes(setup.rules) or None))

    def split(x):
        x = x.reshape(n, x.shape[0] // n, *x.shape[1:])
        return jax.lax.with_sharding_constraint(x, micro_rows)

    micro = jax.tree.map(split, batch)
    first = jax.tree.map(lambda x: x[0], micro)
    _, _, aux_shape, _ = jax.eval_shape(functools.partial(_loss_and_grad, setup), params, first)
    totals = dict(grads=params, loss=0.0, weight=0.0, aux=aux_shape)
    zeros = jax.tree.map(lambda x: jnp.zeros(getattr(x, "shape", ()), jnp.float32), totals)

    def body(acc, mb):
        loss, weight, aux, grads = _loss_and_grad(setup, params, mb)
        grads = jax.tree.map(lambda a, g: a + weight * g.astype(jnp.float32), acc["grads"], grads)
        grads = jax.lax.with_sharding_constraint(grads, shardings)
        return dict(
            grads=grads,
            loss=acc["loss"] + weight * loss,
            weight=acc["weight"] + weight,
            aux=jax.tree.map(lambda a, v: a + weight * v, acc["aux"], aux),
        ), None

    acc, _ = jax.lax.scan(body, zeros, micro)
    inv = jnp.where(acc["weight"] > 0, 1.0 / acc["weight"], 0.0)
    grads = jax.tree.map(lambda g, p: (g * inv).astype(p.dtype), acc["grads"], params)
    aux = jax.tree.map(lambda a: a * inv, acc["aux"])
    return acc["loss"] * inv, acc["weight"], aux, grads


@functools.partial(jax.jit, static_argnames="setup", donate_argnames="state")
def train_step(state: TrainState, batch: Batch, learning_rate: jax.Array, *, setup: StepSetup):
    """One optimizer update at `learning_rate` (a float32 scalar) -> (state, metrics); a
    non-finite step keeps the old state."""
    shardings = setup.shardings()
    if setup.microbatches == 1:
        loss, weight, aux, grads = _loss_and_grad(setup, state.params, batch)
    else:
        loss, weight, aux, grads = _accumulate(setup, state.params, batch, shardings.params)
    grad_norm = optax.tree.norm(grads)
    hyperparams = dict(state.opt_state.hyperparams, learning_rate=learning_rate)
    opt_state = state.opt_state._replace(hyperparams=hyperparams)
    updates, opt_state = setup.tx.update(grads, opt_state, state.params)
    new = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
    )
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
    metrics = dict(aux, loss=loss, weight=weight, grad_norm=grad_norm, learning_rate=learning_rate)
    new = jax.lax.with_sharding_constraint(new, shardings)
    return new, jax.lax.with_sharding_constraint(metrics, replicated(setup.mesh))


def check_batch_layout(batch_size: int, microbatches: int, mesh: Mesh, rules: Rules) -> None:
    """Reject a batch that cannot be split evenly, before anything compiles."""
    dp = data_parallel_size(mesh, rules)
    if microbatches < 1:
        raise ConfigError(f"train.microbatches={microbatches} must be >= 1.")
    procs = len(mesh_processes(mesh))
    if batch_size % (dp * microbatches) or batch_size % procs:
        multiple = math.lcm(dp * microbatches, procs)
        raise ConfigError(
            f"train.batch_size={batch_size} must be divisible by the data-parallel size "
            f"{dp} (mesh axes {batch_axes(rules)} of mesh {dict(mesh.shape)}) x "
            f"train.microbatches={microbatches} = {dp * microbatches}"
            + (f" and by the mesh's {procs} processes" if procs > 1 else "")
            + f"; use a batch size that is a multiple of {multiple}."
        )


class Trainer:
    """Owns one run: its sharded state, checkpoints (run_dir/checkpoints) and metric logs.

    `params` (or a zero-argument callable, called only when no checkpoint is resumed) are
    placed on their shardings and donated to the state; without them the model starts from
    random weights made on their shards."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        train: TrainConfig,
        optim: OptimConfig,
        mesh_cfg: MeshConfig | None = None,
        *,
        loss_fn: LossFn = sft_loss_fn,
        run_dir: str | Path | None = None,
        params: Params | Callable[[], Params] | None = None,
        seed: int = 0,
        devices: list[jax.Device] | None = None,
        peak_flops: float | None = None,
    ) -> None:
        mesh_cfg = mesh_cfg or MeshConfig()
        self.model_cfg, self.train, self.optim = model_cfg, train, optim
        self.rules = rules_from_config(mesh_cfg.rules)
        self.mesh = mesh_from_config(mesh_cfg, devices)
        check_batch_layout(train.batch_size, train.microbatches, self.mesh, self.rules)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.seed = seed
        if peak_flops is None:
            peak_flops = peak_flops_per_device(self.mesh.devices.flat[0])
        self.peak_flops = peak_flops
        log_allocator_advice()
        self.setup = StepSetup(
            model_cfg, step_optim(optim), train.microbatches, self.mesh, self.rules, loss_fn
        )
        self.learning_rates = learning_rates(optim, train.steps)
        self.param_shardings = param_shardings(abstract_params(model_cfg), self.mesh, self.rules)
        self._params = params
        self.state: TrainState | None = None
        self.checkpointer = None
        if self.run_dir is not None:
            self.checkpointer = Checkpointer(
                self.run_dir / "checkpoints", train.keep_checkpoints, train.async_checkpoint
            )

    @property
    def step(self) -> int:
        """Optimizer updates applied so far (host mirror of state.step)."""
        return 0 if self.state is None else int(self.state.step)

    def init_state(self) -> TrainState:
        """Fresh state from the given params, or random params made on their shards."""
        params = self._params() if callable(self._params) else self._params
        if params is not None:
            params = place(_checked_params(params, self.model_cfg), self.param_shardings)
        with mesh_context(self.mesh, self.rules):
            self.state = init_state(jax.random.key(self.seed), params, setup=self.setup)
        self._params = None
        return self.state

    def resume(self, batches: Any = None) -> int | None:
        """Restore the newest readable checkpoint (and the data iterator's position when
        `batches` has `restore`); returns its step, or None when there is none."""
        if self.checkpointer is None:
            return None
        found = self.checkpointer.restore_latest(self.setup.abstract_state())
        if found is None:
            return None
        step, self.state, data = found
        if data.get("iterator") and batches is not None:
            if hasattr(batches, "restore"):
                batches.restore(data["iterator"])
            else:
                log.warning(
                    "checkpoint step %d saved a data position but this batch iterator "
                    "has no restore(); the data restarts from its beginning",
                    step,
                )
        self._params = None
        log.info("resumed from checkpoint step %d in %s", step, self.checkpointer.directory)
        return step

    def next_rng(self) -> jax.Array:
        """A fresh PRNG key from the run's checkpointed stream (sampling between steps)."""
        key, sub = jax.random.split(jax.random.wrap_key_data(self.state.rng))
        self.state = self.state.replace(
            rng=jax.device_put(jax.random.key_data(key), replicated(self.mesh))
        )
        return sub

    def shard_batch(self, local: dict[str, np.ndarray]) -> Batch:
        """This process's rows of a batch -> global arrays sharded by rows."""
        procs = len(mesh_processes(self.mesh))
        expected = self.train.batch_size // procs
        for k, v in local.items():
            if np.shape(v)[0] != expected:
                raise ValueError(
                    f"batch[{k!r}] has {np.shape(v)[0]} rows but this process must supply "
                    f"batch_size / processes = {self.train.batch_size} / {procs} = {expected}"
                )
        return shard_batch(local, self.mesh, self.rules)

    def _run_step(self, batch: Batch, step: int) -> dict[str, Any]:
        """Dispatch update number `step` (1-based) at its scheduled rate (past the schedule's
        end, its last)."""
        rate = self.learning_rates[min(step - 1, len(self.learning_rates) - 1)]
        rate = jax.device_put(rate, replicated(self.mesh))
        with mesh_context(self.mesh, self.rules):
            self.state, metrics = train_step(self.state, batch, rate, setup=self.setup)
        return metrics

    def train_step(self, local: dict[str, np.ndarray]) -> dict[str, float]:
        """One step on this process's rows; host metrics; raises on a non-finite loss."""
        if self.state is None:
            self.init_state()
        step = self.step + 1  # a non-finite step leaves state.step where it was
        metrics = _to_host(self._run_step(self.shard_batch(local), step))
        self._check_finite(step, metrics)
        return metrics

    def _check_finite(self, step: int, metrics: dict[str, float]) -> None:
        loss, grad_norm = metrics["loss"], metrics["grad_norm"]
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        saved = None if self.checkpointer is None else self.checkpointer.latest_step()
        raise NonFiniteLossError(
            f"non-finite training signal at step {step}: loss={loss}, grad_norm={grad_norm}. "
            f"The parameters were not updated (state stays at step {self.step}); "
            + (f"the last good checkpoint is step {saved}. " if saved is not None else "")
            + "Lower optim.learning_rate or add warmup, check this batch's data, or train "
            "with param_dtype=float32."
        )

    def fit(
        self,
        batches: Iterator[dict[str, np.ndarray]],
        num_steps: int | None = None,
        on_step: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Train until `train.steps` (or `num_steps` more steps), resuming when configured;
        checkpoints every `train.checkpoint_every` steps and at the end. `batches` yields this
        process's rows; its `state()` (if any) is checkpointed with the train state."""
        if self.state is None and not (self.train.resume and self.resume(batches) is not None):
            self.init_state()
        start = self.step
        end = self.train.steps if num_steps is None else min(self.train.steps, start + num_steps)
        if start >= end:
            return []
        every, n_dev = self.train.checkpoint_every, self.mesh.devices.size
        logger = MetricsLogger(self.run_dir, self.train.steps, start, self.train.log_every)
        history: list[dict[str, Any]] = []
        try:
            batch, data = self._next_batch(batches, start + 1)
            shape = batch["inputs"].shape if "inputs" in batch else None
            rows, length = shape or (self.train.batch_size, self.train.seq_len)
            tokens = rows * length
            flops = training_flops_per_token(self.model_cfg, length) * tokens
            last = time.perf_counter()
            for step in range(start + 1, end + 1):
                metrics = self._run_step(batch, step)
                if step < end:  # prepare the next batch while the device computes
                    next_batch, next_data = self._next_batch(batches, step + 1)
                metrics = _to_host(metrics)
                now = time.perf_counter()
                dt, last = now - last, now
                self._check_finite(step, metrics)
                record = dict(
                    metrics,
                    step_time=dt,
                    tokens_per_s=tokens / dt,
                    tokens_per_s_per_device=tokens / dt / n_dev,
                    mfu=mfu(flops, dt, n_dev, self.peak_flops),
                )
                logger.log(step, record)
                history.append({"step": step, **record})
                if on_step is not None:
                    on_step(step, record)
                if self.checkpointer is not None and ((every and step % every == 0) or step == end):
                    self.checkpointer.save(step, self.state, {"iterator": data})
                if step < end:
                    batch, data = next_batch, next_data
        finally:
            logger.close()
            if self.checkpointer is not None:
                self.checkpointer.wait()
        return history

    def _next_batch(self, batches: Iterator, step: int) -> tuple[Batch, dict | None]:
        """The global batch for `step` and the iterator position after it."""
        try:
            local = next(batches)
        except StopIteration:
            raise ValueError(
                f"the batch iterator ran out before step {step} of {self.train.steps}; give "
                "an endless iterator (data.batching.BatchIterator) or fewer train.steps"
            ) from None
        return self.shard_batch(local), batches.state() if hasattr(batches, "state") else None

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()


def _to_host(tree: Any) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def _checked_params(params: Params, cfg: ModelConfig) -> Params:
    """Given params must match the model's tree and shapes; cast to its param dtype."""
    abstract = nn.meta.unbox(abstract_params(cfg))
    want = jax.tree_util.tree_structure(abstract)
    got = jax.tree_util.tree_structure(params)
    if want != got:
        raise ValueError(
            f"params do not match the model's parameter tree:\n got {got}\n want {want}"
        )

    def check(path, p, a):
        if tuple(np.shape(p)) != a.shape:
            raise ValueError(
                f"param {jax.tree_util.keystr(path)} has shape {np.shape(p)}, "
                f"the model expects {a.shape}"
            )
        return p if p.dtype == a.dtype else p.astype(a.dtype)

    return jax.tree_util.tree_map_with_path(check, params, abstract)
