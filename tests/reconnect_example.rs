//! The worked example of docs/PROTOCOL.md section 12 is what a real server
//! says: a phone reconnects and resumes two topics, `hunt-7` whose missed
//! events are still in memory and `hunt-8` whose missed events are only on
//! disk (the server restarted since).
//!
//! The scenario runs against a real appliance; its frames, with the epochs
//! and timestamps that differ per run replaced by the document's, must be
//! the document's `<!-- example: ... -->` blocks byte for byte, in order.
//! To regenerate the blocks: `cargo test --test reconnect_example --
//! --ignored --nocapture`.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluecast_proto::*;

mod common;
#[path = "../proto/tests/doc/mod.rs"]
mod doc;

use common::{RawClient, Server, TempDir};

/// The epochs and publish times the document shows: real ones are random
/// and the time of the run.
const DOC_EPOCH_HUNT_7: u64 = 0x2c1b_5e9f_03a4_d671;
const DOC_EPOCH_HUNT_8: u64 = 0x6a0e_d13c_77b2_9f05;
const DOC_TS_NS: u64 = 1_765_100_000_000_000_000;

/// What the phone saved before it lost its connection.
const SAVED_HUNT_7: u64 = 43;
const SAVED_HUNT_8: u64 = 12;

/// The example's frames in the order they cross the wire: the name of
/// their block in the document and whether the client sends them.
const EXCHANGE: &[(&str, bool)] = &[
    ("reconnect_hello", true),
    ("reconnect_welcome", false),
    ("reconnect_subscribe_memory", true),
    ("reconnect_subscribe_disk", true),
    ("reconnect_subscribed_memory", false),
    ("reconnect_event_hunt_7_44", false),
    ("reconnect_event_hunt_7_45", false),
    ("reconnect_subscribed_disk", false),
    ("reconnect_event_hunt_8_13", false),
    ("reconnect_event_hunt_8_14", false),
];

fn publish(addr: std::net::SocketAddr, topic: &str, seqs: std::ops::RangeInclusive<u64>) -> u64 {
    let mut publisher = RawClient::open(addr);
    let mut epoch = 0;
    for seq in seqs {
        let payload = format!("clue {seq}");
        publisher.send(&Frame::Publish(Publish {
            request_id: seq as u32,
            topic: topic.as_bytes(),
            payload: payload.as_bytes(),
        }));
        let (ack_epoch, ack_seq) = publisher
            .recv(|f| match f {
                Frame::PublishAck(a) if a.status == 0 => (a.epoch, a.seq),
                other => panic!("{other:?}"),
            })
            .unwrap();
        assert_eq!(ack_seq, seq);
        epoch = ack_epoch;
    }
    epoch
}

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    frame.encode(&mut bytes);
    bytes
}

/// Real epochs and times swapped for the document's (or back).
struct Swap {
    epochs: [(u64, u64); 2],
    ts_ns: Option<(u64, u64)>,
}

impl Swap {
    fn epoch(&self, epoch: u64) -> u64 {
        self.epochs
            .iter()
            .find(|(from, _)| *from == epoch)
            .map_or(epoch, |(_, to)| *to)
    }

    fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let (frame, _) = decode(bytes, &Limits::DEFAULT).unwrap().unwrap();
        encode(&match frame {
            Frame::Subscribe(s) => Frame::Subscribe(Subscribe {
                epoch: self.epoch(s.epoch),
                ..s
            }),
            Frame::Subscribed(s) => Frame::Subscribed(Subscribed {
                epoch: self.epoch(s.epoch),
                ..s
            }),
            Frame::Event(e) => Frame::Event(Event {
                epoch: self.epoch(e.epoch),
                publish_ts_ns: match self.ts_ns {
                    // Real times become the document's, a second per sequence.
                    Some((_, doc)) => doc + e.seq * 1_000_000_000,
                    None => e.publish_ts_ns,
                },
                ..e
            }),
            other => other,
        })
    }
}

