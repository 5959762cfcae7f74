//! A host's /proc, /sys and /etc, read and written under a root directory:
//! `/` for the machine itself, a recorded tree in tests. Also the kernel's
//! text formats those files use (CPU lists, CPU masks).

use std::io::Read;
use std::path::{Path, PathBuf};

/// Files read are at most this long (/proc/interrupts on a large host is
/// a few hundred KiB).
const FILE_BYTES_MAX: u64 = 4 << 20;
/// Entries listed from one directory at most (/proc holds one per process).
const DIR_ENTRIES_MAX: usize = 1 << 22;
/// CPU numbers above this are refused (the kernel's NR_CPUS ceiling).
pub const CPUS_MAX: usize = 8192;

pub struct Host {
    root: PathBuf,
}

impl Host {
    pub fn new(root: &Path) -> Result<Host, String> {
        if !root.is_dir() {
            return Err(format!("--root {}: not a directory", root.display()));
        }
        Ok(Host {
            root: root.to_path_buf(),
        })
    }

    /// Whether this is the running machine, where commands may be run and
    /// io_uring probed.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `abs` (an absolute path on the host) under the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        assert!(abs.starts_with('/'), "host paths are absolute: {abs}");
        self.root.join(abs.trim_start_matches('/'))
    }

    /// The file's text; an error names the file when it is missing.
    pub fn read(&self, abs: &str) -> Result<String, String> {
        self.read_if_exists(abs)?
            .ok_or_else(|| format!("{} has no {abs}", self.describe()))
    }

    /// The file's text, or None when it does not exist (or, as sysfs does
    /// for an attribute that does not apply, refuses to be read with ENOENT).
    pub fn read_if_exists(&self, abs: &str) -> Result<Option<String>, String> {
        let mut text = String::new();
        let read = std::fs::File::open(self.path(abs))
            .and_then(|file| file.take(FILE_BYTES_MAX + 1).read_to_string(&mut text));
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {abs} on {}: {e}", self.describe())),
        }
        if text.len() as u64 > FILE_BYTES_MAX {
            return Err(format!("{abs} is longer than {FILE_BYTES_MAX} bytes"));
        }
        Ok(Some(text))
    }

    /// Whether `abs` exists; a symbolic link counts even when it dangles
    /// (an enabled unit's link into /lib in a recorded tree).
    pub fn exists(&self, abs: &str) -> bool {
        self.path(abs).symlink_metadata().is_ok()
    }

    /// The names in a directory, sorted; empty when it does not exist.
    pub fn list(&self, abs: &str) -> Result<Vec<String>, String> {
        let entries = match std::fs::read_dir(self.path(abs)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot list {abs} on {}: {e}", self.describe())),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {abs}: {e}"))?;
            if names.len() == DIR_ENTRIES_MAX {
                return Err(format!("{abs} has more than {DIR_ENTRIES_MAX} entries"));
            }
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Writes `contents` to `abs`, creating its directory when it is under
    /// /etc (kernel files under /proc and /sys exist or cannot be made).
    pub fn write(&self, abs: &str, contents: &str) -> Result<(), String> {
        let path = self.path(abs);
        if abs.starts_with("/etc/") {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
        }
        std::fs::write(&path, contents).map_err(|e| format!("writing {abs}: {e}"))
    }

    /// "this host" or "the host tree under DIR", for messages.
    pub fn describe(&self) -> String {
        match self.is_live() {
            true => "this host".to_string(),
            false => format!("the host tree {}", self.root.display()),
        }
    }
}

/// Parses a kernel CPU list ("0-3,8,10-11"; empty for none).
pub fn parse_cpulist(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (cpu_number(a)?, cpu_number(b)?),
            None => (cpu_number(part)?, cpu_number(part)?),
        };
        if first > last {
            return Err(format!("CPU range {part} runs backwards"));
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn cpu_number(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(cpu) if cpu < CPUS_MAX => Ok(cpu),
        _ => Err(format!("{text:?} is not a CPU number below {CPUS_MAX}")),
    }
}

/// A CPU list in the kernel's compact form ("0-3,8"; "none" for none).
pub fn format_cpulist(cpus: &[usize]) -> String {
    if cpus.is_empty() {
        return "none".to_string();
    }
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(match i == j {
            true => sorted[i].to_string(),
            false => format!("{}-{}", sorted[i], sorted[j]),
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Parses a kernel CPU mask: hex, in comma-separated 32-bit groups
/// ("00000000,0000ff00"), as rps_cpus and xps_cpus hold it.
pub fn parse_cpumask(text: &str) -> Result<Vec<usize>, String> {
    let digits: String = text.trim().chars().filter(|&c| c != ',').collect();
    let mut cpus = Vec::new();
    for (position, digit) in digits.chars().rev().enumerate() {
        let value = digit
            .to_digit(16)
            .ok_or_else(|| format!("{:?} is not a CPU mask", text.trim()))?;
        for bit in 0..4 {
            if value & (1 << bit) != 0 {
                let cpu = position * 4 + bit;
                if cpu >= CPUS_MAX {
                    return Err(format!("CPU mask {:?} names CPU {cpu}", text.trim()));
                }
                cpus.push(cpu);
            }
        }
    }
    cpus.sort_unstable();
    Ok(cpus)
}

/// A CPU mask as the kernel takes it: hex in 32-bit groups, highest first.
pub fn format_cpumask(cpus: &[usize]) -> String {
    let highest = cpus.iter().copied().max().unwrap_or(0);
    let mut groups = vec![0u32; highest / 32 + 1];
    for &cpu in cpus {
        assert!(cpu < CPUS_MAX);
        groups[cpu / 32] |= 1 << (cpu % 32);
    }
    let mut text: Vec<String> = Vec::new();
    for (i, group) in groups.iter().rev().enumerate() {
        text.push(match i {
            0 => format!("{group:x}"),
            _ => format!("{group:08x}"),
        });
    }
    text.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists_parse_and_format_round_trip() {
        assert_eq!(
            parse_cpulist("0-3,8,10-11\n").unwrap(),
            [0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(format_cpulist(&[11, 0, 1, 2, 3, 8, 10]), "0-3,8,10-11");
        assert_eq!(parse_cpulist("").unwrap(), Vec::<usize>::new());
        assert!(parse_cpulist("3-1").unwrap_err().contains("backwards"));
        assert!(parse_cpulist("x").unwrap_err().contains("not a CPU number"));
        assert!(parse_cpulist("9000").is_err());
    }

    #[test]
    fn cpumasks_parse_and_format_round_trip() {
        assert_eq!(
            parse_cpumask("00000000,0000ff00\n").unwrap(),
            (8..16).collect::<Vec<_>>()
        );
        assert_eq!(format_cpumask(&[0, 1]), "3");
        assert_eq!(format_cpumask(&[33, 1]), "2,00000002");
        assert_eq!(parse_cpumask(&format_cpumask(&[33, 1])).unwrap(), [1, 33]);
        assert_eq!(parse_cpumask("0").unwrap(), Vec::<usize>::new());
        assert!(parse_cpumask("zz").unwrap_err().contains("not a CPU mask"));
    }
}
