//! TLS against plaintext (`--vs-plain`): the runs paired by round, and the
//! comparison's markdown and JSON.

use super::*;

/// Server CPU per delivery, µs (the process's user + sys).
pub(super) fn cpu_us_per_delivery(r: &Run) -> f64 {
    r.server_cpu_pct * 1e4 / r.deliveries_per_s
}

/// Its core's (the process plus the core's ksoftirqd) per delivery, µs.
fn core_us_per_delivery(r: &Run) -> f64 {
    r.server_core_pct * 1e4 / r.deliveries_per_s
}

/// What the pairs of runs (plaintext, then TLS, in the same round) give.
pub(super) struct Pairs {
    /// TLS / plaintext of each pair: server CPU per delivery, its core's.
    pub(super) cpu: Vec<f64>,
    core: Vec<f64>,
    /// Some pair has a generator-bound run (no pair was fit to count).
    pub(super) generator_bound: bool,
}

impl Pairs {
    /// The pairs whose two runs count; when there are none, the measured
    /// ones (said so).
    pub(super) fn of(plain: &[Run], tls: &[Run]) -> Pairs {
        let both = |f: fn(&Run) -> bool| -> Vec<(&Run, &Run)> {
            plain
                .iter()
                .zip(tls)
                .filter(|(p, t)| f(p) && f(t))
                .collect()
        };
        let (pairs, generator_bound) = match both(Run::counted) {
            counted if !counted.is_empty() => (counted, false),
            _ => (both(|r| r.measured), true),
        };
        let ratio = |f: fn(&Run) -> f64| pairs.iter().map(|(p, t)| f(t) / f(p)).collect();
        Pairs {
            cpu: ratio(cpu_us_per_delivery),
            core: ratio(core_us_per_delivery),
            generator_bound: generator_bound && !pairs.is_empty(),
        }
    }
}

