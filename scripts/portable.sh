#!/usr/bin/env bash
# Builds ftu-infer and ftu-train for any x86-64 Linux with glibc 2.28 or newer (manylinux_2_28:
# RHEL/Rocky 8, Debian 10+, Ubuntu 18.10+; the floor of the onnxruntime and openslide-bin wheels),
# as wheels and as plain binaries from the same build, and checks them. maturin (`bindings =
# "bin"`, see infer/pyproject.toml) links with zig against glibc 2.28's symbol versions; both
# come from PyPI, into .venv-portable. No system toolchain beyond Rust's is needed, and no crate
# of ftu builds C code. Profile `dist` (no debug info, stripped), into target/portable/ so the
# shared release build is left alone. The check: `objdump -T` lists no symbol newer than
# GLIBC_2.28, no debug sections remain, and each wheel carries the same binary.
#
#   scripts/portable.sh                 # both
#   scripts/portable.sh ftu-infer       # one
#
# The binaries land in target/portable/x86_64-unknown-linux-gnu/dist/, where `ftu-infer bundle`
# looks for a portable ftu-infer; the wheels in target/wheels/ (scripts/wheels.sh checks them).
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC=2.28
TARGET=x86_64-unknown-linux-gnu
MATURIN_VERSION=1.16.0
ZIGLANG_VERSION=0.17.1
OUT="target/portable/$TARGET/dist"
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(ftu-infer ftu-train)

venv=.venv-portable
if ! "$venv/bin/maturin" --version 2>/dev/null | grep -q "$MATURIN_VERSION"; then
  echo "== pip install maturin==$MATURIN_VERSION ziglang==$ZIGLANG_VERSION into $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "maturin==$MATURIN_VERSION" "ziglang==$ZIGLANG_VERSION"
fi
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"

mkdir -p target/wheels
start=$(date +%s)
for b in "${bins[@]}"; do
  case "$b" in
    ftu-infer) crate=infer ;;
    ftu-train) crate=trainer ;;
    *) echo "unknown binary $b: expected ftu-infer or ftu-train" >&2; exit 2 ;;
  esac
  echo "== maturin build $crate/ (manylinux_2_28, zig, profile dist)"
  rm -f target/wheels/"${b/-/_}"-*.whl
  PATH="$(pwd)/$venv/bin:$PATH" maturin build --quiet --zig --compatibility "manylinux_${GLIBC/./_}" \
    --target "$TARGET" --profile dist -m "$crate/Cargo.toml" --target-dir target/portable --out target/wheels
done
echo "== built in $(( ($(date +%s) - start) / 60 )) min"

# Every GLIBC_x.y a binary's dynamic symbols ask for must be at most $GLIBC; the wheel carries
# the very file.
status=0
for b in "${bins[@]}"; do
  bin="$OUT/$b"
  newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
  size=$(stat -c %s "$bin")
  whl=$(ls target/wheels/"${b/-/_}"-*.whl)
  whl_size=$(stat -c %s "$whl")
  if [ "$(printf '%s\n%s\n' "$newest" "$GLIBC" | sort -V | tail -n 1)" != "$GLIBC" ]; then
    echo "$bin needs GLIBC_$newest, newer than $GLIBC:" >&2
    objdump -T "$bin" | grep -E "GLIBC_$newest\b" >&2
    status=1
  elif readelf -S "$bin" | grep -qE '\.debug_|\.symtab'; then
    echo "$bin is not stripped" >&2
    status=1
  elif ! python3 - "$whl" "$b" "$bin" <<'PY'
import sys, zipfile
whl, name, path = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    inside = [n for n in z.namelist() if n.endswith(".data/scripts/" + name)]
    sys.exit(0 if len(inside) == 1 and z.read(inside[0]) == open(path, "rb").read() else 1)
PY
  then
    echo "$whl does not carry $bin" >&2
    status=1
  else
    echo "== $bin: newest glibc symbol GLIBC_$newest (at most $GLIBC), stripped, $(( size / 1000000 )).$(( size / 100000 % 10 )) MB; in $whl ($(( whl_size / 1000000 )).$(( whl_size / 100000 % 10 )) MB)"
  fi
done
exit $status
