//! RocksDB, the one place it is called: the column families and their
//! options, the key layouts, the format check and what start-up recovers.
//!
//! Keys are big-endian so RocksDB's byte order is sequence order:
//! - `events`: topic id (u64), sequence (u64) -> publish time (u64 ns),
//!   payload. The 8-byte prefix (the topic) has a bloom filter, and every
//!   read is a bounded iterator within one topic. Events carry no epoch: an
//!   epoch names a topic's whole history, and a new one (after a possible
//!   loss) keeps the stored events that survived, so reads label them with
//!   the topic's current epoch.
//! - `topics`: topic name -> id (u64), epoch (u64), newest sequence (u64);
//!   rewritten in the same batch as the topic's events.
//! - `paths`: player (str8), block number (u32) -> one `path_block`: a
//!   player's positions in arrival order, about 4 KiB before compression.
//! - `meta`: the format version and how the last run ended.

use std::path::{Path, PathBuf};
#[cfg(test)]
use std::sync::atomic::Ordering;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use cluecast_proto::{Event, Frame};
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, ColumnFamilyDescriptor, CompactOptions,
    DBCompressionType, Direction, IteratorMode, Options, ReadOptions, SliceTransform, WriteBatch,
    WriteOptions, DB,
};

use super::{Durability, ReadStatus, StoredTopic};

/// The on-disk format this build writes; a data directory of a newer one
/// is refused rather than misread.
pub const FORMAT_VERSION: u32 = 1;

const CF_EVENTS: &str = "events";
const CF_TOPICS: &str = "topics";
const CF_PATHS: &str = "paths";
const CF_META: &str = "meta";

const META_FORMAT: &[u8] = b"format_version";
/// The durability of the last run and whether it stopped cleanly.
const META_RUN: &[u8] = b"run";

const ZSTD_LEVEL: i32 = 3;
const WRITE_BUFFER_BYTES: usize = 32 << 20;

pub const EVENT_KEY_BYTES: usize = 16;
const EVENT_VALUE_HEADER_BYTES: usize = 8;
const TOPIC_VALUE_BYTES: usize = 24;

/// How the events family's table is laid out and compressed: data block
/// size and the bottom level's zstd dictionary. `benches/event_compression.rs`
/// measures the choices (docs/STORAGE.md, "Compression").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTable {
    /// RocksDB data block size (before compression).
    pub block_bytes: usize,
    /// The bottom level's zstd dictionary size per SST file; 0 = none.
    pub dict_bytes: u32,
    /// Sample bytes zstd's trainer builds that dictionary from; 0 = the
    /// samples themselves are the dictionary.
    pub dict_train_bytes: u32,
}

impl EventTable {
    /// 16 KiB blocks and a 16 KiB dictionary per bottom-level SST file,
    /// trained on 100 times as many of its bytes: 28% smaller than 4 KiB
    /// blocks without one, and resume reads of 64 events or more are faster.
    pub const DEFAULT: EventTable = EventTable {
        block_bytes: 16 << 10,
        dict_bytes: 16 << 10,
        dict_train_bytes: 100 * (16 << 10),
    };
}

pub struct Db {
    dir: PathBuf,
    table: EventTable,
    /// None while closed after a failed reopen (see `reopen`).
    db: RwLock<Option<DB>>,
    /// Commits still to fail: fault injection for the writer's tests.
    #[cfg(test)]
    commits_to_fail: std::sync::atomic::AtomicU32,
}

const CLOSED: &str = "the data directory is closed after a write failure; reopening it";

/// A topic row as the writer keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicRow {
    pub id: u64,
    pub epoch: u64,
    pub last_seq: u64,
}

/// What opening the data directory found.
pub struct Recovered {
    pub db: Db,
    /// Every stored topic with its id.
    pub topics: Vec<(u64, StoredTopic)>,
    /// The last run used async durability and did not stop cleanly: what
    /// clients were sent may be lost, so every epoch was changed.
    pub epochs_changed: bool,
}

