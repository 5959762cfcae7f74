//! Shared helpers for tests that run the real appliance over loopback.
#![allow(dead_code)] // each test file uses its own subset

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluecast_proto::{
    decode, Filled, Frame, FrameConn, Hello, Limits, StartMode, Subscribe, HELLO_MAGIC,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_cluecast");

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("cluecast-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }

    pub fn path_str(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running appliance on a free loopback port; killed when dropped. Unless
/// the test names one, it stores into a data directory of its own.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: mpsc::Receiver<String>,
    /// The lines printed before the address (data directory, recovery, ...).
    pub startup_log: Vec<String>,
    /// The admin listener's address (None when turned off).
    pub admin: Option<SocketAddr>,
    _data_dir: Option<TempDir>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Server::spawn(Command::new(BIN), args)
    }

    /// Starts the appliance with these extra environment variables.
    pub fn start_with_env(env: &[(&str, &OsStr)], args: &[&str]) -> Server {
        let mut command = Command::new(BIN);
        command.envs(env.iter().copied());
        Server::spawn(command, args)
    }

    /// Starts the appliance confined to one CPU (its shards included).
    pub fn start_pinned(cpu: usize, args: &[&str]) -> Server {
        let mut command = Command::new("taskset");
        command.args(["-c", &cpu.to_string(), BIN]);
        Server::spawn(command, args)
    }

    // The child is killed and reaped by Drop once the address is known; if
    // start-up itself fails the test fails and the process goes with it.
    #[allow(clippy::zombie_processes)]
    fn spawn(mut command: Command, args: &[&str]) -> Server {
        command.arg("run");
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        // Several appliances run at once: each admin listener on a port of its own.
        if !args.contains(&"--admin-listen") {
            command.args(["--admin-listen", "127.0.0.1:0"]);
        }
        let data_dir = (!args.contains(&"--data-dir")).then(|| TempDir::new("data"));
        if let Some(dir) = &data_dir {
            command.args(["--data-dir", dir.path_str()]);
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cluecast");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut startup_log = Vec::new();
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("cluecast did not report its address in time");
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                let admin = startup_log.iter().find_map(|line: &String| {
                    let rest = line.split("admin endpoint at http://").nth(1)?;
                    rest.split('/').next()?.parse().ok()
                });
                return Server {
                    child,
                    addr,
                    admin,
                    log: rx,
                    startup_log,
                    _data_dir: data_dir,
                };
            }
            startup_log.push(line);
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY-free: kill(2) through the libc crate on our own child.
        let ret = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(ret, 0);
    }

    /// Waits for the process to exit and returns its status code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Log lines printed so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    /// Waits until a log line contains `needle` (lines read on the way are
    /// consumed); false if none does within `within`.
    pub fn logged(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while let Ok(line) = self
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(needle) {
                return true;
            }
        }
        false
    }

    pub fn rss_bytes(&self) -> u64 {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.child.id())).unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client speaking the protocol by hand, for tests that need control over
/// every byte (the reference client hides reconnects and heartbeats): a
/// [`FrameConn`] whose methods panic where a test would fail anyway. Its
/// `stream` and `limits` are the frame connection's, reached through it.
pub struct RawClient<S = TcpStream> {
    conn: FrameConn<S>,
}

impl<S> Deref for RawClient<S> {
    type Target = FrameConn<S>;

    fn deref(&self) -> &FrameConn<S> {
        &self.conn
    }
}

impl<S> DerefMut for RawClient<S> {
    fn deref_mut(&mut self) -> &mut FrameConn<S> {
        &mut self.conn
    }
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        RawClient::wrap(TcpStream::connect(addr).expect("connect"))
    }

    /// Connects from `source` (e.g. 127.0.0.2: loopback, but counted as a
    /// source of its own by the appliance).
    pub fn connect_from(source: IpAddr, addr: SocketAddr) -> RawClient {
        let stream = cluecast_sys::connect_from(source, addr, false).expect("connect");
        RawClient::wrap(stream)
    }

    fn wrap(stream: TcpStream) -> RawClient {
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawClient::over(stream)
    }

    /// Connects and completes the handshake.
    pub fn open(addr: SocketAddr) -> RawClient {
        let mut client = RawClient::connect(addr);
        client.send(&Frame::Hello(Hello {
            version_min: 1,
            version_max: 1,
            client_id: b"test",
            token: b"",
        }));
        client.expect(|f| matches!(f, Frame::Welcome(_)));
        client
    }

    /// True once the server closed the connection (reads until EOF).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.conn.stream.set_read_timeout(Some(within)).unwrap();
        loop {
            match self.conn.fill() {
                Ok(Filled::Closed) => return true,
                Ok(Filled::Bytes(_)) => {}
                Ok(Filled::NotYet) => return false,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }
}

