#!/usr/bin/env bash
# On any machine (no GPU needed): everything the inference GPU check (scripts/gpu-infer-check.sh)
# needs, in gpu-infer/ (git-ignored), then the commands to run on the GPU machine, in order.
#
#   gpu-infer/ship/ort.tar.zst.NN   onnxruntime-gpu 1.31.1's Python package (its libonnxruntime,
#                                   CUDA provider and Python module; not the TensorRT provider),
#                                   tar + zstd -19, split into parts of 60 MiB: one per command
#   gpu-infer/ship/ftu.tar.gz       the portable ftu-infer and ftu-train (scripts/portable.sh)
#   gpu-infer/ship/SHA256SUMS       the parts, the joined archive, and the check's inputs as made here
#   gpu-infer/inputs/               those inputs (bench/predict/gpu_inputs.sh): 8 generated 3000²
#                                   slides, unet-resnet18 and segformer-mit_b0 exported in float32
#                                   and --fp16 from random weights, manifests f32, f16 and mixed
#
# The inputs are not shipped (about 310 MB): the check makes them again on the GPU machine with
# the shipped ftu-train and the same seeds, and compares them with SHA256SUMS.
#
# Reused when present: the portable binaries (FTU_REBUILD=1 rebuilds them: about 7 minutes on 2
# cores), the downloaded wheel and gpu-infer/ort.tar.zst (zstd -19 takes about 5 minutes on 2
# cores; delete the file to make it again).
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_VERSION=1.31.1
SLIDES=${SLIDES:-8}
SIZE=${SIZE:-768}
PART=60M
out=gpu-infer
ship=$out/ship
portable=target/portable/x86_64-unknown-linux-gnu/dist
source bench/predict/gpu_inputs.sh

echo "== portable ftu-infer and ftu-train"
if [ "${FTU_REBUILD:-0}" != 1 ] && [ -x "$portable/ftu-infer" ] && [ -x "$portable/ftu-train" ]; then
  echo "reusing $portable (built $(date -u -r "$portable/ftu-infer" '+%Y-%m-%d %H:%M UTC'); FTU_REBUILD=1 rebuilds)"
  newer=$(find infer/src formats/src trainer/src models/src -name '*.rs' -newer "$portable/ftu-infer" 2>/dev/null | wc -l)
  [ "$newer" = 0 ] || echo "note: $newer source files are newer than that build"
else
  echo "building with scripts/portable.sh (about 10 minutes on 2 cores)"
  bash scripts/portable.sh
fi

echo "== onnxruntime-gpu==$ORT_VERSION"
mkdir -p "$out/download" "$ship"
wheel=$(ls "$out"/download/onnxruntime_gpu-"$ORT_VERSION"-cp312-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  # The GPU machine's Python is 3.12: the wheel's Python module must be cp312.
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d "$out/download" \
    "onnxruntime-gpu==$ORT_VERSION"
  wheel=$(ls "$out"/download/onnxruntime_gpu-"$ORT_VERSION"-cp312-*.whl | head -n 1)
fi
echo "$wheel ($(( $(stat -c %s "$wheel") / 1000000 )) MB)"
if [ ! -s "$out/ort.tar.zst" ] || [ "$wheel" -nt "$out/ort.tar.zst" ]; then
  echo "== onnxruntime/ from the wheel, tar + zstd -19 (about 5 minutes on 2 cores)"
  tmp=$(mktemp -d)
  unzip -q "$wheel" 'onnxruntime/*' -x 'onnxruntime/capi/libonnxruntime_providers_tensorrt.so' -d "$tmp"
  tar -C "$tmp" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - onnxruntime \
    | zstd -19 --long=27 -T0 -q -o "$out/ort.tar.zst.tmp"
  rm -rf "$tmp"
  mv "$out/ort.tar.zst.tmp" "$out/ort.tar.zst"
else
  echo "reusing $out/ort.tar.zst"
fi

echo "== parts of $PART"
rm -f "$ship"/ort.tar.zst.*
split -b "$PART" -d -a 2 "$out/ort.tar.zst" "$ship/ort.tar.zst."
parts=("$ship"/ort.tar.zst.*)
whole=$(sha256sum <"$out/ort.tar.zst" | cut -d' ' -f1)
joined=$(cat "${parts[@]}" | sha256sum | cut -d' ' -f1)
[ "$whole" = "$joined" ] || { echo "the joined parts differ from $out/ort.tar.zst" >&2; exit 1; }
ls -l "${parts[@]}" | awk '{print $5, $NF}'
echo "joined again: sha256 $joined, equal to $out/ort.tar.zst's"

echo "== ftu binaries"
tar -C "$portable" -cf - ftu-infer ftu-train | gzip -9 >"$ship/ftu.tar.gz"
ls -l "$ship/ftu.tar.gz" | awk '{print $5, $NF}'

echo "== the check's inputs: $SLIDES slides of 3000², four models, group size $SIZE"
make_gpu_inputs "$portable/ftu-train" "$out/inputs" "$SLIDES" "$SIZE"
du -sh "$out/inputs/models" "$out/inputs/data"
{
  (cd "$ship" && sha256sum ort.tar.zst.*)
  echo "$whole  ort.tar.zst"
  (cd "$out/inputs" && find . -type f | sort | sed 's|^\./||' | xargs sha256sum | sed 's|  |  inputs/|')
} >"$ship/SHA256SUMS.tmp"
mv "$ship/SHA256SUMS.tmp" "$ship/SHA256SUMS"
printf 'SLIDES=%s\nSIZE=%s\nPARTS=%s\n' "$SLIDES" "$SIZE" "${#parts[@]}" >"$ship/settings"

# What one command may take (64 MiB) less the checkout that travels with it (a margin of 4 MiB).
limit=$(( 60 * 1024 * 1024 ))
last=${parts[-1]}
rest=$(( $(stat -c %s "$last") + $(stat -c %s "$ship/ftu.tar.gz") + 4096 ))
uploads=("${parts[@]}")
with_check=("$ship/ftu.tar.gz" "$ship/SHA256SUMS" "$ship/settings")
if [ "$rest" -le "$limit" ]; then
  unset 'uploads[-1]'
  with_check=("$last" "${with_check[@]}")
fi
echo
echo "== on the GPU machine, in a copy of this checkout, back to back (/tmp must survive between them):"
n=0
for p in "${uploads[@]}"; do
  n=$((n + 1))
  echo "$n. with $p copied there:"
  echo "   mkdir -p /tmp/ftu-gpu && cp $p /tmp/ftu-gpu/ && ls -l /tmp/ftu-gpu"
done
n=$((n + 1))
echo "$n. with ${with_check[*]} copied there (limit 540 s; its parts' limits add up to about 7 minutes):"
echo "   FTU_GPU_OUT=\$OUT bash scripts/gpu-infer-check.sh"
