//! `cluecast-bench ceiling`: the practical ceiling for fan-out on this
//! host, a comparison target for `fanout --target ceiling`.
//!
//! A deliberately trivial server: one thread, epoll, and for every PUBLISH
//! one non-blocking `send(2)` of the EVENT frame per subscriber of the
//! topic (no batching, no shared buffers, no queueing). Only when a socket
//! refuses bytes does that subscriber's rest go to a bounded per-connection
//! buffer, flushed on writability. What it costs is therefore the kernel's
//! cost of one send per delivery, plus the little protocol work the
//! generator needs: HELLO→WELCOME, SUBSCRIBE→SUBSCRIBED (live),
//! PUBLISH→PUBLISH_ACK, PING→PONG. Events are sequenced per topic; nothing
//! is retained.
//!
//! It prints `listening on ADDR` and, on SIGTERM, exits 0 after a
//! `ShardStats { .. }` line, like the appliance, so server.rs starts, pins,
//! watches and stops it unchanged.
//!
//! [`Faults`] (off by default) make it a deliberately lossy server, to show
//! the generator catches what it claims to: bench/src/accounting_tests.rs.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cluecast_proto::{
    decode, Event, Frame, Limits, PublishAck, SubscribeStatus, Subscribed, Welcome,
};

/// Unsent bytes one connection may hold before it is dropped (a subscriber
/// that stopped reading must not grow the server without bound).
const OUT_MAX: usize = 8 << 20;
/// Bytes taken per read(2). Unparsed input stays below one largest frame
/// plus this: decode() refuses a longer length prefix, which closes the
/// connection.
const READ_CHUNK: usize = 64 << 10;
/// Longest epoll wait, so a stop request is seen promptly.
const WAIT_MS: i32 = 100;
/// Readiness reports taken per wait.
const EVENTS_PER_WAIT: usize = 256;
/// The epoch every EVENT and ack carries (nothing survives a restart).
const EPOCH: u64 = 1;
/// Token of the listening socket; connection k has token k.
const LISTENER: u64 = u64::MAX;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Address to listen on (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Largest payload accepted
    #[arg(long, default_value_t = Limits::DEFAULT.payload_bytes_max)]
    pub payload_bytes_max: u32,
    #[command(flatten)]
    pub faults: Faults,
}

/// Deliberate faults, for testing the generator's accounting: applied to
/// the k-th delivery (k = 1, 2, ...) to each subscriber connection, in
/// this order. 0 turns a fault off; all are off by default.
///
/// Faulted deliveries keep their sequence numbers, as a real lossy
/// server's would (it sequences an event, then fails to deliver it): a
/// drop leaves a gap, a duplicate repeats a seq, a swap inverts two, and
/// the generator's `seq_errors` sees each as well as its loss, duplicate
/// and order counts.
#[derive(clap::Args, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Testing the generator: do not send every Nth delivery to each
    /// subscriber (0: never)
    #[arg(long, default_value_t = 0)]
    pub drop_every: u64,
    /// Testing the generator: send every Nth delivery to each subscriber
    /// twice, back to back (0: never)
    #[arg(long, default_value_t = 0)]
    pub duplicate_every: u64,
    /// Testing the generator: hold back every Nth delivery to each
    /// subscriber and send it right after the next one sent there, so the
    /// two arrive swapped (0: never). One still held when publishing ends
    /// is never sent. The delivery that releases one is not held itself.
    #[arg(long, default_value_t = 0)]
    pub swap_every: u64,
}

impl Faults {
    fn any(&self) -> bool {
        self != &Faults::default()
    }
}

/// Counters printed on exit (as `ShardStats { .. }`, which the driver
/// parses like the appliance's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    /// send(2) calls, deliveries and answers.
    pub sends: u64,
    /// Events due to subscribers, faulted ones included.
    pub deliveries: u64,
    /// Connections dropped for a full output buffer.
    pub slow_consumer_goaways: u64,
    /// [`Faults`]: deliveries not sent, sent a second time, and sent after
    /// their successor.
    pub dropped: u64,
    pub duplicated: u64,
    pub swapped: u64,
}

