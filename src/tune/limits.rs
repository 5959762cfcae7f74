//! What the kernel lets the appliance's process do: open files (one per
//! connection), locked memory (io_uring pins the arena), and io_uring
//! itself. Limits are read from /proc/self: those of the process running
//! `tune`, which a `cluecast run` started the same way inherits; under
//! systemd the unit sets its own (LimitNOFILE=, LimitMEMLOCK=).

use super::host::Host;
use super::{Area, Finding, Step, Target};

/// The open-file limit wanted when --connections-max leaves capacity to the
/// limit (the systemd unit's LimitNOFILE).
pub const NOFILE_TARGET: u64 = 1 << 20;
/// CAP_IPC_LOCK's bit in CapEff: with it io_uring charges no locked memory.
const CAP_IPC_LOCK: u32 = 14;

/// Soft and hard value of one line of /proc/self/limits.
fn limit(limits: &str, name: &str) -> Result<(u64, u64), String> {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .ok_or_else(|| format!("/proc/self/limits has no {name:?} line"))?;
    let value = |v: Option<&str>| match v {
        Some("unlimited") => Ok(u64::MAX),
        Some(v) => v
            .parse()
            .map_err(|_| format!("/proc/self/limits: {name}: {v:?}")),
        None => Err(format!("/proc/self/limits: {name} has no values")),
    };
    let mut fields = line[name.len()..].split_whitespace();
    Ok((value(fields.next())?, value(fields.next())?))
}

fn show(value: u64) -> String {
    match value {
        u64::MAX => "unlimited".to_string(),
        v => v.to_string(),
    }
}

pub fn check_limits(
    host: &Host,
    target: &Target,
    notes: &mut Vec<String>,
) -> Result<Vec<Finding>, String> {
    let settings = &target.settings;
    let limits = host.read("/proc/self/limits")?;
    let mut findings = Vec::new();

    let (nofile_soft, nofile_hard) = limit(&limits, "Max open files")?;
    let (nofile, reason) = match settings.connections_max {
        0 => (
            NOFILE_TARGET,
            format!(
                "each shard holds (limit - 64) / shards connections, less those kept for \
                 refusing: {NOFILE_TARGET} gives each of {} shard(s) {}",
                settings.shards,
                crate::sizing::connection_capacity(NOFILE_TARGET, settings.shards)
            ),
        ),
        wanted => (
            crate::sizing::nofile_needed(wanted, settings.shards),
            format!(
                "--connections-max {wanted} on each of {} shard(s)",
                settings.shards
            ),
        ),
    };
    // cluecast raises its soft limit to the hard one itself.
    if nofile_hard < nofile {
        findings.push(
            Finding::new(
                Area::Limits,
                "open files (RLIMIT_NOFILE)".into(),
                format!("soft {}, hard {}", show(nofile_soft), show(nofile_hard)),
                format!("hard at least {nofile}"),
                format!("one file per connection: {reason}"),
            )
            .fix(vec![Step::Manual {
                command: format!(
                    "ulimit -Hn {nofile} (as root, in the shell that starts cluecast; under \
                     systemd: LimitNOFILE={nofile} in the unit)"
                ),
            }]),
        );
    }

    let status = host.read("/proc/self/status")?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| "/proc/self/status has no CapEff line".to_string())?;
    let memlock_needed = target.memory.memlock_bytes as u64;
    if cap_eff & (1 << CAP_IPC_LOCK) != 0 {
        notes.push(
            "CAP_IPC_LOCK: io_uring charges no locked memory, memlock does not matter".into(),
        );
    } else {
        let (soft, hard) = limit(&limits, "Max locked memory")?;
        if soft < memlock_needed {
            findings.push(
                Finding::new(
                    Area::Limits,
                    "locked memory (RLIMIT_MEMLOCK)".into(),
                    format!("soft {}, hard {}", show(soft), show(hard)),
                    format!("at least {memlock_needed} bytes"),
                    format!(
                        "io_uring pins the registered frame arenas ({} x {} MiB) and the \
                         rings, charged to the locked-memory limit without CAP_IPC_LOCK",
                        target.settings.shards,
                        target.settings.arena_bytes >> 20
                    ),
                )
                .fix(vec![Step::Manual {
                    command: "ulimit -l unlimited (as root, in the shell that starts cluecast; \
                              under systemd: LimitMEMLOCK=infinity in the unit)"
                        .into(),
                }]),
            );
        }
    }
    Ok(findings)
}

/// Only the live host can be probed; the sysctl that switches io_uring off
/// is checked with the other sysctls.
pub fn check_io_uring(host: &Host, notes: &mut Vec<String>) -> Vec<Finding> {
    if !host.is_live() {
        notes.push(format!(
            "io_uring not probed: {} is not this host (kernel.io_uring_disabled is checked \
             under sysctl)",
            host.root().display()
        ));
        return Vec::new();
    }
    match crate::ring::uring::probe() {
        Ok(()) => {
            notes.push("io_uring: a ring with the engine's flags and opcodes works".into());
            Vec::new()
        }
        Err(e) => vec![Finding::new(
            Area::IoUring,
            "io_uring".into(),
            e.to_string(),
            "a ring with SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN and the engine's opcodes"
                .into(),
            "every shard's event loop is an io_uring".into(),
        )
        .fix(vec![Step::Manual {
            command: "see the error above: it names the fix".into(),
        }])],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_lines_are_read_with_unlimited() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max open files            1024                 524288               files\n\
                    Max locked memory         unlimited            unlimited            bytes\n";
        assert_eq!(limit(text, "Max open files").unwrap(), (1024, 524288));
        assert_eq!(
            limit(text, "Max locked memory").unwrap(),
            (u64::MAX, u64::MAX)
        );
        assert!(limit(text, "Max processes")
            .unwrap_err()
            .contains("no \"Max processes\""));
    }
}
