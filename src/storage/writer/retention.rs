//! What leaves the log: events past `--history-events-max` or past their
//! age, and closed topics (deleted in the batch that closes them, their
//! disk space then reclaimed on a thread of its own).

use super::*;

/// Closed topics waiting for their space to be reclaimed; past this the
/// space comes back with RocksDB's own compactions instead.
const RECLAIMS_QUEUED_MAX: usize = 64;

impl Writer {
    /// Deletes a topic's row and events in `batch`. A topic never stored
    /// (no event reached the writer) has nothing to delete.
    pub(super) fn close_topic(&mut self, batch: &mut Batch<'_>, name: &[u8]) {
        let Some(row) = self.topics.remove(name) else {
            return;
        };
        batch.delete_topic(name, row.row.id);
        self.closed.push((name.into(), row));
    }

    /// After a successful batch: the closed topics' space is reclaimed in
    /// the background, and no floor of theirs is told any more.
    pub(super) fn closes_written(&mut self) {
        for (name, row) in std::mem::take(&mut self.closed) {
            self.reclaim(row.row.id);
            for port in &mut self.ports {
                port.floors.retain(|(topic, _, _)| *topic != name);
            }
        }
    }

    /// Queues a deleted topic for the reclaiming thread. Its events are
    /// deleted already (the range tombstone); this only gives the disk
    /// space back sooner than RocksDB's own compactions would.
    fn reclaim(&mut self, topic_id: u64) {
        if self.reclaimer.is_none() {
            let (queue, ids) = std::sync::mpsc::sync_channel::<u64>(RECLAIMS_QUEUED_MAX);
            let db = self.db.clone();
            let thread = std::thread::Builder::new()
                .name("cluecast-reclaim".into())
                .spawn(move || {
                    for id in ids {
                        if let Err(e) = db.reclaim_topic(id) {
                            crate::warn!("storage: reclaiming a closed topic's space: {e}");
                        }
                    }
                });
            match thread {
                Ok(thread) => self.reclaimer = Some((queue, thread)),
                Err(e) => {
                    crate::warn!("storage: no thread to reclaim closed topics' space: {e}");
                    return;
                }
            }
        }
        let (queue, _) = self.reclaimer.as_ref().expect("started above");
        if queue.try_send(topic_id).is_err() {
            crate::debug!("storage: reclaim queue full; compactions free the space later");
        }
    }

    /// Trims the topics a batch added to down to `events_max` events.
    pub(super) fn enforce_retention(&mut self, touched: &[Box<[u8]>]) {
        if self.retention.events_max == 0 {
            return;
        }
        let mut trims = Vec::new();
        for name in touched {
            let Some(oldest) = self.oldest_seq(name) else {
                continue;
            };
            let row = &self.topics[name].row;
            if row.last_seq - oldest + 1 > self.retention.events_max {
                trims.push((name.clone(), row.last_seq - self.retention.events_max + 1));
            }
        }
        self.trim(trims);
    }

    /// Trims every topic whose oldest event is older than `age_ms`. The
    /// first event young enough is found by bisection (publish times rise
    /// with the sequence).
    pub(super) fn expire_by_age(&mut self) {
        let cutoff_ns =
            cluecast_sys::realtime_ns().saturating_sub(self.retention.age_ms * 1_000_000);
        let names: Vec<Box<[u8]>> = self.topics.keys().cloned().collect();
        let mut trims = Vec::new();
        for name in names {
            let Some(oldest) = self.oldest_seq(&name) else {
                continue;
            };
            let row = self.topics[&name].row;
            let time = |seq| self.db.event_time(row.id, seq);
            match time(oldest) {
                Ok(Some(t)) if t < cutoff_ns => {}
                Ok(_) => continue,
                Err(e) => {
                    crate::error!("storage: retention check failed: {e}");
                    return;
                }
            }
            // Invariant: `low` is too old; `high` is young enough, or one
            // past the newest (everything is too old).
            let (mut low, mut high) = (oldest, row.last_seq + 1);
            while high - low > 1 {
                let middle = low + (high - low) / 2;
                match time(middle) {
                    Ok(Some(t)) if t < cutoff_ns => low = middle,
                    Ok(_) => high = middle,
                    Err(e) => {
                        crate::error!("storage: retention check failed: {e}");
                        return;
                    }
                }
            }
            trims.push((name, high));
        }
        self.trim(trims);
    }

    /// The oldest stored sequence of a topic, looked up once.
    pub(super) fn oldest_seq(&mut self, name: &[u8]) -> Option<u64> {
        let row = self.topics.get_mut(name)?;
        if row.oldest_seq.is_none() {
            match self.db.oldest_seq(row.row.id) {
                Ok(0) => {}
                Ok(oldest) => row.oldest_seq = Some(oldest),
                Err(e) => crate::error!("storage: cannot read a topic's oldest event: {e}"),
            }
        }
        row.oldest_seq
    }

    /// Deletes each topic's events before its new floor (one range delete
    /// each, no sync: a trim lost to a crash is simply done again) and tells
    /// every shard the new floor.
    fn trim(&mut self, trims: Vec<(Box<[u8]>, u64)>) {
        if trims.is_empty() {
            return;
        }
        let result = self.db.batch().and_then(|mut batch| {
            for (name, floor) in &trims {
                let row = &self.topics[name];
                batch.delete_events(row.row.id, row.oldest_seq.unwrap_or(0), *floor);
            }
            batch.commit(false)
        });
        if let Err(e) = result {
            crate::error!("storage: deleting events past retention failed: {e}");
            return;
        }
        for (name, floor) in trims {
            let row = self.topics.get_mut(&name).expect("trimmed rows exist");
            row.oldest_seq = Some(floor);
            let epoch = row.row.epoch;
            for port in &mut self.ports {
                port.floors.retain(|(topic, _, _)| *topic != name);
                port.floors.push((name.clone(), floor, epoch));
            }
        }
        self.send_owed_notices();
    }
}
