//! The command line: `run` starts the appliance; `token` mints client
//! tokens; `cert` makes a development CA and server certificate; `pub`,
//! `sub`, `path` and `topic close` are small clients built on the reference
//! client library, for operators and scripts; `tune` checks and tunes the
//! host; `status` and `log-level` ask a running appliance's admin listener;
//! `completions` and `man` describe the command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use cluecast_proto::client::{
    tls_trusting, Client, ClientConfig, ClientError, ConnectRetry, Delivery, Start,
};
use cluecast_proto::{Position, SubscribeStatus};

use crate::auth::{parse_duration_s, parse_ttl, Claims, Keys};
use crate::config::RunArgs;
use crate::log::Level;

#[derive(Parser, Debug)]
#[command(
    name = "cluecast",
    version = crate::build_info::VERSION,
    about = "Real-time event appliance: sequenced, replayable fan-out"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the appliance (runs until SIGTERM or SIGINT, then drains)
    Run {
        #[command(flatten)]
        args: Box<RunArgs>,
        /// Most detailed log level printed
        #[arg(long, env = "CLUECAST_LOG_LEVEL", value_enum, default_value = "info")]
        log_level: Level,
        /// How log lines are written: text, or one JSON object per line
        #[arg(long, env = "CLUECAST_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: crate::log::Format,
        /// Print the settings in effect (defaults included) as TOML and exit
        #[arg(long)]
        print_settings: bool,
    },
    /// Publish one event and print the sequence it was given
    ///
    /// A full or restarting server is waited out (see --retry-for); once
    /// connected, the event is sent once: if the connection drops before
    /// the answer, the command fails, and the event may or may not have
    /// been published.
    Pub {
        #[command(flatten)]
        server: Server,
        topic: String,
        message: String,
    },
    /// Print a topic's events as `SEQ<TAB>PAYLOAD` lines; reconnects and
    /// resumes by itself when the server restarts
    ///
    /// A full or restarting server is waited out at the first connect too
    /// (see --retry-for); after that, reconnecting goes on without a limit.
    Sub {
        #[command(flatten)]
        server: Server,
        topic: String,
        /// Start at this sequence (as far back as the server retains)
        #[arg(long)]
        from: Option<u64>,
        /// Exit after this many events
        #[arg(long)]
        count: Option<u64>,
    },
    /// Mint a client token from a key file and print it
    Token {
        /// The key file the appliance checks tokens with (`run --auth-keys`)
        #[arg(long, env = "CLUECAST_AUTH_KEYS")]
        auth_keys: PathBuf,
        /// The key that signs [default: the file's first]
        #[arg(long)]
        key_id: Option<String>,
        /// The player (or backend) the token is for
        #[arg(long)]
        subject: String,
        /// Topics it may subscribe to: a name, a prefix ending in `.*`, or `*` (repeatable)
        #[arg(long)]
        subscribe: Vec<String>,
        /// Topics it may publish to and close, patterns as for --subscribe (repeatable)
        #[arg(long)]
        publish: Vec<String>,
        /// It may read every player's path (without: only its subject's)
        #[arg(long)]
        paths: bool,
        /// How long it is valid: seconds, or with a unit (90s, 15m, 1h, 7d)
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Make a development CA and a server certificate signed by it, for TLS
    ///
    /// Writes DIR/ca.pem (the CA, for clients' --tls-ca), DIR/server.pem and
    /// DIR/server-key.pem (for `run --tls-cert/--tls-key`), and prints how
    /// long they are valid and the commands that use them.
    Cert {
        /// The directory to write into (created if needed)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A DNS name or IP address the server's certificate is valid for,
        /// as clients write it in --server (repeatable)
        #[arg(long = "name", value_name = "NAME", default_values = ["localhost", "127.0.0.1", "::1"])]
        names: Vec<crate::cert::Name>,
        /// Replace the files of an earlier run in DIR
        #[arg(long)]
        force: bool,
        /// Also write the CA's private key (DIR/ca-key.pem, mode 0600), so it
        /// can sign more later; without it, the CA signs nothing else
        #[arg(long)]
        keep_ca_key: bool,
    },
    /// Manage topics
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Print a player's stored path (the positions its phone sent)
    Path {
        #[command(flatten)]
        server: Server,
        /// The player: the client_id its phone sends in HELLO
        player: String,
        /// Only positions taken at or after this time (ms since 1970-01-01 UTC)
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[arg(long, value_enum, default_value = "csv")]
        format: PathFormat,
    },
    /// Check the host against what the settings need (huge pages, IRQs,
    /// NUMA, sysctls, limits, io_uring) and fix it
    Tune {
        #[command(subcommand)]
        command: crate::tune::TuneCommand,
    },
    /// Print a shell completion script
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff)
    Man,
    /// One screen about a running appliance (from its admin listener):
    /// connections, rates over one second, latencies, refusals
    Status {
        #[command(flatten)]
        admin: Admin,
        /// Print the summary as JSON (the listener's /status and the rates)
        #[arg(long)]
        json: bool,
    },
    /// Change a running appliance's log level (through its admin listener)
    LogLevel {
        #[command(flatten)]
        admin: Admin,
        #[arg(value_enum)]
        level: Level,
    },
}

