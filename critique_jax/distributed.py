"""Multi-host start-up on JAX's own multi-controller runtime.

Every host runs the same program; `initialize_distributed()` must run before anything else
touches JAX devices. It recognises how the processes were launched:

* explicit: COORDINATOR_ADDRESS (host:port of process 0), NUM_PROCESSES, PROCESS_ID, e.g.
  from a Kubernetes JobSet (launch/gke_jobset.yaml) or any custom launcher;
* Slurm: inside `srun` with SLURM_NTASKS > 1 (launch/slurm_gpu.sbatch), one process per node
  (all its GPUs) or one per GPU;
* Cloud TPU: TPU_WORKER_HOSTNAMES lists several hosts (GKE), or CRITIQUE_JAX_MULTIHOST=1
  (set by launch/tpu_pod.sh, whose `gcloud ... ssh --worker=all` leaves JAX to read the
  pod's metadata).

On a single host none of these is set and it does nothing.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import jax

log = logging.getLogger(__name__)

EXPLICIT_VARS = ("COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID")


def detect_launcher(env: Mapping[str, str] = os.environ) -> str | None:
    """'explicit', 'slurm', 'tpu' or None (a single process)."""
    given = [k for k in EXPLICIT_VARS if env.get(k)]
    if given:
        if len(given) != len(EXPLICIT_VARS):
            missing = [k for k in EXPLICIT_VARS if k not in given]
            raise ValueError(
                f"{given} are set but {missing} are not; set all of {list(EXPLICIT_VARS)} "
                "to launch several processes, or none for a single host."
            )
        return "explicit" if int(env["NUM_PROCESSES"]) > 1 else None
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in env:
        return "slurm"
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1 or env.get("CRITIQUE_JAX_MULTIHOST") == "1":
        return "tpu"
    return None


def slurm_local_device_ids(env: Mapping[str, str] = os.environ) -> list[int] | None:
    """All of a node's GPUs when Slurm runs one task per node; None (JAX's default of one
    GPU per task, chosen by SLURM_LOCALID) otherwise."""
    tasks = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE") or ""
    match = re.match(r"\d+", tasks)
    gpus = env.get("SLURM_GPUS_ON_NODE")
    if match and int(match.group()) == 1 and gpus and gpus.isdigit():
        return list(range(int(gpus)))
    return None


def initialize_distributed(env: Mapping[str, str] = os.environ) -> bool:
    """Join the multi-process runtime when launched on several hosts; True if it did."""
    if jax.distributed.is_initialized():
        return True
    launcher = detect_launcher(env)
    if launcher is None:
        return False
    kwargs: dict[str, Any] = {}
    if launcher == "explicit":
        kwargs = dict(
            coordinator_address=env["COORDINATOR_ADDRESS"],
            num_processes=int(env["NUM_PROCESSES"]),
            process_id=int(env["PROCESS_ID"]),
        )
    elif launcher == "slurm":
        kwargs = dict(local_device_ids=slurm_local_device_ids(env))
    jax.distributed.initialize(**kwargs)
    log.info(
        "process %d of %d (%s launch): %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        launcher,
        jax.local_device_count(),
        jax.device_count(),
    )
    return True
