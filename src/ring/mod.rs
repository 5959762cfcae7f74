//! The ring interface: the narrow boundary between a shard's loop and the
//! kernel. `uring::Uring` drives a real io_uring; `sim::SimRing` simulates one
//! from a seed so the whole engine can be tested deterministically in one
//! thread. Only the drivers build submission entries.
//!
//! Contract shared by both drivers (the kernel's): every pointer in an `Op`
//! stays valid until the operation's last completion arrives; a multishot
//! operation has ended when a completion comes without `F_MORE`; a zero-copy
//! send completes twice, first with the result (`F_MORE` set) and then with a
//! notification (`F_NOTIF`) once the kernel no longer reads the buffer.

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod uring;

/// Completion flags, numerically equal to the kernel's IORING_CQE_F_*.
pub const F_BUFFER: u32 = 1 << 0;
pub const F_MORE: u32 = 1 << 1;
pub const F_NOTIF: u32 = 1 << 3;
const BUFFER_ID_SHIFT: u32 = 16;

/// One completion, copied out of the completion queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// More completions will follow for the same operation.
    pub fn more(&self) -> bool {
        self.flags & F_MORE != 0
    }

    /// The zero-copy notification: the kernel is done with the buffer.
    pub fn notification(&self) -> bool {
        self.flags & F_NOTIF != 0
    }

    /// The provided buffer the kernel filled, for a buffer-select receive.
    pub fn buffer_id(&self) -> Option<u16> {
        (self.flags & F_BUFFER != 0).then_some((self.flags >> BUFFER_ID_SHIFT) as u16)
    }

    /// What the result means: the one place a completion's errno is named.
    pub fn outcome(&self) -> Outcome {
        match self.result {
            n if n >= 0 => Outcome::Done(n as u32),
            e if e == -libc::ECANCELED => Outcome::Cancelled,
            e if e == -libc::ENOBUFS => Outcome::NoBuffers,
            e if [libc::EAGAIN, libc::EINTR, libc::ENOMEM].contains(&-e) => Outcome::Transient,
            e => Outcome::Failed(io::Error::from_raw_os_error(-e)),
        }
    }

    pub fn with_buffer_flags(buffer_id: u16, more: bool) -> u32 {
        F_BUFFER | ((buffer_id as u32) << BUFFER_ID_SHIFT) | if more { F_MORE } else { 0 }
    }
}

/// A completion's result, named.
#[derive(Debug)]
pub enum Outcome {
    /// Bytes moved, or the new descriptor of an accept.
    Done(u32),
    /// Cancelled by the shard itself (a cancel, or closing its socket).
    Cancelled,
    /// No buffer: a buffer-select receive found none provided, or the
    /// kernel had no memory for a send's buffers. Try again later.
    NoBuffers,
    /// Interrupted or out of memory for the moment: try again.
    Transient,
    /// Anything else (reset, broken pipe, out of descriptors, ...).
    Failed(io::Error),
}

/// An operation to submit. Raw pointers must outlive the operation.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Multishot accept: one completion per accepted socket (result = fd).
    AcceptMulti {
        listener: RawFd,
    },
    /// Multishot receive into the ring's provided buffers.
    RecvMulti {
        fd: RawFd,
    },
    /// Plain send of one contiguous buffer.
    Send {
        fd: RawFd,
        ptr: *const u8,
        len: u32,
    },
    /// Gathering send of the buffers the msghdr's iovecs name.
    SendVectored {
        fd: RawFd,
        msg: *const libc::msghdr,
    },
    /// Zero-copy send from registered buffer `buf_index`.
    SendZeroCopy {
        fd: RawFd,
        ptr: *const u8,
        len: u32,
        buf_index: u16,
    },
    /// Cancels the operation submitted with `target` user data.
    Cancel {
        target: u64,
    },
    Close {
        fd: RawFd,
    },
    /// Posts a completion carrying `user_data` on another ring (MSG_RING):
    /// the doorbell that wakes a sleeping shard.
    Wake {
        ring_fd: RawFd,
        user_data: u64,
    },
}

