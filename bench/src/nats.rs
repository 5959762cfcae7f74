//! Just enough of the core NATS client protocol for `fanout --target nats`:
//! PUB out, MSG (and the server's PINGs) in.
//!
//! Like Redis, NATS carries no sequence numbers, so the generator checks
//! loss and order from the payload's stamp alone. Headers (HMSG) are never
//! asked for (CONNECT says nothing of them), so the server does not send them.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What nats-server 2.9 logs (to stderr, its default) once it accepts
/// clients: `[PID] DATE TIME [INF] Server is ready`.
pub const NATS_READY: &str = "Server is ready";

/// Longest control line accepted, CRLF excluded: the server's own default
/// `max_control_line`.
const CONTROL_LINE_MAX: usize = 4096;

/// Payload limit while waiting for a handshake answer: a MSG may arrive
/// between SUB and PONG. Generous: the server's `max_payload` is 1 MiB by
/// default, and it warns about anything over 8 MB.
const HANDSHAKE_PAYLOAD_MAX: usize = 64 << 20;

/// No +OK after each command, no copies of our own publishes, and
/// `protocol 1` so the server may send INFO updates (ignored).
const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\
\"lang\":\"rust\",\"version\":\"0.1\",\"protocol\":1}\r\nPING\r\n";

/// Operation names the server sends (HMSG only so it is refused as such).
const NAMES: [&[u8]; 7] = [b"MSG", b"HMSG", b"PING", b"PONG", b"+OK", b"-ERR", b"INFO"];

/// One server operation, borrowing from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// A delivery (any reply-to subject is dropped).
    Msg {
        subject: &'a [u8],
        sid: u64,
        payload: &'a [u8],
    },
    /// Must be answered with [`pong`], or the server drops the client.
    Ping,
    Pong,
    Ok,
    /// The text after `-ERR`, e.g. `'Authorization Violation'`.
    Err(&'a [u8]),
    /// Server information; nothing in it is used.
    Info,
}

/// The arguments of nats-server to listen on `addr`.
pub fn nats_args(addr: SocketAddr) -> Vec<String> {
    vec![
        "-a".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
    ]
}

/// Appends a PUB of `payload` on `subject` to `out`. `subject` must be a
/// valid subject (not empty, no whitespace); the server refuses others.
pub fn publish(out: &mut Vec<u8>, subject: &[u8], payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject);
    // Writing to a Vec cannot fail.
    let _ = write!(out, " {}\r\n", payload.len());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Appends the answer to a server PING.
pub fn pong(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PONG\r\n");
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn lossy(text: &[u8]) -> String {
    String::from_utf8_lossy(text).into_owned()
}

/// A decimal number without sign; Err names `what` it was meant to be.
fn number(word: &[u8], what: &str) -> Result<u64, String> {
    let bad = || format!("bad NATS {what} {:?}", lossy(word));
    if word.is_empty() {
        return Err(bad());
    }
    word.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or_else(bad)
    })
}

