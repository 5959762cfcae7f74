//! What a scenario measures, and how each target is found and started: the
//! appliance, `cluecast-bench ceiling`, and the peers (Redis, NATS,
//! Mosquitto), each in the configuration bench/README.md documents. Every
//! target
//! is started the same way (pinned, watched and stopped by server.rs), so
//! the scenarios treat them alike.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cluecast_proto::Limits;

use crate::cli::{Common, Durability};
use crate::fanload::Protocol;
use crate::peers::Peer;
use crate::server::{ScratchDir, Server, ServerCommand};
use crate::{mqtt, nats};

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The appliance (`--cluecast`)
    Cluecast,
    /// `cluecast-bench ceiling`: one send(2) per delivery and nothing
    /// else, the practical ceiling of this host
    Ceiling,
    /// redis-server (skipped if there is none), RESP pub/sub
    Redis,
    /// nats-server (skipped if there is none), core NATS
    Nats,
    /// mosquitto (skipped if there is none), MQTT 3.1.1 at QoS 0
    Mqtt,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Cluecast => "cluecast",
            Target::Ceiling => "ceiling",
            Target::Redis => "redis",
            Target::Nats => "nats",
            Target::Mqtt => "mqtt",
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            Target::Cluecast | Target::Ceiling => Protocol::Cluecast,
            Target::Redis => Protocol::Peer(Peer::Resp),
            Target::Nats => Protocol::Peer(Peer::Nats),
            Target::Mqtt => Protocol::Peer(Peer::Mqtt),
        }
    }

    /// A peer's server program and the Debian package that has it.
    fn peer_program(self) -> Option<(&'static str, &'static str)> {
        match self {
            Target::Cluecast | Target::Ceiling => None,
            Target::Redis => Some(("redis-server", "redis-server")),
            Target::Nats => Some(("nats-server", "nats-server")),
            Target::Mqtt => Some(("mosquitto", "mosquitto")),
        }
    }

    /// Whether the target prints the appliance's `ShardStats` on exit.
    pub fn has_shard_stats(self) -> bool {
        self.peer_program().is_none()
    }
}

/// How to start a target, apart from the program and the port.
#[derive(Clone, Debug)]
pub struct Launch {
    pub target: Target,
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Pin the server (and every thread it starts) to this CPU.
    pub cpu: Option<usize>,
    /// `cluecast run ...` arguments (the appliance only).
    pub appliance_args: Vec<String>,
    /// Largest payload the load sends (the ceiling's limit).
    pub payload_bytes: usize,
    /// The appliance's --durability, unless `appliance_args` name one.
    pub durability: Durability,
}

/// The `--data-dir` word of a command until a run's directory is made
/// (and in descriptions).
pub const FRESH_DATA_DIR: &str = "FRESH_TEMP_DIR";

/// The value of `flag` in `args` (`--flag V` or `--flag=V`; the last one
/// given wins, as with the appliance's parser).
pub fn arg_value(args: &[String], flag: &str) -> Option<String> {
    let mut found = None;
    for (i, a) in args.iter().enumerate() {
        if a == flag {
            found = args.get(i + 1).cloned();
        } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            found = Some(v.to_string());
        }
    }
    found
}

/// The appliance's `cluecast run` arguments: `--shards`, `--listen`,
/// `--payload-bytes-max` where `payload_bytes` is more than the protocol's
/// default allows, then the scenario's `own` flags, and the user's
/// `--server-arg` words last.
pub fn appliance_args(
    common: &Common,
    shards: usize,
    payload_bytes: usize,
    own: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "run".into(),
        "--shards".into(),
        shards.to_string(),
        "--listen".into(),
        common.listen.to_string(),
    ];
    if payload_bytes > Limits::DEFAULT.payload_bytes_max as usize {
        v.extend(["--payload-bytes-max".into(), payload_bytes.to_string()]);
    }
    v.extend(own);
    v.extend(common.server_args.iter().cloned());
    v
}

