//! Encoding and decoding of protocol v1 frames.
//!
//! docs/PROTOCOL.md is the normative description of the bytes; this module
//! implements it. Every frame is `length: u32 BE` (bytes that follow), then
//! `type: u8`, then a body whose layout depends on the type. All integers
//! are big-endian.
//!
//! [`decode`] works on borrowed bytes: the frame it returns points into the
//! caller's buffer, so decoding allocates nothing (except the GOAWAY resume
//! list) and never copies a payload.

use crate::frame::*;
use std::fmt;

/// Size limits a peer enforces on the frames it receives.
///
/// The server announces its own in WELCOME; the same values are the client's
/// defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted value of the length prefix (type byte + body).
    pub frame_bytes_max: u32,
    /// Largest PUBLISH / EVENT payload.
    pub payload_bytes_max: u32,
    /// Longest topic, at least 1 (the wire cannot carry more than 255).
    pub topic_bytes_max: u8,
    /// Longest HELLO client id (and PATH_QUERY player, which is one).
    pub client_id_bytes_max: u8,
    /// Longest HELLO token.
    pub token_bytes_max: u16,
}

// Worst-case body sizes, with the type byte, for the frames whose size does
// not depend on a configurable payload or token: a str8 can always be 255.
/// EVENT: type, seq, epoch, publish_ts_ns, topic str8; the payload comes on top.
const EVENT_OVERHEAD: u32 = 1 + 8 + 8 + 8 + 1 + 255;
/// HELLO: type, magic, version_min, version_max, client_id str8, token length;
/// the token comes on top.
const HELLO_OVERHEAD: u32 = 1 + 4 + 2 + 2 + 1 + 255 + 2;
/// SUBSCRIBED, the largest fixed-size frame: type, status, epoch, oldest_seq,
/// last_seq, topic str8. (PUBLISH is smaller than EVENT, ERROR, PATH_QUERY,
/// TOPIC_CLOSE, TOPIC_CLOSED and an empty GOAWAY are smaller than this.)
const FIXED_FRAME_MAX: u32 = 1 + 1 + 8 + 8 + 8 + 1 + 255;

impl Limits {
    /// The defaults: 64 KiB payloads, 64-byte topics and client ids, 4 KiB
    /// tokens, and the smallest frame limit that carries all of them.
    pub const DEFAULT: Limits = Limits {
        frame_bytes_max: Limits::frame_bytes_for(65_536, 4_096),
        payload_bytes_max: 65_536,
        topic_bytes_max: 64,
        client_id_bytes_max: 64,
        token_bytes_max: 4_096,
    };

    /// Smallest frame limit that still carries a payload (resp. token) of the
    /// given size in any frame, with topics and client ids of the wire maximum
    /// of 255 bytes. A GOAWAY resume list is not covered: the server keeps
    /// GOAWAY within the limit by shortening the list. Nor are PATH
    /// positions: the server splits an answer over as many PATH frames as
    /// the limit needs.
    ///
    /// Saturates at `u32::MAX`; [`Limits::validate`] rejects such sizes.
    pub const fn frame_bytes_for(payload_bytes_max: u32, token_bytes_max: u16) -> u32 {
        let event = EVENT_OVERHEAD.saturating_add(payload_bytes_max);
        let hello = HELLO_OVERHEAD + token_bytes_max as u32;
        let mut max = FIXED_FRAME_MAX;
        if event > max {
            max = event;
        }
        if hello > max {
            max = hello;
        }
        max
    }

