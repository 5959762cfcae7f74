//! When to try connecting again, for the first connection and for every
//! reconnect alike: a GOAWAY (one that ended the connection, or ServerFull
//! or Shutdown instead of WELCOME) is waited out for its `retry_after_ms`;
//! any other failure that retrying can fix (refused, reset, closed before
//! WELCOME or during the TLS handshake, timed out) gets exponential backoff
//! with full jitter (protocol section 12).
//!
//! The first connection is retried only until a deadline
//! (`ClientConfig::connect_retry_ms`), so a one-shot caller learns of a
//! server that stays away. Nothing here prints: each wait is told to the
//! caller's observer, which decides what to show.

use crate::client::{ClientConfig, ClientError, OwnedGoAway, Rng};
use std::time::{Duration, Instant};

/// One wait between two connection attempts of
/// [`Client::connect_observed`](crate::client::Client::connect_observed).
#[derive(Debug)]
pub struct ConnectRetry<'a> {
    /// The attempt made after the wait: 2 for the first retry.
    pub attempt: u32,
    /// Why the attempt before it failed.
    pub error: &'a ClientError,
    /// How long the client waits: the GOAWAY's `retry_after_ms`, else the
    /// jittered backoff.
    pub delay: Duration,
}

/// Runs `attempt` (given the address to connect to) until it succeeds, fails
/// for good, or no further attempt can start within `connect_retry_ms`.
///
/// A wait that would end past the deadline is cut to it, and then the client
/// gives up without another attempt: a GOAWAY asked for none before its
/// `retry_after_ms`, and a jittered wait may as well be the last. The
/// returned [`ClientError::GaveUp`] names the last failure. An attempt's own
/// connect timeout is not cut: one started just before the deadline may end
/// up to `connect_timeout_ms` after it.
pub(crate) fn connect_with_retry<T>(
    config: &ClientConfig,
    rng: &mut Rng,
    on_retry: &mut dyn FnMut(&ConnectRetry<'_>),
    mut attempt: impl FnMut(&str) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let started = Instant::now();
    // None: so far ahead that the clock cannot say it (no deadline, in effect).
    let deadline = started.checked_add(Duration::from_millis(config.connect_retry_ms));
    let mut redirect: Option<String> = None;
    let mut attempts = 0u32;
    loop {
        let result = attempt(redirect.as_deref().unwrap_or(&config.server));
        attempts = attempts.saturating_add(1);
        let error = match result {
            Ok(connected) => return Ok(connected),
            Err(e) if e.is_fatal() || config.connect_retry_ms == 0 => return Err(e),
            Err(e) => e,
        };
        let goaway = match &error {
            ClientError::GoAway(g) => Some(g),
            _ => None,
        };
        let delay = retry_delay(config, rng, attempts, goaway);
        let now = Instant::now();
        if let Some(deadline) = deadline.filter(|&d| now + delay > d) {
            std::thread::sleep(deadline.saturating_duration_since(now));
            return Err(ClientError::GaveUp {
                attempts,
                elapsed_ms: started.elapsed().as_millis() as u64,
                last: Box::new(error),
            });
        }
        on_retry(&ConnectRetry {
            attempt: attempts.saturating_add(1),
            error: &error,
            delay,
        });
        // GOAWAY's address is tried once; after that, the configured one.
        redirect = goaway.and_then(redirect_of);
        std::thread::sleep(delay);
    }
}

/// Delay before the next attempt: GOAWAY's `retry_after_ms` when given
/// (the server already jittered it), else exponential backoff with full
/// jitter: uniform in `0..=min(max, min * 2^failures)`, which spreads a
/// crowd of phones reconnecting at once.
pub(crate) fn retry_delay(
    config: &ClientConfig,
    rng: &mut Rng,
    failures: u32,
    goaway: Option<&OwnedGoAway>,
) -> Duration {
    if let Some(g) = goaway {
        return Duration::from_millis(u64::from(g.retry_after_ms));
    }
    let window = config
        .backoff_min_ms
        .saturating_mul(1 << failures.min(63))
        .min(config.backoff_max_ms);
    Duration::from_millis(rng.below_inclusive(window))
}

/// GOAWAY's reconnect address, if it gave one.
pub(crate) fn redirect_of(g: &OwnedGoAway) -> Option<String> {
    (!g.reconnect.is_empty()).then(|| g.reconnect.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GoAwayReason;
    use std::collections::BTreeSet;

    #[test]
    fn backoff_stays_in_window() {
        let mut config = ClientConfig::new("127.0.0.1:1");
        config.backoff_min_ms = 100;
        config.backoff_max_ms = 5_000;
        let mut rng = Rng::seeded();
        for failures in [0u32, 1, 3, 6, 10, 63, 64, 1000] {
            let window = (100u64 << failures.min(20)).min(5_000);
            for _ in 0..200 {
                let d = retry_delay(&config, &mut rng, failures, None);
                assert!(d <= Duration::from_millis(window), "{failures}: {d:?}");
            }
        }
        // Full jitter actually spreads: not everything at the top of the window.
        let spread: BTreeSet<_> = (0..50)
            .map(|_| retry_delay(&config, &mut rng, 10, None))
            .collect();
        assert!(spread.len() > 10);
        let g = OwnedGoAway {
            reason: GoAwayReason::ServerFull,
            retry_after_ms: 1234,
            reconnect: String::new(),
            resume: Vec::new(),
        };
        let d = retry_delay(&config, &mut rng, 0, Some(&g));
        assert_eq!(d, Duration::from_millis(1234));
    }

    fn goaway(retry_after_ms: u32, reconnect: &str) -> ClientError {
        ClientError::GoAway(OwnedGoAway {
            reason: GoAwayReason::ServerFull,
            retry_after_ms,
            reconnect: reconnect.into(),
            resume: Vec::new(),
        })
    }

    /// What one run gave: its result, the addresses tried, the waits told.
    type Run = (Result<(), ClientError>, Vec<String>, Vec<(u32, Duration)>);

    /// Runs `connect_with_retry` over `outcomes` (one per attempt, then
    /// `Closed`).
    fn run(config: &ClientConfig, outcomes: Vec<Result<(), ClientError>>) -> Run {
        let mut outcomes = outcomes.into_iter();
        let mut tried = Vec::new();
        let mut told = Vec::new();
        let result = connect_with_retry(
            config,
            &mut Rng::seeded(),
            &mut |r| told.push((r.attempt, r.delay)),
            |addr| {
                tried.push(addr.to_string());
                outcomes.next().unwrap_or(Err(ClientError::Closed))
            },
        );
        (result, tried, told)
    }

    #[test]
    fn fatal_errors_and_a_zero_deadline_end_at_once() {
        let mut config = ClientConfig::new("a:1");
        let refused = || {
            Err(ClientError::Server {
                code: crate::ErrorCode::NotAuthorized as u16,
                message: String::new(),
            })
        };
        let (result, tried, told) = run(&config, vec![refused()]);
        assert!(matches!(result, Err(ClientError::Server { code: 12, .. })));
        assert_eq!((tried.len(), told.len()), (1, 0));
        config.connect_retry_ms = 0;
        let (result, tried, _) = run(&config, vec![Err(goaway(1, ""))]);
        assert!(matches!(result, Err(ClientError::GoAway(_))), "{result:?}");
        assert_eq!(tried.len(), 1);
    }

    #[test]
    fn a_redirect_is_tried_once_and_each_wait_is_told() {
        let mut config = ClientConfig::new("a:1");
        config.backoff_min_ms = 1;
        config.backoff_max_ms = 2;
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let outcomes = vec![
            Err(goaway(7, "b:2")),
            Err(ClientError::Closed),
            Err(goaway(3, "")),
            Err(ClientError::Io(reset)),
            Err(ClientError::Timeout("WELCOME")),
            Ok(()),
        ];
        let (result, tried, told) = run(&config, outcomes);
        assert!(result.is_ok());
        assert_eq!(tried, ["a:1", "b:2", "a:1", "a:1", "a:1", "a:1"]);
        let attempts: Vec<u32> = told.iter().map(|(attempt, _)| *attempt).collect();
        assert_eq!(attempts, [2, 3, 4, 5, 6]);
        assert_eq!(told[0].1, Duration::from_millis(7));
        assert_eq!(told[2].1, Duration::from_millis(3));
        // The others: jittered backoff, capped at backoff_max_ms.
        for (_, delay) in [told[1], told[3], told[4]] {
            assert!(delay <= Duration::from_millis(2));
        }
    }

    #[test]
    fn no_attempt_starts_past_the_deadline() {
        let mut config = ClientConfig::new("a:1");
        config.connect_retry_ms = 50;
        let started = Instant::now();
        // 20 ms waits: attempts at 0, 20, 40; the next would be at 60.
        let (result, tried, told) = run(&config, (0..10).map(|_| Err(goaway(20, ""))).collect());
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(50), "{elapsed:?}");
        assert_eq!(tried.len(), told.len() + 1);
        assert!((2..=3).contains(&tried.len()), "{tried:?}");
        match result {
            Err(ClientError::GaveUp { attempts, last, .. }) => {
                assert_eq!(attempts as usize, tried.len());
                assert!(matches!(*last, ClientError::GoAway(_)));
            }
            other => panic!("{other:?}"),
        }
    }
}
