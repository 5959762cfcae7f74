//! What moves during a run besides the load: the progress display, a
//! storm's drop and return, the hunt's upstream positions.

use super::*;

/// The live one-line progress display, on a terminal only.
pub(super) struct Progress {
    pub(super) next: Instant,
    delivered: u64,
    shown: bool,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(1);

    pub(super) fn new(now: Instant) -> Option<Progress> {
        // SAFETY: isatty on a descriptor number has no preconditions.
        let tty = unsafe { libc::isatty(2) } == 1;
        tty.then_some(Progress {
            next: now + Self::EVERY,
            delivered: 0,
            shown: false,
        })
    }

    /// Rewrites the line (due once `next` has passed): phase, time,
    /// delivery rate.
    pub(super) fn tick(
        &mut self,
        now: Instant,
        phase: Phase,
        el_s: f64,
        total_s: f64,
        delivered: u64,
        away: usize,
    ) {
        let rate =
            (delivered - self.delivered) as f64 / (now - self.next + Self::EVERY).as_secs_f64();
        (self.next, self.delivered, self.shown) = (now + Self::EVERY, delivered, true);
        let what = match phase {
            Phase::Warmup => "warm-up",
            Phase::Measure => "measuring",
            Phase::Drain => "draining",
        };
        eprint!(
            "\r{what} {el_s:5.1} / {total_s:.1} s, {rate:9.0} deliveries/s, {away} subscribers away  "
        );
    }

    pub(super) fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// A storm's progress: who is away, who is back.
pub(super) struct StormRun {
    /// When the drop happens and over how long they come back, ns from
    /// the start.
    pub(super) at_ns: u64,
    pub(super) spread_ns: u64,
    /// Subscribers 0..count take part.
    pub(super) count: usize,
    /// CLOCK_REALTIME of the drop, once it happened.
    pub(super) dropped_real_ns: Option<u64>,
    /// Subscribers whose time to come back has come (the first ones).
    pub(super) rejoined: usize,
    pub(super) gaps: u64,
    /// Each from its own address, timed, tried again when turned away.
    pub(super) newcomers: Option<Newcomers>,
}

impl StormRun {
    /// When subscriber `k` (< count) comes back, ns from the start.
    fn back_at(&self, k: usize) -> u64 {
        self.at_ns + self.spread_ns * k as u64 / self.count as u64
    }

    /// When something is next to do, ns from the start.
    pub(super) fn next_ns(&self) -> u64 {
        let retry_ns = self.newcomers.as_ref().map_or(u64::MAX, Newcomers::next_ns);
        match self.dropped_real_ns {
            None => self.at_ns,
            Some(_) if self.rejoined < self.count => self.back_at(self.rejoined).min(retry_ns),
            Some(_) => retry_ns,
        }
    }

    /// The next subscriber due to connect by `now_ns` (from the start):
    /// the next to come back, else a newcomer's retry.
    pub(super) fn due(&mut self, now_ns: u64) -> Option<usize> {
        self.dropped_real_ns?;
        if self.rejoined < self.count && now_ns >= self.back_at(self.rejoined) {
            self.rejoined += 1;
            return Some(self.rejoined - 1);
        }
        self.newcomers.as_mut()?.due(now_ns)
    }
}

/// The hunt's upstream: position `m` of the whole stream is player
/// `m % S`'s, due at `m / (S × rate)` s.
pub(super) struct Positions {
    pub(super) per_s: f64,
    pub(super) next: u64,
    pub(super) sent: u64,
    /// A position body: fixed coordinates, the time stamped per send.
    pub(super) fix: Position,
    /// The peers' channel for each hunt's positions (`HUNT.pos`).
    pub(super) channels: Vec<String>,
}

impl Positions {
    fn due_before(&self, ns: u64) -> u64 {
        (ns as f64 * self.per_s / 1e9).ceil() as u64
    }

    pub(super) fn due_ns(&self, m: u64) -> u64 {
        (m as f64 * 1e9 / self.per_s) as u64
    }

    /// Queues every position due by `el` on its player's connection;
    /// players with bytes to write are added to `writing`.
    pub(super) fn send_due(
        &mut self,
        el: u64,
        plan: &Plan,
        subs: &mut [Sub],
        writing: &mut Vec<usize>,
    ) {
        let due = self.due_before(el.saturating_add(1));
        if due <= self.next {
            return;
        }
        let ts_ms = cluecast_sys::realtime_ns() / 1_000_000;
        for m in self.next..due {
            let i = (m % subs.len() as u64) as usize;
            let s = &mut subs[i];
            if !s.alive || s.away {
                continue;
            }
            if !s.has_output() {
                writing.push(i);
            }
            let fix = Position {
                client_ts_ms: ts_ms,
                ..self.fix
            };
            match plan.protocol {
                Protocol::Cluecast => Frame::Position(fix).encode(&mut s.out),
                Protocol::Peer(peer) => {
                    let mut body = [0u8; 20];
                    body[0..4].copy_from_slice(&fix.lat_e7.to_be_bytes());
                    body[4..8].copy_from_slice(&fix.lon_e7.to_be_bytes());
                    body[8..12].copy_from_slice(&fix.accuracy_cm.to_be_bytes());
                    body[12..20].copy_from_slice(&fix.client_ts_ms.to_be_bytes());
                    let channel = self.channels[s.topic].as_bytes();
                    peers::publish(peer, &mut s.out, channel, &body);
                }
            }
            self.sent += 1;
        }
        self.next = due;
    }
}
