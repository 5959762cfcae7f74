#!/usr/bin/env bash
# Sysctls for many long-lived connections: tuning/sysctl.d/90-cluecast.conf, live and in /etc/sysctl.d.
# Usage: sysctl.sh [--check | --dry-run] [--root DIR] [--iface IFACE] [RUN SETTING...]
# (tune.sh beside this file says what the flags do.)
exec "$(dirname "$0")/tune.sh" sysctl "$@"
