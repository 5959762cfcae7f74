//! Supervision by a service manager, played by the test over a real unix
//! datagram socket: readiness, watchdog pings and the stop notice of a real
//! appliance (tests/systemd.rs checks the unit files).

mod common;

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use cluecast_proto::StartMode;
use common::{RawClient, Server, TempDir, BIN};

/// Enough connections that SO_REUSEPORT puts some on each of 2 shards
/// (all on one: probability 2^-15).
const CLIENTS: usize = 16;
const WATCHDOG_USEC: &str = "300000";
const DRAIN_TIMEOUT_MS: u64 = 2000;

fn next_message(manager: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = manager
        .recv(&mut buf)
        .expect("a notification from cluecast in time");
    String::from_utf8(buf[..n].to_vec()).expect("notifications are UTF-8")
}

/// The next message that is not a watchdog ping.
fn next_notice(manager: &UnixDatagram) -> String {
    loop {
        let message = next_message(manager);
        if message != "WATCHDOG=1" {
            return message;
        }
    }
}

/// The test as the service manager: the socket it listens on.
struct Supervisor {
    socket: UnixDatagram,
    _dir: TempDir,
}

/// An appliance started with a notify socket and a watchdog interval.
fn start_supervised(args: &[&str]) -> (Supervisor, Server) {
    let dir = TempDir::new("notify");
    let socket_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let server = Server::start_with_env(
        &[
            ("NOTIFY_SOCKET", socket_path.as_os_str()),
            ("WATCHDOG_USEC", OsStr::new(WATCHDOG_USEC)),
        ],
        args,
    );
    (Supervisor { socket, _dir: dir }, server)
}

#[test]
fn ready_once_every_shard_serves_pings_while_alive_and_stopping_on_sigterm() {
    let drain = DRAIN_TIMEOUT_MS.to_string();
    let (supervisor, mut server) =
        start_supervised(&["--shards", "2", "--drain-timeout-ms", &drain]);
    let manager = &supervisor.socket;

    let ready = next_message(manager);
    assert_eq!(
        ready,
        format!(
            "READY=1\nSTATUS=serving {} with 2 shard(s), durability sync",
            server.addr
        )
    );
    // Straight after READY, clients on every shard get their subscription:
    // half connect from each CPU, and steering hands each half to the shard
    // on that CPU.
    let addr = server.addr;
    let openers: Vec<_> = (0..2)
        .map(|cpu| {
            std::thread::spawn(move || {
                cluecast_sys::pin_current_thread(cpu).unwrap();
                (0..CLIENTS / 2)
                    .map(|_| {
                        let mut client = RawClient::open(addr);
                        client.subscribe("hunt-ready", StartMode::Live, 0, 0);
                        client
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let clients: Vec<RawClient> = openers
        .into_iter()
        .flat_map(|opener| opener.join().unwrap())
        .collect();

    // Pings every 150 ms (half the interval) while both shards turn.
    let window = Duration::from_millis(1200);
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < window {
        assert_eq!(next_message(manager), "WATCHDOG=1");
        pings += 1;
    }
    assert!(pings >= 4, "{pings} watchdog pings in {window:?}");

    server.signal(libc::SIGTERM);
    assert_eq!(
        next_notice(manager),
        "STOPPING=1\nSTATUS=draining: clients told to go away"
    );
    // The drain deadline, the shards' 1 s grace and 5 s for the rest.
    let stop_us = (DRAIN_TIMEOUT_MS + 1000 + 5000) * 1000;
    assert_eq!(
        next_notice(manager),
        format!("EXTEND_TIMEOUT_USEC={stop_us}")
    );
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    drop(clients);

    // Every shard accepted some of the clients subscribed after READY.
    let log = server.log_lines();
    for shard in 0..2 {
        let prefix = format!("shard {shard} stopped: ShardStats {{ accepted: ");
        let accepted: u64 = log
            .iter()
            .find_map(|line| line.split(prefix.as_str()).nth(1))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no stats of shard {shard} in {log:#?}"));
        assert!(accepted > 0, "shard {shard} accepted no client: {log:#?}");
    }
}

/// The thread id of the appliance's thread named `name`.
fn thread_id(pid: u32, name: &str) -> i32 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .map(|t| t.unwrap().path())
        .find(|t| std::fs::read_to_string(t.join("comm")).unwrap().trim() == name)
        .and_then(|t| t.file_name()?.to_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no thread {name} in process {pid}"))
}

/// Ping count over `window`.
fn pings_within(manager: &UnixDatagram, window: Duration) -> usize {
    manager.set_read_timeout(Some(window / 4)).unwrap();
    let start = Instant::now();
    let mut pings = 0;
    let mut buf = [0u8; 64];
    while start.elapsed() < window {
        if let Ok(n) = manager.recv(&mut buf) {
            assert_eq!(&buf[..n], b"WATCHDOG=1");
            pings += 1;
        }
    }
    pings
}

/// One shard's thread is stopped (ptrace stops a single thread, not the
/// process): the pings stop and the log names the shard; once it runs again
/// they resume.
#[test]
fn a_stuck_shard_stops_the_watchdog_pings() {
    let (supervisor, server) = start_supervised(&["--shards", "2", "--durability", "memory"]);
    let manager = &supervisor.socket;
    assert!(next_message(manager).starts_with("READY=1\n"));
    let shard = thread_id(server.child.id(), "shard-1");
    // SAFETY: ptrace on a thread of our own child; no memory is passed.
    let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, shard, 0, 0) };
    if seized != 0 {
        let err = std::io::Error::last_os_error();
        eprintln!("SKIPPED a_stuck_shard_stops_the_watchdog_pings: ptrace refused ({err})");
        return;
    }
    // SAFETY: as above; waitpid reports the thread's stop.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, shard, 0, 0), 0);
        let mut status = 0;
        assert_eq!(libc::waitpid(shard, &mut status, libc::__WALL), shard);
        assert!(libc::WIFSTOPPED(status));
    }
    // Pings sent before the check noticed: at most one period's worth.
    let settle = pings_within(manager, Duration::from_millis(400));
    assert!(settle <= 2, "{settle} pings while the shard was stopping");
    let stalled = pings_within(manager, Duration::from_millis(900));
    assert_eq!(stalled, 0, "pings went on with shard 1 stopped");
    assert!(server.logged("shard 1 has not turned its loop", Duration::from_secs(1)));

    // SAFETY: as above; the thread runs again.
    assert_eq!(unsafe { libc::ptrace(libc::PTRACE_DETACH, shard, 0, 0) }, 0);
    let resumed = pings_within(manager, Duration::from_millis(900));
    assert!(resumed >= 3, "{resumed} pings after shard 1 ran again");
}

/// `cluecast run` under these variables, refused: its error output.
fn refused_with_env(env: &[(&str, &str)]) -> String {
    let out = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--durability", "memory"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{env:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_malformed_notify_socket_or_too_short_watchdog_is_refused_with_its_name() {
    let err = refused_with_env(&[("NOTIFY_SOCKET", "run/notify")]);
    assert!(
        err.contains("NOTIFY_SOCKET=run/notify is neither an absolute path"),
        "{err}"
    );
    let err = refused_with_env(&[
        ("NOTIFY_SOCKET", "@cluecast-test-unused"),
        ("WATCHDOG_USEC", "100000"),
    ]);
    assert!(
        err.contains("WatchdogSec=, 100 ms) is below 200 ms"),
        "{err}"
    );
}
