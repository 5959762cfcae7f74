//! The fan-out scenarios' driver: how the target is started, the runs
//! (a fresh server each, the client process measuring), and each run's
//! figures.

use super::*;

/// How this run's target is started; `tls`: the appliance's certificate
/// and key files.
pub(super) fn launch(args: &Args, tls: Option<(&Path, &Path)>) -> Launch {
    Launch {
        target: args.target,
        listen: args.common.listen,
        cpu: args.common.server_pin(),
        appliance_args: server_args(args, tls),
        payload_bytes: args.payload,
        durability: args.common.durability_or(Durability::Memory),
    }
}

/// The certificate and key as the report names them (the files are
/// temporary).
pub(super) const CERT_WORDS: (&str, &str) = ("CERT.pem", "KEY.pem");

pub(super) fn server_args(args: &Args, tls: Option<(&Path, &Path)>) -> Vec<String> {
    let tls_flags = tls.map(|(cert, key)| {
        [
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ]
    });
    targets::appliance_args(
        &args.common,
        args.shards,
        args.payload,
        tls_flags.into_iter().flatten(),
    )
}

/// `args` for one side of the measurement: TLS on or off.
pub(super) fn with_tls(args: &Args, tls: bool) -> Args {
    Args {
        tls,
        vs_plain: false,
        ..args.clone()
    }
}

pub(super) fn drive(args: &Args) -> Result<(), String> {
    let host = procfs::host();
    // An attached server (--server) needs no program of ours.
    let program = match (
        args.common.server,
        targets::program(args.target, &args.common.cluecast),
    ) {
        (Some(_), _) => PathBuf::new(),
        (None, Ok(p)) => p,
        (None, Err(why)) => return skipped(args, &why),
    };
    let bench = std::env::current_exe().map_err(|e| format!("locating this binary: {e}"))?;
    let cores = args.common.cores(true);
    eprintln!(
        "fanout: {} runs of {} s (+{} s warm-up): {} subscribers, {} topics, {} publishers, \
         {} events/s per topic, {} B payloads; host: {} CPUs, {}, kernel {}",
        args.runs.repeat,
        args.duration,
        args.warmup,
        args.subscribers,
        args.topics,
        args.publishers,
        args.rate,
        args.payload,
        host.cpus,
        host.cpu_model,
        host.kernel
    );
    // One certificate for the whole invocation, removed at its end.
    let certs = match args.tls {
        true => Some(CertFiles::make()?),
        false => None,
    };
    // The sides measured, in the order each round runs them (with
    // --attack, alternating).
    let sides: Vec<Args> = match (args.vs_plain, under_attack::sides(args)) {
        (true, _) => vec![with_tls(args, false), with_tls(args, true)],
        (false, Some(sides)) => sides,
        (false, None) => vec![with_tls(args, args.tls)],
    };
    let mut runs: Vec<Vec<Run>> = vec![Vec::with_capacity(args.runs.repeat); sides.len()];
    for i in 0..args.runs.repeat {
        for k in under_attack::order(args, i, sides.len()) {
            let (side, side_runs) = (&sides[k], &mut runs[k]);
            let files = certs.as_ref().filter(|_| side.tls);
            let tag = match (args.vs_plain, side.tls) {
                (false, _) => under_attack::tag(side),
                (true, false) => " plain".into(),
                (true, true) => " TLS".into(),
            };
            let (mut run, thrown) =
                least_disturbed(args.common.retries, args.common.foreign_max, |attempt| {
                    let run = run_once(side, &bench, &program, cores, files);
                    eprintln!(
                        "[{}/{}]{tag}{} {}",
                        i + 1,
                        args.runs.repeat,
                        attempt_tag(attempt),
                        summary(side, &run)
                    );
                    let score = run.disturbance();
                    (run, score)
                });
            run.redone = thrown.len();
            for t in thrown {
                let why = redone_because(t.foreign_server_pct, t.foreign_client_pct);
                run.redone_problems.push(why.clone());
                run.redone_problems
                    .extend(t.problems.iter().map(|p| format!("{why}: {p}")));
            }
            side_runs.push(run);
        }
    }
    let failed = runs.iter().flatten().any(|r| !r.measured || r.failed);
    report::finish(
        &args.runs,
        args.hgrm_dir.as_deref(),
        |dir| {
            (sides.iter().zip(&runs))
                .try_for_each(|(side, side_runs)| write_hgrms(side, dir, side_runs))
        },
        || {
            let mut md: Vec<String> = (sides.iter().zip(&runs))
                .map(|(side, side_runs)| markdown_report(side, &host, side_runs))
                .collect();
            match &runs[..] {
                [plain, tls] if args.vs_plain => md.push(comparison_markdown(args, plain, tls)),
                _ => md.extend(under_attack::comparison_markdown(args, &runs)),
            }
            md.join("\n")
        },
        || {
            let mut lines: String = (sides.iter().zip(&runs))
                .map(|(side, side_runs)| json_report(side, side_runs))
                .collect();
            match &runs[..] {
                [plain, tls] if args.vs_plain => lines.push_str(&comparison_json(args, plain, tls)),
                _ => lines.extend(under_attack::comparison_json(args, &runs)),
            }
            lines
        },
        failed.then_some(
            "some runs failed: no figures, deliveries lost / duplicated / out of order, or a \
             server that did not exit 0 (see the report)",
        ),
    )
}

