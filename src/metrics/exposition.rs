//! The admin listener's view of the metrics: a snapshot of each shard's
//! block and the storage writer's histogram, rendered as Prometheus text
//! (`render`) and as the JSON of `cluecast status`, with the facts fixed at
//! start-up.

use std::fmt::Write as _;

use super::*;

/// Facts fixed at start-up.
#[derive(Clone, Debug)]
pub struct Facts {
    pub version: &'static str,
    pub allocator: &'static str,
    pub durability: &'static str,
    /// Each shard's CPU, NUMA node and pages, and the steering in effect.
    pub placement: Placement,
}

/// Everything the admin listener serves.
pub struct Metrics {
    pub facts: Facts,
    pub started: Instant,
    pub shards: Vec<Arc<ShardMetrics>>,
    /// Each shard's loop turns (the watchdog's heartbeats).
    pub heartbeats: Arc<[Heartbeat]>,
    /// Time from a storage batch's start to its commit (and WAL sync, in
    /// sync durability) done, in microseconds.
    pub storage_commit_us: Arc<LatencyCounts>,
}

/// A snapshot of one shard's block.
struct ShardSnapshot {
    counters: [u64; COUNTERS.len()],
    cq_overflows: u64,
    gauges: Gauges,
    last_turn_ms: u64,
    class_names: Vec<String>,
    class_events_in: [u64; CLASSES_MAX + 1],
    class_events_out: [u64; CLASSES_MAX + 1],
    send_frames: BatchHistogram,
    publish_to_send_us: LatencyHistogram,
}

impl ShardMetrics {
    fn snapshot(&self) -> ShardSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let class_names = self
            .class_names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        ShardSnapshot {
            counters: std::array::from_fn(|i| load(&self.counters[i])),
            cq_overflows: load(&self.cq_overflows),
            gauges: Gauges {
                connections: load(&self.connections),
                subscriptions: load(&self.subscriptions),
                topics: load(&self.topics),
                queued_bytes: load(&self.queued_bytes),
                queue_deepest_bytes: load(&self.queue_deepest_bytes),
                handshakes: load(&self.handshakes),
                handshake_timeout_ms: load(&self.handshake_timeout_ms),
            },
            last_turn_ms: load(&self.last_turn_ms),
            class_names,
            class_events_in: std::array::from_fn(|i| load(&self.class_events_in[i])),
            class_events_out: std::array::from_fn(|i| load(&self.class_events_out[i])),
            send_frames: self.send_frames.load(),
            publish_to_send_us: self.publish_to_send_us.load(),
        }
    }
}

/// A per-shard series read from a snapshot (beyond `COUNTERS`).
struct Series {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    read: fn(&ShardSnapshot) -> f64,
}

const SHARD_SERIES: [Series; 9] = [
    Series {
        name: "cluecast_cq_overflows_total",
        kind: "counter",
        help: "Completions the kernel held back because the completion queue was full.",
        read: |s| s.cq_overflows as f64,
    },
    Series {
        name: "cluecast_connections",
        kind: "gauge",
        help: "Connections open (handshaking ones included).",
        read: |s| s.gauges.connections as f64,
    },
    Series {
        name: "cluecast_subscriptions",
        kind: "gauge",
        help: "Subscriptions held by connections.",
        read: |s| s.gauges.subscriptions as f64,
    },
    Series {
        name: "cluecast_topics",
        kind: "gauge",
        help: "Topics in the shard's table (every shard mirrors every topic with events).",
        read: |s| s.gauges.topics as f64,
    },
    Series {
        name: "cluecast_queued_bytes",
        kind: "gauge",
        help: "Bytes queued for clients, not yet sent (walked once a second).",
        read: |s| s.gauges.queued_bytes as f64,
    },
    Series {
        name: "cluecast_queue_deepest_bytes",
        kind: "gauge",
        help: "Bytes queued for the connection with the most (walked once a second).",
        read: |s| s.gauges.queue_deepest_bytes as f64,
    },
    Series {
        name: "cluecast_handshakes",
        kind: "gauge",
        help: "Connections that have not finished HELLO.",
        read: |s| s.gauges.handshakes as f64,
    },
    Series {
        name: "cluecast_handshake_timeout_seconds",
        kind: "gauge",
        help: "The handshake timeout now: shorter while more than half of --handshakes-max \
               are in flight.",
        read: |s| s.gauges.handshake_timeout_ms as f64 / 1000.0,
    },
    Series {
        name: "cluecast_shard_last_turn_timestamp_seconds",
        kind: "gauge",
        help: "Wall-clock time of the loop turn that last published these metrics \
               (the shard's heartbeat).",
        read: |s| s.last_turn_ms as f64 / 1000.0,
    },
];

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Histogram lines for one label set; `scale` divides bounds and the sum
/// (1e6 turns microseconds into seconds).
fn histogram_lines<const B: usize>(
    out: &mut String,
    name: &str,
    labels: &str,
    h: &Histogram<B>,
    scale: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for i in 0..B {
        cumulative += h.counts[i];
        let le = if i + 1 < B {
            (Histogram::<B>::bound(i) as f64 / scale).to_string()
        } else {
            "+Inf".to_string()
        };
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
    }
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum as f64 / scale);
    let _ = writeln!(out, "{name}_count{braces} {cumulative}");
}

