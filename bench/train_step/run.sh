#!/usr/bin/env bash
# Candle's CPU training step (batch 4, 256²: forward, BCE, backward, the trainer's AdamW) against
# the same step in PyTorch, when PyTorch is importable (TORCH_PYTHON=/path/to/python to choose
# one), for unet-resnet34, unet-efficientnet_b0, unet-efficientnet_b3, segformer-mit_b0 and
# segformer-mit_b2 (ARCHS to choose; the b3 and b2 come from segmentation_models_pytorch and timm
# on the PyTorch side). Prints both medians, the ratio Candle / PyTorch and each process's peak
# resident memory per architecture; the goal is a ratio of at most 1.25 and no more memory.
# PROFILE=1 adds where each step's time goes: ftu's per-op table and torch.profiler's.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS="${STEPS:-5}"
ARCHS="${ARCHS:-unet-resnet34 unet-efficientnet_b0 unet-efficientnet_b3 segformer-mit_b0 segformer-mit_b2}"
profile=()
torch_profile=()
if [ "${PROFILE:-0}" = 1 ]; then
  profile=(--profile)
  torch_profile=(--profile)
fi

python="${TORCH_PYTHON:-python3}"
have_torch=1
if ! "$python" -c "import torch" 2>/dev/null; then
  echo "PyTorch is not importable by $python: Candle only, no ratios (set TORCH_PYTHON)"
  have_torch=0
fi

cargo bench -q -p ftu-trainer --bench train_step --no-run
summary=()
for arch in $ARCHS; do
  echo "== $arch"
  candle_out="$(cargo bench -q -p ftu-trainer --bench train_step -- --arch "$arch" --steps "$STEPS" "${profile[@]}")"
  echo "$candle_out"
  candle_ms="$(sed -n 's/^CANDLE_MS //p' <<<"$candle_out")"
  candle_rss="$(sed -n 's/^CANDLE_PEAK_RSS_MIB //p' <<<"$candle_out")"
  if [ "$have_torch" = 1 ]; then
    torch_out="$("$python" bench/train_step/torch_step.py --arch "$arch" --steps "$STEPS" "${torch_profile[@]}")"
    echo "$torch_out"
    torch_ms="$(sed -n 's/^TORCH_MS //p' <<<"$torch_out")"
    torch_rss="$(sed -n 's/^TORCH_PEAK_RSS_MIB //p' <<<"$torch_out")"
    summary+=("$(python3 -c "print(f'{\"$arch\":<34} candle {$candle_ms:6.0f} ms {$candle_rss:5.0f} MiB   torch {$torch_ms:6.0f} ms {$torch_rss:5.0f} MiB   candle / torch = {$candle_ms / $torch_ms:.2f}×, memory {$candle_rss / $torch_rss:.2f}×')")")
  else
    summary+=("$(printf '%-34s candle %6.0f ms %5.0f MiB' "$arch" "$candle_ms" "$candle_rss")")
  fi
done
echo
echo "== median ms per training step and peak resident memory, batch 4, 256², $(nproc) cores (goal: candle / torch ≤ 1.25×, memory ≤ 1×)"
printf '%s\n' "${summary[@]}"
