//! `cluecast-bench pairs`: two builds of the appliance compared run by run.
//!
//! bench/event-path.sh runs each scenario on a *base* and a *head* build,
//! alternating, and saves each run's `--json` lines as
//! `SCENARIO-base-N.json` and `SCENARIO-head-N.json`. This pairs round N of
//! base with round N of head, takes each file's median line, and writes a
//! markdown table: per figure the median of each build and the median (and
//! range) of the per-round ratios head / base. A round pairs two runs made
//! minutes apart, so the ratio of the pair is steadier than the ratio of the
//! two medians on a noisy host. Several directories (batches of rounds run
//! at different times) pool their pairs. A run that failed, lost or
//! duplicated anything is named, never averaged in.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::report::num;
use crate::stats::median;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Directories holding SCENARIO-base-N.json and SCENARIO-head-N.json;
    /// the pairs of all of them are pooled
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
}

/// One figure taken from a scenario's median line.
struct Figure {
    scenario: &'static str,
    name: &'static str,
    decimals: usize,
    /// Whether a larger value is better (throughput) or worse (cost, latency).
    higher_is_better: bool,
    read: fn(&Value) -> Option<f64>,
}

const FIGURES: [Figure; 5] = [
    Figure {
        scenario: "fanout",
        name: "fanout: server CPU per delivery (µs)",
        decimals: 2,
        higher_is_better: false,
        read: cpu_us_per_delivery,
    },
    Figure {
        scenario: "fanout",
        name: "fanout: p99 (ms)",
        decimals: 2,
        higher_is_better: false,
        read: p99_ms,
    },
    Figure {
        scenario: "durable",
        name: "durable, memory: acks/s (thousands)",
        decimals: 0,
        higher_is_better: true,
        read: thousand_acks_per_s,
    },
    Figure {
        scenario: "hunt",
        name: "hunt: server CPU (%)",
        decimals: 1,
        higher_is_better: false,
        read: server_cpu_pct,
    },
    Figure {
        scenario: "hunt",
        name: "hunt: p99 (ms)",
        decimals: 2,
        higher_is_better: false,
        read: p99_ms,
    },
];

fn cpu_us_per_delivery(line: &Value) -> Option<f64> {
    let deliveries_per_s = line["deliveries_per_s"].as_f64().filter(|d| *d > 0.0)?;
    Some(line["server_cpu_pct"].as_f64()? / 100.0 * 1e6 / deliveries_per_s)
}

fn p99_ms(line: &Value) -> Option<f64> {
    line["latency_ms"]["p99"].as_f64()
}

fn thousand_acks_per_s(line: &Value) -> Option<f64> {
    Some(line["acks_per_s"].as_f64()? / 1e3)
}

fn server_cpu_pct(line: &Value) -> Option<f64> {
    line["server_cpu_pct"].as_f64()
}

/// What makes a run unusable, in words; None when it is sound.
fn unsound(line: &Value) -> Option<String> {
    if line["failed"].as_bool() == Some(true) {
        return Some("failed".into());
    }
    if line["measured"].as_bool() == Some(false) {
        return Some("not measured".into());
    }
    let counts = [
        "lost",
        "duplicated",
        "reordered",
        "seq_errors",
        "flag_violations",
    ];
    let bad: Vec<String> = counts
        .iter()
        .filter_map(|key| {
            let n = line[*key].as_u64().unwrap_or(0);
            (n > 0).then(|| format!("{n} {key}"))
        })
        .collect();
    (!bad.is_empty()).then(|| bad.join(", "))
}

/// The median line of a file of `--json` lines.
fn median_line(path: &Path) -> Result<Value, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    for line in text.lines().filter(|l| l.starts_with('{')) {
        let value: Value = serde_json::from_str(line)
            .map_err(|e| format!("{}: a line is not JSON: {e}", path.display()))?;
        if value["run"] == "median" {
            return Ok(value);
        }
    }
    Err(format!("{}: no median line", path.display()))
}

/// The rounds present for `scenario` in each of `dirs` (as the directory's
/// index and the round): those with both a base and a head file.
fn rounds(dirs: &[PathBuf], scenario: &str) -> Result<Vec<(usize, u32)>, String> {
    let mut all = Vec::new();
    for (d, dir) in dirs.iter().enumerate() {
        all.extend(
            rounds_in(dir, scenario)?
                .into_iter()
                .map(|round| (d, round)),
        );
    }
    Ok(all)
}

fn rounds_in(dir: &Path, scenario: &str) -> Result<Vec<u32>, String> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let prefix = format!("{scenario}-base-");
    for entry in entries {
        let name = entry.map_err(|e| e.to_string())?.file_name();
        let name = name.to_string_lossy();
        let round = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".json"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(n) = round {
            if dir.join(format!("{scenario}-head-{n}.json")).exists() {
                found.push(n);
            }
        }
    }
    found.sort_unstable();
    Ok(found)
}

pub fn main(args: &Args) -> Result<(), String> {
    print!("{}", table(&args.dirs)?);
    Ok(())
}

