//! The protocol v1 decoder on arbitrary bytes, read front to back the way a
//! server reads a connection: decode a frame, advance by what it used, stop
//! at "need more bytes" or at an error.
//!
//! Asserted, for every frame that decodes:
//! - it used between 5 bytes and what was there;
//! - re-encoding it gives back exactly the bytes it came from. This holds for
//!   every frame type: each field is read verbatim (integers big-endian,
//!   str8/str16 with their length, enums from their one valid byte, the rest
//!   of the body as payload or PATH records) and a body with bytes after its
//!   last field is refused, so no two encodings decode to the same frame;
//! - `encoded_len` agrees, and `encode_to_slice` writes the same bytes;
//! - every strict prefix of it is "need more bytes", never an error (the
//!   first bytes alone are checked for the length limit and the type, and
//!   those passed);
//! - under limits tighter than the defaults in every field it is refused or
//!   decodes to the same frame: tighter limits only ever refuse more.

#![no_main]

use cluecast_proto::{decode, Limits, HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

/// Tighter than `Limits::DEFAULT` in every field: 256-byte payloads (as the
/// handshake target's appliance), 16-byte topics, 8-byte client ids,
/// 512-byte tokens.
const TIGHT: Limits = Limits {
    frame_bytes_max: Limits::frame_bytes_for(256, 512),
    payload_bytes_max: 256,
    topic_bytes_max: 16,
    client_id_bytes_max: 8,
    token_bytes_max: 512,
};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::DEFAULT;
    let mut rest = data;
    let mut encoded = Vec::new();
    let mut slice = Vec::new();
    while let Ok(Some((frame, used))) = decode(rest, &limits) {
        assert!(
            (HEADER_BYTES..=rest.len()).contains(&used),
            "decode used {used} of {} bytes",
            rest.len()
        );
        let input = &rest[..used];

        encoded.clear();
        frame.encode(&mut encoded);
        assert_eq!(
            encoded, input,
            "{frame:?} does not re-encode to the bytes it was decoded from"
        );
        assert_eq!(frame.encoded_len(), used);
        slice.clear();
        slice.resize(used, 0);
        assert_eq!(frame.encode_to_slice(&mut slice), used);
        assert_eq!(slice, input);

        for prefix in [0, 4, HEADER_BYTES, used - 1] {
            if prefix < used {
                assert_eq!(
                    decode(&input[..prefix], &limits),
                    Ok(None),
                    "a {prefix}-byte prefix of {frame:?}"
                );
            }
        }

        if let Ok(Some((tight, tight_used))) = decode(input, &TIGHT) {
            assert_eq!(tight, frame, "tighter limits decode another frame");
            assert_eq!(tight_used, used);
        }

        rest = &rest[used..];
    }
});
