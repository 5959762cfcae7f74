//! `cluecast tune` against recorded host trees (tests/fixtures/hosts): what
//! check finds on each, what apply writes, that a second apply writes
//! nothing, the tuning/ scripts, and clear errors for bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{TempDir, BIN};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hosts");

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

/// A writable copy of a fixture tree (symbolic links kept).
fn copy_of(name: &str) -> TempDir {
    let dir = TempDir::new(&format!("tune-{name}"));
    let status = Command::new("cp")
        .args(["-a", &format!("{}/.", fixture(name)), dir.path_str()])
        .status()
        .unwrap();
    assert!(status.success(), "copying {name}");
    dir
}

fn cluecast(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `tune check --json` on `root`: its exit status and report.
fn check_json(root: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["tune", "check", "--json", "--root", root];
    args.extend_from_slice(extra);
    let out = cluecast(&args);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code().unwrap(), report)
}

fn settings(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["setting"].as_str().unwrap().to_string())
        .collect()
}

fn command_of(report: &Value, setting: &str) -> String {
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["setting"] == setting)
        .unwrap_or_else(|| panic!("no finding {setting}"));
    finding["command"].as_str().unwrap().to_string()
}

fn read(root: &TempDir, path: &str) -> String {
    std::fs::read_to_string(root.0.join(path.trim_start_matches('/'))).unwrap()
}

const SYSCTL_DROP_IN: &str = include_str!("../tuning/sysctl.d/90-cluecast.conf");
const NET: &str = "/sys/class/net";

#[test]
fn a_two_node_host_with_a_multi_queue_nic_needs_everything() {
    let (status, report) = check_json(&fixture("numa2-ixgbe"), &[]);
    assert_eq!(status, 1, "the host differs");
    let target = &report["target"];
    assert_eq!(
        target["nic"]["name"], "ens1f0",
        "the lower-metric default route"
    );
    assert_eq!(target["nic"]["chosen_by"], "the default route");
    assert_eq!(target["numa_node"], 1, "the NIC's node");
    assert_eq!(target["cpus"], "16-31");
    assert_eq!(target["shards"], 10, "60% of the node's 16 CPUs");
    let shard_cpus: Vec<u64> = (16..26).collect();
    assert_eq!(target["shard_cpus"], serde_json::json!(shard_cpus));
    assert_eq!(
        target["memory"]["huge_pages"], 410,
        "10 shards x (64 MiB arena + 16 MiB receive buffers and their ring) in 41 pages of 2 MiB"
    );

    let mut expected = vec![
        "/sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages".to_string(),
        "/etc/tmpfiles.d/cluecast-hugepages.conf".into(),
        "hugetlbfs mount (/proc/mounts)".into(),
    ];
    for q in 0..8 {
        expected.push(format!(
            "/proc/irq/{}/smp_affinity_list (ens1f0-TxRx-{q})",
            90 + q
        ));
    }
    expected.push("irqbalance".into());
    for kind in ["rx-", "tx-"] {
        for q in 0..8 {
            let file = if kind == "rx-" {
                "rps_cpus"
            } else {
                "xps_cpus"
            };
            expected.push(format!("{NET}/ens1f0/queues/{kind}{q}/{file}"));
        }
    }
    expected.push("/etc/systemd/system/cluecast.service.d/50-numa.conf".into());
    for key in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.core.netdev_max_backlog",
        "fs.file-max",
        "fs.nr_open",
        "net.ipv4.tcp_rmem",
        "net.ipv4.ip_local_port_range",
        "/etc/sysctl.d/90-cluecast.conf",
        "open files (RLIMIT_NOFILE)",
        "locked memory (RLIMIT_MEMLOCK)",
    ] {
        expected.push(key.into());
    }
    assert_eq!(settings(&report), expected);

    assert_eq!(
        command_of(&report, "/proc/irq/93/smp_affinity_list (ens1f0-TxRx-3)"),
        "echo 19 > /proc/irq/93/smp_affinity_list",
        "queue 3 on shard 3's CPU"
    );
    assert_eq!(
        command_of(&report, &format!("{NET}/ens1f0/queues/rx-0/rps_cpus")),
        format!("echo 1010000 > {NET}/ens1f0/queues/rx-0/rps_cpus"),
        "queue 0 serves shards 0 and 8: CPUs 16 and 24"
    );
    assert_eq!(
        command_of(&report, "irqbalance"),
        "systemctl disable --now irqbalance"
    );
    assert_eq!(
        command_of(&report, "net.ipv4.ip_local_port_range"),
        "echo '1024 65535' > /proc/sys/net/ipv4/ip_local_port_range"
    );
    assert!(command_of(
        &report,
        "/etc/systemd/system/cluecast.service.d/50-numa.conf"
    )
    .ends_with("&& systemctl daemon-reload"));
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("kernel.io_uring_disabled: not on this kernel"),
        "{notes}"
    );
}

