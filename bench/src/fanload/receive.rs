//! The receive path: what subscribers and publishers read (plain, TLS or a
//! peer's protocol), and the figures it keeps.

use super::*;

/// What the receive path updates, apart from the subscriber itself.
pub(super) struct Rx {
    pub(super) schedule: Schedule,
    /// Events due in [lo, hi) (CLOCK_REALTIME ns) have their latency kept.
    pub(super) window_lo: u64,
    pub(super) window_hi: u64,
    /// The scenario's phase inside the window (empty without one); the
    /// window before it is the steady state.
    pub(super) phase_lo: u64,
    pub(super) phase_hi: u64,
    pub(super) latency: Histogram<u64>,
    pub(super) phase: Histogram<u64>,
    pub(super) steady: Histogram<u64>,
    pub(super) catch_up: u64,
    pub(super) fanout: Histogram<u64>,
    pub(super) publish: Histogram<u64>,
    pub(super) read_delay: Histogram<u64>,
    pub(super) unstamped: u64,
    pub(super) delivered: u64,
    pub(super) invalid: u64,
    pub(super) seq_errors: u64,
}

impl Rx {
    /// One EVENT, received at `recv_ns` (kernel) and read at `read_ns`.
    fn delivery(&mut self, head: EventHead<'_>, recv_ns: u64, read_ns: u64, sub: &mut SubView<'_>) {
        self.delivered += 1;
        let seq = head.seq();
        if seq != *sub.next_seq {
            self.seq_errors += 1;
        }
        *sub.next_seq = seq.wrapping_add(1);
        match head.publish_ts_ns().zip(head.payload()) {
            Some((ts, payload)) => self.stamped(payload, Some(ts), recv_ns, read_ns, sub),
            None => self.invalid += 1,
        }
    }

    /// One delivery of `payload`; `server_ts` is when the server sequenced
    /// it, if the protocol says (RESP does not).
    fn stamped(
        &mut self,
        payload: &[u8],
        server_ts: Option<u64>,
        recv_ns: u64,
        read_ns: u64,
        sub: &mut SubView<'_>,
    ) {
        let Some(stamp) = Stamp::read(payload) else {
            self.invalid += 1;
            return;
        };
        let Some(track) = sub.tracks.get_mut(stamp.publisher as usize) else {
            self.invalid += 1;
            return;
        };
        if self.schedule.topic_of(stamp.counter) != sub.topic {
            self.invalid += 1;
            return;
        }
        if track.see(self.schedule.index_on_topic(stamp.counter)) == Seen::Duplicate {
            return;
        }
        if stamp.scheduled_ns < sub.back_ns {
            // Missed while away: its wait is the outage, not latency.
            self.catch_up += 1;
            return;
        }
        if sub.back_ns > 0 && sub.caught_up_ns.is_none() {
            *sub.caught_up_ns = Some(recv_ns);
        }
        if (self.window_lo..self.window_hi).contains(&stamp.scheduled_ns) {
            let latency = recv_ns.saturating_sub(stamp.scheduled_ns);
            self.latency.saturating_record(latency);
            if (self.phase_lo..self.phase_hi).contains(&stamp.scheduled_ns) {
                self.phase.saturating_record(latency);
            } else if stamp.scheduled_ns < self.phase_lo {
                self.steady.saturating_record(latency);
            }
            if let Some(ts) = server_ts {
                self.fanout.saturating_record(recv_ns.saturating_sub(ts));
                self.publish
                    .saturating_record(ts.saturating_sub(stamp.scheduled_ns));
            }
            self.read_delay
                .saturating_record(read_ns.saturating_sub(recv_ns));
        }
    }
}

/// The parts of a [`Sub`] the receive path updates while its inbox is
/// borrowed.
struct SubView<'a> {
    topic: usize,
    next_seq: &'a mut u64,
    tracks: &'a mut [Track],
    back_ns: u64,
    caught_up_ns: &'a mut Option<u64>,
}

/// Reads what a subscriber's socket holds; Ok(true) when it now has an
/// answer to write (a PONG) and had nothing queued before.
pub(super) fn read_sub(
    s: &mut Sub,
    protocol: Protocol,
    limits: &Limits,
    rx: &mut Rx,
) -> Result<bool, String> {
    if s.tls.is_some() {
        return read_sub_tls(s, protocol, limits, rx);
    }
    let out_before = s.out.len();
    for _ in 0..READS_PER_TURN {
        let (n, stamp) = match wire::turn(s.inbox.fill_stamped(&s.stream), |r| r.0)? {
            Turn::Read(r) => r,
            Turn::Again => continue,
            Turn::Empty => break,
        };
        take_sub_bytes(s, protocol, limits, rx, stamp)?;
        if n < s.inbox.free_min() {
            break; // most likely emptied the socket
        }
    }
    Ok(out_before == 0 && !s.out.is_empty())
}

