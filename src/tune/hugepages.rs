//! Huge pages: enough reserved 2 MiB pages for the frame arena (on the
//! bound NUMA node when there is one), reserved again at every boot, and a
//! hugetlbfs mount.

use super::host::Host;
use super::{whole_file, Area, Finding, Step, Target};
use crate::placement::HugePages;

/// Where `apply` mounts hugetlbfs when nothing is mounted.
pub const MOUNT_POINT: &str = "/dev/hugepages/cluecast";
/// Reserves the pages at boot (systemd-tmpfiles writes the pool size).
pub const BOOT_FILE: &str = "/etc/tmpfiles.d/cluecast-hugepages.conf";

/// The pool MAP_HUGETLB takes 2 MiB pages from: the bound node's (memory is
/// bound there), else the system's.
fn pool_file(numa_node: Option<usize>) -> String {
    match numa_node {
        Some(node) => {
            format!("/sys/devices/system/node/node{node}/hugepages/hugepages-2048kB/nr_hugepages")
        }
        None => "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages".to_string(),
    }
}

pub fn check(
    host: &Host,
    target: &Target,
    notes: &mut Vec<String>,
) -> Result<Vec<Finding>, String> {
    let settings = &target.settings;
    if settings.huge_pages == HugePages::Off {
        notes.push("--huge-pages off: shard memory uses normal pages, none are needed".into());
        return Ok(Vec::new());
    }
    let needed = target.memory.huge_pages;
    let meminfo = host.read("/proc/meminfo")?;
    let field = |name: &str| -> Result<usize, String> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("/proc/meminfo has no {name} (a kernel without hugetlbfs?)"))
    };
    let mut findings = Vec::new();
    let page_kb = field("Hugepagesize")?;
    if page_kb != 2048 {
        findings.push(
            Finding::new(
                Area::Hugepages,
                "default huge page size (Hugepagesize in /proc/meminfo)".into(),
                format!("{page_kb} kB"),
                "2048 kB".into(),
                "the arena maps huge pages of the default size, and its plan counts 2 MiB ones"
                    .into(),
            )
            .fix(vec![Step::Manual {
                command: "remove default_hugepagesz= from the kernel command line and reboot"
                    .into(),
            }]),
        );
    }
    let pool = pool_file(target.numa_node);
    let reserved: usize = host
        .read(&pool)?
        .trim()
        .parse()
        .map_err(|_| format!("{pool} does not hold a number"))?;
    let why = format!(
        "each shard's memory ({} shard(s) x {} MiB: frame arena and receive buffers) is mapped \
         from reserved 2 MiB pages when there are enough{}, else from normal pages (more TLB \
         misses on the event path)",
        settings.shards,
        target.memory.shard_bytes.div_ceil(1 << 20),
        match target.numa_node {
            Some(node) => format!(" on node {node}, where its memory is bound"),
            None => String::new(),
        }
    );
    if reserved < needed {
        findings.push(
            Finding::new(
                Area::Hugepages,
                pool.clone(),
                reserved.to_string(),
                format!("at least {needed}"),
                why.clone(),
            )
            .fix(vec![Step::write(&pool, format!("{needed}\n"))]),
        );
    } else {
        let free = field("HugePages_Free")?;
        if free < needed {
            notes.push(format!(
                "{free} of {} huge pages are free: unless cluecast is running, something else \
                 holds them and the arena will use normal pages",
                field("HugePages_Total")?
            ));
        }
    }
    // At boot the pool is empty again; keep any larger reservation.
    let boot = format!(
        "# Written by `cluecast tune apply`: reserve the frame arena's huge pages at boot.\n\
         w {pool} - - - - {}\n",
        reserved.max(needed)
    );
    let why = format!("the reservation is lost at reboot; {why}");
    findings.extend(whole_file(
        host,
        Area::Hugepages,
        BOOT_FILE,
        boot,
        why,
        Vec::new(),
    )?);
    let mounts = host.read("/proc/mounts")?;
    let mounted = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"));
    if !mounted {
        findings.push(
            Finding::new(
                Area::Hugepages,
                "hugetlbfs mount (/proc/mounts)".into(),
                "none".into(),
                format!("hugetlbfs mounted, e.g. on {MOUNT_POINT}"),
                "the pool is then visible and usable as files (the original system mounted \
                 it); the arena itself maps anonymous huge pages and does not need the mount"
                    .into(),
            )
            .fix(vec![
                Step::run(&["mkdir", "-p", MOUNT_POINT]),
                Step::run(&[
                    "mount",
                    "-t",
                    "hugetlbfs",
                    "-o",
                    "pagesize=2M",
                    "none",
                    MOUNT_POINT,
                ]),
            ]),
        );
    }
    Ok(findings)
}
