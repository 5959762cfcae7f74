//! Resource limits: the open-file limit raised to its hard limit, and the
//! locked-memory limit registered io_uring buffers count against.

use std::io;

use crate::check;

/// Soft and hard limit of one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

fn get_rlimit(resource: libc::__rlimit_resource_t, name: &str) -> io::Result<Limit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    check(unsafe { libc::getrlimit(resource, &mut lim) }, name)?;
    Ok(Limit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// Raises the open-file soft limit to the hard limit and returns the result.
pub fn raise_nofile_limit() -> io::Result<Limit> {
    let lim = get_rlimit(libc::RLIMIT_NOFILE, "getrlimit(RLIMIT_NOFILE)")?;
    if lim.soft < lim.hard {
        let raised = libc::rlimit {
            rlim_cur: lim.hard,
            rlim_max: lim.hard,
        };
        // SAFETY: setrlimit reads one rlimit.
        check(
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) },
            "setrlimit(RLIMIT_NOFILE)",
        )?;
    }
    get_rlimit(libc::RLIMIT_NOFILE, "getrlimit(RLIMIT_NOFILE)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_soft_limit_reaches_hard() {
        let lim = raise_nofile_limit().unwrap();
        assert_eq!(lim.soft, lim.hard);
    }
}
