//! What the host offers for memory placement, and the NUMA calls: the pool
//! of reserved 2 MiB huge pages, whether transparent huge pages are on,
//! which NUMA node a CPU belongs to, binding a mapping to a node (mbind) and
//! asking where its pages are (move_pages). Raw syscalls, no libnuma.

use std::io;

const HUGE_PAGES_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
/// Nodes an mbind mask covers: the kernel's largest MAX_NUMNODES.
const NODES_MAX: usize = 1024;

/// Reserved 2 MiB huge pages a new mapping can take now: free ones, less
/// those already promised to mappings that have not faulted them in.
/// Zero when the kernel offers no 2 MiB huge pages at all.
pub fn huge_pages_available() -> io::Result<u64> {
    let read = |name: &str| -> io::Result<u64> {
        let path = format!("{HUGE_PAGES_2M}/{name}");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {path}: {e}")))?;
        text.trim().parse().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path} holds {text:?}: {e}"),
            )
        })
    };
    if !std::path::Path::new(HUGE_PAGES_2M).exists() {
        return Ok(0);
    }
    Ok(read("free_hugepages")?.saturating_sub(read("resv_hugepages")?))
}

/// Whether advising transparent huge pages can have an effect: the host's
/// setting is `always` or `madvise`, not `never` (or absent).
pub fn transparent_huge_pages_enabled() -> bool {
    std::fs::read_to_string(THP_ENABLED).is_ok_and(|text| thp_setting_enabled(&text))
}

/// The chosen value of a sysfs setting is the bracketed one:
/// `always [madvise] never`.
fn thp_setting_enabled(text: &str) -> bool {
    text.contains("[always]") || text.contains("[madvise]")
}

/// The NUMA node of `cpu`, or None when the kernel reports none (built
/// without NUMA, or no such CPU).
pub fn cpu_node(cpu: usize) -> Option<usize> {
    let dir = std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{cpu}")).ok()?;
    dir.filter_map(Result::ok).find_map(|entry| {
        entry
            .file_name()
            .to_str()?
            .strip_prefix("node")?
            .parse()
            .ok()
    })
}

/// Binds `[ptr, ptr + len)` to prefer `node` for the pages it is yet to be
/// given. Preferred, not strict: a node out of memory lends from another
/// rather than failing the fault (which for huge pages would be SIGBUS).
///
/// # Safety
/// The range must be a mapping the caller owns, page aligned.
pub(crate) unsafe fn prefer_node(ptr: *mut u8, len: usize, node: usize) -> io::Result<()> {
    if node >= NODES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NUMA node {node} is beyond {NODES_MAX}"),
        ));
    }
    let mut mask = [0u64; NODES_MAX / 64];
    mask[node / 64] |= 1 << (node % 64);
    // The kernel reads one bit fewer than `maxnode` says.
    let maxnode = NODES_MAX as libc::c_ulong + 1;
    let ret = libc::syscall(
        libc::SYS_mbind,
        ptr as *mut libc::c_void,
        len as libc::c_ulong,
        libc::MPOL_PREFERRED as libc::c_ulong,
        mask.as_ptr(),
        maxnode,
        0 as libc::c_uint,
    );
    if ret != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("mbind to NUMA node {node}: {err} (is the node online, with memory?)"),
        ));
    }
    Ok(())
}

/// The node of the page at every `stride` bytes of `[ptr, ptr + len)`;
/// an error if one of them is not resident.
///
/// # Safety
/// The range must be a mapping of this process.
pub(crate) unsafe fn page_nodes(
    ptr: *const u8,
    len: usize,
    stride: usize,
) -> io::Result<Vec<usize>> {
    assert!(stride > 0);
    let pages: Vec<*const libc::c_void> = (0..len)
        .step_by(stride)
        .map(|offset| ptr.add(offset) as *const libc::c_void)
        .collect();
    let mut status = vec![0 as libc::c_int; pages.len()];
    // Without a target node list move_pages moves nothing and reports
    // each page's node in `status`.
    let ret = libc::syscall(
        libc::SYS_move_pages,
        0 as libc::pid_t,
        pages.len() as libc::c_ulong,
        pages.as_ptr(),
        std::ptr::null::<libc::c_int>(),
        status.as_mut_ptr(),
        0 as libc::c_int,
    );
    if ret != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(err.kind(), format!("move_pages: {err}")));
    }
    status
        .iter()
        .enumerate()
        .map(|(i, &node)| {
            usize::try_from(node).map_err(|_| {
                io::Error::other(format!(
                    "page at offset {}: {}",
                    i * stride,
                    io::Error::from_raw_os_error(-node)
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bracketed_transparent_huge_page_setting_counts() {
        assert!(thp_setting_enabled("always [madvise] never\n"));
        assert!(thp_setting_enabled("[always] madvise never\n"));
        assert!(!thp_setting_enabled("always madvise [never]\n"));
        assert!(!thp_setting_enabled(""));
    }

    #[test]
    fn every_allowed_cpu_has_a_node_that_sysfs_lists() {
        if !std::path::Path::new("/sys/devices/system/node").exists() {
            println!("SKIPPED: this kernel reports no NUMA nodes");
            return;
        }
        for cpu in crate::allowed_cpus().unwrap() {
            let node = cpu_node(cpu).expect("a NUMA kernel names each CPU's node");
            let dir = format!("/sys/devices/system/node/node{node}");
            assert!(std::path::Path::new(&dir).exists(), "cpu {cpu}: no {dir}");
        }
        assert_eq!(cpu_node(1 << 20), None, "no such CPU");
    }
}
