//! The bookkeeping of the fan-out scenario, free of I/O: what each payload
//! carries, when each event is due, and what each subscriber received.
//!
//! Publisher `p` publishes its events `n = 0, 1, 2, ...` to topic `n % T`,
//! so a subscriber of topic `k` must receive, from every publisher, the
//! counters `k, k + T, k + 2T, ...`: their *index* `n / T` runs 0, 1, 2, ...
//! That is what [`Track`] checks, one per (subscriber, publisher).

/// Bytes of the stamp at the start of every payload: publisher id (u32),
/// the publisher's counter (u64), the scheduled send time (u64, ns of
/// CLOCK_REALTIME), all big-endian.
pub const STAMP_BYTES: usize = 4 + 8 + 8;

/// What a payload says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub counter: u64,
    pub scheduled_ns: u64,
}

impl Stamp {
    /// Writes the stamp over the first [`STAMP_BYTES`] of `payload`, which
    /// must be at least that long; the rest (padding) is left as it is.
    pub fn write(&self, payload: &mut [u8]) {
        payload[0..4].copy_from_slice(&self.publisher.to_be_bytes());
        payload[4..12].copy_from_slice(&self.counter.to_be_bytes());
        payload[12..20].copy_from_slice(&self.scheduled_ns.to_be_bytes());
    }

    /// The stamp at the start of `payload`; None when it is too short.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let publisher = u32::from_be_bytes(payload.get(0..4)?.try_into().ok()?);
        let counter = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
        let scheduled_ns = u64::from_be_bytes(payload.get(12..20)?.try_into().ok()?);
        Some(Stamp {
            publisher,
            counter,
            scheduled_ns,
        })
    }
}

/// When each publisher's events are due and where they go.
///
/// The events of all publishers together form one stream, spaced evenly at
/// `rate_per_topic × topics` per second within each phase of the rate
/// profile: publisher `p`'s event `n` is the `n × P + p`-th of the stream.
/// Each topic then gets `rate_per_topic` events per second in all. A
/// profile of several phases (the `spike` scenario) changes the rate at
/// given times; the stream stays one sequence, so every counter keeps one
/// due time and one topic.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    publishers: u64,
    topics: u64,
    /// Ascending by start; the first starts at 0.
    phases: Vec<Phase>,
}

/// A stretch of the schedule at one rate.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Phase {
    /// When it starts, ns from the schedule's start.
    start_ns: u64,
    /// The stream position due at `start_ns` (fractional: a phase may
    /// start between two events).
    start_index: f64,
    /// Nanoseconds between consecutive events of the whole stream.
    spacing_ns: f64,
}

/// Most phases of a rate profile (a spike's ramp is a handful of steps).
pub const PHASES_MAX: usize = 64;

impl Schedule {
    /// One rate throughout.
    pub fn new(publishers: usize, topics: usize, rate_per_topic: f64) -> Result<Schedule, String> {
        Schedule::with_profile(publishers, topics, &[(0, rate_per_topic)])
    }

    /// A rate per phase: `(start_ns, rate_per_topic)`, the first starting
    /// at 0, the starts strictly ascending.
    pub fn with_profile(
        publishers: usize,
        topics: usize,
        profile: &[(u64, f64)],
    ) -> Result<Schedule, String> {
        if publishers == 0 || topics == 0 {
            return Err("need at least one publisher and one topic".into());
        }
        if profile.is_empty() || profile.len() > PHASES_MAX || profile[0].0 != 0 {
            return Err(format!(
                "a rate profile needs 1..={PHASES_MAX} phases, the first at 0"
            ));
        }
        let mut phases: Vec<Phase> = Vec::with_capacity(profile.len());
        for &(start_ns, rate_per_topic) in profile {
            let total = rate_per_topic * topics as f64;
            if !(total.is_finite() && total > 0.0 && total <= 1e8) {
                return Err(format!(
                    "--rate {rate_per_topic} over {topics} topics is not a usable rate"
                ));
            }
            let start_index = match phases.last() {
                None => 0.0,
                Some(prev) if start_ns > prev.start_ns => {
                    prev.start_index + (start_ns - prev.start_ns) as f64 / prev.spacing_ns
                }
                Some(_) => return Err("the phases of a rate profile must ascend".into()),
            };
            phases.push(Phase {
                start_ns,
                start_index,
                spacing_ns: 1e9 / total,
            });
        }
        Ok(Schedule {
            publishers: publishers as u64,
            topics: topics as u64,
            phases,
        })
    }

