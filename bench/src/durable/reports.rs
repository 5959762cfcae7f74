//! The durable scenario's reports: each mode's median run, the markdown and the JSON lines.

use super::*;
use crate::stats::{median_by, nearest};

/// The median run of one mode (each column the median over its measured
/// runs), and its throughput and p99 against memory's.
pub(super) struct Median {
    pub(super) run: Run,
    /// acks/s and p99 as a multiple of memory's (paired by round).
    pub(super) vs_memory: [f64; 2],
}

pub(super) fn medians(args: &Args, runs: &[Run]) -> Vec<Median> {
    let of_mode = |m: Durability| -> Vec<&Run> { runs.iter().filter(|r| r.mode == m).collect() };
    // Paired by round: a missing figure is NaN, which paired_ratio skips.
    let column = |m: Durability, f: fn(&Run) -> f64| -> Vec<f64> {
        of_mode(m)
            .iter()
            .map(|r| if r.measured { f(r) } else { f64::NAN })
            .collect()
    };
    args.modes
        .iter()
        .map(|&m| {
            let all = of_mode(m);
            let measured: Vec<&Run> = all.iter().copied().filter(|r| r.measured).collect();
            let med = |f: &dyn Fn(&Run) -> f64| median_by(&measured, f);
            let c = |f: fn(&Run) -> u64| med(&|r| f(r) as f64).round() as u64;
            let run = Run {
                mode: m,
                measured: !measured.is_empty(),
                offered_per_s: med(&|r| r.offered_per_s),
                acks_per_s: med(&|r| r.acks_per_s),
                latency: std::array::from_fn(|i| med(&|r| r.latency[i])),
                acked: c(|r| r.acked),
                durable: c(|r| r.durable),
                flag_violations: all.iter().map(|r| r.flag_violations).sum(),
                refused: c(|r| r.refused),
                unsent: c(|r| r.unsent),
                unacked: c(|r| r.unacked),
                seq_errors: all.iter().map(|r| r.seq_errors).sum(),
                send_lag: std::array::from_fn(|i| med(&|r| r.send_lag[i])),
                server_cpu_pct: med(&|r| r.server_cpu_pct),
                server_core_pct: med(&|r| r.server_core_pct),
                server_rss_bytes: med(&|r| r.server_rss_bytes),
                data_dir_bytes: med(&|r| r.data_dir_bytes),
                generator_cpu_pct: med(&|r| r.generator_cpu_pct),
                generator_bound: measured.iter().any(|r| r.generator_bound),
                foreign_server_pct: med(&|r| r.foreign_server_pct),
                foreign_client_pct: med(&|r| r.foreign_client_pct),
                hgrm: String::new(),
                failed: all.iter().any(|r| r.failed),
                problems: Vec::new(),
                redone: all.iter().map(|r| r.redone).sum(),
            };
            let vs_memory = match args.modes.contains(&Durability::Memory) {
                true => [
                    paired_ratio(
                        &column(m, |r| r.acks_per_s),
                        &column(Durability::Memory, |r| r.acks_per_s),
                    ),
                    paired_ratio(
                        &column(m, |r| r.latency[2]),
                        &column(Durability::Memory, |r| r.latency[2]),
                    ),
                ]
                .map(|x| x.unwrap_or(f64::NAN)),
                false => [f64::NAN; 2],
            };
            Median { run, vs_memory }
        })
        .collect()
}

/// Each run's distribution, and per mode the run nearest its median p99.
pub(super) fn write_hgrms(args: &Args, dir: &Path, runs: &[Run]) -> Result<(), String> {
    let files = report::HgrmFiles::new(dir, &args.label)?;
    for m in medians(args, runs) {
        let mode = m.run.mode;
        let stem = format!("durable-{}", mode.name());
        let mine: Vec<&Run> = runs.iter().filter(|r| r.mode == mode).collect();
        for (i, r) in mine.iter().enumerate().filter(|(_, r)| !r.hgrm.is_empty()) {
            files.write(&stem, &(i + 1).to_string(), &r.hgrm)?;
        }
        let counted = mine.iter().filter(|r| r.measured && !r.hgrm.is_empty());
        if let Some(r) = nearest(counted, m.run.latency[2], |r| r.latency[2]) {
            files.write(&stem, "median", &r.hgrm)?;
        }
    }
    Ok(())
}

fn load_text(args: &Args) -> String {
    let how = match args.rate {
        Some(r) => format!(
            "open loop: {} publishes/s in all on a fixed schedule, spread over the \
             publishers; latency counts from the time each publish was due",
            thousands(r)
        ),
        None => format!(
            "closed loop: each keeps {} publishes in flight (a new one as each ack comes); \
             latency counts from the write of each PUBLISH",
            args.window
        ),
    };
    format!(
        "{} publisher connections, publishes of {} B round-robin over {} topics; {how}",
        args.publishers, args.payload, args.topics
    )
}

