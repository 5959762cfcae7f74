//! The unit tests of `fanout`.

use cluecast_proto::Limits;

use super::driver::server_args;
use super::reports::json_run;
use super::vs_plain::{cpu_us_per_delivery, Pairs};
use super::*;

fn run(p99: f64, lost: u64) -> Run {
    Run {
        measured: true,
        latency: [0.1, 0.2, p99, 2.0 * p99, 2.5 * p99, 3.0 * p99],
        lost,
        server_rss_bytes: 100.0,
        ..Run::default()
    }
}

#[test]
fn median_row_takes_each_column_apart() {
    let runs = [run(1.0, 0), run(3.0, 5), run(2.0, 1), Run::default()];
    let m = median_run(&runs);
    assert!(m.measured);
    assert_eq!(m.latency[2], 2.0, "unmeasured runs are left out");
    assert_eq!(m.latency[5], 6.0);
    assert_eq!(m.lost, 1);
    assert!(!median_run(&[Run::default()]).measured);
}

#[test]
fn disturbance_is_the_busier_core_and_ignores_failures() {
    assert_eq!(Run::default().disturbance(), f64::INFINITY, "no figures");
    let mut r = run(1.0, 0);
    r.foreign_server_pct = 12.0;
    r.foreign_client_pct = f64::NAN;
    assert_eq!(r.disturbance(), 0.12);
    r.failed = true;
    r.lost = 7;
    assert_eq!(r.disturbance(), 0.12, "a failure is reported, not redone");
}

/// Args as parsed from a command line (defaults for the rest).
fn parse(words: &[&str]) -> Args {
    crate::cli::parse_flags("fanout", words)
}

#[test]
fn tls_is_for_the_appliance_started_here() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }
    assert!(
        Cli::try_parse_from(["fanout", "--vs-plain"]).is_err(),
        "--vs-plain needs --tls"
    );
    let a = parse(&["--tls", "--vs-plain"]);
    assert!(a.tls && a.vs_plain && a.tls_ca.is_none());
    let err = main(&parse(&["--tls", "--target", "redis"])).unwrap_err();
    assert!(err.contains("cluecast target only"), "{err}");
    let err = main(&parse(&["--tls", "--server", "127.0.0.1:9"])).unwrap_err();
    assert!(err.contains("not --server"), "{err}");
    let side = with_tls(&a, false);
    assert!(!side.tls && !side.vs_plain);
    assert!(
        !json_case(&side).contains("tls"),
        "plaintext JSON as before"
    );
    assert!(json_case(&with_tls(&a, true)).ends_with(",\"tls\":true"));
}

#[test]
fn tls_pairs_compare_cpu_per_delivery_round_by_round() {
    let at = |cpu: f64, core: f64, deliveries: f64| Run {
        server_cpu_pct: cpu,
        server_core_pct: core,
        deliveries_per_s: deliveries,
        ..run(1.0, 0)
    };
    // 100k/s at 50% is 5 µs a delivery.
    assert!((cpu_us_per_delivery(&at(50.0, 60.0, 100_000.0)) - 5.0).abs() < 1e-9);
    let plain = [at(50.0, 60.0, 100_000.0), at(40.0, 50.0, 100_000.0)];
    let mut bound = at(90.0, 95.0, 100_000.0);
    bound.generator_bound = true;
    let tls = [at(100.0, 110.0, 100_000.0), bound];
    let pairs = Pairs::of(&plain, &tls);
    assert_eq!(
        pairs.cpu,
        [2.0],
        "the pair with a generator-bound run is left out"
    );
    assert!(!pairs.generator_bound);
    let md = comparison_markdown(&parse(&["--tls", "--vs-plain"]), &plain, &tls);
    assert!(md.contains("| **server CPU per delivery, µs** |"), "{md}");
    assert!(md.contains("round by round: 2.00."), "{md}");
    let json = comparison_json(&parse(&["--tls", "--vs-plain"]), &plain, &tls);
    assert!(json.contains("\"comparison\":\"tls_vs_plain\""), "{json}");
    assert!(json.contains("\"server_cpu_per_delivery\":2,"), "{json}");
    assert!(!json.contains("\"run\""), "not a median line: {json}");
}

#[test]
fn defaults_fit_a_two_core_host() {
    let a = parse(&[]);
    assert_eq!(
        (a.subscribers, a.topics, a.publishers, a.rate, a.payload),
        (2000, 20, 1, 50.0, 256)
    );
    assert_eq!((a.duration, a.runs.repeat, a.shards), (10.0, 3, 1));
    assert_eq!((a.common.server_cpu, a.common.client_cpu), (0, 1));
    assert_eq!(a.common.role, Role::Driver);
    assert_eq!(parse(&["--role", "clients"]).common.role, Role::Subscribers);
}

