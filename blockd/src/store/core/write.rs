//! Mutating requests: write, unmap, delete.
//!
//! # Crash consistency
//! Every mutation follows the same order, and nothing overwrites a block that durable metadata
//! still points to:
//! 1. Lock the request's blocks (arrival order per chunk), read partial edge blocks.
//! 2. Build whole new blocks with their crc32c and choose fresh data blocks for them.
//! 3. Small writes: put the data into a journal record. Large writes: write the data to the
//!    fresh blocks first, and only when those writes completed put a `Remap` record (block
//!    numbers and crcs) into the journal, so the batch's flush also covers the data.
//! 4. When the batch is flushed, the request is durable: update the in-memory block map, free
//!    the replaced blocks (quarantined until older reads finish) and acknowledge.
//! 5. Small writes are then copied from memory to their fresh blocks; until that completes,
//!    reads are served from the in-memory copy and the blocks stay locked.
//!
//! A crash before 4 leaves the old block map and old blocks untouched. After 4, replay finds the
//! record. Replay verifies the crcs of remapped blocks in batches whose durability is not
//! confirmed by a later batch, so a record whose data never reached the disk is ignored.

use std::ops::Range;
use std::sync::Arc;

use basalt::ids::{ChunkKey, ChunkVersion};
use basalt::units::{BLOCK_SIZE_BYTES, SECTOR_SIZE_BYTES};
use bytes::Bytes;

use super::chunk::{ChunkState, OverlayBlock};
use super::journal::ReqId;
use super::{OpPurpose, StoreCore};
use crate::store::alloc::Run;
use crate::store::buf::AlignedBuf;
use crate::store::engine::{Completion, OpKind};
use crate::store::format::{BlockEntry, RecordKind, encode_record_header};
use crate::store::types::{Reply, StoreError};

const BLOCK: u32 = BLOCK_SIZE_BYTES;

/// What a mutating request asks for.
#[derive(Debug)]
pub(super) enum MutInput {
    Write { offset: u32, data: Bytes },
    Unmap { offset: u32, len: u32 },
    Delete,
}

/// One record's worth of change.
#[derive(Debug)]
pub(super) enum Segment {
    /// Whole new blocks `first..first+crcs.len()`.
    Data {
        first: u32,
        buf: Arc<AlignedBuf>,
        crcs: Vec<u32>,
        /// Fresh data blocks, in block order.
        targets: Vec<Run>,
        /// Data goes through the journal (small write) rather than straight to `targets`.
        journaled: bool,
    },
    /// Blocks released.
    Unmap { first: u32, count: u32 },
    /// Whole chunk deleted.
    Delete,
}

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    Waiting,
    ReadingEdges,
    WritingData,
    Journaled,
    Applying,
}

/// A mutating request in progress.
#[derive(Debug)]
pub(super) struct MutRequest {
    tag: u64,
    chunk: ChunkKey,
    range: Range<u32>,
    version: ChunkVersion,
    input: MutInput,
    edges: [Option<AlignedBuf>; 2],
    segments: Vec<Segment>,
    outstanding: u32,
    error: Option<StoreError>,
    stage: Stage,
    acked: bool,
    batch_seq: u64,
}

impl MutRequest {
    /// The caller's reply tag.
    pub(super) fn tag(&self) -> u64 {
        self.tag
    }
}

/// Checks a byte range against the chunk and the 512-byte alignment rule.
pub(super) fn validate_range(chunk_size: u32, offset: u64, len: u64) -> Result<(), StoreError> {
    if len == 0 {
        return Err(StoreError::ZeroLength);
    }
    let sector = u64::from(SECTOR_SIZE_BYTES);
    if !offset.is_multiple_of(sector) || !len.is_multiple_of(sector) {
        return Err(StoreError::Misaligned { offset, len });
    }
    if offset
        .checked_add(len)
        .is_none_or(|end| end > u64::from(chunk_size))
    {
        return Err(StoreError::OutOfRange {
            offset,
            len,
            chunk_size,
        });
    }
    Ok(())
}

fn block_range(offset: u32, len: u32) -> Range<u32> {
    offset / BLOCK..(offset + len).div_ceil(BLOCK)
}

