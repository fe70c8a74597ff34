#!/usr/bin/env bash
# Sourced (or run) to build ftu for CUDA on a machine without CUDA (no driver, no toolkit): the
# pinned CUDA 13.0 toolchain and libraries from PyPI into .cuda/ (once), a link stub for the
# driver's libcuda (never shipped: the GPU machine has the real one), and the variables candle's
# `cuda` feature needs at build time. Then, with arguments, runs them as a command, e.g.
#   bash scripts/cuda.sh cargo build --release -p ftu-trainer --features cuda --target-dir target/cuda
# The pins are below. CUDA_COMPUTE_CAP defaults to 90 (H100/H200).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cuda_dir="${FTU_CUDA_DIR:-$repo_root/.cuda}"
root="$cuda_dir/nvidia/cu13"

if [ ! -x "$root/bin/nvcc" ]; then
  echo "== CUDA 13.0 toolchain and libraries from PyPI into $cuda_dir"
  python3 -m pip install --quiet --no-deps --target "$cuda_dir" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14
fi

lib="$root/lib"
# Unversioned names for the linker.
for so in "$lib"/lib{cudart,cublas,cublasLt,nvrtc,curand}.so.*; do
  [ -e "$so" ] || continue
  base="${so%%.so.*}.so"
  [ -e "$base" ] || ln -s "$(basename "$so")" "$base"
done
# The driver's libcuda as a stub with the functions cuda.h declares: enough to link, never run.
if [ ! -e "$lib/stubs/libcuda.so" ]; then
  mkdir -p "$lib/stubs"
  header="$(find "$root" -name cuda.h -path '*include*' | head -n 1)"
  if [ -z "$header" ]; then
    echo "no cuda.h under $root" >&2
    exit 1
  fi
  grep -oE '^\s*CUresult CUDAAPI (cu[A-Za-z0-9_]+)' "$header" | awk '{print $3}' | sort -u |
    awk '{print "int " $1 "(void) { return 0; }"}' >"$lib/stubs/libcuda_stub.c"
  # cuda.h maps API names to versioned ones (cuCtxCreate -> cuCtxCreate_v2 ...): stub those too.
  grep -oE '#define (cu[A-Za-z0-9_]+)\s+(cu[A-Za-z0-9_]+)' "$header" | awk '{print $3}' | sort -u |
    awk '{print "int " $1 "(void) { return 0; }"}' >>"$lib/stubs/libcuda_stub.c"
  sort -u "$lib/stubs/libcuda_stub.c" -o "$lib/stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/stubs/libcuda.so" "$lib/stubs/libcuda_stub.c"
fi

export CUDA_ROOT="$root"
export CUDA_PATH="$root"
export PATH="$root/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
export LIBRARY_PATH="$lib:$lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
echo "== CUDA build environment: nvcc $("$root/bin/nvcc" --version | grep -o 'release [0-9.]*'), compute capability $CUDA_COMPUTE_CAP"

if [ "$#" -gt 0 ]; then
  "$@"
fi
