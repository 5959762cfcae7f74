//! What checking a HELLO's token costs: verifications per second of a
//! typical phone token (one key, two subscribe patterns), median of five
//! rounds. A reconnect storm of N phones costs N of these on the shards.
//!
//! `cargo bench --bench token_verify`

use std::time::Instant;

use cluecast::auth::{Claims, Keys};

const ROUNDS: usize = 5;
const VERIFIES_PER_ROUND: u32 = 200_000;

fn main() {
    let keys = Keys::parse(&format!("k1 = \"{}\"\n", "5a".repeat(32))).expect("a valid key");
    let now_s = 1_800_000_000;
    let claims = Claims {
        sub: "phone-000123".into(),
        exp: now_s + 12 * 3600,
        nbf: Some(now_s),
        subscribe: vec!["hunt-42".into(), "hunt-42.*".into()],
        publish: vec![],
        paths: false,
    };
    let token = keys.mint(None, &claims).expect("mintable claims");
    let mut per_second: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..VERIFIES_PER_ROUND {
                let grant = keys.verify(std::hint::black_box(token.as_bytes()), now_s);
                std::hint::black_box(grant.expect("the token verifies"));
            }
            f64::from(VERIFIES_PER_ROUND) / started.elapsed().as_secs_f64()
        })
        .collect();
    per_second.sort_by(f64::total_cmp);
    let median = per_second[ROUNDS / 2];
    println!(
        "token of {} bytes: median {:.0} verifications/s on one core ({:.2} us each); \
         rounds: {:?}",
        token.len(),
        median,
        1e6 / median,
        per_second
            .iter()
            .map(|v| v.round() as u64)
            .collect::<Vec<_>>()
    );
}
