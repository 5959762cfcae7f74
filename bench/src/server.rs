//! Starting, watching and stopping the appliance under test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Lines of server stderr kept for the report; the rest is counted only.
const LOG_LINES_KEPT: usize = 2000;

/// Time for a server the scenarios start to print `listening on`.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start the server.
#[derive(Clone, Debug)]
pub struct ServerCommand {
    /// The `cluecast` binary.
    pub binary: PathBuf,
    /// Words put before the binary, e.g. `ip netns exec NS`. They must end
    /// in an exec of the binary (not a fork): the process id is what the CPU
    /// accounting and SIGTERM go to.
    pub via: Vec<String>,
    /// Pin the process (and so every thread it starts) to this CPU.
    pub cpu: Option<usize>,
    /// Arguments after `cluecast`, starting with `run`.
    pub args: Vec<String>,
    /// For a server that prints no `listening on ADDR` line: a line
    /// containing this text means it listens on this address.
    pub ready: Option<(String, SocketAddr)>,
    /// The signal after which it must exit 0: SIGTERM, or SIGINT for a
    /// server that exits 1 on SIGTERM (nats-server).
    pub stop_signal: libc::c_int,
}

/// A running server. Dropping it without [`Server::stop`] kills it.
pub struct Server {
    child: Option<Child>,
    pid: u32,
    /// The process name the binary runs as (its file name, cut to the
    /// kernel's 15 bytes).
    comm: String,
    addr: SocketAddr,
    stop_signal: libc::c_int,
    lines: Receiver<Option<String>>,
    reader: Option<JoinHandle<()>>,
    /// Stderr lines seen so far (the first LOG_LINES_KEPT).
    log: Vec<String>,
    stderr_closed: bool,
    /// Its data directory, made for this run: removed once the process
    /// is gone (fields drop after [`Drop::drop`] has killed it).
    scratch: Option<ScratchDir>,
}

