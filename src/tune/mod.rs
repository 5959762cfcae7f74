//! `cluecast tune check|apply`: how far a host is from what the configured
//! appliance needs (huge pages, interrupt placement, NUMA binding, sysctls,
//! limits, io_uring), each difference with the command that fixes it, and
//! the fixes applied. The host is read and written under a root directory
//! (`Host`), so every check runs against recorded host trees in tests.
//!
//! The numbers come from the settings `run` would use (the same flags,
//! variables and file) and from the engine's own functions: `memory_plan`
//! for huge pages and locked memory, `shard_cpu` for where shards run.

mod host;
mod hugepages;
mod irq;
mod limits;
mod numa;
mod sysctl;

use std::path::PathBuf;
use std::process::ExitCode;

pub use host::Host;

use crate::config::{RunArgs, Settings};
use crate::sizing::MemoryPlan;

/// One part of the host `tune` looks at (`--only`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Area {
    /// Reserved 2 MiB pages for the frame arena, and a hugetlbfs mount
    Hugepages,
    /// The NIC's queue interrupts on the shards' CPUs, irqbalance, RPS/XPS
    Irq,
    /// The appliance's CPUs and memory on the NIC's NUMA node
    Numa,
    /// Kernel settings for many long-lived connections (tuning/sysctl.d)
    Sysctl,
    /// Open-file and locked-memory limits
    Limits,
    /// Whether io_uring can run the engine's rings
    IoUring,
}

const AREAS: [Area; 6] = [
    Area::Hugepages,
    Area::Irq,
    Area::Numa,
    Area::Sysctl,
    Area::Limits,
    Area::IoUring,
];

#[derive(clap::Subcommand, Debug)]
pub enum TuneCommand {
    /// Report every host setting that differs from what the configuration
    /// needs, each with the command that fixes it (exit 0: none differ, 1:
    /// some differ, 2: usage error or unreadable host)
    Check {
        #[command(flatten)]
        args: TuneArgs,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Apply the fixes `check` reports, then check again (exit 0: the host
    /// now matches, 1: something is left, 2: usage error)
    Apply {
        #[command(flatten)]
        args: TuneArgs,
        /// Print what would be written and run, change nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct TuneArgs {
    /// The host's files are read and written under this directory (a
    /// recorded /proc, /sys and /etc); commands run only when it is /
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// The NIC clients arrive on [default: the interface of the default route]
    #[arg(long)]
    pub iface: Option<String>,
    /// Only these areas (comma-separated or repeated) [default: all]
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Area>,
    /// The settings `run` takes: the numbers checked are the ones it would use
    #[command(flatten)]
    pub run: Box<RunArgs>,
}

/// One host setting that differs from what the appliance needs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub area: Area,
    /// What it is, usually the file that holds it.
    pub setting: String,
    pub found: String,
    pub needed: String,
    pub why: String,
    /// The fix as one shell command line.
    pub command: String,
    pub steps: Vec<Step>,
}

impl Finding {
    fn new(area: Area, setting: String, found: String, needed: String, why: String) -> Finding {
        Finding {
            area,
            setting,
            found,
            needed,
            why,
            command: String::new(),
            steps: Vec::new(),
        }
    }

    fn fix(mut self, steps: Vec<Step>) -> Finding {
        assert!(!steps.is_empty(), "every finding says how to fix it");
        self.command = steps
            .iter()
            .map(Step::shell)
            .collect::<Vec<_>>()
            .join(" && ");
        self.steps = steps;
        self
    }
}

/// One action of a fix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// Write a file (under the root).
    Write { path: String, contents: String },
    /// Run a command; `apply` runs it only when the root is /.
    Run { argv: Vec<String> },
    /// A command that takes effect only where the operator runs it (the
    /// shell or unit that starts cluecast); `apply` cannot do it.
    Manual { command: String },
}

impl Step {
    fn write(path: &str, contents: impl Into<String>) -> Step {
        Step::Write {
            path: path.to_string(),
            contents: contents.into(),
        }
    }

