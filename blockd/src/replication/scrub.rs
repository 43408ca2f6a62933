//! Repair from checksums: the background **scrub** of the PGs a node leads, and the pieces the
//! primary's **read repair** shares with it (`docs/replication.md` "Repair and scrub").
//!
//! The store verifies every block's crc32c on read and answers `Corrupt` rather than wrong
//! data. A scrub pass reads every allocated block of every chunk of the PGs this node leads,
//! asks each other acting member for the same chunk's label and per-block digest
//! ([`RecoveryRequest::Digest`]), and compares them with [`compare`] (pure): members at the
//! same label must hold the same bytes, so a corrupt or different block is repaired from a good
//! copy — the primary's own block from a member, a member's block with the primary's copy
//! ([`RecoveryRequest::Repair`]). A repair keeps the chunk's label and is applied only while the
//! chunk is still at the label the good copy was read at and nothing is in flight for the PG on
//! that node (the PG task checks, see `actor.rs`), so it can never undo a newer write.
//!
//! [`RecoveryRequest::Digest`]: super::RecoveryRequest::Digest
//! [`RecoveryRequest::Repair`]: super::RecoveryRequest::Repair

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use basalt::ids::{ChunkKey, ChunkVersion, Epoch, NodeId};
use basalt::units::BLOCK_SIZE_BYTES;
use basalt::wire::{Bytes, Status};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

use super::actor::{Input, Request};
use super::recovery::{End, RecoveryCtx, RecoveryError, Throttle};
use super::recovery_msg::{RECOVERY_PIECE_BYTES_MAX, RecoveryReply, RecoveryRequest};
use super::types::ChunkRange;
use crate::store::{Store, StoreError};

/// Default scrub read rate (see `[scrub] bytes_per_sec`).
pub const SCRUB_BYTES_PER_SEC_DEFAULT: u64 = 64 * 1024 * 1024;

/// Default time between the starts of two automatic passes (see `[scrub] interval`).
pub const SCRUB_INTERVAL_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most blocks one [`RecoveryRequest::Repair`] rewrites: their data fits a recovery piece.
///
/// [`RecoveryRequest::Repair`]: super::RecoveryRequest::Repair
pub const REPAIR_BLOCKS_MAX: usize = (RECOVERY_PIECE_BYTES_MAX / BLOCK_SIZE_BYTES) as usize;

/// How a node runs its scrub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubSettings {
    /// Start a pass every `interval` (passes requested through the API run regardless).
    pub enabled: bool,
    /// Local bytes read per second by a pass (0: unlimited).
    pub bytes_per_sec: u64,
    /// Time between the starts of two automatic passes; the first starts one interval after
    /// the service.
    pub interval: Duration,
}

impl Default for ScrubSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            bytes_per_sec: SCRUB_BYTES_PER_SEC_DEFAULT,
            interval: SCRUB_INTERVAL_DEFAULT,
        }
    }
}

/// One block of a chunk copy as a scrub sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockDigest {
    /// Not allocated: reads as zeros.
    Unmapped,
    /// Allocated, read back with a valid checksum; the crc32c of its bytes.
    Crc(u32),
    /// Allocated and failed its checksum.
    Corrupt,
}

impl BlockDigest {
    /// The crc32c of the block's content (an unmapped block is a zero block); `None` when the
    /// content is unknown (corrupt).
    pub fn content(self) -> Option<u32> {
        match self {
            BlockDigest::Unmapped => Some(zero_block_crc()),
            BlockDigest::Crc(crc) => Some(crc),
            BlockDigest::Corrupt => None,
        }
    }
}

/// The crc32c of a zero block (what an unmapped block reads as).
pub fn zero_block_crc() -> u32 {
    crc32c::crc32c(&[0u8; BLOCK_SIZE_BYTES as usize])
}

/// A chunk range's label and the digest of each of its blocks, taken with the label unchanged
/// from start to end (so the digests are the content at that label).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkDigest {
    /// The chunk's label (default for a chunk the member does not hold).
    pub label: ChunkVersion,
    /// One entry per block of the range, in order.
    pub blocks: Vec<BlockDigest>,
}

