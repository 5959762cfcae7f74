//! Client-side protocol pieces every load generator shares: the blocking
//! handshake (connect, HELLO / WELCOME, SUBSCRIBE / SUBSCRIBED, with
//! timeouts) and the non-blocking receive buffer that hands over each EVENT
//! by its first bytes without a second user-space copy.

use std::fmt;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use cluecast_proto::{
    decode, ErrorCode, EventHead, Frame, FrameConn, FrameType, Hello, Limits, PublishAck,
    StartMode, Subscribe, SubscribeStatus,
};

use crate::net::{self, Blocking};

/// Smallest valid EVENT length prefix: it counts what follows it (4 bytes)
/// up to the payload, here after an empty topic.
const EVENT_LEN_MIN: u32 = (EventHead::payload_at(0) - 4) as u32;

/// A connection's unparsed input. EVENTs are handed over by their first
/// `peek` bytes ([`EventHead`]) once those are buffered, and the rest of
/// each is skipped as it arrives; other frames are decoded whole.
pub struct Inbox {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Compact the buffer when less than this is free at its end.
    free_min: usize,
    /// Leading bytes of each EVENT handed to `on_event`.
    peek: usize,
    /// Bytes of the current EVENT still to skip.
    skip: usize,
    /// Frame bytes of the EVENT being skipped, and its first bytes.
    pending: Option<u64>,
    pending_head: Vec<u8>,
}

impl Inbox {
    /// A buffer of `capacity` bytes holding `leftover` (bytes read past the
    /// handshake), handing over the first `peek` bytes of each EVENT.
    pub fn new(leftover: &[u8], capacity: usize, peek: usize) -> Result<Inbox, String> {
        let free_min = capacity / 4;
        if peek < EventHead::BYTES_MIN || peek > free_min {
            return Err(format!(
                "an inbox of {capacity} bytes cannot peek {peek} bytes of each event"
            ));
        }
        if leftover.len() > capacity {
            return Err("more handshake bytes buffered than the inbox holds".into());
        }
        let mut buf = vec![0u8; capacity].into_boxed_slice();
        buf[..leftover.len()].copy_from_slice(leftover);
        Ok(Inbox {
            buf,
            start: 0,
            end: leftover.len(),
            free_min,
            peek,
            skip: 0,
            pending: None,
            pending_head: Vec::with_capacity(peek),
        })
    }

    /// A read that returned less than this most likely emptied the socket.
    pub fn free_min(&self) -> usize {
        self.free_min
    }

