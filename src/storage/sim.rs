//! The storage threads' side of the shard channels over an in-memory log,
//! for the deterministic simulation: what `writer` and `reader` do, driven
//! a step at a time from a seed, with faults the real disk can produce
//! (commits that take a while, batches that fail, reads that find nothing
//! yet or fail), and the same answers to failure as the writer: in `sync`
//! the batch's events fail, in `async` it is written again until it
//! succeeds. It asserts the log's own invariant as it goes: a stored
//! sequence is never stored again (until its topic is closed).

use std::collections::{BTreeMap, HashMap};

use cluecast_proto::{decode, Frame, Limits};

use super::{
    Durability, FromReader, ReadStatus, ReaderPort, ToReader, ToWriter, WriterPort, DURABLE,
    FAILED, READ_REPLY_BYTES_MAX,
};
use crate::ring::sim::Rng;

/// One batch in this many fails.
const FAIL_ONE_IN: u64 = 12;
/// A waiting batch commits in a step with probability 1 / this.
const COMMIT_ONE_IN: u64 = 3;
/// One read in this many finds nothing yet, or fails.
const READ_FAULT_ONE_IN: u64 = 8;

struct Port {
    writer: WriterPort,
    reader: ReaderPort,
    appends_seen: u64,
    durable_through: u64,
    failed: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SimStorageStats {
    pub commits: u64,
    pub failed_batches: u64,
    pub reads: u64,
    pub read_faults: u64,
    pub closes: u64,
}

/// A change read from a shard and not yet committed.
struct Appended {
    port: usize,
    topic: Box<[u8]>,
    /// The event's epoch, sequence and frame; None closes the topic.
    event: Option<(u64, u64, Vec<u8>)>,
}

pub struct SimStorage {
    rng: Rng,
    limits: Limits,
    durability: Durability,
    ports: Vec<Port>,
    /// Read but not yet committed.
    batch: Vec<Appended>,
    /// An async batch failed and is being retried (the shards were told).
    failing: bool,
    /// (topic, seq) -> the EVENT frame as stored.
    log: BTreeMap<(Box<[u8]>, u64), Vec<u8>>,
    /// Per topic: the epoch of its stored history and its newest sequence.
    stored: HashMap<Box<[u8]>, (u64, u64)>,
    pub stats: SimStorageStats,
}

impl SimStorage {
    pub fn new(
        seed: u64,
        limits: Limits,
        durability: Durability,
        writers: Vec<WriterPort>,
        readers: Vec<ReaderPort>,
    ) -> SimStorage {
        assert_ne!(durability, Durability::Memory);
        let ports = writers
            .into_iter()
            .zip(readers)
            .map(|(writer, reader)| Port {
                writer,
                reader,
                appends_seen: 0,
                durable_through: 0,
                failed: false,
            })
            .collect();
        SimStorage {
            rng: Rng(seed ^ 0x5707_a6e0),
            limits,
            durability,
            ports,
            batch: Vec::new(),
            failing: false,
            log: BTreeMap::new(),
            stored: HashMap::new(),
            stats: SimStorageStats::default(),
        }
    }

    /// The newest sequence stored for `topic`.
    pub fn newest(&self, topic: &[u8]) -> u64 {
        self.stored.get(topic).map_or(0, |&(_, newest)| newest)
    }

    /// One step of both threads: take appends (unless a failed async batch
    /// waits to be written again), maybe commit or fail the batch, and serve
    /// (or fault) the waiting reads.
    pub fn step(&mut self) {
        if !self.failing {
            for i in 0..self.ports.len() {
                self.take_appends(i);
            }
        }
        if !self.batch.is_empty() && self.rng.below(COMMIT_ONE_IN) == 0 {
            self.commit();
        }
        for i in 0..self.ports.len() {
            self.serve_reads(i);
        }
    }

    fn take_appends(&mut self, i: usize) {
        let port = &mut self.ports[i];
        while let Some((kind, body)) = port.writer.append_rx.peek() {
            match ToWriter::decode(kind, body) {
                ToWriter::Append(frame) => {
                    port.appends_seen += 1;
                    if !port.failed {
                        let Ok(Some((Frame::Event(e), _))) = decode(frame, &self.limits) else {
                            panic!("a shard appended a malformed event");
                        };
                        self.batch.push(Appended {
                            port: i,
                            topic: e.topic.into(),
                            event: Some((e.epoch, e.seq, frame.to_vec())),
                        });
                    }
                }
                ToWriter::Close(topic) => {
                    port.appends_seen += 1;
                    if !port.failed {
                        self.batch.push(Appended {
                            port: i,
                            topic: topic.into(),
                            event: None,
                        });
                    }
                }
                ToWriter::Resume => port.failed = false,
                ToWriter::Position { .. } => {} // paths are not simulated
            }
            port.writer.append_rx.pop();
        }
    }

