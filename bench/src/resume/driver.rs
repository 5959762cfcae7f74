//! The resume scenario's driver: a fresh appliance per run, the client
//! processes it starts and talks to, and each run's figures.

use super::*;

pub(super) fn server_args(args: &Args) -> Vec<String> {
    let history = targets::arg_value(&args.common.server_args, "--history-events-max")
        .is_none()
        .then(|| {
            [
                "--history-events-max".into(),
                args.history_events_max.to_string(),
            ]
        });
    targets::appliance_args(
        &args.common,
        1,
        PAYLOAD_BYTES,
        history.into_iter().flatten(),
    )
}

pub(super) fn launch(args: &Args) -> Launch {
    Launch {
        target: Target::Cluecast,
        listen: args.common.listen,
        cpu: args.common.server_pin(),
        appliance_args: server_args(args),
        payload_bytes: PAYLOAD_BYTES,
        durability: args.durability(),
    }
}

pub(super) fn drive(args: &Args) -> Result<(), String> {
    let program = targets::program(Target::Cluecast, &args.common.cluecast)?;
    let bench = std::env::current_exe().map_err(|e| format!("locating this binary: {e}"))?;
    let host = procfs::host();
    let plan = shares(args.clients, args.process_count());
    // The client processes inherit the raised limit.
    fit_descriptors(plan.iter().map(|&(_, n)| n).max().unwrap_or(0) + 1)?;
    eprintln!(
        "resume: {} runs: {} clients ({} processes) each {} events behind on {} topics, {} live \
         subscribers at {} events/s per topic, durability {}; host: {} CPUs, {}, kernel {}",
        args.runs.repeat,
        args.clients,
        plan.len(),
        args.behind,
        args.topics,
        args.live,
        args.rate,
        args.durability().name(),
        host.cpus,
        host.cpu_model,
        host.kernel
    );
    let mut runs = Vec::with_capacity(args.runs.repeat);
    for i in 0..args.runs.repeat {
        let nonce =
            cluecast_sys::random_u64().map_err(|e| format!("getrandom: {e}"))? & 0xffff_ffff;
        let run = run_once(args, &bench, &program, &plan, nonce);
        eprintln!("[{}/{}] {}", i + 1, args.runs.repeat, summary(&run));
        runs.push(run);
    }
    report::finish(
        &args.runs,
        args.hgrm_dir.as_deref(),
        |dir| write_hgrms(args, dir, &runs),
        || markdown_report(args, &host, &runs),
        || json_report(args, &runs),
        runs.iter().any(|r| !r.measured || r.failed).then_some(
            "some runs failed: clients not caught up or not holding exactly their events, live \
             deliveries lost, a timeout, or a server that did not exit 0 (see the report)",
        ),
    )
}

/// The client processes of one run: process 0 is the live one.
struct Procs {
    group: child::Group,
    /// Lines that came while waiting for something else.
    results: Vec<Option<String>>,
    ended: Vec<bool>,
}

impl Procs {
    fn start(commands: Vec<Command>) -> Result<Procs, String> {
        let count = commands.len();
        let (group, failed) = child::Group::start(commands);
        if let Some(e) = failed.into_iter().next() {
            return Err(e);
        }
        Ok(Procs {
            group,
            results: vec![None; count],
            ended: vec![false; count],
        })
    }