    /// Makes room at the end: restarts an empty buffer, compacts a nearly
    /// full one.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < self.free_min {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// One read(); Ok(0) is end of stream.
    pub fn fill(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        self.make_room();
        if self.end == self.buf.len() {
            return Err(io::Error::other(
                "a non-event frame larger than the receive buffer",
            ));
        }
        let n = stream.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// One recvmsg(); like [`Inbox::fill`], plus the kernel's receive time
    /// of the data (CLOCK_REALTIME ns) when the socket has
    /// [`net::enable_rx_timestamps`] and the kernel stamped it. For TCP that is
    /// the time the last segment read reached the socket: it does not
    /// include how long the data then waited for this process to read it.
    pub fn fill_stamped(&mut self, stream: &TcpStream) -> io::Result<(usize, Option<u64>)> {
        self.make_room();
        if self.end == self.buf.len() {
            return Err(io::Error::other(
                "a non-event frame larger than the receive buffer",
            ));
        }
        let (n, stamp) = net::recv_stamped(stream.as_raw_fd(), &mut self.buf[self.end..])?;
        self.end += n;
        Ok((n, stamp))
    }

    /// Like [`Inbox::fill`], but the bytes come from `read` (given the free
    /// room, it returns how much it put there): plaintext out of a TLS
    /// session.
    pub fn fill_with(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.make_room();
        if self.end == self.buf.len() {
            return Err(io::Error::other(
                "a non-event frame larger than the receive buffer",
            ));
        }
        let n = read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Consumes what is buffered: `on_event(head, frame_bytes)` per
    /// complete EVENT, where `head` is its first `peek` bytes (all of it if
    /// shorter), `on_frame` per other frame (Err ends the connection).
    pub fn drain(
        &mut self,
        limits: &Limits,
        mut on_event: impl FnMut(EventHead<'_>, u64),
        mut on_frame: impl FnMut(&Frame<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let avail = self.end - self.start;
            if self.skip > 0 {
                let n = self.skip.min(avail);
                self.start += n;
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(());
                }
                if let Some(bytes) = self.pending.take() {
                    on_event(event_head(&self.pending_head)?, bytes);
                }
                continue;
            }
            let head = &self.buf[self.start..self.end];
            if head.len() < 5 {
                return Ok(());
            }
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if head[4] == FrameType::Event as u8 {
                if len < EVENT_LEN_MIN || len > limits.frame_bytes_max {
                    return Err(format!("EVENT with an impossible length {len}"));
                }
                let total = 4 + len as usize;
                let want = total.min(self.peek);
                if head.len() < want {
                    return Ok(());
                }
                let take = total.min(avail);
                if take == total {
                    on_event(event_head(&head[..want])?, total as u64);
                } else {
                    // Keep the head: the buffer is reused before the frame
                    // ends.
                    self.pending_head.clear();
                    self.pending_head.extend_from_slice(&head[..want]);
                    self.skip = total - take;
                    self.pending = Some(total as u64);
                }
                self.start += take;
                continue;
            }
            match decode(head, limits) {
                Ok(Some((frame, used))) => {
                    on_frame(&frame)?;
                    self.start += used;
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("undecodable frame from the server: {e}")),
            }
        }
    }

    /// [`Inbox::drain`] for a publisher, which subscribes to nothing:
    /// ERROR / GOAWAY ends the connection, `on_ack` is given each
    /// PUBLISH_ACK (Err ends the connection), other frames pass.
    pub fn drain_acks(
        &mut self,
        limits: &Limits,
        mut on_ack: impl FnMut(&PublishAck) -> Result<(), String>,
    ) -> Result<(), String> {
        self.drain(
            limits,
            |_, _| {}, // not subscribed: no events come here
            |frame| {
                if let Some(why) = refusal(frame) {
                    return Err(why);
                }
                if let Frame::PublishAck(ack) = frame {
                    on_ack(ack)?;
                }
                Ok(())
            },
        )
    }

    /// Consumes what is buffered as another protocol's messages
    /// (peers.rs): `take` is given the unparsed bytes and the most one
    /// message may take (a quarter of the buffer), and says how many bytes
    /// the first message took, None when they end before it does (Err
    /// ends the connection).
    pub fn drain_with(
        &mut self,
        mut take: impl FnMut(&[u8], usize) -> Result<Option<usize>, String>,
    ) -> Result<(), String> {
        while let Some(used) = take(&self.buf[self.start..self.end], self.free_min)? {
            self.start += used;
        }
        Ok(())
    }

    /// Test hook: appends bytes as a read would.
    #[cfg(test)]
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        self.make_room();
        let n = bytes.len().min(self.buf.len() - self.end);
        self.buf[self.end..self.end + n].copy_from_slice(&bytes[..n]);
        self.end += n;
        n
    }

    /// Test hook: takes every buffered byte, parsed or not.
    #[cfg(test)]
    pub fn take_all(&mut self) -> Vec<u8> {
        let bytes = self.buf[self.start..self.end].to_vec();
        (self.start, self.end) = (0, 0);
        bytes
    }
}

/// The head of an EVENT whose first bytes are buffered; [`Inbox::new`]
/// makes sure that those hold its seq.
fn event_head(bytes: &[u8]) -> Result<EventHead<'_>, String> {
    EventHead::new(bytes).ok_or_else(|| "an EVENT head without its seq".to_string())
}

/// Why a frame ends the exchange, if it does.
pub fn refusal(frame: &Frame<'_>) -> Option<String> {
    match frame {
        Frame::Error(e) => Some(format!(
            "ERROR {} ({})",
            ErrorCode::name_of(e.code),
            String::from_utf8_lossy(e.message)
        )),
        Frame::GoAway(g) => Some(format!("GOAWAY {:?}", g.reason)),
        _ => None,
    }
}

