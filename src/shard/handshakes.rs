//! The shard's connections that have not finished HELLO, oldest first.
//!
//! Owns who waits and since when, how many handshakes each source holds on
//! this shard, and what pressure does: the timeout shortens as the table
//! fills, and a full table makes room for a newcomer by evicting an old
//! entry instead of refusing the newcomer (the SYN-cache idea). A phone sends
//! HELLO within a round trip or two of connecting, so the entries that have
//! waited longest, and among those the ones whose source holds the most, are
//! the likeliest to be an attack's.
//!
//! Entries are connection slots, linked in arrival order through arrays
//! sized at start-up: entering, leaving and picking a victim allocate
//! nothing and cost O(1) (a victim: at most `VICTIM_SCAN` looks).

const NIL: u32 = u32::MAX;
/// A connection whose source is not counted (this host's own loopback).
pub const NO_SOURCE: u32 = u32::MAX;
/// How many of the oldest entries a full table looks at to pick its victim.
const VICTIM_SCAN: usize = 16;
/// The fill (as a fraction of `max`, in 1/1024ths) from which the timeout
/// shortens, reaching the floor when the table is full.
const PRESSURE_FROM_1024THS: u64 = 512;
/// Under pressure, at most one log line a second.
const REPORT_INTERVAL_MS: u64 = 1_000;

pub struct HandshakeLimits {
    /// Most handshakes at once.
    pub max: u32,
    /// The timeout while the table is at most half full.
    pub timeout_ms: u32,
    /// The timeout when it is full (the floor under pressure).
    pub timeout_min_ms: u32,
}

pub struct Handshakes {
    limits: HandshakeLimits,
    count: u32,
    head: u32,
    tail: u32,
    next: Box<[u32]>,
    prev: Box<[u32]>,
    /// When each entry arrived; `u64::MAX` for a slot not in the table.
    since_ms: Box<[u64]>,
    source_of: Box<[u32]>,
    /// Handshakes held by each source slot (`SourceCounts::slot`).
    per_source: Box<[u32]>,
    pressure: Pressure,
}

/// What the log says about pressure, and what happened since it last did.
#[derive(Default)]
struct Pressure {
    on: bool,
    reported_ms: u64,
    evicted: u64,
    timed_out: u64,
}

/// A change worth a log line: the table came under pressure (or is still,
/// a second later), or the pressure is over.
#[derive(Debug, PartialEq, Eq)]
pub enum PressureReport {
    Under {
        count: u32,
        max: u32,
        timeout_ms: u32,
        evicted: u64,
        timed_out: u64,
    },
    Over,
}

