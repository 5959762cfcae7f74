//! Where each shard's memory and connections land, using what the host
//! offers. Memory: one mapping per shard (its frame arena and its provided
//! receive buffers), from reserved 2 MiB huge pages when enough are free,
//! else normal pages with transparent huge pages advised, bound to the NUMA
//! node of the shard's CPU before it is touched. Connections: the
//! listeners are steered so a connection lands on the shard whose CPU
//! processed its first packet (the CPU serving its NIC queue). What was
//! chosen, and why, is logged once and returned as a `Placement`.

use std::os::fd::RawFd;

use cluecast_sys::{memory, steer, PageKind, Region, Span};

use crate::ring::uring::{RecvMemory, UringConfig};

/// Which pages shard memory comes from (`--huge-pages`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HugePages {
    /// Reserved 2 MiB pages when enough are free, else transparent huge pages.
    Auto,
    /// Reserved 2 MiB pages, or refuse to start.
    Require,
    /// 4 KiB pages, transparent huge pages refused.
    Off,
}

/// How a new connection finds its shard (`--steering`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Steering {
    /// SO_INCOMING_CPU on each listener: the kernel prefers the listener of
    /// the CPU that processed the connection's first packet.
    IncomingCpu,
    /// A classic BPF program on the reuseport group picks that listener.
    Bpf,
    /// The kernel's hash of the connection's addresses and ports.
    Off,
}

impl Steering {
    pub fn name(self) -> &'static str {
        match self {
            Steering::IncomingCpu => "incoming-cpu",
            Steering::Bpf => "bpf",
            Steering::Off => "off",
        }
    }
}

/// Where one shard runs, and what its memory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlacement {
    pub shard: usize,
    pub cpu: usize,
    /// The NUMA node of `cpu`, which the memory is bound to (preferred);
    /// None when the kernel reports no nodes.
    pub numa_node: Option<usize>,
    pub pages: PageKind,
    /// The frame arena and receive buffers, rounded up to whole pages.
    pub memory_bytes: usize,
}

/// What start-up chose for every shard: for the log, and for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The steering in effect, after any fallback.
    pub steering: Steering,
    pub shards: Vec<ShardPlacement>,
}

/// One shard's memory, cut for its users.
pub struct ShardMemory {
    pub arena: Span,
    pub recv: RecvMemory,
}

/// Every shard's memory and placement. The regions must stay mapped until
/// every ring and shard using their spans is gone.
pub struct Placed {
    pub placement: Placement,
    pub regions: Vec<Region>,
    pub shards: Vec<ShardMemory>,
}

/// Steers the listeners (`listeners[i]` serves the shard on `cpus[i]`;
/// they must have called listen() in that order), maps each shard's memory
/// (`arena_bytes` and the receive buffers of `ring`), and logs both.
pub fn place(
    huge_pages: HugePages,
    steering: Steering,
    listeners: &[RawFd],
    cpus: &[usize],
    arena_bytes: usize,
    ring: UringConfig,
) -> Result<Placed, String> {
    assert_eq!(listeners.len(), cpus.len());
    let steering = steer_listeners(steering, listeners, cpus);
    let placed = map_shard_memory(huge_pages, steering, cpus, arena_bytes, ring)?;
    crate::info!("cluecast: placement: {}", placed.placement);
    Ok(placed)
}

/// One line: the steering, then each shard's CPU, node, pages and bytes.
impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "steering {};", self.steering.name())?;
        for (i, s) in self.shards.iter().enumerate() {
            let node = s.numa_node.map_or("none".to_string(), |n| n.to_string());
            write!(
                f,
                "{} shard {} cpu {} node {node} {} {} MiB",
                if i == 0 { "" } else { "," },
                s.shard,
                s.cpu,
                s.pages.name(),
                s.memory_bytes >> 20
            )?;
        }
        Ok(())
    }
}

