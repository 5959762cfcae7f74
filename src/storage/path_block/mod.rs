//! The stored form of a player's path: positions in arrival order, cut into
//! blocks of about [`BLOCK_RAW_BYTES_TARGET`] encoded bytes, each compressed
//! with zstd and kept under one key per (player, block). This module is the
//! codec only: no storage, no I/O.
//!
//! A path is mostly predictable. At 1 Hz the next timestamp is a second
//! after the last; a walker keeps roughly their speed and heading; accuracy
//! often repeats. So each value is stored as its difference from a
//! prediction (zigzag, so small of either sign is a small number), and what
//! remains is mostly GPS noise and clock jitter, which zstd's entropy coder
//! then squeezes. The predictions (`Predictor`, shared by encoder and
//! decoder) are integer-only so both sides agree bit for bit:
//!
//! - timestamp: one second after a tracked 1 s grid, so only the delivery
//!   jitter is left (a delta-of-delta would count each jitter twice);
//! - latitude, longitude: the last value plus a smoothed velocity times the
//!   seconds elapsed, so walking costs about what standing does;
//! - accuracy: the last value.
//!
//! Block layout (a residual is value minus prediction, zigzagged):
//!
//! ```text
//! version        1 byte, BLOCK_FORMAT_VERSION (outside the compression, so
//!                a later format may change everything after it)
//! zstd frame     level 3, content size and content checksum on; content:
//!   count        varint: positions in the block
//!   ts           count bytes: timestamp residual (7 bits) << 1 | 1 if the
//!                accuracy changed
//!   accuracy     one byte per changed accuracy: its residual - 1
//!   lat_coarse   count bytes: latitude residual >> 4
//!   lon_coarse   count bytes: longitude residual >> 4
//!   fine         count bytes: latitude residual & 15 | (longitude's) << 4
//!   escapes      varints, for the timestamp, then accuracy, latitude and
//!                longitude residuals too large for their byte, each in
//!                position order
//! ```
//!
//! Why this shape: one byte per value per position, grouped by kind
//! (columnar), gives zstd runs of alike bytes. A coordinate residual's low
//! four bits are noise, nearly uniform, while its high bits are small and
//! skewed; apart, the skewed part compresses well and the uniform part costs
//! no more than it must. The encoder ends a zstd block after the accuracy
//! and after the longitude columns, so each group gets its own entropy
//! tables (where one shared table would fit none of them). A rare large
//! residual (a missed fix, the first position) takes the byte's top value
//! and its remainder goes to the escapes, out of the way of the common case.
//!
//! Everything but the version byte is inside the frame, so zstd's checksum
//! covers it: a torn or flipped block is refused, never decoded into other
//! positions. The payload is also canonical (shortest varints, every byte
//! accounted for), and every decoded position is checked with
//! [`Position::validate`].

use std::fmt;
use std::io::Write;

use cluecast_proto::Position;
use zstd::zstd_safe;

mod decode;
mod encode;
mod synthetic;

pub use decode::decode_block;
pub use encode::BlockBuilder;
pub use synthetic::synthetic_walk;

/// The first byte of every block.
pub const BLOCK_FORMAT_VERSION: u8 = 1;

/// Encoded (uncompressed) bytes at which a block is sealed: about 900
/// positions (15 minutes at 1 Hz) of a walk, about 3.4 KB once compressed.
pub const BLOCK_RAW_BYTES_TARGET: usize = 4096;

/// Most bytes a block's frame may declare as its content. Far above what a
/// block sealed at the target holds (at most 4095 bytes plus one position),
/// it only bounds what a hostile block can make the decoder allocate.
pub const BLOCK_DECODED_BYTES_MAX: usize = 64 * 1024;

/// The fix interval the timestamp prediction assumes, ms. Other rates decode
/// exactly; they just compress less well.
const FIX_INTERVAL_MS: u64 = 1000;

/// The tracked grid moves by 1/8 of each fix's offset from it: slow enough to
/// average the jitter out, fast enough to follow a drifting phone clock.
const GRID_SMOOTHING_SHIFT: u32 = 3;

