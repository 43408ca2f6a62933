//! The store's sans-IO core: requests and drive completions in, drive operations and replies
//! out.
//!
//! `StoreCore` owns all in-memory state of one drive (block maps, allocator, journal writer,
//! checkpoints) and never performs I/O or blocks. A driver (the drive thread, or a test's
//! simulation loop) feeds it with [`StoreCore::handle_request`] and
//! [`StoreCore::handle_completion`], then drains [`StoreCore::poll_op`] into a drive engine and
//! [`StoreCore::poll_reply`] to the callers. Because it is deterministic given its inputs, the
//! power-loss tests run it against a simulated drive at thousands of crash points.
//!
//! # Crash consistency
//! See `write` (the order of a mutation), `journal` (group commit) and `checkpoint` (when journal
//! space is reused); `recovery` replays the journal at open. No request is acknowledged before
//! the flush that makes it durable has completed.

pub mod checkpoint;
pub mod chunk;
pub mod journal;
mod read;
mod write;

use std::collections::{BTreeSet, HashMap, VecDeque};

use basalt::ids::ChunkKey;

use self::checkpoint::{CHECKPOINT_START_PERCENT_DEFAULT, Checkpointer, CkptOp};
use self::chunk::ChunkState;
use self::journal::{Journal, ReqId};
use super::alloc::Allocator;
use super::engine::{Completion, DriveOp, OpKind};
use super::format::{Anchor, SlotCursor};
use super::geometry::Geometry;
use super::idmap::{IdMap, id_map};
use super::types::{Reply, Request, StoreError, StoreStats};

/// Largest write that goes through the journal with its data, by default.
pub const DEFERRED_WRITE_SIZE_MAX_DEFAULT: u32 = 64 * 1024;

/// Tunables of a running store (not part of the on-disk format).
#[derive(Clone, Copy, Debug)]
pub struct CoreOptions {
    /// Writes up to this size (after rounding to whole blocks) are journaled with their data;
    /// larger ones are written to fresh blocks directly.
    pub deferred_write_size_max: u32,
    /// Journal usage (percent) that starts a checkpoint.
    pub checkpoint_start_percent: u8,
}

impl Default for CoreOptions {
    fn default() -> Self {
        Self {
            deferred_write_size_max: DEFERRED_WRITE_SIZE_MAX_DEFAULT,
            checkpoint_start_percent: CHECKPOINT_START_PERCENT_DEFAULT,
        }
    }
}

/// Everything recovery hands to a new core.
#[derive(Debug)]
pub struct CoreInit {
    /// Drive layout.
    pub geometry: Geometry,
    /// The drive's format nonce.
    pub format_nonce: u64,
    /// Chunks, clean (their slots are current).
    pub chunks: HashMap<ChunkKey, ChunkState>,
    /// Per slot, which copy was written last (the next write goes to the other).
    pub slot_cursors: Vec<SlotCursor>,
    /// Slots available for new chunks.
    pub free_slots: Vec<u32>,
    /// Data blocks in use.
    pub allocator: Allocator,
    /// The anchor on disk.
    pub anchor: Anchor,
    /// Slots found damaged.
    pub corrupt_slots: u64,
}

/// What a drive operation was for.
#[derive(Debug)]
enum OpPurpose {
    JournalWrite(u64),
    JournalFlush(u64),
    ReadRun {
        req: ReqId,
        rel_block: u32,
        crcs: Vec<u32>,
        token: u64,
    },
    EdgeRead {
        req: ReqId,
        edge: usize,
        crc: u32,
        token: u64,
    },
    DataWrite {
        req: ReqId,
    },
    ApplyWrite {
        req: ReqId,
    },
    Checkpoint(CkptOp),
}

/// The sans-IO store; see the module documentation.
#[derive(Debug)]
pub struct StoreCore {
    geo: Geometry,
    format_nonce: u64,
    opts: CoreOptions,
    chunks: HashMap<ChunkKey, ChunkState>,
    free_slots: Vec<u32>,
    slot_cursors: Vec<SlotCursor>,
    alloc: Allocator,
    journal: Journal,
    anchor: Anchor,
    muts: IdMap<write::MutRequest>,
    reads: IdMap<read::ReadRequest>,
    unacked: BTreeSet<ReqId>,
    flush_waiters: Vec<(u64, ReqId)>,
    ops: IdMap<OpPurpose>,
    next_id: u64,
    outbox: VecDeque<DriveOp>,
    replies: VecDeque<(u64, Result<Reply, StoreError>)>,
    ckpt: Checkpointer,
    failed: Option<String>,
    counters: StoreStats,
}

