//! What the client side of a fan-out run saw: the figures `fanload` fills
//! and the scenarios report. A leaf, so that the attackers and the
//! newcomers, which fanload drives, can add their figures to it without
//! depending back on fanload.

use crate::child::result_struct;

result_struct! {
    /// What the client side saw. Times in nanoseconds.
    pub struct Outcome {
        /// Seconds spent connecting and subscribing everyone.
        pub connect_secs: f64,
        /// Wall time of the measured window (the publishing after warm-up).
        pub window_secs: f64,
        /// Events due inside the window, all publishers.
        pub window_scheduled: u64,
        /// Of those, PUBLISHes handed to the socket.
        pub window_sent: u64,
        /// Deliveries received inside the window, all subscribers.
        pub window_deliveries: u64,
        /// Latency (receive − due) of the deliveries of events due inside
        /// the window, wherever they arrived (window or drain).
        pub lat_count: u64,
        pub lat_p50: u64,
        pub lat_p90: u64,
        pub lat_p99: u64,
        pub lat_p999: u64,
        pub lat_p9999: u64,
        pub lat_max: u64,
        /// The server's part of it: receive − the EVENT's publish_ts_ns
        /// (when the server sequenced it).
        pub fanout_p50: u64,
        pub fanout_p99: u64,
        pub fanout_max: u64,
        /// The scenario's phase (the spike; the storm's reconnecting):
        /// latency of the deliveries of events due in it (to subscribers
        /// that were connected). Zero without one.
        pub phase_count: u64,
        pub phase_p50: u64,
        pub phase_p99: u64,
        pub phase_p999: u64,
        pub phase_max: u64,
        /// The window before the phase: the steady state it is compared
        /// with.
        pub steady_p99: u64,
        pub steady_p999: u64,
        /// Storm: subscribers dropped, and back subscribed.
        pub storm_dropped: u64,
        pub storm_rejoined: u64,
        /// Storm: resumes the server could not make whole (its history
        /// no longer held what was missed).
        pub storm_gaps: u64,
        /// Storm: from the drop until the last subscriber back had
        /// received an event due after its return (so everything it
        /// missed before).
        pub storm_resume_ns: u64,
        /// Deliveries of events due while their subscriber was away
        /// (replayed on resume; not in the latencies).
        pub catch_up_deliveries: u64,
        /// Hunt: positions sent upstream.
        pub positions_sent: u64,
        /// Storm with newcomers (newcomers.rs): how many tried, got
        /// SUBSCRIBED, attempts turned away before WELCOME and newcomers
        /// turned away at least once; connect-to-SUBSCRIBED p50/p99/max.
        pub newcomers: u64,
        pub newcomers_subscribed: u64,
        pub newcomer_refusals: u64,
        pub newcomers_refused: u64,
        pub newcomer_p50: u64,
        pub newcomer_p99: u64,
        pub newcomer_max: u64,
        /// The attackers (attack.rs): connections opened, and how each
        /// ended.
        pub attack_opened: u64,
        pub attack_failed: u64,
        pub attack_goaway_server_full: u64,
        pub attack_errors: u64,
        pub attack_handshake_timeouts: u64,
        pub attack_closed_silently: u64,
        pub attack_welcomed: u64,
        pub attack_held: u64,
        /// The rest: publish_ts_ns − due (sending, the server's receive
        /// and sequencing), per delivery.
        pub publish_p99: u64,
        pub publish_max: u64,
        /// How long deliveries waited in their socket for this process to
        /// read them (not part of the latency).
        pub read_delay_p50: u64,
        pub read_delay_p99: u64,
        pub read_delay_max: u64,
        /// Reads whose data had no kernel timestamp (the receive time of
        /// their deliveries is the read time).
        pub unstamped: u64,
        /// How late the generator wrote PUBLISHes of the window.
        pub send_lag_p99: u64,
        pub send_lag_max: u64,
        /// Largest unwritten PUBLISH backlog of one publisher, bytes.
        pub backlog_max_bytes: u64,
        /// Whole run: events due (publishing stopped after these).
        pub scheduled: u64,
        /// PUBLISHes handed to the socket.
        pub sent: u64,
        /// Acknowledged with status 0.
        pub acked: u64,
        /// Acknowledged with a non-zero status (not published).
        pub refused: u64,
        /// Due but never sent (backlog full, or the publisher's connection
        /// gone).
        pub unsent: u64,
        /// Sent and never acknowledged.
        pub unacked: u64,
        /// Deliveries received, whole run, duplicates included.
        pub delivered: u64,
        /// Deliveries the subscribers should have received: every
        /// published event of their topic.
        pub expected: u64,
        /// Expected and never received.
        pub lost: u64,
        /// Received more than once.
        pub duplicated: u64,
        /// Received after a later event of the same publisher and topic.
        pub reordered: u64,
        /// EVENTs without a readable stamp, or on the wrong topic.
        pub invalid: u64,
        /// Per-topic sequence numbers that did not follow (gap, repeat).
        pub seq_errors: u64,
        /// Received although their publish was refused or never sent.
        pub excluded_received: u64,
        /// The loss figures may be off: too many gaps to remember.
        pub approximate: bool,
        pub subscribers_dropped: u64,
        pub publishers_dropped: u64,
        /// Everything expected arrived before the drain timeout.
        pub drained: bool,
        /// CPU seconds of this process inside the window.
        pub generator_cpu_secs: f64,
    }
}

impl Outcome {
    /// The latency percentiles: p50, p90, p99, p99.9, p99.99, max.
    pub fn latency(&self) -> [u64; 6] {
        let o = self;
        [
            o.lat_p50,
            o.lat_p90,
            o.lat_p99,
            o.lat_p999,
            o.lat_p9999,
            o.lat_max,
        ]
    }

    /// The phase's latency percentiles: p50, p99, p99.9, max.
    pub fn phase(&self) -> [u64; 4] {
        let o = self;
        [o.phase_p50, o.phase_p99, o.phase_p999, o.phase_max]
    }
}
