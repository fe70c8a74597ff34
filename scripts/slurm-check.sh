#!/usr/bin/env bash
# The README's Slurm job array on a real (one-node) Slurm cluster on this machine: installs
# slurm-wlm and munge from Debian's packages when missing, starts munged, slurmctld and slurmd on
# localhost with a private configuration, submits `ftu-infer predict --shard i/N` as an array
# over generated slides, then `merge` as a job that depends on it (afterok), and checks the
# merged submission equals a single-process run byte for byte. Then it submits the array again
# with one task made to fail (its shard's data is unreadable), checks Slurm reports that task
# FAILED, that the afterok merge never runs, and that `merge` over the incomplete set is refused.
# Then the training side: two runs (U-Net and FPN) whose folds are array tasks into one run
# folder each, and `ftu-train ensemble` over both as a job that depends on the two arrays
# (afterok); its oof.csv, manifest.toml and chosen weights, thresholds and postprocessing must
# equal those of the same runs and ensemble made in one process. Stops everything it started. Needs root (daemons, apt-get).
#   bash scripts/slurm-check.sh          # SHARDS=4 SLIDES=12 by default
#   FTU_BIN_DIR=target/portable/x86_64-unknown-linux-gnu/dist bash scripts/slurm-check.sh
# FTU_BIN_DIR runs binaries built already (CI: scripts/portable.sh's, the ones people are given);
# without it the script builds the release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS=${SHARDS:-4}
SLIDES=${SLIDES:-12}
work=$(realpath -m "${FTU_SLURM_OUT:-slurm-out}")
rm -rf "$work"
mkdir -p "$work"/{state,spool,log,shards,shards-bad}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "== apt-get install slurm-wlm munge"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
source scripts/ort.sh >/dev/null
if [ -n "${FTU_BIN_DIR:-}" ]; then
  bin=$(realpath "$FTU_BIN_DIR")
else
  echo "== build"
  cargo build --release --quiet -p ftu-infer -p ftu-trainer
  bin=$(realpath target/release)
fi
for b in ftu-infer ftu-train; do
  [ -x "$bin/$b" ] || { echo "FAIL: no $b in $bin" >&2; exit 1; }
done
echo "== binaries: $bin"

host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
conf="$work/slurm.conf"
cat > "$conf" <<CONF
ClusterName=ftu
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=ftu Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$conf"

