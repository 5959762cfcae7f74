//! Settings of `cluecast run`: every one is a flag, a CLUECAST_* variable and
//! a key of the TOML file given with --config (flag > variable > file >
//! built-in default), declared once below.

use std::net::SocketAddr;
use std::path::PathBuf;

use cluecast_proto::Limits;

use crate::placement::{HugePages, Steering};
use crate::storage::Durability;

/// The port clients reach the appliance on unless `--listen` says otherwise.
pub const DEFAULT_PORT: u16 = 7400;

/// The handshake timeout's floor under pressure. From the shard's accept, a
/// plain client's HELLO follows at once (it rides behind the handshake's
/// last ACK) and a TLS client's after one round trip (the server's flight,
/// then the client's Finished and HELLO). One second covers that round
/// trip on a poor mobile link (400 ms) and one retransmission of the
/// client's flight (at least 200 ms plus the round trip on Linux).
const HANDSHAKE_TIMEOUT_MIN_MS: u32 = 1_000;
/// TLS handshakes a shard begins per second by default: a full one costs
/// the shard about 115 µs of CPU and a resumed one 100 µs (X25519 either
/// way; `cargo bench --bench tls_handshake`), so a ClientHello
/// flood at this rate takes about a quarter of the shard's core.
const TLS_HANDSHAKES_PER_S: u32 = 2_000;

macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $(#[arg($($arg:tt)*)])? $name:ident : $ty:ty = $default:expr, $env:literal; )*) => {
        #[derive(clap::Args, serde::Deserialize, Default, Debug, Clone)]
        #[serde(deny_unknown_fields)]
        pub struct RunArgs {
            /// TOML file with any of the settings below, keys as the long flag
            /// names with underscores
            #[arg(long, env = "CLUECAST_CONFIG")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $( $(#[doc = $doc])* #[arg(long, env = $env $(, $($arg)*)?)] pub $name: Option<$ty>, )*
        }

        /// The resolved settings of one appliance.
        #[derive(Debug, Clone, serde::Serialize)]
        pub struct Settings { $( $(#[doc = $doc])* pub $name: $ty, )* }

        impl RunArgs {
            /// Fills what flags and variables left unset from `file`.
            fn or(self, file: RunArgs) -> RunArgs {
                RunArgs { config: self.config, $( $name: self.$name.or(file.$name), )* }
            }

            fn or_defaults(self) -> Settings {
                Settings { $( $name: self.$name.unwrap_or_else(|| $default), )* }
            }
        }
    };
}

settings! {
    /// Address to accept clients on (beyond loopback only with --auth-keys, or --insecure-no-auth)
    listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)), "CLUECAST_LISTEN";
    /// Address of the admin listener (HTTP: /metrics, /status, /log-level; no authentication, so keep it on loopback or a private network); `off` disables it
    admin_listen: AdminListen = AdminListen(Some(SocketAddr::from(([127, 0, 0, 1], 7401)))), "CLUECAST_ADMIN_LISTEN";
    /// Key file (TOML, `KEY_ID = "HEX SECRET"` lines, mode 600): every client must present a token signed with one of its keys [default: none, no tokens checked]
    auth_keys: PathBuf = PathBuf::new(), "CLUECAST_AUTH_KEYS";
    /// Certificate chain (PEM) to serve TLS 1.3 with; needs --tls-key [default: none, plain TCP]
    tls_cert: PathBuf = PathBuf::new(), "CLUECAST_TLS_CERT";
    /// Private key (PEM) of --tls-cert
    tls_key: PathBuf = PathBuf::new(), "CLUECAST_TLS_KEY";
    /// Accept clients beyond loopback without tokens: anyone who can connect may read and publish every topic
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    insecure_no_auth: bool = false, "CLUECAST_INSECURE_NO_AUTH";
    /// Shards, one pinned thread and ring each [default: 60% of the CPUs, at least 1]
    // A placeholder: resolve_for_cpus puts 60% of the CPUs in when unset.
    shards: usize = 0, "CLUECAST_SHARDS";
    /// Connections per shard [default: derived from the open-file limit]
    connections_max: usize = 0, "CLUECAST_CONNECTIONS_MAX";
    /// Largest event payload accepted
    payload_bytes_max: u32 = Limits::DEFAULT.payload_bytes_max, "CLUECAST_PAYLOAD_BYTES_MAX";
    /// Longest topic name accepted
    topic_bytes_max: u8 = Limits::DEFAULT.topic_bytes_max, "CLUECAST_TOPIC_BYTES_MAX";
    /// Connections one source address (an IPv4 address, an IPv6 /64; 127.0.0.1 and ::1 not counted) may hold, across all shards
    connections_per_source_max: u32 = 1000, "CLUECAST_CONNECTIONS_PER_SOURCE_MAX";
    /// Connections per shard that have not finished HELLO; a newcomer past it evicts the oldest (preferring sources that hold many) with GOAWAY ServerFull
    handshakes_max: u32 = 1024, "CLUECAST_HANDSHAKES_MAX";
    /// Connections each shard accepts per second (a second's worth at once, the last eighth kept for sources with no handshake open); past it, GOAWAY with a retry hint; 0: no limit
    accepts_per_s: u32 = 20_000, "CLUECAST_ACCEPTS_PER_S";
    /// With TLS, handshakes each shard begins per second (a second's worth at once, the last eighth kept for sources with no handshake open); past it, new connections are closed; 0: no limit
    tls_handshakes_per_s: u32 = TLS_HANDSHAKES_PER_S, "CLUECAST_TLS_HANDSHAKES_PER_S";
    /// Publishes one connection may make per second (a second's worth at once); past it, PUBLISH_ACK Overloaded; 0: no limit
    publish_rate_max: u32 = 0, "CLUECAST_PUBLISH_RATE_MAX";
    /// Subscriptions one connection may hold
    subscriptions_max: u16 = 64, "CLUECAST_SUBSCRIPTIONS_MAX";
    /// Topics the appliance keeps, in all
    topics_max: usize = 10_000, "CLUECAST_TOPICS_MAX";
    /// Events of history kept per topic for resume
    history_events_max: usize = 4096, "CLUECAST_HISTORY_EVENTS_MAX";
    /// Bytes of history kept per topic for resume
    history_bytes_max: usize = 1 << 20, "CLUECAST_HISTORY_BYTES_MAX";
    /// Bytes queued for one connection before it is fed from history instead
    queue_bytes_max: usize = 256 << 10, "CLUECAST_QUEUE_BYTES_MAX";
    /// Frame arena per shard (history and queued frames live here)
    arena_bytes: usize = 64 << 20, "CLUECAST_ARENA_BYTES";
    /// Sends of a frame at least this large go out zero-copy; 0 turns zero-copy off
    zerocopy_bytes_min: usize = 0, "CLUECAST_ZEROCOPY_BYTES_MIN";
    /// Interval at which clients are told to ping when otherwise silent
    heartbeat_ms: u32 = 30_000, "CLUECAST_HEARTBEAT_MS";
    /// A connection silent for this long is closed
    idle_timeout_ms: u32 = 90_000, "CLUECAST_IDLE_TIMEOUT_MS";
    /// A connection must complete HELLO within this time (while at most half of --handshakes-max are in flight)
    handshake_timeout_ms: u32 = 5_000, "CLUECAST_HANDSHAKE_TIMEOUT_MS";
    /// The handshake timeout when --handshakes-max are in flight (at most --handshake-timeout-ms); from half full it shortens towards this
    handshake_timeout_min_ms: u32 = HANDSHAKE_TIMEOUT_MIN_MS, "CLUECAST_HANDSHAKE_TIMEOUT_MIN_MS";
    /// On SIGTERM/SIGINT, time allowed to flush go-away to every client
    drain_timeout_ms: u32 = 5_000, "CLUECAST_DRAIN_TIMEOUT_MS";
    /// Base of the retry hint sent to clients refused for capacity (jittered up to 2x)
    retry_after_ms: u32 = 1_000, "CLUECAST_RETRY_AFTER_MS";
    /// Submission queue entries per ring (the completion queue is 4x)
    ring_entries: u32 = 4096, "CLUECAST_RING_ENTRIES";
    /// Provided receive buffers per shard (a power of two)
    recv_buffers: u16 = 4096, "CLUECAST_RECV_BUFFERS";
    /// Size of each receive buffer
    recv_buffer_bytes: u32 = 4096, "CLUECAST_RECV_BUFFER_BYTES";
    /// Capacity of each shard-to-shard channel
    mesh_bytes: usize = 8 << 20, "CLUECAST_MESH_BYTES";
    /// Pages of each shard's memory (frame arena, receive buffers): auto takes reserved 2 MiB huge pages when enough are free, else transparent huge pages; require refuses to start without the reserved ones; off uses 4 KiB pages
    huge_pages: HugePages = HugePages::Auto, "CLUECAST_HUGE_PAGES";
    /// Which shard a new connection lands on: incoming-cpu or bpf pick the shard whose CPU processed its first packet (SO_INCOMING_CPU, or a BPF program on the listeners), falling back to the next if the kernel refuses; off leaves it to the kernel's hash
    steering: Steering = Steering::IncomingCpu, "CLUECAST_STEERING";
    /// Where the durable log lives (created if missing)
    data_dir: PathBuf = PathBuf::from("data"), "CLUECAST_DATA_DIR";
    /// sync: acked and delivered once the WAL is synced; async: at once, synced within 200 ms; memory: no log
    durability: Durability = Durability::Sync, "CLUECAST_DURABILITY";
    /// Bytes of events per shard waiting for the storage writer (in sync, until their WAL sync); past it, publishes get Overloaded
    storage_queue_bytes: usize = 8 << 20, "CLUECAST_STORAGE_QUEUE_BYTES";
    /// Events each topic keeps on disk (the oldest go first); 0 keeps all
    retention_events_max: u64 = 1_000_000, "CLUECAST_RETENTION_EVENTS_MAX";
    /// Seconds an event is kept on disk; 0 keeps events forever
    retention_age_s: u64 = 7 * 24 * 3600, "CLUECAST_RETENTION_AGE_S";
}

