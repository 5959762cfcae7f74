//! The fan-out scenarios' reports: medians, the markdown and the JSON lines.

use super::*;
use crate::stats::median_by;

/// The runs a median is of: the counted ones; when every measured run was
/// generator-bound, those (and true: the median is generator-bound too).
pub(super) fn median_pool(all: &[Run]) -> (Vec<&Run>, bool) {
    let counted: Vec<&Run> = all.iter().filter(|r| r.counted()).collect();
    if counted.is_empty() && all.iter().any(|r| r.measured) {
        (all.iter().filter(|r| r.measured).collect(), true)
    } else {
        (counted, false)
    }
}

/// The median run: every column the median of that column (so the row as
/// a whole need not be any one run).
///
/// Of the counted runs; when every measured run was generator-bound, of
/// those, and the median says it is generator-bound too.
pub(super) fn median_run(all: &[Run]) -> Run {
    let (runs, generator_bound) = median_pool(all);
    let runs: &[&Run] = &runs;
    let c = |f: fn(&Run) -> u64| median_by(runs, |r| f(r) as f64).round() as u64;
    let c_at = |i: usize| median_by(runs, |r| r.storm[i] as f64).round() as u64;
    Run {
        measured: !runs.is_empty(),
        offered_per_s: median_by(runs, |r| r.offered_per_s),
        deliveries_per_s: median_by(runs, |r| r.deliveries_per_s),
        ideal_deliveries_per_s: median_by(runs, |r| r.ideal_deliveries_per_s),
        latency: std::array::from_fn(|i| median_by(runs, |r| r.latency[i])),
        fanout: std::array::from_fn(|i| median_by(runs, |r| r.fanout[i])),
        publish_leg: std::array::from_fn(|i| median_by(runs, |r| r.publish_leg[i])),
        read_delay: std::array::from_fn(|i| median_by(runs, |r| r.read_delay[i])),
        phase: std::array::from_fn(|i| median_by(runs, |r| r.phase[i])),
        steady: std::array::from_fn(|i| median_by(runs, |r| r.steady[i])),
        storm: std::array::from_fn(c_at),
        storm_resume_ms: median_by(runs, |r| r.storm_resume_ms),
        catch_up: c(|r| r.catch_up),
        positions_per_s: median_by(runs, |r| r.positions_per_s),
        generator_bound,
        send_lag: std::array::from_fn(|i| median_by(runs, |r| r.send_lag[i])),
        lost: c(|r| r.lost),
        duplicated: c(|r| r.duplicated),
        reordered: c(|r| r.reordered),
        refused: c(|r| r.refused),
        unsent: c(|r| r.unsent),
        unacked: c(|r| r.unacked),
        invalid: c(|r| r.invalid),
        seq_errors: c(|r| r.seq_errors),
        server_cpu_pct: median_by(runs, |r| r.server_cpu_pct),
        server_core_pct: median_by(runs, |r| r.server_core_pct),
        server_rss_bytes: median_by(runs, |r| r.server_rss_bytes),
        generator_cpu_pct: median_by(runs, |r| r.generator_cpu_pct),
        foreign_server_pct: median_by(runs, |r| r.foreign_server_pct),
        foreign_client_pct: median_by(runs, |r| r.foreign_client_pct),
        sends_per_s: median_by(runs, |r| r.sends_per_s),
        connect_secs: median_by(runs, |r| r.connect_secs),
        host_stall_ms: std::array::from_fn(|i| median_by(runs, |r| r.host_stall_ms[i])),
        admission: under_attack::Figures::median(runs),
        failed: all.iter().any(|r| r.failed),
        problems: Vec::new(),
        redone: all.iter().map(|r| r.redone).sum(),
        redone_problems: Vec::new(),
        hgrm: String::new(),
    }
}

pub(super) fn pct_of_core(x: f64) -> String {
    pct(x / 100.0)
}

