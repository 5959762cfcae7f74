//! Codec tests: property-based round trips and robustness, and targeted
//! error cases.

mod frames;
mod limits;
mod model;
mod properties;
mod refusals;

use cluecast_proto::*;

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out);
    out
}

const L: Limits = Limits::DEFAULT;

/// A frame with the given type and raw body.
fn raw(type_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(type_byte);
    v.extend_from_slice(body);
    v
}

fn malformed(buf: &[u8]) -> &'static str {
    match decode(buf, &L) {
        Err(DecodeError::Malformed(m)) => m,
        other => panic!("expected Malformed, got {other:?}"),
    }
}
