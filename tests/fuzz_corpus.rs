//! The seed corpus of the fuzz targets (fuzz/, run by scripts/fuzz.sh):
//! valid frames of every type, real tokens, real path blocks and client
//! sessions, written to `fuzz/corpus/TARGET/seed-*`.
//!
//! `seeds_are_current` checks that the checked-in seeds are what this file
//! makes (so a change of the protocol, the token format or the path block
//! format cannot leave the fuzzers starting from stale inputs). After such a
//! change, rewrite them with
//! `cargo test --test fuzz_corpus -- --ignored write_seeds`.
//! Other files in the corpus directories (inputs the fuzzers found, kept
//! after `cargo fuzz cmin`) are not touched.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64;
use base64::Engine;
use cluecast::auth::{Claims, Keys};
use cluecast::storage::path_block::{decode_block, synthetic_walk, BlockBuilder};
use cluecast_proto::*;

/// The input layouts and the key the fuzz targets use.
#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz;

use fuzz::handshake::{
    push_records, ACTION_CLOSE, ACTION_STALL, ACTION_WRITE, FLAG_FAULTS, FLAG_TOKENS,
};

/// Seeds by target, then by file name.
type Seeds = BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>;

fn checkout() -> PathBuf {
    // At run time, not build time: the build cache is shared between
    // checkouts at different paths (as in proto/tests/vectors.rs).
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets it"))
}

/// The test vectors of docs/PROTOCOL.md, by name: each a
/// `<!-- vector: NAME -->` line, then a text block whose `hex:` line (and
/// the lines after it) hold the frame's bytes.
fn protocol_vectors() -> Vec<(String, Vec<u8>)> {
    let path = checkout().join("docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut vectors = Vec::new();
    let mut lines = doc.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("<!-- vector:") else {
            continue;
        };
        let name = name.trim_end_matches("-->").trim().to_string();
        let mut hex = String::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            if let Some(h) = l.strip_prefix("hex:") {
                hex.push_str(h);
            } else if !hex.is_empty() {
                hex.push(' ');
                hex.push_str(l);
            }
        }
        let bytes = hex
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
            .collect();
        vectors.push((name, bytes));
    }
    assert!(vectors.len() >= 18, "the vectors of docs/PROTOCOL.md");
    vectors
}

fn encode(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        frame.encode(&mut out);
    }
    out
}

fn frame_seeds() -> BTreeMap<String, Vec<u8>> {
    let mut seeds = BTreeMap::new();
    let mut stream = Vec::new();
    let mut types = Vec::new();
    for (name, bytes) in protocol_vectors() {
        let (frame, used) = decode(&bytes, &Limits::DEFAULT)
            .expect("a vector decodes")
            .expect("a whole frame");
        assert_eq!(used, bytes.len());
        types.push(frame.frame_type());
        stream.extend_from_slice(&bytes);
        seeds.insert(format!("seed-vector-{name}"), bytes);
    }
    for t in FrameType::ALL {
        assert!(types.contains(&t), "no vector of {t}");
    }
    // Frames one after another, as a connection carries them; and the same
    // cut inside the last one.
    seeds.insert("seed-stream".into(), stream.clone());
    stream.truncate(stream.len() - 3);
    seeds.insert("seed-stream-cut".into(), stream);
    // Fields at their limits.
    let topic = [b'x'; 64];
    let payload = [0xab; 300];
    seeds.insert(
        "seed-limits".into(),
        encode(&[
            Frame::Publish(Publish {
                request_id: u32::MAX,
                topic: &topic,
                payload: &payload,
            }),
            Frame::Hello(Hello {
                version_min: 0,
                version_max: u16::MAX,
                client_id: &topic,
                token: &payload,
            }),
            Frame::GoAway(GoAway {
                reason: GoAwayReason::TokenExpired,
                retry_after_ms: u32::MAX,
                reconnect: b"",
                resume: Vec::new(),
            }),
            Frame::Path(Path {
                request_id: 1,
                status: ErrorCode::StorageFailed as u16,
                flags: PATH_FLAG_LAST | PATH_FLAG_TRUNCATED | PATH_FLAG_CORRUPT,
                positions: &[],
            }),
        ]),
    );
    seeds
}