/// Where the admin listener serves: an address, or `off` (or empty) for none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AdminListen(pub Option<SocketAddr>);

impl std::str::FromStr for AdminListen {
    type Err = String;

    fn from_str(text: &str) -> Result<AdminListen, String> {
        match text.trim() {
            "" | "off" => Ok(AdminListen(None)),
            addr => addr
                .parse()
                .map(|a| AdminListen(Some(a)))
                .map_err(|_| format!("{addr:?} is not an address (IP:PORT) or `off`")),
        }
    }
}

impl TryFrom<String> for AdminListen {
    type Error = String;

    fn try_from(text: String) -> Result<AdminListen, String> {
        text.parse()
    }
}

impl From<AdminListen> for String {
    fn from(admin: AdminListen) -> String {
        admin.0.map_or_else(|| "off".to_string(), |a| a.to_string())
    }
}

/// 60% of the CPUs cluecast may use, rounded, at least one: the share
/// the original system found best before lock contention (here: before the
/// load generator and the kernel's network work starve).
fn shards_for_cpus(cpus: usize) -> usize {
    ((cpus as f64 * 0.6).round() as usize).max(1)
}

impl RunArgs {
    /// Merges the TOML file (if any) under the flags and checks the result.
    pub fn resolve(self) -> Result<Settings, String> {
        self.resolve_for_cpus(cluecast_sys::allowed_cpus().map(|c| c.len()).unwrap_or(1))
    }

    /// The settings `run` would resolve on a host where it may use `cpus`
    /// CPUs: `cluecast tune` reads that count from the host it checks.
    pub fn resolve_for_cpus(self, cpus: usize) -> Result<Settings, String> {
        let merged = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
                let file: RunArgs =
                    toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
                self.or(file)
            }
            None => self,
        };
        let shards_given = merged.shards.is_some();
        let mut settings = merged.or_defaults();
        if !shards_given {
            settings.shards = shards_for_cpus(cpus);
        }
        settings.validate(cpus)?;
        Ok(settings)
    }
}

