#!/usr/bin/env bash
# On a GPU machine (CUDA 13 driver, Python 3.12 with PyTorch and its nvidia-* wheels, no Rust, no
# internet), after the commands scripts/gpu-infer-bins.sh prints: ONNX Runtime's CUDA execution
# provider through ftu-infer, each part under its own time limit so a slow one cannot eat the rest:
#   setup  the parts of onnxruntime-gpu 1.31.1 joined (checksums), unpacked into WORK/site; the
#          check's inputs made again with the shipped ftu-train and compared with those made there;
#   (a)    predict --device cuda against --device cpu on the float32 half and the float16 half of
#          the mixed ensemble (flips TTA, 3000² slides): Dice of the masks, ≥ 0.999 and ≥ 0.99;
#   (b)    the mixed ensemble (all four models) through ftu-infer (--bench-limit: its batches also
#          through bare ONNX Runtime) and through bench/predict/python_pipeline.py with the CUDA
#          provider (its session.run time beside its wall time), ROUNDS alternating rounds:
#          medians, ratios, GPU busy % (nvidia-smi dmon) and peak GPU memory (nvidia-smi every
#          100 ms; it includes the CUDA context) per run, and the two submissions' Dice;
#   (c)    the [cuda] options on the mixed ensemble, one run each: cuDNN's convolution search
#          exhaustive (ONNX Runtime's default) or heuristic, TF32 on (the default) or off; and the
#          float32 half with TF32 off against the CPU;
#   (d)    ftu-infer bundle --gpu of the mixed ensemble, copied elsewhere and run from there with
#          ORT_DYLIB_PATH unset: it must load the library from its own lib/.
# Each result is a row of the table printed as it comes and again at the end (WORK/summary.txt;
# with FTU_GPU_OUT=DIR also copied there with the logs). The limits add up to 440 s: give the
# whole script 540 s.
#
# FTU_GPU_DRY=1 runs it on a machine without a GPU: every "cuda" run on the CPU, FTU_GPU_SLIDES
# slides (default 2) at a group size of FTU_GPU_SIZE (default 256), one round, the limits
# multiplied by FTU_GPU_LIMIT_SCALE (default 4), WORK gpu-infer/dry.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
ship=$root/gpu-infer/ship
source bench/predict/gpu_inputs.sh
if [ ! -f "$ship/settings" ]; then
  echo "no $ship/settings: run scripts/gpu-infer-bins.sh and copy what it names" >&2
  exit 1
fi
source "$ship/settings" # SLIDES, SIZE, PARTS as gpu-infer-bins.sh made them

DRY=${FTU_GPU_DRY:-0}
if [ "$DRY" = 1 ]; then
  SLIDES=${FTU_GPU_SLIDES:-2} SIZE=${FTU_GPU_SIZE:-256} ROUNDS=${ROUNDS:-1}
  scale=${FTU_GPU_LIMIT_SCALE:-4} device=cpu work=${FTU_GPU_WORK:-$root/gpu-infer/dry}
else
  ROUNDS=${ROUNDS:-3} scale=1 device=cuda work=${FTU_GPU_WORK:-/tmp/ftu-gpu}
fi
mkdir -p "$work/logs"
logs=$work/logs
summary=$work/summary.txt
: >"$summary"
: >"$work/failed"
have_smi=0
command -v nvidia-smi >/dev/null && have_smi=1

row() { printf '%-50s %s\n' "$1" "$2" | tee -a "$summary"; }
lim() { echo $(($1 * scale)); }
median() { printf '%s\n' "$@" | grep -v '^-$' | sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "-"}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b}'; }
at_least() { awk -v d="$1" -v b="$2" 'BEGIN {if (d != "-" && d + 0 >= b + 0) print "ok"; else print "FAIL"}'; }

