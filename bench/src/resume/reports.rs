//! The resume scenario's reports: the median run, the markdown and the JSON lines.

use super::*;
use crate::stats::{median_by, nearest};

fn median_run(runs: &[Run]) -> Run {
    let m: Vec<&Run> = runs.iter().filter(|r| r.measured).collect();
    let med = |f: &dyn Fn(&Run) -> f64| median_by(&m, f);
    let c = |f: fn(&Run) -> u64| med(&|r| f(r) as f64).round() as u64;
    Run {
        measured: !m.is_empty(),
        clients: c(|r| r.clients),
        resumed: c(|r| r.resumed),
        caught_up: c(|r| r.caught_up),
        exact: c(|r| r.exact),
        gaps: c(|r| r.gaps),
        duplicates: c(|r| r.duplicates),
        not_recovered: c(|r| r.not_recovered),
        catch_up_secs: med(&|r| r.catch_up_secs),
        resume_events_per_s: med(&|r| r.resume_events_per_s),
        catch_up_events: c(|r| r.catch_up_events),
        base: std::array::from_fn(|i| med(&|r| r.base[i])),
        storm: std::array::from_fn(|i| med(&|r| r.storm[i])),
        srv_part: std::array::from_fn(|i| med(&|r| r.srv_part[i])),
        core_busy_pct: std::array::from_fn(|i| med(&|r| r.core_busy_pct[i])),
        live_lost: c(|r| r.live_lost),
        live_seq_errors: c(|r| r.live_seq_errors),
        live_published: c(|r| r.live_published),
        preload_secs: med(&|r| r.preload_secs),
        connect_secs: med(&|r| r.connect_secs),
        server_cpu_pct: std::array::from_fn(|i| med(&|r| r.server_cpu_pct[i])),
        server_rss_bytes: std::array::from_fn(|i| med(&|r| r.server_rss_bytes[i])),
        generator_cpu_pct: med(&|r| r.generator_cpu_pct),
        foreign_pct: std::array::from_fn(|i| med(&|r| r.foreign_pct[i])),
        data_dir_bytes: med(&|r| r.data_dir_bytes),
        hgrm: [String::new(), String::new()],
        failed: runs.iter().any(|r| r.failed),
        problems: Vec::new(),
    }
}

pub(super) fn write_hgrms(args: &Args, dir: &Path, runs: &[Run]) -> Result<(), String> {
    let files = report::HgrmFiles::new(dir, &args.label)?;
    for (i, r) in runs.iter().enumerate() {
        for (k, phase) in ["baseline", "storm"].iter().enumerate() {
            if !r.hgrm[k].is_empty() {
                files.write("resume", &format!("{phase}-{}", i + 1), &r.hgrm[k])?;
            }
        }
    }
    let counted = runs.iter().filter(|r| r.measured && !r.hgrm[1].is_empty());
    if let Some(r) = nearest(counted, median_run(runs).storm[2], |r| r.storm[2]) {
        files.write("resume", "baseline-median", &r.hgrm[0])?;
        files.write("resume", "storm-median", &r.hgrm[1])?;
    }
    Ok(())
}

