//! Start-up and admission: what the operator and clients are told when
//! something is off — a wrong flag, a blocked io_uring, a full appliance.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use cluecast_proto::{Frame, GoAwayReason};
use common::{RawClient, Server, BIN};

#[test]
fn a_wrong_flag_or_setting_is_refused_with_a_clear_line() {
    let out = Command::new(BIN)
        .args(["run", "--shards", "zero"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shards"), "{err}");

    let err = refused_start(&["run", "--queue-bytes-max", "100", "--listen", "127.0.0.1:0"]);
    assert!(
        err.contains("--queue-bytes-max must hold one whole frame"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("cluecast-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bad.toml");
    std::fs::write(&config, "heartbeat_ms = \"soon\"\n").unwrap();
    let err = refused_start(&["run", "--config", config.to_str().unwrap()]);
    assert!(
        err.contains("bad.toml") && err.contains("heartbeat_ms"),
        "{err}"
    );
}

#[test]
fn an_address_it_cannot_listen_on_is_reported() {
    // 192.0.2.1 (TEST-NET-1) is on no interface here: bind fails at once.
    let err = refused_start(&[
        "run",
        "--listen",
        "192.0.2.1:7400",
        "--insecure-no-auth",
        "--admin-listen",
        "off",
    ]);
    assert!(err.contains("cannot listen on 192.0.2.1:7400"), "{err}");
}

/// Runs `cluecast run` with io_uring_setup refused by a seccomp filter, as a
/// container runtime or systemd's SystemCallFilter would.
#[test]
fn blocked_io_uring_gives_one_actionable_line_and_a_failure_exit() {
    let mut command = Command::new(BIN);
    command.args(["run", "--listen", "127.0.0.1:0", "--shards", "1"]);
    command.args(["--admin-listen", "off"]);
    // SAFETY: only async-signal-safe prctl calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            const NR_IO_URING_SETUP: u32 = 425;
            let filter = [
                // Load the syscall number.
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                // io_uring_setup? then fail it with EPERM, else allow.
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 1,
                    k: NR_IO_URING_SETUP,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: 0x0005_0000 | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: 0x7fff_0000,
                },
            ];
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, 2, &program as *const libc::sock_fprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("cluecast:"))
        .expect("an error line");
    assert!(
        line.contains("io_uring_setup") && line.contains("seccomp"),
        "{err}"
    );
}

#[test]
fn past_capacity_a_client_gets_goaway_with_a_jittered_retry_hint() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--connections-max",
        "3",
        "--retry-after-ms",
        "500",
    ]);
    let mut admitted: Vec<RawClient> = (0..3).map(|_| RawClient::open(server.addr)).collect();
    // A storm: 300 clients at once, past capacity, each told to come back
    // later (none is just cut off), at spread-out times.
    let mut refused: Vec<RawClient> = (0..300).map(|_| RawClient::connect(server.addr)).collect();
    let mut hints = Vec::new();
    for client in &mut refused {
        let hint = client
            .recv(|f| match f {
                Frame::GoAway(g) => {
                    assert_eq!(g.reason, GoAwayReason::ServerFull);
                    g.retry_after_ms
                }
                other => panic!("expected GOAWAY, got {other:?}"),
            })
            .expect("closed without GOAWAY");
        assert!(
            (500..=1000).contains(&hint),
            "retry hint {hint} ms outside 500..=1000"
        );
        hints.push(hint);
        assert!(client.closed_within(Duration::from_secs(5)));
    }
    hints.sort_unstable();
    hints.dedup();
    assert!(
        hints.len() >= 20,
        "only {} distinct retry hints",
        hints.len()
    );
    // The admitted ones are untouched, and a freed slot admits a newcomer.
    admitted[0].send(&Frame::Ping { nonce: 9 });
    admitted[0].expect(|f| matches!(f, Frame::Pong { nonce: 9 }));
    drop(admitted.pop());
    std::thread::sleep(Duration::from_millis(200));
    let _newcomer = RawClient::open(server.addr);
    // Jitter: three refusals in a row are not all told the same moment.
    assert!(
        hints.iter().any(|&h| h != hints[0]),
        "no jitter in {hints:?}"
    );
}

#[test]
fn listening_beyond_loopback_without_keys_is_refused_with_the_way_out() {
    let err = refused_start(&["run", "--listen", "0.0.0.0:7400"]);
    assert!(
        err.contains("--auth-keys FILE") && err.contains("--insecure-no-auth"),
        "{err}"
    );
}

/// Runs `cluecast` with `args`, expects exit code 1, returns its stderr.
fn refused_start(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn json_logs_are_one_object_per_line_with_level_component_and_message() {
    let server = Server::start(&["--log-format", "json", "--durability", "memory"]);
    assert!(!server.startup_log.is_empty());
    for line in &server.startup_log {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["ts_ns"].as_u64().is_some(), "{line}");
        assert!(
            ["error", "warn", "info", "debug"].contains(&v["level"].as_str().unwrap()),
            "{line}"
        );
        assert_eq!(v["component"], "cluecast", "{line}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{line}");
    }
    assert!(
        server
            .startup_log
            .iter()
            .any(|l| l.contains(r#""msg":"placement: steering"#)),
        "{:#?}",
        server.startup_log
    );
}
