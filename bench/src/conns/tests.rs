//! The unit tests of `conns`.

use super::reports::{json_run, median_run};
use super::*;

/// Args as parsed from a command line (defaults for the rest).
fn parse(words: &[&str]) -> Args {
    crate::cli::parse_flags("conns", words)
}

#[test]
fn conns_shares_spread_the_remainder_over_the_first_processes() {
    assert_eq!(
        shares(19_500, 4),
        vec![(0, 4875), (4875, 4875), (9750, 4875), (14_625, 4875)]
    );
    assert_eq!(shares(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
    assert_eq!(shares(5, 5), vec![(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]);
    assert_eq!(shares(7, 1), vec![(0, 7)]);
    for (n, k) in [(19_500, 7), (300, 3), (65, 64)] {
        let s = shares(n, k);
        assert_eq!(s.iter().map(|&(_, c)| c).sum::<usize>(), n);
        assert!(
            s.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0),
            "contiguous"
        );
        let counts = s.iter().map(|&(_, c)| c);
        assert!(counts.clone().max().unwrap() - counts.min().unwrap() <= 1);
    }
}

#[test]
fn conns_per_connection_figures() {
    let mut r = Run::default();
    r.baseline.rss_bytes = 4.0 * 1048576.0;
    r.loaded.rss_bytes = 4.0 * 1048576.0 + 1000.0 * 512.0;
    r.baseline.anon_bytes = 1048576.0;
    r.loaded.anon_bytes = 1048576.0 + 1000.0 * 256.0;
    r.figures(1000, 0.5);
    assert_eq!(r.rss_per_conn, 512.0);
    assert_eq!(r.loaded_per_conn, (4.0 * 1048576.0) / 1000.0 + 512.0);
    assert_eq!(r.anon_per_conn, 256.0);
    assert_eq!(r.connect_per_s, 2000.0);
    // Nothing held, or no time measured: no figure rather than a bogus one.
    r.figures(0, 0.5);
    assert!(r.rss_per_conn.is_nan() && r.loaded_per_conn.is_nan());
    r.figures(1000, f64::NAN);
    assert!(r.connect_per_s.is_nan());
    // An unread baseline leaves the difference unknown.
    let mut r = Run::default();
    r.loaded.rss_bytes = 1e6;
    r.figures(10, 1.0);
    assert!(r.rss_per_conn.is_nan());
    assert_eq!(r.loaded_per_conn, 1e5);
}

#[test]
fn conns_median_row_and_json_keys() {
    let mut a = Run::default();
    a.baseline.rss_bytes = 1000.0;
    a.loaded.rss_bytes = 3000.0;
    a.figures(10, 1.0);
    let mut b = a.clone();
    b.loaded.rss_bytes = 5000.0;
    b.figures(10, 2.0);
    let m = median_run(&[a.clone(), b, Run::default()]);
    assert_eq!(m.connections, 10, "runs that held nothing are left out");
    assert_eq!(m.rss_per_conn, 300.0);
    assert_eq!(m.connect_per_s, 7.5);
    let args = parse(&["--json", "--target", "ceiling"]);
    let line = json_run(&args, "1", &a);
    crate::report::assert_has_keys(
        &line,
        &[
            "\"scenario\":\"conns\"",
            "\"target\":\"ceiling\"",
            "\"run\":1,",
            "\"connections\":10,",
            "\"connect_per_s\":10,",
            "\"server_rss_bytes\":3000,",
            "\"server_rss_baseline_bytes\":1000,",
            "\"rss_per_conn_bytes\":200,",
            "\"failures\":0,",
            "\"problems\":[]",
        ],
    );
    let report = json_report(&args, &[a]);
    crate::report::assert_runs_then_median(&report, 2);
}

#[test]
fn conns_flags_are_checked() {
    assert_eq!(check(&parse(&[])), Ok(()));
    let a = parse(&[]);
    assert_eq!(
        (
            a.connections,
            a.processes,
            a.topics,
            a.hold_secs,
            a.runs.repeat
        ),
        (19_500, 4, 100, 3.0, 3)
    );
    for bad in [
        &["--connections", "0"][..],
        &["--topics", "0"],
        &["--processes", "0"],
        &["--processes", "65"],
        &["--connections", "3", "--processes", "4"],
        &["--connections", "50", "--processes", "1"],
        &["--hold=-1"],
        &["--hold", "61"],
        &["--repeat", "0"],
    ] {
        assert!(check(&parse(bad)).is_err(), "{bad:?} accepted");
    }
    // A client process's share may be smaller than --processes.
    assert_eq!(
        check(&parse(&["--role", "clients", "--connections", "1"])),
        Ok(())
    );
    assert!(fits_open_files(4875, 20_000).is_ok());
    let why = fits_open_files(19_500, 10_000).unwrap_err();
    assert!(why.contains("--processes"), "{why}");
    assert!(fits_open_files(19_936, 20_000).is_ok());
    assert!(fits_open_files(19_937, 20_000).is_err());
}

#[test]
fn conns_server_args_make_room_for_every_connection() {
    assert_eq!(
        server_args(&parse(&["--connections", "500"])).join(" "),
        "run --shards 1 --listen 127.0.0.1:0 --connections-max 500"
    );
    let own = parse(&["--server-arg", "--connections-max=100"]);
    assert_eq!(
        server_args(&own).join(" "),
        "run --shards 1 --listen 127.0.0.1:0 --connections-max=100"
    );
}