pub(super) fn markdown_report(args: &Args, host: &procfs::Host, runs: &[Run]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let label = report::label_words(&args.label);
    let _ = writeln!(
        s,
        "# resume: a storm of clients resuming from disk{label}\n"
    );
    let scratch = std::env::temp_dir();
    let more = format!("; data directories under `{}`", scratch.display());
    report::header_lines(&mut s, host, &more);
    let shown = targets::shown(&launch(args), &args.common.cluecast);
    let _ = writeln!(
        s,
        "- target: `{shown}`{}; a fresh server and data directory per run, stopped with SIGTERM",
        args.common.pinned(", ", args.common.server_cpu)
    );
    let _ = writeln!(
        s,
        "- load: {} topics preloaded with {} events each ({} B payloads); {} live subscribers \
         (i on topic i % {}) of {} events/s per topic on a fixed schedule; {} resuming clients \
         (j on topic j % {}) in {} processes, all connected before the live load starts; all \
         client processes{}",
        args.topics,
        args.preload(),
        PAYLOAD_BYTES,
        args.live,
        args.topics,
        args.rate,
        args.clients,
        args.topics,
        args.process_count(),
        args.common.pinned(" ", args.common.client_cpu)
    );
    let _ = writeln!(
        s,
        "- each run: {} s of live load, then {} s measured (*baseline*); then every client \
         sends SUBSCRIBE Resume at once, epoch from a live SUBSCRIBED of its process's probe, \
         last_seq = newest − {}; the live load goes on until every client is caught up (the \
         *storm*; at most {} s); then publishing stops and every client must hold exactly its \
         {} events plus every live one after them, once each and in order; {} runs, the last \
         row is the median of each column\n",
        WARMUP.as_secs(),
        args.baseline,
        args.behind,
        args.timeout,
        args.behind,
        args.runs.repeat
    );
    let _ = writeln!(
        s,
        "*caught up*: from the first SUBSCRIBE Resume until the last client held everything its \
         process's probe (a live subscriber of every topic) had received; *events/s*: events \
         the resuming clients received up to their catch-up, over that time; *exact*: clients \
         holding exactly their events, no gap, no duplicate; live latency: the kernel's receive \
         timestamp − the time the event was due, ms, of the live subscribers, for events due in \
         the baseline / in the storm; *server CPU*: the appliance process (shard, storage \
         writer and reader), % of one core; *RSS*: at the end of the baseline / the most seen in \
         the storm; *generator*: all client processes in the storm, % of one core.\n"
    );
    let _ = writeln!(
        s,
        "| run | caught up | exact | caught up s | events/s | live p50 base / storm | live p99 \
         base / storm | live p99.9 base / storm | live max base / storm | storm p99 / base | \
         server CPU base / storm | RSS MiB base / storm | generator CPU |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let med = median_run(runs);
    let rows = runs
        .iter()
        .enumerate()
        .map(|(i, r)| ((i + 1).to_string(), r))
        .chain(std::iter::once(("**median**".to_string(), &med)));
    for (name, r) in rows {
        if !r.measured {
            let _ = writeln!(s, "| {name} | no figures ||||||||||||");
            continue;
        }
        let _ = writeln!(
            s,
            "| {name} | {} / {} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {} / {} | {}× | \
             {} / {} | {} / {} | {} |",
            r.caught_up,
            r.clients,
            r.exact,
            num(r.catch_up_secs, 2),
            thousands(r.resume_events_per_s),
            num(r.base[0], 3),
            num(r.storm[0], 3),
            num(r.base[2], 3),
            num(r.storm[2], 3),
            num(r.base[3], 3),
            num(r.storm[3], 3),
            num(r.base[4], 3),
            num(r.storm[4], 3),
            num(r.storm[2] / r.base[2], 2),
            report::pct(r.server_cpu_pct[0] / 100.0),
            report::pct(r.server_cpu_pct[1] / 100.0),
            mib(r.server_rss_bytes[0], 0),
            mib(r.server_rss_bytes[1], 0),
            report::pct(r.generator_cpu_pct / 100.0),
        );
    }
    let _ = writeln!(
        s,
        "\nDiagnostics: *preload*: seconds to publish the preload; *connect*: seconds the \
         slowest resume process took to connect its share; *server part*: of the live \
         latency, receive − the EVENT's publish_ts_ns (the server's clock when it sequenced \
         the event; the rest is the publish's way in), p50 / p99, baseline → storm, ms; *core \
         busy*: the server's / the generator's CPU busy with anything in the storm; *foreign*: \
         share of it taken by anything but the appliance / the client processes; *data*: the \
         data directory at the end.\n"
    );
    let _ = writeln!(
        s,
        "| run | catch-up events | live published | preload s | connect s | server part base | \
         server part storm | core busy srv / gen | foreign srv / gen | data MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, r) in runs.iter().enumerate().filter(|(_, r)| r.measured) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {} / {} | {} |",
            i + 1,
            thousands(r.catch_up_events as f64),
            thousands(r.live_published as f64),
            num(r.preload_secs, 1),
            num(r.connect_secs, 1),
            num(r.srv_part[0], 3),
            num(r.srv_part[1], 3),
            num(r.srv_part[2], 3),
            num(r.srv_part[3], 3),
            report::pct(r.core_busy_pct[0] / 100.0),
            report::pct(r.core_busy_pct[1] / 100.0),
            report::pct(r.foreign_pct[0] / 100.0),
            report::pct(r.foreign_pct[1] / 100.0),
            mib(r.data_dir_bytes, 1),
        );
    }
    let problems = report::run_problems(runs.iter().map(|r| &r.problems));
    s.push('\n');
    report::problems_section(
        &mut s,
        problems,
        "every client resumed, caught up and held exactly its events, no live \
         delivery was lost, and every server exited 0 when stopped.",
    );
    s
}

