//! One client connection as its shard sees it: the partial frame it is
//! receiving, the bounded queue of shared frames it is being sent, and the
//! operations it has in flight. The shard decides what to do; this module
//! keeps the books of the send queue so they stay consistent.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use crate::admission::{Bucket, Rate};
use crate::arena::{Arena, FrameRef};
use crate::auth::Grant;
use crate::tls::TlsConn;

/// Frames of queue capacity a connection keeps once its queue empties.
const QUEUE_KEEP_FRAMES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Accepted; HELLO not yet received.
    Handshake,
    Open,
    /// Sending what is queued (a GOAWAY or ERROR last), then closing.
    Flushing,
    /// Close submitted or about to be; waiting for operations to end.
    Closing,
}

pub struct Conn {
    pub fd: RawFd,
    pub state: ConnState,
    pub accepted_ms: u64,
    pub last_rx_ms: u64,
    /// Bytes of a frame not yet complete (empty almost always).
    pub rx: Vec<u8>,
    queue: VecDeque<FrameRef>,
    queued_bytes: usize,
    /// Bytes of `queue[0]` already sent.
    head_sent: usize,
    /// Frames at the front of the queue, and bytes, covered by the send in
    /// flight.
    in_flight_frames: usize,
    in_flight_bytes: usize,
    pub send_in_flight: bool,
    pub send_is_zero_copy: bool,
    /// The send in flight uses this block of the shard's iovec pool.
    pub iov_block: Option<u32>,
    /// Zero-copy notifications outstanding, and the frames they pin.
    pub zc_pending: u32,
    pub zc_held: Vec<FrameRef>,
    pub recv_armed: bool,
    pub close_in_flight: bool,
    /// Waiting in the shard's list of connections to send to.
    pub dirty: bool,
    /// The player whose positions this connection sends: its token's
    /// subject, or without authentication HELLO's client_id (empty when the
    /// client gave none; no allocation then).
    pub player: Box<[u8]>,
    /// What its token allows; None when the appliance checks no tokens.
    pub grant: Option<Box<Grant>>,
    /// When its token expires, on the shard's clock (u64::MAX: never).
    pub token_deadline_ms: u64,
    /// Its slot in the per-source connection counts (None: not counted).
    pub source: Option<u32>,
    /// Its publish rate.
    pub publishes: Bucket,
    /// Its TLS session, when the appliance serves TLS.
    pub tls: Option<Box<TlsConn>>,
    /// A PATH_QUERY is being answered (one at a time per connection).
    pub path_query_in_flight: bool,
}