# run LIMIT NAME COMMAND...: runs it under `timeout`, output in $logs/NAME.log, with nvidia-smi
# sampling memory and utilisation meanwhile. Sets RC, SECS (wall, start-up included), PEAK (MiB),
# BUSY (mean SM % over the run's dmon samples) and BUSYMAX.
run() {
  local limit=$1 name=$2
  shift 2
  local log=$logs/$name mem_pid="" dmon_pid=""
  if [ "$have_smi" = 1 ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log.mem" 2>/dev/null &
    mem_pid=$!
    nvidia-smi dmon -s u -d 1 >"$log.dmon" 2>/dev/null &
    dmon_pid=$!
  fi
  local start=$EPOCHREALTIME
  timeout "$limit" "$@" >"$log.log" 2>&1
  RC=$?
  SECS=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.2f", b - a}')
  PEAK=- BUSY=- BUSYMAX=-
  if [ -n "$mem_pid" ]; then
    kill "$mem_pid" "$dmon_pid" 2>/dev/null
    wait "$mem_pid" "$dmon_pid" 2>/dev/null
    PEAK=$(sort -n "$log.mem" | tail -n 1)
    read -r BUSY BUSYMAX < <(awk '/^#/ {if (!c) for (i = 2; i <= NF; i++) if ($i == "sm") c = i - 1; next}
      c && $c ~ /^[0-9]+$/ {s += $c; n++; if ($c > m) m = $c}
      END {if (n) printf "%.0f %d\n", s / n, m; else print "- -"}' "$log.dmon")
    [ -n "$PEAK" ] || PEAK=-
  fi
  [ "$RC" = 0 ] || {
    echo "$name (exit $RC)" >>"$work/failed"
    echo "-- $name: exit $RC (limit $limit s); its log ends:"
    tail -n 5 "$log.log"
  }
}
gpu() { echo "GPU busy ${BUSY} % mean, ${BUSYMAX} % max; peak GPU memory ${PEAK} MiB"; }
# Values from ftu-infer's output: `wrote … in X s` (after loading), --bench-limit's lines.
predict_s() { sed -n 's/^wrote .* in \([0-9.]*\) s, .*/\1/p' "$logs/$1.log" | tail -n 1 | grep . || echo -; }
limit_s() { sed -n 's/^limit: .* took \([0-9.]*\) s$/\1/p' "$logs/$1.log" | grep . || echo -; }
dice() { # TRUTH PRED: mean Dice of PRED's masks against TRUTH's
  if [ -s "$1" ] && [ -s "$2" ]; then
    "$bin/ftu-infer" score --truth "$1" --pred "$2" --meta "$data/test.csv" 2>/dev/null |
      sed -n 's/^mean dice \([0-9.]*\) .*/\1/p' | grep . || echo -
  else
    echo -
  fi
}

echo "== inference GPU check: $SLIDES slides of 3000², group size $SIZE, device $device, $ROUNDS round(s), work $work"
[ "$DRY" = 1 ] && echo "dry run: every cuda run below runs on the CPU; no GPU number comes from it"
[ "$have_smi" = 1 ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "== setup (at most $(lim 45) s)"
setup() {
  local i name part missing=0
  : >"$work/parts.list"
  for ((i = 0; i < PARTS; i++)); do
    name=$(printf 'ort.tar.zst.%02d' "$i")
    part=""
    for d in /tmp/ftu-gpu "$ship"; do [ -f "$d/$name" ] && { part=$d/$name; break; }; done
    if [ -z "$part" ]; then
      echo "part $name is missing: run its copy command again"
      missing=1
      continue
    fi
    (cd "$(dirname "$part")" && grep " $name\$" "$ship/SHA256SUMS" | sha256sum -c --quiet) ||
      { echo "part $name differs from the one made (copy it again)"; missing=1; }
    echo "$part" >>"$work/parts.list"
  done
  [ "$missing" = 0 ] || return 1
  xargs cat <"$work/parts.list" >"$work/ort.tar.zst" || return 1
  local want got
  want=$(sed -n 's/  ort.tar.zst$//p' "$ship/SHA256SUMS")
  got=$(sha256sum <"$work/ort.tar.zst" | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "joined archive: sha256 $got, expected $want"; return 1; }
  echo "joined $PARTS parts: sha256 $got, as made"
  rm -rf "$work/site" && mkdir -p "$work/site" "$work/bin"
  if command -v zstd >/dev/null; then
    zstd -dc --long=27 "$work/ort.tar.zst" | tar -x -C "$work/site" || return 1
  else # no zstd binary: pyarrow (in the GPU machine's Python) decompresses zstd
    python3 -c 'import pyarrow as pa, shutil, sys
shutil.copyfileobj(pa.CompressedInputStream(pa.OSFile(sys.argv[1]), "zstd"), sys.stdout.buffer, 1 << 24)' \
      "$work/ort.tar.zst" | tar -x -C "$work/site" || return 1
  fi
  rm -f "$work/ort.tar.zst"
  tar -xzf "$ship/ftu.tar.gz" -C "$work/bin" || return 1
  make_gpu_inputs "$work/bin/ftu-train" "$work/inputs" "$SLIDES" "$SIZE" || return 1
  local which=inputs/
  [ "$DRY" = 1 ] && which=inputs/models/ # fewer slides and another size: only the models compare
  if (cd "$work" && grep "  $which" "$ship/SHA256SUMS" | sha256sum -c --quiet); then
    echo "inputs: byte-identical to those gpu-infer-bins.sh made ($which)"
  else
    echo "inputs: not identical to those gpu-infer-bins.sh made (same seeds; the check goes on with these)"
  fi
}
# Under `timeout` like every part: in a bash that gets the function and what it reads.
export PARTS ship work DRY SLIDES SIZE
export -f setup make_gpu_inputs
run "$(lim 45)" setup bash -c setup
cat "$logs/setup.log"
if [ "$RC" != 0 ]; then
  row "setup" "FAILED (exit $RC): see above"
  exit 1
fi
row "setup" "$(grep -c . "$work/parts.list") parts joined, checksums equal; $(grep '^inputs:' "$logs/setup.log" | cut -d: -f2- | cut -c2-)"
bin=$work/bin
inputs=$work/inputs
data=$inputs/data
lib=$(ls "$work"/site/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
export ORT_DYLIB_PATH=$lib
if nvidia=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null); then
  LD_LIBRARY_PATH="$(printf '%s:' "$nvidia"/*/lib)${LD_LIBRARY_PATH:-}"
  export LD_LIBRARY_PATH
fi
predict() { # NAME LIMIT MANIFEST DEVICE [FLAGS…]: predict into WORK/NAME.csv
  local name=$1 limit=$2 manifest=$3 dev=$4
  shift 4
  run "$limit" "$name" "$bin/ftu-infer" predict --manifest "$inputs/$manifest.toml" --data "$data" \
    --out "$work/$name.csv" --device "$dev" "$@"
}

echo "== (a) cuda against cpu, each half of the mixed ensemble"
for half in f32 f16; do
  bound=0.999
  [ "$half" = f16 ] && bound=0.99
  predict "a-$half-cpu" "$(lim 40)" "$half" cpu
  cpu_s=$(predict_s "a-$half-cpu")
  predict "a-$half-cuda" "$(lim 20)" "$half" "$device"
  d=$(dice "$work/a-$half-cpu.csv" "$work/a-$half-cuda.csv")
  row "(a) $half half: $device against cpu" "Dice $d (≥ $bound: $(at_least "$d" "$bound")); predict cpu $cpu_s s, $device $(predict_s "a-$half-cuda") s; $(gpu)"
done

echo "== (b) the mixed ensemble: ftu-infer against the Python pipeline, $ROUNDS round(s)"
python=${FTU_PYTHON:-python3}
pyenv=(env PYTHONPATH="$work/site")
pyort=$("${pyenv[@]}" "$python" -c 'import onnxruntime as o; print(o.__version__, *o.get_available_providers())' 2>/dev/null)
if [ "${pyort%% *}" != 1.31.1 ] && [ "$DRY" = 1 ]; then
  # The shipped module is for Python 3.12; a dry run on another Python uses that Python's own.
  pyenv=(env)
  pyort=$("$python" -c 'import onnxruntime as o; print(o.__version__, *o.get_available_providers())' 2>/dev/null)
  echo "dry run: $python cannot load the shipped cp312 module; its own onnxruntime: ${pyort:-none}"
fi
echo "python onnxruntime: ${pyort:-none} ($python)"
ftu_p=() ftu_t=() ftu_l=() py_w=() py_r=() busy=()
for round in $(seq "$ROUNDS"); do
  predict "b-ftu-$round" "$(lim 20)" mixed "$device" --bench-limit
  ftu_p+=("$(predict_s "b-ftu-$round")") ftu_t+=("$SECS") ftu_l+=("$(limit_s "b-ftu-$round")")
  busy+=("ftu $(gpu)")
  run "$(lim 25)" "b-python-$round" "${pyenv[@]}" "$python" bench/predict/python_pipeline.py \
    --manifest "$inputs/mixed.toml" --data "$data" --out "$work/b-python.csv" --device "$device"
  py_w+=("$(sed -n 's/^python pipeline: .* in \([0-9.]*\) s,.*/\1/p' "$logs/b-python-$round.log" | grep . || echo -)")
  py_r+=("$(sed -n 's/^python session.run: \([0-9.]*\) s$/\1/p' "$logs/b-python-$round.log" | grep . || echo -)")
  busy+=("python $(gpu)")
  echo "round $round: ftu predict ${ftu_p[-1]} s (process ${ftu_t[-1]} s, bare ORT ${ftu_l[-1]} s); python ${py_w[-1]} s (session.run ${py_r[-1]} s)"
done
providers=$(sed -n 's/^python providers: //p' "$logs/b-python-1.log")
[ "$device" = cuda ] && [ "${providers%%,*}" != CUDAExecutionProvider ] &&
  echo "the Python pipeline did not run on CUDA (providers: ${providers:-none})"
fp=$(median "${ftu_p[@]}") ft=$(median "${ftu_t[@]}") fl=$(median "${ftu_l[@]}")
pw=$(median "${py_w[@]}") pr=$(median "${py_r[@]}")
row "(b) ftu-infer predict, after loading (median)" "$fp s (rounds: ${ftu_p[*]}); whole process $ft s"
row "(b) ftu's batches through bare ONNX Runtime" "$fl s (--bench-limit)"
row "(b) python pipeline, after loading (median)" "$pw s (rounds: ${py_w[*]}); its session.run $pr s; providers ${providers:--}"
row "(b) ftu / python wall, ftu / python session.run" "$(ratio "$fp" "$pw")×, $(ratio "$fp" "$pr")×; ftu / bare ORT $(ratio "$fp" "$fl")×"
row "(b) ftu-infer masks against Python's" "Dice $(dice "$work/b-python.csv" "$work/b-ftu-$ROUNDS.csv")"
for b in "${busy[@]: -2}"; do row "(b) last round, ${b%% *}" "${b#* }"; done

echo "== (c) [cuda] options, the mixed ensemble, one run each"
reference=$work/b-ftu-$ROUNDS.csv
for conv in exhaustive heuristic; do
  for tf32 in on off; do
    predict "c-$conv-tf32-$tf32" "$(lim 20)" mixed "$device" --cuda-conv-search "$conv" --cuda-tf32 "$tf32"
    row "(c) conv search $conv, TF32 $tf32" "predict $(predict_s "c-$conv-tf32-$tf32") s, whole process $SECS s; Dice against (b) $(dice "$reference" "$work/c-$conv-tf32-$tf32.csv"); $(gpu)"
  done
done
predict c-f32-tf32-off "$(lim 20)" f32 "$device" --cuda-tf32 off
d=$(dice "$work/a-f32-cpu.csv" "$work/c-f32-tf32-off.csv")
row "(c) f32 half, TF32 off: $device against cpu" "Dice $d (≥ 0.999: $(at_least "$d" 0.999))"

echo "== (d) bundle --gpu, copied, ORT_DYLIB_PATH unset"
rm -rf "$work/bundle" "$work/bundle-copy"
run "$(lim 20)" d-bundle "$bin/ftu-infer" bundle --manifest "$inputs/mixed.toml" --out "$work/bundle" --gpu
if [ "$RC" = 0 ] && cp -r "$work/bundle" "$work/bundle-copy"; then
  run "$(lim 20)" d-predict env -u ORT_DYLIB_PATH -u PYTHONPATH "$work/bundle-copy/ftu-infer" predict \
    --manifest "$work/bundle-copy/manifest.toml" --data "$data" --out "$work/d-bundle.csv" --device "$device"
  loaded=$(sed -n 's/^ONNX Runtime \(.*\) on .*/\1/p' "$logs/d-predict.log")
  case "$loaded" in
    "$work"/bundle-copy/lib/*) where="its own lib/ (ok)" ;;
    *) where="${loaded:-nothing} (FAIL: not its own lib/)" ;;
  esac
  row "(d) copied bundle, ORT_DYLIB_PATH unset" "exit $RC; loaded $where; Dice against (b) $(dice "$reference" "$work/d-bundle.csv"); $(du -sm "$work/bundle" | cut -f1) MB"
else
  row "(d) bundle --gpu" "FAILED (exit $RC): $(tail -n 1 "$logs/d-bundle.log")"
fi
rm -rf "$work/bundle" "$work/bundle-copy"

echo
echo "== summary ($SLIDES slides of 3000², group size $SIZE, flips TTA, device $device)"
cat "$summary"
[ -s "$work/failed" ] && row "failed runs (logs in $logs)" "$(paste -sd, "$work/failed")"
if [ -n "${FTU_GPU_OUT:-}" ]; then
  mkdir -p "$FTU_GPU_OUT"
  cp "$summary" "$FTU_GPU_OUT/"
  tar -C "$work" -czf "$FTU_GPU_OUT/logs.tar.gz" logs
fi
# A bound missed or a run that failed (or ran past its limit) fails the check.
! grep -q FAIL "$summary" && [ ! -s "$work/failed" ]
