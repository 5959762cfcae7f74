#!/usr/bin/env bash
# Builds the release appliance once per global allocator (the root crate's
# alloc-* features) and copies each to $root/allocators/cluecast-<name>,
# where $root is the build cache (/var/tmp/cluecast-target unless
# CARGO_TARGET_DIR says otherwise). Prints one path per line on stdout.
# Each variant has its own target directory under $root, so building one
# does not invalidate another's cache. Extra arguments go to every `cargo
# build`. From cold, under a minute per allocator except jemalloc (its C
# build takes about five minutes on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."

root=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
out="$root/allocators"
mkdir -p "$out"

built=()
for name in snmalloc mimalloc jemalloc system; do
  target="$root/alloc-$name"
  echo "build-allocators: $name" >&2
  cargo build --release --bin cluecast --no-default-features \
    --features "alloc-$name" --target-dir "$target" "$@"
  # Copy to a temporary name, then rename: a benchmark running the previous
  # binary keeps it, and none sees a half-copied file.
  cp "$target/release/cluecast" "$out/.cluecast-$name.tmp"
  mv -f "$out/.cluecast-$name.tmp" "$out/cluecast-$name"
  built+=("$out/cluecast-$name")
done
printf '%s\n' "${built[@]}"