pub(super) fn markdown_report(args: &Args, host: &procfs::Host, runs: &[Run]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# {} measurement (open loop), target `{}`{}{}{}\n",
        args.shape.name(),
        args.target.name(),
        if args.tls { " over TLS 1.3" } else { "" },
        under_attack::title(args),
        report::label_words(&args.label)
    );
    report::header_lines(&mut s, host, "");
    let pin = |cpu: usize| args.common.pinned(", ", cpu);
    let shown = match args.common.server {
        Some(addr) => format!(
            "already running at {addr}{}, not started or stopped by this tool",
            args.common.server_pid.map_or(
                " (no --server-pid: no CPU or memory figures)".into(),
                |p| format!(", process {p}")
            )
        ),
        None => {
            let words = (Path::new(CERT_WORDS.0), Path::new(CERT_WORDS.1));
            targets::shown(
                &launch(args, args.tls.then_some(words)),
                &args.common.cluecast,
            )
        }
    };
    let how = match args.common.server {
        Some(_) => String::new(),
        None => format!(
            "{}; a fresh one per run, stopped with SIGTERM (nats-server: SIGINT, on which it \
             exits 0)",
            pin(args.common.server_cpu)
        ),
    };
    let _ = writeln!(s, "- target `{}`: `{shown}`{how}", args.target.name());
    let _ = writeln!(
        s,
        "- load: {} publisher(s) publishing {} events/s per topic over {} topics \
         ({} events/s in all, round-robin, on a fixed schedule) with {} B payloads; {} \
         subscribers, subscriber i on topic i % {} (≈ {:.0} per topic, so ≈ {} deliveries/s \
         expected); all in one client process, one thread with epoll{}",
        args.publishers,
        args.rate,
        args.topics,
        thousands(args.rate * args.topics as f64),
        args.payload,
        args.subscribers,
        args.topics,
        args.subscribers as f64 / args.topics as f64,
        thousands(args.rate * args.subscribers as f64),
        pin(args.common.client_cpu)
    );
    if args.tls {
        let _ = writeln!(
            s,
            "- TLS 1.3 on every connection, rustls 0.23 (ring) on both sides: `{}` / `{}` are a \
             self-signed ECDSA P-256 certificate for `{}` the driver made for this invocation \
             (rcgen), which the clients alone trust, checking the name; each connection's \
             handshake is made while the clients connect, before the warm-up. The clients \
             decrypt after the kernel's receive timestamp: their decryption is in the *read \
             delay*, not in the latency",
            CERT_WORDS.0,
            CERT_WORDS.1,
            tls::SERVER_NAME
        );
    }
    let _ = writeln!(
        s,
        "- each run: {} s warm-up, {} s measured, then publishing stops and the clients wait \
         up to {} s for everything due; {} runs, the last row is the median of each column; a \
         run with more than {:.0}% of a measured core going elsewhere is measured again (up \
         to {} more times; {} redone here)\n",
        args.warmup,
        args.duration,
        args.drain_timeout,
        args.runs.repeat,
        args.common.foreign_max * 100.0,
        args.common.retries,
        runs.iter().map(|r| r.redone).sum::<usize>()
    );
    let _ = writeln!(
        s,
        "Latency = receive time − the time the event was due (CLOCK_REALTIME, same host), \
         for every delivery of every event due inside the measured window, wherever it \
         arrived; the receive time is the kernel's timestamp of the data reaching the \
         subscriber's socket, so the generator's own delay in reading thousands of sockets \
         is not counted (it is shown apart below). *lost*: published (acknowledged, or sent and never answered) and never \
         received by a subscriber of its topic; *dup*: received again; *reord*: received \
         after a later event of the same publisher. *server CPU*: user+sys of the server \
         process over the window, % of one core; *RSS*: its resident memory at the end of \
         the window; *generator*: the client process's CPU, % of its core.\n"
    );
    let _ = writeln!(
        s,
        "| run | target | offered/s | deliveries/s | p50 ms | p90 ms | p99 ms | p99.9 ms | \
         p99.99 ms | max ms | lost | dup | reord | server CPU | server RSS MiB | generator CPU |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let target = args.target.name();
    let med_run = median_run(runs);
    let named: Vec<(String, &Run)> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| ((i + 1).to_string(), r))
        .chain(std::iter::once((
            match med_run.generator_bound {
                true => "**median** (generator-bound)".to_string(),
                false => "**median**".to_string(),
            },
            &med_run,
        )))
        .collect();
    for (name, r) in &named {
        if !r.measured {
            let _ = writeln!(s, "| {name} | {target} | no figures |||||||||||||");
            continue;
        }
        let _ = writeln!(
            s,
            "| {name} | {target} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} \
             | {} |",
            thousands(r.offered_per_s),
            thousands(r.deliveries_per_s),
            num(r.latency[0], 3),
            num(r.latency[1], 3),
            num(r.latency[2], 3),
            num(r.latency[3], 3),
            num(r.latency[4], 3),
            num(r.latency[5], 3),
            r.lost,
            r.duplicated,
            r.reordered,
            pct_of_core(r.server_cpu_pct),
            mib(r.server_rss_bytes, 0),
            pct_of_core(r.generator_cpu_pct),
        );
    }
    scenario_section(&mut s, args, &named);
    let _ = writeln!(
        s,
        "\nDiagnostics (ms). *server part*: receive − the EVENT's `publish_ts_ns` (the \
         server's clock when it sequenced the event); *publish leg*: `publish_ts_ns` − due \
         (the generator's send, loopback, the server's receive and sequencing); the two add \
         up to the latency. *send lag*: how late the generator wrote PUBLISHes. *read \
         delay*: how long deliveries sat in their socket before the generator's one thread \
         got to them — not part of the latency, which counts to the kernel's receive \
         timestamp. *server core*: the server plus its core's ksoftirqd (loopback TCP work \
         the server's own context did not finish); *foreign*: share of the server's / \
         generator's core taken by anything else (other processes, hypervisor steal): \
         noise; *host stall*: the longest gap a busy loop pinned to the server's / the \
         generator's CPU saw in the {} s just before the run, with nothing else of ours \
         running — the host's own jitter, a floor under any tail latency; *sends/s*: the \
         server's send counter (deliveries and acks) over the publishing time; *ideal*: \
         offered × subscribers per topic.\n",
        STALL_PROBE.as_secs()
    );
    let _ = writeln!(
        s,
        "| run | ideal deliveries/s | server part p50 / p99 / max | publish leg p99 / max | \
         send lag p99 / max | read delay p50 / p99 / max | server core | foreign srv / gen | \
         host stall srv / gen | sends/s | connect s |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, r) in &named {
        if !r.measured {
            continue;
        }
        let _ = writeln!(
            s,
            "| {name} | {} | {} / {} / {} | {} / {} | {} / {} | {} / {} / {} | {} | {} / {} | \
             {} / {} | {} | {} |",
            thousands(r.ideal_deliveries_per_s),
            num(r.fanout[0], 3),
            num(r.fanout[1], 3),
            num(r.fanout[2], 3),
            num(r.publish_leg[0], 3),
            num(r.publish_leg[1], 3),
            num(r.send_lag[0], 3),
            num(r.send_lag[1], 3),
            num(r.read_delay[0], 3),
            num(r.read_delay[1], 3),
            num(r.read_delay[2], 3),
            pct_of_core(r.server_core_pct),
            pct_of_core(r.foreign_server_pct),
            pct_of_core(r.foreign_client_pct),
            num(r.host_stall_ms[0], 1),
            num(r.host_stall_ms[1], 1),
            thousands(r.sends_per_s),
            num(r.connect_secs, 1),
        );
    }
    let problems = report::run_problems(
        runs.iter()
            .map(|r| r.problems.iter().chain(&r.redone_problems)),
    );
    s.push('\n');
    report::problems_section(
        &mut s,
        problems,
        "every subscriber received every published event of its topic \
         exactly once and in order, no publish was refused, the generator kept its \
         schedule, and every server exited 0 when stopped.",
    );
    s
}

