//! `cluecast-bench summary`: the comparison table of a set of runs.
//!
//! Reads the JSON lines the scenarios print with `--json` (bench/compare.sh
//! collects them in one file), keeps each invocation's median line, groups
//! them by case (scenario and load, plus any `--label`), and writes one
//! markdown table per case with a row per target, then the ratios of the
//! appliance's tail latencies to every other target's measured in the same
//! comparison. Skipped targets and failed or generator-bound medians are
//! shown as such, never as figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

use crate::report::{mib, num, thousands};

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Files of JSON lines (`--json` output of the scenarios)
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub fn main(args: &Args) -> Result<(), String> {
    let mut lines = Vec::new();
    for file in &args.files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| format!("{}:{}: {e}", file.display(), i + 1))?;
            lines.push(v);
        }
    }
    print!("{}", summarise(&lines));
    Ok(())
}

/// One target's median figures in one case.
#[derive(Clone, Debug, Default, PartialEq)]
struct Row {
    target: String,
    /// Why there are no figures (skipped, failed, generator-bound).
    absent: Option<String>,
    deliveries_per_s: f64,
    /// p50, p99, p99.9, p99.99, max (ms).
    latency: [f64; 5],
    lost: u64,
    server_cpu_pct: f64,
    server_rss_bytes: f64,
    /// conns: server RSS per connection (bytes) and connections/s.
    rss_per_conn: f64,
    connect_per_s: f64,
    /// Problems the median line carries, or a failure.
    failed: bool,
    /// The generator's core was the limit: figures shown, not comparable.
    generator_bound: bool,
}

/// The case a line belongs to: scenario and load. A labelled
/// configuration (`allocator=jemalloc`) is a row of its own in the case.
fn case_of(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let n = |k: &str| v[k].as_f64().map_or("?".into(), |x| num(x, 0));
    let scenario = s("scenario");
    match scenario.as_str() {
        "conns" => format!("conns: {} idle subscribed connections", n("connections")),
        _ => format!(
            "{scenario}: {} publisher(s) → {} subscribers over {} topic(s), {} events/s per \
             topic, {} B",
            n("publishers"),
            n("subscribers"),
            n("topics"),
            v["rate_per_topic"]
                .as_f64()
                .map_or("?".into(), |x| x.to_string()),
            n("payload_bytes"),
        ),
    }
}

fn row_of(v: &Value) -> Row {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let lat = |k: &str| v["latency_ms"][k].as_f64().unwrap_or(f64::NAN);
    let target = v["target"].as_str().unwrap_or("?");
    let label = v["label"].as_str().unwrap_or("");
    let mut row = Row {
        target: match label {
            "" => target.to_string(),
            _ => format!("{target} [{label}]"),
        },
        deliveries_per_s: f("deliveries_per_s"),
        latency: [
            lat("p50"),
            lat("p99"),
            lat("p999"),
            lat("p9999"),
            lat("max"),
        ],
        lost: v["lost"].as_u64().unwrap_or(0),
        server_cpu_pct: f("server_cpu_pct"),
        server_rss_bytes: f("server_rss_bytes"),
        rss_per_conn: f("rss_per_conn_bytes"),
        connect_per_s: f("connect_per_s"),
        failed: v["failed"].as_bool().unwrap_or(false),
        generator_bound: v["generator_bound"].as_bool().unwrap_or(false),
        ..Row::default()
    };
    row.absent = if let Some(why) = v["skipped"].as_str() {
        Some(format!("skipped: {why}"))
    } else if v["measured"].as_bool() == Some(false) {
        Some("no figures".into())
    } else {
        None
    };
    row
}

/// Keeps the median line of each invocation (and every skip line).
fn medians(lines: &[Value]) -> impl Iterator<Item = &Value> {
    lines
        .iter()
        .filter(|v| v["run"].as_str() == Some("median") || v.get("skipped").is_some())
}

/// The markdown of every case, in the order first seen.
pub fn summarise(lines: &[Value]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut cases: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for v in medians(lines) {
        let case = case_of(v);
        if !cases.contains_key(&case) {
            order.push(case.clone());
        }
        cases.entry(case).or_default().push(row_of(v));
    }
    let mut s = String::new();
    for case in &order {
        let rows = &cases[case];
        let _ = writeln!(s, "### {case}\n");
        if case.starts_with("conns") {
            conns_table(&mut s, rows);
        } else {
            latency_table(&mut s, rows);
        }
        s.push('\n');
    }
    s
}