# munge: its own key and socket under $work, so nothing of the machine's is touched.
mkdir -p "$work/munge"
dd if=/dev/urandom of="$work/munge/munge.key" bs=1 count=1024 status=none
chmod 700 "$work/munge"
chmod 400 "$work/munge/munge.key"
socket="$work/munge/munge.socket"
started=()
cleanup() {
  scancel --quiet --user=root 2>/dev/null || true
  for pidfile in "$work/slurmd.pid" "$work/slurmctld.pid" "$work/munge/munged.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
munged --force --key-file="$work/munge/munge.key" --socket="$socket" \
  --pid-file="$work/munge/munged.pid" --log-file="$work/log/munged.log" --seed-file="$work/munge/seed"
# Slurm's munge plugins find the socket through the configuration.
echo "AuthInfo=socket=$socket" >> "$conf"
slurmctld -f "$conf"
slurmd -f "$conf"
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed"; then break; fi
  sleep 1
done
sinfo
sinfo -h -o %T | grep -qE "idle|mixed" || { echo "FAIL: the node did not come up"; cat "$work/log/"*.log; exit 1; }

echo "== generated slides and a model (the PyTorch export of tests/fixtures)"
"$bin/ftu-train" synth --out "$work/data" --train 2 --test "$SLIDES" --size 256 --seed 5 >/dev/null
cp tests/fixtures/pytorch_two_head.onnx "$work/net.onnx"
cat > "$work/ensemble.toml" <<TOML
[tta]
mode = "flips"
[[group]]
size = 128
[[group.model]]
path = "net.onnx"
channels = "bgr"
mean = [103.53, 116.28, 123.675]
std = [57.375, 57.12, 58.395]
output = "mask"
activation = "sigmoid"
TOML
echo "== one process"
"$bin/ftu-infer" predict --manifest "$work/ensemble.toml" --data "$work/data" --threads 1 \
  --out "$work/single.csv" >/dev/null

# The README's array script, with this run's paths.
cat > "$work/array.sh" <<SH
#!/bin/bash
#SBATCH --array=0-$((SHARDS - 1)) --cpus-per-task=1 --mem=512M --output=$work/log/array-%a.out
set -e
data=\${FTU_DATA:-$work/data}
out=\${FTU_SHARDS:-$work/shards}
$bin/ftu-infer predict --manifest $work/ensemble.toml --data "\$data" --threads 1 \\
    --shard \${SLURM_ARRAY_TASK_ID}/$SHARDS --out "\$out/\${SLURM_ARRAY_TASK_ID}.csv"
SH
cat > "$work/merge.sh" <<SH
#!/bin/bash
#SBATCH --output=$work/log/merge-%j.out
$bin/ftu-infer merge --test $work/data/test.csv --out "\${FTU_MERGED:-$work/merged.csv}" "\${FTU_SHARDS:-$work/shards}"/*.csv
SH

wait_for() { # job id: until it leaves the queue
  for _ in $(seq 1 600); do
    [ -z "$(squeue -h -j "$1" 2>/dev/null)" ] && return 0
    sleep 1
  done
  echo "FAIL: job $1 still queued after 10 minutes"; squeue; return 1
}
state_of() { # job id -> each task's final state, as Slurm keeps it
  scontrol show job "$1" 2>/dev/null | awk -F'[= ]' '/JobState=/ {for (i = 1; i <= NF; i++) if ($i == "JobState") print $(i + 1)}'
}

echo "== sbatch the array, then merge with afterok"
array=$(sbatch --parsable "$work/array.sh")
merge=$(sbatch --parsable --dependency=afterok:"$array" "$work/merge.sh")
echo "array job $array, merge job $merge"
wait_for "$array"
wait_for "$merge"
cmp "$work/merged.csv" "$work/single.csv"
echo "ok: the merged submission of $SHARDS array tasks equals the single run byte for byte"

echo "== again, with task 1 made to fail"
bad="$work/data-bad"
cp -r "$work/data" "$bad"
# Shard 1's first slide is unreadable: that task fails (the default --on-error fail).
first=$(awk -F, 'NR == 3 {print $1}' "$bad/test.csv")
echo "not a tiff" > "$bad/test_images/$first.tiff"
export FTU_DATA="$bad" FTU_SHARDS="$work/shards-bad" FTU_MERGED="$work/merged-bad.csv"
array=$(sbatch --parsable --export=ALL "$work/array.sh")
merge=$(sbatch --parsable --export=ALL --dependency=afterok:"$array" --kill-on-invalid-dep=yes "$work/merge.sh")
wait_for "$array"
wait_for "$merge" || true
states=$(for t in $(seq 0 $((SHARDS - 1))); do echo "$t:$(state_of "${array}_$t")"; done | tr '\n' ' ')
echo "array tasks: $states; merge job: $(state_of "$merge")"
echo "$states" | grep -q "1:FAILED" || { echo "FAIL: task 1 is not reported FAILED"; exit 1; }
[ ! -e "$work/merged-bad.csv" ] || { echo "FAIL: the afterok merge ran after a failed task"; exit 1; }
if "$bin/ftu-infer" merge --test "$bad/test.csv" --out "$work/merged-bad.csv" "$work/shards-bad"/*.csv 2> "$work/merge-bad.err"; then
  echo "FAIL: merge accepted an incomplete set of shards"; exit 1
fi
echo "ok: task 1 FAILED, the dependent merge never ran, and merge refuses the incomplete set: $(head -c 200 "$work/merge-bad.err")"

echo "== training: each run's folds as an array job, ftu-train ensemble over two runs with afterok"
"$bin/ftu-train" synth --out "$work/tdata" --train 10 --test 0 --size 96 --seed 8 >/dev/null
common="--size 64 --folds 2 --epochs 1 --batch 2 --samples-per-epoch 4 --seed 4 --workers 1 --data $work/tdata"
unet="--arch unet-resnet18 --decoder-channels 16,16,8,8,8"
fpn="--arch fpn-resnet18 --decoder-channels 16,8"
mkdir -p "$work/single" "$work/array"
# shellcheck disable=SC2086
"$bin/ftu-train" train $common $unet --out "$work/single/unet" 2>/dev/null
# shellcheck disable=SC2086
"$bin/ftu-train" train $common $fpn --out "$work/single/fpn" 2>/dev/null
"$bin/ftu-train" ensemble --runs "$work/single/unet" "$work/single/fpn" --out "$work/single/ensemble" >/dev/null
cat > "$work/train.sh" <<SH
#!/bin/bash
#SBATCH --array=0-1 --cpus-per-task=1 --mem=2G --output=$work/log/train-%A-%a.out
set -e
$bin/ftu-train train $common \$ARCH_ARGS --out $work/array/\$RUN --fold \${SLURM_ARRAY_TASK_ID}
SH
cat > "$work/ensemble.sh" <<SH
#!/bin/bash
#SBATCH --output=$work/log/ensemble-%j.out
$bin/ftu-train ensemble --runs $work/array/unet $work/array/fpn --out $work/array/ensemble
SH
job_unet=$(RUN=unet ARCH_ARGS="$unet" sbatch --parsable --export=ALL "$work/train.sh")
job_fpn=$(RUN=fpn ARCH_ARGS="$fpn" sbatch --parsable --export=ALL "$work/train.sh")
job_ens=$(sbatch --parsable --dependency=afterok:"$job_unet":"$job_fpn" --kill-on-invalid-dep=yes "$work/ensemble.sh")
echo "fold arrays $job_unet and $job_fpn, ensemble job $job_ens"
wait_for "$job_unet"
wait_for "$job_fpn"
wait_for "$job_ens"
for f in ensemble/oof.csv ensemble/manifest.toml unet/oof.csv fpn/oof.csv unet/fold0/model.onnx fpn/fold1/model.onnx; do
  cmp "$work/single/$f" "$work/array/$f" || { echo "FAIL: $f differs between the Slurm jobs and one process"; cat "$work/log/"{train,ensemble}-*.out; exit 1; }
done
python3 - "$work/single/ensemble/ensemble.json" "$work/array/ensemble/ensemble.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
for key in ("chosen", "postprocess", "candidates", "final_dice"):
    assert a[key] == b[key], f"ensemble.json {key} differs"
print("chosen weights", a["chosen"]["weights"], "mean OOF Dice", round(a["final_dice"], 4))
PY
echo "ok: fold arrays and an afterok ensemble job give the single process's models, oof.csv and ensemble"
