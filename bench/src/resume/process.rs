//! What every client process of the resume scenario shares: lines from the
//! driver on stdin, the descriptor limit, the event loop's start, and the
//! order the driver's lines come in.

use super::*;

/// Lines from the driver on stdin, read without blocking the event loop.
pub(super) struct StdinLines {
    buf: Vec<u8>,
    pub(super) closed: bool,
}

impl StdinLines {
    fn new() -> Result<StdinLines, String> {
        // SAFETY: fcntl on our own stdin.
        unsafe {
            let flags = libc::fcntl(0, libc::F_GETFL);
            if flags < 0 || libc::fcntl(0, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(format!("stdin: {}", io::Error::last_os_error()));
            }
        }
        Ok(StdinLines {
            buf: Vec::new(),
            closed: false,
        })
    }

    /// The complete lines available now.
    pub(super) fn read(&mut self) -> Vec<String> {
        let mut chunk = [0u8; 4096];
        loop {
            // SAFETY: reads into a live buffer of its size.
            let n = unsafe { libc::read(0, chunk.as_mut_ptr().cast(), chunk.len()) };
            match n {
                0 => {
                    self.closed = true;
                    break;
                }
                n if n > 0 => self.buf.extend_from_slice(&chunk[..n as usize]),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.closed = true;
                    }
                    break;
                }
            }
        }
        let mut lines = Vec::new();
        while let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=at).collect();
            lines.push(String::from_utf8_lossy(&line[..at]).trim().to_string());
        }
        lines
    }

    /// Waits up to `timeout` for the next line.
    pub(super) fn wait_line(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut pending = Vec::new();
        loop {
            pending.extend(self.read());
            if !pending.is_empty() {
                // The driver sends one command at a time.
                return Ok(pending.remove(0));
            }
            if self.closed {
                return Err("the driver went away".into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no word from the driver within {timeout:?}"));
            }
            let mut fd = net::pollfd(0, libc::POLLIN);
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut fd, 1, left.as_millis().min(1000) as i32) };
        }
    }
}

/// Raises the open-file limit and checks `sockets` fit below it.
pub(super) fn fit_descriptors(sockets: usize) -> Result<(), String> {
    let lim = cluecast_sys::raise_nofile_limit().map_err(|e| e.to_string())?;
    let need = sockets as u64 + FDS_SPARE;
    if need > lim.soft {
        return Err(format!(
            "{sockets} sockets in one process need about {need} descriptors; the open-file \
             limit is {}: use more --processes",
            lim.soft
        ));
    }
    Ok(())
}

/// What a client process starts with: room for its `sockets` ([`fit_descriptors`]),
/// then its connect timeout, the run's topics and its clients' id stem
/// (`resume-NONCE`, then `suffix`).
pub(super) fn part_setup(
    args: &Args,
    sockets: usize,
    suffix: &str,
) -> Result<(Duration, Vec<String>, String), String> {
    let timeout = Duration::from_millis(args.common.connect_timeout_ms);
    fit_descriptors(sockets)?;
    let topics: Vec<String> = (0..args.topics)
        .map(|k| topic_name(args.nonce, k))
        .collect();
    Ok((
        timeout,
        topics,
        format!("resume-{:08x}{suffix}", args.nonce),
    ))
}

/// Runs `body`, telling the driver its result or error.
pub(super) fn client_main<T>(
    args: &Args,
    role: &str,
    body: impl FnOnce(SocketAddr, &mut StdinLines) -> Result<T, String>,
    line: impl FnOnce(&T) -> String,
) -> Result<(), String> {
    let result = args
        .common
        .client_start(role)
        .and_then(|(server, _)| Ok((server, StdinLines::new()?)))
        .and_then(|(server, mut stdin)| body(server, &mut stdin));
    match result {
        Ok(o) => {
            crate::child::say(&line(&o));
            Ok(())
        }
        Err(e) => {
            crate::child::say_error(&e);
            Err(e)
        }
    }
}

pub(super) fn set_live_socket(stream: &TcpStream) -> Result<(), String> {
    stream
        .set_nonblocking(true)
        .and_then(|_| net::enable_rx_timestamps(stream))
        .map_err(|e| format!("socket options: {e}"))
}

/// A subscription's order check: the sequence expected next; gaps and
/// repeats counted.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Order {
    pub(super) next: u64,
    pub(super) received: u64,
    pub(super) gaps: u64,
    pub(super) duplicates: u64,
}

impl Order {
    pub(super) fn starting_after(last: u64) -> Order {
        Order {
            next: last + 1,
            ..Order::default()
        }
    }

    pub(super) fn see(&mut self, seq: u64) {
        self.received += 1;
        if seq == self.next {
            self.next += 1;
        } else if seq < self.next {
            self.duplicates += 1;
        } else {
            self.gaps += seq - self.next;
            self.next = seq + 1;
        }
    }

    /// Holds exactly `after + 1 ..= last`, once each, in order.
    pub(super) fn exact(&self, after: u64, last: u64) -> bool {
        self.gaps == 0 && self.duplicates == 0 && self.next == last + 1 && {
            self.received == last - after
        }
    }
}

/// Queues a PING on every connection with nothing queued.
pub(super) fn ping_all<'a>(conns: impl Iterator<Item = (&'a mut TcpStream, &'a mut Vec<u8>)>) {
    for (stream, out) in conns {
        if out.is_empty() {
            Frame::Ping { nonce: 1 }.encode(out);
        }
        let _ = net::write_some(stream, out);
    }
}
