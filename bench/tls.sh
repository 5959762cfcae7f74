#!/usr/bin/env bash
# TLS 1.3 against plaintext fan-out on loopback: for each case below,
# `cluecast-bench fanout --tls --vs-plain` (rounds of a plaintext run and
# then a TLS run of the same load, each against a fresh appliance; server
# pinned to CPU 0, load generator to CPU 1). Writes, in bench/results/tls/
# (or $TLS_OUT_DIR): CASE.md (both reports and the comparison), CASE.json
# (the JSON lines), hgrm/CASE/ (latency distributions) and log.txt (the exact
# commands and the progress, appended). Extra arguments go to every case;
# $TLS_CASES picks cases by name (default: all), e.g.
#   bench/tls.sh --repeat 5
#   TLS_CASES="fanout-2500x40 fanout-2500x50" bench/tls.sh
# Takes about 10 minutes with the defaults (5 cases x 3 rounds x 2 runs of
# about 17 s), more when disturbed runs are measured again.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
out=${TLS_OUT_DIR:-bench/results/tls}

# name: flags. 20 topics, 1 publisher, 256 B payloads (fanout's defaults).
# 100k deliveries/s three ways (1,000 subscribers; 2,500; 100 at 20k
# publishes/s) and 125k/s to 2,500: loads one generator core carries over
# TLS here (60-80% of it; 2500x50 is near its edge). The last, 250k/s, is
# generator-bound on both sides: its figures are the generator's limit as
# much as the server's.
cases=(
  "fanout-1000x100: --subscribers 1000 --rate 100"
  "fanout-2500x40: --subscribers 2500 --rate 40"
  "fanout-2500x50: --subscribers 2500 --rate 50"
  "fanout-100x1000: --subscribers 100 --rate 1000"
  "fanout-2500x100: --subscribers 2500 --rate 100"
)

bench_build
bench_workdir tls
trap 'rm -rf "$work"' EXIT
bench_copy

mkdir -p "$out"
log="$out/log.txt"
echo "== $(date -u '+%F %T') UTC, $(git rev-parse --short HEAD): bench/tls.sh $*" >>"$log"
status=0
for c in "${cases[@]}"; do
  name=${c%%:*}
  if [[ -n ${TLS_CASES:-} && " $TLS_CASES " != *" $name "* ]]; then
    continue
  fi
  read -ra flags <<<"${c#*:}"
  cmd=(cluecast-bench fanout --tls --vs-plain "${flags[@]}" "$@"
    --json --report "$name.md" --hgrm-dir "hgrm/$name")
  echo "== $name: ${cmd[*]}" | tee -a "$log" >&2
  # A failed run still leaves its report: keep it, and the status.
  (cd "$work" && "$work/${cmd[0]}" "${cmd[@]:1}" --cluecast "$work/cluecast" \
    >"$name.json") 2> >(tee -a "$log" >&2) || status=$?
  for f in "$name.md" "$name.json"; do
    [[ -s $work/$f ]] && mv "$work/$f" "$out/$f"
  done
done
if [[ -d $work/hgrm ]]; then
  for dir in "$work"/hgrm/*/; do
    dest="$out/hgrm/$(basename "$dir")"
    rm -rf "$dest"
    mkdir -p "$dest"
    mv "$dir"* "$dest/"
  done
fi
echo "wrote $out" >&2
exit "$status"
