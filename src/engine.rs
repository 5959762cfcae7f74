//! Start-up and shutdown of the appliance: limits, the durable log and its
//! threads, each shard's memory, one listener and one pinned shard thread
//! per core, the channels between them, and the signal that drains them
//! all; telling the service manager (systemd) when it serves, that it
//! lives, and when it stops.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluecast_sys::notify::Notifier;
use cluecast_sys::{spsc, Span};

use crate::admission::{Rate, SourceCounts};
use crate::arena::Arena;
use crate::auth::Keys;
use crate::config::Settings;
use crate::heartbeat::{self, Heartbeat, Pulse, Watchdog};
use crate::metrics::{Facts, LatencyCounts, Metrics, ShardMetrics};
use crate::placement::{self, ShardMemory};
use crate::ring::uring::{Doorbell, FixedBuffers, Uring};
use crate::ring::Ring;
use crate::shard::{HandshakeLimits, Shard, ShardSetup, DRAIN_GRACE_MS};
use crate::sizing::{connection_capacity, ring_config, shard_cpu, LISTEN_BACKLOG};
use crate::stats::ShardStats;
use crate::storage::db::{Db, TopicRow};
use crate::storage::{self, Durability, Reader, Retention, StorageLink, StoredTopic, Writer};
use crate::tls::TlsConfig;
use crate::topics::TopicLimits;

/// Counters of connections per source address (4 bytes each): far more
/// than the sources expected at once, so few share one.
const SOURCE_SLOTS: usize = 1 << 16;
/// How long every shard may take to finish its first turn (ring enabled,
/// accept armed) before start-up is declared failed.
const FIRST_TURN_TIMEOUT_MS: u64 = 30_000;
/// How often the main thread looks for signals and stopped shards.
const SIGNAL_POLL_MS: u64 = 200;
/// Beyond the drain deadline and the shards' grace: the storage writer's
/// last commit and the process's exit.
const STOP_MARGIN_MS: u64 = 5_000;

