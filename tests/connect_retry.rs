//! `cluecast pub` and `sub` against an appliance that refuses them for a
//! while: one shard with room for one connection, held by an idle client
//! that has said HELLO. They wait out the GOAWAY ServerFull (one stderr line
//! per retry) and go on once the slot is free; `--retry-for` bounds the wait.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cluecast_proto::{Frame, GoAwayReason, Hello, Publish};
use common::{RawClient, Server, BIN};

/// The appliance's retry hint: 200 ms, jittered by it up to 400 ms.
const RETRY_AFTER_MS: u64 = 200;
/// How long the slot stays held while a command waits.
const HOLD: Duration = Duration::from_millis(1_500);

fn full_server() -> (Server, RawClient) {
    let retry_after = RETRY_AFTER_MS.to_string();
    let server = Server::start(&[
        "--shards",
        "1",
        "--connections-max",
        "1",
        "--retry-after-ms",
        &retry_after,
        "--durability",
        "memory",
    ]);
    let holder = RawClient::open(server.addr);
    assert_refused(&server);
    (server, holder)
}

/// The slot is taken: a newcomer's HELLO gets GOAWAY ServerFull.
fn assert_refused(server: &Server) {
    let mut newcomer = RawClient::connect(server.addr);
    newcomer.send(&Frame::Hello(Hello {
        version_min: 1,
        version_max: 1,
        client_id: b"newcomer",
        token: b"",
    }));
    newcomer.expect(|f| matches!(f, Frame::GoAway(g) if g.reason == GoAwayReason::ServerFull));
    assert!(newcomer.closed_within(Duration::from_secs(5)));
}

fn spawn(server: &Server, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .args(["--server", &server.addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Its output once it exits; fails the test (and kills it) after 20 s.
fn finish(mut child: Child) -> (Output, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{:?}", child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

/// Checks that every line of `stderr` before `last_lines_other` is one retry
/// after ServerFull, numbered from attempt 2, with the appliance's hint as
/// the delay; returns how many there were.
fn retry_lines(stderr: &str, last_lines_other: usize) -> usize {
    let lines: Vec<&str> = stderr.lines().collect();
    let retries = &lines[..lines.len() - last_lines_other];
    for (attempt, line) in (2..).zip(retries) {
        let delay_ms: u64 = line
            .strip_prefix("cluecast: server full (GOAWAY ServerFull); retrying in ")
            .and_then(|rest| rest.strip_suffix(&format!(" ms (attempt {attempt})")))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("not retry line {attempt}: {line:?}\n{stderr}"));
        assert!(
            (RETRY_AFTER_MS..=2 * RETRY_AFTER_MS).contains(&delay_ms),
            "{line}"
        );
    }
    retries.len()
}

#[test]
fn pub_waits_out_a_full_server_and_gives_up_only_at_its_deadline() {
    let (server, holder) = full_server();
    let publish = spawn(&server, &["pub", "--retry-for", "10s", "hunt-r", "clue 1"]);
    std::thread::sleep(HOLD);
    drop(holder);
    let (out, err) = finish(publish);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    assert!(retry_lines(&err, 0) >= 2, "{err}");

    // --retry-for 0: the refusal is the answer.
    let holder = RawClient::open(server.addr);
    let started = Instant::now();
    let (out, err) = finish(spawn(&server, &["pub", "--retry-for", "0", "hunt-r", "x"]));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        err.trim_end()
            .strip_prefix(&format!(
                "cluecast: {}: server full (GOAWAY ServerFull, retry after ",
                server.addr
            ))
            .map(|rest| rest.ends_with(" ms)")),
        Some(true),
        "{err}"
    );

    // A deadline shorter than the refusals: retries, then gives up at it.
    let started = Instant::now();
    let (out, err) = finish(spawn(&server, &["pub", "--retry-for", "1s", "hunt-r", "x"]));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(retry_lines(&err, 1) >= 1, "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("server full (GOAWAY ServerFull, retry after ")
            && last.contains("; gave up after ")
            && last.ends_with(" ms"),
        "{last}"
    );

    // The refused commands published nothing: the next event is number 2.
    drop(holder);
    let (out, err) = finish(spawn(
        &server,
        &["pub", "--retry-for", "10s", "hunt-r", "clue 2"],
    ));
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n");
}

#[test]
fn sub_waits_out_a_full_server_at_its_first_connect() {
    let (server, mut holder) = full_server();
    holder.send(&Frame::Publish(Publish {
        request_id: 1,
        topic: b"hunt-s",
        payload: b"first clue",
    }));
    holder.expect(|f| matches!(f, Frame::PublishAck(a) if a.status == 0 && a.seq == 1));
    let subscribe = spawn(
        &server,
        &[
            "sub",
            "hunt-s",
            "--from",
            "1",
            "--count",
            "1",
            "--retry-for",
            "10s",
        ],
    );
    std::thread::sleep(HOLD);
    drop(holder);
    let (out, err) = finish(subscribe);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\tfirst clue\n");
    assert!(retry_lines(&err, 0) >= 2, "{err}");
}
