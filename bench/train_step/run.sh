#!/usr/bin/env bash
# Candle's CPU training step for unet-resnet34 (batch 4, 256²) against the same step in PyTorch,
# when PyTorch is importable (TORCH_PYTHON=/path/to/python to choose one). Prints both medians and
# the ratio Candle / PyTorch; the goal is ≤ 1.5.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS="${STEPS:-5}"

candle_out="$(cargo bench -q -p ftu-trainer --bench train_step -- --steps "$STEPS")"
echo "$candle_out"
candle_ms="$(sed -n 's/^CANDLE_MS //p' <<<"$candle_out")"

python="${TORCH_PYTHON:-python3}"
if ! "$python" -c "import torch" 2>/dev/null; then
  echo "PyTorch is not importable by $python: no ratio (set TORCH_PYTHON)"
  exit 0
fi
torch_out="$("$python" bench/train_step/torch_step.py --steps "$STEPS")"
echo "$torch_out"
torch_ms="$(sed -n 's/^TORCH_MS //p' <<<"$torch_out")"
python3 -c "print(f'candle / torch = {${candle_ms} / ${torch_ms}:.2f}× (goal ≤ 1.5×)')"
