"""Training FLOPs, MFU, and the run's metric sinks (JSONL, TensorBoard, console progress).

FLOP formula (per trained token, forward + backward = 3x forward):

    flops/token = 6 * N_matmul + 6 * L * H * D * T

* N_matmul: parameters that take part in a matmul. That is every parameter except the input
  embedding table when it is untied (a lookup costs no FLOPs); a tied table is counted once,
  as the LM head. Norm scales and biases are counted too (negligible).
* attention: per layer and sequence the forward pass does QK^T and AV, 2 * T^2 * H * D
  multiply-adds each, i.e. 4 * T^2 * H * D FLOPs, so 12 * L * H * D * T per trained token.
  We count *causal* attention, half of that (6 * L * H * D * T): only the lower triangle is
  useful work, so MFU does not reward computing masked scores (MaxText makes the same
  choice; PaLM's appendix counts the full square). T is the row length; for packed rows,
  whose segments are shorter than T, this is an upper bound of the useful attention work.

MFU = achieved FLOP/s per device / peak dense bf16 FLOP/s of the device, from a small table
by `device_kind`; unknown devices (and CPUs) give None unless a peak is passed explicitly.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import jax

from critique_jax.models.config import ModelConfig
from critique_jax.runio import atomic_write_jsonl, read_jsonl, this_process_writes

logger = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device (one chip / one GPU), from the vendors' data sheets.
# Matched by substring of `jax.Device.device_kind`, first hit wins (more specific first).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v6 lite", 918e12),  # Trillium / v6e
    ("TPU v6e", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
    ("GB200", 2500e12),
    ("B200", 2250e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
)


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """FLOPs of one forward+backward per trained token (see the module docstring)."""
    n_matmul = cfg.num_params()
    if not cfg.tie_word_embeddings:
        n_matmul -= cfg.vocab_size * cfg.hidden_size
    attention = 6 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 6.0 * n_matmul + attention


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of `device` (default: the first device), None if unknown."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return None
    kind = device.device_kind
    for name, peak in PEAK_BF16_FLOPS:
        if name.lower() in kind.lower():
            return peak
    logger.warning(
        "no peak FLOP/s known for device kind %r: MFU is not reported; pass peak_flops to set one",
        kind,
    )
    return None


def mfu(
    flops_per_step: float, step_time: float, num_devices: int, peak_per_device: float | None
) -> float | None:
    if peak_per_device is None or step_time <= 0:
        return None
    return flops_per_step / (step_time * num_devices * peak_per_device)


class MetricsLogger:
    """Per-step metrics to run_dir/metrics.jsonl, TensorBoard, and a tqdm bar with ETA.

    Only process 0 writes (`enabled` defaults to that). On resume from step k, records of
    steps after k (written before the run was killed) are dropped from the JSONL and
    TensorBoard purges its events after k, so each step appears once.
    """

    def __init__(
        self,
        run_dir: str | Path | None,
        total_steps: int,
        initial_step: int = 0,
        log_every: int = 10,
        enabled: bool | None = None,
        tensorboard: bool = True,
    ) -> None:
        from tqdm.auto import tqdm

        self.enabled = this_process_writes() if enabled is None else enabled
        self.log_every = max(log_every, 1)
        self.path = None if run_dir is None else Path(run_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        if self.enabled and self.path is not None:
            self._drop_after(initial_step)
            self._file = self.path.open("a")
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(
                    str(Path(run_dir) / "tensorboard"),
                    purge_step=initial_step + 1 if initial_step else None,
                )
        self._bar = tqdm(
            total=total_steps,
            initial=initial_step,
            disable=not self.enabled,
            dynamic_ncols=True,
            desc="train",
            unit="step",
        )

    def _drop_after(self, step: int) -> None:
        if not self.path.exists():
            return
        text = self.path.read_text()
        records = list(read_jsonl(self.path))
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) != len(records) or (text and not text.endswith("\n")):
            atomic_write_jsonl(self.path, kept)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, step)
        self._bar.update(step - self._bar.n)
        postfix = {"loss": f"{record.get('loss', float('nan')):.4f}"}
        if record.get("tokens_per_s"):
            postfix["tok/s"] = f"{record['tokens_per_s']:.0f}"
        if record.get("mfu") is not None:
            postfix["mfu"] = f"{100 * record['mfu']:.1f}%"
        self._bar.set_postfix(postfix, refresh=False)
        if step % self.log_every == 0 and self._bar.disable is False:
            self._bar.write(_console_line(record))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._bar.close()


def _plain(v: Any) -> Any:
    """Python scalars for JSON (device/NumPy scalars become float or int)."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return int(f) if getattr(v, "dtype", None) is not None and v.dtype.kind in "iu" else f


def _console_line(record: dict[str, Any]) -> str:
    parts = [f"step {record['step']}"]
    for key in ("loss", "grad_norm", "learning_rate", "tokens_per_s", "mfu", "step_time"):
        v = record.get(key)
        if v is not None:
            parts.append(f"{key} {v:.4g}")
    return " | ".join(parts)
