//! Bytes in and out of a connection: receives (decrypted first under TLS),
//! the queue of frames each connection sends, gathered sends (zero-copy for
//! large frames) and their completions, and closing. It calls up into the
//! protocol only through session's events `on_frames`, `on_sent` and
//! `on_closing`.

use super::*;

/// Most bytes gathered into one send.
const SEND_BYTES_MAX: usize = 64 << 10;
/// Most frames gathered into one send (the kernel's UIO_MAXIOV is 1024; more
/// than this buys nothing for small frames).
const SEND_FRAMES_MAX: usize = 64;

/// Capacity a connection's partial-frame buffer may keep once emptied.
const RX_KEEP_BYTES: usize = 4096;

/// A block of iovecs and the msghdr pointing at them, for one gathering send.
/// Never moved once made (its vector never grows past the capacity reserved
/// at start-up), so the kernel may read it.
struct IovBlock {
    msg: libc::msghdr,
    iov: [libc::iovec; SEND_FRAMES_MAX],
}

impl IovBlock {
    fn new() -> IovBlock {
        IovBlock {
            msg: libc::msghdr {
                msg_name: std::ptr::null_mut(),
                msg_namelen: 0,
                msg_iov: std::ptr::null_mut(),
                msg_iovlen: 0,
                msg_control: std::ptr::null_mut(),
                msg_controllen: 0,
                msg_flags: 0,
            },
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; SEND_FRAMES_MAX],
        }
    }
}

/// What receives and sends need beyond each connection.
pub(super) struct Io {
    /// One block per connection sending at once, made the first time that
    /// many send together (so idle connections cost none): with fewer, a
    /// backlogged connection would send one frame per send and never catch
    /// up. Room for every slot is reserved at start-up (address space only
    /// until used).
    iov_blocks: Vec<IovBlock>,
    iov_free: Vec<u32>,
    /// Connections whose multishot receive ended for want of buffers.
    recv_rearm: Vec<u32>,
    /// Plaintext decrypted from one receive, before it is parsed.
    tls_plain: Vec<u8>,
}

impl Io {
    pub(super) fn new(slots: usize) -> Io {
        Io {
            iov_blocks: Vec::with_capacity(slots),
            iov_free: Vec::with_capacity(slots),
            recv_rearm: Vec::new(),
            tls_plain: Vec::new(),
        }
    }
}

/// Records how long after its sequencing an EVENT frame was sent (other
/// frames are not events and are skipped).
fn record_publish_to_send(recorder: &mut Recorder, wall_ns: u64, frame: &[u8]) {
    if let Some(published_ns) = event_publish_ts_ns(frame) {
        // The wall clock may step back: a late event is never negative.
        recorder.publish_to_send_us(wall_ns.saturating_sub(published_ns) / 1_000);
    }
}

impl Core {
    pub(super) fn arm_recv(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        debug_assert!(!conn.recv_armed);
        conn.recv_armed = true;
        let fd = conn.fd;
        let token = self.token(OpKind::Recv, index);
        self.outbox.push(Op::RecvMulti { fd }, token);
    }

    pub(super) fn on_recv(&mut self, index: u32, c: Completion, bytes: &[u8]) {
        let conn = &mut self.conns[index as usize];
        if !c.more() {
            conn.recv_armed = false;
        }
        let reading = matches!(conn.state, ConnState::Handshake | ConnState::Open);
        match c.outcome() {
            Outcome::Done(n) if n > 0 => {
                if reading {
                    conn.last_rx_ms = self.now_ms;
                    self.on_bytes(index, bytes);
                    let conn = &self.conns[index as usize];
                    let still_reading =
                        matches!(conn.state, ConnState::Handshake | ConnState::Open);
                    if still_reading && !conn.recv_armed {
                        self.arm_recv(index);
                    }
                }
            }
            Outcome::NoBuffers => {
                self.stats.recv_no_buffers += 1;
                if reading {
                    // Buffers come back at the end of this turn's handlers.
                    self.io.recv_rearm.push(index);
                }
            }
            Outcome::Cancelled => {}
            // The peer closed, or the connection failed.
            _ => {
                if reading {
                    self.abort(index);
                }
            }
        }
        self.free_if_done(index);
    }

