//! An operation's life on a ring: checked at push, queued until submit,
//! in flight (holding its file) while it makes progress, and retired with
//! its last completion; then the ready completions, reaped in the order a
//! kernel may post them.

use std::collections::VecDeque;

use super::net::FileKind;
use super::transfer::Bytes;
use super::*;
use crate::ring::{Completion, Op, F_MORE};

#[derive(Default)]
pub(super) struct RingState {
    /// Pushed, not yet submitted, in push order.
    pub(super) queued: Vec<Queued>,
    /// By operation id. A user_data is unique among the operations still
    /// cancellable; a zero-copy send that only owes its notification may
    /// share it with the connection's next send (the kernel tells the two
    /// apart by F_NOTIF, and so must the engine).
    pub(super) in_flight: BTreeMap<u64, InFlight>,
    /// Completions with the id of the operation that produced them.
    pub(super) ready: Vec<(u64, Completion)>,
}

pub(super) struct Queued {
    pub(super) id: u64,
    pub(super) user_data: u64,
    pub(super) op: Op,
}

pub(super) struct InFlight {
    id: u64,
    user_data: u64,
    pub(super) pending: Pending,
}

impl InFlight {
    /// Still a request the kernel would find by user_data (cancel, reuse).
    pub(super) fn live(&self, user_data: u64) -> bool {
        self.user_data == user_data && !matches!(self.pending, Pending::Notify { .. })
    }
}

pub(super) enum Pending {
    Accept {
        listener: RawFd,
    },
    Recv {
        fd: RawFd,
    },
    Send {
        fd: RawFd,
        bytes: Bytes,
        zero_copy: bool,
    },
    /// A zero-copy send whose result is out. It keeps what it sent to check
    /// that the engine leaves the buffer alone until the notification.
    Notify {
        steps: u64,
        bytes: Bytes,
        sent: Vec<u8>,
    },
}

impl Pending {
    /// The file this operation holds a reference on.
    pub(super) fn file(&self) -> Option<RawFd> {
        match *self {
            Pending::Accept { listener } => Some(listener),
            Pending::Recv { fd } | Pending::Send { fd, .. } => Some(fd),
            Pending::Notify { .. } => None,
        }
    }
}

impl World {
    pub(super) fn ring(&mut self, ring_fd: RawFd) -> &mut RingState {
        self.rings
            .get_mut(&ring_fd)
            .expect("sim: ring is registered")
    }

    pub(super) fn post(
        &mut self,
        ring_fd: RawFd,
        id: u64,
        user_data: u64,
        result: i32,
        flags: u32,
    ) {
        let completion = Completion {
            user_data,
            result,
            flags,
        };
        self.ring(ring_fd).ready.push((id, completion));
    }

    /// Panics on contract violations visible at push time.
    pub(super) fn check(&self, op: &Op) {
        let expect = |fd: RawFd, listener: bool| {
            let kind = self.files.get(&fd).map(|f| &f.kind);
            let ok = match kind {
                Some(FileKind::Listener { .. }) => listener,
                Some(FileKind::Socket { .. }) => !listener,
                None => false,
            };
            let what = if listener { "listener" } else { "socket" };
            assert!(ok, "sim: {op:?} on fd {fd}, never opened as a {what}");
        };
        match *op {
            Op::AcceptMulti { listener } => expect(listener, true),
            Op::RecvMulti { fd } => expect(fd, false),
            Op::Send { fd, len, .. } | Op::SendZeroCopy { fd, len, .. } => {
                expect(fd, false);
                assert!(len > 0, "sim: zero-length {op:?}");
            }
            Op::SendVectored { fd, msg } => {
                expect(fd, false);
                assert!(Bytes::Vectored { msg }.len() > 0, "sim: zero-length {op:?}");
            }
            Op::Close { fd } => assert!(
                self.files.contains_key(&fd),
                "sim: {op:?} on fd {fd}, never opened as a socket or listener"
            ),
            Op::Cancel { .. } | Op::Wake { .. } => {}
        }
    }

    /// Submits a ring's queued operations in push order, as the kernel
    /// consumes its submission queue: cancel, close and wake take effect now;
    /// the rest resolve their descriptor now and go in flight.
    pub(super) fn submit(&mut self, ring_fd: RawFd) {
        for Queued { id, user_data, op } in std::mem::take(&mut self.ring(ring_fd).queued) {
            match op {
                Op::Cancel { target } => {
                    let result = if self.cancel(ring_fd, target) {
                        0
                    } else {
                        -libc::ENOENT
                    };
                    self.post(ring_fd, id, user_data, result, 0);
                }
                Op::Close { fd } => {
                    let file = self.files.get_mut(&fd).expect("sim: checked at push");
                    // In-flight operations keep their references; the file
                    // lives until the last one ends.
                    let result = if file.open {
                        file.open = false;
                        if file.released() {
                            self.release(fd);
                        }
                        0
                    } else {
                        -libc::EBADF
                    };
                    self.post(ring_fd, id, user_data, result, 0);
                }
                Op::Wake {
                    ring_fd: target,
                    user_data: payload,
                } => {
                    // Success is silent for the sender (CQE_SKIP_SUCCESS).
                    if self.rings.contains_key(&target) {
                        self.post(target, id, payload, 0, 0);
                    } else {
                        self.post(ring_fd, id, user_data, -libc::EBADF, 0);
                    }
                }
                _ => self.start(ring_fd, id, user_data, op),
            }
        }
    }

