"""The one entry point: `python -m critique_jax.train [--config FILE.yaml] [key=value ...]`.

The config's `stage:` picks what runs (default: the embedded demo, which needs no download).
Each stage module declares its `Config` dataclass and `run(config) -> results`; bad keys or
values are reported with the key and the fix before anything is compiled.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from critique_jax.config import (
    ConfigError,
    MeshConfig,
    ModelSpec,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_yaml,
    save_yaml,
    to_dict,
)
from critique_jax.errors import (
    DEBUG_ENV,
    debug_requested,
    exit_cli,
    quiet_library_tracebacks,
    run_cli,
    user_error_message,
)

STAGES = {
    "demo": "critique_jax.pipelines.demo",  # the whole loop on the embedded arithmetic world
    "sft": "critique_jax.pipelines.sft",  # actor / critic / refinement / chat SFT
    "collect_critiques": "critique_jax.pipelines.critique_data",  # AutoMathCritique
    "eval_critic": "critique_jax.pipelines.critic_eval",
    "rco_collect": "critique_jax.pipelines.rco_collect",  # critique utility
    "rco": "critique_jax.pipelines.rco",  # RCO's least-squares objective
    "dpco": "critique_jax.pipelines.rco",  # the same trainer with the DPCO objective
    "eval_rco": "critique_jax.pipelines.rco_eval",
    "eval_tts": "critique_jax.pipelines.test_time",  # test-time supervision
    "self_train": "critique_jax.pipelines.self_train",  # critique-in-the-loop self-training
    "self_talk": "critique_jax.pipelines.self_talk",
}


def build_config(path: str | None, overrides: list[str]) -> Any:
    data = load_yaml(path) if path else {}
    stage = apply_overrides(data, [o for o in overrides if o.startswith("stage=")]).get(
        "stage", "demo"
    )
    if stage not in STAGES:
        raise ConfigError(f"stage {stage!r} is unknown; stages: {sorted(STAGES)}")
    module = importlib.import_module(STAGES[stage])
    return module, from_dict(module.Config, apply_overrides(data, overrides, module.Config))


def _sections(node: Any, where: str = "") -> Iterator[tuple[Any, str]]:
    """Every dataclass section of a config with its key prefix ("" or "critic.")."""
    if not dataclasses.is_dataclass(node):
        return
    yield node, where
    for f in dataclasses.fields(node):
        yield from _sections(getattr(node, f.name), f"{where}{f.name}.")


def _model_context(spec: ModelSpec, where: str) -> int | None:
    """max_position_embeddings of a preset or a local HF directory's config.json (None when
    it is not readable here: a hub id, a directory a previous stage has yet to write)."""
    from critique_jax.models.config import preset

    if spec.preset is not None:
        try:
            return preset(spec.preset, **spec.overrides).max_position_embeddings
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}model: {e}") from None
    config_json = Path(spec.path or "") / "config.json"
    if not config_json.is_file():
        return None
    try:
        value = json.loads(config_json.read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None  # load_hf reports the damaged file with its name
    return value if isinstance(value, int) else None


def preflight(cfg: Any) -> None:
    """Checks that need the devices or the model's config, before any stage work: each mesh
    against the device count, batch sizes against each mesh, seq_len against the model's
    context (for the TrainConfigs next to a `mesh` / `model` in the same section)."""
    from critique_jax.sharding import mesh_from_config, rules_from_config
    from critique_jax.trainer import check_batch_layout

    for node, where in _sections(cfg):
        values = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
        trains = {k: v for k, v in values.items() if isinstance(v, TrainConfig)}
        spec = values.get("model")
        context = _model_context(spec, where) if isinstance(spec, ModelSpec) else None
        for key, train in trains.items():
            if context is not None and train.seq_len > context:
                raise ConfigError(
                    f"{where}{key}.seq_len={train.seq_len} is longer than the model's context "
                    f"of {context} positions ({where}model max_position_embeddings); set "
                    f"{where}{key}.seq_len <= {context}"
                )
        mesh_cfg = values.get("mesh")
        if not isinstance(mesh_cfg, MeshConfig):
            continue
        mesh = mesh_from_config(mesh_cfg)
        rules = rules_from_config(mesh_cfg.rules)
        for key, train in trains.items():
            try:
                check_batch_layout(train.batch_size, train.microbatches, mesh, rules)
            except ConfigError as e:
                raise ConfigError(str(e).replace("train.", f"{where}{key}.")) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m critique_jax.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config (default: the embedded demo)")
    parser.add_argument(
        "--debug", action="store_true", help=f"tracebacks for user errors too (or {DEBUG_ENV}=1)"
    )
    parser.add_argument("overrides", nargs="*", help="key.subkey=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax"):  # their INFO logs drown the run's own progress
        logging.getLogger(noisy).setLevel(logging.WARNING)
    debug = debug_requested(args.debug)
    if not debug:
        quiet_library_tracebacks()
    return run_cli(lambda: _train(args.config, args.overrides), debug)


def _train(config: str | None, overrides: list[str]) -> int:
    from critique_jax.backend import use_compilation_cache
    from critique_jax.distributed import initialize_distributed

    initialize_distributed()  # before any stage import touches a JAX backend
    use_compilation_cache()
    module, cfg = build_config(config, overrides)
    preflight(cfg)

    from critique_jax.runio import (
        FINGERPRINT_FILE,
        check_resume,
        run_dir_lock,
        this_process_writes,
        write_fingerprint,
    )

    first = this_process_writes()  # one lock and one config file per run, not per host
    run_dir = Path(cfg.run_dir)
    with run_dir_lock(run_dir) if first else contextlib.nullcontext():  # busy: a user error
        kept: dict[Path, bytes | None] = {}
        before: set[Path] = set()
        if first:
            settings = to_dict(cfg)
            check_resume(run_dir, settings, cfg.overwrite)  # before anything is written
            kept = {p: _read(p) for p in (run_dir / "config.yaml", run_dir / FINGERPRINT_FILE)}
            before = _files(run_dir)
            save_yaml(cfg, run_dir / "config.yaml")
            write_fingerprint(run_dir, settings)
        try:
            results = module.run(cfg)
        except Exception as e:
            # A user error before the run wrote anything (a bad data file, a foreign
            # tokenizer): config.yaml and the fingerprint as they were, so the corrected
            # rerun is not refused as "other settings".
            if (
                kept
                and user_error_message(e) is not None
                and not _files(run_dir) - before - set(kept)
            ):
                for path, data in kept.items():
                    _restore(path, data)
            raise
    print(json.dumps(results, default=str))
    return 0


def _files(run_dir: Path) -> set[Path]:
    """The files in run_dir but its lock (what a run has written so far)."""
    return {p for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _restore(path: Path, data: bytes | None) -> None:
    from critique_jax.runio import atomic_write_text

    if data is None:
        path.unlink(missing_ok=True)
    elif _read(path) != data:
        atomic_write_text(path, data.decode())


if __name__ == "__main__":
    from critique_jax.backend import restart_with_huge_pages

    restart_with_huge_pages()
    exit_cli(main())