/// The figures of the scenario's own question, a table after the main one.
fn scenario_section(s: &mut String, args: &Args, named: &[(String, &Run)]) {
    use std::fmt::Write as _;
    let measured = || named.iter().filter(|(_, r)| r.measured);
    match args.shape {
        Shape::Fanout => {}
        Shape::Spike(f) => {
            let _ = writeln!(
                s,
                "\nThe spike: {} s into the window the rate rose to {}x within {} ms and held \
                 {} s. *spike*: deliveries of events due from its start to its end; *steady*: \
                 of events due in the window before it (ms).\n",
                f.spike_at, f.spike_factor, f.spike_ramp_ms, f.spike_hold
            );
            let _ = writeln!(
                s,
                "| run | steady p99 | steady p99.9 | spike p50 | spike p99 | spike p99.9 | \
                 spike max | spike p99 / steady p99 |\n|---|---:|---:|---:|---:|---:|---:|---:|"
            );
            for (name, r) in measured() {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                    num(r.steady[0], 3),
                    num(r.steady[1], 3),
                    num(r.phase[0], 3),
                    num(r.phase[1], 3),
                    num(r.phase[2], 3),
                    num(r.phase[3], 3),
                    num(r.phase[1] / r.steady[0], 2),
                );
            }
        }
        Shape::Storm(f) => {
            let _ = writeln!(
                s,
                "\nThe storm: {} s into the window the first {} subscribers closed their \
                 connections at once and came back spread over {} ms, each resuming after the \
                 last sequence it had (peers without resume subscribe again: what was published \
                 meanwhile is lost to them). *caught up*: from the drop until the last one back \
                 had received an event due after its return; *gaps*: resumes the server could \
                 not make whole; *catch-up*: deliveries of events due while away (not in the \
                 latencies); *live*: latency of deliveries due while they came back, to the \
                 subscribers connected (ms).\n",
                f.storm_at, f.storm_subscribers, f.storm_spread_ms
            );
            let _ = writeln!(
                s,
                "| run | dropped | back | gaps | caught up ms | catch-up | live p50 | live p99 | \
                 live max |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for (name, r) in measured() {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.storm[0],
                    r.storm[1],
                    r.storm[2],
                    num(r.storm_resume_ms, 1),
                    r.catch_up,
                    num(r.phase[0], 3),
                    num(r.phase[1], 3),
                    num(r.phase[3], 3),
                );
            }
            under_attack::table(s, args, named);
        }
        Shape::Hunt(f) => {
            let _ = writeln!(
                s,
                "\nThe hunt: {} players in {} hunts, each player sending its position {} times \
                 a second upstream on its connection (Redis: a second connection, since a \
                 subscribed one cannot publish); clue drops and leaderboard updates at {} per \
                 second into each hunt. The original system's budget: p99 < 200 ms (it \
                 measured p99 168 ms, p99.9 234 ms on 8 cores).\n",
                args.subscribers, args.topics, f.position_hz, args.rate
            );
            let _ = writeln!(
                s,
                "| run | positions/s | p99 ms | p99.9 ms |\n|---|---:|---:|---:|"
            );
            for (name, r) in measured() {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} |",
                    thousands(r.positions_per_s),
                    num(r.latency[2], 3),
                    num(r.latency[3], 3),
                );
            }
        }
    }
}

