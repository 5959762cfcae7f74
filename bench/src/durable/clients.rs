//! The durable scenario's client side: the publishers, what their acks
//! say, and the client process's run against one server.

use super::*;

struct Pub {
    stream: TcpStream,
    inbox: Inbox,
    out: Vec<u8>,
    out_pos: usize,
    /// Request id → (start ns, topic index), for publishes not yet answered.
    in_flight: std::collections::HashMap<u32, (u64, usize)>,
    /// Publishes made so far (its request ids are their low 32 bits).
    next: u64,
    alive: bool,
}

impl Pub {
    fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes what the socket takes.
    fn flush(&mut self) -> Result<(), String> {
        crate::net::write_backlog(
            &mut self.stream,
            &mut self.out,
            &mut self.out_pos,
            BACKLOG_MAX / 4,
        )
        .map(|_| ())
    }
}

/// The acked sequences of one topic: each must come once, in one epoch,
/// and together they must be 1..=n.
#[derive(Default)]
pub(super) struct Acked {
    epoch: Option<u64>,
    seqs: Vec<u64>,
    epoch_changes: u64,
}

impl Acked {
    pub(super) fn see(&mut self, epoch: u64, seq: u64) {
        match self.epoch {
            None => self.epoch = Some(epoch),
            Some(e) if e != epoch => self.epoch_changes += 1,
            Some(_) => {}
        }
        self.seqs.push(seq);
    }

    /// Sequences missing from 1..=n or given twice, plus epoch changes.
    pub(super) fn errors(&mut self) -> u64 {
        self.seqs.sort_unstable();
        let mut errors = self.epoch_changes;
        let mut want = 1;
        for &s in &self.seqs {
            if s == want {
                want += 1;
            } else if s < want {
                errors += 1; // a repeat
            } else {
                errors += s - want; // a gap
                want = s + 1;
            }
        }
        errors
    }
}

/// `--role clients`: one run against a running server.
pub(super) fn clients(args: &Args) -> Result<(), String> {
    let (server, nonce) = args.common.client_start("clients")?;
    let result = run_clients(args, server, nonce);
    match result {
        Ok(o) => {
            eprintln!(
                "durable clients ({}): {:.0} acks/s, p99 {:.3} ms, {} of {} acks durable{}",
                args.mode.name(),
                o.window_acks as f64 / o.window_secs,
                o.lat_p99 as f64 / 1e6,
                o.durable,
                o.acked,
                report::parenthesised(&o.note)
            );
            child::say(&o.to_line());
            Ok(())
        }
        Err(e) => {
            child::say_error(&e);
            Err(e)
        }
    }
}

