//! The writer thread: group commit of every shard's appends.
//!
//! Each round takes whatever the shards appended since the last one (up to
//! `BATCH_BYTES_MAX`), writes it as one batch with one WAL sync (`sync`
//! durability) and tells each shard how far its appends are durable. A shard
//! counts its appends and the writer counts what it reads, so one number
//! says which events a notice covers. A failed batch fails every append in
//! it; the writer then drops that shard's appends until the shard says
//! RESUME, so no later event is stored after a hole the shard has reused.
//! In `async` durability subscribers already have the events of a failed
//! batch, so it is kept and written again until it succeeds, and nothing new
//! is taken meanwhile: the log never has a hole.
//!
//! A closed topic rides the appends too (CLOSE, counted like an append), so
//! its deletion is ordered after its last event and covered by the same
//! notices. The writer also owns what changes the log besides appends:
//! players' open path blocks (positions ride the same channels and batches)
//! and retention (range deletes, then a FLOOR notice to every shard), each
//! in a file of its own (`paths`, `retention`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::db::{Batch, Db, TopicRow};
use super::{Durability, ToWriter, DURABLE, FAILED, FLOOR, PATHS};
use crate::metrics::LatencyCounts;
use crate::ring::uring::Doorbell;
use cluecast_proto::{decode, Frame, Limits};
use cluecast_sys::spsc;

mod paths;
mod retention;
#[cfg(test)]
mod tests;

use paths::OpenPath;

/// Most appended bytes one batch takes; the rest waits for the next round.
const BATCH_BYTES_MAX: usize = 8 << 20;
/// How long the writer sleeps when no shard rings.
const IDLE_WAIT_MS: u32 = 100;
/// `async` durability syncs the WAL this long after a write at the latest.
const ASYNC_WAL_SYNC: Duration = Duration::from_millis(200);
/// How soon an `async` batch that failed is written again.
const ASYNC_RETRY: Duration = Duration::from_millis(100);
/// How often a failing database is closed and opened again.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);
/// How often topics are checked for events past the retention age: a
/// quarter of the age, within these bounds.
const AGE_CHECK_MIN: Duration = Duration::from_millis(100);
const AGE_CHECK_MAX: Duration = Duration::from_secs(10);

/// The writer's ends of one shard's channels.
pub struct WriterPort {
    pub append_rx: spsc::Receiver,
    pub notice_tx: spsc::Sender,
    pub ring_fd: std::os::fd::RawFd,
}

struct Port {
    io: WriterPort,
    /// APPEND and CLOSE records read, ever (the shard numbers them alike).
    appends_seen: u64,
    durable_through: u64,
    /// Dropping appends until the shard's RESUME.
    failed: bool,
    /// A notice the channel had no room for; a newer DURABLE replaces it.
    owed: Option<(u8, u64, String)>,
    /// New retention floors not yet told: (topic, oldest sequence kept,
    /// epoch of the history it applies to).
    floors: Vec<(Box<[u8]>, u64, u64)>,
    /// POSITION records read, ever, and how many of them the shard was told
    /// are written (its path reads wait for them).
    positions_seen: u64,
    positions_told: u64,
}

struct Row {
    row: TopicRow,
    /// The round that last changed it, and how it was before that round.
    round: u64,
    before: Option<TopicRow>,
    /// The oldest stored sequence, once known (looked up when needed).
    oldest_seq: Option<u64>,
}

/// What a shard asked the writer to store.
enum Change {
    /// An encoded EVENT frame.
    Append(Vec<u8>),
    /// A topic to delete, with all its events.
    Close(Box<[u8]>),
}

/// How long and how much history each topic keeps on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Events per topic; 0 keeps all.
    pub events_max: u64,
    /// Age of the oldest event kept; 0 keeps all.
    pub age_ms: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct WriterStats {
    pub batches: u64,
    pub events: u64,
    pub failed_batches: u64,
    pub commit_us_max: u64,
}

pub struct Writer {
    db: Arc<Db>,
    durability: Durability,
    limits: Limits,
    ports: Vec<Port>,
    topics: HashMap<Box<[u8]>, Row>,
    next_topic_id: u64,
    round: u64,
    doorbell: Doorbell,
    last_wal_sync: Instant,
    /// Async writes not yet synced.
    unsynced: bool,
    /// The batch being written, and the port each change came from.
    records: Vec<(usize, Change)>,
    /// Rows the batch being written deletes, as they were (restored if it
    /// fails).
    closed: Vec<(Box<[u8]>, Row)>,
    paths: HashMap<Box<[u8]>, OpenPath>,
    /// Some open path changed since the last successful batch.
    paths_dirty: bool,
    /// Blocks filled and not yet written: (player, block, bytes).
    sealed: Vec<(Box<[u8]>, u32, Vec<u8>)>,
    /// An async batch failed and is written again at this time.
    retry_at: Option<Instant>,
    last_reopen: Option<Instant>,
    retention: Retention,
    last_age_check: Instant,
    /// An async batch failed after its events were acknowledged: the next
    /// start must change epochs.
    lost_acknowledged: bool,
    failing: bool,
    /// The thread that reclaims closed topics' space (started at the first
    /// close), and its queue of topic ids.
    reclaimer: Option<(SyncSender<u64>, JoinHandle<()>)>,
    stats: WriterStats,
    /// Microseconds from each successful batch's start to its commit (and
    /// WAL sync) done, for the metrics.
    commit_us: Arc<LatencyCounts>,
}