/// Velocities are kept in 1/256 of a 1e-7 degree per fix interval.
const VELOCITY_FRACTION_BITS: u32 = 8;
const VELOCITY_ONE: i64 = 1 << VELOCITY_FRACTION_BITS;

/// Each fix moves the velocity estimate by 1/4 of its surprise: smooth
/// enough that GPS noise is not taken for motion, quick enough for a corner.
const VELOCITY_SMOOTHING_SHIFT: u32 = 2;

/// Longest gap, in fix intervals, over which the velocity is extrapolated; a
/// longer one says little about where the player went.
const GAP_STEPS_MAX: i64 = 16;

/// Low bits of a coordinate residual stored in the `fine` column.
const FINE_BITS: u32 = 4;
const FINE_MASK: u64 = (1 << FINE_BITS) - 1;

/// A byte column's value that says "the rest is in the escapes".
const BYTE_ESCAPE: u64 = 0xff;
/// The `ts` column's 7-bit residual that says the same.
const TS_ESCAPE: u64 = 0x7f;

/// The zstd frame magic number, as stored (little-endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Frame header descriptor bit: the frame ends with a content checksum.
const ZSTD_CHECKSUM_FLAG: u8 = 0x04;

/// Why bytes are not a path block. Each is detected, never decoded into
/// positions other than the ones written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// The first byte is not a format version this build reads.
    UnknownVersion(u8),
    /// The block ends early (a torn write); says inside what.
    Truncated(&'static str),
    /// Bytes follow the end of the named part.
    TrailingBytes { after: &'static str, bytes: usize },
    /// The content does not match zstd's checksum: the block was altered.
    ChecksumMismatch,
    /// The zstd frame is not one this module writes, or zstd finds it
    /// damaged; the text (zstd's own, if it is zstd's) says how.
    Corrupt(&'static str),
    /// The frame declares more content than [`BLOCK_DECODED_BYTES_MAX`].
    TooLarge { bytes: u64 },
    /// The payload declares more positions than its columns have room for.
    CountMismatch { declared: u64, room: usize },
    /// The payload does not follow the layout; the text says how.
    Malformed(&'static str),
    /// A decoded value is outside the range a POSITION may carry.
    InvalidPosition {
        index: usize,
        field: &'static str,
        value: i128,
    },
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::UnknownVersion(v) => write!(
                f,
                "unknown path block format version {v} (this build reads {BLOCK_FORMAT_VERSION})"
            ),
            BlockError::Truncated(what) => {
                write!(f, "path block is truncated: it ends inside the {what}")
            }
            BlockError::TrailingBytes { after, bytes } => {
                write!(f, "path block has {bytes} trailing bytes after the {after}")
            }
            BlockError::ChecksumMismatch => {
                f.write_str("path block is corrupt: its content does not match the zstd checksum")
            }
            BlockError::Corrupt(why) => write!(f, "path block is corrupt: {why}"),
            BlockError::TooLarge { bytes } => write!(
                f,
                "path block declares {bytes} bytes of content, over the \
                 {BLOCK_DECODED_BYTES_MAX}-byte limit"
            ),
            BlockError::CountMismatch { declared, room } => write!(
                f,
                "path block declares {declared} positions but has room for at most {room}"
            ),
            BlockError::Malformed(why) => write!(f, "malformed path block payload: {why}"),
            BlockError::InvalidPosition {
                index,
                field,
                value,
            } => write!(
                f,
                "path block position {index}: {field} {value} is outside the valid POSITION range"
            ),
        }
    }
}

impl std::error::Error for BlockError {}

/// One coordinate's prediction state.
#[derive(Clone, Copy, Debug, Default)]
struct Axis {
    last: i64,
    /// Smoothed movement per fix interval, in 1/[`VELOCITY_ONE`] units.
    velocity: i64,
}

impl Axis {
    fn predict(&self, steps: i64) -> i64 {
        self.last + ((self.velocity * steps + VELOCITY_ONE / 2) >> VELOCITY_FRACTION_BITS)
    }

    fn learn(&mut self, value: i32, steps: i64, first: bool) {
        // The first fix has nothing to have moved from.
        if !first {
            let moved = (i64::from(value) - self.last) * VELOCITY_ONE / steps;
            self.velocity += (moved - self.velocity) >> VELOCITY_SMOOTHING_SHIFT;
        }
        self.last = i64::from(value);
    }
}

/// What the encoder and the decoder both expect of the next position. Both
/// feed it the same positions in the same order, so both predict the same;
/// only + - * and shifts on integers, so no platform can disagree. Every
/// value it holds comes from a position that passed `validate` (the decoder
/// checks before learning), which keeps its arithmetic far from overflow.
#[derive(Clone, Copy, Debug, Default)]
struct Predictor {
    started: bool,
    /// Where the phone's 1 s fix grid is believed to be, ms.
    grid_ms: u64,
    /// Fix intervals since the previous fix, set by `advance_clock`.
    steps: i64,
    lat: Axis,
    lon: Axis,
    accuracy_cm: u32,
}

impl Predictor {
    fn predict_ts(&self) -> u64 {
        self.grid_ms.wrapping_add(FIX_INTERVAL_MS)
    }

    /// Moves the grid to the new fix's timestamp, which fixes how many
    /// intervals the coordinates are extrapolated over.
    fn advance_clock(&mut self, ts_ms: u64) {
        if !self.started {
            self.grid_ms = ts_ms;
            self.steps = 1;
            return;
        }
        // Phone clocks may jump either way; wrapping keeps any u64 defined.
        let since = i128::from(ts_ms.wrapping_sub(self.grid_ms) as i64);
        let interval = i128::from(FIX_INTERVAL_MS);
        let steps = (since + interval / 2).div_euclid(interval);
        let offset = since - steps * interval;
        let moved = steps * interval + (offset >> GRID_SMOOTHING_SHIFT);
        self.grid_ms = self.grid_ms.wrapping_add(moved as i64 as u64);
        self.steps = steps.clamp(1, i128::from(GAP_STEPS_MAX)) as i64;
    }

    fn predict_lat(&self) -> i64 {
        self.lat.predict(self.steps)
    }

    fn predict_lon(&self) -> i64 {
        self.lon.predict(self.steps)
    }

    fn learn(&mut self, p: &Position) {
        let first = !self.started;
        self.lat.learn(p.lat_e7, self.steps, first);
        self.lon.learn(p.lon_e7, self.steps, first);
        self.accuracy_cm = p.accuracy_cm;
        self.started = true;
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Where walks start: Île de la Cité, Paris (48.8530° N, 2.3499° E).
const WALK_ORIGIN_LAT_E7: i32 = 488_530_000;
/// 1e-7 degree units per metre north (111.32 km per degree of latitude).
const LAT_E7_PER_METRE: f64 = 89.831_117_499_101_7;
/// 1e-7 degree units per metre east at the origin's latitude.
const LON_E7_PER_METRE: f64 = 136.522_870_982_699_66;

#[cfg(test)]
mod tests {
    use super::encode::seal;
    use super::synthetic::SplitMix64;
    use super::*;

    /// 2023-11-14T22:13:20Z plus an offset that is not on a whole second.
    const START_TS_MS: u64 = 1_700_000_000_437;

    fn block_of(positions: &[Position]) -> Vec<u8> {
        let mut builder = BlockBuilder::new();
        for p in positions {
            builder.push(p);
        }
        builder.finish()
    }

    /// A walk cut where the builder says the block is full.
    fn full_block(seed: u64) -> Vec<Position> {
        let walk = synthetic_walk(seed, 4000, START_TS_MS);
        let mut builder = BlockBuilder::new();
        for (i, p) in walk.iter().enumerate() {
            builder.push(p);
            if builder.is_full() {
                return walk[..=i].to_vec();
            }
        }
        panic!("4000 positions did not fill a block");
    }

    /// The payload inside a block (test-only: no size limit needed here).
    fn payload_of(block: &[u8]) -> Vec<u8> {
        zstd::bulk::decompress(&block[1..], 1 << 20).expect("a block this module wrote")
    }

    fn seal_payload(payload: &[u8]) -> Vec<u8> {
        seal(&[&[payload]])
    }

    /// splitmix64 for test inputs.
    fn rng(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    #[test]
    fn round_trips_synthetic_walks_of_many_seeds_and_sizes() {
        for seed in 0..40 {
            let full = full_block(seed);
            let sizes = [1, 2, 3, 5, 17, 100, 333, full.len() - 1, full.len()];
            for n in sizes {
                let block = block_of(&full[..n]);
                assert_eq!(
                    decode_block(&block).as_deref(),
                    Ok(&full[..n]),
                    "seed {seed}, {n} positions"
                );
            }
        }
    }

    #[test]
    fn empty_builder_round_trips_to_no_positions() {
        let builder = BlockBuilder::new();
        assert!(builder.is_empty());
        assert_eq!(decode_block(&builder.finish()), Ok(Vec::new()));
    }

    #[test]
    fn finish_leaves_the_builder_growing_and_clear_starts_over() {
        let walk = synthetic_walk(3, 700, START_TS_MS);
        let mut builder = BlockBuilder::new();
        for (i, p) in walk.iter().enumerate() {
            builder.push(p);
            assert_eq!(builder.len(), i + 1);
            if i % 37 == 0 {
                assert_eq!(decode_block(&builder.finish()).as_deref(), Ok(&walk[..=i]));
            }
        }
        assert_eq!(builder.finish(), block_of(&walk), "finish changed nothing");
        builder.clear();
        assert!(builder.is_empty());
        assert_eq!(builder.encoded_bytes(), BlockBuilder::new().encoded_bytes());
        for p in &walk[300..] {
            builder.push(p);
        }
        assert_eq!(
            builder.finish(),
            block_of(&walk[300..]),
            "clear forgets the predictions too"
        );
    }

    #[test]
    fn encoded_bytes_is_the_payload_size_and_fills_at_the_target() {
        let walk = synthetic_walk(11, 2000, START_TS_MS);
        let mut builder = BlockBuilder::new();
        for p in &walk {
            builder.push(p);
            assert_eq!(builder.encoded_bytes(), payload_of(&builder.finish()).len());
            if builder.is_full() {
                break;
            }
        }
        assert!(builder.is_full());
        assert!(builder.encoded_bytes() >= BLOCK_RAW_BYTES_TARGET);
        assert!(builder.encoded_bytes() < BLOCK_RAW_BYTES_TARGET + 64);
    }

    #[test]
    fn round_trips_extreme_values() {
        let lat = Position::LAT_E7_MAX;
        let lon = Position::LON_E7_MAX;
        let acc = Position::ACCURACY_CM_MAX;
        let at = |lat_e7, lon_e7, accuracy_cm, client_ts_ms| Position {
            lat_e7,
            lon_e7,
            accuracy_cm,
            client_ts_ms,
        };
        let extremes = vec![
            at(-lat, -lon, 0, 1),
            at(lat, lon, acc, u64::MAX),
            at(-lat, lon, 0, 1),
            at(lat, -lon, acc, u64::MAX / 2),
            at(0, 0, 0, u64::MAX / 2 + 1),
            at(lat, lon, acc, 2),
            at(lat, lon, acc, 2), // a repeat
            at(-lat, -lon, 0, 1), // the clock going back
            at(1, -1, 1, START_TS_MS),
            at(2, -2, acc, START_TS_MS - 5000),
            at(-lat, lon, acc - 1, START_TS_MS + 1_000_000_000),
            at(lat, -lon, 0, u64::MAX - 999),
        ];
        assert_eq!(decode_block(&block_of(&extremes)), Ok(extremes.clone()));
        // Every extreme as the first position and after every other.
        for a in &extremes {
            for b in &extremes {
                let pair = [*a, *b, *a];
                assert_eq!(decode_block(&block_of(&pair)).as_deref(), Ok(&pair[..]));
            }
        }
        // A walk whose clock steps back now and then.
        let mut walk = synthetic_walk(5, 500, START_TS_MS);
        for (i, p) in walk.iter_mut().enumerate() {
            if i % 7 == 3 {
                p.client_ts_ms -= 4_000;
            }
        }
        assert_eq!(decode_block(&block_of(&walk)), Ok(walk));
    }

    /// zstd's checksum covers the content, not the compressed bytes: a few
    /// bits of its entropy-table descriptions (and the frame header's unused
    /// bit) change nothing when flipped. Those blocks decode to the very
    /// positions written; every other flip is refused.
    #[test]
    fn every_single_bit_flip_is_refused_or_changes_nothing() {
        let (mut flips, mut harmless) = (0, 0);
        for seed in [21, 22] {
            let positions = full_block(seed);
            let block = block_of(&positions);
            for bit in 0..block.len() * 8 {
                let mut flipped = block.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                flips += 1;
                if let Ok(decoded) = decode_block(&flipped) {
                    assert_eq!(
                        decoded, positions,
                        "flipping bit {bit} changed the positions"
                    );
                    harmless += 1;
                }
            }
        }
        println!("{harmless} of {flips} single-bit flips decode unchanged; the rest are refused");
        assert!(
            harmless * 1000 < flips,
            "{harmless} of {flips} flips went unnoticed"
        );
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        for positions in [full_block(22), synthetic_walk(23, 3, START_TS_MS)] {
            let block = block_of(&positions);
            for len in 0..block.len() {
                assert!(
                    decode_block(&block[..len]).is_err(),
                    "cut at {len} of {}",
                    block.len()
                );
            }
            let mut longer = block.clone();
            longer.push(0);
            assert_eq!(
                decode_block(&longer),
                Err(BlockError::TrailingBytes {
                    after: "zstd frame",
                    bytes: 1
                })
            );
            // A second frame appended is not part of the block either.
            longer.pop();
            longer.extend_from_slice(&block[1..]);
            assert!(decode_block(&longer).is_err());
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rng(0x5eed);
        for i in 0..200_000 {
            let len = rng.int(0, 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            // Mostly a plausible start, so the bytes get past the first checks.
            if i % 4 != 0 && len >= 6 {
                bytes[0] = BLOCK_FORMAT_VERSION;
                bytes[1..5].copy_from_slice(&ZSTD_MAGIC);
                bytes[5] |= ZSTD_CHECKSUM_FLAG;
            }
            let _ = decode_block(&bytes);
        }
    }

    /// A payload that passed zstd's checksum but was not written by a
    /// builder is either refused or re-encodes to exactly itself: no two
    /// payloads decode to the same positions, so nothing is half-read.
    fn assert_refused_or_canonical(payload: &[u8]) {
        if let Ok(positions) = decode_block(&seal_payload(payload)) {
            assert_eq!(
                payload_of(&block_of(&positions)),
                payload,
                "decoded {positions:?}"
            );
        }
    }

    #[test]
    fn altered_payloads_are_refused_or_canonical() {
        let mut rng = rng(77);
        let walk = synthetic_walk(31, 60, START_TS_MS);
        let payload = payload_of(&block_of(&walk));
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut altered = payload.clone();
            for _ in 0..rng.int(1, 3) {
                let at = rng.int(0, altered.len() as i64 - 1) as usize;
                match rng.int(0, 3) {
                    0 => altered[at] ^= 1 << rng.int(0, 7),
                    1 => altered[at] = rng.next_u64() as u8,
                    2 => {
                        altered.remove(at);
                    }
                    _ => altered.insert(at, rng.next_u64() as u8),
                }
            }
            if decode_block(&seal_payload(&altered)).is_ok() {
                accepted += 1;
            }
            assert_refused_or_canonical(&altered);
        }
        // Most single-byte changes in a column are still well-formed.
        assert!(accepted > 1000, "only {accepted} altered payloads parsed");
        for _ in 0..20_000 {
            let len = rng.int(1, 40) as usize;
            let mut random: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            random[0] = rng.int(0, 8) as u8; // a small count
            assert_refused_or_canonical(&random);
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let block = block_of(&synthetic_walk(41, 200, START_TS_MS));
        let message = |bytes: &[u8]| decode_block(bytes).unwrap_err().to_string();

        let mut other_version = block.clone();
        other_version[0] = 2;
        assert_eq!(
            decode_block(&other_version),
            Err(BlockError::UnknownVersion(2))
        );
        assert!(message(&other_version).contains("unknown path block format version 2"));

        let mut bad_checksum = block.clone();
        *bad_checksum.last_mut().unwrap() ^= 0x10;
        assert_eq!(
            decode_block(&bad_checksum),
            Err(BlockError::ChecksumMismatch)
        );
        assert!(message(&bad_checksum).contains("checksum"));

        assert_eq!(
            decode_block(&[]),
            Err(BlockError::Truncated("format version"))
        );
        assert_eq!(
            decode_block(&block[..block.len() - 1]),
            Err(BlockError::Truncated("zstd frame"))
        );
        assert!(message(&block[..block.len() - 1]).contains("truncated"));

        let mut trailing = block.clone();
        trailing.extend_from_slice(b"xyz");
        assert!(message(&trailing).contains("3 trailing bytes after the zstd frame"));

        let mut not_zstd = block.clone();
        not_zstd[1] ^= 0xff;
        assert!(message(&not_zstd).contains("not a zstd frame"));

        let no_checksum = {
            let mut frame = vec![BLOCK_FORMAT_VERSION];
            frame.extend(zstd::bulk::compress(&payload_of(&block), 3).unwrap());
            frame
        };
        assert!(message(&no_checksum).contains("no content checksum"));

        let huge = seal_payload(&vec![0; BLOCK_DECODED_BYTES_MAX + 1]);
        assert_eq!(
            decode_block(&huge),
            Err(BlockError::TooLarge {
                bytes: BLOCK_DECODED_BYTES_MAX as u64 + 1
            })
        );
        assert!(message(&huge).contains("over the 65536-byte limit"));

        // A count of 3 with the room of 2 positions.
        let too_many = seal_payload(&[3, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            decode_block(&too_many),
            Err(BlockError::CountMismatch {
                declared: 3,
                room: 2
            })
        );
        assert!(message(&too_many).contains("declares 3 positions but has room for at most 2"));

        let mut payload = payload_of(&block);
        payload.push(0);
        assert!(message(&seal_payload(&payload)).contains("1 trailing bytes after the last escape"));

        // One position, timestamp residual -1000 (zigzag 1999, escaped):
        // a timestamp of 0.
        let mut payload = vec![1, (TS_ESCAPE << 1) as u8, 0, 0, 0];
        put_varint(&mut payload, 1999 - TS_ESCAPE);
        assert_eq!(
            decode_block(&seal_payload(&payload)),
            Err(BlockError::InvalidPosition {
                index: 0,
                field: "timestamp",
                value: 0
            })
        );

        let mut over = BlockBuilder::new();
        over.push(&Position {
            lat_e7: Position::LAT_E7_MAX,
            lon_e7: 0,
            accuracy_cm: 0,
            client_ts_ms: START_TS_MS,
        });
        // Raise the stored latitude by one: its residual is escaped, and the
        // last escape is the latitude's (the longitude's fits its byte).
        let mut payload = payload_of(&over.finish());
        let (last, _) = payload.split_last().unwrap();
        assert!(*last < 0x7f, "a one-byte last escape");
        let at = payload.len() - 1;
        // +1 in the varint's top 7-bit group (bits 21..): +2^21 in the coarse
        // part, +2^25 in the zigzag residual, +2^24 in latitude.
        payload[at] += 1;
        assert_eq!(
            decode_block(&seal_payload(&payload)),
            Err(BlockError::InvalidPosition {
                index: 0,
                field: "latitude",
                value: i128::from(Position::LAT_E7_MAX) + (1 << 24)
            })
        );
        assert!(message(&seal_payload(&payload))
            .contains("position 0: latitude 916777216 is outside the valid POSITION range"));
    }

    #[test]
    fn bytes_per_position_on_a_long_walk() {
        const POSITIONS: usize = 100_000;
        let walk = synthetic_walk(2024, POSITIONS, START_TS_MS);
        let mut builder = BlockBuilder::new();
        let mut blocks = Vec::new();
        for p in &walk {
            builder.push(p);
            if builder.is_full() {
                blocks.push(builder.finish());
                builder.clear();
            }
        }
        if !builder.is_empty() {
            blocks.push(builder.finish());
        }
        let stored: usize = blocks.iter().map(Vec::len).sum();
        let decoded: Vec<Position> = blocks
            .iter()
            .flat_map(|b| decode_block(b).unwrap())
            .collect();
        assert_eq!(decoded, walk);

        // The four fields as fixed-width integers: 4 + 4 + 4 + 8 bytes.
        let raw = 20;
        let per_position = stored as f64 / POSITIONS as f64;
        let sealed = &blocks[..blocks.len() - 1];
        let sealed_positions: usize = sealed.iter().map(|b| decode_block(b).unwrap().len()).sum();
        let (smallest, largest) = sealed.iter().fold((usize::MAX, 0), |(lo, hi), b| {
            (lo.min(b.len()), hi.max(b.len()))
        });
        println!(
            "{POSITIONS} positions of a synthetic walk: {stored} bytes in {} blocks, \
             {per_position:.3} bytes/position (raw {raw}); a sealed block holds {:.0} \
             positions in {:.0} bytes on average ({smallest}..={largest} bytes)",
            blocks.len(),
            sealed_positions as f64 / sealed.len() as f64,
            sealed.iter().map(Vec::len).sum::<usize>() as f64 / sealed.len() as f64,
        );
        assert!(per_position <= 4.0, "{per_position:.3} bytes per position");
    }

    #[test]
    fn synthetic_walk_is_deterministic_and_plausible() {
        let walk = synthetic_walk(9, 20_000, START_TS_MS);
        assert_eq!(walk, synthetic_walk(9, 20_000, START_TS_MS));
        assert_ne!(walk[..100], synthetic_walk(10, 100, START_TS_MS)[..]);
        assert_eq!(synthetic_walk(9, 500, START_TS_MS)[..], walk[..500]);

        let mut gaps = 0;
        let mut still = 0; // fixes under 0.5 m/s from the last: a pause
        let mut walking = 0; // 0.8..=2 m/s
        for pair in walk.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(b.validate().is_ok());
            assert!((300..=2000).contains(&b.accuracy_cm), "{b:?}");
            let dt_ms = b.client_ts_ms - a.client_ts_ms;
            assert!((940..=10_060).contains(&dt_ms), "{dt_ms} ms between fixes");
            if dt_ms > 1500 {
                gaps += 1;
                continue;
            }
            let north = f64::from(b.lat_e7 - a.lat_e7) / LAT_E7_PER_METRE;
            let east = f64::from(b.lon_e7 - a.lon_e7) / LON_E7_PER_METRE;
            let speed = (north * north + east * east).sqrt() / (dt_ms as f64 / 1000.0);
            if speed < 0.5 {
                still += 1;
            } else if (0.8..=2.0).contains(&speed) {
                walking += 1;
            }
        }
        let n = walk.len() as f64;
        // About one gap a minute and a half; a fifth of the time paused.
        assert!((100..=400).contains(&gaps), "{gaps} gaps");
        assert!(walking as f64 > 0.4 * n, "{walking} walking steps");
        assert!(still as f64 > 0.05 * n, "{still} still steps");
        // Within a few km of the origin after 5.5 hours of ambling.
        let last = walk[walk.len() - 1];
        assert!((last.lat_e7 - WALK_ORIGIN_LAT_E7).abs() < 10_000 * 90);
    }
}
