//! Placement on the real host: connections land on the shard of the CPU
//! that processed their first packet (on loopback, the connecting thread's
//! CPU), and each shard's memory comes from the pages and NUMA node the
//! start-up log names, as /proc/PID/numa_maps shows.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{RawClient, Server, BIN};

/// Tests that reserve huge pages or count on none being reserved run one
/// at a time.
static HUGE_PAGES: Mutex<()> = Mutex::new(());

/// Per shard: a 6 MiB arena, 1 MiB of receive buffers and their 4 KiB
/// ring: four 2 MiB pages.
const SMALL_MEMORY: [&str; 4] = ["--arena-bytes", "6291456", "--recv-buffers", "256"];
const HUGE_PAGES_PER_SHARD: u64 = 4;

/// The first two CPUs this process may use, or None (with a line saying
/// the test is skipped) when there is only one.
fn two_cpus() -> Option<[usize; 2]> {
    let cpus = cluecast_sys::allowed_cpus().unwrap();
    if cpus.len() < 2 {
        println!("SKIPPED: steering needs two CPUs, this process may use {cpus:?}");
        return None;
    }
    Some([cpus[0], cpus[1]])
}

/// Opens `count` connections (each through WELCOME, so accepted) from a
/// thread pinned to `cpu`.
fn connect_from(cpu: usize, server: &Server, count: usize) -> Vec<RawClient> {
    let addr = server.addr;
    std::thread::spawn(move || {
        cluecast_sys::pin_current_thread(cpu).unwrap();
        (0..count).map(|_| RawClient::open(addr)).collect()
    })
    .join()
    .unwrap()
}

/// Stops the server and reads each shard's `accepted` from the stats it
/// logs on the way out.
fn accepted_per_shard(server: &Server, shards: usize) -> Vec<u64> {
    server.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut accepted = vec![None; shards];
    while accepted.iter().any(Option::is_none) {
        let line = server
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("every shard logs its stats when it stops");
        let Some((shard, stats)) = line
            .split("cluecast: shard ")
            .nth(1)
            .and_then(|rest| rest.split_once(" stopped: "))
        else {
            continue;
        };
        let count = stats
            .split("accepted: ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .expect("the stats name accepted connections");
        accepted[shard.parse::<usize>().unwrap()] = Some(count.parse().unwrap());
    }
    accepted.into_iter().map(Option::unwrap).collect()
}

/// Two shards, history in memory only, and `args`.
fn start_two_shards(args: &[&str]) -> Server {
    let mut all = vec!["--shards", "2", "--durability", "memory"];
    all.extend(args);
    Server::start(&all)
}

/// The start-up line that contains `needle`.
fn startup_line<'a>(server: &'a Server, needle: &str) -> &'a str {
    server
        .startup_log
        .iter()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no start-up line with {needle:?}"))
}

const PLACEMENT: &str = "cluecast: placement:";
const MEMORY: &str = "cluecast: shard memory";

#[test]
fn connections_land_on_the_shard_of_the_cpu_that_processed_them() {
    let Some(cpus) = two_cpus() else { return };
    for steering in ["incoming-cpu", "bpf"] {
        let server = start_two_shards(&["--huge-pages", "off", "--steering", steering]);
        let line = startup_line(&server, PLACEMENT);
        assert!(line.contains(&format!("steering {steering};")), "{line}");
        assert!(
            line.contains(&format!("shard 0 cpu {}", cpus[0]))
                && line.contains(&format!("shard 1 cpu {}", cpus[1])),
            "{line}"
        );
        let _first = connect_from(cpus[0], &server, 60);
        let _second = connect_from(cpus[1], &server, 40);
        assert_eq!(
            accepted_per_shard(&server, 2),
            [60, 40],
            "--steering {steering}: accepted per shard"
        );
    }
}

#[test]
fn without_steering_connections_follow_the_kernels_hash() {
    let Some(cpus) = two_cpus() else { return };
    let server = start_two_shards(&["--huge-pages", "off", "--steering", "off"]);
    assert!(startup_line(&server, PLACEMENT).contains("steering off;"));
    // All from one CPU: steering would put every one on shard 1; the hash
    // of addresses and ports spreads them (fewer than 20 of 100 on one
    // shard has a probability below 1e-9).
    let _clients = connect_from(cpus[1], &server, 100);
    let accepted = accepted_per_shard(&server, 2);
    println!(
        "--steering off, 100 clients from cpu {}: accepted per shard {accepted:?}",
        cpus[1]
    );
    assert_eq!(accepted.iter().sum::<u64>(), 100);
    assert!(
        accepted.iter().all(|&n| n >= 20),
        "accepted per shard: {accepted:?}"
    );
}