fn run_clients(args: &Args, server: std::net::SocketAddr, nonce: u64) -> Result<Outcome, String> {
    let timeout = Duration::from_millis(args.common.connect_timeout_ms);
    let topics: Vec<String> = (0..args.topics)
        .map(|k| format!("durable.{nonce:08x}.{k}"))
        .collect();
    let payload: Vec<u8> = (0..args.payload).map(|i| (i % 251) as u8).collect();
    let mut limits = Limits::DEFAULT;
    let mut pubs = Vec::with_capacity(args.publishers);
    for p in 0..args.publishers {
        let c = wire::connect(server, &format!("durable-{nonce:08x}-p{p}"), timeout)
            .map_err(|e| format!("publisher {p}: {e}"))?;
        limits = c.conn.limits;
        wire::check_payload(args.payload, &limits)?;
        let (stream, leftover) = c.conn.into_parts();
        stream
            .set_nonblocking(true)
            .and_then(|_| net::enable_rx_timestamps(&stream))
            .map_err(|e| format!("socket options: {e}"))?;
        pubs.push(Pub {
            inbox: Inbox::new(&leftover, INBOX_BYTES, EventHead::BYTES_MIN)?,
            stream,
            out: Vec::with_capacity(64 << 10),
            out_pos: 0,
            in_flight: Default::default(),
            next: 0,
            alive: true,
        });
    }
    // Wake-ups within 1 µs of the schedule.
    // SAFETY: prctl with an integer argument.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
    let n_pubs = args.publishers as u64;
    let warm = Duration::from_secs_f64(args.warmup);
    let end = warm + Duration::from_secs_f64(args.duration);
    let t0 = Instant::now();
    let real0 = cluecast_sys::realtime_ns();
    let (win_lo, win_hi) = (
        real0 + warm.as_nanos() as u64,
        real0 + end.as_nanos() as u64,
    );
    // Open loop: publish g (of all) is due at g / rate, from publisher
    // g % P; publisher p's k-th is g = k·P + p.
    let due_ns = |g: u64| -> u64 { (g as f64 * 1e9 / args.rate.unwrap_or(1.0)) as u64 };
    let mut latency = latency_histogram();
    let mut send_lag = latency_histogram();
    let mut acked: Vec<Acked> = (0..args.topics).map(|_| Acked::default()).collect();
    let mut o = Outcome::default();
    let mut note = String::new();
    let mut draining = false;
    let mut marked = 0;
    let (mut cpu0, mut window_start) = (f64::NAN, t0);
    let mut pollfds: Vec<libc::pollfd> = Vec::with_capacity(args.publishers);
    let drain_deadline = t0 + end + Duration::from_secs_f64(args.drain_timeout);
    loop {
        let now = Instant::now();
        let el = now.duration_since(t0);
        if marked == 0 && el >= warm {
            child::say_mark(Mark::WindowStart);
            cpu0 = procfs::self_cpu_secs().unwrap_or(f64::NAN);
            window_start = Instant::now();
            marked = 1;
        }
        if marked == 1 && el >= end {
            child::say_mark(Mark::WindowEnd);
            o.generator_cpu_secs = procfs::self_cpu_secs().unwrap_or(f64::NAN) - cpu0;
            o.window_secs = now.duration_since(window_start).as_secs_f64();
            marked = 2;
            draining = true;
        }
        let pending: usize = pubs
            .iter()
            .filter(|p| p.alive)
            .map(|p| p.in_flight.len())
            .sum();
        if draining && (pending == 0 || now >= drain_deadline) {
            break;
        }
        if pubs.iter().all(|p| !p.alive) {
            break;
        }
        // Publish what the loop or the schedule allows.
        let el_ns = el.as_nanos() as u64;
        let mut next_due = u64::MAX;
        for (p, pb) in pubs.iter_mut().enumerate() {
            if !pb.alive || draining {
                continue;
            }
            loop {
                let g = pb.next * n_pubs + p as u64;
                let start = match args.rate {
                    None if pb.in_flight.len() >= args.window => break,
                    None => cluecast_sys::realtime_ns(),
                    Some(_) => {
                        let due = due_ns(g);
                        if due > el_ns || due >= end.as_nanos() as u64 {
                            if due < end.as_nanos() as u64 {
                                next_due = next_due.min(due);
                            }
                            break;
                        }
                        if (win_lo..win_hi).contains(&(real0 + due)) {
                            send_lag.saturating_record(el_ns - due);
                        }
                        real0 + due
                    }
                };
                let request_id = pb.next as u32;
                pb.next += 1;
                if (win_lo..win_hi).contains(&start) {
                    o.window_sent += 1;
                }
                if pb.backlog() >= BACKLOG_MAX {
                    o.unsent += 1;
                    continue;
                }
                let topic = (g % args.topics as u64) as usize;
                Frame::Publish(Publish {
                    request_id,
                    topic: topics[topic].as_bytes(),
                    payload: &payload,
                })
                .encode(&mut pb.out);
                pb.in_flight.insert(request_id, (start, topic));
                o.sent += 1;
            }
            if let Err(e) = pb.flush() {
                pb.alive = false;
                set_note(&mut note, format!("publisher {p}: {e}"));
            }
        }
        // Wait for acks, at most until the next publish is due.
        pollfds.clear();
        for pb in &pubs {
            let mut events = libc::POLLIN;
            if pb.backlog() > 0 {
                events |= libc::POLLOUT;
            }
            // A dead publisher's slot is kept (index = publisher) but
            // ignored by the kernel.
            let fd = if pb.alive { pb.stream.as_raw_fd() } else { -1 };
            pollfds.push(pollfd(fd, events));
        }
        let wake = match next_due {
            u64::MAX => WAIT_SLICE,
            d => Duration::from_nanos(d.saturating_sub(el_ns)).min(WAIT_SLICE),
        };
        let ts = libc::timespec {
            tv_sec: wake.as_secs() as libc::time_t,
            tv_nsec: wake.subsec_nanos() as libc::c_long,
        };
        // SAFETY: pollfds is a valid array of its length; ts lives through
        // the call; no signal mask.
        let ready = unsafe {
            libc::ppoll(
                pollfds.as_mut_ptr(),
                pollfds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("ppoll: {e}"));
            }
            continue;
        }
        for (p, fd) in pollfds.iter().enumerate() {
            if fd.revents == 0 || !pubs[p].alive {
                continue;
            }
            let pb = &mut pubs[p];
            let mut result = Ok(());
            if fd.revents & libc::POLLOUT != 0 {
                result = pb.flush();
            }
            if result.is_ok() && fd.revents & !libc::POLLOUT != 0 {
                result = read_acks(pb, &limits, &mut |ack, start, topic, recv_ns| {
                    if ack.status != 0 {
                        o.refused += 1;
                        return;
                    }
                    o.acked += 1;
                    o.durable += u64::from(ack.flags & ACK_FLAG_DURABLE != 0);
                    acked[topic].see(ack.epoch, ack.seq);
                    if (win_lo..win_hi).contains(&recv_ns) {
                        o.window_acks += 1;
                    }
                    if (win_lo..win_hi).contains(&start) {
                        latency.saturating_record(recv_ns.saturating_sub(start));
                    }
                });
            }
            if let Err(e) = result {
                pb.alive = false;
                set_note(&mut note, format!("publisher {p}: {e}"));
            }
        }
    }
    if marked == 0 {
        child::say_mark(Mark::WindowStart);
    }
    if marked < 2 {
        child::say_mark(Mark::WindowEnd);
        o.window_secs = window_start.elapsed().as_secs_f64();
    }
    o.unacked = pubs.iter().map(|p| p.in_flight.len() as u64).sum();
    if o.unacked > 0 {
        set_note(
            &mut note,
            format!(
                "{} publishes unanswered {} s after publishing stopped",
                o.unacked, args.drain_timeout
            ),
        );
    }
    o.seq_errors = acked.iter_mut().map(Acked::errors).sum();
    let lat = Percentiles::of(&latency);
    (
        o.lat_count,
        o.lat_p50,
        o.lat_p90,
        o.lat_p99,
        o.lat_p999,
        o.lat_max,
    ) = (lat.count, lat.p50, lat.p90, lat.p99, lat.p999, lat.max);
    let lag = Percentiles::of(&send_lag);
    (o.send_lag_p99, o.send_lag_max) = (lag.p99, lag.max);
    o.note = note;
    if let Some(path) = &args.hgrm_out {
        std::fs::write(path, plot::hgrm(&latency, 1e6))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(o)
}

/// Reads what a publisher's socket holds; `on_ack(ack, start_ns, topic,
/// recv_ns)` per PUBLISH_ACK of a publish in flight.
fn read_acks(
    pb: &mut Pub,
    limits: &Limits,
    on_ack: &mut impl FnMut(&cluecast_proto::PublishAck, u64, usize, u64),
) -> Result<(), String> {
    for _ in 0..READS_PER_TURN {
        let (n, stamp) = match wire::turn(pb.inbox.fill_stamped(&pb.stream), |r| r.0)? {
            Turn::Read(r) => r,
            Turn::Again => continue,
            Turn::Empty => return Ok(()),
        };
        let recv_ns = stamp.unwrap_or_else(cluecast_sys::realtime_ns);
        let in_flight = &mut pb.in_flight;
        pb.inbox.drain_acks(limits, |ack| {
            let (start, topic) = in_flight
                .remove(&ack.request_id)
                .ok_or_else(|| format!("PUBLISH_ACK for no PUBLISH ({})", ack.request_id))?;
            on_ack(ack, start, topic, recv_ns);
            Ok(())
        })?;
        if n < pb.inbox.free_min() {
            return Ok(());
        }
    }
    Ok(())
}
