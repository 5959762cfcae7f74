//! Properties over generated frames and bytes: every frame round-trips
//! through a canonical encoding, strict prefixes ask for more bytes, and no
//! input, arbitrary or corrupted, makes the decoder panic or accept what it
//! could not have encoded.

use proptest::prelude::*;

use super::model::{bytes, model};
use super::*;

/// A decoded frame re-encodes to exactly the bytes it came from (the
/// encoding is canonical), so decode accepted nothing it cannot produce.
fn assert_canonical(buf: &[u8], limits: &Limits) {
    if let Ok(Some((frame, used))) = decode(buf, limits) {
        assert!(used <= buf.len());
        assert_eq!(frame.encoded_len(), used);
        assert_eq!(encode(&frame), &buf[..used]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(m in model()) {
        let frame = m.frame();
        let bytes = encode(&frame);
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        let declared = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        prop_assert_eq!(declared + 4, bytes.len());
        prop_assert_eq!(bytes[4], frame.frame_type() as u8);

        let (decoded, used) = decode(&bytes, &Limits::DEFAULT).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&decoded, &frame);

        // Followed by another frame: only the first is consumed.
        let mut two = bytes.clone();
        Frame::Ping { nonce: 5 }.encode(&mut two);
        let (first, used) = decode(&two, &Limits::DEFAULT).unwrap().unwrap();
        prop_assert_eq!(&first, &frame);
        prop_assert_eq!(decode(&two[used..], &Limits::DEFAULT).unwrap().unwrap().0, Frame::Ping { nonce: 5 });

        // encode_to_slice agrees with encode.
        let mut slice = vec![0u8; bytes.len() + 3];
        prop_assert_eq!(frame.encode_to_slice(&mut slice), bytes.len());
        prop_assert_eq!(&slice[..bytes.len()], &bytes[..]);
    }

    #[test]
    fn strict_prefixes_need_more(m in model()) {
        let frame = m.frame();
        let bytes = encode(&frame);
        let len = (bytes.len() - 4) as u32;

        // The limit exactly fits: every strict prefix asks for more bytes.
        let fits = Limits { frame_bytes_max: len, ..Limits::DEFAULT };
        for i in 0..bytes.len() {
            prop_assert_eq!(decode(&bytes[..i], &fits), Ok(None), "prefix of {} bytes", i);
        }
        prop_assert!(decode(&bytes, &fits).unwrap().is_some());

        // One byte below: refused as soon as the length is there, not before.
        let tight = Limits { frame_bytes_max: len - 1, ..Limits::DEFAULT };
        for i in 0..bytes.len() {
            let expected = if i < 4 {
                Ok(None)
            } else {
                Err(DecodeError::FrameTooLarge { len, max: len - 1 })
            };
            prop_assert_eq!(decode(&bytes[..i], &tight), expected, "prefix of {} bytes", i);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in bytes(2048)) {
        assert_canonical(&buf, &Limits::DEFAULT);
        let small = Limits {
            frame_bytes_max: 300,
            payload_bytes_max: 8,
            topic_bytes_max: 3,
            client_id_bytes_max: 2,
            token_bytes_max: 2,
        };
        assert_canonical(&buf, &small);
    }

    #[test]
    fn arbitrary_body_after_valid_header_never_panics(
        type_byte in prop_oneof![
            prop::sample::select(FrameType::ALL.iter().map(|t| *t as u8).collect::<Vec<_>>()),
            any::<u8>(),
        ],
        body in bytes(600),
        extra in bytes(8),
    ) {
        let mut buf = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        buf.push(type_byte);
        buf.extend_from_slice(&body);
        let complete = buf.len();
        buf.extend_from_slice(&extra);
        match decode(&buf, &Limits::DEFAULT) {
            Ok(Some((_, used))) => prop_assert_eq!(used, complete),
            Ok(None) => prop_assert!(false, "a whole frame was present"),
            Err(_) => {}
        }
        assert_canonical(&buf, &Limits::DEFAULT);
    }

    #[test]
    fn corrupted_encodings_never_panic(m in model(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&m.frame());
        let i = at.index(bytes.len());
        bytes[i] = byte;
        assert_canonical(&bytes, &Limits::DEFAULT);
        bytes.truncate(i);
        assert_canonical(&bytes, &Limits::DEFAULT);
    }
}
