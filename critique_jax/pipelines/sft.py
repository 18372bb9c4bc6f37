"""The `sft` stage: fine-tune a model on JSONL/JSON records and export it as an HF directory.

    python -m critique_jax.train --config configs/critic_sft_qwen2.5-0.5b.yaml

Critic SFT is this stage with `data.format: critique` (records: question, solution,
critique); actor SFT uses `solve`, refinement SFT `refine`, chat data `chat`. MathCritique
release files load directly (their records split into question/solution/critique/refinement).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from critique_jax.checkpoints.hf import save_hf
from critique_jax.config import (
    ConfigError,
    MeshConfig,
    ModelSpec,
    OptimConfig,
    StageConfig,
    TrainConfig,
)
from critique_jax.pipelines.finetune import (
    SFTData,
    examples_from_records,
    finetune,
    load_sft_records,
)
from critique_jax.pipelines.loading import load_model
from critique_jax.runio import atomic_write_json
from critique_jax.sharding import mesh_from_config


@dataclass
class Config(StageConfig):
    stage: str = "sft"
    run_dir: str = "runs/sft"
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="tiny"))
    data: SFTData = field(default_factory=SFTData)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        if self.data.limit is not None and self.data.limit < 1:
            raise ConfigError(
                f"data.limit={self.data.limit}: give a positive number of records, or null "
                "for all of them"
            )
        if self.train.steps < 1:
            raise ConfigError(
                f"train.steps={self.train.steps}: the sft stage must train at least one step "
                "(0 would export the starting model unchanged); set train.steps >= 1"
            )


def run(cfg: Config) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    mesh = mesh_from_config(cfg.mesh)
    fmt = cfg.data.format.removeprefix("mathcritique-")
    records, locations = load_sft_records(cfg.data)  # data errors before the model loads
    examples = examples_from_records(records, fmt, locations, cfg.critique_format)
    model = load_model(cfg.model, mesh=mesh, seed=cfg.seed)
    params = finetune(model, examples, cfg.train, cfg.optim, cfg.mesh, run_dir, cfg.seed)
    out = save_hf(model.cfg, params, run_dir / "hf", model.tokenizer)
    result = {"examples": len(examples), "hf_dir": str(out)}
    atomic_write_json(run_dir / "results.json", result)
    return result
