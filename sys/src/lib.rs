//! cluecast-sys: the one place cluecast makes raw OS calls outside the ring
//! driver. Each function wraps one concern (CPU affinity, limits, sockets,
//! memory, signals, randomness) and turns failures into `io::Error`s that
//! name what failed; `memory` holds what the host offers for placing memory
//! (huge pages, NUMA nodes), `steer` the steering of new connections,
//! `notify` the service manager's notify socket, and `spsc` the channel
//! between shards.

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

pub mod memory;
pub mod notify;
pub mod spsc;
pub mod steer;

fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let err = io::Error::last_os_error();
        Err(io::Error::new(err.kind(), format!("{what}: {err}")))
    } else {
        Ok(ret)
    }
}

/// The CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        check(
            libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set),
            "sched_getaffinity",
        )?;
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: as above; the set names one CPU below CPU_SETSIZE.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpu {cpu} is beyond CPU_SETSIZE"),
            ));
        }
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        check(
            libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set),
            &format!("sched_setaffinity(cpu {cpu})"),
        )?;
    }
    Ok(())
}

/// Soft and hard limit of one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

fn get_rlimit(resource: libc::__rlimit_resource_t, name: &str) -> io::Result<Limit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    check(unsafe { libc::getrlimit(resource, &mut lim) }, name)?;
    Ok(Limit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// Raises the open-file soft limit to the hard limit and returns the result.
pub fn raise_nofile_limit() -> io::Result<Limit> {
    let lim = get_rlimit(libc::RLIMIT_NOFILE, "getrlimit(RLIMIT_NOFILE)")?;
    if lim.soft < lim.hard {
        let raised = libc::rlimit {
            rlim_cur: lim.hard,
            rlim_max: lim.hard,
        };
        // SAFETY: setrlimit reads one rlimit.
        check(
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) },
            "setrlimit(RLIMIT_NOFILE)",
        )?;
    }
    get_rlimit(libc::RLIMIT_NOFILE, "getrlimit(RLIMIT_NOFILE)")
}

/// The locked-memory limit, which bounds registered io_uring buffers for
/// processes without CAP_IPC_LOCK.
pub fn memlock_limit() -> io::Result<Limit> {
    get_rlimit(libc::RLIMIT_MEMLOCK, "getrlimit(RLIMIT_MEMLOCK)")
}

/// A TCP listener with SO_REUSEPORT, so each shard can own one and the kernel
/// spreads new connections across them.
pub fn listen_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let fd = tcp_socket(addr, 0)?;
    set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    // Accepted sockets inherit TCP_NODELAY: small frames must not wait for Nagle.
    set_int_option(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    bind(&fd, addr)?;
    // SAFETY: listen() on a descriptor we own.
    check(
        unsafe { libc::listen(fd.as_raw_fd(), backlog) },
        &format!("listen {addr}"),
    )?;
    Ok(fd)
}

/// A TCP connection to `to` from the local address `from`: a client that
/// looks like another host, e.g. from 127.0.0.2 on loopback. With
/// `nonblocking`, the connect is started and the socket returned at once
/// (EINPROGRESS); wait for it to become writable (`peer_addr` succeeds
/// once it has connected).
pub fn connect_from(from: IpAddr, to: SocketAddr, nonblocking: bool) -> io::Result<TcpStream> {
    let flags = if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    let fd = tcp_socket(to, flags)?;
    // The port is picked at connect, per destination: a bind to port 0
    // would take one of the host's ports for every connection, and a load
    // generator opens tens of thousands.
    set_int_option(
        fd.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        1,
    )?;
    bind(&fd, SocketAddr::new(from, 0))?;
    let (remote, remote_len) = sockaddr_from(to);
    // SAFETY: `remote` holds a valid sockaddr of `remote_len` bytes.
    let connected = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &remote as *const libc::sockaddr_storage as *const libc::sockaddr,
            remote_len,
        )
    };
    let in_progress = || io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS);
    if connected < 0 && !(nonblocking && in_progress()) {
        check(connected, &format!("connect {to} from {from}"))?;
    }
    Ok(TcpStream::from(fd))
}

