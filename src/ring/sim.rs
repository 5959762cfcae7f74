//! The simulated ring: a deterministic, seeded, fault-injecting `Ring` over a
//! simulated TCP world, so the whole engine runs in one thread and any failure
//! replays from its seed.
//!
//! `SimNet` owns the world: the virtual clock, the fake descriptor table, the
//! listeners and connections (the test driver plays the clients), every ring's
//! queued and in-flight operations and ready completions, and the one PRNG all
//! randomness comes from. `SimRing` is one shard's ring: a handle on the world
//! plus its provided-buffer pool, kept outside the shared cell so `buffer()`
//! can lend plain borrows.
//!
//! Semantics follow the kernel as the engine sees it. Where the kernel would
//! merely misbehave later (a reused user_data, a double recycle, a buffer
//! changed under a zero-copy send), the simulation panics naming the rule.

use std::cell::{Ref, RefCell, RefMut};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::slice;

use super::{Completion, Op, Ring, F_MORE, F_NOTIF};

/// Fake descriptors count up from here and are never reused, so a stale fd
/// is always detectable.
const FIRST_FD: RawFd = 1000;
/// Wall clock at virtual time zero (November 2023), so timestamps look real.
/// The simulated wall clock at time 0 (tests mint tokens against it).
pub const WALL_BASE_NS: u64 = 1_700_000_000_000_000_000;
/// Written over a recycled buffer, so bytes read through a stale pointer show.
const POISON: u8 = 0xa5;

// Fault rates, as "one in N" chances at each opportunity. Tearing is common
// because real TCP tears frames at segment boundaries all the time.
/// A received chunk is cut short at a random length.
const TEAR_RECV_ONE_IN: u64 = 2;
/// A multishot accept or receive ends after a successful completion.
const END_MULTISHOT_ONE_IN: u64 = 32;
/// A send takes only a random prefix of what fits.
const SHORT_SEND_ONE_IN: u64 = 4;
/// A send that could make progress fails with -EAGAIN instead.
const SPURIOUS_EAGAIN_ONE_IN: u64 = 64;
/// A zero-copy notification lags its result by 1..=this many steps.
const NOTIF_LAG_MAX_STEPS: u64 = 4;

#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Provided buffers per ring (a power of two, as for a kernel buffer ring).
    pub recv_buffers: u16,
    pub recv_buffer_bytes: u32,
    /// Default server->client capacity per socket: the kernel send buffer
    /// plus the peer's receive window.
    pub socket_buffer_bytes: usize,
    /// Master switch for the random faults; off, the world is still seeded
    /// (operation order) but every operation does the obvious thing.
    pub faults: bool,
}

impl SimConfig {
    /// Small buffers and windows, so exhaustion and back-pressure happen.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            recv_buffers: 32,
            recv_buffer_bytes: 2048,
            socket_buffer_bytes: 16 * 1024,
            faults: true,
        }
    }
}

/// How often each fault was injected, so tests can assert they happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub torn_recvs: u64,
    pub ended_accepts: u64,
    pub ended_recvs: u64,
    pub short_sends: u64,
    pub spurious_eagains: u64,
    /// Zero-copy notifications that lagged their result by more than a step.
    pub lagged_notifs: u64,
    /// Reaps whose completions came out in a different order than produced.
    pub reordered_reaps: u64,
    /// Not a fault: receives that ended with -ENOBUFS.
    pub no_buffers: u64,
}

pub type ClientId = usize;

/// Handle on the simulated world, shared by every ring and the test driver.
#[derive(Clone)]
pub struct SimNet(Rc<RefCell<World>>);

pub struct SimRing {
    net: SimNet,
    fd: RawFd,
    pool: BufferPool,
}

struct World {
    config: SimConfig,
    rng: Rng,
    now_ms: u64,
    next_fd: RawFd,
    next_op: u64,
    files: BTreeMap<RawFd, File>,
    rings: BTreeMap<RawFd, RingState>,
    clients: Vec<Client>,
    stats: SimStats,
}

/// A listener or accepted socket. Like the kernel's struct file, it lives
/// until the descriptor is closed and no in-flight operation references it.
struct File {
    open: bool,
    refs: u32,
    kind: FileKind,
}

enum FileKind {
    Listener { backlog: VecDeque<ClientId> },
    Socket { client: ClientId },
}

/// One connection, seen from the client the test driver plays.
struct Client {
    /// Written by the client, not yet received by the server.
    inbound: VecDeque<u8>,
    /// Sent by the server, not yet read by the client.
    outbound: Vec<u8>,
    /// How many unread bytes may sit in `outbound`.
    window: usize,
    accepted: bool,
    fin: bool,
    reset: bool,
    /// The server's last reference to the socket is gone.
    server_gone: bool,
}

#[derive(Default)]
struct RingState {
    /// Pushed, not yet submitted, in push order.
    queued: Vec<Queued>,
    /// By operation id. A user_data is unique among the operations still
    /// cancellable; a zero-copy send that only owes its notification may
    /// share it with the connection's next send (the kernel tells the two
    /// apart by F_NOTIF, and so must the engine).
    in_flight: BTreeMap<u64, InFlight>,
    /// Completions with the id of the operation that produced them.
    ready: Vec<(u64, Completion)>,
}

struct Queued {
    id: u64,
    user_data: u64,
    op: Op,
}

