//! The byte stream under a connection: TCP, or TLS over it (feature
//! `tls`), opened to the first address that answers; its failures in the
//! caller's words.

use super::{ClientConfig, ClientError};
#[cfg(feature = "tls")]
use crate::tls_error::TlsError;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The byte stream under a connection: TCP, or TLS over it.
pub(super) enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls {
        /// The name the server's certificate is checked against.
        host: String,
        stream: Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
    },
}

impl Stream {
    pub(super) fn open(
        addr: &str,
        config: &ClientConfig,
        timeout: Duration,
    ) -> Result<Stream, ClientError> {
        let tcp = connect_any(addr, timeout)?;
        // Frames are small and latency matters more than packet count.
        tcp.set_nodelay(true)?;
        tcp.set_write_timeout(Some(timeout))?;
        // The TLS handshake reads inside the first write: a server that
        // accepts and never answers must not hold it past the timeout.
        tcp.set_read_timeout(Some(timeout))?;
        #[cfg(feature = "tls")]
        if let Some(tls) = &config.tls {
            let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| ClientError::InvalidInput(format!("TLS server name {host:?}: {e}")))?;
            let session = rustls::ClientConnection::new(tls.clone(), name)
                .map_err(|e| ClientError::InvalidInput(format!("TLS: {e}")))?;
            return Ok(Stream::Tls {
                host: host.to_string(),
                stream: Box::new(rustls::StreamOwned::new(session, tcp)),
            });
        }
        #[cfg(not(feature = "tls"))]
        let _ = config;
        Ok(Stream::Plain(tcp))
    }

    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            #[cfg(feature = "tls")]
            Stream::Tls { stream, .. } => &stream.sock,
        }
    }

    /// A failed read or write as the caller should see it: rustls's error
    /// (the handshake's included, which runs inside the first write) in
    /// words, anything else as I/O.
    pub(super) fn failure(&self, e: io::Error) -> ClientError {
        #[cfg(feature = "tls")]
        if let Stream::Tls { host, .. } = self {
            // rustls wraps its error in the io::Error it returns.
            if let Some(error) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                return ClientError::Tls(TlsError::new(host, error.clone()));
            }
        }
        ClientError::Io(e)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls { stream, .. } => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls { stream, .. } => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls { stream, .. } => stream.flush(),
        }
    }
}

/// Connects to the first address of `addr` that answers.
fn connect_any(addr: &str, timeout: Duration) -> Result<TcpStream, ClientError> {
    let mut last_err = None;
    for sockaddr in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sockaddr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last_err = Some(e),
        }
    }
    Err(match last_err {
        Some(e) => ClientError::Io(e),
        None => ClientError::InvalidInput(format!("{addr} resolves to no address")),
    })
}