/// A new TCP socket of `addr`'s family (close-on-exec, plus `flags`).
fn tcp_socket(addr: SocketAddr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket() returns a new descriptor we own from here on.
    unsafe {
        let raw = check(
            libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags, 0),
            "socket",
        )?;
        Ok(OwnedFd::from_raw_fd(raw))
    }
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr_from(addr);
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    check(
        unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
                len,
            )
        },
        &format!("bind {addr}"),
    )?;
    Ok(())
}

/// The address a socket is bound to (useful after binding port 0).
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    socket_name(fd, libc::getsockname, "getsockname")
}

/// The address a connected socket's peer connects from.
pub fn peer_addr(fd: RawFd) -> io::Result<SocketAddr> {
    socket_name(fd, libc::getpeername, "getpeername")
}

type NameCall =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn socket_name(fd: RawFd, call: NameCall, what: &'static str) -> io::Result<SocketAddr> {
    // SAFETY: getsockname/getpeername write at most `len` bytes into storage.
    unsafe {
        let mut storage: libc::sockaddr_storage = mem::zeroed();
        let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        check(
            call(
                fd,
                &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr,
                &mut len,
            ),
            what,
        )?;
        sockaddr_to(&storage)
    }
}

/// Reads an integer socket option.
pub fn get_int_option(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int.
    check(
        unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                &mut value as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        },
        "getsockopt",
    )?;
    Ok(value)
}

/// Sets an integer socket option.
pub fn set_int_option(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int.
    check(
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &value as *const libc::c_int as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        },
        "setsockopt",
    )?;
    Ok(())
}

fn sockaddr_from(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data large enough for either family.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn sockaddr_to(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        family => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected address family {family}"),
        )),
    }
}

/// The pages a Region is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// Reserved 2 MiB huge pages (hugetlb, `vm.nr_hugepages`).
    HugeTlb,
    /// Normal pages advised to be transparent huge pages (MADV_HUGEPAGE):
    /// the kernel backs them with 2 MiB pages where it finds them.
    Transparent,
    /// 4 KiB pages: transparent huge pages refused (MADV_NOHUGEPAGE) or
    /// disabled on the host.
    Normal,
}

impl PageKind {
    pub fn name(self) -> &'static str {
        match self {
            PageKind::HugeTlb => "hugetlb",
            PageKind::Transparent => "thp",
            PageKind::Normal => "normal",
        }
    }
}

/// An anonymous, private memory mapping, released on drop.
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    pages: PageKind,
}

// SAFETY: the region is plain memory; who may touch which bytes is decided by
// its users (each shard owns a disjoint part).
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

/// The size of a huge page, reserved or transparent.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;
const PAGE_BYTES: usize = 4096;

/// Huge pages a region of `len` bytes takes when `Region::map` gets them.
pub fn huge_pages_for(len: usize) -> usize {
    len.div_ceil(HUGE_PAGE_BYTES)
}