/// Where a running appliance's admin listener is (`run --admin-listen`).
#[derive(clap::Args, Debug)]
struct Admin {
    #[arg(long, env = "CLUECAST_ADMIN", default_value = "127.0.0.1:7401")]
    admin: String,
}

#[derive(Subcommand, Debug)]
enum TopicCommand {
    /// End a topic (a hunt): delete its whole history, in memory and on
    /// disk, and print its last sequence. Subscribers are told; events
    /// published to the name later start a new history (a new epoch).
    Close {
        #[command(flatten)]
        server: Server,
        topic: String,
    },
}

/// Where a client command connects, and with what token.
#[derive(clap::Args, Debug)]
struct Server {
    #[arg(long, env = "CLUECAST_SERVER", default_value = "127.0.0.1:7400")]
    server: String,
    /// Token sent in HELLO (`cluecast token` mints one)
    #[arg(long, env = "CLUECAST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Speak TLS, trusting the certificates in this PEM file (the server's,
    /// or its CA); the server's name is checked against --server's host
    #[arg(long, env = "CLUECAST_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// How long to keep trying to connect while the server is full,
    /// restarting or unreachable (one line on stderr per retry): seconds,
    /// or with a unit (90s, 15m); 0: no retry, the first failure is final
    #[arg(
        long = "retry-for",
        env = "CLUECAST_RETRY_FOR",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = parse_retry_for_ms
    )]
    retry_for_ms: u64,
}

fn parse_retry_for_ms(text: &str) -> Result<u64, String> {
    parse_duration_s(text)?
        .checked_mul(1000)
        .ok_or_else(|| format!("{text:?}: out of range"))
}

impl Server {
    fn config(&self) -> Result<ClientConfig, String> {
        let mut config = ClientConfig::new(&self.server);
        config.token = self.token.clone().unwrap_or_default().into_bytes();
        config.tls = match &self.tls_ca {
            Some(ca) => Some(tls_trusting(ca).map_err(|e| format!("--tls-ca {e}"))?),
            None => None,
        };
        Ok(config)
    }

    /// Connects, waiting out refusals and failures for --retry-for; the
    /// error says when it gave up.
    fn connect(&self, reconnect: bool) -> Result<Client, String> {
        let mut config = self.config()?;
        config.reconnect = reconnect;
        config.connect_retry_ms = self.retry_for_ms;
        Client::connect_observed(config, report_retry).map_err(|e| format!("{}: {e}", self.server))
    }

