#!/usr/bin/env bash
# Sourced by the other scripts: makes sure ONNX Runtime's library is here (from the PyPI wheel,
# into .venv) and exports ORT_DYLIB_PATH. Set ORT_DYLIB_PATH yourself to use another build, or
# FTU_ORT_PACKAGE=onnxruntime-gpu for the CUDA 13 build.
ORT_VERSION=1.31.1
ORT_PACKAGE=${FTU_ORT_PACKAGE:-onnxruntime}
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ -z "${ORT_DYLIB_PATH:-}" ] || [ ! -f "${ORT_DYLIB_PATH}" ]; then
  venv="$repo_root/.venv"
  if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv"
    python3 -m venv "$venv"
  fi
  if ! "$venv/bin/python" -c "import onnxruntime, sys; sys.exit(onnxruntime.__version__ != '$ORT_VERSION')" 2>/dev/null; then
    echo "== pip install $ORT_PACKAGE==$ORT_VERSION into $venv"
    "$venv/bin/pip" install --quiet "$ORT_PACKAGE==$ORT_VERSION"
  fi
  capi="$("$venv/bin/python" -c 'import os, onnxruntime; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')"
  lib="$(ls "$capi"/libonnxruntime.so* 2>/dev/null | head -n 1)"
  if [ -z "$lib" ]; then
    echo "no libonnxruntime.so in $capi" >&2
    exit 1
  fi
  export ORT_DYLIB_PATH="$lib"
fi
echo "== ONNX Runtime: $ORT_DYLIB_PATH"
