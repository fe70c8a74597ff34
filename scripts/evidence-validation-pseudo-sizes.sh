#!/usr/bin/env bash
# On generated data: training-size vs full-resolution validation Dice,
# with vs without pseudo-labels (same budget), one size vs two. Prints a table; every number
# comes from the commands below (seeded). About 12 minutes on 2 cores after the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FTU_EVIDENCE_OUT:-evidence-out}
rm -rf "$out"
mkdir -p "$out"
source scripts/ort.sh
cargo build --release --quiet --bin ftu-infer --bin ftu-train
bin=target/release

# 16 labelled slides (+ 10 held-out test slides with truth), 24 unlabelled ones, 512².
"$bin/ftu-train" synth --out "$out/labelled" --train 16 --test 10 --size 512 --seed 1
"$bin/ftu-train" synth --out "$out/unlabelled" --train 2 --test 24 --size 512 --seed 2

common=(--data "$out/labelled" --arch unet-resnet18 --decoder-channels 64,32,16,16,8 --folds 2
  --epochs 12 --batch 8 --samples-per-epoch 48 --lr 0.003 --seed 0
  --bn-recalibrate 0 --config "$out/before-pixel-size-aug.toml")
# as measured for the README's table: before precise BN and pixel-size augmentation were defaults
mkdir -p "$out"
printf '[augment]\np_pixel_size = 0.0\n' >"$out/before-pixel-size-aug.toml"

test_data="$out/labelled"
source scripts/evidence-lib.sh

t0=$(date +%s)
"$bin/ftu-train" train "${common[@]}" --size 128 --out "$out/one-size" >"$out/one-size.log" 2>&1
t1=$(date +%s)
"$bin/ftu-infer" pseudo --manifest "$out/one-size/manifest.toml" --data "$out/unlabelled" \
  --out "$out/pseudo" >"$out/pseudo.log" 2>&1
t2=$(date +%s)
"$bin/ftu-train" train "${common[@]}" --size 128 --out "$out/pseudo-run" \
  --pseudo "$out/pseudo/pseudo.csv" --pseudo-weight 0.5 >"$out/pseudo-run.log" 2>&1
t3=$(date +%s)
"$bin/ftu-train" train "${common[@]}" --sizes 128,192 --out "$out/two-sizes" >"$out/two-sizes.log" 2>&1
t4=$(date +%s)

printf '\n%-34s %12s %12s %10s %8s\n' "run" "val@train" "val@full" "test Dice" "seconds"
read -r a b <<<"$(best "$out/one-size")"
printf '%-34s %12s %12s %10s %8s\n' "16 labelled, 128²" "$a" "$b" "$(score "$out/one-size")" $((t1 - t0))
read -r a b <<<"$(best "$out/pseudo-run")"
printf '%-34s %12s %12s %10s %8s\n' "16 labelled + 24 pseudo, 128²" "$a" "$b" "$(score "$out/pseudo-run")" $((t3 - t2))
read -r a b <<<"$(best "$out/two-sizes/size192")"
printf '%-34s %12s %12s %10s %8s\n' "16 labelled, 192² alone" "$a" "$b" "$(score "$out/two-sizes/size192")" "-"
printf '%-34s %12s %12s %10s %8s\n' "16 labelled, 128² + 192² (one run)" "-" "-" "$(score "$out/two-sizes")" $((t4 - t3))