    /// Bytes received: decrypted first on a TLS connection.
    fn on_bytes(&mut self, index: u32, bytes: &[u8]) {
        let Some(mut tls) = self.conns[index as usize].tls.take() else {
            self.on_plaintext(index, bytes);
            return;
        };
        let mut plain = std::mem::take(&mut self.io.tls_plain);
        plain.clear();
        let received = tls.receive(bytes, &mut plain);
        let wants_write = tls.has_output();
        self.conns[index as usize].tls = Some(tls);
        match received {
            Err(why) => {
                self.stats.tls_failures += 1;
                crate::debug!("shard {}: connection {index}: TLS: {why}", self.id);
                self.abort(index);
            }
            Ok(()) => {
                if !plain.is_empty() {
                    self.on_plaintext(index, &plain);
                }
                // Handshake records to answer with.
                if wants_write && self.conns[index as usize].state != ConnState::Closing {
                    self.mark_dirty(index);
                }
            }
        }
        self.io.tls_plain = plain;
    }

    /// Handles every whole frame in what arrived and keeps the partial rest.
    fn on_plaintext(&mut self, index: u32, bytes: &[u8]) {
        let mut pending = std::mem::take(&mut self.conns[index as usize].rx);
        if pending.is_empty() {
            // The common case: whole frames straight from the receive buffer.
            if let Some(used) = self.on_frames(index, bytes) {
                pending.extend_from_slice(&bytes[used..]);
            }
        } else {
            pending.extend_from_slice(bytes);
            match self.on_frames(index, &pending) {
                Some(used) => drop(pending.drain(..used)),
                None => pending.clear(),
            }
        }
        // A large frame once received must not pin its buffer for the life
        // of the connection.
        if pending.is_empty() && pending.capacity() > RX_KEEP_BYTES {
            pending = Vec::new();
        }
        self.conns[index as usize].rx = pending;
    }