/// Runs the appliance until SIGTERM or SIGINT, then drains and returns.
pub fn run(settings: &Settings) -> Result<(), String> {
    cluecast_sys::block_shutdown_signals().map_err(|e| format!("blocking signals: {e}"))?;
    let notifier = Notifier::from_env().map_err(|e| e.to_string())?;
    let watchdog = notifier
        .as_ref()
        .and_then(Notifier::watchdog_interval_us)
        .map(|us| Watchdog::new(us, settings.shards, Instant::now()))
        .transpose()?;
    let nofile = cluecast_sys::raise_nofile_limit().map_err(|e| e.to_string())?;
    let shards = settings.shards;
    let capacity = connection_capacity(nofile.soft, shards);
    if capacity == 0 {
        return Err(format!(
            "the open-file limit ({}) leaves no room for connections",
            nofile.soft
        ));
    }
    let connections_max = match settings.connections_max {
        0 => capacity,
        wanted if wanted > capacity => {
            crate::warn!(
                "cluecast: --connections-max {wanted} is above what the open-file limit allows; \
                 using {capacity}"
            );
            capacity
        }
        wanted => wanted,
    };
    crate::info!(
        "cluecast: open-file limit {} (hard {}): {connections_max} connections per shard, \
         {} in all",
        nofile.soft,
        nofile.hard,
        connections_max * shards
    );

    let security = Security {
        keys: settings.keys()?.map(Arc::new),
        tls: settings.tls()?.map(Arc::new),
    };
    if security.tls.is_some() {
        crate::info!(
            "cluecast: serving TLS 1.3 with {}; records are encrypted in user space (rustls) \
             for each connection",
            settings.tls_cert.display()
        );
    }
    match &security.keys {
        Some(_) => crate::info!(
            "cluecast: clients need a token signed with a key of {}",
            settings.auth_keys.display()
        ),
        None if !settings.listen.ip().is_loopback() => crate::warn!(
            "cluecast: --insecure-no-auth: anyone who can reach {} may read and publish \
             every topic",
            settings.listen
        ),
        None => {}
    }
    // Bound before anything else is set up, so a taken port fails at once.
    let admin = settings
        .admin_listen
        .0
        .map(crate::admin::bind)
        .transpose()?;
    let listeners = bind_listeners(settings.listen, shards)?;
    let local = cluecast_sys::local_addr(listeners[0].as_raw_fd()).map_err(|e| e.to_string())?;
    // Each shard owns (and on drain closes) its listener from here on.
    let listeners: Vec<RawFd> = listeners.into_iter().map(OwnedFd::into_raw_fd).collect();

    let cpus = cluecast_sys::allowed_cpus().map_err(|e| e.to_string())?;
    let shard_cpus: Vec<usize> = (0..shards).map(|id| shard_cpu(&cpus, id)).collect();
    let placed = placement::place(
        settings.huge_pages,
        settings.steering,
        &listeners,
        &shard_cpus,
        settings.arena_bytes,
        ring_config(settings),
    )?;
    let iovecs: Vec<libc::iovec> = placed.shards.iter().map(|m| m.arena.iovec()).collect();

    let epoch = loop {
        let e = cluecast_sys::random_u64().map_err(|e| format!("getrandom: {e}"))?;
        if e != 0 {
            break e;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));

    // All rings first, from this thread: the first registers the arenas, the
    // others share that registration, and every shard learns every doorbell.
    let mut rings: Vec<Uring> = Vec::with_capacity(shards);
    let mut spans: Vec<Span> = Vec::with_capacity(shards);
    for (id, ShardMemory { arena, recv }) in placed.shards.into_iter().enumerate() {
        let fixed = match rings.first() {
            None => FixedBuffers::Register(&iovecs),
            Some(first) => FixedBuffers::CloneFrom(first.fd()),
        };
        rings.push(
            Uring::new(ring_config(settings), fixed, recv)
                .map_err(|e| format!("shard {id}: {e}"))?,
        );
        spans.push(arena);
    }
    let ring_fds: Vec<RawFd> = rings.iter().map(|r| r.fd()).collect();

    let store = match settings.durability {
        Durability::Memory => None,
        durability => Some(open_store(settings, durability, epoch)?),
    };
    let storage_stop = Arc::new(AtomicBool::new(false));
    let storage_commit_us = Arc::new(LatencyCounts::default());
    let (links, stored, storage_threads) = match store {
        Some(store) => start_storage(
            settings,
            store,
            &ring_fds,
            &storage_stop,
            &storage_commit_us,
        )?,
        None => (Vec::new(), Arc::from([]), Vec::new()),
    };
    let setups = shard_setups(
        settings,
        epoch,
        connections_max,
        listeners,
        spans,
        ring_fds,
        &stop,
        links,
        stored,
        security,
    );
    let heartbeats: Arc<[Heartbeat]> = (0..shards).map(|_| Heartbeat::default()).collect();
    let shard_metrics: Vec<Arc<ShardMetrics>> = setups.iter().map(|s| s.metrics.clone()).collect();
    let mut threads: Vec<JoinHandle<ShardStats>> = Vec::new();
    for (setup, ring) in setups.into_iter().zip(rings) {
        let id = setup.id;
        let cpu = shard_cpus[id];
        let beats = heartbeats.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || shard_main(cpu, ring, setup, &beats[id]))
            .map_err(|e| format!("spawning shard {id}: {e}"))?;
        threads.push(thread);
    }
    if let Some(listener) = admin {
        let bound = listener
            .local_addr()
            .map_err(|e| format!("--admin-listen: {e}"))?;
        let metrics = Metrics {
            facts: Facts {
                version: env!("CARGO_PKG_VERSION"),
                allocator: crate::build_info::ALLOCATOR,
                durability: settings.durability.name(),
                placement: placed.placement.clone(),
            },
            started: std::time::Instant::now(),
            shards: shard_metrics,
            heartbeats: heartbeats.clone(),
            storage_commit_us,
        };
        crate::admin::start(listener, Arc::new(metrics))?;
        crate::info!("cluecast: admin endpoint at http://{bound}/ (/metrics, /status, /log-level)");
    }

    // Ok(()) for a requested stop, Err when a shard stopped on its own or
    // never started.
    let outcome = wait_first_turns(&heartbeats, &threads).and_then(|()| {
        crate::info!(
            "cluecast: listening on {local} with {shards} shard(s), epoch {epoch:016x}, \
             durability {}, allocator={}",
            settings.durability.name(),
            crate::build_info::ALLOCATOR
        );
        if let Some(notifier) = &notifier {
            let status = format!(
                "serving {local} with {shards} shard(s), durability {}",
                settings.durability.name()
            );
            warn_unsent(notifier.ready(&status));
        }
        serve_until_signal(notifier.as_ref(), watchdog, &heartbeats, &threads)
    });
    stop.store(true, Ordering::Relaxed);
    if let Some(notifier) = &notifier {
        warn_unsent(notifier.stopping("draining: clients told to go away"));
        // Only lengthens a TimeoutStopSec shorter than the drain can take.
        let stop_ms = settings.drain_timeout_ms as u64 + DRAIN_GRACE_MS + STOP_MARGIN_MS;
        warn_unsent(notifier.extend_timeout_us(stop_ms * 1000));
    }
    let mut failed = false;
    for (id, thread) in threads.into_iter().enumerate() {
        match thread.join() {
            Ok(stats) => crate::info!("cluecast: shard {id} stopped: {stats:?}"),
            Err(_) => failed = true,
        }
    }
    // The rings are gone with their threads; only now may their memory go.
    drop(placed.regions);
    // The shards have stopped appending: the writer commits the rest.
    storage_stop.store(true, Ordering::Release);
    for thread in storage_threads {
        if thread.join().is_err() {
            failed = true;
        }
    }
    if failed {
        return Err("a shard panicked".to_string());
    }
    outcome?;
    crate::info!("cluecast: stopped");
    Ok(())
}

