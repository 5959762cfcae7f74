//! Sockets outside the ring: reuseport listeners, connections from a chosen
//! local address, socket addresses and integer options, and closing a
//! descriptor on start-up and error paths.

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::check;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
