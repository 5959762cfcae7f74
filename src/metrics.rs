//! What the appliance tells about itself: per shard a block of atomic
//! counters, gauges and histograms written only by its shard and read by
//! the admin thread; the storage writer's commit latency; facts fixed at
//! start-up (the placement: pages, NUMA nodes, steering). Renders them as
//! Prometheus text and as the JSON of `cluecast status`.
//!
//! A shard never pays an atomic per event: it counts in plain memory (its
//! `ShardStats` and a `Recorder`) and copies everything into its block
//! every `PUBLISH_INTERVAL_MS` with relaxed stores. That copy stamps the
//! block's `last_turn_ms`, the loop's heartbeat.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::heartbeat::Heartbeat;
use crate::placement::Placement;
use crate::stats::ShardStats;

/// How often a shard copies its counters into its block.
pub const PUBLISH_INTERVAL_MS: u64 = 100;
/// Topic classes counted apart per shard; later ones count as `other`
/// (which makes 32 series per shard and direction).
pub const CLASSES_MAX: usize = 31;
/// The class index of `other`.
const CLASS_OTHER: usize = CLASSES_MAX;
/// Longest class name kept (a topic name is at most 255 bytes).
const CLASS_BYTES_MAX: usize = 64;

/// Latencies in microseconds: buckets up to 2^23 us (8.4 s), then +Inf.
pub type LatencyHistogram = Histogram<25>;
/// Frames per send: buckets up to 64 (one gathering send's most), then +Inf.
pub type BatchHistogram = Histogram<8>;

/// Latency histogram shared between its writer and the admin thread.
pub type LatencyCounts = SharedHistogram<25>;

/// A histogram with log-spaced buckets: bucket `i` counts values up to
/// 2^i (and above the bucket before it); the last counts the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram<const B: usize> {
    counts: [u64; B],
    sum: u64,
}

impl<const B: usize> Default for Histogram<B> {
    fn default() -> Self {
        Histogram {
            counts: [0; B],
            sum: 0,
        }
    }
}

impl<const B: usize> Histogram<B> {
    /// The bucket of `value`: the smallest `i` with `value <= 2^i`, or the
    /// overflow bucket.
    pub fn bucket(value: u64) -> usize {
        let i = if value <= 1 {
            0
        } else {
            (64 - (value - 1).leading_zeros()) as usize
        };
        i.min(B - 1)
    }

    /// The upper bound of finite bucket `i`.
    pub fn bound(i: usize) -> u64 {
        assert!(i + 1 < B, "the last bucket has no bound");
        1 << i
    }

    pub fn record(&mut self, value: u64) {
        self.counts[Self::bucket(value)] += 1;
        self.sum = self.sum.saturating_add(value);
    }

    pub fn merge(&mut self, other: &Histogram<B>) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum = self.sum.saturating_add(other.sum);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1): None
    /// when empty, `u64::MAX` when it lies past the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<u64> {
        assert!((0.0..=1.0).contains(&q));
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(if i + 1 < B { Self::bound(i) } else { u64::MAX });
            }
        }
        unreachable!("the rank is at most the total")
    }
}

/// A histogram the admin thread can read while its writer records.
#[derive(Debug)]
pub struct SharedHistogram<const B: usize> {
    counts: [AtomicU64; B],
    sum: AtomicU64,
}