    fn run(argv: &[&str]) -> Step {
        Step::Run {
            argv: argv.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// The step as a shell command line.
    pub fn shell(&self) -> String {
        match self {
            Step::Write { path, contents } => match contents.trim_end().contains('\n') {
                false => format!("echo {} > {path}", quote(contents.trim_end())),
                true => {
                    let dir = path.rsplit_once('/').map_or("/", |(dir, _)| dir);
                    let lines: Vec<String> = contents.lines().map(quote).collect();
                    format!(
                        "mkdir -p {dir} && printf '%s\\n' {} > {path}",
                        lines.join(" ")
                    )
                }
            },
            Step::Run { argv } => argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "),
            Step::Manual { command } => command.clone(),
        }
    }
}

/// Single-quotes `text` for a shell when it needs it.
fn quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c);
    match !text.is_empty() && text.chars().all(plain) {
        true => text.to_string(),
        false => format!("'{}'", text.replace('\'', r"'\''")),
    }
}

/// A finding when `path` does not hold exactly `contents` (a file `tune`
/// writes whole), fixed by writing it, then the steps `then`.
fn whole_file(
    host: &Host,
    area: Area,
    path: &str,
    contents: String,
    why: String,
    then: Vec<Step>,
) -> Result<Option<Finding>, String> {
    let found = match host.read_if_exists(path)? {
        Some(text) if text == contents => return Ok(None),
        Some(_) => "other contents",
        None => "absent",
    };
    let settings: Vec<&str> = contents
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    let mut steps = vec![Step::write(path, contents.clone())];
    steps.extend(then);
    Ok(Some(
        Finding::new(
            area,
            path.to_string(),
            found.into(),
            settings.join("; "),
            why,
        )
        .fix(steps),
    ))
}

/// The NIC clients arrive on, and how it was chosen.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Nic {
    pub name: String,
    pub chosen_by: &'static str,
}

impl Nic {
    /// `--iface`, else the interface of the default route; None (with a
    /// note) when there is neither.
    fn choose(
        host: &Host,
        iface: Option<&str>,
        notes: &mut Vec<String>,
    ) -> Result<Option<Nic>, String> {
        let (name, chosen_by) = match iface {
            Some(name) => (name.to_string(), "--iface"),
            None => match default_route_iface(host)? {
                Some(name) => (name, "the default route"),
                None => {
                    notes.push(
                        "no IPv4 default route in /proc/net/route and no --iface: no NIC \
                         chosen"
                            .into(),
                    );
                    return Ok(None);
                }
            },
        };
        // IFNAMSIZ is 16 with the terminating NUL.
        if name.is_empty() || name.len() > 15 || name.contains('/') || name.starts_with('.') {
            return Err(format!("--iface {name:?} is not a network interface name"));
        }
        if !host.exists(&format!("/sys/class/net/{name}")) {
            let known = host.list("/sys/class/net")?.join(", ");
            return Err(format!(
                "{} has no network interface {name} (/sys/class/net has: {known})",
                host.describe()
            ));
        }
        Ok(Some(Nic { name, chosen_by }))
    }

    /// An attribute of the NIC's device: on the device itself, or on its
    /// parent (a virtio NIC's PCI function holds its interrupts and node).
    fn device_attr(&self, host: &Host, attr: &str) -> Option<String> {
        let device = format!("/sys/class/net/{}/device", self.name);
        [format!("{device}/{attr}"), format!("{device}/../{attr}")]
            .into_iter()
            .find(|path| host.exists(path))
    }
}

/// The interface of the lowest-metric IPv4 default route that is up.
fn default_route_iface(host: &Host) -> Result<Option<String>, String> {
    const RTF_UP: u32 = 0x1;
    let table = host.read("/proc/net/route")?;
    let mut best: Option<(u32, String)> = None;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            continue;
        }
        let flags = u32::from_str_radix(fields[3], 16).unwrap_or(0);
        let metric: u32 = fields[6].parse().unwrap_or(u32::MAX);
        let default = fields[1] == "00000000" && fields[7] == "00000000";
        if default && flags & RTF_UP != 0 && best.as_ref().is_none_or(|(m, _)| metric < *m) {
            best = Some((metric, fields[0].to_string()));
        }
    }
    Ok(best.map(|(_, name)| name))
}

