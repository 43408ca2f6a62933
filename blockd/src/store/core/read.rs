//! Reads and queries.
//!
//! A read resolves every block at issue time: journaled-but-not-yet-copied blocks come from
//! memory, unmapped blocks are zeroes (no disk access), mapped blocks are read in runs of
//! consecutive physical blocks and verified against the crc32c recorded in the block map. A
//! mismatch fails the read with `Corrupt`, never returns the bytes. Reads take no locks: blocks
//! they read cannot be reused until they finish (see the allocator's quarantine).

use basalt::ids::ChunkKey;
use basalt::units::BLOCK_SIZE_BYTES;
use bytes::Bytes;

use super::journal::ReqId;
use super::write::validate_range;
use super::{OpPurpose, StoreCore};
use crate::store::buf::AlignedBuf;
use crate::store::engine::{Completion, OpKind};
use crate::store::types::{ChunkInfo, Extent, Reply, StoreError, StoreStats};

const BLOCK: usize = BLOCK_SIZE_BYTES as usize;

/// A read in progress.
#[derive(Debug)]
pub(super) struct ReadRequest {
    tag: u64,
    chunk: ChunkKey,
    first_block: u32,
    /// Byte range of `result` to return.
    start: usize,
    len: usize,
    result: Option<AlignedBuf>,
    outstanding: u32,
    error: Option<StoreError>,
}

impl ReadRequest {
    /// The caller's reply tag.
    pub(super) fn tag(&self) -> u64 {
        self.tag
    }
}

/// A run of blocks that are consecutive both in the chunk and on the drive.
struct DiskRun {
    rel_block: u32,
    phys: u32,
    crcs: Vec<u32>,
}

impl StoreCore {
    /// Entry point for Read.
    pub(super) fn start_read(&mut self, tag: u64, chunk: ChunkKey, offset: u32, len: u32) {
        if let Err(e) = validate_range(self.geo.chunk_size_bytes, offset.into(), len.into()) {
            return self.reply(tag, Err(e));
        }
        let first = offset / BLOCK_SIZE_BYTES;
        let end = (offset + len).div_ceil(BLOCK_SIZE_BYTES);
        let blocks = (end - first) as usize;
        let start = (offset - first * BLOCK_SIZE_BYTES) as usize;
        // The assembled result, allocated only when some block does not come from a single disk
        // run: the common read of mapped, consecutive blocks returns the run's own buffer.
        let mut result: Option<AlignedBuf> = None;
        let mut runs: Vec<DiskRun> = Vec::new();
        if let Some(state) = self.chunks.get(&chunk) {
            for block in first..end {
                let rel = block - first;
                if let Some(overlay) = state.overlay.get(&block) {
                    let at = rel as usize * BLOCK;
                    let buf = result.get_or_insert_with(|| AlignedBuf::zeroed(blocks * BLOCK));
                    buf.as_mut_slice()[at..at + BLOCK].copy_from_slice(overlay.bytes());
                    continue;
                }
                let entry = state.blocks[block as usize];
                if !entry.is_mapped() {
                    continue;
                }
                match runs.last_mut() {
                    Some(r)
                        if r.rel_block + r.crcs.len() as u32 == rel
                            && r.phys + r.crcs.len() as u32 == entry.phys =>
                    {
                        r.crcs.push(entry.crc)
                    }
                    _ => runs.push(DiskRun {
                        rel_block: rel,
                        phys: entry.phys,
                        crcs: vec![entry.crc],
                    }),
                }
            }
        }
        if runs.is_empty() {
            let result = result.unwrap_or_else(|| AlignedBuf::zeroed(blocks * BLOCK));
            let data = Bytes::from_owner(result).slice(start..start + len as usize);
            return self.reply(tag, Ok(Reply::Data(data)));
        }
        let id = self.next_id();
        let whole = runs.len() == 1 && runs[0].crcs.len() == blocks;
        if !whole && result.is_none() {
            result = Some(AlignedBuf::zeroed(blocks * BLOCK));
        }
        let request = ReadRequest {
            tag,
            chunk,
            first_block: first,
            start,
            len: len as usize,
            result,
            outstanding: runs.len() as u32,
            error: None,
        };
        self.reads.insert(id, request);
        for run in runs {
            let token = self.alloc.read_started();
            let buf = AlignedBuf::zeroed(run.crcs.len() * BLOCK);
            let offset = self.geo.data_block_offset(run.phys);
            let purpose = OpPurpose::ReadRun {
                req: id,
                rel_block: run.rel_block,
                crcs: run.crcs,
                token,
            };
            self.submit(purpose, OpKind::Read { offset, buf });
        }
    }