    /// Checks that the limits are consistent; the error names the offending
    /// field.
    pub fn validate(&self) -> Result<(), String> {
        if self.topic_bytes_max == 0 {
            return Err("topic_bytes_max must be at least 1".to_string());
        }
        if self.payload_bytes_max > u32::MAX - EVENT_OVERHEAD {
            return Err(format!(
                "payload_bytes_max {} is too large: an EVENT carrying it would not fit a u32 length",
                self.payload_bytes_max
            ));
        }
        let needed = Limits::frame_bytes_for(self.payload_bytes_max, self.token_bytes_max);
        if self.frame_bytes_max < needed {
            return Err(format!(
                "frame_bytes_max {} is below {}, the size needed for payload_bytes_max {} and token_bytes_max {}",
                self.frame_bytes_max, needed, self.payload_bytes_max, self.token_bytes_max
            ));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

/// Why bytes could not be decoded into a frame. A server answers each with
/// ERROR ([`DecodeError::code`]) and closes the connection: after a bad frame
/// the stream cannot be trusted to be aligned on frame boundaries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix is above `Limits::frame_bytes_max`.
    FrameTooLarge {
        len: u32,
        max: u32,
    },
    UnknownFrameType(u8),
    /// The body does not match its type's layout; the text says how.
    Malformed(&'static str),
    /// Empty, longer than `Limits::topic_bytes_max`, or a byte outside
    /// `[A-Za-z0-9_.:-]`.
    InvalidTopic,
    /// A PUBLISH / EVENT payload above `Limits::payload_bytes_max`.
    PayloadTooLarge {
        len: usize,
        max: u32,
    },
}

impl DecodeError {
    /// The code to send in the ERROR frame that answers this.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnknownFrameType(_) => ErrorCode::UnknownFrameType,
            DecodeError::Malformed(_) => ErrorCode::Malformed,
            DecodeError::InvalidTopic => ErrorCode::InvalidTopic,
            DecodeError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes is over the {max}-byte limit")
            }
            DecodeError::UnknownFrameType(t) => write!(f, "unknown frame type 0x{t:02x}"),
            DecodeError::Malformed(why) => write!(f, "malformed frame: {why}"),
            DecodeError::InvalidTopic => f.write_str(
                "invalid topic: it must be non-empty, within the topic length limit, \
                 and only contain A-Z a-z 0-9 _ . : -",
            ),
            DecodeError::PayloadTooLarge { len, max } => {
                write!(f, "payload of {len} bytes is over the {max}-byte limit")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// True if `topic` is 1..=`limits.topic_bytes_max` bytes, each in
/// `[A-Za-z0-9_.:-]`.
pub fn valid_topic(topic: &[u8], limits: &Limits) -> bool {
    !topic.is_empty()
        && topic.len() <= usize::from(limits.topic_bytes_max)
        && topic
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

// ---------------------------------------------------------------------------
// Decoding

/// Decodes one frame from the front of `buf`.
///
/// * `Ok(None)`: `buf` is a prefix of a frame; call again with more bytes.
/// * `Ok(Some((frame, consumed)))`: `frame` borrows from `buf`; the next frame
///   starts at `buf[consumed..]`.
/// * `Err(_)`: the stream is broken; stop reading it.
///
/// An oversized length prefix is rejected as soon as its 4 bytes are present,
/// and an unknown type as soon as its byte is, so a peer cannot make the
/// caller buffer a body it is going to refuse anyway. Never panics; allocates
/// only for the GOAWAY resume list.
pub fn decode<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Option<(Frame<'a>, usize)>, DecodeError> {
    let Some(&[l0, l1, l2, l3]) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    if len == 0 {
        return Err(DecodeError::Malformed(
            "frame length is 0 (it counts the type byte, so it is at least 1)",
        ));
    }
    if len > limits.frame_bytes_max {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: limits.frame_bytes_max,
        });
    }
    let Some(&type_byte) = buf.get(4) else {
        return Ok(None);
    };
    let frame_type =
        FrameType::from_u8(type_byte).ok_or(DecodeError::UnknownFrameType(type_byte))?;
    // On a 16- or 32-bit target a huge `len` saturates, and `get` then
    // reports "need more bytes" rather than overflowing.
    let total = usize::try_from(len).unwrap_or(usize::MAX).saturating_add(4);
    let Some(body) = buf.get(HEADER_BYTES..total) else {
        return Ok(None);
    };
    let frame = decode_body(frame_type, body, limits)?;
    Ok(Some((frame, total)))
}

fn decode_body<'a>(
    frame_type: FrameType,
    body: &'a [u8],
    limits: &Limits,
) -> Result<Frame<'a>, DecodeError> {
    let mut r = Reader::new(body, frame_type);
    let frame = match frame_type {
        FrameType::Hello => {
            if r.take(4)? != HELLO_MAGIC {
                return Err(DecodeError::Malformed(
                    "HELLO does not start with \"CLUE\": the peer does not speak the cluecast protocol",
                ));
            }
            let version_min = r.u16()?;
            let version_max = r.u16()?;
            let client_id = r.str8()?;
            if client_id.len() > usize::from(limits.client_id_bytes_max) {
                return Err(DecodeError::Malformed("HELLO client_id is over the limit"));
            }
            let token = r.str16()?;
            if token.len() > usize::from(limits.token_bytes_max) {
                return Err(DecodeError::Malformed("HELLO token is over the limit"));
            }
            Frame::Hello(Hello {
                version_min,
                version_max,
                client_id,
                token,
            })
        }
        FrameType::Welcome => Frame::Welcome(Welcome {
            version: r.u16()?,
            heartbeat_ms: r.u32()?,
            idle_timeout_ms: r.u32()?,
            frame_bytes_max: r.u32()?,
            payload_bytes_max: r.u32()?,
            subscriptions_max: r.u16()?,
            topic_bytes_max: r.u8()?,
        }),
        FrameType::Subscribe => Frame::Subscribe(Subscribe {
            mode: StartMode::from_u8(r.u8()?).ok_or(DecodeError::Malformed(
                "SUBSCRIBE mode is not 0 (Live) or 1 (Resume)",
            ))?,
            epoch: r.u64()?,
            last_seq: r.u64()?,
            topic: r.topic(limits)?,
        }),
        FrameType::Subscribed => Frame::Subscribed(Subscribed {
            status: SubscribeStatus::from_u8(r.u8()?)
                .ok_or(DecodeError::Malformed("SUBSCRIBED status is not 0 to 3"))?,
            epoch: r.u64()?,
            oldest_seq: r.u64()?,
            last_seq: r.u64()?,
            topic: r.topic(limits)?,
        }),
        FrameType::Unsubscribe => Frame::Unsubscribe {
            topic: r.topic(limits)?,
        },
        FrameType::Unsubscribed => Frame::Unsubscribed {
            topic: r.topic(limits)?,
        },
        FrameType::Publish => Frame::Publish(Publish {
            request_id: r.u32()?,
            topic: r.topic(limits)?,
            payload: r.payload(limits)?,
        }),
        FrameType::PublishAck => Frame::PublishAck(PublishAck {
            request_id: r.u32()?,
            status: r.u16()?,
            flags: r.u8()?,
            epoch: r.u64()?,
            seq: r.u64()?,
        }),
        FrameType::Event => Frame::Event(Event {
            seq: r.u64()?,
            epoch: r.u64()?,
            publish_ts_ns: r.u64()?,
            topic: r.topic(limits)?,
            payload: r.payload(limits)?,
        }),
        FrameType::TopicClose => Frame::TopicClose(TopicClose {
            request_id: r.u32()?,
            topic: r.topic(limits)?,
        }),
        FrameType::TopicClosed => Frame::TopicClosed(TopicClosed {
            request_id: r.u32()?,
            status: r.u16()?,
            last_seq: r.u64()?,
            topic: r.topic(limits)?,
        }),
        FrameType::Position => Frame::Position(Position::from_bytes(&r.array()?)),
        FrameType::PathQuery => {
            let request_id = r.u32()?;
            let since_ms = r.u64()?;
            let player = r.str8()?;
            if player.is_empty() {
                return Err(DecodeError::Malformed("PATH_QUERY player is empty"));
            }
            if player.len() > usize::from(limits.client_id_bytes_max) {
                return Err(DecodeError::Malformed(
                    "PATH_QUERY player is over the limit",
                ));
            }
            Frame::PathQuery(PathQuery {
                request_id,
                since_ms,
                player,
            })
        }
        FrameType::Path => {
            let request_id = r.u32()?;
            let status = r.u16()?;
            let flags = r.u8()?;
            let positions = r.rest();
            if positions.len() % POSITION_BYTES != 0 {
                return Err(DecodeError::Malformed(
                    "PATH positions are not a whole number of 20-byte records",
                ));
            }
            Frame::Path(Path {
                request_id,
                status,
                flags,
                positions,
            })
        }
        FrameType::Ping => Frame::Ping { nonce: r.u64()? },
        FrameType::Pong => Frame::Pong { nonce: r.u64()? },
        FrameType::GoAway => {
            let reason = GoAwayReason::from_u8(r.u8()?)
                .ok_or(DecodeError::Malformed("GOAWAY reason is not 0 to 3"))?;
            let retry_after_ms = r.u32()?;
            let reconnect = r.str8()?;
            let count = usize::from(r.u16()?);
            if count > GOAWAY_RESUME_MAX {
                return Err(DecodeError::Malformed("GOAWAY resume count is over 1024"));
            }
            // Size the list by what the body can actually hold (an entry is
            // at least 18 bytes), so a lying count cannot make us allocate.
            let mut resume = Vec::with_capacity(count.min(r.remaining() / 18));
            for _ in 0..count {
                resume.push(ResumePoint {
                    epoch: r.u64()?,
                    last_seq: r.u64()?,
                    topic: r.topic(limits)?,
                });
            }
            Frame::GoAway(GoAway {
                reason,
                retry_after_ms,
                reconnect,
                resume,
            })
        }
        FrameType::Error => Frame::Error(ErrorFrame {
            code: r.u16()?,
            message: r.str8()?,
        }),
    };
    r.finish()?;
    Ok(frame)
}

/// Reads fields off a frame body; every read is bounds-checked.
struct Reader<'a> {
    body: &'a [u8],
    frame_type: FrameType,
}