/// Asks the kernel for `wanted`, falling back (with one line saying why)
/// from bpf to incoming-cpu to the plain hash; returns what is in effect.
fn steer_listeners(wanted: Steering, listeners: &[RawFd], cpus: &[usize]) -> Steering {
    if wanted == Steering::Bpf {
        // Any listener attaches the program for the whole group.
        match steer::cpu_steering_program(cpus)
            .and_then(|program| steer::attach_reuseport_program(listeners[0], &program))
        {
            Ok(()) => return Steering::Bpf,
            Err(e) => crate::warn!(
                "cluecast: --steering bpf refused ({e}); steering with SO_INCOMING_CPU instead"
            ),
        }
    }
    if wanted != Steering::Off {
        match listeners
            .iter()
            .zip(cpus)
            .try_for_each(|(&fd, &cpu)| steer::set_incoming_cpu(fd, cpu))
        {
            Ok(()) => return Steering::IncomingCpu,
            Err(e) => crate::warn!(
                "cluecast: --steering {} refused ({e}); connections go by the kernel's hash",
                wanted.name()
            ),
        }
    }
    Steering::Off
}

/// Bytes of one shard's mapping: the arena, the receive buffers and their
/// ring, each starting on a 4 KiB page (as `Region::split` cuts them).
pub fn shard_bytes(arena_bytes: usize, ring: UringConfig) -> usize {
    shard_parts(arena_bytes, ring)
        .iter()
        .map(|p| p.next_multiple_of(4096))
        .sum()
}

/// The lengths `Region::split` cuts one shard's mapping into.
fn shard_parts(arena_bytes: usize, ring: UringConfig) -> [usize; 3] {
    let (entries, buffers) = ring.recv_bytes();
    [arena_bytes, buffers, entries]
}

/// The pages to ask for, and why, as the line that says so.
fn choose_pages(
    setting: HugePages,
    shards: usize,
    bytes_per_shard: usize,
    huge_pages_available: u64,
) -> Result<(PageKind, String), String> {
    let needed = (shards * cluecast_sys::huge_pages_for(bytes_per_shard)) as u64;
    let counts = format!("{huge_pages_available} free, {needed} needed");
    match setting {
        HugePages::Off => Ok((PageKind::Normal, "4 KiB pages (--huge-pages off)".into())),
        _ if huge_pages_available >= needed => {
            Ok((PageKind::HugeTlb, format!("reserved 2 MiB pages: {counts}")))
        }
        HugePages::Require => Err(format!(
            "--huge-pages require: not enough reserved 2 MiB pages ({counts} for {shards} \
             shard(s) of {} MiB); reserve {} more with `sysctl vm.nr_hugepages` \
             (or hugepages= at boot), or use --huge-pages auto",
            bytes_per_shard >> 20,
            needed - huge_pages_available
        )),
        HugePages::Auto => Ok((
            PageKind::Transparent,
            format!("not enough reserved 2 MiB pages ({counts}); using transparent huge pages"),
        )),
    }
}

/// One region per shard, on its CPU's node, cut into arena and receive
/// memory; logs once which pages were used and why. `steering` is only
/// recorded.
fn map_shard_memory(
    setting: HugePages,
    steering: Steering,
    cpus: &[usize],
    arena_bytes: usize,
    ring: UringConfig,
) -> Result<Placed, String> {
    let (bytes, parts) = (
        shard_bytes(arena_bytes, ring),
        shard_parts(arena_bytes, ring),
    );
    let available = memory::huge_pages_available().map_err(|e| e.to_string())?;
    let (mut pages, mut reason) = choose_pages(setting, cpus.len(), bytes, available)?;
    let mut mapped = Placed {
        placement: Placement {
            steering,
            shards: Vec::with_capacity(cpus.len()),
        },
        regions: Vec::with_capacity(cpus.len()),
        shards: Vec::with_capacity(cpus.len()),
    };
    for (shard, &cpu) in cpus.iter().enumerate() {
        let numa_node = memory::cpu_node(cpu);
        let region = match Region::map(bytes, pages, numa_node) {
            // Another process took the pages since they were counted.
            Err(e) if pages == PageKind::HugeTlb && setting == HugePages::Auto => {
                pages = PageKind::Transparent;
                reason = format!(
                    "{reason}, but shard {shard}: {e}; the rest use transparent huge pages"
                );
                Region::map(bytes, pages, numa_node)
            }
            other => other,
        }
        .map_err(|e| format!("mapping shard {shard}'s memory ({bytes} bytes): {e}"))?;
        if let Some(node) = numa_node {
            warn_if_off_node(shard, node, &region);
        }
        let [arena, buffers, entries]: [Span; 3] = region
            .split(&parts)
            .try_into()
            .unwrap_or_else(|_| unreachable!("three lengths make three spans"));
        mapped.placement.shards.push(ShardPlacement {
            shard,
            cpu,
            numa_node,
            pages: region.pages(),
            memory_bytes: region.len(),
        });
        mapped.shards.push(ShardMemory {
            arena,
            recv: RecvMemory { entries, buffers },
        });
        mapped.regions.push(region);
    }
    if pages == PageKind::Transparent && !memory::transparent_huge_pages_enabled() {
        reason.push_str(", but transparent huge pages are disabled on this host (4 KiB pages)");
    }
    crate::info!(
        "cluecast: shard memory ({} MiB each: arena and receive buffers): {reason}",
        bytes >> 20
    );
    Ok(mapped)
}

