//! The attackers of `cluecast-bench storm --attack` (issue 15): a flood
//! of connections that never finish their handshake, from one thread of
//! the client process (epoll, non-blocking sockets; its CPU counts in the
//! generator's), so that the storm's returning subscribers (newcomers.rs)
//! meet a server whose handshake slots and accept rate are under siege.
//!
//! Connections come from `--attack-sources` addresses in 127.3.0.0/16,
//! bound before connect: the appliance counts every loopback address but
//! 127.0.0.1 as a remote source, so one host rehearses an attack from
//! many. They are opened at `--attack-rate` a second in all (a token
//! bucket: a steady flood), each held until the server closes it, never
//! more than `--attack-sockets-max` at once. Kinds take turns: silent
//! (send nothing), trickle (a valid HELLO one byte a second; with --tls
//! the ClientHello, the first thing a TLS client sends), tls-hello (a TLS
//! 1.3 ClientHello, then nothing). How each ended is counted: GOAWAY
//! ServerFull, ERROR, closed without a frame (over TLS a refusal is a bare
//! close, docs/SECURITY.md), WELCOME, connect failed, or still held.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluecast_proto::{decode, ErrorCode, Frame, GoAwayReason, Hello, Limits};

use crate::net::{Epoll, READABLE, WRITABLE};
use crate::outcome::Outcome;
use crate::tls::TlsClient;

/// Attack connection n comes from `NET + 1 + n % sources`.
const NET: Ipv4Addr = Ipv4Addr::new(127, 3, 0, 0);
/// Most sources: the /16 less its network and broadcast addresses.
const SOURCES_MAX: u32 = 65_534;
const SOURCES_DEFAULT: u32 = 200;
const RATE_PER_S_DEFAULT: f64 = 2_000.0;
const SOCKETS_MAX_DEFAULT: usize = 4_000;
/// A trickle's gap between bytes.
const TRICKLE_EVERY: Duration = Duration::from_secs(1);
/// Openings that may be caught up after a stall of the thread; beyond
/// that they are dropped, so the server sees a steady flood, not bursts.
const CATCH_UP: Duration = Duration::from_millis(10);
/// Longest wait, so the stop flag is seen promptly.
const WAIT_SLICE: Duration = Duration::from_millis(10);
/// Readiness reports taken per wait.
const EVENTS_PER_WAIT: usize = 512;

/// What an attack connection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Silent,
    Trickle,
    TlsHello,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Silent, Kind::Trickle, Kind::TlsHello];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Silent => "silent",
            Kind::Trickle => "trickle",
            Kind::TlsHello => "tls-hello",
        }
    }
}

/// The kinds of `--attack`, in the order connections take them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds {
    list: [Kind; 3],
    len: usize,
}

impl Kinds {
    pub fn iter(&self) -> impl Iterator<Item = Kind> + '_ {
        self.list[..self.len].iter().copied()
    }

    /// The kind of the n-th connection.
    fn nth(&self, n: u64) -> Kind {
        self.list[(n % self.len as u64) as usize]
    }
}

impl FromStr for Kinds {
    type Err = String;

    fn from_str(s: &str) -> Result<Kinds, String> {
        let mut kinds = Kinds {
            list: [Kind::Silent; 3],
            len: 0,
        };
        for word in s.split(',').map(str::trim) {
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.name() == word)
                .ok_or_else(|| {
                    format!("unknown attack kind {word:?} (kinds: silent, trickle, tls-hello)")
                })?;
            if kinds.iter().any(|k| k == kind) {
                return Err(format!("attack kind {word} given twice"));
            }
            kinds.list[kinds.len] = kind;
            kinds.len += 1;
        }
        Ok(kinds)
    }
}

impl fmt::Display for Kinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Kind::name).collect();
        f.write_str(&names.join(","))
    }
}