/// The scenario's own figures as a JSON member (with its leading comma),
/// empty for plain fan-out.
fn json_scenario(args: &Args, r: &Run) -> String {
    match args.shape {
        Shape::Fanout => String::new(),
        Shape::Spike(f) => format!(
            ",\"spike\":{{\"at_s\":{},\"factor\":{},\"ramp_ms\":{},\"hold_s\":{},\
             \"steady_ms\":{{\"p99\":{},\"p999\":{}}},\
             \"spike_ms\":{{\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}}}}",
            json_num(f.spike_at),
            json_num(f.spike_factor),
            f.spike_ramp_ms,
            json_num(f.spike_hold),
            json_num(r.steady[0]),
            json_num(r.steady[1]),
            json_num(r.phase[0]),
            json_num(r.phase[1]),
            json_num(r.phase[2]),
            json_num(r.phase[3]),
        ),
        Shape::Storm(f) => format!(
            ",\"storm\":{{\"at_s\":{},\"spread_ms\":{},\"dropped\":{},\"back\":{},\
             \"gaps\":{},\"caught_up_ms\":{},\"catch_up_deliveries\":{},\
             \"live_ms\":{{\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}}}}{}",
            json_num(f.storm_at),
            f.storm_spread_ms,
            r.storm[0],
            r.storm[1],
            r.storm[2],
            json_num(r.storm_resume_ms),
            r.catch_up,
            json_num(r.phase[0]),
            json_num(r.phase[1]),
            json_num(r.phase[2]),
            json_num(r.phase[3]),
            under_attack::json(args, r),
        ),
        Shape::Hunt(f) => format!(
            ",\"hunt\":{{\"position_hz\":{},\"positions_per_s\":{}}}",
            json_num(f.position_hz),
            json_num(r.positions_per_s)
        ),
    }
}

