//! TLS with real processes: a certificate made for the test, clients that
//! verify it, events fanned out to many TLS subscribers in order, a client
//! that does not speak TLS cut off, and certificates the CLI refuses, each
//! with a message that says what is wrong and what to do.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cluecast_proto::{decode, Frame, Hello, Limits, Publish, StartMode, Subscribe};
use common::{RawClient, Server, TempDir, BIN};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A certificate for `localhost`, written as PEM files; its DER for clients.
fn certificate(dir: &TempDir) -> (String, String, CertificateDer<'static>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.0.join("cert.pem");
    let key = dir.0.join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let der = made.cert.der().clone();
    (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
        der,
    )
}

/// What a TLS client's wait for a frame fails with when the server has
/// closed the connection instead.
const CLOSED: &str = "the server closed the connection";

/// A client speaking the protocol over TLS.
type TlsClient = RawClient<StreamOwned<ClientConnection, TcpStream>>;

/// Connects over TLS, trusting only `root`, and completes the handshake.
fn open_tls(addr: SocketAddr, root: &CertificateDer<'static>) -> TlsClient {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let session = ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut client = RawClient::over(StreamOwned::new(session, tcp));
    client.send(&Frame::Hello(Hello {
        version_min: 1,
        version_max: 1,
        client_id: b"tls-test",
        token: b"",
    }));
    client
        .recv(|f| assert!(matches!(f, Frame::Welcome(_)), "{f:?}"))
        .expect(CLOSED);
    client
}

#[test]
fn tls_subscribers_get_every_event_and_plain_tcp_is_cut_off() {
    let dir = TempDir::new("tls");
    let (cert, key, root) = certificate(&dir);
    let server = serve(&cert, &key, &["--shards", "2"]);
    let told = |l: &String| l.contains("serving TLS 1.3");
    assert!(
        server.startup_log.iter().any(told),
        "{:?}",
        server.startup_log
    );

    let mut subscribers: Vec<TlsClient> = (0..40)
        .map(|_| {
            let mut c = open_tls(server.addr, &root);
            c.send(&Frame::Subscribe(Subscribe {
                mode: StartMode::Live,
                epoch: 0,
                last_seq: 0,
                topic: b"hunt-tls",
            }));
            c.recv(|f| assert!(matches!(f, Frame::Subscribed(_)), "{f:?}"))
                .expect(CLOSED);
            c
        })
        .collect();
    let mut publisher = open_tls(server.addr, &root);
    let payload = vec![b'c'; 300];
    for request_id in 1..=200u32 {
        publisher.send(&Frame::Publish(Publish {
            request_id,
            topic: b"hunt-tls",
            payload: &payload,
        }));
    }
    for request_id in 1..=200u32 {
        publisher
            .recv(|f| match f {
                Frame::PublishAck(a) => assert_eq!((a.request_id, a.status), (request_id, 0)),
                other => panic!("{other:?}"),
            })
            .expect(CLOSED);
    }
    for s in &mut subscribers {
        for seq in 1..=200u64 {
            s.recv(|f| match f {
                Frame::Event(e) => assert_eq!((e.seq, e.payload.len()), (seq, 300)),
                other => panic!("{other:?}"),
            })
            .expect(CLOSED);
        }
    }

    // A client that does not speak TLS: its HELLO is no TLS record, so the
    // connection ends without a word in the clear.
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut hello = Vec::new();
    Frame::Hello(Hello {
        version_min: 1,
        version_max: 1,
        client_id: b"plain",
        token: b"",
    })
    .encode(&mut hello);
    plain.write_all(&hello).unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        decode(&answer, &Limits::DEFAULT).map_or(true, |f| f.is_none()),
        "no protocol frame in the clear: {answer:?}"
    );
}

#[test]
fn a_half_configured_tls_is_refused() {
    let dir = TempDir::new("tls-half");
    let (cert, _, _) = certificate(&dir);
    let out = std::process::Command::new(common::BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--tls-cert", &cert])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-cert and --tls-key go together"),
        "{err}"
    );
}

#[test]
fn the_cli_and_the_reference_client_speak_tls_and_check_the_name() {
    let dir = TempDir::new("tls-cli");
    let (cert, key, _) = certificate(&dir);
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let by_name = format!("localhost:{}", server.addr.port());
    let cli = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(args)
            .args(["--server", &by_name, "--tls-ca", &cert])
            .output()
            .unwrap()
    };
    for (n, clue) in ["first clue", "second clue"].iter().enumerate() {
        let out = cli(&["pub", "hunt-cli", clue]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            (n + 1).to_string()
        );
    }
    let out = cli(&["sub", "hunt-cli", "--from", "1", "--count", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\tfirst clue\n2\tsecond clue\n"
    );
    // The certificate names localhost, not 127.0.0.1: refused.
    let out = std::process::Command::new(common::BIN)
        .args(["pub", "hunt-cli", "x", "--server", &server.addr.to_string()])
        .args(["--tls-ca", &cert])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("certificate is not valid for 127.0.0.1")
            && err.contains("it is for localhost"),
        "{err}"
    );
}

#[test]
fn a_server_that_never_answers_the_handshake_times_out_the_connect() {
    let dir = TempDir::new("tls-silent");
    let (cert, _, _) = certificate(&dir);
    // Accepts, reads nothing, says nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::thread::spawn(move || listener.accept().map(|(socket, _)| socket));
    let mut config =
        cluecast_proto::client::ClientConfig::new(format!("localhost:{}", addr.port()));
    config.tls = Some(cluecast_proto::client::tls_trusting(std::path::Path::new(&cert)).unwrap());
    config.connect_timeout_ms = 300;
    config.connect_retry_ms = 0;
    // In a thread: a connect that hangs fails this test instead of hanging it.
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let failed = cluecast_proto::client::Client::connect(config).is_err();
        let _ = done_tx.send(failed);
    });
    let failed = done.recv_timeout(Duration::from_secs(3));
    assert_eq!(failed, Ok(true), "the connect must fail within 3 s");
    drop(held.join().unwrap());
}