/// Reads frames until `pick` returns Some, or ERROR / GOAWAY / `deadline`.
/// `pick` sees every frame first (an ERROR or GOAWAY too, which then ends
/// the wait unless picked). The stream must be blocking.
pub fn await_frame<S: Blocking, T>(
    conn: &mut FrameConn<S>,
    deadline: Instant,
    what: &str,
    mut pick: impl FnMut(&Frame<'_>) -> Option<T>,
) -> Result<T, String> {
    loop {
        while let Some(frame) = conn
            .next_frame()
            .map_err(|e| format!("{what}: undecodable frame: {e}"))?
        {
            match (pick(&frame), refusal(&frame)) {
                (Some(picked), _) => return Ok(picked),
                (None, Some(why)) => return Err(format!("{what}: {why}")),
                (None, None) => {}
            }
        }
        net::read_timeout_until(&conn.stream, deadline, what)?;
        net::handshake_read(conn.fill(), what)?;
    }
}

/// A connection past HELLO / WELCOME, still blocking: plain TCP, or TLS
/// (dial.rs).
pub struct Connected<S: Blocking = TcpStream> {
    /// Frames to and from the server, within the limits it announced; what
    /// it buffers was read past the last answer awaited.
    pub conn: FrameConn<S>,
    pub heartbeat_ms: u32,
}

/// A connection that did not reach WELCOME: turned away (GOAWAY, ERROR),
/// closed, timed out, or not connected at all. `retry_after_ms`: the
/// GOAWAY's retry hint, when one came.
#[derive(Debug)]
pub struct Unwelcome {
    pub why: String,
    pub retry_after_ms: Option<u32>,
}

impl fmt::Display for Unwelcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)
    }
}

impl From<String> for Unwelcome {
    fn from(why: String) -> Unwelcome {
        Unwelcome {
            why,
            retry_after_ms: None,
        }
    }
}

impl From<Unwelcome> for String {
    fn from(u: Unwelcome) -> String {
        u.why
    }
}

/// Connects and completes HELLO / WELCOME (dial.rs: from a chosen
/// address, over TLS).
pub fn connect(addr: SocketAddr, client_id: &str, timeout: Duration) -> Result<Connected, String> {
    let stream = net::tcp_connect(addr, timeout)?;
    Ok(hello(stream, client_id, timeout)?)
}

/// HELLO / WELCOME on a connected stream.
pub fn hello<S: Blocking>(
    stream: S,
    client_id: &str,
    timeout: Duration,
) -> Result<Connected<S>, Unwelcome> {
    stream
        .tcp()
        .set_write_timeout(Some(timeout))
        .map_err(|e| format!("socket options: {e}"))?;
    let mut conn = FrameConn::new(stream, Limits::DEFAULT);
    conn.send(&Frame::Hello(Hello {
        version_min: 1,
        version_max: 1,
        client_id: client_id.as_bytes(),
        token: b"",
    }))
    .map_err(|e| format!("sending HELLO: {e}"))?;
    let mut retry_after_ms = None;
    let welcome = await_frame(
        &mut conn,
        Instant::now() + timeout,
        "waiting for WELCOME",
        |f| match f {
            Frame::Welcome(w) => Some(*w),
            Frame::GoAway(g) => {
                retry_after_ms = Some(g.retry_after_ms);
                None
            }
            _ => None,
        },
    )
    .map_err(|why| Unwelcome {
        why,
        retry_after_ms,
    })?;
    conn.limits = Limits {
        frame_bytes_max: welcome.frame_bytes_max,
        payload_bytes_max: welcome.payload_bytes_max,
        topic_bytes_max: welcome.topic_bytes_max,
        ..Limits::DEFAULT
    };
    Ok(Connected {
        conn,
        heartbeat_ms: welcome.heartbeat_ms,
    })
}