impl Region {
    /// Maps `len` bytes of `pages`, bound to NUMA node `node` (preferred,
    /// so a node short of memory lends from another rather than failing)
    /// before any page is touched, then zeroes and faults every page in, so
    /// the appliance never takes a page fault on the event path.
    /// `HugeTlb` fails with ENOMEM when too few 2 MiB pages are reserved;
    /// `Transparent` comes back as `Normal` when the host disabled them.
    pub fn map(len: usize, pages: PageKind, node: Option<usize>) -> io::Result<Region> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty region",
            ));
        }
        let mut region = match pages {
            PageKind::HugeTlb => Region::map_huge_tlb(len)?,
            PageKind::Transparent | PageKind::Normal => Region::map_aligned(len)?,
        };
        if let Some(node) = node {
            // SAFETY: the range is this region's mapping, not yet touched.
            unsafe { memory::prefer_node(region.as_ptr(), region.len, node)? };
        }
        let start = region.as_ptr() as *mut libc::c_void;
        // SAFETY: advice and population act on this region's own mapping;
        // advice is best effort.
        unsafe {
            match pages {
                PageKind::Transparent => libc::madvise(start, region.len, libc::MADV_HUGEPAGE),
                PageKind::Normal => libc::madvise(start, region.len, libc::MADV_NOHUGEPAGE),
                PageKind::HugeTlb => 0,
            };
            if libc::madvise(start, region.len, libc::MADV_POPULATE_WRITE) != 0 {
                // Before Linux 5.14: touch every page by hand.
                for page in (0..region.len).step_by(PAGE_BYTES) {
                    std::ptr::write_volatile(region.as_ptr().add(page), 0);
                }
            }
        }
        region.pages = match pages {
            PageKind::Transparent if !memory::transparent_huge_pages_enabled() => PageKind::Normal,
            pages => pages,
        };
        Ok(region)
    }

    /// Reserved 2 MiB pages, `len` rounded up to whole pages. The kernel
    /// promises the pages at mmap, so faulting them in later cannot fail.
    fn map_huge_tlb(len: usize) -> io::Result<Region> {
        let len = huge_pages_for(len) * HUGE_PAGE_BYTES;
        let ptr = mmap_anonymous(
            len,
            libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
            "reserved 2 MiB pages",
        )?;
        Ok(Region {
            ptr,
            len,
            pages: PageKind::HugeTlb,
        })
    }

    /// Normal pages in a 2 MiB-aligned window (transparent huge pages need
    /// the alignment), `len` rounded up to whole 4 KiB pages: maps 2 MiB more
    /// than asked and gives back the ends.
    fn map_aligned(len: usize) -> io::Result<Region> {
        let len = len.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        let padded = len + HUGE_PAGE_BYTES;
        let raw = mmap_anonymous(padded, 0, "normal pages")?.as_ptr() as usize;
        let start = raw.div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES;
        let head = start - raw;
        let tail = padded - head - len;
        // SAFETY: head and tail are the unused ends of the mapping just made;
        // [start, start + len) stays mapped.
        unsafe {
            if head > 0 {
                libc::munmap(raw as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
        }
        Ok(Region {
            ptr: NonNull::new(start as *mut u8).expect("inside a mapping"),
            len,
            pages: PageKind::Normal,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pages(&self) -> PageKind {
        self.pages
    }

    /// The NUMA node of the first page of every 2 MiB of the region (at
    /// most 512 samples), as the kernel reports them (move_pages).
    pub fn page_nodes(&self) -> io::Result<Vec<usize>> {
        let stride = self.len.div_ceil(512).next_multiple_of(HUGE_PAGE_BYTES);
        // SAFETY: every sampled address lies inside this mapping.
        unsafe { memory::page_nodes(self.as_ptr(), self.len, stride) }
    }

    /// Cuts the region into consecutive spans of the given lengths, each
    /// starting on a 4 KiB page, one per owner. The spans borrow nothing:
    /// the caller keeps the Region alive (and mapped) for as long as any
    /// span is used.
    pub fn split(&self, lens: &[usize]) -> Vec<Span> {
        let mut offset = 0;
        lens.iter()
            .map(|&len| {
                assert!(
                    len > 0 && offset + len <= self.len,
                    "region of {} bytes is too small for spans of {lens:?} bytes",
                    self.len
                );
                // SAFETY: offset + len <= self.len, inside the mapping.
                let ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(offset)) };
                offset = (offset + len).next_multiple_of(PAGE_BYTES);
                Span { ptr, len }
            })
            .collect()
    }

    /// Cuts the region into `count` equal, page-aligned spans.
    pub fn spans(&self, count: usize) -> Vec<Span> {
        let each = self.len / count / PAGE_BYTES * PAGE_BYTES;
        self.split(&vec![each; count])
    }
}

/// A fresh private anonymous mapping of `len` bytes, read and write, of
/// the pages `what` names.
fn mmap_anonymous(len: usize, flags: libc::c_int, what: &str) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh anonymous mapping aliases nothing.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("mmap of {len} bytes of {what}: {err}"),
        ));
    }
    Ok(NonNull::new(ptr as *mut u8).expect("mmap returned null"))
}

