//! The live process: preloads the topics, keeps the live subscribers and
//! publishes the live load, and checks what the live subscribers received.

use super::*;

struct LiveSub {
    stream: TcpStream,
    inbox: Inbox,
    topic: usize,
    start_after: u64,
    order: Order,
    out: Vec<u8>,
    alive: bool,
}

pub(super) fn live_process(args: &Args) -> Result<(), String> {
    client_main(
        args,
        "clients --part live",
        |server, stdin| live_run(args, server, stdin),
        LiveOutcome::to_line,
    )
}

/// Publishes `count` events into every topic over a blocking connection,
/// `PRELOAD_WINDOW` in flight; returns each topic's newest sequence.
fn preload(
    c: &mut wire::Connected,
    topics: &[String],
    count: u64,
    timeout: Duration,
) -> Result<Vec<u64>, String> {
    let payload = vec![0x5au8; PAYLOAD_BYTES];
    let total = count * topics.len() as u64;
    let mut newest = vec![0u64; topics.len()];
    let mut out = Vec::new();
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < total {
        out.clear();
        while sent < total && sent - acked < PRELOAD_WINDOW as u64 {
            Frame::Publish(Publish {
                request_id: sent as u32,
                topic: topics[(sent % topics.len() as u64) as usize].as_bytes(),
                payload: &payload,
            })
            .encode(&mut out);
            sent += 1;
        }
        c.conn
            .stream
            .write_all(&out)
            .map_err(|e| format!("preloading: {e}"))?;
        while acked < sent {
            let ack = wire::await_frame(
                &mut c.conn,
                Instant::now() + timeout,
                "preloading",
                |f| match f {
                    Frame::PublishAck(a) => Some(*a),
                    _ => None,
                },
            )?;
            if ack.status != 0 {
                return Err(format!(
                    "preloading: a publish refused, status {}",
                    ack.status
                ));
            }
            let k = (u64::from(ack.request_id) % topics.len() as u64) as usize;
            newest[k] = newest[k].max(ack.seq);
            acked += 1;
        }
    }
    Ok(newest)
}

