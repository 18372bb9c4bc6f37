"""Typed configs: dataclasses filled from YAML plus `key=value` overrides, validated strictly.

Every stage declares one dataclass (a subclass of `StageConfig`) built from the sections
below; unknown keys and wrongly typed values are rejected before anything is compiled, with
a message that names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from critique_jax.data.critique_format import CritiqueFormat
from critique_jax.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config file or override that cannot be used as written."""


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, lt=None, **kw):
    """A dataclass field with a range (`ge` <=, `gt` <, `lt` >): checked by `check_ranges`
    for every config built by `from_dict` (with the key's full name) and in `__post_init__`
    of the sections that call it."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "lt": lt, **kw})


def _range_text(meta: dict[str, Any]) -> str:
    parts = []
    if meta.get("gt") is not None:
        parts.append(f"> {meta['gt']}")
    if meta.get("ge") is not None:
        parts.append(f">= {meta['ge']}")
    if meta.get("lt") is not None:
        parts.append(f"< {meta['lt']}")
    return " and ".join(parts)


def check_ranges(cls: type, values: dict[str, Any], where: str = "") -> None:
    """Raise `ConfigError` naming `where.key` for a value outside its field's range (numbers
    must also be finite), or a `choices` field given something else."""
    for f in dataclasses.fields(cls):
        if f.name not in values or not f.metadata:
            continue
        value, meta = values[f.name], f.metadata
        key = f"{where}.{f.name}" if where else f.name
        if "choices" in meta:
            if value not in meta["choices"]:
                raise ConfigError(f"{key}={value!r}: choose one of {list(meta['choices'])}")
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        ok = math.isfinite(value)
        ok = ok and (meta.get("ge") is None or value >= meta["ge"])
        ok = ok and (meta.get("gt") is None or value > meta["gt"])
        ok = ok and (meta.get("lt") is None or value < meta["lt"])
        if not ok:
            hint = f" ({meta['hint']})" if meta.get("hint") else ""
            raise ConfigError(
                f"{key}={value!r} is out of range: it must be {_range_text(meta)}"
                f"{' and finite' if not math.isfinite(value) else ''}{hint}; set {key} to a "
                "value in range"
            )


def _check_self(obj: Any, where: str) -> None:
    check_ranges(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, where)


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
    learning_rate: float = bounded(3e-4, gt=0, hint="a negative rate trains by gradient ascent")
    # cosine | linear | constant, after linear warmup
    schedule: str = bounded("cosine", choices=("cosine", "linear", "constant"))
    warmup_steps: int = bounded(0, ge=0)
    end_lr_ratio: float = bounded(0.1, ge=0)
    weight_decay: float = bounded(0.0, ge=0)  # never applied to norms and biases
    b1: float = bounded(0.9, ge=0, lt=1)
    b2: float = bounded(0.95, ge=0, lt=1)
    eps: float = bounded(1e-8, gt=0)
    grad_clip: float = bounded(1.0, ge=0, hint="0 turns clipping off")

    def __post_init__(self) -> None:
        _check_self(self, "optim")


@dataclass
class TrainConfig:
    steps: int = bounded(100, ge=0)
    batch_size: int = bounded(8, ge=1)  # global, in sequences (rows)
    seq_len: int = bounded(512, ge=1)
    microbatches: int = bounded(1, ge=1)  # gradient accumulation
    pack: bool = True  # pack several examples per row (segment ids)
    log_every: int = bounded(10, ge=1)
    checkpoint_every: int = bounded(0, ge=0, hint="0 saves only at the end")
    keep_checkpoints: int = bounded(2, ge=1)
    async_checkpoint: bool = True
    resume: bool = True

    def __post_init__(self) -> None:
        _check_self(self, "train")


@dataclass
class StageConfig:
    """Fields every stage has."""

    stage: str = "demo"
    run_dir: str = "runs/demo"
    seed: int = bounded(0, ge=0, lt=2**32, hint="numpy and JAX seeds are unsigned 32-bit")
    # A rerun on a run_dir made with other settings or inputs stops (runio.check_resume);
    # overwrite=true moves that run's files aside to <run_dir>.replaced-<time> and starts fresh.
    overwrite: bool = False
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
    name = getattr(tp, "__name__", tp)
    if value is None:
        raise ConfigError(f"{where} has no value (`{where}=` or null); give it a {name} value")
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


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
    check_ranges(cls, kwargs, where)
    if "run_dir" in kwargs and issubclass(cls, StageConfig) and not kwargs["run_dir"].strip():
        raise ConfigError("run_dir is empty; set run_dir to the directory this run writes into")
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that rejects a key given twice in one mapping (PyYAML keeps the last one
    silently, dropping the first block)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {seen[key].line + 1}); "
                    "keep one of them",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: 'line N: problem'."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())


def parse_yaml(text: str) -> Any:
    """YAML -> data, like yaml.safe_load, but a duplicate key is an error."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; pass --config configs/<name>.yaml")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config configs/<name>.yaml")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e.reason})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from e
    if data is None:
        raise ConfigError(
            f"config file {path} is empty; give at least `stage:` and its sections "
            "(see configs/*.yaml), or drop --config to run the demo"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def apply_overrides(
    data: dict[str, Any], overrides: list[str], cls: type | None = None
) -> dict[str, Any]:
    """`a.b.c=value` overrides (values parsed as YAML: 3, 1e-4, true, [8,1,1], text).

    An override changes one value and keeps its neighbours: where `data` has no `a` or `a.b`
    section, it is first filled with the default of dataclass `cls` for that section (so
    `base.train.steps=40` keeps the demo's base batch size, not TrainConfig's)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key; write key.subkey=value")
        node, section = data, cls
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = _section_default(section, p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node, section = node[p], _field_type(section, p)
        try:
            node[parts[-1]] = parse_yaml(raw)
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)})"
            ) from e
    return data


def _field(cls: type | None, name: str) -> dataclasses.Field | None:
    if cls is None or not dataclasses.is_dataclass(cls):
        return None
    return next((f for f in dataclasses.fields(cls) if f.name == name), None)


def _field_type(cls: type | None, name: str) -> type | None:
    found = _field(cls, name)
    if found is None:
        return None
    hint = typing.get_type_hints(cls).get(name)
    return hint if dataclasses.is_dataclass(hint) else None


def _section_default(cls: type | None, name: str) -> Any:
    """The default of dataclass field `cls.name` as plain data (None if it has none)."""
    found = _field(cls, name)
    if found is None:
        return None
    if found.default_factory is not dataclasses.MISSING:
        return to_dict(found.default_factory())
    return None if found.default is dataclasses.MISSING else to_dict(found.default)


def save_yaml(obj: Any, path: str | Path) -> None:
    from critique_jax.runio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
