"""Hugging Face checkpoint import and export.

Import reads config.json and (sharded) safetensors tensor by tensor with safetensors' own
reader and places each parameter straight onto its target sharding, so a large checkpoint never
needs a full extra host copy. Export writes safetensors + config.json that transformers loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy for safetensors' numpy reader
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import SingleDeviceSharding
from safetensors import SafetensorError, safe_open

from critique_jax.errors import UserError
from critique_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig, RopeScaling
from critique_jax.models.transformer import abstract_params
from critique_jax.sharding import host_to_global


class CheckpointFormatError(UserError):
    """An HF directory or tensor that cannot be mapped onto the model."""


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """Map an HF config.json dict onto ModelConfig (overrides: dtype, scan_layers, remat...)."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointFormatError(
            f"model_type {model_type!r} is not supported; critique_jax covers "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5, Qwen3)."
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointFormatError(f"hidden_act {hf['hidden_act']!r} unsupported (only silu).")
    if hf.get("mlp_bias"):
        raise CheckpointFormatError("mlp_bias=true is not supported.")
    if hf.get("use_sliding_window") and model_type in ("qwen2", "qwen3"):
        raise CheckpointFormatError("Qwen use_sliding_window=true is not supported.")
    rope = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    rope = {**legacy, **rope}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise CheckpointFormatError(
            f"rope type {rope_type!r} is not supported (default, linear, llama3 are)."
        )
    scaling = RopeScaling(
        rope_type=rope_type,
        factor=float(rope.get("factor", 1.0)),
        low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(rope.get("original_max_position_embeddings", 8192)),
    )
    heads = hf["num_attention_heads"]
    attention_bias = bool(hf.get("attention_bias", False))
    eos = hf.get("eos_token_id")
    fields = dict(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        rope_scaling=scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or (model_type != "mistral" and attention_bias),
        o_bias=model_type in ("llama", "qwen3") and attention_bias,
        qk_norm=model_type == "qwen3",
        sliding_window=hf.get("sliding_window") if model_type == "mistral" else None,
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
    )
    return ModelConfig(**{**fields, **overrides})


# config.json keys that are ModelConfig fields of the same name, and those renamed.
_SAME_NAMES = "model_type vocab_size hidden_size intermediate_size head_dim rms_norm_eps rope_theta"
_SAME_NAMES += " tie_word_embeddings max_position_embeddings"
_RENAMED = {
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
}


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """config.json fields (legacy rope keys, which transformers 4.x and 5.x both read)."""
    out: dict[str, Any] = {name: getattr(cfg, name) for name in _SAME_NAMES.split()}
    out.update({hf: getattr(cfg, ours) for hf, ours in _RENAMED.items()})
    out.update(
        architectures=[f"{cfg.model_type.capitalize()}ForCausalLM"],
        hidden_act="silu",
        torch_dtype=cfg.param_dtype,
    )
    if cfg.model_type in ("llama", "qwen3"):
        out["attention_bias"] = cfg.qkv_bias
    if cfg.model_type == "mistral":
        out["sliding_window"] = cfg.sliding_window
    rs = cfg.rope_scaling
    if rs.rope_type == "llama3":
        out["rope_scaling"] = dataclasses.asdict(rs)
    elif rs.rope_type != "default":
        out["rope_scaling"] = dict(rope_type=rs.rope_type, factor=rs.factor)
    if cfg.bos_token_id is not None:
        out["bos_token_id"] = cfg.bos_token_id
    if cfg.eos_token_id is not None:
        eos = cfg.eos_token_id
        out["eos_token_id"] = list(eos) if isinstance(eos, tuple) else eos
    return out