/// A directory made for one run (the appliance's `--data-dir`), removed
/// with everything in it when dropped.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A fresh, empty directory under the temporary directory ($TMPDIR or
    /// /tmp), named after `what`, this process and the time.
    pub fn new(what: &str) -> Result<ScratchDir, String> {
        let path = std::env::temp_dir().join(format!(
            "cluecast-bench-{what}-{}-{}",
            std::process::id(),
            cluecast_sys::realtime_ns()
        ));
        std::fs::create_dir(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(ScratchDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Bytes of the files under it, now.
    pub fn size_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.0)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the server ended.
#[derive(Clone, Debug)]
pub struct Stopped {
    /// None if it exited with status 0 after SIGTERM; else what went wrong.
    pub problem: Option<String>,
    /// The counters of its `shard N stopped: ShardStats { .. }` lines,
    /// summed over shards.
    pub stats: Vec<(String, u64)>,
    /// Its stderr lines at `warn` or `error` level.
    pub complaints: Vec<String>,
}

impl Stopped {
    /// What the report says of how it ended: its problem, then up to five
    /// of its complaints.
    pub fn problems(&self) -> Vec<String> {
        let problem = self.problem.iter().map(|p| format!("server {p}"));
        let said = (self.complaints.iter().take(5)).map(|line| format!("server said: {line}"));
        problem.chain(said).collect()
    }

    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

impl Server {
    /// Starts the server and waits (up to `timeout`) for its `listening on`
    /// line.
    pub fn start(cmd: &ServerCommand, timeout: Duration) -> Result<Server, String> {
        let mut command = match cmd.via.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&cmd.binary);
                c
            }
            None => Command::new(&cmd.binary),
        };
        // The appliance's admin listener defaults to a fixed port, which a
        // second server (or one already on the host) would find taken; any
        // free port serves. Older builds ignore the variable.
        if std::env::var_os("CLUECAST_ADMIN_LISTEN").is_none() {
            command.env("CLUECAST_ADMIN_LISTEN", "127.0.0.1:0");
        }
        command
            .args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(cpu) = cmd.cpu {
            if cpu >= libc::CPU_SETSIZE as usize {
                return Err(format!("--server-cpu {cpu} is out of range"));
            }
            // Built before fork: between fork and exec only async-signal-safe
            // calls are allowed, so no allocation in the closure.
            // SAFETY: cpu_set_t is plain data and `cpu` is in range.
            let set = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                set
            };
            // SAFETY: sched_setaffinity is a plain system call.
            unsafe {
                command.pre_exec(move || {
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cmd.binary.display()))?;
        let pid = child.id();
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("no stderr pipe from the server".to_string());
        };
        // A thread drains stderr for the whole run so the server never
        // blocks on a full pipe; None marks the end of the stream.
        let (tx, rx) = mpsc::channel();
        let reader = thread::Builder::new()
            .name("server-stderr".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(Some(line)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(None);
            })
            .map_err(|e| format!("spawning the stderr reader: {e}"))?;
        let mut server = Server {
            child: Some(child),
            pid,
            comm: comm_of(&cmd.binary),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            stop_signal: cmd.stop_signal,
            lines: rx,
            reader: Some(reader),
            log: Vec::new(),
            stderr_closed: false,
            scratch: None,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match server.lines.recv_timeout(left) {
                Ok(Some(line)) => {
                    let addr = match &cmd.ready {
                        Some((text, addr)) => line.contains(text.as_str()).then_some(*addr),
                        None => parse_listening(&line),
                    };
                    server.keep(line);
                    if let Some(addr) = addr {
                        server.addr = addr;
                        return Ok(server);
                    }
                }
                Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                    server.stderr_closed = true;
                    return Err(format!(
                        "the server exited before listening:\n{}",
                        server.log.join("\n")
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "the server printed no `listening on` line within {timeout:?}:\n{}",
                        server.log.join("\n")
                    ));
                }
            }
        }
    }

    /// A server someone else started (`--server ADDR`): measured at
    /// `addr`, its CPU and memory read from `pid` when given, never
    /// signalled or stopped.
    pub fn attach(addr: SocketAddr, pid: Option<u32>) -> Server {
        let (_, lines) = mpsc::channel();
        let pid = pid.unwrap_or(0);
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        Server {
            child: None,
            pid,
            comm: comm.trim().to_string(),
            addr,
            stop_signal: libc::SIGTERM,
            lines,
            reader: None,
            log: Vec::new(),
            stderr_closed: true,
            scratch: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Makes `dir` this server's: removed once the server is stopped.
    pub fn own_dir(&mut self, dir: Option<ScratchDir>) {
        self.scratch = dir;
    }

    /// Bytes in the data directory made for it; None without one.
    pub fn data_dir_bytes(&self) -> Option<u64> {
        self.scratch.as_ref().map(ScratchDir::size_bytes)
    }

    /// The server a run measures, from its start: with its
    /// [`Server::identity_problem`] (if any) added to `problems`; or, where
    /// it did not start, None and why added to `problems`.
    pub fn for_run(started: Result<Server, String>, problems: &mut Vec<String>) -> Option<Server> {
        match started {
            Ok(server) => {
                problems.extend(server.identity_problem());
                Some(server)
            }
            Err(e) => {
                problems.push(e);
                None
            }
        }
    }

    /// Why the process id might not be the server's, which the CPU and
    /// memory figures assume (a `via` command that forks would break that).
    pub fn identity_problem(&self) -> Option<String> {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        (comm != self.comm).then(|| {
            format!(
                "process {} is {comm:?}, not {}: server CPU figures are not the server's",
                self.pid, self.comm
            )
        })
    }

    /// The address it listens on, as it printed it.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn keep(&mut self, line: String) {
        if self.log.len() < LOG_LINES_KEPT {
            self.log.push(line);
        }
    }

    /// Takes the stderr lines that arrived so far, without waiting.
    fn collect_lines(&mut self) {
        while let Ok(item) = self.lines.try_recv() {
            match item {
                Some(line) => self.keep(line),
                None => self.stderr_closed = true,
            }
        }
    }

    /// Whether the process has exited (it should not, before `stop`).
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(describe_status(status)),
            _ => None,
        }
    }

    /// The stop signal, then waits up to `timeout` for the exit (SIGKILL
    /// after that), and reads what the server said on its way out.
    pub fn stop(mut self, timeout: Duration) -> Stopped {
        let mut problem = None;
        let sig = signal_name(self.stop_signal);
        if let Some(mut child) = self.child.take() {
            if let Ok(Some(status)) = child.try_wait() {
                // Gone before it was asked to go: a crash, or killed.
                problem = Some(format!("exited {} before {sig}", describe_status(status)));
            } else {
                // SAFETY: kill on our own child's pid, which is not reaped yet.
                unsafe {
                    libc::kill(self.pid as libc::pid_t, self.stop_signal);
                }
            }
            let deadline = Instant::now() + timeout;
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => break None,
                    Err(e) => {
                        problem = Some(format!("waiting for the server: {e}"));
                        break None;
                    }
                }
                self.collect_lines();
            };
            match status {
                _ if problem.is_some() => {}
                Some(s) if s.success() => {}
                Some(s) => problem = Some(format!("exited {} after {sig}", describe_status(s))),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    problem
                        .get_or_insert(format!("did not exit within {timeout:?} of {sig}; killed"));
                }
            }
        }
        // The pipe closes with the process; wait briefly for the last lines.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.stderr_closed {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Some(line)) => self.keep(line),
                Ok(None) | Err(RecvTimeoutError::Disconnected) => self.stderr_closed = true,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        if self.stderr_closed {
            if let Some(reader) = self.reader.take() {
                let _ = reader.join();
            }
        }
        let mut stats: Vec<(String, u64)> = Vec::new();
        for fields in self.log.iter().filter_map(|l| parse_shard_stats(l)) {
            for (k, v) in fields {
                match stats.iter_mut().find(|(name, _)| *name == k) {
                    Some((_, total)) => *total += v,
                    None => stats.push((k, v)),
                }
            }
        }
        let complaints = self
            .log
            .iter()
            .filter(|l| l.starts_with("warn ") || l.starts_with("error "))
            .cloned()
            .collect();
        Stopped {
            problem,
            stats,
            complaints,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `/proc/PID/comm` of a process running `binary`.
fn comm_of(binary: &std::path::Path) -> String {
    let name = binary.file_name().unwrap_or_default().to_string_lossy();
    name.chars()
        .scan(0, |len, c| {
            *len += c.len_utf8();
            (*len <= 15).then_some(c)
        })
        .collect()
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "the stop signal",
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("with status {code}"),
        (None, Some(signal)) => format!("on signal {signal}"),
        _ => format!("{status}"),
    }
}