pub(super) fn markdown_report(args: &Args, host: &procfs::Host, runs: &[Run]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let label = report::label_words(&args.label);
    let _ = writeln!(s, "# durable: publish → ack by durability mode{label}\n");
    let scratch = std::env::temp_dir();
    let more = format!("; data directories under `{}`", scratch.display());
    report::header_lines(&mut s, host, &more);
    let shown = targets::shown(&launch(args, Durability::Sync), &args.common.cluecast);
    let _ = writeln!(
        s,
        "- target: `{shown}` (sync shown; `--durability` per mode, and a fresh temporary \
         `--data-dir` for async and sync, removed after the run){}; a fresh server per run, \
         stopped with SIGTERM",
        args.common.pinned(", ", args.common.server_cpu)
    );
    let _ = writeln!(
        s,
        "- load: {}; one client process, one thread{}",
        load_text(args),
        args.common.pinned(", ", args.common.client_cpu)
    );
    let _ = writeln!(
        s,
        "- each run: {} s warm-up, {} s measured, then up to {} s for the last acks; {} rounds \
         of {} in that order; a run with more than {:.0}% of a measured core going \
         elsewhere is measured again (up to {} more times)\n",
        args.warmup,
        args.duration,
        args.drain_timeout,
        args.runs.repeat,
        mode_list(args),
        args.common.foreign_max * 100.0,
        args.common.retries
    );
    let _ = writeln!(
        s,
        "*acks/s*: acks with status 0 received in the window, per second; latency: publish → \
         the kernel's receive timestamp of its PUBLISH_ACK (ms); *durable*: share of acks \
         with the durable flag (sync must be 100%, the others 0%; *violations* count the \
         rest); *seq err*: acked sequences of a topic not 1, 2, 3, … once each in one epoch; \
         *server CPU*: the appliance process (shard, storage writer and reader threads) over \
         the window, % of one core; *RSS* at the window's end; *data*: bytes in the data \
         directory when the clients were done.\n"
    );
    let _ = writeln!(
        s,
        "| run | mode | offered/s | acks/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | \
         durable | violations | refused | seq err | server CPU | server RSS MiB | data MiB | \
         generator CPU |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let meds = medians(args, runs);
    let row = |s: &mut String, name: &str, r: &Run| {
        if !r.measured {
            let _ = writeln!(
                s,
                "| {name} | {} | no figures |||||||||||||||",
                r.mode.name()
            );
            return;
        }
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} \
             | {} |",
            r.mode.name(),
            thousands(r.offered_per_s),
            thousands(r.acks_per_s),
            num(r.latency[0], 3),
            num(r.latency[1], 3),
            num(r.latency[2], 3),
            num(r.latency[3], 3),
            num(r.latency[4], 3),
            pct(r.durable_fraction()),
            r.flag_violations,
            r.refused,
            r.seq_errors,
            pct(r.server_cpu_pct / 100.0),
            mib(r.server_rss_bytes, 0),
            mib(r.data_dir_bytes, 1),
            pct(r.generator_cpu_pct / 100.0),
        );
    };
    for (n, r) in numbered(runs) {
        row(&mut s, &n.to_string(), r);
    }
    for m in &meds {
        row(&mut s, "**median**", &m.run);
    }
    let _ = writeln!(
        s,
        "\nDiagnostics. *server core*: the server's CPU busy with anything (the appliance, \
         kernel work done there for it, any other tenant), % of it; *foreign*: share of the \
         server's / the generator's core taken by anything but the appliance / the generator \
         (other processes, kernel threads such as writeback, hypervisor steal); *redone*: \
         attempts thrown away as disturbed before this one.\n"
    );
    let _ = writeln!(
        s,
        "| run | mode | server core | foreign srv / gen | redone |\n|---|---|---:|---:|---:|"
    );
    for (n, r) in numbered(runs.iter().filter(|r| r.measured)) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} / {} | {} |",
            n,
            r.mode.name(),
            pct(r.server_core_pct / 100.0),
            pct(r.foreign_server_pct / 100.0),
            pct(r.foreign_client_pct / 100.0),
            r.redone
        );
    }
    if args.modes.contains(&Durability::Memory) {
        let _ = writeln!(
            s,
            "\nAgainst memory (each the median over rounds of this mode's figure / memory's \
             in the same round):\n"
        );
        let _ = writeln!(
            s,
            "| mode | acks/s | acks/s vs memory | p99 ms | p99 vs memory |\n|---|---:|---:|---:|---:|"
        );
        for m in &meds {
            let _ = writeln!(
                s,
                "| {} | {} | {}× | {} | {}× |",
                m.run.mode.name(),
                thousands(m.run.acks_per_s),
                num(m.vs_memory[0], 2),
                num(m.run.latency[2], 3),
                num(m.vs_memory[1], 2),
            );
        }
    }
    let problems: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r.problems
                .iter()
                .map(move |p| format!("- {}: {p}", r.mode.name()))
        })
        .collect();
    s.push('\n');
    report::problems_section(
        &mut s,
        problems,
        "every publish was answered, every ack's durable flag was what its \
         mode promises, every topic's acked sequences were 1, 2, 3, … in one epoch, and \
         every server exited 0 when stopped.",
    );
    s
}

