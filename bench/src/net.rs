//! Sockets as every load generator uses them, whatever the protocol: TCP
//! connects with no delay, blocking handshake reads against a deadline,
//! non-blocking writes, the kernel's receive timestamps and an epoll
//! wrapper. A leaf: it knows no protocol and no other module.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use cluecast_proto::{read_into, Filled};

/// A blocking connection in its handshake: plain TCP, or TLS over it
/// (tls.rs).
pub trait Blocking: Read + Write {
    /// The socket under it.
    fn tcp(&self) -> &TcpStream;
}

impl Blocking for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// Sets the read timeout of `stream` to what is left until `deadline`;
/// Err when nothing is.
pub fn read_timeout_until<S: Blocking>(
    stream: &S,
    deadline: Instant,
    what: &str,
) -> Result<(), String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(format!("{what}: no answer in time"));
    }
    stream
        .tcp()
        .set_read_timeout(Some(left))
        .map_err(|e| format!("socket options: {e}"))
}

/// What a handshake makes of one read: no data yet is for the caller's
/// deadline to judge; the end of the stream and failures end it.
pub fn handshake_read(filled: io::Result<Filled>, what: &str) -> Result<(), String> {
    match filled {
        Ok(Filled::Bytes(_) | Filled::NotYet) => Ok(()),
        Ok(Filled::Closed) => Err(format!("{what}: the server closed the connection")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// One read of a blocking handshake: appends what arrives before
/// `deadline` to `buf` (nothing, if the read was interrupted); Err when the
/// deadline has passed or the server closed the connection. Every other
/// protocol's handshake waits with it (the appliance's: wire.rs's
/// `await_frame`).
pub fn read_more<S: Blocking>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    deadline: Instant,
    what: &str,
) -> Result<(), String> {
    read_timeout_until(stream, deadline, what)?;
    handshake_read(read_into(stream, buf, 4096), what)
}

/// A TCP connection with no delay, as every generator connection, of
/// every protocol.
pub fn tcp_connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("socket options: {e}"))?;
    Ok(stream)
}

/// A pollfd for `fd`.
pub fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// One write() of `out` to a non-blocking socket, dropping what went; a
/// full socket or an interrupted write is not an error.
pub fn write_some(stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    match stream.write(out) {
        Ok(n) => {
            out.drain(..n);
            Ok(())
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Writes `out[*pos..]` as far as a non-blocking socket takes it (a full
/// socket ends it, an interrupted write is retried), then compacts: `out`
/// emptied once all of it went, its written head dropped once that reaches
/// `compact_at`. Ok(true) when every byte went.
pub fn write_backlog(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    pos: &mut usize,
    compact_at: usize,
) -> Result<bool, String> {
    while *pos < out.len() {
        match stream.write(&out[*pos..]) {
            Ok(0) => return Err("writing: the socket took nothing".into()),
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("writing: {e}")),
        }
    }
    if *pos == out.len() {
        out.clear();
        *pos = 0;
        Ok(true)
    } else {
        if *pos >= compact_at {
            out.drain(..*pos);
            *pos = 0;
        }
        Ok(false)
    }
}

/// Asks the kernel to stamp received data with its arrival time (read
/// back by [`recv_stamped`]).
pub fn enable_rx_timestamps(stream: &TcpStream) -> io::Result<()> {
    cluecast_sys::set_int_option(
        stream.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMPNS,
        1,
    )
}

/// One recvmsg() on `fd` into `buf`: the bytes read (0: end of stream) and
/// the kernel's receive time of the data (CLOCK_REALTIME ns) when the
/// socket has [`enable_rx_timestamps`] and the kernel stamped it. For TCP
/// that is the time the last segment read reached the socket: it does not
/// include how long the data then waited for this process to read it.
#[inline]
pub fn recv_stamped(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one timestamp message and then some; u64 for alignment.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: iov and control point at live buffers of the given sizes.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, rx_timestamp(&msg)))
}

/// The SCM_TIMESTAMPNS of a message recvmsg() filled, in ns.
fn rx_timestamp(msg: &libc::msghdr) -> Option<u64> {
    let want = std::mem::size_of::<libc::timespec>();
    // SAFETY: `msg` was filled by recvmsg; the CMSG_* helpers stay within
    // msg_controllen, and the length is checked before the data is read.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::SOL_SOCKET
                && h.cmsg_type == libc::SCM_TIMESTAMPNS
                && h.cmsg_len as usize >= libc::CMSG_LEN(want as u32) as usize
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let ns = (ts.tv_sec as u64)
                    .checked_mul(1_000_000_000)?
                    .checked_add(ts.tv_nsec as u64)?;
                return (ns > 0).then_some(ns);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// An epoll instance; tokens are the connection indices.
pub struct Epoll {
    fd: i32,
    /// epoll_pwait2 (ns timeouts) is missing: fall back to epoll_wait.
    ms_only: bool,
}

impl Epoll {
    pub fn new() -> Result<Epoll, String> {
        // SAFETY: plain system call.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(format!("epoll_create1: {}", io::Error::last_os_error()));
        }
        Ok(Epoll { fd, ms_only: false })
    }

    pub fn ctl(&self, op: i32, fd: i32, token: usize, events: u32) -> Result<(), String> {
        let mut ev = libc::epoll_event {
            events,
            u64: token as u64,
        };
        // SAFETY: `ev` is a valid epoll_event for the call's duration.
        if unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) } != 0 {
            return Err(format!("epoll_ctl: {}", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Waits up to `timeout` for readiness; fills `events`, returns how
    /// many.
    pub fn wait(
        &mut self,
        events: &mut [libc::epoll_event],
        timeout: Duration,
    ) -> io::Result<usize> {
        let max = events.len().min(i32::MAX as usize) as i32;
        if !self.ms_only {
            let ts = libc::timespec {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            // SAFETY: events has room for `max`, ts lives through the call,
            // no signal mask.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.fd,
                    events.as_mut_ptr(),
                    max,
                    &ts as *const libc::timespec,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOSYS) {
                return Err(e);
            }
            self.ms_only = true;
        }
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: as above.
        let n = unsafe { libc::epoll_wait(self.fd, events.as_mut_ptr(), max, ms) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe {
            libc::close(self.fd);
        }
    }
}

pub const READABLE: u32 = libc::EPOLLIN as u32;
pub const WRITABLE: u32 = libc::EPOLLOUT as u32;
