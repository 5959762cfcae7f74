//! The admin listener of a real appliance: /metrics counts what was done,
//! `cluecast status` agrees, the log level changes at run time, a taken
//! admin port stops the start, and bad or slow admin clients are refused
//! without stopping it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluecast_proto::{Frame, Publish, StartMode};
use common::{RawClient, Server, BIN};

/// Sends `raw` to the admin listener and returns the status and body.
fn http(admin: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).expect("connect to the admin listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(raw).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn scrape(admin: SocketAddr) -> String {
    let (status, body) = http(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    body
}

/// The sum of every sample of `name` whose labels contain `labels`.
fn sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            series.strip_prefix(name).is_some_and(|rest| {
                (rest.is_empty() || rest.starts_with('{')) && rest.contains(labels)
            })
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

/// Runs `cluecast ARGS`, expects success, returns its stdout.
fn succeeding(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cluecast {args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn admin_of(server: &Server) -> SocketAddr {
    server
        .admin
        .expect("the admin listener's address is logged")
}

#[test]
fn metrics_count_what_was_done_and_status_agrees() {
    const EVENTS: u64 = 20;
    const SUBSCRIBERS: u64 = 3;
    let server = Server::start(&["--shards", "2"]);
    let admin = admin_of(&server);

    let mut subscribers: Vec<RawClient> = (0..SUBSCRIBERS)
        .map(|_| {
            let mut s = RawClient::open(server.addr);
            s.subscribe("hunt.7", StartMode::Live, 0, 0);
            s
        })
        .collect();
    let mut publisher = RawClient::open(server.addr);
    for i in 0..EVENTS {
        publisher.send(&Frame::Publish(Publish {
            request_id: i as u32,
            topic: b"hunt.7",
            payload: b"clue",
        }));
        publisher.expect(|f| matches!(f, Frame::PublishAck(a) if a.status == 0));
    }
    for s in &mut subscribers {
        for seq in 1..=EVENTS {
            s.expect(|f| matches!(f, Frame::Event(e) if e.seq == seq));
        }
    }

    // Shards copy their counters every 100 ms: wait for the last copy.
    let deliveries = EVENTS * SUBSCRIBERS;
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(admin);
        if sum(&text, "cluecast_publish_to_send_seconds_count", "") == deliveries as f64 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the counts never arrived:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let count = |name: &str, labels: &str| sum(&text, name, labels) as u64;
    assert_eq!(count("cluecast_events_published_total", ""), EVENTS);
    assert_eq!(count("cluecast_deliveries_total", ""), deliveries);
    assert_eq!(
        count("cluecast_class_events_in_total", "class=\"hunt\""),
        EVENTS
    );
    assert_eq!(
        count("cluecast_class_events_out_total", "class=\"hunt\""),
        deliveries
    );
    assert_eq!(
        count("cluecast_class_events_out_total", "class=\"other\""),
        0
    );
    assert_eq!(count("cluecast_connections", ""), SUBSCRIBERS + 1);
    assert_eq!(count("cluecast_subscriptions", ""), SUBSCRIBERS);
    assert_eq!(
        count("cluecast_connections_accepted_total", ""),
        SUBSCRIBERS + 1
    );
    // Every frame sent went in some send: the events, a WELCOME each, a
    // SUBSCRIBED per subscriber, an ack per publish.
    let frames = deliveries + (SUBSCRIBERS + 1) + SUBSCRIBERS + EVENTS;
    assert_eq!(count("cluecast_send_frames_sum", ""), frames);
    let commits = count("cluecast_storage_commit_seconds_count", "");
    assert!((1..=EVENTS).contains(&commits), "{commits} commits");
    assert_eq!(
        count("cluecast_storage_commit_seconds_bucket", "le=\"+Inf\""),
        commits
    );
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let beats = text
        .lines()
        .filter(|l| l.starts_with("cluecast_shard_last_turn_timestamp_seconds{"));
    for line in beats {
        let at: f64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
        assert!(
            (now_s - at).abs() < 5.0,
            "a shard's heartbeat is stale: {line}"
        );
    }
    // Every sample belongs to a family announced with HELP and TYPE.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                series
                    .strip_suffix(s)
                    .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
            })
            .unwrap_or(series);
        assert!(
            text.contains(&format!("# TYPE {family} "))
                && text.contains(&format!("# HELP {family} ")),
            "no HELP/TYPE for {line}"
        );
    }

    let out = succeeding(&["status", "--json", "--admin", &admin.to_string()]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["published_total"], EVENTS);
    assert_eq!(status["deliveries_total"], deliveries);
    assert_eq!(status["publish_to_send_count"], deliveries);
    assert_eq!(status["connections"], SUBSCRIBERS + 1);
    assert_eq!(status["subscriptions"], SUBSCRIBERS);
    assert_eq!(status["shards"], 2);
    assert_eq!(status["durability"], "sync");
    assert_eq!(
        status["publish_per_s"], 0.0,
        "nothing was published meanwhile"
    );
    assert!(status["publish_to_send_p99_us"].as_u64().is_some());
    assert!(status["storage_commit_p99_us"].as_u64().is_some());

    let screen = succeeding(&["status", "--admin", &admin.to_string()]);
    assert!(
        screen.contains(&format!("published      {EVENTS} ")),
        "{screen}"
    );
    assert!(
        screen.contains(&format!("delivered      {deliveries} ")),
        "{screen}"
    );
}