/// One block to rewrite: its new content, `None` to unmap it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockFix {
    /// Block index within the chunk.
    pub block: u32,
    /// The block's bytes ([`BLOCK_SIZE_BYTES`] of them), or `None` for a zero block.
    pub data: Option<Vec<u8>>,
}

/// Blocks of one chunk to rewrite while the chunk is still at `label` (which they keep).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RepairJob {
    pub(crate) chunk: ChunkKey,
    pub(crate) label: ChunkVersion,
    pub(crate) fixes: Vec<BlockFix>,
}

/// What a comparison of one chunk's copies found and what to do about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkVerdict {
    /// Bad copies of blocks found: each corrupt block, and each member block that differs from
    /// the good content, counts once.
    pub errors: u64,
    /// The primary's blocks to rewrite, each from the member named (whose copy is good).
    pub local: Vec<(u32, NodeId)>,
    /// Each member's blocks to rewrite with the good content (the primary's copy, once its own
    /// fixes are applied).
    pub remote: Vec<(NodeId, Vec<u32>)>,
    /// Blocks with no good copy among those compared.
    pub unrepairable: Vec<u32>,
    /// Members left out: a different label (writes in flight or recovery pending) or a
    /// digest of another length.
    pub skipped: Vec<NodeId>,
}

/// Compares the primary's digest of a chunk with the members' (pure). Only members at the
/// primary's label are compared: the same label means the same history, so the same bytes.
/// The good content of a block is the primary's when its copy is readable, otherwise the first
/// readable member copy's.
pub fn compare(own: &ChunkDigest, members: &[(NodeId, ChunkDigest)]) -> ChunkVerdict {
    let mut verdict = ChunkVerdict::default();
    let mut level: Vec<(NodeId, &ChunkDigest)> = Vec::new();
    for (node, digest) in members {
        if digest.label == own.label && digest.blocks.len() == own.blocks.len() {
            level.push((*node, digest));
        } else {
            verdict.skipped.push(*node);
        }
    }
    let mut remote: Vec<(NodeId, Vec<u32>)> = level.iter().map(|(n, _)| (*n, Vec::new())).collect();
    for (index, own_block) in own.blocks.iter().enumerate() {
        let block = index as u32;
        let good = match own_block.content() {
            Some(crc) => Some(crc),
            None => {
                verdict.errors += 1;
                let source = level
                    .iter()
                    .find_map(|(node, d)| d.blocks[index].content().map(|crc| (*node, crc)));
                match source {
                    Some((node, crc)) => {
                        verdict.local.push((block, node));
                        Some(crc)
                    }
                    None => {
                        verdict.unrepairable.push(block);
                        None
                    }
                }
            }
        };
        for (slot, (_, digest)) in level.iter().enumerate() {
            let theirs = digest.blocks[index].content();
            if theirs != good || theirs.is_none() {
                verdict.errors += 1;
                if good.is_some() {
                    remote[slot].1.push(block);
                }
            }
        }
    }
    remote.retain(|(_, blocks)| !blocks.is_empty());
    verdict.remote = remote;
    verdict
}

/// Reads blocks `[first, first + count)` of `chunk` from `store`, verifying each (the store
/// checks the checksum), and returns their digests. A corrupt block does not stop the scan.
pub(crate) async fn scan_blocks(
    store: &Store,
    chunk: ChunkKey,
    first: u32,
    count: u32,
) -> Result<Vec<BlockDigest>, StoreError> {
    let mut blocks = vec![BlockDigest::Unmapped; count as usize];
    if count == 0 {
        return Ok(blocks);
    }
    let offset = first * BLOCK_SIZE_BYTES;
    for extent in store
        .block_status(chunk, offset, count * BLOCK_SIZE_BYTES)
        .await?
    {
        if !extent.allocated || extent.len == 0 {
            continue;
        }
        let mut at = extent.offset;
        let end = extent.offset + extent.len;
        while at < end {
            let len = (end - at).min(RECOVERY_PIECE_BYTES_MAX);
            match store.read(chunk, at, len).await {
                Ok(data) => {
                    for (i, block) in data.chunks(BLOCK_SIZE_BYTES as usize).enumerate() {
                        let index = (at / BLOCK_SIZE_BYTES - first) as usize + i;
                        if let Some(slot) = blocks.get_mut(index) {
                            *slot = BlockDigest::Crc(crc32c::crc32c(block));
                        }
                    }
                    at += len;
                }
                Err(StoreError::Corrupt { .. }) => {
                    // The store names one bad block of the piece, not necessarily the first
                    // or the only one: take the piece again block by block (rare, and cheap
                    // next to the damage it measures).
                    for block_at in (at..at + len).step_by(BLOCK_SIZE_BYTES as usize) {
                        let digest = match store.read(chunk, block_at, BLOCK_SIZE_BYTES).await {
                            Ok(data) => BlockDigest::Crc(crc32c::crc32c(&data)),
                            Err(StoreError::Corrupt { .. }) => BlockDigest::Corrupt,
                            Err(error) => return Err(error),
                        };
                        let index = (block_at / BLOCK_SIZE_BYTES - first) as usize;
                        if let Some(slot) = blocks.get_mut(index) {
                            *slot = digest;
                        }
                    }
                    at += len;
                }
                Err(error) => return Err(error),
            }
        }
    }
    Ok(blocks)
}

