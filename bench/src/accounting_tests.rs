//! The generator's accounting against the `ceiling` server, faithful and
//! deliberately lossy ([`Faults`]): it must count exactly the faults the
//! server injected, no more and no less.
//!
//! The expected counts follow from the fault rules and how many deliveries
//! each subscriber connection had (`n`, from what was published), and the
//! server's own counters must agree with them. Nothing here depends on
//! timing, except that everything sent arrives within the drain timeout.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::ceiling::{self, Faults, Stats};
use crate::delivery::Schedule;
use crate::fanload::{self, Outcome, Plan, Protocol};

/// One publisher: a swap exchanges consecutive deliveries to a connection,
/// which the generator sees as reordered only when both come from the
/// same publisher (it tracks order per publisher).
const PUBLISHERS: usize = 1;
const SUBSCRIBERS: usize = 4;
const TOPICS: usize = 2;
/// Per topic: about 240 deliveries per subscriber in 1.2 s.
const RATE_PER_TOPIC: f64 = 200.0;

/// One run of the generator against a `ceiling` with `faults`: what the
/// generator saw, what the server counted, and how many deliveries each
/// subscriber connection had.
fn run(faults: Faults) -> (Outcome, Stats, Vec<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread =
        std::thread::spawn(move || ceiling::serve(listener, ceiling::limits(0), faults, &flag));
    let plan = Plan {
        server,
        protocol: Protocol::Cluecast,
        topic_prefix: "acct".into(),
        topics: TOPICS,
        subscribers: SUBSCRIBERS,
        publishers: PUBLISHERS,
        rate_per_topic: RATE_PER_TOPIC,
        payload_bytes: 64,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        // Waited out in full whenever something never arrives.
        drain_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(10),
        scenario: fanload::Scenario::Fanout,
        tls: None,
        attack: None,
    };
    let outcome = fanload::run(&plan, |_| {});
    stop.store(true, Ordering::Relaxed);
    let stats = thread.join().unwrap().unwrap();
    let (o, _) = outcome.unwrap();
    // Every due event was published, and nothing else went wrong.
    assert!(o.sent > 0, "{o:?}");
    assert_eq!((o.scheduled, o.acked), (o.sent, o.sent), "{o:?}");
    assert_eq!((o.unsent, o.refused, o.unacked), (0, 0, 0), "{o:?}");
    assert_eq!(
        (o.subscribers_dropped, o.publishers_dropped),
        (0, 0),
        "{o:?}"
    );
    assert_eq!((o.invalid, o.excluded_received), (0, 0), "{o:?}");
    assert!(!o.approximate, "{o:?}");
    assert_eq!(stats.accepted, (SUBSCRIBERS + PUBLISHERS) as u64);
    // Subscriber i is on topic i % T (fanload's assignment); with one
    // publisher, the counters 0..sent are all that was published.
    let schedule = Schedule::new(PUBLISHERS, TOPICS, RATE_PER_TOPIC).unwrap();
    let per_sub: Vec<u64> = (0..SUBSCRIBERS)
        .map(|i| schedule.count_on_topic(o.sent, i % TOPICS))
        .collect();
    assert_eq!(stats.deliveries, per_sub.iter().sum::<u64>());
    assert_eq!(o.expected, stats.deliveries, "{o:?}");
    (o, stats, per_sub)
}

/// Sum of `f(n)` over the subscribers' delivery counts.
fn sum(per_sub: &[u64], f: impl Fn(u64) -> u64) -> u64 {
    per_sub.iter().map(|&n| f(n)).sum()
}

#[test]
fn faithful_server_shows_no_faults() {
    let (o, stats, _) = run(Faults::default());
    // Each topic's share of the events, to each of its subscribers.
    assert_eq!(o.expected, o.sent * (SUBSCRIBERS / TOPICS) as u64);
    assert_eq!(o.delivered, o.expected, "{o:?}");
    assert_eq!(
        (o.lost, o.duplicated, o.reordered, o.seq_errors),
        (0, 0, 0, 0),
        "{o:?}"
    );
    assert!(o.drained, "{o:?}");
    assert_eq!((stats.dropped, stats.duplicated, stats.swapped), (0, 0, 0));
}