/// [`read_sub`] over TLS: the ciphertext read as there (kernel receive
/// timestamps, READS_PER_TURN reads at most), every record it completes
/// decrypted and handed over in the same turn.
fn read_sub_tls(
    s: &mut Sub,
    protocol: Protocol,
    limits: &Limits,
    rx: &mut Rx,
) -> Result<bool, String> {
    let had_output = s.has_output();
    let mut turn = TlsTurn::new(READS_PER_TURN);
    loop {
        let tls = s.tls.as_mut().expect("a TLS subscriber");
        let Some((_, stamp)) = turn.next(tls, &s.stream, &mut s.inbox)? else {
            break;
        };
        take_sub_bytes(s, protocol, limits, rx, stamp)?;
    }
    Ok(!had_output && s.has_output())
}

/// Handles what one read put in a subscriber's inbox; `stamp` is the
/// kernel's receive time of the read.
#[inline]
fn take_sub_bytes(
    s: &mut Sub,
    protocol: Protocol,
    limits: &Limits,
    rx: &mut Rx,
    stamp: Option<u64>,
) -> Result<(), String> {
    // One clock read per read: the events in it are handled together.
    let read_ns = cluecast_sys::realtime_ns();
    let recv_ns = stamp.unwrap_or_else(|| {
        rx.unstamped += 1;
        read_ns
    });
    let mut view = SubView {
        topic: s.topic,
        next_seq: &mut s.next_seq,
        tracks: &mut s.tracks,
        back_ns: s.back_ns,
        caught_up_ns: &mut s.caught_up_ns,
    };
    match protocol {
        Protocol::Cluecast => s.inbox.drain(
            limits,
            |head, _| rx.delivery(head, recv_ns, read_ns, &mut view),
            |frame| match refusal(frame) {
                Some(why) => Err(why),
                None => Ok(()), // PONG
            },
        ),
        Protocol::Peer(peer) => {
            let out = &mut s.out;
            peers::drain(&mut s.inbox, peer, |m| match m {
                Message::Delivery(payload) => {
                    rx.delivered += 1;
                    rx.stamped(payload, None, recv_ns, read_ns, &mut view);
                    Ok(())
                }
                Message::Ping => {
                    peers::pong(out);
                    Ok(())
                }
                Message::Other => Ok(()),
                Message::Ack => Err("an answer to a publish on a subscriber".into()),
            })
        }
    }
}

pub(super) fn read_pub(
    p: &mut Pub,
    protocol: Protocol,
    limits: &Limits,
    schedule: &Schedule,
) -> Result<(), String> {
    if p.tls.is_some() {
        return read_pub_tls(p, protocol, limits, schedule);
    }
    for _ in 0..READS_PER_TURN {
        let n = match wire::turn(p.inbox.fill(&mut p.stream), |&n| n)? {
            Turn::Read(n) => n,
            Turn::Again => continue,
            Turn::Empty => return Ok(()),
        };
        take_pub_bytes(p, protocol, limits, schedule)?;
        if n < p.inbox.free_min() {
            return Ok(());
        }
    }
    Ok(())
}

/// [`read_pub`] over TLS (see [`read_sub_tls`]).
fn read_pub_tls(
    p: &mut Pub,
    protocol: Protocol,
    limits: &Limits,
    schedule: &Schedule,
) -> Result<(), String> {
    let mut turn = TlsTurn::new(READS_PER_TURN);
    loop {
        let tls = p.tls.as_mut().expect("a TLS publisher");
        if turn.next(tls, &p.stream, &mut p.inbox)?.is_none() {
            return Ok(());
        }
        take_pub_bytes(p, protocol, limits, schedule)?;
    }
}

/// Handles what one read put in a publisher's inbox: acks (refusals
/// remembered), a peer's PINGs.
#[inline]
fn take_pub_bytes(
    p: &mut Pub,
    protocol: Protocol,
    limits: &Limits,
    schedule: &Schedule,
) -> Result<(), String> {
    if let Protocol::Peer(peer) = protocol {
        // RESP's PUBLISH answers the number of receivers; an error
        // reply cannot be tied to its counter (unsent ones leave no
        // reply), so it ends the publisher. A NATS PING is answered
        // with the next write.
        let (acks, sent, out) = (&mut p.acks, p.sent, &mut p.out);
        return peers::drain(&mut p.inbox, peer, |m| match m {
            Message::Ack if *acks < sent => {
                *acks += 1;
                Ok(())
            }
            Message::Ping => {
                peers::pong(out);
                Ok(())
            }
            Message::Other => Ok(()),
            other => Err(format!("a publisher got {other:?}")),
        });
    }
    let mut refused = Vec::new();
    let (acks, sent) = (&mut p.acks, p.sent);
    p.inbox.drain_acks(limits, |ack| {
        if *acks >= sent {
            return Err("PUBLISH_ACK for no PUBLISH".into());
        }
        *acks += 1;
        if ack.status != 0 {
            refused.push(ack.request_id);
        }
        Ok(())
    })?;
    for request_id in refused {
        let counter = p
            .counter_of(request_id)
            .ok_or_else(|| format!("PUBLISH_ACK for unknown request {request_id}"))?;
        p.refused += 1;
        p.exclude(counter, schedule.topic_of(counter));
    }
    Ok(())
}