/// The digest of blocks `[first, first + count)` of `chunk` in `store`: `None` if the chunk's
/// label moved while it was read (a write landed; try again later).
pub(crate) async fn digest(
    store: &Store,
    chunk: ChunkKey,
    first: u32,
    count: u32,
) -> Result<Option<ChunkDigest>, StoreError> {
    let before = store.chunk_version(chunk).await?.unwrap_or_default();
    let blocks = scan_blocks(store, chunk, first, count).await?;
    let after = store.chunk_version(chunk).await?.unwrap_or_default();
    Ok((before == after).then_some(ChunkDigest {
        label: before,
        blocks,
    }))
}

/// The figures of the pass in progress or the last one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassFigures {
    /// Chunks compared.
    pub chunks: u64,
    /// Allocated blocks read and verified on this node.
    pub blocks: u64,
    /// Bad block copies found (corrupt or different), on any member.
    pub errors: u64,
    /// Block copies rewritten.
    pub repairs: u64,
    /// Bad block copies left as they were (no good copy, or the chunk kept changing).
    pub unrepaired: u64,
    /// Chunks skipped: a member at another label, unreachable, or the chunk kept changing.
    pub skipped_chunks: u64,
}

/// A copy of [`ScrubStats`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubSnapshot {
    /// A pass is running.
    pub running: bool,
    /// Passes completed since start.
    pub passes: u64,
    /// Chunks the running pass has done and has in all (0 and 0 between passes).
    pub progress: (u64, u64),
    /// The running pass so far (or the last one's, between passes).
    pub current: PassFigures,
    /// Totals since start, over every pass.
    pub total: PassFigures,
    /// The last completed pass's figures and when it finished (Unix ms).
    pub last: Option<(u64, PassFigures)>,
    /// Blocks the primary's read repair rewrote since start.
    pub read_repairs: u64,
    /// Client reads answered from another member because the local copy was corrupt.
    pub reads_repaired: u64,
}

/// What this node's scrub and read repair report, and the switch that starts a pass now.
#[derive(Debug, Default)]
pub struct ScrubStats {
    running: AtomicBool,
    passes: AtomicU64,
    done_chunks: AtomicU64,
    total_chunks: AtomicU64,
    read_repairs: AtomicU64,
    reads_repaired: AtomicU64,
    figures: Mutex<Figures>,
    start: Notify,
}

#[derive(Debug, Default)]
struct Figures {
    current: PassFigures,
    total: PassFigures,
    last: Option<(u64, PassFigures)>,
}

impl ScrubStats {
    /// Asks the node's scrub to start a pass now; false (and nothing happens) if one is
    /// running.
    pub fn request_pass(&self) -> bool {
        if self.running.load(Ordering::Relaxed) {
            return false;
        }
        self.start.notify_one();
        true
    }

    /// Waits for [`Self::request_pass`].
    pub(crate) async fn requested(&self) {
        self.start.notified().await;
    }