/// The subcommand: serve until SIGTERM, then report and exit 0.
pub fn main(args: &Args) -> Result<(), String> {
    // As the appliance does: the signals are blocked here and in the
    // serving thread, and taken by this thread alone.
    cluecast_sys::block_shutdown_signals().map_err(|e| format!("signals: {e}"))?;
    let listener =
        TcpListener::bind(args.listen).map_err(|e| format!("binding {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let limits = limits(args.payload_bytes_max);
    let faults = args.faults;
    let server = std::thread::Builder::new()
        .name("ceiling".into())
        .spawn(move || serve(listener, limits, faults, &flag))
        .map_err(|e| format!("spawning the server thread: {e}"))?;
    eprintln!("info ceiling: listening on {addr}");
    if faults.any() {
        eprintln!("warn ceiling: injecting faults (for testing the generator): {faults:?}");
    }
    while !server.is_finished() {
        if cluecast_sys::wait_shutdown_signal(WAIT_MS as u64)
            .map_err(|e| format!("waiting for a signal: {e}"))?
            .is_some()
        {
            stop.store(true, Ordering::Relaxed);
        }
    }
    let stats = server
        .join()
        .map_err(|_| "the server thread panicked".to_string())??;
    eprintln!(
        "info ceiling: shard 0 stopped: ShardStats {{ accepted: {}, sends: {}, deliveries: {}, \
         slow_consumer_goaways: {}, dropped: {}, duplicated: {}, swapped: {} }}",
        stats.accepted,
        stats.sends,
        stats.deliveries,
        stats.slow_consumer_goaways,
        stats.dropped,
        stats.duplicated,
        stats.swapped
    );
    Ok(())
}

/// The protocol limits for payloads up to `payload_bytes_max`.
pub fn limits(payload_bytes_max: u32) -> Limits {
    let payload_bytes_max = payload_bytes_max.max(Limits::DEFAULT.payload_bytes_max);
    Limits {
        frame_bytes_max: Limits::frame_bytes_for(payload_bytes_max, 4_096),
        payload_bytes_max,
        ..Limits::DEFAULT
    }
}

struct Conn {
    stream: TcpStream,
    /// Unparsed input.
    inbuf: Vec<u8>,
    /// Bytes the socket refused, oldest first; sent before anything new.
    out: Vec<u8>,
    /// Registered for writability.
    want_out: bool,
    alive: bool,
    /// [`Faults`] only: deliveries so far, and the one held back to swap.
    deliveries: u64,
    held: Vec<u8>,
}

struct Topic {
    seq: u64,
    /// Connection indices subscribed (live) to it.
    subs: Vec<usize>,
}

/// Serves on `listener`, with `faults`, until `stop` is set.
pub fn serve(
    listener: TcpListener,
    limits: Limits,
    faults: Faults,
    stop: &AtomicBool,
) -> Result<Stats, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    // SAFETY: plain system call.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(format!("epoll_create1: {}", io::Error::last_os_error()));
    }
    let mut server = Ceiling {
        ep,
        limits,
        faults: faults.any().then_some(faults),
        conns: Vec::new(),
        topics: HashMap::new(),
        stats: Stats::default(),
        frame: Vec::new(),
        faulty: Vec::new(),
    };
    let result = server.run(&listener, stop);
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(ep) };
    result.map(|()| server.stats)
}

struct Ceiling {
    ep: i32,
    limits: Limits,
    /// None when all are off: one branch per delivery then.
    faults: Option<Faults>,
    conns: Vec<Conn>,
    topics: HashMap<Vec<u8>, Topic>,
    stats: Stats,
    /// Scratch for encoding one frame.
    frame: Vec<u8>,
    /// Scratch for what one faulted delivery sends.
    faulty: Vec<u8>,
}

impl Ceiling {
    fn ctl(&self, op: i32, fd: i32, token: u64, events: u32) {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is valid for the call. A failure only loses
        // readiness reports for a connection that is going away anyway.
        unsafe { libc::epoll_ctl(self.ep, op, fd, &mut ev) };
    }

