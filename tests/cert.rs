//! `cluecast cert`: the files it writes (modes, and the certificates read
//! back: CA flag, key usages, names, the signature chain), a real appliance
//! serving them to the CLI over TLS, and what it refuses (overwriting, bad
//! names, a directory it cannot make).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use common::{Server, TempDir, BIN};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::RootCertStore;

fn cert(args: &[&str]) -> Output {
    Command::new(BIN).arg("cert").args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

// -- reading certificates back: just enough DER for the extensions --------

/// The first DER element of `der`: (tag, contents, what follows).
fn tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let (len, at) = match der[1] {
        short if short < 0x80 => (usize::from(short), 2),
        long => {
            let n = usize::from(long & 0x7f);
            let len = der[2..2 + n]
                .iter()
                .fold(0, |len, b| len << 8 | usize::from(*b));
            (len, 2 + n)
        }
    };
    (der[0], &der[at..at + len], &der[at + len..])
}

/// The elements inside a constructed DER value's contents.
fn elements(mut contents: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while !contents.is_empty() {
        let (tag, value, rest) = tlv(contents);
        out.push((tag, value));
        contents = rest;
    }
    out
}

/// A certificate's subjectPublicKeyInfo, encoded (the 7th field of its
/// tbsCertificate, after version, serial, signature, issuer, validity and
/// subject).
fn subject_public_key_info(cert: &[u8]) -> &[u8] {
    let (_, certificate, _) = tlv(cert);
    let (_, mut tbs, _) = tlv(certificate);
    for _ in 0..6 {
        tbs = tlv(tbs).2;
    }
    let rest = tlv(tbs).2;
    &tbs[..tbs.len() - rest.len()]
}

const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];

/// A certificate's extension `oid`: (critical, the value inside its OCTET
/// STRING), if it has one.
fn extension<'a>(cert: &'a [u8], oid: &[u8]) -> Option<(bool, &'a [u8])> {
    let (_, certificate, _) = tlv(cert);
    let (_, tbs) = elements(certificate)[0];
    let (_, extensions) = elements(tbs).into_iter().find(|(tag, _)| *tag == 0xa3)?;
    let (_, list, _) = tlv(extensions);
    elements(list).into_iter().find_map(|(_, ext)| {
        let parts = elements(ext);
        (parts[0].1 == oid).then(|| {
            let critical = parts.len() == 3 && parts[1].1 == [0xff];
            (critical, parts[parts.len() - 1].1)
        })
    })
}

/// basicConstraints' cA flag (absent means false).
fn is_ca(cert: &[u8]) -> bool {
    let (_, value) = extension(cert, BASIC_CONSTRAINTS).expect("basicConstraints");
    let (_, fields, _) = tlv(value);
    elements(fields)
        .iter()
        .any(|(tag, v)| *tag == 0x01 && *v == [0xff])
}

/// The subjectAltName's DNS names and IP addresses, as text.
fn alt_names(cert: &[u8]) -> Vec<String> {
    let (_, value) = extension(cert, SUBJECT_ALT_NAME).expect("subjectAltName");
    let (_, names, _) = tlv(value);
    elements(names)
        .into_iter()
        .map(|(tag, name)| match (tag, name.len()) {
            (0x82, _) => String::from_utf8(name.to_vec()).unwrap(),
            (0x87, 4) => std::net::IpAddr::from(<[u8; 4]>::try_from(name).unwrap()).to_string(),
            (0x87, 16) => std::net::IpAddr::from(<[u8; 16]>::try_from(name).unwrap()).to_string(),
            other => panic!("unexpected general name {other:?}"),
        })
        .collect()
}

/// Whether keyUsage has bit `n` (0 digitalSignature, 5 keyCertSign).
fn key_usage(cert: &[u8], n: usize) -> bool {
    let (_, value) = extension(cert, KEY_USAGE).expect("keyUsage");
    let (_, bits, _) = tlv(value);
    bits.get(1 + n / 8)
        .is_some_and(|b| b & (0x80 >> (n % 8)) != 0)
}