/// Runs the scenario and returns every frame of the exchange as the
/// document shows it (epochs and times swapped for the document's).
fn reconnect_as_documented(client_frames: impl Fn(&str) -> Vec<u8>) -> Vec<Vec<u8>> {
    let dir = TempDir::new("reconnect-example");
    let args = ["--shards", "1", "--data-dir", dir.path_str()];
    let mut server = Server::start(&args);
    let started_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let epoch_7 = publish(server.addr, "hunt-7", 1..=SAVED_HUNT_7);
    let epoch_8 = publish(server.addr, "hunt-8", 1..=14);
    // A clean restart: the epochs stay, memory starts empty, so hunt-8's
    // 13 and 14 are now on disk only.
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    let server = Server::start(&args);
    assert_eq!(publish(server.addr, "hunt-7", 44..=45), epoch_7);

    let to_doc = Swap {
        epochs: [(epoch_7, DOC_EPOCH_HUNT_7), (epoch_8, DOC_EPOCH_HUNT_8)],
        ts_ns: Some((started_ns, DOC_TS_NS)),
    };
    let to_real = Swap {
        epochs: [(DOC_EPOCH_HUNT_7, epoch_7), (DOC_EPOCH_HUNT_8, epoch_8)],
        ts_ns: None,
    };
    let mut phone = RawClient::connect(server.addr);
    let mut seen = Vec::new();
    let mut outgoing = Vec::new();
    for (i, &(name, from_client)) in EXCHANGE.iter().enumerate() {
        if from_client {
            let bytes = client_frames(name);
            outgoing.extend_from_slice(&to_real.apply(&bytes));
            seen.push(bytes);
            // The client sends its SUBSCRIBEs together, as soon as WELCOME
            // is in: flush before the next server frame is awaited.
            if EXCHANGE.get(i + 1).is_some_and(|(_, c)| !c) {
                phone.stream.write_all(&outgoing).unwrap();
                outgoing.clear();
            }
            continue;
        }
        let real = phone.recv(|f| encode(&f)).expect("the server closed");
        if let Ok(Some((Frame::Event(e), _))) = decode(&real, &Limits::DEFAULT) {
            let now_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            assert!((started_ns..=now_ns).contains(&e.publish_ts_ns), "{name}");
        }
        seen.push(to_doc.apply(&real));
    }
    seen
}

fn frame_text(bytes: &[u8]) -> String {
    let (frame, _) = decode(bytes, &Limits::DEFAULT).unwrap().unwrap();
    doc::frame_text(&frame)
}

#[test]
fn section_12_example_is_what_the_server_sends() {
    let doc = doc::doc();
    let blocks = doc::blocks(&doc, "example");
    let documented: Vec<&[u8]> = EXCHANGE
        .iter()
        .map(|(name, _)| {
            let block = blocks.iter().find(|b| b.name == *name);
            block
                .unwrap_or_else(|| panic!("no example {name} in docs/PROTOCOL.md"))
                .bytes
                .as_slice()
        })
        .collect();
    assert_eq!(blocks.len(), EXCHANGE.len(), "no other example blocks");
    let client_frame = |name: &str| {
        let i = EXCHANGE.iter().position(|(n, _)| *n == name).unwrap();
        documented[i].to_vec()
    };
    let seen = reconnect_as_documented(client_frame);
    for (((name, _), documented), seen) in EXCHANGE.iter().zip(&documented).zip(&seen) {
        assert_eq!(
            *documented,
            &seen[..],
            "{name}: the document shows {}, the server sent {}",
            frame_text(documented),
            frame_text(seen)
        );
    }
}

/// Prints the example's blocks from a real run.
#[test]
#[ignore]
fn print_example() {
    let client_frame = |name: &str| {
        encode(&match name {
            "reconnect_hello" => Frame::Hello(Hello {
                version_min: 1,
                version_max: 1,
                client_id: b"phone-7",
                token: b"",
            }),
            "reconnect_subscribe_memory" => Frame::Subscribe(Subscribe {
                mode: StartMode::Resume,
                epoch: DOC_EPOCH_HUNT_7,
                last_seq: SAVED_HUNT_7,
                topic: b"hunt-7",
            }),
            "reconnect_subscribe_disk" => Frame::Subscribe(Subscribe {
                mode: StartMode::Resume,
                epoch: DOC_EPOCH_HUNT_8,
                last_seq: SAVED_HUNT_8,
                topic: b"hunt-8",
            }),
            other => panic!("{other} is not the client's"),
        })
    };
    let seen = reconnect_as_documented(client_frame);
    for ((name, _), bytes) in EXCHANGE.iter().zip(&seen) {
        println!("{}", doc::block("example", name, &frame_text(bytes), bytes));
    }
}
