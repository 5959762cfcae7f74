//! [`ClientConfig`]: how to reach the server (TCP, or TLS trusting the
//! roots of [`tls_trusting`]) and how to behave when the connection drops.

use super::rng::Rng;
use crate::codec::Limits;
use std::fmt;

/// How to reach the server and how to behave when the connection drops.
#[derive(Clone)]
pub struct ClientConfig {
    /// `host:port`.
    pub server: String,
    /// Identifies this client in server logs; at most
    /// `limits.client_id_bytes_max` bytes.
    pub client_id: String,
    /// Credential sent in HELLO; at most `limits.token_bytes_max` bytes.
    pub token: Vec<u8>,
    /// Limit for the TCP connect, and again for the WELCOME that follows.
    pub connect_timeout_ms: u64,
    /// How long [`Client::connect`] keeps trying when the server refuses
    /// (GOAWAY ServerFull or Shutdown instead of WELCOME: after its
    /// `retry_after_ms`) or the connection fails (with the backoff below).
    /// 0: the first failure is returned at once.
    pub connect_retry_ms: u64,
    /// How long `publish`, `close_topic`, `subscribe`, `unsubscribe` and
    /// `path` wait for their answer (for `path`: all of its frames). On
    /// expiry the connection is dropped (its state is unknown).
    pub request_timeout_ms: u64,
    /// Reconnect delay window for the first attempt; doubles per failure.
    pub backoff_min_ms: u64,
    /// Largest reconnect delay window.
    pub backoff_max_ms: u64,
    /// Reconnect and resume after losing the connection. When false, the
    /// first loss is returned as an error and the client is closed.
    pub reconnect: bool,
    /// Size limits for frames from the server. Raised to whatever the
    /// server announces in WELCOME, so the client can read all it may send.
    pub limits: Limits,
    /// Speak TLS, verifying the server against these roots (see
    /// [`tls_trusting`]); the name checked is `server`'s host.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl ClientConfig {
    /// Defaults: a client id made of the process id and a random number,
    /// no token, 5 s connect and request timeouts, a first connection
    /// retried for 30 s (a restart or a flood is over by then; a server
    /// that stays away is reported), reconnect with backoff between 100 ms
    /// and 5 s, default limits.
    pub fn new(server: impl Into<String>) -> ClientConfig {
        ClientConfig {
            server: server.into(),
            client_id: format!("{}-{:016x}", std::process::id(), Rng::seeded().next_u64()),
            token: Vec::new(),
            connect_timeout_ms: 5_000,
            connect_retry_ms: 30_000,
            request_timeout_ms: 5_000,
            backoff_min_ms: 100,
            backoff_max_ms: 5_000,
            reconnect: true,
            limits: Limits::DEFAULT,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ClientConfig {
    pub(super) fn uses_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }
}

/// Written by hand so the token never ends up in a log.
impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("client_id", &self.client_id)
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("connect_retry_ms", &self.connect_retry_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("backoff_min_ms", &self.backoff_min_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("reconnect", &self.reconnect)
            .field("limits", &self.limits)
            .field("tls", &self.uses_tls())
            .finish()
    }
}

/// A TLS 1.3 client configuration trusting the certificates in `ca_pem`
/// (a PEM file: the server's own certificate, or the CA that signed it).
#[cfg(feature = "tls")]
pub fn tls_trusting(
    ca_pem: &std::path::Path,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let shown = ca_pem.display();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).map_err(|e| format!("{shown}: {e}"))? {
        let cert = cert.map_err(|e| format!("{shown}: {e}"))?;
        roots.add(cert).map_err(|e| format!("{shown}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{shown}: no certificate in it"));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config() {
        let c = ClientConfig::new("example.org:7000");
        assert!(c.reconnect);
        assert_eq!((c.backoff_min_ms, c.backoff_max_ms), (100, 5_000));
        assert_eq!(c.connect_retry_ms, 30_000);
        assert!(c.client_id.len() <= usize::from(c.limits.client_id_bytes_max));
        assert_ne!(c.client_id, ClientConfig::new("x:1").client_id);
        assert!(!format!("{c:?}").contains("token: ["));
    }
}
