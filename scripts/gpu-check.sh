#!/usr/bin/env bash
# On a GPU machine (H100/H200, CUDA 13 driver, PyTorch with its nvidia-* wheels, no Rust), with
# gpu-bin/ copied there from `bash scripts/gpu-bins.sh`: each part under its own time limit so a
# slow one cannot eat the rest,
#   (a) the GPU tests: a training step on CUDA against the CPU for three encoder families, and
#       bf16/f16 on CUDA against the CPU's emulation of them;
#   (b) the Candle train step, unet-resnet34 at 256² batch 4, on CUDA and on the CPU;
#   (c) the same step in PyTorch eager on the GPU (bench/train_step/torch_step.py), f32;
#   (d) Candle and PyTorch at 512², batch 16, on the GPU, f32 and bf16 (PyTorch: autocast);
#   (e) the demo's training (synthetic slides, unet-resnet18) on the GPU, with its Dice;
# The limits add up to 535 s (give the whole script about 580 s). Then a table
# of the medians and of each part's peak GPU memory (nvidia-smi sampled every 100 ms while the
# part runs; it includes the CUDA context, for Candle and PyTorch alike).
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
  local out samples
  samples="$(mktemp)"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$samples" 2>/dev/null &
  local sampler=$!
  out="$(timeout "$limit" "$@" 2>&1)"
  local rc=$?
  kill "$sampler" 2>/dev/null
  wait "$sampler" 2>/dev/null
  echo "$out" | tail -n 12
  local ms peak
  ms="$(grep -oE '^(CANDLE|TORCH)_MS [0-9.]+' <<<"$out" | awk '{print $2}' | tail -n 1)"
  peak="$(sort -n "$samples" | tail -n 1)"
  rm -f "$samples"
  table+=("$(printf '%-46s exit %-3s %10s ms   peak GPU memory %6s MiB' "$name" "$rc" "${ms:--}" "${peak:--}")")
}
part "gpu tests" 90 "$bin/gpu-test" --ignored --nocapture
part "candle unet-resnet34 256² b4 cuda" 45 "$bin/train-step" --bench --arch unet-resnet34 --device cuda --steps 5
part "candle unet-resnet34 256² b4 cpu" 45 "$bin/train-step" --bench --arch unet-resnet34 --device cpu --steps 3
part "torch unet-resnet34 256² b4 cuda f32" 45 python3 bench/train_step/torch_step.py --arch unet-resnet34 --steps 5 --device cuda
part "candle unet-resnet34 512² b16 cuda" 60 "$bin/train-step" --bench --arch unet-resnet34 --device cuda --steps 5 --size 512 --batch 16
part "torch unet-resnet34 512² b16 cuda f32" 45 python3 bench/train_step/torch_step.py --arch unet-resnet34 --steps 5 --device cuda --size 512 --batch 16
part "candle unet-resnet34 512² b16 cuda bf16" 60 "$bin/train-step" --bench --arch unet-resnet34 --device cuda --steps 5 --size 512 --batch 16 --precision bf16
part "torch unet-resnet34 512² b16 cuda bf16" 45 python3 bench/train_step/torch_step.py --arch unet-resnet34 --steps 5 --device cuda --size 512 --batch 16 --precision bf16
demo=$(mktemp -d)
part "demo training on cuda (its Dice above)" 100 bash -c "\"$bin/ftu-train\" synth --out $demo/data --train 40 --test 0 --size 512 --seed 0 && \"$bin/ftu-train\" train --data $demo/data --out $demo/run --arch unet-resnet18 --decoder-channels 64,32,16,16,8 --size 160 --folds 2 --epochs 16 --batch 8 --samples-per-epoch 48 --lr 0.003 --seed 0 --device cuda"
echo
echo "== summary"
printf '%s\n' "${table[@]}"