impl<'a> Reader<'a> {
    fn new(body: &'a [u8], frame_type: FrameType) -> Reader<'a> {
        Reader { body, frame_type }
    }

    fn remaining(&self) -> usize {
        self.body.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.body.len() {
            return Err(DecodeError::Malformed(truncated_message(self.frame_type)));
        }
        let (field, rest) = self.body.split_at(n);
        self.body = rest;
        Ok(field)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn str8(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn str16(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn topic(&mut self, limits: &Limits) -> Result<&'a [u8], DecodeError> {
        let topic = self.str8()?;
        if valid_topic(topic, limits) {
            Ok(topic)
        } else {
            Err(DecodeError::InvalidTopic)
        }
    }

    /// The rest of the body.
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.body)
    }

    /// The rest of the body, as a payload.
    fn payload(&mut self, limits: &Limits) -> Result<&'a [u8], DecodeError> {
        let payload = self.rest();
        // u32 -> usize cannot lose anything on the 32/64-bit targets we run on;
        // saturate anyway rather than cast.
        let max = usize::try_from(limits.payload_bytes_max).unwrap_or(usize::MAX);
        if payload.len() > max {
            return Err(DecodeError::PayloadTooLarge {
                len: payload.len(),
                max: limits.payload_bytes_max,
            });
        }
        Ok(payload)
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(trailing_message(self.frame_type)))
        }
    }
}

