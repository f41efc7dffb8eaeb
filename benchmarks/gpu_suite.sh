#!/usr/bin/env bash
# The four benchmarks at full size on a single-GPU host (../shared/GPU.md), most important first,
# each under its own time limit so that one slow step cannot take the rest down. JSON and a log per
# step go to RESULTS_DIR, packed after every step into $TARBALL (default RESULTS_DIR.tgz; handy when
# the host hands back only a few files).
#
#   bash benchmarks/gpu_suite.sh [RESULTS_DIR]        # default benchmarks/results/gpu
#
# On one H100 with 16 cores (2026-11-26) the steps before end_to_end took 25 s, 77 s and 68 s,
# data_throughput 53 s and vlm_throughput 25 s; an end_to_end run needs more than 150 s (it
# compiles twice: in the Ray Train worker and for its synthetic baseline; one run was stopped at
# 150 s while compiling the second), hence its 300 s limit.
set -u
python=${PYTHON:-python3}
results=${1:-benchmarks/results/gpu}
shards=${SHARDS:-/tmp/mmtrain-bench-gpu}
samples=${SAMPLES:-40000}  # enough that no end_to_end run crosses an epoch boundary
tarball=${TARBALL:-$results.tgz}
mkdir -p "$results"
export RAY_DATA_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

step() {  # step NAME TIME_LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date +%T), limit ${limit}s): $*"
  timeout "$limit" "$@" >"$results/$name.log" 2>&1
  echo "   exit $? at $(date +%T)"
  grep -E "samples/s|tokens/s|efficiency|ratio|median|Error|error:" "$results/$name.log" | tail -6
  tar -czf "$tarball" -C "$(dirname "$results")" "$(basename "$results")"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  nproc; "$python" -c "import torch, ray; print('torch', torch.__version__, 'ray', ray.__version__)"
} | tee "$results/host.txt"

step shards 120 "$python" -c "from pathlib import Path; from benchmarks.data_throughput import make_shards; \
make_shards(Path('$shards'), $samples, 256)"
step trainer_vit_b32 170 "$python" -m benchmarks.trainer_throughput --preset vit_b32 --batch-size 512 \
  --steps 15 --warmup 3 --out "$results/trainer_throughput_vit_b32.json"
step trainer_vit_b16 170 "$python" -m benchmarks.trainer_throughput --preset vit_b16 --batch-size 256 \
  --steps 15 --warmup 3 --out "$results/trainer_throughput_vit_b16.json"
step end_to_end_vit_b16 300 "$python" -m benchmarks.end_to_end --preset vit_b16 --batch-size 256 --steps 120 \
  --shards "$shards/train-*.tar" --out "$results/end_to_end_vit_b16.json"
step data_throughput 120 "$python" -m benchmarks.data_throughput --cpus 14 --samples "$samples" --rounds 2 \
  --shards "$shards" --out "$results/data_throughput_14cpu.json"
step vlm_throughput 90 "$python" -m benchmarks.vlm_throughput --lm smollm2-135m-shape --vision-preset vit_b16 \
  --batch-size 32 --steps 15 --out "$results/vlm_throughput_smollm2_vit_b16.json"
step end_to_end_vit_b32 300 "$python" -m benchmarks.end_to_end --preset vit_b32 --batch-size 512 --steps 64 \
  --shards "$shards/train-*.tar" --out "$results/end_to_end_vit_b32.json"
