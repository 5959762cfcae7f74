#!/usr/bin/env bash
# Every area: huge pages, IRQs, NUMA, sysctls, limits, io_uring.
# Usage: all.sh [--check | --dry-run] [--root DIR] [--iface IFACE] [RUN SETTING...]
# (tune.sh beside this file says what the flags do.)
exec "$(dirname "$0")/tune.sh" all "$@"
