//! Who may do what: the signing keys, and the signed tokens clients present
//! in HELLO.
//!
//! A token is a JSON Web Token in compact form, signed with HMAC-SHA256
//! (`HS256`, the only algorithm accepted), so a game backend can mint one
//! with any JWT library. The header names the key (`kid`); the claims are
//! `sub` (the player), `exp` and optionally `nbf` (seconds since 1970),
//! `subscribe` and `publish` (lists of topic patterns) and `paths` (may read
//! every player's path, not only its own). A pattern is a topic name, a
//! prefix ending in `.*` (`hunt-42.*` matches `hunt-42.team-1` but not
//! `hunt-42`), or `*` for every topic.
//!
//! Keys come from a TOML file of `KEY_ID = "HEX SECRET"` lines; several keys
//! may be valid at once, so a new one can be added before an old one goes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest secret accepted: 256 bits, the strength of the MAC.
const SECRET_BYTES_MIN: usize = 32;
/// Longest secret accepted (HMAC hashes longer keys down anyway).
const SECRET_BYTES_MAX: usize = 128;
/// Keys one file may hold.
const KEYS_MAX: usize = 16;
const KEY_ID_BYTES_MAX: usize = 64;
/// Patterns one token may carry per right.
pub const PATTERNS_MAX: usize = 64;
/// Longest subject (the protocol's client_id limit).
pub const SUBJECT_BYTES_MAX: usize = 64;

/// The keys tokens are signed with, in the order of their file.
pub struct Keys {
    keys: Vec<(String, Vec<u8>)>,
}

/// What a token claims, as minted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paths: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    kid: String,
}

/// What a verified token lets its connection do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub subject: Box<[u8]>,
    subscribe: Box<[Pattern]>,
    publish: Box<[Pattern]>,
    paths: bool,
    /// When the token stops being valid, seconds since 1970.
    pub expires_s: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(Box<[u8]>),
    /// Everything below this prefix (which ends with the dot).
    Below(Box<[u8]>),
}

/// Why a token was refused; the text is for the client's ERROR frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed(String),
    UnknownKey(String),
    BadSignature,
    Expired,
    NotYetValid,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing => f.write_str("a token is required (HELLO's token is empty)"),
            Refusal::Malformed(why) => write!(f, "malformed token: {why}"),
            Refusal::UnknownKey(kid) => write!(f, "token signed with unknown key {kid:?}"),
            Refusal::BadSignature => f.write_str("token signature does not verify"),
            Refusal::Expired => f.write_str("token expired"),
            Refusal::NotYetValid => f.write_str("token not valid yet (nbf)"),
        }
    }
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        };
        if text == "*" {
            return Ok(Pattern::Any);
        }
        if let Some(prefix) = text.strip_suffix('*') {
            if prefix.ends_with('.') && valid(prefix) {
                return Ok(Pattern::Below(prefix.as_bytes().into()));
            }
        } else if valid(text) {
            return Ok(Pattern::Exact(text.as_bytes().into()));
        }
        Err(format!(
            "pattern {text:?}: a topic name, a prefix ending in \".*\", or \"*\""
        ))
    }

    fn matches(&self, topic: &[u8]) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(name) => **name == *topic,
            Pattern::Below(prefix) => topic.len() > prefix.len() && topic.starts_with(prefix),
        }
    }
}

fn parse_patterns(list: &[String]) -> Result<Box<[Pattern]>, String> {
    if list.len() > PATTERNS_MAX {
        return Err(format!("more than {PATTERNS_MAX} patterns"));
    }
    list.iter().map(|p| Pattern::parse(p)).collect()
}

impl Claims {
    /// Checks what a grant is made of, so a token that verifies is usable.
    fn grant(&self) -> Result<Grant, String> {
        if self.sub.is_empty() || self.sub.len() > SUBJECT_BYTES_MAX {
            return Err(format!("sub must be 1 to {SUBJECT_BYTES_MAX} bytes"));
        }
        Ok(Grant {
            subject: self.sub.as_bytes().into(),
            subscribe: parse_patterns(&self.subscribe)?,
            publish: parse_patterns(&self.publish)?,
            paths: self.paths,
            expires_s: self.exp,
        })
    }
}

impl Grant {
    pub fn may_subscribe(&self, topic: &[u8]) -> bool {
        self.subscribe.iter().any(|p| p.matches(topic))
    }

    /// Publishing, and closing the topic.
    pub fn may_publish(&self, topic: &[u8]) -> bool {
        self.publish.iter().any(|p| p.matches(topic))
    }

    pub fn may_read_path(&self, player: &[u8]) -> bool {
        self.paths || *self.subject == *player
    }
}

fn mac(secret: &[u8], signed: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(signed);
    mac
}