/// One SO_REUSEPORT listener per shard on the same address (port 0 picks a
/// free port once, for all of them).
fn bind_listeners(listen: SocketAddr, shards: usize) -> Result<Vec<OwnedFd>, String> {
    let first = cluecast_sys::listen_reuseport(listen, LISTEN_BACKLOG)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = cluecast_sys::local_addr(first.as_raw_fd()).map_err(|e| e.to_string())?;
    let mut listeners = vec![first];
    for _ in 1..shards {
        listeners.push(
            cluecast_sys::listen_reuseport(bound, LISTEN_BACKLOG)
                .map_err(|e| format!("cannot listen on {bound}: {e}"))?,
        );
    }
    Ok(listeners)
}

/// Opens the data directory and recovers its topics.
fn open_store(
    settings: &Settings,
    durability: Durability,
    epoch: u64,
) -> Result<storage::db::Recovered, String> {
    let recovered = Db::open(&settings.data_dir, durability, epoch)?;
    if recovered.topics.len() > settings.topics_max {
        return Err(format!(
            "{} holds {} topics, more than --topics-max {}: raise it",
            settings.data_dir.display(),
            recovered.topics.len(),
            settings.topics_max
        ));
    }
    if recovered.epochs_changed {
        crate::warn!(
            "cluecast: the last run (async durability) did not stop cleanly; events it had \
             not synced may be lost, so every topic gets epoch {epoch:016x} and resuming \
             clients are told"
        );
    }
    crate::info!(
        "cluecast: data directory {}: {} topic(s) recovered",
        settings.data_dir.display(),
        recovered.topics.len()
    );
    Ok(recovered)
}

type StorageStart = (Vec<StorageLink>, Arc<[StoredTopic]>, Vec<JoinHandle<()>>);