fn runs_len(runs: &[Run]) -> u32 {
    runs.iter().map(|r| r.len).sum()
}

/// Physical block of the `i`-th block covered by `runs`.
fn nth_block(runs: &[Run], mut i: u32) -> u32 {
    for r in runs {
        if i < r.len {
            return r.start + i;
        }
        i -= r.len;
    }
    unreachable!("block index beyond the allocated runs")
}

impl StoreCore {
    /// Entry point for Write.
    pub(super) fn start_write(
        &mut self,
        tag: u64,
        chunk: ChunkKey,
        offset: u32,
        data: Bytes,
        version: ChunkVersion,
    ) {
        let len = data.len() as u64;
        if let Err(e) = validate_range(self.geo.chunk_size_bytes, u64::from(offset), len) {
            return self.reply(tag, Err(e));
        }
        let range = block_range(offset, data.len() as u32);
        self.start_mut(tag, chunk, range, version, MutInput::Write { offset, data });
    }

    /// Entry point for Unmap (TRIM / WRITE_ZEROES).
    pub(super) fn start_unmap(
        &mut self,
        tag: u64,
        chunk: ChunkKey,
        offset: u32,
        len: u32,
        version: ChunkVersion,
    ) {
        if let Err(e) = validate_range(self.geo.chunk_size_bytes, offset.into(), len.into()) {
            return self.reply(tag, Err(e));
        }
        if !self
            .chunks
            .get(&chunk)
            .is_some_and(|c| c.exists || c.users > 0)
        {
            // Nothing stored: the range already reads as zeroes and there is no version to keep.
            return self.reply(tag, Ok(Reply::Done));
        }
        let range = block_range(offset, len);
        self.start_mut(tag, chunk, range, version, MutInput::Unmap { offset, len });
    }

    /// Entry point for DeleteChunk.
    pub(super) fn start_delete(&mut self, tag: u64, chunk: ChunkKey) {
        if !self
            .chunks
            .get(&chunk)
            .is_some_and(|c| c.exists || c.users > 0)
        {
            return self.reply(tag, Ok(Reply::Done));
        }
        let range = 0..self.geo.blocks_per_chunk();
        self.start_mut(tag, chunk, range, ChunkVersion::default(), MutInput::Delete);
    }

    fn start_mut(
        &mut self,
        tag: u64,
        chunk: ChunkKey,
        range: Range<u32>,
        version: ChunkVersion,
        input: MutInput,
    ) {
        if let Err(e) = self.chunk_for_write(chunk) {
            return self.reply(tag, Err(e));
        }
        let id = self.next_id();
        let request = MutRequest {
            tag,
            chunk,
            range,
            version,
            input,
            edges: [None, None],
            segments: Vec::new(),
            outstanding: 0,
            error: None,
            stage: Stage::Waiting,
            acked: false,
            batch_seq: 0,
        };
        self.unacked.insert(id);
        self.muts.insert(id, request);
        let state = self.chunks.get_mut(&chunk).expect("created above");
        state.users += 1;
        state.waiting.push_back(id);
        self.admit_waiting(chunk);
    }

    fn chunk_for_write(&mut self, chunk: ChunkKey) -> Result<(), StoreError> {
        if self.chunks.contains_key(&chunk) {
            return Ok(());
        }
        let slot = self.free_slots.pop().ok_or(StoreError::NoChunkSlots)?;
        self.chunks
            .insert(chunk, ChunkState::new(slot, self.geo.blocks_per_chunk()));
        Ok(())
    }

    /// Starts, in arrival order, every waiting request of `chunk` whose blocks are free and that
    /// does not overlap an earlier waiting request.
    pub(super) fn admit_waiting(&mut self, chunk: ChunkKey) {
        let Some(state) = self.chunks.get_mut(&chunk) else {
            return;
        };
        let mut blocked: Vec<Range<u32>> = Vec::new();
        let mut admitted = Vec::new();
        let mut i = 0;
        while i < state.waiting.len() {
            let id = state.waiting[i];
            let range = self.muts[&id].range.clone();
            let overlaps_earlier = blocked
                .iter()
                .any(|r| r.start < range.end && range.start < r.end);
            if overlaps_earlier || state.any_locked(&range) {
                blocked.push(range);
                i += 1;
                continue;
            }
            state.lock(&range);
            state.waiting.remove(i);
            admitted.push(id);
        }
        for id in admitted {
            self.begin(id);
        }
    }