    /// When stream position `i` is due, in ns from the start.
    fn due_of(&self, i: u64) -> u64 {
        let x = i as f64;
        let ph = self
            .phases
            .iter()
            .rev()
            .find(|ph| ph.start_index <= x)
            .unwrap_or(&self.phases[0]);
        ph.start_ns + ((x - ph.start_index) * ph.spacing_ns) as u64
    }

    /// The stream position due at `ns` (fractional).
    fn position_at(&self, ns: u64) -> f64 {
        let ph = self
            .phases
            .iter()
            .rev()
            .find(|ph| ph.start_ns <= ns)
            .unwrap_or(&self.phases[0]);
        ph.start_index + (ns - ph.start_ns) as f64 / ph.spacing_ns
    }

    /// When publisher `p`'s event `n` is due, in ns from the start.
    pub fn due_ns(&self, p: usize, n: u64) -> u64 {
        self.due_of(n * self.publishers + p as u64)
    }

    /// How many of publisher `p`'s events are due before `ns` from the
    /// start, i.e. the first `n` with `due_ns(p, n) >= ns`.
    pub fn due_before(&self, p: usize, ns: u64) -> u64 {
        // Start from the arithmetic guess and correct for rounding.
        let g = self.position_at(ns).ceil() as u64;
        let mut n = g.saturating_sub(p as u64).div_ceil(self.publishers);
        while n > 0 && self.due_ns(p, n - 1) >= ns {
            n -= 1;
        }
        while self.due_ns(p, n) < ns {
            n += 1;
        }
        n
    }

    /// The topic (index) of counter `n`.
    pub fn topic_of(&self, n: u64) -> usize {
        (n % self.topics) as usize
    }

    /// The position of counter `n` among its publisher's events on its
    /// topic.
    pub fn index_on_topic(&self, n: u64) -> u64 {
        n / self.topics
    }

    /// How many of the counters `0..sent` go to `topic`.
    pub fn count_on_topic(&self, sent: u64, topic: usize) -> u64 {
        (sent + self.topics - 1 - (topic as u64).min(self.topics - 1)) / self.topics
    }
}

/// Gaps one [`Track`] remembers; past that the oldest is given up on
/// (counted lost whatever becomes of it) and the count is approximate.
pub const GAPS_MAX: usize = 1024;

/// What a subscriber received from one publisher, by index on its topic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Track {
    /// The first index not received in order: everything below it was
    /// received or is in `gaps`.
    next: u64,
    /// Indices skipped and not (yet) received, as `[from, to)` ranges,
    /// ascending.
    gaps: Vec<(u64, u64)>,
    /// Indices of gaps given up on ([`GAPS_MAX`]).
    forgotten: u64,
    /// Distinct indices received.
    pub unique: u64,
    /// Received again.
    pub duplicated: u64,
    /// Received after a later one (filled a gap).
    pub reordered: u64,
}

/// How one delivery relates to what came before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    InOrder,
    /// After skipping this many indices.
    AfterGap(u64),
    /// Filling an earlier gap.
    Late,
    Duplicate,
}

/// The final count of one track.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Expected and never received.
    pub lost: u64,
    /// Received although its publish was refused or never sent.
    pub excluded_received: u64,
}

impl Track {
    pub fn see(&mut self, index: u64) -> Seen {
        if index == self.next {
            self.next += 1;
            self.unique += 1;
            return Seen::InOrder;
        }
        if index > self.next {
            let skipped = index - self.next;
            self.gaps.push((self.next, index));
            if self.gaps.len() > GAPS_MAX {
                let (from, to) = self.gaps.remove(0);
                self.forgotten += to - from;
            }
            self.next = index + 1;
            self.unique += 1;
            return Seen::AfterGap(skipped);
        }
        // Below `next`: a gap being filled, or a second copy.
        let at = self.gaps.partition_point(|&(_, to)| to <= index);
        match self.gaps.get(at) {
            Some(&(from, to)) if from <= index => {
                match (from < index, index + 1 < to) {
                    (true, true) => {
                        self.gaps[at] = (from, index);
                        self.gaps.insert(at + 1, (index + 1, to));
                    }
                    (true, false) => self.gaps[at] = (from, index),
                    (false, true) => self.gaps[at] = (index + 1, to),
                    (false, false) => {
                        self.gaps.remove(at);
                    }
                }
                self.unique += 1;
                self.reordered += 1;
                Seen::Late
            }
            _ => {
                self.duplicated += 1;
                Seen::Duplicate
            }
        }
    }