/// Writes each run's latency distribution, and the median run's again as
/// `-median` (the counted run whose p99 is the median's).
fn write_hgrms(args: &Args, dir: &Path, runs: &[Run]) -> Result<(), String> {
    let files = report::HgrmFiles::new(dir, &args.label)?;
    let mut stem = format!("{}-{}", args.shape.name(), args.target.name());
    if args.tls {
        stem.push_str("-tls");
    }
    for (i, r) in runs.iter().enumerate().filter(|(_, r)| !r.hgrm.is_empty()) {
        files.write(&stem, &(i + 1).to_string(), &r.hgrm)?;
    }
    let counted = median_pool(runs)
        .0
        .into_iter()
        .filter(|r| !r.hgrm.is_empty());
    match nearest(counted, median_run(runs).latency[2], |r| r.latency[2]) {
        Some(r) => files.write(&stem, "median", &r.hgrm),
        None => Ok(()),
    }
}

/// The report of a target that cannot be measured here; not a failure.
fn skipped(args: &Args, why: &str) -> Result<(), String> {
    eprintln!("fanout: target {} skipped: {why}", args.target.name());
    let text = if args.runs.json {
        format!("{{{},\"skipped\":{}}}\n", json_case(args), json_str(why))
    } else {
        format!(
            "# {} measurement (open loop), target `{}`\n\nSkipped: {why}.\n",
            args.shape.name(),
            args.target.name()
        )
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing the report: {e}"))
}

/// One measurement: a fresh server, a client process, the figures; `certs`
/// with `--tls`.
fn run_once(
    args: &Args,
    bench: &Path,
    program: &Path,
    cores: Cores,
    certs: Option<&CertFiles>,
) -> Run {
    let mut run = Run::default();
    if !args.common.no_pin {
        let stalls = jitter::probe(
            &[args.common.server_cpu, args.common.client_cpu],
            STALL_PROBE,
        );
        run.host_stall_ms = [0, 1].map(|i| stalls[i].map_or(f64::NAN, |s| s.max_ms));
    } else {
        run.host_stall_ms = [f64::NAN; 2];
    }
    let started = match args.common.server {
        Some(addr) => Ok(Server::attach(addr, args.common.server_pid)),
        None => targets::start(
            &launch(args, certs.map(|c| (c.cert.as_path(), c.key.as_path()))),
            program,
            crate::server::SERVER_START_TIMEOUT,
        ),
    };
    let Some(mut server) = Server::for_run(started, &mut run.problems) else {
        run.failed = true;
        return run;
    };
    let mut clients = std::process::Command::new(bench);
    clients
        .args([args.shape.name(), "--role", "clients"])
        .args(["--target", args.target.name()])
        .args(["--server", &server.addr().to_string()])
        .args(["--subscribers", &args.subscribers.to_string()])
        .args(["--topics", &args.topics.to_string()])
        .args(["--publishers", &args.publishers.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--payload", &args.payload.to_string()])
        .args(["--duration", &args.duration.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--drain-timeout", &args.drain_timeout.to_string()])
        .args(args.shape.flags());
    let hgrm_path = std::env::temp_dir().join(format!(
        "cluecast-bench-{}-{}.hgrm",
        std::process::id(),
        cluecast_sys::realtime_ns()
    ));
    clients.arg("--hgrm-out").arg(&hgrm_path);
    if let Some(c) = certs {
        clients.arg("--tls-ca").arg(&c.cert);
    }
    args.common.pass_to_client(&mut clients);
    let budget = CLIENT_SLACK
        + CONNECT_PER_SUBSCRIBER * (args.subscribers + args.publishers) as u32
        + Duration::from_secs_f64(args.schedule_secs());
    let Followed {
        result,
        window,
        problems,
    } = child::follow(clients, budget, &mut server, cores);
    run.problems.extend(problems);
    let stopped = server.stop(SERVER_STOP_TIMEOUT);
    run.failed |= stopped.problem.is_some();
    run.problems.extend(stopped.problems());
    run.hgrm = std::fs::read_to_string(&hgrm_path).unwrap_or_default();
    let _ = std::fs::remove_file(&hgrm_path);
    match (result.as_ref().map(Outcome::from_result), window) {
        (Some(Ok(o)), Some(w)) => {
            fill_figures(args, &mut run, &o, &w, &stopped);
            run.admission = under_attack::Figures::of(&o, &stopped);
            run.problems
                .extend(under_attack::problems(args, &run.admission));
        }
        (Some(Err(e)), _) => {
            run.failed = true;
            run.problems.push(e);
        }
        _ => run.failed = true,
    }
    run
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn fill_figures(args: &Args, run: &mut Run, o: &Outcome, w: &child::Window, stopped: &Stopped) {
    let secs = o.window_secs;
    let nan = f64::NAN;
    run.measured = secs > 0.0 && w.wall_secs > 0.0 && o.lat_count > 0;
    run.offered_per_s = o.window_sent as f64 / secs;
    run.deliveries_per_s = o.window_deliveries as f64 / secs;
    // Subscribers per topic, averaged over topics (i % T spreads them).
    run.ideal_deliveries_per_s =
        run.offered_per_s * args.subscribers as f64 / args.topics.max(1) as f64;
    run.latency = o.latency().map(ms);
    run.fanout = [o.fanout_p50, o.fanout_p99, o.fanout_max].map(ms);
    run.publish_leg = [o.publish_p99, o.publish_max].map(ms);
    if args.target.protocol() != Protocol::Cluecast {
        // No server timestamp in a peer's protocol: the split is unknown,
        // not 0.
        run.fanout = [nan; 3];
        run.publish_leg = [nan; 2];
    }
    run.read_delay = [o.read_delay_p50, o.read_delay_p99, o.read_delay_max].map(ms);
    run.phase = match o.phase_count {
        0 => [nan; 4],
        _ => o.phase().map(ms),
    };
    run.steady = [o.steady_p99, o.steady_p999].map(ms);
    run.storm = [o.storm_dropped, o.storm_rejoined, o.storm_gaps];
    run.storm_resume_ms = match o.storm_resume_ns {
        0 => nan,
        ns => ms(ns),
    };
    run.catch_up = o.catch_up_deliveries;
    run.positions_per_s = o.positions_sent as f64 / (args.warmup + args.duration);
    run.send_lag = [o.send_lag_p99, o.send_lag_max].map(ms);
    (run.lost, run.duplicated, run.reordered) = (o.lost, o.duplicated, o.reordered);
    (run.refused, run.unsent, run.unacked) = (o.refused, o.unsent, o.unacked);
    (run.invalid, run.seq_errors) = (o.invalid, o.seq_errors);
    let softirqd = w.server_core.map_or(0.0, |c| c.softirqd);
    run.server_cpu_pct = 100.0 * w.server_cpu_secs / w.wall_secs;
    run.server_core_pct = 100.0 * (w.server_cpu_secs + softirqd) / w.wall_secs;
    run.server_rss_bytes = w.server_rss_bytes.map_or(nan, |b| b as f64);
    run.generator_cpu_pct = 100.0 * o.generator_cpu_secs / secs;
    run.generator_bound = run.generator_cpu_pct > GENERATOR_BOUND_PCT;
    if run.generator_bound {
        run.problems.push(format!(
            "generator-bound: the generator's core was {:.0}% busy (over \
             {GENERATOR_BOUND_PCT}%), so these figures may be its limit rather than the \
             server's; not counted in the median unless every run was",
            run.generator_cpu_pct
        ));
    }
    run.foreign_server_pct = w
        .server_core
        .map_or(nan, |c| 100.0 * c.foreign(w.server_cpu_secs, w.wall_secs));
    run.foreign_client_pct = w.client_core.map_or(nan, |c| {
        100.0 * c.foreign(o.generator_cpu_secs, w.wall_secs)
    });
    run.connect_secs = o.connect_secs;
    let sends = stopped.stat("sends");
    // Whole-run counter over the publishing time: a rough rate.
    run.sends_per_s = sends.map_or(nan, |s| s as f64 / (args.warmup + args.duration));
    if !o.note.is_empty() {
        run.problems.push(format!("clients: {}", o.note));
    }
    if o.unstamped > 0 {
        run.problems.push(format!(
            "{} reads had no kernel receive timestamp: their deliveries count from the \
             time they were read",
            o.unstamped
        ));
    }
    let wrong = o.lost + o.duplicated + o.reordered + o.invalid + o.excluded_received;
    if wrong > 0 || o.seq_errors > 0 || o.subscribers_dropped > 0 || o.publishers_dropped > 0 {
        run.failed = true;
        run.problems.push(format!(
            "deliveries: {} lost, {} duplicated, {} reordered, {} invalid, {} received \
             although refused, {} sequence errors; {} subscribers and {} publishers dropped{}",
            o.lost,
            o.duplicated,
            o.reordered,
            o.invalid,
            o.excluded_received,
            o.seq_errors,
            o.subscribers_dropped,
            o.publishers_dropped,
            if o.approximate {
                " (approximate: too many gaps to track)"
            } else {
                ""
            }
        ));
    }
    if o.refused > 0 || o.unsent > 0 || o.unacked > 0 {
        run.problems.push(format!(
            "publishes: {} refused by the server, {} never sent (backlog over the limit), {} \
             never acknowledged",
            o.refused, o.unsent, o.unacked
        ));
    }
    let stat = |k: &str| stopped.stat(k).unwrap_or(0);
    let (catch_ups, goaways, overloaded, full, cq) = (
        stat("catch_ups"),
        stat("slow_consumer_goaways"),
        stat("overloaded"),
        stat("rejected_full"),
        stat("cq_overflows"),
    );
    if catch_ups + goaways + overloaded + full + cq > 0 {
        run.problems.push(format!(
            "server counters: {catch_ups} catch-ups, {goaways} slow-consumer GOAWAYs, \
             {overloaded} publishes refused Overloaded, {full} connections refused \
             (full), {cq} completion-queue overflows"
        ));
    }
    if args.tls && stat("tls_failures") > 0 {
        run.problems.push(format!(
            "server counters: {} connections cut off for breaking TLS (tls_failures)",
            stat("tls_failures")
        ));
    }
    // The peers have no such counters.
    if stopped.stats.is_empty() && args.target.has_shard_stats() && args.common.server.is_none() {
        run.problems
            .push("the server printed no ShardStats on exit".into());
    }
    // A generator that fell behind its own schedule inflates latencies
    // with its own delay.
    if run.send_lag[1] > 1.0 {
        // Without pinning there is no probe, so no stall figure to give.
        let stalls = if run.host_stall_ms[1].is_nan() {
            String::new()
        } else {
            format!(
                "; host stalls on its CPU reached {:.1} ms before the run",
                run.host_stall_ms[1]
            )
        };
        run.problems.push(format!(
            "the generator sent up to {:.1} ms late (p99 {:.3} ms{stalls}): that delay is in \
             the latencies",
            run.send_lag[1], run.send_lag[0]
        ));
    }
}

fn summary(args: &Args, run: &Run) -> String {
    let figures = run.measured.then(|| {
        format!(
            "{:.0} offered/s, {:.0} deliveries/s, latency p50 {:.3} p99 {:.3} p99.9 {:.3} max \
             {:.3} ms, lost {} dup {} reordered {}, server {:.0}% CPU {:.0} MiB, generator \
             {:.0}%{}",
            run.offered_per_s,
            run.deliveries_per_s,
            run.latency[0],
            run.latency[2],
            run.latency[3],
            run.latency[5],
            run.lost,
            run.duplicated,
            run.reordered,
            run.server_cpu_pct,
            run.server_rss_bytes / f64::from(1 << 20),
            run.generator_cpu_pct,
            under_attack::summary(args, run)
        )
    });
    report::summary(figures, &run.problems)
}
