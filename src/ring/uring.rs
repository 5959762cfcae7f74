//! The io_uring driver: the one place submission entries are built.
//!
//! One ring per shard with a completion queue four times the submission
//! queue, a provided-buffer ring for multishot receive (in memory the engine
//! maps for the shard, on its NUMA node), and the frame arena registered as
//! fixed buffers. Rings are created disabled so one thread can
//! register the arena once and share it with every ring; each shard thread
//! then enables its own ring and becomes its single issuer (SINGLE_ISSUER and
//! DEFER_TASKRUN tie completions to that thread).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Instant;

use cluecast_sys::Span;
use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

use super::{Completion, Op, OpKind, Ring, Token};

/// The buffer group every shard's receives select from (groups are per ring).
const RECV_BUFFER_GROUP: u16 = 0;

#[derive(Clone, Copy, Debug)]
pub struct UringConfig {
    pub sq_entries: u32,
    /// Provided receive buffers (a power of two, at most 32768).
    pub recv_buffers: u16,
    pub recv_buffer_bytes: u32,
}

impl UringConfig {
    /// Bytes of the provided-buffer ring's entries, and of its buffers.
    pub fn recv_bytes(&self) -> (usize, usize) {
        let buffers = self.recv_buffers as usize;
        (
            buffers * std::mem::size_of::<BufRingEntry>(),
            buffers * self.recv_buffer_bytes as usize,
        )
    }
}

/// Memory for the provided receive buffers, as large as `recv_bytes` says:
/// the ring of entries the kernel reads (page aligned) and the buffers.
pub struct RecvMemory {
    pub entries: Span,
    pub buffers: Span,
}

/// How this ring gets the shared frame arena registered.
pub enum FixedBuffers<'a> {
    /// Register these regions (the first ring does this).
    Register(&'a [libc::iovec]),
    /// Share the registration of another ring (IORING_REGISTER_CLONE_BUFFERS).
    CloneFrom(RawFd),
}

pub struct Uring {
    ring: IoUring,
    /// Provided-buffer ring entries, shared with the kernel.
    buf_entries: Span,
    buf_data: Span,
    buf_mask: u16,
    buf_tail: u16,
    recv_buffer_bytes: u32,
    start: Instant,
    /// The kernel's overflow counter as of the last reap (it wraps at u32).
    cq_overflows: u64,
}

fn setup_error(what: &str, err: io::Error) -> io::Error {
    let hint = match err.raw_os_error() {
        Some(libc::ENOSYS) => {
            "the kernel has no io_uring (Linux 6.1 or newer is needed)".to_string()
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
                Ok(v) if v.trim() != "0" => format!(
                    "io_uring is disabled by sysctl kernel.io_uring_disabled={}; \
                 fix: sysctl -w kernel.io_uring_disabled=0",
                    v.trim()
                ),
                _ => "io_uring is blocked, most likely by a seccomp filter (container runtime \
                  or systemd SystemCallFilter); allow io_uring_setup, io_uring_enter and \
                  io_uring_register"
                    .to_string(),
            }
        }
        Some(libc::EINVAL) => {
            "the kernel rejected the ring flags SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN \
             (Linux 6.1 or newer is needed)"
                .to_string()
        }
        Some(libc::ENOMEM) => {
            "not enough locked memory: raise the memlock limit (ulimit -l, or LimitMEMLOCK= \
             in the systemd unit) or run with CAP_IPC_LOCK"
                .to_string()
        }
        _ => String::new(),
    };
    if hint.is_empty() {
        io::Error::new(err.kind(), format!("{what}: {err}"))
    } else {
        io::Error::new(err.kind(), format!("{what}: {err}: {hint}"))
    }
}

/// Opcodes the engine submits, named for the start-up check.
const REQUIRED_OPCODES: [(u8, &str); 9] = [
    (opcode::AcceptMulti::CODE, "ACCEPT"),
    (opcode::RecvMulti::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::SendZc::CODE, "SEND_ZC"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::Close::CODE, "CLOSE"),
    (opcode::MsgRingData::CODE, "MSG_RING"),
    (opcode::ProvideBuffers::CODE, "PROVIDE_BUFFERS"),
];

/// Whether this kernel (and whatever filters io_uring here) can run the
/// engine's rings: one small ring with the engine's flags and opcode check.
/// The error names the fix (`cluecast tune` reports it).
pub fn probe() -> io::Result<()> {
    checked_ring(8).map(drop)
}

