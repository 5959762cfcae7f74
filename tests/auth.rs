//! Tokens with real processes: `cluecast token` mints them, the appliance
//! checks every HELLO, subscribe, publish, close and path query against
//! them, and ends a connection whose token expires with a GOAWAY that says
//! so and where to resume.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use cluecast_proto::client::{Client, ClientConfig, ClientError};
use cluecast_proto::{
    ErrorCode, Frame, GoAwayReason, Hello, PathQuery, Position, Publish, StartMode, Subscribe,
    SubscribeStatus, TopicClose,
};
use common::{RawClient, Server, TempDir, BIN};

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const NOT_AUTHORIZED: u16 = ErrorCode::NotAuthorized as u16;

/// A key file (mode 600) holding one key, `k1`, with `secret`.
fn key_file(dir: &TempDir, name: &str, secret: &str) -> String {
    let path = dir.0.join(name);
    std::fs::write(&path, format!("k1 = \"{secret}\"\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_str().unwrap().to_string()
}

/// A connection that has sent HELLO with `token`, its answer unread.
fn hello(addr: SocketAddr, client_id: &str, token: &str) -> RawClient {
    let mut c = RawClient::connect(addr);
    c.send(&Frame::Hello(Hello {
        version_min: 1,
        version_max: 1,
        client_id: client_id.as_bytes(),
        token: token.as_bytes(),
    }));
    c
}

fn admitted(addr: SocketAddr, client_id: &str, token: &str) -> RawClient {
    let mut c = hello(addr, client_id, token);
    c.expect(|f| matches!(f, Frame::Welcome(_)));
    c
}

/// The ERROR a refused HELLO gets: its code and message.
fn refusal(addr: SocketAddr, token: &str) -> (u16, String) {
    let mut c = hello(addr, "phone", token);
    let answer = c
        .recv(|f| match f {
            Frame::Error(e) => (e.code, String::from_utf8_lossy(e.message).into_owned()),
            other => panic!("expected ERROR, got {other:?}"),
        })
        .expect("an answer");
    assert!(
        c.recv(|_| ()).is_none(),
        "the connection is closed after ERROR"
    );
    answer
}

/// Sends `request` and returns the status of the answer `status` reads.
fn ask<T>(
    c: &mut RawClient,
    request: &Frame<'_>,
    status: impl FnOnce(&Frame<'_>) -> Option<T>,
) -> T {
    c.send(request);
    c.recv(|f| status(&f).unwrap_or_else(|| panic!("unexpected answer {f:?}")))
        .expect("an answer")
}

fn subscribed_status(c: &mut RawClient, topic: &str) -> SubscribeStatus {
    let subscribe = Frame::Subscribe(Subscribe {
        mode: StartMode::Live,
        epoch: 0,
        last_seq: 0,
        topic: topic.as_bytes(),
    });
    ask(c, &subscribe, |f| match f {
        Frame::Subscribed(s) => Some(s.status),
        _ => None,
    })
}

fn publish_status(c: &mut RawClient, topic: &str) -> u16 {
    let publish = Frame::Publish(Publish {
        request_id: 1,
        topic: topic.as_bytes(),
        payload: b"clue",
    });
    ask(c, &publish, |f| match f {
        Frame::PublishAck(a) => Some(a.status),
        _ => None,
    })
}

fn path_status(c: &mut RawClient, player: &str) -> u16 {
    let query = Frame::PathQuery(PathQuery {
        request_id: 1,
        since_ms: 0,
        player: player.as_bytes(),
    });
    ask(c, &query, |f| match f {
        Frame::Path(p) => Some(p.status),
        _ => None,
    })
}

/// The reference client with `token`, not reconnecting.
fn reference_client(addr: SocketAddr, token: &str) -> Client {
    let mut config = ClientConfig::new(addr.to_string());
    config.token = token.as_bytes().to_vec();
    config.reconnect = false;
    Client::connect(config).unwrap()
}

#[test]
fn tokens_decide_who_may_connect_subscribe_publish_close_and_read_paths() {
    let dir = TempDir::new("auth");
    let keys = key_file(&dir, "keys.toml", KEY);
    let server = Server::start(&["--auth-keys", &keys, "--shards", "2"]);
    let addr = server.addr;
    let phone = common::mint_token(
        &keys,
        &[
            "--subject",
            "phone-7",
            "--subscribe",
            "hunt-42",
            "--subscribe",
            "hunt-42.*",
        ],
    );
    let bad = common::token_command(&keys, &["--subject", "backend", "--publish", "hunt-42*"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("pattern \"hunt-42*\""));
    let backend = common::mint_token(
        &keys,
        &[
            "--subject",
            "backend",
            "--publish",
            "hunt-42",
            "--publish",
            "hunt-42.*",
            "--paths",
        ],
    );

    // Who may connect.
    let (code, message) = refusal(addr, "");
    assert_eq!(
        (code, message.as_str()),
        (
            NOT_AUTHORIZED,
            "a token is required (HELLO's token is empty)"
        )
    );
    // One character of the signature changed.
    let at = phone.rfind('.').unwrap() + 5;
    let mut forged = phone.clone().into_bytes();
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let (code, message) = refusal(addr, std::str::from_utf8(&forged).unwrap());
    assert_eq!(
        (code, message.as_str()),
        (NOT_AUTHORIZED, "token signature does not verify")
    );
    let stranger = key_file(&dir, "stranger.toml", &KEY.replace("00", "77"));
    let foreign = common::mint_token(&stranger, &["--subject", "phone-7", "--subscribe", "*"]);
    let (code, message) = refusal(addr, &foreign);
    assert_eq!(code, NOT_AUTHORIZED);
    assert!(message.contains("signature"), "{message}");
    let short = common::mint_token(
        &keys,
        &["--subject", "phone-7", "--subscribe", "*", "--ttl", "1s"],
    );
    std::thread::sleep(Duration::from_millis(2100));
    let (code, message) = refusal(addr, &short);
    assert_eq!((code, message.as_str()), (NOT_AUTHORIZED, "token expired"));

    // What each may do; a refusal leaves the connection open.
    let mut p = admitted(addr, "spoofed-id", &phone);
    assert_eq!(subscribed_status(&mut p, "hunt-42"), SubscribeStatus::Ok);
    assert_eq!(
        subscribed_status(&mut p, "hunt-42.team-1"),
        SubscribeStatus::Ok
    );
    assert_eq!(
        subscribed_status(&mut p, "hunt-43"),
        SubscribeStatus::NotAuthorized
    );
    assert_eq!(publish_status(&mut p, "hunt-42"), NOT_AUTHORIZED);
    p.send(&Frame::TopicClose(TopicClose {
        request_id: 9,
        topic: b"hunt-42",
    }));
    p.expect(
        |f| matches!(f, Frame::TopicClosed(c) if c.request_id == 9 && c.status == NOT_AUTHORIZED),
    );
    let mut b = admitted(addr, "backend", &backend);
    assert_eq!(publish_status(&mut b, "hunt-42"), 0);
    assert_eq!(publish_status(&mut b, "hunt-43"), NOT_AUTHORIZED);
    assert_eq!(
        subscribed_status(&mut b, "hunt-42"),
        SubscribeStatus::NotAuthorized
    );
    p.expect(|f| matches!(f, Frame::Event(e) if e.topic == b"hunt-42" && e.seq == 1));

    // Positions belong to the token's subject, whatever HELLO's client_id
    // says; a phone reads only its own path, a backend with --paths any.
    p.send(&Frame::Position(Position {
        lat_e7: 525_200_000,
        lon_e7: 134_050_000,
        accuracy_cm: 500,
        client_ts_ms: 1_700_000_000_000,
    }));
    assert_eq!(path_status(&mut p, "spoofed-id"), NOT_AUTHORIZED);
    assert_eq!(path_status(&mut b, "phone-7"), 0);
    let mut positions = 0;
    for _ in 0..50 {
        let mut reader = reference_client(addr, &backend);
        positions = reader.path("phone-7", 0).unwrap().positions.len();
        if positions == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        positions, 1,
        "the position is stored under the token's subject"
    );
    assert_eq!(path_status(&mut p, "phone-7"), 0);

    // The reference client reports a refused subscription as such.
    let mut client = reference_client(addr, &phone);
    match client.subscribe("hunt-43", cluecast_proto::client::Start::Live) {
        Err(ClientError::Refused(code)) => assert_eq!(code, NOT_AUTHORIZED),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let told = |l: &String| l.contains("clients need a token signed with a key of");
    assert!(
        server.startup_log.iter().any(told),
        "{:?}",
        server.startup_log
    );
}

#[test]
fn an_expiring_token_ends_the_connection_with_a_goaway_naming_where_to_resume() {
    let dir = TempDir::new("auth-expiry");
    let keys = key_file(&dir, "keys.toml", KEY);
    let server = Server::start(&["--auth-keys", &keys, "--durability", "memory"]);
    let publisher = common::mint_token(
        &keys,
        &["--subject", "backend", "--publish", "*", "--ttl", "1h"],
    );
    let phone = common::mint_token(
        &keys,
        &["--subject", "phone-7", "--subscribe", "*", "--ttl", "3s"],
    );
    let mut p = admitted(server.addr, "phone-7", &phone);
    assert_eq!(subscribed_status(&mut p, "hunt-9"), SubscribeStatus::Ok);
    let mut b = admitted(server.addr, "backend", &publisher);
    assert_eq!(publish_status(&mut b, "hunt-9"), 0);
    let epoch = p
        .recv(|f| match f {
            Frame::Event(e) => e.epoch,
            other => panic!("expected EVENT, got {other:?}"),
        })
        .unwrap();
    // Within the token's 3 s (and long before the 90 s idle timeout).
    let goaway = p
        .recv(|f| match f {
            Frame::GoAway(g) => (
                g.reason,
                g.resume
                    .iter()
                    .map(|r| (r.topic.to_vec(), r.epoch, r.last_seq))
                    .collect::<Vec<_>>(),
            ),
            other => panic!("expected GOAWAY, got {other:?}"),
        })
        .unwrap();
    assert_eq!(
        goaway,
        (
            GoAwayReason::TokenExpired,
            vec![(b"hunt-9".to_vec(), epoch, 1)]
        )
    );
    assert!(p.recv(|_| ()).is_none(), "closed after the GOAWAY");
}

#[test]
fn a_key_file_others_may_read_stops_the_start() {
    let dir = TempDir::new("auth-mode");
    let keys = key_file(&dir, "keys.toml", KEY);
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--auth-keys", &keys])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("chmod 600 {keys}")), "{err}");
}
