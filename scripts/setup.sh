#!/usr/bin/env bash
# Installs what building and testing cluecast needs and is missing here.
# Safe to re-run; does nothing when everything is present.
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
# RocksDB's bindings are generated at build time from its C header (bindgen).
compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null || compgen -G '/usr/lib/*/libclang-*.so*' >/dev/null || missing+=(libclang-dev)
# tests/systemd.rs checks the unit files with systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# The benchmark's NATS and MQTT adapters are tested against the real servers.
daemons=()
for d in nats-server mosquitto; do
  command -v "$d" >/dev/null 2>&1 || [[ -x /usr/sbin/$d ]] || daemons+=("$d")
done
missing+=("${daemons[@]}")

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian starts them as services; the tests start their own.
  if [[ -d /run/systemd/system ]]; then
    for d in "${daemons[@]}"; do systemctl disable --now "$d" >/dev/null 2>&1 || true; done
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: no Rust toolchain (cargo) on PATH; install one with rustup" >&2
  exit 1
fi
