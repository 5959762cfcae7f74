//! Reference client against a scripted server on a std::net thread.
//!
//! Every blocking step has a timeout, so a broken client fails the test
//! instead of hanging it. This file owns the scripted server (`serve`,
//! `Peer`) and the helpers the test modules share: the handshake, frames
//! built with their usual fields, and the client's side of a test
//! (`connect`, the next delivery, `finish`).

use cluecast_proto::client::*;
use cluecast_proto::*;
use std::io::{ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

mod connect;
mod losses;
mod path;
mod publish;
mod retry;
mod subscribe;
mod topic_close;

/// Longest any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(5);

fn welcome(heartbeat_ms: u32) -> Welcome {
    Welcome {
        version: 1,
        heartbeat_ms,
        idle_timeout_ms: 90_000,
        frame_bytes_max: Limits::DEFAULT.frame_bytes_max,
        payload_bytes_max: 1_000,
        subscriptions_max: 4,
        topic_bytes_max: 32,
    }
}

fn config(addr: &str) -> ClientConfig {
    let mut c = ClientConfig::new(addr);
    c.client_id = "test-client".into();
    c.token = b"tok".to_vec();
    c.connect_timeout_ms = 2_000;
    c.request_timeout_ms = 2_000;
    c.backoff_min_ms = 10;
    c.backoff_max_ms = 50;
    c
}

fn no_reconnect(addr: &str) -> ClientConfig {
    ClientConfig {
        reconnect: false,
        ..config(addr)
    }
}

/// Runs `script` on a thread with a fresh listener; returns its address.
fn serve<T: Send + 'static>(
    script: impl FnOnce(TcpListener) -> T + Send + 'static,
) -> (String, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (addr, thread::spawn(move || script(listener)))
}

/// The server side of one connection.
struct Peer {
    conn: FrameConn<TcpStream>,
}

fn accept(listener: &TcpListener) -> Peer {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + STEP;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(STEP)).unwrap();
                stream.set_nodelay(true).unwrap();
                return Peer::new(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("no connection from the client: {e}"),
        }
    }
}

const SERVER_LIMITS: Limits = Limits::DEFAULT;

impl Peer {
    fn new(stream: TcpStream) -> Peer {
        Peer {
            conn: FrameConn::new(stream, SERVER_LIMITS),
        }
    }

    /// One read from the client, which must bring bytes.
    fn fill(&mut self) {
        match self.conn.fill().expect("read from client") {
            Filled::Bytes(_) => {}
            Filled::Closed => panic!("client closed the connection"),
            Filled::NotYet => panic!("read from client: nothing within the read timeout"),
        }
    }

