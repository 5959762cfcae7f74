//! `path_block::decode_block`, which reads players' stored paths back, on
//! arbitrary bytes: in mode 0 a block as stored, in mode 1 a block's payload
//! this target seals first (see `cluecast_fuzz::path_block`), so the payload
//! decoder behind zstd's checksum is fuzzed too.
//!
//! Asserted: it never panics; the positions it returns are valid POSITIONs,
//! at most one per 4 payload bytes after the count (the format's minimum);
//! and they are exactly what `BlockBuilder` wrote: building a block of them
//! again gives the same payload byte for byte (the module promises a
//! canonical payload), which decodes to the same positions.

#![no_main]

use std::io::Write;

use cluecast::storage::path_block::{
    decode_block, BlockBuilder, BLOCK_DECODED_BYTES_MAX, BLOCK_FORMAT_VERSION,
};
use cluecast_fuzz::path_block::MODE_STORED;
use libfuzzer_sys::fuzz_target;

/// The version byte and one zstd frame of `payload`, with its content size
/// and checksum, as the module writes a block (at a faster level).
fn seal(payload: &[u8]) -> Vec<u8> {
    let mut encoder =
        zstd::stream::write::Encoder::new(vec![BLOCK_FORMAT_VERSION], 1).expect("zstd encoder");
    encoder.include_checksum(true).expect("checksum flag");
    encoder
        .include_contentsize(true)
        .expect("content size flag");
    encoder
        .set_pledged_src_size(Some(payload.len() as u64))
        .expect("pledged size");
    encoder.write_all(payload).expect("compress");
    encoder.finish().expect("compress")
}

fn payload_of(block: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(&block[1..]).expect("a block that decodes decompresses")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let sealed;
    let block = if mode & 1 == MODE_STORED {
        rest
    } else {
        sealed = seal(rest);
        &sealed[..]
    };
    let Ok(positions) = decode_block(block) else {
        return;
    };
    let payload = payload_of(block);
    assert!(payload.len() <= BLOCK_DECODED_BYTES_MAX);
    assert!(
        1 + 4 * positions.len() <= payload.len(),
        "{} positions from a {}-byte payload",
        positions.len(),
        payload.len()
    );
    for (i, p) in positions.iter().enumerate() {
        assert_eq!(p.validate(), Ok(()), "position {i} is out of range: {p:?}");
    }

    // The builder is to be sealed once full (it debug-asserts it), so a
    // block grown past half the decoder's limit is not rebuilt.
    let mut builder = BlockBuilder::new();
    for p in &positions {
        if builder.encoded_bytes() > BLOCK_DECODED_BYTES_MAX / 2 {
            return;
        }
        builder.push(p);
    }
    let rebuilt = builder.finish();
    assert_eq!(
        payload_of(&rebuilt),
        payload,
        "the payload is not canonical: the same {} positions encode differently",
        positions.len()
    );
    assert_eq!(decode_block(&rebuilt), Ok(positions));
});
