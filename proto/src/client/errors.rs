//! [`ClientError`]: why a client call failed, in words, and which
//! failures reconnecting cannot fix.

use super::delivery::{goaway_words, OwnedGoAway};
use crate::frame::ErrorCode;
use crate::tls_error::TlsError;
use std::fmt;
use std::io;

/// Why a client call failed.
#[derive(Debug)]
pub enum ClientError {
    /// Resolving, connecting, reading or writing failed.
    Io(io::Error),
    /// The server sent something protocol v1 does not allow.
    Protocol(String),
    /// PUBLISH_ACK, TOPIC_CLOSED or PATH carried this non-zero status (an
    /// [`ErrorCode`] value), or SUBSCRIBED said NotAuthorized (then
    /// `NotAuthorized`); the connection stays usable.
    Refused(u16),
    /// The server sent ERROR with this code, then closed the connection.
    Server { code: u16, message: String },
    /// The server asked us to go away (during the handshake, or with
    /// `reconnect` off, or while a request was waiting).
    GoAway(OwnedGoAway),
    /// The server closed the connection, or the client is closed.
    Closed,
    /// Nothing arrived in time; names what was awaited.
    Timeout(&'static str),
    /// The server ended the connection because its token expired: reconnecting
    /// with it would be refused. After [`Client::set_token`](super::Client::set_token) the next call
    /// reconnects and resumes.
    TokenExpired,
    /// The call's arguments or the configuration cannot work (bad topic,
    /// payload over the server's limit, ...). Nothing was sent.
    InvalidInput(String),
    /// TLS with the server failed: most often its certificate was refused
    /// (the text says why and what to do). Only with the `tls` feature.
    Tls(TlsError),
    /// [`Client::connect`](super::Client::connect) tried `attempts` times over `elapsed_ms` (its
    /// `connect_retry_ms`) and stopped; `last` is why the last one failed.
    GaveUp {
        attempts: u32,
        elapsed_ms: u64,
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// InvalidInput when `what` is longer than `max_bytes`: checked before
    /// anything is sent, so the server never has to refuse it.
    pub(crate) fn check_length(
        what: &str,
        len: usize,
        max_bytes: impl Into<usize> + fmt::Display + Copy,
    ) -> Result<(), ClientError> {
        if len > max_bytes.into() {
            return Err(ClientError::InvalidInput(format!(
                "{what} is over {max_bytes} bytes"
            )));
        }
        Ok(())
    }

    /// Errors that reconnecting cannot fix: the client stops trying.
    pub(crate) fn is_fatal(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => matches!(
                ErrorCode::try_from(*code),
                Ok(ErrorCode::NotAuthorized | ErrorCode::UnsupportedVersion)
            ),
            ClientError::InvalidInput(_) => true,
            // A refused certificate or a server that does not speak TLS is
            // the configuration's to fix; retrying would hide it.
            ClientError::Tls(_) => true,
            _ => false,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "i/o error: {e}"),
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::TokenExpired => {
                f.write_str("the token expired; set a new one (Client::set_token) to reconnect")
            }
            ClientError::Refused(code) => write!(
                f,
                "refused by the server: {} ({code})",
                ErrorCode::name_of(*code)
            ),
            ClientError::Server { code, message } => write!(
                f,
                "server error {} ({code}): {message}",
                ErrorCode::name_of(*code)
            ),
            ClientError::GoAway(g) => write!(
                f,
                "{} (GOAWAY {:?}, retry after {} ms)",
                goaway_words(g.reason),
                g.reason,
                g.retry_after_ms
            ),
            ClientError::Closed => f.write_str("connection closed"),
            ClientError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            ClientError::InvalidInput(m) => write!(f, "invalid input: {m}"),
            ClientError::Tls(e) => write!(f, "{e}"),
            ClientError::GaveUp {
                attempts,
                elapsed_ms,
                last,
            } => write!(
                f,
                "{last}; gave up after {attempts} attempt{} over {elapsed_ms} ms",
                if *attempts == 1 { "" } else { "s" }
            ),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(e) => Some(e),
            ClientError::Tls(e) => Some(e),
            ClientError::GaveUp { last, .. } => Some(last.as_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> ClientError {
        ClientError::Io(e)
    }
}
