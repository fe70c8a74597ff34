#!/usr/bin/env bash
# ftu-infer against the usual Python pipeline (tifffile + OpenCV + onnxruntime, python_pipeline.py)
# on the same manifest and generated 3000² slides: 2 models, flips TTA. Prints slides/s of each,
# the median over ROUNDS alternating runs, the ratio, and how far the two submissions agree.
#   bash bench/predict/run.sh            # CPU
#   DEVICE=cuda bash bench/predict/run.sh  # with onnxruntime-gpu (FTU_ORT_PACKAGE=onnxruntime-gpu)
#   POOLS=1 bash bench/predict/run.sh      # instead: --thread-pool per-session against shared
#   MIXED=1 bash bench/predict/run.sh      # instead: the mixed ensemble (below) against its limit
set -euo pipefail
cd "$(dirname "$0")/../.."
SLIDES=${SLIDES:-8}
ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-768}
WIDTH=${WIDTH:-16}
DEVICE=${DEVICE:-cpu}

source scripts/ort.sh
echo "== Python baseline packages"
.venv/bin/pip install --quiet tifffile imagecodecs opencv-python-headless numpy

echo "== build"
cargo build --release --quiet -p ftu-infer -p ftu-trainer -p ftu-onnx
bin=target/release
work=bench-out/predict
rm -rf "$work" && mkdir -p "$work"

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

if [ "${MIXED:-0}" = 1 ]; then
  # The ensemble people bring: a U-Net-ResNet18 and a SegFormer-MiT-b0 (ImageNet normalisation) in
  # one 256² group, a 3-output U-Net-ResNet18 (pm1, mask output by name) in a second, flips TTA,
  # over 3000² slides in six TIFF flavours. Untrained exports: their cost is what is measured.
  SLIDES=${MIXED_SLIDES:-6}
  echo "== mixed ensemble: $SLIDES slides of 3000² in mixed TIFF flavours, 3 models in 2 groups of 256², flips TTA"
  "$bin/ftu-train" synth --out "$work/mixed" --train 0 --test "$SLIDES" --size 3000 --seed 7 --mixed-formats >/dev/null
  "$bin/ftu-train" export --arch unet-resnet18 --seed 1 --out "$work/unet.onnx" >/dev/null
  "$bin/ftu-train" export --arch segformer-mit_b0 --seed 2 --out "$work/segformer.onnx" >/dev/null
  "$bin/ftu-train" export --arch unet-resnet18 --organ-head --pixel-size-head --norm pm1 --seed 3 \
    --out "$work/unet3.onnx" >/dev/null
  cat > "$work/mixed.toml" <<TOML
