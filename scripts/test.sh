#!/usr/bin/env bash
# Every test of the workspace, plus the dependency rule that keeps ftu-infer free of Candle.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== ftu-infer must not depend on Candle"
if cargo tree -p ftu-infer --edges normal,build --prefix none | grep -i '^candle'; then
  echo "ftu-infer depends on Candle: it must stay standalone" >&2
  exit 1
fi

# The engine's tests run models through the real ONNX Runtime.
source scripts/ort.sh

echo "== cargo test --workspace"
cargo test --workspace --all-targets