/// `storm`'s attack flags.
#[derive(clap::Args, Clone, Copy, Debug, PartialEq)]
pub struct AttackFlags {
    /// Run every round twice, each against a fresh server: calm, and under
    /// a flood of handshakes that never finish, of these kinds in turn
    /// (comma list): silent (connect, send nothing), trickle (a valid HELLO
    /// one byte a second; with --tls the ClientHello), tls-hello (a TLS 1.3
    /// ClientHello, then nothing; needs --tls). In both runs the returning
    /// subscribers come each from an address of its own in 127.2.0.0/16,
    /// timed from connect to SUBSCRIBED, refusals counted and retried
    #[arg(long, value_name = "KINDS")]
    pub attack: Option<Kinds>,
    /// Source addresses the attack comes from, 127.3.0.1 on
    #[arg(long, default_value_t = SOURCES_DEFAULT)]
    pub attack_sources: u32,
    /// New attack connections per second, all sources together
    #[arg(long = "attack-rate", value_name = "PER_S", default_value_t = RATE_PER_S_DEFAULT)]
    pub attack_rate_per_s: f64,
    /// Most attack connections held at once (a process may hold 20,000
    /// files here, the subscribers' included)
    #[arg(long, default_value_t = SOCKETS_MAX_DEFAULT)]
    pub attack_sockets_max: usize,
    /// The calm run of the pair: newcomers as under attack, no attackers
    /// (set by the driver)
    #[arg(long, hide = true)]
    pub attack_calm: bool,
}

impl Default for AttackFlags {
    /// No attack (clap's defaults for the rest).
    fn default() -> AttackFlags {
        AttackFlags {
            attack: None,
            attack_sources: SOURCES_DEFAULT,
            attack_rate_per_s: RATE_PER_S_DEFAULT,
            attack_sockets_max: SOCKETS_MAX_DEFAULT,
            attack_calm: false,
        }
    }
}

impl AttackFlags {
    /// The flags again, for the client process.
    pub fn flags(&self) -> Vec<String> {
        let Some(kinds) = self.attack else {
            return Vec::new();
        };
        let mut v: Vec<String> = [
            ("--attack", kinds.to_string()),
            ("--attack-sources", self.attack_sources.to_string()),
            ("--attack-rate", self.attack_rate_per_s.to_string()),
            ("--attack-sockets-max", self.attack_sockets_max.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect();
        if self.attack_calm {
            v.push("--attack-calm".into());
        }
        v
    }

    /// Refuses what cannot run: `tls` says the server speaks TLS.
    pub fn check(&self, tls: bool) -> Result<(), String> {
        let Some(kinds) = self.attack else {
            return Ok(());
        };
        if kinds.iter().any(|k| k == Kind::TlsHello) && !tls {
            return Err(
                "--attack tls-hello sends a TLS ClientHello: it needs --tls (the appliance \
                 serving TLS); without it use silent or trickle"
                    .into(),
            );
        }
        if !(1..=SOURCES_MAX).contains(&self.attack_sources) {
            return Err(format!("--attack-sources must be in 1..={SOURCES_MAX}"));
        }
        if !(self.attack_rate_per_s.is_finite() && self.attack_rate_per_s > 0.0) {
            return Err("--attack-rate must be positive".into());
        }
        if self.attack_sockets_max == 0 {
            return Err("--attack-sockets-max must be at least 1".into());
        }
        Ok(())
    }

    /// The attackers of this run (None: no attack, or its calm run);
    /// `tls`: the client's TLS with the server speaking it.
    pub fn attackers(&self, tls: Option<&TlsClient>) -> Option<Attack> {
        let kinds = self.attack.filter(|_| !self.attack_calm)?;
        Some(Attack {
            kinds,
            sources: self.attack_sources,
            rate_per_s: self.attack_rate_per_s,
            sockets_max: self.attack_sockets_max,
            tls: tls.map(TlsClient::without_resumption),
        })
    }
}

/// The attack of one run.
#[derive(Clone, Debug)]
pub struct Attack {
    pub kinds: Kinds,
    pub sources: u32,
    pub rate_per_s: f64,
    pub sockets_max: usize,
    /// The server speaks TLS: ClientHellos are made with this (no
    /// resumption: every handshake a full one), and what the server
    /// sends is TLS records, not frames.
    tls: Option<TlsClient>,
}

/// The address attack connection `n` comes from.
fn source(n: u64, sources: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(NET) + 1 + (n % u64::from(sources)) as u32,
    ))
}