impl Writer {
    pub fn new(
        db: Arc<Db>,
        durability: Durability,
        limits: Limits,
        ports: Vec<WriterPort>,
        topics: impl Iterator<Item = (Box<[u8]>, TopicRow, u64)>,
        retention: Retention,
        doorbell: Doorbell,
    ) -> Writer {
        let topics: HashMap<Box<[u8]>, Row> = topics
            .map(|(name, row, oldest_seq)| {
                let row = Row {
                    row,
                    round: 0,
                    before: None,
                    oldest_seq: (oldest_seq != 0).then_some(oldest_seq),
                };
                (name, row)
            })
            .collect();
        let next_topic_id = topics.values().map(|r| r.row.id + 1).max().unwrap_or(1);
        Writer {
            db,
            durability,
            limits,
            ports: ports
                .into_iter()
                .map(|io| Port {
                    io,
                    appends_seen: 0,
                    durable_through: 0,
                    failed: false,
                    owed: None,
                    floors: Vec::new(),
                    positions_seen: 0,
                    positions_told: 0,
                })
                .collect(),
            topics,
            next_topic_id,
            round: 0,
            doorbell,
            last_wal_sync: Instant::now(),
            unsynced: false,
            records: Vec::new(),
            closed: Vec::new(),
            paths: HashMap::new(),
            paths_dirty: false,
            sealed: Vec::new(),
            retry_at: None,
            last_reopen: None,
            retention,
            last_age_check: Instant::now(),
            lost_acknowledged: false,
            failing: false,
            reclaimer: None,
            stats: WriterStats::default(),
            commit_us: Arc::new(LatencyCounts::default()),
        }
    }

    /// Records each successful batch's commit time into `commit_us`.
    pub fn recording_commits(mut self, commit_us: Arc<LatencyCounts>) -> Writer {
        self.commit_us = commit_us;
        self
    }

    /// Commits until `stop` is set (after every shard has stopped) and the
    /// channels are empty; then records a clean stop if nothing acknowledged
    /// was lost.
    pub fn run(mut self, stop: &AtomicBool) -> WriterStats {
        loop {
            let worked = self.round();
            self.send_owed_notices();
            let age_check = Duration::from_millis(self.retention.age_ms / 4)
                .clamp(AGE_CHECK_MIN, AGE_CHECK_MAX);
            if self.retention.age_ms > 0 && self.last_age_check.elapsed() >= age_check {
                self.last_age_check = Instant::now();
                self.expire_by_age();
            }
            if self.unsynced && self.last_wal_sync.elapsed() >= ASYNC_WAL_SYNC {
                if let Err(e) = self.sync_wal() {
                    crate::error!("storage: syncing the WAL failed: {e}");
                    self.lost_acknowledged = true;
                }
            }
            if !worked {
                // A batch still failing at stop is lost: the next start
                // changes epochs (see `lost_acknowledged`).
                if stop.load(Ordering::Acquire) {
                    self.lost_acknowledged |= self.retry_at.is_some();
                    break;
                }
                let wait_ms = if self.retry_at.is_some() {
                    ASYNC_RETRY.as_millis() as u32
                } else if self.unsynced {
                    ASYNC_WAL_SYNC.as_millis() as u32
                } else {
                    IDLE_WAIT_MS
                };
                self.doorbell.wait(wait_ms);
            }
        }
        let synced = !self.unsynced || self.sync_wal().is_ok();
        if synced && !self.lost_acknowledged && !self.failing {
            if let Err(e) = self.db.mark_clean_stop(self.durability) {
                crate::error!("storage: cannot record the clean stop: {e}");
            }
        }
        self.stats
    }

    /// One group commit; false when there was nothing to do.
    fn round(&mut self) -> bool {
        match self.retry_at {
            Some(at) if Instant::now() < at => return false,
            Some(_) => {} // an async batch that failed: the same records again
            None => {
                if !self.take_records() {
                    return false;
                }
            }
        }
        if !self.records.is_empty() || self.paths_dirty {
            self.commit_records();
        }
        true
    }