/// The writer and reader threads, and every shard's channels to them.
fn start_storage(
    settings: &Settings,
    store: storage::db::Recovered,
    ring_fds: &[RawFd],
    stop: &Arc<AtomicBool>,
    commit_us: &Arc<LatencyCounts>,
) -> Result<StorageStart, String> {
    let writer_bell = Doorbell::new().map_err(|e| e.to_string())?;
    let reader_bell = Doorbell::new().map_err(|e| e.to_string())?;
    let (links, writer_ports, reader_ports) = storage::links(
        settings.shards,
        settings.durability,
        settings.storage_queue_bytes,
        ring_fds,
        writer_bell.fd(),
        reader_bell.fd(),
    );
    let db = Arc::new(store.db);
    let rows: Vec<(Box<[u8]>, TopicRow, u64)> = store
        .topics
        .iter()
        .map(|(id, t)| {
            let row = TopicRow {
                id: *id,
                epoch: t.epoch,
                last_seq: t.last_seq,
            };
            (t.name.clone(), row, t.oldest_seq)
        })
        .collect();
    let stored: Arc<[StoredTopic]> = store.topics.into_iter().map(|(_, t)| t).collect();
    let writer = Writer::new(
        db.clone(),
        settings.durability,
        settings.limits(),
        writer_ports,
        rows.into_iter(),
        Retention {
            events_max: settings.retention_events_max,
            age_ms: settings.retention_age_s.saturating_mul(1000),
        },
        writer_bell,
    )
    .recording_commits(commit_us.clone());
    let reader = Reader::new(db, settings.limits(), reader_ports, reader_bell);
    let writer_stop = stop.clone();
    let reader_stop = stop.clone();
    let threads = vec![
        std::thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || {
                let stats = writer.run(&writer_stop);
                crate::info!("cluecast: storage writer stopped: {stats:?}");
            })
            .map_err(|e| format!("spawning the storage writer: {e}"))?,
        std::thread::Builder::new()
            .name("storage-reader".into())
            .spawn(move || {
                let (reads, failures) = reader.run(&reader_stop);
                crate::info!("cluecast: storage reader stopped: {reads} reads, {failures} failed");
            })
            .map_err(|e| format!("spawning the storage reader: {e}"))?,
    ];
    Ok((links, stored, threads))
}

/// Who may connect and how: token keys, and the TLS certificate.
#[derive(Default)]
pub struct Security {
    pub keys: Option<Arc<Keys>>,
    pub tls: Option<Arc<TlsConfig>>,
}

/// Everything each shard needs but its ring: one setup per listener and
/// span, wired to every other shard by a channel each way, and to the
/// storage threads by `links` (none for memory-only history).
#[allow(clippy::too_many_arguments)]
pub fn shard_setups(
    settings: &Settings,
    epoch: u64,
    connections_max: usize,
    listeners: Vec<RawFd>,
    spans: Vec<Span>,
    ring_fds: Vec<RawFd>,
    stop: &Arc<AtomicBool>,
    links: Vec<StorageLink>,
    stored_topics: Arc<[StoredTopic]>,
    security: Security,
) -> Vec<ShardSetup> {
    let shards = settings.shards;
    assert!(listeners.len() == shards && spans.len() == shards && ring_fds.len() == shards);
    assert!(links.is_empty() || links.len() == shards);
    let mut links = links.into_iter();
    let (mut mesh_tx, mut mesh_rx) = mesh(shards, settings.mesh_bytes);
    let limits = settings.limits();
    let sources = Arc::new(SourceCounts::new(
        SOURCE_SLOTS,
        settings.connections_per_source_max,
    ));
    let rate = |per_s: u32| Rate {
        per_s,
        burst: per_s.max(1),
    };
    listeners
        .into_iter()
        .zip(spans)
        .enumerate()
        .map(|(id, (listener, span))| ShardSetup {
            id,
            shards,
            epoch,
            storage: links.next(),
            stored_topics: stored_topics.clone(),
            keys: security.keys.clone(),
            tls: security.tls.clone(),
            metrics: Arc::new(ShardMetrics::default()),
            sources: sources.clone(),
            handshakes: HandshakeLimits {
                max: settings.handshakes_max,
                timeout_ms: settings.handshake_timeout_ms,
                // A timeout set below the floor is the floor too.
                timeout_min_ms: settings
                    .handshake_timeout_min_ms
                    .min(settings.handshake_timeout_ms),
            },
            accept_rate: rate(settings.accepts_per_s),
            tls_handshake_rate: rate(settings.tls_handshakes_per_s),
            publish_rate: rate(settings.publish_rate_max),
            listener,
            connections_max,
            limits,
            subscriptions_max: settings.subscriptions_max,
            topic_limits: TopicLimits {
                topics_max: settings.topics_max,
                sequenced_max: settings.topics_max / shards,
                waiting_max: settings.topics_max,
                history_events_max: settings.history_events_max,
                history_bytes_max: settings.history_bytes_max,
            },
            queue_bytes_max: settings.queue_bytes_max,
            zerocopy_bytes_min: settings.zerocopy_bytes_min,
            heartbeat_ms: settings.heartbeat_ms,
            idle_timeout_ms: settings.idle_timeout_ms,
            drain_timeout_ms: settings.drain_timeout_ms,
            retry_after_ms: settings.retry_after_ms,
            // The wire frame is the length prefix's value plus its 4 bytes.
            arena: Arena::new(span, id as u16, limits.frame_bytes_max as usize + 4),
            mesh_tx: std::mem::take(&mut mesh_tx[id]),
            mesh_rx: std::mem::take(&mut mesh_rx[id]),
            peer_ring_fds: ring_fds.clone(),
            stop: stop.clone(),
        })
        .collect()
}