pub trait Ring {
    /// Queues an operation; submitted by the next `submit_and_wait`.
    fn push(&mut self, op: Op, user_data: u64);
    /// Submits everything queued and waits until a completion is ready or
    /// `timeout_ms` passes.
    fn submit_and_wait(&mut self, timeout_ms: u32) -> io::Result<()>;
    /// Moves every ready completion into `out`, then frees the queue slots,
    /// so handlers never run while the completion queue is borrowed.
    fn reap(&mut self, out: &mut Vec<Completion>);
    /// Bytes the kernel put into provided buffer `buffer_id`.
    fn buffer(&self, buffer_id: u16, len: usize) -> &[u8];
    /// Gives a provided buffer back to the kernel.
    fn recycle(&mut self, buffer_id: u16);
    /// Monotonic milliseconds (virtual in the simulation).
    fn now_ms(&self) -> u64;
    /// Wall-clock nanoseconds since the Unix epoch (virtual in the simulation).
    fn wall_ns(&self) -> u64;
    /// The descriptor other rings target with `Op::Wake`.
    fn fd(&self) -> RawFd;
    /// Completions the kernel could not post because the queue was full.
    fn cq_overflows(&self) -> u64;
    /// The address an accepted socket's peer connects from; None if it is
    /// gone already.
    fn peer_ip(&self, fd: RawFd) -> Option<IpAddr>;
}

/// What an operation was for, kept in the top byte of its user data.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Close = 4,
    Cancel = 5,
    Wake = 6,
    /// Closing a socket that never became a connection.
    CloseOrphan = 7,
    /// GOAWAY(ServerFull) to a socket refused at accept; index = its fd.
    Reject = 8,
}

/// user_data = kind (8 bits) | generation (24 bits) | slot index (32 bits).
/// The generation keeps a late completion for a closed connection from
/// touching the slot's next owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub kind: OpKind,
    pub generation: u32,
    pub index: u32,
}

pub const GENERATION_MASK: u32 = (1 << 24) - 1;

impl Token {
    pub fn new(kind: OpKind, generation: u32, index: u32) -> Token {
        Token {
            kind,
            generation: generation & GENERATION_MASK,
            index,
        }
    }

    pub fn encode(self) -> u64 {
        (self.kind as u64) << 56 | (self.generation as u64) << 32 | self.index as u64
    }

    pub fn decode(user_data: u64) -> Option<Token> {
        let kind = match (user_data >> 56) as u8 {
            1 => OpKind::Accept,
            2 => OpKind::Recv,
            3 => OpKind::Send,
            4 => OpKind::Close,
            5 => OpKind::Cancel,
            6 => OpKind::Wake,
            7 => OpKind::CloseOrphan,
            8 => OpKind::Reject,
            _ => return None,
        };
        Some(Token {
            kind,
            generation: (user_data >> 32) as u32 & GENERATION_MASK,
            index: user_data as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_masks_generation() {
        let token = Token::new(OpKind::Send, 0x0123_4567, 0xdead_beef);
        let decoded = Token::decode(token.encode()).unwrap();
        assert_eq!(decoded, token);
        assert_eq!(decoded.generation, 0x23_4567);
        assert_eq!(Token::decode(0), None);
    }

    #[test]
    fn outcomes_name_the_errnos_handlers_act_on() {
        let outcome = |result| {
            Completion {
                user_data: 0,
                result,
                flags: 0,
            }
            .outcome()
        };
        assert!(matches!(outcome(7), Outcome::Done(7)));
        assert!(matches!(outcome(0), Outcome::Done(0)));
        assert!(matches!(outcome(-libc::ECANCELED), Outcome::Cancelled));
        assert!(matches!(outcome(-libc::ENOBUFS), Outcome::NoBuffers));
        for errno in [libc::EAGAIN, libc::EINTR, libc::ENOMEM] {
            assert!(matches!(outcome(-errno), Outcome::Transient));
        }
        let Outcome::Failed(e) = outcome(-libc::ECONNRESET) else {
            panic!("a reset is a failure");
        };
        assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET));
    }

    #[test]
    fn buffer_flags_round_trip() {
        let c = Completion {
            user_data: 0,
            result: 10,
            flags: Completion::with_buffer_flags(513, true),
        };
        assert_eq!(c.buffer_id(), Some(513));
        assert!(c.more());
        assert!(!c.notification());
    }
}