impl StoreCore {
    /// A core over recovered state. The journal starts empty at the anchor's tail.
    pub fn new(init: CoreInit, opts: CoreOptions) -> Self {
        let geo = init.geometry;
        let journal = Journal::new(
            geo.journal_offset,
            geo.journal_size_bytes,
            geo.journal_batch_size_max,
            init.format_nonce,
            init.anchor.generation,
            init.anchor.tail_offset,
            init.anchor.tail_seq,
        );
        let mut opts = opts;
        let record_max = journal.record_size_max() as u32;
        // A journaled write's record (header, crcs, data) must fit in one batch.
        let data_max = (record_max - 4096) / (4096 + 4) * 4096;
        opts.deferred_write_size_max = opts.deferred_write_size_max.min(data_max) / 4096 * 4096;
        assert!(
            geo.blocks_per_chunk() as usize * 8 + 64 <= record_max as usize,
            "a whole-chunk remap record must fit in a journal batch"
        );
        let counters = StoreStats {
            corrupt_slots: init.corrupt_slots,
            ..StoreStats::default()
        };
        Self {
            geo,
            format_nonce: init.format_nonce,
            opts,
            chunks: init.chunks,
            free_slots: init.free_slots,
            slot_cursors: init.slot_cursors,
            alloc: init.allocator,
            journal,
            anchor: init.anchor,
            muts: id_map(),
            reads: id_map(),
            unacked: BTreeSet::new(),
            flush_waiters: Vec::new(),
            ops: id_map(),
            next_id: 1,
            outbox: VecDeque::new(),
            replies: VecDeque::new(),
            ckpt: Checkpointer::default(),
            failed: None,
            counters,
        }
    }

    /// Drive layout.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Accepts a request; its reply comes out of `poll_reply` tagged with `tag`.
    pub fn handle_request(&mut self, tag: u64, request: Request) {
        if let Some(why) = &self.failed {
            let error = StoreError::Failed(why.clone());
            return self.reply(tag, Err(error));
        }
        match request {
            Request::Write {
                chunk,
                offset,
                data,
                version,
            } => self.start_write(tag, chunk, offset, data, version),
            Request::Read { chunk, offset, len } => self.start_read(tag, chunk, offset, len),
            Request::Unmap {
                chunk,
                offset,
                len,
                version,
            } => self.start_unmap(tag, chunk, offset, len, version),
            Request::Flush => {
                let barrier = self.last_mut_id();
                self.flush_waiters.push((tag, barrier));
                self.complete_flushes();
            }
            Request::ChunkVersion { chunk } => {
                let version = self
                    .chunks
                    .get(&chunk)
                    .filter(|s| s.exists)
                    .map(|s| s.version);
                self.reply(tag, Ok(Reply::Version(version)));
            }
            Request::ListChunks => {
                let chunks = self.list_chunks();
                self.reply(tag, Ok(chunks));
            }
            Request::DeleteChunk { chunk } => self.start_delete(tag, chunk),
            Request::BlockStatus { chunk, offset, len } => {
                let result = self.block_status(chunk, offset, len);
                self.reply(tag, result);
            }
            Request::Stats => {
                let stats = self.stats();
                self.reply(tag, Ok(Reply::Stats(stats)));
            }
            Request::Checkpoint => self.request_checkpoint(tag),
        }
        self.pump();
    }

    /// Accepts the completion of an operation taken from `poll_op`.
    pub fn handle_completion(&mut self, c: Completion) {
        let Some(purpose) = self.ops.remove(&c.id) else {
            debug_assert!(false, "completion for unknown operation {}", c.id);
            return;
        };
        if self.failed.is_some() {
            return;
        }
        self.dispatch(purpose, c);
        self.pump();
    }