/// A disabled ring with the engine's flags, whose features and opcodes the
/// engine needs are all there.
fn checked_ring(sq_entries: u32) -> io::Result<IoUring> {
    let ring = IoUring::builder()
        .setup_r_disabled()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_cqsize(sq_entries * 4)
        .build(sq_entries)
        .map_err(|e| setup_error("io_uring_setup", e))?;
    if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks EXT_ARG or NODROP (Linux 6.1 or newer is needed)",
        ));
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| setup_error("io_uring probe", e))?;
    let missing: Vec<&str> = REQUIRED_OPCODES
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "io_uring lacks opcodes {} (Linux 6.1 or newer is needed, and no seccomp \
                 filter on io_uring opcodes)",
                missing.join(", ")
            ),
        ));
    }
    Ok(ring)
}

impl Uring {
    /// The caller keeps `recv`'s memory, like the arena, mapped until the
    /// ring is dropped.
    pub fn new(
        config: UringConfig,
        fixed: FixedBuffers<'_>,
        recv: RecvMemory,
    ) -> io::Result<Uring> {
        assert!(config.recv_buffers.is_power_of_two() && config.recv_buffers <= 32768);
        assert_eq!(
            (recv.entries.len(), recv.buffers.len()),
            config.recv_bytes()
        );
        let ring = checked_ring(config.sq_entries)?;
        match fixed {
            // SAFETY: the regions are the frame arena, which outlives every ring
            // (the engine drops rings before the arena).
            FixedBuffers::Register(iovecs) => unsafe {
                ring.submitter()
                    .register_buffers(iovecs)
                    .map_err(|e| setup_error("registering the frame arena", e))?
            },
            FixedBuffers::CloneFrom(src) => ring
                .submitter()
                .register_buffers_clone(src)
                .map_err(|e| setup_error("sharing the frame arena registration", e))?,
        }

        let RecvMemory {
            entries: mut buf_entries,
            buffers: buf_data,
        } = recv;
        // SAFETY: buf_entries is page aligned, sized for the buffers, and
        // stays mapped as long as the ring (the contract of `new`).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(
                    buf_entries.as_mut_ptr() as u64,
                    config.recv_buffers,
                    RECV_BUFFER_GROUP,
                    0,
                )
                .map_err(|e| setup_error("registering the receive buffer ring", e))?;
        }
        let mut uring = Uring {
            ring,
            buf_entries,
            buf_data,
            buf_mask: config.recv_buffers - 1,
            buf_tail: 0,
            recv_buffer_bytes: config.recv_buffer_bytes,
            start: Instant::now(),
            cq_overflows: 0,
        };
        for bid in 0..config.recv_buffers {
            uring.recycle(bid);
        }
        Ok(uring)
    }

    /// Makes the calling thread the ring's one submitter.
    pub fn enable(&self) -> io::Result<()> {
        self.ring
            .submitter()
            .register_enable_rings()
            .map_err(|e| setup_error("enabling the ring", e))
    }

    fn build(op: Op) -> squeue::Entry {
        match op {
            Op::AcceptMulti { listener } => opcode::AcceptMulti::new(Fd(listener))
                .flags(libc::SOCK_CLOEXEC)
                .build(),
            Op::RecvMulti { fd } => opcode::RecvMulti::new(Fd(fd), RECV_BUFFER_GROUP).build(),
            Op::Send { fd, ptr, len } => opcode::Send::new(Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build(),
            Op::SendVectored { fd, msg } => opcode::SendMsg::new(Fd(fd), msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build(),
            Op::SendZeroCopy {
                fd,
                ptr,
                len,
                buf_index,
            } => opcode::SendZc::new(Fd(fd), ptr, len)
                .buf_index(Some(buf_index))
                .flags(libc::MSG_NOSIGNAL)
                .build(),
            Op::Cancel { target } => opcode::AsyncCancel::new(target).build(),
            Op::Close { fd } => opcode::Close::new(Fd(fd)).build(),
            Op::Wake { ring_fd, user_data } => {
                opcode::MsgRingData::new(Fd(ring_fd), 0, user_data, None)
                    .build()
                    .flags(squeue::Flags::SKIP_SUCCESS)
            }
        }
    }
}

impl Ring for Uring {
    fn push(&mut self, op: Op, user_data: u64) {
        let entry = Self::build(op).user_data(user_data);
        loop {
            // SAFETY: the Op contract makes every pointer outlive the operation.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // Full: hand what is queued to the kernel to make room.
            if let Err(err) = self.ring.submit() {
                if err.raw_os_error() != Some(libc::EBUSY)
                    && err.raw_os_error() != Some(libc::EINTR)
                {
                    panic!("io_uring_enter failed while submitting: {err}");
                }
            }
        }
    }

    fn submit_and_wait(&mut self, timeout_ms: u32) -> io::Result<()> {
        let ts = Timespec::new()
            .sec(timeout_ms as u64 / 1000)
            .nsec((timeout_ms % 1000) * 1_000_000);
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(err) => match err.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => Ok(()),
                _ => Err(err),
            },
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut cq = self.ring.completion();
        cq.sync();
        self.cq_overflows = cq.overflow() as u64;
        out.extend(cq.map(|c: cqueue::Entry| Completion {
            user_data: c.user_data(),
            result: c.result(),
            flags: c.flags(),
        }));
    }

    fn buffer(&self, buffer_id: u16, len: usize) -> &[u8] {
        assert!(buffer_id <= self.buf_mask && len <= self.recv_buffer_bytes as usize);
        // The kernel wrote `len` bytes at this buffer and will not touch it
        // again until it is recycled.
        self.buf_data
            .bytes(buffer_id as usize * self.recv_buffer_bytes as usize, len)
    }

    fn recycle(&mut self, buffer_id: u16) {
        assert!(buffer_id <= self.buf_mask);
        let base = self.buf_entries.as_mut_ptr() as *mut BufRingEntry;
        let slot = (self.buf_tail & self.buf_mask) as usize;
        // SAFETY: slot < entries; the kernel reads entries only below the
        // published tail, which is advanced after the entry is written.
        unsafe {
            let entry = &mut *base.add(slot);
            entry.set_addr(
                self.buf_data
                    .ptr(buffer_id as usize * self.recv_buffer_bytes as usize)
                    as u64,
            );
            entry.set_len(self.recv_buffer_bytes);
            entry.set_bid(buffer_id);
            self.buf_tail = self.buf_tail.wrapping_add(1);
            let tail = BufRingEntry::tail(base) as *const AtomicU16;
            (*tail).store(self.buf_tail, Ordering::Release);
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn wall_ns(&self) -> u64 {
        cluecast_sys::realtime_ns()
    }

    fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    fn cq_overflows(&self) -> u64 {
        self.cq_overflows
    }

    fn peer_ip(&self, fd: RawFd) -> Option<IpAddr> {
        cluecast_sys::peer_addr(fd).ok().map(|a| a.ip())
    }
}

/// The wake-up line of a thread that is not a shard (the storage threads): a
/// small ring of its own, so shards ring it with the same MSG_RING they use
/// for each other, and it rings their rings back. It carries no I/O.
pub struct Doorbell {
    ring: IoUring,
}

impl Doorbell {
    /// Wake-ups in flight at once; more would only be redundant.
    const ENTRIES: u32 = 64;

    pub fn new() -> io::Result<Doorbell> {
        let ring = IoUring::builder()
            .setup_cqsize(Self::ENTRIES * 4)
            .build(Self::ENTRIES)
            .map_err(|e| setup_error("io_uring_setup (storage doorbell)", e))?;
        Ok(Doorbell { ring })
    }

    /// The descriptor shards target with `Op::Wake`.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Posts a wake-up on another ring (a shard's), as a completion the
    /// shard knows to ignore.
    pub fn ring(&mut self, target: RawFd) {
        let wake = Token::new(OpKind::Wake, 0, 0).encode();
        let entry = opcode::MsgRingData::new(Fd(target), 0, wake, None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS);
        // SAFETY: MSG_RING reads no user memory.
        while unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.submit_or_panic();
            self.ring.completion().for_each(drop);
        }
        self.submit_or_panic();
    }

    fn submit_or_panic(&mut self) {
        if let Err(err) = self.ring.submit() {
            if !matches!(err.raw_os_error(), Some(libc::EBUSY) | Some(libc::EINTR)) {
                panic!("io_uring_enter failed on the storage doorbell: {err}");
            }
        }
    }

    /// Sleeps until rung or `timeout_ms` passes, then forgets the rings.
    pub fn wait(&mut self, timeout_ms: u32) {
        let ts = Timespec::new()
            .sec(timeout_ms as u64 / 1000)
            .nsec((timeout_ms % 1000) * 1_000_000);
        let args = SubmitArgs::new().timespec(&ts);
        if let Err(err) = self.ring.submitter().submit_with_args(1, &args) {
            if !matches!(
                err.raw_os_error(),
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
            ) {
                panic!("io_uring_enter failed on the storage doorbell: {err}");
            }
        }
        self.ring.completion().for_each(drop);
    }
}