    /// Locks held: read the partial edge blocks the request needs, if any.
    fn begin(&mut self, id: ReqId) {
        let request = self.muts.get_mut(&id).expect("live request");
        let (first, last) = (request.range.start, request.range.end - 1);
        let (offset, end) = match &request.input {
            MutInput::Write { offset, data } => (*offset, *offset + data.len() as u32),
            MutInput::Unmap { offset, len } => (*offset, *offset + *len),
            MutInput::Delete => (0, 0),
        };
        let mut edge_blocks = Vec::new();
        if offset % BLOCK != 0 {
            edge_blocks.push((0, first));
        }
        if end % BLOCK != 0 && (last != first || edge_blocks.is_empty()) {
            edge_blocks.push((1, last));
        }
        let chunk = request.chunk;
        let state = &self.chunks[&chunk];
        let reads: Vec<(usize, BlockEntry)> = edge_blocks
            .into_iter()
            .map(|(edge, b)| (edge, state.blocks[b as usize]))
            .filter(|(_, entry)| entry.is_mapped())
            .collect();
        request.stage = Stage::ReadingEdges;
        request.outstanding = reads.len() as u32;
        if reads.is_empty() {
            return self.build(id);
        }
        for (edge, entry) in reads {
            let token = self.alloc.read_started();
            let offset = self.geo.data_block_offset(entry.phys);
            let buf = AlignedBuf::zeroed(BLOCK as usize);
            let purpose = OpPurpose::EdgeRead {
                req: id,
                edge,
                crc: entry.crc,
                token,
            };
            self.submit(purpose, OpKind::Read { offset, buf });
        }
    }

    /// An edge read completed.
    pub(super) fn on_edge_read(&mut self, id: ReqId, edge: usize, crc: u32, c: Completion) {
        let chunk_block = {
            let r = &self.muts[&id];
            if edge == 0 {
                r.range.start
            } else {
                r.range.end - 1
            }
        };
        let chunk = self.muts[&id].chunk;
        let checked = self.check_read(chunk, chunk_block, c, &[crc]);
        let request = self.muts.get_mut(&id).expect("live request");
        match checked {
            Ok(buf) => request.edges[edge] = Some(buf),
            Err(e) => request.error = Some(e),
        }
        request.outstanding -= 1;
        if request.outstanding > 0 {
            return;
        }
        if request.error.is_some() {
            return self.finish(id);
        }
        self.build(id);
    }

    /// Builds the request's segments, allocates fresh blocks and starts the data path.
    fn build(&mut self, id: ReqId) {
        let segments = match self.make_segments(id) {
            Ok(segments) => segments,
            Err(e) => {
                self.muts.get_mut(&id).expect("live request").error = Some(e);
                return self.finish(id);
            }
        };
        let request = self.muts.get_mut(&id).expect("live request");
        request.segments = segments;
        request.edges = [None, None];
        let direct: Vec<(Arc<AlignedBuf>, Vec<Run>)> = data_writes(&request.segments, false);
        if direct.is_empty() {
            return self.journal_request(id);
        }
        request.stage = Stage::WritingData;
        for (buf, targets) in direct {
            self.write_runs(id, &buf, &targets, false);
        }
    }

    /// Submits one write per run of `targets`, taking consecutive blocks of `buf`.
    fn write_runs(&mut self, id: ReqId, buf: &Arc<AlignedBuf>, targets: &[Run], apply: bool) {
        let mut at = 0usize;
        for run in targets {
            let len = run.len as usize * BLOCK as usize;
            let offset = self.geo.data_block_offset(run.start);
            let kind = OpKind::Write {
                offset,
                buf: buf.clone(),
                range: at..at + len,
            };
            let purpose = if apply {
                OpPurpose::ApplyWrite { req: id }
            } else {
                OpPurpose::DataWrite { req: id }
            };
            self.muts.get_mut(&id).expect("live request").outstanding += 1;
            self.submit(purpose, kind);
            at += len;
        }
    }

