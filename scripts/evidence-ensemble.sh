#!/usr/bin/env bash
# Several runs made one ensemble, on generated data at the demo's budget: U-Net/ResNet-18,
# U-Net/EfficientNet-B0, SegFormer/MiT-B0 and a lung-only U-Net/ResNet-18 (2 folds, 160², 16
# epochs of 48 samples), then `ftu-train ensemble` over all four. Prints each run's and the
# ensemble's out-of-fold Dice (per-organ thresholds, from ensemble.json) and their Dice on the
# 10 held-out test slides (`ftu-infer predict` + `score`), and the ensemble command's peak memory.
#   bash scripts/evidence-ensemble.sh      # into evidence-ensemble/ (FTU_EVIDENCE_OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${FTU_EVIDENCE_OUT:-evidence-ensemble}")
mkdir -p "$out"
source scripts/ort.sh >/dev/null
cargo build --release --quiet --bin ftu-infer --bin ftu-train
bin=$(realpath target/release)
test_data="$out/data"
source scripts/evidence-lib.sh

[ -f "$out/data/train.csv" ] || "$bin/ftu-train" synth --out "$out/data" --train 40 --test 10 --size 512 --seed 0 --mixed-formats
budget="--data $out/data --size 160 --folds 2 --epochs 16 --batch 8 --samples-per-epoch 48 --lr 0.003 --seed 0"
train() { # name, options…: trains into $out/NAME unless it is finished
  local name=$1; shift
  if [ ! -f "$out/$name/manifest.toml" ]; then
    # shellcheck disable=SC2086
    "$bin/ftu-train" train $budget --out "$out/$name" --overwrite "$@" 2>&1 | grep -E "best validation|out-of-fold" || true
  fi
}
start=$(date +%s)
train unet-resnet18 --arch unet-resnet18 --decoder-channels 64,32,16,16,8
train unet-efficientnet_b0 --arch unet-efficientnet_b0 --decoder-channels 64,32,16,16,8
train segformer-mit_b0 --arch segformer-mit_b0 --decoder-channels 64
train lung-unet-resnet18 --arch unet-resnet18 --decoder-channels 64,32,16,16,8 --organs lung
echo "training: $(( $(date +%s) - start )) s"

runs=("$out/unet-resnet18" "$out/unet-efficientnet_b0" "$out/segformer-mit_b0" "$out/lung-unet-resnet18")
rm -rf "$out/ensemble"
/usr/bin/time -v -o "$out/ensemble-time.txt" "$bin/ftu-train" ensemble --runs "${runs[@]}" --out "$out/ensemble" | tee "$out/ensemble-summary.txt"
echo "ensemble: $(awk -F': ' '/Elapsed/ {print $2}' "$out/ensemble-time.txt") wall, peak RSS $(awk -F': ' '/Maximum resident/ {printf "%.0f MiB", $2 / 1024}' "$out/ensemble-time.txt")"

# The lung test slides alone, for the lung-only run (its manifest serves no other organ).
lung="$out/data-lung"
rm -rf "$lung" && mkdir -p "$lung"
ln -s "$out/data/test_images" "$lung/test_images"
for f in test.csv truth.csv; do
  python3 - "$out/data/$f" "$lung/$f" "$out/data/test.csv" <<'PY'
import csv, sys
lung = {r["id"] for r in csv.DictReader(open(sys.argv[3])) if r["organ"] == "lung"}
rows = list(csv.DictReader(open(sys.argv[1])))
with open(sys.argv[2], "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=rows[0].keys())
    w.writeheader()
    w.writerows(r for r in rows if r["id"] in lung)
PY
done
score_on() { # run-dir, data -> "mean lung" test Dice
  "$bin/ftu-infer" predict --manifest "$1/manifest.toml" --data "$2" --out "$1/submission-$(basename "$2").csv" >/dev/null 2>&1
  "$bin/ftu-infer" score --truth "$2/truth.csv" --pred "$1/submission-$(basename "$2").csv" --meta "$2/test.csv" |
    awk '/^mean dice/ {m = $3} $1 == "lung" {l = $3} END {printf "%s %s", m, (l == "" ? "-" : l)}'
}

echo
echo "| model | OOF mean Dice, 40 labelled slides (lung) | test mean Dice, 10 held-out slides (lung) |"
echo "|---|---|---|"
for r in "${runs[@]}" "$out/ensemble"; do
  name=$(basename "$r")
  oof=$(python3 - "$out/ensemble/ensemble.json" "$name" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
name = sys.argv[2]
if name == "ensemble":
    c = e["chosen"]
    lung = e["postprocess"].get("lung", {}).get("dice_after")
    print(f'{e["final_dice"]:.4f} ({lung:.4f}); weights {", ".join(f"{w:.2f}" for w in c["weights"])}')
else:
    c = next(l for l in e["lines"] if l["label"].startswith(name + " alone"))["candidate"]
    only = "" if c["covers"] else " on its organs only"
    print(f'{c["mean_dice"]:.4f} ({c["organ_dice"]["lung"]:.4f}){only}')
PY
)
  if [ "$name" = lung-unet-resnet18 ]; then
    read -r _ l <<<"$(score_on "$r" "$lung")"
    test="- ($l)"
  else
    read -r m l <<<"$(score_on "$r" "$out/data")"
    test="$m ($l)"
  fi
  echo "| $name | $oof | $test |"
done
