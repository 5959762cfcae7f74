//! The unit tests of `attack`.

use super::*;
use cluecast_proto::{ErrorFrame, GoAway};

fn parse(s: &str) -> Result<Kinds, String> {
    s.parse()
}

#[test]
fn kinds_parse_in_order_and_refuse_nonsense() {
    let k = parse("trickle,silent").unwrap();
    assert_eq!(k.iter().collect::<Vec<_>>(), [Kind::Trickle, Kind::Silent]);
    assert_eq!(k.to_string(), "trickle,silent");
    assert_eq!(
        (k.nth(0), k.nth(1), k.nth(2)),
        (Kind::Trickle, Kind::Silent, Kind::Trickle)
    );
    assert_eq!(
        parse(" silent , tls-hello").unwrap().to_string(),
        "silent,tls-hello"
    );
    assert!(parse("silent,silent").unwrap_err().contains("twice"));
    assert!(parse("loud").unwrap_err().contains("unknown attack kind"));
    assert!(parse("").is_err());
}

#[test]
fn flags_go_to_the_client_and_tls_hello_needs_tls() {
    let off = AttackFlags::default();
    assert!(off.flags().is_empty() && off.check(false).is_ok());
    assert!(off.attackers(None).is_none());
    let on = AttackFlags {
        attack: Some(parse("silent,tls-hello").unwrap()),
        ..off
    };
    let err = on.check(false).unwrap_err();
    assert!(err.contains("needs --tls"), "{err}");
    on.check(true).unwrap();
    assert_eq!(
        on.flags().join(" "),
        "--attack silent,tls-hello --attack-sources 200 --attack-rate 2000 \
         --attack-sockets-max 4000"
    );
    let calm = AttackFlags {
        attack_calm: true,
        ..on
    };
    assert!(calm.flags().ends_with(&["--attack-calm".to_string()]));
    assert!(calm.attackers(None).is_none(), "the calm run has none");
    let bad = AttackFlags {
        attack: Some(parse("silent").unwrap()),
        attack_sources: 0,
        ..off
    };
    assert!(bad.check(false).is_err());
}

#[test]
fn sources_cycle_in_the_16() {
    assert_eq!(source(0, 200), IpAddr::from([127, 3, 0, 1]));
    assert_eq!(source(199, 200), IpAddr::from([127, 3, 0, 200]));
    assert_eq!(source(200, 200), IpAddr::from([127, 3, 0, 1]));
    assert_eq!(source(255, 300), IpAddr::from([127, 3, 1, 0]));
}

/// A server answering its n-th connection in turn with GOAWAY
/// ServerFull, ERROR HandshakeTimeout, a bare close, or nothing (held);
/// returns the source addresses it saw.
fn fake_server(listener: TcpListener, stop: Arc<AtomicBool>) -> Vec<IpAddr> {
    listener.set_nonblocking(true).unwrap();
    let (mut held, mut seen) = (Vec::new(), Vec::new());
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut s, peer)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        seen.push(peer.ip());
        let mut frame = Vec::new();
        match n % 4 {
            0 => Frame::GoAway(GoAway {
                reason: GoAwayReason::ServerFull,
                retry_after_ms: 100,
                reconnect: b"",
                resume: vec![],
            })
            .encode(&mut frame),
            1 => Frame::Error(ErrorFrame {
                code: ErrorCode::HandshakeTimeout as u16,
                message: b"no HELLO",
            })
            .encode(&mut frame),
            _ => {}
        }
        // A FIN after the answer, not a close: closing with a trickle's
        // byte unread would reset the connection, the answer lost.
        if n % 4 != 3 {
            s.write_all(&frame).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        held.push(s);
        n += 1;
    }
    seen
}

#[test]
fn a_flood_counts_every_connection_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let server = std::thread::spawn(move || fake_server(listener, stopping));
    let attack = AttackFlags {
        attack: Some(parse("silent,trickle").unwrap()),
        attack_sources: 3,
        attack_rate_per_s: 400.0,
        attack_sockets_max: 30,
        attack_calm: false,
    }
    .attackers(None)
    .unwrap();
    let running = attack.start(addr).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let c = running.stop().unwrap();
    stop.store(true, Ordering::Relaxed);
    let seen = server.join().unwrap();
    assert!(c.opened >= 40, "{c:?}");
    let ended =
        c.failed + c.goaway_server_full + c.errors + c.closed_silently + c.welcomed + c.held;
    assert_eq!(ended, c.opened, "{c:?}");
    assert_eq!(c.failed, 0, "{c:?}");
    assert!(c.goaway_server_full > 0 && c.closed_silently > 0, "{c:?}");
    assert!(
        c.handshake_timeouts > 0 && c.handshake_timeouts == c.errors,
        "{c:?}"
    );
    assert!((1..=30).contains(&c.held), "never more than the cap: {c:?}");
    let sources: std::collections::HashSet<IpAddr> = seen.into_iter().collect();
    let want: std::collections::HashSet<IpAddr> =
        (1..=3).map(|i| IpAddr::from([127, 3, 0, i])).collect();
    assert_eq!(sources, want);
}
