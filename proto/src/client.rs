//! A blocking reference client for protocol v1, on `std::net` only.
//!
//! It is meant to be read and ported (Swift, Kotlin, ...): one TCP
//! connection, no threads, every wait done with socket read timeouts.
//!
//! What it does for the caller:
//! * handshake (HELLO → WELCOME), heartbeats (PING when idle, a connection
//!   that stays silent too long is dead) and answering server PINGs;
//! * per-topic resume state `(epoch, last_seq)`, updated by SUBSCRIBED and by
//!   every EVENT, used to drop duplicates;
//! * a first connection refused (GOAWAY ServerFull or Shutdown instead of
//!   WELCOME) or failed is tried again for a while (`connect_retry_ms`,
//!   `crate::retry`), each wait shown to the caller's observer;
//! * on a lost connection (EOF, I/O error, GOAWAY, ERROR, missed heartbeats):
//!   exponential backoff with full jitter, reconnect, re-SUBSCRIBE every
//!   topic with Resume, and report each new SUBSCRIBED so the caller sees
//!   gaps ([`Delivery::Subscribed`]).
//! * a topic closed by the server (TOPIC_CLOSED notice) ends its
//!   subscription ([`Delivery::Closed`]) and is not resumed afterwards.
//!
//! A publish is never retried on a new connection: the first one may have
//! been sequenced already, and retrying would publish it twice.

use crate::codec::{valid_topic, Limits};
use crate::frame::*;
use crate::frame_conn::{Filled, FrameConn};
pub use crate::retry::ConnectRetry;
use crate::retry::{connect_with_retry, redirect_of, retry_delay};
pub use crate::tls_error::TlsError;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Extra silence tolerated on top of two heartbeat periods before the
/// connection is declared dead: covers a slow mobile network round trip.
const DEAD_GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Configuration

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

/// Written by hand so the token never ends up in a log.
impl ClientConfig {
    fn uses_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
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

/// The byte stream under a connection: TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls {
        /// The name the server's certificate is checked against.
        host: String,
        stream: Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
    },
}