    fn make_segments(&mut self, id: ReqId) -> Result<Vec<Segment>, StoreError> {
        let request = self.muts.get_mut(&id).expect("live request");
        let range = request.range.clone();
        let edges = std::mem::take(&mut request.edges);
        match &request.input {
            MutInput::Delete => Ok(vec![Segment::Delete]),
            MutInput::Write { offset, data } => {
                let mut merged = AlignedBuf::zeroed(range.len() * BLOCK as usize);
                let out = merged.as_mut_slice();
                if let Some(head) = &edges[0] {
                    out[..BLOCK as usize].copy_from_slice(head.as_slice());
                }
                if let Some(tail) = &edges[1] {
                    let tail_at = out.len() - BLOCK as usize;
                    out[tail_at..].copy_from_slice(tail.as_slice());
                }
                let at = (offset - range.start * BLOCK) as usize;
                out[at..at + data.len()].copy_from_slice(data);
                let journaled = merged.len() <= self.opts.deferred_write_size_max as usize;
                Ok(vec![self.data_segment(range.start, merged, journaled)?])
            }
            MutInput::Unmap { offset, len } => {
                let (offset, len) = (*offset, *len);
                self.unmap_segments(range, offset, len, edges)
            }
        }
    }

    /// Whole blocks become an `Unmap`; a partial edge block that holds data is rewritten with
    /// the released part zeroed (a small journaled write).
    fn unmap_segments(
        &mut self,
        range: Range<u32>,
        offset: u32,
        len: u32,
        edges: [Option<AlignedBuf>; 2],
    ) -> Result<Vec<Segment>, StoreError> {
        let mut segments = Vec::new();
        let (mut first, mut end) = (range.start, range.end);
        for (edge, buf) in edges.into_iter().enumerate() {
            let Some(mut buf) = buf else { continue };
            let block = if edge == 0 {
                range.start
            } else {
                range.end - 1
            };
            let block_start = block * BLOCK;
            let zero_from = offset.max(block_start) - block_start;
            let zero_to = (offset + len).min(block_start + BLOCK) - block_start;
            buf.as_mut_slice()[zero_from as usize..zero_to as usize].fill(0);
            match self.data_segment(block, buf, true) {
                Ok(segment) => segments.push(segment),
                Err(e) => {
                    self.release_targets(&segments);
                    return Err(e);
                }
            }
            if edge == 0 {
                first += 1;
            } else {
                end -= 1;
            }
        }
        if first < end {
            segments.push(Segment::Unmap {
                first,
                count: end - first,
            });
        }
        // A one-block range has at most one edge read, so something is always left to record.
        debug_assert!(!segments.is_empty());
        Ok(segments)
    }

    fn data_segment(
        &mut self,
        first: u32,
        buf: AlignedBuf,
        journaled: bool,
    ) -> Result<Segment, StoreError> {
        let count = (buf.len() / BLOCK as usize) as u32;
        let targets = self.alloc.allocate(count).ok_or(StoreError::NoSpace)?;
        debug_assert_eq!(runs_len(&targets), count);
        let crcs = buf
            .as_slice()
            .chunks_exact(BLOCK as usize)
            .map(crc32c::crc32c)
            .collect();
        Ok(Segment::Data {
            first,
            buf: Arc::new(buf),
            crcs,
            targets,
            journaled,
        })
    }

    /// A direct data write or an apply write completed.
    pub(super) fn on_data_written(&mut self, id: ReqId, c: Completion, apply: bool) {
        let request = self.muts.get_mut(&id).expect("live request");
        request.outstanding -= 1;
        if let Err(e) = c.result {
            if apply {
                // The data is durable in the journal but cannot reach the data area: stop
                // rather than let a checkpoint drop the journal copy.
                return self.fail(format!("data block write failed: {e}"));
            }
            request.error.get_or_insert(StoreError::Io(e));
        }
        if request.outstanding > 0 {
            return;
        }
        match (apply, request.error.is_some()) {
            (true, _) => self.on_applied(id),
            (false, true) => self.finish(id),
            (false, false) => self.journal_request(id),
        }
    }

