#!/usr/bin/env bash
# The demo: the whole job end to end on generated data, from a fresh clone. Gets ONNX Runtime from
# PyPI when missing, builds in release, generates a synthetic Kaggle-layout folder, trains 2 folds
# of a small U-Net in Candle, exports them to ONNX with the ensemble manifest (per-organ
# thresholds from the out-of-fold predictions), runs ftu-infer with flips TTA on the test slides,
# scores them against the truth and prints where everything is. Fails if the mean Dice is < 0.85.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FTU_DEMO_OUT:-demo-out}
rm -rf "$out"
mkdir -p "$out"
declare -a stages=()
stage_start=$(date +%s)
total_start=$stage_start
stage() { # stage NAME: closes the running stage under NAME
  local now
  now=$(date +%s)
  stages+=("$1:$((now - stage_start))")
  stage_start=$now
}

echo "== ONNX Runtime (onnxruntime==1.31.1 from PyPI into .venv unless ORT_DYLIB_PATH is set)"
source scripts/ort.sh
stage "onnx runtime"

echo "== build (release)"
cargo build --release --quiet --bin ftu-infer --bin ftu-train
bin=target/release
stage "build"

echo "== synthetic data: 40 training + 10 test slides, 512², mixed TIFF formats -> $out/data"
"$bin/ftu-train" synth --out "$out/data" --train 40 --test 10 --size 512 --seed 0 --mixed-formats
row=$(sed -n 2p "$out/data/train.csv")
IFS=, read -r id organ _ height width _ _ rle _ <<<"$row"
"$bin/ftu-infer" rle decode --height "$height" --width "$width" --out "$out/$id.mask.png" "$rle"
if [[ "$("$bin/ftu-infer" rle encode "$out/$id.mask.png")" != "$rle" ]]; then
  echo "RLE round trip FAILED for slide $id" >&2
  exit 1
fi
echo "slide $id ($organ): RLE -> $out/$id.mask.png -> RLE round trip ok"
stage "synthetic data"

echo "== train: unet-resnet18, 2 folds, 160², 16 epochs of 48 samples (Candle, CPU)"
"$bin/ftu-train" train --data "$out/data" --out "$out/run" --arch unet-resnet18 \
  --decoder-channels 64,32,16,16,8 --size 160 --folds 2 --epochs 16 --batch 8 \
  --samples-per-epoch 48 --lr 0.003 --seed 0
stage "train + export"

echo "== predict: the trained 2-fold ensemble, flips TTA, per-organ thresholds"
cat "$out/run/manifest.toml"
"$bin/ftu-infer" predict --manifest "$out/run/manifest.toml" --data "$out/data" \
  --out "$out/submission.csv" --overlays "$out/overlays" --probs "$out/probs" --geojson "$out/geojson"
stage "predict"

echo "== score against the truth"
"$bin/ftu-infer" score --truth "$out/data/truth.csv" --pred "$out/submission.csv" \
  --meta "$out/data/test.csv" | tee "$out/score.txt"
stage "score"

echo
echo "== time per stage"
for s in "${stages[@]}"; do
  printf '%-16s %6s s\n' "${s%%:*}" "${s##*:}"
done
printf '%-16s %6s s\n' "total" "$(( $(date +%s) - total_start ))"
echo
echo "submission      $out/submission.csv (report: $out/submission.report.json)"
echo "overlays        $out/overlays/ (predicted outline yellow, truth cyan)"
echo "probabilities   $out/probs/"
echo "outlines        $out/geojson/ (QuPath GeoJSON per slide, PNG overview)"
echo "training        $out/run/ (metrics.csv, fold*/loss.png, fold*/dice.png, fold*/overlays/, fold*/model.onnx)"
echo "manifest        $out/run/manifest.toml"
mean=$(awk '/^mean dice/ {print $3}' "$out/score.txt")
if ! awk -v m="$mean" 'BEGIN { exit !(m >= 0.85) }'; then
  echo "mean Dice $mean is below 0.85" >&2
  exit 1
fi
echo "mean Dice $mean (>= 0.85)"