struct InFlight {
    id: u64,
    user_data: u64,
    pending: Pending,
}

impl InFlight {
    /// Still a request the kernel would find by user_data (cancel, reuse).
    fn live(&self, user_data: u64) -> bool {
        self.user_data == user_data && !matches!(self.pending, Pending::Notify { .. })
    }
}

enum Pending {
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
    fn file(&self) -> Option<RawFd> {
        match *self {
            Pending::Accept { listener } => Some(listener),
            Pending::Recv { fd } | Pending::Send { fd, .. } => Some(fd),
            Pending::Notify { .. } => None,
        }
    }
}

/// The engine memory a send reads.
#[derive(Clone, Copy)]
enum Bytes {
    Contiguous { ptr: *const u8, len: usize },
    Vectored { msg: *const libc::msghdr },
}

impl Bytes {
    fn len(self) -> usize {
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

/// One ring's provided buffers, handed out in ring order like a kernel
/// buffer ring: recycled buffers go to the back.
struct BufferPool {
    bytes: Vec<u8>,
    size: usize,
    filled: Vec<usize>,
    lent: Vec<bool>,
    free: VecDeque<u16>,
}

impl BufferPool {
    fn new(count: u16, size: usize) -> BufferPool {
        BufferPool {
            bytes: vec![POISON; usize::from(count) * size],
            size,
            filled: vec![0; usize::from(count)],
            lent: vec![false; usize::from(count)],
            free: (0..count).collect(),
        }
    }

    fn range(&self, buffer_id: u16) -> std::ops::Range<usize> {
        let start = usize::from(buffer_id) * self.size;
        start..start + self.size
    }

    /// Lends a buffer taken off the free list, filled from `bytes`.
    fn fill(&mut self, buffer_id: u16, bytes: impl ExactSizeIterator<Item = u8>) {
        let len = bytes.len();
        let range = self.range(buffer_id);
        for (slot, byte) in self.bytes[range].iter_mut().zip(bytes) {
            *slot = byte;
        }
        self.filled[usize::from(buffer_id)] = len;
        self.lent[usize::from(buffer_id)] = true;
    }
}

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
    fn one_to(&mut self, n: usize) -> usize {
        1 + self.below(n as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

impl SimNet {
    pub fn new(config: SimConfig) -> SimNet {
        assert!(
            config.recv_buffers.is_power_of_two(),
            "sim: recv_buffers must be a power of two, got {}",
            config.recv_buffers
        );
        assert!(
            config.recv_buffer_bytes > 0 && i32::try_from(config.recv_buffer_bytes).is_ok(),
            "sim: recv_buffer_bytes must be in 1..=i32::MAX, got {}",
            config.recv_buffer_bytes
        );
        SimNet(Rc::new(RefCell::new(World {
            config,
            rng: Rng(config.seed),
            now_ms: 0,
            next_fd: FIRST_FD,
            next_op: 0,
            files: BTreeMap::new(),
            rings: BTreeMap::new(),
            clients: Vec::new(),
            stats: SimStats::default(),
        })))
    }

    fn world(&self) -> RefMut<'_, World> {
        self.0.borrow_mut()
    }

    fn view(&self) -> Ref<'_, World> {
        self.0.borrow()
    }

    /// A new ring with its own fake ring fd and provided-buffer pool.
    pub fn ring(&self) -> SimRing {
        let mut world = self.world();
        let fd = world.alloc_fd();
        world.rings.insert(fd, RingState::default());
        let pool = BufferPool::new(
            world.config.recv_buffers,
            world.config.recv_buffer_bytes as usize,
        );
        SimRing {
            net: self.clone(),
            fd,
            pool,
        }
    }

    /// A new listening socket.
    pub fn listen(&self) -> RawFd {
        let mut world = self.world();
        let fd = world.alloc_fd();
        let backlog = VecDeque::new();
        world
            .files
            .insert(fd, File::new(FileKind::Listener { backlog }));
        fd
    }

    /// A new client, queued for accept on `listener`.
    pub fn connect(&self, listener: RawFd) -> ClientId {
        let mut world = self.world();
        let client = world.clients.len();
        let window = world.config.socket_buffer_bytes;
        let file = world.files.get_mut(&listener).filter(|f| !f.released());
        let Some(File {
            kind: FileKind::Listener { backlog },
            ..
        }) = file
        else {
            panic!("sim: connect to fd {listener}, which is not a live listener");
        };
        backlog.push_back(client);
        world.clients.push(Client {
            inbound: VecDeque::new(),
            outbound: Vec::new(),
            window,
            accepted: false,
            fin: false,
            reset: false,
            server_gone: false,
        });
        client
    }

    pub fn client_write(&self, client: ClientId, bytes: &[u8]) {
        let mut world = self.world();
        let c = world.client(client);
        assert!(
            !c.fin && !c.reset,
            "sim: client {client} writes after closing"
        );
        c.inbound.extend(bytes);
    }

    /// Drains what the server sent so far.
    pub fn client_read(&self, client: ClientId) -> Vec<u8> {
        std::mem::take(&mut self.world().client(client).outbound)
    }

    /// FIN: the server receives EOF after the pending bytes, and its sends
    /// fail with -EPIPE.
    pub fn client_close(&self, client: ClientId) {
        self.world().client(client).fin = true;
    }

    /// RST: the server's receives and sends fail with -ECONNRESET, and bytes
    /// it has not received yet are lost.
    pub fn client_reset(&self, client: ClientId) {
        let mut world = self.world();
        let c = world.client(client);
        c.reset = true;
        c.inbound.clear();
        c.outbound.clear();
    }

    /// How many unread bytes may sit at the client; 0 = stopped reading.
    pub fn client_set_window(&self, client: ClientId, bytes: usize) {
        self.world().client(client).window = bytes;
    }

    /// The server closed its side and the client has read everything.
    pub fn client_eof(&self, client: ClientId) -> bool {
        let mut world = self.world();
        let c = world.client(client);
        c.server_gone && c.outbound.is_empty()
    }

    pub fn client_was_accepted(&self, client: ClientId) -> bool {
        self.world().client(client).accepted
    }

    pub fn advance_ms(&self, ms: u64) {
        self.world().now_ms += ms;
    }

    pub fn now_ms(&self) -> u64 {
        self.view().now_ms
    }

    /// Accepted sockets the server has not closed: the leak check.
    pub fn open_server_fds(&self) -> usize {
        let world = self.view();
        let files = world.files.values();
        files
            .filter(|f| f.open && matches!(f.kind, FileKind::Socket { .. }))
            .count()
    }

    /// Operations pushed on any ring whose last completion is not yet ready.
    pub fn ops_in_flight(&self) -> usize {
        let world = self.view();
        let rings = world.rings.values();
        rings.map(|r| r.queued.len() + r.in_flight.len()).sum()
    }

    pub fn stats(&self) -> SimStats {
        self.view().stats
    }
}

impl File {
    fn new(kind: FileKind) -> File {
        File {
            open: true,
            refs: 0,
            kind,
        }
    }

    fn released(&self) -> bool {
        !self.open && self.refs == 0
    }
}

impl World {
    fn alloc_fd(&mut self) -> RawFd {
        let fd = self.next_fd;
        self.next_fd += 1;
        fd
    }

    fn client(&mut self, client: ClientId) -> &mut Client {
        let count = self.clients.len();
        let found = self.clients.get_mut(client);
        found.unwrap_or_else(|| panic!("sim: no client {client} (have {count})"))
    }

    fn ring(&mut self, ring_fd: RawFd) -> &mut RingState {
        self.rings
            .get_mut(&ring_fd)
            .expect("sim: ring is registered")
    }

    fn fault(&mut self, one_in: u64) -> bool {
        self.config.faults && self.rng.below(one_in) == 0
    }

    fn post(&mut self, ring_fd: RawFd, id: u64, user_data: u64, result: i32, flags: u32) {
        let completion = Completion {
            user_data,
            result,
            flags,
        };
        self.ring(ring_fd).ready.push((id, completion));
    }

    /// The client behind a socket that `check` vetted at push time.
    fn socket_client(&self, fd: RawFd) -> ClientId {
        match self.files[&fd].kind {
            FileKind::Socket { client } => client,
            FileKind::Listener { .. } => unreachable!("sim: checked at push"),
        }
    }

    /// Panics on contract violations visible at push time.
    fn check(&self, op: &Op) {
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
    fn submit(&mut self, ring_fd: RawFd) {
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
    fn fail(
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

    fn drop_ref(&mut self, fd: RawFd) {
        let file = self
            .files
            .get_mut(&fd)
            .expect("sim: referenced file exists");
        file.refs -= 1;
        if file.released() {
            self.release(fd);
        }
    }

    /// The server's last reference to a file is gone, so its peer sees the
    /// end: EOF for a connection, refusal for connections still queued on a
    /// listener.
    fn release(&mut self, fd: RawFd) {
        let gone = match &mut self.files.get_mut(&fd).expect("sim: file exists").kind {
            FileKind::Socket { client } => vec![*client],
            FileKind::Listener { backlog } => std::mem::take(backlog).into(),
        };
        for client in gone {
            self.clients[client].server_gone = true;
        }
    }

    /// Makes progress on every in-flight operation of one ring, in random
    /// order.
    fn progress(&mut self, ring_fd: RawFd, pool: &mut BufferPool) {
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

    fn accept(
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

    fn recv(
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

    fn send(
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

    fn notify_later(&mut self, bytes: Bytes, sent: Vec<u8>) -> Pending {
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

    fn notify(
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

    /// Takes a ring's ready completions. With faults on, completions of
    /// different operations come out in random order, but each operation's
    /// own stay in order, as the kernel guarantees.
    fn take_ready(&mut self, ring_fd: RawFd) -> Vec<(u64, Completion)> {
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

fn completes_at_submit(op: &Op) -> bool {
    matches!(op, Op::Cancel { .. } | Op::Close { .. } | Op::Wake { .. })
}

impl Ring for SimRing {
    fn push(&mut self, op: Op, user_data: u64) {
        let mut world = self.net.world();
        world.check(&op);
        let id = world.next_op;
        world.next_op += 1;
        let ring = world.ring(self.fd);
        // Two live operations with one user_data would be indistinguishable
        // to the engine. Cancel, close and wake never stay in flight, so
        // theirs may repeat.
        if !completes_at_submit(&op) {
            let live = |q: &Queued| q.user_data == user_data && !completes_at_submit(&q.op);
            let queued = ring.queued.iter().any(live);
            assert!(
                !queued && !ring.in_flight.values().any(|f| f.live(user_data)),
                "sim: {op:?} reuses user_data {user_data:#x} of an operation still in flight"
            );
        }
        ring.queued.push(Queued { id, user_data, op });
    }

    fn submit_and_wait(&mut self, timeout_ms: u32) -> io::Result<()> {
        let mut guard = self.net.world();
        let world = &mut *guard;
        world.submit(self.fd);
        world.progress(self.fd, &mut self.pool);
        if world.ring(self.fd).ready.is_empty() {
            // Nothing else can happen in one thread: a real wait would sleep
            // out the whole timeout.
            world.now_ms += u64::from(timeout_ms);
        } else if world.config.faults {
            // Jitter: getting to the completions may take a moment.
            world.now_ms += world.rng.below(2);
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let ready = self.net.world().take_ready(self.fd);
        out.extend(ready.into_iter().map(|(_, completion)| completion));
    }

    fn buffer(&self, buffer_id: u16, len: usize) -> &[u8] {
        let pool = &self.pool;
        let i = usize::from(buffer_id);
        assert!(
            pool.lent.get(i) == Some(&true),
            "sim: read of provided buffer {buffer_id}, which the engine does not hold"
        );
        assert!(
            len <= pool.filled[i],
            "sim: read of {len} bytes from provided buffer {buffer_id}, which holds {}",
            pool.filled[i]
        );
        &pool.bytes[pool.range(buffer_id)][..len]
    }

    fn recycle(&mut self, buffer_id: u16) {
        let pool = &mut self.pool;
        let i = usize::from(buffer_id);
        assert!(
            pool.lent.get(i) == Some(&true),
            "sim: recycle of provided buffer {buffer_id}, which the engine does not hold \
             (recycled twice?)"
        );
        pool.lent[i] = false;
        let range = pool.range(buffer_id);
        pool.bytes[range].fill(POISON);
        pool.free.push_back(buffer_id);
    }

    fn now_ms(&self) -> u64 {
        self.net.now_ms()
    }

    fn wall_ns(&self) -> u64 {
        WALL_BASE_NS + self.net.now_ms() * 1_000_000
    }

    fn fd(&self) -> RawFd {
        self.fd
    }

    fn cq_overflows(&self) -> u64 {
        0
    }

    /// Every simulated client connects from an address of its own.
    fn peer_ip(&self, fd: RawFd) -> Option<IpAddr> {
        let world = self.net.view();
        let file = world.files.get(&fd).filter(|f| !f.released())?;
        let FileKind::Socket { client } = file.kind else {
            return None;
        };
        Some(IpAddr::V4(Ipv4Addr::new(
            10,
            0,
            (client >> 8) as u8,
            client as u8,
        )))
    }
}

impl Drop for SimRing {
    /// Tearing a ring down cancels its operations silently, dropping their
    /// file references.
    fn drop(&mut self) {
        let mut world = self.net.world();
        let ring = world
            .rings
            .remove(&self.fd)
            .expect("sim: ring is registered");
        for op in ring.in_flight.into_values() {
            if let Some(fd) = op.pending.file() {
                world.drop_ref(fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCEPT: u64 = 1;
    const RECV: u64 = 2;
    const SEND: u64 = 3;
    const CANCEL: u64 = 4;
    const CLOSE: u64 = 5;

    fn net(seed: u64, faults: bool) -> SimNet {
        SimNet::new(SimConfig {
            faults,
            ..SimConfig::new(seed)
        })
    }

    /// One loop turn: submit, wait up to 10 ms, reap.
    fn turn(ring: &mut SimRing) -> Vec<Completion> {
        ring.submit_and_wait(10).unwrap();
        let mut out = Vec::new();
        ring.reap(&mut out);
        out
    }

    /// A connected client and its server fd, with no operation left in flight.
    fn connection(net: &SimNet, ring: &mut SimRing) -> (ClientId, RawFd) {
        let listener = net.listen();
        let client = net.connect(listener);
        ring.push(Op::AcceptMulti { listener }, ACCEPT);
        let accepted = turn(ring);
        assert_eq!(accepted.len(), 1);
        if accepted[0].more() {
            ring.push(Op::Cancel { target: ACCEPT }, CANCEL);
            turn(ring);
        }
        assert_eq!(net.ops_in_flight(), 0);
        (client, accepted[0].result)
    }

    fn send(fd: RawFd, bytes: &[u8]) -> Op {
        Op::Send {
            fd,
            ptr: bytes.as_ptr(),
            len: bytes.len() as u32,
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn accept_multishot_yields_fds_and_rearms_after_termination() {
        let net = net(1, true);
        let mut ring = net.ring();
        let listener = net.listen();
        let clients: Vec<ClientId> = (0..300).map(|_| net.connect(listener)).collect();
        let mut fds = Vec::new();
        let mut armed = false;
        let mut ends = 0;
        for _ in 0..1000 {
            if fds.len() == clients.len() {
                break;
            }
            if !armed {
                ring.push(Op::AcceptMulti { listener }, ACCEPT);
                armed = true;
            }
            for c in turn(&mut ring) {
                assert_eq!(c.user_data, ACCEPT);
                assert!(c.result >= FIRST_FD, "accept failed: {c:?}");
                assert!(!fds.contains(&c.result), "fd {} handed out twice", c.result);
                fds.push(c.result);
                if !c.more() {
                    armed = false;
                    ends += 1;
                }
            }
        }
        assert_eq!(fds.len(), clients.len());
        assert!(ends > 0, "the multishot never ended");
        assert_eq!(net.stats().ended_accepts, ends);
        assert!(clients.iter().all(|&c| net.client_was_accepted(c)));
        assert_eq!(net.open_server_fds(), clients.len());
    }

    #[test]
    fn accept_on_a_closed_listener_fails_with_ebadf() {
        let net = net(2, false);
        let mut ring = net.ring();
        let listener = net.listen();
        ring.push(Op::Close { fd: listener }, CLOSE);
        ring.push(Op::AcceptMulti { listener }, ACCEPT);
        let done = turn(&mut ring);
        let expected = [(CLOSE, 0, 0), (ACCEPT, -libc::EBADF, 0)];
        let got: Vec<_> = done
            .iter()
            .map(|c| (c.user_data, c.result, c.flags))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn recv_delivers_all_bytes_in_order_across_buffers_and_torn_chunks() {
        let net = net(3, true);
        let mut ring = net.ring();
        let (client, fd) = connection(&net, &mut ring);
        let sent = pattern(300_000);
        let mut pieces = sent.chunks(7000);
        let mut received = Vec::new();
        let mut armed = false;
        let mut completions = 0;
        for _ in 0..1000 {
            if let Some(piece) = pieces.next() {
                net.client_write(client, piece);
            } else if received.len() == sent.len() {
                break;
            }
            if !armed {
                ring.push(Op::RecvMulti { fd }, RECV);
                armed = true;
            }
            for c in turn(&mut ring) {
                assert_eq!(c.user_data, RECV);
                assert!(c.result > 0, "unexpected {c:?}");
                assert!(c.result as u32 <= SimConfig::new(0).recv_buffer_bytes);
                let buffer_id = c.buffer_id().expect("data comes in a provided buffer");
                received.extend_from_slice(ring.buffer(buffer_id, c.result as usize));
                ring.recycle(buffer_id);
                completions += 1;
                armed &= c.more();
            }
        }
        assert_eq!(received, sent);
        let stats = net.stats();
        assert!(stats.torn_recvs > 0 && stats.ended_recvs > 0, "{stats:?}");
        assert!(completions > sent.len() / 2048);

        net.client_close(client);
        if !armed {
            ring.push(Op::RecvMulti { fd }, RECV);
        }
        let eof = turn(&mut ring);
        assert_eq!((eof[0].result, eof[0].flags), (0, 0));
    }

    #[test]
    fn recv_fails_with_enobufs_until_buffers_are_recycled() {
        let net = SimNet::new(SimConfig {
            recv_buffers: 4,
            recv_buffer_bytes: 16,
            faults: false,
            ..SimConfig::new(4)
        });
        let mut ring = net.ring();
        let (client, fd) = connection(&net, &mut ring);
        let sent = pattern(100);
        net.client_write(client, &sent);
        ring.push(Op::RecvMulti { fd }, RECV);
        let first = turn(&mut ring);
        assert_eq!(first.len(), 5);
        for (i, c) in first[..4].iter().enumerate() {
            assert_eq!((c.result, c.buffer_id()), (16, Some(i as u16)));
            assert!(c.more());
            assert_eq!(ring.buffer(i as u16, 16), &sent[i * 16..][..16]);
        }
        assert_eq!((first[4].result, first[4].flags), (-libc::ENOBUFS, 0));

        // Re-armed with every buffer still lent out: out of buffers again.
        ring.push(Op::RecvMulti { fd }, RECV);
        assert_eq!(turn(&mut ring)[0].result, -libc::ENOBUFS);
        assert_eq!(net.stats().no_buffers, 2);

        for buffer_id in 0..4 {
            ring.recycle(buffer_id);
        }
        ring.push(Op::RecvMulti { fd }, RECV);
        let rest = turn(&mut ring);
        let lens: Vec<i32> = rest.iter().map(|c| c.result).collect();
        assert_eq!(lens, [16, 16, 4]);
        assert!(rest.iter().all(Completion::more));
        let mut received = Vec::new();
        for c in &rest {
            received.extend_from_slice(ring.buffer(c.buffer_id().unwrap(), c.result as usize));
        }
        assert_eq!(received, sent[64..]);
        assert_eq!(net.ops_in_flight(), 1, "the receive is still armed");
    }

    #[test]
    fn send_respects_the_window_and_resumes_when_the_client_reads() {
        let net = net(5, false);
        let mut ring = net.ring();
        let (client, fd) = connection(&net, &mut ring);
        net.client_set_window(client, 100);
        let bytes = pattern(250);

        ring.push(send(fd, &bytes), SEND);
        let done = turn(&mut ring);
        assert_eq!((done[0].result, done[0].flags), (100, 0));

        // The window is full: the rest waits, and the wait times out.
        ring.push(send(fd, &bytes[100..]), SEND);
        let before = net.now_ms();
        assert!(turn(&mut ring).is_empty());
        assert_eq!(net.now_ms(), before + 10);
        assert_eq!(net.ops_in_flight(), 1);

        assert_eq!(net.client_read(client), bytes[..100]);
        let before = net.now_ms();
        assert_eq!(turn(&mut ring)[0].result, 100);
        assert_eq!(
            net.now_ms(),
            before,
            "no waiting when a completion is ready"
        );

        net.client_set_window(client, 0);
        assert_eq!(net.client_read(client), bytes[100..200]);
        ring.push(send(fd, &bytes[200..]), SEND);
        assert!(turn(&mut ring).is_empty(), "a stopped reader takes nothing");
        net.client_set_window(client, 100);
        assert_eq!(turn(&mut ring)[0].result, 50);
        assert_eq!(net.client_read(client), bytes[200..]);
    }

    #[test]
    fn sends_are_short_or_fail_spuriously_with_faults_on() {
        let net = net(6, true);
        let mut ring = net.ring();
        let (client, fd) = connection(&net, &mut ring);
        net.client_set_window(client, usize::MAX);
        let message = pattern(1000);
        let mut shorts = 0;
        let mut eagains = 0;
        for _ in 0..300 {
            let mut offset = 0;
            while offset < message.len() {
                ring.push(send(fd, &message[offset..]), SEND);
                let done = turn(&mut ring);
                assert_eq!(done.len(), 1);
                match done[0].result {
                    n if n == -libc::EAGAIN => eagains += 1,
                    n if n > 0 => {
                        shorts += usize::from(offset + (n as usize) < message.len());
                        offset += n as usize;
                    }
                    n => panic!("send failed: {n}"),
                }
            }
        }
        assert_eq!(net.client_read(client), message.repeat(300));
        let stats = net.stats();
        assert!(shorts > 0 && eagains > 0, "{stats:?}");
        assert_eq!(stats.short_sends, shorts as u64);
        assert_eq!(stats.spurious_eagains, eagains);
    }

    #[test]
    fn vectored_send_gathers_every_iovec() {
        let net = net(7, false);
        let mut ring = net.ring();
        let (client, fd) = connection(&net, &mut ring);
        let (head, tail) = (b"head:".to_vec(), b"tail".to_vec());
        let iov = [
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            libc::iovec {
                iov_base: tail.as_ptr() as *mut libc::c_void,
                iov_len: tail.len(),
            },
        ];
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        ring.push(Op::SendVectored { fd, msg: &msg }, SEND);
        assert_eq!(turn(&mut ring)[0].result, 9);
        assert_eq!(net.client_read(client), b"head:tail");
    }

    #[test]
    fn zero_copy_send_gives_its_result_then_a_later_notification() {
        let net = net(8, true);
        let mut ring = net.ring();
        let (client, fd) = connection(&net, &mut ring);
        net.client_set_window(client, usize::MAX);
        let bytes = pattern(3000);
        let mut eagains = 0;
        for round in 0..50u64 {
            let user_data = SEND + (round << 8);
            let op = Op::SendZeroCopy {
                fd,
                ptr: bytes.as_ptr(),
                len: bytes.len() as u32,
                buf_index: 0,
            };
            ring.push(op, user_data);
            // Each completion with the turn that produced it.
            let mut seen: Vec<(usize, Completion)> = Vec::new();
            let mut turns = 0;
            while seen.last().is_none_or(|(_, c)| c.more()) {
                seen.extend(turn(&mut ring).into_iter().map(|c| (turns, c)));
                turns += 1;
            }
            let [(result_turn, result), (notif_turn, notif)] = seen[..] else {
                panic!("expected a result and a notification, got {seen:?}");
            };
            assert_eq!((result.user_data, notif.user_data), (user_data, user_data));
            assert!(result.more() && !result.notification());
            assert!(notif_turn > result_turn);
            assert_eq!((notif.result, notif.flags), (0, F_NOTIF));
            if result.result == -libc::EAGAIN {
                eagains += 1;
            } else {
                assert!(result.result > 0, "send failed: {result:?}");
                let received = net.client_read(client);
                assert_eq!(received, bytes[..result.result as usize]);
            }
        }
        assert!(eagains < 10);
        assert!(net.stats().lagged_notifs > 0);
    }

    #[test]
    fn zero_copy_notification_comes_a_step_after_the_result() {
        let net = net(9, false);
        let mut ring = net.ring();
        let (_, fd) = connection(&net, &mut ring);
        let bytes = pattern(10);
        let op = Op::SendZeroCopy {
            fd,
            ptr: bytes.as_ptr(),
            len: 10,
            buf_index: 0,
        };
        ring.push(op, SEND);
        let result = turn(&mut ring);
        assert_eq!((result[0].result, result[0].flags), (10, F_MORE));
        assert_eq!(net.ops_in_flight(), 1, "the buffer is still the kernel's");
        assert_eq!(turn(&mut ring)[0].flags, F_NOTIF);
        assert_eq!(net.ops_in_flight(), 0);
    }

    #[test]
    #[should_panic(expected = "changed the buffer before its notification")]
    fn zero_copy_buffer_changed_before_the_notification_panics() {
        let net = net(10, false);
        let mut ring = net.ring();
        let (_, fd) = connection(&net, &mut ring);
        let mut bytes = pattern(10);
        let op = Op::SendZeroCopy {
            fd,
            ptr: bytes.as_ptr(),
            len: 10,
            buf_index: 0,
        };
        ring.push(op, SEND);
        turn(&mut ring);
        bytes[3] ^= 1;
        turn(&mut ring);
    }

    #[test]
    fn reap_reorders_across_operations_but_not_within_one() {
        let net = net(22, true);
        let mut ring = net.ring();
        let connections: Vec<(ClientId, RawFd)> =
            (0..4).map(|_| connection(&net, &mut ring)).collect();
        let sent = pattern(3000);
        for (i, &(client, fd)) in connections.iter().enumerate() {
            net.client_write(client, &sent);
            ring.push(Op::RecvMulti { fd }, i as u64);
        }
        let before = net.stats().reordered_reaps;
        let done = turn(&mut ring);
        assert_eq!(net.stats().reordered_reaps, before + 1);
        // Each receive's bytes still come in order, and nothing follows its
        // last completion.
        for i in 0..connections.len() as u64 {
            let own: Vec<&Completion> = done.iter().filter(|c| c.user_data == i).collect();
            let (_, before_last) = own.split_last().unwrap();
            assert!(before_last.iter().all(|c| c.more()));
            let mut received = Vec::new();
            for c in own.iter().filter(|c| c.result > 0) {
                let buffer_id = c.buffer_id().unwrap();
                received.extend_from_slice(ring.buffer(buffer_id, c.result as usize));
            }
            assert!(sent.starts_with(&received));
        }
    }

    #[test]
    fn cancel_ends_a_multishot_recv() {
        let net = net(11, true);
        let mut ring = net.ring();
        let (_, fd) = connection(&net, &mut ring);
        ring.push(Op::RecvMulti { fd }, RECV);
        assert!(turn(&mut ring).is_empty());
        ring.push(Op::Cancel { target: RECV }, CANCEL);
        let mut done = turn(&mut ring);
        done.sort_by_key(|c| c.user_data);
        let got: Vec<_> = done
            .iter()
            .map(|c| (c.user_data, c.result, c.flags))
            .collect();
        assert_eq!(got, [(RECV, -libc::ECANCELED, 0), (CANCEL, 0, 0)]);
        assert_eq!(net.ops_in_flight(), 0);

        ring.push(Op::Cancel { target: RECV }, CANCEL);
        assert_eq!(turn(&mut ring)[0].result, -libc::ENOENT);
    }

    #[test]
    fn cancelled_zero_copy_send_still_notifies() {
        let net = net(12, false);
        let mut ring = net.ring();
        let (client, fd) = connection(&net, &mut ring);
        net.client_set_window(client, 0);
        let bytes = pattern(10);
        let op = Op::SendZeroCopy {
            fd,
            ptr: bytes.as_ptr(),
            len: 10,
            buf_index: 0,
        };
        ring.push(op, SEND);
        assert!(turn(&mut ring).is_empty());
        ring.push(Op::Cancel { target: SEND }, CANCEL);
        let done = turn(&mut ring);
        let got: Vec<_> = done
            .iter()
            .map(|c| (c.user_data, c.result, c.flags))
            .collect();
        let expected = [
            (SEND, -libc::ECANCELED, F_MORE),
            (CANCEL, 0, 0),
            (SEND, 0, F_NOTIF),
        ];
        assert_eq!(got, expected);
    }

    #[test]
    fn reset_fails_recv_and_send_with_econnreset_and_drops_unread_bytes() {
        let net = net(13, false);
        let mut ring = net.ring();
        let (client, fd) = connection(&net, &mut ring);
        net.client_set_window(client, 0);
        let bytes = pattern(10);
        ring.push(send(fd, &bytes), SEND);
        assert!(turn(&mut ring).is_empty());

        net.client_write(client, b"never received");
        net.client_reset(client);
        ring.push(Op::RecvMulti { fd }, RECV);
        let mut done = turn(&mut ring);
        done.sort_by_key(|c| c.user_data);
        let got: Vec<_> = done
            .iter()
            .map(|c| (c.user_data, c.result, c.flags))
            .collect();
        assert_eq!(
            got,
            [(RECV, -libc::ECONNRESET, 0), (SEND, -libc::ECONNRESET, 0)]
        );
    }

    #[test]
    fn send_after_the_client_closes_fails_with_epipe() {
        let net = net(14, false);
        let mut ring = net.ring();
        let (client, fd) = connection(&net, &mut ring);
        net.client_close(client);
        ring.push(send(fd, b"late"), SEND);
        assert_eq!(turn(&mut ring)[0].result, -libc::EPIPE);
    }

    #[test]
    fn close_keeps_in_flight_ops_running_and_eof_waits_for_them() {
        let net = net(15, false);
        let mut ring = net.ring();
        let (client, fd) = connection(&net, &mut ring);
        assert_eq!(net.open_server_fds(), 1);
        ring.push(Op::RecvMulti { fd }, RECV);
        ring.push(Op::Close { fd }, CLOSE);
        assert_eq!(turn(&mut ring)[0].result, 0);
        assert_eq!(net.open_server_fds(), 0);
        assert!(
            !net.client_eof(client),
            "the receive still holds the socket"
        );

        // The kernel's file reference keeps the receive working.
        net.client_write(client, b"hi");
        let data = turn(&mut ring);
        assert_eq!((data[0].user_data, data[0].result), (RECV, 2));

        ring.push(Op::Close { fd }, CLOSE);
        ring.push(Op::RecvMulti { fd }, RECV + 1);
        ring.push(Op::Cancel { target: RECV }, CANCEL);
        let mut done = turn(&mut ring);
        done.sort_by_key(|c| c.user_data);
        let got: Vec<_> = done.iter().map(|c| (c.user_data, c.result)).collect();
        let expected = [
            (RECV, -libc::ECANCELED),
            (RECV + 1, -libc::EBADF),
            (CANCEL, 0),
            (CLOSE, -libc::EBADF),
        ];
        assert_eq!(got, expected);
        assert!(net.client_eof(client));
    }

    #[test]
    fn wake_posts_on_the_target_ring_only() {
        let net = net(16, true);
        let mut sender = net.ring();
        let mut target = net.ring();
        sender.push(
            Op::Wake {
                ring_fd: target.fd(),
                user_data: 77,
            },
            CLOSE,
        );
        assert!(
            turn(&mut sender).is_empty(),
            "success is skipped for the sender"
        );
        let before = net.now_ms();
        let woken = turn(&mut target);
        let expected = Completion {
            user_data: 77,
            result: 0,
            flags: 0,
        };
        assert_eq!(woken, [expected]);
        assert!(net.now_ms() <= before + 1, "a woken ring does not wait");

        let gone = target.fd();
        drop(target);
        sender.push(
            Op::Wake {
                ring_fd: gone,
                user_data: 77,
            },
            CLOSE,
        );
        let failed = turn(&mut sender);
        assert_eq!(
            (failed[0].user_data, failed[0].result),
            (CLOSE, -libc::EBADF)
        );
    }

    #[test]
    fn idle_wait_advances_the_clock_by_the_timeout() {
        let net = net(17, true);
        let mut ring = net.ring();
        let wall = ring.wall_ns();
        ring.submit_and_wait(250).unwrap();
        assert_eq!(ring.now_ms(), 250);
        assert_eq!(ring.wall_ns(), wall + 250_000_000);
        net.advance_ms(50);
        assert_eq!(ring.now_ms(), 300);
    }

    /// A busy little world: clients talking and being talked to, faults on.
    fn scenario(seed: u64) -> (Vec<Completion>, Vec<u8>) {
        let net = net(seed, true);
        let mut ring = net.ring();
        let listener = net.listen();
        let clients: Vec<ClientId> = (0..4).map(|_| net.connect(listener)).collect();
        let reply = pattern(5000);
        let mut log = Vec::new();
        let mut fds = Vec::new();
        let mut accept_armed = false;
        let mut recv_armed = [false; 4];
        let mut send_armed = [false; 4];
        for step in 0..60 {
            if !accept_armed && fds.len() < clients.len() {
                ring.push(Op::AcceptMulti { listener }, ACCEPT);
                accept_armed = true;
            }
            for (i, &fd) in fds.iter().enumerate() {
                net.client_write(clients[i], &reply[..(step * 37 + i) % 900 + 1]);
                if !recv_armed[i] {
                    ring.push(Op::RecvMulti { fd }, RECV << 8 | i as u64);
                    recv_armed[i] = true;
                }
                if !send_armed[i] {
                    ring.push(send(fd, &reply), SEND << 8 | i as u64);
                    send_armed[i] = true;
                }
            }
            for c in turn(&mut ring) {
                log.push(c);
                let i = (c.user_data & 0xff) as usize;
                match c.user_data >> 8 {
                    0 => {
                        fds.push(c.result);
                        accept_armed = c.more();
                    }
                    RECV => {
                        if let Some(buffer_id) = c.buffer_id() {
                            ring.recycle(buffer_id);
                        }
                        recv_armed[i] = c.more();
                    }
                    _ => send_armed[i] = false,
                }
            }
        }
        let read = clients.iter().flat_map(|&c| net.client_read(c)).collect();
        (log, read)
    }

    #[test]
    fn same_seed_replays_identically_and_seeds_differ() {
        let first = scenario(42);
        assert!(first.0.len() > 100, "the scenario should be busy");
        assert_eq!(first, scenario(42));
        assert_ne!(first.0, scenario(43).0);
    }

    #[test]
    #[should_panic(expected = "reuses user_data")]
    fn reusing_an_in_flight_user_data_panics() {
        let net = net(18, false);
        let mut ring = net.ring();
        let (_, fd) = connection(&net, &mut ring);
        ring.push(Op::RecvMulti { fd }, RECV);
        turn(&mut ring);
        ring.push(Op::RecvMulti { fd }, RECV);
    }

    #[test]
    #[should_panic(expected = "recycled twice?")]
    fn recycling_a_buffer_twice_panics() {
        let net = net(19, false);
        let mut ring = net.ring();
        let (client, fd) = connection(&net, &mut ring);
        net.client_write(client, b"x");
        ring.push(Op::RecvMulti { fd }, RECV);
        let buffer_id = turn(&mut ring)[0].buffer_id().unwrap();
        ring.recycle(buffer_id);
        ring.recycle(buffer_id);
    }

    #[test]
    #[should_panic(expected = "zero-length")]
    fn zero_length_send_panics() {
        let net = net(20, false);
        let mut ring = net.ring();
        let (_, fd) = connection(&net, &mut ring);
        ring.push(send(fd, b""), SEND);
    }

    #[test]
    #[should_panic(expected = "never opened")]
    fn op_on_a_never_opened_fd_panics() {
        let net = net(21, false);
        let mut ring = net.ring();
        ring.push(Op::RecvMulti { fd: 3 }, RECV);
    }
}