/// The address of a `... listening on ADDR ...` log line.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on ")?;
    let word = rest.split_whitespace().next()?;
    word.trim_end_matches([',', ';']).parse().ok()
}

/// The counters of a `shard N stopped: ShardStats { name: 1, ... }` line.
pub fn parse_shard_stats(line: &str) -> Option<Vec<(String, u64)>> {
    let (_, rest) = line.split_once("ShardStats {")?;
    let body = rest.rsplit_once('}')?.0;
    body.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            let (k, v) = f.split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line() {
        let line = "info cluecast: listening on 127.0.0.1:35803 with 1 shard(s), epoch ac85";
        assert_eq!(
            parse_listening(line),
            Some("127.0.0.1:35803".parse().unwrap())
        );
        assert_eq!(
            parse_listening("info cluecast: listening on [::1]:7400 with 2 shard(s)"),
            Some("[::1]:7400".parse().unwrap())
        );
        assert_eq!(parse_listening("info cluecast: stopped"), None);
        assert_eq!(parse_listening("listening on nowhere"), None);
    }

    #[test]
    fn comm_is_the_file_name_cut_to_15_bytes() {
        assert_eq!(comm_of(std::path::Path::new("/a/cluecast")), "cluecast");
        assert_eq!(
            comm_of(std::path::Path::new("/usr/bin/a-very-long-server-name")),
            "a-very-long-ser"
        );
    }

    #[test]
    fn shard_stats_line() {
        let line = "info cluecast: shard 0 stopped: ShardStats { accepted: 33, sends: 7, \
                    zero_copy_sends: 5, slow_consumer_goaways: 0 }";
        let stats = parse_shard_stats(line).unwrap();
        assert_eq!(
            stats,
            vec![
                ("accepted".to_string(), 33),
                ("sends".to_string(), 7),
                ("zero_copy_sends".to_string(), 5),
                ("slow_consumer_goaways".to_string(), 0),
            ]
        );
        assert_eq!(parse_shard_stats("info cluecast: stopped"), None);
        assert_eq!(parse_shard_stats("ShardStats { a: x }"), None);
    }
}