impl Settings {
    /// The settings as a TOML file that `--config` takes back.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("settings are plain values")
    }

    /// The TLS certificate and key, if --tls-cert names them.
    pub fn tls(&self) -> Result<Option<crate::tls::TlsConfig>, String> {
        match (
            self.tls_cert.as_os_str().is_empty(),
            self.tls_key.as_os_str().is_empty(),
        ) {
            (true, true) => Ok(None),
            (false, false) => crate::tls::TlsConfig::load(&self.tls_cert, &self.tls_key).map(Some),
            _ => Err("--tls-cert and --tls-key go together".into()),
        }
    }

    /// The keys tokens are checked with, if --auth-keys names a file.
    pub fn keys(&self) -> Result<Option<crate::auth::Keys>, String> {
        if self.auth_keys.as_os_str().is_empty() {
            return Ok(None);
        }
        crate::auth::Keys::load(&self.auth_keys).map(Some)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            frame_bytes_max: Limits::frame_bytes_for(
                self.payload_bytes_max,
                Limits::DEFAULT.token_bytes_max,
            ),
            payload_bytes_max: self.payload_bytes_max,
            topic_bytes_max: self.topic_bytes_max,
            ..Limits::DEFAULT
        }
    }

    fn validate(&self, cpus: usize) -> Result<(), String> {
        let limits = self.limits();
        limits.validate()?;
        let frame = limits.frame_bytes_max as usize;
        let checks: [(bool, String); 12] = [
            (
                self.connections_per_source_max >= 1 && self.handshakes_max >= 1,
                "--connections-per-source-max and --handshakes-max must be at least 1".into(),
            ),
            (
                self.listen.ip().is_loopback()
                    || !self.auth_keys.as_os_str().is_empty()
                    || self.insecure_no_auth,
                format!(
                    "--listen {} reaches beyond this host, and without --auth-keys anyone who \
                     can connect may read and publish every hunt: give --auth-keys FILE, or \
                     --insecure-no-auth to accept that",
                    self.listen
                ),
            ),
            (
                self.shards >= 1 && self.shards <= cpus,
                format!("--shards must be 1..={cpus} (the CPUs cluecast may use)"),
            ),
            (
                self.topic_bytes_max >= 1 && self.payload_bytes_max <= 4 << 20,
                "--topic-bytes-max must be at least 1 and --payload-bytes-max at most 4 MiB".into(),
            ),
            (
                self.queue_bytes_max >= frame,
                format!("--queue-bytes-max must hold one whole frame ({frame} bytes)"),
            ),
            (
                self.history_bytes_max >= frame && self.history_events_max >= 1,
                format!("history must hold at least one frame ({frame} bytes)"),
            ),
            (
                self.arena_bytes >= 64 * frame && self.arena_bytes <= 1 << 30,
                format!("--arena-bytes must be {}..=1 GiB", 64 * frame),
            ),
            (
                self.recv_buffers.is_power_of_two() && self.recv_buffers <= 32768,
                "--recv-buffers must be a power of two up to 32768".into(),
            ),
            (
                self.recv_buffer_bytes >= 512,
                "--recv-buffer-bytes must be at least 512".into(),
            ),
            (
                self.storage_queue_bytes >= 4 * frame && self.storage_queue_bytes <= 1 << 30,
                format!(
                    "--storage-queue-bytes must be {}..=1 GiB (4 frames)",
                    4 * frame
                ),
            ),
            (
                self.mesh_bytes >= 4 * frame,
                format!("--mesh-bytes must be at least {} (4 frames)", 4 * frame),
            ),
            (
                self.heartbeat_ms > 0
                    && self.idle_timeout_ms > self.heartbeat_ms
                    && self.handshake_timeout_ms > 0
                    && self.handshake_timeout_min_ms > 0
                    && self.topics_max >= self.shards,
                "timeouts must be non-zero, --idle-timeout-ms above --heartbeat-ms, \
                 and --topics-max at least --shards"
                    .into(),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(message),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_fills_what_flags_leave_unset_and_unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("cluecast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "shards = 1\nheartbeat_ms = 20000\n").unwrap();
        let args = RunArgs {
            config: Some(path.clone()),
            heartbeat_ms: Some(10_000),
            ..Default::default()
        };
        let settings = args.resolve().unwrap();
        assert_eq!(settings.heartbeat_ms, 10_000, "the flag wins");
        assert_eq!(settings.shards, 1, "the file fills the rest");
        assert_eq!(settings.listen.port(), 7400, "defaults fill the remainder");

        // What --print-settings shows is a config file that reads back.
        std::fs::write(&path, settings.to_toml()).unwrap();
        let again = RunArgs {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(again.to_toml(), settings.to_toml());

        std::fs::write(&path, "shard = 1\n").unwrap();
        let err = RunArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn inconsistent_settings_are_refused_with_the_flag_named() {
        let err = RunArgs {
            queue_bytes_max: Some(10),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("--queue-bytes-max"), "{err}");
        let err = RunArgs {
            shards: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("--shards"), "{err}");
    }

    #[test]
    fn the_admin_address_may_be_off_and_reads_back_from_toml() {
        assert_eq!("off".parse::<AdminListen>(), Ok(AdminListen(None)));
        assert_eq!("".parse::<AdminListen>(), Ok(AdminListen(None)));
        let addr = "0.0.0.0:9000".parse::<AdminListen>().unwrap();
        assert_eq!(addr.0, Some(SocketAddr::from(([0, 0, 0, 0], 9000))));
        let err = "localhost".parse::<AdminListen>().unwrap_err();
        assert!(err.contains("IP:PORT"), "{err}");
        let settings = RunArgs {
            admin_listen: Some(AdminListen(None)),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert!(settings.to_toml().contains("admin_listen = \"off\""));
        let file: RunArgs = toml::from_str("admin_listen = \"127.0.0.1:0\"").unwrap();
        assert_eq!(
            file.admin_listen,
            Some(AdminListen(Some(SocketAddr::from(([127, 0, 0, 1], 0)))))
        );
    }
}
