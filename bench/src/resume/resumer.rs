//! A resume process: its share of the clients, its probe, the storm of
//! resuming SUBSCRIBEs, and the check that each client caught up exactly.

use super::*;

struct Client {
    stream: TcpStream,
    inbox: Inbox,
    topic: usize,
    /// Resumed after this sequence (set when the SUBSCRIBE goes).
    after: u64,
    order: Order,
    /// SUBSCRIBED came, with status Ok.
    answered: bool,
    resumed: bool,
    caught_up_ns: Option<u64>,
    events_at_catch_up: u64,
    out: Vec<u8>,
    alive: bool,
}

pub(super) fn resume_process(args: &Args) -> Result<(), String> {
    client_main(
        args,
        "clients --part resume",
        |server, stdin| resume_run(args, server, stdin),
        ResumeOutcome::to_line,
    )
}

fn resume_run(
    args: &Args,
    server: SocketAddr,
    stdin: &mut StdinLines,
) -> Result<ResumeOutcome, String> {
    let (timeout, topics, id) = part_setup(args, args.clients + 1, "")?;
    let mut o = ResumeOutcome::default();
    let mut note = String::new();

    let t = Instant::now();
    let mut clients = Vec::with_capacity(args.clients);
    let (mut limits, mut heartbeat_ms) = (Limits::DEFAULT, 0);
    for j in args.first..args.first + args.clients {
        let c = wire::connect(server, &format!("{id}-c{j}"), timeout)
            .map_err(|e| format!("client {j}: {e}"))?;
        (limits, heartbeat_ms) = (c.conn.limits, c.heartbeat_ms);
        let (stream, leftover) = c.conn.into_parts();
        set_live_socket(&stream)?;
        clients.push(Client {
            inbox: Inbox::new(&leftover, INBOX_BYTES, EventHead::BYTES_MIN)?,
            stream,
            topic: j % args.topics,
            after: 0,
            order: Order::default(),
            answered: false,
            resumed: false,
            caught_up_ns: None,
            events_at_catch_up: 0,
            out: Vec::new(),
            alive: true,
        });
    }
    o.connected = clients.len() as u64;
    o.connect_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "resume clients {}..{}: connected in {:.1} s",
        args.first,
        args.first + args.clients,
        o.connect_secs
    );
    crate::child::say("ready");

    let mut epoll = Epoll::new()?;
    epoll.ctl(libc::EPOLL_CTL_ADD, 0, STDIN_TOKEN, READABLE)?;
    for (i, c) in clients.iter().enumerate() {
        epoll.ctl(libc::EPOLL_CTL_ADD, c.stream.as_raw_fd(), i, READABLE)?;
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let ping_every = (heartbeat_ms > 0).then(|| Duration::from_millis(u64::from(heartbeat_ms) / 2));
    let mut next_ping = ping_every.map(|p| Instant::now() + p);
    // The probe: subscribed live to every topic once the storm starts.
    let mut probe: Option<(TcpStream, Inbox, Vec<u64>)> = None;
    let mut resume_deadline: Option<Instant> = None;
    let mut said_caught_up = false;
    let mut last: Option<Vec<u64>> = None;
    let mut final_deadline: Option<Instant> = None;

    loop {
        let now = Instant::now();
        if let (Some(at), Some(every)) = (next_ping, ping_every) {
            if now >= at {
                next_ping = Some(now + every);
                ping_all(
                    clients
                        .iter_mut()
                        .filter(|c| c.alive)
                        .map(|c| (&mut c.stream, &mut c.out)),
                );
            }
        }
        if probe.is_some() && !said_caught_up {
            let behind = clients
                .iter()
                .filter(|c| c.alive && c.caught_up_ns.is_none())
                .count();
            let late = resume_deadline.is_some_and(|d| now >= d);
            if behind == 0 || late {
                if late {
                    set_note(
                        &mut note,
                        format!("{behind} clients not caught up within {} s", args.timeout),
                    );
                }
                crate::child::say("caught-up");
                said_caught_up = true;
            }
        }
        if let Some(last) = &last {
            let done = clients
                .iter()
                .filter(|c| c.alive)
                .all(|c| c.order.next > last[c.topic]);
            if done || final_deadline.is_some_and(|d| now >= d) {
                break;
            }
        }
        let ready = match epoll.wait(&mut events, WAIT_SLICE) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("epoll_wait: {e}")),
        };
        for ev in &events[..ready] {
            match ev.u64 as usize {
                STDIN_TOKEN => {
                    for line in stdin.read() {
                        if line == "resume" && probe.is_none() {
                            let p = start_storm(args, server, &topics, &mut clients, &mut o)?;
                            epoll.ctl(
                                libc::EPOLL_CTL_ADD,
                                p.0.as_raw_fd(),
                                PROBE_TOKEN,
                                READABLE,
                            )?;
                            probe = Some(p);
                            resume_deadline =
                                Some(Instant::now() + Duration::from_secs_f64(args.timeout));
                        } else if let Some(seqs) = line.strip_prefix("final ") {
                            let seqs: Result<Vec<u64>, _> =
                                seqs.split(':').map(str::parse).collect();
                            match seqs {
                                Ok(v) if v.len() == args.topics => last = Some(v),
                                _ => return Err(format!("a bad `final` line: {line:?}")),
                            }
                            final_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                        } else if !line.is_empty() && line != "resume" {
                            return Err(format!("an unknown word from the driver: {line:?}"));
                        }
                    }
                    if stdin.closed {
                        return Err("the driver went away".into());
                    }
                }
                PROBE_TOKEN => {
                    let Some((stream, inbox, newest)) = probe.as_mut() else {
                        continue;
                    };
                    read_probe(stream, inbox, newest, &limits, &topics)
                        .map_err(|e| format!("the probe: {e}"))?;
                }
                i => {
                    let newest = match &probe {
                        Some((_, _, n)) => n.as_slice(),
                        None => &[],
                    };
                    let c = &mut clients[i];
                    if !c.alive {
                        continue;
                    }
                    if let Err(why) = read_client(c, &limits, newest) {
                        c.alive = false;
                        let _ = epoll.ctl(libc::EPOLL_CTL_DEL, c.stream.as_raw_fd(), i, 0);
                        set_note(&mut note, format!("client {}: {why}", args.first + i));
                    }
                }
            }
        }
    }
    let last = last.unwrap_or_default();
    for c in &clients {
        o.resumed += u64::from(c.resumed);
        o.not_recovered += u64::from(c.answered && !c.resumed);
        o.caught_up += u64::from(c.caught_up_ns.is_some());
        o.gaps += c.order.gaps;
        o.duplicates += c.order.duplicates;
        o.received += c.order.received;
        o.catch_up_events += c.events_at_catch_up;
        o.last_caught_up_ns = o.last_caught_up_ns.max(c.caught_up_ns.unwrap_or(0));
        let exact = c.alive
            && c.resumed
            && last
                .get(c.topic)
                .is_some_and(|&l| c.order.exact(c.after, l));
        o.exact += u64::from(exact);
    }
    o.note = note;
    eprintln!(
        "resume clients {}..{}: {} caught up, {} exact, {} gaps, {} duplicates{}",
        args.first,
        args.first + args.clients,
        o.caught_up,
        o.exact,
        o.gaps,
        o.duplicates,
        report::parenthesised(&o.note)
    );
    Ok(o)
}