impl Keys {
    /// Reads a key file: `KEY_ID = "HEX SECRET"` lines (TOML). A file other
    /// users may read is refused: its keys mint any right.
    pub fn load(path: &Path) -> Result<Keys, String> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("key file {shown}: {e}"))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "key file {shown} may be read or written by other users (mode {:o}); \
                 its keys mint any right: chmod 600 {shown}",
                mode & 0o777
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("key file {shown}: {e}"))?;
        Keys::parse(&text).map_err(|e| format!("key file {shown}: {e}"))
    }

    pub fn parse(text: &str) -> Result<Keys, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut keys = Vec::new();
        for (id, value) in table {
            let hex = value
                .as_str()
                .ok_or_else(|| format!("key {id:?}: the secret must be a hex string"))?;
            let secret = decode_hex(hex).ok_or_else(|| format!("key {id:?}: not hex"))?;
            if id.is_empty() || id.len() > KEY_ID_BYTES_MAX {
                return Err(format!("key ids are 1 to {KEY_ID_BYTES_MAX} bytes"));
            }
            if !(SECRET_BYTES_MIN..=SECRET_BYTES_MAX).contains(&secret.len()) {
                return Err(format!(
                    "key {id:?}: secrets are {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX} bytes \
                     ({} to {} hex digits); `openssl rand -hex 32` makes one",
                    2 * SECRET_BYTES_MIN,
                    2 * SECRET_BYTES_MAX
                ));
            }
            keys.push((id, secret));
        }
        if keys.is_empty() || keys.len() > KEYS_MAX {
            return Err(format!("a key file holds 1 to {KEYS_MAX} keys"));
        }
        Ok(Keys { keys })
    }

    fn secret(&self, id: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, s)| s.as_slice())
    }

    /// Signs `claims` with the key named `key_id`, or the file's first.
    pub fn mint(&self, key_id: Option<&str>, claims: &Claims) -> Result<String, String> {
        claims.grant()?;
        let (id, secret) = match key_id {
            None => &self.keys[0],
            Some(id) => self
                .keys
                .iter()
                .find(|(k, _)| k == id)
                .ok_or_else(|| format!("no key {id:?} in the key file"))?,
        };
        let header = Header {
            alg: "HS256".into(),
            typ: Some("JWT".into()),
            kid: id.clone(),
        };
        let mut token = BASE64.encode(to_json(&header));
        token.push('.');
        token.push_str(&BASE64.encode(to_json(claims)));
        let signature = mac(secret, token.as_bytes()).finalize().into_bytes();
        token.push('.');
        token.push_str(&BASE64.encode(signature));
        Ok(token)
    }

    /// What `token` grants at `now_s` (seconds since 1970).
    pub fn verify(&self, token: &[u8], now_s: u64) -> Result<Grant, Refusal> {
        if token.is_empty() {
            return Err(Refusal::Missing);
        }
        let malformed = |why: &str| Refusal::Malformed(why.to_string());
        let text = std::str::from_utf8(token).map_err(|_| malformed("not text"))?;
        let mut parts = text.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not three dot-separated parts"));
        };
        let decode = |part: &str, what: &str| {
            BASE64
                .decode(part)
                .map_err(|_| Refusal::Malformed(format!("{what} is not base64url")))
        };
        let header: Header = serde_json::from_slice(&decode(header, "the header")?)
            .map_err(|e| Refusal::Malformed(format!("header: {e}")))?;
        if header.alg != "HS256" {
            return Err(Refusal::Malformed(format!(
                "algorithm {:?}; only HS256 is accepted",
                header.alg
            )));
        }
        let secret = self
            .secret(&header.kid)
            .ok_or_else(|| Refusal::UnknownKey(header.kid.clone()))?;
        let signed = &text[..text.len() - signature.len() - 1];
        mac(secret, signed.as_bytes())
            .verify_slice(&decode(signature, "the signature")?)
            .map_err(|_| Refusal::BadSignature)?;
        // Only a token the key signed is read any further.
        let claims: Claims = serde_json::from_slice(&decode(claims, "the claims")?)
            .map_err(|e| Refusal::Malformed(format!("claims: {e}")))?;
        let grant = claims.grant().map_err(Refusal::Malformed)?;
        if now_s >= claims.exp {
            return Err(Refusal::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now_s < nbf) {
            return Err(Refusal::NotYetValid);
        }
        Ok(grant)
    }
}

/// JSON of a token part (plain structs: serde_json cannot fail on them).
fn to_json<T: serde::Serialize>(part: &T) -> Vec<u8> {
    serde_json::to_vec(part).expect("plain structs serialize")
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim();
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses a duration like `90s`, `15m`, `1h`, `7d` (or plain seconds) into
/// seconds; 0 is allowed.
pub fn parse_duration_s(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => (&text[..text.len() - 1], c),
        _ => (text, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("{text:?}: units are s, m, h, d")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a whole number, then s, m, h or d"))?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?}: out of range"))
}