fn truncated_message(t: FrameType) -> &'static str {
    match t {
        FrameType::Hello => "HELLO body ends inside a field",
        FrameType::Welcome => "WELCOME body ends inside a field",
        FrameType::Subscribe => "SUBSCRIBE body ends inside a field",
        FrameType::Subscribed => "SUBSCRIBED body ends inside a field",
        FrameType::Unsubscribe => "UNSUBSCRIBE body ends inside a field",
        FrameType::Unsubscribed => "UNSUBSCRIBED body ends inside a field",
        FrameType::Publish => "PUBLISH body ends inside a field",
        FrameType::PublishAck => "PUBLISH_ACK body ends inside a field",
        FrameType::Event => "EVENT body ends inside a field",
        FrameType::TopicClose => "TOPIC_CLOSE body ends inside a field",
        FrameType::TopicClosed => "TOPIC_CLOSED body ends inside a field",
        FrameType::Position => "POSITION body ends inside a field",
        FrameType::PathQuery => "PATH_QUERY body ends inside a field",
        FrameType::Path => "PATH body ends inside a field",
        FrameType::Ping => "PING body ends inside a field",
        FrameType::Pong => "PONG body ends inside a field",
        FrameType::GoAway => "GOAWAY body ends inside a field",
        FrameType::Error => "ERROR body ends inside a field",
    }
}

fn trailing_message(t: FrameType) -> &'static str {
    match t {
        FrameType::Hello => "HELLO body has bytes after its last field",
        FrameType::Welcome => "WELCOME body has bytes after its last field",
        FrameType::Subscribe => "SUBSCRIBE body has bytes after its last field",
        FrameType::Subscribed => "SUBSCRIBED body has bytes after its last field",
        FrameType::Unsubscribe => "UNSUBSCRIBE body has bytes after its last field",
        FrameType::Unsubscribed => "UNSUBSCRIBED body has bytes after its last field",
        FrameType::Publish => "PUBLISH body has bytes after its last field",
        FrameType::PublishAck => "PUBLISH_ACK body has bytes after its last field",
        FrameType::Event => "EVENT body has bytes after its last field",
        FrameType::TopicClose => "TOPIC_CLOSE body has bytes after its last field",
        FrameType::TopicClosed => "TOPIC_CLOSED body has bytes after its last field",
        FrameType::Position => "POSITION body has bytes after its last field",
        FrameType::PathQuery => "PATH_QUERY body has bytes after its last field",
        FrameType::Path => "PATH body has bytes after its last field",
        FrameType::Ping => "PING body has bytes after its last field",
        FrameType::Pong => "PONG body has bytes after its last field",
        FrameType::GoAway => "GOAWAY body has bytes after its last field",
        FrameType::Error => "ERROR body has bytes after its last field",
    }
}

// ---------------------------------------------------------------------------
// Encoding

/// Where encoded bytes go: a growing `Vec` or a fixed slice.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A slice already checked to be exactly the frame's length.
struct SliceSink<'s> {
    out: &'s mut [u8],
    pos: usize,
}

impl Sink for SliceSink<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        self.out[self.pos..end].copy_from_slice(bytes);
        self.pos = end;
    }
}

/// Typed writes on top of a [`Sink`].
struct Writer<'s, S: Sink>(&'s mut S);

