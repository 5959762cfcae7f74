//! TLS 1.3 for client connections, in user space (rustls): the handshake and
//! the records, driven from the shard loop without blocking it. The shard
//! hands each connection's received bytes to `receive` and its queued
//! frames to `write`; `next_output` gives what to send. Every connection
//! encrypts its own copy of each frame, so fan-out costs one encryption per
//! subscriber (docs/SECURITY.md has the measurement).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// The appliance's certificate and key, as every connection uses them.
pub struct TlsConfig {
    config: Arc<ServerConfig>,
}

impl TlsConfig {
    /// Reads a PEM certificate chain and private key.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsConfig, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--tls-cert {}: no certificate in it",
                cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS 1.3: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("--tls-cert / --tls-key: {e}"))?;
        // Phones reconnect often: a ticket lets them resume without a full
        // handshake.
        config.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
        Ok(TlsConfig {
            config: Arc::new(config),
        })
    }
}

/// One connection's TLS session and the ciphertext it is sending.
pub struct TlsConn {
    session: ServerConnection,
    /// Sealed records, sent from `out_sent` on. Not touched while a send of
    /// it is in flight (the kernel reads it in place).
    out: Vec<u8>,
    out_sent: usize,
}

impl TlsConn {
    pub fn new(config: &TlsConfig) -> TlsConn {
        let mut session = ServerConnection::new(config.config.clone())
            .expect("a server session needs nothing that can fail");
        // The shard bounds what it hands over (one send's worth, only once
        // the last records are sent), so rustls needs no limit of its own.
        session.set_buffer_limit(None);
        TlsConn {
            session,
            out: Vec::new(),
            out_sent: 0,
        }
    }

    /// Decrypts `input` and appends the plaintext to `plain`. Err (why) when
    /// the peer broke the protocol: the connection must end.
    pub fn receive(&mut self, mut input: &[u8], plain: &mut Vec<u8>) -> Result<(), String> {
        while !input.is_empty() {
            let read = self
                .session
                .read_tls(&mut input)
                .map_err(|e| e.to_string())?;
            if read == 0 {
                break; // the peer closed TLS (close_notify): the rest is noise
            }
            let state = self
                .session
                .process_new_packets()
                .map_err(|e| e.to_string())?;
            let readable = state.plaintext_bytes_to_read();
            if readable > 0 {
                let at = plain.len();
                plain.resize(at + readable, 0);
                std::io::Read::read_exact(&mut self.session.reader(), &mut plain[at..])
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    pub fn handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    /// Encrypts application bytes (after the handshake, and only once the
    /// last records are sent).
    pub fn write(&mut self, plain: &[u8]) {
        debug_assert!(!self.handshaking() && self.out_sent == self.out.len());
        self.session
            .writer()
            .write_all(plain)
            .expect("rustls takes any amount once the handshake is done");
    }

    /// Something waits to be sent: sealed records, or records to seal.
    pub fn has_output(&self) -> bool {
        self.out_sent < self.out.len() || self.session.wants_write()
    }

    /// The ciphertext to send next: what is left of the last records, or
    /// everything sealed since. Empty when there is nothing.
    pub fn next_output(&mut self) -> &[u8] {
        if self.out_sent == self.out.len() {
            self.out.clear();
            self.out_sent = 0;
            while self.session.wants_write() {
                self.session
                    .write_tls(&mut self.out)
                    .expect("writing into a Vec cannot fail");
            }
        }
        &self.out[self.out_sent..]
    }

    /// `n` bytes of the output were sent.
    pub fn sent(&mut self, n: usize) {
        assert!(self.out_sent + n <= self.out.len(), "sent more than given");
        self.out_sent += n;
    }
}