    /// Reads what the shards appended (up to `BATCH_BYTES_MAX`) into
    /// `records`; false when there was nothing at all.
    fn take_records(&mut self) -> bool {
        debug_assert!(self.records.is_empty());
        let mut bytes = 0;
        let mut read_any = false;
        for i in 0..self.ports.len() {
            self.ports[i].io.append_rx.clear_doorbell();
            while bytes < BATCH_BYTES_MAX {
                let port = &mut self.ports[i];
                let Some((kind, body)) = port.io.append_rx.peek() else {
                    break;
                };
                read_any = true;
                match ToWriter::decode(kind, body) {
                    ToWriter::Append(frame) => {
                        port.appends_seen += 1;
                        if !port.failed {
                            bytes += frame.len();
                            self.records.push((i, Change::Append(frame.to_vec())));
                        }
                    }
                    ToWriter::Close(topic) => {
                        port.appends_seen += 1;
                        if !port.failed {
                            bytes += topic.len();
                            self.records.push((i, Change::Close(topic.into())));
                        }
                    }
                    ToWriter::Resume => port.failed = false,
                    ToWriter::Position { player, position } => {
                        bytes += body.len();
                        port.positions_seen += 1;
                        let player = player.to_vec();
                        self.add_position(&player, &position);
                    }
                }
                self.ports[i].io.append_rx.pop();
            }
        }
        read_any
    }

    /// Writes `records` as one batch and tells the shards how it went.
    fn commit_records(&mut self) {
        self.round += 1;
        let mut touched: Vec<Box<[u8]>> = Vec::new();
        let mut contributed = vec![false; self.ports.len()];
        let records = std::mem::take(&mut self.records);
        for (port, _) in &records {
            contributed[*port] = true;
        }
        let started = Instant::now();
        let sync = self.durability == Durability::Sync;
        let db = self.db.clone();
        let result = self.write(&db, &records, &mut touched, sync);
        self.unsynced |= !sync && result.is_ok();
        let commit_us = started.elapsed().as_micros() as u64;
        self.stats.commit_us_max = self.stats.commit_us_max.max(commit_us);
        let Err(e) = result else {
            self.commit_us.record(commit_us);
            self.stats.batches += 1;
            self.stats.events += records
                .iter()
                .filter(|(_, change)| matches!(change, Change::Append(_)))
                .count() as u64;
            self.records = records;
            self.records.clear();
            self.closes_written();
            self.paths_written();
            self.retry_at = None;
            self.enforce_retention(&touched);
            let recovered = self.failing;
            if recovered {
                crate::info!("storage: writes succeed again");
                self.failing = false;
            }
            // After an async failure every shard was told; now every shard
            // learns it may publish again.
            let told = |i: usize| contributed[i] || (recovered && !sync);
            for i in (0..self.ports.len()).filter(|&i| told(i)) {
                let port = &mut self.ports[i];
                port.durable_through = port.appends_seen;
                let through = port.durable_through;
                self.notify(i, DURABLE, through, String::new());
            }
            return;
        };
        self.stats.failed_batches += 1;
        let first = !self.failing;
        if first {
            crate::error!(
                "storage: writing {} event(s) failed: {e}; publishes are refused until \
                 writes succeed again",
                records.len()
            );
            self.failing = true;
        }
        // Rows the batch deleted come back first (newest first, so a topic
        // closed twice ends as it was before the first), then every row the
        // batch changed is put back as it was.
        for (name, row) in self.closed.drain(..).rev() {
            self.topics.insert(name, row);
        }
        for name in touched {
            let Some(row) = self.topics.get_mut(&name) else {
                continue;
            };
            match row.before {
                _ if row.round != self.round => {}
                Some(before) => row.row = before,
                None => {
                    self.topics.remove(&name);
                }
            }
        }
        if sync {
            // Nobody has these events yet: the shards fail them and give
            // their sequences out again. A shard that sent only positions is
            // told too: its path reads wait for them and must not wait on.
            for (told, port) in contributed.iter_mut().zip(&self.ports) {
                *told |= port.positions_seen > port.positions_told;
            }
            for i in (0..self.ports.len()).filter(|&i| contributed[i]) {
                self.ports[i].failed = true;
                let through = self.ports[i].appends_seen;
                self.notify(i, FAILED, through, e.clone());
            }
        } else {
            // Subscribers already have these events: keep them and try again,
            // taking nothing new meanwhile (the shards refuse publishes until
            // the next DURABLE).
            self.records = records;
            self.retry_at = Some(Instant::now() + ASYNC_RETRY);
            if first {
                for i in 0..self.ports.len() {
                    let through = self.ports[i].durable_through;
                    self.notify(i, FAILED, through, e.clone());
                }
            }
        }
    }

