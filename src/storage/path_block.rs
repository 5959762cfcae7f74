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

/// The first byte of every block.
pub const BLOCK_FORMAT_VERSION: u8 = 1;

/// Encoded (uncompressed) bytes at which a block is sealed: about 900
/// positions (15 minutes at 1 Hz) of a walk, about 3.4 KB once compressed.
pub const BLOCK_RAW_BYTES_TARGET: usize = 4096;

/// Most bytes a block's frame may declare as its content. Far above what a
/// block sealed at the target holds (at most 4095 bytes plus one position),
/// it only bounds what a hostile block can make the decoder allocate.
pub const BLOCK_DECODED_BYTES_MAX: usize = 64 * 1024;

/// zstd level: fast enough to seal a block on the event path.
const ZSTD_LEVEL: i32 = 3;

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

/// Every position takes at least one byte in `ts`, `lat_coarse`,
/// `lon_coarse` and `fine`.
const POSITION_BYTES_MIN: usize = 4;

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

/// Escapes by field, each in position order; stored one field after another.
const ESCAPE_TS: usize = 0;
const ESCAPE_ACCURACY: usize = 1;
const ESCAPE_LAT: usize = 2;
const ESCAPE_LON: usize = 3;

/// The payload's columns, kept apart while the block grows.
#[derive(Clone, Debug, Default)]
struct Columns {
    ts: Vec<u8>,
    accuracy: Vec<u8>,
    lat_coarse: Vec<u8>,
    lon_coarse: Vec<u8>,
    fine: Vec<u8>,
    escapes: [Vec<u8>; 4],
}

impl Columns {
    fn bytes(&self) -> usize {
        self.ts.len()
            + self.accuracy.len()
            + self.lat_coarse.len()
            + self.lon_coarse.len()
            + self.fine.len()
            + self.escapes.iter().map(Vec::len).sum::<usize>()
    }

    fn clear(&mut self) {
        self.ts.clear();
        self.accuracy.clear();
        self.lat_coarse.clear();
        self.lon_coarse.clear();
        self.fine.clear();
        self.escapes.iter_mut().for_each(Vec::clear);
    }

    /// One byte in `column`, or the escape byte and the rest in `escapes`.
    fn put_byte(column: &mut Vec<u8>, escapes: &mut Vec<u8>, v: u64) {
        if v < BYTE_ESCAPE {
            column.push(v as u8);
        } else {
            column.push(BYTE_ESCAPE as u8);
            put_varint(escapes, v - BYTE_ESCAPE);
        }
    }

    fn push(&mut self, ts: u64, accuracy: u64, lat: u64, lon: u64) {
        let ts_low = ts.min(TS_ESCAPE);
        self.ts.push((ts_low << 1 | u64::from(accuracy != 0)) as u8);
        if ts_low == TS_ESCAPE {
            put_varint(&mut self.escapes[ESCAPE_TS], ts - TS_ESCAPE);
        }
        if accuracy != 0 {
            // Zero is said by the flag, so the byte starts at 1.
            Self::put_byte(
                &mut self.accuracy,
                &mut self.escapes[ESCAPE_ACCURACY],
                accuracy - 1,
            );
        }
        Self::put_byte(
            &mut self.lat_coarse,
            &mut self.escapes[ESCAPE_LAT],
            lat >> FINE_BITS,
        );
        Self::put_byte(
            &mut self.lon_coarse,
            &mut self.escapes[ESCAPE_LON],
            lon >> FINE_BITS,
        );
        self.fine
            .push((lat & FINE_MASK | (lon & FINE_MASK) << FINE_BITS) as u8);
    }
}

/// Accumulates one block of a player's positions, in arrival order.
///
/// The caller pushes each valid position, seals the block when
/// [`is_full`](Self::is_full), and may [`finish`](Self::finish) it any time
/// before (to persist a partial block) without disturbing it.
#[derive(Clone, Debug, Default)]
pub struct BlockBuilder {
    len: usize,
    predictor: Predictor,
    columns: Columns,
}

impl BlockBuilder {
    pub fn new() -> BlockBuilder {
        BlockBuilder::default()
    }