    fn dispatch(&mut self, purpose: OpPurpose, c: Completion) {
        match purpose {
            OpPurpose::JournalWrite(seq) => match c.result {
                Ok(()) => {
                    self.journal.on_written(seq);
                    self.submit(OpPurpose::JournalFlush(seq), OpKind::Flush);
                }
                Err(e) => self.fail(format!("journal write failed: {e}")),
            },
            OpPurpose::JournalFlush(seq) => match c.result {
                Ok(()) => self.on_batch_durable(seq),
                Err(e) => self.fail(format!("journal flush failed: {e}")),
            },
            OpPurpose::ReadRun {
                req,
                rel_block,
                crcs,
                token,
            } => {
                self.alloc.read_done(token);
                self.on_read_run(req, rel_block, crcs, c);
            }
            OpPurpose::EdgeRead {
                req,
                edge,
                crc,
                token,
            } => {
                self.alloc.read_done(token);
                self.on_edge_read(req, edge, crc, c);
            }
            OpPurpose::DataWrite { req } => self.on_data_written(req, c, false),
            OpPurpose::ApplyWrite { req } => self.on_data_written(req, c, true),
            OpPurpose::Checkpoint(op) => self.on_checkpoint_op(op, c.result),
        }
    }

    fn on_batch_durable(&mut self, seq: u64) {
        self.counters.journal_batches += 1;
        for id in self.journal.on_flushed(seq) {
            if self.failed.is_some() {
                return;
            }
            self.on_durable(id, seq);
        }
    }

    /// Seals journal batches and starts checkpoints as needed.
    fn pump(&mut self) {
        if self.failed.is_some() {
            return;
        }
        if let Some(batch) = self.journal.poll_seal() {
            let range = 0..batch.buf.len();
            let buf = std::sync::Arc::new(batch.buf);
            let kind = OpKind::Write {
                offset: batch.device_offset,
                buf,
                range,
            };
            self.submit(OpPurpose::JournalWrite(batch.seq), kind);
        }
        self.maybe_checkpoint();
    }

    /// Next drive operation to submit.
    pub fn poll_op(&mut self) -> Option<DriveOp> {
        self.outbox.pop_front()
    }

    /// Next reply: the caller's tag and the result.
    pub fn poll_reply(&mut self) -> Option<(u64, Result<Reply, StoreError>)> {
        self.replies.pop_front()
    }

    /// Whether nothing is in progress (no request, operation or checkpoint).
    pub fn is_idle(&self) -> bool {
        self.ops.is_empty()
            && self.outbox.is_empty()
            && self.muts.is_empty()
            && self.reads.is_empty()
            && !self.checkpoint_running()
    }

    /// Whether the store stopped after a fatal drive error.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn last_mut_id(&self) -> ReqId {
        self.next_id
    }

    fn submit(&mut self, purpose: OpPurpose, kind: OpKind) {
        let id = self.next_id();
        self.ops.insert(id, purpose);
        self.outbox.push_back(DriveOp { id, kind });
    }

    fn reply(&mut self, tag: u64, result: Result<Reply, StoreError>) {
        self.replies.push_back((tag, result));
    }

    /// Answers Flush requests whose earlier mutations have all completed.
    fn complete_flushes(&mut self) {
        let oldest = self.unacked.first().copied();
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flush_waiters)
            .into_iter()
            .partition(|&(_, barrier)| oldest.is_none_or(|o| o > barrier));
        self.flush_waiters = waiting;
        for (tag, _) in done {
            self.reply(tag, Ok(Reply::Done));
        }
    }

    /// Fail-stop after a write or flush error: the drive can no longer keep promises. Every
    /// pending request is answered with `Failed`, and so is every later one.
    pub fn fail(&mut self, why: String) {
        if self.failed.is_some() {
            return;
        }
        tracing::error!(reason = %why, "store failed; refusing further requests");
        self.failed = Some(why.clone());
        let muts: Vec<_> = self.muts.drain().collect();
        for (_, m) in muts.into_iter().filter(|(id, _)| self.unacked.contains(id)) {
            self.replies
                .push_back((m.tag(), Err(StoreError::Failed(why.clone()))));
        }
        let reads: Vec<_> = self.reads.drain().collect();
        for (_, r) in reads {
            self.replies
                .push_back((r.tag(), Err(StoreError::Failed(why.clone()))));
        }
        for (tag, _) in std::mem::take(&mut self.flush_waiters) {
            self.replies
                .push_back((tag, Err(StoreError::Failed(why.clone()))));
        }
        for tag in self.ckpt_waiting_tags() {
            self.replies
                .push_back((tag, Err(StoreError::Failed(why.clone()))));
        }
        self.unacked.clear();
    }
}
