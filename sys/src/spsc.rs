//! A bounded single-producer single-consumer channel of byte records: how
//! shards hand events, forwarded publishes and acknowledgements to each
//! other without locks. Records are written in place (length, kind, bytes)
//! and read in place by the consumer, which copies what it keeps.
//!
//! Wake-ups are the user's business, with one helper: `ring_doorbell` says
//! whether the producer must wake the consumer, so that a burst of pushes
//! costs one wake-up and a push is never left unseen by a sleeping consumer.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const RECORD_HEADER_BYTES: usize = 8; // u32 length, u8 kind, 3 bytes padding
const RECORD_ALIGN: usize = 8;
const WRAP_MARKER: u32 = u32::MAX;

#[repr(align(64))]
struct Padded<T>(T);

struct Shared {
    buf: Box<[UnsafeCell<u8>]>,
    mask: usize,
    /// Bytes consumed, ever; written by the consumer only.
    head: Padded<AtomicU64>,
    /// Bytes produced, ever; written by the producer only.
    tail: Padded<AtomicU64>,
    /// Set by the producer when it has rung (or will ring) the consumer's
    /// doorbell; cleared by the consumer before it drains.
    doorbell_rung: Padded<AtomicBool>,
}

// SAFETY: the producer writes only bytes in [tail, head + capacity) and the
// consumer reads only bytes in [head, tail); the atomics order the hand-over.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Sender {
    shared: Arc<Shared>,
}

pub struct Receiver {
    shared: Arc<Shared>,
}

