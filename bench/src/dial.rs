//! Connecting from an address of our choosing (`cluecast_sys::connect_from`),
//! and telling a connection turned away before WELCOME (wire.rs's
//! `Unwelcome`) from one that failed otherwise. `storm --attack`
//! needs both: its attackers (attack.rs) and newcomers (newcomers.rs) each
//! come from loopback addresses other than 127.0.0.1, which the appliance
//! counts as remote sources, and a newcomer turned away waits the GOAWAY's
//! retry hint before trying again.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::net;
use crate::tls::{TlsClient, TlsStream};
use crate::wire::{self, Connected, Unwelcome};

/// Why a connection and its subscription (fanload's `join`) failed.
#[derive(Debug)]
pub enum JoinError {
    /// The appliance did not welcome it (a newcomer tries again).
    Unwelcome(Unwelcome),
    /// Anything else.
    Failed(String),
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Unwelcome(u) => u.fmt(f),
            JoinError::Failed(why) => f.write_str(why),
        }
    }
}

impl From<String> for JoinError {
    fn from(why: String) -> JoinError {
        JoinError::Failed(why)
    }
}

impl From<Unwelcome> for JoinError {
    fn from(u: Unwelcome) -> JoinError {
        JoinError::Unwelcome(u)
    }
}

impl From<JoinError> for String {
    fn from(e: JoinError) -> String {
        e.to_string()
    }
}

/// [`net::tcp_connect`] from the address `source` (any when None).
pub fn tcp_connect_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, String> {
    let Some(from) = source else {
        return net::tcp_connect(addr, timeout);
    };
    let failed = |e: io::Error| format!("connecting to {addr} from {from}: {e}");
    let stream = cluecast_sys::connect_from(from, addr, true).map_err(failed)?;
    if stream.peer_addr().is_err() {
        let mut fd = net::pollfd(stream.as_raw_fd(), libc::POLLOUT);
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut fd, 1, ms) } {
            0 => return Err(failed(io::ErrorKind::TimedOut.into())),
            n if n < 0 => return Err(failed(io::Error::last_os_error())),
            _ => {}
        }
    }
    if let Some(e) = stream.take_error().map_err(failed)? {
        return Err(failed(e));
    }
    stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_nodelay(true))
        .map_err(|e| format!("socket options: {e}"))?;
    Ok(stream)
}

/// Connects from `source` (any when None) and completes HELLO / WELCOME,
/// saying how it was turned away if it was.
pub fn connect_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
    client_id: &str,
    timeout: Duration,
) -> Result<Connected, Unwelcome> {
    let stream = tcp_connect_from(addr, source, timeout)?;
    wire::hello(stream, client_id, timeout)
}

/// [`connect_from`] with the TLS handshake first and HELLO / WELCOME over
/// it.
pub fn connect_tls_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
    client_id: &str,
    timeout: Duration,
    tls: &TlsClient,
) -> Result<Connected<TlsStream>, Unwelcome> {
    let tcp = tcp_connect_from(addr, source, timeout)?;
    let stream = tls.handshake(tcp, Instant::now() + timeout)?;
    wire::hello(stream, client_id, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluecast_proto::{Frame, GoAway, GoAwayReason};
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn a_connection_comes_from_its_source_and_says_why_it_was_turned_away() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let source = IpAddr::from([127, 3, 0, 9]);
        let server = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            // Its HELLO read first: closing on unread bytes would reset
            // the connection, the GOAWAY perhaps lost.
            let mut hello = [0u8; 256];
            assert!(s.read(&mut hello).unwrap() > 0);
            let mut goaway = Vec::new();
            Frame::GoAway(GoAway {
                reason: GoAwayReason::ServerFull,
                retry_after_ms: 321,
                reconnect: b"",
                resume: vec![],
            })
            .encode(&mut goaway);
            s.write_all(&goaway).unwrap();
            peer.ip()
        });
        let timeout = Duration::from_secs(5);
        let Err(u) = connect_from(addr, Some(source), "newcomer", timeout) else {
            panic!("welcomed by a server that sent GOAWAY");
        };
        assert_eq!(server.join().unwrap(), source);
        assert_eq!(u.retry_after_ms, Some(321), "{u}");
        assert!(u.why.contains("GOAWAY ServerFull"), "{u}");
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let Err(u) = connect_from(closed, Some(source), "newcomer", timeout) else {
            panic!("connected to a closed port");
        };
        assert_eq!(u.retry_after_ms, None, "refused at connect: no hint");
    }
}