#[test]
fn apply_fixes_the_two_node_host_and_a_second_apply_writes_nothing() {
    let root = copy_of("numa2-ixgbe");
    let out = cluecast(&["tune", "apply", "--root", root.path_str()]);
    let log = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "commands remain: {log}");
    assert!(log.contains("not run (the root is"), "{log}");
    assert!(
        log.contains("for you, where cluecast starts: ulimit -Hn 1048576"),
        "{log}"
    );

    assert_eq!(read(&root, "/proc/irq/95/smp_affinity_list"), "21\n");
    assert_eq!(
        read(&root, &format!("{NET}/ens1f0/queues/tx-1/xps_cpus")),
        "2020000\n"
    );
    assert_eq!(
        read(
            &root,
            "/sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages"
        ),
        "410\n"
    );
    assert!(
        read(&root, "/etc/tmpfiles.d/cluecast-hugepages.conf").contains(
            "w /sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages - - - - 410"
        )
    );
    let numa = read(&root, "/etc/systemd/system/cluecast.service.d/50-numa.conf");
    assert!(
        numa.contains("CPUAffinity=16-31\nNUMAPolicy=bind\nNUMAMask=1\n"),
        "{numa}"
    );
    assert_eq!(
        read(&root, "/etc/sysctl.d/90-cluecast.conf"),
        SYSCTL_DROP_IN
    );
    assert_eq!(
        read(&root, "/proc/sys/net/ipv4/tcp_rmem"),
        "4096 131072 6291456\n"
    );

    // Left: what only commands or the operator can change.
    let (status, report) = check_json(root.path_str(), &[]);
    assert_eq!(status, 1);
    assert_eq!(
        settings(&report),
        [
            "hugetlbfs mount (/proc/mounts)",
            "irqbalance",
            "open files (RLIMIT_NOFILE)",
            "locked memory (RLIMIT_MEMLOCK)"
        ]
    );
    let again = cluecast(&["tune", "apply", "--root", root.path_str()]);
    let log = text(&again.stdout);
    assert!(
        !log.contains("wrote "),
        "a second apply writes nothing: {log}"
    );
}

