#!/usr/bin/env bash
# ftu on old Linux, offline: a Debian 11 root (glibc 2.31, Python 3.9) made with debootstrap, and
# in it, with no network (unshare --net):
#   - a copied `ftu-infer bundle` (scripts/portable.sh's binary, ONNX Runtime in its lib/, no
#     ORT_DYLIB_PATH) predicts a Kaggle-layout folder; the submission equals the host's, byte for byte;
#   - the ftu-train wheel installs from a local folder into a fresh venv with --no-index and
#     `ftu-train synth` writes the same folder as on the host, byte for byte.
# The ftu-infer wheel is not installed there: it depends on onnxruntime >= 1.22, whose wheels
# need Python 3.10 or newer, and Debian 11 has 3.9 (scripts/wheels.sh checks that wheel on the host).
# Needs root (debootstrap, chroot, mount) and the network for debootstrap only.
#
#   scripts/old-linux-check.sh     # builds what is missing: the portable binaries and wheels, the root
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/old-linux-check.sh needs root (debootstrap, chroot, mount)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "== apt-get install debootstrap"; apt-get install -y -q debootstrap; }

root=target/debian11
dist=target/portable/x86_64-unknown-linux-gnu/dist
start=$(date +%s)
[ -x "$dist/ftu-infer" ] && [ -x "$dist/ftu-train" ] && ls target/wheels/ftu_train-*.whl >/dev/null 2>&1 ||
  bash scripts/portable.sh
if [ ! -x "$root/usr/bin/python3" ]; then
  echo "== debootstrap bullseye into $root"
  rm -rf "$root"
  debootstrap --variant=minbase --include=python3,python3-venv bullseye "$root" http://deb.debian.org/debian >/dev/null
fi
echo "== Debian 11 root: $(chroot "$root" /usr/bin/ldd --version | head -n 1)"

# On the host: a synthetic Kaggle folder, the PyTorch fixture as the ensemble, its bundle and
# the host's submission (the host's ONNX Runtime: .venv's, through scripts/ort.sh).
source scripts/ort.sh
host=$(mktemp -d)
trap 'umount "$root/proc" 2>/dev/null || true; rm -rf "$host" "$root/check"' EXIT
"$dist/ftu-train" synth --out "$host/data" --train 2 --test 3 --size 256 --seed 7 >/dev/null 2>&1
mkdir "$host/ens"
cp tests/fixtures/pytorch_two_head.onnx "$host/ens/torch.onnx"
cat >"$host/ens/manifest.toml" <<'TOML'
[[group]]
size = 256
[[group.model]]
path = "torch.onnx"
channels = "bgr"
mean = [103.53, 116.28, 123.675]
std = [57.375, 57.12, 58.395]
output = "mask"
activation = "sigmoid"
TOML
"$dist/ftu-infer" predict --manifest "$host/ens/manifest.toml" --data "$host/data" --out "$host/submission.csv" >/dev/null 2>&1
"$dist/ftu-infer" bundle --manifest "$host/ens/manifest.toml" --out "$host/bundle" >/dev/null

# Into the root: the bundle, the data, the wheels; then offline.
rm -rf "$root/check" && mkdir -p "$root/check/wheels"
cp -r "$host/bundle" "$host/data" "$root/check/"
cp target/wheels/ftu_train-*.whl "$root/check/wheels/"
mount -t proc proc "$root/proc"
inside() { unshare --net chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/check "$@"; }
inside /check/bundle/ftu-infer predict --manifest /check/bundle/manifest.toml --data /check/data \
  --out /check/submission.csv 2>"$host/inside.err" >/dev/null || { cat "$host/inside.err" >&2; exit 1; }
grep -q "ONNX Runtime /check/bundle/lib/libonnxruntime" "$host/inside.err" ||
  { echo "the bundle did not load its own ONNX Runtime:" >&2; cat "$host/inside.err" >&2; exit 1; }
cmp "$host/submission.csv" "$root/check/submission.csv"
echo "== Debian 11, offline: the copied bundle's submission equals the host's ($(($(wc -l <"$host/submission.csv") - 1)) rows)"

inside /usr/bin/python3 -m venv /check/env
inside /check/env/bin/pip install --quiet --no-index --find-links /check/wheels ftu-train
inside /check/env/bin/ftu-train synth --out /check/synth --train 2 --test 3 --size 256 --seed 7 >/dev/null 2>&1
diff -r "$host/data" "$root/check/synth"
echo "== Debian 11, offline: the ftu-train wheel installs with --no-index and synth writes the host's files"
echo "== old-Linux check passed in $(( ($(date +%s) - start) / 60 )) min"
