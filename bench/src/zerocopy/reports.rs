//! The zerocopy scenario's reports: the plain / zero-copy pairs, the markdown and the JSON lines.

use super::*;

pub(super) fn pairs(cells: &[Cell]) -> Vec<(&Cell, &Cell)> {
    cells
        .chunks(2)
        .filter_map(|c| match c {
            [p, z] if p.mode == Mode::Plain && z.mode == Mode::ZeroCopy => Some((p, z)),
            _ => None,
        })
        .collect()
}

pub(super) struct Ratios {
    throughput: f64,
    server_cpu: f64,
    work: f64,
}

pub(super) fn ratios(plain: &Cell, zc: &Cell) -> Ratios {
    let r = |f: fn(&Run) -> f64| paired_ratio(&zc.values(f), &plain.values(f)).unwrap_or(f64::NAN);
    Ratios {
        throughput: r(|x| x.mb_per_s),
        server_cpu: r(|x| x.server_cpu_per_gb),
        work: r(|x| x.work_per_gb),
    }
}

/// Whether zero-copy did better: cheaper per GB in both CPU views without
/// losing throughput.
pub(super) fn verdict(r: &Ratios) -> &'static str {
    if ![r.throughput, r.server_cpu, r.work]
        .iter()
        .all(|x| x.is_finite())
    {
        return "no figures";
    }
    let cheaper = r.server_cpu < 1.0 - NOISE && r.work < 1.0 - NOISE;
    let costlier = r.server_cpu > 1.0 + NOISE || r.work > 1.0 + NOISE;
    if cheaper && r.throughput > 1.0 - NOISE {
        "zero-copy wins"
    } else if costlier || r.throughput < 1.0 - NOISE {
        "zero-copy loses"
    } else {
        "no clear difference"
    }
}

/// The smallest size from which zero-copy wins at every larger size too;
/// 0 (off) when it never does.
pub(super) fn suggested_min(cells: &[Cell]) -> usize {
    let verdicts: Vec<(usize, bool)> = pairs(cells)
        .into_iter()
        .map(|(p, z)| (p.size, verdict(&ratios(p, z)) == "zero-copy wins"))
        .collect();
    let mut min = 0;
    for &(size, wins) in verdicts.iter().rev() {
        if !wins {
            break;
        }
        min = size;
    }
    min
}