impl<S: Blocking> Connected<S> {
    /// Subscribes live to `topic` and waits for SUBSCRIBED Ok; returns its
    /// `last_seq` (the first event delivered will be `last_seq + 1`).
    pub fn subscribe_live(&mut self, topic: &[u8], timeout: Duration) -> Result<u64, String> {
        let s = self.subscribe(topic, None, timeout)?;
        if s.status != SubscribeStatus::Ok {
            return Err(format!("SUBSCRIBED with status {:?}", s.status));
        }
        Ok(s.next_seq - 1)
    }

    /// Subscribes to `topic`, live or resuming after `resume_after` (in
    /// the topic's current epoch), and waits for SUBSCRIBED; a refusal is
    /// an error, a resume that lost events is not (the status says so).
    pub fn subscribe(
        &mut self,
        topic: &[u8],
        resume_after: Option<u64>,
        timeout: Duration,
    ) -> Result<Subscription, String> {
        self.conn
            .send(&Frame::Subscribe(Subscribe {
                mode: match resume_after {
                    Some(_) => StartMode::Resume,
                    None => StartMode::Live,
                },
                epoch: 0,
                last_seq: resume_after.unwrap_or(0),
                topic,
            }))
            .map_err(|e| format!("sending SUBSCRIBE: {e}"))?;
        let answer = await_frame(
            &mut self.conn,
            Instant::now() + timeout,
            "waiting for SUBSCRIBED",
            |f| match f {
                Frame::Subscribed(s) if s.topic == topic => {
                    Some((s.status, s.oldest_seq, s.last_seq))
                }
                _ => None,
            },
        )?;
        Ok(Subscription::of(resume_after, answer))
    }
}

/// What SUBSCRIBED granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub status: SubscribeStatus,
    /// The sequence of the first EVENT that will come (docs/PROTOCOL.md
    /// section 4).
    pub next_seq: u64,
}

impl Subscription {
    /// From the request and SUBSCRIBED's (status, oldest_seq, last_seq).
    fn of(resume_after: Option<u64>, (status, oldest, last): (SubscribeStatus, u64, u64)) -> Self {
        let next_seq = match (status, resume_after) {
            (SubscribeStatus::Ok, Some(after)) => after + 1,
            (SubscribeStatus::Ok, None) => last + 1,
            // Something was lost: delivery restarts at the oldest held.
            _ if oldest > 0 => oldest,
            _ => last + 1,
        };
        Subscription { status, next_seq }
    }
}

/// Keeps the first note: later ones are usually consequences of it.
pub fn set_note(note: &mut String, text: String) {
    if note.is_empty() {
        *note = text;
    }
}

/// Refuses a run whose payloads the server would not take.
pub fn check_payload(payload_bytes: usize, limits: &Limits) -> Result<(), String> {
    if payload_bytes > limits.payload_bytes_max as usize {
        return Err(format!(
            "the server takes payloads up to {} bytes, not {}: start it with a larger \
             --payload-bytes-max",
            limits.payload_bytes_max, payload_bytes
        ));
    }
    Ok(())
}

/// What one read of a non-blocking socket into an [`Inbox`] came to.
pub enum Turn<T> {
    /// Bytes (with whatever else the read gave).
    Read(T),
    /// Interrupted: try again.
    Again,
    /// Nothing to read now.
    Empty,
}

