//! The admin listener: plain HTTP/1.1 on its own address (`--admin-listen`),
//! served by a few ordinary threads, never by a shard. `GET /metrics` is the
//! Prometheus text, `GET /status` the JSON `cluecast status` shows,
//! `GET /log-level` the level in effect and `PUT /log-level` (body `error`,
//! `warn`, `info` or `debug`) changes it.
//!
//! The client side is here too: `cluecast status` and `cluecast log-level`
//! ask a running appliance through this listener.
//!
//! Limits: `WORKERS` connections are served at once (more wait in the
//! listen backlog), one request per connection, at most
//! `REQUEST_BYTES_MAX` bytes of request and `BODY_BYTES_MAX` of body, and
//! `IO_TIMEOUT_MS` for each read and write. A malformed request gets 400;
//! nothing a client sends can stop the listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;

use crate::log::Level;
use crate::metrics::Metrics;

/// Threads accepting and serving admin connections, each one at a time.
pub const WORKERS: usize = 2;
/// Most bytes of a request's head and body together.
pub const REQUEST_BYTES_MAX: usize = 8 << 10;
/// Most bytes of a request body (a log level is a word).
pub const BODY_BYTES_MAX: usize = 64;
/// Longest wait for a client's next bytes, or for room to send it ours.
pub const IO_TIMEOUT_MS: u64 = 2_000;

/// A parsed request; the path is without its query string.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
}

/// Why a request is refused before it is routed: status and a message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: &'static str,
}

fn refuse(status: u16, message: &'static str) -> Refusal {
    Refusal { status, message }
}

/// Parses what arrived so far: Ok(None) while the request is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<Request<'_>>, Refusal> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= REQUEST_BYTES_MAX {
            Err(refuse(431, "request head too large"))
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| refuse(400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(400, "malformed request line"));
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(refuse(400, "malformed request line"));
    }
    let mut body_bytes = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(refuse(400, "malformed header line"));
        };
        if name.eq_ignore_ascii_case("content-length") {
            body_bytes = value
                .trim()
                .parse::<usize>()
                .map_err(|_| refuse(400, "malformed Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(refuse(411, "send the body with a Content-Length"));
        }
    }
    if body_bytes > BODY_BYTES_MAX {
        return Err(refuse(413, "request body too large"));
    }
    let body_start = head_end + 4;
    let Some(body) = buf.get(body_start..body_start + body_bytes) else {
        return Ok(None);
    };
    let path = target.split('?').next().unwrap_or(target);
    Ok(Some(Request { method, path, body }))
}

/// An answer: status, content type, body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// For 405: the methods the path takes.
    pub allow: &'static str,
}

fn text(status: u16, body: impl Into<String>) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into(),
        allow: "",
    }
}

fn not_allowed(allow: &'static str) -> Response {
    Response {
        allow,
        ..text(405, format!("allowed: {allow}\n"))
    }
}

/// The answer to a well-formed request. Reading is open to whoever reaches
/// the listener; changing the log level only to this host, since a listener
/// bound beyond loopback has no authentication.
pub fn route(metrics: &Metrics, request: &Request<'_>, from_loopback: bool) -> Response {
    let uptime_ms = metrics.started.elapsed().as_millis() as u64;
    match (request.path, request.method) {
        ("/metrics", "GET") => Response {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            ..text(200, metrics.render(uptime_ms))
        },
        ("/metrics", _) => not_allowed("GET"),
        ("/status", "GET") => {
            let wall_ms = cluecast_sys::realtime_ns() / 1_000_000;
            let mut body = metrics.status(uptime_ms, wall_ms).to_string();
            body.push('\n');
            Response {
                content_type: "application/json",
                ..text(200, body)
            }
        }
        ("/status", _) => not_allowed("GET"),
        ("/log-level", "GET") => text(200, format!("{}\n", crate::log::level().name())),
        ("/log-level", "PUT") if !from_loopback => text(
            403,
            "the log level may be changed from the appliance's own host only\n",
        ),
        ("/log-level", "PUT") => {
            let word = std::str::from_utf8(request.body).unwrap_or_default().trim();
            match Level::from_str(word, true) {
                Ok(level) => {
                    crate::log::set_level(level);
                    crate::info!("admin: log level set to {}", level.name());
                    text(200, format!("{}\n", level.name()))
                }
                Err(_) => text(400, "the body must be one of: error, warn, info, debug\n"),
            }
        }
        ("/log-level", _) => not_allowed("GET, PUT"),
        _ => text(404, "not found: try /metrics, /status or /log-level\n"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

fn write_response(stream: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    let allow = if response.allow.is_empty() {
        String::new()
    } else {
        format!("Allow: {}\r\n", response.allow)
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}\
         Connection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(response.body.as_bytes())
}

/// Reads one request (within the limits), answers it, and closes.
fn serve(metrics: &Metrics, mut stream: TcpStream) -> std::io::Result<()> {
    let timeout = Some(Duration::from_millis(IO_TIMEOUT_MS));
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    let from_loopback = stream.peer_addr()?.ip().is_loopback();
    let mut buf = [0u8; REQUEST_BYTES_MAX];
    let mut len = 0;
    // A client trickling bytes gets the whole budget once, not per read.
    let deadline = Instant::now() + Duration::from_millis(IO_TIMEOUT_MS);
    let response = loop {
        match parse(&buf[..len]) {
            Ok(Some(request)) => break route(metrics, &request, from_loopback),
            Err(refusal) => break text(refusal.status, format!("{}\n", refusal.message)),
            Ok(None) => {}
        }
        if Instant::now() >= deadline {
            break text(408, "request not complete in time\n");
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(()),
            Ok(n) => len += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break text(408, "request not complete in time\n");
            }
            Err(e) => return Err(e),
        }
    };
    write_response(&mut stream, &response)
}

/// Binds the admin address; the error names the setting.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| {
        format!(
            "--admin-listen {addr}: cannot listen there: {e} (another process has it? \
             choose another address, or `off`)"
        )
    })
}