    /// Appends a position. It must pass [`Position::validate`] (the server
    /// refuses any other POSITION), and the block must be sealed once full:
    /// otherwise [`decode_block`] would refuse what [`finish`](Self::finish)
    /// writes. Both are checked in debug builds.
    pub fn push(&mut self, p: &Position) {
        debug_assert!(p.validate().is_ok(), "invalid position pushed: {p:?}");
        debug_assert!(
            self.encoded_bytes() <= BLOCK_DECODED_BYTES_MAX / 2,
            "a path block grew far past its target: it is to be sealed when full"
        );
        let ts = zigzag(p.client_ts_ms.wrapping_sub(self.predictor.predict_ts()) as i64);
        self.predictor.advance_clock(p.client_ts_ms);
        let lat = zigzag(i64::from(p.lat_e7) - self.predictor.predict_lat());
        let lon = zigzag(i64::from(p.lon_e7) - self.predictor.predict_lon());
        let accuracy = zigzag(i64::from(p.accuracy_cm) - i64::from(self.predictor.accuracy_cm));
        self.predictor.learn(p);
        self.columns.push(ts, accuracy, lat, lon);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block's encoded size before compression, bytes: what the target
    /// is measured in.
    pub fn encoded_bytes(&self) -> usize {
        varint_len(self.len as u64) + self.columns.bytes()
    }

    /// True once the block has reached [`BLOCK_RAW_BYTES_TARGET`]: seal it.
    pub fn is_full(&self) -> bool {
        self.encoded_bytes() >= BLOCK_RAW_BYTES_TARGET
    }

    /// The block as stored: the format version and one zstd frame. The
    /// builder is left as it was, so a growing block can be saved again.
    pub fn finish(&self) -> Vec<u8> {
        let c = &self.columns;
        let mut count = Vec::with_capacity(10);
        put_varint(&mut count, self.len as u64);
        let [ts_escapes, accuracy_escapes, lat_escapes, lon_escapes] = &c.escapes;
        seal(&[
            &[&count, &c.ts, &c.accuracy],
            &[&c.lat_coarse, &c.lon_coarse],
            &[
                &c.fine,
                ts_escapes,
                accuracy_escapes,
                lat_escapes,
                lon_escapes,
            ],
        ])
    }

    /// Empties the builder for the next block.
    pub fn clear(&mut self) {
        self.len = 0;
        self.predictor = Predictor::default();
        self.columns.clear();
    }
}

/// The version byte and one zstd frame of `groups`' bytes in order, each
/// group compressed as its own zstd block(s) so it gets its own entropy
/// tables.
fn seal(groups: &[&[&[u8]]]) -> Vec<u8> {
    let content: usize = groups
        .iter()
        .flat_map(|g| g.iter())
        .map(|part| part.len())
        .sum();
    let mut out = Vec::with_capacity(content + 64);
    out.push(BLOCK_FORMAT_VERSION);
    compress_into(out, groups, content)
        // zstd refuses only invalid parameters or a content size that differs
        // from the pledged one; these are fixed here, not taken from input.
        .expect("zstd refused to compress a path block")
}

fn compress_into(out: Vec<u8>, groups: &[&[&[u8]]], content: usize) -> std::io::Result<Vec<u8>> {
    let mut encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    encoder.include_checksum(true)?;
    encoder.include_contentsize(true)?;
    encoder.set_pledged_src_size(Some(content as u64))?;
    for group in groups {
        for part in group.iter() {
            encoder.write_all(part)?;
        }
        // Ends the current zstd block: the next group gets fresh tables.
        encoder.flush()?;
    }
    encoder.finish()
}

/// What a zstd error code means for a block. zstd returns an error as the
/// negated code (`ZSTD_isError`); codes below 100 are pinned since 1.3.1.
fn zstd_error(code: zstd_safe::ErrorCode) -> BlockError {
    use zstd_safe::zstd_sys::ZSTD_ErrorCode;
    let is = |e: ZSTD_ErrorCode| code == 0usize.wrapping_sub(e as usize);
    if is(ZSTD_ErrorCode::ZSTD_error_checksum_wrong) {
        BlockError::ChecksumMismatch
    } else if is(ZSTD_ErrorCode::ZSTD_error_srcSize_wrong) {
        BlockError::Truncated("zstd frame")
    } else {
        BlockError::Corrupt(zstd_safe::get_error_name(code))
    }
}

/// The block's zstd frame, decompressed, after checking that it is exactly
/// one frame of the kind [`seal`] writes: content size and checksum on, the
/// size within [`BLOCK_DECODED_BYTES_MAX`].
fn decompress_frame(frame: &[u8]) -> Result<Vec<u8>, BlockError> {
    if frame.len() <= ZSTD_MAGIC.len() {
        return Err(BlockError::Truncated("zstd frame header"));
    }
    if frame[..ZSTD_MAGIC.len()] != ZSTD_MAGIC {
        return Err(BlockError::Corrupt("not a zstd frame (wrong magic number)"));
    }
    // Without the checksum a damaged frame could decode into other positions.
    if frame[ZSTD_MAGIC.len()] & ZSTD_CHECKSUM_FLAG == 0 {
        return Err(BlockError::Corrupt("zstd frame has no content checksum"));
    }
    let frame_len = zstd_safe::find_frame_compressed_size(frame).map_err(zstd_error)?;
    if frame_len < frame.len() {
        return Err(BlockError::TrailingBytes {
            after: "zstd frame",
            bytes: frame.len() - frame_len,
        });
    }
    let content = match zstd_safe::get_frame_content_size(frame) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Err(BlockError::Corrupt("zstd frame does not declare its size")),
        Err(_) => return Err(BlockError::Corrupt("zstd frame header is invalid")),
    };
    if content > BLOCK_DECODED_BYTES_MAX as u64 {
        return Err(BlockError::TooLarge { bytes: content });
    }
    // Exactly the declared size: zstd fails rather than write past it.
    let mut payload = Vec::with_capacity(content as usize);
    zstd_safe::decompress(&mut payload, frame).map_err(zstd_error)?;
    if payload.len() as u64 != content {
        return Err(BlockError::Corrupt(
            "zstd frame content differs from its declared size",
        ));
    }
    Ok(payload)
}

