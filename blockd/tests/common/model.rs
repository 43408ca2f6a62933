//! What a block may read back as: the acknowledged content, or a later unacknowledged one.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use basalt::ids::ChunkKey;

/// Hash of a 4 KiB block's content.
pub fn block_hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Per block, the content versions in the order the store applies them.
#[derive(Clone, Debug)]
struct BlockHistory {
    /// Current content (the newest version), for building the next one.
    bytes: Vec<u8>,
    /// (hash, acknowledged) per version, oldest first; the first is always acknowledged.
    versions: Vec<(u64, bool)>,
}

/// Block-level model of every chunk.
#[derive(Clone, Debug, Default)]
pub struct Model {
    blocks: HashMap<(ChunkKey, u32), BlockHistory>,
    /// Versions each in-flight request produced: (chunk, block, version index).
    produced: HashMap<u64, Vec<(ChunkKey, u32, usize)>>,
}

const BLOCK: usize = 4096;

impl Model {
    fn history(&mut self, chunk: ChunkKey, block: u32) -> &mut BlockHistory {
        self.blocks
            .entry((chunk, block))
            .or_insert_with(|| BlockHistory {
                bytes: vec![0; BLOCK],
                versions: vec![(block_hash(&[0; BLOCK]), true)],
            })
    }

    /// Records request `tag` writing `data` (or zeroes if None) at `offset` of `chunk`.
    pub fn issue(&mut self, tag: u64, chunk: ChunkKey, offset: u32, len: u32, data: Option<&[u8]>) {
        let mut produced = Vec::new();
        let (start, end) = (offset as usize, (offset + len) as usize);
        for block in (start / BLOCK) as u32..end.div_ceil(BLOCK) as u32 {
            let b0 = block as usize * BLOCK;
            let history = self.history(chunk, block);
            let mut bytes = history.bytes.clone();
            let (from, to) = (start.max(b0), end.min(b0 + BLOCK));
            match data {
                Some(d) => bytes[from - b0..to - b0].copy_from_slice(&d[from - start..to - start]),
                None => bytes[from - b0..to - b0].fill(0),
            }
            history.versions.push((block_hash(&bytes), false));
            history.bytes = bytes;
            produced.push((chunk, block, history.versions.len() - 1));
        }
        self.produced.insert(tag, produced);
    }

    /// Records a whole-chunk delete.
    pub fn issue_delete(&mut self, tag: u64, chunk: ChunkKey, blocks_per_chunk: u32) {
        self.issue(tag, chunk, 0, blocks_per_chunk * BLOCK as u32, None);
    }

    /// Request `tag` was acknowledged: its versions, and every older one, are durable.
    pub fn ack(&mut self, tag: u64) {
        for (chunk, block, index) in self.produced.remove(&tag).unwrap_or_default() {
            let history = self.blocks.get_mut(&(chunk, block)).expect("issued block");
            history.versions[index].1 = true;
        }
    }

    /// Request `tag` failed: treat its versions as possible but never required.
    pub fn fail(&mut self, tag: u64) {
        self.produced.remove(&tag);
    }

    /// Index of the newest acknowledged version: content may be it or anything newer.
    fn oldest_allowed(history: &BlockHistory) -> usize {
        history
            .versions
            .iter()
            .rposition(|&(_, acked)| acked)
            .unwrap_or(0)
    }

    /// Whether `bytes` is an allowed content of the block now.
    pub fn allowed(&self, chunk: ChunkKey, block: u32, bytes: &[u8]) -> bool {
        let hash = block_hash(bytes);
        match self.blocks.get(&(chunk, block)) {
            None => bytes.iter().all(|&b| b == 0),
            Some(h) => h.versions[Self::oldest_allowed(h)..]
                .iter()
                .any(|&(v, _)| v == hash),
        }
    }

    /// Describes where `bytes` sits in the block's history (failure messages).
    pub fn explain(&self, chunk: ChunkKey, block: u32, bytes: &[u8]) -> String {
        let hash = block_hash(bytes);
        let zero = bytes.iter().all(|&b| b == 0);
        match self.blocks.get(&(chunk, block)) {
            None => format!("no history; zero={zero}"),
            Some(h) => format!(
                "zero={zero} found_at={:?} oldest_allowed={} versions={:?}",
                h.versions.iter().position(|&(v, _)| v == hash),
                Self::oldest_allowed(h),
                h.versions.iter().map(|&(_, a)| a).collect::<Vec<_>>()
            ),
        }
    }

    /// The newest content, when no request is in flight (exact comparison).
    pub fn current(&self, chunk: ChunkKey, block: u32) -> Vec<u8> {
        self.blocks
            .get(&(chunk, block))
            .map_or_else(|| vec![0; BLOCK], |h| h.bytes.clone())
    }

    /// After a crash: the block was found holding `bytes` (an allowed version); that is now
    /// the acknowledged state and every pending request is gone.
    pub fn settle_after_crash(&mut self, chunk: ChunkKey, block: u32, bytes: &[u8]) {
        let history = self.history(chunk, block);
        history.bytes = bytes.to_vec();
        history.versions = vec![(block_hash(bytes), true)];
    }

    /// Drops all in-flight request bookkeeping (after a crash).
    pub fn forget_in_flight(&mut self) {
        self.produced.clear();
    }

    /// Every block the model knows.
    pub fn known_blocks(&self) -> Vec<(ChunkKey, u32)> {
        let mut keys: Vec<_> = self.blocks.keys().copied().collect();
        keys.sort();
        keys
    }
}
