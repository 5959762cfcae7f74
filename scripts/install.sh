#!/usr/bin/env bash
# Installs cluecast as a systemd service on this host: the release binary as
# /usr/local/bin/cluecast, the units of systemd/ in /etc/systemd/system, the
# `cluecast` system user, and the docs the units point at. Run as root; safe
# to re-run. It starts nothing: it prints the commands that do.
#   CLUECAST_BIN=PATH  install this binary instead of building a release one
#   DESTDIR=DIR        install under DIR (packaging, a dry run); no user made
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 && -z ${DESTDIR:-} ]]; then
  echo "install: run as root (or set DESTDIR to install under another directory)" >&2
  exit 1
fi
root=${DESTDIR:-}

bin=${CLUECAST_BIN:-}
if [[ -z $bin ]]; then
  scripts/setup.sh
  cargo build --release --bin cluecast
  target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  bin=$target_dir/release/cluecast
fi
if [[ ! -x $bin ]]; then
  echo "install: $bin is not an executable" >&2
  exit 1
fi

if [[ -z $root ]] && ! id cluecast >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/cluecast --no-create-home \
    --shell /usr/sbin/nologin --comment "cluecast appliance" cluecast
  echo "install: created the system user cluecast"
fi
# The huge page mount belongs to the service's user (0 when it does not exist).
uid=$(id -u cluecast 2>/dev/null || echo 0)
gid=$(id -g cluecast 2>/dev/null || echo 0)

install -D -m 0755 "$bin" "$root/usr/local/bin/cluecast"
units=$root/etc/systemd/system
install -D -m 0644 systemd/cluecast.service "$units/cluecast.service"
install -D -m 0644 systemd/cluecast-tune.service "$units/cluecast-tune.service"
sed "s/uid=0,gid=0/uid=$uid,gid=$gid/" systemd/dev-hugepages-cluecast.mount >"$units/dev-hugepages-cluecast.mount"
chmod 0644 "$units/dev-hugepages-cluecast.mount"
docs=$root/usr/local/share/doc/cluecast
install -D -m 0644 README.md "$docs/README.md"
install -D -m 0644 -t "$docs/docs" docs/*.md
# Settings and keys: readable by the service, writable by root only.
install -d -m 0750 "$root/etc/cluecast"
if [[ -z $root ]]; then chgrp cluecast /etc/cluecast; fi

echo "install: $root/usr/local/bin/cluecast ($("$root/usr/local/bin/cluecast" --version 2>/dev/null || echo "version unknown"))"
echo "install: units in $units: cluecast.service, cluecast-tune.service, dev-hugepages-cluecast.mount"
cat <<NEXT
Next:
  systemctl daemon-reload
  systemctl enable --now cluecast     # also runs cluecast-tune and mounts the huge pages
  systemctl status cluecast           # STATUS= says what it serves once ready
  journalctl -u cluecast -f
Settings: CLUECAST_* lines in /etc/cluecast/environment (CLUECAST_CONFIG=FILE for a
TOML file); docs/OPERATIONS.md says what the units do.
NEXT
