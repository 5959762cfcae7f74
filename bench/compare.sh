#!/usr/bin/env bash
# The comparison: cluecast next to Redis, NATS, Mosquitto and the ceiling
# server (one send(2) per delivery) on this host, with the original
# system's scenarios, and the appliance built with each global allocator.
#
#   bench/compare.sh [--repeat N] [--duration S] [--cases "..."]
#                    [--targets "..."] [--no-allocators] [--out DIR]
#                    [--cluecast-cases "durable resume"]
#
# Installs redis-server, nats-server and mosquitto from Debian if missing
# (root; a unit apt starts is stopped again: each run starts its own server
# on a free loopback port). Every run pins the server under test to CPU 0
# and the generator to CPU 1, identically for every target; the peers'
# configurations are in bench/src/targets.rs and bench/README.md.
#
# Writes to DIR (default bench/results/compare): runs.json (every run's
# JSON line and each invocation's median), summary.md (host, commands, a
# table per case, ratios), CASE-TARGET.md (each invocation's full report),
# CASE.svg (percentile plot, a curve per target, from hgrm/CASE/*.hgrm), and
# log.txt (progress). Then the cases only the appliance has (durable:
# each --durability mode side by side; resume: a storm of clients resuming
# from disk), into cluecast-only.json, CASE.md and CASE.svg. With the
# defaults it takes about an hour.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

repeat=3
duration=10
cases="fanout-2500 fanout-10k-20 fanout-10k-100 conns hunt spike storm"
targets="cluecast ceiling redis nats mqtt"
allocators=1
cluecast_cases="durable resume"
out=bench/results/compare
while (($#)); do
  case $1 in
  --repeat) repeat=$2; shift 2 ;;
  --duration) duration=$2; shift 2 ;;
  --cases) cases=$2; shift 2 ;;
  --targets) targets=$2; shift 2 ;;
  --no-allocators) allocators=0; shift ;;
  --out) out=$2; shift 2 ;;
  --cluecast-cases) cluecast_cases=$2; shift 2 ;;
  *) echo "compare: unknown argument $1 (see the head of $0)" >&2; exit 2 ;;
  esac
done

# The scenario and load of each case (the issue's table of peers).
case_args() {
  case $1 in
  fanout-2500) echo "fanout --publishers 1 --subscribers 2500 --topics 1 --rate 100 --payload 128" ;;
  fanout-10k-20) echo "fanout --publishers 1 --subscribers 10000 --topics 1 --rate 20 --payload 128" ;;
  fanout-10k-100) echo "fanout --publishers 1 --subscribers 10000 --topics 1 --rate 100 --payload 128" ;;
  conns) echo "conns --connections 19500 --hold 20" ;;
  hunt | spike | storm) echo "$1" ;;
  *) echo "compare: unknown case $1" >&2; return 2 ;;
  esac
}
for c in $cases; do case_args "$c" >/dev/null; done

install_peers() {
  local missing=() p
  for p in redis-server nats-server mosquitto; do
    command -v "$p" >/dev/null 2>&1 || [[ -x /usr/sbin/$p ]] || [[ -x /usr/bin/$p ]] || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "compare: ${missing[*]} missing and not root: those targets will be skipped" >&2
    return 0
  fi
  echo "compare: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian starts each as a service; the runs start their own.
  if [[ -d /run/systemd/system ]]; then
    for p in "${missing[@]}"; do systemctl disable --now "$p" >/dev/null 2>&1 || true; done
  fi
}

install_peers
bench_build
bench_workdir compare
trap 'rm -rf "$work"' EXIT
bench_copy
bench=$work/cluecast-bench