    fn tell(&mut self, k: usize, word: &str) -> Result<(), String> {
        let stdin = self.group.stdin(k).ok_or("stdin already closed")?;
        writeln!(stdin, "{word}")
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("telling client process {k} `{word}`: {e}"))
    }

    /// Waits until each of `who` said a line starting with `word` (a
    /// `result` line is kept for [`Procs::results`]); calls `tick` every
    /// RSS_EVERY. Err names who did not, and why.
    fn wait(
        &mut self,
        who: &[usize],
        word: &str,
        budget: Duration,
        server: &mut Server,
        mut tick: impl FnMut(&Server),
    ) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + budget;
        let mut said: Vec<Option<String>> = vec![None; self.group.children.len()];
        while who.iter().any(|&k| said[k].is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing: Vec<String> = who
                    .iter()
                    .filter(|&&k| said[k].is_none())
                    .map(|k| k.to_string())
                    .collect();
                return Err(format!(
                    "client process(es) {} did not say `{word}` within {budget:?}",
                    missing.join(", ")
                ));
            }
            match self.group.lines.recv_timeout(left.min(RSS_EVERY)) {
                Ok((k, Some(line))) => {
                    if let Some(e) = line.strip_prefix("error ") {
                        return Err(format!("client process {k}: {e}"));
                    }
                    if line.starts_with("result ") {
                        self.results[k] = Some(line.clone());
                    }
                    if line.starts_with(word) {
                        said[k] = Some(line);
                    }
                }
                Ok((k, None)) => {
                    self.ended[k] = true;
                    if said[k].is_none() && who.contains(&k) {
                        return Err(format!("client process {k} ended before saying `{word}`"));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(how) = server.exited() {
                        return Err(format!("the server exited {how} during the run"));
                    }
                    tick(server);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("every client process ended".into())
                }
            }
        }
        Ok(who.iter().filter_map(|&k| said[k].take()).collect())
    }

    /// CPU seconds of every client process so far.
    fn cpu_secs(&self) -> f64 {
        self.group
            .children
            .iter()
            .map(|c| procfs::process_cpu_secs(c.id()).unwrap_or(f64::NAN))
            .sum()
    }

    /// Lets every process go, waits briefly for each, kills the rest.
    fn finish(mut self, problems: &mut Vec<String>) {
        self.group.release(Duration::from_secs(10), problems);
    }
}

