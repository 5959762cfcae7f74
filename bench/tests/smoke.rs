//! A short run of every scenario against the appliance, as CI runs it: the
//! assertions are on correctness (every event delivered once and in order,
//! every connection held, the scenario's own figures present), never on
//! speed.
//!
//! The appliance is the `cluecast` binary next to this package's
//! (`cargo test --workspace` builds both).

mod common;

use std::process::Command;

use common::appliance;
use serde_json::Value;

/// Runs cluecast-bench with `args` (one run, JSON output) against the
/// appliance, asserts it succeeded, and returns every line it printed.
fn json_lines(args: &[&str]) -> Vec<Value> {
    let cluecast =
        appliance().unwrap_or_else(|why| panic!("smoke test needs the appliance: {why}"));
    let out = Command::new(env!("CARGO_BIN_EXE_cluecast-bench"))
        .args(args)
        .arg("--cluecast")
        .arg(&cluecast)
        .args(["--repeat", "1", "--json", "--no-pin"])
        .output()
        .expect("running cluecast-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stdout}\n{stderr}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect()
}

/// [`json_lines`], the median lines only.
fn median_lines(args: &[&str]) -> Vec<Value> {
    let medians: Vec<Value> = json_lines(args)
        .into_iter()
        .filter(|v| v["run"] == "median")
        .collect();
    assert!(!medians.is_empty(), "{args:?}: no median line");
    for v in &medians {
        assert_eq!(v["target"], "cluecast", "{v}");
    }
    medians
}

/// [`median_lines`] of a scenario with one median.
fn median_line(args: &[&str]) -> Value {
    median_lines(args).remove(0)
}

/// Runs a scenario with a small load and returns its median JSON line.
fn median_of(scenario: &str, extra: &[&str]) -> Value {
    let common = ["--retries", "0", "--warmup", "0.5", "--drain-timeout", "5"];
    let args: Vec<&str> = [scenario]
        .into_iter()
        .chain(common)
        .chain(extra.iter().copied())
        .collect();
    let v = median_line(&args);
    let median = v.to_string();
    assert_eq!(v["scenario"], scenario, "{median}");
    assert_eq!(v["measured"], true, "{median}");
    assert_eq!(v["failed"], false, "{median}");
    for key in ["lost", "duplicated", "reordered"] {
        assert_eq!(v[key], 0, "{scenario} {key}: {median}");
    }
    assert!(v["deliveries_per_s"].as_f64().unwrap() > 0.0, "{median}");
    assert!(v["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{median}");
    v
}

#[test]
fn fanout_delivers_everything() {
    median_of(
        "fanout",
        &[
            "--subscribers",
            "60",
            "--topics",
            "3",
            "--rate",
            "50",
            "--duration",
            "2",
        ],
    );
}

#[test]
fn fanout_over_tls_against_plaintext() {
    let args = [
        "fanout",
        "--retries",
        "0",
        "--warmup",
        "0.5",
        "--drain-timeout",
        "5",
        "--subscribers",
        "40",
        "--topics",
        "2",
        "--rate",
        "50",
        "--duration",
        "2",
        "--tls",
        "--vs-plain",
    ];
    let lines = json_lines(&args);
    let medians: Vec<&Value> = lines.iter().filter(|v| v["run"] == "median").collect();
    assert_eq!(medians.len(), 2, "{lines:?}");
    assert_eq!(medians[0].get("tls"), None, "plaintext first: {lines:?}");
    assert_eq!(medians[1]["tls"], true, "{lines:?}");
    for v in medians {
        assert_eq!(v["measured"], true, "{v}");
        assert_eq!(v["failed"], false, "{v}");
        for key in ["lost", "duplicated", "reordered"] {
            assert_eq!(v[key], 0, "{key}: {v}");
        }
    }
    let comparison = lines.last().unwrap();
    assert_eq!(comparison["comparison"], "tls_vs_plain", "{comparison}");
    let ratio = &comparison["tls_over_plain"]["server_cpu_per_delivery"];
    assert!(ratio.as_f64().unwrap() > 0.0, "{comparison}");
}

#[test]
fn tls_is_refused_for_other_targets() {
    let out = Command::new(env!("CARGO_BIN_EXE_cluecast-bench"))
        .args(["fanout", "--target", "ceiling", "--tls", "--repeat", "1"])
        .output()
        .expect("running cluecast-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--tls is for the cluecast target only"),
        "{stderr}"
    );
}

#[test]
fn hunt_sends_positions_and_delivers_everything() {
    let v = median_of(
        "hunt",
        &["--subscribers", "100", "--topics", "4", "--duration", "2"],
    );
    let positions = v["hunt"]["positions_per_s"].as_f64().unwrap();
    // 100 players at 1 Hz over warm-up and window.
    assert!((50.0..=150.0).contains(&positions), "{v}");
}

#[test]
fn spike_reports_both_phases() {
    let v = median_of(
        "spike",
        &[
            "--subscribers",
            "40",
            "--topics",
            "2",
            "--rate",
            "20",
            "--duration",
            "3",
            "--spike-at",
            "1",
            "--spike-ramp-ms",
            "200",
            "--spike-hold",
            "1",
        ],
    );
    assert!(
        v["spike"]["steady_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    assert!(v["spike"]["spike_ms"]["p99"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn storm_brings_everyone_back_without_gaps() {
    let v = median_of(
        "storm",
        &[
            "--subscribers",
            "60",
            "--topics",
            "3",
            "--rate",
            "50",
            "--duration",
            "3",
            "--storm-at",
            "0.5",
            "--storm-subscribers",
            "30",
            "--storm-spread-ms",
            "300",
        ],
    );
    let storm = &v["storm"];
    assert_eq!(
        (&storm["dropped"], &storm["back"]),
        (&30.into(), &30.into()),
        "{v}"
    );
    assert_eq!(storm["gaps"], 0, "{v}");
    assert!(storm["caught_up_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert!(storm["catch_up_deliveries"].as_u64().unwrap() > 0, "{v}");
}

/// The storm over TLS: the subscribers that come back make new TLS
/// connections from inside the generator's loop, and resume.
#[test]
fn storm_over_tls_brings_everyone_back() {
    let v = median_of(
        "storm",
        &[
            "--subscribers",
            "40",
            "--topics",
            "2",
            "--rate",
            "50",
            "--duration",
            "3",
            "--storm-at",
            "0.5",
            "--storm-subscribers",
            "20",
            "--storm-spread-ms",
            "300",
            "--tls",
        ],
    );
    assert_eq!(v["tls"], true, "{v}");
    let storm = &v["storm"];
    assert_eq!(storm["back"], 20, "{v}");
    assert_eq!(storm["gaps"], 0, "{v}");
}

#[test]
fn conns_holds_every_connection_on_the_appliance() {
    let v = median_line(&[
        "conns",
        "--connections",
        "300",
        "--processes",
        "2",
        "--topics",
        "5",
        "--hold",
        "0",
    ]);
    assert_eq!(v["connections"], 300, "{v}");
    assert_eq!(v["failures"], 0, "{v}");
    assert!(v["rss_per_conn_bytes"].as_f64().is_some(), "{v}");
}

#[test]
fn durable_acks_carry_the_flag_their_mode_promises() {
    let load = ["--publishers", "2", "--window", "4", "--topics", "3"];
    let short = ["--duration", "1", "--warmup", "0.3", "--retries", "0"];
    let args: Vec<&str> = ["durable"].into_iter().chain(load).chain(short).collect();
    let medians = median_lines(&args);
    let modes: Vec<&str> = medians
        .iter()
        .map(|v| v["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["memory", "async", "sync"]);
    for v in &medians {
        assert_eq!(v["scenario"], "durable", "{v}");
        assert_eq!(
            (&v["measured"], &v["failed"]),
            (&true.into(), &false.into()),
            "{v}"
        );
        for key in ["flag_violations", "seq_errors", "unacked", "refused"] {
            assert_eq!(v[key], 0, "{key}: {v}");
        }
        assert!(v["acks_per_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{v}");
        let durable = if v["mode"] == "sync" { 1.0 } else { 0.0 };
        assert_eq!(v["durable_fraction"].as_f64(), Some(durable), "{v}");
        assert!(v["vs_memory"]["p99"].as_f64().unwrap() > 0.0, "{v}");
    }
    assert!(
        medians[1]["data_dir_bytes"].as_f64().unwrap() > 0.0,
        "async writes a log"
    );
    assert!(
        medians[0]["data_dir_bytes"].is_null(),
        "memory has no data dir"
    );

    // Open loop: what is offered is acked.
    let args: Vec<&str> = ["durable", "--modes", "sync", "--rate", "400"]
        .into_iter()
        .chain(load)
        .chain(short)
        .collect();
    let v = median_line(&args);
    assert_eq!(v["mode"], "sync", "{v}");
    let offered = v["offered_per_s"].as_f64().unwrap();
    assert!((360.0..=440.0).contains(&offered), "{v}");
    assert!(v["acks_per_s"].as_f64().unwrap() > 300.0, "{v}");
    assert_eq!(v["durable_fraction"].as_f64(), Some(1.0), "{v}");
}

#[test]
fn resume_from_disk_brings_every_client_exactly_up_to_date() {
    let v = median_line(&[
        "resume",
        "--clients",
        "300",
        "--processes",
        "2",
        "--behind",
        "150",
        "--topics",
        "3",
        "--live",
        "12",
        "--rate",
        "100",
        "--baseline",
        "1",
        "--timeout",
        "60",
    ]);
    assert_eq!(v["scenario"], "resume", "{v}");
    assert_eq!(v["durability"], "sync", "{v}");
    assert_eq!(
        (&v["measured"], &v["failed"]),
        (&true.into(), &false.into()),
        "{v}"
    );
    for key in ["connected", "resumed", "caught_up", "exact"] {
        assert_eq!(v[key], 300, "{key}: {v}");
    }
    for key in [
        "gaps",
        "duplicates",
        "not_recovered",
        "live_lost",
        "live_seq_errors",
    ] {
        assert_eq!(v[key], 0, "{key}: {v}");
    }
    assert!(v["caught_up_s"].as_f64().unwrap() > 0.0, "{v}");
    // Each client got at least its 150 events before catching up.
    assert!(v["catch_up_events"].as_u64().unwrap() >= 300 * 150, "{v}");
    assert!(v["live_baseline_ms"]["p99"].as_f64().unwrap() > 0.0, "{v}");
}