    fn figures(&self) -> std::sync::MutexGuard<'_, Figures> {
        self.figures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn pass_started(&self, chunks: u64) {
        self.figures().current = PassFigures::default();
        self.done_chunks.store(0, Ordering::Relaxed);
        self.total_chunks.store(chunks, Ordering::Relaxed);
        self.running.store(true, Ordering::Relaxed);
    }

    /// Adds one chunk's figures to the running pass and the totals.
    pub(crate) fn add(&self, chunk: PassFigures) {
        let mut guard = self.figures();
        let figures = &mut *guard;
        for target in [&mut figures.current, &mut figures.total] {
            target.chunks += chunk.chunks;
            target.blocks += chunk.blocks;
            target.errors += chunk.errors;
            target.repairs += chunk.repairs;
            target.unrepaired += chunk.unrepaired;
            target.skipped_chunks += chunk.skipped_chunks;
        }
        drop(guard);
        self.done_chunks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn pass_finished(&self) {
        let finished = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut figures = self.figures();
        figures.last = Some((finished, figures.current));
        drop(figures);
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.done_chunks.store(0, Ordering::Relaxed);
        self.total_chunks.store(0, Ordering::Relaxed);
        self.running.store(false, Ordering::Relaxed);
    }

    /// Counts a client read answered from another member.
    pub(crate) fn add_read_served(&self) {
        self.reads_repaired.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts blocks rewritten by read repair.
    pub(crate) fn add_read_repair(&self, blocks: u64) {
        self.read_repairs.fetch_add(blocks, Ordering::Relaxed);
    }

    /// The current figures.
    pub fn snapshot(&self) -> ScrubSnapshot {
        let figures = self.figures();
        ScrubSnapshot {
            running: self.running.load(Ordering::Relaxed),
            passes: self.passes.load(Ordering::Relaxed),
            progress: (
                self.done_chunks.load(Ordering::Relaxed),
                self.total_chunks.load(Ordering::Relaxed),
            ),
            current: figures.current,
            total: figures.total,
            last: figures.last,
            read_repairs: self.read_repairs.load(Ordering::Relaxed),
            reads_repaired: self.reads_repaired.load(Ordering::Relaxed),
        }
    }
}

/// Hands a repair of this node's copy to the PG's task (which checks the label and that
/// nothing is in flight); `Ok` when the blocks were rewritten.
pub(crate) async fn repair_local(
    inbox: &mpsc::Sender<Input>,
    epoch: Epoch,
    job: RepairJob,
) -> Result<(), Status> {
    let (reply, answer) = oneshot::channel();
    let request = Request::Repair {
        from: None,
        epoch,
        job,
    };
    inbox
        .send(Input { request, reply })
        .await
        .map_err(|_| Status::IoError)?;
    let reply = answer.await.map_err(|_| Status::IoError)?;
    match reply.status {
        Status::Ok => Ok(()),
        status => Err(status),
    }
}

/// What a scrub of the PGs one node leads works with, for one PG.
pub(crate) struct ScrubPg {
    /// The recovery context (store, peers, view, PG, call timeout).
    pub(crate) ctx: RecoveryCtx,
    /// The epoch of the view the pass runs in.
    pub(crate) epoch: Epoch,
    /// The other acting members.
    pub(crate) members: Vec<NodeId>,
    /// The PG task's inbox (local repairs go through it).
    pub(crate) inbox: mpsc::Sender<Input>,
    /// The node's scrub rate.
    pub(crate) throttle: Arc<Throttle>,
}

impl ScrubPg {
    /// Scrubs one chunk: compares every copy, repairs what it can. Returns the chunk's figures.
    pub(crate) async fn chunk(&self, chunk: ChunkKey) -> PassFigures {
        let mut figures = PassFigures {
            chunks: 1,
            ..PassFigures::default()
        };
        match self.chunk_inner(chunk, &mut figures).await {
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(pg = %self.ctx.key, %chunk, %error, "scrub of a chunk failed");
                figures.skipped_chunks = 1;
            }
        }
        figures
    }

    async fn chunk_inner(
        &self,
        chunk: ChunkKey,
        figures: &mut PassFigures,
    ) -> Result<(), RecoveryError> {
        let store = &self.ctx.store;
        let count = self.ctx.chunk_size_bytes / BLOCK_SIZE_BYTES;
        let allocated: u64 = store
            .block_status(chunk, 0, self.ctx.chunk_size_bytes)
            .await?
            .iter()
            .filter(|e| e.allocated)
            .map(|e| u64::from(e.len))
            .sum();
        self.throttle.acquire(allocated).await;
        let Some(own) = digest(store, chunk, 0, count).await? else {
            figures.skipped_chunks = 1;
            return Ok(());
        };
        figures.blocks = own
            .blocks
            .iter()
            .filter(|b| **b != BlockDigest::Unmapped)
            .count() as u64;
        let mut heard = Vec::new();
        for node in &self.members {
            match self
                .ctx
                .member_digest(*node, self.epoch, chunk, 0, count)
                .await
            {
                Ok(digest) => heard.push((*node, digest)),
                Err(error) => {
                    tracing::debug!(pg = %self.ctx.key, %chunk, %node, %error, "no digest from a member");
                    figures.skipped_chunks = 1;
                }
            }
        }
        let verdict = compare(&own, &heard);
        if !verdict.skipped.is_empty() {
            figures.skipped_chunks = 1;
        }
        figures.errors = verdict.errors;
        figures.unrepaired += verdict.unrepairable.len() as u64;
        if verdict.errors == 0 {
            return Ok(());
        }
        tracing::warn!(pg = %self.ctx.key, %chunk, errors = verdict.errors, local = verdict.local.len(), unrepairable = verdict.unrepairable.len(), "scrub found bad block copies");
        let local_failed = self
            .fix_local(chunk, own.label, &verdict.local, &heard, figures)
            .await;
        self.fix_members(chunk, own.label, &verdict.remote, &local_failed, figures)
            .await
    }

    /// Rewrites our bad blocks `local` of `chunk` from the members named, whose digests are
    /// `heard`; returns the blocks left bad.
    async fn fix_local(
        &self,
        chunk: ChunkKey,
        label: ChunkVersion,
        local: &[(u32, NodeId)],
        heard: &[(NodeId, ChunkDigest)],
        figures: &mut PassFigures,
    ) -> Vec<u32> {
        // Our own bad blocks first, from the members that hold them good.
        let mut local_failed = Vec::new();
        for (block, node) in local {
            let expected = heard
                .iter()
                .find(|(n, _)| n == node)
                .and_then(|(_, d)| d.blocks[*block as usize].content());
            let fixed = async {
                let data = self
                    .ctx
                    .member_block(*node, self.epoch, chunk, *block)
                    .await?;
                if data.as_deref().map_or(zero_block_crc(), crc32c::crc32c) != expected.unwrap_or(0)
                {
                    return Err(RecoveryError::NotLevel);
                }
                let job = RepairJob {
                    chunk,
                    label,
                    fixes: vec![BlockFix {
                        block: *block,
                        data,
                    }],
                };
                repair_local(&self.inbox, self.epoch, job)
                    .await
                    .map_err(RecoveryError::Repair)
            }
            .await;
            match fixed {
                Ok(()) => figures.repairs += 1,
                Err(error) => {
                    tracing::warn!(pg = %self.ctx.key, %chunk, block, %error, "local block not repaired");
                    figures.unrepaired += 1;
                    local_failed.push(*block);
                }
            }
        }
        local_failed
    }

    /// Rewrites the members' bad blocks `remote` of `chunk` with our copy (skipping the blocks
    /// in `local_failed`, whose good content we do not have).
    async fn fix_members(
        &self,
        chunk: ChunkKey,
        label: ChunkVersion,
        remote: &[(NodeId, Vec<u32>)],
        local_failed: &[u32],
        figures: &mut PassFigures,
    ) -> Result<(), RecoveryError> {
        let store = &self.ctx.store;
        // Then the members' bad blocks, with our (now good) copy.
        for (node, blocks) in remote {
            let mut fixes = Vec::new();
            let mut left = 0u64;
            for block in blocks {
                if local_failed.contains(block) {
                    left += 1;
                    continue;
                }
                let at = block * BLOCK_SIZE_BYTES;
                let allocated = store
                    .block_status(chunk, at, BLOCK_SIZE_BYTES)
                    .await?
                    .iter()
                    .any(|e| e.allocated);
                let data = if allocated {
                    Some(store.read(chunk, at, BLOCK_SIZE_BYTES).await?.to_vec())
                } else {
                    None
                };
                fixes.push(BlockFix {
                    block: *block,
                    data,
                });
            }
            figures.unrepaired += left;
            for batch in fixes.chunks(REPAIR_BLOCKS_MAX) {
                let n = batch.len() as u64;
                match self
                    .ctx
                    .member_repair(*node, self.epoch, chunk, label, batch.to_vec())
                    .await
                {
                    Ok(()) => figures.repairs += n,
                    Err(error) => {
                        tracing::warn!(pg = %self.ctx.key, %chunk, %node, %error, "member blocks not repaired");
                        figures.unrepaired += n;
                    }
                }
            }
        }
        Ok(())
    }
}

impl RecoveryCtx {
    /// `node`'s copy of blocks `[first, first + count)` of `chunk` with its digest, checked
    /// against each other (so the bytes are the content at the digest's label).
    async fn fetch_checked(
        &self,
        node: NodeId,
        epoch: Epoch,
        chunk: ChunkKey,
        first: u32,
        count: u32,
    ) -> Result<(ChunkDigest, Vec<u8>), RecoveryError> {
        let base = first * BLOCK_SIZE_BYTES;
        let end = first + count;
        let digest = self.member_digest(node, epoch, chunk, first, count).await?;
        let mut buf = vec![0u8; (count * BLOCK_SIZE_BYTES) as usize];
        let mut at = base;
        while at < end * BLOCK_SIZE_BYTES {
            let len = RECOVERY_PIECE_BYTES_MAX.min(end * BLOCK_SIZE_BYTES - at);
            for (offset, data) in self
                .read_window(End::Remote(node), epoch, chunk, at, len)
                .await?
            {
                let from = (offset - base) as usize;
                if let Some(slot) = buf.get_mut(from..from + data.len()) {
                    slot.copy_from_slice(&data);
                }
            }
            at += len;
        }
        let consistent = buf
            .chunks(BLOCK_SIZE_BYTES as usize)
            .zip(&digest.blocks)
            .all(|(bytes, d)| d.content() == Some(crc32c::crc32c(bytes)));
        if !consistent {
            return Err(RecoveryError::Protocol {
                node,
                what: "read does not match the digest",
            });
        }
        Ok((digest, buf))
    }

