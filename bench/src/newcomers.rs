//! The storm's returning subscribers as newcomers (`storm --attack`, both
//! runs of the pair): each comes back from an address of its own in
//! 127.2.0.0/16, as one phone would, and is timed from just before its
//! connect(2) to its SUBSCRIBED. An attempt that does not reach WELCOME
//! (GOAWAY ServerFull, ERROR, a close, a timeout) is a refusal: counted,
//! and tried again after the GOAWAY's retry hint, or a short backoff
//! without one, the wait counted in its time. So every newcomer gets back
//! in the end and the run completes, whatever the server does.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::outcome::Outcome;
use crate::stats::{latency_histogram, Percentiles};

/// Newcomer i connects from `NET + 1 + i`.
const NET: Ipv4Addr = Ipv4Addr::new(127, 2, 0, 0);
/// Most newcomers: one address each in the /16, the network and broadcast
/// addresses left out.
pub const COUNT_MAX: usize = 65_534;
/// Wait after a refusal without a retry hint, doubled per refusal in a
/// row up to [`BACKOFF_MAX_MS`] (the reference client starts at the same
/// 100 ms; the cap is lower here so a run ends soon after an attack).
const BACKOFF_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 1_000;

/// The newcomers' progress and figures.
pub struct Newcomers {
    /// When each one's first attempt began.
    first_try: Vec<Option<Instant>>,
    /// Refusals of each, in a row (its backoff).
    refusals: Vec<u32>,
    /// Retries waiting: (due, ns from the schedule's start; newcomer).
    retries: BinaryHeap<Reverse<(u64, usize)>>,
    /// Connect-to-SUBSCRIBED, ns.
    timed: Histogram<u64>,
    refused: u64,
}

impl Newcomers {
    /// For newcomers 0..count (at most [`COUNT_MAX`]).
    pub fn new(count: usize) -> Newcomers {
        assert!(
            count <= COUNT_MAX,
            "{count} newcomers need as many addresses"
        );
        Newcomers {
            first_try: vec![None; count],
            refusals: vec![0; count],
            retries: BinaryHeap::new(),
            timed: latency_histogram(),
            refused: 0,
        }
    }

    /// The address newcomer `i` connects from.
    pub fn source(i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(u32::from(NET) + 1 + i as u32))
    }

    /// Newcomer `i` is about to connect (its clock starts at its first
    /// try); returns the address to connect from.
    pub fn trying(&mut self, i: usize) -> IpAddr {
        self.first_try[i].get_or_insert_with(Instant::now);
        Newcomers::source(i)
    }

    /// Newcomer `i` got its SUBSCRIBED.
    pub fn subscribed(&mut self, i: usize) {
        if let Some(t) = self.first_try[i] {
            self.timed
                .saturating_record(t.elapsed().as_nanos().min(u64::MAX as u128) as u64);
        }
    }

    /// Newcomer `i` was turned away at `now_ns` (from the schedule's
    /// start), with the GOAWAY's retry hint if one came: it tries again
    /// after that, or after its backoff.
    pub fn refused(&mut self, i: usize, retry_after_ms: Option<u32>, now_ns: u64) {
        self.refused += 1;
        self.refusals[i] += 1;
        let wait_ms = match retry_after_ms.filter(|&ms| ms > 0) {
            Some(ms) => u64::from(ms),
            None => (BACKOFF_MS << (self.refusals[i] - 1).min(16)).min(BACKOFF_MAX_MS),
        };
        self.retries
            .push(Reverse((now_ns + wait_ms * 1_000_000, i)));
    }

    /// A newcomer whose retry is due by `now_ns`.
    pub fn due(&mut self, now_ns: u64) -> Option<usize> {
        let &Reverse((at, i)) = self.retries.peek()?;
        (at <= now_ns).then(|| {
            self.retries.pop();
            i
        })
    }

    /// When the next retry is due, ns from the schedule's start (u64::MAX:
    /// none waits).
    pub fn next_ns(&self) -> u64 {
        self.retries.peek().map_or(u64::MAX, |r| r.0 .0)
    }

    /// Puts the figures in the client's outcome.
    pub fn fill(&self, o: &mut Outcome) {
        let p = Percentiles::of(&self.timed);
        o.newcomers = self.first_try.iter().flatten().count() as u64;
        o.newcomers_subscribed = p.count;
        o.newcomer_refusals = self.refused;
        o.newcomers_refused = self.refusals.iter().filter(|&&n| n > 0).count() as u64;
        (o.newcomer_p50, o.newcomer_p99, o.newcomer_max) = (p.p50, p.p99, p.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_newcomer_has_its_own_address_in_the_16() {
        assert_eq!(Newcomers::source(0), IpAddr::from([127, 2, 0, 1]));
        assert_eq!(Newcomers::source(255), IpAddr::from([127, 2, 1, 0]));
        assert_eq!(
            Newcomers::source(COUNT_MAX - 1),
            IpAddr::from([127, 2, 255, 254])
        );
    }

    #[test]
    fn a_refusal_waits_the_hint_or_backs_off_and_counts() {
        let mut n = Newcomers::new(3);
        assert_eq!(n.due(u64::MAX), None);
        n.trying(0);
        n.trying(1);
        n.refused(0, Some(250), 1_000);
        n.refused(1, None, 1_000);
        n.refused(1, Some(0), 2_000); // 0 is no hint: backoff, doubled
        assert_eq!(n.next_ns(), 1_000 + 100_000_000);
        assert_eq!(n.due(1_000 + 99_999_999), None);
        assert_eq!(n.due(1_000 + 100_000_000), Some(1));
        assert_eq!(n.next_ns(), 2_000 + 200_000_000);
        assert_eq!(n.due(u64::MAX), Some(1));
        assert_eq!(n.next_ns(), 1_000 + 250_000_000);
        assert_eq!(n.due(u64::MAX), Some(0));
        assert_eq!(n.next_ns(), u64::MAX);
        n.subscribed(0);
        n.trying(1);
        n.subscribed(1);
        let mut o = Outcome::default();
        n.fill(&mut o);
        assert_eq!(
            (
                o.newcomers,
                o.newcomers_subscribed,
                o.newcomer_refusals,
                o.newcomers_refused
            ),
            (2, 2, 3, 2)
        );
        assert!(o.newcomer_max >= o.newcomer_p50);
        let mut long = Newcomers::new(1);
        for k in 0..6 {
            long.refused(0, None, 0);
            let want_ms = (100u64 << k).min(1_000);
            assert_eq!(long.next_ns(), want_ms * 1_000_000, "refusal {}", k + 1);
            assert_eq!(long.due(u64::MAX), Some(0));
        }
    }
}