    /// One batch of `records` and the rows they touch. After a failure the
    /// database is reopened first (at most once per `REOPEN_INTERVAL`):
    /// RocksDB takes no writes after a failed WAL write until then.
    fn write(
        &mut self,
        db: &Db,
        records: &[(usize, Change)],
        touched: &mut Vec<Box<[u8]>>,
        sync: bool,
    ) -> Result<(), String> {
        if self.failing
            && self
                .last_reopen
                .is_none_or(|at| at.elapsed() >= REOPEN_INTERVAL)
        {
            self.last_reopen = Some(Instant::now());
            db.reopen()?;
            crate::info!("storage: reopened the data directory after the failure");
        }
        let mut batch = db.batch()?;
        debug_assert!(
            self.closed.is_empty(),
            "the last batch's closes were settled"
        );
        for (_, change) in records {
            match change {
                Change::Append(body) => self.add_event(&mut batch, body, touched),
                Change::Close(name) => self.close_topic(&mut batch, name),
            }
        }
        // A row closed later in the batch is not written; one made anew
        // after its close is (after the delete, so it stands).
        for name in touched.iter() {
            if let Some(row) = self.topics.get(name) {
                batch.put_topic(name, row.row);
            }
        }
        for (player, block, bytes) in &self.sealed {
            batch.put_path(player, *block, bytes);
        }
        for (player, path) in &self.paths {
            if path.dirty && !path.builder.is_empty() {
                batch.put_path(player, path.block, &path.builder.finish());
            }
        }
        batch.commit(sync)
    }

    fn sync_wal(&mut self) -> Result<(), String> {
        self.last_wal_sync = Instant::now();
        self.unsynced = false;
        self.db.sync_wal()
    }

    fn add_event(&mut self, batch: &mut Batch<'_>, body: &[u8], touched: &mut Vec<Box<[u8]>>) {
        let Ok(Some((Frame::Event(event), _))) = decode(body, &self.limits) else {
            panic!("a shard appended a malformed event");
        };
        let round = self.round;
        let row = match self.topics.get_mut(event.topic) {
            Some(row) => {
                if row.round != round {
                    row.before = Some(row.row);
                    row.round = round;
                    touched.push(event.topic.into());
                }
                row
            }
            None => {
                let id = self.next_topic_id;
                self.next_topic_id += 1;
                touched.push(event.topic.into());
                let row = Row {
                    row: TopicRow {
                        id,
                        epoch: event.epoch,
                        last_seq: 0,
                    },
                    round,
                    before: None,
                    oldest_seq: None,
                };
                self.topics.entry(event.topic.into()).or_insert(row)
            }
        };
        assert!(
            event.seq > row.row.last_seq,
            "sequence {} of a topic stored up to {} (a reused sequence)",
            event.seq,
            row.row.last_seq
        );
        row.row.last_seq = event.seq;
        row.row.epoch = event.epoch;
        let id = row.row.id;
        batch.put_event(id, &event);
    }

    fn notify(&mut self, i: usize, kind: u8, through: u64, message: String) {
        let port = &mut self.ports[i];
        // In sync durability a FAILED notice is never replaced: the port
        // takes no appends until the shard has seen it and answered RESUME.
        // In async a later DURABLE says all it would.
        debug_assert!(
            self.durability == Durability::Async || !matches!(port.owed, Some((FAILED, _, _))),
            "a FAILED notice still owed"
        );
        port.owed = Some((kind, through, message));
        self.send_owed_notices();
    }

    fn send_owed_notices(&mut self) {
        // With no path block waiting to be written, every position taken is
        // written (or was lost, and logged): the shards' path reads may go.
        let positions_written = !self.paths_dirty;
        for port in &mut self.ports {
            let mut pushed = false;
            if let Some((kind, through, message)) = &port.owed {
                if port
                    .io
                    .notice_tx
                    .push(*kind, &[&through.to_be_bytes(), message.as_bytes()])
                {
                    port.owed = None;
                    pushed = true;
                }
            }
            if positions_written
                && port.positions_seen > port.positions_told
                && port
                    .io
                    .notice_tx
                    .push(PATHS, &[&port.positions_seen.to_be_bytes()])
            {
                port.positions_told = port.positions_seen;
                pushed = true;
            }
            while let Some((topic, floor, epoch)) = port.floors.last() {
                let (floor, epoch) = (floor.to_be_bytes(), epoch.to_be_bytes());
                if !port.io.notice_tx.push(FLOOR, &[&floor, &epoch, topic]) {
                    break;
                }
                port.floors.pop();
                pushed = true;
            }
            if pushed && port.io.notice_tx.ring_doorbell() {
                self.doorbell.ring(port.io.ring_fd);
            }
        }
    }
}

impl Drop for Writer {
    /// Lets the reclaiming thread finish what it started: it holds the
    /// database.
    fn drop(&mut self) {
        if let Some((queue, thread)) = self.reclaimer.take() {
            drop(queue);
            let _ = thread.join();
        }
    }
}