/// Starts the worker threads; they serve until the process exits.
pub fn start(listener: TcpListener, metrics: Arc<Metrics>) -> Result<(), String> {
    for i in 0..WORKERS {
        let listener = listener
            .try_clone()
            .map_err(|e| format!("admin listener: {e}"))?;
        let metrics = metrics.clone();
        std::thread::Builder::new()
            .name(format!("admin-{i}"))
            .spawn(move || loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = serve(&metrics, stream) {
                            crate::debug!("admin: {e}");
                        }
                    }
                    Err(e) => {
                        crate::warn!("admin: accept failed: {e}");
                        // Out of descriptors, most likely: give it a moment.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .map_err(|e| format!("spawning the admin thread: {e}"))?;
    }
    Ok(())
}

// ---- client side --------------------------------------------------------

/// Most bytes of an answer the client reads (the metrics of many shards).
const RESPONSE_BYTES_MAX: u64 = 16 << 20;

/// One request to the admin listener at `addr`: its status and body.
pub fn request(addr: &str, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let unreachable = |e: std::io::Error| {
        format!(
            "nothing answers at {addr} (--admin): {e}; is cluecast running with \
             --admin-listen {addr}?"
        )
    };
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("--admin {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("--admin {addr}: no address"))?;
    let timeout = Duration::from_millis(IO_TIMEOUT_MS);
    let mut stream = TcpStream::connect_timeout(&target, timeout).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(format!("{head}{body}").as_bytes())
        .map_err(unreachable)?;
    let mut answer = Vec::new();
    stream
        .take(RESPONSE_BYTES_MAX)
        .read_to_end(&mut answer)
        .map_err(|e| format!("reading the answer of {addr}: {e}"))?;
    let answer = String::from_utf8(answer)
        .map_err(|_| format!("{addr} answered with bytes that are not UTF-8"))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr} did not answer in HTTP"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr} did not answer in HTTP"))?;
    Ok((status, body.to_string()))
}

/// A GET or PUT that must succeed: its body.
fn expect_ok(addr: &str, method: &str, path: &str, body: &str) -> Result<String, String> {
    match request(addr, method, path, body)? {
        (200, body) => Ok(body),
        (status, body) => Err(format!("{addr}{path}: {status}: {}", body.trim())),
    }
}

fn status_sample(addr: &str) -> Result<(Instant, serde_json::Value), String> {
    let body = expect_ok(addr, "GET", "/status", "")?;
    let value = serde_json::from_str(&body).map_err(|e| format!("{addr}/status: {e}"))?;
    Ok((Instant::now(), value))
}

/// How long `cluecast status` waits between its two samples.
const STATUS_SAMPLE_GAP_MS: u64 = 1_000;

/// `cluecast status`: two samples `STATUS_SAMPLE_GAP_MS` apart, the rates
/// between them, printed as one screen or (with `json`) as the second
/// sample with the rates added.
pub fn status_command(addr: &str, json: bool) -> Result<(), String> {
    let (first_at, first) = status_sample(addr)?;
    std::thread::sleep(Duration::from_millis(STATUS_SAMPLE_GAP_MS));
    let (second_at, mut status) = status_sample(addr)?;
    let seconds = (second_at - first_at).as_secs_f64();
    for (total, rate) in [
        ("published_total", "publish_per_s"),
        ("deliveries_total", "deliveries_per_s"),
    ] {
        let (a, b) = (first[total].as_u64(), status[total].as_u64());
        let per_s = match (a, b) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / seconds,
            _ => return Err(format!("{addr}/status has no {total}")),
        };
        status[rate] = serde_json::json!((per_s * 10.0).round() / 10.0);
    }
    if json {
        println!("{status}");
    } else {
        print!("{}", status_screen(&status));
    }
    Ok(())
}

