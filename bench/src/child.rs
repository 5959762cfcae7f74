//! The client process of a measurement and the driver's view of it.
//!
//! The load runs in a separate process (pinned to its own CPU) so its CPU
//! is measured apart from the driver's, and so the same code can run in
//! another network namespace or on another host. It talks to the driver on
//! stdout, one line each: `window-start` and `window-end` when its measured
//! window opens and closes (the driver samples the server's CPU then), and
//! finally `result key=value ... note=free text` or `error text`. Progress
//! goes to stderr.

use std::fmt::Display;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::procfs::{self, CoreUse, Cores};
use crate::server::Server;

/// Which part of a measurement a process plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Start servers and client processes, and report.
    Driver,
    /// Be the client side (publishers and subscribers) of one measurement
    /// against --server.
    #[value(alias = "clients")]
    Subscribers,
}

/// Moments the driver wants to know about, to sample server CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    WindowStart,
    WindowEnd,
}

impl Mark {
    fn line(self) -> &'static str {
        match self {
            Mark::WindowStart => "window-start",
            Mark::WindowEnd => "window-end",
        }
    }
}

/// Writes one line to the driver, at once.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Tells the driver of a mark.
pub fn say_mark(mark: Mark) {
    say(mark.line());
}

/// Tells the driver the run failed.
pub fn say_error(e: &str) {
    say(&format!("error {}", e.replace('\n', " ")));
}

/// The `result key=value ... note=text` line of a client process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResultLine {
    fields: Vec<(String, String)>,
    pub note: String,
}

impl ResultLine {
    pub fn new(note: &str) -> ResultLine {
        ResultLine {
            fields: Vec::new(),
            note: note.replace('\n', " "),
        }
    }

    /// Adds a field; values must not contain spaces.
    pub fn put(&mut self, key: &str, value: impl Display) -> &mut Self {
        self.fields.push((key.to_string(), value.to_string()));
        self
    }

    pub fn to_line(&self) -> String {
        let mut s = String::from("result");
        for (k, v) in &self.fields {
            s.push_str(&format!(" {k}={v}"));
        }
        s.push_str(" note=");
        s.push_str(&self.note);
        s
    }

    /// Inverse of [`ResultLine::to_line`].
    pub fn parse(line: &str) -> Result<ResultLine, String> {
        let body = line
            .strip_prefix("result")
            .ok_or_else(|| format!("not a result line: {line:?}"))?;
        let body = format!("{body} ");
        let (fields, note) = body.split_once(" note=").unwrap_or((&body, ""));
        let mut r = ResultLine::new(note.trim_end());
        for field in fields.split_whitespace() {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| format!("bad field {field:?} in {line:?}"))?;
            r.put(k, v);
        }
        Ok(r)
    }

    /// The value of `key`; the type's default when absent (an older
    /// tool), an error when present but unreadable.
    pub fn get<T: FromStr + Default>(&self, key: &str) -> Result<T, String> {
        match self.fields.iter().find(|(k, _)| k == key) {
            Some((_, v)) => v.parse().map_err(|_| format!("bad value in {key}={v}")),
            None => Ok(T::default()),
        }
    }
}

/// Declares the result struct of a client process: its fields (numbers and
/// flags) plus a free-text `note`, with `to_line` / `from_result` derived
/// from the one list so the two ends cannot drift apart.
macro_rules! result_struct {
    ($(#[$meta:meta])* pub struct $name:ident {
        $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)*
    }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// The first problem seen, empty when none.
            pub note: String,
        }

        impl $name {
            /// The `result ...` line for the driver.
            pub fn to_line(&self) -> String {
                let mut r = $crate::child::ResultLine::new(&self.note);
                $(r.put(stringify!($field), &self.$field);)*
                r.to_line()
            }

            /// Inverse of `to_line`, from the parsed line.
            pub fn from_result(r: &$crate::child::ResultLine) -> Result<$name, String> {
                Ok($name {
                    $($field: r.get(stringify!($field))?,)*
                    note: r.note.clone(),
                })
            }
        }
    };
}
pub(crate) use result_struct;