pub fn event_key(topic_id: u64, seq: u64) -> [u8; EVENT_KEY_BYTES] {
    let mut key = [0u8; EVENT_KEY_BYTES];
    key[..8].copy_from_slice(&topic_id.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// A path block's key: the player (str8, so one player's keys are never a
/// prefix of another's) and the block's number, big-endian.
pub fn path_key(player: &[u8], block: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + player.len() + 4);
    key.push(player.len() as u8);
    key.extend_from_slice(player);
    key.extend_from_slice(&block.to_be_bytes());
    key
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn decode_topic(value: &[u8]) -> TopicRow {
    TopicRow {
        id: be_u64(&value[0..]),
        epoch: be_u64(&value[8..]),
        last_seq: be_u64(&value[16..]),
    }
}

fn event_options(event_table: EventTable) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_size(event_table.block_bytes);
    table.set_bloom_filter(10.0, false);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_prefix_extractor(SliceTransform::create_fixed_prefix(8));
    opts.set_memtable_prefix_bloom_ratio(0.1);
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES);
    // Recent levels stay uncompressed (they are rewritten soon); the
    // bottom level, where nearly all bytes end up, is zstd.
    opts.set_compression_type(DBCompressionType::None);
    opts.set_bottommost_compression_type(DBCompressionType::Zstd);
    let dict_bytes = i32::try_from(event_table.dict_bytes).unwrap_or(i32::MAX);
    opts.set_bottommost_compression_options(-14, ZSTD_LEVEL, 0, dict_bytes, true);
    let train_bytes = i32::try_from(event_table.dict_train_bytes).unwrap_or(i32::MAX);
    opts.set_bottommost_zstd_max_train_bytes(train_bytes, true);
    opts
}

fn small_options() -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::None);
    opts.set_bottommost_compression_type(DBCompressionType::Zstd);
    opts
}

fn db_error(what: &str, dir: &Path, err: rocksdb::Error) -> String {
    let text = err.to_string();
    if text.contains("lock") && text.contains("Resource temporarily unavailable") {
        return format!(
            "{what} {}: another process (another cluecast?) is using this data directory",
            dir.display()
        );
    }
    format!("{what} {}: {text}", dir.display())
}

fn open_rocks(dir: &Path, table: EventTable) -> Result<DB, String> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(4);
    let families = vec![
        ColumnFamilyDescriptor::new(CF_EVENTS, event_options(table)),
        ColumnFamilyDescriptor::new(CF_TOPICS, small_options()),
        ColumnFamilyDescriptor::new(CF_PATHS, small_options()),
        ColumnFamilyDescriptor::new(CF_META, small_options()),
    ];
    DB::open_cf_descriptors(&opts, dir, families)
        .map_err(|e| db_error("cannot open data directory", dir, e))
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("every column family is opened")
}

impl Db {
    /// Opens (or creates) the data directory, refuses a newer format, and
    /// recovers the topics. `epoch` is this run's epoch, given to every topic
    /// when the last run may have lost acknowledged-but-not-durable events.
    pub fn open(dir: &Path, durability: Durability, epoch: u64) -> Result<Recovered, String> {
        Db::open_with(dir, durability, epoch, EventTable::DEFAULT)
    }

