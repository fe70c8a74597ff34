#!/usr/bin/env bash
# The demo: what ftu does today, end to end on generated data. Builds in release, generates a
# synthetic Kaggle-layout folder, scores its truth, and round-trips a mask through RLE.
# (Training and the ONNX Runtime engine join this script as they land.)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FTU_DEMO_OUT:-demo-out}
start=$(date +%s)

echo "== build (release)"
cargo build --release --quiet --bin ftu-infer --bin ftu-train
bin=target/release

echo "== synthetic data: 20 training + 10 test slides, 1024², mixed TIFF formats -> $out/data"
rm -rf "$out"
"$bin/ftu-train" synth --out "$out/data" --train 20 --test 10 --size 1024 --seed 0 --mixed-formats

echo "== score: the truth against itself (expect 1.0)"
"$bin/ftu-infer" score --truth "$out/data/truth.csv" --pred "$out/data/truth.csv" --meta "$out/data/test.csv"

echo "== score: the empty sample submission (expect 0.0: every slide has an FTU)"
"$bin/ftu-infer" score --truth "$out/data/truth.csv" --pred "$out/data/sample_submission.csv" --meta "$out/data/test.csv"

echo "== RLE round trip through a PNG mask"
row=$(sed -n 2p "$out/data/train.csv")
IFS=, read -r id organ _ height width _ _ rle _ <<<"$row"
"$bin/ftu-infer" rle decode --height "$height" --width "$width" --out "$out/$id.mask.png" "$rle"
back=$("$bin/ftu-infer" rle encode "$out/$id.mask.png")
if [[ "$back" == "$rle" ]]; then
  echo "slide $id ($organ): decode -> $out/$id.mask.png -> encode gives the same RLE"
else
  echo "RLE round trip FAILED for slide $id" >&2
  exit 1
fi

echo "== done in $(( $(date +%s) - start )) s; slides in $out/data, mask in $out/$id.mask.png"