fn json_run(args: &Args, run_label: &str, r: &Run, vs_memory: Option<[f64; 2]>) -> String {
    let problems: Vec<String> = r.problems.iter().map(|p| json_str(p)).collect();
    let vs = match vs_memory {
        Some([acks, p99]) => format!(
            ",\"vs_memory\":{{\"acks_per_s\":{},\"p99\":{}}}",
            json_num(acks),
            json_num(p99)
        ),
        None => String::new(),
    };
    format!(
        "{{\"scenario\":\"durable\",\"target\":\"cluecast\",\"label\":{},\"mode\":\"{}\",\
         \"run\":{run_label},\"publishers\":{},\"window\":{},\"topics\":{},\"payload_bytes\":{},\
         \"rate\":{},\"duration_s\":{},\"offered_per_s\":{},\"acks_per_s\":{},\
         \"latency_ms\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}},\
         \"acks\":{},\"durable_acks\":{},\"durable_fraction\":{},\"flag_violations\":{},\
         \"refused\":{},\"unsent\":{},\"unacked\":{},\"seq_errors\":{},\
         \"send_lag_ms\":{{\"p99\":{},\"max\":{}}},\"server_cpu_pct\":{},\"server_core_pct\":{},\
         \"server_rss_bytes\":{},\
         \"data_dir_bytes\":{},\"generator_cpu_pct\":{},\"generator_bound\":{},\
         \"foreign_server_pct\":{},\"foreign_generator_pct\":{},\"measured\":{},\"failed\":{},\
         \"redone\":{}{vs},\"problems\":[{}]}}\n",
        json_str(&args.label),
        r.mode.name(),
        args.publishers,
        args.window,
        args.topics,
        args.payload,
        args.rate.map_or("null".into(), json_num),
        json_num(args.duration),
        json_num(r.offered_per_s),
        json_num(r.acks_per_s),
        json_num(r.latency[0]),
        json_num(r.latency[1]),
        json_num(r.latency[2]),
        json_num(r.latency[3]),
        json_num(r.latency[4]),
        r.acked,
        r.durable,
        json_num(r.durable_fraction()),
        r.flag_violations,
        r.refused,
        r.unsent,
        r.unacked,
        r.seq_errors,
        json_num(r.send_lag[0]),
        json_num(r.send_lag[1]),
        json_num(r.server_cpu_pct),
        json_num(r.server_core_pct),
        json_num(r.server_rss_bytes),
        json_num(r.data_dir_bytes),
        json_num(r.generator_cpu_pct),
        r.generator_bound,
        json_num(r.foreign_server_pct),
        json_num(r.foreign_client_pct),
        r.measured,
        r.failed,
        r.redone,
        problems.join(",")
    )
}

/// Each run with its number among its mode's runs (from 1).
fn numbered<'a>(runs: impl IntoIterator<Item = &'a Run>) -> Vec<(usize, &'a Run)> {
    let mut counts = vec![0usize; Durability::ALL.len()];
    (runs.into_iter())
        .map(|r| {
            let k = Durability::ALL
                .iter()
                .position(|&m| m == r.mode)
                .unwrap_or(0);
            counts[k] += 1;
            (counts[k], r)
        })
        .collect()
}

/// One object per run (`"run": N`, N counting that mode's runs), then one
/// per mode for its median (`"run": "median"`, with `vs_memory`).
pub(super) fn json_report(args: &Args, runs: &[Run]) -> String {
    let mut out = String::new();
    for (n, r) in numbered(runs) {
        out.push_str(&json_run(args, &n.to_string(), r, None));
    }
    for m in medians(args, runs) {
        out.push_str(&json_run(args, "\"median\"", &m.run, Some(m.vs_memory)));
    }
    out
}