impl Conn {
    pub fn new(fd: RawFd, now_ms: u64) -> Conn {
        Conn {
            fd,
            state: ConnState::Handshake,
            accepted_ms: now_ms,
            last_rx_ms: now_ms,
            rx: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            head_sent: 0,
            in_flight_frames: 0,
            in_flight_bytes: 0,
            send_in_flight: false,
            send_is_zero_copy: false,
            iov_block: None,
            zc_pending: 0,
            zc_held: Vec::new(),
            recv_armed: false,
            close_in_flight: false,
            dirty: false,
            player: Box::default(),
            grant: None,
            token_deadline_ms: u64::MAX,
            source: None,
            publishes: Bucket::new(Rate { per_s: 0, burst: 0 }, now_ms),
            tls: None,
            path_query_in_flight: false,
        }
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Frames queued, or (TLS) records to send.
    pub fn has_output(&self) -> bool {
        !self.queue_is_empty() || self.tls.as_ref().is_some_and(|t| t.has_output())
    }

    pub fn queue_is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether a frame of `len` bytes fits under `bytes_max`. An empty queue
    /// takes any frame, so one frame never waits forever.
    pub fn has_room(&self, len: usize, bytes_max: usize) -> bool {
        self.queued_bytes == 0 || self.queued_bytes + len <= bytes_max
    }

    /// Queues a frame, taking over one reference the caller holds.
    pub fn push(&mut self, frame: FrameRef, len: usize) {
        self.queue.push_back(frame);
        self.queued_bytes += len;
    }

    /// What the next send carries: the unsent part of the head frame and as
    /// many whole frames after it as `max_frames` and `bytes_max` allow,
    /// stopping before any frame of `split_bytes` or more (those go alone).
    /// Calls `each(frame, offset, len)` and returns how many frames it took.
    pub fn next_send(
        &self,
        arena: &Arena,
        max_frames: usize,
        bytes_max: usize,
        split_bytes: usize,
        mut each: impl FnMut(FrameRef, usize, usize),
    ) -> usize {
        debug_assert!(!self.send_in_flight);
        let mut bytes = 0;
        let mut taken = 0;
        for (i, &frame) in self.queue.iter().enumerate().take(max_frames) {
            let offset = if i == 0 { self.head_sent } else { 0 };
            let len = arena.len(frame) - offset;
            let alone = arena.len(frame) >= split_bytes;
            if i > 0 && (alone || bytes + len > bytes_max) {
                break;
            }
            each(frame, offset, len);
            bytes += len;
            taken += 1;
            if alone {
                break;
            }
        }
        taken
    }

    pub fn head(&self) -> Option<(FrameRef, usize)> {
        self.queue.front().map(|&f| (f, self.head_sent))
    }

    pub fn start_send(&mut self, frames: usize, bytes: usize) {
        assert!(!self.send_in_flight && frames > 0 && frames <= self.queue.len());
        assert!(bytes > 0 && bytes <= self.queued_bytes);
        self.send_in_flight = true;
        self.in_flight_frames = frames;
        self.in_flight_bytes = bytes;
    }

    /// A zero-copy send of the head frame will be followed by a notification:
    /// the kernel may read the frame until then, whatever the queue does.
    pub fn pin_head_for_notification(&mut self, arena: &mut Arena) {
        let (head, _) = self
            .head()
            .expect("a zero-copy send covered a queued frame");
        arena.retain(head);
        self.zc_held.push(head);
        self.zc_pending += 1;
    }

    /// Books `sent` bytes as gone and releases fully sent frames, calling
    /// `each_sent` with each first. Returns whether the send was short (the
    /// rest goes out with the next one).
    pub fn complete_send(
        &mut self,
        mut sent: usize,
        arena: &mut Arena,
        mut each_sent: impl FnMut(&[u8]),
    ) -> bool {
        assert!(self.send_in_flight);
        assert!(
            sent <= self.in_flight_bytes,
            "the kernel sent more than it was given"
        );
        let short = sent < self.in_flight_bytes;
        self.send_in_flight = false;
        self.in_flight_frames = 0;
        self.in_flight_bytes = 0;
        self.queued_bytes -= sent;
        while sent > 0 {
            let frame = *self.queue.front().expect("sent more than was queued");
            let left = arena.len(frame) - self.head_sent;
            if sent < left {
                self.head_sent += sent;
                break;
            }
            sent -= left;
            self.head_sent = 0;
            self.queue.pop_front();
            each_sent(arena.bytes(frame));
            arena.release(frame);
        }
        // A burst once queued must not pin its memory for the life of the
        // connection (idle phones are most of them).
        if self.queue.is_empty() && self.queue.capacity() > QUEUE_KEEP_FRAMES {
            self.queue = VecDeque::new();
        }
        short
    }

    /// A send that failed transiently: nothing was sent, try again later.
    pub fn abandon_send(&mut self) {
        assert!(self.send_in_flight);
        self.send_in_flight = false;
        self.in_flight_frames = 0;
        self.in_flight_bytes = 0;
    }

    /// Drops queued frames that no send has started on, and calls `dropped`
    /// for each (so the caller can note what was not delivered).
    pub fn drop_unsent(&mut self, arena: &mut Arena, mut dropped: impl FnMut(&[u8])) {
        let keep = self.in_flight_frames.max(usize::from(self.head_sent > 0));
        while self.queue.len() > keep {
            let frame = self.queue.pop_back().expect("len > keep");
            dropped(arena.bytes(frame));
            self.queued_bytes -= arena.len(frame);
            arena.release(frame);
        }
    }

    /// Releases everything the connection holds (when it is freed).
    pub fn release_all(&mut self, arena: &mut Arena) {
        assert!(!self.send_in_flight && self.zc_pending == 0);
        for frame in self.queue.drain(..).chain(self.zc_held.drain(..)) {
            arena.release(frame);
        }
        self.queued_bytes = 0;
        self.head_sent = 0;
    }

    pub fn zc_notified(&mut self, arena: &mut Arena) {
        assert!(self.zc_pending > 0);
        self.zc_pending -= 1;
        if self.zc_pending == 0 {
            for frame in self.zc_held.drain(..) {
                arena.release(frame);
            }
        }
    }

    /// No operation of this connection is still in the kernel.
    pub fn quiescent(&self) -> bool {
        !self.recv_armed && !self.send_in_flight && self.zc_pending == 0 && !self.close_in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::Use;
    use cluecast_sys::{PageKind, Region};

    fn frame(arena: &mut Arena, len: usize, fill: u8) -> FrameRef {
        let f = arena.alloc(len, Use::Event).unwrap();
        arena.bytes_mut(f).fill(fill);
        f
    }

    #[test]
    fn short_sends_advance_through_frames() {
        let region = Region::map(1 << 20, PageKind::Transparent, None).unwrap();
        let mut arena = Arena::new(region.spans(1).pop().unwrap(), 0, 4096);
        let mut conn = Conn::new(3, 0);
        for fill in 0..3 {
            let f = frame(&mut arena, 100, fill);
            conn.push(f, 100);
        }
        let mut pieces = vec![];
        let taken = conn.next_send(&arena, 64, 1 << 16, usize::MAX, |_, off, len| {
            pieces.push((off, len))
        });
        assert_eq!((taken, pieces), (3, vec![(0, 100), (0, 100), (0, 100)]));
        conn.start_send(3, 300);
        let mut sent_fills = vec![];
        let short = conn.complete_send(150, &mut arena, |f| sent_fills.push(f[0]));
        assert!(short, "a short send");
        assert_eq!(sent_fills, vec![0], "only the whole frame counts as sent");
        assert_eq!(conn.queued_bytes(), 150);
        assert_eq!(arena.frames_live(), 2);
        assert_eq!(conn.head().unwrap().1, 50);
        let mut pieces = vec![];
        conn.next_send(&arena, 64, 1 << 16, usize::MAX, |_, off, len| {
            pieces.push((off, len))
        });
        assert_eq!(pieces, vec![(50, 50), (0, 100)]);
        conn.start_send(2, 150);
        let short = conn.complete_send(150, &mut arena, |f| sent_fills.push(f[0]));
        assert!(!short);
        assert_eq!(sent_fills, vec![0, 1, 2]);
        assert!(conn.queue_is_empty());
        assert_eq!(arena.frames_live(), 0);
    }

    #[test]
    fn large_frames_go_alone_and_zero_copy_pins_them() {
        let region = Region::map(1 << 20, PageKind::Transparent, None).unwrap();
        let mut arena = Arena::new(region.spans(1).pop().unwrap(), 0, 4096);
        let mut conn = Conn::new(3, 0);
        let small = frame(&mut arena, 10, 1);
        let big = frame(&mut arena, 3000, 2);
        conn.push(small, 10);
        conn.push(big, 3000);
        let taken = conn.next_send(&arena, 64, 1 << 16, 2000, |_, _, _| {});
        assert_eq!(
            taken, 1,
            "the large frame is not gathered with the small one"
        );
        conn.start_send(1, 10);
        conn.complete_send(10, &mut arena, |_| {});
        let taken = conn.next_send(&arena, 64, 1 << 16, 2000, |_, _, _| {});
        assert_eq!(taken, 1);
        conn.start_send(1, 3000);
        conn.pin_head_for_notification(&mut arena);
        conn.complete_send(3000, &mut arena, |_| {});
        assert_eq!(arena.frames_live(), 1, "pinned until the notification");
        conn.zc_notified(&mut arena);
        assert_eq!(arena.frames_live(), 0);
    }

    #[test]
    fn drop_unsent_keeps_the_frames_a_send_covers() {
        let region = Region::map(1 << 20, PageKind::Transparent, None).unwrap();
        let mut arena = Arena::new(region.spans(1).pop().unwrap(), 0, 4096);
        let mut conn = Conn::new(3, 0);
        for fill in 0..4 {
            let f = frame(&mut arena, 10, fill);
            conn.push(f, 10);
        }
        conn.start_send(2, 20);
        let mut dropped = vec![];
        conn.drop_unsent(&mut arena, |bytes| dropped.push(bytes[0]));
        assert_eq!(dropped, vec![3, 2]);
        assert_eq!(conn.queued_bytes(), 20);
        conn.complete_send(20, &mut arena, |_| {});
        assert_eq!(arena.frames_live(), 0);
    }
}
