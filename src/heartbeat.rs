//! Shard liveness, for readiness and the service manager's watchdog. Each
//! shard counts the turns of its loop into a `Heartbeat` of its own; the
//! main thread reads them. An idle shard still turns at every timer tick
//! (50 ms: its ring wait times out), so a count that stops moving means a
//! stuck loop, not a quiet one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One shard's turn count, alone on its cache line so a shard storing into
/// it every turn never slows another shard's store.
#[repr(align(64))]
#[derive(Default)]
pub struct Heartbeat {
    turns: AtomicU64,
}

impl Heartbeat {
    /// A turn of the loop finished. Only the owning shard calls this.
    pub fn beat(&self) {
        // One writer: a load and a store, no read-modify-write needed.
        let turns = self.turns.load(Ordering::Relaxed);
        self.turns.store(turns + 1, Ordering::Relaxed);
    }

    pub fn turns(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }
}

/// The first shard that has not finished one turn yet (None: every shard's
/// loop is running, its accept armed and submitted).
pub fn first_not_started(beats: &[Heartbeat]) -> Option<usize> {
    beats.iter().position(|b| b.turns() == 0)
}

/// Shortest watchdog interval accepted: an idle shard turns only every 50 ms
/// (its timer tick), and each check (every half interval) must see a turn.
pub const WATCHDOG_INTERVAL_MIN_US: u64 = 200_000;

/// What a watchdog check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pulse {
    /// Not yet time to check.
    NotDue,
    /// Every shard turned since the last check: ping the manager.
    Alive,
    /// This shard has not turned since the last check: no ping.
    Stalled(usize),
}

/// Decides, every half watchdog interval, whether to ping the manager: only
/// when every shard's loop has turned since the previous check, so one stuck
/// shard stops the pings and the manager restarts the service.
pub struct Watchdog {
    period: Duration,
    next_check: Instant,
    turns_seen: Vec<u64>,
}

impl Watchdog {
    /// `interval_us` is the manager's WATCHDOG_USEC; checks come at half of it.
    pub fn new(interval_us: u64, shards: usize, now: Instant) -> Result<Watchdog, String> {
        assert!(shards > 0);
        if interval_us < WATCHDOG_INTERVAL_MIN_US {
            return Err(format!(
                "the service manager's watchdog interval (WatchdogSec=, {} ms) is below {} ms, \
                 too short for shards that turn every 50 ms when idle: set WatchdogSec=1s or more",
                interval_us / 1000,
                WATCHDOG_INTERVAL_MIN_US / 1000
            ));
        }
        let period = Duration::from_micros(interval_us / 2);
        Ok(Watchdog {
            period,
            next_check: now + period,
            turns_seen: vec![0; shards],
        })
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// Time left until the next check is due.
    pub fn until_due(&self, now: Instant) -> Duration {
        self.next_check.saturating_duration_since(now)
    }

    pub fn check(&mut self, beats: &[Heartbeat], now: Instant) -> Pulse {
        assert_eq!(beats.len(), self.turns_seen.len());
        if now < self.next_check {
            return Pulse::NotDue;
        }
        self.next_check = now + self.period;
        let mut stalled = None;
        for (id, (beat, seen)) in beats.iter().zip(&mut self.turns_seen).enumerate() {
            let turns = beat.turns();
            if turns == *seen && stalled.is_none() {
                stalled = Some(id);
            }
            *seen = turns;
        }
        match stalled {
            Some(id) => Pulse::Stalled(id),
            None => Pulse::Alive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beats(shards: usize) -> Vec<Heartbeat> {
        (0..shards).map(|_| Heartbeat::default()).collect()
    }

    #[test]
    fn pings_only_while_every_shard_turns() {
        let start = Instant::now();
        let beats = beats(2);
        let mut watchdog = Watchdog::new(300_000, 2, start).unwrap();
        assert_eq!(watchdog.period(), Duration::from_millis(150));
        let at = |ms| start + Duration::from_millis(ms);

        beats[0].beat();
        beats[1].beat();
        assert_eq!(watchdog.check(&beats, at(100)), Pulse::NotDue);
        assert_eq!(watchdog.check(&beats, at(150)), Pulse::Alive);

        // Shard 1 stalls: no ping, however long it has been.
        beats[0].beat();
        assert_eq!(watchdog.check(&beats, at(300)), Pulse::Stalled(1));
        beats[0].beat();
        assert_eq!(watchdog.check(&beats, at(1000)), Pulse::Stalled(1));

        // It turns again: the pings resume at the next check.
        beats[0].beat();
        beats[1].beat();
        assert_eq!(watchdog.check(&beats, at(1100)), Pulse::NotDue);
        assert_eq!(watchdog.check(&beats, at(1150)), Pulse::Alive);
        assert_eq!(watchdog.until_due(at(1150)), Duration::from_millis(150));
    }

    #[test]
    fn a_shard_that_never_turned_is_stalled_and_not_started() {
        let beats = beats(3);
        let start = Instant::now();
        let mut watchdog = Watchdog::new(10_000_000, 3, start).unwrap();
        beats[0].beat();
        beats[2].beat();
        assert_eq!(first_not_started(&beats), Some(1));
        assert_eq!(
            watchdog.check(&beats, start + Duration::from_secs(5)),
            Pulse::Stalled(1)
        );
        beats[1].beat();
        assert_eq!(first_not_started(&beats), None);
    }

    #[test]
    fn an_interval_shorter_than_idle_turns_allow_is_refused() {
        let err = Watchdog::new(150_000, 1, Instant::now()).err().unwrap();
        assert!(
            err.contains("WatchdogSec=, 150 ms) is below 200 ms"),
            "{err}"
        );
        assert!(Watchdog::new(WATCHDOG_INTERVAL_MIN_US, 1, Instant::now()).is_ok());
    }
}
