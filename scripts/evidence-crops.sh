#!/usr/bin/env bash
# Crops mode on generated whole-slide-like data: resize vs crops on
# large slides, the same model, sampling budget and seed. Ten 3072² slides from `ftu-train
# synth-wsi` (tissue islands on glass, FTU discs of 20–45 px radius), eight to train (2 folds),
# two held out; test Dice from `ftu-infer predict` + `score` on the held-out two. Prints a table.
# About 15 minutes on 2 cores after the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FTU_EVIDENCE_OUT:-evidence-crops}
rm -rf "$out"
mkdir -p "$out"
source scripts/ort.sh
cargo build --release --quiet --bin ftu-infer --bin ftu-train
bin=target/release
side=3072

# Slides wsi1..wsi10, assembled into one Kaggle layout: 1–8 train, 9–10 test.
data="$out/data"
mkdir -p "$data/train_images" "$data/test_images"
echo "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness,rle,age,sex" >"$data/train.csv"
echo "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness" >"$data/test.csv"
echo "id,rle" >"$data/truth.csv"
for s in $(seq 1 10); do
  one="$out/wsi$s"
  "$bin/ftu-train" synth-wsi --out "$one" --width $side --height $side --islands 4 \
    --island-radius 500 --ftus-per-island 10 --seed "$s" >/dev/null
  meta=$(tail -n 1 "$one/test.csv" | cut -d, -f2-)
  rle=$(tail -n 1 "$one/truth.csv" | cut -d, -f2-)
  if [ "$s" -le 8 ]; then
    mv "$one/test_images/wsi0.tiff" "$data/train_images/wsi$s.tiff"
    echo "wsi$s,$meta,$rle,," >>"$data/train.csv"
  else
    mv "$one/test_images/wsi0.tiff" "$data/test_images/wsi$s.tiff"
    echo "wsi$s,$meta" >>"$data/test.csv"
    echo "wsi$s,$rle" >>"$data/truth.csv"
  fi
  rm -rf "$one"
done

common=(--data "$data" --arch unet-resnet18 --size 256 --folds 2 --epochs 10 --batch 8
  --samples-per-epoch 32 --lr 0.003 --seed 0
  --bn-recalibrate 0 --config "$out/before-pixel-size-aug.toml")
# as measured for the README's table: before precise BN and pixel-size augmentation were defaults
mkdir -p "$out"
printf '[augment]\np_pixel_size = 0.0\n' >"$out/before-pixel-size-aug.toml"

test_data="$data"
source scripts/evidence-lib.sh

t0=$(date +%s)
"$bin/ftu-train" train "${common[@]}" --out "$out/resize" >"$out/resize.log" 2>&1
t1=$(date +%s)
"$bin/ftu-train" train "${common[@]}" --crops --crop-scale 0.25 --out "$out/crops" >"$out/crops.log" 2>&1
t2=$(date +%s)

printf '\n%-40s %12s %12s %10s %8s\n' "run (8 slides of ${side}², 256² input)" "val@train" "val@full" "test Dice" "seconds"
read -r a b <<<"$(best "$out/resize")"
printf '%-40s %12s %12s %10s %8s\n' "resize: whole slide to 256²" "$a" "$b" "$(score "$out/resize")" $((t1 - t0))
read -r a b <<<"$(best "$out/crops")"
printf '%-40s %12s %12s %10s %8s\n' "crops: 1024² windows at scale 0.25" "$a" "$b" "$(score "$out/crops")" $((t2 - t1))
