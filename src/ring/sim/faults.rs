//! The randomness: how often each fault strikes, and the one seeded PRNG
//! every choice in the world comes from (so a seed replays a run).

use super::World;

// Fault rates, as "one in N" chances at each opportunity. Tearing is common
// because real TCP tears frames at segment boundaries all the time.
/// A received chunk is cut short at a random length.
pub(super) const TEAR_RECV_ONE_IN: u64 = 2;
/// A multishot accept or receive ends after a successful completion.
pub(super) const END_MULTISHOT_ONE_IN: u64 = 32;
/// A send takes only a random prefix of what fits.
pub(super) const SHORT_SEND_ONE_IN: u64 = 4;
/// A send that could make progress fails with -EAGAIN instead.
pub(super) const SPURIOUS_EAGAIN_ONE_IN: u64 = 64;
/// A zero-copy notification lags its result by 1..=this many steps.
pub(super) const NOTIF_LAG_MAX_STEPS: u64 = 4;

/// SplitMix64: tiny, and good enough to drive fault choices (and the test
/// drivers' own choices).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n, by multiply-shift (the bias is negligible here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in 1..=n.
    pub(super) fn one_to(&mut self, n: usize) -> usize {
        1 + self.below(n as u64) as usize
    }

    pub(super) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

impl World {
    pub(super) fn fault(&mut self, one_in: u64) -> bool {
        self.config.faults && self.rng.below(one_in) == 0
    }
}