/// What the driver samples at each mark of the client process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub at: Option<Instant>,
    pub server_cpu: f64,
    pub server_thp_kib: Option<u64>,
    pub server_rss_bytes: Option<u64>,
    pub server_core: Option<CoreUse>,
    pub client_core: Option<CoreUse>,
}

impl Sample {
    pub fn take(server: &Server, cores: Cores) -> Sample {
        Sample {
            at: Some(Instant::now()),
            server_cpu: procfs::process_cpu_secs(server.pid()).unwrap_or(f64::NAN),
            server_thp_kib: procfs::anon_huge_kib(server.pid()),
            server_rss_bytes: procfs::rss_bytes(server.pid()),
            server_core: CoreUse::sample(cores.server),
            client_core: CoreUse::sample(cores.client),
        }
    }
}

/// Server-side figures of a measured window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub wall_secs: f64,
    pub server_cpu_secs: f64,
    /// At the end of the window.
    pub server_thp_kib: Option<u64>,
    pub server_rss_bytes: Option<u64>,
    pub server_core: Option<CoreUse>,
    pub client_core: Option<CoreUse>,
}

/// What came of one client process.
#[derive(Debug, Default)]
pub struct Followed {
    /// Its result line, parsed.
    pub result: Option<ResultLine>,
    /// The window between its marks.
    pub window: Option<Window>,
    pub problems: Vec<String>,
}

/// Starts the client process `cmd` and follows it for at most `budget`,
/// sampling the server at its marks; makes sure it is gone on return.
pub fn follow(mut cmd: Command, budget: Duration, server: &mut Server, cores: Cores) -> Followed {
    let mut f = Followed::default();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            f.problems.push(format!(
                "cannot start {}: {e}",
                cmd.get_program().to_string_lossy()
            ));
            return f;
        }
    };
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        f.problems.push("no stdout pipe from the clients".into());
        return f;
    };
    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + budget;
    let (mut start, mut end) = (Sample::default(), Sample::default());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            f.problems.push(format!(
                "the client process gave no result within {budget:?}"
            ));
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) if line == Mark::WindowStart.line() => start = Sample::take(server, cores),
            Ok(line) if line == Mark::WindowEnd.line() => end = Sample::take(server, cores),
            Ok(line) if line.starts_with("result ") => match ResultLine::parse(&line) {
                Ok(r) => f.result = Some(r),
                Err(e) => f.problems.push(e),
            },
            Ok(line) if line.starts_with("error ") => {
                f.problems.push(format!("clients: {}", &line[6..]))
            }
            Ok(line) => f.problems.push(format!("clients printed {line:?}")),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(how) = server.exited() {
                    f.problems
                        .push(format!("the server exited {how} during the run"));
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Bounded wait for the client process, then make sure it is gone.
    let exit_deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if !status.success() {
                    f.problems
                        .push(format!("the client process exited {status}"));
                }
                break;
            }
            Ok(None) if Instant::now() < exit_deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                f.problems
                    .push("the client process had to be killed".into());
                break;
            }
        }
    }
    // The pipe is closed now that the process is gone: the reader ends.
    let _ = reader.join();
    match (start.at, end.at) {
        (Some(t0), Some(t1)) => {
            let since = |a: Option<CoreUse>, b: Option<CoreUse>| Some(b?.since(a?));
            f.window = Some(Window {
                wall_secs: t1.duration_since(t0).as_secs_f64(),
                server_cpu_secs: end.server_cpu - start.server_cpu,
                server_thp_kib: end.server_thp_kib,
                server_rss_bytes: end.server_rss_bytes,
                server_core: since(start.server_core, end.server_core),
                client_core: since(start.client_core, end.client_core),
            })
        }
        _ if f.result.is_some() => f
            .problems
            .push("the client process did not mark its window".into()),
        _ => {}
    }
    f
}