impl Stream {
    fn open(addr: &str, config: &ClientConfig, timeout: Duration) -> Result<Stream, ClientError> {
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

    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            #[cfg(feature = "tls")]
            Stream::Tls { stream, .. } => &stream.sock,
        }
    }

    /// A failed read or write as the caller should see it: rustls's error
    /// (the handshake's included, which runs inside the first write) in
    /// words, anything else as I/O.
    fn failure(&self, e: io::Error) -> ClientError {
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

// ---------------------------------------------------------------------------
// Public data types

/// Where a new subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Only events published from now on.
    Live,
    /// From this sequence of the topic's current epoch, whatever it is
    /// (sends Resume with epoch 0 and `last_seq = seq - 1`).
    From(u64),
    /// Everything after `last_seq` of `epoch`, e.g. a point saved by the app.
    Resume { epoch: u64, last_seq: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedEvent {
    pub topic: String,
    pub seq: u64,
    pub epoch: u64,
    pub publish_ts_ns: u64,
    pub payload: Vec<u8>,
}

impl From<Event<'_>> for OwnedEvent {
    fn from(e: Event<'_>) -> OwnedEvent {
        OwnedEvent {
            topic: topic_string(e.topic),
            seq: e.seq,
            epoch: e.epoch,
            publish_ts_ns: e.publish_ts_ns,
            payload: e.payload.to_vec(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedSubscribed {
    pub topic: String,
    pub status: SubscribeStatus,
    pub epoch: u64,
    pub oldest_seq: u64,
    pub last_seq: u64,
}

impl From<Subscribed<'_>> for OwnedSubscribed {
    fn from(s: Subscribed<'_>) -> OwnedSubscribed {
        OwnedSubscribed {
            topic: topic_string(s.topic),
            status: s.status,
            epoch: s.epoch,
            oldest_seq: s.oldest_seq,
            last_seq: s.last_seq,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedResumePoint {
    pub topic: String,
    pub epoch: u64,
    pub last_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedGoAway {
    pub reason: GoAwayReason,
    pub retry_after_ms: u32,
    /// `host:port` to reconnect to; empty for "the same server".
    pub reconnect: String,
    pub resume: Vec<OwnedResumePoint>,
}

impl From<&GoAway<'_>> for OwnedGoAway {
    fn from(g: &GoAway<'_>) -> OwnedGoAway {
        OwnedGoAway {
            reason: g.reason,
            retry_after_ms: g.retry_after_ms,
            reconnect: String::from_utf8_lossy(g.reconnect).into_owned(),
            resume: g
                .resume
                .iter()
                .map(|p| OwnedResumePoint {
                    topic: topic_string(p.topic),
                    epoch: p.epoch,
                    last_seq: p.last_seq,
                })
                .collect(),
        }
    }
}

/// The reason in words, then its name: "server full (GOAWAY ServerFull)".
impl fmt::Display for OwnedGoAway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (GOAWAY {:?})",
            goaway_words(self.reason),
            self.reason
        )
    }
}

/// What a GOAWAY's reason means, for messages people read.
fn goaway_words(reason: GoAwayReason) -> &'static str {
    match reason {
        GoAwayReason::Shutdown => "server shutting down",
        GoAwayReason::SlowConsumer => "reading too slowly for the server",
        GoAwayReason::ServerFull => "server full",
        GoAwayReason::TokenExpired => "token expired",
    }
}

/// The answer to [`Client::path`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathAnswer {
    /// In stored order (the order they arrived at the server), which is not
    /// necessarily `client_ts_ms` order.
    pub positions: Vec<Position>,
    /// The server stopped at its limit: call again with `since_ms` = the
    /// last position's `client_ts_ms + 1` for the rest.
    pub truncated: bool,
    /// Some stored positions could not be read and are missing.
    pub corrupt: bool,
}

/// What [`Client::next`] hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// An event of a subscribed topic, never one already delivered.
    Event(OwnedEvent),
    /// A subscription re-established after a reconnect. `status` other than
    /// `Ok` means events were lost (NotRecovered: delivery restarts at
    /// `oldest_seq`; EpochChanged: the topic's history was reset): reload
    /// whatever state the app derives from the topic.
    Subscribed(OwnedSubscribed),
    /// The connection was lost because of `reason` and a new one is up after
    /// `attempts` connection attempts. One `Subscribed` per topic follows.
    Reconnected { reason: String, attempts: u32 },
    /// The topic was closed (TOPIC_CLOSED): its history is deleted, the
    /// subscription has ended and no event of it follows. `last_seq` was
    /// its last sequence. The client no longer resumes it; events published
    /// to the same name later start a new history (subscribe again to get
    /// them).
    Closed { topic: String, last_seq: u64 },
}

/// Why a client call failed.
#[derive(Debug)]
pub enum ClientError {
    /// Resolving, connecting, reading or writing failed.
    Io(io::Error),
    /// The server sent something protocol v1 does not allow.
    Protocol(String),
    /// PUBLISH_ACK, TOPIC_CLOSED or PATH carried this non-zero status (an
    /// [`ErrorCode`] value), or SUBSCRIBED said NotAuthorized (then
    /// `NotAuthorized`); the connection stays usable.
    Refused(u16),
    /// The server sent ERROR with this code, then closed the connection.
    Server { code: u16, message: String },
    /// The server asked us to go away (during the handshake, or with
    /// `reconnect` off, or while a request was waiting).
    GoAway(OwnedGoAway),
    /// The server closed the connection, or the client is closed.
    Closed,
    /// Nothing arrived in time; names what was awaited.
    Timeout(&'static str),
    /// The server ended the connection because its token expired: reconnecting
    /// with it would be refused. After [`Client::set_token`] the next call
    /// reconnects and resumes.
    TokenExpired,
    /// The call's arguments or the configuration cannot work (bad topic,
    /// payload over the server's limit, ...). Nothing was sent.
    InvalidInput(String),
    /// TLS with the server failed: most often its certificate was refused
    /// (the text says why and what to do). Only with the `tls` feature.
    Tls(TlsError),
    /// [`Client::connect`] tried `attempts` times over `elapsed_ms` (its
    /// `connect_retry_ms`) and stopped; `last` is why the last one failed.
    GaveUp {
        attempts: u32,
        elapsed_ms: u64,
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// Errors that reconnecting cannot fix: the client stops trying.
    pub(crate) fn is_fatal(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => matches!(
                ErrorCode::try_from(*code),
                Ok(ErrorCode::NotAuthorized | ErrorCode::UnsupportedVersion)
            ),
            ClientError::InvalidInput(_) => true,
            // A refused certificate or a server that does not speak TLS is
            // the configuration's to fix; retrying would hide it.
            ClientError::Tls(_) => true,
            _ => false,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "i/o error: {e}"),
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::TokenExpired => {
                f.write_str("the token expired; set a new one (Client::set_token) to reconnect")
            }
            ClientError::Refused(code) => write!(
                f,
                "refused by the server: {} ({code})",
                ErrorCode::name_of(*code)
            ),
            ClientError::Server { code, message } => write!(
                f,
                "server error {} ({code}): {message}",
                ErrorCode::name_of(*code)
            ),
            ClientError::GoAway(g) => write!(
                f,
                "{} (GOAWAY {:?}, retry after {} ms)",
                goaway_words(g.reason),
                g.reason,
                g.retry_after_ms
            ),
            ClientError::Closed => f.write_str("connection closed"),
            ClientError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            ClientError::InvalidInput(m) => write!(f, "invalid input: {m}"),
            ClientError::Tls(e) => write!(f, "{e}"),
            ClientError::GaveUp {
                attempts,
                elapsed_ms,
                last,
            } => write!(
                f,
                "{last}; gave up after {attempts} attempt{} over {elapsed_ms} ms",
                if *attempts == 1 { "" } else { "s" }
            ),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(e) => Some(e),
            ClientError::Tls(e) => Some(e),
            ClientError::GaveUp { last, .. } => Some(last.as_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> ClientError {
        ClientError::Io(e)
    }
}

// ---------------------------------------------------------------------------
// The client

/// Resume state of one subscription: the last event delivered (or, before
/// any, where the server said the subscription starts).
#[derive(Clone, Copy, Debug)]
struct SubState {
    epoch: u64,
    last_seq: u64,
}

/// Bookkeeping while disconnected.
struct Lost {
    /// Why the last connection ended (reported in `Delivery::Reconnected`).
    reason: String,
    next_attempt: Instant,
    /// GOAWAY's `reconnect` address, tried once.
    redirect: Option<String>,
    /// Connection attempts so far, drives the backoff.
    attempts: u32,
}

pub struct Client {
    config: ClientConfig,
    /// `None` while disconnected (then `lost` says what to do) or closed.
    conn: Option<Conn>,
    welcome: Welcome,
    subs: BTreeMap<String, SubState>,
    queue: VecDeque<Delivery>,
    next_request_id: u32,
    rng: Rng,
    lost: Option<Lost>,
    /// When the current connection was made, and how many attempts it took:
    /// a connection that dies young keeps the backoff growing.
    connected_at: Instant,
    attempts_before: u32,
    closed: bool,
    /// The server said the token expired: no reconnect until `set_token`.
    token_expired: bool,
}

impl Client {
    /// Connects and completes the handshake. A server that refuses (GOAWAY
    /// ServerFull or Shutdown instead of WELCOME) or cannot be reached is
    /// tried again until `connect_retry_ms` has passed, then
    /// [`ClientError::GaveUp`]; with 0, the first failure is returned. Errors
    /// that retrying cannot fix (NotAuthorized, UnsupportedVersion, TLS, bad
    /// configuration) are returned at once.
    pub fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        Client::connect_observed(config, |_| {})
    }

    /// [`Client::connect`], telling `on_retry` about each wait before it
    /// happens (the attempt that follows, the failure, the delay), so the
    /// caller can show it.
    pub fn connect_observed(
        config: ClientConfig,
        mut on_retry: impl FnMut(&ConnectRetry<'_>),
    ) -> Result<Client, ClientError> {
        config
            .limits
            .validate()
            .map_err(ClientError::InvalidInput)?;
        let mut rng = Rng::seeded();
        let (conn, welcome) = connect_with_retry(&config, &mut rng, &mut on_retry, |addr| {
            Conn::open(addr, &config)
        })?;
        Ok(Client {
            config,
            conn: Some(conn),
            welcome,
            subs: BTreeMap::new(),
            queue: VecDeque::new(),
            next_request_id: 1,
            rng,
            lost: None,
            connected_at: Instant::now(),
            attempts_before: 0,
            closed: false,
            token_expired: false,
        })
    }

    /// The WELCOME of the current (or last) connection.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// `(epoch, last_seq)` the client would resume `topic` from: save it to
    /// resume with [`Start::Resume`] after the app restarts.
    /// Replaces the token sent in HELLO from the next connection on. After
    /// [`ClientError::TokenExpired`], the next call then reconnects and
    /// resumes with it.
    pub fn set_token(&mut self, token: Vec<u8>) -> Result<(), ClientError> {
        if token.len() > usize::from(self.config.limits.token_bytes_max) {
            return Err(ClientError::InvalidInput(format!(
                "token is over {} bytes",
                self.config.limits.token_bytes_max
            )));
        }
        self.config.token = token;
        self.token_expired = false;
        Ok(())
    }

    pub fn resume_point(&self, topic: &str) -> Option<(u64, u64)> {
        self.subs.get(topic).map(|s| (s.epoch, s.last_seq))
    }

    /// Closes the connection; every later call fails with `Closed`.
    pub fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.frames.stream.tcp().shutdown(Shutdown::Both);
        }
        self.closed = true;
    }

    /// Publishes one event and waits for its PUBLISH_ACK. Events that
    /// arrive meanwhile are kept for [`Client::next`].
    ///
    /// Not retried if the connection drops before the ack: the error is
    /// returned, and the event may or may not have been published.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<PublishAck, ClientError> {
        self.check_topic(topic)?;
        let max = self.welcome.payload_bytes_max;
        if payload.len() as u64 > u64::from(max) {
            return Err(ClientError::InvalidInput(format!(
                "payload of {} bytes is over the server's {max}-byte limit",
                payload.len()
            )));
        }
        self.ensure_connected(None)?;
        let request_id = self.take_request_id();
        self.send(&Frame::Publish(Publish {
            request_id,
            topic: topic.as_bytes(),
            payload,
        }))?;
        let deadline = self.request_deadline();
        loop {
            match self.recv(Some(deadline))? {
                Some(Inbound::PublishAck(ack)) if ack.request_id == request_id => {
                    return if ack.status == 0 {
                        Ok(ack)
                    } else {
                        Err(ClientError::Refused(ack.status))
                    };
                }
                Some(other) => self.handle_unsolicited(other),
                None => return Err(self.request_timed_out("PUBLISH_ACK")),
            }
        }
    }

    /// Closes `topic` and waits for its TOPIC_CLOSED: the server deletes the
    /// topic's whole history, and every subscriber (this client too, if
    /// subscribed) gets [`Delivery::Closed`]. Returns the topic's last
    /// sequence when it was closed (0 if it had no events). Events that
    /// arrive meanwhile are kept for [`Client::next`].
    ///
    /// A non-zero status is [`ClientError::Refused`] (e.g. `StorageFailed`,
    /// `Overloaded`). Not retried if the connection drops before the answer;
    /// calling again is safe (closing a topic with no events answers 0).
    pub fn close_topic(&mut self, topic: &str) -> Result<u64, ClientError> {
        self.check_topic(topic)?;
        self.ensure_connected(None)?;
        let request_id = self.take_request_id();
        self.send(&Frame::TopicClose(TopicClose {
            request_id,
            topic: topic.as_bytes(),
        }))?;
        let deadline = self.request_deadline();
        loop {
            match self.recv(Some(deadline))? {
                Some(Inbound::TopicClosed(c)) if c.request_id == request_id => {
                    return if c.status == 0 {
                        Ok(c.last_seq)
                    } else {
                        Err(ClientError::Refused(c.status))
                    };
                }
                Some(other) => self.handle_unsolicited(other),
                None => return Err(self.request_timed_out("TOPIC_CLOSED")),
            }
        }
    }

    /// Reads the stored path of `player` (the `client_id` its phone sent in
    /// HELLO): every position with `client_ts_ms >= since_ms` (0: the whole
    /// path), collected from the PATH frames of the answer. Events that
    /// arrive meanwhile are kept for [`Client::next`].
    ///
    /// A non-zero status is [`ClientError::Refused`] (`StorageFailed`: the
    /// server keeps no paths or cannot read them; `Overloaded`: a query of
    /// this connection is still being answered). The whole answer must
    /// arrive within `request_timeout_ms`. Not retried if the connection
    /// drops meanwhile; calling again is safe (a query changes nothing).
    pub fn path(&mut self, player: &str, since_ms: u64) -> Result<PathAnswer, ClientError> {
        let max = self.config.limits.client_id_bytes_max;
        if player.is_empty() || player.len() > usize::from(max) {
            return Err(ClientError::InvalidInput(format!(
                "player {player:?} must be 1 to {max} bytes"
            )));
        }
        self.ensure_connected(None)?;
        let request_id = self.take_request_id();
        self.send(&Frame::PathQuery(PathQuery {
            request_id,
            since_ms,
            player: player.as_bytes(),
        }))?;
        let deadline = self.request_deadline();
        let mut answer = PathAnswer {
            positions: Vec::new(),
            truncated: false,
            corrupt: false,
        };
        loop {
            match self.recv(Some(deadline))? {
                Some(Inbound::Path(p)) if p.request_id == request_id => {
                    if p.status != 0 {
                        return Err(ClientError::Refused(p.status));
                    }
                    answer.positions.extend(p.positions);
                    answer.corrupt |= p.flags & PATH_FLAG_CORRUPT != 0;
                    if p.flags & PATH_FLAG_LAST != 0 {
                        answer.truncated = p.flags & PATH_FLAG_TRUNCATED != 0;
                        return Ok(answer);
                    }
                }
                Some(other) => self.handle_unsolicited(other),
                None => return Err(self.request_timed_out("PATH")),
            }
        }
    }

    /// Subscribes to `topic` and waits for SUBSCRIBED. Replayed events (for
    /// `From` / `Resume`) follow through [`Client::next`].
    pub fn subscribe(&mut self, topic: &str, start: Start) -> Result<OwnedSubscribed, ClientError> {
        self.check_topic(topic)?;
        if self.subs.contains_key(topic) {
            return Err(ClientError::InvalidInput(format!(
                "already subscribed to {topic}; unsubscribe first"
            )));
        }
        self.ensure_connected(None)?;
        let max = usize::from(self.welcome.subscriptions_max);
        if self.subs.len() >= max {
            return Err(ClientError::InvalidInput(format!(
                "the server allows {max} subscriptions per connection"
            )));
        }
        let (mode, epoch, last_seq) = match start {
            Start::Live => (StartMode::Live, 0, 0),
            Start::From(seq) => (StartMode::Resume, 0, seq.saturating_sub(1)),
            Start::Resume { epoch, last_seq } => (StartMode::Resume, epoch, last_seq),
        };
        self.send(&Frame::Subscribe(Subscribe {
            mode,
            epoch,
            last_seq,
            topic: topic.as_bytes(),
        }))?;
        let deadline = self.request_deadline();
        loop {
            match self.recv(Some(deadline))? {
                Some(Inbound::Subscribed(s)) if s.topic == topic => {
                    if s.status == SubscribeStatus::NotAuthorized {
                        return Err(ClientError::Refused(ErrorCode::NotAuthorized as u16));
                    }
                    let state = state_after_subscribed(&s, mode, epoch, last_seq);
                    self.subs.insert(s.topic.clone(), state);
                    return Ok(s);
                }
                Some(other) => self.handle_unsolicited(other),
                None => return Err(self.request_timed_out("SUBSCRIBED")),
            }
        }
    }

    /// Ends a subscription. No event of `topic` is delivered after this
    /// returns, even one already received. While disconnected this only
    /// forgets the topic (the next connection will not subscribe it).
    pub fn unsubscribe(&mut self, topic: &str) -> Result<(), ClientError> {
        if self.subs.remove(topic).is_none() {
            return Err(ClientError::InvalidInput(format!(
                "not subscribed to {topic}"
            )));
        }
        self.queue
            .retain(|d| !matches!(d, Delivery::Event(e) if e.topic == topic));
        if self.conn.is_none() {
            return Ok(());
        }
        self.send(&Frame::Unsubscribe {
            topic: topic.as_bytes(),
        })?;
        let deadline = self.request_deadline();
        loop {
            match self.recv(Some(deadline))? {
                Some(Inbound::Unsubscribed(t)) if t == topic => return Ok(()),
                Some(other) => self.handle_unsolicited(other),
                None => return Err(self.request_timed_out("UNSUBSCRIBED")),
            }
        }
    }

    /// Sends a position fix. The server does not acknowledge it.
    pub fn send_position(&mut self, position: Position) -> Result<(), ClientError> {
        if position.validate().is_err() {
            return Err(ClientError::InvalidInput(format!(
                "position out of range: {position:?}"
            )));
        }
        self.ensure_connected(None)?;
        self.send(&Frame::Position(position))
    }

    /// Blocks until the next delivery. Reconnects (when configured) as
    /// often as needed; returns an error only when the client gives up.
    // Not `Iterator::next`: it blocks and can fail, and the name is the
    // one client ports use.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Delivery, ClientError> {
        loop {
            if let Some(d) = self.next_until(None)? {
                return Ok(d);
            }
        }
    }

    /// Like [`Client::next`], but returns `Ok(None)` after `timeout`. A
    /// reconnect attempt already started is finished first, so the call can
    /// overrun by up to `connect_timeout_ms` + `request_timeout_ms`.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Delivery>, ClientError> {
        self.next_until(Some(Instant::now() + timeout))
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Result<Option<Delivery>, ClientError> {
        loop {
            if let Some(d) = self.queue.pop_front() {
                return Ok(Some(d));
            }
            if !self.ensure_connected(deadline)? {
                return Ok(None);
            }
            // A reconnect queues its deliveries: hand them out before waiting.
            if !self.queue.is_empty() {
                continue;
            }
            match self.recv(deadline) {
                Ok(Some(inbound)) => self.handle_unsolicited(inbound),
                Ok(None) => return Ok(None),
                // `recv` has recorded the loss; the next turn reconnects.
                Err(e) if self.closed => return Err(e),
                Err(_) => {}
            }
        }
    }

    // -- connection management ---------------------------------------------

    /// Makes sure there is a connection, reconnecting (with backoff) if
    /// needed. `Ok(false)`: the deadline came first.
    fn ensure_connected(&mut self, deadline: Option<Instant>) -> Result<bool, ClientError> {
        loop {
            if self.conn.is_some() {
                return Ok(true);
            }
            let next_attempt = match &self.lost {
                Some(lost) if !self.closed => lost.next_attempt,
                _ => return Err(ClientError::Closed),
            };
            let now = Instant::now();
            if let Some(deadline) = deadline {
                if deadline < next_attempt {
                    std::thread::sleep(deadline.saturating_duration_since(now));
                    return Ok(false);
                }
            }
            std::thread::sleep(next_attempt.saturating_duration_since(now));
            self.reconnect_once()?;
        }
    }

    /// One reconnect attempt. `Err` only for a failure that retrying cannot
    /// fix; other failures schedule the next attempt.
    fn reconnect_once(&mut self) -> Result<(), ClientError> {
        if self.token_expired {
            // The same token would be refused: the app must set a new one.
            return Err(ClientError::TokenExpired);
        }
        let Some(lost) = self.lost.take() else {
            return Ok(());
        };
        let attempts = lost.attempts + 1;
        let addr = lost.redirect.as_deref().unwrap_or(&self.config.server);
        match Conn::open(addr, &self.config) {
            Ok((conn, welcome)) => {
                self.conn = Some(conn);
                self.welcome = welcome;
                self.connected_at = Instant::now();
                self.attempts_before = attempts;
                self.queue.push_back(Delivery::Reconnected {
                    reason: lost.reason,
                    attempts,
                });
                match self.resubscribe_all() {
                    Err(e) if e.is_fatal() => {
                        self.closed = true;
                        Err(e)
                    }
                    // Any other failure was recorded as a new loss by
                    // `send` / `recv`; the caller's loop tries again.
                    _ => Ok(()),
                }
            }
            Err(e) if e.is_fatal() => {
                self.closed = true;
                Err(e)
            }
            Err(e) => {
                let goaway = match &e {
                    ClientError::GoAway(g) => Some(g),
                    _ => None,
                };
                self.lost = Some(Lost {
                    reason: lost.reason,
                    next_attempt: Instant::now()
                        + retry_delay(&self.config, &mut self.rng, attempts, goaway),
                    redirect: goaway.and_then(redirect_of),
                    attempts,
                });
                Ok(())
            }
        }
    }

    /// Re-SUBSCRIBEs every topic with Resume from its saved point and queues
    /// each SUBSCRIBED as a delivery.
    fn resubscribe_all(&mut self) -> Result<(), ClientError> {
        let subs: Vec<(String, SubState)> =
            self.subs.iter().map(|(t, s)| (t.clone(), *s)).collect();
        // Pipelined: all requests first, then the answers, in any order.
        for (topic, state) in &subs {
            self.send(&Frame::Subscribe(Subscribe {
                mode: StartMode::Resume,
                epoch: state.epoch,
                last_seq: state.last_seq,
                topic: topic.as_bytes(),
            }))?;
        }
        let mut waiting: BTreeSet<&str> = subs.iter().map(|(t, _)| t.as_str()).collect();
        let deadline = self.request_deadline();
        while !waiting.is_empty() {
            match self.recv(Some(deadline))? {
                Some(Inbound::Subscribed(s)) if waiting.remove(s.topic.as_str()) => {
                    if s.status == SubscribeStatus::NotAuthorized {
                        // The new connection's token no longer allows it:
                        // the subscription ends (the app sees the status).
                        self.subs.remove(&s.topic);
                    } else if let Some(state) = self.subs.get_mut(&s.topic) {
                        *state = state_after_subscribed(
                            &s,
                            StartMode::Resume,
                            state.epoch,
                            state.last_seq,
                        );
                    }
                    self.queue.push_back(Delivery::Subscribed(s));
                }
                Some(other) => self.handle_unsolicited(other),
                None => return Err(self.request_timed_out("SUBSCRIBED after reconnect")),
            }
        }
        Ok(())
    }

    /// Forgets the connection and schedules the reconnect (or closes the
    /// client if reconnecting is off).
    fn connection_lost(&mut self, reason: &ClientError) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.frames.stream.tcp().shutdown(Shutdown::Both);
        }
        if !self.config.reconnect {
            self.closed = true;
            return;
        }
        let goaway = match reason {
            ClientError::GoAway(g) => Some(g),
            _ => None,
        };
        self.token_expired |= goaway.is_some_and(|g| g.reason == GoAwayReason::TokenExpired);
        // A connection that lived long enough counts as a success and resets
        // the backoff; one that died young (a server crashing at startup, a
        // proxy accepting then closing) keeps it growing.
        let lived = self.connected_at.elapsed();
        let attempts = if lived >= Duration::from_millis(self.config.backoff_max_ms) {
            0
        } else {
            self.attempts_before
        };
        self.lost = Some(Lost {
            reason: reason.to_string(),
            next_attempt: Instant::now()
                + retry_delay(&self.config, &mut self.rng, attempts, goaway),
            redirect: goaway.and_then(redirect_of),
            attempts,
        });
    }

    fn request_timed_out(&mut self, what: &'static str) -> ClientError {
        // The request may still be answered later; the connection's state is
        // unknown, so start over on a fresh one.
        let e = ClientError::Timeout(what);
        self.connection_lost(&e);
        e
    }

    /// A fresh request id; never 0, which TOPIC_CLOSED reserves for the
    /// notice to subscribers.
    fn take_request_id(&mut self) -> u32 {
        if self.next_request_id == 0 {
            self.next_request_id = 1;
        }
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        request_id
    }

    fn request_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.request_timeout_ms)
    }

    // -- frames ---------------------------------------------------------------

    fn send(&mut self, frame: &Frame<'_>) -> Result<(), ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::Closed);
        };
        if let Err(e) = conn.send(frame) {
            self.connection_lost(&e);
            return Err(e);
        }
        Ok(())
    }

    /// The next frame the caller must look at (`None`: deadline). A frame
    /// that ends the connection (GOAWAY, ERROR) and every read failure are
    /// recorded as a loss and returned as the error.
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Inbound>, ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::Closed);
        };
        let err = match conn.recv(deadline) {
            Ok(Some(Inbound::GoAway(g))) => ClientError::GoAway(g),
            Ok(Some(Inbound::Error { code, message })) => ClientError::Server { code, message },
            Ok(other) => return Ok(other),
            Err(e) => e,
        };
        self.connection_lost(&err);
        Err(err)
    }

    /// A frame nobody in particular waits for.
    fn handle_unsolicited(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Event(e) => {
                if self.accept_event(&e) {
                    self.queue.push_back(Delivery::Event(e));
                }
            }
            // The topic was closed: the subscription has ended, and must not
            // be resumed on a reconnect. Events already queued came before
            // the close and stay deliverable.
            Inbound::TopicClosed(c) if c.request_id == 0 => {
                if self.subs.remove(&c.topic).is_some() {
                    self.queue.push_back(Delivery::Closed {
                        topic: c.topic,
                        last_seq: c.last_seq,
                    });
                }
            }
            // Answers to requests that timed out on an earlier connection
            // cannot reach us (we drop the connection on timeout), so these
            // are harmless server quirks: ignore them.
            Inbound::PublishAck(_)
            | Inbound::Subscribed(_)
            | Inbound::Unsubscribed(_)
            | Inbound::TopicClosed(_)
            | Inbound::Path(_) => {}
            // `recv` turns these into errors; listed for completeness.
            Inbound::GoAway(_) | Inbound::Error { .. } => {}
        }
    }

    /// Updates the topic's resume point; false for an event to drop: a
    /// duplicate (seq already seen in this epoch) or a topic no longer
    /// subscribed.
    fn accept_event(&mut self, e: &OwnedEvent) -> bool {
        let Some(state) = self.subs.get_mut(&e.topic) else {
            return false;
        };
        if e.epoch == state.epoch && e.seq <= state.last_seq {
            return false;
        }
        state.epoch = e.epoch;
        state.last_seq = e.seq;
        true
    }

    fn check_topic(&self, topic: &str) -> Result<(), ClientError> {
        let limits = Limits {
            topic_bytes_max: self.welcome.topic_bytes_max,
            ..self.config.limits
        };
        if valid_topic(topic.as_bytes(), &limits) {
            Ok(())
        } else {
            Err(ClientError::InvalidInput(format!(
                "invalid topic {topic:?}: 1 to {} bytes of A-Z a-z 0-9 _ . : -",
                limits.topic_bytes_max
            )))
        }
    }
}