/// The first complete server operation in `buf` and the bytes it took;
/// Ok(None) when `buf` ends before it does; Err for bytes that are not NATS,
/// a control line over 4096 bytes, a payload over `payload_max`, or HMSG.
pub fn parse(buf: &[u8], payload_max: usize) -> Result<Option<(Op<'_>, usize)>, String> {
    // The operation name ends at whitespace or the line's CR.
    let name_len = buf
        .iter()
        .position(|&b| is_space(b) || b == b'\r')
        .unwrap_or(buf.len());
    let name = &buf[..name_len];
    let complete = name_len < buf.len();
    // Garbage is refused as soon as its name cannot be one, rather than
    // after 4 KiB of it.
    let known = NAMES.iter().any(|n| {
        if complete {
            n.eq_ignore_ascii_case(name)
        } else {
            n.len() >= name.len() && n[..name.len()].eq_ignore_ascii_case(name)
        }
    });
    if !known {
        return Err(format!("not NATS: operation {:?}", lossy(name)));
    }
    let window = &buf[..buf.len().min(CONTROL_LINE_MAX + 2)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if window.len() == CONTROL_LINE_MAX + 2 {
            Err(format!(
                "NATS control line longer than {CONTROL_LINE_MAX} bytes"
            ))
        } else {
            Ok(None)
        };
    };
    let next = end + 2;
    let rest = &buf[name_len..end];
    let bare = |op: Op<'static>| match rest.iter().all(|&b| is_space(b)) {
        true => Ok(Some((op, next))),
        false => Err(format!("NATS {} with arguments", lossy(name))),
    };
    if name.eq_ignore_ascii_case(b"PING") {
        bare(Op::Ping)
    } else if name.eq_ignore_ascii_case(b"PONG") {
        bare(Op::Pong)
    } else if name.eq_ignore_ascii_case(b"+OK") {
        bare(Op::Ok)
    } else if name.eq_ignore_ascii_case(b"INFO") {
        Ok(Some((Op::Info, next)))
    } else if name.eq_ignore_ascii_case(b"-ERR") {
        let start = rest
            .iter()
            .position(|&b| !is_space(b))
            .unwrap_or(rest.len());
        Ok(Some((Op::Err(&rest[start..]), next)))
    } else if name.eq_ignore_ascii_case(b"MSG") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        // No allocation: this runs once per delivery.
        let mut words: [&[u8]; 4] = [b""; 4];
        let mut n = 0;
        for word in rest.split(|&b| is_space(b)).filter(|w| !w.is_empty()) {
            if n == words.len() {
                return Err("NATS MSG with over 4 arguments".into());
            }
            words[n] = word;
            n += 1;
        }
        let (subject, sid, len) = match &words[..n] {
            [s, sid, len] | [s, sid, _, len] => (*s, *sid, *len),
            _ => return Err(format!("NATS MSG with {n} arguments")),
        };
        let sid = number(sid, "sid")?;
        let len = number(len, "payload size")?;
        if len > payload_max as u64 {
            return Err(format!("NATS payload of {len} bytes"));
        }
        let len = len as usize;
        let Some(body) = (len.checked_add(2))
            .and_then(|n| n.checked_add(next))
            .and_then(|total| buf.get(next..total))
        else {
            return Ok(None);
        };
        if &body[len..] != b"\r\n" {
            return Err("NATS payload without its CRLF".into());
        }
        let payload = &body[..len];
        Ok(Some((
            Op::Msg {
                subject,
                sid,
                payload,
            },
            next + len + 2,
        )))
    } else {
        Err("NATS HMSG (headers) not supported".into())
    }
}

