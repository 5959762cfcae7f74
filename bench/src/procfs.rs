//! CPU accounting read from /proc, and a few facts about the host.
//!
//! Two views of the server's CPU are taken because neither is complete on
//! its own: the process's utime+stime misses softirq time when the kernel
//! accounts IRQ time separately (CONFIG_IRQ_TIME_ACCOUNTING), and on
//! loopback / veth the receive half of TCP runs in softirq on the sending
//! CPU; the busy time of the server's CPU includes that, but also anything
//! else the (shared) machine ran there.

use std::fs;

/// Clock ticks per second of the times in /proc (USER_HZ).
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0 // the value on every Linux port
    }
}

/// utime + stime of a process (all its threads), in clock ticks, from the
/// text of /proc/PID/stat.
pub fn parse_process_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself contain
    // spaces and ')': the fixed fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' the first field is field 3 (state); utime and stime are
    // fields 14 and 15.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds (user + system) used so far by process `pid`.
pub fn process_cpu_secs(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let ticks = parse_process_cpu_ticks(&text).ok_or_else(|| format!("cannot parse {path}"))?;
    Ok(ticks as f64 / clock_ticks_per_sec())
}

/// CPU seconds used so far by this process.
pub fn self_cpu_secs() -> Result<f64, String> {
    process_cpu_secs(std::process::id())
}

/// Times of one CPU from /proc/stat, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// user + nice + system + irq + softirq (not idle, iowait or steal;
    /// guest time is already inside user).
    pub busy: u64,
    /// Time the hypervisor ran something else on this virtual CPU.
    pub steal: u64,
}

/// The times of CPU `cpu` from the text of /proc/stat.
pub fn parse_cpu_ticks(stat: &str, cpu: usize) -> Option<CpuTicks> {
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    // user nice system idle iowait irq softirq steal ...
    let (user, nice, system) = (*v.first()?, *v.get(1)?, *v.get(2)?);
    let (irq, softirq) = (*v.get(5)?, *v.get(6)?);
    Some(CpuTicks {
        busy: user + nice + system + irq + softirq,
        steal: v.get(7).copied().unwrap_or(0),
    })
}

/// Busy and steal seconds of one CPU so far.
pub fn cpu_secs(cpu: usize) -> Result<(f64, f64), String> {
    let text = fs::read_to_string("/proc/stat").map_err(|e| format!("reading /proc/stat: {e}"))?;
    let t = parse_cpu_ticks(&text, cpu).ok_or_else(|| format!("no cpu{cpu} line in /proc/stat"))?;
    let hz = clock_ticks_per_sec();
    Ok((t.busy as f64 / hz, t.steal as f64 / hz))
}

/// The process id of `ksoftirqd/CPU`, the kernel thread that runs the
/// softirq work (on loopback / veth: the receive half of TCP) the CPU could
/// not finish on the way out of an interrupt or a system call.
pub fn ksoftirqd_pid(cpu: usize) -> Option<u32> {
    let want = format!("ksoftirqd/{cpu}");
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
        (comm.trim() == want).then_some(pid)
    })
}

/// `AnonHugePages` of a process in KiB (from /proc/PID/smaps_rollup): how
/// much of its memory, the frame arena above all, sits on transparent huge
/// pages. Zero-copy sends take a page reference per page they cover, so
/// this can move the figures.
pub fn anon_huge_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_anon_huge_kib(&text)
}

fn parse_anon_huge_kib(smaps: &str) -> Option<u64> {
    parse_status_kib(smaps, "AnonHugePages:")
}

/// Resident memory of a process in bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// Anonymous resident memory of a process in bytes (`RssAnon` of
/// /proc/PID/status): heap, stacks and anonymous mappings, no file pages.
pub fn rss_anon_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "RssAnon:")
}

fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&text, key).map(|kib| kib * 1024)
}

/// How many descriptors a process has open (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A `Key:   N kB` line of /proc/PID/status or smaps_rollup, in KiB.
fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A CPU whose use is sampled, with its softirq thread.
#[derive(Clone, Copy, Debug)]
pub struct Core {
    pub cpu: usize,
    pub ksoftirqd: Option<u32>,
}

impl Core {
    pub fn new(cpu: usize) -> Core {
        Core {
            cpu,
            ksoftirqd: ksoftirqd_pid(cpu),
        }
    }
}

