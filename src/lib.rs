//! cluecast: a real-time event appliance. Publishers' events are sequenced
//! per topic, stored in a durable log, and fanned out over long-lived TCP
//! connections by one io_uring event loop per core.
//!
//! Layout: `engine` starts and stops the shards (`heartbeat` tells it they
//! still turn), and `placement` puts their memory and connections where the
//! host serves them best; `shard` is the per-core loop; `conn`, `topics`,
//! `arena` and `timer` are the state it keeps; `ring` is the only door to
//! the kernel (with a simulated twin for tests); `storage` is the durable
//! log and its threads; `config` and `cli` face the operator, `tune` checks
//! and tunes the host for it, `cert` makes development certificates for its
//! TLS, `metrics` and `admin` tell how it is doing, and `build_info` says
//! how the binary was built.

pub mod admin;
pub mod admission;
pub mod arena;
pub mod auth;
pub mod build_info;
pub mod cert;
pub mod cli;
pub mod config;
pub mod conn;
pub mod engine;
pub mod heartbeat;
pub mod log;
pub mod metrics;
pub mod placement;
pub mod ring;
pub mod shard;
pub mod sizing;
pub mod stats;
pub mod storage;
pub mod timer;
pub mod tls;
pub mod topics;
pub mod tune;