impl<S: Read + Write> RawClient<S> {
    /// A client over a stream set up by the caller (TLS, say).
    pub fn over(stream: S) -> RawClient<S> {
        RawClient {
            conn: FrameConn::new(stream, Limits::DEFAULT),
        }
    }

    pub fn send(&mut self, frame: &Frame<'_>) {
        self.conn.send(frame).expect("send");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.conn.stream.write_all(bytes)
    }

    /// The next frame, handed to `f` (frames borrow the buffer). None on EOF.
    pub fn recv<T>(&mut self, f: impl FnOnce(Frame<'_>) -> T) -> Option<T> {
        loop {
            let next = self.conn.next_frame();
            if let Some(frame) = next.expect("server sent a malformed frame") {
                return Some(f(frame));
            }
            match self.conn.fill().expect("read") {
                Filled::Bytes(_) => {}
                Filled::Closed => return None,
                Filled::NotYet => panic!("read: nothing within the read timeout"),
            }
        }
    }

    /// The next whole EVENT in the buffer as (seq, publish_ts_ns), skipping
    /// other frames; None when no whole frame is buffered.
    pub fn take_event(&mut self) -> Option<(u64, u64)> {
        loop {
            if let Frame::Event(e) = self.conn.next_frame().expect("malformed frame")? {
                return Some((e.seq, e.publish_ts_ns));
            }
        }
    }

    /// Reads a frame and asserts it passes `check`.
    pub fn expect(&mut self, check: impl FnOnce(&Frame<'_>) -> bool) {
        let ok = self
            .recv(|f| {
                let ok = check(&f);
                if !ok {
                    eprintln!("unexpected frame: {f:?}");
                }
                ok
            })
            .expect("connection closed");
        assert!(ok);
    }

    pub fn subscribe(
        &mut self,
        topic: &str,
        mode: StartMode,
        epoch: u64,
        last_seq: u64,
    ) -> (u64, u64) {
        self.send(&Frame::Subscribe(Subscribe {
            mode,
            epoch,
            last_seq,
            topic: topic.as_bytes(),
        }));
        self.recv(|f| match f {
            Frame::Subscribed(s) => (s.epoch, s.last_seq),
            other => panic!("expected SUBSCRIBED, got {other:?}"),
        })
        .expect("connection closed")
    }

    /// Frames still buffered after the connection closed, as (type, first
    /// bytes of the body) pairs.
    pub fn buffered_frames(&self) -> Vec<Frame<'_>> {
        let mut frames = Vec::new();
        let mut rest = self.conn.buffered();
        while let Ok(Some((frame, used))) = decode(rest, &self.conn.limits) {
            frames.push(frame);
            rest = &rest[used..];
        }
        frames
    }
}

/// Publishes `events` events of `payload` into `topic`, one every `gap`,
/// open loop (each event has its time slot, whatever the server does).
/// Returns the publisher, whose acknowledgements are still unread.
pub fn publish_paced(
    addr: SocketAddr,
    topic: &str,
    events: u64,
    payload: &[u8],
    gap: Duration,
) -> RawClient {
    let mut publisher = RawClient::open(addr);
    let start = Instant::now();
    for i in 0..events {
        let slot = start + gap * i as u32;
        if let Some(wait) = slot.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        publisher.send(&Frame::Publish(cluecast_proto::Publish {
            request_id: i as u32,
            topic: topic.as_bytes(),
            payload,
        }));
    }
    publisher
}

pub fn hello_bytes() -> Vec<u8> {
    let mut bytes = Vec::new();
    Frame::Hello(Hello {
        version_min: 1,
        version_max: 1,
        client_id: b"x",
        token: b"",
    })
    .encode(&mut bytes);
    assert_eq!(&bytes[5..9], &HELLO_MAGIC);
    bytes
}

/// `cluecast token --auth-keys KEYS ARGS...` as run.
pub fn token_command(keys: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["token", "--auth-keys", keys])
        .args(args)
        .output()
        .expect("run cluecast token")
}

/// The token `cluecast token` mints with these arguments.
pub fn mint_token(keys: &str, args: &[&str]) -> String {
    let out = token_command(keys, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