/// The storm: the probe learns every topic's epoch and newest sequence,
/// then every client's SUBSCRIBE Resume goes out at once.
fn start_storm(
    args: &Args,
    server: SocketAddr,
    topics: &[String],
    clients: &mut [Client],
    o: &mut ResumeOutcome,
) -> Result<(TcpStream, Inbox, Vec<u64>), String> {
    let timeout = Duration::from_millis(args.common.connect_timeout_ms);
    let mut probe = wire::connect(
        server,
        &format!("resume-{:08x}-probe-{}", args.nonce, args.first),
        timeout,
    )
    .map_err(|e| format!("the probe: {e}"))?;
    let mut epochs = Vec::with_capacity(topics.len());
    let mut newest = Vec::with_capacity(topics.len());
    for t in topics {
        probe
            .conn
            .send(&Frame::Subscribe(Subscribe {
                mode: StartMode::Live,
                epoch: 0,
                last_seq: 0,
                topic: t.as_bytes(),
            }))
            .map_err(|e| format!("the probe: {e}"))?;
        let (epoch, last) = wire::await_frame(
            &mut probe.conn,
            Instant::now() + timeout,
            "the probe's SUBSCRIBED",
            |f| match f {
                Frame::Subscribed(s) if s.topic == t.as_bytes() => Some((s.epoch, s.last_seq)),
                _ => None,
            },
        )?;
        if last < args.behind {
            return Err(format!(
                "topic {t} holds {last} events, fewer than --behind"
            ));
        }
        epochs.push(epoch);
        newest.push(last);
    }
    o.first_resume_ns = cluecast_sys::realtime_ns();
    for c in clients.iter_mut().filter(|c| c.alive) {
        c.after = newest[c.topic] - args.behind;
        c.order = Order::starting_after(c.after);
        Frame::Subscribe(Subscribe {
            mode: StartMode::Resume,
            epoch: epochs[c.topic],
            last_seq: c.after,
            topic: topics[c.topic].as_bytes(),
        })
        .encode(&mut c.out);
        net::write_some(&mut c.stream, &mut c.out)
            .map_err(|e| format!("sending SUBSCRIBE Resume: {e}"))?;
        if !c.out.is_empty() {
            return Err("a SUBSCRIBE did not fit an empty socket".into());
        }
    }
    let (stream, leftover) = probe.conn.into_parts();
    set_live_socket(&stream)?;
    let inbox = Inbox::new(&leftover, INBOX_BYTES, EventHead::payload_at(64))?;
    Ok((stream, inbox, newest))
}

