"""Mesh, logical-axis rules and shardings.

Parameters and activations carry *logical* axis names; one rules table maps them onto the
mesh axes (data, fsdp, tensor). Changing parallelism is a config change, never a code change.

We use the pjit model on purpose: mesh axes are `AxisType.Auto`, shardings of parameters and
batches are explicit at the jit boundary, and activations get `with_sharding_constraint` hints
(`constrain`); the compiler propagates the rest. Explicit-axis (sharding-in-types) meshes
would force every op to agree on shardings, which buys little for a dense decoder.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec, Sharding

from critique_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# Rules for `constrain` set by `mesh_context`. Not flax's `nn.logical_axis_rules`: with those
# set, flax also constrains parameter initializers while checking shapes in `apply`, which
# fails for DenseGeneral's flat-then-reshaped kernels.
_ACTIVATION_RULES: contextvars.ContextVar[tuple | None] = contextvars.ContextVar(
    "activation_rules", default=None
)

# A logical axis maps to the first listed mesh axis not already used by the same array
# (flax's semantics), so activations' "batch" takes data+fsdp and their "embed" falls back
# to replicated, while parameters' "embed" is sharded over fsdp.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("length", None),
    ("cache_length", None),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
)


class MeshError(UserError):
    """A mesh shape that does not fit the devices."""


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes; -1 in one place takes the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise MeshError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
    if shape.count(-1) > 1:
        raise MeshError(f"mesh shape {shape}: at most one axis may be -1")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        if len(devices) % known:
            raise MeshError(f"mesh shape {shape} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise MeshError(
            f"mesh shape {dict(zip(MESH_AXES, shape, strict=True))} needs {int(np.prod(shape))}"
            f" devices but {len(devices)} are available; set mesh.shape so that the product "
            f"equals the device count (use -1 for one axis to fill it)."
        )
    return jax.make_mesh(
        tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def logical_to_spec(names: Sequence[str | None], rules=DEFAULT_RULES) -> PartitionSpec:
    return nn.logical_to_mesh_axes(tuple(names), rules)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Hint an activation's sharding by logical names; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    rules = _ACTIVATION_RULES.get() or nn.get_logical_axis_rules() or DEFAULT_RULES
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))


def param_shardings(boxed_params, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a pytree of `nn.LogicallyPartitioned` (abstract) parameters."""
    specs = nn.get_partition_spec(boxed_params)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def named(mesh: Mesh, *names: str | None, rules=DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, rules))


# --------------------------------------------------------------------------- training additions

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def rules_from_config(overrides: Sequence[Sequence[Any]] | None) -> Rules:
    """`MeshConfig.rules` ([[logical, mesh_axes], ...] from YAML) merged over DEFAULT_RULES.

    Every logical name given in `overrides` replaces all default entries of that name (so a
    YAML `[[embed, null]]` turns FSDP of parameters off); other names keep their defaults.
    """
    if not overrides:
        return DEFAULT_RULES
    rules = []
    for entry in overrides:
        if len(entry) != 2 or not isinstance(entry[0], str):
            raise ValueError(
                f"mesh.rules entry {entry!r} must be [logical_name, mesh_axis | [axes] | null]"
            )
        name, axes = entry
        axes = tuple(axes) if isinstance(axes, list | tuple) else axes
        for axis in axes if isinstance(axes, tuple) else (axes,):
            if axis is not None and axis not in MESH_AXES:
                raise ValueError(
                    f"mesh.rules maps {name!r} to unknown mesh axis {axis!r}; mesh axes are "
                    f"{MESH_AXES}"
                )
        rules.append((name, axes))
    given = {name for name, _ in rules}
    return tuple(rules) + tuple(r for r in DEFAULT_RULES if r[0] not in given)


def mesh_from_config(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh of a `config.MeshConfig` (shape over (data, fsdp, tensor))."""
    return make_mesh(mesh_cfg.shape, devices)


def batch_axes(rules: Rules = DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes that the logical 'batch' axis (rows of a batch) is split over."""
    spec = logical_to_spec(("batch",), rules)[0]
    if spec is None:
        return ()
    return tuple(spec) if isinstance(spec, tuple) else (spec,)


def data_parallel_size(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
    """How many ways the rows of a batch are split: the product of the batch mesh axes."""
    return int(np.prod([mesh.shape[a] for a in batch_axes(rules)], dtype=np.int64))


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Rows (dim 0) over the batch axes, other dims replicated; fits a [B, ...] of any rank."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(rules) or None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _local_rows(sharding: NamedSharding, global_rows: int) -> tuple[int, int]:
    """[start, stop) of the global rows that this process's devices hold."""
    slices = sharding.addressable_devices_indices_map((global_rows,)).values()
    starts = [s[0].start or 0 for s in slices]
    stops = [global_rows if s[0].stop is None else s[0].stop for s in slices]
    return min(starts), max(stops)


def mesh_processes(mesh: Mesh) -> list[int]:
    """The process indices that own devices of `mesh`, in order."""
    return sorted({d.process_index for d in mesh.devices.flat})


def shard_batch(
    local: dict[str, np.ndarray], mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> dict[str, jax.Array]:
    """Assemble each process's share of a batch (its contiguous rows) into global arrays.

    Every array's dim 0 is rows; the k-th process of the mesh holds global rows
    [k * n, (k + 1) * n) for n local rows (what `data.batching.BatchIterator` yields), which
    requires the batch mesh axes to span the processes (the usual layout: tensor
    parallelism inside a host).
    """
    sharding = batch_sharding(mesh, rules)
    n = {k: len(v) for k, v in local.items()}
    rows = next(iter(n.values()))
    if any(v != rows for v in n.values()):
        raise ValueError(f"batch arrays disagree on their number of rows: {n}")
    processes = mesh_processes(mesh)
    rank = processes.index(jax.process_index())
    global_rows = rows * len(processes)
    start, stop = _local_rows(sharding, global_rows)
    if (start, stop) != (rank * rows, (rank + 1) * rows):
        raise ValueError(
            f"process {jax.process_index()} was given {rows} rows but its devices hold global "
            f"rows [{start}, {stop}) of {global_rows}; the batch axes {batch_axes(rules)} of "
            f"mesh {dict(mesh.shape)} must be split across processes (put tensor parallelism "
            "inside a host)."
        )
    return {
        k: jax.make_array_from_process_local_data(
            sharding, np.asarray(v), (global_rows,) + np.shape(v)[1:]
        )
        for k, v in local.items()
    }


def global_from_host(
    batch: dict[str, np.ndarray], mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> dict[str, jax.Array]:
    """A batch that every process holds in full, placed as global arrays (rows sharded)."""
    sharding = batch_sharding(mesh, rules)
    return {k: host_to_global(v, sharding) for k, v in batch.items()}


def host_to_global(host: Any, sharding: Sharding) -> jax.Array:
    """A host array that every process holds in full, as a global array on `sharding`; each
    process only materialises its own slices, so it is multi-host safe."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def place(tree: Any, shardings: Any) -> Any:
    """Put every leaf onto its sharding: jax arrays are resharded on device, host arrays are
    copied shard by shard (`host_to_global`)."""

    def one(x, sharding):
        if isinstance(x, jax.Array):
            return jax.device_put(x, sharding)
        return host_to_global(x, sharding)

    return jax.tree.map(one, tree, shardings)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """`jax.set_mesh(mesh)` plus the rules that the model's `constrain` hints use; trace and
    lower model code inside it."""
    token = _ACTIVATION_RULES.set(tuple(rules))
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _ACTIVATION_RULES.reset(token)
