//! Why a TLS session with the server failed, in words: what is wrong with
//! the server's certificate (or the session) and what to do about it, in
//! place of rustls's enum. The client reports every TLS failure as a
//! [`TlsError`] (`ClientError::Tls`).

use std::fmt;

/// A TLS handshake or session with the server failed. Its text says what
/// is wrong and what to do; [`std::error::Error::source`] is rustls's error.
#[derive(Debug)]
pub struct TlsError {
    /// The name the server's certificate was checked against.
    #[cfg(feature = "tls")]
    host: String,
    #[cfg(feature = "tls")]
    error: rustls::Error,
    // Without the `tls` feature no session can fail: no value exists.
    #[cfg(not(feature = "tls"))]
    never: std::convert::Infallible,
}

#[cfg(feature = "tls")]
impl TlsError {
    pub(crate) fn new(host: &str, error: rustls::Error) -> TlsError {
        TlsError {
            host: host.to_string(),
            error,
        }
    }

    /// rustls's error, for a program that wants to tell the cases apart.
    pub fn rustls_error(&self) -> &rustls::Error {
        &self.error
    }
}

#[cfg(feature = "tls")]
impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&explain(&self.host, &self.error))
    }
}

#[cfg(not(feature = "tls"))]
impl fmt::Display for TlsError {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.never {}
    }
}

impl std::error::Error for TlsError {
    #[cfg(feature = "tls")]
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// What `error`, met talking TLS to `host`, means and what to do.
#[cfg(feature = "tls")]
fn explain(host: &str, error: &rustls::Error) -> String {
    use rustls::{CertificateError as Cert, Error, InvalidMessage};
    let Error::InvalidCertificate(cert) = error else {
        return match error {
            // The first bytes back are no TLS record: a plaintext server
            // answering the ClientHello (with an ERROR frame).
            Error::InvalidMessage(InvalidMessage::InvalidContentType) => format!(
                "TLS: the server at {host} did not answer in TLS; it may serve plain TCP \
                 there (started without --tls-cert): connect without --tls-ca, or to its \
                 TLS address ({error})"
            ),
            other => format!("TLS with {host} failed: {other}"),
        };
    };
    let issued = "the server's certificate";
    match cert {
        // webpki's own errors that rustls has no variant for.
        Cert::Other(other)
            if matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            ) =>
        {
            "TLS: the server presents a CA certificate (basicConstraints CA:TRUE) as its own, \
             which TLS clients refuse; serve a certificate signed by a CA instead, e.g. one \
             made by `cluecast cert`, and trust that CA (--tls-ca)"
                .to_string()
        }
        Cert::UnknownIssuer => format!(
            "TLS: {issued} is not signed by a CA in --tls-ca (the certificates this client \
             trusts); trust the CA that signed it (with `cluecast cert`: the ca.pem of the \
             same run as the server's server.pem)"
        ),
        Cert::NotValidForName => format!(
            "TLS: {issued} is not valid for {host}, the name this client connects to \
             (--server); connect by a name the certificate has, or serve one made for \
             {host} (`cluecast cert --name {host}`)"
        ),
        Cert::NotValidForNameContext {
            expected,
            presented,
        } => {
            let expected = expected.to_str();
            let names: Vec<String> = presented.iter().map(|p| presented_name(p)).collect();
            let has = match names.is_empty() {
                true => "it names no host (no DNS name or IP address in its subjectAltName, \
                         which is all clients read)"
                    .to_string(),
                false => format!("it is for {}", names.join(", ")),
            };
            format!(
                "TLS: {issued} is not valid for {expected}, the name this client connects to \
                 (--server); {has}: connect by one of its names, or serve a certificate made \
                 for {expected} (`cluecast cert --name {expected}`)"
            )
        }
        // Without dates: webpki says so for a notAfter before the notBefore.
        Cert::Expired => format!(
            "TLS: {issued} has expired (or its validity period is invalid); serve a renewed \
             certificate"
        ),
        Cert::ExpiredContext { time, not_after } => format!(
            "TLS: {issued} expired at {} (this client's clock says {}); serve a renewed \
             certificate, or set this client's clock right",
            utc(not_after.as_secs()),
            utc(time.as_secs())
        ),
        Cert::NotValidYet => format!(
            "TLS: {issued} is not valid yet; check the clocks of the machine that made it and \
             of this client"
        ),
        Cert::NotValidYetContext { time, not_before } => format!(
            "TLS: {issued} is valid only from {} (this client's clock says {}); check the \
             clocks of the machine that made it and of this client",
            utc(not_before.as_secs()),
            utc(time.as_secs())
        ),
        Cert::BadSignature => format!(
            "TLS: {issued} names a CA in --tls-ca as its issuer, but that CA's key did not \
             sign it (another CA of the same name, or an altered certificate); trust the CA \
             that signed the server's certificate"
        ),
        Cert::InvalidPurpose | Cert::InvalidPurposeContext { .. } => format!(
            "TLS: {issued} is not for TLS servers (its extendedKeyUsage lacks serverAuth); \
             serve a certificate made for a server"
        ),
        other => format!(
            "TLS: {issued} was refused: {}",
            Error::InvalidCertificate(other.clone())
        ),
    }
}