#[test]
fn a_tls_connection_closed_by_a_full_server_is_retried_with_backoff() {
    let dir = TempDir::new("tls-full");
    let (cert, key, root) = certificate(&dir);
    // One shard with room for one connection, held: with TLS, a newcomer is
    // closed at once, with no GOAWAY it could read.
    let server = serve(&cert, &key, &["--shards", "1", "--connections-max", "1"]);
    let holder = open_tls(server.addr, &root);
    let publish = Command::new(BIN)
        .args([
            "pub",
            "hunt-full",
            "clue",
            "--retry-for",
            "10s",
            "--tls-ca",
            &cert,
        ])
        .arg("--server")
        .arg(format!("localhost:{}", server.addr.port()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    drop(holder);
    let out = publish.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    // Backoff with full jitter: after n failures, 0 to 100 ms × 2^n (at
    // most 5 s); no retry hint, since none came.
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 2, "{err}");
    for (failures, line) in (1u32..).zip(&lines) {
        let (why, rest) = line.split_once("; retrying in ").expect(line);
        assert!(
            why.starts_with("cluecast: ") && !why.contains("GOAWAY"),
            "{line}"
        );
        let (delay_ms, attempt) = rest.split_once(" ms (attempt ").expect(line);
        assert_eq!(attempt, format!("{})", failures + 1), "{line}");
        let window_ms = (100u64 << failures.min(6)).min(5_000);
        assert!(delay_ms.parse::<u64>().unwrap() <= window_ms, "{line}");
    }
}

/// `cluecast sub` by `host` to `server`, trusting `ca`: it must be refused
/// at once; what it printed.
fn refused(server: &Server, host: &str, ca: &str) -> String {
    let out = Command::new(BIN)
        .args(["sub", "hunt-refused", "--tls-ca", ca, "--server"])
        .arg(format!("{host}:{}", server.addr.port()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        !err.contains("InvalidCertificate") && !err.contains("OtherError"),
        "in words, not rustls's enum: {err}"
    );
    err
}

/// An appliance serving TLS with `cert` and `key`, memory-only, with
/// `args` beside.
fn serve(cert: &str, key: &str, args: &[&str]) -> Server {
    let tls = [
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--durability",
        "memory",
    ];
    Server::start(&[&tls[..], args].concat())
}

#[test]
fn a_ca_certificate_served_as_the_servers_own_is_refused_in_words() {
    let dir = TempDir::new("tls-ca-leaf");
    let explained = |err: &str| {
        assert!(
            err.contains("the server presents a CA certificate (basicConstraints CA:TRUE)")
                && err.contains("`cluecast cert`"),
            "{err}"
        )
    };

    // Self-signed and CA:TRUE, as openssl makes one by default.
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let made = params.self_signed(&key).unwrap();
    let cert = dir.0.join("rcgen.pem");
    let key_file = dir.0.join("rcgen-key.pem");
    std::fs::write(&cert, made.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (cert, key_file) = (cert.to_str().unwrap(), key_file.to_str().unwrap());
    let server = serve(cert, key_file, &[]);
    explained(&refused(&server, "localhost", cert));
    drop(server);

    // The user's report, word for word, where openssl is installed.
    let openssl = Command::new("openssl")
        .current_dir(&dir.0)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .output();
    match openssl {
        Ok(out) => {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let cert = format!("{}/c.pem", dir.path_str());
            let server = serve(&cert, &format!("{}/k.pem", dir.path_str()), &[]);
            explained(&refused(&server, "localhost", &cert));
        }
        Err(e) => eprintln!(
            "openssl not run ({e}): skipping the check with openssl's own self-signed certificate"
        ),
    }
}

#[test]
fn certificates_for_another_name_from_another_ca_or_out_of_date_are_refused_in_words() {
    let dir = TempDir::new("tls-words");
    let make = |out: &str, names: &[&str]| {
        let mut command = Command::new(BIN);
        command.args(["cert", "--out", out]);
        for name in names {
            command.args(["--name", name]);
        }
        let made = command.output().unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
    };
    let game = format!("{}/game", dir.path_str());
    let other = format!("{}/other", dir.path_str());
    make(&game, &["game.example"]);
    make(&other, &[]);
    let server = serve(
        &format!("{game}/server.pem"),
        &format!("{game}/server-key.pem"),
        &[],
    );

    let err = refused(&server, "127.0.0.1", &format!("{game}/ca.pem"));
    assert!(
        err.contains("certificate is not valid for 127.0.0.1")
            && err.contains("it is for game.example")
            && err.contains("`cluecast cert --name 127.0.0.1`"),
        "{err}"
    );
    let err = refused(&server, "127.0.0.1", &format!("{other}/ca.pem"));
    assert!(err.contains("is not signed by a CA in --tls-ca"), "{err}");
    drop(server);

    // A certificate that ran out on 2021-01-01, signed by a CA of the test.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params.signed_by(&key, &ca, &ca_key).unwrap();
    let file = |name: &str, text: String| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let ca_file = file("expired-ca.pem", ca.pem());
    let server = serve(
        &file("expired.pem", expired.pem()),
        &file("expired-key.pem", key.serialize_pem()),
        &[],
    );
    let err = refused(&server, "localhost", &ca_file);
    assert!(
        err.contains("certificate expired at 2021-01-01 00:00:00 UTC")
            && err.contains("serve a renewed certificate"),
        "{err}"
    );
}
