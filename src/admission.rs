//! What is let in before any work is done for it: connections per source
//! address (counted across every shard), and rates kept with token buckets
//! (accepts per shard, publishes per connection).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether a peer is this host's own client (a local proxy, a health
/// check, a load test): 127.0.0.1 and ::1 are, and are not counted per
/// source. Other loopback addresses count as sources of their own, so an
/// attack from many addresses can be rehearsed on one host.
pub fn is_this_host(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::LOCALHOST,
    }
}

/// Connections per source address, counted in a fixed table shared by all
/// shards. A source is an IPv4 address or an IPv6 /64 (one subscriber's
/// whole prefix); sources hashing to the same slot share a count, so the
/// table is far larger than the sources expected at once.
pub struct SourceCounts {
    slots: Box<[AtomicU32]>,
    max: u32,
}

impl SourceCounts {
    /// `slots` counters (a power of two) allowing `max` connections each.
    pub fn new(slots: usize, max: u32) -> SourceCounts {
        assert!(slots.is_power_of_two());
        SourceCounts {
            slots: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            max,
        }
    }

    /// The slot that counts `ip`'s connections.
    pub fn slot(&self, ip: IpAddr) -> u32 {
        let key: u64 = match ip {
            IpAddr::V4(v4) => u32::from(v4) as u64,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u32::from(v4) as u64,
                None => (u128::from(v6) >> 64) as u64 ^ (1 << 63),
            },
        };
        // Fibonacci hashing: the high bits of the product spread well.
        let bits = self.slots.len().trailing_zeros();
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits.max(1))) as u32
            & (self.slots.len() as u32 - 1)
    }

    /// How many counters there are (slots are below it).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Counts one more connection in `slot`; false (nothing counted) when
    /// the source is at its limit.
    pub fn take(&self, slot: u32) -> bool {
        self.slots[slot as usize]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release(&self, slot: u32) {
        let before = self.slots[slot as usize].fetch_sub(1, Ordering::Relaxed);
        assert!(
            before > 0,
            "a source released more connections than it took"
        );
    }

    /// Connections counted in all: 0 once every connection is gone (a leak
    /// check for tests).
    pub fn total(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed) as u64)
            .sum()
    }
}

/// A token bucket: `per_s` tokens a second, holding at most `burst`.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    /// Thousandths of a token, so slow rates refill smoothly.
    milli_tokens: u64,
    refilled_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// 0: unlimited.
    pub per_s: u32,
    pub burst: u32,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: Rate, now_ms: u64) -> Bucket {
        Bucket {
            milli_tokens: rate.burst as u64 * 1000,
            refilled_ms: now_ms,
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn take(&mut self, rate: Rate, now_ms: u64) -> bool {
        self.take_leaving(rate, now_ms, 0)
    }

    /// Takes one token if `reserve` more would be left after it: the
    /// reserve is for takers that pass 0.
    pub fn take_leaving(&mut self, rate: Rate, now_ms: u64, reserve: u32) -> bool {
        if rate.per_s == 0 {
            return true;
        }
        let elapsed_ms = now_ms.saturating_sub(self.refilled_ms);
        self.refilled_ms = now_ms;
        self.milli_tokens =
            (self.milli_tokens + elapsed_ms * rate.per_s as u64).min(rate.burst as u64 * 1000);
        if self.milli_tokens < (1 + reserve as u64) * 1000 {
            return false;
        }
        self.milli_tokens -= 1000;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn a_source_is_held_to_its_limit_and_gets_its_room_back() {
        let counts = SourceCounts::new(1024, 2);
        let a = counts.slot(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
        assert!(counts.take(a) && counts.take(a));
        assert!(!counts.take(a), "a third is refused");
        counts.release(a);
        assert!(counts.take(a));
        assert_eq!(counts.total(), 2);
        // One IPv6 /64 is one source; the v4-mapped form is the v4 address.
        let host = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
        assert_eq!(counts.slot(host(1)), counts.slot(host(2)));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert_eq!(counts.slot(mapped), a);
        // Different sources mostly land apart.
        let slots: std::collections::HashSet<u32> = (0..200u32)
            .map(|i| counts.slot(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))))
            .collect();
        assert!(slots.len() > 180, "{} distinct slots of 200", slots.len());
    }

    #[test]
    fn only_the_hosts_own_loopback_address_goes_uncounted() {
        let this_host = ["127.0.0.1", "::1", "::ffff:127.0.0.1"];
        let sources = ["127.0.0.2", "127.3.0.9", "192.0.2.1", "2001:db8::1"];
        for ip in this_host {
            assert!(is_this_host(ip.parse().unwrap()), "{ip}");
        }
        for ip in sources {
            assert!(!is_this_host(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rate = Rate {
            per_s: 10,
            burst: 5,
        };
        let mut bucket = Bucket::new(rate, 1_000);
        let taken = (0..20).filter(|_| bucket.take(rate, 1_000)).count();
        assert_eq!(taken, 5, "the burst");
        assert!(!bucket.take(rate, 1_050), "half a token after 50 ms");
        assert!(bucket.take(rate, 1_100), "one token after 100 ms");
        // A long pause refills up to the burst only.
        let taken = (0..20).filter(|_| bucket.take(rate, 60_000)).count();
        assert_eq!(taken, 5);
        // A reserve: takers that must leave 2 tokens stop at 2; others
        // take those.
        let mut bucket = Bucket::new(rate, 0);
        let reserved = (0..20).filter(|_| bucket.take_leaving(rate, 0, 2)).count();
        assert_eq!(reserved, 3);
        assert_eq!((0..20).filter(|_| bucket.take(rate, 0)).count(), 2);
        let unlimited = Rate { per_s: 0, burst: 0 };
        assert!((0..1000).all(|_| bucket.take(unlimited, 60_000)));
    }
}
