//! TLS 1.3 for the fan-out generator (`--tls`): the certificate the driver
//! makes for the appliance, and the client side of every connection.
//!
//! The appliance encrypts in user space (rustls; src/tls.rs), so the
//! clients do too, with the same rustls build: each connection's handshake
//! is made blocking while the clients connect (before the measured window),
//! then the session is driven over the generator's non-blocking sockets in
//! its epoll loop: `read_tls` / `process_new_packets` / `reader()` when a
//! socket is readable, `writer()` / `write_tls` when writing, WouldBlock
//! meaning "later" on both sides.
//!
//! Receive times stay the kernel's: the ciphertext is read with recvmsg(2)
//! and SO_TIMESTAMPNS as in the plaintext path, and the plaintext a read
//! completes gets that read's timestamp (for TCP, the arrival of the last
//! segment read). The client's own decryption comes after that timestamp,
//! so it is in the *read delay*, not in the latency.

use std::fs::{OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::net::{self, Blocking};
use crate::server::ScratchDir;
use crate::wire::Inbox;

/// The name the certificate is made for, and the one every client checks.
pub const SERVER_NAME: &str = "localhost";

/// A blocking TLS connection, in its handshake (HELLO, SUBSCRIBE).
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl Blocking for TlsStream {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// A self-signed certificate for [`SERVER_NAME`] and its private key, as
/// PEM files in a temporary directory only this user can read; removed
/// with the directory when dropped.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: ScratchDir,
}

impl CertFiles {
    /// Makes the key pair (rcgen's default: ECDSA P-256) and the
    /// certificate, and writes both.
    pub fn make() -> Result<CertFiles, String> {
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| format!("making a TLS certificate: {e}"))?;
        let dir = ScratchDir::new("tls")?;
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.path().display()))?;
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        write_private(&cert, made.cert.pem().as_bytes())?;
        write_private(&key, made.key_pair.serialize_pem().as_bytes())?;
        Ok(CertFiles {
            cert,
            key,
            _dir: dir,
        })
    }
}

/// Writes a new file readable by this user only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// What every client connection of a process shares: TLS 1.3 only, ring,
/// trusting the one certificate the appliance serves, checking the name
/// [`SERVER_NAME`]. Session resumption is rustls's default (an in-memory
/// cache of the tickets the appliance sends).
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsClient(TLS 1.3, checking {:?})", self.name)
    }
}

impl TlsClient {
    /// Trusting the certificates of the PEM file `ca`.
    pub fn trusting(ca: &Path) -> Result<TlsClient, String> {
        let config = cluecast_proto::client::tls_trusting(ca)?;
        let name = ServerName::try_from(SERVER_NAME).map_err(|e| e.to_string())?;
        Ok(TlsClient { config, name })
    }

    /// This client without session resumption: every handshake a full one
    /// (what a flood of ClientHellos costs the server most).
    pub fn without_resumption(&self) -> TlsClient {
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::disabled();
        TlsClient {
            config: Arc::new(config),
            name: self.name.clone(),
        }
    }

    /// A fresh TLS 1.3 ClientHello, the bytes this client sends first:
    /// what `storm --attack tls-hello` sends, and then nothing.
    pub fn client_hello(&self) -> Result<Vec<u8>, String> {
        let mut conn = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| format!("TLS: {e}"))?;
        let mut hello = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut hello)
                .map_err(|e| format!("TLS: {e}"))?;
        }
        Ok(hello)
    }

    /// The TLS handshake on a connected socket, blocking until it is done
    /// (the client's Finished sent) or `deadline` has passed.
    pub fn handshake(&self, mut tcp: TcpStream, deadline: Instant) -> Result<TlsStream, String> {
        let mut conn = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| format!("TLS: {e}"))?;
        while conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("TLS handshake: no answer in time".into());
            }
            tcp.set_read_timeout(Some(left))
                .and_then(|_| tcp.set_write_timeout(Some(left)))
                .map_err(|e| format!("socket options: {e}"))?;
            match conn.complete_io(&mut tcp) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(format!("TLS handshake: {e}")),
            }
        }
        Ok(StreamOwned::new(conn, tcp))
    }
}