pub(super) fn markdown_report(args: &Args, host: &procfs::Host, cells: &[Cell]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "# cluecast zero-copy fan-out measurement\n");
    report::header_lines(&mut s, host, "");
    let _ = writeln!(
        s,
        "- path: server listens on {}{}; clients {}",
        args.common.listen,
        args.server_via
            .as_deref()
            .map(|v| format!(" (started via `{v}`)"))
            .unwrap_or_default(),
        args.clients_via
            .as_deref()
            .map(|v| format!("started via `{v}`"))
            .unwrap_or_else(|| "on this host".into())
    );
    let _ = writeln!(
        s,
        "- server: `cluecast {}` (zero-copy mode: `--zerocopy-bytes-min {}`){}",
        server_args(args, Mode::Plain).join(" "),
        args.zerocopy_min,
        args.common.pinned(", ", args.common.server_cpu)
    );
    let _ = writeln!(
        s,
        "- load: 1 publisher (≤ {} unacked, ≤ {} ahead of the slowest subscriber) and {} \
         subscribers on one topic, in one process{}",
        args.window,
        format_size(args.lead_bytes),
        args.subscribers,
        args.common.pinned(" ", args.common.client_cpu)
    );
    let _ = writeln!(
        s,
        "- each run: fresh server, {} ms warm-up, {} s measured publishing + drain; {} runs \
         per cell, plain and zero-copy alternating ABBA; a pair with more than {:.0}% of a \
         measured core going elsewhere is measured again (up to {} more times); figures are \
         medians\n",
        args.warmup_ms,
        args.duration_secs,
        args.repeat,
        args.common.foreign_max * 100.0,
        args.common.retries
    );
    let _ = writeln!(
        s,
        "Columns: MB = 10^6 bytes of EVENT frames received by all subscribers together. \
         *server s/GB*: user+sys CPU seconds of the server process per 10^9 delivered bytes. \
         *+softirqd s/GB*: the same plus the server CPU's ksoftirqd thread, where the kernel \
         finishes network work (on loopback / veth that includes the subscribers' TCP \
         receive path) — all the CPU this load costs on the server's core. *server core*: \
         that work as a share of the core; *client*: the client process's share of its core; \
         *foreign*: share of the server / client core that went to other processes or \
         hypervisor steal during the run (noise). *bytes/send*: the server's own counters.\n"
    );
    let _ = writeln!(
        s,
        "| payload | mode | runs | deliveries/s | MB/s | MB/s range | server s/GB | \
         +softirqd s/GB | server core | client | foreign | bytes/send | lost |"
    );
    let _ = writeln!(
        s,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in cells {
        let _ = writeln!(
            s,
            "| {} | {} | {}{} | {} | {} | {}–{} | {} | {} | {} | {} | {} / {} | {} | {} |",
            format_size(c.size),
            c.mode.name(),
            c.measured(),
            if c.discarded > 0 {
                format!(" (+{} redone)", c.discarded)
            } else {
                String::new()
            },
            thousands(c.median(|r| r.deliveries_per_s)),
            num(c.median(|r| r.mb_per_s), 0),
            num(c.range(|r| r.mb_per_s).0, 0),
            num(c.range(|r| r.mb_per_s).1, 0),
            num(c.median(|r| r.server_cpu_per_gb), 3),
            num(c.median(|r| r.work_per_gb), 3),
            pct(c.median(|r| r.work_util)),
            pct(c.median(|r| r.client_util)),
            pct(c.median(|r| r.foreign_server)),
            pct(c.median(|r| r.foreign_client)),
            thousands(c.median(|r| r.bytes_per_send)),
            c.total(|r| r.lost),
        );
    }
    let thp = cells
        .iter()
        .flat_map(|c| c.runs.iter().filter_map(|r| r.server_thp_kib))
        .max();
    if let Some(kib) = thp {
        let _ = writeln!(
            s,
            "\nServer memory on transparent huge pages (AnonHugePages at the end of the \
             window), largest over all runs: {} MiB.",
            kib >> 10
        );
    }
    let _ = writeln!(
        s,
        "\nZero-copy / plain: median of the ratios of the runs measured back to back \
         (for s/GB below 1 means zero-copy is cheaper, for MB/s above 1 means it is faster; \
         within ±{:.0}% counts as no difference):\n",
        NOISE * 100.0
    );
    let _ = writeln!(
        s,
        "| payload | MB/s | server s/GB | +softirqd s/GB | verdict |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---|");
    for (p, z) in pairs(cells) {
        let r = ratios(p, z);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            format_size(p.size),
            num(r.throughput, 2),
            num(r.server_cpu, 2),
            num(r.work, 2),
            verdict(&r)
        );
    }
    let min = suggested_min(cells);
    let _ = writeln!(
        s,
        "\nSuggested `--zerocopy-bytes-min` from these figures: **{}**{}\n",
        min,
        if min == 0 {
            " (off: zero-copy did not win at any measured size, or not at every size above one)"
                .to_string()
        } else {
            format!(" (zero-copy from {} up)", format_size(min))
        }
    );
    let mut problems = Vec::new();
    for c in cells {
        for (i, r) in c.runs.iter().enumerate() {
            let name = format!("{} {} run {}", format_size(c.size), c.mode.name(), i + 1);
            for p in &r.problems {
                problems.push(format!("- {name}: {p}"));
            }
            if r.catch_ups > 0 || r.slow_goaways > 0 || r.refused > 0 || r.cq_overflows > 0 {
                problems.push(format!(
                    "- {name}: {} publishes refused (Overloaded), {} subscriber catch-ups, \
                     {} slow-consumer GOAWAYs, {} completion-queue overflows",
                    r.refused, r.catch_ups, r.slow_goaways, r.cq_overflows
                ));
            }
        }
    }
    for c in cells {
        for p in &c.discarded_problems {
            problems.push(format!("- {} {} {p}", format_size(c.size), c.mode.name()));
        }
    }
    report::problems_section(
        &mut s,
        problems,
        "every run delivered every event to every subscriber, in sequence, no publish was \
         refused, and every server exited 0 on SIGTERM.",
    );
    s
}