impl<const B: usize> Default for SharedHistogram<B> {
    fn default() -> Self {
        SharedHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const B: usize> SharedHistogram<B> {
    /// Records one value (for writers outside the hot path, such as the
    /// storage writer once per batch).
    pub fn record(&self, value: u64) {
        self.counts[Histogram::<B>::bucket(value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Replaces the contents with a copy kept by the only writer.
    fn store(&self, from: &Histogram<B>) {
        for (a, &b) in self.counts.iter().zip(&from.counts) {
            a.store(b, Ordering::Relaxed);
        }
        self.sum.store(from.sum, Ordering::Relaxed);
    }

    pub fn load(&self) -> Histogram<B> {
        Histogram {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// A per-shard counter taken from `ShardStats`: its metric name, extra
/// labels, help text, and the field.
struct Counter {
    name: &'static str,
    labels: &'static str,
    help: &'static str,
    read: fn(&ShardStats) -> u64,
}

/// Every per-shard counter, in rendering order (a name's lines together).
const COUNTERS: [Counter; 28] = [
    Counter {
        name: "cluecast_connections_accepted_total",
        labels: "",
        help: "Connections admitted.",
        read: |s| s.accepted,
    },
    Counter {
        name: "cluecast_connections_refused_total",
        labels: "reason=\"full\"",
        help: "Connections refused with GOAWAY(ServerFull) (closed with TLS on), by reason: \
               shard full, source at its limit, accept rate, TLS handshake rate.",
        read: |s| s.rejected_full,
    },
    Counter {
        name: "cluecast_connections_refused_total",
        labels: "reason=\"source\"",
        help: "",
        read: |s| s.refused_source,
    },
    Counter {
        name: "cluecast_connections_refused_total",
        labels: "reason=\"rate\"",
        help: "",
        read: |s| s.refused_rate,
    },
    Counter {
        name: "cluecast_connections_refused_total",
        labels: "reason=\"tls_rate\"",
        help: "",
        read: |s| s.refused_tls_rate,
    },
    Counter {
        name: "cluecast_handshakes_evicted_total",
        labels: "",
        help: "Connections that had not finished HELLO, cut (GOAWAY ServerFull) to make room \
               for a newcomer when the handshake table was full.",
        read: |s| s.handshakes_evicted,
    },
    Counter {
        name: "cluecast_handshakes_timed_out_total",
        labels: "",
        help: "Connections that sent no whole HELLO within the handshake timeout.",
        read: |s| s.handshakes_timed_out,
    },
    Counter {
        name: "cluecast_connections_closed_total",
        labels: "",
        help: "Connections closed and freed.",
        read: |s| s.closed,
    },
    Counter {
        name: "cluecast_events_published_total",
        labels: "",
        help: "Events sequenced by this shard (the topic's owner) and fanned out.",
        read: |s| s.published,
    },
    Counter {
        name: "cluecast_events_from_peers_total",
        labels: "",
        help: "Events received from the owning shard for local subscribers.",
        read: |s| s.events_from_peers,
    },
    Counter {
        name: "cluecast_deliveries_total",
        labels: "",
        help: "Events queued live for a subscriber.",
        read: |s| s.deliveries,
    },
    Counter {
        name: "cluecast_publishes_rate_limited_total",
        labels: "",
        help: "Publishes answered Overloaded for their connection's rate.",
        read: |s| s.publishes_rate_limited,
    },
    Counter {
        name: "cluecast_overloaded_total",
        labels: "",
        help: "Requests answered Overloaded for want of memory, channel room or topics.",
        read: |s| s.overloaded,
    },
    Counter {
        name: "cluecast_sends_total",
        labels: "",
        help: "Send completions that carried bytes.",
        read: |s| s.sends,
    },
    Counter {
        name: "cluecast_send_bytes_total",
        labels: "",
        help: "Bytes sent to clients.",
        read: |s| s.send_bytes,
    },
    Counter {
        name: "cluecast_short_sends_total",
        labels: "",
        help: "Sends the kernel took only part of.",
        read: |s| s.short_sends,
    },
    Counter {
        name: "cluecast_zero_copy_sends_total",
        labels: "",
        help: "Sends made with SEND_ZC.",
        read: |s| s.zero_copy_sends,
    },
    Counter {
        name: "cluecast_catch_ups_total",
        labels: "",
        help: "Subscriptions switched to catch-up from history (a full queue, or a resume).",
        read: |s| s.catch_ups,
    },
    Counter {
        name: "cluecast_slow_consumer_goaways_total",
        labels: "",
        help: "Connections sent GOAWAY(SlowConsumer): what they needed was no longer stored.",
        read: |s| s.slow_consumer_goaways,
    },
    Counter {
        name: "cluecast_disk_reads_total",
        labels: "",
        help: "History reads asked of the storage reader.",
        read: |s| s.disk_reads,
    },
    Counter {
        name: "cluecast_disk_deliveries_total",
        labels: "",
        help: "Events queued from disk reads.",
        read: |s| s.disk_deliveries,
    },
    Counter {
        name: "cluecast_storage_failures_total",
        labels: "",
        help: "FAILED notices from the storage writer.",
        read: |s| s.storage_failures,
    },
    Counter {
        name: "cluecast_positions_stored_total",
        labels: "",
        help: "Positions handed to the storage writer.",
        read: |s| s.positions,
    },
    Counter {
        name: "cluecast_positions_not_stored_total",
        labels: "",
        help: "Positions not stored (no client_id, memory durability, writer behind).",
        read: |s| s.positions_not_stored,
    },
    Counter {
        name: "cluecast_tls_failures_total",
        labels: "",
        help: "Connections whose peer broke TLS.",
        read: |s| s.tls_failures,
    },
    Counter {
        name: "cluecast_auth_refusals_total",
        labels: "",
        help: "Handshakes and requests refused for the token or its rights.",
        read: |s| s.not_authorized,
    },
    Counter {
        name: "cluecast_tokens_expired_total",
        labels: "",
        help: "Connections told their token expired.",
        read: |s| s.tokens_expired,
    },
    Counter {
        name: "cluecast_recv_no_buffers_total",
        labels: "",
        help: "Receives that ended for want of provided buffers (ENOBUFS).",
        read: |s| s.recv_no_buffers,
    },
];

/// The gauges a shard measures about its state, copied with its counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub connections: u64,
    pub subscriptions: u64,
    pub topics: u64,
    /// Bytes queued for clients, in all and on the deepest connection.
    pub queued_bytes: u64,
    pub queue_deepest_bytes: u64,
    /// Connections that have not finished HELLO, and the handshake timeout
    /// that applies to them now (shorter under pressure).
    pub handshakes: u64,
    pub handshake_timeout_ms: u64,
}

/// One shard's block: written by that shard only, read by the admin thread.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    counters: [AtomicU64; COUNTERS.len()],
    cq_overflows: AtomicU64,
    connections: AtomicU64,
    subscriptions: AtomicU64,
    topics: AtomicU64,
    queued_bytes: AtomicU64,
    queue_deepest_bytes: AtomicU64,
    handshakes: AtomicU64,
    handshake_timeout_ms: AtomicU64,
    /// Wall-clock milliseconds of the loop turn that last copied its
    /// counters here (0: not yet): the shard's heartbeat. A shard that is
    /// alive stamps it every `PUBLISH_INTERVAL_MS` (give or take one timer
    /// tick of its loop).
    last_turn_ms: AtomicU64,
    /// Names of the topic classes, in class order; grows to `CLASSES_MAX`
    /// at most, so it is locked at most that many times.
    class_names: Mutex<Vec<String>>,
    class_events_in: [AtomicU64; CLASSES_MAX + 1],
    class_events_out: [AtomicU64; CLASSES_MAX + 1],
    send_frames: SharedHistogram<8>,
    publish_to_send_us: LatencyCounts,
}

impl ShardMetrics {
    /// The heartbeat: when the shard's loop last published (wall-clock ms).
    pub fn last_turn_ms(&self) -> u64 {
        self.last_turn_ms.load(Ordering::Relaxed)
    }
}

/// What a shard counts between copies, beyond its `ShardStats`.
pub struct Recorder {
    shared: Arc<ShardMetrics>,
    class_names: Vec<Box<[u8]>>,
    class_events_in: [u64; CLASSES_MAX + 1],
    class_events_out: [u64; CLASSES_MAX + 1],
    send_frames: BatchHistogram,
    publish_to_send_us: LatencyHistogram,
    next_publish_ms: u64,
}

/// The class of a topic: its name up to the first '.', or all of it.
pub fn class_name(topic: &[u8]) -> &[u8] {
    let end = topic.iter().position(|&b| b == b'.').unwrap_or(topic.len());
    &topic[..end]
}

impl Recorder {
    pub fn new(shared: Arc<ShardMetrics>) -> Recorder {
        Recorder {
            shared,
            class_names: Vec::with_capacity(CLASSES_MAX),
            class_events_in: [0; CLASSES_MAX + 1],
            class_events_out: [0; CLASSES_MAX + 1],
            send_frames: Histogram::default(),
            publish_to_send_us: Histogram::default(),
            next_publish_ms: 0,
        }
    }

    /// The class index of a topic, registering its class while there is
    /// room (classes are never forgotten; past `CLASSES_MAX` it is `other`,
    /// so made-up names cannot grow this table).
    pub fn class_of(&mut self, topic: &[u8]) -> u8 {
        let name = class_name(topic);
        if name.len() > CLASS_BYTES_MAX {
            return CLASS_OTHER as u8;
        }
        if let Some(i) = self.class_names.iter().position(|c| c[..] == name[..]) {
            return i as u8;
        }
        if self.class_names.len() == CLASSES_MAX {
            return CLASS_OTHER as u8;
        }
        self.class_names.push(name.into());
        let mut shared = self
            .shared
            .class_names
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shared.push(String::from_utf8_lossy(name).into_owned());
        assert_eq!(shared.len(), self.class_names.len());
        (self.class_names.len() - 1) as u8
    }

    pub fn event_in(&mut self, class: u8) {
        self.class_events_in[class as usize] += 1;
    }

    pub fn events_out(&mut self, class: u8, events: u64) {
        self.class_events_out[class as usize] += events;
    }

    pub fn send_frames(&mut self, frames: usize) {
        self.send_frames.record(frames as u64);
    }

    pub fn publish_to_send_us(&mut self, micros: u64) {
        self.publish_to_send_us.record(micros);
    }

    /// Whether `PUBLISH_INTERVAL_MS` has passed since the last copy, so
    /// the loop should copy now (`publish`).
    pub fn due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_publish_ms
    }

    /// Copies everything counted into the shared block.
    pub fn publish(&mut self, now_ms: u64, wall_ms: u64, stats: &ShardStats, gauges: Gauges) {
        self.next_publish_ms = now_ms + PUBLISH_INTERVAL_MS;
        let s = &self.shared;
        for (slot, counter) in s.counters.iter().zip(&COUNTERS) {
            slot.store((counter.read)(stats), Ordering::Relaxed);
        }
        s.cq_overflows.store(stats.cq_overflows, Ordering::Relaxed);
        s.connections.store(gauges.connections, Ordering::Relaxed);
        s.subscriptions
            .store(gauges.subscriptions, Ordering::Relaxed);
        s.topics.store(gauges.topics, Ordering::Relaxed);
        s.queued_bytes.store(gauges.queued_bytes, Ordering::Relaxed);
        s.queue_deepest_bytes
            .store(gauges.queue_deepest_bytes, Ordering::Relaxed);
        s.handshakes.store(gauges.handshakes, Ordering::Relaxed);
        s.handshake_timeout_ms
            .store(gauges.handshake_timeout_ms, Ordering::Relaxed);
        for i in 0..=CLASSES_MAX {
            s.class_events_in[i].store(self.class_events_in[i], Ordering::Relaxed);
            s.class_events_out[i].store(self.class_events_out[i], Ordering::Relaxed);
        }
        s.send_frames.store(&self.send_frames);
        s.publish_to_send_us.store(&self.publish_to_send_us);
        s.last_turn_ms.store(wall_ms, Ordering::Relaxed);
    }
}

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