#[test]
fn dropped_deliveries_are_lost() {
    const EVERY: u64 = 7;
    let (o, stats, per_sub) = run(Faults {
        drop_every: EVERY,
        ..Faults::default()
    });
    let dropped = sum(&per_sub, |n| n / EVERY);
    assert!(dropped > 0);
    assert_eq!(
        (stats.dropped, stats.duplicated, stats.swapped),
        (dropped, 0, 0)
    );
    assert_eq!(o.lost, stats.dropped, "{o:?}");
    assert_eq!(o.delivered, o.expected - dropped, "{o:?}");
    assert_eq!((o.duplicated, o.reordered), (0, 0), "{o:?}");
    // A drop is a seq gap, seen at the next delivery; one that was the
    // last of its connection is followed by none.
    let last_dropped = sum(&per_sub, |n| u64::from(n % EVERY == 0));
    assert_eq!(o.seq_errors, dropped - last_dropped, "{o:?}");
    // The generator waited for the dropped ones until the drain timeout.
    assert!(!o.drained, "{o:?}");
}

#[test]
fn duplicated_deliveries_are_counted() {
    const EVERY: u64 = 6;
    let (o, stats, per_sub) = run(Faults {
        duplicate_every: EVERY,
        ..Faults::default()
    });
    let duplicated = sum(&per_sub, |n| n / EVERY);
    assert!(duplicated > 0);
    assert_eq!(
        (stats.dropped, stats.duplicated, stats.swapped),
        (0, duplicated, 0)
    );
    assert_eq!(o.duplicated, stats.duplicated, "{o:?}");
    assert_eq!(o.delivered, o.expected + duplicated, "{o:?}");
    assert_eq!((o.lost, o.reordered), (0, 0), "{o:?}");
    // The copy repeats its seq: one error each, the next one follows it.
    assert_eq!(o.seq_errors, duplicated, "{o:?}");
    // The copy travels in the same send as the original, so it is read
    // before the generator can decide that everything is in.
    assert!(o.drained, "{o:?}");
}

#[test]
fn swapped_deliveries_are_reordered() {
    // Above 2, so swapped pairs are never adjacent and each costs the
    // same number of seq errors.
    const EVERY: u64 = 5;
    let (o, stats, per_sub) = run(Faults {
        swap_every: EVERY,
        ..Faults::default()
    });
    // Delivery k (k % EVERY == 0) is held and sent after k + 1, if there
    // is one; a connection whose last delivery was held never gets it.
    let swapped = sum(&per_sub, |n| n.saturating_sub(1) / EVERY);
    let held = sum(&per_sub, |n| u64::from(n % EVERY == 0));
    assert!(swapped > 0);
    assert_eq!(
        (stats.dropped, stats.duplicated, stats.swapped),
        (0, 0, swapped)
    );
    // Track sees k + 1 skip k (a gap), then k fill it: one reordered each.
    assert_eq!(o.reordered, stats.swapped, "{o:?}");
    assert_eq!(o.lost, held, "{o:?}");
    assert_eq!(o.delivered, o.expected - held, "{o:?}");
    assert_eq!(o.duplicated, 0, "{o:?}");
    // Seqs k - 1, k + 1, k, k + 2: the last three are errors, the third
    // only if k + 2 exists (k + 1 was not the connection's last).
    let last_released = sum(&per_sub, |n| u64::from(n > 1 && (n - 1) % EVERY == 0));
    assert_eq!(o.seq_errors, 3 * swapped - last_released, "{o:?}");
    assert_eq!(o.drained, held == 0, "{o:?}");
}