/// The members naming what was measured: scenario, target, label, load
/// (and `"tls":true` with --tls).
pub(super) fn json_case(args: &Args) -> String {
    format!(
        "\"scenario\":\"{}\",\"target\":\"{}\",\"label\":{},\"subscribers\":{},\
         \"topics\":{},\"publishers\":{},\"rate_per_topic\":{},\"payload_bytes\":{}{}",
        args.shape.name(),
        args.target.name(),
        json_str(&args.label),
        args.subscribers,
        args.topics,
        args.publishers,
        json_num(args.rate),
        args.payload,
        if args.tls { ",\"tls\":true" } else { "" },
    )
}

pub(super) fn json_run(args: &Args, label: &str, r: &Run, problems: &[String]) -> String {
    let lat: Vec<String> = LATENCY_KEYS
        .iter()
        .zip(r.latency)
        .map(|(k, v)| format!("\"{k}\":{}", json_num(v)))
        .collect();
    let problems: Vec<String> = problems.iter().map(|p| json_str(p)).collect();
    format!(
        "{{{},\"run\":{label},\"duration_s\":{},\"shards\":{},\
         \"offered_per_s\":{},\"deliveries_per_s\":{},\"ideal_deliveries_per_s\":{},\
         \"latency_ms\":{{{}}},\"server_part_ms\":{{\"p50\":{},\"p99\":{},\"max\":{}}},\
         \"publish_leg_ms\":{{\"p99\":{},\"max\":{}}},\
         \"read_delay_ms\":{{\"p50\":{},\"p99\":{},\"max\":{}}},\
         \"send_lag_ms\":{{\"p99\":{},\"max\":{}}},\
         \"lost\":{},\"duplicated\":{},\"reordered\":{},\"refused\":{},\"unsent\":{},\
         \"unacked\":{},\"invalid\":{},\"seq_errors\":{},\
         \"server_rss_bytes\":{},\"server_cpu_pct\":{},\"server_core_pct\":{},\
         \"generator_cpu_pct\":{},\"foreign_server_pct\":{},\"foreign_generator_pct\":{},\
         \"host_stall_ms\":{{\"server_cpu\":{},\"generator_cpu\":{}}},\
         \"measured\":{},\"generator_bound\":{},\"failed\":{},\"redone\":{}{},\
         \"problems\":[{}]}}\n",
        json_case(args),
        json_num(args.duration),
        args.shards,
        json_num(r.offered_per_s),
        json_num(r.deliveries_per_s),
        json_num(r.ideal_deliveries_per_s),
        lat.join(","),
        json_num(r.fanout[0]),
        json_num(r.fanout[1]),
        json_num(r.fanout[2]),
        json_num(r.publish_leg[0]),
        json_num(r.publish_leg[1]),
        json_num(r.read_delay[0]),
        json_num(r.read_delay[1]),
        json_num(r.read_delay[2]),
        json_num(r.send_lag[0]),
        json_num(r.send_lag[1]),
        r.lost,
        r.duplicated,
        r.reordered,
        r.refused,
        r.unsent,
        r.unacked,
        r.invalid,
        r.seq_errors,
        json_num(r.server_rss_bytes.round()),
        json_num(r.server_cpu_pct),
        json_num(r.server_core_pct),
        json_num(r.generator_cpu_pct),
        json_num(r.foreign_server_pct),
        json_num(r.foreign_client_pct),
        json_num(r.host_stall_ms[0]),
        json_num(r.host_stall_ms[1]),
        r.measured,
        r.generator_bound,
        r.failed,
        r.redone,
        json_scenario(args, r),
        problems.join(",")
    )
}

/// One object per run (`"run": 1, 2, ...`), then one for the median
/// (`"run": "median"`).
pub(super) fn json_report(args: &Args, runs: &[Run]) -> String {
    let median = median_run(runs);
    crate::report::json_runs(runs, &median, |r, run| {
        if run == "\"median\"" {
            return json_run(args, run, r, &[]);
        }
        let problems: Vec<String> = r
            .problems
            .iter()
            .chain(&r.redone_problems)
            .cloned()
            .collect();
        json_run(args, run, r, &problems)
    })
}