    fn journal_request(&mut self, id: ReqId) {
        let request = self.muts.get_mut(&id).expect("live request");
        request.stage = Stage::Journaled;
        let mut bytes = Vec::new();
        let mut count = 0;
        for segment in &request.segments {
            encode_segment(&mut bytes, request.chunk, request.version, segment);
            count += 1;
        }
        self.journal.append(id, count, &bytes);
        self.counters.journal_records += u64::from(count);
    }

    /// The batch holding the request's records is durable: apply it to memory and acknowledge.
    pub(super) fn on_durable(&mut self, id: ReqId, seq: u64) {
        let request = self.muts.get_mut(&id).expect("live request");
        debug_assert_eq!(request.stage, Stage::Journaled);
        request.batch_seq = seq;
        let state = self
            .chunks
            .get_mut(&request.chunk)
            .expect("chunk of a live request");
        let mut freed = Vec::new();
        let mut journaled_data = false;
        for segment in &request.segments {
            journaled_data |= apply_segment(state, segment, &mut freed);
        }
        let version = if matches!(request.input, MutInput::Delete) {
            ChunkVersion::default()
        } else {
            request.version
        };
        state.touch(seq, version);
        if matches!(request.input, MutInput::Delete) {
            state.exists = false;
        }
        if journaled_data {
            *state.pending_applies.entry(seq).or_default() += 1;
        }
        self.alloc.free(freed);
        self.ack(id);
        if journaled_data {
            self.start_apply(id);
        } else {
            self.finish(id);
        }
    }

    fn start_apply(&mut self, id: ReqId) {
        let request = self.muts.get_mut(&id).expect("live request");
        request.stage = Stage::Applying;
        let writes: Vec<(Arc<AlignedBuf>, Vec<Run>)> = data_writes(&request.segments, true);
        for (buf, targets) in writes {
            self.write_runs(id, &buf, &targets, true);
        }
    }

    /// Journaled data reached its data blocks: switch the block map to them.
    fn on_applied(&mut self, id: ReqId) {
        let request = self.muts.get_mut(&id).expect("live request");
        let state = self
            .chunks
            .get_mut(&request.chunk)
            .expect("chunk of a live request");
        let mut freed = Vec::new();
        for segment in &request.segments {
            let Segment::Data {
                first,
                crcs,
                targets,
                journaled: true,
                ..
            } = segment
            else {
                continue;
            };
            for (i, &crc) in crcs.iter().enumerate() {
                let block = first + i as u32;
                let old = std::mem::replace(
                    &mut state.blocks[block as usize],
                    BlockEntry {
                        phys: nth_block(targets, i as u32),
                        crc,
                    },
                );
                if old.is_mapped() {
                    freed.push(old.phys);
                }
                state.overlay.remove(&block);
            }
        }
        let seq = request.batch_seq;
        let count = state
            .pending_applies
            .get_mut(&seq)
            .expect("apply was registered");
        *count -= 1;
        if *count == 0 {
            state.pending_applies.remove(&seq);
        }
        self.alloc.free(freed);
        self.finish(id);
    }

    fn ack(&mut self, id: ReqId) {
        let request = self.muts.get_mut(&id).expect("live request");
        debug_assert!(!request.acked);
        request.acked = true;
        let tag = request.tag;
        match request.input {
            MutInput::Write { .. } if request.segments.iter().any(is_journaled) => {
                self.counters.writes_journaled += 1;
            }
            MutInput::Write { .. } => self.counters.writes_redirected += 1,
            _ => {}
        }
        self.unacked.remove(&id);
        self.reply(tag, Ok(Reply::Done));
        self.complete_flushes();
    }

    /// The request is over: release its locks and blocks it did not use, reply if it failed.
    pub(super) fn finish(&mut self, id: ReqId) {
        let request = self.muts.remove(&id).expect("live request");
        if !request.acked {
            self.release_targets(&request.segments);
            self.unacked.remove(&id);
            let error = request
                .error
                .unwrap_or_else(|| StoreError::Failed("request dropped".into()));
            self.reply(request.tag, Err(error));
            self.complete_flushes();
        }
        let state = self
            .chunks
            .get_mut(&request.chunk)
            .expect("chunk of a live request");
        if request.stage != Stage::Waiting {
            state.unlock(&request.range);
        }
        state.users -= 1;
        self.drop_chunk_if_unused(request.chunk);
        self.admit_waiting(request.chunk);
    }