/// What the host must fit: the settings `run` would use there, where its
/// shards would run, and what it maps.
#[derive(Debug, serde::Serialize)]
pub struct Target {
    #[serde(skip)]
    pub settings: Settings,
    pub nic: Option<Nic>,
    /// The NUMA node cluecast is bound to (the NIC's), on a multi-node host.
    pub numa_node: Option<usize>,
    /// The CPUs cluecast may use: the bound node's, else every online one.
    pub cpus: String,
    pub shards: usize,
    /// Shard i's CPU is the i-th.
    pub shard_cpus: Vec<usize>,
    pub memory: MemoryPlan,
}

impl Target {
    fn read(
        host: &Host,
        iface: Option<&str>,
        run: RunArgs,
        notes: &mut Vec<String>,
    ) -> Result<Target, String> {
        let nic = Nic::choose(host, iface, notes)?;
        let numa_node = numa::binding(host, nic.as_ref(), notes)?;
        let cpus_file = match numa_node {
            Some(node) => format!("/sys/devices/system/node/node{node}/cpulist"),
            None => "/sys/devices/system/cpu/online".to_string(),
        };
        let cpus = host::parse_cpulist(&host.read(&cpus_file)?)
            .map_err(|e| format!("{cpus_file}: {e}"))?;
        if cpus.is_empty() {
            return Err(format!("{cpus_file} names no CPU"));
        }
        let settings = run.resolve_for_cpus(cpus.len())?;
        let shard_cpus = (0..settings.shards)
            .map(|id| crate::sizing::shard_cpu(&cpus, id))
            .collect();
        Ok(Target {
            memory: crate::sizing::memory_plan(&settings),
            shards: settings.shards,
            settings,
            nic,
            numa_node,
            cpus: host::format_cpulist(&cpus),
            shard_cpus,
        })
    }

    fn nic(&self) -> Result<&Nic, String> {
        self.nic.as_ref().ok_or_else(|| {
            "no NIC to place interrupts for: there is no default route; name one with --iface"
                .to_string()
        })
    }
}

/// What `check` found.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub root: PathBuf,
    pub areas: Vec<Area>,
    pub target: Target,
    pub findings: Vec<Finding>,
    /// What was looked at and needed nothing, or could not be looked at.
    pub notes: Vec<String>,
}

pub fn check(args: &TuneArgs) -> Result<Report, String> {
    let host = Host::new(&args.root)?;
    let mut notes = Vec::new();
    let target = Target::read(
        &host,
        args.iface.as_deref(),
        (*args.run).clone(),
        &mut notes,
    )?;
    let areas: Vec<Area> = match args.only.is_empty() {
        true => AREAS.to_vec(),
        false => AREAS
            .into_iter()
            .filter(|a| args.only.contains(a))
            .collect(),
    };
    let mut findings = Vec::new();
    for &area in &areas {
        let found = match area {
            Area::Hugepages => hugepages::check(&host, &target, &mut notes)?,
            Area::Irq => irq::check(&host, &target, &mut notes)?,
            Area::Numa => numa::check(&host, &target)?,
            Area::Sysctl => sysctl::check(&host, &mut notes)?,
            Area::Limits => limits::check_limits(&host, &target, &mut notes)?,
            Area::IoUring => limits::check_io_uring(&host, &mut notes),
        };
        assert!(found.iter().all(|f| f.area == area && !f.steps.is_empty()));
        findings.extend(found);
    }
    Ok(Report {
        root: args.root.clone(),
        areas,
        target,
        findings,
        notes,
    })
}

