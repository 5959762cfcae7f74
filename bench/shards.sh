#!/usr/bin/env bash
# Shard count: `cluecast-bench fanout` with 1 shard against 2, nothing
# pinned (2 shards need both CPUs of a 2-CPU host), alternating, the order
# swapped each round, 3 rounds per load (1000 subscribers × 100 events/s
# per topic, and 2500 × 40). Writes each run's JSON lines and the progress
# log into $SHARDS_OUT (default bench/results/shards), as
# fanout-SUBSxRATE-sN-ROUND.json and log.txt. About 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
out=${SHARDS_OUT:-bench/results/shards}

bench_build
bench_workdir shards
trap 'rm -rf "$work"' EXIT
bench_copy

mkdir -p "$out"
for load in "1000 100" "2500 40"; do
  read -r subs rate <<<"$load"
  for round in 1 2 3; do
    if ((round % 2)); then order="1 2"; else order="2 1"; fi
    for shards in $order; do
      "$work/cluecast-bench" fanout --cluecast "$work/cluecast" --no-pin --shards "$shards" \
        --subscribers "$subs" --rate "$rate" --repeat 1 --retries 2 --json \
        >"$out/fanout-${subs}x${rate}-s${shards}-${round}.json" 2>>"$out/log.txt"
    done
  done
done
echo "wrote $out" >&2
