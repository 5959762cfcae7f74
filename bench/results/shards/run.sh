#!/usr/bin/env bash
# Shard count on this 2-CPU host: 1 shard (the default, 60% of 2 CPUs) against
# 2, nothing pinned (2 shards need both CPUs), alternating, 3 rounds per load.
set -u
cd /tmp/shards
for load in "1000 100" "2500 40"; do
  read -r subs rate <<<"$load"
  for round in 1 2 3; do
    if (( round % 2 )); then order="1 2"; else order="2 1"; fi
    for shards in $order; do
      ./cluecast-bench fanout --cluecast ./cluecast --no-pin --shards "$shards" \
        --subscribers "$subs" --rate "$rate" --repeat 1 --retries 2 --json \
        >"fanout-${subs}x${rate}-s${shards}-${round}.json" 2>>log.txt
    done
  done
done
echo done >DONE