impl Report {
    pub fn text(&self) -> String {
        let t = &self.target;
        let mut out = String::new();
        let nic = match &t.nic {
            Some(nic) => format!("NIC {} (chosen by {})", nic.name, nic.chosen_by),
            None => "no NIC".to_string(),
        };
        let node = match t.numa_node {
            Some(node) => format!(", bound to NUMA node {node}"),
            None => String::new(),
        };
        out.push_str(&format!(
            "host {}: {nic}; CPUs {}{node}; {} shard(s) on CPUs {}\n",
            self.root.display(),
            t.cpus,
            t.shards,
            host::format_cpulist(&t.shard_cpus),
        ));
        out.push_str(&format!(
            "shard memory {} x {} MiB (frame arena and receive buffers; {} huge pages of 2 MiB); \
             locked memory needed at most {} MiB\n",
            t.shards,
            t.memory.shard_bytes.div_ceil(1 << 20),
            t.memory.huge_pages,
            t.memory.memlock_bytes.div_ceil(1 << 20),
        ));
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        for f in &self.findings {
            out.push_str(&format!(
                "\n[{}] {}\n  found:  {}\n  needed: {}\n  why:    {}\n  fix:    {}\n",
                area_name(f.area),
                f.setting,
                f.found,
                f.needed,
                f.why,
                f.command
            ));
        }
        out.push_str(&match self.findings.len() {
            0 => "\nthe host matches what the configuration needs\n".to_string(),
            n => format!("\n{n} setting(s) differ: `cluecast tune apply` fixes them\n"),
        });
        out
    }
}

fn area_name(area: Area) -> String {
    clap::ValueEnum::to_possible_value(&area)
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// What `apply` did: one line per step, and the writes and commands that
/// failed.
pub struct Applied {
    pub done: Vec<String>,
    pub failed: Vec<String>,
}

/// Performs every fix of `report`, or with `dry_run` lists them. Commands
/// run only on the live host (root /); manual steps are listed for the
/// operator.
pub fn apply(report: &Report, dry_run: bool) -> Result<Applied, String> {
    let host = Host::new(&report.root)?;
    let mut applied = Applied {
        done: Vec::new(),
        failed: Vec::new(),
    };
    for step in report.findings.iter().flat_map(|f| &f.steps) {
        let line = step.shell();
        if dry_run {
            applied.done.push(format!("would run: {line}"));
            continue;
        }
        let outcome = match step {
            Step::Write { path, contents } => host
                .write(path, contents)
                .map(|()| format!("wrote {path}: {}", summary(contents))),
            Step::Run { argv } if host.is_live() => {
                match std::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .status()
                {
                    Ok(status) if status.success() => Ok(format!("ran: {line}")),
                    Ok(status) => Err(format!("{line}: {status}")),
                    Err(e) => Err(format!("{line}: {e}")),
                }
            }
            Step::Run { .. } => Ok(format!(
                "not run (the root is {}, not /): {line}",
                report.root.display()
            )),
            Step::Manual { command } => Ok(format!("for you, where cluecast starts: {command}")),
        };
        match outcome {
            Ok(done) => applied.done.push(done),
            Err(failed) => applied.failed.push(failed),
        }
    }
    Ok(applied)
}

fn summary(contents: &str) -> String {
    match contents.trim_end().lines().count() {
        0 | 1 => contents.trim_end().to_string(),
        n => format!("{n} lines"),
    }
}

/// Runs a `tune` subcommand; the exit status says whether the host matches.
pub fn main(command: TuneCommand) -> ExitCode {
    let outcome = match command {
        TuneCommand::Check { args, json } => check(&args).map(|report| {
            match json {
                true => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("the report is plain data")
                ),
                false => print!("{}", report.text()),
            }
            report.findings.is_empty()
        }),
        TuneCommand::Apply { args, dry_run } => apply_command(&args, dry_run),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("cluecast tune: {message}");
            ExitCode::from(2)
        }
    }
}

fn apply_command(args: &TuneArgs, dry_run: bool) -> Result<bool, String> {
    let before = check(args)?;
    if before.findings.is_empty() {
        println!("the host matches what the configuration needs: nothing to change");
        return Ok(true);
    }
    let applied = apply(&before, dry_run)?;
    for line in &applied.done {
        println!("{line}");
    }
    for line in &applied.failed {
        eprintln!("cluecast tune: failed: {line}");
    }
    if dry_run {
        return Ok(false);
    }
    let after = check(args)?;
    if !after.findings.is_empty() {
        println!("\nstill differs:");
        for f in &after.findings {
            println!(
                "  [{}] {}: {} (needed: {})",
                area_name(f.area),
                f.setting,
                f.found,
                f.needed
            );
        }
    }
    Ok(after.findings.is_empty() && applied.failed.is_empty())
}
