//! An encoded EVENT read in place: where its fixed fields sit
//! (docs/PROTOCOL.md section 3.8) and [`EventHead`], which takes them from
//! the frame's first bytes without decoding, or even having, the rest. The
//! server times its sends by it, a load generator reads every event by it.

use crate::frame::{FrameType, HEADER_BYTES};

/// The first bytes of an encoded EVENT, at least through its `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHead<'a> {
    bytes: &'a [u8],
    seq: u64,
}

impl<'a> EventHead<'a> {
    /// Offset of `seq` (u64), right after the frame header.
    pub const SEQ_AT: usize = HEADER_BYTES;
    /// Offset of `publish_ts_ns` (u64), after `seq` and `epoch`.
    pub const PUBLISH_TS_AT: usize = Self::SEQ_AT + 8 + 8;
    /// Offset of the topic's length byte; the topic, then the payload,
    /// follow it.
    pub const TOPIC_LEN_AT: usize = Self::PUBLISH_TS_AT + 8;
    /// The fewest bytes a head is made of: through `seq`.
    pub const BYTES_MIN: usize = Self::SEQ_AT + 8;

    /// Offset of the payload in an EVENT whose topic is `topic_len` bytes.
    pub const fn payload_at(topic_len: usize) -> usize {
        Self::TOPIC_LEN_AT + 1 + topic_len
    }

    /// The head of the EVENT `frame` holds: the whole frame or its first
    /// bytes, nothing after it. None for another frame type or fewer than
    /// [`EventHead::BYTES_MIN`] bytes.
    pub fn new(frame: &'a [u8]) -> Option<EventHead<'a>> {
        if frame.get(HEADER_BYTES - 1) != Some(&(FrameType::Event as u8)) {
            return None;
        }
        let seq = u64_at(frame, Self::SEQ_AT)?;
        Some(EventHead { bytes: frame, seq })
    }

    /// The bytes it was made of.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// None when the head ends before it.
    pub fn publish_ts_ns(&self) -> Option<u64> {
        u64_at(self.bytes, Self::PUBLISH_TS_AT)
    }

    /// None when the head ends before the topic does.
    pub fn topic(&self) -> Option<&'a [u8]> {
        let len = usize::from(*self.bytes.get(Self::TOPIC_LEN_AT)?);
        self.bytes
            .get(Self::TOPIC_LEN_AT + 1..Self::payload_at(len))
    }

    /// The payload bytes the head holds: all of them when it is the whole
    /// frame, the first ones otherwise. None when it ends before the
    /// payload begins.
    pub fn payload(&self) -> Option<&'a [u8]> {
        let topic_len = usize::from(*self.bytes.get(Self::TOPIC_LEN_AT)?);
        self.bytes.get(Self::payload_at(topic_len)..)
    }
}

/// The big-endian u64 at `at`, if `bytes` hold it.
fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The `publish_ts_ns` of an encoded EVENT frame, read in place without
/// decoding the rest; None for any other frame (or too few bytes).
pub fn event_publish_ts_ns(frame: &[u8]) -> Option<u64> {
    EventHead::new(frame)?.publish_ts_ns()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Event, Frame};

    fn event(payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        Frame::Event(Event {
            seq: 3,
            epoch: 9,
            publish_ts_ns: 0x0102_0304_0506_0708,
            topic: b"hunt",
            payload,
        })
        .encode(&mut bytes);
        bytes
    }

    #[test]
    fn an_event_s_publish_time_is_read_in_place() {
        let bytes = event(b"p");
        assert_eq!(event_publish_ts_ns(&bytes), Some(0x0102_0304_0506_0708));
        assert_eq!(event_publish_ts_ns(&bytes[..HEADER_BYTES + 20]), None);
        let mut pong = Vec::new();
        Frame::Pong { nonce: 1 }.encode(&mut pong);
        assert_eq!(event_publish_ts_ns(&pong), None);
    }

    #[test]
    fn a_head_reads_what_its_bytes_hold() {
        let bytes = event(b"payload-bytes");
        let whole = EventHead::new(&bytes).unwrap();
        assert_eq!(whole.seq(), 3);
        assert_eq!(whole.publish_ts_ns(), Some(0x0102_0304_0506_0708));
        assert_eq!(whole.topic(), Some(&b"hunt"[..]));
        assert_eq!(whole.payload(), Some(&b"payload-bytes"[..]));
        assert_eq!(EventHead::payload_at(4), bytes.len() - 13);

        let cut = EventHead::new(&bytes[..bytes.len() - 6]).unwrap();
        assert_eq!(cut.payload(), Some(&b"payload"[..]));
        let seq_only = EventHead::new(&bytes[..EventHead::BYTES_MIN]).unwrap();
        assert_eq!(seq_only.seq(), 3);
        assert_eq!(seq_only.publish_ts_ns(), None);
        assert_eq!(seq_only.topic(), None);
        assert_eq!(seq_only.payload(), None);
        let before_topic = EventHead::new(&bytes[..EventHead::TOPIC_LEN_AT]).unwrap();
        assert_eq!(before_topic.publish_ts_ns(), Some(0x0102_0304_0506_0708));
        assert_eq!(before_topic.payload(), None);
        let mid_topic = EventHead::new(&bytes[..EventHead::TOPIC_LEN_AT + 3]).unwrap();
        assert_eq!(mid_topic.topic(), None);
        assert_eq!(mid_topic.payload(), None);

        assert_eq!(EventHead::new(&bytes[..EventHead::BYTES_MIN - 1]), None);
        let mut pong = Vec::new();
        Frame::Pong { nonce: 1 }.encode(&mut pong);
        assert_eq!(EventHead::new(&pong), None);
    }
}
