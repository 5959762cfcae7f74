#!/usr/bin/env bash
# Measures plain vs zero-copy fan-out on loopback with the defaults of
# `cluecast-bench zerocopy` and writes bench/results/zerocopy.md (progress
# on stderr), or $ZEROCOPY_OUT. Extra arguments go to `cluecast-bench
# zerocopy`, e.g.
#   bench/zerocopy.sh --sizes 16K,64K --repeat 5
# Takes about 4 minutes with the defaults (5 sizes x 2 modes x 3 runs).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
out=${ZEROCOPY_OUT:-bench/results/zerocopy.md}

bench_build
bench_workdir zerocopy
trap 'rm -rf "$work"' EXIT
bench_copy

mkdir -p "$(dirname "$out")"
"$work/cluecast-bench" zerocopy --cluecast "$work/cluecast" "$@" >"$work/zerocopy.md"
mv "$work/zerocopy.md" "$out"
echo "wrote $out" >&2