    /// Serves a read whose local copy failed its checksum from the first in-sync member of
    /// `members` whose copy is good: the range's blocks with their digest (label and crcs),
    /// checked against each other. Returns the requested bytes, and the rewrite of our corrupt
    /// blocks in the range (at the member's label) if any; `None` if no member had it good.
    pub(crate) async fn read_repair(
        &self,
        epoch: Epoch,
        range: ChunkRange,
        members: &[NodeId],
    ) -> Option<(Bytes, Option<RepairJob>)> {
        let chunk = range.chunk;
        let first = range.offset / BLOCK_SIZE_BYTES;
        let end = (range.offset + range.len).div_ceil(BLOCK_SIZE_BYTES);
        let count = end - first;
        let base = first * BLOCK_SIZE_BYTES;
        for node in members {
            let fetched = self.fetch_checked(*node, epoch, chunk, first, count).await;
            let (digest, buf) = match fetched {
                Ok(fetched) => fetched,
                Err(error) => {
                    tracing::warn!(pg = %self.key, %chunk, %node, %error, "read repair: member copy not usable");
                    continue;
                }
            };
            self.stats.scrub.add_read_served();
            let from = (range.offset - base) as usize;
            let data = Bytes::copy_from_slice(&buf[from..from + range.len as usize]);
            let local = match scan_blocks(&self.store, chunk, first, count).await {
                Ok(local) => local,
                Err(error) => {
                    tracing::warn!(pg = %self.key, %chunk, %error, "read repair: local scan failed");
                    return Some((data, None));
                }
            };
            let fixes: Vec<BlockFix> = local
                .iter()
                .enumerate()
                .filter(|(_, d)| **d == BlockDigest::Corrupt)
                .map(|(i, _)| BlockFix {
                    block: first + i as u32,
                    data: (digest.blocks[i] != BlockDigest::Unmapped).then(|| {
                        let at = i * BLOCK_SIZE_BYTES as usize;
                        buf[at..at + BLOCK_SIZE_BYTES as usize].to_vec()
                    }),
                })
                .collect();
            let job = (!fixes.is_empty()).then_some(RepairJob {
                chunk,
                label: digest.label,
                fixes,
            });
            return Some((data, job));
        }
        None
    }

