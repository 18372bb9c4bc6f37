"""Typed configs: dataclasses filled from YAML plus `key=value` overrides, validated strictly.

Every stage declares one dataclass (a subclass of `StageConfig`) built from the sections
below; unknown keys and wrongly typed values are rejected before anything is compiled, with
a message that names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from critique_jax.data.critique_format import CritiqueFormat

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be used as written."""


@dataclass
class ModelSpec:
    """Where a model comes from: a named preset (no download) or an HF checkpoint directory."""

    preset: str | None = None
    path: str | None = None  # HF directory (or a hub name, where a hub is reachable)
    tokenizer: str | None = None  # defaults to `path`
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields: dtype, remat...

    def __post_init__(self) -> None:
        if (self.preset is None) == (self.path is None):
            raise ConfigError("model: give exactly one of `preset` (a name) or `path` (HF dir)")


@dataclass
class MeshConfig:
    shape: tuple[int, int, int] = (-1, 1, 1)  # (data, fsdp, tensor); -1 fills with devices
    rules: list[list[Any]] | None = None  # logical-axis rules overriding sharding.DEFAULT_RULES


@dataclass
class OptimConfig:
    learning_rate: float = 3e-4
    schedule: str = "cosine"  # cosine | linear | constant, after linear warmup
    warmup_steps: int = 0
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.0  # never applied to norms and biases
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 8  # global, in sequences (rows)
    seq_len: int = 512
    microbatches: int = 1  # gradient accumulation
    pack: bool = True  # pack several examples per row (segment ids)
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    async_checkpoint: bool = True
    resume: bool = True


@dataclass
class StageConfig:
    """Fields every stage has."""

    stage: str = "demo"
    run_dir: str = "runs/demo"
    seed: int = 0
    # How critiques are written, prompted for and parsed in this stage: MathCritique's
    # verdict_first, or reason_first (a check before each verdict) for small critics.
    critique_format: CritiqueFormat = "verdict_first"


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise naming the key."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {list(value)}")
            return tuple(
                _coerce(v, a, f"{where}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if (
        tp in (int, str, bool)
        and isinstance(value, tp)
        and not (tp is int and isinstance(value, bool))
    ):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys are errors that list valid ones."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys"
            f"{' under ' + where if where else ''}: {sorted(fields)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config configs/<name>.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b.c=value` overrides (values parsed as YAML: 3, 1e-4, true, [8,1,1], text)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def save_yaml(obj: Any, path: str | Path) -> None:
    from critique_jax.runio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
