//! The sending side: the publishing schedule and what it measured.

use super::*;

/// The publishing schedule and what the sending side measured.
pub(super) struct Publishing<'a> {
    pub(super) protocol: Protocol,
    pub(super) schedule: Schedule,
    pub(super) topics: &'a [String],
    /// CLOCK_REALTIME at the schedule's start.
    pub(super) real0: u64,
    /// The window, in ns from the schedule's start; nothing is due after
    /// `end_ns`.
    pub(super) warm_ns: u64,
    pub(super) end_ns: u64,
    pub(super) send_lag: Histogram<u64>,
    pub(super) window_sent: u64,
    pub(super) backlog_max: usize,
}

impl Publishing<'_> {
    /// Encodes every event due by `el` (ns from the start) and writes what
    /// the sockets take. Returns when the next event is due (u64::MAX: no
    /// more). A publisher whose connection fails is marked dead.
    pub(super) fn publish_due(
        &mut self,
        pubs: &mut [Pub],
        epoll: &Epoll,
        el: u64,
        notes: &mut Notes,
    ) -> Result<u64, String> {
        let mut next_due = u64::MAX;
        let horizon = el.saturating_add(1).min(self.end_ns);
        for (p, pb) in pubs.iter_mut().enumerate() {
            if !pb.alive {
                continue;
            }
            let due_now = self.schedule.due_before(p, horizon);
            while pb.next < due_now {
                let n = pb.next;
                let due = self.schedule.due_ns(p, n);
                let topic = self.schedule.topic_of(n);
                pb.next += 1;
                if pb.backlog() >= PUBLISH_BACKLOG_MAX {
                    pb.unsent += 1;
                    pb.exclude(n, topic);
                    continue;
                }
                Stamp {
                    publisher: p as u32,
                    counter: n,
                    scheduled_ns: self.real0 + due,
                }
                .write(&mut pb.payload);
                let name = self.topics[topic].as_bytes();
                match self.protocol {
                    Protocol::Cluecast => Frame::Publish(Publish {
                        request_id: n as u32,
                        topic: name,
                        payload: &pb.payload,
                    })
                    .encode(&mut pb.out),
                    Protocol::Peer(peer) => peers::publish(peer, &mut pb.out, name, &pb.payload),
                }
                pb.sent += 1;
                if !self.protocol.acks() {
                    // Nothing will answer: handed over counts as answered.
                    pb.acks += 1;
                }
                if (self.warm_ns..self.end_ns).contains(&due) {
                    self.window_sent += 1;
                    self.send_lag.saturating_record(el - due);
                }
            }
            if pb.next < self.schedule.due_before(p, self.end_ns) {
                next_due = next_due.min(self.schedule.due_ns(p, pb.next));
            }
            self.backlog_max = self.backlog_max.max(pb.backlog());
            // A publisher waiting for writability is flushed when it comes.
            if pb.backlog() == 0 || pb.want_out {
                continue;
            }
            match pb.flush() {
                Ok(true) => {}
                Ok(false) => {
                    pb.want_out = true;
                    epoll.ctl(
                        libc::EPOLL_CTL_MOD,
                        pb.stream.as_raw_fd(),
                        p,
                        READABLE | WRITABLE,
                    )?;
                }
                Err(e) => {
                    pb.alive = false;
                    let _ = epoll.ctl(libc::EPOLL_CTL_DEL, pb.stream.as_raw_fd(), p, 0);
                    notes.publisher(p, e);
                }
            }
        }
        Ok(next_due)
    }
}
