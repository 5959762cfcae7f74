//! The CLI: `cluecast topic close` closes a topic and prints its last
//! sequence, and `cluecast sub` ends when the topic it follows is closed.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use super::*;

/// Runs the CLI to completion.
fn cli(args: &[&str]) -> std::process::Output {
    Command::new(common::BIN).args(args).output().unwrap()
}

#[test]
fn the_cli_closes_a_topic() {
    let server = Server::start(&["--shards", "2"]);
    let addr = server.addr.to_string();
    for i in 1..=3 {
        let out = cli(&["pub", "--server", &addr, "hunt-cli", &format!("clue {i}")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{i}\n"));
    }
    let mut sub = Command::new(common::BIN)
        .args(["sub", "--server", &addr, "hunt-cli", "--from", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut stderr = sub.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match lines.recv_timeout(FRAME_WAIT) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = sub.kill();
                panic!("sub printed only {seen:?}");
            }
        }
    }

    let out = cli(&["topic", "close", "--server", &addr, "hunt-cli"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "3\n");

    let deadline = Instant::now() + FRAME_WAIT;
    let status = loop {
        if let Some(status) = sub.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = sub.kill();
            let _ = sub.wait();
            panic!("sub did not exit after the close");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "sub: {status:?}: {stderr}");
    assert!(
        stderr.contains("cluecast: the topic was closed after sequence 3"),
        "{stderr:?}"
    );
    seen.extend(lines.try_iter());
    assert_eq!(seen, ["1\tclue 1", "2\tclue 2", "3\tclue 3"]);

    // Closing it again: nothing left, last sequence 0.
    let out = cli(&["topic", "close", "--server", &addr, "hunt-cli"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "0\n");
}