/// Sorts the result of [`Inbox::fill`] / [`Inbox::fill_stamped`]; `n` says
/// how many bytes a result holds. End of stream and failures are errors.
pub fn turn<T>(read: io::Result<T>, n: impl Fn(&T) -> usize) -> Result<Turn<T>, String> {
    match read {
        Ok(r) if n(&r) == 0 => Err("the server closed the connection".into()),
        Ok(r) => Ok(Turn::Read(r)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Turn::Empty),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Turn::Again),
        Err(e) => Err(format!("reading: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluecast_proto::Event;
    use std::io::Write;

    fn event(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        Frame::Event(Event {
            seq,
            epoch: 7,
            publish_ts_ns: 1_000 + seq,
            topic: b"t",
            payload,
        })
        .encode(&mut v);
        v
    }

    /// Feeds `wire` to an inbox in pieces of `step` bytes; returns
    /// (seq, frame bytes, head) per event and the number of other frames.
    fn feed(wire: &[u8], step: usize, peek: usize) -> (Vec<(u64, u64, Vec<u8>)>, usize) {
        let limits = Limits {
            payload_bytes_max: 1 << 20,
            frame_bytes_max: Limits::frame_bytes_for(1 << 20, 4096),
            ..Limits::DEFAULT
        };
        let mut inbox = Inbox::new(&[], 256 << 10, peek).unwrap();
        let mut events = Vec::new();
        let mut others = 0;
        let mut pos = 0;
        while pos < wire.len() {
            pos += inbox.push(&wire[pos..(pos + step).min(wire.len())]);
            inbox
                .drain(
                    &limits,
                    |head, bytes| events.push((head.seq(), bytes, head.bytes().to_vec())),
                    |_| {
                        others += 1;
                        Ok(())
                    },
                )
                .unwrap();
        }
        (events, others)
    }

    #[test]
    fn inbox_counts_events_split_anywhere() {
        let big = vec![9u8; 300_000]; // larger than the inbox
        let mut wire = event(1, b"hello");
        Frame::Pong { nonce: 3 }.encode(&mut wire);
        wire.extend(event(2, &big));
        wire.extend(event(3, b""));
        let frames = [event(1, b"hello"), event(2, &big), event(3, b"")];
        for peek in [EventHead::BYTES_MIN, 40] {
            for step in [1, 3, 13, 4096, 65_536, wire.len()] {
                let (events, others) = feed(&wire, step, peek);
                let want: Vec<(u64, u64, Vec<u8>)> = frames
                    .iter()
                    .zip(1..)
                    .map(|(f, seq)| (seq, f.len() as u64, f[..f.len().min(peek)].to_vec()))
                    .collect();
                assert_eq!(events, want, "step {step}, peek {peek}");
                assert_eq!(others, 1, "step {step}");
            }
        }
    }

    #[test]
    fn kernel_stamps_received_data() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (rx, _) = listener.accept().unwrap();
        net::enable_rx_timestamps(&rx).unwrap();
        // The kernel switches receive timestamps on in deferred work, so
        // the first segments after the first socket asks may go unstamped:
        // try a few times.
        let mut inbox = Inbox::new(&[], 4096, EventHead::BYTES_MIN).unwrap();
        let (before, stamp, after) = (0..50)
            .find_map(|_| {
                let before = cluecast_sys::realtime_ns();
                tx.write_all(&event(1, b"x")).unwrap();
                let (n, stamp) = inbox.fill_stamped(&rx).unwrap();
                assert_eq!(n, event(1, b"x").len());
                inbox
                    .drain(&Limits::DEFAULT, |_, _| {}, |_| Ok(()))
                    .unwrap();
                let after = cluecast_sys::realtime_ns();
                stamp.map(|s| (before, s, after)).or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    None
                })
            })
            .expect("a receive timestamp");
        assert!(
            (before..=after).contains(&stamp),
            "{before} <= {stamp} <= {after}"
        );
    }

    #[test]
    fn inbox_rejects_garbage() {
        let peek = EventHead::BYTES_MIN;
        let mut inbox =
            Inbox::new(&[0, 0, 0, 2, FrameType::Event as u8, 0, 0], 4096, peek).unwrap();
        let r = inbox.drain(&Limits::DEFAULT, |_, _| {}, |_| Ok(()));
        assert!(r.is_err(), "an EVENT of length 2 is impossible");
        let mut inbox = Inbox::new(&[0, 0, 0, 1, 0xEE], 4096, peek).unwrap();
        let r = inbox.drain(&Limits::DEFAULT, |_, _| {}, |_| Ok(()));
        assert!(r.is_err(), "unknown frame type");
        assert!(Inbox::new(&[], 4096, 2048).is_err(), "peek over a quarter");
        assert!(Inbox::new(&[], 4096, 4).is_err(), "peek short of the seq");
    }
}