/// `tx[i][j]` carries records from shard i to shard j, `rx[j][i]` receives them.
type MeshEnds = (
    Vec<Vec<Option<spsc::Sender>>>,
    Vec<Vec<Option<spsc::Receiver>>>,
);

fn mesh(shards: usize, bytes: usize) -> MeshEnds {
    let mut tx: Vec<Vec<Option<spsc::Sender>>> = (0..shards)
        .map(|_| (0..shards).map(|_| None).collect())
        .collect();
    let mut rx: Vec<Vec<Option<spsc::Receiver>>> = (0..shards)
        .map(|_| (0..shards).map(|_| None).collect())
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from != to {
                let (sender, receiver) = spsc::channel(bytes);
                tx[from][to] = Some(sender);
                rx[to][from] = Some(receiver);
            }
        }
    }
    (tx, rx)
}

/// Waits until every shard has finished one turn of its loop: its ring is
/// enabled and its accept submitted, so from here every shard serves.
fn wait_first_turns(
    heartbeats: &[Heartbeat],
    threads: &[JoinHandle<ShardStats>],
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(FIRST_TURN_TIMEOUT_MS);
    while let Some(id) = heartbeat::first_not_started(heartbeats) {
        if threads[id].is_finished() {
            return Err(format!(
                "shard {id} stopped before serving; the others were drained"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "shard {id} did not start its loop within {FIRST_TURN_TIMEOUT_MS} ms"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Serves until SIGTERM or SIGINT (Ok) or a shard stops on its own (Err),
/// pinging the service manager's watchdog while every shard's loop turns.
fn serve_until_signal(
    notifier: Option<&Notifier>,
    mut watchdog: Option<Watchdog>,
    heartbeats: &[Heartbeat],
    threads: &[JoinHandle<ShardStats>],
) -> Result<(), String> {
    let poll = Duration::from_millis(SIGNAL_POLL_MS);
    loop {
        let wait = watchdog
            .as_ref()
            .map_or(poll, |w| w.until_due(Instant::now()).min(poll));
        match cluecast_sys::wait_shutdown_signal(wait.as_millis() as u64) {
            Ok(Some(signal)) => {
                crate::info!("cluecast: signal {signal}: draining");
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for signals: {e}")),
        }
        if threads.iter().any(|t| t.is_finished()) {
            return Err("a shard stopped unexpectedly; the others were drained".to_string());
        }
        let (Some(watchdog), Some(notifier)) = (&mut watchdog, notifier) else {
            continue;
        };
        match watchdog.check(heartbeats, Instant::now()) {
            Pulse::NotDue => {}
            Pulse::Alive => warn_unsent(notifier.watchdog()),
            Pulse::Stalled(id) => crate::warn!(
                "cluecast: shard {id} has not turned its loop in {} ms; withholding the \
                 watchdog ping",
                watchdog.period().as_millis()
            ),
        }
    }
}

/// The service manager missing a message is worth a line, never a stop.
fn warn_unsent(sent: std::io::Result<()>) {
    if let Err(e) = sent {
        crate::warn!("cluecast: {e}");
    }
}

fn shard_main(cpu: usize, ring: Uring, setup: ShardSetup, heartbeat: &Heartbeat) -> ShardStats {
    let id = setup.id;
    if let Err(e) = cluecast_sys::pin_current_thread(cpu) {
        crate::warn!("shard {id}: cannot pin to cpu {cpu}: {e}");
    }
    if let Err(e) = ring.enable() {
        crate::error!("shard {id}: {e}");
        return ShardStats::default();
    }
    let mut shard = Shard::new(ring, setup);
    loop {
        match shard.turn() {
            Ok(true) => heartbeat.beat(),
            Ok(false) => break,
            Err(e) => {
                crate::error!("shard {id}: ring wait failed: {e}");
                break;
            }
        }
    }
    shard.stats()
}
