//! Steering within a SO_REUSEPORT group: each new connection goes to the
//! listener of the shard whose CPU processed its first packet (the CPU
//! serving the NIC queue it arrived on), either by SO_INCOMING_CPU on each
//! listener or by a classic BPF program on the group. Both fall back to the
//! kernel's hash of the addresses for a CPU no listener serves.

use std::io;
use std::os::fd::RawFd;

/// Not in the libc crate for every target.
const SO_INCOMING_CPU: libc::c_int = 49;
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
/// The kernel's limit on a classic BPF program (BPF_MAXINSNS).
const PROGRAM_INSTRUCTIONS_MAX: usize = 4096;

// Classic BPF opcodes the program uses (linux/filter.h).
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// Loading from this offset yields the CPU running the program.
const CPU_OFFSET: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32;
/// An index past every group: the kernel falls back to its hash.
pub const NO_LISTENER: u32 = u32::MAX;

/// Makes `fd` the listener its reuseport group prefers for connections
/// whose first packet is processed on `cpu` (honoured since Linux 6.1).
pub fn set_incoming_cpu(fd: RawFd, cpu: usize) -> io::Result<()> {
    let cpu = i32::try_from(cpu)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("cpu {cpu}")))?;
    crate::set_int_option(fd, libc::SOL_SOCKET, SO_INCOMING_CPU, cpu)
        .map_err(|e| io::Error::new(e.kind(), format!("SO_INCOMING_CPU {cpu}: {e}")))
}

/// The program a reuseport group runs to pick a listener: for a packet
/// processed on `cpus[i]`, listener `i` (listeners are numbered in the
/// order they joined the group, by listen()); for any other CPU,
/// `NO_LISTENER`.
pub fn cpu_steering_program(cpus: &[usize]) -> io::Result<Vec<libc::sock_filter>> {
    let instructions = 2 + 2 * cpus.len();
    if cpus.is_empty() || instructions > PROGRAM_INSTRUCTIONS_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a steering program serves 1..={} listeners, not {}",
                (PROGRAM_INSTRUCTIONS_MAX - 2) / 2,
                cpus.len()
            ),
        ));
    }
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut program = Vec::with_capacity(instructions);
    program.push(op(LD_W_ABS, 0, 0, CPU_OFFSET));
    for (listener, &cpu) in cpus.iter().enumerate() {
        let cpu = u32::try_from(cpu)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("cpu {cpu}")))?;
        // This CPU? Return its listener; else skip to the next comparison.
        program.push(op(JEQ_K, 0, 1, cpu));
        program.push(op(RET_K, 0, 0, listener as u32));
    }
    program.push(op(RET_K, 0, 0, NO_LISTENER));
    Ok(program)
}

/// Attaches `program` to the reuseport group `fd` listens in.
pub fn attach_reuseport_program(fd: RawFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "program too long"))?,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: setsockopt reads one sock_fprog and copies the program it
    // points at before returning.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            &fprog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    crate::check(ret, "SO_ATTACH_REUSEPORT_CBPF").map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// Runs a steering program the way the kernel would for a packet
    /// processed on `cpu`; only the three instructions it may contain.
    fn run(program: &[libc::sock_filter], cpu: u32) -> u32 {
        let (mut pc, mut a) = (0, 0u32);
        loop {
            let insn = program[pc];
            pc += 1;
            match insn.code {
                LD_W_ABS => {
                    assert_eq!(insn.k, CPU_OFFSET, "loads nothing but the CPU");
                    a = cpu;
                }
                JEQ_K => pc += if a == insn.k { insn.jt } else { insn.jf } as usize,
                RET_K => return insn.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_program_maps_each_cpu_to_its_listener_and_others_to_the_hash() {
        let program = cpu_steering_program(&[2, 0, 5]).unwrap();
        // ld [SKF_AD_OFF + SKF_AD_CPU]; three (jeq, ret) pairs; ret NO_LISTENER.
        assert_eq!(program.len(), 8);
        assert_eq!((program[0].code, program[0].k), (0x20, 0xffff_f024));
        assert_eq!(
            (program[1].code, program[1].jt, program[1].jf, program[1].k),
            (0x15, 0, 1, 2)
        );
        assert_eq!((program[2].code, program[2].k), (0x06, 0));
        assert_eq!((program[7].code, program[7].k), (0x06, u32::MAX));
        assert_eq!(run(&program, 2), 0);
        assert_eq!(run(&program, 0), 1);
        assert_eq!(run(&program, 5), 2);
        for unserved in [1, 3, 4, 6, 1000] {
            assert_eq!(run(&program, unserved), NO_LISTENER, "cpu {unserved}");
        }
        assert!(cpu_steering_program(&[]).is_err());
        assert!(cpu_steering_program(&vec![0; 2048]).is_err());
        assert_eq!(cpu_steering_program(&vec![0; 2047]).unwrap().len(), 4096);
    }

    #[test]
    fn the_program_attaches_to_a_reuseport_group_and_is_refused_elsewhere() {
        let cpus = crate::allowed_cpus().unwrap();
        let listener = crate::listen_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let program = cpu_steering_program(&cpus).unwrap();
        attach_reuseport_program(listener.as_raw_fd(), &program).unwrap();
        set_incoming_cpu(listener.as_raw_fd(), cpus[0]).unwrap();
        let incoming =
            crate::get_int_option(listener.as_raw_fd(), libc::SOL_SOCKET, SO_INCOMING_CPU);
        assert_eq!(incoming.unwrap(), cpus[0] as i32);

        // A socket without SO_REUSEPORT has no group to steer: EINVAL.
        // SAFETY: socket() makes a new descriptor, owned from here on.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: as above.
        let plain = unsafe { OwnedFd::from_raw_fd(raw) };
        let err = attach_reuseport_program(plain.as_raw_fd(), &program).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert!(
            err.to_string().contains("SO_ATTACH_REUSEPORT_CBPF"),
            "{err}"
        );
    }
}
