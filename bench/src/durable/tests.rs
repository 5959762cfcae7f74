//! The unit tests of `durable`.

use super::clients::Acked;
use super::reports::medians;
use super::*;

fn parse(words: &[&str]) -> Args {
    crate::cli::parse_flags("durable", words)
}

#[test]
fn durable_defaults_and_checks() {
    let a = parse(&[]);
    assert_eq!(a.modes, Durability::ALL.to_vec());
    assert_eq!(
        (a.publishers, a.window, a.topics, a.payload, a.rate),
        (8, 16, 8, 128, None)
    );
    assert_eq!((a.duration, a.runs.repeat), (10.0, 3));
    assert_eq!(check(&a), Ok(()));
    assert_eq!(
        parse(&["--modes", "sync,memory"]).modes,
        [Durability::Sync, Durability::Memory]
    );
    for bad in [
        &["--durability", "sync"][..],
        &["--server-arg=--durability=async"],
        &["--rate", "0"],
        &["--window", "0"],
        &["--repeat", "0"],
    ] {
        assert!(check(&parse(bad)).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn acked_sequences_are_checked_per_topic() {
    let mut a = Acked::default();
    for s in [3, 1, 2, 4] {
        a.see(7, s);
    }
    assert_eq!(a.errors(), 0);
    let mut a = Acked::default();
    for s in [1, 2, 2, 5] {
        a.see(7, s);
    }
    assert_eq!(a.errors(), 1 + 2, "a repeat and a gap of two");
    let mut a = Acked::default();
    a.see(7, 1);
    a.see(8, 2);
    assert_eq!(a.errors(), 1, "an epoch change");
}

fn run(mode: Durability, acks: f64, p99: f64) -> Run {
    Run {
        measured: true,
        acks_per_s: acks,
        latency: [p99 / 2.0, p99 / 1.5, p99, p99 * 2.0, p99 * 3.0],
        acked: 100,
        durable: if mode == Durability::Sync { 100 } else { 0 },
        ..Run::new(mode)
    }
}

#[test]
fn medians_and_ratios_to_memory_by_round() {
    let args = parse(&["--modes", "memory,sync"]);
    let runs = [
        run(Durability::Memory, 100.0, 1.0),
        run(Durability::Sync, 50.0, 4.0),
        run(Durability::Memory, 200.0, 2.0),
        run(Durability::Sync, 50.0, 4.0),
        run(Durability::Memory, 100.0, 1.0),
        run(Durability::Sync, 20.0, 3.0),
    ];
    let m = medians(&args, &runs);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].vs_memory, [1.0, 1.0]);
    assert_eq!(m[1].run.acks_per_s, 50.0);
    // Ratios 0.5, 0.25, 0.2 → 0.25; p99 4, 2, 3 → 3.
    assert_eq!(m[1].vs_memory, [0.25, 3.0]);
    assert_eq!(m[1].run.durable_fraction(), 1.0);
    let json = json_report(&args, &runs);
    assert_eq!(json.lines().count(), 8);
    let last = json.lines().last().unwrap();
    crate::report::assert_has_keys(
        last,
        &[
            "\"scenario\":\"durable\"",
            "\"mode\":\"sync\"",
            "\"run\":\"median\"",
            "\"acks_per_s\":50,",
            "\"durable_fraction\":1,",
            "\"flag_violations\":0,",
            "\"vs_memory\":{\"acks_per_s\":0.25,\"p99\":3}",
        ],
    );
    let md = markdown_report(&args, &procfs::host(), &runs);
    assert!(md.contains("| sync | 50 | 0.25× | 4.000 | 3.00× |"), "{md}");
}

#[test]
fn a_wrong_durable_flag_fails_the_run() {
    let o = Outcome {
        window_secs: 1.0,
        window_acks: 10,
        lat_count: 10,
        acked: 10,
        durable: 9,
        ..Outcome::default()
    };
    let w = child::Window {
        wall_secs: 1.0,
        ..child::Window::default()
    };
    let mut r = Run::new(Durability::Sync);
    fill_figures(&mut r, &o, &w);
    assert!(r.failed && r.flag_violations == 1, "{r:?}");
    let mut r = Run::new(Durability::Async);
    fill_figures(&mut r, &o, &w);
    assert_eq!(r.flag_violations, 9);
    let mut r = Run::new(Durability::Memory);
    fill_figures(&mut r, &Outcome { durable: 0, ..o }, &w);
    assert!(!r.failed && r.measured, "{r:?}");
}