/// Reads a payload front to back; every read says what it was reading, for
/// the error if the payload ends first.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], BlockError> {
        if n > self.bytes.len() {
            return Err(BlockError::Truncated(what));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, BlockError> {
        let (&byte, rest) = self
            .bytes
            .split_first()
            .ok_or(BlockError::Truncated(what))?;
        self.bytes = rest;
        Ok(byte)
    }

    /// A LEB128 varint in its shortest form (the payload is canonical).
    fn varint(&mut self, what: &'static str) -> Result<u64, BlockError> {
        let mut value = 0u64;
        for (i, shift) in (0..64).step_by(7).enumerate() {
            let byte = self.byte(what)?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte holds bit 63 only.
            if shift == 63 && bits > 1 {
                return Err(BlockError::Malformed("varint overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(BlockError::Malformed("varint not in its shortest form"));
                }
                return Ok(value);
            }
        }
        Err(BlockError::Malformed("varint longer than 10 bytes"))
    }

    /// Splits off the bytes of the next `count` varints (read later).
    fn varints(&mut self, count: usize, what: &'static str) -> Result<Reader<'a>, BlockError> {
        let mut len = 0;
        for _ in 0..count {
            let end = self.bytes[len..]
                .iter()
                .position(|b| b & 0x80 == 0)
                .ok_or(BlockError::Truncated(what))?;
            len += end + 1;
        }
        Ok(Reader {
            bytes: self.take(len, what)?,
        })
    }
}

/// The value of a byte-column entry: the byte, or past the escape byte, the
/// next escape added to it.
fn with_escape(byte: u8, escapes: &mut Reader<'_>, what: &'static str) -> Result<u64, BlockError> {
    let v = u64::from(byte);
    if v < BYTE_ESCAPE {
        return Ok(v);
    }
    v.checked_add(escapes.varint(what)?)
        .ok_or(BlockError::Malformed("escaped value overflows 64 bits"))
}

/// A coordinate's zigzag residual from its coarse part and fine bits.
fn coordinate(coarse: u64, fine: u8) -> Result<u64, BlockError> {
    if coarse > u64::MAX >> FINE_BITS {
        return Err(BlockError::Malformed(
            "coordinate residual overflows 64 bits",
        ));
    }
    Ok(coarse << FINE_BITS | u64::from(fine))
}

/// Which field of a decoded position is out of range (after `validate`
/// refused it), for the error.
fn invalid_field(index: usize, p: &Position) -> BlockError {
    let (field, value) = if p.lat_e7.unsigned_abs() > Position::LAT_E7_MAX as u32 {
        ("latitude", i128::from(p.lat_e7))
    } else if p.lon_e7.unsigned_abs() > Position::LON_E7_MAX as u32 {
        ("longitude", i128::from(p.lon_e7))
    } else if p.accuracy_cm > Position::ACCURACY_CM_MAX {
        ("accuracy", i128::from(p.accuracy_cm))
    } else {
        ("timestamp", i128::from(p.client_ts_ms))
    };
    BlockError::InvalidPosition {
        index,
        field,
        value,
    }
}

/// The positions of a block [`BlockBuilder::finish`] wrote, in order.
/// Anything else — another format version, a torn or altered block, a
/// payload out of layout, a position out of range — is an error; this never
/// panics and never returns positions that were not written.
pub fn decode_block(bytes: &[u8]) -> Result<Vec<Position>, BlockError> {
    let (&version, frame) = bytes
        .split_first()
        .ok_or(BlockError::Truncated("format version"))?;
    if version != BLOCK_FORMAT_VERSION {
        return Err(BlockError::UnknownVersion(version));
    }
    let payload = decompress_frame(frame)?;
    decode_payload(&payload)
}

fn decode_payload(payload: &[u8]) -> Result<Vec<Position>, BlockError> {
    let mut r = Reader { bytes: payload };
    let declared = r.varint("position count")?;
    let room = r.bytes.len() / POSITION_BYTES_MIN;
    let count = match usize::try_from(declared) {
        Ok(count) if count <= room => count,
        _ => return Err(BlockError::CountMismatch { declared, room }),
    };
    let ts = r.take(count, "ts column")?;
    let accuracy_changes = ts.iter().filter(|&&b| b & 1 != 0).count();
    let accuracy = r.take(accuracy_changes, "accuracy column")?;
    let lat_coarse = r.take(count, "lat_coarse column")?;
    let lon_coarse = r.take(count, "lon_coarse column")?;
    let fine = r.take(count, "fine column")?;

    let ts_escaped = ts
        .iter()
        .filter(|&&b| u64::from(b >> 1) == TS_ESCAPE)
        .count();
    let escaped = |column: &[u8]| {
        column
            .iter()
            .filter(|&&b| u64::from(b) == BYTE_ESCAPE)
            .count()
    };
    let mut ts_escapes = r.varints(ts_escaped, "timestamp escapes")?;
    let mut accuracy_escapes = r.varints(escaped(accuracy), "accuracy escapes")?;
    let mut lat_escapes = r.varints(escaped(lat_coarse), "latitude escapes")?;
    let mut lon_escapes = r.varints(escaped(lon_coarse), "longitude escapes")?;
    if !r.bytes.is_empty() {
        return Err(BlockError::TrailingBytes {
            after: "last escape",
            bytes: r.bytes.len(),
        });
    }

    let mut accuracy_bytes = accuracy.iter();
    let mut predictor = Predictor::default();
    let mut positions = Vec::with_capacity(count);
    for i in 0..count {
        let ts_low = u64::from(ts[i] >> 1);
        let ts_residual = if ts_low == TS_ESCAPE {
            ts_low
                .checked_add(ts_escapes.varint("timestamp escapes")?)
                .ok_or(BlockError::Malformed(
                    "timestamp residual overflows 64 bits",
                ))?
        } else {
            ts_low
        };
        let client_ts_ms = predictor
            .predict_ts()
            .wrapping_add(unzigzag(ts_residual) as u64);
        predictor.advance_clock(client_ts_ms);

        let lat_residual = coordinate(
            with_escape(lat_coarse[i], &mut lat_escapes, "latitude escapes")?,
            fine[i] & FINE_MASK as u8,
        )?;
        let lon_residual = coordinate(
            with_escape(lon_coarse[i], &mut lon_escapes, "longitude escapes")?,
            fine[i] >> FINE_BITS,
        )?;
        let accuracy_residual = if ts[i] & 1 == 0 {
            0
        } else {
            let &byte = accuracy_bytes
                .next()
                .ok_or(BlockError::Truncated("accuracy column"))?;
            with_escape(byte, &mut accuracy_escapes, "accuracy escapes")?
                .checked_add(1)
                .ok_or(BlockError::Malformed("accuracy residual overflows 64 bits"))?
        };

        // In i128 a hostile residual cannot overflow; the range check follows.
        let lat = i128::from(predictor.predict_lat()) + i128::from(unzigzag(lat_residual));
        let lon = i128::from(predictor.predict_lon()) + i128::from(unzigzag(lon_residual));
        let accuracy = i128::from(predictor.accuracy_cm) + i128::from(unzigzag(accuracy_residual));
        let out_of_range = |field, value| BlockError::InvalidPosition {
            index: i,
            field,
            value,
        };
        let p = Position {
            lat_e7: i32::try_from(lat).map_err(|_| out_of_range("latitude", lat))?,
            lon_e7: i32::try_from(lon).map_err(|_| out_of_range("longitude", lon))?,
            accuracy_cm: u32::try_from(accuracy).map_err(|_| out_of_range("accuracy", accuracy))?,
            client_ts_ms,
        };
        p.validate().map_err(|_| invalid_field(i, &p))?;
        predictor.learn(&p);
        positions.push(p);
    }
    Ok(positions)
}

/// A small deterministic PRNG (splitmix64): the walk must be the same for a
/// seed everywhere, and the crate takes no `rand` dependency for a test aid.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in lo..=hi.
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo) as u64 + 1;
        lo + (self.next_u64() % span) as i64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Approximately standard normal (Irwin–Hall: four uniforms), bounded at
    /// ±3.46. Only + and * so the walk is bit-identical on every platform.
    fn normal(&mut self) -> f64 {
        let sum = self.unit() + self.unit() + self.unit() + self.unit();
        (sum - 2.0) * 1.732_050_807_568_877_2
    }
}