    fn start(&mut self, ring_fd: RawFd, id: u64, user_data: u64, op: Op) {
        let send = |fd, bytes, zero_copy| Pending::Send {
            fd,
            bytes,
            zero_copy,
        };
        let pending = match op {
            Op::AcceptMulti { listener } => Pending::Accept { listener },
            Op::RecvMulti { fd } => Pending::Recv { fd },
            Op::Send { fd, ptr, len } => {
                let len = len as usize;
                send(fd, Bytes::Contiguous { ptr, len }, false)
            }
            Op::SendVectored { fd, msg } => send(fd, Bytes::Vectored { msg }, false),
            Op::SendZeroCopy { fd, ptr, len, .. } => {
                let len = len as usize;
                send(fd, Bytes::Contiguous { ptr, len }, true)
            }
            Op::Cancel { .. } | Op::Close { .. } | Op::Wake { .. } => {
                unreachable!("sim: completed at submission")
            }
        };
        let fd = pending.file().expect("sim: a new operation names a file");
        let file = self.files.get_mut(&fd).expect("sim: checked at push");
        if file.open {
            file.refs += 1;
            let op = InFlight {
                id,
                user_data,
                pending,
            };
            self.ring(ring_fd).in_flight.insert(id, op);
        } else {
            let next = self.fail(ring_fd, id, user_data, &pending, libc::EBADF);
            self.settle(ring_fd, None, id, user_data, next);
        }
    }

    /// Cancels `target` if it is in flight and still cancellable.
    fn cancel(&mut self, ring_fd: RawFd, target: u64) -> bool {
        // Once a zero-copy send's result is out, the kernel has retired the
        // request: its notification is still owed but cannot be cancelled.
        let ring = self.ring(ring_fd);
        let Some(id) = ring
            .in_flight
            .values()
            .find(|f| f.live(target))
            .map(|f| f.id)
        else {
            return false;
        };
        let InFlight { pending, .. } = ring.in_flight.remove(&id).expect("found above");
        let next = self.fail(ring_fd, id, target, &pending, libc::ECANCELED);
        self.settle(ring_fd, pending.file(), id, target, next);
        true
    }

    /// Posts an operation's failure. Like the kernel, a zero-copy send still
    /// owes its notification then: its result carries F_MORE.
    pub(super) fn fail(
        &mut self,
        ring_fd: RawFd,
        id: u64,
        user_data: u64,
        pending: &Pending,
        errno: i32,
    ) -> Option<Pending> {
        if let Pending::Send {
            bytes,
            zero_copy: true,
            ..
        } = *pending
        {
            self.post(ring_fd, id, user_data, -errno, F_MORE);
            Some(self.notify_later(bytes, Vec::new()))
        } else {
            self.post(ring_fd, id, user_data, -errno, 0);
            None
        }
    }

    /// Puts an operation back in flight in its next state, or retires it,
    /// dropping its file reference once it no longer needs the file.
    fn settle(
        &mut self,
        ring_fd: RawFd,
        held: Option<RawFd>,
        id: u64,
        user_data: u64,
        next: Option<Pending>,
    ) {
        if let Some(fd) = held {
            if next.as_ref().and_then(Pending::file).is_none() {
                self.drop_ref(fd);
            }
        }
        if let Some(pending) = next {
            self.ring(ring_fd).in_flight.insert(
                id,
                InFlight {
                    id,
                    user_data,
                    pending,
                },
            );
        }
    }

    /// Makes progress on every in-flight operation of one ring, in random
    /// order.
    pub(super) fn progress(&mut self, ring_fd: RawFd, pool: &mut BufferPool) {
        let mut order: Vec<u64> = self.ring(ring_fd).in_flight.keys().copied().collect();
        self.rng.shuffle(&mut order);
        for op_id in order {
            let InFlight {
                id,
                user_data,
                pending,
            } = self.ring(ring_fd).in_flight.remove(&op_id).unwrap();
            let held = pending.file();
            let next = match pending {
                Pending::Accept { listener } => self.accept(ring_fd, id, user_data, listener),
                Pending::Recv { fd } => self.recv(ring_fd, id, user_data, fd, pool),
                Pending::Send {
                    fd,
                    bytes,
                    zero_copy,
                } => self.send(ring_fd, id, user_data, fd, bytes, zero_copy),
                Pending::Notify { steps, bytes, sent } => {
                    self.notify(ring_fd, id, user_data, steps, bytes, sent)
                }
            };
            self.settle(ring_fd, held, id, user_data, next);
        }
    }

    /// Takes a ring's ready completions. With faults on, completions of
    /// different operations come out in random order, but each operation's
    /// own stay in order, as the kernel guarantees.
    pub(super) fn take_ready(&mut self, ring_fd: RawFd) -> Vec<(u64, Completion)> {
        let ready = std::mem::take(&mut self.ring(ring_fd).ready);
        if !self.config.faults {
            return ready;
        }
        let mut by_op: BTreeMap<u64, VecDeque<Completion>> = BTreeMap::new();
        for &(id, completion) in &ready {
            by_op.entry(id).or_default().push_back(completion);
        }
        let mut queues: Vec<(u64, VecDeque<Completion>)> = by_op.into_iter().collect();
        let mut out = Vec::with_capacity(ready.len());
        while !queues.is_empty() {
            let i = self.rng.below(queues.len() as u64) as usize;
            let (id, queue) = &mut queues[i];
            out.push((*id, queue.pop_front().unwrap()));
            if queue.is_empty() {
                queues.swap_remove(i);
            }
        }
        if out != ready {
            self.stats.reordered_reaps += 1;
        }
        out
    }
}

pub(super) fn completes_at_submit(op: &Op) -> bool {
    matches!(op, Op::Cancel { .. } | Op::Close { .. } | Op::Wake { .. })
}
