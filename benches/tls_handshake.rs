//! What a TLS handshake costs the shard that serves it: CPU time spent in
//! the appliance's own `TlsConn` (rustls, ring) per handshake, full and
//! resumed from a session ticket, with an ECDSA P-256 certificate like the
//! one `cluecast cert` makes. The client's side runs in the same thread but
//! is not timed. Median of five rounds. A ClientHello flood at
//! `--tls-handshakes-per-s` costs the shard that many full handshakes a
//! second.
//!
//! `cargo bench --bench tls_handshake`

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluecast::tls::{TlsConfig, TlsConn};
use cluecast_proto::client::tls_trusting;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

const ROUNDS: usize = 5;
const HANDSHAKES_PER_ROUND: u32 = 400;

fn main() {
    let dir = std::env::temp_dir().join(format!("cluecast-tls-handshake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()])
        .expect("a self-signed certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("writing the certificate");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("writing the key");
    let server = TlsConfig::load(&cert, &key).expect("the server's configuration");
    let client = tls_trusting(&cert).expect("the client's configuration");
    std::fs::remove_dir_all(&dir).expect("removing the temporary directory");

    let mut full = (*client).clone();
    full.resumption = rustls::client::Resumption::disabled();
    let (full, resuming) = (Arc::new(full), client);

    for (what, config) in [("full", &full), ("resumed", &resuming)] {
        // The first handshake of a resuming client is a full one that
        // leaves it a ticket.
        handshake(&server, config);
        let mut per_handshake_us: Vec<f64> = (0..ROUNDS)
            .map(|_| {
                let spent: Duration = (0..HANDSHAKES_PER_ROUND)
                    .map(|_| handshake(&server, config))
                    .sum();
                spent.as_secs_f64() * 1e6 / f64::from(HANDSHAKES_PER_ROUND)
            })
            .collect();
        per_handshake_us.sort_by(f64::total_cmp);
        let median = per_handshake_us[ROUNDS / 2];
        println!(
            "{what} handshake: median {median:.0} us of the server's CPU ({:.0} a second on one \
             core); rounds: {:?}",
            1e6 / median,
            per_handshake_us
                .iter()
                .map(|us| format!("{us:.0}"))
                .collect::<Vec<_>>()
        );
    }
}

/// One handshake through to the session ticket; the time spent in the
/// server's code.
fn handshake(server: &TlsConfig, client: &Arc<ClientConfig>) -> Duration {
    let name = ServerName::try_from("localhost").expect("a valid name");
    let mut client = ClientConnection::new(client.clone(), name).expect("a client session");
    let mut conn = TlsConn::new(server);
    let mut spent = Duration::ZERO;
    let (mut to_server, mut plain) = (Vec::new(), Vec::new());
    loop {
        to_server.clear();
        while client.wants_write() {
            client
                .write_tls(&mut to_server)
                .expect("writing into a Vec");
        }
        let started = Instant::now();
        conn.receive(&to_server, &mut plain)
            .expect("a valid handshake");
        let to_client = conn.next_output().to_vec();
        conn.sent(to_client.len());
        spent += started.elapsed();
        if to_server.is_empty() && to_client.is_empty() {
            assert!(!conn.handshaking() && !client.is_handshaking());
            return spent;
        }
        client
            .read_tls(&mut &to_client[..])
            .expect("reading from a slice");
        client.process_new_packets().expect("a valid handshake");
    }
}