    /// A connection for one request: once it is up, a drop is reported,
    /// not reconnected (the request may or may not have taken effect).
    fn connect_once(&self) -> Result<Client, String> {
        self.connect(false)
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PathFormat {
    /// `client_ts_ms,lat,lon,accuracy_m`, one line per position
    Csv,
    /// One GeoJSON Feature: a LineString, with times and accuracies alongside
    Geojson,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            args,
            log_level,
            log_format,
            print_settings,
        } => {
            crate::log::set_level(log_level);
            crate::log::set_format(log_format);
            args.resolve().and_then(|settings| {
                if print_settings {
                    // A TOML comment: the output stays a valid --config file.
                    println!("# allocator: {}", crate::build_info::ALLOCATOR);
                    print!("{}", settings.to_toml());
                    Ok(())
                } else {
                    crate::engine::run(&settings)
                }
            })
        }
        Command::Pub {
            server,
            topic,
            message,
        } => publish(&server, &topic, message.as_bytes()),
        Command::Sub {
            server,
            topic,
            from,
            count,
        } => subscribe(&server, &topic, from, count),
        Command::Token {
            auth_keys,
            key_id,
            subject,
            subscribe,
            publish,
            paths,
            ttl,
        } => mint_token(
            &auth_keys,
            key_id.as_deref(),
            subject,
            subscribe,
            publish,
            paths,
            &ttl,
        ),
        Command::Cert {
            out,
            names,
            force,
            keep_ca_key,
        } => return crate::cert::main(&out, &names, force, keep_ca_key),
        Command::Topic {
            command: TopicCommand::Close { server, topic },
        } => close_topic(&server, &topic),
        Command::Path {
            server,
            player,
            since,
            format,
        } => print_path(&server, &player, since, format),
        Command::Tune { command } => return crate::tune::main(command),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "cluecast",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(|e| format!("writing the manual page: {e}")),
        Command::Status { admin, json } => crate::admin::status_command(&admin.admin, json),
        Command::LogLevel { admin, level } => crate::admin::log_level_command(&admin.admin, level),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cluecast: {message}");
            ExitCode::FAILURE
        }
    }
}

fn publish(server: &Server, topic: &str, payload: &[u8]) -> Result<(), String> {
    let mut client = server.connect_once()?;
    let ack = client.publish(topic, payload).map_err(|e| e.to_string())?;
    println!("{}", ack.seq);
    client.close();
    Ok(())
}

fn mint_token(
    auth_keys: &Path,
    key_id: Option<&str>,
    subject: String,
    subscribe: Vec<String>,
    publish: Vec<String>,
    paths: bool,
    ttl: &str,
) -> Result<(), String> {
    let keys = Keys::load(auth_keys)?;
    let now_s = cluecast_sys::realtime_ns() / 1_000_000_000;
    let claims = Claims {
        sub: subject,
        exp: now_s + parse_ttl(ttl)?,
        nbf: Some(now_s),
        subscribe,
        publish,
        paths,
    };
    println!("{}", keys.mint(key_id, &claims)?);
    Ok(())
}

fn close_topic(server: &Server, topic: &str) -> Result<(), String> {
    let mut client = server.connect_once()?;
    let last_seq = client.close_topic(topic).map_err(|e| e.to_string())?;
    println!("{last_seq}");
    client.close();
    Ok(())
}

fn subscribe(
    server: &Server,
    topic: &str,
    from: Option<u64>,
    count: Option<u64>,
) -> Result<(), String> {
    let mut client = server.connect(true)?;
    let start = from.map_or(Start::Live, Start::From);
    let subscribed = client.subscribe(topic, start).map_err(|e| e.to_string())?;
    report_gap(&subscribed.status, subscribed.oldest_seq);
    let mut stdout = std::io::stdout().lock();
    let mut received = 0u64;
    while count.is_none_or(|n| received < n) {
        match client.next().map_err(|e| e.to_string())? {
            Delivery::Event(event) => {
                let text = String::from_utf8_lossy(&event.payload).replace('\n', "\\n");
                writeln!(stdout, "{}\t{text}", event.seq).map_err(|e| e.to_string())?;
                stdout.flush().map_err(|e| e.to_string())?;
                received += 1;
            }
            Delivery::Subscribed(s) => report_gap(&s.status, s.oldest_seq),
            Delivery::Reconnected { reason, attempts } => {
                eprintln!("cluecast: reconnected after {attempts} attempt(s) ({reason})");
            }
            Delivery::Closed { last_seq, .. } => {
                eprintln!("cluecast: the topic was closed after sequence {last_seq}");
                break;
            }
        }
    }
    client.close();
    Ok(())
}