impl Handshakes {
    /// A table for connection slots `0..slots`, counting per source in
    /// `source_slots` slots.
    pub fn new(limits: HandshakeLimits, slots: usize, source_slots: usize) -> Handshakes {
        assert!(limits.max >= 1 && limits.timeout_min_ms <= limits.timeout_ms);
        Handshakes {
            limits,
            count: 0,
            head: NIL,
            tail: NIL,
            next: vec![NIL; slots].into(),
            prev: vec![NIL; slots].into(),
            since_ms: vec![u64::MAX; slots].into(),
            source_of: vec![NO_SOURCE; slots].into(),
            per_source: vec![0; source_slots].into(),
            pressure: Pressure::default(),
        }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_full(&self) -> bool {
        self.count >= self.limits.max
    }

    pub fn contains(&self, index: u32) -> bool {
        self.since_ms[index as usize] != u64::MAX
    }

    /// Whether `source` holds no handshake here: a newcomer, let in ahead of
    /// sources that hold some.
    pub fn is_quiet(&self, source: u32) -> bool {
        source == NO_SOURCE || self.per_source[source as usize] == 0
    }

    /// Connection `index` starts its handshake. The caller made room first.
    pub fn enter(&mut self, index: u32, source: u32, now_ms: u64) {
        assert!(!self.is_full(), "a handshake entered a full table");
        assert!(!self.contains(index), "a handshake entered twice");
        let i = index as usize;
        self.since_ms[i] = now_ms;
        self.source_of[i] = source;
        if source != NO_SOURCE {
            self.per_source[source as usize] += 1;
        }
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        match self.tail {
            NIL => self.head = index,
            tail => self.next[tail as usize] = index,
        }
        self.tail = index;
        self.count += 1;
    }

    /// Connection `index` finished HELLO or closed; nothing if it was not
    /// in the table.
    pub fn leave(&mut self, index: u32) {
        if !self.contains(index) {
            return;
        }
        let i = index as usize;
        let (prev, next) = (self.prev[i], self.next[i]);
        match prev {
            NIL => self.head = next,
            p => self.next[p as usize] = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.prev[n as usize] = prev,
        }
        let source = self.source_of[i];
        if source != NO_SOURCE {
            self.per_source[source as usize] -= 1;
        }
        self.since_ms[i] = u64::MAX;
        self.source_of[i] = NO_SOURCE;
        self.count -= 1;
    }

    /// The entry to evict for a newcomer: among the `VICTIM_SCAN` oldest,
    /// the one whose source holds the most handshakes here, the oldest of
    /// those on a tie. A phone holds one; an attack from a few hundred
    /// addresses holds several per address, so phones are passed over.
    pub fn victim(&self) -> Option<u32> {
        let mut best: Option<(u32, u32)> = None;
        let mut at = self.head;
        for _ in 0..VICTIM_SCAN {
            if at == NIL {
                break;
            }
            let held = match self.source_of[at as usize] {
                NO_SOURCE => 0,
                source => self.per_source[source as usize],
            };
            if best.is_none_or(|(_, most)| held > most) {
                best = Some((at, held));
            }
            at = self.next[at as usize];
        }
        best.map(|(index, _)| index)
    }

    /// Counts an eviction for the next pressure report.
    pub fn evicted(&mut self) {
        self.pressure.evicted += 1;
    }

    /// The timeout now: the configured one while the table is at most half
    /// full, then shorter in proportion, down to the floor when full.
    pub fn timeout_ms(&self) -> u32 {
        let HandshakeLimits {
            max,
            timeout_ms,
            timeout_min_ms,
        } = self.limits;
        let fill_1024ths = (self.count as u64 * 1024 / max as u64).min(1024);
        if fill_1024ths <= PRESSURE_FROM_1024THS {
            return timeout_ms;
        }
        let span = (timeout_ms - timeout_min_ms) as u64;
        let over = fill_1024ths - PRESSURE_FROM_1024THS;
        let cut = span * over / (1024 - PRESSURE_FROM_1024THS);
        timeout_ms - cut as u32
    }

    /// Takes out every entry that has waited the timeout (as the fill now
    /// sets it) into `expired`, oldest first.
    pub fn expire(&mut self, now_ms: u64, expired: &mut Vec<u32>) {
        while self.head != NIL {
            let oldest = self.head;
            let waited_ms = now_ms.saturating_sub(self.since_ms[oldest as usize]);
            if waited_ms < self.timeout_ms() as u64 {
                break;
            }
            self.leave(oldest);
            self.pressure.timed_out += 1;
            expired.push(oldest);
        }
    }

    /// What to log about pressure now, if anything: when the table first
    /// fills past half, every second while it stays there, and once when it
    /// is back under a quarter.
    pub fn report(&mut self, now_ms: u64) -> Option<PressureReport> {
        let fill_1024ths = self.count as u64 * 1024 / self.limits.max as u64;
        let p = &mut self.pressure;
        if fill_1024ths > PRESSURE_FROM_1024THS {
            let due = !p.on || now_ms >= p.reported_ms + REPORT_INTERVAL_MS;
            if !due {
                return None;
            }
            p.on = true;
            p.reported_ms = now_ms;
            let report = PressureReport::Under {
                count: self.count,
                max: self.limits.max,
                timeout_ms: self.timeout_ms(),
                evicted: std::mem::take(&mut self.pressure.evicted),
                timed_out: std::mem::take(&mut self.pressure.timed_out),
            };
            return Some(report);
        }
        if p.on && fill_1024ths <= PRESSURE_FROM_1024THS / 2 {
            *p = Pressure::default();
            return Some(PressureReport::Over);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: u32) -> Handshakes {
        let limits = HandshakeLimits {
            max,
            timeout_ms: 5_000,
            timeout_min_ms: 1_000,
        };
        Handshakes::new(limits, 64, 16)
    }

    #[test]
    fn entries_leave_in_any_order_and_the_oldest_expires_first() {
        let mut t = table(8);
        for i in 0..4 {
            t.enter(i, NO_SOURCE, 100 * i as u64);
        }
        t.leave(1);
        t.leave(1);
        assert_eq!(t.count(), 3);
        assert!(!t.contains(1) && t.contains(2));
        let mut expired = Vec::new();
        t.expire(5_100, &mut expired);
        assert_eq!(expired, [0], "only entry 0 has waited 5 s");
        t.expire(6_000, &mut expired);
        assert_eq!(expired, [0, 2, 3]);
        assert_eq!(t.count(), 0);
        // Empty again: the links are whole.
        t.enter(5, NO_SOURCE, 7_000);
        assert_eq!(t.victim(), Some(5));
    }

    #[test]
    fn the_timeout_shortens_past_half_full_down_to_the_floor() {
        let mut t = table(8);
        let mut timeouts = Vec::new();
        for i in 0..8 {
            t.enter(i, NO_SOURCE, 0);
            timeouts.push(t.timeout_ms());
        }
        assert_eq!(
            timeouts,
            [5_000, 5_000, 5_000, 5_000, 4_000, 3_000, 2_000, 1_000]
        );
        assert!(t.is_full());
        // Under pressure entries go sooner: 2 s after they came, entries go
        // until the table is down to where the timeout is past 2 s.
        let mut expired = Vec::new();
        t.expire(2_000, &mut expired);
        assert_eq!(expired, [0, 1]);
        assert_eq!(t.timeout_ms(), 3_000);
    }

    #[test]
    fn a_full_table_evicts_from_the_source_holding_most() {
        let mut t = table(8);
        // Two phones (sources 1 and 2) arrived first; an attacker (source
        // 7) holds the rest.
        t.enter(0, 1, 0);
        t.enter(1, 2, 1);
        for i in 2..8 {
            t.enter(i, 7, 2);
        }
        assert_eq!(t.victim(), Some(2), "the attacker's oldest, not a phone");
        assert!(!t.is_quiet(7) && t.is_quiet(3));
        // With every source holding one, the oldest goes.
        let mut t = table(4);
        for i in 0..4 {
            t.enter(i, i + 1, i as u64);
        }
        assert_eq!(t.victim(), Some(0));
        // This host's own connections are passed over for any counted one.
        let mut t = table(4);
        t.enter(0, NO_SOURCE, 0);
        t.enter(1, 3, 1);
        assert_eq!(t.victim(), Some(1));
        t.leave(1);
        assert_eq!(t.victim(), Some(0));
        assert!(table(4).victim().is_none());
    }

    #[test]
    fn pressure_is_reported_once_a_second_and_when_over() {
        let mut t = table(8);
        for i in 0..4 {
            t.enter(i, NO_SOURCE, 0);
        }
        assert_eq!(t.report(0), None, "half full is no pressure");
        t.enter(4, NO_SOURCE, 0);
        t.evicted();
        let under = t.report(10);
        assert_eq!(
            under,
            Some(PressureReport::Under {
                count: 5,
                max: 8,
                timeout_ms: 4_000,
                evicted: 1,
                timed_out: 0
            })
        );
        assert_eq!(t.report(500), None);
        assert!(matches!(
            t.report(1_010),
            Some(PressureReport::Under { evicted: 0, .. })
        ));
        t.leave(4);
        t.leave(3);
        assert_eq!(t.report(1_100), None, "not yet under a quarter");
        t.leave(2);
        assert_eq!(t.report(1_200), Some(PressureReport::Over));
        assert_eq!(t.report(3_000), None);
    }
}