fn latency_table(s: &mut String, rows: &[Row]) {
    let _ = writeln!(
        s,
        "| target | deliveries/s | p50 ms | p99 ms | p99.9 ms | p99.99 ms | max ms | lost | \
         server CPU | server RSS MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        if let Some(why) = &r.absent {
            let _ = writeln!(s, "| {} | {why} |||||||||", r.target);
            continue;
        }
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {}% | {} |",
            r.target,
            flags(r),
            thousands(r.deliveries_per_s),
            num(r.latency[0], 3),
            num(r.latency[1], 3),
            num(r.latency[2], 3),
            num(r.latency[3], 3),
            num(r.latency[4], 3),
            r.lost,
            num(r.server_cpu_pct, 0),
            mib(r.server_rss_bytes, 0),
        );
    }
    let Some(ours) = rows
        .iter()
        .find(|r| r.target == "cluecast" && r.absent.is_none())
    else {
        return;
    };
    let others: Vec<&Row> = rows
        .iter()
        .filter(|r| r.target != "cluecast" && r.absent.is_none())
        .collect();
    if others.is_empty() {
        return;
    }
    if ours.generator_bound || others.iter().any(|o| o.generator_bound) {
        let _ = writeln!(
            s,
            "\nSome of these medians are generator-bound (the generator's core over 90% busy): \
             their latencies may be the generator's limit, so the ratios are indicative only."
        );
    }
    let ratios: Vec<String> = others
        .iter()
        .map(|o| {
            format!(
                "{} p99 {} / p99.9 {}",
                o.target,
                num(ours.latency[1] / o.latency[1], 2),
                num(ours.latency[2] / o.latency[2], 2)
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "\ncluecast's latency as a multiple of each target's (below 1: cluecast is faster): {}.",
        ratios.join("; ")
    );
}

/// What the target's name is followed by: how far to trust its row.
fn flags(r: &Row) -> &'static str {
    match (r.failed, r.generator_bound) {
        (true, _) => " (failed)",
        (false, true) => " (generator-bound)",
        (false, false) => "",
    }
}

fn conns_table(s: &mut String, rows: &[Row]) {
    let _ = writeln!(
        s,
        "| target | server RSS per connection | server RSS MiB | connections/s |\n\
         |---|---:|---:|---:|"
    );
    for r in rows {
        if let Some(why) = &r.absent {
            let _ = writeln!(s, "| {} | {why} |||", r.target);
            continue;
        }
        let _ = writeln!(
            s,
            "| {}{} | {} B | {} | {} |",
            r.target,
            flags(r),
            num(r.rss_per_conn, 0),
            mib(r.server_rss_bytes, 0),
            thousands(r.connect_per_s),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(target: &str, run: &str, p99: f64) -> Value {
        serde_json::from_str(&format!(
            "{{\"scenario\":\"fanout\",\"target\":\"{target}\",\"label\":\"\",\"run\":{run},\
             \"subscribers\":2500,\"topics\":1,\"publishers\":1,\"rate_per_topic\":100,\
             \"payload_bytes\":128,\"deliveries_per_s\":250000,\
             \"latency_ms\":{{\"p50\":0.5,\"p99\":{p99},\"p999\":{},\"p9999\":8,\"max\":9}},\"lost\":0,\
             \"server_rss_bytes\":1048576,\"server_cpu_pct\":50,\"measured\":true,\
             \"failed\":false}}",
            2.0 * p99
        ))
        .unwrap()
    }

    #[test]
    fn medians_grouped_by_case_with_ratios() {
        let lines = vec![
            line("cluecast", "1", 5.0),
            line("cluecast", "\"median\"", 1.0),
            line("redis", "\"median\"", 4.0),
            serde_json::from_str(
                "{\"scenario\":\"fanout\",\"target\":\"nats\",\"label\":\"\",\
                 \"subscribers\":2500,\"topics\":1,\"publishers\":1,\"rate_per_topic\":100,\
                 \"payload_bytes\":128,\"skipped\":\"not installed\"}",
            )
            .unwrap(),
        ];
        let md = summarise(&lines);
        assert!(md.contains("### fanout: 1 publisher(s) → 2500 subscribers over 1 topic(s), 100 events/s per topic, 128 B"), "{md}");
        assert!(
            md.contains(
                "| cluecast | 250 000 | 0.500 | 1.000 | 2.000 | 8.000 | 9.000 | 0 | 50% | 1 |"
            ),
            "{md}"
        );
        assert!(!md.contains("| 5.000 |"), "only medians: {md}");
        assert!(md.contains("redis p99 0.25 / p99.9 0.25"), "{md}");
        assert_eq!(md.matches("### ").count(), 1, "{md}");
        assert!(
            md.contains("| nats | skipped: not installed |||||||||"),
            "{md}"
        );
    }

    #[test]
    fn labelled_configurations_are_rows_of_the_case() {
        let mut a = line("cluecast", "\"median\"", 1.0);
        a["label"] = "allocator=jemalloc".into();
        let md = summarise(&[line("cluecast", "\"median\"", 2.0), a]);
        assert_eq!(md.matches("### ").count(), 1, "{md}");
        assert!(
            md.contains("| cluecast [allocator=jemalloc] | 250 000 |"),
            "{md}"
        );
        // Ratios are of the unlabelled cluecast row to every other row.
        assert!(
            md.contains("cluecast [allocator=jemalloc] p99 2.00"),
            "{md}"
        );
    }
}