/// The one-screen form of a status sample (with its rates).
fn status_screen(s: &serde_json::Value) -> String {
    let n = |key: &str| s[key].as_u64().unwrap_or(0);
    let upto = |key: &str| match s[key].as_u64() {
        None => "-".to_string(),
        Some(u64::MAX) => "over 8.4 s".to_string(),
        Some(us) => format!("<= {us} us"),
    };
    let uptime = n("uptime_s");
    let ages: Vec<String> = s["shard_last_turn_age_ms"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| format!("{} ms", v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "cluecast {} ({}), up {}h {:02}m {:02}s, durability {}, {} shard(s)\n\
         placement      {}\n\
         connections    {}   subscriptions {}   topics {}   queued {} B\n\
         published      {} ({}/s)\n\
         delivered      {} ({}/s)\n\
         publish->send  p50 {}, p99 {} ({} events sent)\n\
         storage commit p99 {} ({} batches)\n\
         refused        {} connections, {} for tokens, {} overloaded, {} slow-consumer goaways\n\
         shard loops    last turn {} ago\n",
        s["version"].as_str().unwrap_or("?"),
        s["allocator"].as_str().unwrap_or("?"),
        uptime / 3600,
        uptime / 60 % 60,
        uptime % 60,
        s["durability"].as_str().unwrap_or("?"),
        n("shards"),
        s["placement"].as_str().unwrap_or("?"),
        n("connections"),
        n("subscriptions"),
        n("topics"),
        n("queued_bytes"),
        n("published_total"),
        s["publish_per_s"],
        n("deliveries_total"),
        s["deliveries_per_s"],
        upto("publish_to_send_p50_us"),
        upto("publish_to_send_p99_us"),
        n("publish_to_send_count"),
        upto("storage_commit_p99_us"),
        n("storage_commits"),
        n("connections_refused_total"),
        n("auth_refusals_total"),
        n("overloaded_total"),
        n("slow_consumer_goaways_total"),
        ages.join(", "),
    )
}

/// `cluecast log-level LEVEL`: sets a running appliance's log level.
pub fn log_level_command(addr: &str, level: Level) -> Result<(), String> {
    let body = expect_ok(addr, "PUT", "/log-level", level.name())?;
    println!("{}", body.trim());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_request_parses_and_its_query_is_dropped() {
        let req = parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            req,
            Request {
                method: "GET",
                path: "/metrics",
                body: b""
            }
        );
        let req = parse(b"PUT /log-level HTTP/1.1\r\ncontent-length: 5\r\n\r\ndebug")
            .unwrap()
            .unwrap();
        assert_eq!(req.body, b"debug");
    }

    #[test]
    fn an_incomplete_request_waits_for_more() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\n"), Ok(None));
        assert_eq!(
            parse(b"PUT /log-level HTTP/1.1\r\nContent-Length: 5\r\n\r\ndeb"),
            Ok(None)
        );
    }

    #[test]
    fn malformed_and_oversized_requests_are_refused() {
        let status = |bytes: &[u8]| parse(bytes).unwrap_err().status;
        assert_eq!(status(b"GET\r\n\r\n"), 400);
        assert_eq!(status(b"GET /a b HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET metrics HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET /metrics SPDY/3\r\n\r\n"), 400);
        assert_eq!(status(b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\n\xff: 1\r\n\r\n"), 400);
        assert_eq!(status(b"PUT / HTTP/1.1\r\nContent-Length: 65\r\n\r\n"), 413);
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(REQUEST_BYTES_MAX, b'a');
        assert_eq!(status(&huge), 431);
    }

    #[test]
    fn only_this_host_may_change_the_log_level() {
        let (metrics, _) = crate::metrics::tests::one_shard();
        let level = crate::log::level();
        let put = b"PUT /log-level HTTP/1.1\r\nContent-Length: 5\r\n\r\ndebug";
        let put = parse(put).unwrap().unwrap();
        assert_eq!(route(&metrics, &put, false).status, 403);
        assert_eq!(
            crate::log::level(),
            level,
            "a refused request changes nothing"
        );
        let get = parse(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(route(&metrics, &get, false).status, 200);
    }
}