fn client_command(
    args: &Args,
    bench: &Path,
    server: SocketAddr,
    nonce: u64,
    part: Part,
) -> Command {
    let mut cmd = Command::new(bench);
    cmd.args(["resume", "--role", "clients"])
        .args(["--part", if part == Part::Live { "live" } else { "resume" }])
        .args(["--server", &server.to_string()])
        .args(["--nonce", &nonce.to_string()])
        .args(["--topics", &args.topics.to_string()])
        .args(["--behind", &args.behind.to_string()])
        .args(["--preload", &args.preload().to_string()])
        .args(["--live", &args.live.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--baseline", &args.baseline.to_string()])
        .args(["--timeout", &args.timeout.to_string()]);
    args.common.pass_to_client(&mut cmd);
    cmd
}

/// One measurement: a fresh server and data directory, the client
/// processes, the figures.
fn run_once(args: &Args, bench: &Path, program: &Path, plan: &[(usize, usize)], nonce: u64) -> Run {
    let mut run = Run::default();
    let started = targets::start(&launch(args), program, crate::server::SERVER_START_TIMEOUT);
    let Some(mut server) = Server::for_run(started, &mut run.problems) else {
        run.failed = true;
        return run;
    };
    let hgrm_path = std::env::temp_dir().join(format!(
        "cluecast-bench-resume-{}-{}",
        std::process::id(),
        cluecast_sys::realtime_ns()
    ));
    let mut commands = vec![client_command(
        args,
        bench,
        server.addr(),
        nonce,
        Part::Live,
    )];
    commands[0].arg("--hgrm-out").arg(&hgrm_path);
    for &(first, count) in plan {
        let mut cmd = client_command(args, bench, server.addr(), nonce, Part::Resume);
        cmd.args(["--clients", &count.to_string()])
            .args(["--first", &first.to_string()]);
        commands.push(cmd);
    }
    let outcome = match Procs::start(commands) {
        Ok(mut procs) => {
            let result = storm(args, plan, &mut procs, &mut server, &mut run);
            if let Err(e) = &result {
                run.problems.push(e.clone());
                run.failed = true;
            }
            procs.finish(&mut run.problems);
            result.ok()
        }
        Err(e) => {
            run.problems.push(e);
            run.failed = true;
            None
        }
    };
    run.data_dir_bytes = server.data_dir_bytes().map_or(f64::NAN, |b| b as f64);
    let stopped = server.stop(SERVER_STOP_TIMEOUT);
    run.failed |= stopped.problem.is_some();
    run.problems.extend(stopped.problems());
    for (i, ext) in ["baseline", "storm"].iter().enumerate() {
        let p = hgrm_path.with_extension(ext);
        run.hgrm[i] = std::fs::read_to_string(&p).unwrap_or_default();
        let _ = std::fs::remove_file(&p);
    }
    if let Some((live, resumes)) = outcome {
        fill_figures(args, &mut run, &live, &resumes);
    }
    run
}

/// The run's phases, driven through the client processes' lines.
fn storm(
    args: &Args,
    plan: &[(usize, usize)],
    procs: &mut Procs,
    server: &mut Server,
    run: &mut Run,
) -> Result<(LiveOutcome, Vec<ResumeOutcome>), String> {
    let all: Vec<usize> = (0..=plan.len()).collect();
    let resumers: Vec<usize> = (1..=plan.len()).collect();
    let share_max = plan.iter().map(|&(_, n)| n).max().unwrap_or(0);
    let connect = SLACK
        + CONNECT_PER_CONN * (share_max + args.live) as u32
        + Duration::from_secs_f64(args.preload() as f64 * args.topics as f64 / 1000.0);
    procs.wait(&all, "ready", connect, server, |_| {})?;
    let cores = [
        (!args.common.no_pin).then(|| procfs::Core::new(args.common.server_cpu)),
        (!args.common.no_pin).then(|| procfs::Core::new(args.common.client_cpu)),
    ];
    let sample = |server: &Server| {
        (
            procfs::process_cpu_secs(server.pid()).unwrap_or(f64::NAN),
            Instant::now(),
            procfs::rss_bytes(server.pid()).map_or(f64::NAN, |b| b as f64),
        )
    };
    procs.tell(0, "go")?;
    let (cpu0, t0, _) = sample(server);
    let phase = WARMUP + Duration::from_secs_f64(args.baseline) + SLACK;
    procs.wait(&[0], "storm", phase, server, |_| {})?;
    // The baseline is the window up to now, less the warm-up.
    let (cpu1, t1, rss1) = sample(server);
    let core0 = cores.map(CoreUse::sample);
    let gen0 = procs.cpu_secs();
    run.server_cpu_pct[0] = 100.0 * (cpu1 - cpu0) / t1.duration_since(t0).as_secs_f64();
    run.server_rss_bytes[0] = rss1;
    for &k in &resumers {
        procs.tell(k, "resume")?;
    }
    let mut rss_max = rss1;
    let budget = Duration::from_secs_f64(args.timeout) + SLACK;
    procs.wait(&resumers, "caught-up", budget, server, |s| {
        if let Some(b) = procfs::rss_bytes(s.pid()) {
            rss_max = rss_max.max(b as f64);
        }
    })?;
    let (cpu2, t2, rss2) = sample(server);
    let core1 = cores.map(CoreUse::sample);
    let gen1 = procs.cpu_secs();
    let wall = t2.duration_since(t1).as_secs_f64();
    run.server_cpu_pct[1] = 100.0 * (cpu2 - cpu1) / wall;
    run.server_rss_bytes[1] = rss_max.max(rss2);
    run.generator_cpu_pct = 100.0 * (gen1 - gen0) / wall;
    let ours = [cpu2 - cpu1, gen1 - gen0];
    for i in 0..2 {
        if let (Some(a), Some(b)) = (core0[i], core1[i]) {
            run.foreign_pct[i] = 100.0 * b.since(a).foreign(ours[i], wall);
            run.core_busy_pct[i] = 100.0 * b.since(a).busy / wall;
        }
    }
    procs.tell(0, "stop")?;
    let drain = DRAIN_TIMEOUT + SLACK;
    procs.wait(&[0], "result ", drain, server, |_| {})?;
    let live = parse_result(procs, 0, LiveOutcome::from_result)?;
    let word = format!("final {}", live.last_seqs);
    for &k in &resumers {
        procs.tell(k, &word)?;
    }
    procs.wait(&resumers, "result ", drain, server, |_| {})?;
    let resumes = resumers
        .iter()
        .map(|&k| parse_result(procs, k, ResumeOutcome::from_result))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((live, resumes))
}

fn parse_result<T>(
    procs: &Procs,
    k: usize,
    from: fn(&ResultLine) -> Result<T, String>,
) -> Result<T, String> {
    let line = procs.results[k]
        .as_deref()
        .ok_or_else(|| format!("no result from client process {k}"))?;
    ResultLine::parse(line).and_then(|r| from(&r))
}

pub(super) fn fill_figures(
    args: &Args,
    run: &mut Run,
    live: &LiveOutcome,
    resumes: &[ResumeOutcome],
) {
    let ms = |ns: u64| ns as f64 / 1e6;
    let sum = |f: fn(&ResumeOutcome) -> u64| resumes.iter().map(f).sum::<u64>();
    run.clients = sum(|o| o.connected);
    run.resumed = sum(|o| o.resumed);
    run.caught_up = sum(|o| o.caught_up);
    run.exact = sum(|o| o.exact);
    run.gaps = sum(|o| o.gaps);
    run.duplicates = sum(|o| o.duplicates);
    run.not_recovered = sum(|o| o.not_recovered);
    run.catch_up_events = sum(|o| o.catch_up_events);
    run.connect_secs = resumes.iter().map(|o| o.connect_secs).fold(0.0, f64::max);
    let first = resumes
        .iter()
        .map(|o| o.first_resume_ns)
        .filter(|&t| t > 0)
        .min();
    let last = resumes.iter().map(|o| o.last_caught_up_ns).max();
    if let (Some(first), Some(last)) = (first, last) {
        if run.caught_up == args.clients as u64 && last > first {
            run.catch_up_secs = (last - first) as f64 / 1e9;
            run.resume_events_per_s = run.catch_up_events as f64 / run.catch_up_secs;
        }
    }
    run.base = [
        live.base_p50,
        live.base_p90,
        live.base_p99,
        live.base_p999,
        live.base_max,
    ]
    .map(ms);
    run.storm = [
        live.storm_p50,
        live.storm_p90,
        live.storm_p99,
        live.storm_p999,
        live.storm_max,
    ]
    .map(ms);
    run.srv_part = [
        live.base_srv_p50,
        live.base_srv_p99,
        live.storm_srv_p50,
        live.storm_srv_p99,
    ]
    .map(ms);
    run.live_lost = live.lost;
    run.live_seq_errors = live.seq_errors;
    run.live_published = live.published;
    run.preload_secs = live.preload_secs;
    // A storm shorter than the live schedule's step has no live latency of
    // its own (NaN), but its other figures stand.
    run.measured = run.catch_up_secs.is_finite() && live.base_count > 0;
    if live.storm_count == 0 {
        run.storm = [f64::NAN; 5];
        run.srv_part[2..].fill(f64::NAN);
    }
    for note in std::iter::once(&live.note).chain(resumes.iter().map(|o| &o.note)) {
        if !note.is_empty() {
            run.problems.push(format!("clients: {note}"));
        }
    }
    let wanted = args.clients as u64;
    let mut fail = |what: String| {
        run.problems.push(what);
        run.failed = true;
    };
    if run.caught_up < wanted {
        fail(format!(
            "{} of {wanted} clients caught up (within {} s)",
            run.caught_up, args.timeout
        ));
    }
    if run.exact < wanted {
        fail(format!(
            "{} of {wanted} clients ended holding exactly their {} events plus the live ones \
             ({} resumed Ok, {} not recovered, {} sequences skipped, {} received twice or out \
             of order)",
            run.exact, args.behind, run.resumed, run.not_recovered, run.gaps, run.duplicates
        ));
    }
    if live.lost > 0 || live.seq_errors > 0 || live.unacked > 0 || live.refused > 0 {
        fail(format!(
            "live: {} deliveries lost, {} out of order, {} publishes unanswered, {} refused",
            live.lost, live.seq_errors, live.unacked, live.refused
        ));
    }
    if live.send_lag_max > 10_000_000 {
        run.problems.push(format!(
            "the live publisher sent up to {:.1} ms late: that delay is in the latencies",
            ms(live.send_lag_max)
        ));
    }
}

fn summary(run: &Run) -> String {
    let figures = run.measured.then(|| {
        format!(
            "{} of {} caught up in {:.2} s ({} events/s to resuming clients), {} exact; live \
             p99 {:.3} ms baseline, {:.3} ms in the storm; server {:.0}% CPU in the storm, RSS up \
             to {} MiB",
            run.caught_up,
            run.clients,
            run.catch_up_secs,
            thousands(run.resume_events_per_s),
            run.exact,
            run.base[2],
            run.storm[2],
            run.server_cpu_pct[1],
            mib(run.server_rss_bytes[1], 0)
        )
    });
    report::summary(figures, &run.problems)
}
