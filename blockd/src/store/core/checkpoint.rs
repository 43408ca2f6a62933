//! Checkpoints: write changed chunk slots back, then let the journal reuse its space.
//!
//! # Crash consistency
//! A round runs in five steps, each starting when the previous one completed:
//! 1. Snapshot every dirty chunk (block map + version) as of `snapshot_seq`: all its durable
//!    records except those whose journaled data is still being copied (those stay dirty), then
//!    **flush**, so every copy included in a snapshot is durable.
//! 2. Write each snapshot to the slot copy that does *not* hold the chunk's newest content; a
//!    torn slot write leaves the other copy intact. **Flush.**
//! 3. Compute the new tail: the oldest batch that some chunk still needs (its
//!    `first_dirty_seq`), or the oldest batch not yet durable, or the head.
//! 4. Write the anchor (alternating copies, increasing `anchor_seq`). **Flush.**
//! 5. Only now drop the batches before the tail: their space may be overwritten.
//!
//! Replay from any anchor reaches a correct state: a chunk's slot reflects all its records up to
//! the slot's seq and the journal still holds every record after that (step 3), and replaying a
//! record that the slot already reflects sets blocks to the values they already have.

use basalt::units::BLOCK_SIZE_BYTES;

use super::StoreCore;
use super::journal::ReqId;
use crate::store::buf::AlignedBuf;
use crate::store::engine::OpKind;
use crate::store::format::{Anchor, SlotContent, SlotCursor, encode_slot};
use crate::store::types::Reply;

/// Operations a round waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CkptOp {
    FlushBeforeSlots,
    SlotWrite { slot: u32, cursor: SlotCursor },
    FlushAfterSlots,
    AnchorWrite,
    FlushAfterAnchor,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Idle,
    FlushBeforeSlots,
    WritingSlots {
        outstanding: u32,
    },
    FlushAfterSlots,
    WritingAnchor,
    FlushAfterAnchor,
}

/// Checkpoint progress and requests waiting for one.
#[derive(Debug, Default)]
pub(super) struct Checkpointer {
    phase: Phase,
    snapshots: Vec<(u32, SlotCursor, AlignedBuf)>,
    new_anchor: Option<Anchor>,
    /// Checkpoint requests: reply tag and the newest mutating request that must be finished
    /// before the round they wait for starts.
    requested: Vec<(u64, ReqId)>,
    /// Tags answered when the current round ends.
    answering: Vec<u64>,
}

/// Percentage of the journal in use that starts a round.
pub const CHECKPOINT_START_PERCENT_DEFAULT: u8 = 25;

impl StoreCore {
    /// A Checkpoint request: answered after a round that starts once every mutating request
    /// received before it has finished.
    pub(super) fn request_checkpoint(&mut self, tag: u64) {
        let barrier = self.last_mut_id();
        self.ckpt.requested.push((tag, barrier));
    }

    /// Starts a round if one is due and none is running.
    pub(super) fn maybe_checkpoint(&mut self) {
        if self.ckpt.phase != Phase::Idle || self.failed.is_some() {
            return;
        }
        let oldest_running = self.muts.keys().min().copied();
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .ckpt
            .requested
            .drain(..)
            .partition(|&(_, barrier)| oldest_running.is_none_or(|oldest| oldest > barrier));
        self.ckpt.requested = waiting;
        let used_percent = self.journal.used_bytes() * 100 / self.journal.size_bytes();
        let full = used_percent >= u64::from(self.opts.checkpoint_start_percent);
        let blocked = self.journal.has_pending_records() && !self.journal.is_writing();
        if ready.is_empty() && !full && !blocked {
            return;
        }
        self.ckpt.answering = ready.into_iter().map(|(tag, _)| tag).collect();
        self.start_round();
    }

    fn start_round(&mut self) {
        let slot_size = self.geo.slot_copy_size_bytes as usize;
        let mut snapshots = Vec::new();
        for (key, state) in self.chunks.iter_mut() {
            if state.first_dirty_seq.is_none() {
                continue;
            }
            let seq = state.snapshot_seq();
            let content = if state.exists {
                let blocks = state.blocks.clone();
                SlotContent::Live {
                    seq,
                    chunk: *key,
                    version: state.version,
                    blocks,
                }
            } else {
                SlotContent::Empty { seq }
            };
            let mut buf = AlignedBuf::zeroed(slot_size);
            let (newest_copy, stamp) = self.slot_cursors[state.slot as usize].next();
            encode_slot(&content, self.format_nonce, stamp, buf.as_mut_slice());
            snapshots.push((state.slot, SlotCursor { newest_copy, stamp }, buf));
            state.first_dirty_seq = state.pending_applies.keys().next().copied();
        }
        self.ckpt.snapshots = snapshots;
        self.ckpt.phase = Phase::FlushBeforeSlots;
        self.submit(
            super::OpPurpose::Checkpoint(CkptOp::FlushBeforeSlots),
            OpKind::Flush,
        );
    }

