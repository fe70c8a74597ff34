# Sourced by the evidence scripts: `score` and `best`, with $bin set to the release binaries and
# $test_data to the Kaggle folder whose test slides (test.csv, truth.csv) score a run.

score() { # run-dir -> mean test Dice of its manifest on $test_data's test slides
  "$bin/ftu-infer" predict --manifest "$1/manifest.toml" --data "$test_data" \
    --out "$1/submission.csv" >/dev/null 2>&1
  "$bin/ftu-infer" score --truth "$test_data/truth.csv" --pred "$1/submission.csv" \
    --meta "$test_data/test.csv" | sed -n 's/^mean dice \([0-9.]*\).*/\1/p'
}

best() { # run-dir -> "train-size full-res" Dice of each fold's best epoch (by full res), averaged
  python3 - "$1/metrics.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
best = {}
for r in rows:
    f = r["fold"]
    if f not in best or float(r["val_dice_full"]) > float(best[f]["val_dice_full"]):
        best[f] = r
n = len(best)
print(f'{sum(float(r["val_dice"]) for r in best.values()) / n:.4f} {sum(float(r["val_dice_full"]) for r in best.values()) / n:.4f}')
PY
}