/// Resume point right after SUBSCRIBED: the highest sequence the client
/// must NOT be given again. Too low is harmless (only duplicates would slip
/// through, and a fresh subscription has none); too high would drop events.
fn state_after_subscribed(
    s: &OwnedSubscribed,
    mode: StartMode,
    asked_epoch: u64,
    asked_last_seq: u64,
) -> SubState {
    let last_seq = match mode {
        // Live starts after the newest event at subscription time.
        StartMode::Live => s.last_seq,
        // Resume in the same epoch (0 = "current"): replay follows from
        // what we asked for (or from oldest_seq if that is gone).
        StartMode::Resume
            if s.status != SubscribeStatus::EpochChanged
                && (asked_epoch == 0 || asked_epoch == s.epoch) =>
        {
            asked_last_seq
        }
        // A new epoch: its sequences restart, accept everything.
        StartMode::Resume => 0,
    };
    SubState {
        epoch: s.epoch,
        last_seq,
    }
}

/// Topics are checked ASCII by the decoder, so this never loses anything.
fn topic_string(topic: &[u8]) -> String {
    String::from_utf8_lossy(topic).into_owned()
}

// ---------------------------------------------------------------------------
// One connection

/// Server frames, owned (they outlive the read buffer). PING and PONG are
/// handled inside [`Conn::recv`] and never come out.
enum Inbound {
    Subscribed(OwnedSubscribed),
    Unsubscribed(String),
    PublishAck(PublishAck),
    TopicClosed(OwnedTopicClosed),
    Path(OwnedPath),
    Event(OwnedEvent),
    GoAway(OwnedGoAway),
    Error { code: u16, message: String },
}

