#!/usr/bin/env bash
# Open-loop fan-out measurement on loopback with the defaults of
# `cluecast-bench fanout` (2000 subscribers over 20 topics, 50 events/s per
# topic, 256 B payloads, 3 runs of 10 s; server pinned to CPU 0, load
# generator to CPU 1). Writes bench/results/fanout.md (progress on stderr),
# or $FANOUT_OUT. Extra arguments go to `cluecast-bench fanout`, e.g.
#   FANOUT_OUT=bench/results/fanout-2500.md bench/fanout.sh --subscribers 2500
# Takes about a minute with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
out=${FANOUT_OUT:-bench/results/fanout.md}

bench_build
bench_workdir fanout
trap 'rm -rf "$work"' EXIT
bench_copy

mkdir -p "$(dirname "$out")"
# A failed run still leaves a report saying what went wrong: keep it.
status=0
"$work/cluecast-bench" fanout --cluecast "$work/cluecast" "$@" >"$work/fanout.md" || status=$?
if [[ -s $work/fanout.md ]]; then
  mv "$work/fanout.md" "$out"
  echo "wrote $out" >&2
fi
exit "$status"
