//! Players' positions and paths: positions handed to the storage writer,
//! and PATH_QUERY reads that wait until every position received before
//! them is written.

use super::*;

/// POSITION records pushed to the writer, ever, and how many of them it
/// has written: a PATH_QUERY waits in `waiting` (with the count it must
/// see, and its read request) until the positions received before it are
/// readable.
#[derive(Default)]
pub(super) struct PathReads {
    positions_pushed: u64,
    positions_written: u64,
    waiting: VecDeque<(u64, Box<[u8]>)>,
}

impl Core {
    /// Appends a position to its player's path. Positions of a client that
    /// gave no client_id have no player to belong to, and with memory-only
    /// history there is no path; both are counted, not stored.
    pub(super) fn store_position(&mut self, index: u32, position: &Position) {
        let player = &self.conns[index as usize].player;
        let Some(ports) = self.storage.as_ref().filter(|_| !player.is_empty()) else {
            self.stats.positions_not_stored += 1;
            return;
        };
        let record = ToWriter::Position {
            player,
            position: *position,
        };
        if ports.to_writer(&mut self.outbox, &record) {
            self.stats.positions += 1;
            self.path_reads.positions_pushed += 1;
        } else {
            // The writer is behind by a whole channel: overload, counted.
            self.stats.positions_not_stored += 1;
        }
    }

    /// Passes a PATH_QUERY to the storage reader once every position this
    /// shard received before it is written (a connection reads its own
    /// writes); the answer comes back as whole PATH frames (`on_path_frames`).
    pub(super) fn path_query(&mut self, index: u32, query: &PathQuery<'_>) {
        let allowed = self.allowed(index, |g| g.may_read_path(query.player));
        let refusal = match &self.storage {
            _ if !allowed => Some(ErrorCode::NotAuthorized),
            None => Some(ErrorCode::StorageFailed),
            Some(_) if self.conns[index as usize].path_query_in_flight => {
                Some(ErrorCode::Overloaded)
            }
            Some(_) => {
                let request = PathRequest {
                    conn: index,
                    generation: self.generations[index as usize],
                    request_id: query.request_id,
                    since_ms: query.since_ms,
                    player: query.player,
                };
                self.conns[index as usize].path_query_in_flight = true;
                if self.path_reads.positions_written >= self.path_reads.positions_pushed {
                    self.read_path(&request);
                } else {
                    let record = [&request.encode()[..], query.player].concat();
                    let wait_for = self.path_reads.positions_pushed;
                    self.path_reads.waiting.push_back((wait_for, record.into()));
                }
                None
            }
        };
        if let Some(code) = refusal {
            self.refuse_path(index, query.request_id, code);
        }
    }

    /// Hands a path read to the reader; a full channel refuses it as
    /// Overloaded.
    fn read_path(&mut self, request: &PathRequest<'_>) {
        let ports = self.storage.as_ref().expect("path reads need storage");
        if ports.to_reader(&mut self.outbox, &ToReader::PathRead(request.clone())) {
            return;
        }
        self.end_path_read(request, ErrorCode::Overloaded);
    }

    /// The writer has written positions up to `through`: the path reads
    /// waiting for them go to the reader.
    pub(super) fn on_positions_written(&mut self, through: u64) {
        self.path_reads.positions_written = self.path_reads.positions_written.max(through);
        while let Some((wait_for, _)) = self.path_reads.waiting.front() {
            if *wait_for > self.path_reads.positions_written {
                break;
            }
            let (_, record) = self.path_reads.waiting.pop_front().expect("front exists");
            self.read_path(&PathRequest::decode(&record));
        }
    }

    /// The positions of a failed batch are readable only once a later one
    /// writes them: path reads waiting for them are refused, not held.
    pub(super) fn refuse_waiting_path_reads(&mut self) {
        while let Some((_, record)) = self.path_reads.waiting.pop_front() {
            self.end_path_read(&PathRequest::decode(&record), ErrorCode::StorageFailed);
        }
    }

    /// Answers a path read that will not reach the reader, if its
    /// connection is still the one that asked.
    pub(super) fn end_path_read(&mut self, request: &PathRequest<'_>, code: ErrorCode) {
        let asker = ConnId {
            index: request.conn,
            generation: request.generation,
        };
        if self.is_open(asker) {
            self.conns[request.conn as usize].path_query_in_flight = false;
            self.refuse_path(request.conn, request.request_id, code);
        }
    }

    fn refuse_path(&mut self, index: u32, request_id: u32, code: ErrorCode) {
        let answer = Frame::Path(Path {
            request_id,
            status: code as u16,
            flags: PATH_FLAG_LAST,
            positions: &[],
        });
        self.queue_control(index, &answer);
    }

    /// The reader's answer to a PATH_QUERY: control frames, outside the
    /// queue bound (one answer per connection at a time, bounded in size).
    pub(super) fn on_path_frames(&mut self, asker: ConnId, frames: &[u8]) {
        if !self.is_open(asker) {
            return;
        }
        let index = asker.index;
        let mut frames = frames;
        self.conns[index as usize].path_query_in_flight = false;
        while frames.len() >= 4 {
            let len = 4 + u32::from_be_bytes(frames[..4].try_into().expect("4 bytes")) as usize;
            let Some(frame) = self.alloc(len, Use::Control) else {
                crate::warn!("shard {}: no arena memory for a path answer", self.id);
                self.abort(index);
                return;
            };
            self.arena.bytes_mut(frame).copy_from_slice(&frames[..len]);
            self.conns[index as usize].push(frame, len);
            frames = &frames[len..];
        }
        self.mark_dirty(index);
    }
}