#[test]
fn a_nic_with_fewer_queues_than_shards_gets_rps_and_xps() {
    let (status, report) = check_json(&fixture("single-2queue"), &[]);
    assert_eq!(status, 1);
    assert_eq!(report["target"]["shards"], 5, "60% of 8 CPUs");
    assert_eq!(report["target"]["numa_node"], Value::Null, "one node");
    let queues = format!("{NET}/eth0/queues");
    assert_eq!(
        settings(&report),
        [
            "/etc/tmpfiles.d/cluecast-hugepages.conf".to_string(),
            "/proc/irq/41/smp_affinity_list (eth0-TxRx-0)".into(),
            "/proc/irq/42/smp_affinity_list (eth0-TxRx-1)".into(),
            format!("{queues}/rx-0/rps_cpus"),
            format!("{queues}/rx-1/rps_cpus"),
            format!("{queues}/tx-0/xps_cpus"),
            format!("{queues}/tx-1/xps_cpus"),
            "kernel.io_uring_disabled".into(),
            "/etc/sysctl.d/90-cluecast.conf".into(),
        ]
    );
    // Shards 0, 2, 4 on queue 0 (CPUs 0, 2, 4); shards 1, 3 on queue 1.
    assert_eq!(
        command_of(&report, &format!("{queues}/rx-0/rps_cpus")),
        format!("echo 15 > {queues}/rx-0/rps_cpus")
    );
    assert_eq!(
        command_of(&report, &format!("{queues}/tx-1/xps_cpus")),
        format!("echo a > {queues}/tx-1/xps_cpus")
    );
    assert_eq!(
        command_of(&report, "/proc/irq/42/smp_affinity_list (eth0-TxRx-1)"),
        "echo 1 > /proc/irq/42/smp_affinity_list"
    );
    // The 2048 pages already reserved are more than needed, and kept at boot.
    assert!(
        command_of(&report, "/etc/tmpfiles.d/cluecast-hugepages.conf")
            .contains("nr_hugepages - - - - 2048")
    );

    let root = copy_of("single-2queue");
    let out = cluecast(&["tune", "apply", "--root", root.path_str()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(read(&root, "/proc/sys/kernel/io_uring_disabled"), "0\n");
    let (status, report) = check_json(root.path_str(), &[]);
    assert_eq!((status, settings(&report).len()), (0, 0), "{report}");
}

#[test]
fn this_machine_recorded_needs_its_virtio_queue_on_shard_zero() {
    let (status, report) = check_json(&fixture("this-vm"), &[]);
    assert_eq!(status, 1);
    assert_eq!(report["target"]["nic"]["name"], "eth0");
    assert_eq!(report["target"]["cpus"], "0-1");
    assert_eq!(
        settings(&report),
        [
            "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
            "/etc/tmpfiles.d/cluecast-hugepages.conf",
            "hugetlbfs mount (/proc/mounts)",
            "/proc/irq/38/smp_affinity_list (virtio2-input.0)",
            "/proc/irq/39/smp_affinity_list (virtio2-output.0)",
            "net.ipv4.tcp_max_syn_backlog",
            "net.core.netdev_max_backlog",
            "fs.file-max",
            "fs.nr_open",
            "net.ipv4.ip_local_port_range",
            "/etc/sysctl.d/90-cluecast.conf",
            "open files (RLIMIT_NOFILE)",
        ]
    );
    // Two shards on one queue: RPS spreads it over both CPUs.
    let (_, report) = check_json(&fixture("this-vm"), &["--shards", "2", "--only", "irq"]);
    assert_eq!(
        command_of(&report, &format!("{NET}/eth0/queues/rx-0/rps_cpus")),
        format!("echo 3 > {NET}/eth0/queues/rx-0/rps_cpus")
    );
    let notes = report["notes"].to_string();
    assert!(notes.contains("tx-0/xps_cpus is absent"), "{notes}");
}

#[test]
fn the_json_report_names_every_field() {
    let (_, report) = check_json(&fixture("numa2-ixgbe"), &["--only", "numa,limits"]);
    assert_eq!(report["areas"], serde_json::json!(["numa", "limits"]));
    for finding in report["findings"].as_array().unwrap() {
        for field in ["area", "setting", "found", "needed", "why", "command"] {
            assert!(finding[field].is_string(), "{field} in {finding}");
        }
        assert!(
            !finding["steps"].as_array().unwrap().is_empty(),
            "{finding}"
        );
    }
    let numa = &report["findings"][0];
    assert_eq!(numa["area"], "numa");
    assert_eq!(numa["steps"][0]["kind"], "write");
    assert_eq!(
        numa["steps"][1]["argv"],
        serde_json::json!(["systemctl", "daemon-reload"])
    );
    assert!(
        report["target"]["memory"]["memlock_bytes"]
            .as_u64()
            .unwrap()
            > 640 << 20
    );
}

#[test]
fn dry_run_prints_the_writes_and_changes_nothing() {
    let root = copy_of("single-2queue");
    let out = cluecast(&[
        "tune",
        "apply",
        "--dry-run",
        "--only",
        "irq",
        "--root",
        root.path_str(),
    ]);
    let log = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("would run: echo 0 > /proc/irq/41/smp_affinity_list"),
        "{log}"
    );
    assert_eq!(read(&root, "/proc/irq/41/smp_affinity_list"), "0-7\n");
}

#[test]
fn the_scripts_check_apply_and_check_again() {
    let script = |name: &str, args: &[&str]| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/").to_string() + name;
        Command::new(path)
            .args(args)
            .env("CLUECAST_BIN", BIN)
            .output()
            .unwrap()
    };
    let root = copy_of("single-2queue");
    let at = ["--root", root.path_str()];
    for name in ["sysctl.sh", "irq-affinity.sh"] {
        let checked = script(name, &[&["--check"][..], &at].concat());
        assert_eq!(
            checked.status.code(),
            Some(1),
            "{name} --check before apply"
        );
        let dry = script(name, &[&["--dry-run"][..], &at].concat());
        assert_eq!(dry.status.code(), Some(1), "{name} --dry-run");
        let applied = script(name, &at);
        assert_eq!(
            applied.status.code(),
            Some(0),
            "{name}: {}",
            text(&applied.stdout)
        );
        let checked = script(name, &[&["--check"][..], &at].concat());
        assert_eq!(checked.status.code(), Some(0), "{name} --check after apply");
    }
    // Huge pages still lack their boot file: all.sh sees it, then fixes it.
    assert_eq!(
        script("all.sh", &[&["--check"][..], &at].concat())
            .status
            .code(),
        Some(1)
    );
    assert_eq!(script("hugepages.sh", &at).status.code(), Some(0));
    assert_eq!(
        script("all.sh", &[&["--check"][..], &at].concat())
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        script("numa.sh", &[&["--check"][..], &at].concat())
            .status
            .code(),
        Some(0)
    );

    let missing = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/all.sh"))
        .args(["--check"])
        .env("CLUECAST_BIN", "/nonexistent/cluecast")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("no cluecast binary"));
}