fn keys() -> Keys {
    Keys::parse(&fuzz::key_file()).expect("the fuzz key")
}

/// A token from the fuzz key, valid from `from_s` for `ttl_s`.
fn token(sub: &str, subscribe: &[&str], publish: &[&str], from_s: u64, ttl_s: u64) -> Vec<u8> {
    let claims = Claims {
        sub: sub.into(),
        exp: from_s + ttl_s,
        nbf: Some(from_s),
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        paths: false,
    };
    keys()
        .mint(None, &claims)
        .expect("valid claims")
        .into_bytes()
}

fn token_seeds() -> BTreeMap<String, Vec<u8>> {
    use fuzz::token::{HEADER, MODE_RAW, MODE_SIGNED, NOW_S};
    let keys = keys();
    let raw = |token: &[u8]| [&[MODE_RAW][..], token].concat();
    let mut seeds = BTreeMap::new();

    let valid = token(
        "phone-7",
        &["hunt-42", "hunt-42.*"],
        &["hunt-42"],
        NOW_S - 60,
        3600,
    );
    assert!(keys.verify(&valid, NOW_S).is_ok());
    seeds.insert("seed-raw-valid".into(), raw(&valid));
    let everything = Claims {
        sub: "backend".into(),
        exp: NOW_S + 60,
        nbf: None,
        subscribe: vec!["*".into()],
        publish: vec!["*".into()],
        paths: true,
    };
    let everything_token = keys.mint(None, &everything).expect("valid claims");
    assert!(keys.verify(everything_token.as_bytes(), NOW_S).is_ok());
    seeds.insert(
        "seed-raw-all-rights".into(),
        raw(everything_token.as_bytes()),
    );
    let expired = token("phone-7", &["hunt-42"], &[], NOW_S - 120, 60);
    assert!(keys.verify(&expired, NOW_S).is_err());
    seeds.insert("seed-raw-expired".into(), raw(&expired));
    let stranger = Keys::parse(&format!("k2 = \"{}\"", "ab".repeat(32))).expect("a key");
    let foreign = stranger.mint(None, &everything).expect("valid claims");
    seeds.insert("seed-raw-unknown-key".into(), raw(foreign.as_bytes()));
    let claims_part = valid.split(|&b| b == b'.').nth(1).expect("3 parts");
    let alg_none = [
        BASE64.encode(br#"{"alg":"none","kid":"k1"}"#).as_bytes(),
        b".",
        claims_part,
        b".",
    ]
    .concat();
    seeds.insert("seed-raw-alg-none".into(), raw(&alg_none));

    let signed = |header: Option<&str>, claims: &str| {
        let mut seed = vec![MODE_SIGNED];
        if let Some(header) = header {
            seed.extend_from_slice(header.as_bytes());
            seed.push(0);
        }
        seed.extend_from_slice(claims.as_bytes());
        seed
    };
    let claims = format!(
        r#"{{"sub":"phone-7","exp":{},"nbf":{},"subscribe":["hunt-42","hunt-42.*"],"publish":["*"],"paths":false}}"#,
        NOW_S + 3600,
        NOW_S - 60
    );
    seeds.insert("seed-signed-claims".into(), signed(None, &claims));
    seeds.insert(
        "seed-signed-header-claims".into(),
        signed(Some(HEADER), &claims),
    );
    seeds.insert(
        "seed-signed-not-yet-valid".into(),
        signed(
            None,
            &format!(
                r#"{{"sub":"a","exp":{},"nbf":{},"paths":true}}"#,
                NOW_S + 120,
                NOW_S + 60
            ),
        ),
    );
    seeds.insert(
        "seed-signed-unknown-claim".into(),
        signed(
            None,
            &format!(r#"{{"sub":"a","exp":{},"admin":true}}"#, NOW_S + 1),
        ),
    );
    seeds.insert(
        "seed-signed-bad-pattern".into(),
        signed(
            None,
            &format!(
                r#"{{"sub":"a","exp":{},"subscribe":["hunt-*"]}}"#,
                NOW_S + 1
            ),
        ),
    );
    seeds
}

fn path_block_seeds() -> BTreeMap<String, Vec<u8>> {
    use fuzz::path_block::{MODE_PAYLOAD, MODE_STORED};
    let block = |positions: &[Position]| {
        let mut builder = BlockBuilder::new();
        for p in positions {
            builder.push(p);
        }
        let block = builder.finish();
        assert_eq!(decode_block(&block).as_deref(), Ok(positions));
        block
    };
    let payload = |block: &[u8]| zstd::stream::decode_all(&block[1..]).expect("zstd");
    let mut seeds = BTreeMap::new();
    for (seed, count) in [(1, 1), (2, 16), (3, 120), (4, 600)] {
        let walk = synthetic_walk(seed, count, 1_700_000_000_000);
        let stored = block(&walk);
        seeds.insert(
            format!("seed-stored-walk-{count}"),
            [&[MODE_STORED][..], &stored].concat(),
        );
        if count <= 120 {
            seeds.insert(
                format!("seed-payload-walk-{count}"),
                [&[MODE_PAYLOAD][..], &payload(&stored)].concat(),
            );
        }
    }
    // The corners of the ranges, jumps of the clock both ways: every value
    // escapes.
    let p = |lat_e7, lon_e7, accuracy_cm, client_ts_ms| Position {
        lat_e7,
        lon_e7,
        accuracy_cm,
        client_ts_ms,
    };
    let extremes = [
        p(Position::LAT_E7_MAX, -Position::LON_E7_MAX, 0, 1),
        p(
            -Position::LAT_E7_MAX,
            Position::LON_E7_MAX,
            Position::ACCURACY_CM_MAX,
            u64::MAX,
        ),
        p(0, 0, 1, 1_700_000_000_000),
        p(0, 0, 1, 1_700_000_001_000),
        p(1, -1, 1, 1_699_999_999_000),
        p(
            Position::LAT_E7_MAX,
            Position::LON_E7_MAX,
            Position::ACCURACY_CM_MAX,
            2,
        ),
    ];
    let stored = block(&extremes);
    seeds.insert(
        "seed-stored-extremes".into(),
        [&[MODE_STORED][..], &stored].concat(),
    );
    seeds.insert(
        "seed-payload-extremes".into(),
        [&[MODE_PAYLOAD][..], &payload(&stored)].concat(),
    );
    seeds
}

/// A client's frames as handshake records: all written at once, then
/// `turns` turns.
fn records(out: &mut Vec<u8>, client: usize, frames: &[Frame<'_>], turns: u8) {
    push_records(out, client, &encode(frames), ACTION_WRITE, turns, 0);
}

fn hello<'a>(client_id: &'a [u8], token: &'a [u8]) -> Frame<'a> {
    Frame::Hello(Hello {
        version_min: 1,
        version_max: 1,
        client_id,
        token,
    })
}

fn subscribe(topic: &[u8]) -> Frame<'_> {
    Frame::Subscribe(Subscribe {
        mode: StartMode::Live,
        epoch: 0,
        last_seq: 0,
        topic,
    })
}

fn publish(request_id: u32, payload: &[u8]) -> Frame<'_> {
    Frame::Publish(Publish {
        request_id,
        topic: b"hunt-42",
        payload,
    })
}

/// A subscriber and a publisher: HELLO, SUBSCRIBE, PUBLISH and the rest of
/// what a client sends, with `sub` and `publisher` as HELLO tokens.
fn session(flags: u8, sub: &[u8], publisher: &[u8]) -> Vec<u8> {
    let mut s = vec![flags];
    records(&mut s, 0, &[hello(b"phone-1", sub)], 2);
    records(
        &mut s,
        0,
        &[Frame::Subscribe(Subscribe {
            mode: StartMode::Live,
            epoch: 0,
            last_seq: 0,
            topic: b"hunt-42",
        })],
        2,
    );
    records(&mut s, 1, &[hello(b"backend", publisher)], 2);
    records(
        &mut s,
        1,
        &[
            Frame::Publish(Publish {
                request_id: 1,
                topic: b"hunt-42",
                payload: b"clue 1: the old oak",
            }),
            Frame::Publish(Publish {
                request_id: 2,
                topic: b"hunt-42",
                payload: b"clue 2: the bridge",
            }),
        ],
        3,
    );
    records(
        &mut s,
        0,
        &[
            Frame::Ping { nonce: 7 },
            Frame::Position(Position {
                lat_e7: 488_530_000,
                lon_e7: 23_499_000,
                accuracy_cm: 500,
                client_ts_ms: 1_700_000_000_500,
            }),
            Frame::PathQuery(PathQuery {
                request_id: 3,
                since_ms: 0,
                player: b"phone-1",
            }),
        ],
        3,
    );
    records(
        &mut s,
        1,
        &[Frame::TopicClose(TopicClose {
            request_id: 4,
            topic: b"hunt-42",
        })],
        3,
    );
    records(&mut s, 0, &[Frame::Unsubscribe { topic: b"hunt-42" }], 2);
    s
}

fn handshake_seeds() -> BTreeMap<String, Vec<u8>> {
    use fuzz::token::NOW_S;
    let mut seeds = BTreeMap::new();
    let sub_token = token("phone-1", &["hunt-42"], &[], NOW_S - 60, 3600);
    let pub_token = token("backend", &[], &["*"], NOW_S - 60, 3600);

    seeds.insert("seed-session".into(), session(0, b"", b""));
    seeds.insert(
        "seed-session-tokens".into(),
        session(FLAG_TOKENS, &sub_token, &pub_token),
    );
    seeds.insert("seed-session-faults".into(), session(FLAG_FAULTS, b"", b""));
    // The subscriber lacks the publisher's rights and the other way round.
    seeds.insert(
        "seed-session-tokens-swapped".into(),
        session(FLAG_TOKENS, &pub_token, &sub_token),
    );
    // A token that expires 15 s in, the client pinging every second (so it
    // does not idle out first): GOAWAY TokenExpired.
    let short = token("phone-1", &["hunt-42"], &[], NOW_S, 15);
    let mut s = session(FLAG_TOKENS, &short, &pub_token);
    for nonce in 0..20 {
        push_records(
            &mut s,
            0,
            &encode(&[Frame::Ping { nonce }]),
            ACTION_WRITE,
            1,
            2,
        );
    }
    seeds.insert("seed-token-expires".into(), s);

    // The session in 7-byte pieces, a turn after each: frames torn across
    // receives.
    let whole = session(0, b"", b"");
    let mut bytes = Vec::new();
    for record in fuzz::handshake::records(&whole[1..]) {
        if record.client == 0 {
            bytes.extend_from_slice(record.bytes);
        }
    }
    let mut s = vec![0];
    for piece in bytes.chunks(7) {
        push_records(&mut s, 0, piece, ACTION_WRITE, 1, 0);
    }
    seeds.insert("seed-torn".into(), s);

    // A subscriber that stops reading (pinging now and then, so it does not
    // idle out) while the publisher goes on: its queue fills, it is fed from
    // history, then the history moves past it (GOAWAY SlowConsumer).
    let mut s = vec![0];
    records(&mut s, 0, &[hello(b"phone-1", b"")], 2);
    records(&mut s, 0, &[subscribe(b"hunt-42")], 2);
    records(&mut s, 1, &[hello(b"backend", b"")], 2);
    let payload = [b'e'; 200];
    for round in 0..4 {
        let ping = encode(&[Frame::Ping {
            nonce: round.into(),
        }]);
        push_records(&mut s, 0, &ping, ACTION_STALL, 0, 0);
        let burst: Vec<Frame<'_>> = (0..10).map(|i| publish(round * 10 + i, &payload)).collect();
        // A second apart: the publish rate limit (50/s) is not reached.
        push_records(&mut s, 1, &encode(&burst), ACTION_WRITE, 2, 2);
    }
    // Reading again: the history it needs next is gone.
    push_records(&mut s, 0, &[], ACTION_WRITE, 4, 0);
    seeds.insert("seed-slow-consumer".into(), s);

    // Past the limits: 60 publishes at once (the rate limit is 50 a second:
    // PUBLISH_ACK Overloaded), five subscriptions (four allowed: ERROR
    // TooManySubscriptions), a payload over 256 bytes.
    let mut s = vec![0];
    records(&mut s, 1, &[hello(b"backend", b"")], 2);
    let burst: Vec<Frame<'_>> = (0..60).map(|i| publish(i, b"x")).collect();
    records(&mut s, 1, &burst, 4);
    records(&mut s, 1, &[publish(61, &[b'x'; 300])], 2);
    records(&mut s, 0, &[hello(b"phone-1", b"")], 2);
    let topics: Vec<String> = (0..5).map(|i| format!("hunt-{i}")).collect();
    let subscribes: Vec<Frame<'_>> = topics.iter().map(|t| subscribe(t.as_bytes())).collect();
    records(&mut s, 0, &subscribes, 4);
    seeds.insert("seed-limits".into(), s);

    // Resume after a reconnect: close, connect again, SUBSCRIBE Resume.
    let mut s = session(0, b"", b"");
    push_records(&mut s, 0, &[], ACTION_CLOSE, 2, 0);
    records(
        &mut s,
        0,
        &[
            hello(b"phone-1", b""),
            Frame::Subscribe(Subscribe {
                mode: StartMode::Resume,
                epoch: 0,
                last_seq: 1,
                topic: b"hunt-42",
            }),
        ],
        4,
    );
    seeds.insert("seed-resume".into(), s);

    // What the server refuses: a frame before HELLO, a bad token, a
    // server-only frame, silence past the handshake and idle timeouts.
    let mut s = vec![0];
    records(&mut s, 0, &[Frame::Ping { nonce: 1 }], 2);
    records(
        &mut s,
        1,
        &[hello(b"phone-2", b""), Frame::Pong { nonce: 1 }],
        2,
    );
    seeds.insert("seed-unexpected".into(), s);
    let mut s = vec![FLAG_TOKENS];
    records(&mut s, 0, &[hello(b"phone-1", b"not.a.token")], 2);
    records(&mut s, 1, &[hello(b"phone-2", b"")], 2);
    seeds.insert("seed-tokens-refused".into(), s);
    let mut s = vec![0];
    records(&mut s, 0, &[hello(b"phone-1", b"")], 2);
    push_records(&mut s, 1, &[], ACTION_WRITE, 4, 2);
    push_records(&mut s, 0, &[], ACTION_WRITE, 4, 3);
    seeds.insert("seed-timeouts".into(), s);
    seeds
}

fn seeds() -> Seeds {
    BTreeMap::from([
        ("frame_decode", frame_seeds()),
        ("token_verify", token_seeds()),
        ("path_block_decode", path_block_seeds()),
        ("handshake", handshake_seeds()),
    ])
}

/// The `seed-*` files of a target's corpus, by name.
fn checked_in(target: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = checkout().join("fuzz/corpus").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| e.expect("a directory entry").path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.to_string();
            name.starts_with("seed-")
                .then(|| (name, std::fs::read(&path).expect("a seed file")))
        })
        .collect()
}

#[test]
fn seeds_are_current() {
    for (target, seeds) in seeds() {
        let total: usize = seeds.values().map(Vec::len).sum();
        assert!(total < 64 << 10, "{target}: {total} bytes of seeds");
        assert_eq!(
            checked_in(target),
            seeds,
            "fuzz/corpus/{target}/seed-* are not what tests/fuzz_corpus.rs makes: rewrite \
             them with `cargo test --test fuzz_corpus -- --ignored write_seeds`"
        );
    }
}

#[test]
#[ignore = "writes fuzz/corpus/*/seed-*"]
fn write_seeds() {
    for (target, seeds) in seeds() {
        let dir = checkout().join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&dir).expect("the corpus directory");
        for name in checked_in(target).keys() {
            std::fs::remove_file(dir.join(name)).expect("remove an old seed");
        }
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).expect("write a seed");
        }
        println!("{target}: {} seeds", seeds.len());
    }
}