/// rustls's own verdict on `server` for `name`, trusting `ca` alone.
fn verify(
    ca: &CertificateDer<'static>,
    server: &CertificateDer<'_>,
    name: &str,
) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    verifier
        .verify_server_cert(server, &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn cert_writes_a_ca_and_a_server_certificate_signed_by_it() {
    let dir = TempDir::new("cert");
    let out = dir.0.join("made/here");
    let out_str = out.to_str().unwrap();
    let made = cert(&[
        "--out",
        out_str,
        "--name",
        "localhost",
        "--name",
        "game.example",
        "--name",
        "127.0.0.1",
        "--name",
        "::1",
        "--name",
        "localhost",
    ]);
    assert_eq!(made.status.code(), Some(0), "{}", text(&made.stderr));
    let said = text(&made.stdout);
    assert!(said.contains("valid for 365 days"), "{said}");
    assert!(
        said.contains(&format!(
            "\n  cluecast run --tls-cert {out_str}/server.pem --tls-key {out_str}/server-key.pem\n"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "\n  cluecast sub --tls-ca {out_str}/ca.pem --server localhost:7400 TOPIC\n"
        )),
        "{said}"
    );
    assert!(said.contains("The CA's private key was not kept"), "{said}");

    assert_eq!(mode(&out.join("server-key.pem")), 0o600);
    for public in ["ca.pem", "server.pem"] {
        let mode = mode(&out.join(public));
        assert!(
            mode & 0o444 == 0o444 && mode & 0o022 == 0,
            "{public}: {mode:o}"
        );
    }
    assert!(!out.join("ca-key.pem").exists(), "the CA's key is not kept");

    let ca = der(&out.join("ca.pem"));
    let server = der(&out.join("server.pem"));
    assert!(is_ca(&ca), "ca.pem is a CA");
    assert!(extension(&ca, BASIC_CONSTRAINTS).is_some_and(|(critical, _)| critical));
    assert!(key_usage(&ca, 5), "ca.pem may sign certificates");
    assert!(!is_ca(&server), "server.pem is an end entity (CA:FALSE)");
    assert!(key_usage(&server, 0) && !key_usage(&server, 5));
    let (_, eku) = extension(&server, EXT_KEY_USAGE).expect("extendedKeyUsage");
    let (_, purposes, _) = tlv(eku);
    assert_eq!(elements(purposes), vec![(0x06, SERVER_AUTH)]);
    assert_eq!(
        alt_names(&server),
        ["localhost", "game.example", "127.0.0.1", "::1"],
        "each name once, in order"
    );

    // The chain: rustls accepts server.pem under ca.pem for every name it
    // has, and for no other.
    for name in ["localhost", "game.example", "127.0.0.1", "::1"] {
        verify(&ca, &server, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(matches!(
        verify(&ca, &server, "other.example"),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForNameContext { .. }
        ))
    ));
    // Signed by this CA, not another's.
    let other = dir.0.join("other");
    assert!(cert(&["--out", other.to_str().unwrap()]).status.success());
    assert!(verify(&der(&other.join("ca.pem")), &server, "localhost").is_err());

    // A second opinion where openssl is installed.
    match Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(out.join("ca.pem"))
        .arg(out.join("server.pem"))
        .output()
    {
        Ok(checked) => assert!(
            checked.status.success() && text(&checked.stdout).contains(": OK"),
            "{}{}",
            text(&checked.stdout),
            text(&checked.stderr)
        ),
        Err(e) => eprintln!("openssl not run ({e}): skipping its `openssl verify` of the chain"),
    }
}

#[test]
fn cert_refuses_to_overwrite_unless_forced_and_keeps_the_ca_key_only_when_asked() {
    let dir = TempDir::new("cert-force");
    let out = dir.path_str();
    assert!(cert(&["--out", out]).status.success());
    let read = |name: &str| std::fs::read(dir.0.join(name)).unwrap();
    let before = (read("ca.pem"), read("server.pem"), read("server-key.pem"));

    let again = cert(&["--out", out]);
    assert_eq!(again.status.code(), Some(2));
    let err = text(&again.stderr);
    assert!(
        err.contains("already there") && err.contains("--force") && err.contains("ca.pem"),
        "{err}"
    );
    assert_eq!(
        (read("ca.pem"), read("server.pem"), read("server-key.pem")),
        before,
        "nothing was touched"
    );

    // A key made readable by others since is replaced by one that is not.
    let key = dir.0.join("server-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let forced = cert(&["--out", out, "--force", "--keep-ca-key"]);
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    assert_ne!(read("ca.pem"), before.0);
    assert_ne!(read("server-key.pem"), before.2);
    assert_eq!(mode(&key), 0o600);
    let ca_key = dir.0.join("ca-key.pem");
    assert_eq!(mode(&ca_key), 0o600);
    assert!(text(&forced.stdout).contains("ca-key.pem"));
    // It is the key of this ca.pem: its public half is the certificate's.
    let kept = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&ca_key).unwrap()).unwrap();
    let ca = der(&dir.0.join("ca.pem"));
    assert_eq!(kept.public_key_der(), subject_public_key_info(&ca));

    // Forced again without --keep-ca-key: the old CA's key goes too.
    let forced = cert(&["--out", out, "--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    assert!(
        !ca_key.exists(),
        "a CA key that no longer matches is removed"
    );
}

#[test]
fn bad_names_and_places_are_refused_with_status_2() {
    let dir = TempDir::new("cert-bad");
    let out = dir.0.join("certs");
    for bad in [
        "bad name",
        "a..b",
        "host.example.",
        "*.example.com",
        "1.2.3",
        "",
    ] {
        let refused = cert(&["--out", out.to_str().unwrap(), "--name", bad]);
        assert_eq!(refused.status.code(), Some(2), "{bad:?}");
        let err = text(&refused.stderr);
        assert!(
            err.contains("neither an IP address nor a DNS name"),
            "{bad:?}: {err}"
        );
        assert!(!out.exists(), "nothing written for {bad:?}");
    }

    // A directory under a file cannot be made (root included).
    let file = dir.0.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let under_file = file.join("certs");
    let refused = cert(&["--out", under_file.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    let err = text(&refused.stderr);
    assert!(err.contains("cannot create it"), "{err}");

    // Something in the way that --force cannot remove.
    std::fs::create_dir_all(out.join("server.pem")).unwrap();
    let refused = cert(&["--out", out.to_str().unwrap(), "--force"]);
    assert_eq!(refused.status.code(), Some(2));
    let err = text(&refused.stderr);
    assert!(err.contains("server.pem: cannot remove it"), "{err}");
}

#[test]
fn the_appliance_serves_a_made_certificate_to_clients_trusting_its_ca() {
    let dir = TempDir::new("cert-serve");
    let out = dir.path_str();
    assert!(cert(&["--out", out]).status.success());
    let file = |name: &str| format!("{out}/{name}");
    let server = Server::start(&[
        "--tls-cert",
        &file("server.pem"),
        "--tls-key",
        &file("server-key.pem"),
        "--durability",
        "memory",
    ]);
    let port = server.addr.port();
    let client = |host: &str, args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args([
                "--server",
                &format!("{host}:{port}"),
                "--tls-ca",
                &file("ca.pem"),
            ])
            .output()
            .unwrap()
    };
    for (seq, (host, clue)) in [("localhost", "first clue"), ("127.0.0.1", "second clue")]
        .iter()
        .enumerate()
    {
        let out = client(host, &["pub", "hunt-cert", clue]);
        assert!(out.status.success(), "{host}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), (seq + 1).to_string());
    }
    let out = client(
        "localhost",
        &["sub", "hunt-cert", "--from", "1", "--count", "2"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\tfirst clue\n2\tsecond clue\n");
}