/// A usage error or an unreadable host: exit 2 and one clear line.
fn refused(args: &[&str]) -> String {
    let out = cluecast(args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: {}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_flags_hosts_and_files_are_refused_clearly() {
    let single = fixture("single-2queue");
    let err = refused(&["tune", "check", "--root", &single, "--iface", "wlan9"]);
    assert!(
        err.contains("has no network interface wlan9") && err.contains("eth0"),
        "{err}"
    );
    let err = refused(&["tune", "check", "--root", &single, "--iface", "../eth0"]);
    assert!(err.contains("not a network interface name"), "{err}");
    let err = refused(&["tune", "check", "--root", "/nonexistent/host"]);
    assert!(
        err.contains("--root /nonexistent/host: not a directory"),
        "{err}"
    );
    let err = refused(&["tune", "check", "--root", &single, "--only", "disks"]);
    assert!(err.contains("invalid value 'disks'"), "{err}");
    let err = refused(&["tune", "check", "--root", &single, "--shards", "64"]);
    assert!(err.contains("--shards must be 1..=8"), "{err}");
    let err = refused(&["tune", "apply", "--check"]);
    assert!(err.contains("--check"), "{err}");

    let root = copy_of("single-2queue");
    std::fs::remove_file(root.0.join("proc/interrupts")).unwrap();
    let err = refused(&["tune", "check", "--root", root.path_str(), "--only", "irq"]);
    assert!(err.contains("has no /proc/interrupts"), "{err}");
    std::fs::write(root.0.join("proc/irq/41/smp_affinity_list"), "zero\n").unwrap();
    std::fs::write(
        root.0.join("proc/interrupts"),
        read_fixture("single-2queue", "proc/interrupts"),
    )
    .unwrap();
    let err = refused(&["tune", "check", "--root", root.path_str(), "--only", "irq"]);
    assert!(
        err.contains("/proc/irq/41/smp_affinity_list") && err.contains("not a CPU"),
        "{err}"
    );

    // No default route: the NIC must be named for IRQs, not for sysctls.
    let root = copy_of("this-vm");
    std::fs::write(
        root.0.join("proc/net/route"),
        "Iface\tDestination\tGateway\n",
    )
    .unwrap();
    let err = refused(&["tune", "check", "--root", root.path_str(), "--only", "irq"]);
    assert!(err.contains("name one with --iface"), "{err}");
    let out = cluecast(&[
        "tune",
        "check",
        "--root",
        root.path_str(),
        "--only",
        "sysctl",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

fn read_fixture(name: &str, path: &str) -> String {
    std::fs::read_to_string(Path::new(&fixture(name)).join(path)).unwrap()
}

#[test]
fn the_open_file_limit_needed_is_the_least_that_gives_the_connections() {
    use cluecast::sizing::{connection_capacity, nofile_needed};
    for (connections, shards) in [(1, 1), (100, 3), (767, 2), (768, 2), (50_000, 8)] {
        let needed = nofile_needed(connections, shards);
        assert!(connection_capacity(needed, shards) >= connections);
        assert!(connection_capacity(needed - 1, shards) < connections);
    }
}

#[test]
fn completions_and_the_manual_page_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = cluecast(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = text(&out.stdout);
        for name in ["run", "tune", "completions", "man"] {
            assert!(script.contains(name), "{shell} completion lacks {name}");
        }
    }
    let out = cluecast(&["man"]);
    assert!(out.status.success());
    let page = text(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH cluecast"),
        "{page}"
    );
    for name in ["run", "tune", "completions", "token"] {
        assert!(page.contains(name), "the manual page lacks {name}");
    }
    let err = refused(&["completions", "tcsh"]);
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
}
