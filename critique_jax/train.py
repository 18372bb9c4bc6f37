"""The one entry point: `python -m critique_jax.train [--config FILE.yaml] [key=value ...]`.

The config's `stage:` picks what runs (default: the embedded demo, which needs no download).
Each stage module declares its `Config` dataclass and `run(config) -> results`; bad keys or
values are reported with the key and the fix before anything is compiled.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import sys
from typing import Any

from critique_jax.config import ConfigError, apply_overrides, from_dict, load_yaml, save_yaml
from critique_jax.errors import DEBUG_ENV, debug_requested, run_cli

STAGES = {
    "demo": "critique_jax.pipelines.demo",  # the whole loop on the embedded arithmetic world
    "sft": "critique_jax.pipelines.sft",  # actor / critic / refinement / chat SFT
    "collect_critiques": "critique_jax.pipelines.critique_data",  # AutoMathCritique
    "eval_critic": "critique_jax.pipelines.critic_eval",
    "rco_collect": "critique_jax.pipelines.rco_collect",  # critique utility
    "rco": "critique_jax.pipelines.rco_train",
    "dpco": "critique_jax.pipelines.dpco",
    "eval_rco": "critique_jax.pipelines.rco_eval",
    "eval_tts": "critique_jax.pipelines.test_time",  # test-time supervision
    "self_train": "critique_jax.pipelines.self_train",  # critique-in-the-loop self-training
    "self_talk": "critique_jax.pipelines.self_talk",
}


def build_config(path: str | None, overrides: list[str]) -> Any:
    data = apply_overrides(load_yaml(path) if path else {}, overrides)
    stage = data.get("stage", "demo")
    if stage not in STAGES:
        raise ConfigError(f"stage {stage!r} is unknown; stages: {sorted(STAGES)}")
    module = importlib.import_module(STAGES[stage])
    return module, from_dict(module.Config, data)


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
    return run_cli(lambda: _train(args.config, args.overrides), debug_requested(args.debug))


def _train(config: str | None, overrides: list[str]) -> int:
    from critique_jax.distributed import initialize_distributed

    initialize_distributed()  # before any stage import touches a JAX backend
    module, cfg = build_config(config, overrides)

    import jax

    from critique_jax.runio import RunDirBusyError, run_dir_lock

    first = jax.process_index() == 0  # one lock and one config file per run, not per host
    try:
        with run_dir_lock(cfg.run_dir) if first else contextlib.nullcontext():
            if first:
                save_yaml(cfg, f"{cfg.run_dir}/config.yaml")
            results = module.run(cfg)
    except RunDirBusyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
