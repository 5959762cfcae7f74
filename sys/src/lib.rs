//! cluecast-sys: the one place cluecast makes raw OS calls outside the ring
//! driver. Each function wraps one concern (CPU affinity, limits, sockets,
//! memory, signals, randomness) and turns failures into `io::Error`s that
//! name what failed.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

pub mod spsc;

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
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket() returns a new descriptor we own from here on.
    let fd = unsafe {
        let raw = check(
            libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0),
            "socket",
        )?;
        OwnedFd::from_raw_fd(raw)
    };
    set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    // Accepted sockets inherit TCP_NODELAY: small frames must not wait for Nagle.
    set_int_option(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    let (storage, len) = sockaddr_from(addr);
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    unsafe {
        check(
            libc::bind(
                fd.as_raw_fd(),
                &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
                len,
            ),
            &format!("bind {addr}"),
        )?;
        check(
            libc::listen(fd.as_raw_fd(), backlog),
            &format!("listen {addr}"),
        )?;
    }
    Ok(fd)
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

/// An anonymous, private memory mapping, released on drop.
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    huge_pages: bool,
}

// SAFETY: the region is plain memory; who may touch which bytes is decided by
// its users (each shard owns a disjoint part).
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

const HUGE_PAGE_BYTES: usize = 2 << 20;
/// Fault a range in, writable (Linux 5.14); not yet in the libc crate.
const MADV_POPULATE_WRITE: libc::c_int = 23;

impl Region {
    /// Maps `len` bytes, from reserved 2 MiB huge pages when `try_huge_pages`
    /// and enough are reserved, else from normal pages with transparent huge
    /// pages advised. The memory is zeroed and faulted in up front so the
    /// appliance never takes a page fault on the event path.
    pub fn map(len: usize, try_huge_pages: bool) -> io::Result<Region> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty region",
            ));
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        if try_huge_pages {
            let huge_len = len.div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES;
            // SAFETY: a fresh anonymous mapping aliases nothing.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    huge_len,
                    prot,
                    flags | libc::MAP_HUGETLB,
                    -1,
                    0,
                )
            };
            if ptr != libc::MAP_FAILED {
                return Ok(Region {
                    ptr: NonNull::new(ptr as *mut u8).expect("mmap returned null"),
                    len: huge_len,
                    huge_pages: true,
                });
            }
        }
        // Normal pages: map 2 MiB more than asked, keep a 2 MiB-aligned
        // window (transparent huge pages need the alignment), advise huge
        // pages, and only then fault the memory in, so it can come as huge
        // pages rather than being split into 4 KiB ones first.
        let padded = len + HUGE_PAGE_BYTES;
        let lazy = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: as above.
        let raw = unsafe { libc::mmap(std::ptr::null_mut(), padded, prot, lazy, -1, 0) };
        if raw == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(
                err.kind(),
                format!("mmap of {len} bytes: {err}"),
            ));
        }
        let start = (raw as usize).div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES;
        let head = start - raw as usize;
        let tail = padded - head - len;
        // SAFETY: head and tail are the unused ends of the mapping just made;
        // [start, start + len) stays mapped. Advice is best effort.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
            if libc::madvise(start as *mut libc::c_void, len, MADV_POPULATE_WRITE) != 0 {
                // Before Linux 5.14: touch every page by hand.
                for page in (0..len).step_by(4096) {
                    std::ptr::write_volatile((start + page) as *mut u8, 0);
                }
            }
        }
        Ok(Region {
            ptr: NonNull::new(start as *mut u8).expect("mmap returned null"),
            len,
            huge_pages: false,
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

    pub fn huge_pages(&self) -> bool {
        self.huge_pages
    }

    /// Cuts the region into `count` equal, page-aligned spans, one per owner.
    /// The spans borrow nothing: the caller keeps the Region alive (and
    /// mapped) for as long as any span is used.
    pub fn spans(&self, count: usize) -> Vec<Span> {
        const PAGE_BYTES: usize = 4096;
        let each = self.len / count / PAGE_BYTES * PAGE_BYTES;
        assert!(
            each > 0,
            "region of {} bytes is too small for {count} spans",
            self.len
        );
        (0..count)
            .map(|i| Span {
                // SAFETY: i * each + each <= len, inside the mapping.
                ptr: unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(i * each)) },
                len: each,
            })
            .collect()
    }
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

/// The NUMA node of a CPU, from sysfs (`/sys/devices/system/cpu/cpuN/nodeM`);
/// None where the kernel does not say (no NUMA support, a container
/// without sysfs).
pub fn numa_node(cpu: usize) -> Option<u32> {
    std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{cpu}"))
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix("node")?
                .parse()
                .ok()
        })
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
        let region = Region::map(1 << 20, false).unwrap();
        assert!(region.len() >= 1 << 20);
        // SAFETY: the region is ours and len bytes long.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), region.len()) };
        assert!(bytes.iter().all(|&b| b == 0));
        bytes[0] = 7;
        assert_eq!(bytes[0], 7);
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(random_u64().unwrap(), random_u64().unwrap());
    }

    #[test]
    fn numa_node_is_read_where_sysfs_has_it() {
        let cpu = allowed_cpus().unwrap()[0];
        let listed = std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{cpu}"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with("node"))
            })
            .unwrap_or(false);
        if !listed {
            eprintln!("SKIPPED: sysfs names no NUMA node for cpu {cpu}");
            return;
        }
        assert!(numa_node(cpu).is_some());
        assert_eq!(numa_node(usize::MAX), None);
    }
}
