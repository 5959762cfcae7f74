#!/usr/bin/env bash
# The event path of two builds side by side: the appliance at BASE (a git
# revision) against the working tree, on the same host in the same session.
#
#   bench/event-path.sh BASE [--rounds N] [--out DIR]
#
# Each round runs three scenarios on both builds, the order swapped each
# round: fanout (1000 subscribers × 100 events/s: server CPU per delivery
# and p99), durable (memory mode: publish → ack throughput) and hunt (2,500
# players, sync durability: server CPU and p99). Each run's JSON lines go to
# DIR (default bench/results/event-path-BASE-HEAD) as
# SCENARIO-{base,head}-ROUND.json, the progress to log.txt, and the table of
# `cluecast-bench pairs` (medians, and the median of the per-round ratios
# head / base) to pairs.md. Five rounds take about 10 minutes.
#
# BASE is built from `git archive` in a temporary directory sharing the
# build cache (so RocksDB is not built again); the working tree's build is
# then relinked, because the cache keeps only the last binary of a name
# under release/, and the two binaries are checked to differ.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

base_rev=${1:?usage: bench/event-path.sh BASE [--rounds N] [--out DIR]}
shift
rounds=5
out=
while (($#)); do
  case $1 in
  --rounds) rounds=$2; shift 2 ;;
  --out) out=$2; shift 2 ;;
  *) echo "event-path: unknown argument $1 (see the head of $0)" >&2; exit 2 ;;
  esac
done
base_short=$(git rev-parse --short "$base_rev")
head_short=$(git rev-parse --short HEAD)
[[ -z $(git status --porcelain) ]] || head_short="$head_short+changes"
out=${out:-bench/results/event-path-$base_short-$head_short}

bench_workdir event-path
trap 'rm -rf "$work"' EXIT

echo "event-path: building base $base_short" >&2
mkdir "$work/base-src"
git archive "$base_rev" | tar -x -C "$work/base-src"
(cd "$work/base-src" && cargo build --release -p cluecast)
bench_target_dir
cp "$target_dir/release/cluecast" "$work/cluecast-base"

echo "event-path: building head $head_short" >&2
touch src/main.rs bench/src/main.rs
bench_build
bench_copy
mv "$work/cluecast" "$work/cluecast-head"
if cmp -s "$work/cluecast-base" "$work/cluecast-head"; then
  echo "event-path: the base and head binaries are the same file; nothing to compare" >&2
  exit 1
fi

mkdir -p "$out"
bench="$work/cluecast-bench"
run() { # SCENARIO BUILD ROUND
  local args
  case $1 in
  fanout) args=(fanout --subscribers 1000 --rate 100) ;;
  durable) args=(durable --modes memory --duration 8) ;;
  hunt) args=(hunt --durability sync) ;;
  esac
  "$bench" "${args[@]}" --cluecast "$work/cluecast-$2" --repeat 1 --retries 4 --json \
    >"$out/$1-$2-$3.json" 2>>"$out/log.txt"
}
for round in $(seq 1 "$rounds"); do
  if ((round % 2)); then order="base head"; else order="head base"; fi
  for build in $order; do
    for scenario in fanout durable hunt; do
      run "$scenario" "$build" "$round"
    done
    echo "event-path: round $round $build done $(date +%T)" | tee -a "$out/log.txt" >&2
  done
done
"$bench" pairs "$out" | tee "$out/pairs.md"
echo "event-path: wrote $out" >&2