    /// `node`'s digest of blocks `[first, first + count)` of `chunk`.
    pub(crate) async fn member_digest(
        &self,
        node: NodeId,
        epoch: Epoch,
        chunk: ChunkKey,
        first: u32,
        count: u32,
    ) -> Result<ChunkDigest, RecoveryError> {
        let request = RecoveryRequest::Digest {
            pg: self.pg(),
            epoch,
            chunk,
            first_block: first,
            blocks: count,
        };
        match self.call(node, &request).await? {
            RecoveryReply::Digest(digest) if digest.blocks.len() == count as usize => Ok(digest),
            _ => Err(RecoveryError::Protocol {
                node,
                what: "digest expected",
            }),
        }
    }

    /// `node`'s copy of one block of `chunk`: `None` when it is not allocated there.
    pub(crate) async fn member_block(
        &self,
        node: NodeId,
        epoch: Epoch,
        chunk: ChunkKey,
        block: u32,
    ) -> Result<Option<Vec<u8>>, RecoveryError> {
        let at = block * BLOCK_SIZE_BYTES;
        let extents = self
            .read_window(End::Remote(node), epoch, chunk, at, BLOCK_SIZE_BYTES)
            .await?;
        Ok(extents.into_iter().next().map(|(_, data)| data))
    }

