//! What an in-flight operation moves when it makes progress: accepted
//! connections, received bytes into provided buffers, sent bytes out of
//! engine memory (read through the op's own pointers), and the zero-copy
//! notification that checks the engine left that memory alone.

use std::slice;

use super::faults::{
    END_MULTISHOT_ONE_IN, NOTIF_LAG_MAX_STEPS, SHORT_SEND_ONE_IN, SPURIOUS_EAGAIN_ONE_IN,
    TEAR_RECV_ONE_IN,
};
use super::net::FileKind;
use super::ops::Pending;
use super::*;
use crate::ring::{Completion, F_MORE, F_NOTIF};

/// The engine memory a send reads.
#[derive(Clone, Copy)]
pub(super) enum Bytes {
    Contiguous { ptr: *const u8, len: usize },
    Vectored { msg: *const libc::msghdr },
}

impl Bytes {
    pub(super) fn len(self) -> usize {
        match self {
            Bytes::Contiguous { len, .. } => len,
            Bytes::Vectored { msg } => iovecs(msg).iter().map(|iov| iov.iov_len).sum(),
        }
    }

    /// Appends the first `len` bytes to `out`. The msghdr and iovecs are read
    /// afresh each time, since they too must stay valid until completion.
    fn gather(self, mut len: usize, out: &mut Vec<u8>) {
        match self {
            Bytes::Contiguous { ptr, len: total } => {
                assert!(len <= total);
                // SAFETY: the ring contract keeps an op's pointers valid until
                // its last completion; reading them is how the simulation
                // catches an engine that breaks it.
                out.extend_from_slice(unsafe { slice::from_raw_parts(ptr, len) });
            }
            Bytes::Vectored { msg } => {
                for iov in iovecs(msg) {
                    let n = len.min(iov.iov_len);
                    if n > 0 {
                        // SAFETY: as above.
                        let part = unsafe { slice::from_raw_parts(iov.iov_base as *const u8, n) };
                        out.extend_from_slice(part);
                        len -= n;
                    }
                }
                assert_eq!(len, 0);
            }
        }
    }
}

fn iovecs<'a>(msg: *const libc::msghdr) -> &'a [libc::iovec] {
    // SAFETY: the ring contract keeps the msghdr and its iovec array valid
    // until the send's last completion.
    unsafe {
        let msg = &*msg;
        if msg.msg_iovlen == 0 {
            &[]
        } else {
            slice::from_raw_parts(msg.msg_iov, msg.msg_iovlen)
        }
    }
}

impl World {
    pub(super) fn accept(
        &mut self,
        ring_fd: RawFd,
        id: u64,
        user_data: u64,
        listener: RawFd,
    ) -> Option<Pending> {
        loop {
            let file = self
                .files
                .get_mut(&listener)
                .expect("sim: referenced file exists");
            let FileKind::Listener { backlog } = &mut file.kind else {
                unreachable!("sim: checked at push");
            };
            let Some(client) = backlog.pop_front() else {
                return Some(Pending::Accept { listener });
            };
            let fd = self.alloc_fd();
            self.files
                .insert(fd, File::new(FileKind::Socket { client }));
            self.clients[client].accepted = true;
            // The kernel may end a multishot after any completion.
            let end = self.fault(END_MULTISHOT_ONE_IN);
            self.post(ring_fd, id, user_data, fd, if end { 0 } else { F_MORE });
            if end {
                self.stats.ended_accepts += 1;
                return None;
            }
        }
    }

    pub(super) fn recv(
        &mut self,
        ring_fd: RawFd,
        id: u64,
        user_data: u64,
        fd: RawFd,
        pool: &mut BufferPool,
    ) -> Option<Pending> {
        let client = self.socket_client(fd);
        loop {
            let c = &self.clients[client];
            if c.reset {
                self.post(ring_fd, id, user_data, -libc::ECONNRESET, 0);
                return None;
            }
            let available = c.inbound.len();
            if available == 0 {
                if c.fin {
                    self.post(ring_fd, id, user_data, 0, 0);
                    return None;
                }
                return Some(Pending::Recv { fd });
            }
            let Some(buffer_id) = pool.free.pop_front() else {
                self.stats.no_buffers += 1;
                self.post(ring_fd, id, user_data, -libc::ENOBUFS, 0);
                return None;
            };
            let mut len = available.min(pool.size);
            if len > 1 && self.fault(TEAR_RECV_ONE_IN) {
                len = self.rng.one_to(len - 1);
                self.stats.torn_recvs += 1;
            }
            pool.fill(buffer_id, self.clients[client].inbound.drain(..len));
            let end = self.fault(END_MULTISHOT_ONE_IN);
            let flags = Completion::with_buffer_flags(buffer_id, !end);
            self.post(ring_fd, id, user_data, len as i32, flags);
            if end {
                self.stats.ended_recvs += 1;
                return None;
            }
        }
    }

    pub(super) fn send(
        &mut self,
        ring_fd: RawFd,
        id: u64,
        user_data: u64,
        fd: RawFd,
        bytes: Bytes,
        zero_copy: bool,
    ) -> Option<Pending> {
        let pending = Pending::Send {
            fd,
            bytes,
            zero_copy,
        };
        let client = self.socket_client(fd);
        let c = &self.clients[client];
        if c.reset {
            return self.fail(ring_fd, id, user_data, &pending, libc::ECONNRESET);
        }
        if c.fin {
            return self.fail(ring_fd, id, user_data, &pending, libc::EPIPE);
        }
        let room = c.window.saturating_sub(c.outbound.len());
        if room == 0 {
            return Some(pending);
        }
        if self.fault(SPURIOUS_EAGAIN_ONE_IN) {
            self.stats.spurious_eagains += 1;
            return self.fail(ring_fd, id, user_data, &pending, libc::EAGAIN);
        }
        // A stream send completes with what fit; the engine resends the rest.
        let mut len = bytes.len().min(room);
        if len > 1 && self.fault(SHORT_SEND_ONE_IN) {
            len = self.rng.one_to(len - 1);
            self.stats.short_sends += 1;
        }
        let outbound = &mut self.clients[client].outbound;
        let start = outbound.len();
        bytes.gather(len, outbound);
        if !zero_copy {
            self.post(ring_fd, id, user_data, len as i32, 0);
            return None;
        }
        let sent = outbound[start..].to_vec();
        self.post(ring_fd, id, user_data, len as i32, F_MORE);
        Some(self.notify_later(bytes, sent))
    }

    pub(super) fn notify_later(&mut self, bytes: Bytes, sent: Vec<u8>) -> Pending {
        let steps = if self.config.faults {
            self.rng.below(NOTIF_LAG_MAX_STEPS) + 1
        } else {
            1
        };
        if steps > 1 {
            self.stats.lagged_notifs += 1;
        }
        Pending::Notify { steps, bytes, sent }
    }

    pub(super) fn notify(
        &mut self,
        ring_fd: RawFd,
        id: u64,
        user_data: u64,
        steps: u64,
        bytes: Bytes,
        sent: Vec<u8>,
    ) -> Option<Pending> {
        if steps > 1 {
            let steps = steps - 1;
            return Some(Pending::Notify { steps, bytes, sent });
        }
        let mut current = Vec::with_capacity(sent.len());
        bytes.gather(sent.len(), &mut current);
        assert!(
            current == sent,
            "sim: zero-copy send {user_data:#x}: the engine changed the buffer before its \
             notification (the kernel may still be reading it)"
        );
        self.post(ring_fd, id, user_data, 0, F_NOTIF);
        None
    }
}
