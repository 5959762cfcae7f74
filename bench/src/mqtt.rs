//! Just enough MQTT 3.1.1 for `fanout --target mqtt`, QoS 0 only: PUBLISH
//! out, PUBLISH in.
//!
//! MQTT carries no sequence numbers either, so the generator checks loss
//! and order from the payload's stamp alone. Unlike NATS (`echo: false`), a
//! client subscribed to a topic it publishes on gets its own messages back.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What mosquitto 2.0 logs once its listeners are open:
/// `TIME: mosquitto version 2.0.11 running`. It is logged at `information`
/// level (so is `... starting`); `notice` alone shows no startup line.
pub const MOSQUITTO_READY: &str = " running";

/// Largest remaining length the 4-byte varint can say (256 MiB - 1).
const REMAINING_MAX: usize = 268_435_455;

/// Payload limit while waiting for a handshake answer: a retained message
/// may follow the SUBACK in the same read.
const HANDSHAKE_PAYLOAD_MAX: usize = REMAINING_MAX;

/// The packet id of our one SUBSCRIBE.
const SUBSCRIBE_ID: u16 = 1;

const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
const CONNACK: u8 = 2;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const PINGRESP: u8 = 13;

/// One packet from the server, borrowing from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// At any QoS (the packet id, if any, is skipped); dup and retain
    /// flags are dropped.
    Publish {
        topic: &'a [u8],
        payload: &'a [u8],
    },
    ConnAck {
        return_code: u8,
    },
    /// One return code per topic filter: the granted QoS, or 0x80.
    SubAck {
        packet_id: u16,
        codes: &'a [u8],
    },
    PingResp,
    /// Any other packet, by type (1-14).
    Other(u8),
}

/// The mosquitto configuration the benchmark runs: listen on `addr` only,
/// no authentication, persistence or connection limit, and a deep queue.
/// `log_type information` is there for the ready line; `notice` also logs
/// two lines per connection, so stderr must be drained.
pub fn mosquitto_config(addr: SocketAddr) -> String {
    format!(
        "listener {} {}\n\
         allow_anonymous true\n\
         max_queued_messages 100000\n\
         persistence false\n\
         max_connections -1\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n",
        addr.port(),
        addr.ip()
    )
}

/// Appends the remaining length as MQTT's variable-length integer: 7 bits
/// a byte, least significant first, the top bit saying more follow.
fn put_remaining(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a length-prefixed string (binary safe).
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Appends a QoS 0 PUBLISH (no packet id, not retained) of `payload` on
/// `topic`. The topic must be under 64 KiB and the packet under 256 MiB;
/// the server drops the connection otherwise.
pub fn publish(out: &mut Vec<u8>, topic: &[u8], payload: &[u8]) {
    out.push(PUBLISH << 4);
    put_remaining(out, 2 + topic.len() + payload.len());
    put_string(out, topic);
    out.extend_from_slice(payload);
}

/// CONNECT as `client_id`: MQTT 3.1.1 (level 4), clean session, and no
/// keep-alive, so idle benchmark connections are never cut.
fn connect_packet(out: &mut Vec<u8>, client_id: &[u8]) {
    out.push(CONNECT << 4);
    put_remaining(out, 10 + 2 + client_id.len());
    put_string(out, b"MQTT");
    out.extend_from_slice(&[4, 0x02, 0, 0]);
    put_string(out, client_id);
}

/// SUBSCRIBE to one topic filter at QoS 0 (the fixed header's flags must
/// be 0010).
fn subscribe_packet(out: &mut Vec<u8>, packet_id: u16, topic: &[u8]) {
    out.push(SUBSCRIBE << 4 | 0x02);
    put_remaining(out, 2 + 2 + topic.len() + 1);
    out.extend_from_slice(&packet_id.to_be_bytes());
    put_string(out, topic);
    out.push(0);
}

/// What a CONNACK return code means (MQTT 3.1.1, 3.2.2.3).
fn refusal(code: u8) -> &'static str {
    match code {
        1 => "unacceptable protocol version",
        2 => "identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown return code",
    }
}