/// Adds the appliance's storage to its `cluecast run` arguments:
/// `--durability` (unless `args` already name one, as a `--server-arg`
/// may) and, for anything but memory, `--data-dir` [`FRESH_DATA_DIR`]
/// (unless given), which [`fresh_data_dir`] makes real per run.
pub fn appliance_storage(args: &mut Vec<String>, durability: Durability) {
    let effective = match arg_value(args, "--durability") {
        // Unparsable: the appliance says why; a directory hurts nothing.
        Some(v) => Durability::parse(&v).unwrap_or(Durability::Sync),
        None => {
            args.extend(["--durability".into(), durability.name().into()]);
            durability
        }
    };
    if effective != Durability::Memory && arg_value(args, "--data-dir").is_none() {
        args.extend(["--data-dir".into(), FRESH_DATA_DIR.into()]);
    }
}

/// Makes the fresh data directory `cmd` asks for, if any, and puts its
/// path in the command; the caller hands it to the started server
/// ([`Server::own_dir`]), which removes it after the run.
pub fn fresh_data_dir(cmd: &mut ServerCommand) -> Result<Option<ScratchDir>, String> {
    let Some(word) = cmd.args.iter_mut().find(|a| *a == FRESH_DATA_DIR) else {
        return Ok(None);
    };
    let dir = ScratchDir::new("data")?;
    *word = dir.path().display().to_string();
    Ok(Some(dir))
}

/// The program that serves `target`: the appliance binary, this binary
/// (`ceiling`), or the peer's server from PATH. Err says why the target
/// cannot be measured here (the caller skips it).
pub fn program(target: Target, cluecast: &Path) -> Result<PathBuf, String> {
    if let Some((name, package)) = target.peer_program() {
        return find_program(name).ok_or_else(|| {
            format!(
                "{name} is not installed (`apt-get install {package}`; bench/compare.sh installs \
                 it)"
            )
        });
    }
    match target {
        Target::Cluecast => {
            if cluecast.exists() {
                Ok(cluecast.to_path_buf())
            } else {
                Err(format!(
                    "{} not found: build it with `cargo build --release --bin cluecast` or \
                     pass --cluecast",
                    cluecast.display()
                ))
            }
        }
        _ => std::env::current_exe().map_err(|e| format!("locating this binary: {e}")),
    }
}

/// `name` in a directory of PATH, or in the sbin directories Debian puts
/// daemons in (not on an ordinary user's PATH).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Where mosquitto's configuration for a run on `port` is written.
fn mosquitto_config_path(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("cluecast-bench-mosquitto-{port}.conf"))
}

/// Starts `program` for `launch`; peers get a free port on the address
/// first (they print no address of their own).
pub fn start(launch: &Launch, program: &Path, timeout: Duration) -> Result<Server, String> {
    start_with(launch, program, timeout, &[])
}

/// [`start`], with `extra` arguments after the target's own.
fn start_with(
    launch: &Launch,
    program: &Path,
    timeout: Duration,
    extra: &[&str],
) -> Result<Server, String> {
    let port = match launch.target.peer_program() {
        Some(_) => Some(free_port(launch.listen)?),
        None => None,
    };
    let mut cmd = command(launch, program, port);
    cmd.args.extend(extra.iter().map(|a| a.to_string()));
    let Some(port) = port.filter(|_| launch.target == Target::Mqtt) else {
        let scratch = fresh_data_dir(&mut cmd)?;
        let mut server = Server::start(&cmd, timeout)?;
        server.own_dir(scratch);
        return Ok(server);
    };
    let path = mosquitto_config_path(port);
    let config = mqtt::mosquitto_config(SocketAddr::new(launch.listen.ip(), port));
    std::fs::write(&path, config).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let started = Server::start(&cmd, timeout);
    // Read by now (or never to be): nothing is left behind.
    let _ = std::fs::remove_file(&path);
    started
}

/// A peer for a test, on a free loopback port with `extra` arguments; None
/// (after saying so) when it is not installed. Dropping it kills it.
#[cfg(test)]
pub fn start_peer_for_test(target: Target, extra: &[&str]) -> Option<Server> {
    let program = match program(target, Path::new("")) {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return None;
        }
    };
    let launch = Launch {
        target,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        cpu: None,
        appliance_args: Vec::new(),
        payload_bytes: 0,
        durability: Durability::Memory,
    };
    match start_with(&launch, &program, Duration::from_secs(10), extra) {
        Ok(server) => Some(server),
        Err(e) => panic!("starting {}: {e}", target.name()),
    }
}