    /// Verifies a completed read of blocks `first_block..` against `crcs`.
    pub(super) fn check_read(
        &mut self,
        chunk: ChunkKey,
        first_block: u32,
        c: Completion,
        crcs: &[u32],
    ) -> Result<AlignedBuf, StoreError> {
        c.result.map_err(StoreError::Io)?;
        let buf = c
            .buf
            .ok_or_else(|| StoreError::Failed("read returned no buffer".into()))?;
        for (i, (block, &crc)) in buf.as_slice().chunks_exact(BLOCK).zip(crcs).enumerate() {
            if crc32c::crc32c(block) != crc {
                self.counters.checksum_errors += 1;
                let block = first_block + i as u32;
                tracing::warn!(%chunk, block, "checksum mismatch");
                return Err(StoreError::Corrupt { chunk, block });
            }
        }
        Ok(buf)
    }

    /// A run of a read completed.
    pub(super) fn on_read_run(&mut self, id: ReqId, rel_block: u32, crcs: Vec<u32>, c: Completion) {
        let (chunk, first) = {
            let r = &self.reads[&id];
            (r.chunk, r.first_block)
        };
        let checked = self.check_read(chunk, first + rel_block, c, &crcs);
        let request = self.reads.get_mut(&id).expect("live read");
        match (checked, request.result.as_mut()) {
            (Ok(buf), Some(result)) => {
                let at = rel_block as usize * BLOCK;
                result.as_mut_slice()[at..at + buf.len()].copy_from_slice(buf.as_slice());
            }
            (Ok(buf), None) => request.result = Some(buf),
            (Err(e), _) => {
                request.error.get_or_insert(e);
            }
        }
        request.outstanding -= 1;
        if request.outstanding > 0 {
            return;
        }
        let request = self.reads.remove(&id).expect("live read");
        let reply = match (request.error, request.result) {
            (Some(e), _) => Err(e),
            (None, Some(result)) => {
                let data = Bytes::from_owner(result);
                Ok(Reply::Data(
                    data.slice(request.start..request.start + request.len),
                ))
            }
            (None, None) => Err(StoreError::Failed("read finished without data".into())),
        };
        self.reply(request.tag, reply);
    }

    /// BlockStatus: allocated and hole extents of a range, clipped to it.
    pub(super) fn block_status(
        &mut self,
        chunk: ChunkKey,
        offset: u32,
        len: u32,
    ) -> Result<Reply, StoreError> {
        validate_range(self.geo.chunk_size_bytes, offset.into(), len.into())?;
        let end = offset + len;
        let Some(state) = self.chunks.get(&chunk) else {
            return Ok(Reply::Extents(vec![Extent {
                offset,
                len,
                allocated: false,
            }]));
        };
        let mut extents: Vec<Extent> = Vec::new();
        for block in offset / BLOCK_SIZE_BYTES..end.div_ceil(BLOCK_SIZE_BYTES) {
            let allocated = state.is_allocated(block);
            let from = (block * BLOCK_SIZE_BYTES).max(offset);
            let to = ((block + 1) * BLOCK_SIZE_BYTES).min(end);
            match extents.last_mut() {
                Some(e) if e.allocated == allocated => e.len += to - from,
                _ => extents.push(Extent {
                    offset: from,
                    len: to - from,
                    allocated,
                }),
            }
        }
        Ok(Reply::Extents(extents))
    }

    /// ListChunks.
    pub(super) fn list_chunks(&self) -> Reply {
        let mut chunks: Vec<ChunkInfo> = self
            .chunks
            .iter()
            .filter(|(_, s)| s.exists)
            .map(|(k, s)| ChunkInfo {
                chunk: *k,
                version: s.version,
                allocated_blocks: s.allocated_blocks(),
            })
            .collect();
        chunks.sort_by_key(|c| c.chunk);
        Reply::Chunks(chunks)
    }

    /// Stats.
    pub(super) fn stats(&self) -> StoreStats {
        let block = u64::from(BLOCK_SIZE_BYTES);
        let used = u64::from(self.alloc.used_count()) * block;
        StoreStats {
            capacity_bytes: self.geo.capacity_bytes(),
            allocated_bytes: used,
            free_bytes: self.geo.capacity_bytes() - used,
            chunk_count: self.chunks.values().filter(|s| s.exists).count() as u64,
            chunk_slots: u64::from(self.geo.slot_count),
            journal_size_bytes: self.journal.size_bytes(),
            journal_used_bytes: self.journal.used_bytes(),
            ..self.counters
        }
    }
}
