//! What the fuzz targets and their seed corpus share: the fixed signing key,
//! the clocks, and the layout of each target's input.
//!
//! The seeds are written by `tests/fuzz_corpus.rs` in the main workspace,
//! which includes this file as a module (so it uses nothing but `std`), and
//! checks that the checked-in seeds are current.

/// The key id and secret of the one signing key the fuzzed appliance and the
/// token target hold (64 hex digits: 32 bytes, the shortest accepted).
pub const KEY_ID: &str = "k1";
pub const KEY_HEX: &str = "c1ec0a57f022c1ec0a57f022c1ec0a57f022c1ec0a57f022c1ec0a57f022c1ec";

/// The key file, as `Keys::parse` takes it.
pub fn key_file() -> String {
    format!("{KEY_ID} = \"{KEY_HEX}\"")
}

/// The secret's bytes (to sign tokens without `Keys`, and to check a
/// signature independently of it).
pub fn key_secret() -> Vec<u8> {
    (0..KEY_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&KEY_HEX[i..i + 2], 16).expect("hex"))
        .collect()
}

/// token_verify: `byte 0` picks the mode, the rest is the token or its parts.
pub mod token {
    /// The time tokens are checked at, seconds since 1970. The handshake
    /// target's simulated clock starts here too (`ring::sim::WALL_BASE_NS`).
    pub const NOW_S: u64 = 1_700_000_000;
    /// Mode (low bit of byte 0) 0: the rest is the token as a client sends it.
    pub const MODE_RAW: u8 = 0;
    /// Mode 1: the rest is `HEADER JSON`, a 0 byte, `CLAIMS JSON` (with no 0
    /// byte, all of it is the claims and the header is [`HEADER`]); the
    /// target encodes and signs them with the key, so the claims parser is
    /// reached (a raw token would need a forged signature first).
    pub const MODE_SIGNED: u8 = 1;
    /// The header `Keys::mint` writes.
    pub const HEADER: &str = r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#;
}

/// path_block_decode: `byte 0` picks the mode, the rest is the block or its
/// payload.
pub mod path_block {
    /// Mode (low bit of byte 0) 0: the rest is a block as stored (version
    /// byte, zstd frame).
    pub const MODE_STORED: u8 = 0;
    /// Mode 1: the rest is a block's payload (count, columns, escapes); the
    /// target seals it (version byte, zstd frame with content size and
    /// checksum) before decoding, so the payload decoder is reached (random
    /// bytes almost never carry a valid zstd checksum).
    pub const MODE_PAYLOAD: u8 = 1;
}

/// handshake: one shard on the simulated ring, played by up to two clients.
///
/// ```text
/// input  = flags:u8, record*
/// flags    bit 0: the appliance checks tokens (signed with the key above)
///          bit 1: the simulated network injects faults (torn receives, short
///                 sends, spurious EAGAIN, ...), seeded by the flags byte
/// record = op:u8, len:u8, len bytes (fewer if the input ends first)
/// op       bit 0: which client (0 or 1)
///          bits 1-2: action: 0 write the bytes; 1 write them, then close
///                 (FIN); 2 write them, then reset (RST: what the server has
///                 not received yet is lost); 3 write them, then stop reading
///                 until the client's next record (what the server sends
///                 piles up at the client, up to [`STALL_WINDOW_BYTES`], and
///                 the server's sends wait for room)
///          bits 3-5: shard turns to run after the record, 0 to 7
///          bits 6-7: time that passes first: 0, 100 ms, 1 s or 10 s, with
///                 the shard turning every 500 ms of it (as a running shard
///                 does, at least)
/// ```
///
/// A client connects at its first record; one that closed or reset
/// connects again at its next record, up to [`CONNECTIONS_MAX`] connections.
/// Turns (those of the time steps included) stop at [`TURNS_MAX`]; so do
/// the time steps.
pub mod handshake {
    pub const FLAG_TOKENS: u8 = 0x01;
    pub const FLAG_FAULTS: u8 = 0x02;

    pub const ACTION_WRITE: u8 = 0;
    pub const ACTION_CLOSE: u8 = 1;
    pub const ACTION_RESET: u8 = 2;
    pub const ACTION_STALL: u8 = 3;
    /// Unread bytes a client that stopped reading lets pile up (as the slow
    /// reader of tests/sim/). Not 0: a real socket's send buffer always
    /// takes a fresh connection's first frames.
    pub const STALL_WINDOW_BYTES: usize = 120;

    /// Clock steps, by bits 6-7 of op.
    pub const CLOCK_STEPS_MS: [u64; 4] = [0, 100, 1_000, 10_000];
    /// The shard turns at least this often while a clock step passes.
    pub const CLOCK_TURN_MS: u64 = 500;
    /// Connections the clients may open in all (reconnects included).
    pub const CONNECTIONS_MAX: usize = 6;
    /// Shard turns the records may make in all; the rest are ignored.
    pub const TURNS_MAX: usize = 512;

    /// One record of the input.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Record<'a> {
        pub client: usize,
        pub action: u8,
        pub turns: usize,
        pub clock_step_ms: u64,
        pub bytes: &'a [u8],
    }

    /// The records of `input` (after the flags byte).
    pub fn records(mut input: &[u8]) -> impl Iterator<Item = Record<'_>> {
        std::iter::from_fn(move || {
            let (&op, rest) = input.split_first()?;
            let (len, rest) = match rest.split_first() {
                Some((&len, rest)) => (usize::from(len), rest),
                None => (0, rest),
            };
            let (bytes, rest) = rest.split_at(len.min(rest.len()));
            input = rest;
            Some(Record {
                client: usize::from(op & 1),
                action: (op >> 1) & 3,
                turns: usize::from((op >> 3) & 7),
                clock_step_ms: CLOCK_STEPS_MS[usize::from(op >> 6)],
                bytes,
            })
        })
    }

    /// Appends records that write `bytes` for `client` (as many as 255-byte
    /// pieces need, with no turn in between), the last one with `action`,
    /// `turns` (0 to 7) and clock step `clock` (an index into
    /// [`CLOCK_STEPS_MS`]).
    pub fn push_records(
        out: &mut Vec<u8>,
        client: usize,
        bytes: &[u8],
        action: u8,
        turns: u8,
        clock: u8,
    ) {
        assert!(client < 2 && action < 4 && turns < 8 && clock < 4);
        let mut pieces: Vec<&[u8]> = bytes.chunks(255).collect();
        if pieces.is_empty() {
            pieces.push(&[]);
        }
        let last = pieces.len() - 1;
        for (i, piece) in pieces.into_iter().enumerate() {
            let op = if i == last {
                client as u8 | action << 1 | turns << 3 | clock << 6
            } else {
                client as u8
            };
            out.push(op);
            out.push(piece.len() as u8);
            out.extend_from_slice(piece);
        }
    }
}
