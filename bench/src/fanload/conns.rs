//! The generator's connections: a subscriber's and a publisher's state,
//! and the notes of what went wrong on them.

use super::*;

pub(super) struct Sub {
    pub(super) stream: TcpStream,
    pub(super) inbox: Inbox,
    pub(super) topic: usize,
    pub(super) next_seq: u64,
    /// What arrived from each publisher.
    pub(super) tracks: Vec<Track>,
    pub(super) alive: bool,
    /// Disconnected by a storm, not yet back.
    pub(super) away: bool,
    /// Events due before this (CLOCK_REALTIME ns) were missed while away:
    /// their deliveries are catch-up, not latency. 0: never away.
    pub(super) back_ns: u64,
    /// When the first event due after `back_ns` arrived.
    pub(super) caught_up_ns: Option<u64>,
    /// Unwritten PINGs and positions.
    pub(super) out: Vec<u8>,
    /// RESP only: the connection positions go out on (a subscribed RESP
    /// connection cannot publish). Its replies are read and dropped.
    pub(super) upstream: Option<TcpStream>,
    /// The TLS session over `stream`, with `--tls`.
    pub(super) tls: Option<Box<TlsLink>>,
}

impl Sub {
    /// Something waits to be written: queued PINGs or positions, or TLS
    /// records not yet taken by the socket.
    pub(super) fn has_output(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }
}

pub(super) struct Pub {
    pub(super) stream: TcpStream,
    pub(super) inbox: Inbox,
    pub(super) out: Vec<u8>,
    out_pos: usize,
    /// Payload buffer: stamp, then padding.
    pub(super) payload: Vec<u8>,
    /// The next counter (every counter below it was due).
    pub(super) next: u64,
    pub(super) sent: u64,
    pub(super) acks: u64,
    pub(super) refused: u64,
    pub(super) unsent: u64,
    /// Counters not published (refused, never sent), in no order.
    pub(super) excluded: Vec<u64>,
    /// How many of them per topic.
    pub(super) excluded_on_topic: Vec<u64>,
    pub(super) alive: bool,
    /// Registered for writability (the socket refused bytes).
    pub(super) want_out: bool,
    /// The TLS session over `stream`, with `--tls`: `out` is plaintext,
    /// encrypted as the session takes it.
    pub(super) tls: Option<Box<TlsLink>>,
}

impl Pub {
    /// A publisher that has sent nothing yet, on a connected socket.
    pub(super) fn new(stream: TcpStream, inbox: Inbox, payload: Vec<u8>, topics: usize) -> Pub {
        Pub {
            inbox,
            stream,
            out: Vec::with_capacity(64 << 10),
            out_pos: 0,
            payload,
            next: 0,
            sent: 0,
            acks: 0,
            refused: 0,
            unsent: 0,
            excluded: Vec::new(),
            excluded_on_topic: vec![0; topics],
            alive: true,
            want_out: false,
            tls: None,
        }
    }

    pub(super) fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes what the socket takes. Ok(true) when everything went.
    pub(super) fn flush(&mut self) -> Result<bool, String> {
        if self.tls.is_some() {
            return self.flush_tls();
        }
        crate::net::write_backlog(
            &mut self.stream,
            &mut self.out,
            &mut self.out_pos,
            PUBLISH_BACKLOG_MAX / 4,
        )
    }

    /// [`Pub::flush`] over TLS: the session takes the plaintext (as much
    /// as its 64 KiB of records allow; the rest stays in `out`, counted in
    /// the backlog) and writes records as the socket takes them. Ok(true)
    /// when every byte is taken and every record written.
    fn flush_tls(&mut self) -> Result<bool, String> {
        let tls = self.tls.as_mut().expect("a TLS publisher");
        let (taken, written) = tls
            .send(&mut self.stream, &self.out[self.out_pos..])
            .map_err(|e| format!("writing: {e}"))?;
        self.out_pos += taken;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            return Ok(written);
        }
        if self.out_pos >= PUBLISH_BACKLOG_MAX / 4 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(false)
    }

    pub(super) fn exclude(&mut self, counter: u64, topic: usize) {
        self.excluded.push(counter);
        self.excluded_on_topic[topic] += 1;
    }

    /// The counter of an ack's request id: the newest counter with those
    /// low 32 bits (fewer than 2^32 are ever in flight).
    pub(super) fn counter_of(&self, request_id: u32) -> Option<u64> {
        let last = self.next.checked_sub(1)?;
        last.checked_sub(u64::from((last as u32).wrapping_sub(request_id)))
    }
}

/// The first problem of a publisher and the first of a subscriber: later
/// ones are usually consequences, but a publisher's is never hidden behind
/// thousands of subscribers'.
#[derive(Default)]
pub(super) struct Notes {
    publisher: String,
    subscriber: String,
}

impl Notes {
    pub(super) fn publisher(&mut self, p: usize, text: impl std::fmt::Display) {
        set_note(&mut self.publisher, format!("publisher {p}: {text}"));
    }

    pub(super) fn subscriber(&mut self, i: usize, text: impl std::fmt::Display) {
        set_note(&mut self.subscriber, format!("subscriber {i}: {text}"));
    }

    pub(super) fn joined(self) -> String {
        [self.publisher, self.subscriber]
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    }
}