    /// Whether the count may be off because gaps were given up on.
    pub fn approximate(&self) -> bool {
        self.forgotten > 0
    }

    /// The final count when indices `0..expected` were published and
    /// `excluded` (ascending, below `expected`) of them were not (refused,
    /// or never sent).
    pub fn tally(&self, expected: u64, excluded: &[u64]) -> Tally {
        let missing_in = |from: u64, to: u64| -> u64 {
            let to = to.min(expected);
            if from >= to {
                return 0;
            }
            let lo = excluded.partition_point(|&x| x < from);
            let hi = excluded.partition_point(|&x| x < to);
            (to - from) - (hi - lo) as u64
        };
        let mut lost = self.forgotten;
        for &(from, to) in &self.gaps {
            lost += missing_in(from, to);
        }
        lost += missing_in(self.next, expected);
        // Excluded below `next` and in no gap were received all the same.
        let mut excluded_received = 0;
        for &x in excluded.iter().take_while(|&&x| x < self.next) {
            let at = self.gaps.partition_point(|&(_, to)| to <= x);
            let in_gap = self.gaps.get(at).is_some_and(|&(from, _)| from <= x);
            if !in_gap {
                excluded_received += 1;
            }
        }
        Tally {
            lost,
            excluded_received,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip_and_short_payloads() {
        let s = Stamp {
            publisher: 3,
            counter: 0x0102_0304_0506_0708,
            scheduled_ns: 1_700_000_000_123_456_789,
        };
        let mut payload = vec![0xAAu8; 256];
        s.write(&mut payload);
        assert_eq!(&payload[..4], &[0, 0, 0, 3]);
        assert_eq!(payload[4], 0x01);
        assert!(
            payload[STAMP_BYTES..].iter().all(|&b| b == 0xAA),
            "padding kept"
        );
        assert_eq!(Stamp::read(&payload), Some(s));
        assert_eq!(Stamp::read(&payload[..STAMP_BYTES]), Some(s));
        assert_eq!(Stamp::read(&payload[..STAMP_BYTES - 1]), None);
        assert_eq!(Stamp::read(&[]), None);
    }

    #[test]
    fn schedule_spaces_the_whole_stream_evenly() {
        // 2 publishers, 20 topics at 50/s each: 1000 events/s, 1 ms apart,
        // publishers taking turns.
        let s = Schedule::new(2, 20, 50.0).unwrap();
        assert_eq!(s.due_ns(0, 0), 0);
        assert_eq!(s.due_ns(1, 0), 1_000_000);
        assert_eq!(s.due_ns(0, 1), 2_000_000);
        assert_eq!(s.due_ns(1, 4), 9_000_000);
        for ns in [0, 1, 999_999, 1_000_000, 1_000_001, 10_000_000, 123_456_789] {
            for p in 0..2 {
                let n = s.due_before(p, ns);
                assert!(s.due_ns(p, n) >= ns, "p {p} ns {ns}");
                assert!(n == 0 || s.due_ns(p, n - 1) < ns, "p {p} ns {ns}");
            }
        }
        // 10 s of it: 5 000 events per publisher.
        assert_eq!(s.due_before(0, 10_000_000_000), 5000);
        assert_eq!(s.due_before(1, 10_000_000_000), 5000);
        assert!(Schedule::new(0, 20, 50.0).is_err());
        assert!(Schedule::new(1, 20, 0.0).is_err());
        assert!(Schedule::new(1, 20, f64::NAN).is_err());
    }

    #[test]
    fn a_profile_changes_the_rate_at_its_phases() {
        // 1 topic: 1000/s for 1 s, 10 000/s for 0.5 s, then 1000/s again.
        let s = Schedule::with_profile(
            2,
            1,
            &[
                (0, 1000.0),
                (1_000_000_000, 10_000.0),
                (1_500_000_000, 1000.0),
            ],
        )
        .unwrap();
        let both = |ns| s.due_before(0, ns) + s.due_before(1, ns);
        assert_eq!(both(1_000_000_000), 1000);
        assert_eq!(both(1_500_000_000) - both(1_000_000_000), 5000);
        assert_eq!(both(2_500_000_000) - both(1_500_000_000), 1000);
        // Due times never go backwards across the phase edges, and
        // due_before stays the inverse of due_ns.
        for p in 0..2 {
            let mut last = 0;
            for n in 0..4000 {
                let due = s.due_ns(p, n);
                assert!(due >= last, "p {p} n {n}");
                last = due;
            }
            for ns in [
                999_999_999,
                1_000_000_000,
                1_000_050_001,
                1_499_999_999,
                2_000_000_000,
            ] {
                let n = s.due_before(p, ns);
                assert!(s.due_ns(p, n) >= ns && (n == 0 || s.due_ns(p, n - 1) < ns));
            }
        }
        assert!(Schedule::with_profile(1, 1, &[]).is_err());
        assert!(
            Schedule::with_profile(1, 1, &[(5, 1.0)]).is_err(),
            "must start at 0"
        );
        assert!(Schedule::with_profile(1, 1, &[(0, 1.0), (0, 2.0)]).is_err());
    }

    #[test]
    fn topics_round_robin_and_counts() {
        let s = Schedule::new(1, 4, 1.0).unwrap();
        let topics: Vec<usize> = (0..9).map(|n| s.topic_of(n)).collect();
        assert_eq!(topics, [0, 1, 2, 3, 0, 1, 2, 3, 0]);
        assert_eq!(s.index_on_topic(8), 2);
        assert_eq!(s.index_on_topic(7), 1);
        // Counters 0..9 hold three of topic 0 (0, 4, 8) and two of 1..3.
        let counts: Vec<u64> = (0..4).map(|k| s.count_on_topic(9, k)).collect();
        assert_eq!(counts, [3, 2, 2, 2]);
        assert_eq!(s.count_on_topic(0, 0), 0);
        assert_eq!(s.count_on_topic(1, 3), 0);
        assert_eq!(s.count_on_topic(4, 3), 1);
    }

    #[test]
    fn track_in_order_is_clean() {
        let mut t = Track::default();
        for i in 0..100 {
            assert_eq!(t.see(i), Seen::InOrder);
        }
        assert_eq!(t.unique, 100);
        assert_eq!(t.tally(100, &[]), Tally::default());
        // Two more were published and never came.
        assert_eq!(t.tally(102, &[]).lost, 2);
    }

    #[test]
    fn track_counts_loss_duplicates_and_reordering() {
        let mut t = Track::default();
        let seen: Vec<Seen> = [0, 1, 4, 2, 2, 6, 1, 3, 9]
            .iter()
            .map(|&i| t.see(i))
            .collect();
        assert_eq!(
            seen,
            [
                Seen::InOrder,
                Seen::InOrder,
                Seen::AfterGap(2), // 2 and 3 skipped
                Seen::Late,        // 2 fills part of the gap
                Seen::Duplicate,   // 2 again
                Seen::AfterGap(1), // 5 skipped
                Seen::Duplicate,   // 1 again
                Seen::Late,        // 3 closes the first gap
                Seen::AfterGap(2), // 7 and 8 skipped
            ]
        );
        assert_eq!((t.unique, t.duplicated, t.reordered), (7, 2, 2));
        // Published 0..11: 5, 7, 8 (gaps) and 10 (tail) never came.
        assert_eq!(t.tally(11, &[]).lost, 4);
        // 7 was refused and 10 never sent: not lost.
        assert_eq!(t.tally(11, &[7, 10]).lost, 2);
        // 4 was refused yet arrived: the server broke its word.
        assert_eq!(t.tally(11, &[4]).excluded_received, 1);
        assert_eq!(t.tally(11, &[5]).excluded_received, 0);
    }

    #[test]
    fn track_gap_split_in_the_middle() {
        let mut t = Track::default();
        t.see(10); // 0..10 missing
        assert_eq!(t.see(5), Seen::Late);
        assert_eq!(t.see(0), Seen::Late);
        assert_eq!(t.see(9), Seen::Late);
        assert_eq!(t.see(5), Seen::Duplicate);
        assert_eq!(t.gaps, [(1, 5), (6, 9)]);
        assert_eq!(t.tally(11, &[]).lost, 7);
    }

    #[test]
    fn track_forgets_old_gaps_past_the_cap() {
        let mut t = Track::default();
        for i in 0..=GAPS_MAX as u64 {
            t.see(2 * i + 1); // every even index missing
        }
        assert!(t.approximate());
        assert_eq!(t.gaps.len(), GAPS_MAX);
        // The first gap (index 0) was given up on: arriving now it counts
        // as a duplicate, and it stays lost.
        assert_eq!(t.see(0), Seen::Duplicate);
        let expected = 2 * GAPS_MAX as u64 + 2;
        assert_eq!(t.tally(expected, &[]).lost, GAPS_MAX as u64 + 1);
    }
}