/// The first complete packet in `buf` and the bytes it took; Ok(None) when
/// `buf` ends before it does; Err for bytes that are not MQTT, a remaining
/// length over `payload_max` + 64 KiB (topic room) or a payload over
/// `payload_max`.
pub fn parse(buf: &[u8], payload_max: usize) -> Result<Option<(Packet<'_>, usize)>, String> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (kind, flags) = (first >> 4, first & 0x0f);
    let mut len = 0usize;
    let mut at = 1;
    loop {
        let Some(&b) = buf.get(at) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * (at - 1));
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at == 5 {
            return Err("MQTT remaining length over 4 bytes".into());
        }
    }
    if len > payload_max.saturating_add(65_535 + 4) {
        return Err(format!("MQTT packet of {len} bytes"));
    }
    let Some(body) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let used = at + len;
    let malformed = |what: &str| Err(format!("malformed MQTT {what}"));
    let packet = match kind {
        PUBLISH => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                return malformed("PUBLISH (QoS 3)");
            }
            let Some(topic_len) = body.get(..2) else {
                return malformed("PUBLISH (no topic)");
            };
            let topic_end = 2 + usize::from(u16::from_be_bytes([topic_len[0], topic_len[1]]));
            // QoS 1 and 2 put a packet id between topic and payload.
            let payload_start = topic_end + if qos > 0 { 2 } else { 0 };
            if payload_start > body.len() {
                return malformed("PUBLISH (topic past the end)");
            }
            let payload = &body[payload_start..];
            if payload.len() > payload_max {
                return Err(format!("MQTT payload of {} bytes", payload.len()));
            }
            Packet::Publish {
                topic: &body[2..topic_end],
                payload,
            }
        }
        CONNACK => match body {
            [_, code] if flags == 0 => Packet::ConnAck { return_code: *code },
            _ => return malformed("CONNACK"),
        },
        SUBACK => match body {
            [hi, lo, codes @ ..] if flags == 0 && !codes.is_empty() => Packet::SubAck {
                packet_id: u16::from_be_bytes([*hi, *lo]),
                codes,
            },
            _ => return malformed("SUBACK"),
        },
        PINGRESP if flags == 0 && body.is_empty() => Packet::PingResp,
        PINGRESP => return malformed("PINGRESP"),
        // 0 is reserved, and 15 too in 3.1.1 (AUTH is MQTT 5).
        0 | 15 => return Err(format!("not MQTT: packet type {kind}")),
        other => Packet::Other(other),
    };
    Ok(Some((packet, used)))
}

