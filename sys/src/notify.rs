//! The service manager's notification protocol (systemd's sd_notify): owns
//! reading $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID, and sending
//! `KEY=VALUE` datagrams to that socket. What to say, and when, is the
//! appliance's business.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Longest STATUS= text sent; the manager reads one datagram of a few KiB.
pub const STATUS_BYTES_MAX: usize = 512;

/// A connection to the service manager, present only when it asked for
/// notifications.
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    watchdog_interval_us: Option<u64>,
}

impl Notifier {
    /// The manager named in this process's environment; None when not run
    /// by one (no NOTIFY_SOCKET). A malformed variable is an error naming it.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let var = |name| std::env::var_os(name);
        Notifier::from_vars(
            var("NOTIFY_SOCKET").as_deref(),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// `from_env` on given values, `own_pid` standing for this process.
    pub fn from_vars(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&OsStr>,
        watchdog_pid: Option<&OsStr>,
        own_pid: u32,
    ) -> io::Result<Option<Notifier>> {
        let Some(name) = notify_socket.filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let address = socket_address(name)?;
        let socket = UnixDatagram::unbound()
            .map_err(|e| io::Error::new(e.kind(), format!("notify socket: {e}")))?;
        // A manager that stopped reading must not stall the caller.
        socket.set_nonblocking(true)?;
        let interval_us = watchdog_usec
            .map(|v| parse_positive("WATCHDOG_USEC", v))
            .transpose()?;
        let watched_pid = watchdog_pid
            .map(|v| parse_positive("WATCHDOG_PID", v))
            .transpose()?;
        // WATCHDOG_PID names the process the manager watches: pings from
        // any other (a child that inherited the variables) would not count.
        let watchdog_interval_us =
            interval_us.filter(|_| watched_pid.is_none_or(|p| p == own_pid as u64));
        Ok(Some(Notifier {
            socket,
            address,
            watchdog_interval_us,
        }))
    }

    /// How often the manager expects WATCHDOG=1, if it watches this process.
    pub fn watchdog_interval_us(&self) -> Option<u64> {
        self.watchdog_interval_us
    }

    /// Start-up is complete; `status` (shown by `systemctl status`) says
    /// what is served.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={}", status_text(status)))
    }

    /// The process is alive (resets the manager's watchdog timer).
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }

    /// Shutdown has begun; `status` says what it is doing.
    pub fn stopping(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STOPPING=1\nSTATUS={}", status_text(status)))
    }

    /// Asks the manager to wait `timeout_us` more for the current phase (start
    /// or stop); it never shortens the configured timeout.
    pub fn extend_timeout_us(&self, timeout_us: u64) -> io::Result<()> {
        self.send(&format!("EXTEND_TIMEOUT_USEC={timeout_us}"))
    }

    fn send(&self, message: &str) -> io::Result<()> {
        let sent = self
            .socket
            .send_to_addr(message.as_bytes(), &self.address)
            .map_err(|e| io::Error::new(e.kind(), format!("notifying the service manager: {e}")))?;
        if sent != message.len() {
            return Err(io::Error::other(format!(
                "notifying the service manager: sent {sent} of {} bytes",
                message.len()
            )));
        }
        Ok(())
    }
}

/// An absolute path, or an abstract name written with a leading '@'.
fn socket_address(name: &OsStr) -> io::Result<SocketAddr> {
    let bytes = name.as_bytes();
    let address = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(name),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "NOTIFY_SOCKET={} is neither an absolute path nor an abstract name \
                     (@name); other kinds (vsock) are not supported",
                    name.to_string_lossy()
                ),
            ))
        }
    };
    address.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("NOTIFY_SOCKET={}: {e}", name.to_string_lossy()),
        )
    })
}

fn parse_positive(what: &str, value: &OsStr) -> io::Result<u64> {
    value
        .to_str()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&v| v > 0)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{what}={} is not a positive integer",
                    value.to_string_lossy()
                ),
            )
        })
}

/// One line (the protocol separates fields by newlines), at most
/// STATUS_BYTES_MAX bytes, cut on a character boundary.
fn status_text(status: &str) -> String {
    let mut end = status.len().min(STATUS_BYTES_MAX);
    while !status.is_char_boundary(end) {
        end -= 1;
    }
    status[..end].replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    fn received(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("cluecast-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let manager = UnixDatagram::bind(&path).unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::from_vars(Some(path.as_os_str()), None, None, 1)
            .unwrap()
            .unwrap();
        assert_eq!(notifier.watchdog_interval_us(), None);
        notifier.ready("serving\nthings").unwrap();
        assert_eq!(received(&manager), "READY=1\nSTATUS=serving things");
        notifier.watchdog().unwrap();
        assert_eq!(received(&manager), "WATCHDOG=1");
        notifier.stopping("draining").unwrap();
        assert_eq!(received(&manager), "STOPPING=1\nSTATUS=draining");
        notifier.extend_timeout_us(7_000_000).unwrap();
        assert_eq!(received(&manager), "EXTEND_TIMEOUT_USEC=7000000");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        let name = format!("cluecast-notify-test-{}", std::process::id());
        let manager =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::from_vars(os(&format!("@{name}")), None, None, 1)
            .unwrap()
            .unwrap();
        notifier.ready(&"x".repeat(STATUS_BYTES_MAX + 10)).unwrap();
        assert_eq!(
            received(&manager),
            format!("READY=1\nSTATUS={}", "x".repeat(STATUS_BYTES_MAX))
        );
    }

    #[test]
    fn watchdog_is_armed_only_for_the_watched_process() {
        let watched = |pid: Option<&OsStr>| {
            Notifier::from_vars(os("@cluecast-unused"), os("300000"), pid, 42)
                .unwrap()
                .unwrap()
                .watchdog_interval_us()
        };
        assert_eq!(watched(None), Some(300_000));
        assert_eq!(watched(os("42")), Some(300_000));
        assert_eq!(watched(os("43")), None);
    }

    #[test]
    fn no_socket_means_no_manager_and_bad_values_are_named() {
        assert!(Notifier::from_vars(None, os("1000"), None, 1)
            .unwrap()
            .is_none());
        assert!(Notifier::from_vars(os(""), None, None, 1)
            .unwrap()
            .is_none());
        let err = |socket, usec, pid| {
            Notifier::from_vars(os(socket), usec, pid, 1)
                .err()
                .expect("refused")
                .to_string()
        };
        assert!(err("relative/path", None, None).contains("NOTIFY_SOCKET=relative/path"));
        assert!(err("vsock:2:1", None, None).contains("not supported"));
        assert!(err("@x", os("soon"), None).contains("WATCHDOG_USEC=soon"));
        assert!(err("@x", os("0"), None).contains("WATCHDOG_USEC=0"));
        assert!(err("@x", os("1000"), os("-1")).contains("WATCHDOG_PID=-1"));
        let long = format!("/{}", "a".repeat(200));
        assert!(err(&long, None, None).contains("NOTIFY_SOCKET=/aaa"));
    }
}