    /// `open` with another events table (for measuring; see `EventTable`).
    pub fn open_with(
        dir: &Path,
        durability: Durability,
        epoch: u64,
        table: EventTable,
    ) -> Result<Recovered, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
        let db = Db {
            dir: dir.to_path_buf(),
            table,
            db: RwLock::new(Some(open_rocks(dir, table)?)),
            #[cfg(test)]
            commits_to_fail: Default::default(),
        };
        let (topics, epochs_changed) = db
            .recover(durability, epoch)
            .map_err(|e| format!("data directory {}: {e}", dir.display()))?;
        Ok(Recovered {
            db,
            topics,
            epochs_changed,
        })
    }

    fn recover(
        &self,
        durability: Durability,
        epoch: u64,
    ) -> Result<(Vec<(u64, StoredTopic)>, bool), String> {
        let (format, last_run) = self.with_db(|db| {
            let meta = cf(db, CF_META);
            let format = db.get_cf(meta, META_FORMAT).map_err(|e| e.to_string())?;
            let run = db.get_cf(meta, META_RUN).map_err(|e| e.to_string())?;
            Ok((format, run))
        })?;
        match format {
            None => {}
            Some(v) if v.len() == 4 => {
                let found = u32::from_be_bytes(v[..4].try_into().expect("4 bytes"));
                if found > FORMAT_VERSION {
                    return Err(format!(
                        "format version {found}, newer than this cluecast's {FORMAT_VERSION}: \
                         run a newer cluecast, or point --data-dir elsewhere"
                    ));
                }
            }
            Some(_) => return Err("an unreadable format version".into()),
        }
        let epochs_changed = matches!(last_run.as_deref(), Some([b'a', 0]));
        let rows = self.with_db(|db| {
            let mut rows = Vec::new();
            for item in db.iterator_cf(cf(db, CF_TOPICS), IteratorMode::Start) {
                let (name, value) = item.map_err(|e| e.to_string())?;
                if value.len() != TOPIC_VALUE_BYTES {
                    return Err(format!(
                        "topic {:?} has a malformed record",
                        String::from_utf8_lossy(&name)
                    ));
                }
                rows.push((name, decode_topic(&value)));
            }
            Ok(rows)
        })?;
        let mut batch = self.batch()?;
        let mut topics = Vec::with_capacity(rows.len());
        for (name, mut row) in rows {
            if epochs_changed {
                row.epoch = epoch;
                batch.put_topic(&name, row);
            }
            let stored = StoredTopic {
                epoch: row.epoch,
                last_seq: row.last_seq,
                oldest_seq: self.oldest_seq(row.id)?,
                name,
            };
            topics.push((row.id, stored));
        }
        batch.put_meta(META_FORMAT, &FORMAT_VERSION.to_be_bytes());
        batch.put_meta(META_RUN, &[durability.name().as_bytes()[0], 0]);
        batch.commit(true)?;
        Ok((topics, epochs_changed))
    }

    /// Runs `f` on the open database.
    fn with_db<T>(&self, f: impl FnOnce(&DB) -> Result<T, String>) -> Result<T, String> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(CLOSED.to_string()),
        }
    }

    /// A new write batch for the open database.
    pub fn batch(&self) -> Result<Batch<'_>, String> {
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        if db.is_none() {
            return Err(CLOSED.to_string());
        }
        Ok(Batch {
            db,
            batch: WriteBatch::default(),
            #[cfg(test)]
            fail: self
                .commits_to_fail
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        })
    }

    /// Makes the next `n` batches fail at commit.
    #[cfg(test)]
    pub fn fail_commits(&self, n: u32) {
        self.commits_to_fail.store(n, Ordering::Relaxed);
    }

    /// Closes and opens the database again. After a failed WAL write
    /// RocksDB refuses every later write until reopened (it cannot resume by
    /// itself), so this is how the writer recovers once the disk has room.
    /// Reads wait meanwhile; if opening fails the database stays closed and
    /// every use fails clearly until a later reopen succeeds.
    pub fn reopen(&self) -> Result<(), String> {
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        *db = None; // closes: the lock file is released before opening anew
        *db = Some(open_rocks(&self.dir, self.table)?);
        Ok(())
    }

    /// Records that this run stopped cleanly (nothing acknowledged is lost).
    pub fn mark_clean_stop(&self, durability: Durability) -> Result<(), String> {
        let mut batch = self.batch()?;
        batch.put_meta(META_RUN, &[durability.name().as_bytes()[0], 1]);
        batch.commit(true)
    }

    /// The newest block of a player's path: its number and bytes.
    pub fn last_path_block(&self, player: &[u8]) -> Result<Option<(u32, Vec<u8>)>, String> {
        let last = path_key(player, u32::MAX);
        let prefix = &last[..last.len() - 4];
        self.with_db(|db| {
            let mut iter = db.iterator_cf(
                cf(db, CF_PATHS),
                IteratorMode::From(&last, Direction::Reverse),
            );
            match iter.next() {
                Some(Ok((key, value))) if key.len() == last.len() && key.starts_with(prefix) => {
                    let block = u32::from_be_bytes(key[prefix.len()..].try_into().expect("4"));
                    Ok(Some((block, value.into_vec())))
                }
                Some(Err(e)) => Err(e.to_string()),
                _ => Ok(None),
            }
        })
    }

    /// Calls `f` with each block of a player's path, oldest first, while it
    /// returns true.
    pub fn for_each_path_block(
        &self,
        player: &[u8],
        mut f: impl FnMut(u32, &[u8]) -> bool,
    ) -> Result<(), String> {
        let first = path_key(player, 0);
        let prefix = &first[..first.len() - 4];
        self.with_db(|db| {
            let iter = db.iterator_cf(
                cf(db, CF_PATHS),
                IteratorMode::From(&first, Direction::Forward),
            );
            for item in iter {
                let (key, value) = item.map_err(|e| e.to_string())?;
                if key.len() != first.len() || !key.starts_with(prefix) {
                    break;
                }
                let block = u32::from_be_bytes(key[prefix.len()..].try_into().expect("4"));
                if !f(block, &value) {
                    break;
                }
            }
            Ok(())
        })
    }

    /// Flushes the events family and compacts all of it into the bottom
    /// level (for measuring); returns its SST bytes on disk.
    pub fn compact_events(&self) -> Result<u64, String> {
        self.with_db(|db| {
            let events = cf(db, CF_EVENTS);
            db.flush_cf(events).map_err(|e| e.to_string())?;
            let mut opts = CompactOptions::default();
            opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
            db.compact_range_cf_opt(events, None::<&[u8]>, None::<&[u8]>, &opts);
            db.property_int_value_cf(events, "rocksdb.total-sst-files-size")
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no rocksdb.total-sst-files-size".to_string())
        })
    }

    /// Gives a deleted topic's space back: drops the table files that hold
    /// only its events, then compacts its key range, which flushes its
    /// tombstone from memory and rewrites the files it shares with other
    /// topics without it. That can take a while on a large log: call it off
    /// the writer's thread.
    pub fn reclaim_topic(&self, topic_id: u64) -> Result<(), String> {
        self.with_db(|db| {
            let events = cf(db, CF_EVENTS);
            let (from, to) = (event_key(topic_id, 0), event_key(topic_id, u64::MAX));
            db.delete_file_in_range_cf(events, from, to)
                .map_err(|e| e.to_string())?;
            db.compact_range_cf(events, Some(from), Some(to));
            Ok(())
        })
    }

    /// Syncs the WAL (async durability does this periodically).
    pub fn sync_wal(&self) -> Result<(), String> {
        self.with_db(|db| db.flush_wal(true).map_err(|e| e.to_string()))
    }

    pub fn topic(&self, name: &[u8]) -> Result<Option<TopicRow>, String> {
        self.with_db(|db| {
            let value = db
                .get_pinned_cf(cf(db, CF_TOPICS), name)
                .map_err(|e| e.to_string())?;
            Ok(value
                .filter(|v| v.len() == TOPIC_VALUE_BYTES)
                .map(|v| decode_topic(&v)))
        })
    }

    /// When event `seq` of a topic was published (ns since 1970), if stored.
    pub fn event_time(&self, topic_id: u64, seq: u64) -> Result<Option<u64>, String> {
        self.with_db(|db| {
            let value = db
                .get_pinned_cf(cf(db, CF_EVENTS), event_key(topic_id, seq))
                .map_err(|e| e.to_string())?;
            Ok(value
                .filter(|v| v.len() >= EVENT_VALUE_HEADER_BYTES)
                .map(|v| be_u64(&v)))
        })
    }

    /// The oldest stored sequence of a topic, 0 if none.
    pub fn oldest_seq(&self, topic_id: u64) -> Result<u64, String> {
        Ok(self.first_seq_from(topic_id, 0)?.unwrap_or(0))
    }

    /// The first stored sequence of a topic at or after `from`.
    fn first_seq_from(&self, topic_id: u64, from: u64) -> Result<Option<u64>, String> {
        self.with_db(|db| {
            let mut opts = ReadOptions::default();
            opts.set_prefix_same_as_start(true);
            let start = event_key(topic_id, from);
            let mut iter = db.iterator_cf_opt(
                cf(db, CF_EVENTS),
                opts,
                IteratorMode::From(&start, Direction::Forward),
            );
            match iter.next() {
                Some(Ok((key, _))) if key.len() == EVENT_KEY_BYTES && key[..8] == start[..8] => {
                    Ok(Some(be_u64(&key[8..])))
                }
                Some(Err(e)) => Err(e.to_string()),
                _ => Ok(None),
            }
        })
    }

    /// Appends the EVENT frames of `topic`, sequences `from..=to`, to `out`
    /// while they fit in `bytes_max` (at least one).
    pub fn read_events(
        &self,
        row: TopicRow,
        topic: &[u8],
        from: u64,
        to: u64,
        bytes_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(ReadStatus, u64), String> {
        let topic_id = row.id;
        let begin = out.len();
        self.with_db(|db| {
            let mut opts = ReadOptions::default();
            opts.set_iterate_lower_bound(event_key(topic_id, from).to_vec());
            opts.set_iterate_upper_bound(event_key(topic_id, to.saturating_add(1)).to_vec());
            opts.set_prefix_same_as_start(true);
            let start = event_key(topic_id, from);
            let iter = db.iterator_cf_opt(
                cf(db, CF_EVENTS),
                opts,
                IteratorMode::From(&start, Direction::Forward),
            );
            for (expected, item) in (from..).zip(iter) {
                let (key, value) = item.map_err(|e| e.to_string())?;
                if key.len() != EVENT_KEY_BYTES || value.len() < EVENT_VALUE_HEADER_BYTES {
                    return Err(format!("malformed event record at key {key:02x?}"));
                }
                let seq = be_u64(&key[8..]);
                if seq != expected {
                    break; // a hole: the next read starting here reports it
                }
                let frame = Frame::Event(Event {
                    seq,
                    epoch: row.epoch,
                    publish_ts_ns: be_u64(&value[0..]),
                    topic,
                    payload: &value[EVENT_VALUE_HEADER_BYTES..],
                });
                if out.len() > begin && out.len() - begin + frame.encoded_len() > bytes_max {
                    break;
                }
                frame.encode(out);
            }
            Ok(())
        })?;
        if out.len() > begin {
            return Ok((ReadStatus::Found, from));
        }
        // Nothing at `from`: deleted by retention, lost in a failed async
        // batch (a later sequence is stored), or not written yet.
        match self.first_seq_from(topic_id, from)? {
            Some(next) => Ok((ReadStatus::Gone, next)),
            None => Ok((ReadStatus::NotYet, 0)),
        }
    }
}

