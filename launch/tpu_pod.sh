#!/usr/bin/env bash
# Run a critique_jax training stage on every host of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/X.yaml [key=value ...]
#
# Copies this checkout (tracked + untracked, non-ignored files) to every worker, installs it
# there (skip with SETUP=0 once done), then starts the same command on all workers at once
# with `gcloud ... ssh --worker=all`. Each host runs one process that drives
# its local chips; critique_jax.distributed sees CRITIQUE_JAX_MULTIHOST=1 and lets
# jax.distributed.initialize() read the pod's topology from the TPU metadata server.
#
# The config's run_dir must be on storage every worker sees (a Filestore/NFS mount, or a GCS
# bucket mounted with gcsfuse at the same path): orbax writes each host's shards there.
#
# Env: PROJECT (gcloud project; default: gcloud's), REMOTE_DIR (default critique_jax, relative
# to the workers' home), SETUP (1, default: pip install -e '.[tpu]' on the workers; 0: skip).
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG [key=value ...]" >&2
  exit 2
fi
TPU_NAME=$1
ZONE=$2
CONFIG=$3
shift 3
REMOTE_DIR=${REMOTE_DIR:-critique_jax}
PROJECT_FLAG=()
[[ -n "${PROJECT:-}" ]] && PROJECT_FLAG=(--project "$PROJECT")

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
[[ -f "$CONFIG" ]] || { echo "config $CONFIG not found (relative to $ROOT)" >&2; exit 2; }

gcloud_tpu() {
  gcloud compute tpus tpu-vm "$@" "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all
}

# 1. Ship the code: one tarball, unpacked on every worker.
TARBALL=$(mktemp /tmp/critique_jax.XXXXXX.tar.gz)
trap 'rm -f "$TARBALL"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -czf "$TARBALL" -T -
gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:critique_jax.tar.gz" --zone "$ZONE" \
  "${PROJECT_FLAG[@]}" --worker=all
gcloud_tpu ssh --command "mkdir -p $REMOTE_DIR && tar -xzf critique_jax.tar.gz -C $REMOTE_DIR"

# 2. Install (jax[tpu] and the package in editable mode).
if [[ "${SETUP:-1}" == 1 ]]; then
  gcloud_tpu ssh --command "cd $REMOTE_DIR && python3 -m pip install -q -e '.[tpu]'"
fi

# 3. Run the same program on every host; each keeps its own log, process 0 writes run_dir.
ARGS=""
[[ $# -gt 0 ]] && ARGS=$(printf ' %q' "$@")
gcloud_tpu ssh --command "set -o pipefail; cd $REMOTE_DIR && export CRITIQUE_JAX_MULTIHOST=1 && \
  python3 -m critique_jax.train --config $CONFIG$ARGS 2>&1 | tee -a \$HOME/critique_jax_\$(hostname).log"
