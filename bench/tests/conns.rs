//! `cluecast-bench conns` end to end, against the bench's own trivial
//! server: driver, client processes, memory readings and the JSON report.

use std::process::Command;

/// The number after `"key":` in a JSON object line; None for null.
fn number(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let value = line[at..].split([',', '}']).next()?;
    value.parse().ok()
}

#[test]
fn conns_holds_every_connection_against_the_ceiling() {
    let out = Command::new(env!("CARGO_BIN_EXE_cluecast-bench"))
        .args(["conns", "--target", "ceiling", "--connections", "300"])
        .args(["--processes", "3", "--topics", "7", "--hold", "0"])
        .args(["--repeat", "1", "--json", "--no-pin"])
        .output()
        .expect("running cluecast-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let run = stdout.lines().next().expect("a JSON line per run");
    assert!(run.contains("\"scenario\":\"conns\""), "{run}");
    assert_eq!(number(run, "connections"), Some(300.0), "{run}");
    assert_eq!(number(run, "failures"), Some(0.0), "{run}");
    let per_conn = number(run, "rss_per_conn_bytes").expect("an RSS per connection");
    assert!(per_conn.is_finite(), "{run}");
    assert!(
        number(run, "connect_per_s").is_some_and(|r| r > 0.0),
        "{run}"
    );
    assert!(
        number(run, "server_fds").unwrap() - number(run, "server_fds_baseline").unwrap() >= 300.0,
        "{run}"
    );
}