/// A TOPIC_CLOSED frame: an answer (`request_id` not 0) or a notice.
struct OwnedTopicClosed {
    request_id: u32,
    status: u16,
    last_seq: u64,
    topic: String,
}

impl From<TopicClosed<'_>> for OwnedTopicClosed {
    fn from(c: TopicClosed<'_>) -> OwnedTopicClosed {
        OwnedTopicClosed {
            request_id: c.request_id,
            status: c.status,
            last_seq: c.last_seq,
            topic: topic_string(c.topic),
        }
    }
}

/// One PATH frame, with its positions decoded.
struct OwnedPath {
    request_id: u32,
    status: u16,
    flags: u8,
    positions: Vec<Position>,
}

impl From<Path<'_>> for OwnedPath {
    fn from(p: Path<'_>) -> OwnedPath {
        OwnedPath {
            request_id: p.request_id,
            status: p.status,
            flags: p.flags,
            positions: p.positions().collect(),
        }
    }
}

/// What one decoded frame means to the connection.
enum Received {
    Welcome(Welcome),
    Ping(u64),
    Pong,
    Other(Inbound),
}

impl Received {
    fn from_frame(frame: Frame<'_>) -> Result<Received, ClientError> {
        Ok(match frame {
            Frame::Welcome(w) => Received::Welcome(w),
            Frame::Ping { nonce } => Received::Ping(nonce),
            Frame::Pong { .. } => Received::Pong,
            Frame::Subscribed(s) => Received::Other(Inbound::Subscribed(s.into())),
            Frame::Unsubscribed { topic } => {
                Received::Other(Inbound::Unsubscribed(topic_string(topic)))
            }
            Frame::PublishAck(a) => Received::Other(Inbound::PublishAck(a)),
            Frame::TopicClosed(c) => Received::Other(Inbound::TopicClosed(c.into())),
            Frame::Path(p) => Received::Other(Inbound::Path(p.into())),
            Frame::Event(e) => Received::Other(Inbound::Event(e.into())),
            Frame::GoAway(g) => Received::Other(Inbound::GoAway((&g).into())),
            Frame::Error(e) => Received::Other(Inbound::Error {
                code: e.code,
                message: String::from_utf8_lossy(e.message).into_owned(),
            }),
            Frame::Hello(_)
            | Frame::Subscribe(_)
            | Frame::Unsubscribe { .. }
            | Frame::Publish(_)
            | Frame::TopicClose(_)
            | Frame::Position(_)
            | Frame::PathQuery(_) => {
                return Err(ClientError::Protocol(format!(
                    "the server sent {}, a frame only clients send",
                    frame.frame_type()
                )))
            }
        })
    }
}