    pub(super) fn mark_dirty(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(index);
        }
    }

    /// Encodes a control frame into the arena and queues it. Control frames
    /// bypass the queue bound (they are few and small); a connection the
    /// arena cannot serve at all is closed.
    pub(super) fn queue_control(&mut self, index: u32, frame: &Frame<'_>) -> bool {
        let len = frame.encoded_len();
        let Some(f) = self.alloc(len, Use::Control) else {
            // Even the reserve for answers is gone: nothing sensible can be
            // said to this client any more.
            crate::warn!(
                "shard {}: frame arena exhausted; closing connection {index}",
                self.id
            );
            self.stats.overloaded += 1;
            self.abort(index);
            return false;
        };
        frame.encode_to_slice(self.arena.bytes_mut(f));
        self.conns[index as usize].push(f, len);
        self.mark_dirty(index);
        true
    }

    /// Rearms the receives that ran out of buffers this turn (the buffers
    /// are back once its handlers are done).
    pub(super) fn rearm_receives(&mut self) {
        // Slots listed this turn may have been freed (and even reused) by a
        // later completion of the same batch: look before touching.
        for index in std::mem::take(&mut self.io.recv_rearm) {
            let rearm = self.conns.get(index as usize).is_some_and(|conn| {
                matches!(conn.state, ConnState::Handshake | ConnState::Open) && !conn.recv_armed
            });
            if rearm {
                self.arm_recv(index);
            }
        }
    }

    /// Starts one send on every connection that has frames and none in flight.
    pub(super) fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            let Some(conn) = self.conns.get_mut(index as usize) else {
                continue;
            };
            conn.dirty = false;
            if conn.state == ConnState::Closing || conn.send_in_flight {
                continue;
            }
            if !conn.has_output() {
                if conn.state == ConnState::Flushing {
                    self.close_now(index);
                }
                continue;
            }
            self.start_send(index);
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }

    /// A TLS connection's send: its queued frames encrypted (once the
    /// handshake is done) after whatever records wait.
    fn start_send_tls(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        let mut tls = conn.tls.take().expect("a TLS connection");
        if !tls.handshaking() && !tls.has_output() && !conn.queue_is_empty() {
            let arena = &self.arena;
            let mut bytes = 0;
            let frames = conn.next_send(
                arena,
                usize::MAX,
                SEND_BYTES_MAX,
                usize::MAX,
                |f, off, len| {
                    tls.write(&arena.bytes(f)[off..off + len]);
                    bytes += len;
                },
            );
            // Handed to TLS: the frames are done with (sent, as far as
            // the metrics tell).
            conn.start_send(frames, bytes);
            self.recorder.send_frames(frames);
            let (recorder, wall_ns) = (&mut self.recorder, self.wall_ns);
            conn.complete_send(bytes, &mut self.arena, |frame| {
                record_publish_to_send(recorder, wall_ns, frame)
            });
        }
        let out = tls.next_output();
        if !out.is_empty() {
            let (ptr, len) = (out.as_ptr(), out.len() as u32);
            let fd = conn.fd;
            conn.send_in_flight = true;
            let token = self.token(OpKind::Send, index);
            self.outbox.push(Op::Send { fd, ptr, len }, token);
        }
        self.conns[index as usize].tls = Some(tls);
    }

    fn start_send(&mut self, index: u32) {
        if self.conns[index as usize].tls.is_some() {
            self.start_send_tls(index);
            return;
        }
        let conn = &self.conns[index as usize];
        let (head, offset) = conn.head().expect("a queued frame");
        let head_len = self.arena.len(head);
        let fd = conn.fd;
        let token = self.token(OpKind::Send, index);
        let zero_copy = self.zerocopy_bytes_min > 0 && head_len >= self.zerocopy_bytes_min;
        if zero_copy {
            self.outbox.push(
                Op::SendZeroCopy {
                    fd,
                    ptr: self.arena.ptr(head, offset),
                    len: (head_len - offset) as u32,
                    buf_index: self.arena.buf_index(),
                },
                token,
            );
            self.stats.zero_copy_sends += 1;
            self.recorder.send_frames(1);
            let conn = &mut self.conns[index as usize];
            conn.start_send(1, head_len - offset);
            conn.send_is_zero_copy = true;
            return;
        }
        let split = if self.zerocopy_bytes_min > 0 {
            self.zerocopy_bytes_min
        } else {
            usize::MAX
        };
        if self.io.iov_free.is_empty() && self.io.iov_blocks.len() < self.connections_max {
            assert!(
                self.io.iov_blocks.len() < self.io.iov_blocks.capacity(),
                "iovec blocks must never move"
            );
            self.io.iov_free.push(self.io.iov_blocks.len() as u32);
            self.io.iov_blocks.push(IovBlock::new());
        }
        let block = self.io.iov_free.last().copied();
        let mut bytes = head_len - offset;
        let frames = match block {
            Some(block) => {
                let iov = &mut self.io.iov_blocks[block as usize].iov;
                let arena = &self.arena;
                let mut n = 0;
                bytes = 0;
                conn.next_send(
                    arena,
                    SEND_FRAMES_MAX,
                    SEND_BYTES_MAX,
                    split,
                    |f, off, len| {
                        iov[n] = libc::iovec {
                            iov_base: arena.ptr(f, off) as *mut libc::c_void,
                            iov_len: len,
                        };
                        n += 1;
                        bytes += len;
                    },
                )
            }
            None => 1,
        };
        if frames > 1 {
            let block = self.io.iov_free.pop().expect("checked above");
            let b = &mut self.io.iov_blocks[block as usize];
            b.msg.msg_iov = b.iov.as_mut_ptr();
            b.msg.msg_iovlen = frames;
            self.outbox.push(
                Op::SendVectored {
                    fd,
                    msg: &b.msg as *const libc::msghdr,
                },
                token,
            );
            self.conns[index as usize].iov_block = Some(block);
        } else {
            self.outbox.push(
                Op::Send {
                    fd,
                    ptr: self.arena.ptr(head, offset),
                    len: (head_len - offset) as u32,
                },
                token,
            );
        }
        self.recorder.send_frames(frames);
        let conn = &mut self.conns[index as usize];
        conn.start_send(frames, bytes);
        conn.send_is_zero_copy = false;
    }

    pub(super) fn on_send(&mut self, index: u32, c: Completion) {
        let conn = &mut self.conns[index as usize];
        if c.notification() {
            conn.zc_notified(&mut self.arena);
            self.free_if_done(index);
            return;
        }
        if conn.send_is_zero_copy && c.more() {
            conn.pin_head_for_notification(&mut self.arena);
        }
        if let Some(block) = conn.iov_block.take() {
            self.io.iov_free.push(block);
        }
        match c.outcome() {
            Outcome::Done(n) if n > 0 => {
                let sent = n as usize;
                self.stats.sends += 1;
                self.stats.send_bytes += sent as u64;
                let conn = &mut self.conns[index as usize];
                if let Some(tls) = &mut conn.tls {
                    // Ciphertext: its frames were booked when encrypted.
                    tls.sent(sent);
                    conn.send_in_flight = false;
                } else {
                    let (recorder, wall_ns) = (&mut self.recorder, self.wall_ns);
                    let short = conn.complete_send(sent, &mut self.arena, |frame| {
                        record_publish_to_send(recorder, wall_ns, frame)
                    });
                    if short {
                        self.stats.short_sends += 1;
                    }
                }
                self.on_sent(index);
                let conn = &self.conns[index as usize];
                let more = conn.has_output() || conn.state == ConnState::Flushing;
                if more && conn.state != ConnState::Closing {
                    self.mark_dirty(index);
                }
            }
            Outcome::Transient | Outcome::NoBuffers => {
                let conn = &mut self.conns[index as usize];
                conn.abandon_send();
                if conn.state != ConnState::Closing {
                    self.mark_dirty(index);
                }
            }
            _ => {
                // Reset, broken pipe, cancelled by our own close, or a zero
                // byte send: the connection is over.
                self.conns[index as usize].abandon_send();
                self.abort(index);
            }
        }
        self.free_if_done(index);
    }

    /// Stops everything and closes now: nothing more is sent.
    pub(super) fn abort(&mut self, index: u32) {
        let conn = &self.conns[index as usize];
        if conn.state == ConnState::Closing {
            return;
        }
        self.conns[index as usize].drop_unsent(&mut self.arena, |_| {});
        let conn = &self.conns[index as usize];
        if conn.recv_armed {
            let token = self.token(OpKind::Recv, index);
            self.outbox.push(
                Op::Cancel { target: token },
                Token::new(OpKind::Cancel, 0, index).encode(),
            );
        }
        if conn.send_in_flight {
            let token = self.token(OpKind::Send, index);
            self.outbox.push(
                Op::Cancel { target: token },
                Token::new(OpKind::Cancel, 0, index).encode(),
            );
        }
        self.close_now(index);
    }

    fn close_now(&mut self, index: u32) {
        self.on_closing(index);
        let token = self.token(OpKind::Close, index);
        let conn = &mut self.conns[index as usize];
        debug_assert_ne!(conn.state, ConnState::Closing);
        conn.state = ConnState::Closing;
        conn.close_in_flight = true;
        self.outbox.push(Op::Close { fd: conn.fd }, token);
    }

    pub(super) fn free_if_done(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        if conn.state != ConnState::Closing || !conn.quiescent() {
            return;
        }
        debug_assert!(self.subscriptions.none(index));
        conn.release_all(&mut self.arena);
        if let Some(block) = conn.iov_block.take() {
            self.io.iov_free.push(block);
        }
        let conn = self.conns.remove(index as usize);
        if let Some(slot) = conn.source {
            self.sources.release(slot);
        }
        debug_assert!(
            self.handshakes.count() as usize <= self.conns.len(),
            "more handshakes counted than connections"
        );
        self.generations[index as usize] = (self.generations[index as usize] + 1) & GENERATION_MASK;
        self.stats.closed += 1;
    }
}
