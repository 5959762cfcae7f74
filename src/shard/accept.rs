//! The door: the listener's accepts, what is let in (per source, per
//! rate, TLS handshakes), the handshake table's evictions, and the
//! refusals, sent from frames encoded at start-up.

use super::*;

/// GOAWAY(ServerFull) frames encoded at start-up, each with its own
/// jittered retry hint; a refused client gets one at random.
const REJECT_FRAMES: usize = 64;

/// Of each admission rate's burst, the last 1/this is kept for sources that
/// hold no handshake (see `may_enter`).
const QUIET_RESERVE_PARTS: u32 = 8;

/// The listener, and the limits on what comes in through it.
pub(super) struct Door {
    /// None once a drain has closed it.
    listener: Option<RawFd>,
    armed: bool,
    /// An accept failed (out of descriptors or memory): try again then.
    retry_at_ms: Option<u64>,
    accept_rate: Rate,
    accepts: Bucket,
    tls_handshake_rate: Rate,
    tls_handshakes: Bucket,
    /// The GOAWAY(ServerFull) frames, back to back; never moved or freed,
    /// so the kernel may read them while a refusal is in flight.
    reject_frames: Box<[u8]>,
    reject_frame_bytes: usize,
}

impl Door {
    pub(super) fn new(
        listener: RawFd,
        accept_rate: Rate,
        tls_handshake_rate: Rate,
        now_ms: u64,
    ) -> Door {
        Door {
            listener: Some(listener),
            armed: false,
            retry_at_ms: None,
            accept_rate,
            accepts: Bucket::new(accept_rate, now_ms),
            tls_handshake_rate,
            tls_handshakes: Bucket::new(tls_handshake_rate, now_ms),
            reject_frames: Box::default(),
            reject_frame_bytes: 0,
        }
    }
}

impl Core {
    pub(super) fn arm_accept(&mut self) {
        if let Some(listener) = self.door.listener {
            self.outbox.push(
                Op::AcceptMulti { listener },
                Token::new(OpKind::Accept, 0, 0).encode(),
            );
            self.door.armed = true;
        }
    }

    /// Arms the accept again once the pause after a failed one is over.
    pub(super) fn retry_accept(&mut self) {
        if self.door.retry_at_ms.is_some_and(|at| self.now_ms >= at) {
            self.door.retry_at_ms = None;
            if !self.door.armed {
                self.arm_accept();
            }
        }
    }

    /// Stops accepting for good (a drain): cancels the accept and closes
    /// the listener.
    pub(super) fn close_door(&mut self) {
        let Some(listener) = self.door.listener.take() else {
            return;
        };
        if self.door.armed {
            self.outbox.push(
                Op::Cancel {
                    target: Token::new(OpKind::Accept, 0, 0).encode(),
                },
                Token::new(OpKind::Cancel, 0, 0).encode(),
            );
        }
        self.close_orphan(listener);
    }

    pub(super) fn on_accept(&mut self, c: Completion, peer: Option<IpAddr>) {
        if !c.more() {
            self.door.armed = false;
        }
        match c.outcome() {
            Outcome::Done(fd) => {
                let fd = fd as RawFd;
                let source = peer
                    .filter(|ip| !is_this_host(*ip))
                    .map(|ip| self.sources.slot(ip));
                if self.door.listener.is_none() {
                    self.close_orphan(fd);
                } else if self.may_enter(source) {
                    // A socket already gone (no peer) is admitted uncounted;
                    // its first receive ends it.
                    self.admit(fd, source);
                } else {
                    self.reject(fd);
                }
            }
            Outcome::Cancelled => {}
            _ => {
                crate::warn!(
                    "shard {}: accept failed: {}",
                    self.id,
                    io::Error::from_raw_os_error(-c.result)
                );
                // Out of descriptors or memory: give the system a moment.
                self.door.retry_at_ms = Some(self.now_ms + 100);
            }
        }
        if !self.door.armed && self.door.retry_at_ms.is_none() {
            self.arm_accept();
        }
    }

    /// Whether a connection from `source` may come in (counted against its
    /// source if so); a refusal is counted by its reason. A source holding
    /// no handshake here is a newcomer: the last `1 / QUIET_RESERVE_PARTS`
    /// of each rate's burst is kept for newcomers, so sources holding
    /// handshakes open cannot use it all up.
    fn may_enter(&mut self, source: Option<u32>) -> bool {
        let quiet = self.handshakes.is_quiet(source.unwrap_or(NO_SOURCE));
        let reserve = |rate: Rate| {
            if quiet {
                0
            } else {
                rate.burst / QUIET_RESERVE_PARTS
            }
        };
        if self.conns.len() >= self.connections_max {
            self.stats.rejected_full += 1;
            return false;
        }
        if source.is_some_and(|slot| !self.sources.take(slot)) {
            self.stats.refused_source += 1;
            return false;
        }
        let door = &mut self.door;
        let (now_ms, accept_rate, tls_rate) =
            (self.now_ms, door.accept_rate, door.tls_handshake_rate);
        let refused = if !door
            .accepts
            .take_leaving(accept_rate, now_ms, reserve(accept_rate))
        {
            Some(&mut self.stats.refused_rate)
        } else if self.tls.is_some()
            && !door
                .tls_handshakes
                .take_leaving(tls_rate, now_ms, reserve(tls_rate))
        {
            Some(&mut self.stats.refused_tls_rate)
        } else {
            None
        };
        match refused {
            None => true,
            Some(count) => {
                *count += 1;
                if let Some(slot) = source {
                    self.sources.release(slot);
                }
                false
            }
        }
    }

