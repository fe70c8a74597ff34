#!/usr/bin/env bash
# The demo: what ftu does today, end to end on generated data. Builds in release, generates a
# synthetic Kaggle-layout folder, scores its truth, round-trips a mask through RLE, and runs the
# ONNX Runtime ensemble engine over the test slides. Until `ftu-train train` lands, the ensemble is
# two hand-made colour-rule models (ftu-onnx-samples), so its Dice is low: it shows the engine, not
# a trained model.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FTU_DEMO_OUT:-demo-out}
start=$(date +%s)

echo "== build (release)"
cargo build --release --quiet --bin ftu-infer --bin ftu-train --bin ftu-onnx-samples
bin=target/release
source scripts/ort.sh

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

echo "== predict: two colour-rule models at 512² and 768², flips TTA, per-organ thresholds"
"$bin/ftu-onnx-samples" linear --weights=-4,2,2 --bias=0.3 --out "$out/pale.onnx" 2>/dev/null
"$bin/ftu-onnx-samples" linear --weights=-3,1,3 --bias=0.4 --out "$out/blue.onnx" 2>/dev/null
cat > "$out/ensemble.toml" <<'TOML'
[tta]
mode = "flips"

[thresholds]
default = 0.5
lung = 0.55

[[group]]
size = 512
weight = 1
[[group.model]]
path = "pale.onnx"
norm = "unit"

[[group]]
size = 768
weight = 2
[[group.model]]
path = "blue.onnx"
norm = "unit"
TOML
"$bin/ftu-infer" inspect "$out/pale.onnx"
"$bin/ftu-infer" predict --manifest "$out/ensemble.toml" --data "$out/data" --out "$out/submission.csv" \
  --overlays "$out/overlays" --probs "$out/probs"
"$bin/ftu-infer" score --truth "$out/data/truth.csv" --pred "$out/submission.csv" --meta "$out/data/test.csv"

echo "== done in $(( $(date +%s) - start )) s; slides in $out/data, mask in $out/$id.mask.png,"
echo "   submission $out/submission.csv, overlays $out/overlays/, probability maps $out/probs/"