/// Preferred binding lets a node short of memory lend pages from another:
/// say so, since those pages cost a trip across the interconnect.
fn warn_if_off_node(shard: usize, node: usize, region: &Region) {
    match region.page_nodes() {
        Ok(nodes) => {
            let away = nodes.iter().filter(|&&n| n != node).count();
            if away > 0 {
                crate::warn!(
                    "cluecast: shard {shard}: {away} of {} sampled pages are not on NUMA node \
                     {node} (the node is short of memory)",
                    nodes.len()
                );
            }
        }
        Err(e) => crate::warn!("cluecast: shard {shard}: where its pages are is unknown: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn reserved_pages_are_used_when_enough_are_free_and_required_only_on_request() {
        let per_shard = 81 * MIB; // 41 pages of 2 MiB
        let (pages, why) = choose_pages(HugePages::Auto, 2, per_shard, 82).unwrap();
        assert_eq!(pages, PageKind::HugeTlb, "{why}");
        let (pages, why) = choose_pages(HugePages::Auto, 2, per_shard, 81).unwrap();
        assert_eq!(pages, PageKind::Transparent);
        assert!(why.contains("81 free, 82 needed"), "{why}");
        let err = choose_pages(HugePages::Require, 2, per_shard, 2).unwrap_err();
        assert!(
            err.contains("--huge-pages require")
                && err.contains("reserve 80 more with `sysctl vm.nr_hugepages`"),
            "{err}"
        );
        let (pages, _) = choose_pages(HugePages::Off, 2, per_shard, 1000).unwrap();
        assert_eq!(pages, PageKind::Normal);
    }

    #[test]
    fn each_part_of_a_shard_starts_on_a_page() {
        let ring = UringConfig {
            sq_entries: 64,
            recv_buffers: 256,
            recv_buffer_bytes: 1000,
        };
        assert_eq!(shard_parts(MIB + 1, ring), [MIB + 1, 256_000, 256 * 16]);
        assert_eq!(shard_bytes(MIB + 1, ring), (MIB + 4096) + 258_048 + 4096);
    }

    #[test]
    fn steering_off_touches_no_listener_and_bpf_is_in_effect_when_attached() {
        let cpus = cluecast_sys::allowed_cpus().unwrap();
        let listener = cluecast_sys::listen_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        assert_eq!(
            steer_listeners(Steering::Off, &[fd], &cpus[..1]),
            Steering::Off
        );
        assert_eq!(
            steer_listeners(Steering::Bpf, &[fd], &cpus[..1]),
            Steering::Bpf
        );
        assert_eq!(
            steer_listeners(Steering::IncomingCpu, &[fd], &cpus[..1]),
            Steering::IncomingCpu
        );
        // A descriptor that is no socket refuses both: the hash is left.
        assert_eq!(
            steer_listeners(Steering::Bpf, &[-1], &cpus[..1]),
            Steering::Off
        );
    }
}
