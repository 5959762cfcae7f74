#!/usr/bin/env bash
# NUMA: cluecast's CPUs and memory bound to the NIC's node (a systemd drop-in for cluecast.service).
# Usage: numa.sh [--check | --dry-run] [--root DIR] [--iface IFACE] [RUN SETTING...]
# (tune.sh beside this file says what the flags do.)
exec "$(dirname "$0")/tune.sh" numa "$@"