impl Attack {
    /// Starts the attack thread against `server`.
    pub fn start(&self, server: SocketAddr) -> Result<Running, String> {
        if !server.is_ipv4() {
            return Err(format!(
                "--attack: the server must be on IPv4, not {server}"
            ));
        }
        // Without 127.0.0.0/8 on loopback nothing below would connect.
        let first = source(0, self.sources);
        TcpListener::bind((first, 0)).map_err(|e| {
            format!(
                "--attack: cannot bind the source address {first} ({e}); this host's loopback \
                 does not take 127.0.0.0/8 addresses"
            )
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flood = Flood::new(self.clone(), server)?;
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("attack".into())
            .spawn(move || flood.run(&stopping))
            .map_err(|e| format!("starting the attack thread: {e}"))?;
        Ok(Running {
            stop,
            thread: Some(thread),
        })
    }
}

/// A running attack; dropping it stops it too.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Counts, String>>>,
}

impl Running {
    /// Stops the attack (every connection closed) and says what it did.
    pub fn stop(mut self) -> Result<Counts, String> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("joined once");
        thread
            .join()
            .map_err(|_| "the attack thread panicked".to_string())?
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

/// What the attack did. Every connection opened ends in exactly one of
/// the other counts but `handshake_timeouts`, which is part of `errors`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub opened: u64,
    /// connect(2) failed (refused, reset, out of ports or files).
    pub failed: u64,
    pub goaway_server_full: u64,
    /// ERROR (any code), a GOAWAY other than ServerFull, or bytes that are
    /// no frame.
    pub errors: u64,
    pub handshake_timeouts: u64,
    /// Closed by the server without a frame first.
    pub closed_silently: u64,
    /// Got WELCOME (then closed by the attacker).
    pub welcomed: u64,
    /// Open and unanswered when the attack stopped.
    pub held: u64,
}

impl Counts {
    /// Into the client's outcome.
    pub fn fill(&self, o: &mut Outcome) {
        o.attack_opened = self.opened;
        o.attack_failed = self.failed;
        o.attack_goaway_server_full = self.goaway_server_full;
        o.attack_errors = self.errors;
        o.attack_handshake_timeouts = self.handshake_timeouts;
        o.attack_closed_silently = self.closed_silently;
        o.attack_welcomed = self.welcomed;
        o.attack_held = self.held;
    }

    /// Back out of the client's outcome.
    pub fn of(o: &Outcome) -> Counts {
        Counts {
            opened: o.attack_opened,
            failed: o.attack_failed,
            goaway_server_full: o.attack_goaway_server_full,
            errors: o.attack_errors,
            handshake_timeouts: o.attack_handshake_timeouts,
            closed_silently: o.attack_closed_silently,
            welcomed: o.attack_welcomed,
            held: o.attack_held,
        }
    }
}

/// One attack connection.
struct Conn {
    stream: TcpStream,
    /// What it sends: a HELLO or ClientHello (all at once, or a byte at a
    /// time for a trickle); empty for a silent one.
    first: Vec<u8>,
    sent: usize,
    trickle: bool,
    connected: bool,
    /// An answer was counted: its close is not counted again.
    answered: bool,
    /// Unparsed frames (plaintext server only).
    inbox: Vec<u8>,
    /// Its opening's number: a trickle's timer names it, as the slot may
    /// be reused.
    serial: u64,
}

/// How a frame from the server answers an attack connection.
enum Answer {
    Full,
    Error { timeout: bool },
    Welcome,
}

/// The attack thread's state.
struct Flood {
    attack: Attack,
    server: SocketAddr,
    epoll: Epoll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    live: usize,
    /// Trickle bytes due: (when, slot, serial), in time order (each is
    /// pushed TRICKLE_EVERY from now).
    trickles: VecDeque<(Instant, usize, u64)>,
    /// The HELLO a plaintext trickle sends.
    hello: Vec<u8>,
    counts: Counts,
    /// The first failed connect's reason, said once.
    failure_said: bool,
}

impl Flood {
    fn new(attack: Attack, server: SocketAddr) -> Result<Flood, String> {
        let mut hello = Vec::new();
        Frame::Hello(Hello {
            version_min: 1,
            version_max: 1,
            client_id: b"attack",
            token: b"",
        })
        .encode(&mut hello);
        Ok(Flood {
            attack,
            server,
            epoll: Epoll::new()?,
            conns: Vec::new(),
            free: Vec::new(),
            live: 0,
            trickles: VecDeque::new(),
            hello,
            counts: Counts::default(),
            failure_said: false,
        })
    }