/// A connection's TLS session once the generator's loop drives it (the
/// socket itself stays with the connection).
pub struct TlsLink {
    conn: ClientConnection,
    /// The kernel's receive time of the last ciphertext read.
    stamp: Option<u64>,
}

/// What one step of [`TlsLink::fill`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    /// Plaintext appended to the inbox: bytes, and the receive time of the
    /// read that completed it.
    Plain(usize, Option<u64>),
    /// Ciphertext read and processed (perhaps no whole record yet); `short`
    /// when the socket gave less than asked (most likely empty now).
    Read { short: bool },
    /// The server ended the TLS session or the connection.
    Closed,
}

impl TlsLink {
    /// The session of a connection past its blocking handshake, and its
    /// socket. Plaintext the session already holds is appended to `buf`
    /// (read past the last answer awaited), so the session holds none: the
    /// next plaintext comes with new data on the socket, which epoll sees.
    pub fn from_stream(
        stream: TlsStream,
        buf: &mut Vec<u8>,
    ) -> Result<(TlsLink, TcpStream), String> {
        let StreamOwned { mut conn, mut sock } = stream;
        let mut chunk = [0u8; 4096];
        loop {
            match conn.reader().read(&mut chunk) {
                Ok(0) => return Err("the server ended the TLS session".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("TLS: {e}")),
            }
        }
        while conn.wants_write() {
            conn.write_tls(&mut sock)
                .map_err(|e| format!("TLS: writing: {e}"))?;
        }
        Ok((TlsLink { conn, stamp: None }, sock))
    }

