//! Just enough RESP (the Redis protocol) for `fanout --target redis`:
//! commands out, replies and pub/sub messages in.
//!
//! Redis carries no sequence numbers, so the generator checks loss and
//! order from the payload's stamp alone (delivery.rs does that per
//! publisher anyway).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Nesting of arrays accepted (pub/sub messages are one level deep).
const DEPTH_MAX: usize = 4;
/// Elements of one array accepted.
const ARRAY_MAX: i64 = 1024;

/// One reply, borrowing from the receive buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    /// None: the null bulk string.
    Bulk(Option<&'a [u8]>),
    /// None: the null array.
    Array(Option<Vec<Reply<'a>>>),
}

/// Appends `args` as a command (an array of bulk strings) to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// The first complete reply in `buf` and the bytes it took; Ok(None) when
/// `buf` ends before it does; Err for bytes that are not RESP, or a bulk
/// string longer than `bulk_max`.
pub fn parse(buf: &[u8], bulk_max: usize) -> Result<Option<(Reply<'_>, usize)>, String> {
    parse_at(buf, 0, bulk_max, 0)
}

/// The line starting at `at` (without its CRLF) and where the next begins.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn integer(text: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("bad RESP integer {:?}", String::from_utf8_lossy(text)))
}

fn parse_at(
    buf: &[u8],
    at: usize,
    bulk_max: usize,
    depth: usize,
) -> Result<Option<(Reply<'_>, usize)>, String> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((text, next)) = line(buf, at + 1) else {
        // No CRLF yet; a runaway line is garbage, not a partial read.
        return if buf.len() - at > bulk_max.max(64) {
            Err("RESP line without an end".into())
        } else {
            Ok(None)
        };
    };
    let reply = match kind {
        b'+' => Reply::Simple(text),
        b'-' => Reply::Error(text),
        b':' => Reply::Integer(integer(text)?),
        b'$' => {
            let len = integer(text)?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            let len = len as usize;
            if len > bulk_max {
                return Err(format!("RESP bulk string of {len} bytes"));
            }
            let Some(body) = buf.get(next..next + len + 2) else {
                return Ok(None);
            };
            if &body[len..] != b"\r\n" {
                return Err("RESP bulk string without its CRLF".into());
            }
            return Ok(Some((Reply::Bulk(Some(&body[..len])), next + len + 2)));
        }
        b'*' => {
            let n = integer(text)?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), next)));
            }
            if n > ARRAY_MAX || depth >= DEPTH_MAX {
                return Err(format!("RESP array of {n} elements at depth {depth}"));
            }
            let mut items = Vec::with_capacity(n as usize);
            let mut pos = next;
            for _ in 0..n {
                let Some((item, end)) = parse_at(buf, pos, bulk_max, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                pos = end;
            }
            return Ok(Some((Reply::Array(Some(items)), pos)));
        }
        other => return Err(format!("not RESP: type byte {other:#04x}")),
    };
    Ok(Some((reply, next)))
}

/// The channel and payload of a pub/sub `message` push.
pub fn message<'a>(reply: &Reply<'a>) -> Option<(&'a [u8], &'a [u8])> {
    match reply {
        Reply::Array(Some(items)) => match items.as_slice() {
            [Reply::Bulk(Some(b"message")), Reply::Bulk(Some(channel)), Reply::Bulk(Some(payload))] => {
                Some((channel, payload))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Connects a subscriber to `channel` and waits for the confirmation;
/// returns the stream (blocking still) and any bytes read past it.
pub fn subscribe(
    addr: SocketAddr,
    channel: &[u8],
    timeout: Duration,
) -> Result<(TcpStream, Vec<u8>), String> {
    let mut stream = crate::net::tcp_connect(addr, timeout)?;
    let mut out = Vec::new();
    command(&mut out, &[b"SUBSCRIBE", channel]);
    stream
        .write_all(&out)
        .map_err(|e| format!("sending SUBSCRIBE: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    loop {
        if let Some((reply, used)) = parse(&buf, 4096)? {
            let confirmed = matches!(&reply, Reply::Array(Some(items))
                if matches!(items.as_slice(),
                    [Reply::Bulk(Some(b"subscribe")), Reply::Bulk(Some(c)), Reply::Integer(_)]
                    if *c == channel));
            if !confirmed {
                return Err(format!("SUBSCRIBE answered {reply:?}"));
            }
            buf.drain(..used);
            return Ok((stream, buf));
        }
        crate::net::read_more(&mut stream, &mut buf, deadline, "SUBSCRIBE")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_command_encoding() {
        let mut out = Vec::new();
        command(&mut out, &[b"PUBLISH", b"t.1", b"a\r\nb"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$3\r\nt.1\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn resp_replies_decode() {
        let buf = b"+OK\r\n-ERR no\r\n:42\r\n$-1\r\n*-1\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((r, used)) = parse(&buf[at..], 100).unwrap() {
            got.push(r);
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(
            got,
            [
                Reply::Simple(b"OK"),
                Reply::Error(b"ERR no"),
                Reply::Integer(42),
                Reply::Bulk(None),
                Reply::Array(None),
            ]
        );
        assert!(parse(b"?x\r\n", 100).is_err());
        assert!(parse(b":x\r\n", 100).is_err());
        assert!(
            parse(b"$5\r\nabcdefg", 100).is_err(),
            "no CRLF after 5 bytes"
        );
        assert!(parse(b"$500\r\n", 100).is_err(), "over bulk_max");
    }

    /// A message split at every byte is whole only once its last byte is
    /// in, and the payload may hold CRLF.
    #[test]
    fn resp_message_reassembles_from_partial_reads() {
        let payload = b"\x00\x01\r\n\xffstamp";
        let mut wire = Vec::new();
        command(&mut wire, &[b"message", b"t.3", payload]);
        wire.extend_from_slice(b":1\r\n");
        let first = wire.len() - 4;
        for cut in 0..first {
            assert_eq!(parse(&wire[..cut], 1000).unwrap(), None, "cut at {cut}");
        }
        let (reply, used) = parse(&wire, 1000).unwrap().unwrap();
        assert_eq!(used, first);
        assert_eq!(message(&reply), Some((&b"t.3"[..], &payload[..])));
        assert_eq!(
            parse(&wire[used..], 1000).unwrap(),
            Some((Reply::Integer(1), 4))
        );
        assert_eq!(message(&Reply::Integer(1)), None);
    }
}
