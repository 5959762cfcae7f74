//! The counters a shard keeps about itself: written by its loop, copied
//! into its metrics block (`metrics`), and returned when it stops. A leaf,
//! so that `metrics` and `shard` need not know each other.

/// Counters a shard keeps about itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardStats {
    pub accepted: u64,
    /// Connections refused (GOAWAY ServerFull with a retry hint; closed when
    /// TLS is on): the shard full, its source at its limit, accepts or TLS
    /// handshakes past their rate.
    pub rejected_full: u64,
    pub refused_source: u64,
    pub refused_rate: u64,
    pub refused_tls_rate: u64,
    /// Handshakes cut to make room for a newcomer (GOAWAY ServerFull), and
    /// those that sent no whole HELLO in time (ERROR HandshakeTimeout).
    pub handshakes_evicted: u64,
    pub handshakes_timed_out: u64,
    /// Publishes answered Overloaded for their connection's rate.
    pub publishes_rate_limited: u64,
    pub closed: u64,
    pub published: u64,
    pub events_from_peers: u64,
    pub deliveries: u64,
    pub sends: u64,
    pub send_bytes: u64,
    pub short_sends: u64,
    pub zero_copy_sends: u64,
    pub catch_ups: u64,
    pub slow_consumer_goaways: u64,
    /// Reads of history from disk, and the events they delivered.
    pub disk_reads: u64,
    pub disk_deliveries: u64,
    /// FAILED notices from the storage writer.
    pub storage_failures: u64,
    /// Positions handed to the writer, and those not stored (no client_id,
    /// memory-only history, or the writer a whole channel behind).
    pub positions: u64,
    pub positions_not_stored: u64,
    pub errors_sent: u64,
    /// Connections whose peer broke TLS (a bad handshake, a forged record).
    pub tls_failures: u64,
    /// Requests refused for the connection's token rights, and
    /// connections told their token expired.
    pub not_authorized: u64,
    pub tokens_expired: u64,
    pub recv_no_buffers: u64,
    pub overloaded: u64,
    /// Completions the kernel had to hold back because the queue was full.
    pub cq_overflows: u64,
}