fn live_run(
    args: &Args,
    server: SocketAddr,
    stdin: &mut StdinLines,
) -> Result<LiveOutcome, String> {
    let (timeout, topics, id) = part_setup(args, args.live + 1, "-live")?;
    let mut o = LiveOutcome::default();

    let mut publisher = wire::connect(server, &format!("{id}-pub"), timeout)?;
    let t = Instant::now();
    preload(&mut publisher, &topics, args.preload(), timeout)?;
    o.preload_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "resume live: {} events in each of {} topics preloaded in {:.1} s",
        args.preload(),
        args.topics,
        o.preload_secs
    );

    let topic_len_max = topics.iter().map(String::len).max().unwrap_or(0);
    let peek = EventHead::payload_at(topic_len_max) + STAMP_BYTES;
    let mut subs = Vec::with_capacity(args.live);
    let mut heartbeat_ms = 0;
    for i in 0..args.live {
        let topic = i % args.topics;
        let mut c = wire::connect(server, &format!("{id}-s{i}"), timeout)
            .map_err(|e| format!("live subscriber {i}: {e}"))?;
        heartbeat_ms = c.heartbeat_ms;
        let last = c
            .subscribe_live(topics[topic].as_bytes(), timeout)
            .map_err(|e| format!("live subscriber {i}: {e}"))?;
        let (stream, leftover) = c.conn.into_parts();
        set_live_socket(&stream)?;
        subs.push(LiveSub {
            inbox: Inbox::new(&leftover, INBOX_BYTES, peek)?,
            stream,
            topic,
            start_after: last,
            order: Order::starting_after(last),
            out: Vec::new(),
            alive: true,
        });
    }
    let limits = publisher.conn.limits;
    let (mut pub_stream, leftover) = publisher.conn.into_parts();
    set_live_socket(&pub_stream)?;
    let mut pub_inbox = Inbox::new(&leftover, INBOX_BYTES, EventHead::BYTES_MIN)?;
    let mut pub_out: Vec<u8> = Vec::with_capacity(64 << 10);

    crate::child::say("ready");
    let go = stdin.wait_line(Duration::from_secs(3600))?;
    if go != "go" {
        return Err(format!("expected `go` from the driver, got {go:?}"));
    }

    let mut epoll = Epoll::new()?;
    const PUB_TOKEN: usize = usize::MAX - 2;
    epoll.ctl(
        libc::EPOLL_CTL_ADD,
        pub_stream.as_raw_fd(),
        PUB_TOKEN,
        READABLE,
    )?;
    epoll.ctl(libc::EPOLL_CTL_ADD, 0, STDIN_TOKEN, READABLE)?;
    for (i, s) in subs.iter().enumerate() {
        epoll.ctl(libc::EPOLL_CTL_ADD, s.stream.as_raw_fd(), i, READABLE)?;
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    // SAFETY: prctl with an integer argument.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }

    let per_s = args.rate * args.topics as f64;
    let due_ns = |g: u64| (g as f64 * 1e9 / per_s) as u64;
    let t0 = Instant::now();
    let real0 = cluecast_sys::realtime_ns();
    let base_lo = WARMUP.as_nanos() as u64;
    let base_hi = base_lo + Duration::from_secs_f64(args.baseline).as_nanos() as u64;
    let longest =
        base_hi + Duration::from_secs_f64(args.timeout).as_nanos() as u64 + 60_000_000_000;
    let mut stop_ns = u64::MAX; // publishing stops at this (ns from t0)
    let mut storm_said = false;
    let mut next = 0u64; // the next event of the schedule
    let mut in_flight: HashMap<u32, usize> = HashMap::new();
    let mut last_seq: Vec<u64> = vec![0; args.topics];
    let mut payload = vec![0u8; PAYLOAD_BYTES];
    let mut base = latency_histogram();
    let mut storm = latency_histogram();
    let mut srv = [latency_histogram(), latency_histogram()];
    let mut note = String::new();
    let ping_every = (heartbeat_ms > 0).then(|| Duration::from_millis(u64::from(heartbeat_ms) / 2));
    let mut next_ping = ping_every.map(|p| t0 + p);
    let mut drain_deadline: Option<Instant> = None;

    loop {
        let now = Instant::now();
        let el = now.duration_since(t0).as_nanos() as u64;
        if !storm_said && el >= base_hi {
            crate::child::say("storm");
            storm_said = true;
        }
        if stop_ns == u64::MAX && el >= longest {
            stop_ns = el;
            set_note(&mut note, "the driver never said stop".to_string());
        }
        // Publish what is due.
        while stop_ns == u64::MAX && due_ns(next) <= el {
            let due = due_ns(next);
            o.send_lag_max = o.send_lag_max.max(el - due);
            let topic = (next % args.topics as u64) as usize;
            Stamp {
                publisher: 0,
                counter: next,
                scheduled_ns: real0 + due,
            }
            .write(&mut payload);
            Frame::Publish(Publish {
                request_id: next as u32,
                topic: topics[topic].as_bytes(),
                payload: &payload,
            })
            .encode(&mut pub_out);
            in_flight.insert(next as u32, topic);
            next += 1;
        }
        if !pub_out.is_empty() {
            net::write_some(&mut pub_stream, &mut pub_out)
                .map_err(|e| format!("live publisher: writing: {e}"))?;
        }
        if let (Some(at), Some(every)) = (next_ping, ping_every) {
            if now >= at {
                next_ping = Some(now + every);
                ping_all(
                    subs.iter_mut()
                        .filter(|s| s.alive)
                        .map(|s| (&mut s.stream, &mut s.out)),
                );
            }
        }
        if stop_ns != u64::MAX {
            let done = in_flight.is_empty()
                && subs
                    .iter()
                    .filter(|s| s.alive)
                    .all(|s| s.order.next > last_seq[s.topic]);
            let deadline = *drain_deadline.get_or_insert(now + DRAIN_TIMEOUT);
            if done || now >= deadline {
                break;
            }
        }
        let wake = match stop_ns {
            u64::MAX => Duration::from_nanos(due_ns(next).saturating_sub(el)).min(WAIT_SLICE),
            _ => WAIT_SLICE,
        };
        let ready = match epoll.wait(&mut events, wake) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("epoll_wait: {e}")),
        };
        for ev in &events[..ready] {
            match ev.u64 as usize {
                STDIN_TOKEN => {
                    for line in stdin.read() {
                        if line == "stop" && stop_ns == u64::MAX {
                            stop_ns = t0.elapsed().as_nanos() as u64;
                        }
                    }
                    if stdin.closed && stop_ns == u64::MAX {
                        return Err("the driver went away".into());
                    }
                    if stdin.closed {
                        let _ = epoll.ctl(libc::EPOLL_CTL_DEL, 0, STDIN_TOKEN, 0);
                    }
                }
                PUB_TOKEN => {
                    for _ in 0..READS_PER_TURN {
                        let n = match wire::turn(pub_inbox.fill(&mut pub_stream), |&n| n)
                            .map_err(|e| format!("live publisher: {e}"))?
                        {
                            Turn::Read(n) => n,
                            Turn::Again => continue,
                            Turn::Empty => break,
                        };
                        pub_inbox.drain(
                            &limits,
                            |_, _| {},
                            |f| {
                                if let Some(why) = refusal(f) {
                                    return Err(format!("live publisher: {why}"));
                                }
                                if let Frame::PublishAck(a) = f {
                                    let topic = in_flight
                                        .remove(&a.request_id)
                                        .ok_or("live publisher: an ack for no publish")?;
                                    if a.status == 0 {
                                        o.published += 1;
                                        last_seq[topic] = last_seq[topic].max(a.seq);
                                    } else {
                                        o.refused += 1;
                                    }
                                }
                                Ok(())
                            },
                        )?;
                        if n < pub_inbox.free_min() {
                            break;
                        }
                    }
                }
                i => {
                    let Some(s) = subs.get_mut(i) else { continue };
                    if !s.alive {
                        continue;
                    }
                    let stop_real = match stop_ns {
                        u64::MAX => u64::MAX,
                        ns => real0 + ns,
                    };
                    let windows = [real0 + base_lo, real0 + base_hi, stop_real];
                    let hists = [&mut base, &mut storm];
                    if let Err(why) = read_live(s, &limits, windows, hists, &mut srv) {
                        s.alive = false;
                        let _ = epoll.ctl(libc::EPOLL_CTL_DEL, s.stream.as_raw_fd(), i, 0);
                        set_note(&mut note, format!("live subscriber {i}: {why}"));
                    }
                }
            }
        }
    }
    o.unacked = in_flight.len() as u64;
    for s in &subs {
        o.delivered += s.order.received;
        o.seq_errors += s.order.gaps + s.order.duplicates;
        let want = last_seq[s.topic].saturating_sub(s.start_after);
        o.lost += want.saturating_sub(s.order.received);
    }
    let [b, st] = [&srv[0], &srv[1]].map(Percentiles::of);
    (
        o.base_srv_p50,
        o.base_srv_p99,
        o.storm_srv_p50,
        o.storm_srv_p99,
    ) = (b.p50, b.p99, st.p50, st.p99);
    o.last_seqs = last_seq
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(":");
    for (h, fields) in [
        (
            &base,
            [
                &mut o.base_count,
                &mut o.base_p50,
                &mut o.base_p90,
                &mut o.base_p99,
                &mut o.base_p999,
                &mut o.base_max,
            ],
        ),
        (
            &storm,
            [
                &mut o.storm_count,
                &mut o.storm_p50,
                &mut o.storm_p90,
                &mut o.storm_p99,
                &mut o.storm_p999,
                &mut o.storm_max,
            ],
        ),
    ] {
        let p = Percentiles::of(h);
        for (f, v) in fields
            .into_iter()
            .zip([p.count, p.p50, p.p90, p.p99, p.p999, p.max])
        {
            *f = v;
        }
    }
    if let Some(path) = &args.hgrm_out {
        for (h, ext) in [(&base, "baseline"), (&storm, "storm")] {
            let p = path.with_extension(ext);
            std::fs::write(&p, plot::hgrm(h, 1e6))
                .map_err(|e| format!("writing {}: {e}", p.display()))?;
        }
    }
    if o.unacked > 0 {
        set_note(
            &mut note,
            format!("{} live publishes unanswered", o.unacked),
        );
    }
    o.note = note;
    eprintln!(
        "resume live: baseline p99 {:.3} ms, storm p99 {:.3} ms, {} published, lost {}{}",
        o.base_p99 as f64 / 1e6,
        o.storm_p99 as f64 / 1e6,
        o.published,
        o.lost,
        report::parenthesised(&o.note)
    );
    Ok(o)
}

