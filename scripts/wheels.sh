#!/usr/bin/env bash
# The ftu-infer and ftu-train wheels (scripts/portable.sh builds them with maturin, `bindings =
# "bin"`: each wheel carries its binary, installed into the environment's bin/, manylinux_2_28),
# checked as an offline Kaggle notebook would install them: a fresh virtualenv, `pip install
# --no-index --find-links` from a folder holding the wheels and their dependencies (onnxruntime,
# openslide-bin and theirs, downloaded here), and the binaries run from that environment's
# bin/ with nothing activated and no ORT_DYLIB_PATH.
#
#   scripts/wheels.sh            # wheels into target/wheels/, dependencies into target/wheelhouse/
#
# On Kaggle: upload target/wheels/ and target/wheelhouse/ as one dataset, then
#   !pip install --no-index --find-links /kaggle/input/DATASET ftu-infer
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
OPENSLIDE_BIN_VERSION=4.0.1.2
venv=.venv-portable
# Builds (or, when nothing changed, only repacks) both wheels and checks their binaries.
bash scripts/portable.sh
ls -l target/wheels

echo "== dependencies into target/wheelhouse"
mkdir -p target/wheelhouse
"$venv/bin/pip" download --quiet --only-binary=:all: --platform manylinux_2_28_x86_64 \
  --python-version "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
  -d target/wheelhouse "onnxruntime==$ORT_VERSION" "openslide-bin==$OPENSLIDE_BIN_VERSION"

echo "== offline install into a fresh virtualenv"
check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
python3 -m venv "$check/env"
"$check/env/bin/pip" install --quiet --no-index --find-links target/wheels --find-links target/wheelhouse \
  "ftu-infer[slides]" ftu-train
# Nothing activated, a bare PATH: the binaries find ONNX Runtime and OpenSlide through the
# Python beside them.
run() { env -i HOME="$check" PATH=/usr/bin:/bin "$@"; }
run "$check/env/bin/ftu-train" synth --out "$check/data" --train 2 --test 2 --size 256 >/dev/null 2>&1
run "$check/env/bin/ftu-train" export --arch unet-resnet18 --out "$check/model.onnx" >/dev/null
printf '[[group]]\nsize = 256\n[[group.model]]\npath = "model.onnx"\nnorm = "imagenet"\noutput = 0\nactivation = "sigmoid"\n' >"$check/manifest.toml"
run "$check/env/bin/ftu-infer" predict --manifest "$check/manifest.toml" --data "$check/data" \
  --out "$check/submission.csv" 2>"$check/predict.err" >/dev/null || { cat "$check/predict.err" >&2; exit 1; }
grep -q "$check/env/lib/python.*/site-packages/onnxruntime/capi/libonnxruntime" "$check/predict.err" ||
  { echo "ftu-infer did not load the wheel's ONNX Runtime:" >&2; cat "$check/predict.err" >&2; exit 1; }
[ "$(wc -l <"$check/submission.csv")" = 3 ] || { echo "submission without 2 rows" >&2; exit 1; }
slide=$(ls "$check"/data/test_images/* | head -n 1)
run "$check/env/bin/ftu-infer" inspect "$slide" | grep -q "^openslide: 4\..*(the openslide_bin package of $check/env/bin/python)" ||
  { echo "ftu-infer did not find the wheel's OpenSlide" >&2; exit 1; }
echo "== the wheels install offline and run: predict used the onnxruntime wheel, inspect the openslide-bin wheel"