class SafetensorsIndex:
    """All tensors of a checkpoint directory (sharded or not), each file opened once by
    safetensors' own reader, which checks the header against the file before any tensor is
    read; `get` then copies one tensor out of the memory map."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        index = directory / "model.safetensors.index.json"
        if index.exists():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()
            ):
                raise CheckpointFormatError(
                    f"{index} has no weight_map of tensor name -> file; re-export the "
                    "checkpoint (or delete the index when there is one model.safetensors)"
                )
            files = sorted(set(weight_map.values()))
        elif (directory / "model.safetensors").exists():
            files = ["model.safetensors"]
        else:
            found = sorted(p.name for p in directory.iterdir())
            hint = (
                " It has PyTorch .bin weights: convert them to safetensors first "
                "(transformers: model.save_pretrained(dir, safe_serialization=True))."
                if any(n.endswith(".bin") for n in found)
                else ""
            )
            raise CheckpointFormatError(
                f"{directory} holds no model.safetensors or model.safetensors.index.json "
                f"(found: {found[:10]}).{hint}"
            )
        self.tensors: dict[str, Path] = {}
        self._files: dict[Path, Any] = {}
        for name in files:
            path = directory / name
            if not path.is_file():
                raise CheckpointFormatError(
                    f"{path} is missing but model.safetensors.index.json lists it; "
                    "copy the whole checkpoint directory again"
                )
            self._files[path] = _open_safetensors(path)
            self.tensors.update(dict.fromkeys(self._files[path].keys(), path))

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def get(self, key: str) -> np.ndarray:
        file = self._files[self.tensors[key]]
        dtype = file.get_slice(key).get_dtype()
        if dtype not in _FLOAT_DTYPES:
            raise CheckpointFormatError(
                f"tensor {key} in {self.tensors[key]} has dtype {dtype}; critique_jax reads "
                f"float weights ({', '.join(_FLOAT_DTYPES)}): dequantise the checkpoint first"
            )
        return file.get_tensor(key)


_FLOAT_DTYPES = ("F32", "BF16", "F16", "F64")

# What safetensors' refusal of a file (its message, less its common prefix) means for the user.
_REFUSALS = (
    ("header too small", "it has {size} bytes (empty or truncated)"),
    ("header too large", "its header claims more than 100 MB (a foreign or damaged file)"),
    ("invalid header length", "its header claims more than its {size} bytes (truncated)"),
    ("incomplete metadata", "its tensors do not fill its {size} bytes exactly (truncated)"),
    ("invalid UTF-8", "its header is not JSON (a foreign or damaged file)"),
    ("invalid JSON", "its header does not describe tensors ({reason})"),
)


def _open_safetensors(path: Path) -> Any:
    """safetensors' reader of `path`; a file it refuses (empty, truncated, foreign) is a
    one-line `CheckpointFormatError` naming the file, what is wrong and the fix."""
    try:
        return safe_open(str(path), framework="numpy")
    except SafetensorError as e:
        reason = str(e).removeprefix("Error while deserializing header: ")
        problem = next(
            (text for prefix, text in _REFUSALS if reason.startswith(prefix)),
            "safetensors refuses it ({reason})",
        )
        problem = problem.format(size=path.stat().st_size, reason=reason)
        raise CheckpointFormatError(
            f"{path} is not a valid safetensors file: {problem}; "
            "re-export it, or download or copy it again"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or `CheckpointFormatError` naming the file and the spot."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointFormatError(f"{path} is not UTF-8 text ({e.reason})") from e
    except json.JSONDecodeError as e:
        raise CheckpointFormatError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
            "restore it from the original checkpoint"
        ) from e
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


# (our path inside a layer, its HF name inside model.layers.{i}, the config flag it needs)
LAYER_TENSORS = (
    ("attn/q/kernel", "self_attn.q_proj.weight", None),
    ("attn/k/kernel", "self_attn.k_proj.weight", None),
    ("attn/v/kernel", "self_attn.v_proj.weight", None),
    ("attn/q/bias", "self_attn.q_proj.bias", "qkv_bias"),
    ("attn/k/bias", "self_attn.k_proj.bias", "qkv_bias"),
    ("attn/v/bias", "self_attn.v_proj.bias", "qkv_bias"),
    ("attn/o/kernel", "self_attn.o_proj.weight", None),
    ("attn/o/bias", "self_attn.o_proj.bias", "o_bias"),
    ("attn/q_norm/scale", "self_attn.q_norm.weight", "qk_norm"),
    ("attn/k_norm/scale", "self_attn.k_norm.weight", "qk_norm"),
    ("mlp/gate/kernel", "mlp.gate_proj.weight", None),
    ("mlp/up/kernel", "mlp.up_proj.weight", None),
    ("mlp/down/kernel", "mlp.down_proj.weight", None),
    ("input_norm/scale", "input_layernorm.weight", None),
    ("post_attn_norm/scale", "post_attention_layernorm.weight", None),
)


def param_entries(cfg: ModelConfig) -> Iterator[tuple[str, list[str]]]:
    """(our param path, the HF tensor names stacked into it), in file order."""
    yield "embed/embedding", ["model.embed_tokens.weight"]
    for ours, hf, flag in LAYER_TENSORS:
        if flag is not None and not getattr(cfg, flag):
            continue
        names = [f"model.layers.{i}.{hf}" for i in range(cfg.num_layers)]
        if cfg.scan_layers:
            yield f"layers/{ours}", names
        else:
            yield from ((f"layers_{i}/{ours}", [name]) for i, name in enumerate(names))
    yield "final_norm/scale", ["model.norm.weight"]
    if not cfg.tie_word_embeddings:
        yield "lm_head/kernel", ["lm_head.weight"]


def _hf_shape(ours: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """HF's shape of one layer's tensor: a kernel is a [out, in] matrix (o_proj's input is
    our (heads, head_dim)), a bias is flat, the embedding and norms keep their shape."""
    if ours.endswith("kernel"):
        k = 2 if ours.endswith("attn/o/kernel") else 1
        return (math.prod(shape[k:]), math.prod(shape[:k]))
    return (math.prod(shape),) if ours.endswith("bias") else tuple(shape)


def _to_ours(ours: str, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return (w.T if ours.endswith("kernel") else w).reshape(shape)


def _to_hf(ours: str, w: np.ndarray) -> np.ndarray:
    hf = _hf_shape(ours, w.shape)
    return w.reshape(hf[::-1]).T if ours.endswith("kernel") else w.reshape(hf)


def read_hf_config(path: str | Path) -> dict[str, Any]:
    path = resolve_checkpoint_dir(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointFormatError(
            f"{path} is not a Hugging Face checkpoint directory: config.json is missing. "
            "Point --model/model.path at a directory saved by transformers' save_pretrained."
        )
    return _read_json(cfg_file)


def looks_like_hub_id(path: str | Path) -> bool:
    """`org/name` with no local meaning: not absolute, not ./ or ~, and `org` is not a local
    directory (so a missing `runs/sft/hf` or `runs/x` is reported missing, not fetched)."""
    text = str(path)
    if text.count("/") != 1 or text.startswith((".", "/", "~")) or text.endswith("/"):
        return False
    org, name = text.split("/")
    return bool(org and name) and not Path(org).exists()


HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def resolve_checkpoint_dir(path: str | Path, what: str = "checkpoint directory") -> Path:
    """A local directory, or a hub repo id downloaded to the HF cache (needs network)."""
    if not str(path).strip():
        raise CheckpointFormatError(f"the {what} path is empty; give an HF {what}")
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise CheckpointFormatError(f"{p} is a file; give the {what}.")
    if looks_like_hub_id(path):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(path), allow_patterns=HUB_FILES))
        except Exception as e:  # noqa: BLE001 - any hub failure means the same fix
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            raise CheckpointFormatError(
                f"{path} is not a local directory and could not be fetched from the hub "
                f"({reason}). Download it elsewhere and pass the local directory."
            ) from None
    raise CheckpointFormatError(
        f"{what} {p} does not exist"
        + (f" (relative to {Path.cwd()})" if not p.is_absolute() else "")
        + "; check the path, or train the stage that writes it first."
    )


def load_hf(path: str | Path, shardings: Any = None, **overrides: Any) -> tuple[ModelConfig, dict]:
    """Read an HF checkpoint into (ModelConfig, params). `shardings`: a pytree of Shardings
    matching the params, or a callable cfg -> such a pytree; each tensor is placed directly
    onto its shards. Default: the first device."""
    directory = resolve_checkpoint_dir(path)
    cfg = _config_from_file(directory, overrides)
    tensors = SafetensorsIndex(directory)
    abstract = flatten_dict(nn.meta.unbox(abstract_params(cfg)), sep="/")
    if callable(shardings):
        shardings = shardings(cfg)
    if shardings is not None:
        shardings = flatten_dict(shardings, sep="/")
    params: dict = {}
    for ours, names in param_entries(cfg):
        target = abstract[ours]
        stacked = ours.startswith("layers/")  # scanned layers: [L, ...], also for L = 1
        one = target.shape[1:] if stacked else target.shape
        hf_shape = _hf_shape(ours, one)
        parts = []
        for name in names:
            if name not in tensors:
                raise CheckpointFormatError(
                    f"tensor {name} is missing from {directory} (needed for {ours} of a "
                    f"{cfg.model_type} model); the checkpoint does not match its config.json."
                )
            raw = tensors.get(name)
            if tuple(raw.shape) != hf_shape:
                raise CheckpointFormatError(
                    f"tensor {name} has shape {tuple(raw.shape)} but config.json implies "
                    f"{hf_shape}; the checkpoint and its config.json disagree."
                )
            value = _to_ours(ours, raw, one).astype(cfg.jnp_param_dtype)
            _check_finite(value, name, tensors.tensors[name])
            parts.append(value)
        host = np.stack(parts) if stacked else parts[0]
        sharding = SingleDeviceSharding(jax.devices()[0]) if shardings is None else shardings[ours]
        params[ours] = host_to_global(host, sharding)
    return cfg, unflatten_dict(params, sep="/")


def _config_from_file(directory: Path, overrides: dict[str, Any]) -> ModelConfig:
    """config_from_hf of directory/config.json; a missing or wrongly typed field is a
    `CheckpointFormatError` naming the file, a bad override one naming model.overrides."""
    where = directory / "config.json"
    hf = read_hf_config(directory)
    try:
        cfg = config_from_hf(hf)
    except CheckpointFormatError as e:
        raise CheckpointFormatError(f"{where}: {e}") from None
    except KeyError as e:
        raise CheckpointFormatError(
            f"{where} lacks the field {e.args[0]!r}; restore it from the original checkpoint"
        ) from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise CheckpointFormatError(
            f"{where} has a value of the wrong type or range ({type(e).__name__}: {e}); "
            "restore it from the original checkpoint"
        ) from None
    if not overrides:
        return cfg
    try:
        return config_from_hf(hf, **overrides)
    except (TypeError, ValueError) as e:
        raise CheckpointFormatError(
            f"model.overrides {overrides} do not apply to {where} ({e}); valid keys are "
            "ModelConfig fields (dtype, param_dtype, scan_layers, remat, ...)"
        ) from None


def _check_finite(value: np.ndarray, name: str, path: Path) -> None:
    finite = np.isfinite(value)
    if not finite.all():
        bad = int(value.size - np.count_nonzero(finite))
        raise CheckpointFormatError(
            f"tensor {name} in {path} has {bad} non-finite values (NaN/inf) of {value.size}; "
            "the weights are damaged or training diverged: export them again from a good "
            "checkpoint"
        )


def save_hf(
    cfg: ModelConfig,
    params: dict,
    out_dir: str | Path,
    tokenizer: Any | None = None,
    max_shard_bytes: int = 4 * 1024**3,
) -> Path:
    """Write params as an HF directory transformers loads; atomic (temp dir, then rename)."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        shards: list[dict[str, np.ndarray]] = [{}]
        size = 0
        flat = flatten_dict(params, sep="/")
        for ours, names in param_entries(cfg):
            value = _gather(flat[ours])
            for i, name in enumerate(names):
                layer = value[i] if ours.startswith("layers/") else value
                tensor = np.ascontiguousarray(_to_hf(ours, layer))
                if size + tensor.nbytes > max_shard_bytes and shards[-1]:
                    shards.append({})
                    size = 0
                shards[-1][name] = tensor
                size += tensor.nbytes
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map, total = {}, 0
            for k, shard in enumerate(shards):
                fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata={"format": "pt"})
                weight_map.update({name: fname for name in shard})
                total += sum(t.nbytes for t in shard.values())
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
            )
        (tmp / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _gather(x: jax.Array) -> np.ndarray:
    """Full host copy of one parameter (all processes take part on multi-host)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))