impl<S: Sink> Writer<'_, S> {
    fn u8(&mut self, v: u8) {
        self.0.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.0.put(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.put(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.put(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.put(v);
    }
    /// Length already checked by `Frame::assert_encodable`.
    fn str8(&mut self, v: &[u8]) {
        self.u8(v.len() as u8);
        self.0.put(v);
    }
    /// Length already checked by `Frame::assert_encodable`.
    fn str16(&mut self, v: &[u8]) {
        self.u16(v.len() as u16);
        self.0.put(v);
    }
}

/// Panics if a str8 field is over 255 bytes: its length would be truncated
/// and the peer would read the rest of it as the next fields.
fn assert_str8(v: &[u8], field: &str) {
    assert!(
        v.len() <= 255,
        "{field} is {} bytes; a str8 field holds at most 255",
        v.len()
    );
}

impl Frame<'_> {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Welcome(_) => FrameType::Welcome,
            Frame::Subscribe(_) => FrameType::Subscribe,
            Frame::Subscribed(_) => FrameType::Subscribed,
            Frame::Unsubscribe { .. } => FrameType::Unsubscribe,
            Frame::Unsubscribed { .. } => FrameType::Unsubscribed,
            Frame::Publish(_) => FrameType::Publish,
            Frame::PublishAck(_) => FrameType::PublishAck,
            Frame::Event(_) => FrameType::Event,
            Frame::TopicClose(_) => FrameType::TopicClose,
            Frame::TopicClosed(_) => FrameType::TopicClosed,
            Frame::Position(_) => FrameType::Position,
            Frame::PathQuery(_) => FrameType::PathQuery,
            Frame::Path(_) => FrameType::Path,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::Pong { .. } => FrameType::Pong,
            Frame::GoAway(_) => FrameType::GoAway,
            Frame::Error(_) => FrameType::Error,
        }
    }

    /// Size of the body, without the 5 header bytes.
    fn body_len(&self) -> usize {
        match self {
            Frame::Hello(h) => 4 + 2 + 2 + 1 + h.client_id.len() + 2 + h.token.len(),
            Frame::Welcome(_) => 2 + 4 + 4 + 4 + 4 + 2 + 1,
            Frame::Subscribe(s) => 1 + 8 + 8 + 1 + s.topic.len(),
            Frame::Subscribed(s) => 1 + 8 + 8 + 8 + 1 + s.topic.len(),
            Frame::Unsubscribe { topic } | Frame::Unsubscribed { topic } => 1 + topic.len(),
            Frame::Publish(p) => 4 + 1 + p.topic.len() + p.payload.len(),
            Frame::PublishAck(_) => PublishAck::ENCODED_BYTES - HEADER_BYTES,
            Frame::Event(e) => 8 + 8 + 8 + 1 + e.topic.len() + e.payload.len(),
            Frame::TopicClose(c) => 4 + 1 + c.topic.len(),
            Frame::TopicClosed(c) => {
                TopicClosed::ENCODED_BYTES_BEFORE_TOPIC - HEADER_BYTES + c.topic.len()
            }
            Frame::Position(_) => POSITION_BYTES,
            Frame::PathQuery(q) => 4 + 8 + 1 + q.player.len(),
            Frame::Path(p) => 4 + 2 + 1 + p.positions.len(),
            Frame::Ping { .. } | Frame::Pong { .. } => 8,
            Frame::GoAway(g) => {
                let entries: usize = g.resume.iter().map(|p| 8 + 8 + 1 + p.topic.len()).sum();
                1 + 4 + 1 + g.reconnect.len() + 2 + entries
            }
            Frame::Error(e) => 2 + 1 + e.message.len(),
        }
    }

    /// Size of the whole encoded frame, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + self.body_len()
    }

    /// Appends the encoded frame to `out`.
    ///
    /// Panics if a field is too long for its length prefix (str8 over 255
    /// bytes, str16 over 65535, more than 1024 GOAWAY entries, a frame over
    /// 4 GiB): writing it anyway would desynchronise the stream. Also panics
    /// on PATH positions that are not whole 20-byte records, which no peer
    /// could decode.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.assert_encodable();
        out.reserve(self.encoded_len());
        self.write(out);
    }

    /// Writes the encoded frame into `out[..encoded_len()]` and returns
    /// `encoded_len()`.
    ///
    /// Panics if `out` is shorter, or for the reasons given on [`Frame::encode`].
    pub fn encode_to_slice(&self, out: &mut [u8]) -> usize {
        self.assert_encodable();
        let len = self.encoded_len();
        assert!(
            out.len() >= len,
            "encode_to_slice: {}-byte buffer for a {len}-byte frame",
            out.len()
        );
        let mut sink = SliceSink {
            out: &mut out[..len],
            pos: 0,
        };
        self.write(&mut sink);
        assert_eq!(sink.pos, len, "encoded_len disagrees with the encoder");
        len
    }

    fn assert_encodable(&self) {
        match self {
            Frame::Hello(h) => {
                assert_str8(h.client_id, "HELLO client_id");
                assert!(
                    h.token.len() <= usize::from(u16::MAX),
                    "HELLO token is {} bytes; a str16 field holds at most 65535",
                    h.token.len()
                );
            }
            Frame::Subscribe(Subscribe { topic, .. })
            | Frame::Subscribed(Subscribed { topic, .. })
            | Frame::Unsubscribe { topic }
            | Frame::Unsubscribed { topic }
            | Frame::Publish(Publish { topic, .. })
            | Frame::Event(Event { topic, .. })
            | Frame::TopicClose(TopicClose { topic, .. })
            | Frame::TopicClosed(TopicClosed { topic, .. }) => assert_str8(topic, "topic"),
            Frame::GoAway(g) => {
                assert_str8(g.reconnect, "GOAWAY reconnect");
                assert!(
                    g.resume.len() <= GOAWAY_RESUME_MAX,
                    "GOAWAY has {} resume entries; at most {GOAWAY_RESUME_MAX} are allowed",
                    g.resume.len()
                );
                for p in &g.resume {
                    assert_str8(p.topic, "GOAWAY resume topic");
                }
            }
            Frame::Error(e) => assert_str8(e.message, "ERROR message"),
            Frame::PathQuery(q) => assert_str8(q.player, "PATH_QUERY player"),
            Frame::Path(p) => assert!(
                p.positions.len() % POSITION_BYTES == 0,
                "PATH positions are {} bytes, not a multiple of {POSITION_BYTES}",
                p.positions.len()
            ),
            Frame::Welcome(_)
            | Frame::PublishAck(_)
            | Frame::Position(_)
            | Frame::Ping { .. }
            | Frame::Pong { .. } => {}
        }
        assert!(
            self.body_len() < u32::MAX as usize,
            "frame of {} bytes does not fit the u32 length prefix",
            self.encoded_len()
        );
    }

    /// Writes header and body; lengths were checked by `assert_encodable`.
    fn write<S: Sink>(&self, sink: &mut S) {
        let mut w = Writer(sink);
        w.u32((1 + self.body_len()) as u32);
        w.u8(self.frame_type() as u8);
        match self {
            Frame::Hello(h) => {
                w.bytes(&HELLO_MAGIC);
                w.u16(h.version_min);
                w.u16(h.version_max);
                w.str8(h.client_id);
                w.str16(h.token);
            }
            Frame::Welcome(x) => {
                w.u16(x.version);
                w.u32(x.heartbeat_ms);
                w.u32(x.idle_timeout_ms);
                w.u32(x.frame_bytes_max);
                w.u32(x.payload_bytes_max);
                w.u16(x.subscriptions_max);
                w.u8(x.topic_bytes_max);
            }
            Frame::Subscribe(s) => {
                w.u8(s.mode as u8);
                w.u64(s.epoch);
                w.u64(s.last_seq);
                w.str8(s.topic);
            }
            Frame::Subscribed(s) => {
                w.u8(s.status as u8);
                w.u64(s.epoch);
                w.u64(s.oldest_seq);
                w.u64(s.last_seq);
                w.str8(s.topic);
            }
            Frame::Unsubscribe { topic } | Frame::Unsubscribed { topic } => w.str8(topic),
            Frame::Publish(p) => {
                w.u32(p.request_id);
                w.str8(p.topic);
                w.bytes(p.payload);
            }
            Frame::PublishAck(a) => {
                w.u32(a.request_id);
                w.u16(a.status);
                w.u8(a.flags);
                w.u64(a.epoch);
                w.u64(a.seq);
            }
            Frame::Event(e) => {
                w.u64(e.seq);
                w.u64(e.epoch);
                w.u64(e.publish_ts_ns);
                w.str8(e.topic);
                w.bytes(e.payload);
            }
            Frame::TopicClose(c) => {
                w.u32(c.request_id);
                w.str8(c.topic);
            }
            Frame::TopicClosed(c) => {
                w.u32(c.request_id);
                w.u16(c.status);
                w.u64(c.last_seq);
                w.str8(c.topic);
            }
            Frame::Position(p) => w.bytes(&p.to_bytes()),
            Frame::PathQuery(q) => {
                w.u32(q.request_id);
                w.u64(q.since_ms);
                w.str8(q.player);
            }
            Frame::Path(p) => {
                w.u32(p.request_id);
                w.u16(p.status);
                w.u8(p.flags);
                w.bytes(p.positions);
            }
            Frame::Ping { nonce } | Frame::Pong { nonce } => w.u64(*nonce),
            Frame::GoAway(g) => {
                w.u8(g.reason as u8);
                w.u32(g.retry_after_ms);
                w.str8(g.reconnect);
                w.u16(g.resume.len() as u16);
                for p in &g.resume {
                    w.u64(p.epoch);
                    w.u64(p.last_seq);
                    w.str8(p.topic);
                }
            }
            Frame::Error(e) => {
                w.u16(e.code);
                w.str8(e.message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_consistent() {
        assert_eq!(Limits::default(), Limits::DEFAULT);
        assert_eq!(Limits::DEFAULT.frame_bytes_max, 281 + 65_536);
        Limits::DEFAULT.validate().unwrap();
    }

    #[test]
    fn frame_bytes_for_covers_the_largest_frames() {
        // Small payloads: SUBSCRIBED with a 255-byte topic is the largest frame.
        assert_eq!(Limits::frame_bytes_for(0, 0), 282);
        // Large tokens: HELLO dominates.
        assert_eq!(Limits::frame_bytes_for(0, 60_000), 267 + 60_000);
        assert_eq!(Limits::frame_bytes_for(u32::MAX, 0), u32::MAX);

        // Check the arithmetic against the encoder.
        let topic = [b'a'; 255];
        let payload = vec![0u8; 1000];
        let event = Frame::Event(Event {
            seq: 1,
            epoch: 1,
            publish_ts_ns: 1,
            topic: &topic,
            payload: &payload,
        });
        assert_eq!(
            event.encoded_len() - 4,
            Limits::frame_bytes_for(1000, 0) as usize
        );
        let token = vec![0u8; 5000];
        let hello = Frame::Hello(Hello {
            version_min: 1,
            version_max: 1,
            client_id: &topic,
            token: &token,
        });
        assert_eq!(
            hello.encoded_len() - 4,
            Limits::frame_bytes_for(0, 5000) as usize
        );
        let subscribed = Frame::Subscribed(Subscribed {
            status: SubscribeStatus::Ok,
            epoch: 1,
            oldest_seq: 1,
            last_seq: 1,
            topic: &topic,
        });
        assert_eq!(
            subscribed.encoded_len() - 4,
            Limits::frame_bytes_for(0, 0) as usize
        );
    }

    #[test]
    fn validate_names_the_field() {
        let mut l = Limits::DEFAULT;
        l.topic_bytes_max = 0;
        assert!(l.validate().unwrap_err().contains("topic_bytes_max"));
        let mut l = Limits::DEFAULT;
        l.frame_bytes_max -= 1;
        assert!(l.validate().unwrap_err().contains("frame_bytes_max"));
        let mut l = Limits::DEFAULT;
        l.payload_bytes_max = u32::MAX;
        l.frame_bytes_max = u32::MAX;
        assert!(l.validate().unwrap_err().contains("payload_bytes_max"));
    }

    #[test]
    fn topics() {
        let l = Limits::DEFAULT;
        assert!(valid_topic(b"game:42.round_1-a", &l));
        assert!(valid_topic(&[b'x'; 64], &l));
        assert!(!valid_topic(&[b'x'; 65], &l));
        assert!(!valid_topic(b"", &l));
        for bad in [&b"a b"[..], b"a/b", b"caf\xc3\xa9", b"a\0", b"a*"] {
            assert!(!valid_topic(bad, &l), "{bad:?}");
        }
    }

    #[test]
    fn display_is_readable() {
        let e = DecodeError::FrameTooLarge {
            len: 1_195_725_856,
            max: 70_000,
        };
        assert_eq!(
            e.to_string(),
            "frame of 1195725856 bytes is over the 70000-byte limit"
        );
        assert_eq!(
            DecodeError::UnknownFrameType(0xab).to_string(),
            "unknown frame type 0xab"
        );
        assert_eq!(e.code(), ErrorCode::FrameTooLarge);
    }

    #[test]
    fn error_codes_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::try_from(c as u16), Ok(c));
        }
        assert_eq!(ErrorCode::try_from(0), Err(0));
        assert_eq!(ErrorCode::try_from(16), Err(16));
        assert_eq!(ErrorCode::name_of(7), "TooManySubscriptions");
        assert_eq!(ErrorCode::name_of(999), "unknown");
    }

    #[test]
    fn frame_types_round_trip() {
        for t in FrameType::ALL {
            assert_eq!(FrameType::from_u8(t as u8), Some(t));
        }
        let known = (0..=255u8)
            .filter(|b| FrameType::from_u8(*b).is_some())
            .count();
        assert_eq!(known, FrameType::ALL.len());
    }

    #[test]
    fn frame_directions() {
        use FrameType::*;
        let client: Vec<_> = FrameType::ALL
            .into_iter()
            .filter(|t| t.sent_by_client())
            .collect();
        let server: Vec<_> = FrameType::ALL
            .into_iter()
            .filter(|t| t.sent_by_server())
            .collect();
        assert_eq!(
            client,
            [
                Hello,
                Subscribe,
                Unsubscribe,
                Publish,
                TopicClose,
                Position,
                PathQuery,
                Ping,
                Pong
            ]
        );
        assert_eq!(
            server,
            [
                Welcome,
                Subscribed,
                Unsubscribed,
                PublishAck,
                Event,
                TopicClosed,
                Path,
                Ping,
                Pong,
                GoAway,
                Error
            ]
        );
    }

    #[test]
    fn position_ranges() {
        let ok = Position {
            lat_e7: 900_000_000,
            lon_e7: -1_800_000_000,
            accuracy_cm: 10_000_000,
            client_ts_ms: 1,
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = [
            Position {
                lat_e7: 900_000_001,
                ..ok
            },
            Position {
                lat_e7: -900_000_001,
                ..ok
            },
            Position {
                lon_e7: 1_800_000_001,
                ..ok
            },
            Position {
                lon_e7: i32::MIN,
                ..ok
            },
            Position {
                accuracy_cm: 10_000_001,
                ..ok
            },
            Position {
                client_ts_ms: 0,
                ..ok
            },
        ];
        for p in bad {
            assert_eq!(p.validate(), Err(ErrorCode::InvalidPosition), "{p:?}");
        }
    }

    #[test]
    fn position_bytes_are_the_position_body() {
        let p = Position {
            lat_e7: -338_567_844,
            lon_e7: 1_512_152_967,
            accuracy_cm: 500,
            client_ts_ms: 1_700_000_000_123,
        };
        let b = p.to_bytes();
        assert_eq!(
            b,
            [
                0xeb, 0xd1, 0xdd, 0x5c, 0x5a, 0x21, 0x9f, 0x87, 0, 0, 1, 0xf4, 0, 0, 1, 0x8b, 0xcf,
                0xe5, 0x68, 0x7b
            ]
        );
        assert_eq!(Position::from_bytes(&b), p);
        let mut v = Vec::new();
        Frame::Position(p).encode(&mut v);
        assert_eq!(&v[HEADER_BYTES..], &b[..]);
        let extremes = Position {
            lat_e7: i32::MIN,
            lon_e7: i32::MAX,
            accuracy_cm: u32::MAX,
            client_ts_ms: u64::MAX,
        };
        assert_eq!(Position::from_bytes(&extremes.to_bytes()), extremes);
    }

    #[test]
    fn path_positions_iterates_the_records() {
        let a = Position {
            lat_e7: 1,
            lon_e7: -2,
            accuracy_cm: 3,
            client_ts_ms: 4,
        };
        let b = Position {
            client_ts_ms: 5,
            ..a
        };
        let mut records = a.to_bytes().to_vec();
        records.extend_from_slice(&b.to_bytes());
        let path = Path {
            request_id: 1,
            status: 0,
            flags: PATH_FLAG_LAST,
            positions: &records,
        };
        assert_eq!(path.positions().collect::<Vec<_>>(), [a, b]);
        let empty = Path {
            positions: &[],
            ..path
        };
        assert_eq!(empty.positions().count(), 0);
        assert_eq!(
            Frame::Path(path).encoded_len(),
            HEADER_BYTES + 7 + 2 * POSITION_BYTES
        );
    }

    #[test]
    #[should_panic(expected = "not a multiple of 20")]
    fn encode_refuses_partial_path_record() {
        let mut v = Vec::new();
        Frame::Path(Path {
            request_id: 1,
            status: 0,
            flags: PATH_FLAG_LAST,
            positions: &[0; 21],
        })
        .encode(&mut v);
    }

    #[test]
    fn topic_close_lengths() {
        let close = Frame::TopicClose(TopicClose {
            request_id: 1,
            topic: b"game:42",
        });
        assert_eq!(close.encoded_len(), HEADER_BYTES + 4 + 1 + 7);
        assert_eq!(close.frame_type(), FrameType::TopicClose);
        let closed = Frame::TopicClosed(TopicClosed {
            request_id: 1,
            status: 0,
            last_seq: 58,
            topic: b"game:42",
        });
        assert_eq!(closed.encoded_len(), HEADER_BYTES + 4 + 2 + 8 + 1 + 7);
        assert_eq!(closed.frame_type(), FrameType::TopicClosed);
        assert_eq!(FrameType::TopicClose.name(), "TOPIC_CLOSE");
        assert_eq!(FrameType::TopicClosed.name(), "TOPIC_CLOSED");
    }

    #[test]
    #[should_panic(expected = "str8")]
    fn encode_refuses_long_topic_closed_topic() {
        let mut v = Vec::new();
        Frame::TopicClosed(TopicClosed {
            request_id: 1,
            status: 0,
            last_seq: 0,
            topic: &[b'a'; 256],
        })
        .encode(&mut v);
    }

    #[test]
    #[should_panic(expected = "PATH_QUERY player")]
    fn encode_refuses_long_player() {
        let mut v = Vec::new();
        Frame::PathQuery(PathQuery {
            request_id: 1,
            since_ms: 0,
            player: &[b'p'; 256],
        })
        .encode(&mut v);
    }

    #[test]
    fn encode_to_slice_matches_encode() {
        let f = Frame::Publish(Publish {
            request_id: 7,
            topic: b"t",
            payload: b"hello",
        });
        let mut v = Vec::new();
        f.encode(&mut v);
        let mut buf = [0xEEu8; 64];
        let n = f.encode_to_slice(&mut buf);
        assert_eq!(n, v.len());
        assert_eq!(&buf[..n], &v[..]);
        assert!(
            buf[n..].iter().all(|&b| b == 0xEE),
            "wrote past encoded_len"
        );
    }

    #[test]
    #[should_panic(expected = "str8")]
    fn encode_refuses_long_topic() {
        let topic = [b'a'; 256];
        let mut v = Vec::new();
        Frame::Unsubscribe { topic: &topic }.encode(&mut v);
    }

    #[test]
    #[should_panic(expected = "1024")]
    fn encode_refuses_long_goaway() {
        let resume = vec![
            ResumePoint {
                epoch: 1,
                last_seq: 1,
                topic: b"t"
            };
            1025
        ];
        let mut v = Vec::new();
        Frame::GoAway(GoAway {
            reason: GoAwayReason::Shutdown,
            retry_after_ms: 0,
            reconnect: b"",
            resume,
        })
        .encode(&mut v);
    }

    #[test]
    #[should_panic(expected = "encode_to_slice")]
    fn encode_to_slice_refuses_short_buffer() {
        let mut buf = [0u8; 12];
        Frame::Ping { nonce: 1 }.encode_to_slice(&mut buf);
    }
}
