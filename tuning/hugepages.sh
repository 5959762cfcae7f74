#!/usr/bin/env bash
# Huge pages: N x 2 MiB reserved for the frame arena (N from the arena size and shards), reserved again at boot, hugetlbfs mounted.
# Usage: hugepages.sh [--check | --dry-run] [--root DIR] [--iface IFACE] [RUN SETTING...]
# (tune.sh beside this file says what the flags do.)
exec "$(dirname "$0")/tune.sh" hugepages "$@"