impl Metrics {
    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, uptime_ms: u64) -> String {
        let shards: Vec<ShardSnapshot> = self.shards.iter().map(|s| s.snapshot()).collect();
        let mut out = String::with_capacity(16 << 10);
        let f = &self.facts;
        header(
            &mut out,
            "cluecast_build_info",
            "gauge",
            "Version, allocator and durability mode of this appliance.",
        );
        let _ = writeln!(
            out,
            "cluecast_build_info{{version=\"{}\",allocator=\"{}\",durability=\"{}\"}} 1",
            escape_label(f.version),
            f.allocator,
            f.durability
        );
        header(
            &mut out,
            "cluecast_uptime_seconds",
            "gauge",
            "Seconds since start-up.",
        );
        let _ = writeln!(out, "cluecast_uptime_seconds {}", uptime_ms as f64 / 1000.0);
        header(
            &mut out,
            "cluecast_steering_info",
            "gauge",
            "1 for how new connections find their shard: incoming-cpu, bpf or off (the hash).",
        );
        let _ = writeln!(
            out,
            "cluecast_steering_info{{steering=\"{}\"}} 1",
            f.placement.steering.name()
        );

        let mut last_name = "";
        for (i, counter) in COUNTERS.iter().enumerate() {
            if counter.name != last_name {
                header(&mut out, counter.name, "counter", counter.help);
                last_name = counter.name;
            }
            let sep = if counter.labels.is_empty() { "" } else { "," };
            for (id, s) in shards.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{}{{shard=\"{id}\"{sep}{}}} {}",
                    counter.name, counter.labels, s.counters[i]
                );
            }
        }
        for series in &SHARD_SERIES {
            header(&mut out, series.name, series.kind, series.help);
            for (id, s) in shards.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{}{{shard=\"{id}\"}} {}",
                    series.name,
                    (series.read)(s)
                );
            }
        }
        header(
            &mut out,
            "cluecast_shard_numa_node",
            "gauge",
            "NUMA node of the shard's CPU, which its memory is bound to (-1: unknown).",
        );
        header(
            &mut out,
            "cluecast_shard_turns_total",
            "counter",
            "Turns of the shard's loop (at least one per 50 ms timer tick when idle).",
        );
        for (id, beat) in self.heartbeats.iter().enumerate() {
            let _ = writeln!(
                out,
                "cluecast_shard_turns_total{{shard=\"{id}\"}} {}",
                beat.turns()
            );
        }
        for s in &f.placement.shards {
            let node = s.numa_node.map_or(-1, |n| n as i64);
            let _ = writeln!(
                out,
                "cluecast_shard_numa_node{{shard=\"{}\"}} {node}",
                s.shard
            );
        }
        header(
            &mut out,
            "cluecast_shard_memory_pages_info",
            "gauge",
            "1 for the pages of the shard's memory: hugetlb (reserved 2 MiB pages), \
             thp (transparent huge pages advised) or normal.",
        );
        for s in &f.placement.shards {
            let _ = writeln!(
                out,
                "cluecast_shard_memory_pages_info{{shard=\"{}\",pages=\"{}\"}} 1",
                s.shard,
                s.pages.name()
            );
        }
        let classes = [
            (
                "cluecast_class_events_in_total",
                "Events sequenced, by topic class (the name up to its first '.'; \
                 past 31 classes per shard: other).",
                true,
            ),
            (
                "cluecast_class_events_out_total",
                "Events queued live for subscribers, by topic class.",
                false,
            ),
        ];
        for (name, help, sequenced) in classes {
            header(&mut out, name, "counter", help);
            for (id, s) in shards.iter().enumerate() {
                let counts = match sequenced {
                    true => &s.class_events_in,
                    false => &s.class_events_out,
                };
                let names = s.class_names.iter().map(String::as_str).chain(["other"]);
                let indices = (0..s.class_names.len()).chain([CLASS_OTHER]);
                for (class, i) in names.zip(indices) {
                    let class = escape_label(class);
                    let count = counts[i];
                    let _ = writeln!(out, "{name}{{shard=\"{id}\",class=\"{class}\"}} {count}");
                }
            }
        }
        header(
            &mut out,
            "cluecast_send_frames",
            "histogram",
            "Frames carried by each send to a client.",
        );
        for (id, s) in shards.iter().enumerate() {
            histogram_lines(
                &mut out,
                "cluecast_send_frames",
                &format!("shard=\"{id}\""),
                &s.send_frames,
                1.0,
            );
        }
        header(
            &mut out,
            "cluecast_publish_to_send_seconds",
            "histogram",
            "From an event's sequencing (its publish_ts) to the completion of the send \
             that carried it, per event sent.",
        );
        for (id, s) in shards.iter().enumerate() {
            histogram_lines(
                &mut out,
                "cluecast_publish_to_send_seconds",
                &format!("shard=\"{id}\""),
                &s.publish_to_send_us,
                1e6,
            );
        }
        header(
            &mut out,
            "cluecast_storage_commit_seconds",
            "histogram",
            "From a storage batch's start to its commit done (WAL synced in sync durability).",
        );
        histogram_lines(
            &mut out,
            "cluecast_storage_commit_seconds",
            "",
            &self.storage_commit_us.load(),
            1e6,
        );
        out
    }

    /// The summary `cluecast status` shows, as JSON.
    pub fn status(&self, uptime_ms: u64, wall_ms: u64) -> serde_json::Value {
        let shards: Vec<ShardSnapshot> = self.shards.iter().map(|s| s.snapshot()).collect();
        let counter_total = |name: &str| -> u64 {
            COUNTERS
                .iter()
                .enumerate()
                .filter(|(_, c)| c.name == name)
                .map(|(i, _)| shards.iter().map(|s| s.counters[i]).sum::<u64>())
                .sum()
        };
        let mut latency = LatencyHistogram::default();
        for s in &shards {
            latency.merge(&s.publish_to_send_us);
        }
        let commit = self.storage_commit_us.load();
        let ages_ms: Vec<u64> = shards
            .iter()
            .map(|s| wall_ms.saturating_sub(s.last_turn_ms))
            .collect();
        let f = &self.facts;
        serde_json::json!({
            "version": f.version,
            "uptime_s": uptime_ms / 1000,
            "durability": f.durability,
            "allocator": f.allocator,
            "placement": f.placement.to_string(),
            "shards": shards.len(),
            "connections": shards.iter().map(|s| s.gauges.connections).sum::<u64>(),
            "subscriptions": shards.iter().map(|s| s.gauges.subscriptions).sum::<u64>(),
            "topics": shards.iter().map(|s| s.gauges.topics).max().unwrap_or(0),
            "queued_bytes": shards.iter().map(|s| s.gauges.queued_bytes).sum::<u64>(),
            "published_total": counter_total("cluecast_events_published_total"),
            "deliveries_total": counter_total("cluecast_deliveries_total"),
            "connections_refused_total": counter_total("cluecast_connections_refused_total"),
            "auth_refusals_total": counter_total("cluecast_auth_refusals_total"),
            "overloaded_total": counter_total("cluecast_overloaded_total"),
            "slow_consumer_goaways_total": counter_total("cluecast_slow_consumer_goaways_total"),
            "publish_to_send_count": latency.count(),
            "publish_to_send_p50_us": latency.quantile_bound(0.5),
            "publish_to_send_p99_us": latency.quantile_bound(0.99),
            "storage_commits": commit.count(),
            "storage_commit_p99_us": commit.quantile_bound(0.99),
            "shard_last_turn_age_ms": ages_ms,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::placement::{ShardPlacement, Steering};

    #[test]
    fn values_fall_in_log_spaced_buckets_and_the_rest_overflows() {
        type H = Histogram<4>; // bounds 1, 2, 4, then +Inf
        let buckets: Vec<usize> = [0, 1, 2, 3, 4, 5, 8, 9, u64::MAX]
            .iter()
            .map(|&v| H::bucket(v))
            .collect();
        assert_eq!(buckets, vec![0, 0, 1, 2, 2, 3, 3, 3, 3]);
        assert_eq!(LatencyHistogram::bound(23), 8_388_608);
        assert_eq!(LatencyHistogram::bucket(8_388_608), 23);
        assert_eq!(LatencyHistogram::bucket(8_388_609), 24);
    }

    #[test]
    fn quantiles_name_their_bucket_s_bound() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile_bound(0.5), None);
        for v in [3, 3, 3, 100] {
            h.record(v);
        }
        assert_eq!((h.count(), h.sum()), (4, 109));
        assert_eq!(h.quantile_bound(0.5), Some(4));
        assert_eq!(h.quantile_bound(0.75), Some(4));
        assert_eq!(h.quantile_bound(0.99), Some(128));
        h.record(u64::MAX);
        assert_eq!(h.quantile_bound(1.0), Some(u64::MAX));
        let mut merged = LatencyHistogram::default();
        merged.merge(&h);
        merged.merge(&h);
        assert_eq!(merged.count(), 10);
    }

    #[test]
    fn classes_are_name_prefixes_bounded_by_other() {
        assert_eq!(class_name(b"hunt.42.clues"), b"hunt");
        assert_eq!(class_name(b"lobby"), b"lobby");
        assert_eq!(class_name(b".x"), b"");
        let shared = Arc::new(ShardMetrics::default());
        let mut recorder = Recorder::new(shared.clone());
        assert_eq!(recorder.class_of(b"hunt.1"), 0);
        assert_eq!(recorder.class_of(b"hunt.2"), 0);
        assert_eq!(recorder.class_of(b"chat"), 1);
        for i in 2..CLASSES_MAX {
            assert_eq!(recorder.class_of(format!("c{i}.x").as_bytes()), i as u8);
        }
        assert_eq!(recorder.class_of(b"one.too.many"), CLASS_OTHER as u8);
        assert_eq!(recorder.class_of(&[b'a'; 200]), CLASS_OTHER as u8);
        assert_eq!(shared.class_names.lock().unwrap().len(), CLASSES_MAX);
    }

    pub(crate) fn one_shard() -> (Metrics, Recorder) {
        let shard = Arc::new(ShardMetrics::default());
        let metrics = Metrics {
            facts: Facts {
                version: "1.2.3",
                allocator: "system",
                durability: "sync",
                placement: Placement {
                    steering: Steering::IncomingCpu,
                    shards: vec![ShardPlacement {
                        shard: 0,
                        cpu: 0,
                        numa_node: Some(0),
                        pages: cluecast_sys::PageKind::Transparent,
                        memory_bytes: 80 << 20,
                    }],
                },
            },
            started: Instant::now(),
            shards: vec![shard.clone()],
            heartbeats: Arc::new([Heartbeat::default()]),
            storage_commit_us: Arc::new(LatencyCounts::default()),
        };
        (metrics, Recorder::new(shard))
    }

    #[test]
    fn nothing_is_seen_until_the_shard_publishes() {
        let (metrics, mut recorder) = one_shard();
        let stats = ShardStats {
            deliveries: 5,
            ..ShardStats::default()
        };
        assert!(recorder.due(0));
        assert!(metrics
            .render(0)
            .contains("cluecast_deliveries_total{shard=\"0\"} 0\n"));
        recorder.publish(0, 7_000, &stats, Gauges::default());
        assert!(!recorder.due(PUBLISH_INTERVAL_MS - 1));
        assert!(recorder.due(PUBLISH_INTERVAL_MS));
        metrics.heartbeats[0].beat();
        assert_eq!(metrics.shards[0].last_turn_ms(), 7_000);
        let text = metrics.render(0);
        assert!(text.contains("cluecast_deliveries_total{shard=\"0\"} 5\n"));
        assert!(text.contains("cluecast_shard_turns_total{shard=\"0\"} 1\n"));
    }

    #[test]
    fn prometheus_text_for_a_small_state() {
        let (metrics, mut recorder) = one_shard();
        let hunt = recorder.class_of(b"hunt.9");
        recorder.event_in(hunt);
        recorder.events_out(hunt, 3);
        recorder.send_frames(1);
        recorder.send_frames(3);
        recorder.send_frames(500);
        recorder.publish_to_send_us(3);
        let stats = ShardStats {
            refused_rate: 2,
            handshakes_evicted: 5,
            ..ShardStats::default()
        };
        let gauges = Gauges {
            connections: 4,
            handshakes: 3,
            handshake_timeout_ms: 1_500,
            ..Gauges::default()
        };
        recorder.publish(0, 1_500, &stats, gauges);
        metrics.storage_commit_us.record(2_000);
        let text = metrics.render(2_500);
        let expected = [
            "# HELP cluecast_build_info Version, allocator and durability mode of this appliance.\n\
             # TYPE cluecast_build_info gauge\n\
             cluecast_build_info{version=\"1.2.3\",allocator=\"system\",durability=\"sync\"} 1\n\
             # HELP cluecast_uptime_seconds Seconds since start-up.\n\
             # TYPE cluecast_uptime_seconds gauge\n\
             cluecast_uptime_seconds 2.5\n",
            "cluecast_connections_refused_total{shard=\"0\",reason=\"rate\"} 2\n\
             cluecast_connections_refused_total{shard=\"0\",reason=\"tls_rate\"} 0\n",
            "cluecast_handshakes_evicted_total{shard=\"0\"} 5\n",
            "cluecast_handshakes{shard=\"0\"} 3\n",
            "cluecast_handshake_timeout_seconds{shard=\"0\"} 1.5\n",
            "# TYPE cluecast_connections gauge\ncluecast_connections{shard=\"0\"} 4\n",
            "cluecast_shard_last_turn_timestamp_seconds{shard=\"0\"} 1.5\n",
            "cluecast_shard_numa_node{shard=\"0\"} 0\n",
            "cluecast_class_events_in_total{shard=\"0\",class=\"hunt\"} 1\n\
             cluecast_class_events_in_total{shard=\"0\",class=\"other\"} 0\n",
            "cluecast_class_events_out_total{shard=\"0\",class=\"hunt\"} 3\n",
            "# HELP cluecast_send_frames Frames carried by each send to a client.\n\
             # TYPE cluecast_send_frames histogram\n\
             cluecast_send_frames_bucket{shard=\"0\",le=\"1\"} 1\n\
             cluecast_send_frames_bucket{shard=\"0\",le=\"2\"} 1\n\
             cluecast_send_frames_bucket{shard=\"0\",le=\"4\"} 2\n\
             cluecast_send_frames_bucket{shard=\"0\",le=\"8\"} 2\n\
             cluecast_send_frames_bucket{shard=\"0\",le=\"16\"} 2\n\
             cluecast_send_frames_bucket{shard=\"0\",le=\"32\"} 2\n\
             cluecast_send_frames_bucket{shard=\"0\",le=\"64\"} 2\n\
             cluecast_send_frames_bucket{shard=\"0\",le=\"+Inf\"} 3\n\
             cluecast_send_frames_sum{shard=\"0\"} 504\n\
             cluecast_send_frames_count{shard=\"0\"} 3\n",
            "cluecast_publish_to_send_seconds_bucket{shard=\"0\",le=\"0.000002\"} 0\n\
             cluecast_publish_to_send_seconds_bucket{shard=\"0\",le=\"0.000004\"} 1\n",
            "cluecast_publish_to_send_seconds_sum{shard=\"0\"} 0.000003\n",
            "cluecast_storage_commit_seconds_bucket{le=\"0.002048\"} 1\n",
            "cluecast_storage_commit_seconds_bucket{le=\"+Inf\"} 1\n\
             cluecast_storage_commit_seconds_sum 0.002\n\
             cluecast_storage_commit_seconds_count 1\n",
        ];
        for part in expected {
            assert!(text.contains(part), "missing:\n{part}\nin:\n{text}");
        }
        let status = metrics.status(2_500, 1_600);
        assert_eq!(status["connections"], 4);
        assert_eq!(status["connections_refused_total"], 2);
        assert_eq!(status["publish_to_send_p50_us"], 4);
        assert_eq!(status["storage_commit_p99_us"], 2048);
        assert_eq!(status["shard_last_turn_age_ms"][0], 100);
    }
}