/// Reads a live subscriber's socket: order, and latency (receive − due)
/// into `base` for events due in [w0, w1), `storm` for [w1, w2); the
/// server's part (receive − publish_ts_ns) into `srv` likewise.
fn read_live(
    s: &mut LiveSub,
    limits: &Limits,
    [w0, w1, w2]: [u64; 3],
    [base, storm]: [&mut Histogram<u64>; 2],
    srv: &mut [Histogram<u64>; 2],
) -> Result<(), String> {
    for _ in 0..READS_PER_TURN {
        let (n, stamp) = match wire::turn(s.inbox.fill_stamped(&s.stream), |r| r.0)? {
            Turn::Read(r) => r,
            Turn::Again => continue,
            Turn::Empty => return Ok(()),
        };
        let recv_ns = stamp.unwrap_or_else(cluecast_sys::realtime_ns);
        let order = &mut s.order;
        let mut bad = None;
        s.inbox.drain(
            limits,
            |head, _| {
                order.see(head.seq());
                let Some((ts, due)) = head
                    .publish_ts_ns()
                    .zip(head.payload())
                    .and_then(|(ts, p)| Some((ts, Stamp::read(p)?.scheduled_ns)))
                else {
                    bad = Some("an EVENT without a stamp");
                    return;
                };
                let latency = recv_ns.saturating_sub(due);
                let server_part = recv_ns.saturating_sub(ts);
                if (w0..w1).contains(&due) {
                    base.saturating_record(latency);
                    srv[0].saturating_record(server_part);
                } else if (w1..w2).contains(&due) {
                    storm.saturating_record(latency);
                    srv[1].saturating_record(server_part);
                }
            },
            |f| match refusal(f) {
                Some(why) => Err(why),
                None => Ok(()),
            },
        )?;
        if let Some(why) = bad {
            return Err(why.into());
        }
        if n < s.inbox.free_min() {
            return Ok(());
        }
    }
    Ok(())
}