/// Command words from a string ("ip netns exec NS" -> three words).
pub fn words(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// `program` started through `via` (e.g. `ip netns exec NS`), if any.
pub fn command_via(via: &[String], program: &std::path::Path) -> Command {
    match via.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Several client processes of one run. Each one's stdout lines arrive on
/// one channel, tagged with its index (None at the end of its stdout).
/// Closing their stdins lets them go; any still running when the group is
/// dropped are killed.
pub struct Group {
    pub children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    pub lines: Receiver<(usize, Option<String>)>,
    readers: Vec<JoinHandle<()>>,
}

impl Group {
    /// Starts every command with piped stdin and stdout. A command that
    /// cannot start is left out and named in the returned problems.
    pub fn start(commands: impl IntoIterator<Item = Command>) -> (Group, Vec<String>) {
        let (tx, lines) = mpsc::channel();
        let mut group = Group {
            children: Vec::new(),
            stdins: Vec::new(),
            lines,
            readers: Vec::new(),
        };
        let mut problems = Vec::new();
        for mut cmd in commands {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!("cannot start a client process: {e}"));
                    continue;
                }
            };
            let k = group.children.len();
            let Some(stdout) = child.stdout.take() else {
                let _ = child.kill();
                let _ = child.wait();
                problems.push(format!("no stdout pipe from client process {k}"));
                continue;
            };
            let tx = tx.clone();
            group.readers.push(thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((k, Some(line))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((k, None));
            }));
            group.stdins.push(child.stdin.take());
            group.children.push(child);
        }
        (group, problems)
    }

    /// Process `k`'s stdin, unless closed.
    pub fn stdin(&mut self, k: usize) -> Option<&mut ChildStdin> {
        self.stdins[k].as_mut()
    }

    /// Closes every stdin, so the processes let go of their connections and
    /// exit; waits up to `within` for all, kills the rest. Each process that
    /// did not exit cleanly is a problem.
    pub fn release(&mut self, within: Duration, problems: &mut Vec<String>) {
        for stdin in &mut self.stdins {
            drop(stdin.take());
        }
        let deadline = Instant::now() + within;
        for (k, c) in self.children.iter_mut().enumerate() {
            let status = loop {
                match c.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(20))
                    }
                    _ => break None,
                }
            };
            match status {
                Some(s) if s.success() => {}
                Some(s) => problems.push(format!("client process {k} exited {s}")),
                None => {
                    let _ = c.kill();
                    let _ = c.wait();
                    problems.push(format!("client process {k} had to be killed"));
                }
            }
        }
        // Every process is gone, so every pipe is closed: the readers end.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for c in &mut self.children {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_round_trip() {
        let mut r = ResultLine::new("subscriber 3: GOAWAY SlowConsumer\nsecond line");
        r.put("published", 10)
            .put("window_secs", 5.25)
            .put("drained", false);
        let line = r.to_line();
        assert_eq!(
            line,
            "result published=10 window_secs=5.25 drained=false \
             note=subscriber 3: GOAWAY SlowConsumer second line"
        );
        let back = ResultLine::parse(&line).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.get::<u64>("published"), Ok(10));
        assert_eq!(back.get::<f64>("window_secs"), Ok(5.25));
        assert_eq!(back.get::<bool>("drained"), Ok(false));
        assert_eq!(back.get::<u64>("absent"), Ok(0), "absent: default");
        assert!(back.get::<u64>("window_secs").is_err(), "unreadable");
        assert!(ResultLine::parse("garbage").is_err());
        let empty = ResultLine::parse("result a=1 note=").unwrap();
        assert_eq!(empty.note, "");
        assert_eq!(empty.get::<u64>("a"), Ok(1));
    }
}