/// A channel holding `capacity_bytes` (rounded up to a power of two) of records.
pub fn channel(capacity_bytes: usize) -> (Sender, Receiver) {
    let capacity = capacity_bytes.next_power_of_two().max(64);
    let shared = Arc::new(Shared {
        buf: (0..capacity).map(|_| UnsafeCell::new(0)).collect(),
        mask: capacity - 1,
        head: Padded(AtomicU64::new(0)),
        tail: Padded(AtomicU64::new(0)),
        doorbell_rung: Padded(AtomicBool::new(false)),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

fn padded(len: usize) -> usize {
    (RECORD_HEADER_BYTES + len).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

impl Shared {
    fn capacity(&self) -> usize {
        self.mask + 1
    }

    fn ptr(&self, pos: u64) -> *mut u8 {
        self.buf[pos as usize & self.mask].get()
    }
}

impl Sender {
    /// The largest record body this channel can ever take.
    pub fn record_bytes_max(&self) -> usize {
        self.shared.capacity() / 2 - RECORD_HEADER_BYTES
    }

    /// Bytes a record of `len` body bytes needs now, wrap included, or None
    /// if it cannot fit right now.
    fn needed(&self, len: usize) -> Option<(usize, bool)> {
        let shared = &self.shared;
        let size = padded(len);
        let tail = shared.tail.0.load(Ordering::Relaxed);
        let head = shared.head.0.load(Ordering::Acquire);
        let free = shared.capacity() - (tail - head) as usize;
        let to_end = shared.capacity() - (tail as usize & shared.mask);
        let wrap = to_end < size;
        let needed = if wrap { to_end + size } else { size };
        (len <= self.record_bytes_max() && needed <= free).then_some((needed, wrap))
    }

    /// Whether a record with `len` body bytes fits now.
    pub fn has_room(&self, len: usize) -> bool {
        self.needed(len).is_some()
    }

    /// Whether records with these body lengths all fit now, pushed one
    /// after another (each padded, and at most one wrap between them).
    pub fn has_room_for(&self, lens: &[usize]) -> bool {
        if lens.iter().any(|&len| len > self.record_bytes_max()) {
            return false;
        }
        let shared = &self.shared;
        let size: usize = lens.iter().map(|&len| padded(len)).sum();
        let tail = shared.tail.0.load(Ordering::Relaxed);
        let head = shared.head.0.load(Ordering::Acquire);
        let free = shared.capacity() - (tail - head) as usize;
        let to_end = shared.capacity() - (tail as usize & shared.mask);
        let needed = if to_end < size { to_end + size } else { size };
        needed <= free
    }

    /// Appends one record made of `parts`; false if it does not fit now.
    pub fn push(&self, kind: u8, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let Some((_, wrap)) = self.needed(len) else {
            return false;
        };
        let shared = &self.shared;
        let mut tail = shared.tail.0.load(Ordering::Relaxed);
        if wrap {
            let to_end = shared.capacity() - (tail as usize & shared.mask);
            // SAFETY: [tail, tail + to_end) is free (checked by needed) and
            // contiguous; the header fits since records are 8-byte aligned.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    WRAP_MARKER.to_ne_bytes().as_ptr(),
                    shared.ptr(tail),
                    4,
                )
            };
            tail += to_end as u64;
        }
        let header = {
            let mut h = [0u8; RECORD_HEADER_BYTES];
            h[..4].copy_from_slice(&(len as u32).to_ne_bytes());
            h[4] = kind;
            h
        };
        // SAFETY: [tail, tail + padded(len)) is free and contiguous (checked).
        unsafe {
            std::ptr::copy_nonoverlapping(header.as_ptr(), shared.ptr(tail), RECORD_HEADER_BYTES);
            let mut at = shared.ptr(tail).add(RECORD_HEADER_BYTES);
            for part in parts {
                std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
                at = at.add(part.len());
            }
        }
        shared
            .tail
            .0
            .store(tail + padded(len) as u64, Ordering::Release);
        true
    }

    /// After pushing: true if the caller must wake the consumer now. Only the
    /// first push after the consumer's `clear_doorbell` says true.
    pub fn ring_doorbell(&self) -> bool {
        !self.shared.doorbell_rung.0.swap(true, Ordering::AcqRel)
    }
}

impl Receiver {
    /// Called by the consumer before it drains: pushes after this ring again.
    pub fn clear_doorbell(&self) {
        self.shared.doorbell_rung.0.swap(false, Ordering::AcqRel);
    }

    /// The oldest record, in place, without consuming it.
    pub fn peek(&self) -> Option<(u8, &[u8])> {
        let shared = &self.shared;
        let mut head = shared.head.0.load(Ordering::Relaxed);
        loop {
            let tail = shared.tail.0.load(Ordering::Acquire);
            if head == tail {
                return None;
            }
            let mut header = [0u8; RECORD_HEADER_BYTES];
            // SAFETY: [head, tail) was published by the producer; a header
            // never straddles the end (records are aligned, wraps are marked).
            unsafe {
                std::ptr::copy_nonoverlapping(shared.ptr(head), header.as_mut_ptr(), 4);
            }
            let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]);
            if len == WRAP_MARKER {
                let to_end = shared.capacity() - (head as usize & shared.mask);
                head += to_end as u64;
                shared.head.0.store(head, Ordering::Release);
                continue;
            }
            // SAFETY: as above; the record body is contiguous after its header.
            unsafe {
                let kind = *shared.ptr(head + 4);
                let body = std::slice::from_raw_parts(
                    shared.ptr(head + RECORD_HEADER_BYTES as u64),
                    len as usize,
                );
                return Some((kind, body));
            }
        }
    }

    /// Consumes the record `peek` returned.
    pub fn pop(&self) {
        let shared = &self.shared;
        let head = shared.head.0.load(Ordering::Relaxed);
        debug_assert!(head < shared.tail.0.load(Ordering::Acquire));
        let mut len = [0u8; 4];
        // SAFETY: the record at head was published (peek saw it).
        unsafe { std::ptr::copy_nonoverlapping(shared.ptr(head), len.as_mut_ptr(), 4) };
        let len = u32::from_ne_bytes(len) as usize;
        shared
            .head
            .0
            .store(head + padded(len) as u64, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_out_in_order_across_wraps() {
        let (tx, rx) = channel(256);
        let mut expected: std::collections::VecDeque<(u8, Vec<u8>)> = Default::default();
        for (next, round) in (0..1000usize).enumerate() {
            let next = next as u32;
            let len = (round * 7) % 60;
            let body: Vec<u8> = (0..len).map(|i| (i as u32 + next) as u8).collect();
            while !tx.push(next as u8, &[&body[..len / 2], &body[len / 2..]]) {
                let (kind, got) = rx.peek().expect("full channel must have a record");
                let (want_kind, want) = expected.pop_front().unwrap();
                assert_eq!((kind, got), (want_kind, &want[..]));
                rx.pop();
            }
            expected.push_back((next as u8, body));
        }
        while let Some((kind, got)) = rx.peek() {
            let (want_kind, want) = expected.pop_front().unwrap();
            assert_eq!((kind, got), (want_kind, &want[..]));
            rx.pop();
        }
        assert!(expected.is_empty());
    }

    #[test]
    fn oversized_record_is_refused() {
        let (tx, _rx) = channel(128);
        assert!(!tx.has_room(100));
        assert!(!tx.push(1, &[&[0u8; 100]]));
        assert!(tx.push(1, &[&[0u8; 40]]));
    }

    #[test]
    fn room_for_several_records_is_a_promise() {
        // At every fill level and wrap position: whenever has_room_for
        // admits a pair of records, both pushes succeed.
        for start in 0..64usize {
            for fill in 0..32usize {
                for (a, b) in [(1, 1), (13, 40), (40, 13), (60, 3), (7, 56)] {
                    let (tx, rx) = channel(256);
                    // Move the ring's position, then fill it partly.
                    for _ in 0..start {
                        assert!(tx.push(0, &[&[0u8; 3]]));
                        rx.pop();
                    }
                    for _ in 0..fill {
                        if !tx.push(0, &[&[0u8; 5]]) {
                            break;
                        }
                    }
                    if tx.has_room_for(&[a, b]) {
                        assert!(tx.push(1, &[&vec![0u8; a]]), "start {start} fill {fill}");
                        assert!(tx.push(2, &[&vec![0u8; b]]), "start {start} fill {fill}");
                    }
                }
            }
        }
        let (tx, _rx) = channel(128);
        assert!(tx.has_room_for(&[20, 20]));
        assert!(!tx.has_room_for(&[20, 100]), "one record is oversized");
    }

    #[test]
    fn doorbell_rings_once_per_drain() {
        let (tx, rx) = channel(1024);
        assert!(tx.push(0, &[b"a"]));
        assert!(tx.ring_doorbell());
        assert!(tx.push(0, &[b"b"]));
        assert!(!tx.ring_doorbell());
        rx.clear_doorbell();
        assert!(tx.push(0, &[b"c"]));
        assert!(tx.ring_doorbell());
    }

    #[test]
    fn threads_hand_over_a_million_records() {
        let (tx, rx) = channel(4096);
        let producer = std::thread::spawn(move || {
            for i in 0u64..1_000_000 {
                let bytes = i.to_le_bytes();
                while !tx.push(1, &[&bytes[..(i % 8) as usize + 1]]) {
                    std::hint::spin_loop();
                }
            }
        });
        let mut i = 0u64;
        while i < 1_000_000 {
            if let Some((kind, body)) = rx.peek() {
                assert_eq!(kind, 1);
                assert_eq!(body, &i.to_le_bytes()[..(i % 8) as usize + 1]);
                rx.pop();
                i += 1;
            }
        }
        producer.join().unwrap();
    }
}
