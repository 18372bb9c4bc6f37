#!/usr/bin/env bash
# The GPU figures of the Benchmarks section in one call (issue 15): sampler decode at batch
# 1 and 64 with the HBM roofline fraction, the train-step MFU at seq 2048, and the rollouts
# benchmark against transformers, all bf16 on a random-init model of Qwen2.5-0.5B's shape
# (speed does not depend on the weights; a real 0.5B checkpoint is too large to carry) with
# SmolLM2's tokenizer (its ids are a subset of the model's vocabulary).
#
#   .gpu/ (git-ignored, carried): whl/ (math-verify and its two deps), tok/ (tokenizer
#   files), data/test.jsonl (GSM8K test split)
#   SIZE=tiny PRESET=smollm2-135m DTYPE=float32 bash launch/gpu_bench.sh   # CPU dry run
#
# Logs and the JSON lines go to $OUT; the last lines printed are a summary.
set -uo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu_bench}
SIZE=${SIZE:-full}
PRESET=${PRESET:-qwen2.5-0.5b}
DTYPE=${DTYPE:-bfloat16}
PY=${PY:-python3}
mkdir -p "$OUT"
if [ "$SIZE" = full ]; then
  NEW=128 B64=64 SEQ=2048 TB=8 Q=8 N=4 M=4
else
  NEW=4 B64=4 SEQ=64 TB=2 Q=1 N=2 M=2
fi

if [ -d .gpu/whl ] && ! $PY -c "import math_verify" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"

MODEL=/tmp/random_$PRESET
$PY - "$PRESET" "$MODEL" <<'EOF' 2>&1 | tail -1
import sys, jax
from transformers import AutoTokenizer
from critique_jax.models import init_params, preset
from critique_jax.checkpoints.hf import save_hf
cfg = preset(sys.argv[1])
save_hf(cfg, init_params(cfg, jax.random.key(0)), sys.argv[2], AutoTokenizer.from_pretrained(".gpu/tok"))
print("model", sys.argv[2], cfg.num_params(), jax.devices()[0].device_kind)
EOF

step() {  # name, timeout, command...: log to $OUT/name.log, keep the last line
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "[$name rc=$? $((SECONDS - t0))s] $(tail -1 "$OUT/$name.log")" | tee -a "$OUT/summary.txt"
}
step sampling_b1 90 $PY -m critique_jax.benchmarks.sampling --model "$MODEL" --batch 1 --new-tokens "$NEW" --dtype "$DTYPE"
step sampling_b64 90 $PY -m critique_jax.benchmarks.sampling --model "$MODEL" --batch "$B64" --new-tokens "$NEW" --dtype "$DTYPE"
step training 130 $PY -m critique_jax.benchmarks.training --model "$PRESET" --batch "$TB" --seq "$SEQ" --dtype bfloat16 --steps 3
step rollouts 200 $PY -m critique_jax.benchmarks.rollouts --model "$MODEL" --data .gpu/data/test.jsonl --questions "$Q" --critiques "$N" --refinements "$M" --new-tokens "$NEW" --dtype "$DTYPE"
echo "=== summary"; cat "$OUT/summary.txt"
