//! The generator's run: connects everyone, then the event loop through
//! warm-up, the measured window and the drain, and what it saw.

use super::*;

/// Whether every publish is answered and every live subscriber has every
/// event it should.
fn all_in(subs: &[Sub], pubs: &[Pub], schedule: &Schedule) -> bool {
    if pubs.iter().any(|p| p.alive && p.acks < p.sent) {
        return false;
    }
    subs.iter().filter(|s| s.alive).all(|s| {
        pubs.iter().zip(&s.tracks).all(|(p, t)| {
            let want = schedule.count_on_topic(p.next, s.topic) - p.excluded_on_topic[s.topic];
            t.unique >= want
        })
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Warmup,
    Measure,
    Drain,
}
/// Runs the plan; `mark` is called at the start and end of the measured
/// window (always both, in order, unless setting up fails). Returns what
/// was seen and the latency distribution of the window (ns).
pub fn run(plan: &Plan, mut mark: impl FnMut(Mark)) -> Result<(Outcome, Histogram<u64>), String> {
    if plan.subscribers == 0 {
        return Err("need at least one subscriber".into());
    }
    if plan.payload_bytes < STAMP_BYTES {
        return Err(format!(
            "--payload must be at least {STAMP_BYTES} bytes (the stamp)"
        ));
    }
    let schedule = plan.scenario.schedule(plan)?;
    let topics: Vec<String> = (0..plan.topics)
        .map(|k| format!("{}.{k}", plan.topic_prefix))
        .collect();
    let mut storm = None;
    let mut positions = None;
    match plan.scenario {
        Scenario::Storm {
            at,
            subscribers,
            spread,
            newcomers,
        } => {
            if subscribers == 0 || subscribers > plan.subscribers {
                return Err(format!(
                    "a storm of {subscribers} out of {} subscribers",
                    plan.subscribers
                ));
            }
            storm = Some(StormRun {
                at_ns: at.as_nanos() as u64,
                spread_ns: spread.as_nanos() as u64,
                count: subscribers,
                dropped_real_ns: None,
                rejoined: 0,
                gaps: 0,
                newcomers: newcomers.then(|| Newcomers::new(subscribers)),
            });
        }
        Scenario::Hunt { positions_per_s } => {
            if !(positions_per_s > 0.0 && positions_per_s <= POSITIONS_PER_S_MAX) {
                return Err(format!(
                    "{positions_per_s} positions/s per player: must be in (0, {POSITIONS_PER_S_MAX}]"
                ));
            }
            positions = Some(Positions {
                per_s: positions_per_s * plan.subscribers as f64,
                next: 0,
                sent: 0,
                // A square in a city centre, to within 5 m.
                fix: Position {
                    lat_e7: 525_200_000,
                    lon_e7: 134_050_000,
                    accuracy_cm: 500,
                    client_ts_ms: 1,
                },
                channels: topics.iter().map(|t| format!("{t}.pos")).collect(),
            });
        }
        Scenario::Fanout | Scenario::Spike { .. } => {}
    }
    let upstreams = positions.is_some() && plan.protocol == Protocol::Peer(Peer::Resp);
    let sockets = plan.subscribers * if upstreams { 2 } else { 1 } + plan.publishers;
    check_descriptors(sockets + plan.attack.as_ref().map_or(0, |a| a.sockets_max))?;
    // Wake-ups within 1 µs of the schedule instead of the default 50 µs.
    // SAFETY: prctl with an integer argument.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
    let topic_len_max = topics.iter().map(String::len).max().unwrap_or(0);
    // Each EVENT is looked at up to the end of the payload's stamp.
    let peek = EventHead::payload_at(topic_len_max) + STAMP_BYTES;
    let id_base = format!("fanout-{}", std::process::id());

    // A RESP message is parsed whole, so it must fit in a quarter of the
    // inbox; EVENTs are looked at by their first bytes only.
    let sub_inbox_bytes = match plan.protocol {
        Protocol::Cluecast => SUB_INBOX_BYTES,
        Protocol::Peer(_) => SUB_INBOX_BYTES.max(4 * (plan.payload_bytes + 512)),
    };

    // Subscribers first, so every one of them sees every event.
    let connect_start = Instant::now();
    let mut subs = Vec::with_capacity(plan.subscribers);
    let mut limits = Limits::DEFAULT;
    let mut heartbeat_ms = 0;
    // One client's handshake (and SUBSCRIBE to `topic`); `who` names it in
    // an error.
    let mut join_one = |who: &str, id: &str, topic: Option<&str>| {
        join(
            plan.protocol,
            plan.server,
            None,
            plan.connect_timeout,
            id,
            topic,
            None,
            &mut limits,
            &mut heartbeat_ms,
            plan.tls.as_ref(),
        )
        .map_err(String::from)
        .and_then(|c| wire::check_payload(plan.payload_bytes, &limits).map(|_| c))
        .map_err(|e| format!("{who}: {e}"))
    };
    for i in 0..plan.subscribers {
        let topic = i % plan.topics;
        let c = join_one(
            &format!("subscriber {i}"),
            &format!("{id_base}-s{i}"),
            Some(&topics[topic]),
        )?;
        c.stream
            .set_nonblocking(true)
            .and_then(|_| net::enable_rx_timestamps(&c.stream))
            .map_err(|e| format!("socket options: {e}"))?;
        let upstream = match upstreams {
            true => Some(
                net::tcp_connect(plan.server, plan.connect_timeout)
                    .and_then(|up| {
                        up.set_nonblocking(true)
                            .map_err(|e| format!("socket options: {e}"))?;
                        Ok(up)
                    })
                    .map_err(|e| format!("subscriber {i} upstream: {e}"))?,
            ),
            false => None,
        };
        subs.push(Sub {
            inbox: Inbox::new(&c.buf, sub_inbox_bytes, peek)?,
            stream: c.stream,
            topic,
            next_seq: c.next_seq,
            tracks: vec![Track::default(); plan.publishers],
            alive: true,
            away: false,
            back_ns: 0,
            caught_up_ns: None,
            out: Vec::new(),
            upstream,
            tls: c.tls,
        });
        if (i + 1) % CONNECT_PROGRESS_EVERY == 0 {
            eprintln!(
                "fanout clients: {} subscribers connected in {:.1} s",
                i + 1,
                connect_start.elapsed().as_secs_f64()
            );
        }
    }
    let mut pubs = Vec::with_capacity(plan.publishers);
    for p in 0..plan.publishers {
        let c = join_one(&format!("publisher {p}"), &format!("{id_base}-p{p}"), None)?;
        c.stream
            .set_nonblocking(true)
            .map_err(|e| format!("socket options: {e}"))?;
        let inbox = Inbox::new(&c.buf, PUB_INBOX_BYTES, EventHead::BYTES_MIN)?;
        let payload = (0..plan.payload_bytes).map(|i| (i % 251) as u8).collect();
        let mut pb = Pub::new(c.stream, inbox, payload, plan.topics);
        pb.tls = c.tls;
        pubs.push(pb);
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    eprintln!(
        "fanout clients: {} subscribers and {} publishers connected in {connect_secs:.1} s",
        plan.subscribers, plan.publishers
    );
    if plan.tls.is_some() {
        let links = (subs.iter().map(|s| &s.tls)).chain(pubs.iter().map(|p| &p.tls));
        let resumed = links.flatten().filter(|t| t.resumed()).count();
        eprintln!(
            "fanout clients: TLS 1.3 handshakes: {} full, {resumed} resumed with a ticket",
            plan.subscribers + plan.publishers - resumed
        );
    }

    // Tokens: publishers 0..P, subscriber i at P + i.
    let mut epoll = Epoll::new()?;
    for (t, p) in pubs.iter().enumerate() {
        epoll.ctl(libc::EPOLL_CTL_ADD, p.stream.as_raw_fd(), t, READABLE)?;
    }
    for (i, s) in subs.iter().enumerate() {
        epoll.ctl(
            libc::EPOLL_CTL_ADD,
            s.stream.as_raw_fd(),
            plan.publishers + i,
            READABLE,
        )?;
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];

    // The server drops connections silent for idle_timeout (> heartbeat):
    // subscribers ping so long runs are not cut short.
    let ping_every = (heartbeat_ms > 0).then(|| Duration::from_millis(u64::from(heartbeat_ms) / 2));
    // Subscribers with PINGs or positions to write.
    let mut writing: Vec<usize> = Vec::new();

    let warm_ns = plan.warmup.as_nanos() as u64;
    let end_ns = warm_ns + plan.duration.as_nanos() as u64;
    // The schedule runs on the monotonic clock from t0; stamps and receive
    // times are CLOCK_REALTIME (comparable with the server's
    // publish_ts_ns), anchored at the same moment.
    let t0 = Instant::now();
    let real0 = cluecast_sys::realtime_ns();
    // The attack begins with the warm-up, so the server is under siege
    // before the storm, and ends with the window (dropped on an early
    // return: that stops it too).
    let mut attackers = plan
        .attack
        .as_ref()
        .map(|a| a.start(plan.server))
        .transpose()?;
    let mut attacked = None;
    let since_t0 = || Instant::now().duration_since(t0).as_nanos() as u64;
    let mut next_ping = ping_every.map(|p| t0 + p);
    let (phase_lo, phase_hi) = match plan.scenario.phase() {
        Some((lo, hi)) => (lo.as_nanos() as u64, hi.as_nanos() as u64),
        None => (end_ns, end_ns),
    };
    let mut rx = Rx {
        schedule: schedule.clone(),
        window_lo: real0 + warm_ns,
        window_hi: real0 + end_ns,
        phase_lo: real0 + phase_lo.clamp(warm_ns, end_ns),
        phase_hi: real0 + phase_hi.clamp(warm_ns, end_ns),
        latency: latency_histogram(),
        phase: latency_histogram(),
        steady: latency_histogram(),
        catch_up: 0,
        fanout: latency_histogram(),
        publish: latency_histogram(),
        read_delay: latency_histogram(),
        unstamped: 0,
        delivered: 0,
        invalid: 0,
        seq_errors: 0,
    };
    let mut publishing = Publishing {
        protocol: plan.protocol,
        schedule: schedule.clone(),
        topics: &topics,
        real0,
        warm_ns,
        end_ns,
        send_lag: latency_histogram(),
        window_sent: 0,
        backlog_max: 0,
    };
    let mut notes = Notes::default();
    let mut phase = Phase::Warmup;
    let mut drain_deadline = t0 + plan.warmup + plan.duration + plan.drain_timeout;
    let mut next_drain_check = t0;
    let (mut window_start, mut window_end) = (t0, t0);
    let (mut delivered0, mut delivered1) = (0u64, 0u64);
    let (mut cpu0, mut cpu1) = (f64::NAN, f64::NAN);
    let mut marked = 0;
    let mut progress = Progress::new(t0);
    let total_s = (plan.warmup + plan.duration).as_secs_f64();

    let drained = loop {
        let now = Instant::now();
        let el = now.duration_since(t0).as_nanos() as u64;
        if let Some(p) = progress.as_mut().filter(|p| now >= p.next) {
            let away = subs.iter().filter(|s| s.away).count();
            p.tick(now, phase, el as f64 / 1e9, total_s, rx.delivered, away);
        }
        // Publish everything due by now (nothing is due after end_ns)
        // before the drain phase may decide everything has arrived.
        let next_due = publishing.publish_due(&mut pubs, &epoll, el, &mut notes)?;
        let all_dead = subs.iter().all(|s| !s.alive) && pubs.iter().all(|p| !p.alive);
        // What the measured window's edges record.
        let edge = |delivered| {
            let cpu = crate::procfs::self_cpu_secs().unwrap_or(f64::NAN);
            (delivered, cpu, Instant::now())
        };
        if phase == Phase::Warmup && (el >= warm_ns || all_dead) {
            (delivered0, cpu0, window_start) = edge(rx.delivered);
            mark(Mark::WindowStart);
            marked += 1;
            phase = Phase::Measure;
        }
        if phase == Phase::Measure && (el >= end_ns || all_dead) {
            (delivered1, cpu1, window_end) = edge(rx.delivered);
            mark(Mark::WindowEnd);
            marked += 1;
            phase = Phase::Drain;
            attacked = attackers.take().map(attack::Running::stop);
            drain_deadline = window_end + plan.drain_timeout;
        }
        if phase == Phase::Drain {
            if all_dead || now >= drain_deadline {
                break false;
            }
            if now >= next_drain_check {
                if all_in(&subs, &pubs, &schedule) {
                    break true;
                }
                next_drain_check = now + DRAIN_CHECK_EVERY;
            }
        }

        if let Some(st) = storm.as_mut() {
            if st.dropped_real_ns.is_none() && el >= st.at_ns {
                for (i, s) in subs[..st.count].iter_mut().enumerate() {
                    if s.alive {
                        let fd = s.stream.as_raw_fd();
                        let _ = epoll.ctl(libc::EPOLL_CTL_DEL, fd, plan.publishers + i, 0);
                        let _ = s.stream.shutdown(std::net::Shutdown::Both);
                        s.away = true;
                    }
                }
                st.dropped_real_ns = Some(cluecast_sys::realtime_ns());
            }
            while let Some(i) = st.due(since_t0()) {
                let s = &mut subs[i];
                if !s.alive {
                    continue;
                }
                let id = format!("{id_base}-s{i}");
                let inbox = (sub_inbox_bytes, peek);
                let token = plan.publishers + i;
                let source = st.newcomers.as_mut().map(|n| n.trying(i));
                let back = rejoin(s, plan, source, &topics[s.topic], &id, inbox, &epoll, token);
                match (back, st.newcomers.as_mut()) {
                    (Ok(gap), n) => {
                        st.gaps += u64::from(gap);
                        if let Some(n) = n {
                            n.subscribed(i);
                        }
                    }
                    (Err(JoinError::Unwelcome(u)), Some(n)) => {
                        n.refused(i, u.retry_after_ms, since_t0());
                    }
                    (Err(e), _) => {
                        (s.alive, s.away) = (false, false);
                        notes.subscriber(i, format!("coming back: {e}"));
                    }
                }
            }
        }

        if let (Some(at), Some(every)) = (next_ping, ping_every) {
            if now >= at {
                next_ping = Some(now + every);
                for (i, s) in subs.iter_mut().enumerate() {
                    if s.alive && !s.away && !s.has_output() {
                        Frame::Ping { nonce: i as u64 }.encode(&mut s.out);
                        writing.push(i);
                    }
                }
            }
        }
        if let Some(positions) = positions.as_mut().filter(|_| phase != Phase::Drain) {
            positions.send_due(el, plan, &mut subs, &mut writing);
        }
        writing.retain(|&i| {
            let s = &mut subs[i];
            if !s.alive || s.away {
                s.out.clear();
                return false;
            }
            if let Err(e) = write_queued(s) {
                s.alive = false;
                notes.subscriber(i, format!("writing: {e}"));
            }
            s.alive && s.has_output()
        });

        // Sleep until the next event is due or the phase changes.
        let wake_ns = match phase {
            Phase::Warmup => next_due.min(warm_ns),
            Phase::Measure => next_due.min(end_ns),
            Phase::Drain => u64::MAX,
        };
        let scenario_ns = storm.as_ref().map_or(u64::MAX, StormRun::next_ns).min(
            positions
                .as_ref()
                .filter(|_| phase != Phase::Drain)
                .map_or(u64::MAX, |ps| ps.due_ns(ps.next)),
        );
        let wake_ns = wake_ns.min(scenario_ns);
        let mut timeout = Duration::from_nanos(wake_ns.saturating_sub(el)).min(WAIT_SLICE);
        if !writing.is_empty() {
            timeout = timeout.min(Duration::from_millis(1));
        }
        let ready = match epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("epoll_wait: {e}")),
        };
        for (k, ev) in events[..ready].iter().enumerate() {
            if k > 0 && k % PUBLISH_CHECK_EVERY == 0 {
                publishing.publish_due(&mut pubs, &epoll, since_t0(), &mut notes)?;
            }
            let token = ev.u64 as usize;
            if let Some(pb) = pubs.get_mut(token) {
                if !pb.alive {
                    continue;
                }
                let mut result = read_pub(pb, plan.protocol, &limits, &schedule);
                if result.is_ok() && pb.want_out && ev.events & WRITABLE != 0 {
                    result = pb.flush().and_then(|flushed| {
                        if flushed {
                            pb.want_out = false;
                            epoll.ctl(
                                libc::EPOLL_CTL_MOD,
                                pb.stream.as_raw_fd(),
                                token,
                                READABLE,
                            )?;
                        }
                        Ok(())
                    });
                }
                if let Err(why) = result {
                    pb.alive = false;
                    let _ = epoll.ctl(libc::EPOLL_CTL_DEL, pb.stream.as_raw_fd(), token, 0);
                    notes.publisher(token, why);
                }
                continue;
            }
            let i = token - plan.publishers;
            let Some(s) = subs.get_mut(i) else { continue };
            if !s.alive {
                continue;
            }
            match read_sub(s, plan.protocol, &limits, &mut rx) {
                Ok(true) => writing.push(i),
                Ok(false) => {}
                Err(why) => {
                    s.alive = false;
                    let _ = epoll.ctl(libc::EPOLL_CTL_DEL, s.stream.as_raw_fd(), token, 0);
                    notes.subscriber(i, why);
                }
            }
        }
    };
    if let Some(p) = &progress {
        p.finish();
    }
    if marked == 0 {
        mark(Mark::WindowStart);
    }
    if marked < 2 {
        delivered1 = rx.delivered;
        window_end = Instant::now();
        mark(Mark::WindowEnd);
    }

    // The final count: every published event of its topic, per subscriber.
    let mut o = Outcome {
        connect_secs,
        window_secs: window_end.duration_since(window_start).as_secs_f64(),
        window_sent: publishing.window_sent,
        window_deliveries: delivered1 - delivered0,
        backlog_max_bytes: publishing.backlog_max as u64,
        unstamped: rx.unstamped,
        delivered: rx.delivered,
        invalid: rx.invalid,
        seq_errors: rx.seq_errors,
        drained,
        generator_cpu_secs: cpu1 - cpu0,
        ..Outcome::default()
    };
    let lat = Percentiles::of(&rx.latency);
    (
        o.lat_count,
        o.lat_p50,
        o.lat_p90,
        o.lat_p99,
        o.lat_p999,
        o.lat_p9999,
        o.lat_max,
    ) = (
        lat.count, lat.p50, lat.p90, lat.p99, lat.p999, lat.p9999, lat.max,
    );
    let ph = Percentiles::of(&rx.phase);
    (
        o.phase_count,
        o.phase_p50,
        o.phase_p99,
        o.phase_p999,
        o.phase_max,
    ) = (ph.count, ph.p50, ph.p99, ph.p999, ph.max);
    let steady = Percentiles::of(&rx.steady);
    (o.steady_p99, o.steady_p999) = (steady.p99, steady.p999);
    o.catch_up_deliveries = rx.catch_up;
    o.positions_sent = positions.as_ref().map_or(0, |ps| ps.sent);
    let mut storm_note = None;
    if let Some(st) = &storm {
        let stormed = &subs[..st.count];
        o.storm_dropped = st.dropped_real_ns.map_or(0, |_| st.count as u64);
        let back: Vec<&Sub> = stormed.iter().filter(|s| s.back_ns > 0).collect();
        o.storm_rejoined = back.len() as u64;
        o.storm_gaps = st.gaps;
        let behind = back.iter().filter(|s| s.caught_up_ns.is_none()).count();
        match (st.dropped_real_ns, behind) {
            (Some(dropped), 0) => {
                let last = back.iter().filter_map(|s| s.caught_up_ns).max();
                o.storm_resume_ns = last.map_or(0, |t| t.saturating_sub(dropped));
            }
            (Some(_), _) => {
                storm_note = Some(format!(
                    "{behind} subscribers back from the storm never caught up"
                ))
            }
            (None, _) => storm_note = Some("the storm never came (the run ended first)".into()),
        }
        if let Some(n) = &st.newcomers {
            n.fill(&mut o);
        }
    }
    let fan = Percentiles::of(&rx.fanout);
    (o.fanout_p50, o.fanout_p99, o.fanout_max) = (fan.p50, fan.p99, fan.max);
    let publish = Percentiles::of(&rx.publish);
    (o.publish_p99, o.publish_max) = (publish.p99, publish.max);
    let read = Percentiles::of(&rx.read_delay);
    (o.read_delay_p50, o.read_delay_p99, o.read_delay_max) = (read.p50, read.p99, read.max);
    let lag = Percentiles::of(&publishing.send_lag);
    (o.send_lag_p99, o.send_lag_max) = (lag.p99, lag.max);
    // Excluded counters as indices on their topic, ascending, per
    // (publisher, topic).
    let mut excluded: Vec<Vec<Vec<u64>>> = Vec::with_capacity(pubs.len());
    for (p, pb) in pubs.iter_mut().enumerate() {
        o.window_scheduled += schedule.due_before(p, end_ns) - schedule.due_before(p, warm_ns);
        o.scheduled += pb.next;
        o.sent += pb.sent;
        o.acked += pb.acks - pb.refused;
        o.refused += pb.refused;
        o.unsent += pb.unsent;
        o.unacked += pb.sent - pb.acks;
        o.publishers_dropped += u64::from(!pb.alive);
        pb.excluded.sort_unstable();
        let mut by_topic = vec![Vec::new(); plan.topics];
        for &n in &pb.excluded {
            by_topic[schedule.topic_of(n)].push(schedule.index_on_topic(n));
        }
        excluded.push(by_topic);
    }
    for s in &subs {
        o.subscribers_dropped += u64::from(!s.alive);
        for (p, t) in s.tracks.iter().enumerate() {
            let published = schedule.count_on_topic(pubs[p].next, s.topic);
            let tally = t.tally(published, &excluded[p][s.topic]);
            o.expected += published - pubs[p].excluded_on_topic[s.topic];
            o.lost += tally.lost;
            o.excluded_received += tally.excluded_received;
            o.duplicated += t.duplicated;
            o.reordered += t.reordered;
            o.approximate |= t.approximate();
        }
    }
    o.note = notes.joined();
    if let Some(note) = storm_note {
        set_note(&mut o.note, note);
    }
    match attacked {
        Some(Ok(counts)) => counts.fill(&mut o),
        Some(Err(e)) => set_note(&mut o.note, format!("attackers: {e}")),
        None => {}
    }
    if !drained {
        set_note(
            &mut o.note,
            format!(
                "not everything arrived within {:?} of the end of publishing",
                plan.drain_timeout
            ),
        );
    }
    Ok((o, rx.latency))
}
