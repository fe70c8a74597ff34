#!/usr/bin/env bash
# Every test of the workspace, plus the dependency rules between its crates.
set -euo pipefail
cd "$(dirname "$0")/.."

# The dependency rules: the engine has no Candle, the trainer no ONNX Runtime, and the formats
# crate both stand on has neither.
forbid() { # crate, dependency prefix, why
  if cargo tree -p "$1" --edges normal,build --prefix none | grep -iE "^$2"; then
    echo "$1 depends on $2: $3" >&2
    exit 1
  fi
}
echo "== dependency rules"
forbid ftu-infer candle "the engine must stay standalone (no Candle)"
forbid ftu-trainer "ort(-sys)? " "the trainer reads formats from ftu-formats, not from the engine"
forbid ftu-formats candle "the shared formats carry no Candle"
forbid ftu-formats "ort(-sys)? " "the shared formats carry no ONNX Runtime"

echo "== no two modules import each other, directly or through others"
python3 scripts/module_cycles.py formats infer models onnx trainer

# The engine's tests run models through the real ONNX Runtime.
source scripts/ort.sh
# infer/tests/scanner.rs writes scanner-style slides (JPEG 2000 SVS, OME-TIFF) with tifffile and
# reads them with OpenSlide too: PyPI's openslide-bin (one self-contained libopenslide.so.1, no
# root), which ftu finds in the openslide_bin package of $VIRTUAL_ENV's Python.
if ! .venv/bin/python -c "import tifffile, imagecodecs, importlib.metadata as m, sys; sys.exit(m.version('openslide-bin') != '4.0.1.2')" 2>/dev/null; then
  echo "== pip install tifffile imagecodecs openslide-bin into .venv"
  .venv/bin/pip install --quiet "tifffile==2026.3.3" "imagecodecs==2026.3.6" "openslide-bin==4.0.1.2"
fi
export VIRTUAL_ENV="$(pwd)/.venv"

# infer/tests/ort_versions.rs also runs predict on the oldest ONNX Runtime ftu is tested on: the
# library of the onnxruntime 1.22.0 wheel (the first whose wheel ships it), unpacked into .ort-oldest/.
ORT_OLDEST=1.22.0
oldest_dir=".ort-oldest/$ORT_OLDEST"
if [ -z "${FTU_ORT_OLDEST:-}" ]; then
  if ! ls "$oldest_dir"/onnxruntime/capi/libonnxruntime.so.* >/dev/null 2>&1; then
    echo "== onnxruntime $ORT_OLDEST's library into $oldest_dir"
    rm -rf "$oldest_dir" && mkdir -p "$oldest_dir"
    .venv/bin/pip download --quiet --no-deps --only-binary=:all: "onnxruntime==$ORT_OLDEST" -d "$oldest_dir"
    .venv/bin/python -m zipfile -e "$oldest_dir"/onnxruntime-*.whl "$oldest_dir"
  fi
  FTU_ORT_OLDEST="$(pwd)/$(ls "$oldest_dir"/onnxruntime/capi/libonnxruntime.so.* | head -n 1)"
  export FTU_ORT_OLDEST
fi
echo "== oldest ONNX Runtime tested: $FTU_ORT_OLDEST"

echo "== cargo test --workspace"
cargo test --workspace --all-targets
