//! `cluecast cert`: a development CA and a server certificate signed by it
//! (rcgen, with ring), written as PEM files for `run --tls-cert/--tls-key`
//! and the clients' `--tls-ca`. The CA's private key is dropped unless asked
//! for, so the CA can sign nothing after this run.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::DnsName;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::config::DEFAULT_PORT;

/// How long both certificates are valid: long enough for a project, short
/// enough that a copy left lying around stops working.
const VALIDITY_DAYS: i64 = 365;

const CA: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const SERVER: &str = "server.pem";
const SERVER_KEY: &str = "server-key.pem";

/// A name the server's certificate is valid for: what clients put in
/// `--server` (its host part).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Name {
    Dns(String),
    Ip(IpAddr),
}

impl FromStr for Name {
    type Err = String;

    fn from_str(text: &str) -> Result<Name, String> {
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Name::Ip(ip));
        }
        // The check the client applies to the host it connects to, so every
        // name written is one a client can connect by. A trailing dot is
        // refused: certificates name hosts without it.
        match DnsName::try_from(text) {
            Ok(_) if !text.ends_with('.') => Ok(Name::Dns(text.to_string())),
            _ => Err(format!(
                "{text:?} is neither an IP address nor a DNS name (labels of letters, \
                 digits, '-' and '_' joined by dots, e.g. game.example.com)"
            )),
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Dns(name) => f.write_str(name),
            Name::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Runs `cluecast cert`: every failure is about its input (the directory or
/// the names), so it exits 2, as a usage error does.
pub fn main(out: &Path, names: &[Name], force: bool, keep_ca_key: bool) -> ExitCode {
    match make(out, names, force, keep_ca_key) {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("cluecast cert: {message}");
            ExitCode::from(2)
        }
    }
}

/// Makes the CA and the server's certificate, writes them into `out` and
/// returns what to tell the user.
fn make(out: &Path, names: &[Name], force: bool, keep_ca_key: bool) -> Result<String, String> {
    let mut unique: Vec<Name> = Vec::with_capacity(names.len());
    for name in names {
        if !unique.contains(name) {
            unique.push(name.clone());
        }
    }
    if unique.is_empty() {
        return Err("no --name: the server's certificate needs at least one".into());
    }
    let now = OffsetDateTime::now_utc();
    let made = Made::new(&unique, now).map_err(|e| format!("making the certificates: {e}"))?;
    let mut files = vec![
        (CA, made.ca_pem, 0o644),
        (SERVER, made.server_pem, 0o644),
        (SERVER_KEY, made.server_key_pem, 0o600),
    ];
    if keep_ca_key {
        files.push((CA_KEY, made.ca_key_pem, 0o600));
    }
    write_files(out, &files, force)?;
    Ok(summary(out, &unique, made.not_after, keep_ca_key))
}

/// The PEM texts of one run.
struct Made {
    ca_pem: String,
    ca_key_pem: String,
    server_pem: String,
    server_key_pem: String,
    not_after: OffsetDateTime,
}

impl Made {
    fn new(names: &[Name], now: OffsetDateTime) -> Result<Made, rcgen::Error> {
        // A few minutes back, so a client whose clock runs a little behind
        // accepts a certificate made just now.
        let not_before = now - Duration::minutes(10);
        let not_after = now + Duration::days(VALIDITY_DAYS);

        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        // Each CA gets a name of its own (from its key): a client given the
        // CA of another run is then told the issuer is unknown, not that a
        // signature is bad.
        let fingerprint: String = Sha256::digest(ca_key.public_key_der())[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name.push(
            DnType::CommonName,
            format!("cluecast development CA {fingerprint}"),
        );
        // Path length 0: it signs servers' certificates, not other CAs.
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        ca.not_before = not_before;
        ca.not_after = not_after;
        let ca_cert = ca.self_signed(&ca_key)?;

        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::default();
        server.distinguished_name = DistinguishedName::new();
        server
            .distinguished_name
            .push(DnType::CommonName, names[0].to_string());
        server.subject_alt_names = names
            .iter()
            .map(|name| {
                Ok(match name {
                    Name::Dns(dns) => SanType::DnsName(dns.as_str().try_into()?),
                    Name::Ip(ip) => SanType::IpAddress(*ip),
                })
            })
            .collect::<Result<_, rcgen::Error>>()?;
        // Explicitly CA:FALSE: an end entity, which is what TLS clients
        // accept from a server.
        server.is_ca = IsCa::ExplicitNoCa;
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        server.not_before = not_before;
        server.not_after = not_after;
        let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;

        Ok(Made {
            ca_pem: ca_cert.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            server_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            not_after,
        })
    }
}

/// Writes each `(file name, contents, mode)` into `out`, creating it if
/// needed. Any file of a previous run there (the CA's key included, which
/// would not match the new CA) is refused unless `force`, then replaced.
fn write_files(out: &Path, files: &[(&str, String, u32)], force: bool) -> Result<(), String> {
    let shown = out.display();
    std::fs::create_dir_all(out).map_err(|e| format!("--out {shown}: cannot create it: {e}"))?;
    let existing: Vec<PathBuf> = [CA, CA_KEY, SERVER, SERVER_KEY]
        .iter()
        .map(|name| out.join(name))
        .filter(|path| path.symlink_metadata().is_ok())
        .collect();
    if !existing.is_empty() && !force {
        let listed: Vec<String> = existing.iter().map(|p| p.display().to_string()).collect();
        return Err(format!(
            "{} already there; pass --force to replace {}",
            listed.join(", "),
            if listed.len() == 1 { "it" } else { "them" }
        ));
    }
    for path in &existing {
        std::fs::remove_file(path)
            .map_err(|e| format!("{}: cannot remove it: {e}", path.display()))?;
    }
    let mut written = Vec::with_capacity(files.len());
    for (name, contents, mode) in files {
        let path = out.join(name);
        // create_new: a file (or link) that appeared meanwhile is not
        // followed or overwritten; the mode is set as it is created, so a
        // key is never readable by others, not even briefly.
        let result = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(&path)
        {
            Ok(mut file) => {
                written.push(path.clone());
                file.write_all(contents.as_bytes())
                    .and_then(|()| file.sync_all())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // Leave no half set behind (a rerun would refuse it), and
            // nothing this run did not create is removed.
            for done in &written {
                let _ = std::fs::remove_file(done);
            }
            return Err(format!("{}: cannot write it: {e}", path.display()));
        }
    }
    Ok(())
}

/// What was written and exactly how to use it.
fn summary(out: &Path, names: &[Name], not_after: OffsetDateTime, kept_ca_key: bool) -> String {
    let file = |name: &str| shell_word(&out.join(name).display().to_string());
    let listed: Vec<String> = names.iter().map(Name::to_string).collect();
    let host = match &names[0] {
        Name::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
        name => name.to_string(),
    };
    let mut rows = vec![
        (file(CA), "the CA: clients trust it (--tls-ca)".to_string()),
        (
            file(SERVER),
            format!("the server's certificate, for {}", listed.join(", ")),
        ),
        (
            file(SERVER_KEY),
            "the server's private key (mode 0600)".to_string(),
        ),
    ];
    if kept_ca_key {
        rows.push((
            file(CA_KEY),
            "the CA's private key (mode 0600): whoever holds it can make certificates \
             these clients trust"
                .to_string(),
        ));
    }
    let width = rows.iter().map(|(path, _)| path.len()).max().unwrap_or(0);
    let mut text = format!(
        "Wrote a development CA and a server certificate signed by it, valid for \
         {VALIDITY_DAYS} days (until {} UTC):\n",
        not_after.date()
    );
    for (path, what) in &rows {
        text += &format!("  {path:<width$}  {what}\n");
    }
    if !kept_ca_key {
        text += "The CA's private key was not kept: this CA can sign nothing else.\n";
    }
    text += &format!(
        "Serve with:\n  cluecast run --tls-cert {} --tls-key {}\n",
        file(SERVER),
        file(SERVER_KEY)
    );
    text += &format!(
        "Connect with:\n  cluecast sub --tls-ca {} --server {host}:{DEFAULT_PORT} TOPIC\n",
        file(CA)
    );
    text
}

/// `word` as one shell word: as it is when that is safe, else quoted.
fn shell_word(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_ip_addresses_or_dns_names() {
        assert_eq!("localhost".parse(), Ok(Name::Dns("localhost".into())));
        assert_eq!(
            "game.example.com".parse(),
            Ok(Name::Dns("game.example.com".into()))
        );
        assert_eq!("127.0.0.1".parse(), Ok(Name::Ip([127, 0, 0, 1].into())));
        assert_eq!("[::1]".parse(), Ok(Name::Ip("::1".parse().unwrap())));
        for bad in [
            "",
            "bad name",
            "a..b",
            "-x.example",
            "x.example.",
            "1.2.3",
            "*.example.com",
        ] {
            let err = bad.parse::<Name>().unwrap_err();
            assert!(
                err.contains("neither an IP address nor a DNS name"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn paths_are_quoted_only_when_needed() {
        assert_eq!(shell_word("dev-certs/ca.pem"), "dev-certs/ca.pem");
        assert_eq!(shell_word("my certs/ca.pem"), "'my certs/ca.pem'");
        assert_eq!(shell_word("it's/ca.pem"), r"'it'\''s/ca.pem'");
    }
}