/// A free port on `listen`'s address (its own if not 0).
fn free_port(listen: SocketAddr) -> Result<u16, String> {
    if listen.port() != 0 {
        return Ok(listen.port());
    }
    std::net::TcpListener::bind(listen)
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// The command that starts `program` for `launch`; `port` is a peer's
/// (None in descriptions).
pub fn command(launch: &Launch, program: &Path, port: Option<u16>) -> ServerCommand {
    let mut cmd = ServerCommand {
        binary: program.to_path_buf(),
        via: Vec::new(),
        cpu: launch.cpu,
        args: Vec::new(),
        ready: None,
        stop_signal: libc::SIGTERM,
    };
    let ip = launch.listen.ip();
    let addr = SocketAddr::new(ip, port.unwrap_or(0));
    let port_word = port.map_or("FREE".into(), |p| p.to_string());
    match launch.target {
        Target::Cluecast => {
            cmd.args = launch.appliance_args.clone();
            appliance_storage(&mut cmd.args, launch.durability);
        }
        Target::Ceiling => {
            let limit = launch
                .payload_bytes
                .max(Limits::DEFAULT.payload_bytes_max as usize);
            cmd.args = vec![
                "ceiling".into(),
                "--listen".into(),
                launch.listen.to_string(),
                "--payload-bytes-max".into(),
                limit.to_string(),
            ];
        }
        Target::Redis => {
            cmd.args = [
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                &ip.to_string(),
                "--port",
                &port_word,
                "--maxclients",
                "20000",
            ]
            .map(String::from)
            .to_vec();
            // redis logs to stdout; server.rs reads stderr. `exec` keeps
            // the process id redis-server's.
            cmd.via = ["sh", "-c", "exec \"$0\" \"$@\" 1>&2"]
                .map(String::from)
                .to_vec();
            cmd.ready = Some(("Ready to accept connections".into(), addr));
        }
        // Logs to stderr.
        Target::Nats => {
            cmd.args = nats::nats_args(addr);
            if port.is_none() {
                cmd.args[3] = port_word;
            }
            cmd.ready = Some((nats::NATS_READY.into(), addr));
            // It exits 1 on SIGTERM, 0 on SIGINT.
            cmd.stop_signal = libc::SIGINT;
        }
        Target::Mqtt => {
            let path = match port {
                Some(p) => mosquitto_config_path(p).display().to_string(),
                None => "FILE".into(),
            };
            cmd.args = vec!["-c".into(), path];
            cmd.ready = Some((mqtt::MOSQUITTO_READY.into(), addr));
        }
    }
    cmd
}

/// The target's command as a report shows it ([`describe`]), or only its
/// name where its program is not found.
pub fn shown(launch: &Launch, cluecast: &Path) -> String {
    match program(launch.target, cluecast) {
        Ok(p) => describe(launch, &p),
        Err(_) => launch.target.name().to_string(),
    }
}

/// `program args...` as the report shows it.
pub fn describe(launch: &Launch, program: &Path) -> String {
    let cmd = command(launch, program, None);
    let name = cmd.binary.file_name().unwrap_or_default().to_string_lossy();
    let args: Vec<&str> = cmd
        .args
        .iter()
        .map(|a| if a.is_empty() { "''" } else { a.as_str() })
        .collect();
    format!("{name} {}", args.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(target: Target) -> Launch {
        Launch {
            target,
            listen: "127.0.0.1:0".parse().unwrap(),
            cpu: Some(0),
            appliance_args: vec!["run".into(), "--shards".into(), "1".into()],
            payload_bytes: 100_000,
            durability: Durability::Memory,
        }
    }

    #[test]
    fn ceiling_runs_this_binary_with_the_payload_limit() {
        let cmd = command(
            &launch(Target::Ceiling),
            Path::new("/x/cluecast-bench"),
            None,
        );
        assert_eq!(cmd.binary, Path::new("/x/cluecast-bench"));
        assert_eq!(
            cmd.args.join(" "),
            "ceiling --listen 127.0.0.1:0 --payload-bytes-max 100000"
        );
        assert_eq!(cmd.cpu, Some(0));
    }

    #[test]
    fn redis_runs_on_the_given_port_without_persistence() {
        let l = launch(Target::Redis);
        let cmd = command(&l, Path::new("/usr/bin/redis-server"), Some(7777));
        assert_eq!(
            cmd.args.join(" "),
            "--save  --appendonly no --bind 127.0.0.1 --port 7777 --maxclients 20000"
        );
        assert_eq!(cmd.via[0], "sh");
        assert_eq!(
            cmd.ready,
            Some((
                "Ready to accept connections".to_string(),
                "127.0.0.1:7777".parse().unwrap()
            ))
        );
        assert_eq!(Target::Redis.protocol(), Protocol::Peer(Peer::Resp));
        assert!(describe(&l, Path::new("/usr/bin/redis-server"))
            .starts_with("redis-server --save '' --appendonly no"));
    }

    #[test]
    fn nats_and_mosquitto_listen_on_loopback_with_documented_settings() {
        let cmd = command(
            &launch(Target::Nats),
            Path::new("/usr/sbin/nats-server"),
            Some(4333),
        );
        assert_eq!(cmd.args.join(" "), "-a 127.0.0.1 -p 4333");
        assert_eq!(cmd.ready.unwrap().1, "127.0.0.1:4333".parse().unwrap());
        let cmd = command(
            &launch(Target::Mqtt),
            Path::new("/usr/sbin/mosquitto"),
            Some(1999),
        );
        assert_eq!(cmd.args[0], "-c");
        assert!(cmd.args[1].ends_with("cluecast-bench-mosquitto-1999.conf"));
        let config = mqtt::mosquitto_config("127.0.0.1:1999".parse().unwrap());
        assert!(config.contains("listener 1999 127.0.0.1"));
        assert!(config.contains("max_queued_messages 100000"));
        assert_eq!(Target::Mqtt.protocol(), Protocol::Peer(Peer::Mqtt));
    }

    #[test]
    fn the_appliance_gets_its_own_arguments() {
        let mut l = launch(Target::Cluecast);
        let cmd = command(&l, Path::new("/x/cluecast"), None);
        assert_eq!(cmd.args.join(" "), "run --shards 1 --durability memory");
        l.appliance_args.push("--durability=sync".into());
        let cmd = command(&l, Path::new("/x/cluecast"), None);
        assert_eq!(
            cmd.args.join(" "),
            "run --shards 1 --durability=sync --data-dir FRESH_TEMP_DIR"
        );
        assert!(Target::Cluecast.has_shard_stats() && !Target::Redis.has_shard_stats());
    }

    #[test]
    fn durability_other_than_memory_gets_a_fresh_data_dir() {
        let mut l = launch(Target::Cluecast);
        l.durability = Durability::Async;
        let mut cmd = command(&l, Path::new("/x/cluecast"), None);
        assert_eq!(
            cmd.args.join(" "),
            "run --shards 1 --durability async --data-dir FRESH_TEMP_DIR"
        );
        let dir = fresh_data_dir(&mut cmd).unwrap().expect("a directory");
        assert!(dir.path().is_dir());
        assert_eq!(cmd.args[6], dir.path().display().to_string());
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("x"), b"12345").unwrap();
        assert_eq!(dir.size_bytes(), 5);
        drop(dir);
        assert!(!path.exists(), "removed with its contents");
        // A --server-arg names either or both: it wins.
        l.appliance_args
            .extend(["--durability".into(), "memory".into()]);
        let mut cmd = command(&l, Path::new("/x/cluecast"), None);
        assert_eq!(cmd.args.join(" "), "run --shards 1 --durability memory");
        assert!(fresh_data_dir(&mut cmd).unwrap().is_none());
        l.appliance_args = vec!["run".into(), "--data-dir=/srv/d".into()];
        l.durability = Durability::Sync;
        let cmd = command(&l, Path::new("/x/cluecast"), None);
        assert_eq!(
            cmd.args.join(" "),
            "run --data-dir=/srv/d --durability sync"
        );
        assert_eq!(
            arg_value(&cmd.args, "--data-dir").as_deref(),
            Some("/srv/d")
        );
        assert_eq!(
            arg_value(&cmd.args, "--durability").as_deref(),
            Some("sync")
        );
        assert_eq!(arg_value(&cmd.args, "--shards"), None);
    }

    #[test]
    fn a_missing_program_is_a_reason_to_skip() {
        let why = program(Target::Cluecast, Path::new("/nonexistent/cluecast")).unwrap_err();
        assert!(why.contains("cargo build --release"), "{why}");
    }
}
