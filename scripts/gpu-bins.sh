#!/usr/bin/env bash
# On any machine (no GPU needed): builds the CUDA binaries the GPU check runs (scripts/cuda.sh)
# and puts them, stripped and gzipped (about 15 MB), in gpu-bin/ (git-ignored); copy that folder
# to the GPU machine and run `bash scripts/gpu-check.sh` there.
set -euo pipefail
cd "$(dirname "$0")/.."
target=target/cuda
bash scripts/cuda.sh cargo build --release -p ftu-trainer --features cuda --target-dir "$target" \
  --bin ftu-train --test gpu --bench train_step
rm -rf gpu-bin && mkdir -p gpu-bin
newest() { ls -t "$target"/release/deps/"$1"-* | grep -v '\.d$' | head -n 1; }
strip -o gpu-bin/gpu-test "$(newest gpu)"
strip -o gpu-bin/train-step "$(newest train_step)"
strip -o gpu-bin/ftu-train "$target/release/ftu-train"
gzip -9 gpu-bin/*
du -ch gpu-bin/* | tail -n 1
