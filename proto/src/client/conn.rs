//! One connection: HELLO and WELCOME, heartbeats (PING when idle, a
//! server silent too long is dead), PINGs answered, and the server's
//! frames turned into owned [`Inbound`] values.

use super::delivery::{topic_string, OwnedEvent, OwnedGoAway, OwnedSubscribed};
use super::stream::Stream;
use super::{ClientConfig, ClientError};
use crate::frame::*;
use crate::frame_conn::{Filled, FrameConn};
use std::io;
use std::time::{Duration, Instant};

/// Extra silence tolerated on top of two heartbeat periods before the
/// connection is declared dead: covers a slow mobile network round trip.
const DEAD_GRACE: Duration = Duration::from_secs(5);

/// Server frames, owned (they outlive the read buffer). PING and PONG are
/// handled inside [`Conn::recv`] and never come out.
pub(super) enum Inbound {
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
pub(super) struct OwnedTopicClosed {
    pub(super) request_id: u32,
    pub(super) status: u16,
    pub(super) last_seq: u64,
    pub(super) topic: String,
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
pub(super) struct OwnedPath {
    pub(super) request_id: u32,
    pub(super) status: u16,
    pub(super) flags: u8,
    pub(super) positions: Vec<Position>,
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

pub(super) struct Conn {
    pub(super) frames: FrameConn<Stream>,
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
    pub(super) fn open(addr: &str, config: &ClientConfig) -> Result<(Conn, Welcome), ClientError> {
        let limits = &config.limits;
        ClientError::check_length(
            "client_id",
            config.client_id.len(),
            limits.client_id_bytes_max,
        )?;
        ClientError::check_length("token", config.token.len(), limits.token_bytes_max)?;
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

    pub(super) fn send(&mut self, frame: &Frame<'_>) -> Result<(), ClientError> {
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
    pub(super) fn recv(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Inbound>, ClientError> {
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
