//! How steady the host itself is: a busy loop pinned to a CPU notes every
//! gap between two consecutive clock reads. On a shared virtual machine
//! the hypervisor, interrupts and other tenants take a CPU away for
//! milliseconds at a time; no latency measured on that CPU can have a
//! smaller tail, so the report shows these stalls next to the latencies.

use std::thread;
use std::time::{Duration, Instant};

/// Gaps shorter than this are ordinary (cache misses, clock reads).
const GAP_MIN: Duration = Duration::from_micros(100);

/// What a busy loop on one CPU saw.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stalls {
    /// Gaps of 1 ms or more.
    pub over_1ms: u64,
    /// The longest gap, ms.
    pub max_ms: f64,
}

impl Stalls {
    /// Adds one gap between clock reads.
    fn gap(&mut self, gap: Duration) {
        if gap >= Duration::from_millis(1) {
            self.over_1ms += 1;
        }
        self.max_ms = self.max_ms.max(gap.as_secs_f64() * 1e3);
    }
}

/// Spins for `length` on each of `cpus` at once (one pinned thread each)
/// and returns the stalls seen on each; None for a CPU that could not be
/// pinned.
pub fn probe(cpus: &[usize], length: Duration) -> Vec<Option<Stalls>> {
    let threads: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            thread::spawn(move || {
                cluecast_sys::pin_current_thread(cpu).ok()?;
                let start = Instant::now();
                let mut stalls = Stalls::default();
                let mut last = start;
                // Bounded by the clock: ends `length` after it started.
                while last.duration_since(start) < length {
                    let now = Instant::now();
                    let gap = now.duration_since(last);
                    if gap >= GAP_MIN {
                        stalls.gap(gap);
                    }
                    last = now;
                }
                Some(stalls)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().ok().flatten())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_counted_and_the_longest_kept() {
        let mut s = Stalls::default();
        s.gap(Duration::from_micros(300));
        s.gap(Duration::from_micros(2500));
        s.gap(Duration::from_millis(1));
        assert_eq!(s.over_1ms, 2);
        assert_eq!(s.max_ms, 2.5);
    }

    #[test]
    fn probe_ends_on_time() {
        let t = Instant::now();
        let r = probe(&[0], Duration::from_millis(20));
        assert_eq!(r.len(), 1);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
