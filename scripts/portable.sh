#!/usr/bin/env bash
# Builds ftu-infer and ftu-train for any x86-64 Linux with glibc 2.28 or newer (manylinux_2_28:
# RHEL/Rocky 8, Debian 10+, Ubuntu 18.10+; the floor of the onnxruntime and openslide-bin wheels),
# and checks them. cargo-zigbuild links with zig (both from PyPI, into .venv-portable) against
# glibc 2.28's symbol versions; no system toolchain beyond Rust's is needed, and no crate of ftu
# builds C code. Profile `dist` (no debug info, stripped), into target/portable/ so the shared
# release build is left alone. The check: `objdump -T` lists no symbol newer than GLIBC_2.28.
#
#   scripts/portable.sh                 # both binaries
#   scripts/portable.sh ftu-infer       # one
#
# The binaries land in target/portable/x86_64-unknown-linux-gnu/dist/, where `ftu-infer bundle`
# looks for a portable ftu-infer.
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC=2.28
TARGET=x86_64-unknown-linux-gnu
ZIGBUILD_VERSION=0.24.1
ZIGLANG_VERSION=0.17.1
OUT="target/portable/$TARGET/dist"
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(ftu-infer ftu-train)

venv=.venv-portable
if ! "$venv/bin/cargo-zigbuild" --version 2>/dev/null | grep -q "$ZIGBUILD_VERSION"; then
  echo "== pip install cargo-zigbuild==$ZIGBUILD_VERSION ziglang==$ZIGLANG_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "cargo-zigbuild==$ZIGBUILD_VERSION" "ziglang==$ZIGLANG_VERSION"
fi
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"

args=()
for b in "${bins[@]}"; do
  case "$b" in
    ftu-infer) args+=(-p ftu-infer --bin ftu-infer) ;;
    ftu-train) args+=(-p ftu-trainer --bin ftu-train) ;;
    *) echo "unknown binary $b: expected ftu-infer or ftu-train" >&2; exit 2 ;;
  esac
done

echo "== cargo zigbuild --profile dist --target $TARGET.$GLIBC ${args[*]}"
start=$(date +%s)
PATH="$(pwd)/$venv/bin:$PATH" cargo-zigbuild zigbuild --profile dist --target "$TARGET.$GLIBC" \
  --target-dir target/portable "${args[@]}"
echo "== built in $(( ($(date +%s) - start) / 60 )) min"

# Every GLIBC_x.y a binary's dynamic symbols ask for must be at most $GLIBC.
status=0
for b in "${bins[@]}"; do
  bin="$OUT/$b"
  newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
  size=$(stat -c %s "$bin")
  if [ "$(printf '%s\n%s\n' "$newest" "$GLIBC" | sort -V | tail -n 1)" != "$GLIBC" ]; then
    echo "$bin needs GLIBC_$newest, newer than $GLIBC:" >&2
    objdump -T "$bin" | grep -E "GLIBC_$newest\b" >&2
    status=1
  elif readelf -S "$bin" | grep -qE '\.debug_|\.symtab'; then
    echo "$bin is not stripped" >&2
    status=1
  else
    echo "== $bin: newest glibc symbol GLIBC_$newest (at most $GLIBC), stripped, $(( size / 1000000 )).$(( size / 100000 % 10 )) MB"
  fi
done
exit $status
