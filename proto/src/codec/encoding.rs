//! Encoding: a frame's size, the checks that it can be encoded at all,
//! and its bytes written to a `Vec` or a caller's slice.

use crate::frame::*;

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
