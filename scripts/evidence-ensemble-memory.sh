#!/usr/bin/env bash
# `ftu-train ensemble` visits the labelled slides one at a time and keeps Dice counts per
# candidate, never every out-of-fold map: its peak memory hardly grows with the number of
# slides. Two small runs (U-Net and FPN on ResNet-18, 64², 2 folds, 1 epoch) on 30 and on 300
# generated 512² slides, then the ensemble of the two at weight steps of 0.1 (12 candidates), its
# peak RSS and wall time from /usr/bin/time.
#   bash scripts/evidence-ensemble-memory.sh      # into evidence-ensemble-memory/
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${FTU_EVIDENCE_OUT:-evidence-ensemble-memory}")
mkdir -p "$out"
cargo build --release --quiet --bin ftu-train
bin=$(realpath target/release)
echo "| labelled slides | OOF map data of the two runs at full resolution | ensemble peak RSS | ensemble wall |"
echo "|---|---|---|---|"
for n in 30 300; do
  data="$out/data-$n"
  [ -f "$data/train.csv" ] || "$bin/ftu-train" synth --out "$data" --train "$n" --test 0 --size 512 --seed 1 >/dev/null
  common="--data $data --size 64 --folds 2 --epochs 1 --batch 4 --samples-per-epoch 8 --seed 0"
  for arch in "unet-resnet18 --decoder-channels 16,16,8,8,8" "fpn-resnet18 --decoder-channels 16,8"; do
    name="$n-${arch%% *}"
    # shellcheck disable=SC2086
    [ -f "$out/$name/manifest.toml" ] || "$bin/ftu-train" train $common --arch $arch --out "$out/$name" --overwrite >/dev/null 2>&1
  done
  rm -rf "$out/ens-$n"
  /usr/bin/time -v -o "$out/time-$n.txt" "$bin/ftu-train" ensemble --runs "$out/$n-unet-resnet18" "$out/$n-fpn-resnet18" \
    --out "$out/ens-$n" >/dev/null
  rss=$(awk -F': ' '/Maximum resident/ {printf "%.0f MiB", $2 / 1024}' "$out/time-$n.txt")
  wall=$(awk -F': ' '/Elapsed/ {print $2}' "$out/time-$n.txt")
  # Two runs' maps, each slide at 512² in float32.
  maps=$(python3 -c "print(f'{2 * $n * 512 * 512 * 4 / 2**20:.0f} MiB')")
  echo "| $n | $maps | $rss | $wall |"
done
