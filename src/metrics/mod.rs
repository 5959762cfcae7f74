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
//!
//! This file is the recording side (what shards write); `exposition` reads
//! the blocks and renders them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::heartbeat::Heartbeat;
use crate::placement::Placement;
use crate::stats::ShardStats;

mod exposition;
pub use exposition::{Facts, Metrics};
// The admin listener's tests build their metrics with these helpers.
#[cfg(test)]
pub(crate) use exposition::tests;

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