/// Pages of the server's memory bound (mbind) to prefer `node`, on that
/// node, from mappings of `page_kib` pages, as /proc/PID/numa_maps lists
/// them (in pages of `page_kib`; only the shards' memory has that policy).
fn pages_preferring_node(server: &Server, node: usize, page_kib: u32) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{}/numa_maps", server.child.id())).unwrap();
    maps.lines()
        .filter(|line| {
            line.contains(&format!(" prefer:{node} "))
                && line.ends_with(&format!("kernelpagesize_kB={page_kib}"))
        })
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(&format!("N{node}=")))
        })
        .map(|count| count.parse::<u64>().unwrap())
        .sum()
}

/// Each shard's memory (`pages_per_shard` pages of `page_kib`) is resident
/// on the node of its CPU.
fn assert_pages_on_their_nodes(
    server: &Server,
    cpus: [usize; 2],
    page_kib: u32,
    pages_per_shard: u64,
) {
    for cpu in cpus {
        let node = node_of(cpu);
        let shards_on_node = cpus.iter().filter(|&&c| node_of(c) == node).count() as u64;
        assert_eq!(
            pages_preferring_node(server, node, page_kib),
            shards_on_node * pages_per_shard,
            "pages of {page_kib} KiB on node {node}"
        );
    }
}

fn node_of(cpu: usize) -> usize {
    cluecast_sys::memory::cpu_node(cpu).expect("the kernel reports each CPU's NUMA node")
}

/// Adds `count` to the reserved 2 MiB pages, and takes them back on drop.
struct Reservation(u64);

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl Reservation {
    fn read() -> u64 {
        std::fs::read_to_string(NR_HUGEPAGES)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn add(count: u64) -> Reservation {
        std::fs::write(NR_HUGEPAGES, (Reservation::read() + count).to_string()).unwrap();
        Reservation(count)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let now = Reservation::read();
        let _ = std::fs::write(NR_HUGEPAGES, now.saturating_sub(self.0).to_string());
    }
}

#[test]
fn reserved_huge_pages_back_each_shard_on_its_node() {
    let Some(cpus) = two_cpus() else { return };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: reserving huge pages needs root");
        return;
    }
    let _one_at_a_time = HUGE_PAGES.lock().unwrap_or_else(|e| e.into_inner());
    let needed = 2 * HUGE_PAGES_PER_SHARD;
    let reservation = Reservation::add(needed);
    let available = cluecast_sys::memory::huge_pages_available().unwrap();
    assert!(
        available >= needed,
        "the kernel reserved only {available} of {needed} pages"
    );
    let mut args = vec!["--huge-pages", "require"];
    args.extend(SMALL_MEMORY);
    let server = start_two_shards(&args);
    let memory = startup_line(&server, MEMORY);
    assert!(memory.contains("reserved 2 MiB pages"), "{memory}");
    let line = startup_line(&server, PLACEMENT);
    for (shard, cpu) in cpus.iter().enumerate() {
        let node = node_of(*cpu);
        let expected = format!("shard {shard} cpu {cpu} node {node} hugetlb 8 MiB");
        assert!(line.contains(&expected), "{line}");
    }
    assert_pages_on_their_nodes(&server, cpus, 2048, HUGE_PAGES_PER_SHARD);
    drop(server);
    drop(reservation);
}

#[test]
fn without_reserved_pages_auto_uses_transparent_ones_and_require_refuses() {
    let Some(cpus) = two_cpus() else { return };
    let _one_at_a_time = HUGE_PAGES.lock().unwrap_or_else(|e| e.into_inner());
    let available = cluecast_sys::memory::huge_pages_available().unwrap();
    if available >= 2 * HUGE_PAGES_PER_SHARD {
        println!("SKIPPED: {available} huge pages are reserved and free on this host");
        return;
    }
    let server = start_two_shards(&SMALL_MEMORY);
    let memory = startup_line(&server, MEMORY);
    assert!(
        memory.contains(&format!("({available} free, 8 needed)")),
        "{memory}"
    );
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| !s.contains("[never]"));
    let kind = if thp { "thp" } else { "normal" };
    let line = startup_line(&server, PLACEMENT);
    for (shard, cpu) in cpus.iter().enumerate() {
        let node = node_of(*cpu);
        let expected = format!("shard {shard} cpu {cpu} node {node} {kind} 7 MiB");
        assert!(line.contains(&expected), "{line}");
    }
    // 7 MiB and a page each, every 4 KiB of it resident (a transparent
    // huge page counts as 512).
    assert_pages_on_their_nodes(&server, cpus, 4, 7 * 256 + 1);
    drop(server);

    let data = common::TempDir::new("placement");
    let out = std::process::Command::new(BIN)
        .args(["run", "--shards", "2", "--huge-pages", "require"])
        .args(["--listen", "127.0.0.1:0", "--data-dir", data.path_str()])
        .args(SMALL_MEMORY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--huge-pages require: not enough reserved 2 MiB pages")
            && err.contains("sysctl vm.nr_hugepages"),
        "{err}"
    );
}