/// The CPUs whose use the driver can see: the pinned ones on this host.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cores {
    pub server: Option<Core>,
    pub client: Option<Core>,
}

/// Use of one core, in seconds: since boot from [`CoreUse::sample`], over
/// a window from [`CoreUse::since`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreUse {
    pub busy: f64,
    pub steal: f64,
    pub softirqd: f64,
}

impl CoreUse {
    pub fn sample(core: Option<Core>) -> Option<CoreUse> {
        let core = core?;
        let (busy, steal) = cpu_secs(core.cpu).ok()?;
        let softirqd = core
            .ksoftirqd
            .and_then(|pid| process_cpu_secs(pid).ok())
            .unwrap_or(0.0);
        Some(CoreUse {
            busy,
            steal,
            softirqd,
        })
    }

    pub fn since(self, start: CoreUse) -> CoreUse {
        CoreUse {
            busy: self.busy - start.busy,
            steal: self.steal - start.steal,
            softirqd: self.softirqd - start.softirqd,
        }
    }

    /// Share of `wall` this core spent on neither `ours` nor its softirq
    /// thread, or stolen by the hypervisor: noise from the shared machine.
    pub fn foreign(self, ours: f64, wall: f64) -> f64 {
        ((self.busy - ours - self.softirqd).max(0.0) + self.steal) / wall
    }
}

/// The host facts a result is meaningless without.
#[derive(Clone, Debug)]
pub struct Host {
    pub cpus: usize,
    pub kernel: String,
    pub cpu_model: String,
}

pub fn host() -> Host {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| cpu_model(&text))
        .unwrap_or_else(|| "unknown".to_string());
    Host {
        cpus,
        kernel,
        cpu_model,
    }
}

/// The first `model name` of /proc/cpuinfo.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stat_with_awkward_command_name() {
        // comm with a space and a ')' inside; utime 1234, stime 567.
        let stat = "4242 (weird) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    1234 567 0 0 20 0 3 0 100 1000000 200 18446744073709551615";
        assert_eq!(parse_process_cpu_ticks(stat), Some(1801));
    }

    #[test]
    fn process_stat_truncated_is_none() {
        assert_eq!(parse_process_cpu_ticks("4242 (x) S 1 2 3"), None);
        assert_eq!(parse_process_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn cpu_line_sums_busy_fields() {
        let stat = "cpu  10 20 30 40 50 60 70 80 0 0\n\
                    cpu0 1 2 3 1000 5 6 7 8 0 0\n\
                    cpu1 100 0 0 0 0 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(
            parse_cpu_ticks(stat, 0),
            Some(CpuTicks {
                busy: 1 + 2 + 3 + 6 + 7,
                steal: 8
            })
        );
        assert_eq!(
            parse_cpu_ticks(stat, 1),
            Some(CpuTicks {
                busy: 100,
                steal: 0
            }),
            "old kernels have no steal column"
        );
        assert_eq!(parse_cpu_ticks(stat, 2), None);
        assert_eq!(parse_cpu_ticks(stat, 10), None, "cpu1 is not cpu10");
    }

    #[test]
    fn anon_huge_pages_line() {
        let text = "Rss:              293328 kB\nAnonHugePages:    262144 kB\nSwap: 0 kB\n";
        assert_eq!(parse_anon_huge_kib(text), Some(262144));
        assert_eq!(parse_anon_huge_kib("Rss: 1 kB\n"), None);
    }

    #[test]
    fn status_rss_line() {
        let text = "Name:\tcluecast\nVmHWM:\t  90000 kB\nVmRSS:\t   81234 kB\n";
        assert_eq!(parse_status_kib(text, "VmRSS:"), Some(81234));
        assert_eq!(parse_status_kib(text, "VmSwap:"), None);
    }

    #[test]
    fn foreign_share_of_a_core() {
        let c = CoreUse {
            busy: 4.0,
            steal: 0.5,
            softirqd: 1.0,
        };
        // 4 s busy, 2.5 s ours, 1 s softirqd: 0.5 s others + 0.5 s steal.
        assert_eq!(c.foreign(2.5, 5.0), 0.2);
        // Tick sampling can make ours exceed busy a little: never negative.
        assert_eq!(c.foreign(3.5, 5.0), 0.1);
    }

    #[test]
    fn cpu_model_is_first_model_name() {
        let info =
            "processor\t: 0\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(cpu_model(info).as_deref(), Some("AMD EPYC 7B13"));
    }
}
