#!/usr/bin/env bash
# The one wrapper behind hugepages.sh, irq-affinity.sh, numa.sh, sysctl.sh and
# all.sh: runs `cluecast tune` for one area (or every area), where the logic
# lives. Usage: tune.sh AREA|all [--check | --dry-run] [FLAG...]
#   --check     report only; exit 1 when the host differs, 0 when it matches
#   --dry-run   print what would be written and run, change nothing
#   (neither)   apply the fixes, then check again; safe to re-run
# Other flags go to cluecast: --root DIR, --iface IFACE, --json (with
# --check), and every `cluecast run` setting (--shards, --arena-bytes, ...).
# The binary: $CLUECAST_BIN, else `cluecast` on PATH, else the release build
# in ${CARGO_TARGET_DIR:-/var/tmp/cluecast-target}.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
[ $# -ge 1 ] || { usage >&2; exit 2; }
area=$1
shift

if [ -n "${CLUECAST_BIN:-}" ]; then
    bin=$CLUECAST_BIN
elif command -v cluecast >/dev/null; then
    bin=$(command -v cluecast)
else
    bin=${CARGO_TARGET_DIR:-/var/tmp/cluecast-target}/release/cluecast
fi
[ -x "$bin" ] || {
    echo "tuning: no cluecast binary at $bin: set CLUECAST_BIN, put cluecast on PATH, or cargo build --release" >&2
    exit 2
}

mode=apply
flags=()
for arg in "$@"; do
    case $arg in
        --check) mode=check ;;
        --dry-run) mode=dry-run ;;
        -h | --help) usage; exit 0 ;;
        *) flags+=("$arg") ;;
    esac
done
only=()
[ "$area" = all ] || only=(--only "$area")
case $mode in
    check) exec "$bin" tune check "${only[@]}" "${flags[@]}" ;;
    dry-run) exec "$bin" tune apply --dry-run "${only[@]}" "${flags[@]}" ;;
    apply) exec "$bin" tune apply "${only[@]}" "${flags[@]}" ;;
esac