#[test]
fn the_log_level_changes_while_running() {
    let server = Server::start(&["--log-level", "info"]);
    let admin = admin_of(&server);
    // A first frame that is not HELLO: the shard closes the connection and
    // says so at debug level.
    let provoke = || {
        let mut client = RawClient::connect(server.addr);
        client.send(&Frame::Ping { nonce: 1 });
        assert!(client.closed_within(Duration::from_secs(5)));
    };
    provoke();
    assert!(
        !server.logged("closing connection", Duration::from_millis(500)),
        "a debug line at level info"
    );

    let out = succeeding(&["log-level", "debug", "--admin", &admin.to_string()]);
    assert_eq!(out.trim(), "debug");
    let (_, level) = http(admin, b"GET /log-level HTTP/1.1\r\n\r\n");
    assert_eq!(level.trim(), "debug");
    provoke();
    assert!(
        server.logged("closing connection", Duration::from_secs(5)),
        "no debug line after the switch"
    );
}

#[test]
fn a_taken_admin_port_stops_the_start_naming_the_flag() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--admin-listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("--admin-listen {addr}")), "{err}");

    // And a client asking where nothing listens is told so.
    drop(taken);
    let out = Command::new(BIN)
        .args(["status", "--admin", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("nothing answers at {addr}")), "{err}");
}

#[test]
fn bad_and_slow_admin_requests_are_refused_and_the_listener_stays() {
    let server = Server::start(&[]);
    let admin = admin_of(&server);
    let status = |raw: &[u8]| http(admin, raw).0;
    assert_eq!(status(b"nonsense\r\n\r\n"), 400);
    assert_eq!(status(b"GET /nope HTTP/1.1\r\n\r\n"), 404);
    assert_eq!(status(b"POST /metrics HTTP/1.1\r\n\r\n"), 405);
    assert_eq!(
        status(b"PUT /log-level HTTP/1.1\r\nContent-Length: 4\r\n\r\nloud"),
        400
    );
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.resize(64 << 10, b'a');
    let mut stream = TcpStream::connect(admin).unwrap();
    // The listener may answer and close before all of it is written.
    let _ = stream.write_all(&huge);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A client that stops mid-request is answered 408 after the read
    // timeout; meanwhile the other worker still serves.
    let started = Instant::now();
    let mut slow = TcpStream::connect(admin).unwrap();
    slow.write_all(b"GET /metr").unwrap();
    assert!(scrape(admin).contains("cluecast_uptime_seconds"));
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(scrape(admin).contains("cluecast_uptime_seconds"));
}

#[test]
fn the_admin_listener_can_be_turned_off() {
    let server = Server::start(&["--admin-listen", "off"]);
    assert_eq!(server.admin, None);
    assert!(!server
        .startup_log
        .iter()
        .any(|l| l.contains("admin endpoint")));
}

#[test]
fn every_documented_metric_is_served_and_every_served_one_documented() {
    let server = Server::start(&["--shards", "2"]);
    let served: std::collections::BTreeSet<String> = scrape(admin_of(&server))
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/OBSERVABILITY.md"
    ))
    .unwrap();
    let documented: std::collections::BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `cluecast_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("cluecast_{name}"))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in docs/OBSERVABILITY.md: {undocumented:?}; documented but not \
         served: {unserved:?}"
    );
}
