//! The unit tests of `resume`.

use super::driver::{fill_figures, server_args};
use super::reports::json_run;
use super::*;

fn parse(words: &[&str]) -> Args {
    crate::cli::parse_flags("resume", words)
}

#[test]
fn resume_defaults_and_checks() {
    let a = parse(&[]);
    assert_eq!(
        (
            a.clients,
            a.behind,
            a.topics,
            a.live,
            a.rate,
            a.history_events_max
        ),
        (10_000, 1000, 10, 200, 20.0, 64)
    );
    assert_eq!(
        (a.preload(), a.process_count(), a.durability()),
        (1000, 1, Durability::Sync)
    );
    assert_eq!(check(&a), Ok(()));
    assert_eq!(parse(&["--clients", "19500"]).process_count(), 2);
    assert_eq!(
        parse(&["--durability", "async"]).durability(),
        Durability::Async
    );
    for bad in [
        &["--clients", "0"][..],
        &["--topics", "65"],
        &["--preload", "10"],
        &["--rate", "0"],
        &["--timeout", "0"],
        &["--clients", "3", "--processes", "4"],
    ] {
        assert!(check(&parse(bad)).is_err(), "{bad:?} accepted");
    }
    assert_eq!(
        server_args(&parse(&[])).join(" "),
        "run --shards 1 --listen 127.0.0.1:0 --history-events-max 64"
    );
    assert_eq!(
        server_args(&parse(&["--server-arg=--history-events-max=8"])).join(" "),
        "run --shards 1 --listen 127.0.0.1:0 --history-events-max=8"
    );
    assert_eq!(shares(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
}

#[test]
fn order_counts_gaps_and_repeats_and_knows_exact() {
    let mut o = Order::starting_after(10);
    for s in 11..=15 {
        o.see(s);
    }
    assert!(o.exact(10, 15));
    assert!(!o.exact(10, 16), "one missing at the end");
    o.see(15);
    assert_eq!(o.duplicates, 1);
    assert!(!o.exact(10, 15));
    let mut o = Order::starting_after(0);
    o.see(1);
    o.see(4);
    assert_eq!((o.gaps, o.next), (2, 5));
}

#[test]
fn figures_fail_a_run_that_is_not_whole() {
    let args = parse(&["--clients", "4"]);
    let live = LiveOutcome {
        base_count: 10,
        storm_count: 10,
        base_p99: 2_000_000,
        storm_p99: 6_000_000,
        ..LiveOutcome::default()
    };
    let share = ResumeOutcome {
        connected: 2,
        resumed: 2,
        caught_up: 2,
        exact: 2,
        catch_up_events: 2000,
        first_resume_ns: 1_000_000_000,
        last_caught_up_ns: 3_000_000_000,
        ..ResumeOutcome::default()
    };
    let mut run = Run::default();
    fill_figures(&args, &mut run, &live, &[share.clone(), share.clone()]);
    assert!(run.measured && !run.failed, "{run:?}");
    assert_eq!((run.catch_up_secs, run.resume_events_per_s), (2.0, 2000.0));
    assert_eq!(run.storm[2] / run.base[2], 3.0);
    let line = json_run(&args, "1", &run);
    assert!(line.contains("\"storm_vs_baseline_p99\":3,"), "{line}");
    assert!(line.contains("\"caught_up_s\":2,"), "{line}");
    let mut run = Run::default();
    let short = ResumeOutcome {
        exact: 1,
        duplicates: 1,
        ..share.clone()
    };
    fill_figures(&args, &mut run, &live, &[share, short]);
    assert!(run.failed, "{run:?}");
    assert!(
        run.problems
            .iter()
            .any(|p| p.contains("3 of 4 clients ended")),
        "{run:?}"
    );
}