    fn run(&mut self, listener: &TcpListener, stop: &AtomicBool) -> Result<(), String> {
        self.ctl(
            libc::EPOLL_CTL_ADD,
            listener.as_raw_fd(),
            LISTENER,
            libc::EPOLLIN as u32,
        );
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: `events` has room for EVENTS_PER_WAIT entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.ep,
                    events.as_mut_ptr(),
                    EVENTS_PER_WAIT as i32,
                    WAIT_MS,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("epoll_wait: {e}"));
            }
            for ev in &events[..n as usize] {
                let (token, flags) = (ev.u64, ev.events);
                if token == LISTENER {
                    self.accept(listener);
                    continue;
                }
                let k = token as usize;
                if flags & libc::EPOLLOUT as u32 != 0 {
                    self.flush(k);
                }
                if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    self.read(k);
                }
            }
        }
        Ok(())
    }

    /// Accepts every pending connection.
    fn accept(&mut self, listener: &TcpListener) {
        while let Ok((stream, _)) = listener.accept() {
            if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
                continue;
            }
            self.stats.accepted += 1;
            let k = self.conns.len();
            self.ctl(
                libc::EPOLL_CTL_ADD,
                stream.as_raw_fd(),
                k as u64,
                libc::EPOLLIN as u32,
            );
            self.conns.push(Conn {
                stream,
                inbuf: Vec::new(),
                out: Vec::new(),
                want_out: false,
                alive: true,
                deliveries: 0,
                held: Vec::new(),
            });
        }
    }

    /// Reads what connection `k` sent (a bounded number of times) and
    /// answers every complete frame.
    fn read(&mut self, k: usize) {
        let mut chunk = [0u8; READ_CHUNK];
        for _ in 0..4 {
            let Some(c) = self.conns.get_mut(k).filter(|c| c.alive) else {
                return;
            };
            match c.stream.read(&mut chunk) {
                Ok(0) => return self.close(k),
                Ok(n) => c.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(k),
            }
        }
        // Taken out so frames can borrow it while other connections are
        // written to.
        let inbuf = std::mem::take(&mut self.conns[k].inbuf);
        let mut used = 0;
        loop {
            match decode(&inbuf[used..], &self.limits) {
                Ok(Some((frame, n))) => {
                    used += n;
                    self.handle(k, &frame);
                }
                Ok(None) => break,
                // Garbage: this server is for measuring, not arguing.
                Err(_) => return self.close(k),
            }
        }
        if let Some(c) = self.conns.get_mut(k).filter(|c| c.alive) {
            c.inbuf = inbuf;
            c.inbuf.drain(..used);
        }
    }

    fn handle(&mut self, k: usize, frame: &Frame<'_>) {
        match frame {
            Frame::Hello(_) => {
                self.answer(
                    k,
                    &Frame::Welcome(Welcome {
                        version: 1,
                        // No heartbeats or idle timeout: nothing to police.
                        heartbeat_ms: 0,
                        idle_timeout_ms: 0,
                        frame_bytes_max: self.limits.frame_bytes_max,
                        payload_bytes_max: self.limits.payload_bytes_max,
                        subscriptions_max: 1024,
                        topic_bytes_max: self.limits.topic_bytes_max,
                    }),
                );
            }
            Frame::Subscribe(s) => {
                let topic = self.topics.entry(s.topic.to_vec()).or_insert(Topic {
                    seq: 0,
                    subs: Vec::new(),
                });
                if !topic.subs.contains(&k) {
                    topic.subs.push(k);
                }
                let last_seq = topic.seq;
                self.answer(
                    k,
                    &Frame::Subscribed(Subscribed {
                        status: SubscribeStatus::Ok,
                        epoch: EPOCH,
                        oldest_seq: 0,
                        last_seq,
                        topic: s.topic,
                    }),
                );
            }
            Frame::Publish(p) => {
                let topic = self.topics.entry(p.topic.to_vec()).or_insert(Topic {
                    seq: 0,
                    subs: Vec::new(),
                });
                topic.seq += 1;
                let seq = topic.seq;
                // One encoding, then one send(2) per subscriber.
                self.frame.clear();
                Frame::Event(Event {
                    seq,
                    epoch: EPOCH,
                    publish_ts_ns: cluecast_sys::realtime_ns(),
                    topic: p.topic,
                    payload: p.payload,
                })
                .encode(&mut self.frame);
                let frame = std::mem::take(&mut self.frame);
                let subs = std::mem::take(&mut topic.subs);
                for &s in &subs {
                    self.stats.deliveries += 1;
                    match self.faults {
                        None => self.send(s, &frame),
                        Some(f) => self.deliver_faulty(s, &frame, f),
                    }
                }
                // Connections closed meanwhile leave the topic.
                let alive: Vec<usize> = subs
                    .into_iter()
                    .filter(|&s| self.conns.get(s).is_some_and(|c| c.alive))
                    .collect();
                if let Some(t) = self.topics.get_mut(p.topic) {
                    t.subs = alive;
                }
                self.frame = frame;
                self.answer(
                    k,
                    &Frame::PublishAck(PublishAck {
                        request_id: p.request_id,
                        status: 0,
                        flags: 0,
                        epoch: EPOCH,
                        seq,
                    }),
                );
            }
            Frame::Ping { nonce } => self.answer(k, &Frame::Pong { nonce: *nonce }),
            // Nothing else is needed by the generator.
            _ => {}
        }
    }

    fn answer(&mut self, k: usize, frame: &Frame<'_>) {
        let mut bytes = std::mem::take(&mut self.frame);
        bytes.clear();
        frame.encode(&mut bytes);
        self.send(k, &bytes);
        self.frame = bytes;
    }

    /// One non-blocking send(2) of `bytes` to connection `k`; what the
    /// socket refuses waits in its buffer (behind anything already there,
    /// to keep order).
    fn send(&mut self, k: usize, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(k).filter(|c| c.alive) else {
            return;
        };
        let mut sent = 0;
        if c.out.is_empty() {
            self.stats.sends += 1;
            match send_once(&c.stream, bytes) {
                Ok(n) => sent = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return self.close(k),
            }
        }
        if sent == bytes.len() {
            return;
        }
        if c.out.len() + bytes.len() - sent > OUT_MAX {
            self.stats.slow_consumer_goaways += 1;
            return self.close(k);
        }
        c.out.extend_from_slice(&bytes[sent..]);
        if !c.want_out {
            c.want_out = true;
            let fd = c.stream.as_raw_fd();
            self.ctl(
                libc::EPOLL_CTL_MOD,
                fd,
                k as u64,
                (libc::EPOLLIN | libc::EPOLLOUT) as u32,
            );
        }
    }

    /// Delivers `frame` to connection `k` as [`Faults`] say. What goes out
    /// goes in one send, so a duplicate or a swapped pair reaches the
    /// generator in the same read as the delivery it follows (the generator
    /// may stop reading as soon as it has everything once).
    fn deliver_faulty(&mut self, k: usize, frame: &[u8], f: Faults) {
        let Some(c) = self.conns.get_mut(k).filter(|c| c.alive) else {
            return;
        };
        c.deliveries += 1;
        let n = c.deliveries;
        let hit = |every: u64| every != 0 && n % every == 0;
        if hit(f.drop_every) {
            self.stats.dropped += 1;
            return;
        }
        let mut out = std::mem::take(&mut self.faulty);
        out.clear();
        out.extend_from_slice(frame);
        if hit(f.duplicate_every) {
            self.stats.duplicated += 1;
            out.extend_from_slice(frame);
        }
        if c.held.is_empty() {
            if hit(f.swap_every) {
                c.held.extend_from_slice(&out);
                self.faulty = out;
                return;
            }
        } else {
            self.stats.swapped += 1;
            out.append(&mut c.held);
        }
        self.send(k, &out);
        self.faulty = out;
    }

    /// Writes the buffered bytes of connection `k` the socket now takes.
    fn flush(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k).filter(|c| c.alive) else {
            return;
        };
        while !c.out.is_empty() {
            self.stats.sends += 1;
            match send_once(&c.stream, &c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.close(k),
            }
        }
        c.want_out = false;
        let fd = c.stream.as_raw_fd();
        self.ctl(libc::EPOLL_CTL_MOD, fd, k as u64, libc::EPOLLIN as u32);
    }

    /// Forgets connection `k` (its slot stays, so tokens stay valid).
    fn close(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k).filter(|c| c.alive) else {
            return;
        };
        c.alive = false;
        let fd = c.stream.as_raw_fd();
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        c.out = Vec::new();
        c.inbuf = Vec::new();
        c.held = Vec::new();
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
    }
}

