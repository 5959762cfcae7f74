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
//!
//! This module owns [`Limits`], [`DecodeError`] and [`valid_topic`];
//! `decoding` turns bytes into frames ([`decode`]), `encoding` frames into
//! bytes ([`Frame::encode`] and friends).

mod decoding;
mod encoding;
#[cfg(test)]
mod tests;

pub use decoding::decode;

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