[tta]
mode = "flips"
[thresholds]
default = 0.5
kidney = 0.45
[[group]]
size = 256
[[group.model]]
path = "unet.onnx"
norm = "imagenet"
[[group.model]]
path = "segformer.onnx"
norm = "imagenet"
[[group]]
size = 256
[[group.model]]
path = "unet3.onnx"
norm = "pm1"
output = "logits"
TOML
  threads=${THREADS:-$(nproc)}
  walls=() limits=() models=() pys=() pyruns=() over_limit=() over_python=()
  for round in $(seq "$ROUNDS"); do
    "$bin/ftu-infer" predict --manifest "$work/mixed.toml" --data "$work/mixed" --out "$work/mixed-ftu.csv" \
      --device "$DEVICE" --threads "$threads" --bench-limit >"$work/mixed-ftu.log"
    limits+=("$(sed -n 's/^limit: .* took \([0-9.]*\) s$/\1/p' "$work/mixed-ftu.log")")
    models+=("$(sed -n 's/^  model stage in predict \([0-9.]*\) s.*/\1/p' "$work/mixed-ftu.log")")
    walls+=("$(sed -n 's/.*with start-up and loading ([0-9.]* s) \([0-9.]*\) s.*/\1/p' "$work/mixed-ftu.log")")
    .venv/bin/python bench/predict/python_pipeline.py --manifest "$work/mixed.toml" --data "$work/mixed" \
      --out "$work/mixed-python.csv" --device "$DEVICE" >"$work/mixed-python.log"
    pys+=("$(sed -n 's/^python pipeline: .* in \([0-9.]*\) s,.*/\1/p' "$work/mixed-python.log")")
    pyruns+=("$(sed -n 's/^python session.run: \([0-9.]*\) s$/\1/p' "$work/mixed-python.log")")
    # The ratios are taken within a round (the same minute of this noisy machine), then the median.
    over_limit+=("$(awk "BEGIN {printf \"%.3f\", ${walls[-1]} / ${limits[-1]}}")")
    over_python+=("$(awk "BEGIN {printf \"%.3f\", ${walls[-1]} / ${pys[-1]}}")")
    echo "round $round: ftu-infer wall ${walls[-1]} s (model stage ${models[-1]} s, bare-ORT limit ${limits[-1]} s: ${over_limit[-1]}×); python ${pys[-1]} s (session.run ${pyruns[-1]} s; ftu/python ${over_python[-1]}×)"
  done
  w=$(median "${walls[@]}") l=$(median "${limits[@]}") m=$(median "${models[@]}")
  p=$(median "${pys[@]}") pr=$(median "${pyruns[@]}")
  echo "ftu-infer stages (last round):"
  sed -n '/^stage/,/^threshold/p' "$work/mixed-ftu.log"
  echo "== medians over $ROUNDS rounds, --threads $threads: ftu wall $w s, model stage $m s, bare-ORT limit $l s, python $p s (its session.run $pr s)"
  echo "== ftu wall / limit $(median "${over_limit[@]}")×, ftu wall / python $(median "${over_python[@]}")× (medians of each round's ratio)"
  "$bin/ftu-infer" score --truth "$work/mixed-python.csv" --pred "$work/mixed-ftu.csv" --meta "$work/mixed/test.csv" \
    >"$work/mixed-agreement.txt"
  echo "== agreement (Dice of ftu-infer's masks against the Python pipeline's): $(head -n 1 "$work/mixed-agreement.txt")"
  exit 0
fi


echo "== $SLIDES test slides of 3000² (synthetic), two models, ${SIZE}², flips TTA"
"$bin/ftu-train" synth --out "$work/data" --train 0 --test "$SLIDES" --size 3000 --seed 7 >/dev/null
"$bin/ftu-onnx-samples" conv-net --width "$WIDTH" --depth 3 --seed 1 --out "$work/a.onnx" 2>/dev/null
"$bin/ftu-onnx-samples" conv-net --width "$WIDTH" --depth 3 --seed 2 --out "$work/b.onnx" 2>/dev/null
cat > "$work/ensemble.toml" <<TOML
[tta]
mode = "flips"
[thresholds]
default = 0.5
kidney = 0.45
[[group]]
size = $SIZE
[[group.model]]
path = "a.onnx"
norm = "imagenet"
[[group.model]]
path = "b.onnx"
norm = "imagenet"
TOML

if [ "${POOLS:-0}" = 1 ]; then
  # ONNX Runtime's intra-op threads: a pool per model (the default) against one shared pool.
  echo "== thread pools: per-session against shared, $ROUNDS alternating rounds, --threads ${THREADS:-$(nproc)}"
  declare -A rate=([per-session]="" [shared]="")
  for round in $(seq "$ROUNDS"); do
    for pool in per-session shared; do
      "$bin/ftu-infer" predict --manifest "$work/ensemble.toml" --data "$work/data" --out "$work/$pool.csv" \
        --device "$DEVICE" --threads "${THREADS:-$(nproc)}" --thread-pool "$pool" >"$work/$pool.log"
      r=$(grep -o '[0-9.]* slides/s' "$work/$pool.log" | cut -d' ' -f1)
      rate[$pool]+="$r "
      echo "round $round: $pool $r slides/s"
    done
  done
  # shellcheck disable=SC2086
  a=$(median ${rate[per-session]}) b=$(median ${rate[shared]})
  cmp -s "$work/per-session.csv" "$work/shared.csv" && same="byte-identical" || same="DIFFERENT"
  echo "== median over $ROUNDS rounds: per-session $a slides/s, shared $b slides/s, shared/per-session $(awk "BEGIN {printf \"%.2f\", $b / $a}")×; submissions $same"
  [ "$same" = byte-identical ]
  exit 0
fi

ftu=()
py=()
for round in $(seq "$ROUNDS"); do
  "$bin/ftu-infer" predict --manifest "$work/ensemble.toml" --data "$work/data" --out "$work/ftu.csv" \
    --device "$DEVICE" >"$work/ftu.log"
  ftu+=("$(grep -o '[0-9.]* slides/s' "$work/ftu.log" | cut -d' ' -f1)")
  .venv/bin/python bench/predict/python_pipeline.py --manifest "$work/ensemble.toml" --data "$work/data" \
    --out "$work/python.csv" --device "$DEVICE" >"$work/python.log"
  py+=("$(grep -o '[0-9.]* slides/s' "$work/python.log" | cut -d' ' -f1)")
  echo "round $round: ftu-infer ${ftu[-1]} slides/s, python ${py[-1]} slides/s"
done
f=$(median "${ftu[@]}")
p=$(median "${py[@]}")
echo "ftu-infer stages (last round):"
sed -n '/^stage/,/^threshold/p' "$work/ftu.log"
echo "== median over $ROUNDS rounds: ftu-infer $f slides/s, python $p slides/s, ratio $(awk "BEGIN {printf \"%.2f\", $f / $p}")×"
echo "== agreement (Dice of ftu-infer's masks against the Python pipeline's):"
"$bin/ftu-infer" score --truth "$work/python.csv" --pred "$work/ftu.csv" --meta "$work/data/test.csv" >"$work/agreement.txt"
head -n 1 "$work/agreement.txt"