/// One send(2) that neither blocks nor raises SIGPIPE. Ok(0) only for an
/// empty `bytes`.
fn send_once(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is a live buffer of that length.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Stamp, Track, STAMP_BYTES};
    use crate::wire::{self, await_frame, Connected};
    use cluecast_proto::{FrameConn, Publish, StartMode, Subscribe};
    use std::io::Write;
    use std::time::{Duration, Instant};

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// [`serve`] on a thread: its address, stop flag and thread.
    fn spawn() -> (
        SocketAddr,
        Arc<AtomicBool>,
        std::thread::JoinHandle<Result<Stats, String>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread =
            std::thread::spawn(move || serve(listener, limits(0), Faults::default(), &flag));
        (addr, stop, thread)
    }

    fn subscriber(addr: SocketAddr, topic: &str) -> (Connected, u64) {
        let mut c = wire::connect(addr, "sub", TIMEOUT).unwrap();
        let last = c.subscribe_live(topic.as_bytes(), TIMEOUT).unwrap();
        (c, last)
    }

    /// Reads `n` EVENTs: (seq, publisher counter) of each, in arrival order.
    fn events(c: &mut Connected, n: usize) -> Vec<(u64, u64)> {
        let deadline = Instant::now() + TIMEOUT;
        (0..n)
            .map(|_| {
                await_frame(&mut c.conn, deadline, "EVENT", |f| match f {
                    Frame::Event(e) => Some((e.seq, Stamp::read(e.payload)?.counter)),
                    _ => None,
                })
                .unwrap()
            })
            .collect()
    }

    /// What delivery.rs makes of counters arriving in this order on one
    /// topic of `topics`, with `published` events on it.
    fn track(counters: impl Iterator<Item = u64>, topics: u64, published: u64) -> (Track, u64) {
        let mut t = Track::default();
        for n in counters {
            t.see(n / topics);
        }
        let lost = t.tally(published, &[]).lost;
        (t, lost)
    }

    #[test]
    fn ceiling_delivers_every_event_once_in_order() {
        let (addr, stop, thread) = spawn();
        let topics = ["t.0", "t.1"];
        let mut subs: Vec<(Connected, u64)> =
            (0..6).map(|i| subscriber(addr, topics[i % 2])).collect();
        assert!(subs.iter().all(|(_, last)| *last == 0));
        let mut p = wire::connect(addr, "pub", TIMEOUT).unwrap();
        let mut out = Vec::new();
        let mut payload = [0u8; STAMP_BYTES + 8];
        for n in 0..100u64 {
            Stamp {
                publisher: 0,
                counter: n,
                scheduled_ns: 0,
            }
            .write(&mut payload);
            Frame::Publish(Publish {
                request_id: n as u32,
                topic: topics[(n % 2) as usize].as_bytes(),
                payload: &payload,
            })
            .encode(&mut out);
        }
        p.conn.stream.write_all(&out).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        for n in 0..100u32 {
            let id = await_frame(&mut p.conn, deadline, "ack", |f| match f {
                Frame::PublishAck(a) => Some(a.request_id),
                _ => None,
            })
            .unwrap();
            assert_eq!(id, n);
        }
        for (i, (c, _)) in subs.iter_mut().enumerate() {
            let got = events(c, 50);
            let topic = (i % 2) as u64;
            for (j, &(seq, counter)) in got.iter().enumerate() {
                assert_eq!((seq, counter), (j as u64 + 1, 2 * j as u64 + topic));
            }
            let (t, lost) = track(got.iter().map(|e| e.1), 2, 50);
            assert_eq!((t.unique, t.duplicated, t.reordered, lost), (50, 0, 0, 0));
        }
        stop.store(true, Ordering::Relaxed);
        let stats = thread.join().unwrap().unwrap();
        assert_eq!(stats.deliveries, 300);
        assert_eq!(stats.accepted, 7);
    }

    /// A server that drops counter 5 and sends 4 before 3: the accounting
    /// the generator uses must see exactly that.
    #[test]
    fn lossy_server_is_caught() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let order = [0u64, 1, 2, 4, 3, 6, 7, 8, 9];
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let deadline = Instant::now() + TIMEOUT;
            let lim = Limits::DEFAULT;
            let mut conn = FrameConn::new(s, lim);
            await_frame(&mut conn, deadline, "HELLO", |f| {
                matches!(f, Frame::Hello(_)).then_some(())
            })
            .unwrap();
            conn.send(&Frame::Welcome(Welcome {
                version: 1,
                heartbeat_ms: 0,
                idle_timeout_ms: 0,
                frame_bytes_max: lim.frame_bytes_max,
                payload_bytes_max: lim.payload_bytes_max,
                subscriptions_max: 1,
                topic_bytes_max: lim.topic_bytes_max,
            }))
            .unwrap();
            await_frame(&mut conn, deadline, "SUBSCRIBE", |f| {
                matches!(
                    f,
                    Frame::Subscribe(Subscribe {
                        mode: StartMode::Live,
                        ..
                    })
                )
                .then_some(())
            })
            .unwrap();
            let mut out = Vec::new();
            Frame::Subscribed(Subscribed {
                status: SubscribeStatus::Ok,
                epoch: EPOCH,
                oldest_seq: 0,
                last_seq: 0,
                topic: b"t",
            })
            .encode(&mut out);
            let mut payload = [0u8; STAMP_BYTES];
            for (i, &n) in order.iter().enumerate() {
                Stamp {
                    publisher: 0,
                    counter: n,
                    scheduled_ns: 0,
                }
                .write(&mut payload);
                Frame::Event(Event {
                    seq: i as u64 + 1,
                    epoch: EPOCH,
                    publish_ts_ns: 0,
                    topic: b"t",
                    payload: &payload,
                })
                .encode(&mut out);
            }
            conn.stream.write_all(&out).unwrap();
        });
        let (mut c, _) = subscriber(addr, "t");
        let got = events(&mut c, order.len());
        server.join().unwrap();
        let (t, lost) = track(got.iter().map(|e| e.1), 1, 10);
        assert_eq!(lost, 1, "counter 5 never came");
        assert!(t.reordered >= 1, "3 came after 4");
        assert_eq!(t.duplicated, 0);
    }
}