/// Reads the whole path (asking again where a long answer stopped) and
/// prints it.
fn print_path(server: &Server, player: &str, since: u64, format: PathFormat) -> Result<(), String> {
    let mut client = server.connect_once()?;
    let mut positions = Vec::new();
    let mut from = since;
    loop {
        let answer = client.path(player, from).map_err(|e| e.to_string())?;
        if answer.corrupt {
            eprintln!("cluecast: part of the path is damaged on the server and is missing here");
        }
        positions.extend_from_slice(&answer.positions);
        match positions.last() {
            Some(last) if answer.truncated => from = last.client_ts_ms + 1,
            _ => break,
        }
    }
    client.close();
    let degrees = |e7: i32| format!("{:.7}", e7 as f64 / 1e7);
    let mut out = String::new();
    match format {
        PathFormat::Csv => {
            out.push_str("client_ts_ms,lat,lon,accuracy_m\n");
            for p in &positions {
                out.push_str(&format!(
                    "{},{},{},{:.2}\n",
                    p.client_ts_ms,
                    degrees(p.lat_e7),
                    degrees(p.lon_e7),
                    p.accuracy_cm as f64 / 100.0
                ));
            }
        }
        PathFormat::Geojson => {
            let list = |f: &dyn Fn(&Position) -> String| {
                positions.iter().map(f).collect::<Vec<_>>().join(",")
            };
            let player: String = player
                .chars()
                .map(|c| match c {
                    '"' | '\\' => format!("\\{c}"),
                    c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32),
                    c => c.to_string(),
                })
                .collect();
            out.push_str(&format!(
                "{{\"type\":\"Feature\",\"geometry\":{{\"type\":\"LineString\",\
                 \"coordinates\":[{}]}},\"properties\":{{\"player\":\"{player}\",\
                 \"client_ts_ms\":[{}],\"accuracy_cm\":[{}]}}}}\n",
                list(&|p| format!("[{},{}]", degrees(p.lon_e7), degrees(p.lat_e7))),
                list(&|p| p.client_ts_ms.to_string()),
                list(&|p| p.accuracy_cm.to_string()),
            ));
        }
    }
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .map_err(|e| e.to_string())
}

/// One line per wait before another connection attempt.
fn report_retry(retry: &ConnectRetry<'_>) {
    // A GOAWAY's own retry hint is the delay: not said twice.
    let why = match retry.error {
        ClientError::GoAway(g) => g.to_string(),
        other => other.to_string(),
    };
    eprintln!(
        "cluecast: {why}; retrying in {} ms (attempt {})",
        retry.delay.as_millis(),
        retry.attempt
    );
}

fn report_gap(status: &SubscribeStatus, oldest_seq: u64) {
    match status {
        SubscribeStatus::Ok => {}
        SubscribeStatus::NotRecovered => {
            eprintln!("cluecast: some events are no longer retained; continuing from {oldest_seq}")
        }
        SubscribeStatus::EpochChanged => eprintln!(
            "cluecast: the topic's history was reset; continuing from {oldest_seq} of the new epoch"
        ),
        // Reported as an error by `subscribe`; after a reconnect, the end.
        SubscribeStatus::NotAuthorized => {
            eprintln!("cluecast: the token no longer allows this subscription")
        }
    }
}
