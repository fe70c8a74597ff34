#!/usr/bin/env bash
# On the lent GPU machine (H100/H200, CUDA 13 driver, PyTorch with its nvidia-* wheels, no Rust),
# with gpu-bin/ carried from `bash scripts/gpu-bins.sh`: in one call, each part under its own time
# limit so a slow one cannot eat the rest,
#   (a) the GPU tests: a training step on CUDA against the CPU for three encoder families;
#   (b) the Candle train step, unet-resnet34 at 256² batch 4, on CUDA and on the CPU;
#   (c) the same step in PyTorch eager on the GPU (bench/train_step/torch_step.py), f32;
#   (d) Candle and PyTorch at 512², batch 16, on the GPU;
# then a table of the medians. Peak GPU memory: nvidia-smi's reading after each part.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=gpu-bin
for f in "$bin"/*.gz; do gunzip -f "$f"; done
chmod +x "$bin"/*
nvidia="$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')"
LD_LIBRARY_PATH="$(printf '%s:' "$nvidia"/*/lib)${LD_LIBRARY_PATH:-}"
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
declare -a table=()
part() { # NAME LIMIT COMMAND...: runs it, keeps its last median line
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s)"
  local out
  out="$(timeout "$limit" "$@" 2>&1)"
  local rc=$?
  echo "$out" | tail -n 12
  local ms
  ms="$(grep -oE '^(CANDLE|TORCH)_MS [0-9.]+' <<<"$out" | awk '{print $2}' | tail -n 1)"
  local mem
  mem="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader | head -n 1)"
  table+=("$(printf '%-44s exit %-3s %10s ms   GPU memory after: %s' "$name" "$rc" "${ms:--}" "$mem")")
}
part "gpu tests" 300 env FTU_GPU_TESTS=1 "$bin/gpu-test" --nocapture
part "candle unet-resnet34 256² b4 cuda" 240 "$bin/train-step" --bench --arch unet-resnet34 --device cuda --steps 5
part "candle unet-resnet34 256² b4 cpu" 240 "$bin/train-step" --bench --arch unet-resnet34 --device cpu --steps 3
part "torch unet-resnet34 256² b4 cuda f32" 240 python3 bench/train_step/torch_step.py --arch unet-resnet34 --steps 5 --device cuda
part "candle unet-resnet34 512² b16 cuda" 300 "$bin/train-step" --bench --arch unet-resnet34 --device cuda --steps 5 --size 512 --batch 16
part "torch unet-resnet34 512² b16 cuda f32" 240 python3 bench/train_step/torch_step.py --arch unet-resnet34 --steps 5 --device cuda --size 512 --batch 16
echo
echo "== summary"
printf '%s\n' "${table[@]}"
