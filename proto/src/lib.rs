//! cluecast protocol v1: frame types, the codec, and a reference client.
//!
//! This crate has no heavy dependencies on purpose: game backends, load
//! generators and tests link it without building the appliance.

pub mod client;
pub mod codec;
pub mod event_head;
pub mod frame;
pub mod frame_conn;
mod retry;
mod tls_error;

pub use codec::{decode, valid_topic, DecodeError, Limits};
pub use event_head::{event_publish_ts_ns, EventHead};
pub use frame::*;
pub use frame_conn::{read_into, Filled, FrameConn};
