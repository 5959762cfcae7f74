//! cluecast-sys: the one place cluecast makes raw OS calls outside the ring
//! driver. Each function wraps one concern (CPU affinity, limits, sockets,
//! memory, signals, randomness) and turns failures into `io::Error`s that
//! name what failed; `memory` holds what the host offers for placing memory
//! (huge pages, NUMA nodes), `steer` the steering of new connections,
//! `notify` the service manager's notify socket, and `spsc` the channel
//! between shards.
//!
//! The plain calls live in a private module per concern (`cpu`, `limits`,
//! `socket`, `region`, `signals`, `random`, `clock`) and are used from the
//! crate root, where this file re-exports them.

use std::io;

mod clock;
mod cpu;
mod limits;
pub mod memory;
pub mod notify;
mod random;
mod region;
mod signals;
mod socket;
pub mod spsc;
pub mod steer;

pub use clock::realtime_ns;
pub use cpu::{allowed_cpus, pin_current_thread};
pub use limits::{raise_nofile_limit, Limit};
pub use random::{random_bytes, random_u64};
pub use region::{huge_pages_for, PageKind, Region, Span, HUGE_PAGE_BYTES};
pub use signals::{block_shutdown_signals, wait_shutdown_signal};
pub use socket::{
    connect_from, get_int_option, listen_reuseport, local_addr, peer_addr, set_int_option,
};

/// A negative return as the OS error, prefixed with what failed.
fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let err = io::Error::last_os_error();
        Err(io::Error::new(err.kind(), format!("{what}: {err}")))
    } else {
        Ok(ret)
    }
}