    /// A checkpoint operation completed.
    pub(super) fn on_checkpoint_op(&mut self, op: CkptOp, result: std::io::Result<()>) {
        if let Err(e) = result {
            return self.fail(format!("checkpoint {op:?} failed: {e}"));
        }
        match op {
            CkptOp::FlushBeforeSlots => self.write_slots(),
            CkptOp::SlotWrite { slot, cursor } => {
                self.slot_cursors[slot as usize] = cursor;
                let Phase::WritingSlots { outstanding } = &mut self.ckpt.phase else {
                    unreachable!("slot write outside the slot phase")
                };
                *outstanding -= 1;
                if *outstanding == 0 {
                    self.flush_after_slots();
                }
            }
            CkptOp::FlushAfterSlots => self.write_anchor(),
            CkptOp::AnchorWrite => {
                self.ckpt.phase = Phase::FlushAfterAnchor;
                let purpose = super::OpPurpose::Checkpoint(CkptOp::FlushAfterAnchor);
                self.submit(purpose, OpKind::Flush);
            }
            CkptOp::FlushAfterAnchor => self.finish_round(),
        }
    }

    fn write_slots(&mut self) {
        let snapshots = std::mem::take(&mut self.ckpt.snapshots);
        if snapshots.is_empty() {
            return self.write_anchor();
        }
        self.ckpt.phase = Phase::WritingSlots {
            outstanding: snapshots.len() as u32,
        };
        for (slot, cursor, buf) in snapshots {
            let offset = self.geo.slot_offset(slot, cursor.newest_copy);
            let range = 0..buf.len();
            let kind = OpKind::Write {
                offset,
                buf: std::sync::Arc::new(buf),
                range,
            };
            self.submit(
                super::OpPurpose::Checkpoint(CkptOp::SlotWrite { slot, cursor }),
                kind,
            );
        }
    }

    fn flush_after_slots(&mut self) {
        self.ckpt.phase = Phase::FlushAfterSlots;
        self.submit(
            super::OpPurpose::Checkpoint(CkptOp::FlushAfterSlots),
            OpKind::Flush,
        );
    }

    fn write_anchor(&mut self) {
        let oldest_needed = self.chunks.values().filter_map(|s| s.first_dirty_seq).min();
        let oldest_not_durable = self.journal.durable_seq() + 1;
        let tail_seq = oldest_needed.map_or(oldest_not_durable, |s| s.min(oldest_not_durable));
        let tail_offset = self
            .journal
            .offset_of(tail_seq)
            .expect("tail batch is live");
        let anchor = Anchor {
            anchor_seq: self.anchor.anchor_seq + 1,
            generation: self.journal.generation(),
            tail_offset,
            tail_seq,
        };
        let block = anchor.encode(self.format_nonce);
        let offset = anchor.device_offset();
        let buf = std::sync::Arc::new(AlignedBuf::copy_from(&block));
        self.ckpt.new_anchor = Some(anchor);
        self.ckpt.phase = Phase::WritingAnchor;
        let kind = OpKind::Write {
            offset,
            buf,
            range: 0..BLOCK_SIZE_BYTES as usize,
        };
        self.submit(super::OpPurpose::Checkpoint(CkptOp::AnchorWrite), kind);
    }

    fn finish_round(&mut self) {
        let anchor = self
            .ckpt
            .new_anchor
            .take()
            .expect("anchor written this round");
        self.journal.advance_tail(anchor.tail_seq);
        self.anchor = anchor;
        self.ckpt.phase = Phase::Idle;
        self.counters.checkpoints += 1;
        // Deleted chunks whose empty slot is now durable give their slot back.
        let gone: Vec<_> = self
            .chunks
            .iter()
            .filter(|(_, s)| !s.exists && s.users == 0 && s.first_dirty_seq.is_none())
            .map(|(k, s)| (*k, s.slot))
            .collect();
        for (key, slot) in gone {
            self.chunks.remove(&key);
            self.free_slots.push(slot);
        }
        for tag in std::mem::take(&mut self.ckpt.answering) {
            self.reply(tag, Ok(Reply::Done));
        }
    }

    /// Tags of every Checkpoint request not yet answered (fail-stop answers them).
    pub(super) fn ckpt_waiting_tags(&mut self) -> Vec<u64> {
        let requested = self.ckpt.requested.drain(..).map(|(tag, _)| tag);
        let mut tags: Vec<u64> = requested.collect();
        tags.append(&mut self.ckpt.answering);
        tags
    }

    /// Whether a checkpoint round is running.
    pub fn checkpoint_running(&self) -> bool {
        self.ckpt.phase != Phase::Idle
    }
}