    /// Makes room in a full handshake table by cutting its likeliest
    /// attacker (see `Handshakes::victim`) with GOAWAY ServerFull; a TLS
    /// client still in its TLS handshake cannot be told anything and is
    /// closed.
    fn evict_handshake(&mut self) {
        let Some(index) = self.handshakes.victim() else {
            return;
        };
        self.stats.handshakes_evicted += 1;
        self.handshakes.evicted();
        let tls_unfinished = self.conns[index as usize]
            .tls
            .as_ref()
            .is_some_and(|tls| tls.handshaking());
        if tls_unfinished {
            self.abort(index);
        } else {
            let retry_after_ms = self.jittered_retry();
            self.goaway_resume(index, GoAwayReason::ServerFull, retry_after_ms);
        }
        debug_assert!(!self.handshakes.contains(index));
    }

    pub(super) fn close_orphan(&mut self, fd: RawFd) {
        self.outbox.push(
            Op::Close { fd },
            Token::new(OpKind::CloseOrphan, 0, 0).encode(),
        );
    }

    fn insert(&mut self, fd: RawFd) -> u32 {
        let index = self.conns.insert(Conn::new(fd, self.now_ms)) as u32;
        assert!(
            (index as usize) < self.generations.len(),
            "slab outgrew its capacity"
        );
        index
    }

    fn admit(&mut self, fd: RawFd, source: Option<u32>) {
        if self.handshakes.is_full() {
            self.evict_handshake();
        }
        let index = self.insert(fd);
        let conn = &mut self.conns[index as usize];
        conn.source = source;
        conn.publishes = Bucket::new(self.publish_rate, self.now_ms);
        conn.tls = self
            .tls
            .as_ref()
            .map(|config| Box::new(TlsConn::new(config)));
        self.handshakes
            .enter(index, source.unwrap_or(NO_SOURCE), self.now_ms);
        self.stats.accepted += 1;
        self.arm_recv(index);
    }

    /// Past a limit: a GOAWAY with a jittered retry hint, so a reconnect
    /// storm spreads itself out, then close. No slot, no state: the token
    /// carries the socket, which frame and how much of it is sent.
    fn reject(&mut self, fd: RawFd) {
        if self.tls.is_some() {
            // A refusal in the clear means nothing to a TLS client, and a
            // handshake for it would spend what the limit protects: close.
            self.close_orphan(fd);
            return;
        }
        let which = (self.random() % REJECT_FRAMES as u64) as u32;
        self.send_reject(fd, which, 0);
    }

    fn send_reject(&mut self, fd: RawFd, which: u32, sent: u32) {
        let at = which as usize * self.door.reject_frame_bytes + sent as usize;
        let end = (which as usize + 1) * self.door.reject_frame_bytes;
        self.outbox.push(
            Op::Send {
                fd,
                ptr: self.door.reject_frames[at..end].as_ptr(),
                len: (end - at) as u32,
            },
            Token::new(OpKind::Reject, sent << 8 | which, fd as u32).encode(),
        );
    }

    /// A refusal's send completed: finish a short one, else close.
    pub(super) fn on_reject_sent(&mut self, token: Token, c: Completion) {
        let fd = token.index as RawFd;
        let (which, sent) = (token.generation & 0xff, token.generation >> 8);
        let sent = sent + c.result.max(0) as u32;
        let unfinished = c.result > 0 && (sent as usize) < self.door.reject_frame_bytes;
        let transient = matches!(c.outcome(), Outcome::Transient | Outcome::NoBuffers);
        if unfinished || transient {
            self.send_reject(fd, which, sent);
        } else {
            self.close_orphan(fd);
        }
    }

    pub(super) fn encode_reject_frames(&mut self) {
        // The token holds which frame (8 bits) and how much of it was sent.
        const { assert!(REJECT_FRAMES <= 256) };
        let mut bytes = Vec::new();
        for _ in 0..REJECT_FRAMES {
            let frame = Frame::GoAway(GoAway {
                reason: GoAwayReason::ServerFull,
                retry_after_ms: self.jittered_retry(),
                reconnect: b"",
                resume: vec![],
            });
            self.door.reject_frame_bytes = frame.encoded_len();
            frame.encode(&mut bytes);
        }
        self.door.reject_frames = bytes.into_boxed_slice();
    }

    pub(super) fn jittered_retry(&mut self) -> u32 {
        let base = self.retry_after_ms as u64;
        (base + self.random() % (base + 1)) as u32
    }
}