/// Where walks start: Île de la Cité, Paris (48.8530° N, 2.3499° E).
const WALK_ORIGIN_LAT_E7: i32 = 488_530_000;
const WALK_ORIGIN_LON_E7: i32 = 23_499_000;
/// 1e-7 degree units per metre north (111.32 km per degree of latitude).
const LAT_E7_PER_METRE: f64 = 89.831_117_499_101_7;
/// 1e-7 degree units per metre east at the origin's latitude.
const LON_E7_PER_METRE: f64 = 136.522_870_982_699_66;
/// Correlation of the GPS error from one second to the next: exp(-1 s / 30 s).
const GPS_ERROR_RHO: f64 = 0.967_216_100_482_005_9;

/// Rotates the unit vector `(x, y)` by `angle` radians (|angle| well under 1).
/// sin and cos are short Taylor series, not libm, so the walk does not depend
/// on the platform's maths library.
fn rotate(x: f64, y: f64, angle: f64) -> (f64, f64) {
    let a2 = angle * angle;
    let cos = 1.0 - a2 / 2.0 + a2 * a2 / 24.0 - a2 * a2 * a2 / 720.0;
    let sin = angle * (1.0 - a2 / 6.0 + a2 * a2 / 120.0 - a2 * a2 * a2 / 5040.0);
    unit(x * cos - y * sin, x * sin + y * cos)
}

