//! The flags `fanout` and `zerocopy` share, and what both do with them.
//!
//! Both subcommands flatten [`Common`] into their own `Args`; where one
//! words a flag's help for its own case (a run vs a pair of runs), it says
//! so with `#[command(mut_arg(..))]`, the flag itself stays defined here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use crate::child::Role;
use crate::procfs::{Core, Cores};

#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Which part of the measurement this process plays
    #[arg(long, value_enum, default_value_t = Role::Driver)]
    pub role: Role,
    /// Share of a measured core taken by anything else (other processes,
    /// hypervisor steal) above which a run is measured again
    #[arg(long, default_value_t = 0.10)]
    pub foreign_max: f64,
    /// Extra attempts per disturbed run (the least disturbed is kept)
    #[arg(long, default_value_t = 2)]
    pub retries: usize,
    /// Limit for each TCP connect and handshake answer, ms
    #[arg(long, default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
    /// CPU the client process pins itself to
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// CPU the server is pinned to (with every shard thread)
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// Pin nothing
    #[arg(long)]
    pub no_pin: bool,

    // ---- driver ----
    /// The appliance binary
    #[arg(long, default_value = "/var/tmp/cluecast-target/release/cluecast")]
    pub cluecast: PathBuf,
    /// Address the server listens on (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Extra argument for `cluecast run` (repeat for several)
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// The appliance's --durability (cluecast target). Default memory:
    /// Redis, NATS and Mosquitto run without persistence here, so the
    /// comparison does too. Other than memory, each run gets a fresh
    /// temporary --data-dir, removed after it. A --server-arg --durability
    /// overrides this
    #[arg(long, value_enum)]
    pub durability: Option<Durability>,

    /// Measure a server already running at this address instead of
    /// starting one (it is not stopped; the client role gets it too)
    #[arg(long)]
    pub server: Option<SocketAddr>,
    /// With --server: the process to read the server's CPU and memory from
    #[arg(long, requires = "server")]
    pub server_pid: Option<u32>,
}

/// The appliance's `--durability` (docs/STORAGE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// No log: history in memory only (what the peers do here)
    Memory,
    /// Acked and delivered at once, written behind
    Async,
    /// Acked (flag durable) and delivered after the WAL sync that covers it
    Sync,
}

impl Durability {
    pub const ALL: [Durability; 3] = [Durability::Memory, Durability::Async, Durability::Sync];

    pub fn name(self) -> &'static str {
        match self {
            Durability::Memory => "memory",
            Durability::Async => "async",
            Durability::Sync => "sync",
        }
    }

    pub fn parse(s: &str) -> Option<Durability> {
        Durability::ALL.into_iter().find(|d| d.name() == s)
    }
}

impl Common {
    /// The durability asked for, or the scenario's default.
    pub fn durability_or(&self, default: Durability) -> Durability {
        self.durability.unwrap_or(default)
    }

    /// The start of a client process (`--role NAME`): the server to
    /// measure against, this thread pinned, and a fresh nonce for topic
    /// names (nobody else's events, sequences from 1).
    pub fn client_start(&self, role: &str) -> Result<(SocketAddr, u64), String> {
        let server = self
            .server
            .ok_or_else(|| format!("--role {role} needs --server ADDR"))?;
        if !self.no_pin {
            cluecast_sys::pin_current_thread(self.client_cpu).map_err(|e| e.to_string())?;
        }
        let nonce = cluecast_sys::random_u64().map_err(|e| e.to_string())? & 0xffff_ffff;
        Ok((server, nonce))
    }

    /// For a tool whose driver always starts its server: --server is not
    /// for it.
    pub fn starts_its_own_server(&self, tool: &str) -> Result<(), String> {
        match self.server {
            Some(_) => Err(format!(
                "{tool} starts its own server per run; --server (an already running one) is \
                 for fanout, hunt, spike and storm"
            )),
            None => Ok(()),
        }
    }

    /// This process's part of a tool whose driver always starts its
    /// server: the driver (`drive`, --server refused) or the client side
    /// (`clients`).
    pub fn own_server_part(
        &self,
        tool: &str,
        drive: impl FnOnce() -> Result<(), String>,
        clients: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), String> {
        match self.role {
            Role::Driver => {
                self.starts_its_own_server(tool)?;
                drive()
            }
            Role::Subscribers => clients(),
        }
    }

    /// The driver's checks before it starts: the appliance binary exists.
    pub fn check_cluecast(&self) -> Result<(), String> {
        if self.cluecast.exists() {
            return Ok(());
        }
        Err(format!(
            "{} not found: build it with `cargo build --release --bin cluecast` or pass --cluecast",
            self.cluecast.display()
        ))
    }

    /// The CPUs to sample; the client's only when it runs on this kernel.
    pub fn cores(&self, clients_here: bool) -> Cores {
        Cores {
            server: (!self.no_pin).then(|| Core::new(self.server_cpu)),
            client: (!self.no_pin && clients_here).then(|| Core::new(self.client_cpu)),
        }
    }

    /// The CPU the server is pinned to, if any.
    pub fn server_pin(&self) -> Option<usize> {
        (!self.no_pin).then_some(self.server_cpu)
    }

    /// The flags of these the client process needs (after its own).
    pub fn pass_to_client(&self, cmd: &mut Command) {
        cmd.args(["--connect-timeout-ms", &self.connect_timeout_ms.to_string()])
            .args(["--client-cpu", &self.client_cpu.to_string()]);
        if self.no_pin {
            cmd.arg("--no-pin");
        }
    }

    /// `{sep}pinned to CPU {cpu}` for the report; empty with --no-pin.
    pub fn pinned(&self, sep: &str, cpu: usize) -> String {
        if self.no_pin {
            String::new()
        } else {
            format!("{sep}pinned to CPU {cpu}")
        }
    }
}

/// Flags (a scenario's `Args`, or any group of them) as parsed from the
/// command line `name words..`, defaults for the rest: the tests' parser.
#[cfg(test)]
pub(crate) fn parse_flags<A: clap::Args>(name: &'static str, words: &[&str]) -> A {
    let matches = A::augment_args(clap::Command::new(name))
        .get_matches_from(std::iter::once(name).chain(words.iter().copied()));
    A::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}