pub(super) fn json_report(args: &Args, cells: &[Cell]) -> String {
    let mut out = String::new();
    let pairs = pairs(cells);
    for c in cells {
        let zc_min = match c.mode {
            Mode::Plain => 0,
            Mode::ZeroCopy => args.zerocopy_min,
        };
        let ratio = match c.mode {
            Mode::ZeroCopy => pairs
                .iter()
                .find(|(_, z)| z.size == c.size)
                .map(|(p, z)| {
                    let r = ratios(p, z);
                    format!(
                        "{{\"mb_per_s\":{},\"server_cpu_s_per_gb\":{},\
                         \"server_core_work_s_per_gb\":{},\"verdict\":{}}}",
                        json_num(r.throughput),
                        json_num(r.server_cpu),
                        json_num(r.work),
                        json_str(verdict(&r))
                    )
                })
                .unwrap_or_else(|| "null".into()),
            Mode::Plain => "null".into(),
        };
        let problems: Vec<String> = c
            .runs
            .iter()
            .flat_map(|r| r.problems.iter())
            .chain(&c.discarded_problems)
            .map(|p| json_str(p))
            .collect();
        out.push_str(&format!(
            "{{\"payload_bytes\":{},\"mode\":{},\"zerocopy_bytes_min\":{},\"subscribers\":{},\
             \"runs\":{},\"runs_measured\":{},\"runs_redone\":{},\"deliveries_per_s\":{},\
             \"mb_per_s\":{},\"server_cpu_s_per_gb\":{},\"server_core_work_s_per_gb\":{},\
             \"server_core_busy_s_per_gb\":{},\"server_cpu_util\":{},\
             \"server_core_work_util\":{},\"client_cpu_util\":{},\"foreign_server_core\":{},\
             \"foreign_client_core\":{},\"bytes_per_send\":{},\"lost\":{},\"seq_errors\":{},\
             \"refused\":{},\"catch_ups\":{},\"slow_consumer_goaways\":{},\"cq_overflows\":{},\
             \"zero_copy_sends\":{},\"server_anon_huge_kib\":{},\"per_run\":{{\"mb_per_s\":{},\"server_cpu_s_per_gb\":{},\
             \"server_core_work_s_per_gb\":{}}},\"ratio_vs_plain\":{},\"problems\":[{}]}}\n",
            c.size,
            json_str(c.mode.name()),
            zc_min,
            args.subscribers,
            c.runs.len(),
            c.measured(),
            c.discarded,
            json_num(c.median(|r| r.deliveries_per_s)),
            json_num(c.median(|r| r.mb_per_s)),
            json_num(c.median(|r| r.server_cpu_per_gb)),
            json_num(c.median(|r| r.work_per_gb)),
            json_num(c.median(|r| r.core_busy_per_gb)),
            json_num(c.median(|r| r.server_util)),
            json_num(c.median(|r| r.work_util)),
            json_num(c.median(|r| r.client_util)),
            json_num(c.median(|r| r.foreign_server)),
            json_num(c.median(|r| r.foreign_client)),
            json_num(c.median(|r| r.bytes_per_send)),
            c.total(|r| r.lost),
            c.total(|r| r.seq_errors),
            c.total(|r| r.refused),
            c.total(|r| r.catch_ups),
            c.total(|r| r.slow_goaways),
            c.total(|r| r.cq_overflows),
            c.total(|r| r.zero_copy_sends),
            c.runs
                .iter()
                .filter_map(|r| r.server_thp_kib)
                .max()
                .map_or("null".to_string(), |k| k.to_string()),
            json_list(&c.values(|r| r.mb_per_s)),
            json_list(&c.values(|r| r.server_cpu_per_gb)),
            json_list(&c.values(|r| r.work_per_gb)),
            ratio,
            problems.join(",")
        ));
    }
    out
}