/// `(x, y)` scaled to length 1 (east if it has none).
fn unit(x: f64, y: f64) -> (f64, f64) {
    let norm = (x * x + y * y).sqrt();
    if norm > 0.0 {
        (x / norm, y / norm)
    } else {
        (1.0, 0.0)
    }
}

/// A plausible path of one player, for measurements and tests: `count` fixes
/// starting at `start_ts_ms`, the same for the same seed on every platform.
///
/// The model, one step per second:
/// - The player alternates walking legs (60–600 s) and pauses (20–180 s).
///   Walking, the speed drifts around a per-leg pace of 1.0–1.6 m/s and the
///   heading wanders gently (a turn rate that is itself a slow random
///   process, about 3°/s), with a street corner (a 60–120° turn over 4 s)
///   about once every 90 s. Paused, the player does not move at all.
/// - The reported fix is the true position plus a GPS error that is an AR(1)
///   process per axis with a 30 s correlation time and a standard deviation
///   of 0.4 × the reported accuracy (a few metres): errors drift, they do not
///   jump from fix to fix, and a standing player's fix wanders — by about
///   1 m from one second to the next at the median accuracy, on the noisy
///   side of what phones (which smooth their fixes) report.
/// - Accuracy follows a per-leg level (3.5–10 m, one leg in five 10–18 m, as
///   in a street canyon) with multiplicative noise, clamped to 3–20 m; the
///   receiver re-estimates it on about half of the fixes and repeats the last
///   value otherwise, and it is reported to the centimetre.
/// - About once every 90 s fixes are missed for 1–9 s (a timestamp jump of
///   2–10 s). Each timestamp is the whole second plus a delivery jitter of
///   ±30 ms, uniform and independent per fix.
///
/// The walk starts within about 1 km of the origin (Île de la Cité, Paris).
pub fn synthetic_walk(seed: u64, count: usize, start_ts_ms: u64) -> Vec<Position> {
    let mut rng = SplitMix64(seed);
    // True position in metres east and north of the origin.
    let mut east = rng.uniform(-1000.0, 1000.0);
    let mut north = rng.uniform(-1000.0, 1000.0);
    let (mut heading_x, mut heading_y) = unit(rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0));
    let mut turn_rate = 0.0; // radians per second
    let mut corner_left_s = 0; // seconds left in a street-corner turn
    let mut corner_rate = 0.0;
    let mut walking = rng.chance(0.5);
    let mut phase_left_s = 0i64;
    let mut pace = 1.3;
    let mut speed = 0.0;
    let mut accuracy_level_m = 6.0;
    let mut accuracy_m = 6.0;
    let mut reported_accuracy_cm = 600u32;
    let (mut error_east, mut error_north) = (0.0, 0.0);
    let error_innovation = (1.0 - GPS_ERROR_RHO * GPS_ERROR_RHO).sqrt();
    let mut missing_left_s = 0;

    let mut fixes = Vec::with_capacity(count);
    let mut second = 0u64;
    while fixes.len() < count {
        if phase_left_s == 0 {
            walking = !walking;
            phase_left_s = if walking {
                rng.int(60, 600)
            } else {
                rng.int(20, 180)
            };
            pace = rng.uniform(1.0, 1.6);
            accuracy_level_m = if rng.chance(0.2) {
                rng.uniform(10.0, 18.0)
            } else {
                rng.uniform(3.5, 10.0)
            };
        }
        phase_left_s -= 1;

        if walking {
            speed += 0.2 * (pace - speed) + 0.03 * rng.normal();
            turn_rate = 0.9 * turn_rate + 0.02 * rng.normal();
            if corner_left_s == 0 && rng.chance(1.0 / 90.0) {
                corner_left_s = 4;
                let sign = if rng.chance(0.5) { 1.0 } else { -1.0 };
                corner_rate = sign * rng.uniform(60.0, 120.0).to_radians() / 4.0;
            }
            let mut turn = turn_rate;
            if corner_left_s > 0 {
                corner_left_s -= 1;
                turn += corner_rate;
            }
            (heading_x, heading_y) = rotate(heading_x, heading_y, turn);
            east += heading_x * speed;
            north += heading_y * speed;
        } else {
            speed = 0.0;
        }

        accuracy_m += 0.05 * (accuracy_level_m - accuracy_m) + 0.03 * accuracy_m * rng.normal();
        accuracy_m = accuracy_m.clamp(3.0, 20.0);
        let error_sd_m = 0.4 * accuracy_m;
        error_east = GPS_ERROR_RHO * error_east + error_innovation * error_sd_m * rng.normal();
        error_north = GPS_ERROR_RHO * error_north + error_innovation * error_sd_m * rng.normal();

        if missing_left_s > 0 {
            missing_left_s -= 1;
        } else {
            if rng.chance(0.5) {
                reported_accuracy_cm = (accuracy_m * 100.0).round() as u32;
            }
            let jitter_ms = rng.int(-30, 30);
            let ts = start_ts_ms
                .saturating_add(second * 1000)
                .saturating_add_signed(jitter_ms)
                .max(1);
            fixes.push(Position {
                lat_e7: WALK_ORIGIN_LAT_E7
                    + ((north + error_north) * LAT_E7_PER_METRE).round() as i32,
                lon_e7: WALK_ORIGIN_LON_E7
                    + ((east + error_east) * LON_E7_PER_METRE).round() as i32,
                accuracy_cm: reported_accuracy_cm,
                client_ts_ms: ts,
            });
            if rng.chance(1.0 / 90.0) {
                missing_left_s = rng.int(1, 9);
            }
        }
        second += 1;
    }
    fixes
}

#[cfg(test)]
mod tests {
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
