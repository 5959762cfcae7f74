//! Signals: SIGTERM and SIGINT blocked in every thread and taken by one
//! waiter, SIGPIPE ignored.

use std::io;
use std::mem;

fn shutdown_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread (and every thread it
/// spawns afterwards) so they are taken only by `wait_shutdown_signal`, and
/// ignores SIGPIPE so a peer that vanished shows up as EPIPE, not death.
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_sigset();
    // SAFETY: set is initialised; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(())
}

/// Waits up to `timeout_ms` for SIGTERM or SIGINT; returns the signal taken.
pub fn wait_shutdown_signal(timeout_ms: u64) -> io::Result<Option<i32>> {
    let set = shutdown_sigset();
    let timeout = libc::timespec {
        tv_sec: (timeout_ms / 1000) as libc::time_t,
        tv_nsec: ((timeout_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: set and timeout are initialised; siginfo is not wanted.
    let ret = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
    if ret >= 0 {
        return Ok(Some(ret));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
        _ => Err(err),
    }
}
