#!/usr/bin/env bash
# The zero-copy measurement over a veth pair instead of loopback: the server
# in one network namespace, the clients in another, joined by veth with
# 10.200.0.1/30 (server) and 10.200.0.2/30 (clients). Nothing is configured
# outside the two namespaces this script creates, and both (with the veth
# pair) are deleted on exit, failure or interrupt. Needs root.
# Writes bench/results/zerocopy-veth.md (or $ZEROCOPY_OUT); extra arguments
# go to `cluecast-bench zerocopy`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
out=${ZEROCOPY_OUT:-bench/results/zerocopy-veth.md}

srv_ns=cczc-srv
cli_ns=cczc-cli
srv_ip=10.200.0.1
cli_ip=10.200.0.2

if [[ $(id -u) -ne 0 ]]; then
  echo "zerocopy-veth: needs root (ip netns)" >&2
  exit 1
fi
for ns in "$srv_ns" "$cli_ns"; do
  if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
    echo "zerocopy-veth: namespace $ns exists already; delete it first (ip netns del $ns)" >&2
    exit 1
  fi
done

bench_build
bench_workdir zerocopy
bench_pid=
cleanup() {
  if [[ -n $bench_pid ]]; then
    kill "$bench_pid" 2>/dev/null || true
  fi
  # Whatever still runs inside our namespaces (a server or client process
  # the bench left behind when killed) goes, then the namespaces; deleting
  # a namespace destroys the veth end in it, and with it the pair.
  for ns in "$srv_ns" "$cli_ns"; do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n $pids ]]; then
      # shellcheck disable=SC2086
      kill $pids 2>/dev/null || true
      sleep 1
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bench_copy

ip netns add "$srv_ns"
ip netns add "$cli_ns"
# Both ends are created directly inside the namespaces: the host's own
# network namespace never sees them.
ip link add name cczc-s netns "$srv_ns" type veth peer name cczc-c netns "$cli_ns"
ip -n "$srv_ns" addr add "$srv_ip/30" dev cczc-s
ip -n "$cli_ns" addr add "$cli_ip/30" dev cczc-c
for ns in "$srv_ns" "$cli_ns"; do
  ip -n "$ns" link set lo up
done
ip -n "$srv_ns" link set cczc-s up
ip -n "$cli_ns" link set cczc-c up
mtu=$(ip -n "$srv_ns" -o link show cczc-s | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
echo "zerocopy-veth: $srv_ns/cczc-s $srv_ip <-> $cli_ns/cczc-c $cli_ip, veth mtu $mtu" >&2

mkdir -p "$(dirname "$out")"
# In the background so a signal reaches the trap at once.
"$work/cluecast-bench" zerocopy \
  --cluecast "$work/cluecast" \
  --listen "$srv_ip:0" \
  --server-via "ip netns exec $srv_ns" \
  --clients-via "ip netns exec $cli_ns" \
  "$@" >"$work/zerocopy-veth.md" &
bench_pid=$!
wait "$bench_pid"
bench_pid=
mv "$work/zerocopy-veth.md" "$out"
echo "wrote $out" >&2