    fn notify(&mut self, i: usize, kind: u8, message: &[u8]) {
        let port = &mut self.ports[i];
        let through = match kind {
            DURABLE => port.durable_through,
            _ if self.durability == Durability::Sync => port.appends_seen,
            _ => port.durable_through,
        };
        let pushed = port
            .writer
            .notice_tx
            .push(kind, &[&through.to_be_bytes(), message]);
        assert!(pushed, "sim: notice channel full");
    }

    fn commit(&mut self) {
        let contributed: Vec<bool> = (0..self.ports.len())
            .map(|i| self.batch.iter().any(|a| a.port == i))
            .collect();
        if self.rng.below(FAIL_ONE_IN) == 0 {
            self.stats.failed_batches += 1;
            let message = b"simulated disk failure";
            if self.durability == Durability::Sync {
                self.batch.clear();
                for i in (0..self.ports.len()).filter(|&i| contributed[i]) {
                    self.ports[i].failed = true;
                    self.notify(i, FAILED, message);
                }
            } else if !self.failing {
                self.failing = true;
                for i in 0..self.ports.len() {
                    self.notify(i, FAILED, message);
                }
            }
            return;
        }
        for Appended { topic, event, .. } in std::mem::take(&mut self.batch) {
            let Some((epoch, seq, frame)) = event else {
                self.stats.closes += 1;
                self.log
                    .retain(|(stored, _), _| stored.as_ref() != topic.as_ref());
                self.stored.remove(&topic);
                continue;
            };
            let (stored_epoch, newest) = self.stored.entry(topic.clone()).or_insert((epoch, 0));
            assert!(
                seq > *newest && epoch == *stored_epoch,
                "sequence {seq} of {:?} in epoch {epoch:x} stored again (newest {newest} in \
                 epoch {stored_epoch:x})",
                String::from_utf8_lossy(&topic)
            );
            *newest = seq;
            self.log.insert((topic, seq), frame);
        }
        self.stats.commits += 1;
        let recovered = std::mem::take(&mut self.failing);
        for i in (0..self.ports.len()).filter(|&i| contributed[i] || recovered) {
            self.ports[i].durable_through = self.ports[i].appends_seen;
            self.notify(i, DURABLE, b"");
        }
    }

    fn serve_reads(&mut self, i: usize) {
        while let Some((kind, body)) = self.ports[i].reader.read_rx.peek() {
            let asked = ToReader::decode(kind, body);
            let reply_kind = FromReader::kind_answering(&asked);
            let ToReader::Read(request) = asked else {
                panic!("path reads are not simulated");
            };
            let mut reply = Vec::new();
            let frames_at = request.start_reply(&mut reply);
            let bytes_max = (request.bytes_max as usize).min(READ_REPLY_BYTES_MAX);
            let other_history = self
                .stored
                .get(request.topic)
                .is_some_and(|&(epoch, _)| epoch != request.epoch);
            let (status, oldest) = if other_history {
                (ReadStatus::NotYet, 0)
            } else if self.rng.below(READ_FAULT_ONE_IN) == 0 {
                self.stats.read_faults += 1;
                let status = if self.rng.below(2) == 0 {
                    ReadStatus::NotYet
                } else {
                    ReadStatus::Failed
                };
                (status, 0)
            } else {
                let topic: Box<[u8]> = request.topic.into();
                let range = (topic.clone(), request.from)..=(topic, request.to);
                for (expected, ((_, seq), frame)) in (request.from..).zip(self.log.range(range)) {
                    let full = reply.len() > frames_at
                        && reply.len() - frames_at + frame.len() > bytes_max;
                    if *seq != expected || full {
                        break;
                    }
                    reply.extend_from_slice(frame);
                }
                let topic: Box<[u8]> = request.topic.into();
                let later = self
                    .log
                    .range((topic.clone(), request.from)..=(topic, u64::MAX));
                match later.map(|((_, seq), _)| *seq).next() {
                    _ if reply.len() > frames_at => (ReadStatus::Found, request.from),
                    // A hole: a failed async batch never stored it.
                    Some(next) => (ReadStatus::Gone, next),
                    None => (ReadStatus::NotYet, 0),
                }
            };
            self.stats.reads += 1;
            request.finish_reply(&mut reply, status, oldest);
            let port = &self.ports[i];
            if !port.reader.reply_tx.push(reply_kind, &[&reply]) {
                return; // the shard drains its replies every turn
            }
            port.reader.read_rx.pop();
        }
    }
}