/// Reads until an operation that `want` accepts; `buf` holds what was read
/// before and, on return, what came after it. Deliveries on the way are
/// kept in `buf` in order, PINGs answered, INFO and +OK skipped.
fn await_op(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    what: &str,
    want: impl Fn(&Op<'_>) -> bool,
) -> Result<(), String> {
    let mut kept = Vec::new();
    loop {
        let mut at = 0;
        while let Some((op, used)) =
            parse(&buf[at..], HANDSHAKE_PAYLOAD_MAX).map_err(|e| format!("{what}: {e}"))?
        {
            let start = at;
            at += used;
            match op {
                op if want(&op) => {
                    kept.extend_from_slice(&buf[at..]);
                    *buf = kept;
                    return Ok(());
                }
                Op::Msg { .. } => kept.extend_from_slice(&buf[start..at]),
                Op::Ping => stream
                    .write_all(b"PONG\r\n")
                    .map_err(|e| format!("{what}: {e}"))?,
                Op::Err(text) => {
                    return Err(format!("{what}: the server said -ERR {}", lossy(text)))
                }
                Op::Info | Op::Ok | Op::Pong => {}
            }
        }
        buf.drain(..at);
        crate::net::read_more(stream, buf, deadline, what)?;
    }
}

/// Connects with no delay, waits for INFO, sends CONNECT and a PING, and
/// waits for the PONG (so CONNECT was accepted); returns the stream
/// (blocking, no read timeout) and any bytes read past the PONG.
pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<(TcpStream, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    let mut stream = crate::net::tcp_connect(addr, timeout)?;
    let mut buf = Vec::new();
    await_op(&mut stream, &mut buf, deadline, "NATS INFO", |op| {
        matches!(op, Op::Info)
    })?;
    send_until_pong(&mut stream, &mut buf, deadline, "CONNECT", CONNECT)?;
    Ok((stream, buf))
}

/// Sends `bytes` (operation `op`, ending in a PING) and waits for the PONG
/// after them, then leaves the stream with no read timeout.
fn send_until_pong(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    op: &str,
    bytes: &[u8],
) -> Result<(), String> {
    stream
        .write_all(bytes)
        .map_err(|e| format!("sending {op}: {e}"))?;
    await_op(stream, buf, deadline, &format!("NATS {op}"), |op| {
        matches!(op, Op::Pong)
    })?;
    stream
        .set_read_timeout(None)
        .map_err(|e| format!("socket options: {e}"))
}

/// Connects a subscriber to `subject` as subscription `sid` and waits for
/// the PONG after the SUB (the server handles a client's operations in
/// order, so the subscription is live); returns the stream (blocking, no
/// read timeout) and any bytes read past the PONG, deliveries included.
pub fn subscribe(
    addr: SocketAddr,
    subject: &[u8],
    sid: u64,
    timeout: Duration,
) -> Result<(TcpStream, Vec<u8>), String> {
    if subject.is_empty() || subject.iter().any(|&b| b <= b' ') {
        return Err(format!("bad NATS subject {:?}", lossy(subject)));
    }
    let deadline = Instant::now() + timeout;
    let (mut stream, mut buf) = connect(addr, timeout)?;
    let mut out = b"SUB ".to_vec();
    out.extend_from_slice(subject);
    let _ = write!(out, " {sid}\r\nPING\r\n");
    send_until_pong(&mut stream, &mut buf, deadline, "SUB", &out)?;
    Ok((stream, buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::{start_peer_for_test, Target};
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn nats_pub_and_pong_encoding() {
        let mut out = Vec::new();
        publish(&mut out, b"t.1", b"a\r\nb");
        publish(&mut out, b"t.2", b"");
        pong(&mut out);
        assert_eq!(out, b"PUB t.1 4\r\na\r\nb\r\nPUB t.2 0\r\n\r\nPONG\r\n");
        assert_eq!(
            nats_args("127.0.0.1:4333".parse().unwrap()).join(" "),
            "-a 127.0.0.1 -p 4333"
        );
        assert!(CONNECT.ends_with(b"\"protocol\":1}\r\nPING\r\n"));
        assert!(!CONNECT.contains(&b'\\'));
    }

    /// Every operation the server sends, as it sends them and in other
    /// letter cases and spacing.
    const WIRE: &[u8] = b"INFO {\"server_id\":\"X\",\"max_payload\":1048576} \r\n\
        +OK\r\n\
        PING\r\n\
        pong\r\n\
        -ERR 'Unknown Protocol Operation'\r\n\
        MSG t.1 7 5\r\nhe\r\nl\r\n\
        msg\tt.2  9 reply.to 0\r\n\r\n\
        MSG t.3 18446744073709551615 3\r\nxyz\r\n";

    fn all_ops(buf: &[u8]) -> Vec<Op<'_>> {
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((op, used)) = parse(&buf[at..], 100).unwrap() {
            got.push(op);
            at += used;
        }
        assert_eq!(at, buf.len());
        got
    }

    #[test]
    fn nats_every_op_decodes() {
        assert_eq!(
            all_ops(WIRE),
            [
                Op::Info,
                Op::Ok,
                Op::Ping,
                Op::Pong,
                Op::Err(b"'Unknown Protocol Operation'"),
                Op::Msg {
                    subject: b"t.1",
                    sid: 7,
                    payload: b"he\r\nl",
                },
                Op::Msg {
                    subject: b"t.2",
                    sid: 9,
                    payload: b"",
                },
                Op::Msg {
                    subject: b"t.3",
                    sid: u64::MAX,
                    payload: b"xyz",
                },
            ]
        );
    }

    #[test]
    fn nats_every_strict_prefix_is_incomplete() {
        // Each op, split anywhere, from its own start.
        crate::peers::assert_every_strict_prefix_is_incomplete(WIRE, |b| {
            parse(b, 100).map(|p| p.map(|(_, used)| used))
        });
    }

    #[test]
    fn nats_garbage_and_oversize_are_errors() {
        for bad in [
            &b"XYZ\r\n"[..],
            b"PINGX",
            b" PING\r\n",
            b"HMSG t 1 3 5\r\nhdr\r\n\r\n",
            b"PING now\r\n",
            b"MSG t 1\r\n",
            b"MSG t 1 a b 2\r\n",
            b"MSG t x 2\r\nab\r\n",
            b"MSG t 1 -2\r\nab\r\n",
            b"MSG t 1 +2\r\nab\r\n",
            b"MSG t 1 99999999999999999999\r\n",
            b"MSG t 1 2\r\nabc\r\n",
            b"MSG t 1 101\r\n",
        ] {
            assert!(parse(bad, 100).is_err(), "{:?}", lossy(bad));
        }
        // A control line may be 4096 bytes long, but not 4097.
        let mut line = b"INFO ".to_vec();
        line.resize(CONTROL_LINE_MAX, b'x');
        assert_eq!(parse(&line, 100).unwrap(), None);
        line.push(b'\r');
        assert_eq!(parse(&line, 100).unwrap(), None);
        line.push(b'\n');
        assert_eq!(parse(&line, 100).unwrap(), Some((Op::Info, line.len())));
        line.truncate(CONTROL_LINE_MAX);
        line.extend_from_slice(b"xx");
        assert!(parse(&line, 100).is_err());
        // A payload of exactly payload_max is fine.
        assert!(parse(b"MSG t 1 100\r\n", 100).unwrap().is_none());
    }

    /// A small deterministic generator (xorshift64).
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn nats_random_bytes_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"MSGHPINGOKERRINFO+- \t\r\n0123456789msg.x";
        for round in 0..50_000 {
            let len = (xorshift(&mut state) % 80) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    let r = xorshift(&mut state);
                    // Mostly protocol-like bytes, so parsing gets deep.
                    if round % 2 == 0 {
                        alphabet[(r % alphabet.len() as u64) as usize]
                    } else {
                        r as u8
                    }
                })
                .collect();
            if let Ok(Some((_, used))) = parse(&buf, 16) {
                assert!(used > 0 && used <= buf.len());
            }
        }
    }

    /// A one-connection fake server: sends `greeting`, then `answer` once
    /// the client has sent something, then holds the connection a while.
    fn fake_server(greeting: &'static [u8], answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(greeting);
            let _ = s.read(&mut [0u8; 512]);
            let _ = s.write_all(answer);
            std::thread::sleep(Duration::from_secs(2));
        });
        addr
    }

    #[test]
    fn nats_connect_reports_err_and_honours_the_timeout() {
        let addr = fake_server(b"INFO {}\r\n", b"-ERR 'Authorization Violation'\r\n");
        let err = connect(addr, Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("Authorization Violation"), "{err}");

        let addr = fake_server(b"INFO {}\r\n", b"");
        let start = Instant::now();
        let err = connect(addr, Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("in time"), "{err}");
        assert!(start.elapsed() < Duration::from_millis(1000));

        // A PING before the PONG is answered; MSGs are kept for the caller.
        let addr = fake_server(b"INFO {}\r\n", b"PING\r\nMSG a 1 1\r\nx\r\nPONG\r\nMSG");
        let (_, rest) = connect(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(rest, b"MSG a 1 1\r\nx\r\nMSG");
    }

    /// Reads operations until a PONG, answering PINGs; returns the MSGs.
    fn until_pong(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<(Vec<u8>, u64, Vec<u8>)> {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut msgs = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Some((op, used)) = parse(buf, 1 << 20).unwrap() {
                match op {
                    Op::Msg {
                        subject,
                        sid,
                        payload,
                    } => msgs.push((subject.to_vec(), sid, payload.to_vec())),
                    Op::Ping => {
                        let mut out = Vec::new();
                        pong(&mut out);
                        stream.write_all(&out).unwrap();
                    }
                    Op::Pong => {
                        buf.drain(..used);
                        return msgs;
                    }
                    other => panic!("unexpected {other:?}"),
                }
                buf.drain(..used);
            }
            let n = stream.read(&mut chunk).expect("no PONG in time");
            assert!(n > 0, "the server closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[test]
    fn nats_server_delivers_three_messages_in_order() {
        let Some(server) = start_peer_for_test(Target::Nats, &[]) else {
            return;
        };
        let addr = server.addr();
        let timeout = Duration::from_secs(5);
        let (mut sub, mut sub_buf) = subscribe(addr, b"bench.t1", 42, timeout).unwrap();
        let (mut publisher, mut pub_buf) = connect(addr, timeout).unwrap();
        let payloads: [&[u8]; 3] = [b"first", b"sec\r\nond", b""];
        let mut out = Vec::new();
        publish(&mut out, b"bench.other", b"not for us");
        for p in payloads {
            publish(&mut out, b"bench.t1", p);
        }
        // Once the publisher's PONG is back, the server has routed all
        // three; the subscriber's PONG then comes after them.
        out.extend_from_slice(b"PING\r\n");
        publisher.write_all(&out).unwrap();
        assert_eq!(until_pong(&mut publisher, &mut pub_buf), []);
        sub.write_all(b"PING\r\n").unwrap();
        let got = until_pong(&mut sub, &mut sub_buf);
        let want: Vec<_> = payloads
            .iter()
            .map(|p| (b"bench.t1".to_vec(), 42, p.to_vec()))
            .collect();
        assert_eq!(got, want);
        assert!(sub_buf.is_empty());
    }

    #[test]
    fn nats_server_refusal_is_reported() {
        let Some(server) = start_peer_for_test(Target::Nats, &["--user", "u", "--pass", "p"])
        else {
            return;
        };
        let addr = server.addr();
        let err = connect(addr, Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("Authorization Violation"), "{err}");
        let err = subscribe(addr, b"bad subject", 1, Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("bad NATS subject"), "{err}");
    }
}