    /// One step of reading: plaintext the session holds goes to `inbox`
    /// first; only when it holds none, and `read_socket`, one read of
    /// ciphertext (at most 4 KiB: rustls's read size) is made and
    /// processed. Err(WouldBlock): nothing more now.
    pub fn fill(
        &mut self,
        stream: &TcpStream,
        inbox: &mut Inbox,
        read_socket: bool,
    ) -> io::Result<Fill> {
        match inbox.fill_with(|free| self.conn.reader().read(free)) {
            // close_notify, and everything before it read.
            Ok(0) => return Ok(Fill::Closed),
            Ok(n) => return Ok(Fill::Plain(n, self.stamp)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if !read_socket {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut from = Stamped {
            fd: stream.as_raw_fd(),
            stamp: None,
            short: false,
        };
        if self.conn.read_tls(&mut from)? == 0 {
            return Ok(Fill::Closed);
        }
        self.stamp = from.stamp;
        self.conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Fill::Read { short: from.short })
    }

    /// The handshake resumed a session (a ticket of an earlier connection)
    /// instead of a full one.
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Encrypted records wait to be written.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Encrypts what the session takes of `plain` (it holds up to 64 KiB
    /// of records) and writes what the socket takes. Returns the plaintext
    /// bytes taken, and whether every record is written.
    pub fn send(&mut self, stream: &mut TcpStream, plain: &[u8]) -> io::Result<(usize, bool)> {
        let mut taken = 0;
        loop {
            if taken < plain.len() {
                taken += self.conn.writer().write(&plain[taken..])?;
            }
            if !self.conn.wants_write() {
                if taken == plain.len() {
                    return Ok((taken, true));
                }
                return Err(io::Error::other(
                    "TLS took no plaintext and has nothing to write",
                ));
            }
            match self.conn.write_tls(stream) {
                Ok(0) => return Err(io::Error::other("the socket took nothing")),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((taken, false)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A socket read by recvmsg(2) with the kernel's receive timestamp, as
/// rustls's `read_tls` wants it.
struct Stamped {
    fd: i32,
    stamp: Option<u64>,
    short: bool,
}

impl Read for Stamped {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, stamp) = net::recv_stamped(self.fd, buf)?;
        self.stamp = stamp.or(self.stamp);
        self.short = n < buf.len();
        Ok(n)
    }
}

/// One socket's turn in the epoll loop: plaintext chunks, one at a time,
/// reading the socket at most `reads_max` times and not again once a read
/// came back short; every chunk the session decrypted is handed over
/// before the turn ends, so none waits in the session with the socket
/// empty.
pub struct TlsTurn {
    reads: usize,
    reads_max: usize,
    emptied: bool,
}

impl TlsTurn {
    pub fn new(reads_max: usize) -> TlsTurn {
        TlsTurn {
            reads: 0,
            reads_max,
            emptied: false,
        }
    }

    /// The next chunk put in `inbox` (bytes, receive time), or None when
    /// the turn is over. End of the connection and failures are errors.
    pub fn next(
        &mut self,
        tls: &mut TlsLink,
        stream: &TcpStream,
        inbox: &mut Inbox,
    ) -> Result<Option<(usize, Option<u64>)>, String> {
        loop {
            let read_socket = self.reads < self.reads_max && !self.emptied;
            match tls.fill(stream, inbox, read_socket) {
                Ok(Fill::Plain(n, stamp)) => return Ok(Some((n, stamp))),
                Ok(Fill::Read { short }) => {
                    self.reads += 1;
                    self.emptied = short;
                }
                Ok(Fill::Closed) => return Err("the server closed the connection".into()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluecast_proto::EventHead;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use std::net::TcpListener;
    use std::time::Duration;

    /// A rustls server on loopback with the certificate, for one client.
    fn server(files: &CertFiles) -> (TcpListener, Arc<rustls::ServerConfig>) {
        use rustls::pki_types::PrivateKeyDer;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        (TcpListener::bind("127.0.0.1:0").unwrap(), Arc::new(config))
    }

    #[test]
    fn certificate_files_are_private_and_removed() {
        let files = CertFiles::make().unwrap();
        let dir = files.cert.parent().unwrap().to_path_buf();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&files.key), 0o600);
        assert!(std::fs::read_to_string(&files.cert)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        TlsClient::trusting(&files.cert).unwrap();
        drop(files);
        assert!(!dir.exists());
    }

    #[test]
    fn a_client_hello_is_one_fresh_handshake_record() {
        let files = CertFiles::make().unwrap();
        let client = TlsClient::trusting(&files.cert)
            .unwrap()
            .without_resumption();
        let hello = client.client_hello().unwrap();
        // A handshake record (0x16) holding a ClientHello (0x01), whole.
        assert_eq!((hello[0], hello[5]), (0x16, 0x01));
        assert_eq!(
            u16::from_be_bytes([hello[3], hello[4]]) as usize,
            hello.len() - 5
        );
        assert_ne!(hello, client.client_hello().unwrap(), "fresh each time");
    }

    /// Handshake blocking, then plaintext both ways over a non-blocking
    /// socket through fill / send, with kernel timestamps.
    #[test]
    fn handshake_then_nonblocking_records_both_ways() {
        let files = CertFiles::make().unwrap();
        let (listener, config) = server(&files);
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut s = StreamOwned::new(conn, tcp);
            let mut got = [0u8; 5];
            s.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello");
            // Many small records, then one larger than the inbox's free
            // room, as the appliance writes one record per frame.
            for i in 0..200u32 {
                s.write_all(&i.to_be_bytes()).unwrap();
            }
            s.write_all(&vec![7u8; 20_000]).unwrap();
            s.flush().unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
        let client = TlsClient::trusting(&files.cert).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = client.handshake(tcp, deadline).unwrap();
        stream.write_all(b"hello").unwrap();
        stream.flush().unwrap();
        let mut buf = Vec::new();
        let (mut link, mut tcp) = TlsLink::from_stream(stream, &mut buf).unwrap();
        tcp.set_nonblocking(true).unwrap();
        net::enable_rx_timestamps(&tcp).unwrap();
        let (taken, _) = link.send(&mut tcp, b"").unwrap();
        assert_eq!(taken, 0);
        let want = 200 * 4 + 20_000;
        let mut got = buf.clone();
        let mut inbox = Inbox::new(&[], 16 << 10, EventHead::BYTES_MIN).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while got.len() < want && Instant::now() < until {
            let mut turn = TlsTurn::new(4);
            while let Some((n, _stamp)) = turn.next(&mut link, &tcp, &mut inbox).unwrap() {
                assert!(n > 0);
                got.extend_from_slice(&inbox.take_all());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got.len(), want);
        for i in 0..200u32 {
            let at = 4 * i as usize;
            assert_eq!(got[at..at + 4], i.to_be_bytes());
        }
        assert!(got[800..].iter().all(|&b| b == 7));
        drop(link);
        drop(tcp);
        peer.join().unwrap();
    }
}