    /// Returns the fresh blocks of segments that never became durable.
    fn release_targets(&mut self, segments: &[Segment]) {
        for segment in segments {
            if let Segment::Data { targets, .. } = segment {
                for run in targets {
                    (run.start..run.start + run.len).for_each(|b| self.alloc.free_now(b));
                }
            }
        }
    }

    /// Forgets a chunk that never became durable (its slot on disk was never written).
    fn drop_chunk_if_unused(&mut self, chunk: ChunkKey) {
        let Some(state) = self.chunks.get(&chunk) else {
            return;
        };
        if state.users == 0
            && !state.exists
            && state.last_seq == 0
            && state.first_dirty_seq.is_none()
        {
            let slot = state.slot;
            self.chunks.remove(&chunk);
            self.free_slots.push(slot);
        }
    }
}

/// Buffers and target blocks of the data segments that are journaled (`journaled`) or written
/// straight to their blocks (`!journaled`).
fn data_writes(segments: &[Segment], journaled: bool) -> Vec<(Arc<AlignedBuf>, Vec<Run>)> {
    segments
        .iter()
        .filter_map(|s| match s {
            Segment::Data {
                buf,
                targets,
                journaled: j,
                ..
            } if *j == journaled => Some((buf.clone(), targets.clone())),
            _ => None,
        })
        .collect()
}

fn is_journaled(segment: &Segment) -> bool {
    matches!(
        segment,
        Segment::Data {
            journaled: true,
            ..
        }
    )
}

/// Applies one durable segment to the in-memory chunk; returns whether it left journaled data
/// to copy. Replaced blocks go to `freed`.
fn apply_segment(state: &mut ChunkState, segment: &Segment, freed: &mut Vec<u32>) -> bool {
    let mut replace = |state: &mut ChunkState, block: u32, entry: BlockEntry| {
        let old = std::mem::replace(&mut state.blocks[block as usize], entry);
        if old.is_mapped() {
            freed.push(old.phys);
        }
    };
    match segment {
        Segment::Data {
            first,
            buf,
            crcs,
            journaled: true,
            ..
        } => {
            for i in 0..crcs.len() as u32 {
                state.overlay.insert(
                    first + i,
                    OverlayBlock {
                        buf: buf.clone(),
                        index: i,
                    },
                );
            }
            true
        }
        Segment::Data {
            first,
            crcs,
            targets,
            journaled: false,
            ..
        } => {
            for (i, &crc) in crcs.iter().enumerate() {
                replace(
                    state,
                    first + i as u32,
                    BlockEntry {
                        phys: nth_block(targets, i as u32),
                        crc,
                    },
                );
            }
            false
        }
        Segment::Unmap { first, count } => {
            (*first..first + count).for_each(|b| replace(state, b, BlockEntry::UNMAPPED));
            false
        }
        Segment::Delete => {
            (0..state.blocks.len() as u32).for_each(|b| replace(state, b, BlockEntry::UNMAPPED));
            false
        }
    }
}

/// Encodes a segment as one journal record.
fn encode_segment(out: &mut Vec<u8>, chunk: ChunkKey, version: ChunkVersion, segment: &Segment) {
    match segment {
        Segment::Data {
            first,
            buf,
            crcs,
            targets,
            journaled,
        } => {
            let count = crcs.len() as u32;
            if *journaled {
                encode_record_header(out, RecordKind::Data, chunk, version, *first, count);
                crcs.iter()
                    .for_each(|c| out.extend_from_slice(&c.to_le_bytes()));
                out.extend_from_slice(buf.as_slice());
            } else {
                encode_record_header(out, RecordKind::Remap, chunk, version, *first, count);
                for (i, crc) in crcs.iter().enumerate() {
                    out.extend_from_slice(&nth_block(targets, i as u32).to_le_bytes());
                    out.extend_from_slice(&crc.to_le_bytes());
                }
            }
        }
        Segment::Unmap { first, count } => {
            encode_record_header(out, RecordKind::Unmap, chunk, version, *first, *count);
        }
        Segment::Delete => {
            encode_record_header(out, RecordKind::Delete, chunk, version, 0, 0);
        }
    }
}
