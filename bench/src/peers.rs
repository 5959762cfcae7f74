//! The peers' protocols (Redis RESP, core NATS, MQTT 3.1.1 QoS 0) reduced
//! to what the generator needs of any of them: connect and subscribe,
//! publish, and the few kinds of message that come back. resp.rs, nats.rs
//! and mqtt.rs hold each protocol's own encoding and parsing.
//!
//! None of them carries sequence numbers or a server timestamp, so loss and
//! order come from the payload's stamp alone (delivery.rs), and only RESP
//! answers a publish.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::wire::Inbox;
use crate::{mqtt, nats, resp};

/// Which peer protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// RESP pub/sub (redis-server): SUBSCRIBE / PUBLISH.
    Resp,
    /// Core NATS (nats-server): SUB / PUB.
    Nats,
    /// MQTT 3.1.1 at QoS 0 (mosquitto).
    Mqtt,
}

/// What a peer sent, as the generator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// An event's payload on a subscribed connection.
    Delivery(&'a [u8]),
    /// A publish answered (RESP's receiver count).
    Ack,
    /// Must be answered with [`pong`] or the server drops the client
    /// (NATS).
    Ping,
    /// Nothing the generator acts on (confirmations, server information).
    Other,
}

/// Consumes what `inbox` holds as `peer`'s messages: `on_message` per
/// complete one (Err ends the connection). A message must fit in a
/// quarter of the inbox.
pub fn drain(
    inbox: &mut Inbox,
    peer: Peer,
    mut on_message: impl FnMut(Message<'_>) -> Result<(), String>,
) -> Result<(), String> {
    inbox.drain_with(|buf, bytes_max| match parse(peer, buf, bytes_max)? {
        Some((message, used)) => {
            on_message(message)?;
            Ok(Some(used))
        }
        None => Ok(None),
    })
}

/// The first complete message in `buf` and the bytes it took; Ok(None)
/// when `buf` ends before it does; Err for bytes that are not the
/// protocol, a message over `bytes_max`, or an error reply.
fn parse(
    protocol: Peer,
    buf: &[u8],
    bytes_max: usize,
) -> Result<Option<(Message<'_>, usize)>, String> {
    match protocol {
        Peer::Resp => Ok(match resp::parse(buf, bytes_max)? {
            None => None,
            Some((reply, used)) => {
                let m = match (&reply, resp::message(&reply)) {
                    (_, Some((_, payload))) => Message::Delivery(payload),
                    (resp::Reply::Integer(_), None) => Message::Ack,
                    (resp::Reply::Error(e), None) => {
                        return Err(format!("redis: {}", String::from_utf8_lossy(e)))
                    }
                    _ => return Err(format!("unexpected reply {reply:?}")),
                };
                Some((m, used))
            }
        }),
        Peer::Nats => Ok(match nats::parse(buf, bytes_max)? {
            None => None,
            Some((op, used)) => {
                let m = match op {
                    nats::Op::Msg { payload, .. } => Message::Delivery(payload),
                    nats::Op::Ping => Message::Ping,
                    nats::Op::Err(e) => {
                        return Err(format!("nats: -ERR {}", String::from_utf8_lossy(e)))
                    }
                    nats::Op::Pong | nats::Op::Ok | nats::Op::Info => Message::Other,
                };
                Some((m, used))
            }
        }),
        Peer::Mqtt => Ok(match mqtt::parse(buf, bytes_max)? {
            None => None,
            Some((packet, used)) => {
                let m = match packet {
                    mqtt::Packet::Publish { payload, .. } => Message::Delivery(payload),
                    _ => Message::Other,
                };
                Some((m, used))
            }
        }),
    }
}

/// Appends a publish of `payload` on `topic`.
pub fn publish(protocol: Peer, out: &mut Vec<u8>, topic: &[u8], payload: &[u8]) {
    match protocol {
        Peer::Resp => resp::command(out, &[b"PUBLISH", topic, payload]),
        Peer::Nats => nats::publish(out, topic, payload),
        Peer::Mqtt => mqtt::publish(out, topic, payload),
    }
}

/// Appends the answer to a [`Message::Ping`].
pub fn pong(out: &mut Vec<u8>) {
    nats::pong(out);
}

/// Connects as `id` and, if given, subscribes to `topic`; returns the
/// stream (blocking still) and any bytes read past the last answer.
pub fn join(
    protocol: Peer,
    server: SocketAddr,
    timeout: Duration,
    id: &str,
    topic: Option<&str>,
) -> Result<(TcpStream, Vec<u8>), String> {
    match (protocol, topic) {
        (Peer::Resp, Some(t)) => resp::subscribe(server, t.as_bytes(), timeout),
        (Peer::Resp, None) => Ok((crate::net::tcp_connect(server, timeout)?, Vec::new())),
        (Peer::Nats, Some(t)) => nats::subscribe(server, t.as_bytes(), 1, timeout),
        (Peer::Nats, None) => nats::connect(server, timeout),
        (Peer::Mqtt, Some(t)) => mqtt::subscribe(server, id, t.as_bytes(), timeout),
        (Peer::Mqtt, None) => mqtt::connect(server, id, timeout),
    }
}

/// Test helper: `wire` is whole messages, and `parse` says how many bytes
/// the first message of its input takes (None: it ends before that
/// message does). Each message, cut anywhere short of its end from its own
/// start, must be incomplete.
#[cfg(test)]
pub(crate) fn assert_every_strict_prefix_is_incomplete(
    wire: &[u8],
    parse: impl Fn(&[u8]) -> Result<Option<usize>, String>,
) {
    let mut at = 0;
    while at < wire.len() {
        let used = parse(&wire[at..]).unwrap().unwrap();
        for cut in at..at + used {
            assert_eq!(parse(&wire[at..cut]).unwrap(), None, "cut at {cut}");
        }
        at += used;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_delivers_what_it_was_given() {
        for protocol in [Peer::Resp, Peer::Nats, Peer::Mqtt] {
            let mut out = Vec::new();
            // What a server would send a subscriber, built from our own
            // encoders where the shapes match.
            match protocol {
                Peer::Resp => {
                    out.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$3\r\nt.1\r\n$5\r\nhello\r\n")
                }
                Peer::Nats => out.extend_from_slice(b"MSG t.1 1 5\r\nhello\r\n"),
                _ => publish(protocol, &mut out, b"t.1", b"hello"),
            }
            let (m, used) = parse(protocol, &out, 1 << 16).unwrap().unwrap();
            assert_eq!(
                (m, used),
                (Message::Delivery(b"hello"), out.len()),
                "{protocol:?}"
            );
            assert_eq!(
                parse(protocol, &out[..out.len() - 1], 1 << 16).unwrap(),
                None
            );
        }
    }

    #[test]
    fn acks_pings_and_errors() {
        assert_eq!(
            parse(Peer::Resp, b":3\r\n", 64).unwrap(),
            Some((Message::Ack, 4))
        );
        assert!(parse(Peer::Resp, b"-ERR nope\r\n", 64)
            .unwrap_err()
            .contains("nope"));
        assert_eq!(
            parse(Peer::Nats, b"PING\r\n", 64).unwrap(),
            Some((Message::Ping, 6))
        );
        assert!(parse(Peer::Nats, b"-ERR 'Slow Consumer'\r\n", 64)
            .unwrap_err()
            .contains("Slow Consumer"));
        let mut out = Vec::new();
        pong(&mut out);
        assert_eq!(out, b"PONG\r\n");
    }
}