/// A token's lifetime: a duration as [`parse_duration_s`] takes it, above 0.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    match parse_duration_s(text) {
        Ok(0) => Err(format!("ttl {text:?}: out of range")),
        Ok(s) => Ok(s),
        Err(e) => Err(format!("ttl {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = "\
k2 = \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"
k1 = \"ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\"
";

    fn claims() -> Claims {
        Claims {
            sub: "phone-7".into(),
            exp: 2_000,
            nbf: Some(1_000),
            subscribe: vec!["hunt-42".into(), "hunt-42.*".into()],
            publish: vec![],
            paths: false,
        }
    }

    #[test]
    fn a_minted_token_verifies_and_grants_what_it_claims() {
        let keys = Keys::parse(KEYS).unwrap();
        let token = keys.mint(None, &claims()).unwrap();
        let grant = keys.verify(token.as_bytes(), 1_500).unwrap();
        assert_eq!(&*grant.subject, b"phone-7");
        assert_eq!(grant.expires_s, 2_000);
        assert!(grant.may_subscribe(b"hunt-42"));
        assert!(grant.may_subscribe(b"hunt-42.team-1"));
        assert!(
            !grant.may_subscribe(b"hunt-42."),
            "a prefix needs more after it"
        );
        assert!(!grant.may_subscribe(b"hunt-420"));
        assert!(!grant.may_subscribe(b"hunt-43"));
        assert!(!grant.may_publish(b"hunt-42"));
        assert!(grant.may_read_path(b"phone-7") && !grant.may_read_path(b"phone-8"));
        // The first key of the file signs unless another is named.
        let header: Header =
            serde_json::from_slice(&BASE64.decode(token.split('.').next().unwrap()).unwrap())
                .unwrap();
        assert_eq!(header.kid, "k2");
        let other = keys.mint(Some("k1"), &claims()).unwrap();
        assert!(keys.verify(other.as_bytes(), 1_500).is_ok());
        assert!(keys.mint(Some("k3"), &claims()).is_err());
    }

    #[test]
    fn time_bounds_are_enforced() {
        let keys = Keys::parse(KEYS).unwrap();
        let token = keys.mint(None, &claims()).unwrap();
        assert_eq!(
            keys.verify(token.as_bytes(), 999),
            Err(Refusal::NotYetValid)
        );
        assert_eq!(keys.verify(token.as_bytes(), 2_000), Err(Refusal::Expired));
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let keys = Keys::parse(KEYS).unwrap();
        let token = keys.mint(None, &claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        // More rights in the claims, same signature.
        let mut richer = claims();
        richer.publish = vec!["*".into()];
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            BASE64.encode(serde_json::to_vec(&richer).unwrap()),
            parts[2]
        );
        assert_eq!(
            keys.verify(forged.as_bytes(), 1_500),
            Err(Refusal::BadSignature)
        );
        // Signed with a key this appliance does not have.
        let stranger = Keys::parse(&KEYS.replace("00112233", "99999999")).unwrap();
        let foreign = stranger.mint(None, &claims()).unwrap();
        assert_eq!(
            keys.verify(foreign.as_bytes(), 1_500),
            Err(Refusal::BadSignature)
        );
        let unknown = Keys::parse(&KEYS.replace("k2", "k9")).unwrap();
        let unknown = unknown.mint(None, &claims()).unwrap();
        assert_eq!(
            keys.verify(unknown.as_bytes(), 1_500),
            Err(Refusal::UnknownKey("k9".into()))
        );
        // "alg": "none" and friends.
        let none = format!(
            "{}.{}.",
            BASE64.encode(br#"{"alg":"none","kid":"k2"}"#),
            parts[1]
        );
        assert!(matches!(
            keys.verify(none.as_bytes(), 1_500),
            Err(Refusal::Malformed(_))
        ));
        for junk in [&b""[..], b"a.b", b"a.b.c.d", b"\xff.\xfe.\xfd", b"...."] {
            assert!(keys.verify(junk, 1_500).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn bad_key_files_and_claims_are_refused_clearly() {
        for (text, needle) in [
            ("", "1 to 16 keys"),
            ("k = \"abc\"", "not hex"),
            ("k = \"0011\"", "32 to 128 bytes"),
            ("k = 7", "hex string"),
        ] {
            let err = Keys::parse(text).err().unwrap();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        let keys = Keys::parse(KEYS).unwrap();
        let mut bad = claims();
        bad.subscribe = vec!["hunt-*".into()];
        assert!(keys.mint(None, &bad).unwrap_err().contains("pattern"));
        bad.subscribe = vec![];
        bad.sub = String::new();
        assert!(keys.mint(None, &bad).is_err());
    }

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        let path = std::env::temp_dir().join(format!("cluecast-keys-{}", std::process::id()));
        std::fs::write(&path, KEYS).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keys::load(&path).err().unwrap();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Keys::load(&path).is_ok());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn ttls_parse_with_units() {
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert_eq!(parse_ttl("15m").unwrap(), 900);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("7d").unwrap(), 604_800);
        for bad in ["", "h", "1w", "-1h", "0s"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_ttl("1w").unwrap_err(),
            "ttl \"1w\": units are s, m, h, d"
        );
        // Other durations may be 0 (`--retry-for 0`: no retry).
        assert_eq!(parse_duration_s("0").unwrap(), 0);
        assert_eq!(parse_duration_s("0s").unwrap(), 0);
        assert_eq!(parse_duration_s("30s").unwrap(), 30);
    }
}