/// Reads until a packet that `want` accepts and returns it (owned, as its
/// bytes); `buf` holds what was read before and, on return, what came after
/// it. PUBLISHes on the way are kept in `buf` in order.
fn await_packet(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    what: &str,
    want: impl Fn(&Packet<'_>) -> bool,
) -> Result<Vec<u8>, String> {
    let mut kept = Vec::new();
    loop {
        let mut at = 0;
        while let Some((packet, used)) =
            parse(&buf[at..], HANDSHAKE_PAYLOAD_MAX).map_err(|e| format!("{what}: {e}"))?
        {
            let start = at;
            at += used;
            if want(&packet) {
                let found = buf[start..at].to_vec();
                kept.extend_from_slice(&buf[at..]);
                *buf = kept;
                return Ok(found);
            }
            match packet {
                Packet::Publish { .. } => kept.extend_from_slice(&buf[start..at]),
                other => return Err(format!("{what}: unexpected {other:?}")),
            }
        }
        buf.drain(..at);
        crate::net::read_more(stream, buf, deadline, what)?;
    }
}

/// Connects with no delay as `client_id` and waits for the CONNACK;
/// returns the stream (blocking, no read timeout) and any bytes read past
/// it.
pub fn connect(
    addr: SocketAddr,
    client_id: &str,
    timeout: Duration,
) -> Result<(TcpStream, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    if client_id.len() > usize::from(u16::MAX) {
        return Err("MQTT client id over 64 KiB".into());
    }
    let mut stream = crate::net::tcp_connect(addr, timeout)?;
    let mut out = Vec::new();
    connect_packet(&mut out, client_id.as_bytes());
    stream
        .write_all(&out)
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    let mut buf = Vec::new();
    // The server's first packet must be the CONNACK: anything else is an
    // error.
    let connack = await_packet(&mut stream, &mut buf, deadline, "MQTT CONNECT", |p| {
        matches!(p, Packet::ConnAck { .. })
    })?;
    if let Ok(Some((Packet::ConnAck { return_code }, _))) = parse(&connack, 0) {
        if return_code != 0 {
            return Err(format!(
                "MQTT CONNECT refused: {} ({return_code})",
                refusal(return_code)
            ));
        }
    }
    stream
        .set_read_timeout(None)
        .map_err(|e| format!("socket options: {e}"))?;
    Ok((stream, buf))
}

/// Connects a subscriber as `client_id` to `topic` (a topic filter) at QoS
/// 0 and waits for the SUBACK; returns the stream (blocking, no read
/// timeout) and any bytes read past it.
pub fn subscribe(
    addr: SocketAddr,
    client_id: &str,
    topic: &[u8],
    timeout: Duration,
) -> Result<(TcpStream, Vec<u8>), String> {
    if topic.is_empty() || topic.len() > usize::from(u16::MAX) {
        return Err(format!("bad MQTT topic filter of {} bytes", topic.len()));
    }
    let deadline = Instant::now() + timeout;
    let (mut stream, mut buf) = connect(addr, client_id, timeout)?;
    let mut out = Vec::new();
    subscribe_packet(&mut out, SUBSCRIBE_ID, topic);
    stream
        .write_all(&out)
        .map_err(|e| format!("sending SUBSCRIBE: {e}"))?;
    let suback = await_packet(
        &mut stream,
        &mut buf,
        deadline,
        "MQTT SUBSCRIBE",
        |p| matches!(p, Packet::SubAck { packet_id, .. } if *packet_id == SUBSCRIBE_ID),
    )?;
    if let Ok(Some((Packet::SubAck { codes, .. }, _))) = parse(&suback, 0) {
        if codes != [0] {
            return Err(format!("MQTT SUBSCRIBE refused: return codes {codes:02x?}"));
        }
    }
    stream
        .set_read_timeout(None)
        .map_err(|e| format!("socket options: {e}"))?;
    Ok((stream, buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::{start_peer_for_test, Target};
    use std::io::Read;
    use std::net::TcpListener;

    /// The remaining-length bytes of a PUBLISH of `total` remaining bytes.
    fn length_bytes(total: usize) -> Vec<u8> {
        let mut out = Vec::new();
        publish(&mut out, b"t", &vec![b'x'; total - 3]);
        let end = 1 + out[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
        assert_eq!(out.len(), end + total);
        assert_eq!(&out[end..end + 3], b"\x00\x01t");
        out[1..end].to_vec()
    }

    #[test]
    fn mqtt_publish_encoding() {
        let mut out = Vec::new();
        publish(&mut out, b"a/b", b"hi\r\n");
        assert_eq!(out, b"\x30\x09\x00\x03a/bhi\r\n");
        assert_eq!(length_bytes(3), [0x03]);
        assert_eq!(length_bytes(127), [0x7f]);
        assert_eq!(length_bytes(128), [0x80, 0x01]);
        assert_eq!(length_bytes(16_383), [0xff, 0x7f]);
        assert_eq!(length_bytes(16_384), [0x80, 0x80, 0x01]);
        assert_eq!(length_bytes(2_097_151), [0xff, 0xff, 0x7f]);
        assert_eq!(length_bytes(2_097_152), [0x80, 0x80, 0x80, 0x01]);
        let mut out = Vec::new();
        put_remaining(&mut out, REMAINING_MAX);
        assert_eq!(out, [0xff, 0xff, 0xff, 0x7f]);
    }

    #[test]
    fn mqtt_connect_and_subscribe_encoding() {
        let mut out = Vec::new();
        connect_packet(&mut out, b"sub-1");
        assert_eq!(
            out,
            b"\x10\x11\x00\x04MQTT\x04\x02\x00\x00\x00\x05sub-1".as_slice()
        );
        let mut out = Vec::new();
        subscribe_packet(&mut out, 1, b"t/+");
        assert_eq!(out, b"\x82\x08\x00\x01\x00\x03t/+\x00".as_slice());
    }

    #[test]
    fn mqtt_config_listens_on_the_address_only() {
        let conf = mosquitto_config("127.0.0.1:18830".parse().unwrap());
        let lines: Vec<&str> = conf.lines().collect();
        assert_eq!(lines[0], "listener 18830 127.0.0.1");
        for want in [
            "allow_anonymous true",
            "max_queued_messages 100000",
            "persistence false",
            "max_connections -1",
            "log_dest stderr",
            "log_type notice",
            "log_type information",
        ] {
            assert!(lines.contains(&want), "{want}");
        }
    }

    /// Every packet kind parse tells apart, with QoS 1 and 2 PUBLISHes and
    /// a payload long enough for a 2-byte remaining length.
    fn wire() -> Vec<u8> {
        let mut w = b"\x20\x02\x00\x00".to_vec(); // CONNACK, accepted
        w.extend_from_slice(b"\x90\x03\x00\x01\x00"); // SUBACK 1, QoS 0
        w.extend_from_slice(b"\xd0\x00"); // PINGRESP
        publish(&mut w, b"t/1", &[7u8; 200]);
        publish(&mut w, b"", b"");
        w.extend_from_slice(b"\x32\x08\x00\x01q\x12\x34pay"); // QoS 1, id 0x1234
        w.extend_from_slice(b"\x3d\x05\x00\x01rxy"); // QoS 2, dup, retain, id "xy"
        w.extend_from_slice(b"\xb0\x02\x00\x05"); // UNSUBACK
        w
    }

    fn all_packets(buf: &[u8]) -> Vec<Packet<'_>> {
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((p, used)) = parse(&buf[at..], 1000).unwrap() {
            got.push(p);
            at += used;
        }
        assert_eq!(at, buf.len());
        got
    }

    #[test]
    fn mqtt_every_packet_decodes() {
        let w = wire();
        assert_eq!(
            all_packets(&w),
            [
                Packet::ConnAck { return_code: 0 },
                Packet::SubAck {
                    packet_id: 1,
                    codes: b"\x00",
                },
                Packet::PingResp,
                Packet::Publish {
                    topic: b"t/1",
                    payload: &[7u8; 200],
                },
                Packet::Publish {
                    topic: b"",
                    payload: b"",
                },
                Packet::Publish {
                    topic: b"q",
                    payload: b"pay",
                },
                Packet::Publish {
                    topic: b"r",
                    payload: b"",
                },
                Packet::Other(11),
            ]
        );
    }

    #[test]
    fn mqtt_every_strict_prefix_is_incomplete() {
        crate::peers::assert_every_strict_prefix_is_incomplete(&wire(), |b| {
            parse(b, 1000).map(|p| p.map(|(_, used)| used))
        });
    }

    #[test]
    fn mqtt_garbage_and_oversize_are_errors() {
        for bad in [
            &b"\x00\x00"[..],
            b"\xf0\x00",
            b"\x30\xff\xff\xff\xff",
            b"\x30\x80\x80\x80\x80",
            b"\x30\x01\x00",
            b"\x30\x03\x00\x02a",
            b"\x32\x04\x00\x01ab",
            b"\x36\x03\x00\x01a",
            b"\x20\x03\x00\x00\x00",
            b"\x21\x02\x00\x00",
            b"\x90\x02\x00\x01",
            b"\xd0\x01\x00",
        ] {
            assert!(parse(bad, 1000).is_err(), "{bad:02x?}");
        }
        // Remaining length: payload_max + topic room, and no more.
        let mut over = Vec::new();
        put_remaining(&mut over, 10 + 65_535 + 4);
        over.insert(0, 0x30);
        assert_eq!(parse(&over, 10).unwrap(), None);
        over.clear();
        put_remaining(&mut over, 10 + 65_535 + 5);
        over.insert(0, 0x30);
        assert!(parse(&over, 10).is_err());
        // A payload of exactly payload_max is fine; one more byte is not.
        let mut p = Vec::new();
        publish(&mut p, b"t", &[1; 10]);
        assert!(parse(&p, 10).unwrap().is_some());
        assert!(parse(&p, 9).is_err());
    }

    /// A small deterministic generator (xorshift64).
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn mqtt_random_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1d;
        for round in 0..50_000 {
            let len = (xorshift(&mut state) % 40) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| xorshift(&mut state) as u8).collect();
            // Half the time a plausible header, so parsing gets deep.
            if round % 2 == 0 && len >= 2 {
                buf[0] = [0x20, 0x30, 0x32, 0x34, 0x90, 0xd0][round / 2 % 6];
                buf[1] = (len - 2) as u8;
            }
            if let Ok(Some((_, used))) = parse(&buf, 16) {
                assert!(used >= 2 && used <= buf.len());
            }
        }
    }

    /// A one-connection fake server: reads once, sends `answer`, then holds
    /// the connection a while.
    fn fake_server(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.read(&mut [0u8; 512]);
            let _ = s.write_all(answer);
            std::thread::sleep(Duration::from_secs(2));
        });
        addr
    }

    #[test]
    fn mqtt_connect_reports_refusals_and_honours_the_timeout() {
        let addr = fake_server(b"\x20\x02\x00\x02");
        let err = connect(addr, "x", Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("identifier rejected"), "{err}");

        let addr = fake_server(b"\xd0\x00");
        let err = connect(addr, "x", Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("unexpected PingResp"), "{err}");

        let addr = fake_server(b"");
        let start = Instant::now();
        let err = connect(addr, "x", Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("in time"), "{err}");
        assert!(start.elapsed() < Duration::from_millis(1000));

        let addr = fake_server(b"\x20\x02\x00\x00\x30");
        let (_, rest) = connect(addr, "x", Duration::from_secs(5)).unwrap();
        assert_eq!(rest, b"\x30");
    }

    /// Reads packets until `n` PUBLISHes or a PINGRESP, whichever is first.
    fn receive(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Some((packet, used)) = parse(buf, 1 << 20).unwrap() {
                match packet {
                    Packet::Publish { topic, payload } => {
                        got.push((topic.to_vec(), payload.to_vec()))
                    }
                    Packet::PingResp => {
                        buf.drain(..used);
                        return got;
                    }
                    other => panic!("unexpected {other:?}"),
                }
                buf.drain(..used);
                if got.len() == n {
                    return got;
                }
            }
            let r = stream.read(&mut chunk).expect("nothing in time");
            assert!(r > 0, "the broker closed the connection");
            buf.extend_from_slice(&chunk[..r]);
        }
    }

    #[test]
    fn mosquitto_delivers_three_messages_in_order() {
        let Some(broker) = start_peer_for_test(Target::Mqtt, &[]) else {
            return;
        };
        let addr = broker.addr();
        let timeout = Duration::from_secs(5);
        let id = |role: &str| format!("cc-{role}-{}", addr.port());
        let (mut sub, mut sub_buf) = subscribe(addr, &id("sub"), b"bench/t1", timeout).unwrap();
        let (mut publisher, _) = connect(addr, &id("pub"), timeout).unwrap();
        let payloads: [&[u8]; 3] = [b"first", &[0x30, 0x00, 0xff, 0x80], b""];
        let mut out = Vec::new();
        publish(&mut out, b"bench/other", b"not for us");
        for p in payloads {
            publish(&mut out, b"bench/t1", p);
        }
        publisher.write_all(&out).unwrap();
        let got = receive(&mut sub, &mut sub_buf, 3);
        let want: Vec<_> = payloads
            .iter()
            .map(|p| (b"bench/t1".to_vec(), p.to_vec()))
            .collect();
        assert_eq!(got, want);
        // Nothing more: a PINGREQ's answer comes next.
        sub.write_all(b"\xc0\x00").unwrap();
        assert_eq!(receive(&mut sub, &mut sub_buf, 1), []);
        assert!(sub_buf.is_empty());
    }

    #[test]
    fn mosquitto_refusal_is_reported() {
        let Some(broker) = start_peer_for_test(Target::Mqtt, &[]) else {
            return;
        };
        let addr = broker.addr();
        // "#/x" is not a valid filter ('#' must be last): mosquitto drops
        // the connection, which must be an error too, not a hang.
        let err = subscribe(addr, "cc-bad", b"#/x", Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("MQTT SUBSCRIBE"), "{err}");
    }
}