    fn run(mut self, stop: &AtomicBool) -> Result<Counts, String> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        let rate = self.attack.rate_per_s;
        let burst = (rate * CATCH_UP.as_secs_f64()).max(1.0);
        let (mut tokens, mut refilled) = (1.0, Instant::now());
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            tokens = (tokens + (now - refilled).as_secs_f64() * rate).min(burst);
            refilled = now;
            while tokens >= 1.0 && self.live < self.attack.sockets_max {
                tokens -= 1.0;
                self.open()?;
            }
            self.trickle(now);
            let mut timeout = WAIT_SLICE;
            if self.live < self.attack.sockets_max {
                timeout = timeout.min(Duration::from_secs_f64((1.0 - tokens).max(0.0) / rate));
            }
            if let Some(&(due, _, _)) = self.trickles.front() {
                timeout = timeout.min(due.saturating_duration_since(now));
            }
            let ready = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("epoll_wait: {e}")),
            };
            for ev in &events[..ready] {
                self.ready(ev.u64 as usize, ev.events);
            }
        }
        self.counts.held = self.conns.iter().flatten().filter(|c| !c.answered).count() as u64;
        Ok(self.counts)
    }

    /// Opens the next connection.
    fn open(&mut self) -> Result<(), String> {
        let serial = self.counts.opened;
        self.counts.opened += 1;
        let kind = self.attack.kinds.nth(serial);
        let first = match (kind, &self.attack.tls) {
            (Kind::Silent, _) => Vec::new(),
            (Kind::Trickle, None) => self.hello.clone(),
            (Kind::Trickle | Kind::TlsHello, Some(tls)) => tls.client_hello()?,
            (Kind::TlsHello, None) => return Err("tls-hello needs the server on TLS".into()),
        };
        let from = source(serial, self.attack.sources);
        let stream = match cluecast_sys::connect_from(from, self.server, true) {
            Ok(s) => s,
            Err(e) => {
                self.failed(&format!("connecting from {from}: {e}"));
                return Ok(());
            }
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.epoll.ctl(
            libc::EPOLL_CTL_ADD,
            stream.as_raw_fd(),
            slot,
            READABLE | WRITABLE,
        )?;
        self.conns[slot] = Some(Conn {
            stream,
            first,
            sent: 0,
            trickle: kind == Kind::Trickle,
            connected: false,
            answered: false,
            inbox: Vec::new(),
            serial,
        });
        self.live += 1;
        if self.conns[slot]
            .as_ref()
            .is_some_and(|c| c.stream.peer_addr().is_ok())
        {
            self.connected(slot);
        }
        Ok(())
    }

    /// Counts a failed connect; says the first one's reason.
    fn failed(&mut self, why: &str) {
        self.counts.failed += 1;
        if !self.failure_said {
            self.failure_said = true;
            eprintln!("attack: a connection failed: {why} (later failures are only counted)");
        }
    }

    /// Readiness of the connection in `slot`.
    fn ready(&mut self, slot: usize, events: u32) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        if !c.connected {
            match c.stream.take_error() {
                Ok(None) => self.connected(slot),
                Ok(Some(e)) | Err(e) => {
                    self.close(slot);
                    self.failed(&format!("connecting: {e}"));
                    return;
                }
            }
        } else if events & WRITABLE != 0 {
            self.send_first(slot);
        }
        if events & !WRITABLE != 0 {
            self.read(slot);
        }
    }

    /// The connect completed: a trickle sends its first byte, the others
    /// all they send.
    fn connected(&mut self, slot: usize) {
        let c = self.conns[slot].as_mut().expect("a live slot");
        c.connected = true;
        if c.trickle {
            let _ = c.stream.write(&c.first[..1]);
            c.sent = 1;
            let next = Instant::now() + TRICKLE_EVERY;
            self.trickles.push_back((next, slot, c.serial));
        }
        self.send_first(slot);
    }

    /// Writes what a non-trickle has left to send; once all went, it waits
    /// for the server only.
    fn send_first(&mut self, slot: usize) {
        let c = self.conns[slot].as_mut().expect("a live slot");
        while !c.trickle && c.sent < c.first.len() {
            match c.stream.write(&c.first[c.sent..]) {
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Full, or gone: the read side sees the end.
                Err(_) => return,
            }
        }
        let fd = c.stream.as_raw_fd();
        let _ = self.epoll.ctl(libc::EPOLL_CTL_MOD, fd, slot, READABLE);
    }

    /// Sends each trickle whose byte is due its next byte.
    fn trickle(&mut self, now: Instant) {
        while let Some(&(due, slot, serial)) = self.trickles.front() {
            if due > now {
                return;
            }
            self.trickles.pop_front();
            let Some(c) = self.conns[slot].as_mut().filter(|c| c.serial == serial) else {
                continue;
            };
            // Full, or gone (the read side sees the end): tried again, or
            // forgotten with the connection.
            if let Ok(n) = c.stream.write(&c.first[c.sent..c.sent + 1]) {
                c.sent += n;
            }
            if c.sent < c.first.len() {
                self.trickles.push_back((now + TRICKLE_EVERY, slot, serial));
            }
        }
    }

    /// Reads what the server sent: its answer is counted; at its close the
    /// connection ends.
    fn read(&mut self, slot: usize) {
        let frames = self.attack.tls.is_none();
        let mut chunk = [0u8; 4096];
        loop {
            let c = self.conns[slot].as_mut().expect("a live slot");
            let got = match c.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) if frames => {
                    c.inbox.extend_from_slice(&chunk[..n]);
                    answer(&mut c.inbox).filter(|_| !c.answered)
                }
                Ok(_) => None, // TLS records: no frame can be read in them
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                Err(_) => break,
            };
            let Some(a) = got else { continue };
            c.answered = true;
            let welcomed = matches!(a, Answer::Welcome);
            self.count(a);
            if welcomed {
                break; // let in: close it
            }
        }
        let c = self.close(slot);
        if !c.answered {
            self.counts.closed_silently += 1;
        }
    }

    fn count(&mut self, a: Answer) {
        match a {
            Answer::Full => self.counts.goaway_server_full += 1,
            Answer::Error { timeout } => {
                self.counts.errors += 1;
                self.counts.handshake_timeouts += u64::from(timeout);
            }
            Answer::Welcome => self.counts.welcomed += 1,
        }
    }

    /// Closes the connection in `slot` (closing its socket takes it out
    /// of epoll).
    fn close(&mut self, slot: usize) -> Conn {
        let c = self.conns[slot].take().expect("a live slot");
        self.free.push(slot);
        self.live -= 1;
        c
    }
}

/// The first answer among the frames in `inbox` (consumed), if one came.
fn answer(inbox: &mut Vec<u8>) -> Option<Answer> {
    loop {
        let (found, used) = match decode(inbox, &Limits::DEFAULT) {
            Ok(Some((frame, used))) => {
                let found = match frame {
                    Frame::GoAway(g) if g.reason == GoAwayReason::ServerFull => Some(Answer::Full),
                    Frame::GoAway(_) => Some(Answer::Error { timeout: false }),
                    Frame::Error(e) => Some(Answer::Error {
                        timeout: e.code == ErrorCode::HandshakeTimeout as u16,
                    }),
                    Frame::Welcome(_) => Some(Answer::Welcome),
                    _ => None,
                };
                (found, used)
            }
            Ok(None) => return None,
            Err(_) => {
                inbox.clear();
                return Some(Answer::Error { timeout: false });
            }
        };
        inbox.drain(..used);
        if found.is_some() {
            return found;
        }
    }
}

#[cfg(test)]
mod tests;