/// The comparison section: each side's medians and TLS / plaintext.
pub(super) fn comparison_markdown(args: &Args, plain: &[Run], tls: &[Run]) -> String {
    use std::fmt::Write as _;
    let (p, t) = (median_run(plain), median_run(tls));
    let pairs = Pairs::of(plain, tls);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# {} over TLS 1.3 against plaintext, target `{}`\n",
        args.shape.name(),
        args.target.name()
    );
    let _ = writeln!(
        s,
        "The two reports above, side by side: {} rounds, each a plaintext run and then a TLS \
         run of the same load, each against a fresh appliance (the same binary, started with \
         `--tls-cert` / `--tls-key` for the TLS run). Medians of each side as in its report; \
         *TLS / plain* is the ratio of those medians, except for the CPU per delivery, where it \
         is the median over the rounds of each round's ratio. *server CPU per delivery*: the \
         server process's user + sys over the window divided by the deliveries in it; *its \
         core's*: the same with the core's ksoftirqd added (loopback TCP work).\n",
        args.runs.repeat
    );
    let _ = writeln!(
        s,
        "| | plaintext | TLS | TLS / plain |\n|---|---:|---:|---:|"
    );
    let ratio = |a: f64, b: f64| num(b / a, 2);
    let mut row = |name: &str, a: String, b: String, r: String| {
        let _ = writeln!(s, "| {name} | {a} | {b} | {r} |");
    };
    row(
        "deliveries/s",
        thousands(p.deliveries_per_s),
        thousands(t.deliveries_per_s),
        ratio(p.deliveries_per_s, t.deliveries_per_s),
    );
    for (i, name) in [(0, "p50 ms"), (2, "p99 ms"), (3, "p99.9 ms"), (5, "max ms")] {
        row(
            name,
            num(p.latency[i], 3),
            num(t.latency[i], 3),
            ratio(p.latency[i], t.latency[i]),
        );
    }
    row(
        "server CPU (% of one core)",
        pct_of_core(p.server_cpu_pct),
        pct_of_core(t.server_cpu_pct),
        ratio(p.server_cpu_pct, t.server_cpu_pct),
    );
    row(
        "server's core, with ksoftirqd",
        pct_of_core(p.server_core_pct),
        pct_of_core(t.server_core_pct),
        ratio(p.server_core_pct, t.server_core_pct),
    );
    let med_of = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    row(
        "**server CPU per delivery, µs**",
        num(med_of(&cpu_per_delivery_of(plain)), 2),
        num(med_of(&cpu_per_delivery_of(tls)), 2),
        format!("**{}**", num(med_of(&pairs.cpu), 2)),
    );
    row(
        "its core's per delivery, µs",
        num(med_of(&core_per_delivery_of(plain)), 2),
        num(med_of(&core_per_delivery_of(tls)), 2),
        num(med_of(&pairs.core), 2),
    );
    row(
        "server RSS MiB",
        mib(p.server_rss_bytes, 0),
        mib(t.server_rss_bytes, 0),
        ratio(p.server_rss_bytes, t.server_rss_bytes),
    );
    row(
        "generator CPU (% of its core)",
        pct_of_core(p.generator_cpu_pct),
        pct_of_core(t.generator_cpu_pct),
        ratio(p.generator_cpu_pct, t.generator_cpu_pct),
    );
    row(
        "read delay p99 ms",
        num(p.read_delay[1], 3),
        num(t.read_delay[1], 3),
        ratio(p.read_delay[1], t.read_delay[1]),
    );
    row(
        "connect s",
        num(p.connect_secs, 1),
        num(t.connect_secs, 1),
        ratio(p.connect_secs, t.connect_secs),
    );
    let each: Vec<String> = pairs.cpu.iter().map(|r| num(*r, 2)).collect();
    let _ = writeln!(
        s,
        "\nServer CPU per delivery, TLS / plain, round by round: {}{}.",
        if each.is_empty() {
            "no round measured both".to_string()
        } else {
            each.join(", ")
        },
        if pairs.generator_bound {
            " (every pair had a generator-bound run: these may be the generator's limit)"
        } else {
            ""
        }
    );
    s
}

/// Server CPU per delivery of each measured, counted run (all measured
/// ones if none counts).
fn cpu_per_delivery_of(runs: &[Run]) -> Vec<f64> {
    median_pool(runs)
        .0
        .iter()
        .map(|r| cpu_us_per_delivery(r))
        .collect()
}

fn core_per_delivery_of(runs: &[Run]) -> Vec<f64> {
    median_pool(runs)
        .0
        .iter()
        .map(|r| core_us_per_delivery(r))
        .collect()
}

/// The comparison as one JSON line (`"comparison": "tls_vs_plain"`, no
/// `"run"`: summary.rs reads only medians).
pub(super) fn comparison_json(args: &Args, plain: &[Run], tls: &[Run]) -> String {
    let pairs = Pairs::of(plain, tls);
    let med_of = |v: &[f64]| json_num(median(v).unwrap_or(f64::NAN));
    format!(
        "{{{},\"comparison\":\"tls_vs_plain\",\"rounds\":{},\
         \"server_cpu_per_delivery_us\":{{\"plain\":{},\"tls\":{}}},\
         \"server_core_per_delivery_us\":{{\"plain\":{},\"tls\":{}}},\
         \"tls_over_plain\":{{\"server_cpu_per_delivery\":{},\"server_core_per_delivery\":{},\
         \"rounds\":{}}},\"generator_bound\":{}}}\n",
        json_case(&with_tls(args, false)),
        args.runs.repeat,
        med_of(&cpu_per_delivery_of(plain)),
        med_of(&cpu_per_delivery_of(tls)),
        med_of(&core_per_delivery_of(plain)),
        med_of(&core_per_delivery_of(tls)),
        med_of(&pairs.cpu),
        med_of(&pairs.core),
        crate::report::json_list(&pairs.cpu),
        pairs.generator_bound,
    )
}