fn table(dirs: &[PathBuf]) -> Result<String, String> {
    let mut lines: BTreeMap<(&str, &str, (usize, u32)), Value> = BTreeMap::new();
    let mut out = String::new();
    let mut problems = Vec::new();
    for scenario in ["fanout", "durable", "hunt"] {
        for (d, round) in rounds(dirs, scenario)? {
            for build in ["base", "head"] {
                let path = dirs[d].join(format!("{scenario}-{build}-{round}.json"));
                let line = median_line(&path)?;
                let batch = if dirs.len() > 1 {
                    format!("{}: ", dirs[d].display())
                } else {
                    String::new()
                };
                match unsound(&line) {
                    Some(why) => {
                        problems.push(format!("{batch}{scenario} {build} round {round}: {why}"))
                    }
                    None => {
                        lines.insert((scenario, build, (d, round)), line);
                    }
                }
            }
        }
    }
    writeln!(
        out,
        "| figure | base, median | head, median | head / base, median of the pairs | range of the pairs | pairs | better |"
    )
    .expect("writing to a String");
    writeln!(out, "|---|---:|---:|---:|---:|---:|---|").expect("writing to a String");
    for figure in &FIGURES {
        let (mut base, mut head) = (Vec::new(), Vec::new());
        for round in rounds(dirs, figure.scenario)? {
            let pair = (
                lines.get(&(figure.scenario, "base", round)),
                lines.get(&(figure.scenario, "head", round)),
            );
            let (Some(b), Some(h)) = pair else { continue };
            if let (Some(b), Some(h)) = ((figure.read)(b), (figure.read)(h)) {
                base.push(b);
                head.push(h);
            }
        }
        let ratios: Vec<f64> = head
            .iter()
            .zip(&base)
            .map(|(h, b)| h / b)
            .filter(|r| r.is_finite())
            .collect();
        let (Some(ratio), Some(base_median), Some(head_median)) =
            (median(&ratios), median(&base), median(&head))
        else {
            writeln!(out, "| {} | – | – | – | – | 0 | |", figure.name)
                .expect("writing to a String");
            continue;
        };
        let (low, high) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        let better = if figure.higher_is_better {
            "higher"
        } else {
            "lower"
        };
        writeln!(
            out,
            "| {} | {} | {} | {} | {}–{} | {} | {better} |",
            figure.name,
            num(base_median, figure.decimals),
            num(head_median, figure.decimals),
            num(ratio, 3),
            num(low, 2),
            num(high, 2),
            ratios.len(),
        )
        .expect("writing to a String");
    }
    if !problems.is_empty() {
        writeln!(out, "\nLeft out:").expect("writing to a String");
        for problem in problems {
            writeln!(out, "- {problem}").expect("writing to a String");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, line: &str) {
        std::fs::write(dir.join(name), format!("{{\"run\":1}}\n{line}\n")).unwrap();
    }

    #[test]
    fn pairs_rounds_and_leaves_out_unsound_runs() {
        let dir = std::env::temp_dir().join(format!("cluecast-pairs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fanout = |cpu: f64, lost: u64| {
            format!(
                "{{\"run\":\"median\",\"deliveries_per_s\":100000.0,\"server_cpu_pct\":{cpu},\
                 \"latency_ms\":{{\"p99\":2.0}},\"lost\":{lost},\"failed\":false,\"measured\":true}}"
            )
        };
        write(&dir, "fanout-base-1.json", &fanout(50.0, 0));
        write(&dir, "fanout-head-1.json", &fanout(55.0, 0));
        write(&dir, "fanout-base-2.json", &fanout(60.0, 0));
        write(&dir, "fanout-head-2.json", &fanout(57.0, 0));
        write(&dir, "fanout-base-3.json", &fanout(50.0, 0));
        write(&dir, "fanout-head-3.json", &fanout(40.0, 3));
        let table = table(std::slice::from_ref(&dir)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // Rounds 1 and 2 pair: ratios 1.1 and 0.95, median 1.025; round 3
        // lost events and is left out.
        let row = table
            .lines()
            .find(|l| l.starts_with("| fanout: server CPU"))
            .unwrap();
        assert!(row.contains("| 1.025 |"), "{row}");
        assert!(row.contains("| 0.95–1.10 | 2 |"), "{row}");
        assert!(table.contains("fanout head round 3: 3 lost"), "{table}");
        assert!(table.contains("| durable, memory: acks/s (thousands) | – |"));
    }

    #[test]
    fn directories_pool_their_pairs() {
        let root = std::env::temp_dir().join(format!("cluecast-pairs-pool-{}", std::process::id()));
        let dirs = [root.join("a"), root.join("b")];
        let durable = |acks: f64| {
            format!(
                "{{\"run\":\"median\",\"acks_per_s\":{acks},\"failed\":false,\"measured\":true}}"
            )
        };
        for (dir, (base, head)) in dirs.iter().zip([(1000.0, 1100.0), (1000.0, 900.0)]) {
            std::fs::create_dir_all(dir).unwrap();
            write(dir, "durable-base-1.json", &durable(base));
            write(dir, "durable-head-1.json", &durable(head));
        }
        let table = table(&dirs).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        let row = table.lines().find(|l| l.starts_with("| durable")).unwrap();
        // Round 1 of each directory: ratios 1.1 and 0.9, median 1.0.
        assert!(row.contains("| 1.000 | 0.90–1.10 | 2 |"), "{row}");
    }
}
