//! Decoding: [`decode`] finds one frame at the front of a buffer and
//! reads its body with a bounds-checked `Reader`, borrowing from the
//! caller's bytes.

use super::{valid_topic, DecodeError, Limits};
use crate::frame::*;

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
