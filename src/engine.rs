//! Start-up and shutdown of the appliance: limits, the durable log and its
//! threads, the frame arena, one listener and one pinned shard thread per
//! core, the channels between them, and the signal that drains them all.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use cluecast_sys::{spsc, Region, Span};

use crate::admission::{Rate, SourceCounts};
use crate::arena::Arena;
use crate::auth::Keys;
use crate::config::Settings;
use crate::metrics::{Facts, LatencyCounts, Metrics, ShardMetrics};
use crate::ring::uring::{Doorbell, FixedBuffers, Uring, UringConfig};
use crate::ring::Ring;
use crate::shard::{Shard, ShardSetup, ShardStats};
use crate::storage::db::{Db, TopicRow};
use crate::storage::{self, Durability, Reader, Retention, StorageLink, StoredTopic, Writer};
use crate::tls::TlsConfig;
use crate::topics::TopicLimits;

/// Descriptors kept back from the connection budget: rings, listeners,
/// stdio, log files.
const FDS_RESERVED: u64 = 64;
const LISTEN_BACKLOG: i32 = 4096;
/// Descriptors per shard kept for refusing clients past capacity.
const REFUSING_FDS: usize = 256;
/// Counters of connections per source address (4 bytes each): far more
/// than the sources expected at once, so few share one.
const SOURCE_SLOTS: usize = 1 << 16;

/// Runs the appliance until SIGTERM or SIGINT, then drains and returns.
pub fn run(settings: &Settings) -> Result<(), String> {
    cluecast_sys::block_shutdown_signals().map_err(|e| format!("blocking signals: {e}"))?;
    let nofile = cluecast_sys::raise_nofile_limit().map_err(|e| e.to_string())?;
    let shards = settings.shards;
    let fd_budget = nofile.soft.saturating_sub(FDS_RESERVED) as usize / shards;
    if fd_budget < 2 {
        return Err(format!(
            "the open-file limit ({}) leaves no room for connections",
            nofile.soft
        ));
    }
    // Refusing a client past capacity briefly takes a descriptor too (one
    // small send, then close); past this many at once, accept backs off.
    let capacity = fd_budget - (fd_budget / 4).clamp(1, REFUSING_FDS);
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

    let region = Region::map(settings.arena_bytes * shards, settings.huge_pages)
        .map_err(|e| format!("mapping the frame arena: {e}"))?;
    if settings.huge_pages && !region.huge_pages() {
        crate::info!(
            "cluecast: no reserved huge pages for the arena; using normal pages (THP advised)"
        );
    }
    let spans = region.spans(shards);
    let iovecs: Vec<libc::iovec> = spans.iter().map(Span::iovec).collect();

    let epoch = loop {
        let e = cluecast_sys::random_u64().map_err(|e| format!("getrandom: {e}"))?;
        if e != 0 {
            break e;
        }
    };
    let cpus = cluecast_sys::allowed_cpus().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));

    // All rings first, from this thread: the first registers the arena, the
    // others share that registration, and every shard learns every doorbell.
    let ring_config = UringConfig {
        sq_entries: settings.ring_entries,
        recv_buffers: settings.recv_buffers,
        recv_buffer_bytes: settings.recv_buffer_bytes,
    };
    let mut rings: Vec<Uring> = Vec::with_capacity(shards);
    for id in 0..shards {
        let fixed = match rings.first() {
            None => FixedBuffers::Register(&iovecs),
            Some(first) => FixedBuffers::CloneFrom(first.fd()),
        };
        rings.push(Uring::new(ring_config, fixed).map_err(|e| format!("shard {id}: {e}"))?);
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
    let shard_metrics: Vec<Arc<ShardMetrics>> = setups.iter().map(|s| s.metrics.clone()).collect();
    let shard_cpus: Vec<usize> = (0..shards).map(|id| cpus[id % cpus.len()]).collect();
    let mut threads: Vec<JoinHandle<ShardStats>> = Vec::new();
    for (setup, ring) in setups.into_iter().zip(rings) {
        let id = setup.id;
        let cpu = shard_cpus[id];
        let thread = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || shard_main(cpu, ring, setup))
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
                huge_pages: region.huge_pages(),
                numa_nodes: shard_cpus
                    .iter()
                    .map(|&cpu| cluecast_sys::numa_node(cpu))
                    .collect(),
            },
            started: std::time::Instant::now(),
            shards: shard_metrics,
            storage_commit_us,
        };
        crate::admin::start(listener, Arc::new(metrics))?;
        crate::info!("cluecast: admin endpoint at http://{bound}/ (/metrics, /status, /log-level)");
    }
    crate::info!(
        "cluecast: listening on {local} with {shards} shard(s), epoch {epoch:016x}, \
         durability {}, allocator={}",
        settings.durability.name(),
        crate::build_info::ALLOCATOR
    );

    // Ok(()) for a requested stop, Err when a shard stopped on its own.
    let outcome = loop {
        match cluecast_sys::wait_shutdown_signal(200) {
            Ok(Some(signal)) => {
                crate::info!("cluecast: signal {signal}: draining");
                break Ok(());
            }
            Ok(None) => {}
            Err(e) => break Err(format!("waiting for signals: {e}")),
        }
        if threads.iter().any(|t| t.is_finished()) {
            break Err("a shard stopped unexpectedly; the others were drained".to_string());
        }
    };
    stop.store(true, Ordering::Relaxed);
    let mut failed = false;
    for (id, thread) in threads.into_iter().enumerate() {
        match thread.join() {
            Ok(stats) => crate::info!("cluecast: shard {id} stopped: {stats:?}"),
            Err(_) => failed = true,
        }
    }
    // The rings are gone with their threads; only now may the arena go.
    drop(region);
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
            handshakes_max: settings.handshakes_max,
            accept_rate: rate(settings.accepts_per_s),
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
            handshake_timeout_ms: settings.handshake_timeout_ms,
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

fn shard_main(cpu: usize, ring: Uring, setup: ShardSetup) -> ShardStats {
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
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                crate::error!("shard {id}: ring wait failed: {e}");
                break;
            }
        }
    }
    shard.stats()
}
