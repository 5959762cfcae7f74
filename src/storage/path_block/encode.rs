//! Encoding a path block: positions in, the residual columns built as they
//! come (`BlockBuilder`), sealed into one zstd frame.

use super::*;

/// zstd level: fast enough to seal a block on the event path.
const ZSTD_LEVEL: i32 = 3;

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
pub(super) fn seal(groups: &[&[&[u8]]]) -> Vec<u8> {
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