    /// Asks `node` to rewrite `fixes` of its copy of `chunk` if it is still at `label`.
    pub(crate) async fn member_repair(
        &self,
        node: NodeId,
        epoch: Epoch,
        chunk: ChunkKey,
        label: ChunkVersion,
        fixes: Vec<BlockFix>,
    ) -> Result<(), RecoveryError> {
        let request = RecoveryRequest::Repair {
            pg: self.pg(),
            epoch,
            chunk,
            label,
            fixes,
        };
        match self.call(node, &request).await? {
            RecoveryReply::Done => Ok(()),
            _ => Err(RecoveryError::Protocol {
                node,
                what: "done expected",
            }),
        }
    }
}

/// Builds the reply of a [`RecoveryRequest::Digest`] from this member's store.
///
/// [`RecoveryRequest::Digest`]: super::RecoveryRequest::Digest
pub(crate) async fn serve_digest(
    store: &Store,
    chunk: ChunkKey,
    first: u32,
    count: u32,
    epoch: Epoch,
) -> RecoveryReply {
    match digest(store, chunk, first, count).await {
        Ok(Some(digest)) => RecoveryReply::Digest(digest),
        Ok(None) => RecoveryReply::refused(Status::Busy, epoch),
        Err(error) => {
            tracing::warn!(%chunk, %error, "digest from the store failed");
            RecoveryReply::refused(super::types::store_status(&error), epoch)
        }
    }
}

/// Whether a digest request's block range fits a chunk of `chunk_size_bytes`.
pub(crate) fn digest_range_ok(first: u32, count: u32, chunk_size_bytes: u32) -> bool {
    first.checked_add(count).is_some_and(|end| {
        u64::from(end) * u64::from(BLOCK_SIZE_BYTES) <= u64::from(chunk_size_bytes)
    })
}

/// Whether a repair request is well formed for a chunk of `chunk_size_bytes`: at most
/// [`REPAIR_BLOCKS_MAX`] blocks inside the chunk, each with a whole block of data or none.
pub(crate) fn repair_ok(fixes: &[BlockFix], chunk_size_bytes: u32) -> bool {
    !fixes.is_empty()
        && fixes.len() <= REPAIR_BLOCKS_MAX
        && fixes.iter().all(|fix| {
            u64::from(fix.block) * u64::from(BLOCK_SIZE_BYTES) < u64::from(chunk_size_bytes)
                && fix
                    .data
                    .as_ref()
                    .is_none_or(|d| d.len() == BLOCK_SIZE_BYTES as usize)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(version: u64) -> ChunkVersion {
        ChunkVersion {
            epoch: Epoch(1),
            version,
        }
    }

    fn digest_of(version: u64, blocks: &[BlockDigest]) -> ChunkDigest {
        ChunkDigest {
            label: label(version),
            blocks: blocks.to_vec(),
        }
    }

    use BlockDigest::{Corrupt, Crc, Unmapped};

    /// Goal: identical copies (an unmapped block equals an allocated zero block) find nothing.
    #[test]
    fn equal_copies_need_nothing() {
        let own = digest_of(5, &[Crc(1), Unmapped, Crc(zero_block_crc())]);
        let member = digest_of(5, &[Crc(1), Crc(zero_block_crc()), Unmapped]);
        let verdict = compare(&own, &[(NodeId(2), member.clone()), (NodeId(3), member)]);
        assert_eq!(verdict, ChunkVerdict::default());
    }

    /// Goal: a corrupt primary block is fixed from the first member holding it readable, and a
    /// member that is corrupt too gets the good content afterwards.
    #[test]
    fn corrupt_primary_block_comes_from_a_good_member() {
        let own = digest_of(5, &[Crc(1), Corrupt]);
        let bad = digest_of(5, &[Crc(1), Corrupt]);
        let good = digest_of(5, &[Crc(1), Crc(7)]);
        let verdict = compare(&own, &[(NodeId(2), bad), (NodeId(3), good)]);
        assert_eq!(verdict.errors, 2);
        assert_eq!(verdict.local, vec![(1, NodeId(3))]);
        assert_eq!(verdict.remote, vec![(NodeId(2), vec![1])]);
        assert!(verdict.unrepairable.is_empty());
    }

    /// Goal: corrupt or different member blocks are rewritten with the primary's copy, each
    /// bad copy counted once.
    #[test]
    fn bad_member_blocks_get_the_primary_copy() {
        let own = digest_of(5, &[Crc(1), Crc(2), Unmapped]);
        let m2 = digest_of(5, &[Corrupt, Crc(2), Crc(9)]);
        let m3 = digest_of(5, &[Crc(1), Crc(3), Unmapped]);
        let verdict = compare(&own, &[(NodeId(2), m2), (NodeId(3), m3)]);
        assert_eq!(verdict.errors, 3);
        assert!(verdict.local.is_empty());
        assert_eq!(
            verdict.remote,
            vec![(NodeId(2), vec![0, 2]), (NodeId(3), vec![1])]
        );
    }

    /// Goal: a member at another label is not compared (its bytes may rightly differ), and a
    /// block no one holds readable is reported, not guessed.
    #[test]
    fn other_labels_are_skipped_and_lost_blocks_reported() {
        let own = digest_of(5, &[Corrupt, Crc(2)]);
        let newer = digest_of(6, &[Crc(8), Crc(8)]);
        let same = digest_of(5, &[Corrupt, Crc(2)]);
        let verdict = compare(&own, &[(NodeId(2), newer), (NodeId(3), same)]);
        assert_eq!(verdict.skipped, vec![NodeId(2)]);
        assert_eq!(verdict.unrepairable, vec![0]);
        assert!(verdict.local.is_empty() && verdict.remote.is_empty());
        assert_eq!(verdict.errors, 2);
    }

    /// Goal: malformed repair and digest requests are refused.
    #[test]
    fn request_bounds() {
        let chunk = 4 << 20;
        assert!(digest_range_ok(0, 1024, chunk));
        assert!(!digest_range_ok(1, 1024, chunk));
        assert!(!digest_range_ok(u32::MAX, 2, chunk));
        let fix = |block, len: usize| BlockFix {
            block,
            data: Some(vec![0; len]),
        };
        assert!(repair_ok(&[fix(1023, 4096)], chunk));
        assert!(!repair_ok(&[fix(1024, 4096)], chunk));
        assert!(!repair_ok(&[fix(0, 512)], chunk));
        assert!(!repair_ok(&[], chunk));
        assert!(repair_ok(
            &[BlockFix {
                block: 3,
                data: None
            }],
            chunk
        ));
    }
}
