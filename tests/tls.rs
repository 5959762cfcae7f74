//! TLS with real processes: a certificate made for the test, clients that
//! verify it, events fanned out to many TLS subscribers in order, and a
//! client that does not speak TLS cut off.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use cluecast_proto::{decode, Frame, Hello, Limits, Publish, StartMode, Subscribe};
use common::{Server, TempDir};
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

/// A client speaking the protocol over TLS, trusting only `root`.
struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    fn open(addr: SocketAddr, root: &CertificateDer<'static>) -> TlsClient {
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
        let mut client = TlsClient {
            stream: StreamOwned::new(session, tcp),
            buf: Vec::new(),
        };
        client.send(&Frame::Hello(Hello {
            version_min: 1,
            version_max: 1,
            client_id: b"tls-test",
            token: b"",
        }));
        client.recv(|f| assert!(matches!(f, Frame::Welcome(_)), "{f:?}"));
        client
    }

    fn send(&mut self, frame: &Frame<'_>) {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        self.stream.write_all(&bytes).unwrap();
        self.stream.flush().unwrap();
    }

    fn recv<T>(&mut self, f: impl FnOnce(Frame<'_>) -> T) -> T {
        loop {
            if let Some((frame, used)) = decode(&self.buf, &Limits::DEFAULT).unwrap() {
                let out = f(frame);
                self.buf.drain(..used);
                return out;
            }
            let mut chunk = [0u8; 16 << 10];
            let n = self.stream.read(&mut chunk).expect("read over TLS");
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[test]
fn tls_subscribers_get_every_event_and_plain_tcp_is_cut_off() {
    let dir = TempDir::new("tls");
    let (cert, key, root) = certificate(&dir);
    let server = Server::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--shards",
        "2",
        "--durability",
        "memory",
    ]);
    let told = |l: &String| l.contains("serving TLS 1.3");
    assert!(
        server.startup_log.iter().any(told),
        "{:?}",
        server.startup_log
    );

    let mut subscribers: Vec<TlsClient> = (0..40)
        .map(|_| {
            let mut c = TlsClient::open(server.addr, &root);
            c.send(&Frame::Subscribe(Subscribe {
                mode: StartMode::Live,
                epoch: 0,
                last_seq: 0,
                topic: b"hunt-tls",
            }));
            c.recv(|f| assert!(matches!(f, Frame::Subscribed(_)), "{f:?}"));
            c
        })
        .collect();
    let mut publisher = TlsClient::open(server.addr, &root);
    let payload = vec![b'c'; 300];
    for request_id in 1..=200u32 {
        publisher.send(&Frame::Publish(Publish {
            request_id,
            topic: b"hunt-tls",
            payload: &payload,
        }));
    }
    for request_id in 1..=200u32 {
        publisher.recv(|f| match f {
            Frame::PublishAck(a) => assert_eq!((a.request_id, a.status), (request_id, 0)),
            other => panic!("{other:?}"),
        });
    }
    for s in &mut subscribers {
        for seq in 1..=200u64 {
            s.recv(|f| match f {
                Frame::Event(e) => assert_eq!((e.seq, e.payload.len()), (seq, 300)),
                other => panic!("{other:?}"),
            });
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
    assert!(err.contains("certificate"), "{err}");
}