struct Conn {
    frames: FrameConn<Stream>,
    /// PING after this long without sending anything; `None`: never.
    heartbeat: Option<Duration>,
    /// Dead after this long without receiving anything; `None`: never.
    dead_after: Option<Duration>,
    last_sent: Instant,
    last_recv: Instant,
    ping_nonce: u64,
}

impl Conn {
    /// TCP connect, HELLO, WELCOME.
    fn open(addr: &str, config: &ClientConfig) -> Result<(Conn, Welcome), ClientError> {
        if config.client_id.len() > usize::from(config.limits.client_id_bytes_max) {
            return Err(ClientError::InvalidInput(format!(
                "client_id is over {} bytes",
                config.limits.client_id_bytes_max
            )));
        }
        if config.token.len() > usize::from(config.limits.token_bytes_max) {
            return Err(ClientError::InvalidInput(format!(
                "token is over {} bytes",
                config.limits.token_bytes_max
            )));
        }
        let timeout = Duration::from_millis(config.connect_timeout_ms.max(1));
        let stream = Stream::open(addr, config, timeout)?;
        let now = Instant::now();
        let mut conn = Conn {
            frames: FrameConn::new(stream, config.limits),
            heartbeat: None,
            dead_after: None,
            last_sent: now,
            last_recv: now,
            ping_nonce: 0,
        };
        conn.send(&Frame::Hello(Hello {
            version_min: PROTOCOL_VERSION,
            version_max: PROTOCOL_VERSION,
            client_id: config.client_id.as_bytes(),
            token: &config.token,
        }))?;
        let welcome = match conn.recv_raw(Some(now + timeout))? {
            Some(Received::Welcome(w)) => w,
            Some(Received::Other(Inbound::Error { code, message })) => {
                return Err(ClientError::Server { code, message })
            }
            Some(Received::Other(Inbound::GoAway(g))) => return Err(ClientError::GoAway(g)),
            Some(_) => {
                return Err(ClientError::Protocol(
                    "the server's first frame is not WELCOME".into(),
                ))
            }
            None => return Err(ClientError::Timeout("WELCOME")),
        };
        if welcome.version != PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!(
                "the server chose protocol version {}; this client speaks only {PROTOCOL_VERSION}",
                welcome.version
            )));
        }
        // Accept everything the server says it may send.
        let limits = &mut conn.frames.limits;
        limits.frame_bytes_max = limits.frame_bytes_max.max(welcome.frame_bytes_max);
        limits.payload_bytes_max = limits.payload_bytes_max.max(welcome.payload_bytes_max);
        limits.topic_bytes_max = limits.topic_bytes_max.max(welcome.topic_bytes_max);
        if welcome.heartbeat_ms > 0 {
            let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_ms));
            let dead_after = heartbeat * 2 + DEAD_GRACE;
            conn.heartbeat = Some(heartbeat);
            conn.dead_after = Some(dead_after);
            // A write that cannot finish in that time is as dead as a read.
            conn.frames
                .stream
                .tcp()
                .set_write_timeout(Some(dead_after))?;
        }
        Ok((conn, welcome))
    }

    fn send(&mut self, frame: &Frame<'_>) -> Result<(), ClientError> {
        // A partial write leaves the stream mid-frame: any error here ends
        // the connection (the caller treats it as lost).
        let written = self.frames.send(frame);
        written.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Timeout("the server to accept our data")
            }
            _ => self.frames.stream.failure(e),
        })?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Next frame for the client; answers PINGs and swallows PONGs.
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Inbound>, ClientError> {
        loop {
            match self.recv_raw(deadline)? {
                None => return Ok(None),
                Some(Received::Other(inbound)) => return Ok(Some(inbound)),
                Some(Received::Ping(nonce)) => self.send(&Frame::Pong { nonce })?,
                // Its only job was to arrive, which already counted as life.
                Some(Received::Pong) => {}
                Some(Received::Welcome(_)) => {
                    return Err(ClientError::Protocol("WELCOME after the handshake".into()))
                }
            }
        }
    }

    /// Next decoded frame, sending heartbeats while waiting. `None`: the
    /// deadline passed. Errors end the connection.
    fn recv_raw(&mut self, deadline: Option<Instant>) -> Result<Option<Received>, ClientError> {
        loop {
            if let Some(received) = self.take_frame()? {
                return Ok(Some(received));
            }
            let now = Instant::now();
            let ping_at = self.heartbeat.map(|h| self.last_sent + h);
            let dead_at = self.dead_after.map(|d| self.last_recv + d);
            if ping_at.is_some_and(|t| now >= t) {
                self.ping_nonce = self.ping_nonce.wrapping_add(1);
                self.send(&Frame::Ping {
                    nonce: self.ping_nonce,
                })?;
                continue;
            }
            if dead_at.is_some_and(|t| now >= t) {
                return Err(ClientError::Timeout("any data from the server (heartbeat)"));
            }
            if deadline.is_some_and(|t| now >= t) {
                return Ok(None);
            }
            // Sleep in read() until data, or the next thing we must do.
            let wake = [ping_at, dead_at, deadline].into_iter().flatten().min();
            let timeout = wake.map(|t| {
                t.saturating_duration_since(now)
                    .max(Duration::from_millis(1))
            });
            self.frames.stream.tcp().set_read_timeout(timeout)?;
            self.fill()?;
        }
    }

    /// Decodes one frame from the buffer, if a whole one is there.
    fn take_frame(&mut self) -> Result<Option<Received>, ClientError> {
        match self.frames.next_frame() {
            Ok(None) => Ok(None),
            Ok(Some(frame)) => Ok(Some(Received::from_frame(frame)?)),
            Err(e) => Err(ClientError::Protocol(format!(
                "bad frame from the server: {e}"
            ))),
        }
    }

    /// One read() into the buffer; a read timeout is not an error.
    fn fill(&mut self) -> Result<(), ClientError> {
        match self.frames.fill() {
            Ok(Filled::Closed) => Err(ClientError::Closed),
            Ok(Filled::Bytes(_)) => {
                self.last_recv = Instant::now();
                Ok(())
            }
            Ok(Filled::NotYet) => Ok(()),
            Err(e) => Err(self.frames.stream.failure(e)),
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

// ---------------------------------------------------------------------------
// Randomness for jitter and client ids (no dependency needed: xorshift64*
// seeded from std's per-process random hasher keys and the clock).

pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn seeded() -> Rng {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        h.write_u128(nanos);
        Rng(h.finish() | 1) // xorshift must not start at 0
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..=n` for jitter.
    pub(crate) fn below_inclusive(&mut self, n: u64) -> u64 {
        match n.checked_add(1) {
            Some(m) => self.next_u64() % m,
            None => self.next_u64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribed(status: SubscribeStatus, epoch: u64, oldest: u64, last: u64) -> OwnedSubscribed {
        OwnedSubscribed {
            topic: "t".into(),
            status,
            epoch,
            oldest_seq: oldest,
            last_seq: last,
        }
    }

    #[test]
    fn resume_point_after_subscribed() {
        use SubscribeStatus::*;
        let live = state_after_subscribed(&subscribed(Ok, 7, 1, 50), StartMode::Live, 0, 0);
        assert_eq!((live.epoch, live.last_seq), (7, 50));
        // From(10) on the current epoch: replay 10.. is expected.
        let from = state_after_subscribed(&subscribed(Ok, 7, 1, 50), StartMode::Resume, 0, 9);
        assert_eq!((from.epoch, from.last_seq), (7, 9));
        let gone = state_after_subscribed(
            &subscribed(NotRecovered, 7, 30, 50),
            StartMode::Resume,
            7,
            9,
        );
        assert_eq!((gone.epoch, gone.last_seq), (7, 9));
        let reset =
            state_after_subscribed(&subscribed(EpochChanged, 8, 1, 3), StartMode::Resume, 7, 9);
        assert_eq!((reset.epoch, reset.last_seq), (8, 0));
    }

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
