//! CPU affinity: the CPUs this process may run on, and pinning a thread
//! to one of them.

use std::io;
use std::mem;

use crate::check;

/// The CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        check(
            libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set),
            "sched_getaffinity",
        )?;
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: as above; the set names one CPU below CPU_SETSIZE.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpu {cpu} is beyond CPU_SETSIZE"),
            ));
        }
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        check(
            libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set),
            &format!("sched_setaffinity(cpu {cpu})"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_cpus_is_not_empty_and_pin_works() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        pin_current_thread(cpus[0]).unwrap();
        assert_eq!(allowed_cpus().unwrap(), vec![cpus[0]]);
    }
}
