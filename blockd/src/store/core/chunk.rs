//! In-memory state of one chunk replica.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use basalt::ids::ChunkVersion;

use super::journal::ReqId;
use crate::store::buf::AlignedBuf;
use crate::store::format::BlockEntry;

/// Data of a journaled small write that is durable in the journal but not yet copied to its
/// data block. Reads are served from here meanwhile.
#[derive(Clone, Debug)]
pub struct OverlayBlock {
    /// Buffer holding the block.
    pub buf: Arc<AlignedBuf>,
    /// Block index within `buf`.
    pub index: u32,
}

impl OverlayBlock {
    /// The block's bytes.
    pub fn bytes(&self) -> &[u8] {
        let start = self.index as usize * 4096;
        &self.buf.as_slice()[start..start + 4096]
    }
}

/// One chunk's block map, version, and bookkeeping for locks, applies and checkpoints.
#[derive(Debug)]
pub struct ChunkState {
    /// Metadata slot holding this chunk.
    pub slot: u32,
    /// Last applied version.
    pub version: ChunkVersion,
    /// Committed block map: durable data (journal or data area) for every mapped block.
    pub blocks: Vec<BlockEntry>,
    /// Journaled blocks awaiting their copy to the data area.
    pub overlay: HashMap<u32, OverlayBlock>,
    /// Batches whose journaled data is still being copied: seq → number of requests.
    pub pending_applies: BTreeMap<u64, u32>,
    /// Oldest durable batch with changes not yet in the chunk's slot (None: slot is current).
    pub first_dirty_seq: Option<u64>,
    /// Newest durable batch that changed the chunk.
    pub last_seq: u64,
    /// Whether a durable record or slot says the chunk exists.
    pub exists: bool,
    /// Mutating requests that reference the chunk (it must not be dropped while > 0).
    pub users: u32,
    /// Requests waiting for block locks, in arrival order.
    pub waiting: VecDeque<ReqId>,
    locks: Vec<u64>,
}

impl ChunkState {
    /// A chunk in `slot` with every block unmapped.
    pub fn new(slot: u32, blocks_per_chunk: u32) -> Self {
        Self {
            slot,
            version: ChunkVersion::default(),
            blocks: vec![BlockEntry::UNMAPPED; blocks_per_chunk as usize],
            overlay: HashMap::new(),
            pending_applies: BTreeMap::new(),
            first_dirty_seq: None,
            last_seq: 0,
            exists: false,
            users: 0,
            waiting: VecDeque::new(),
            locks: vec![0; (blocks_per_chunk as usize).div_ceil(64)],
        }
    }

    fn lock_bit(&self, block: u32) -> bool {
        self.locks[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// Whether any block of `range` is locked.
    pub fn any_locked(&self, range: &Range<u32>) -> bool {
        range.clone().any(|b| self.lock_bit(b))
    }

    /// Locks `range`; it must be free.
    pub fn lock(&mut self, range: &Range<u32>) {
        for b in range.clone() {
            assert!(!self.lock_bit(b), "block {b} locked twice");
            self.locks[(b / 64) as usize] |= 1 << (b % 64);
        }
    }

    /// Unlocks `range`; it must be locked.
    pub fn unlock(&mut self, range: &Range<u32>) {
        for b in range.clone() {
            assert!(self.lock_bit(b), "block {b} unlocked twice");
            self.locks[(b / 64) as usize] &= !(1 << (b % 64));
        }
    }

    /// Mapped blocks (data area or journal overlay).
    pub fn allocated_blocks(&self) -> u32 {
        let mapped = self.blocks.iter().filter(|b| b.is_mapped()).count();
        let overlay_only = self
            .overlay
            .keys()
            .filter(|&&b| !self.blocks[b as usize].is_mapped())
            .count();
        (mapped + overlay_only) as u32
    }

    /// Whether a block holds data.
    pub fn is_allocated(&self, block: u32) -> bool {
        self.blocks[block as usize].is_mapped() || self.overlay.contains_key(&block)
    }

    /// Sequence number a slot snapshot taken now reflects completely: everything up to the
    /// oldest batch whose journaled data is still being copied.
    pub fn snapshot_seq(&self) -> u64 {
        match self.pending_applies.keys().next() {
            Some(&oldest) => oldest - 1,
            None => self.last_seq,
        }
    }

    /// Marks the chunk changed by durable batch `seq`. The chunk's version is the highest
    /// version applied, not the last to become durable: two writes to different blocks of a
    /// chunk may complete out of order, and replication resumes a PG from the highest version
    /// on disk.
    pub fn touch(&mut self, seq: u64, version: ChunkVersion) {
        debug_assert!(seq >= self.last_seq);
        self.last_seq = seq;
        // A deleted chunk starts over (as journal replay does): recovery deletes a chunk and
        // rewrites it under a lower label than it had.
        self.version = if self.exists {
            self.version.max(version)
        } else {
            version
        };
        self.exists = true;
        if self.first_dirty_seq.is_none() {
            self.first_dirty_seq = Some(seq);
        }
    }
}