    /// The next frame, whatever it is, to `check`.
    fn recv<R>(&mut self, check: impl FnOnce(Frame<'_>) -> R) -> R {
        loop {
            if let Some(frame) = self.conn.next_frame().unwrap() {
                return check(frame);
            }
            self.fill();
        }
    }

    /// The next frame other than PING (answered with PONG), to `check`.
    fn expect<R>(&mut self, check: impl FnOnce(Frame<'_>) -> R) -> R {
        loop {
            match self.conn.next_frame().unwrap() {
                Some(Frame::Ping { nonce }) => self.send(Frame::Pong { nonce }),
                Some(frame) => return check(frame),
                None => self.fill(),
            }
        }
    }

    fn send(&mut self, frame: Frame<'_>) {
        self.conn.send(&frame).unwrap();
    }

    fn handshake(&mut self, heartbeat_ms: u32) {
        self.expect(|f| match f {
            Frame::Hello(h) => {
                assert_eq!((h.version_min, h.version_max), (1, 1));
                assert_eq!(h.client_id, b"test-client");
                assert_eq!(h.token, b"tok");
            }
            other => panic!("expected HELLO, got {other:?}"),
        });
        self.send(Frame::Welcome(welcome(heartbeat_ms)));
    }

    /// Expects HELLO, whatever its fields.
    fn expect_hello(&mut self) {
        self.expect(|f| assert!(matches!(f, Frame::Hello(_)), "{f:?}"));
    }

    /// Expects SUBSCRIBE Live to `topic`, answers SUBSCRIBED Ok with these
    /// values.
    fn subscribe_live(&mut self, topic: &str, epoch: u64, oldest_seq: u64, last_seq: u64) {
        let answer = subscribed(SubscribeStatus::Ok, epoch, oldest_seq, last_seq, topic);
        self.subscribe(StartMode::Live, 0, 0, topic, answer);
    }

    /// Expects SUBSCRIBE Resume to `topic` from `(epoch, last_seq)`, answers
    /// `answer`.
    fn resume(&mut self, topic: &str, (epoch, last_seq): (u64, u64), answer: Subscribed<'_>) {
        self.subscribe(StartMode::Resume, epoch, last_seq, topic, answer);
    }

    /// Expects SUBSCRIBE with these values, answers SUBSCRIBED.
    fn subscribe(
        &mut self,
        mode: StartMode,
        epoch: u64,
        last_seq: u64,
        topic: &str,
        answer: Subscribed<'_>,
    ) {
        self.expect(|f| {
            assert_eq!(
                f,
                Frame::Subscribe(Subscribe {
                    mode,
                    epoch,
                    last_seq,
                    topic: topic.as_bytes()
                })
            )
        });
        self.send(Frame::Subscribed(answer));
    }

    /// Expects PUBLISH, gives it to `check`.
    fn expect_publish<R>(&mut self, check: impl FnOnce(Publish<'_>) -> R) -> R {
        self.expect(|f| match f {
            Frame::Publish(x) => check(x),
            other => panic!("expected PUBLISH, got {other:?}"),
        })
    }

    /// Sends ERROR with `code` and `message`.
    fn send_error(&mut self, code: ErrorCode, message: &[u8]) {
        self.send(Frame::Error(ErrorFrame {
            code: code as u16,
            message,
        }));
    }

    fn event(&mut self, topic: &str, epoch: u64, seq: u64) {
        self.send(Frame::Event(Event {
            seq,
            epoch,
            publish_ts_ns: 1_000 + seq,
            topic: topic.as_bytes(),
            payload: format!("e{seq}").as_bytes(),
        }));
    }

    /// Waits for the client to close (EOF or reset).
    fn expect_closed(&mut self) {
        loop {
            match self.conn.fill() {
                Ok(Filled::Closed) => return,
                Ok(Filled::Bytes(_)) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Ok(Filled::NotYet) => {
                    panic!("client did not close: nothing within the read timeout")
                }
                Err(e) => panic!("client did not close: {e}"),
            }
        }
    }
}

/// Accepts the next connection and completes its handshake (heartbeat 30 s).
fn greet(listener: &TcpListener) -> Peer {
    let mut p = accept(listener);
    p.handshake(30_000);
    p
}

/// GOAWAY with no redirect and no resume points.
fn goaway(reason: GoAwayReason, retry_after_ms: u32) -> Frame<'static> {
    Frame::GoAway(GoAway {
        reason,
        retry_after_ms,
        reconnect: b"",
        resume: vec![],
    })
}

fn publish_ack(request_id: u32, status: u16, epoch: u64, seq: u64) -> Frame<'static> {
    Frame::PublishAck(PublishAck {
        request_id,
        status,
        flags: 0,
        epoch,
        seq,
    })
}

fn subscribed(
    status: SubscribeStatus,
    epoch: u64,
    oldest_seq: u64,
    last_seq: u64,
    topic: &str,
) -> Subscribed<'_> {
    Subscribed {
        status,
        epoch,
        oldest_seq,
        last_seq,
        topic: topic.as_bytes(),
    }
}

fn next(c: &mut Client) -> Delivery {
    c.next_timeout(STEP)
        .unwrap()
        .expect("a delivery within the step timeout")
}

/// The next delivery must be an event; returns (epoch, seq).
fn next_event(c: &mut Client, topic: &str) -> (u64, u64) {
    match next(c) {
        Delivery::Event(e) => {
            assert_eq!(e.topic, topic);
            assert_eq!(e.payload, format!("e{}", e.seq).as_bytes());
            (e.epoch, e.seq)
        }
        other => panic!("expected an event, got {other:?}"),
    }
}

/// A position fix at `client_ts_ms`, the same place every time.
fn fix(client_ts_ms: u64) -> Position {
    Position {
        lat_e7: 488_583_701,
        lon_e7: 22_944_813,
        accuracy_cm: 500,
        client_ts_ms,
    }
}

/// A connected client with the usual test configuration.
fn connect(addr: &str) -> Client {
    Client::connect(config(addr)).unwrap()
}

/// Closes the client, then waits for the server script to finish.
fn finish(mut c: Client, server: JoinHandle<()>) {
    c.close();
    server.join().unwrap();
}

/// The next delivery must be `Reconnected`; returns (reason, attempts).
fn next_reconnected(c: &mut Client) -> (String, u32) {
    match next(c) {
        Delivery::Reconnected { reason, attempts } => (reason, attempts),
        other => panic!("expected Reconnected, got {other:?}"),
    }
}

/// The next delivery must be `Subscribed`.
fn next_subscribed(c: &mut Client) -> OwnedSubscribed {
    match next(c) {
        Delivery::Subscribed(s) => s,
        other => panic!("expected Subscribed, got {other:?}"),
    }
}
