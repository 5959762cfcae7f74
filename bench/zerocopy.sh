#!/usr/bin/env bash
# Measures plain vs zero-copy fan-out on loopback with the defaults of
# `cluecast-bench zerocopy` and writes bench/results/zerocopy.md (progress
# on stderr), or $ZEROCOPY_OUT. Extra arguments go to `cluecast-bench
# zerocopy`, e.g.
#   bench/zerocopy.sh --sizes 16K,64K --repeat 5
# Takes about 4 minutes with the defaults (5 sizes x 2 modes x 3 runs).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${ZEROCOPY_OUT:-bench/results/zerocopy.md}

cargo build --release -p cluecast -p cluecast-bench
target_dir=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

# Private copies: the build cache is shared, and a rebuild by someone else
# during the run must not swap the binary under test.
work=$(mktemp -d /tmp/cluecast-zerocopy.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp "$target_dir/release/cluecast" "$target_dir/release/cluecast-bench" "$work/"

mkdir -p "$(dirname "$out")"
"$work/cluecast-bench" zerocopy --cluecast "$work/cluecast" "$@" >"$work/zerocopy.md"
mv "$work/zerocopy.md" "$out"
echo "wrote $out" >&2
