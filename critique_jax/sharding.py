"""Mesh, logical-axis rules and shardings.

Parameters and activations carry *logical* axis names; one rules table maps them onto the mesh
axes (data, fsdp, tensor), so changing parallelism is a config change. The pjit model on
purpose: `AxisType.Auto` axes, explicit shardings of parameters and batches, and
`with_sharding_constraint` hints on activations (`constrain`); the compiler does the rest.
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
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# Rules for `constrain` set by `mesh_context`. Not flax's `nn.logical_axis_rules`: with those
# set, flax also constrains parameter initializers while checking shapes in `apply`, which
# fails for DenseGeneral's flat-then-reshaped kernels.
_ACTIVATION_RULES: contextvars.ContextVar[tuple | None] = contextvars.ContextVar(
    "activation_rules", default=None
)

# A logical axis maps to the first listed mesh axis not already used by the same array
# (flax's semantics), so activations' "batch" takes data+fsdp and their "embed" falls back
# to replicated, while parameters' "embed" is sharded over fsdp.
DEFAULT_RULES: Rules = (
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


def mesh_from_config(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh of a `config.MeshConfig`."""
    return make_mesh(mesh_cfg.shape, devices)


def rules_from_config(overrides: Sequence[Sequence[Any]] | None) -> Rules:
    """`MeshConfig.rules` ([[logical, mesh_axes], ...] from YAML) over DEFAULT_RULES: a name
    given replaces all its defaults (`[[embed, null]]` turns FSDP of parameters off)."""
    rules = []
    for entry in overrides or ():
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


def logical_to_spec(names: Sequence[str | None], rules=DEFAULT_RULES) -> PartitionSpec:
    return nn.logical_to_mesh_axes(tuple(names), rules)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Hint an activation's sharding by logical names; a no-op outside a mesh context."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    rules = _ACTIVATION_RULES.get() or nn.get_logical_axis_rules() or DEFAULT_RULES
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """`jax.set_mesh(mesh)` plus the rules of the model's `constrain` hints: trace under it."""
    token = _ACTIVATION_RULES.set(tuple(rules))
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _ACTIVATION_RULES.reset(token)


def param_shardings(boxed_params, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a pytree of `nn.LogicallyPartitioned` (abstract) parameters."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_params), mesh, rules)


def named(mesh: Mesh, *names: str | None, rules=DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_axes(rules: Rules = DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes that the logical 'batch' axis (rows of a batch) is split over."""
    spec = logical_to_spec(("batch",), rules)[0]
    return () if spec is None else tuple(spec) if isinstance(spec, tuple) else (spec,)


def data_parallel_size(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
    """How many ways the rows of a batch are split: the product of the batch mesh axes."""
    return int(np.prod([mesh.shape[a] for a in batch_axes(rules)], dtype=np.int64))


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Rows (dim 0) over the batch axes, other dims replicated; fits a [B, ...] of any rank."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(rules) or None))


def mesh_processes(mesh: Mesh) -> list[int]:
    """The process indices that own devices of `mesh`, in order."""
    return sorted({d.process_index for d in mesh.devices.flat})


def shard_batch(
    local: dict[str, np.ndarray], mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> dict[str, jax.Array]:
    """Each process's contiguous rows of a batch (the k-th process of the mesh holds global
    rows [k * n, (k + 1) * n), as `data.batching.BatchIterator` yields them) as global arrays;
    the batch mesh axes must span the processes (tensor parallelism inside a host)."""
    sharding = batch_sharding(mesh, rules)
    n = {k: len(v) for k, v in local.items()}
    rows = next(iter(n.values()))
    if any(v != rows for v in n.values()):
        raise ValueError(f"batch arrays disagree on their number of rows: {n}")
    processes = mesh_processes(mesh)
    rank = processes.index(jax.process_index())
    global_rows = rows * len(processes)
    held = sharding.addressable_devices_indices_map((global_rows,)).values()
    start = min(s[0].start or 0 for s in held)
    stop = max(global_rows if s[0].stop is None else s[0].stop for s in held)
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


def host_to_global(host: Any, sharding: Sharding) -> jax.Array:
    """A host array that every process holds in full, as a global array on `sharding`; each
    process only materialises its own slices, so it is multi-host safe."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def place(tree: Any, shardings: Any) -> Any:
    """Every leaf on its sharding (one `Sharding` for all leaves, or a matching tree): jax
    arrays are resharded on device, host arrays copied shard by shard (`host_to_global`)."""
    if isinstance(shardings, Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def one(x, sharding):
        if isinstance(x, jax.Array):
            return jax.device_put(x, sharding)
        return host_to_global(x, sharding)

    return jax.tree.map(one, tree, shardings)