#[test]
fn json_object_has_the_agreed_keys() {
    let args = parse(&["--json"]);
    let mut r = run(1.5, 2);
    r.server_cpu_pct = f64::NAN;
    let line = json_run(&args, "1", &r, &["a \"b\"".to_string()]);
    crate::report::assert_has_keys(
        &line,
        &[
            "\"scenario\":\"fanout\"",
            "\"target\":\"cluecast\"",
            "\"run\":1,",
            "\"offered_per_s\":",
            "\"deliveries_per_s\":",
            "\"latency_ms\":{\"p50\":0.1,\"p90\":0.2,\"p99\":1.5,\"p999\":3,\"p9999\":3.75,\
             \"max\":4.5}",
            "\"lost\":2,",
            "\"duplicated\":0,",
            "\"reordered\":0,",
            "\"server_rss_bytes\":100,",
            "\"server_cpu_pct\":null,",
            "\"generator_cpu_pct\":",
            "\"problems\":[\"a \\\"b\\\"\"]",
        ],
    );
    assert!(line.ends_with("}\n"));
    let ceiling = json_run(&parse(&["--target", "ceiling"]), "1", &r, &[]);
    assert!(ceiling.contains("\"target\":\"ceiling\""));
    let report = json_report(&args, &[r.clone(), r]);
    crate::report::assert_runs_then_median(&report, 3);
}

#[test]
fn scenario_times_are_checked_against_the_window() {
    let args = parse(&["--duration", "10", "--warmup", "1"]);
    let spike = SpikeFlags {
        spike_at: 3.0,
        spike_factor: 10.0,
        spike_ramp_ms: 500,
        spike_hold: 3.0,
    };
    match Shape::Spike(spike).scenario(&args).unwrap() {
        Scenario::Spike { at, ramp, hold, .. } => {
            assert_eq!(
                at,
                Duration::from_secs(4),
                "window times start after warm-up"
            );
            assert_eq!(
                (ramp, hold),
                (Duration::from_millis(500), Duration::from_secs(3))
            );
        }
        other => panic!("{other:?}"),
    }
    let late = SpikeFlags {
        spike_at: 8.0,
        ..spike
    };
    assert!(
        Shape::Spike(late).scenario(&args).is_err(),
        "ends past the window"
    );
    let storm = StormFlags {
        storm_at: 3.0,
        storm_subscribers: 5000,
        storm_spread_ms: 1000,
        attack: AttackFlags::default(),
    };
    let err = Shape::Storm(storm).scenario(&args).unwrap_err();
    assert!(err.contains("--storm-subscribers"), "{err}");
    assert_eq!(
        Shape::Hunt(HuntFlags { position_hz: 1.0 }).flags(),
        ["--position-hz", "1"]
    );
}

#[test]
fn hunt_defaults_are_the_original_systems_job() {
    let a: HuntArgs = crate::cli::parse_flags("hunt", &[]);
    assert_eq!(
        (
            a.load.subscribers,
            a.load.topics,
            a.load.rate,
            a.load.payload
        ),
        (2500, 10, 2.0, 512)
    );
    assert_eq!(a.hunt.position_hz, 1.0);
}

#[test]
fn generator_bound_runs_are_reported_not_counted() {
    let mut bound = run(50.0, 0);
    bound.generator_bound = true;
    let m = median_run(&[run(1.0, 0), bound, run(3.0, 0)]);
    assert_eq!(m.latency[2], 2.0);
    let only_bound = median_run(&[bound_only()]);
    assert!(
        only_bound.measured && only_bound.generator_bound,
        "shown, and said so"
    );
    assert!(!median_run(&[Run::default()]).measured);
    fn bound_only() -> Run {
        Run {
            generator_bound: true,
            ..run(1.0, 0)
        }
    }
}

#[test]
fn spike_json_carries_both_phases() {
    let mut args = parse(&[]);
    args.shape = Shape::Spike(SpikeFlags {
        spike_at: 3.0,
        spike_factor: 10.0,
        spike_ramp_ms: 500,
        spike_hold: 3.0,
    });
    let mut r = run(1.0, 0);
    r.steady = [0.5, 0.7];
    r.phase = [0.2, 1.5, 2.0, 3.0];
    let line = json_run(&args, "1", &r, &[]);
    assert!(line.starts_with("{\"scenario\":\"spike\""), "{line}");
    assert!(
        line.contains("\"steady_ms\":{\"p99\":0.5,\"p999\":0.7}"),
        "{line}"
    );
    assert!(
        line.contains("\"spike_ms\":{\"p50\":0.2,\"p99\":1.5"),
        "{line}"
    );
}

#[test]
fn server_args_raise_the_payload_limit_only_when_needed() {
    let mut args = parse(&["--shards", "2", "--server-arg", "--heartbeat-ms=1000"]);
    assert_eq!(
        server_args(&args, None).join(" "),
        "run --shards 2 --listen 127.0.0.1:0 --heartbeat-ms=1000"
    );
    args.payload = Limits::DEFAULT.payload_bytes_max as usize + 1;
    assert!(server_args(&args, None)
        .join(" ")
        .contains(&format!("--payload-bytes-max {}", args.payload)));
    let tls = (Path::new("/d/c.pem"), Path::new("/d/k.pem"));
    assert!(server_args(&args, Some(tls))
        .join(" ")
        .ends_with("--tls-cert /d/c.pem --tls-key /d/k.pem --heartbeat-ms=1000"));
}