pub(super) fn json_run(args: &Args, label: &str, r: &Run) -> String {
    let lat = |v: &[f64; 5]| {
        format!(
            "{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
            json_num(v[0]),
            json_num(v[1]),
            json_num(v[2]),
            json_num(v[3]),
            json_num(v[4])
        )
    };
    let problems: Vec<String> = r.problems.iter().map(|p| json_str(p)).collect();
    format!(
        "{{\"scenario\":\"resume\",\"target\":\"cluecast\",\"label\":{},\"run\":{label},\
         \"durability\":\"{}\",\"clients\":{},\"behind\":{},\"topics\":{},\"live\":{},\
         \"rate_per_topic\":{},\"history_events_max\":{},\"connected\":{},\"resumed\":{},\
         \"caught_up\":{},\"exact\":{},\"gaps\":{},\"duplicates\":{},\"not_recovered\":{},\
         \"caught_up_s\":{},\"resume_events_per_s\":{},\"catch_up_events\":{},\
         \"live_baseline_ms\":{},\"live_storm_ms\":{},\"storm_vs_baseline_p99\":{},\
         \"live_server_part_ms\":{{\"baseline\":{{\"p50\":{},\"p99\":{}}},\
         \"storm\":{{\"p50\":{},\"p99\":{}}}}},\"core_busy_pct\":{{\"server\":{},\
         \"generator\":{}}},\"live_lost\":{},\"live_seq_errors\":{},\"server_cpu_pct\":{{\"baseline\":{},\
         \"storm\":{}}},\"server_rss_bytes\":{{\"baseline\":{},\"storm_max\":{}}},\
         \"generator_cpu_pct\":{},\"data_dir_bytes\":{},\"measured\":{},\"failed\":{},\
         \"problems\":[{}]}}\n",
        json_str(&args.label),
        args.durability().name(),
        args.clients,
        args.behind,
        args.topics,
        args.live,
        json_num(args.rate),
        args.history_events_max,
        r.clients,
        r.resumed,
        r.caught_up,
        r.exact,
        r.gaps,
        r.duplicates,
        r.not_recovered,
        json_num(r.catch_up_secs),
        json_num(r.resume_events_per_s),
        r.catch_up_events,
        lat(&r.base),
        lat(&r.storm),
        json_num(r.storm[2] / r.base[2]),
        json_num(r.srv_part[0]),
        json_num(r.srv_part[1]),
        json_num(r.srv_part[2]),
        json_num(r.srv_part[3]),
        json_num(r.core_busy_pct[0]),
        json_num(r.core_busy_pct[1]),
        r.live_lost,
        r.live_seq_errors,
        json_num(r.server_cpu_pct[0]),
        json_num(r.server_cpu_pct[1]),
        json_num(r.server_rss_bytes[0]),
        json_num(r.server_rss_bytes[1]),
        json_num(r.generator_cpu_pct),
        json_num(r.data_dir_bytes),
        r.measured,
        r.failed,
        problems.join(",")
    )
}

pub(super) fn json_report(args: &Args, runs: &[Run]) -> String {
    crate::report::json_runs(runs, &median_run(runs), |r, run| json_run(args, run, r))
}
