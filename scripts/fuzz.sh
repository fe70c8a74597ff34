#!/usr/bin/env bash
# Coverage-guided fuzzing of ftu's parsers (cargo-fuzz + libFuzzer on the stable toolchain).
#
#   bash scripts/fuzz.sh [--runs N | --seconds S] [TARGET ...]
#
# Each target (all of them by default: rle csv manifest slide tiff_region mask meta) runs until
# N executions (default 10 000 000) or S seconds, as many at once as there are cores (JOBS=).
# It starts from the seeds in fuzz/seeds/<target> (made by `cargo run -p ftu-formats --example
# fuzz_seeds`), keeps what it learns in fuzz/corpus/<target> (not committed), and writes an
# input that crashes to fuzz/artifacts/<target>/ (a crash's input belongs in
# formats/tests/fuzz/ with a case in formats/tests/fuzz_regressions.rs once it is fixed). A crash is a panic in ftu's own code, a
# decoder panic that escapes `catch_unwind`, an input that passes the allocation audit's budget
# (fuzz/src/lib.rs), a run over 10 s or over 2 GiB. At the end a table gives each target's
# executions, rate and crashes (also fuzz/runs.tsv); the script fails if any target crashed.
# FUZZ_SEED=N makes a run with --runs repeatable (CI: a short, fixed smoke run).
#
# Why cargo-fuzz: libFuzzer's coverage feedback and value profile find the deep TIFF paths
# (offset tables, codec switches) that random mutation does not; it runs on stable Rust with
# RUSTC_BOOTSTRAP=1 and `--sanitizer none` (ftu's code is safe Rust: the sanitizer would only
# slow it; the allocation audit and panic policy stand in for what ASan reports here).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=10000000
seconds=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --seconds) seconds="$2"; runs=0; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
all=(rle csv manifest slide tiff_region mask meta)
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
jobs=${JOBS:-$(nproc)}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== cargo install cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
fuzz_build=(-O -a --sanitizer none --target-dir "$PWD/target/fuzz")
echo "== cargo fuzz build (release, debug assertions, no sanitizer)"
(cd fuzz && cargo fuzz build "${fuzz_build[@]}")

if [ ! -d fuzz/seeds/rle ]; then
  cargo run -q -p ftu-formats --example fuzz_seeds -- fuzz/seeds
fi

# One thread per target (the slide decoders use rayon); OpenSlide's C library is not ours to
# fuzz, so it is kept out of the metadata target.
export RAYON_NUM_THREADS=1 FTU_OPENSLIDE=/nonexistent/libopenslide.so.0
logs=target/fuzz/logs
mkdir -p "$logs"

run_one() {
  local t=$1
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  local limit=(-runs="$runs")
  [ "$seconds" -gt 0 ] && limit=(-max_total_time="$seconds")
  local start rc=0 stamp
  stamp=$(mktemp)
  start=$(date +%s)
  "target/fuzz/x86_64-unknown-linux-gnu/release/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" \
    "${limit[@]}" ${FUZZ_SEED:+-seed="$FUZZ_SEED"} -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" >"$logs/$t.log" 2>&1 || rc=$?
  local took=$(( $(date +%s) - start ))
  local execs
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' | tail -1)
  local crashes
  crashes=$(find "fuzz/artifacts/$t" -type f -newer "$stamp" | wc -l)
  rm -f "$stamp"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "${execs:-0}" "$took" "$(( ${execs:-0} / (took > 0 ? took : 1) ))" \
    "$(find "fuzz/corpus/$t" -type f | wc -l)" "$crashes $([ "$rc" -ne 0 ] && echo "(exit $rc, see $logs/$t.log)")"
}
export -f run_one
export runs seconds logs FUZZ_SEED

echo "== fuzzing ${targets[*]} ($([ "$seconds" -gt 0 ] && echo "$seconds s" || echo "$runs executions") each, $jobs at a time)"
results=$(printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one {}')
{
  printf 'target\texecutions\tseconds\texec/s\tcorpus\tcrashes\n'
  printf '%s\n' "$results" | sort
} | tee fuzz/runs.tsv | column -t -s $'\t'
if printf '%s\n' "$results" | awk -F'\t' '$6 !~ /^0 *$/ {bad=1} END {exit !bad}'; then
  echo "crashes: see fuzz/artifacts/ and $logs/" >&2
  exit 1
fi
