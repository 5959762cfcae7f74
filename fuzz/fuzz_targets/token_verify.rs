//! `Keys::verify`, which checks the token of every HELLO, on arbitrary
//! bytes: in mode 0 the token as a client sends it, in mode 1 a header and
//! claims this target signs with the key first (see `cluecast_fuzz::token`),
//! so the claims parser behind the signature check is fuzzed too.
//!
//! Asserted: it never panics; a token it accepts carries a signature the key
//! made (checked here with our own HMAC, not the verifier's), and the grant
//! is what its claims say (subject, expiry, time bounds at the check's time,
//! rights against an independent reading of the patterns). A token signed
//! with the key is never refused as forged or for its key.

#![no_main]

use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64;
use base64::Engine;
use cluecast::auth::{Claims, Grant, Keys, Refusal, SUBJECT_BYTES_MAX};
use cluecast_fuzz::token::{HEADER, MODE_RAW, NOW_S};
use cluecast_fuzz::{key_file, key_secret, KEY_ID};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys::parse(&key_file()).expect("the fuzz key"));
static SECRET: LazyLock<Vec<u8>> = LazyLock::new(key_secret);

/// HMAC-SHA256 of `signed` with the key, computed here.
fn signature(signed: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&SECRET).expect("any key length");
    mac.update(signed);
    mac.finalize().into_bytes().to_vec()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == MODE_RAW {
        if let Ok(grant) = KEYS.verify(rest, NOW_S) {
            let text = std::str::from_utf8(rest).expect("an accepted token is text");
            let (signed, sig) = text
                .rsplit_once('.')
                .expect("an accepted token has 3 parts");
            let sig = BASE64
                .decode(sig)
                .expect("an accepted signature is base64url");
            assert_eq!(
                sig,
                signature(signed.as_bytes()),
                "a token was accepted with a signature the key did not make"
            );
            let claims = signed.split_once('.').expect("3 parts").1;
            let claims = BASE64
                .decode(claims)
                .expect("accepted claims are base64url");
            check_grant(&grant, &claims);
        }
    } else {
        let (header, claims) = match rest.iter().position(|&b| b == 0) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (HEADER.as_bytes(), rest),
        };
        let mut token = BASE64.encode(header);
        token.push('.');
        token.push_str(&BASE64.encode(claims));
        let sig = signature(token.as_bytes());
        token.push('.');
        token.push_str(&BASE64.encode(sig));
        match KEYS.verify(token.as_bytes(), NOW_S) {
            Ok(grant) => check_grant(&grant, claims),
            Err(Refusal::BadSignature) => {
                panic!("a token signed with the key is refused as forged: {token}")
            }
            Err(Refusal::UnknownKey(kid)) if kid == KEY_ID => {
                panic!("a token naming the key is refused for an unknown key: {token}")
            }
            Err(Refusal::Missing) => panic!("a non-empty token is refused as missing"),
            Err(_) => {}
        }
    }
});

/// The grant of an accepted token against its claims, read here.
fn check_grant(grant: &Grant, claims: &[u8]) {
    let claims: Claims =
        serde_json::from_slice(claims).expect("the claims of an accepted token parse");
    assert_eq!(*grant.subject, *claims.sub.as_bytes());
    assert!((1..=SUBJECT_BYTES_MAX).contains(&grant.subject.len()));
    assert_eq!(grant.expires_s, claims.exp);
    assert!(NOW_S < claims.exp, "accepted after it expired");
    assert!(
        claims.nbf.is_none_or(|nbf| nbf <= NOW_S),
        "accepted before nbf"
    );

    // Each pattern's own topics, and one no pattern is made of.
    let mut probes: Vec<Vec<u8>> = vec![b"hunt-42".to_vec(), b"zz".to_vec()];
    for p in claims.subscribe.iter().chain(&claims.publish) {
        probes.push(p.as_bytes().to_vec());
        if let Some(prefix) = p.strip_suffix('*') {
            probes.push(prefix.as_bytes().to_vec());
            probes.push([prefix.as_bytes(), b"x"].concat());
        }
    }
    for topic in &probes {
        assert_eq!(
            grant.may_subscribe(topic),
            granted(&claims.subscribe, topic),
            "subscribe {:?} under {:?}",
            String::from_utf8_lossy(topic),
            claims.subscribe
        );
        assert_eq!(
            grant.may_publish(topic),
            granted(&claims.publish, topic),
            "publish {:?} under {:?}",
            String::from_utf8_lossy(topic),
            claims.publish
        );
    }
    assert!(grant.may_read_path(claims.sub.as_bytes()));
    let other = [claims.sub.as_bytes(), b"-other"].concat();
    assert_eq!(grant.may_read_path(&other), claims.paths);
}

/// docs/PROTOCOL.md: a pattern is a topic name, a prefix ending in `.*`
/// (matching the topics that go on after it), or `*`.
fn granted(patterns: &[String], topic: &[u8]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix(".*") {
        _ if p == "*" => true,
        Some(prefix) => {
            topic.len() > prefix.len() + 1 && topic.starts_with(&[prefix.as_bytes(), b"."].concat())
        }
        None => p.as_bytes() == topic,
    })
}