/// The probe's live events: each topic's newest sequence so far.
fn read_probe(
    stream: &mut TcpStream,
    inbox: &mut Inbox,
    newest: &mut [u64],
    limits: &Limits,
    topics: &[String],
) -> Result<(), String> {
    for _ in 0..READS_PER_TURN {
        let n = match wire::turn(inbox.fill(stream), |&n| n)? {
            Turn::Read(n) => n,
            Turn::Again => continue,
            Turn::Empty => return Ok(()),
        };
        inbox.drain(
            limits,
            |head, _| {
                let name = head.topic();
                if let Some(k) = topics.iter().position(|t| Some(t.as_bytes()) == name) {
                    newest[k] = newest[k].max(head.seq());
                }
            },
            |f| match refusal(f) {
                Some(why) => Err(why),
                None => Ok(()),
            },
        )?;
        if n < inbox.free_min() {
            return Ok(());
        }
    }
    Ok(())
}

/// A resuming client's input: SUBSCRIBED, then its events in order; it is
/// caught up once it holds what the probe holds of its topic (`newest`).
fn read_client(c: &mut Client, limits: &Limits, newest: &[u64]) -> Result<(), String> {
    for _ in 0..READS_PER_TURN {
        let (n, stamp) = match wire::turn(c.inbox.fill_stamped(&c.stream), |r| r.0)? {
            Turn::Read(r) => r,
            Turn::Again => continue,
            Turn::Empty => return Ok(()),
        };
        let recv_ns = stamp.unwrap_or_else(cluecast_sys::realtime_ns);
        let (order, caught_up, at_catch_up) =
            (&mut c.order, &mut c.caught_up_ns, &mut c.events_at_catch_up);
        let head_of_topic = newest.get(c.topic).copied().unwrap_or(u64::MAX);
        let (answered, resumed) = (&mut c.answered, &mut c.resumed);
        c.inbox.drain(
            limits,
            |head, _| {
                let seq = head.seq();
                order.see(seq);
                if caught_up.is_none() && seq >= head_of_topic {
                    *caught_up = Some(recv_ns);
                    *at_catch_up = order.received;
                }
            },
            |f| match f {
                Frame::Subscribed(s) => {
                    *answered = true;
                    *resumed = s.status == SubscribeStatus::Ok;
                    if !*resumed {
                        return Err(format!(
                            "SUBSCRIBED {:?} (oldest held {})",
                            s.status, s.oldest_seq
                        ));
                    }
                    Ok(())
                }
                f => match refusal(f) {
                    Some(why) => Err(why),
                    None => Ok(()),
                },
            },
        )?;
        if n < c.inbox.free_min() {
            return Ok(());
        }
    }
    Ok(())
}