/// A disjoint part of a Region, owned by one thread. Reading and writing go
/// through bounds-checked methods; `ptr` hands the kernel an address.
pub struct Span {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: spans of one region never overlap; each is used by one owner.
unsafe impl Send for Span {}

impl Span {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset <= self.len && len <= self.len - offset);
        // SAFETY: bounds checked above; the memory is mapped while the span is used.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) }
    }

    pub fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset <= self.len && len <= self.len - offset);
        // SAFETY: as above, and &mut self rules out other borrows of the span.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) }
    }

    /// The span as one iovec, for registering it with io_uring.
    pub fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.as_ptr() as *mut libc::c_void,
            iov_len: self.len,
        }
    }

    /// The address of `offset`, for the kernel to read from.
    pub fn ptr(&self, offset: usize) -> *const u8 {
        assert!(offset < self.len);
        // SAFETY: in bounds.
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// The start of the span, for memory the kernel and this thread share
    /// (a provided-buffer ring), written through raw pointers.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len is exactly the mapping this Region made.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

fn shutdown_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread (and every thread it
/// spawns afterwards) so they are taken only by `wait_shutdown_signal`, and
/// ignores SIGPIPE so a peer that vanished shows up as EPIPE, not death.
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_sigset();
    // SAFETY: set is initialised; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(())
}

/// Waits up to `timeout_ms` for SIGTERM or SIGINT; returns the signal taken.
pub fn wait_shutdown_signal(timeout_ms: u64) -> io::Result<Option<i32>> {
    let set = shutdown_sigset();
    let timeout = libc::timespec {
        tv_sec: (timeout_ms / 1000) as libc::time_t,
        tv_nsec: ((timeout_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: set and timeout are initialised; siginfo is not wanted.
    let ret = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
    if ret >= 0 {
        return Ok(Some(ret));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
        _ => Err(err),
    }
}

/// Closes a descriptor outside the ring (start-up and error paths only).
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns fd and does not use it again.
    unsafe { libc::close(fd) };
}

/// Fills `buf` from the kernel's random source.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most the remaining length.
        let ret = unsafe {
            libc::getrandom(
                buf[filled..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - filled,
                0,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        filled += ret as usize;
    }
    Ok(())
}

/// A random u64 from the kernel.
pub fn random_u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    random_bytes(&mut bytes)?;
    Ok(u64::from_ne_bytes(bytes))
}

/// Wall-clock nanoseconds since the Unix epoch.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_cpus_is_not_empty_and_pin_works() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        pin_current_thread(cpus[0]).unwrap();
        assert_eq!(allowed_cpus().unwrap(), vec![cpus[0]]);
    }

    #[test]
    fn nofile_soft_limit_reaches_hard() {
        let lim = raise_nofile_limit().unwrap();
        assert_eq!(lim.soft, lim.hard);
    }

    #[test]
    fn listener_binds_port_zero_and_reports_address() {
        let fd = listen_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = local_addr(fd.as_raw_fd()).unwrap();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        // A second listener on the same port succeeds thanks to SO_REUSEPORT.
        let second = listen_reuseport(addr, 16).unwrap();
        assert_eq!(local_addr(second.as_raw_fd()).unwrap(), addr);
        let nodelay = get_int_option(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY);
        assert_eq!(nodelay.unwrap(), 1);
    }

    #[test]
    fn region_is_zeroed_and_writable() {
        let region = Region::map(1 << 20, PageKind::Transparent, None).unwrap();
        assert!(region.len() >= 1 << 20);
        // SAFETY: the region is ours and len bytes long.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), region.len()) };
        assert!(bytes.iter().all(|&b| b == 0));
        bytes[0] = 7;
        assert_eq!(bytes[0], 7);
    }

    #[test]
    fn normal_pages_report_what_the_host_gives() {
        let thp = Region::map(5 << 20, PageKind::Transparent, None).unwrap();
        assert_eq!(
            thp.as_ptr() as usize % HUGE_PAGE_BYTES,
            0,
            "THP needs 2 MiB alignment"
        );
        let expected = match memory::transparent_huge_pages_enabled() {
            true => PageKind::Transparent,
            false => PageKind::Normal,
        };
        assert_eq!(thp.pages(), expected);
        let normal = Region::map(5000, PageKind::Normal, None).unwrap();
        assert_eq!((normal.pages(), normal.len()), (PageKind::Normal, 8192));
    }

    #[test]
    fn split_spans_start_on_pages_and_stay_inside() {
        let region = Region::map(1 << 20, PageKind::Normal, None).unwrap();
        let spans = region.split(&[5000, 100, 4096]);
        let base = region.as_ptr() as usize;
        let starts: Vec<usize> = spans.iter().map(|s| s.ptr(0) as usize - base).collect();
        assert_eq!(starts, [0, 8192, 12288]);
        assert_eq!(spans[1].len(), 100);
        let even = region.spans(3);
        assert!(even.iter().all(|s| s.len() == 348160));
    }

    #[test]
    fn memory_lands_on_the_node_it_is_bound_to() {
        let cpus = allowed_cpus().unwrap();
        let Some(node) = memory::cpu_node(cpus[0]) else {
            println!(
                "SKIPPED: this kernel reports no NUMA node for cpu {}",
                cpus[0]
            );
            return;
        };
        for pages in [PageKind::Transparent, PageKind::Normal] {
            let region = Region::map(8 << 20, pages, Some(node)).unwrap();
            let nodes = region.page_nodes().unwrap();
            assert_eq!(nodes.len(), 4, "one sample per 2 MiB");
            assert!(nodes.iter().all(|&n| n == node), "{pages:?}: {nodes:?}");
        }
        // A node that is not online is refused before anything is touched.
        let offline = (0..64)
            .find(|n| !std::path::Path::new(&format!("/sys/devices/system/node/node{n}")).exists())
            .unwrap();
        let err = Region::map(1 << 20, PageKind::Transparent, Some(offline))
            .err()
            .expect("binding to an offline node fails");
        assert!(
            err.to_string().contains(&format!("NUMA node {offline}")),
            "{err}"
        );
        // Nodes are numbered from 0: below the first missing one, all exist.
        if offline == 1 {
            println!("one NUMA node here (node {node}): placement across nodes not exercised");
        }
    }

    /// Reserves `count` more 2 MiB pages for the closure, then gives them back.
    fn with_huge_pages_reserved(count: u64, f: impl FnOnce()) {
        const NR: &str = "/proc/sys/vm/nr_hugepages";
        let read = || -> u64 { std::fs::read_to_string(NR).unwrap().trim().parse().unwrap() };
        let before = read();
        std::fs::write(NR, (before + count).to_string()).unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        std::fs::write(NR, read().saturating_sub(count).to_string()).unwrap();
        result.unwrap();
    }

    #[test]
    fn huge_tlb_pages_are_taken_when_reserved_and_refused_when_not() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIPPED: reserving huge pages needs root");
            return;
        }
        let available = memory::huge_pages_available().unwrap() as usize;
        let err = Region::map((available + 1) * HUGE_PAGE_BYTES, PageKind::HugeTlb, None)
            .err()
            .expect("more huge pages than are free");
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory, "{err}");
        assert!(err.to_string().contains("reserved 2 MiB pages"), "{err}");

        with_huge_pages_reserved(2, || {
            let available = memory::huge_pages_available().unwrap();
            assert!(
                available >= 2,
                "the kernel found only {available} free 2 MiB pages"
            );
            let node = memory::cpu_node(allowed_cpus().unwrap()[0]);
            let region = Region::map(3 << 20, PageKind::HugeTlb, node).unwrap();
            assert_eq!((region.pages(), region.len()), (PageKind::HugeTlb, 4 << 20));
            assert_eq!(memory::huge_pages_available().unwrap(), available - 2);
            let nodes = region.page_nodes().unwrap();
            assert_eq!(nodes.len(), 2);
            if let Some(node) = node {
                assert!(nodes.iter().all(|&n| n == node), "{nodes:?}");
            }
            // SAFETY: the region is ours and len bytes long.
            let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len()) };
            assert!(bytes.iter().all(|&b| b == 0));
        });
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(random_u64().unwrap(), random_u64().unwrap());
    }
}