/// A write batch under construction, holding the open database it is for
/// (a reopen waits until it is committed or dropped).
pub struct Batch<'a> {
    db: RwLockReadGuard<'a, Option<DB>>,
    batch: WriteBatch,
    #[cfg(test)]
    fail: bool,
}

impl Batch<'_> {
    fn put(&mut self, family: &str, key: &[u8], value: &[u8]) {
        let db = self
            .db
            .as_ref()
            .expect("a batch is made for an open database");
        self.batch.put_cf(cf(db, family), key, value);
    }

    pub fn put_event(&mut self, topic_id: u64, event: &Event<'_>) {
        let mut value = Vec::with_capacity(EVENT_VALUE_HEADER_BYTES + event.payload.len());
        value.extend_from_slice(&event.publish_ts_ns.to_be_bytes());
        value.extend_from_slice(event.payload);
        self.put(CF_EVENTS, &event_key(topic_id, event.seq), &value);
    }

    pub fn put_topic(&mut self, name: &[u8], row: TopicRow) {
        let mut value = [0u8; TOPIC_VALUE_BYTES];
        value[0..8].copy_from_slice(&row.id.to_be_bytes());
        value[8..16].copy_from_slice(&row.epoch.to_be_bytes());
        value[16..24].copy_from_slice(&row.last_seq.to_be_bytes());
        self.put(CF_TOPICS, name, &value);
    }

    /// Deletes a topic's events `from..to` (one range tombstone).
    pub fn delete_events(&mut self, topic_id: u64, from: u64, to: u64) {
        let db = self
            .db
            .as_ref()
            .expect("a batch is made for an open database");
        self.batch.delete_range_cf(
            cf(db, CF_EVENTS),
            event_key(topic_id, from),
            event_key(topic_id, to),
        );
    }

    /// Deletes a topic's row and all its events (one range tombstone).
    pub fn delete_topic(&mut self, name: &[u8], topic_id: u64) {
        self.delete_events(topic_id, 0, u64::MAX);
        let db = self
            .db
            .as_ref()
            .expect("a batch is made for an open database");
        self.batch.delete_cf(cf(db, CF_TOPICS), name);
    }

    pub fn put_path(&mut self, player: &[u8], block: u32, value: &[u8]) {
        self.put(CF_PATHS, &path_key(player, block), value);
    }

    fn put_meta(&mut self, key: &[u8], value: &[u8]) {
        self.put(CF_META, key, value);
    }

    /// Writes the batch; `sync` waits for the WAL to reach the disk.
    pub fn commit(self, sync: bool) -> Result<(), String> {
        #[cfg(test)]
        if self.fail {
            return Err("injected commit failure".into());
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        let db = self
            .db
            .as_ref()
            .expect("a batch is made for an open database");
        db.write_opt(self.batch, &opts).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every events table reads back what was written, from the compacted
    /// (compressed) bottom level and after a reopen, which keeps the table.
    #[test]
    fn every_event_table_reads_back_its_events_after_compaction_and_reopen() {
        let small_blocks = EventTable {
            block_bytes: 4096,
            dict_bytes: 0,
            dict_train_bytes: 0,
        };
        let tables = [EventTable::DEFAULT, small_blocks];
        for (n, table) in tables.into_iter().enumerate() {
            let dir =
                std::env::temp_dir().join(format!("cluecast-db-table-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let db = Db::open_with(&dir, Durability::Sync, 1, table).unwrap().db;
            let payload = |seq: u64| {
                format!(
                    "{{\"type\":\"chat\",\"n\":{seq},\"text\":\"hi {}\"}}",
                    seq * 7
                )
            };
            let mut batch = db.batch().unwrap();
            for seq in 1..=3000 {
                let body = payload(seq);
                let event = Event {
                    seq,
                    epoch: 1,
                    publish_ts_ns: seq * 1000,
                    topic: b"t",
                    payload: body.as_bytes(),
                };
                batch.put_event(1, &event);
            }
            let row = TopicRow {
                id: 1,
                epoch: 1,
                last_seq: 3000,
            };
            batch.put_topic(b"t", row);
            batch.commit(false).unwrap();
            let sst = db.compact_events().unwrap();
            assert!(sst > 0 && sst < 3000 * 40, "{table:?}: {sst} SST bytes");
            db.reopen().unwrap();
            assert_eq!(db.table, table);

            let mut out = Vec::new();
            let (status, _) = db
                .read_events(row, b"t", 1000, 1063, usize::MAX, &mut out)
                .unwrap();
            assert_eq!(status, ReadStatus::Found);
            let mut expected = Vec::new();
            for seq in 1000..=1063 {
                let body = payload(seq);
                Frame::Event(Event {
                    seq,
                    epoch: 1,
                    publish_ts_ns: seq * 1000,
                    topic: b"t",
                    payload: body.as_bytes(),
                })
                .encode(&mut expected);
            }
            assert_eq!(out, expected, "{table:?}");
            drop(db);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    /// A closed hunt's events give their space back, whether they fill
    /// table files of their own (as a long hunt's do once compacted) or
    /// share files with another topic (as recent events do); the other
    /// topic keeps its events.
    #[test]
    fn a_deleted_topic_gives_back_its_space_in_files_of_its_own_or_shared() {
        for shared in [false, true] {
            let dir = std::env::temp_dir()
                .join(format!("cluecast-db-close-{}-{shared}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let db = Db::open(&dir, Durability::Sync, 1).unwrap().db;
            let sst_bytes = |db: &Db| {
                db.with_db(|db| {
                    db.property_int_value_cf(cf(db, CF_EVENTS), "rocksdb.total-sst-files-size")
                        .map_err(|e| e.to_string())
                })
                .unwrap()
                .unwrap()
            };
            let row = |id| TopicRow {
                id,
                epoch: 1,
                last_seq: 5000,
            };
            // Flushed to table files each on its own (then compacted into
            // files of its own), or both together.
            let mut batch = db.batch().unwrap();
            for (id, name) in [(1, &b"one"[..]), (2, b"two")] {
                for seq in 1..=5000u64 {
                    let body = format!(
                        "{{\"n\":{seq},\"h\":\"{:x}\"}}",
                        seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    );
                    let event = Event {
                        seq,
                        epoch: 1,
                        publish_ts_ns: seq,
                        topic: name,
                        payload: body.as_bytes(),
                    };
                    batch.put_event(id, &event);
                }
                batch.put_topic(name, row(id));
                if !shared || id == 2 {
                    batch.commit(false).unwrap();
                    batch = db.batch().unwrap();
                    db.with_db(|db| {
                        let events = cf(db, CF_EVENTS);
                        db.flush_cf(events).map_err(|e| e.to_string())?;
                        if !shared {
                            let (from, to) = (event_key(id, 0), event_key(id, u64::MAX));
                            db.compact_range_cf(events, Some(from), Some(to));
                        }
                        Ok(())
                    })
                    .unwrap();
                }
            }
            drop(batch);
            let both = sst_bytes(&db);
            let mut batch = db.batch().unwrap();
            batch.delete_topic(b"one", 1);
            batch.commit(true).unwrap();
            db.reclaim_topic(1).unwrap();
            let after = sst_bytes(&db);
            assert!(
                after * 3 < both * 2,
                "shared {shared}: {both} SST bytes before, {after} after"
            );
            assert_eq!(db.topic(b"one").unwrap(), None);
            let mut out = Vec::new();
            let (status, _) = db
                .read_events(row(1), b"one", 1, 5000, usize::MAX, &mut out)
                .unwrap();
            assert_eq!(
                (status, out.len()),
                (ReadStatus::NotYet, 0),
                "none of it is left"
            );
            let (status, _) = db
                .read_events(row(2), b"two", 1, 5000, usize::MAX, &mut out)
                .unwrap();
            assert_eq!(status, ReadStatus::Found);
            drop(db);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