/// A name as webpki lists the certificate's names (`DnsName("a.example")`,
/// `IpAddress(127.0.0.1)`), as a user writes it.
#[cfg(feature = "tls")]
fn presented_name(presented: &str) -> String {
    if let Some(dns) = presented
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
    {
        return dns.to_string();
    }
    if let Some(ip) = presented
        .strip_prefix("IpAddress(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        // webpki writes IPv6 its own way (`0::1`); std's is the usual one.
        return ip
            .parse::<std::net::IpAddr>()
            .map_or_else(|_| ip.to_string(), |ip| ip.to_string());
    }
    presented.to_string()
}

/// Seconds since 1970 as `YYYY-MM-DD HH:MM:SS UTC`.
#[cfg(feature = "tls")]
fn utc(unix_s: u64) -> String {
    let at = i64::try_from(unix_s).map(time::OffsetDateTime::from_unix_timestamp);
    match at {
        Ok(Ok(at)) => format!(
            "{} {:02}:{:02}:{:02} UTC",
            at.date(),
            at.hour(),
            at.minute(),
            at.second()
        ),
        _ => format!("{unix_s} s after 1970 UTC"),
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::{CertificateError, Error, OtherError};
    use std::sync::Arc;
    use std::time::Duration;

    fn words(error: CertificateError) -> String {
        explain("game.example", &Error::InvalidCertificate(error))
    }

    fn at(unix_s: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(unix_s))
    }

    #[test]
    fn a_ca_served_as_the_server_certificate_is_named() {
        let error = CertificateError::Other(OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity)));
        let text = words(error);
        assert!(
            text.contains("presents a CA certificate (basicConstraints CA:TRUE)")
                && text.contains("`cluecast cert`"),
            "{text}"
        );
        assert!(!text.contains("CaUsedAsEndEntity"), "{text}");
    }

    #[test]
    fn other_webpki_errors_keep_their_text() {
        let error = CertificateError::Other(OtherError(Arc::new(
            webpki::Error::PathLenConstraintViolated,
        )));
        let text = words(error);
        assert!(text.contains("PathLenConstraintViolated"), "{text}");
    }

    #[test]
    fn a_wrong_name_says_which_names_the_certificate_has() {
        let text = words(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("game.example").unwrap(),
            presented: vec![
                "DnsName(\"localhost\")".into(),
                "IpAddress(127.0.0.1)".into(),
                "IpAddress(0::1)".into(),
            ],
        });
        assert!(
            text.contains("not valid for game.example")
                && text.contains("it is for localhost, 127.0.0.1, ::1")
                && text.contains("cluecast cert --name game.example"),
            "{text}"
        );
        let text = words(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("127.0.0.1").unwrap(),
            presented: vec![],
        });
        assert!(text.contains("names no host"), "{text}");
        let text = words(CertificateError::NotValidForName);
        assert!(text.contains("not valid for game.example"), "{text}");
    }

    #[test]
    fn dates_are_given_when_rustls_has_them() {
        let text = words(CertificateError::ExpiredContext {
            time: at(1_767_225_600),    // 2026-01-01 00:00:00
            not_after: at(951_827_696), // 2000-02-29 12:34:56
        });
        assert!(
            text.contains("expired at 2000-02-29 12:34:56 UTC")
                && text.contains("clock says 2026-01-01 00:00:00 UTC"),
            "{text}"
        );
        let text = words(CertificateError::NotValidYetContext {
            time: at(0),
            not_before: at(4_102_444_799), // 2099-12-31 23:59:59
        });
        assert!(
            text.contains("valid only from 2099-12-31 23:59:59 UTC")
                && text.contains("clock says 1970-01-01 00:00:00 UTC"),
            "{text}"
        );
        assert!(words(CertificateError::Expired).contains("has expired"));
        assert!(words(CertificateError::NotValidYet).contains("not valid yet"));
    }

    #[test]
    fn issuers_and_signatures_are_named() {
        let text = words(CertificateError::UnknownIssuer);
        assert!(text.contains("not signed by a CA in --tls-ca"), "{text}");
        let text = words(CertificateError::BadSignature);
        assert!(text.contains("that CA's key did not sign it"), "{text}");
        let text = words(CertificateError::InvalidPurpose);
        assert!(text.contains("lacks serverAuth"), "{text}");
    }

    #[test]
    fn anything_else_keeps_rustls_text() {
        let text = words(CertificateError::Revoked);
        assert!(
            text.contains("was refused") && text.contains("Revoked"),
            "{text}"
        );
        let text = explain(
            "game.example",
            &Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
        );
        assert!(
            text.contains("TLS with game.example failed") && text.contains("HandshakeFailure"),
            "{text}"
        );
        let text = explain(
            "game.example",
            &Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert!(text.contains("did not answer in TLS"), "{text}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_709_164_800), "2024-02-29 00:00:00 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }
}
