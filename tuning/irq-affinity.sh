#!/usr/bin/env bash
# IRQ affinity: each NIC queue's interrupts on a shard's CPU, irqbalance stopped, RPS/XPS when the NIC has fewer queues than shards.
# Usage: irq-affinity.sh [--check | --dry-run] [--root DIR] [--iface IFACE] [RUN SETTING...]
# (tune.sh beside this file says what the flags do.)
exec "$(dirname "$0")/tune.sh" irq "$@"
