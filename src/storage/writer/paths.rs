//! Players' open path blocks: each POSITION goes into its player's block
//! (read back from disk when the player is not in memory), a full block is
//! sealed, and what changed waits in memory until a batch writes it.

use super::*;
use crate::storage::path_block::{decode_block, BlockBuilder};
use cluecast_proto::Position;

/// Players whose open path block is kept in memory; past it, those idle
/// for `PATH_IDLE` are let go (their block is on disk and is read back when
/// they move again).
const OPEN_PATHS_MAX: usize = 100_000;
const PATH_IDLE: Duration = Duration::from_secs(60);

/// A player's path block being filled, rewritten whole in every batch that
/// adds to it and sealed once full.
pub(super) struct OpenPath {
    pub(super) block: u32,
    pub(super) builder: BlockBuilder,
    /// Changed since the last successful batch.
    pub(super) dirty: bool,
    last_used: Instant,
}

impl Writer {
    /// Adds a POSITION record to its player's open block, sealing it once
    /// full. Kept in memory until a batch writes it (failed batches too).
    pub(super) fn add_position(&mut self, player: &[u8], position: &Position) {
        if !self.paths.contains_key(player) {
            match self.load_path(player) {
                Ok(path) => {
                    self.paths.insert(player.into(), path);
                }
                Err(e) => {
                    crate::error!(
                        "storage: cannot read the path of player {:?}: {e}; a position is lost",
                        String::from_utf8_lossy(player)
                    );
                    return;
                }
            }
        }
        let path = self.paths.get_mut(player).expect("inserted above");
        path.builder.push(position);
        path.dirty = true;
        path.last_used = Instant::now();
        self.paths_dirty = true;
        if path.builder.is_full() {
            self.sealed
                .push((player.into(), path.block, path.builder.finish()));
            path.block += 1;
            path.builder.clear();
        }
    }

    /// A player's open block as stored: the newest block if it has room,
    /// else a new one after it. A damaged newest block is left as it is
    /// (and reported): the path continues in the next block.
    fn load_path(&self, player: &[u8]) -> Result<OpenPath, String> {
        let mut path = OpenPath {
            block: 0,
            builder: BlockBuilder::new(),
            dirty: false,
            last_used: Instant::now(),
        };
        let Some((block, bytes)) = self.db.last_path_block(player)? else {
            return Ok(path);
        };
        path.block = block + 1;
        match decode_block(&bytes) {
            Ok(positions) => {
                for p in &positions {
                    path.builder.push(p);
                }
                if !path.builder.is_full() {
                    path.block = block;
                } else {
                    path.builder.clear();
                }
            }
            Err(e) => crate::error!(
                "storage: block {block} of player {:?}'s path is damaged ({e}); it is kept \
                 as it is and the path continues in block {}",
                String::from_utf8_lossy(player),
                block + 1
            ),
        }
        Ok(path)
    }

    /// After a successful batch: nothing of the paths waits any more; idle
    /// players are let go when too many are open.
    pub(super) fn paths_written(&mut self) {
        self.sealed.clear();
        self.paths_dirty = false;
        for path in self.paths.values_mut() {
            path.dirty = false;
        }
        if self.paths.len() > OPEN_PATHS_MAX {
            self.paths.retain(|_, p| p.last_used.elapsed() < PATH_IDLE);
        }
    }
}
