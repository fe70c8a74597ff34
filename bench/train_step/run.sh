#!/usr/bin/env bash
# Candle's CPU training step (batch 4, 256²: forward, BCE, backward, the trainer's AdamW) against
# the same step in PyTorch, when PyTorch is importable (TORCH_PYTHON=/path/to/python to choose
# one), for unet-resnet34, unet-efficientnet_b0 and segformer-mit_b0 (ARCHS to choose). Prints
# both medians and the ratio Candle / PyTorch per architecture; the goal is ≤ 1.5.
# PROFILE=1 adds where each step's time goes: ftu's per-op table and torch.profiler's.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS="${STEPS:-5}"
ARCHS="${ARCHS:-unet-resnet34 unet-efficientnet_b0 segformer-mit_b0}"
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
  if [ "$have_torch" = 1 ]; then
    torch_out="$("$python" bench/train_step/torch_step.py --arch "$arch" --steps "$STEPS" "${torch_profile[@]}")"
    echo "$torch_out"
    torch_ms="$(sed -n 's/^TORCH_MS //p' <<<"$torch_out")"
    summary+=("$(python3 -c "print(f'{\"$arch\":<24} candle {$candle_ms:8.0f} ms   torch {$torch_ms:8.0f} ms   candle / torch = {$candle_ms / $torch_ms:.2f}×')")")
  else
    summary+=("$(printf '%-24s candle %8.0f ms' "$arch" "$candle_ms")")
  fi
done
echo
echo "== median ms per training step, batch 4, 256², $(nproc) cores (goal: candle / torch ≤ 1.5×)"
printf '%s\n' "${summary[@]}"
