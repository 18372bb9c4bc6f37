"""Mesh, logical-axis rules and shardings.

Parameters and activations carry *logical* axis names; one rules table maps them onto the
mesh axes (data, fsdp, tensor). Changing parallelism is a config change, never a code change.

We use the pjit model on purpose: mesh axes are `AxisType.Auto`, shardings of parameters and
batches are explicit at the jit boundary, and activations get `with_sharding_constraint` hints
(`constrain`); the compiler propagates the rest. Explicit-axis (sharding-in-types) meshes
would force every op to agree on shardings, which buys little for a dense decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

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


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes; -1 in one place takes the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(
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
    rules = nn.get_logical_axis_rules() or DEFAULT_RULES
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))


def param_shardings(boxed_params, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a pytree of `nn.LogicallyPartitioned` (abstract) parameters."""
    specs = nn.get_partition_spec(boxed_params)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def named(mesh: Mesh, *names: str | None, rules=DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, rules))
