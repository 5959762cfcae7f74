//! The conns scenario's reports: the median run, the markdown and the JSON lines.

use super::*;

/// The median run: every column the median of that column over the runs
/// that held any connection.
pub(super) fn median_run(runs: &[Run]) -> Run {
    let held: Vec<&Run> = runs.iter().filter(|r| r.connections > 0).collect();
    let med = |f: &dyn Fn(&Run) -> f64| median_by(&held, f);
    // No runs held anything: NaN, which rounds to 0.
    let whole = |f: fn(&Run) -> u64| med(&|r| f(r) as f64).round() as u64;
    let footprint = |at: fn(&Run) -> Footprint| Footprint {
        rss_bytes: med(&|r| at(r).rss_bytes),
        anon_bytes: med(&|r| at(r).anon_bytes),
        fds: med(&|r| at(r).fds),
    };
    Run {
        connections: whole(|r| r.connections),
        failures: whole(|r| r.failures),
        connect_per_s: med(&|r| r.connect_per_s),
        baseline: footprint(|r| r.baseline),
        loaded: footprint(|r| r.loaded),
        rss_per_conn: med(&|r| r.rss_per_conn),
        loaded_per_conn: med(&|r| r.loaded_per_conn),
        anon_per_conn: med(&|r| r.anon_per_conn),
        failed: runs.iter().any(|r| r.failed),
        problems: Vec::new(),
    }
}

pub(super) fn markdown_report(
    args: &Args,
    host: &procfs::Host,
    nofile: u64,
    runs: &[Run],
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let target = args.target.name();
    let _ = writeln!(s, "# idle connections, target `{target}`\n");
    let more = format!("; open-file limit {nofile} per process");
    report::header_lines(&mut s, host, &more);
    let shown = targets::shown(&launch(args), &args.common.cluecast);
    let _ = writeln!(
        s,
        "- target `{target}`: `{shown}`{}; a fresh one per run, stopped with SIGTERM",
        args.common.pinned(", ", args.common.server_cpu)
    );
    let _ = writeln!(
        s,
        "- load: {} connections, connection j subscribed to topic j % {}, spread over {} \
         client processes{}; each opens its share one connection after another (connect, \
         handshake, subscribe answered), then holds it idle",
        args.connections,
        args.topics,
        args.processes,
        args.common.pinned(" all ", args.common.client_cpu)
    );
    let _ = writeln!(
        s,
        "- each run: the server's memory is read {} s after it starts (baseline) and {} s \
         after the last connection is up (loaded); {} runs, the last row is the median of \
         each column\n",
        SERVER_SETTLE.as_secs(),
        args.hold_secs,
        args.runs.repeat
    );
    let _ = writeln!(
        s,
        "*connect/s*: connections held / time from the first process starting to connect \
         to the last one done. *RSS/conn*: (loaded − baseline) VmRSS / connections held; \
         *loaded/conn*: loaded VmRSS / connections held (the server's fixed memory \
         included); *anon/conn*: (loaded − baseline) RssAnon / connections held (anonymous \
         memory only, no file pages). The kernel's socket memory is in none of them.\n"
    );
    let _ = writeln!(
        s,
        "| run | target | held | not held | connect/s | RSS baseline MiB | RSS loaded MiB | \
         RSS/conn B | loaded/conn B | anon/conn B |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let med_run = median_run(runs);
    let rows = runs
        .iter()
        .enumerate()
        .map(|(i, r)| ((i + 1).to_string(), r))
        .chain(std::iter::once(("**median**".to_string(), &med_run)));
    for (name, r) in rows {
        let _ = writeln!(
            s,
            "| {name} | {target} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.connections,
            r.failures,
            thousands(r.connect_per_s),
            mib(r.baseline.rss_bytes, 1),
            mib(r.loaded.rss_bytes, 1),
            thousands(r.rss_per_conn),
            thousands(r.loaded_per_conn),
            thousands(r.anon_per_conn),
        );
    }
    let problems = report::run_problems(runs.iter().map(|r| &r.problems));
    s.push('\n');
    report::problems_section(
        &mut s,
        problems,
        "every connection was held, and every server exited 0 on SIGTERM.",
    );
    s
}

pub(super) fn json_run(args: &Args, label: &str, r: &Run) -> String {
    let problems: Vec<String> = r.problems.iter().map(|p| json_str(p)).collect();
    format!(
        "{{\"scenario\":\"conns\",\"target\":\"{}\",\"run\":{label},\
         \"connections_wanted\":{},\"processes\":{},\"topics\":{},\"hold_s\":{},\
         \"connections\":{},\"failures\":{},\"connect_per_s\":{},\
         \"server_rss_baseline_bytes\":{},\"server_rss_bytes\":{},\
         \"rss_per_conn_bytes\":{},\"rss_loaded_per_conn_bytes\":{},\
         \"server_rss_anon_baseline_bytes\":{},\"server_rss_anon_bytes\":{},\
         \"rss_anon_per_conn_bytes\":{},\"server_fds_baseline\":{},\"server_fds\":{},\
         \"failed\":{},\"problems\":[{}]}}\n",
        args.target.name(),
        args.connections,
        args.processes,
        args.topics,
        json_num(args.hold_secs),
        r.connections,
        r.failures,
        json_num(r.connect_per_s),
        json_num(r.baseline.rss_bytes),
        json_num(r.loaded.rss_bytes),
        json_num(r.rss_per_conn),
        json_num(r.loaded_per_conn),
        json_num(r.baseline.anon_bytes),
        json_num(r.loaded.anon_bytes),
        json_num(r.anon_per_conn),
        json_num(r.baseline.fds),
        json_num(r.loaded.fds),
        r.failed,
        problems.join(",")
    )
}

/// One object per run (`"run": 1, 2, ...`), then one for the median
/// (`"run": "median"`).
pub(super) fn json_report(args: &Args, runs: &[Run]) -> String {
    crate::report::json_runs(runs, &median_run(runs), |r, run| json_run(args, run, r))
}
