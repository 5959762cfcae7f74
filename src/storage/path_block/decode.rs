//! Decoding a path block: the zstd frame checked and opened, the columns
//! read back through the same predictions, every position validated.

use super::*;

/// Every position takes at least one byte in `ts`, `lat_coarse`,
/// `lon_coarse` and `fine`.
const POSITION_BYTES_MIN: usize = 4;

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
pub(super) fn coordinate(coarse: u64, fine: u8) -> Result<u64, BlockError> {
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
