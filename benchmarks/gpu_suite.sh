#!/usr/bin/env bash
# The four benchmarks at full size on a single-GPU host (an H100 or H200 with 16 cores), most important first,
# each under its own time limit so that one slow step cannot take the rest down. JSON and a log per
# step go to RESULTS_DIR, packed after every step into $TARBALL (default RESULTS_DIR.tgz; handy when
# the host hands back only a few files).
#
#   bash benchmarks/gpu_suite.sh [RESULTS_DIR]        # default benchmarks/results/gpu
#
# Steps run in order of what is least known (RESULTS.md): the sync check (benchmarks/sync_check.py,
# both trainers' steps under CUDA's sync debug mode; never yet run on a GPU), the VLM step since its logits change,
# eager and compiled; B/16's step with a profile, then with CUDA graphs (the MFU gap); the 16-core
# data ratio; then B/32 and both end-to-end runs, measured on the last lease. BUDGET_S (default
# 570, under the device tool's 600 s per command) caps the whole suite: each step's limit is cut to
# what is left, and a step with under 45 s left is skipped. STEPS (names, space-separated) runs
# only those steps, e.g.
#   STEPS="vlm_throughput vlm_throughput_compiled trainer_vit_b16_cudagraphs" bash benchmarks/gpu_suite.sh
# (end_to_end needs the shards step and its trainer step, whose JSON is its baseline).
# Step times on one H100 with 16 cores (2026-11-26, late night): shards 32 s, vlm_throughput with
# profile 43 s, data_throughput ~50 s, trainer_vit_b32 83 s, trainer_vit_b16 with profile 104 s,
# end_to_end_vit_b32 154 s, end_to_end_vit_b16 143 s: the whole list does not fit one budget.
#
# The GPU host's image already has opencv-python-headless (host.txt records `decoder opencv`).
# For a host without it, this script installs .cv-wheels/*.whl when present (~58 MiB: upload it in
# a call of its own while the machine is warm, as .gpu-wheels fills most of one 64 MiB upload):
#   pip download --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.12 \
#       -d .cv-wheels opencv-python-headless
set -u
python=${PYTHON:-python3}
results=${1:-benchmarks/results/gpu}
shards=${SHARDS:-/tmp/mmtrain-bench-gpu}
samples=${SAMPLES:-40000}  # enough that no end_to_end run crosses an epoch boundary
tarball=${TARBALL:-$results.tgz}
budget=${BUDGET_S:-570}
deadline=$((SECONDS + budget))
mkdir -p "$results"
export RAY_DATA_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

step() {  # step NAME TIME_LIMIT_S COMMAND...
  local name=$1 limit=$2 left=$((deadline - SECONDS))
  shift 2
  if [[ -n ${STEPS:-} && " $STEPS " != *" $name "* ]]; then return; fi
  if ((left < 45)); then echo "== $name skipped: ${left}s of the suite's ${budget}s left"; return; fi
  ((limit > left)) && limit=$left
  echo "== $name ($(date +%T), limit ${limit}s): $*"
  timeout "$limit" "$@" >"$results/$name.log" 2>&1
  echo "   exit $? at $(date +%T)"
  grep -E "samples/s|tokens/s|efficiency|ratio|median|Error|error:|^profile|^  [a-z]|sync" "$results/$name.log" | tail -16
  tar -czf "$tarball" -C "$(dirname "$results")" "$(basename "$results")"
}

if compgen -G ".cv-wheels/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .cv-wheels/*.whl
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  nproc; "$python" -c "import torch, ray; print('torch', torch.__version__, 'ray', ray.__version__); \
from pipelines import images; print('decoder', images.DECODER)"
} | tee "$results/host.txt"

# First, and cheap: both trainers' steps must make no host-device sync (CUDA sync debug mode "error").
step sync_check 90 "$python" -m benchmarks.sync_check --clip-preset vit_b16 --vision-preset vit_b16 --batch-size 8
step shards 120 "$python" -c "from pathlib import Path; from benchmarks.data_throughput import make_shards; \
make_shards(Path('$shards'), $samples, 256)"
step vlm_throughput 90 "$python" -m benchmarks.vlm_throughput --lm smollm2-135m-shape --vision-preset vit_b16 \
  --batch-size 32 --steps 15 --profile-steps 3 --out "$results/vlm_throughput_smollm2_vit_b16.json"
step vlm_throughput_compiled 150 "$python" -m benchmarks.vlm_throughput --lm smollm2-135m-shape --vision-preset vit_b16 \
  --batch-size 32 --steps 15 --compile --profile-steps 3 --out "$results/vlm_throughput_smollm2_vit_b16_compiled.json"
step trainer_vit_b16 200 "$python" -m benchmarks.trainer_throughput --preset vit_b16 --batch-size 256 \
  --steps 15 --warmup 3 --profile-steps 5 --out "$results/trainer_throughput_vit_b16.json"
step trainer_vit_b16_cudagraphs 200 "$python" -m benchmarks.trainer_throughput --preset vit_b16 --batch-size 256 \
  --steps 15 --warmup 3 --modes compiled --compile-mode reduce-overhead --profile-steps 5 \
  --out "$results/trainer_throughput_vit_b16_cudagraphs.json"
step data_throughput 120 "$python" -m benchmarks.data_throughput --cpus 14 --samples "$samples" --rounds 2 \
  --shards "$shards" --out "$results/data_throughput_14cpu.json"
step trainer_vit_b32 170 "$python" -m benchmarks.trainer_throughput --preset vit_b32 --batch-size 512 \
  --steps 15 --warmup 3 --modes compiled --out "$results/trainer_throughput_vit_b32.json"
step end_to_end_vit_b32 240 "$python" -m benchmarks.end_to_end --preset vit_b32 --batch-size 512 --steps 64 \
  --shards "$shards/train-*.tar" --baseline "$results/trainer_throughput_vit_b32.json" \
  --out "$results/end_to_end_vit_b32.json"
step end_to_end_vit_b16 240 "$python" -m benchmarks.end_to_end --preset vit_b16 --batch-size 256 --steps 120 \
  --shards "$shards/train-*.tar" --baseline "$results/trainer_throughput_vit_b16.json" \
  --out "$results/end_to_end_vit_b16.json"