mkdir -p "$out"
rm -rf "${out:?}"/hgrm "$out"/*.md "$out"/*.svg "$out"/runs.json "$out"/cluecast-only.json
: >"$out/runs.json"
log=$out/log.txt
: >"$log"

# Runs one invocation; a failed one still leaves its lines and report.
measure() {
  local case=$1 target=$2 label=$3 binary=$4
  local name=$case-$target${label:+-${label#allocator=}}
  read -r -a words <<<"$(case_args "$case")"
  echo "compare: $name" >&2
  local cmd=("$bench" "${words[@]}" --target "$target" --repeat "$repeat" --json
    --cluecast "$binary" --report "$out/$name.md")
  if [[ ${words[0]} != conns ]]; then
    cmd+=(--duration "$duration" --hgrm-dir "$out/hgrm/$case")
    [[ -n $label ]] && cmd+=(--label "$label")
  fi
  echo "\$ ${cmd[*]#"$work/"}" >>"$log"
  "${cmd[@]}" >>"$out/runs.json" 2>>"$log" || echo "compare: $name reported failures (see $out/$name.md)" >&2
}

for c in $cases; do
  for t in $targets; do
    measure "$c" "$t" "" "$work/cluecast"
  done
done

if ((allocators)); then
  allocs_dir=$target_dir/allocators
  bench/build-allocators.sh >/dev/null
  for c in hunt fanout-2500; do
    [[ " $cases " == *" $c "* ]] || continue
    for a in snmalloc mimalloc jemalloc system; do
      cp "$allocs_dir/cluecast-$a" "$work/cluecast-$a"
      measure "$c" cluecast "allocator=$a" "$work/cluecast-$a"
    done
  done
fi

# The appliance's own cases: no peer has durability modes or resume, so
# they are a block apart, their JSON lines in cluecast-only.json (the
# summary's tables are of runs.json).
for c in $cluecast_cases; do
  case $c in
  durable) words=(durable --duration "$duration") ;;
  resume) words=(resume) ;;
  *) echo "compare: unknown cluecast-only case $c" >&2; exit 2 ;;
  esac
  echo "compare: $c" >&2
  cmd=("$bench" "${words[@]}" --repeat "$repeat" --json --cluecast "$work/cluecast"
    --report "$out/$c.md" --hgrm-dir "$out/hgrm/$c")
  echo "\$ ${cmd[*]#"$work/"}" >>"$log"
  "${cmd[@]}" >>"$out/cluecast-only.json" 2>>"$log" || echo "compare: $c reported failures (see $out/$c.md)" >&2
  curves=()
  for f in "$out/hgrm/$c"/*-median.hgrm; do
    [[ -e $f ]] || continue
    label=$(basename "$f" -median.hgrm)
    curves+=("${label#*-}=$f")
  done
  ((${#curves[@]})) || continue
  "$bench" plot --out "$out/$c.svg" --title "$c: latency by percentile" \
    --subtitle "$(nproc) CPUs, $(uname -r); server on CPU 0, generator on CPU 1; median run of $repeat" \
    "${curves[@]}"
done

# One plot per case: a curve per target (and allocator) with figures.
for c in $cases; do
  curves=()
  for f in "$out/hgrm/$c"/*-median.hgrm; do
    [[ -e $f ]] || continue
    label=$(basename "$f" -median.hgrm)
    curves+=("${label#*-}=$f")
  done
  ((${#curves[@]})) || continue
  # A far slower peer would flatten the rest: cut at twice cluecast's max.
  cut=()
  [[ " ${curves[*]} " == *" cluecast="* ]] && cut=(--y-max-of cluecast)
  "$bench" plot --out "$out/$c.svg" --title "$c: latency by percentile" "${cut[@]}" \
    --subtitle "$(nproc) CPUs, $(uname -r); server on CPU 0, generator on CPU 1; median run of $repeat" \
    "${curves[@]}"
done

{
  echo "# cluecast comparison"
  echo
  echo "- host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
  echo "- peers: $(redis-server --version 2>/dev/null | cut -d' ' -f3 || echo 'redis absent'), nats-server $( (nats-server --version 2>/dev/null || /usr/sbin/nats-server --version 2>/dev/null) | sed 's/.*v//'), mosquitto $( (mosquitto -h 2>/dev/null || /usr/sbin/mosquitto -h 2>/dev/null) | sed -n 's/.*version \([0-9.]*\).*/\1/p' | head -1)"
  echo "- every run: the server under test pinned to CPU 0, the generator to CPU 1; $repeat runs per row, the row is their median; each case's full report is CASE-TARGET.md, its plot CASE.svg"
  echo "- commands: see log.txt"
  echo
  "$bench" summary "$out/runs.json"
  for c in $cluecast_cases; do
    [[ -e $out/$c.md ]] && echo "- cluecast only: [$c]($c.md)"
  done
} >"$out/summary.md"
echo "wrote $out/summary.md" >&2
