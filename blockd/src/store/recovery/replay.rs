//! Applying journal records to the slot images (pure, apart from the data check callback).

use std::collections::HashMap;

use basalt::ids::{ChunkKey, ChunkVersion};

use super::scan::{JournalScan, SlotScan};
use super::{OpenError, RecoveryReport};
use crate::store::format::{BlockEntry, RecordKind, RecordRef, decode_records};
use crate::store::geometry::Geometry;

/// Where a block's current content is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BlockSource {
    /// In the data area (or unmapped).
    Entry(BlockEntry),
    /// Only in the journal: batch index, byte offset of the block in the batch, crc.
    Journal { batch: usize, at: usize, crc: u32 },
}

/// One chunk as recovery rebuilds it.
#[derive(Debug)]
pub(super) struct Image {
    /// Slot holding the chunk on disk, if any.
    pub slot: Option<u32>,
    /// Journal sequence number the slot reflects.
    pub slot_seq: u64,
    /// Version after the last applied record.
    pub version: ChunkVersion,
    /// Whether the chunk exists after the last applied record.
    pub exists: bool,
    /// Whether a record changed the chunk (its slot must be rewritten).
    pub changed: bool,
    /// Block map.
    pub blocks: Vec<BlockSource>,
}

/// All chunks by key.
pub(super) type Images = HashMap<ChunkKey, Image>;

/// Images of the chunks found in slots.
pub(super) fn from_slots(slots: &SlotScan) -> Images {
    slots
        .live
        .iter()
        .map(|s| {
            let image = Image {
                slot: Some(s.slot),
                slot_seq: s.seq,
                version: s.version,
                exists: true,
                changed: false,
                blocks: s.blocks.iter().map(|&e| BlockSource::Entry(e)).collect(),
            };
            (s.chunk, image)
        })
        .collect()
}

/// Checks that a data block holds data with a crc (reads the drive).
pub(super) type DataCheck<'a> = dyn FnMut(u32, u32) -> Result<bool, OpenError> + 'a;

/// Applies every record of the scanned journal, in order.
pub(super) fn replay(
    images: &mut Images,
    journal: &JournalScan,
    geo: &Geometry,
    report: &mut RecoveryReport,
    check: &mut DataCheck<'_>,
) -> Result<(), OpenError> {
    let bpc = geo.blocks_per_chunk();
    for (index, batch) in journal.batches.iter().enumerate() {
        let payload = batch.payload();
        let records = decode_records(payload, batch.header.record_count, bpc)
            .map_err(|e| OpenError::Damaged(format!("journal batch re-read differs: {e}")))?;
        let unconfirmed = batch.header.seq > journal.confirmed_seq;
        let payload_at = payload.as_ptr() as usize - batch.buf.as_slice().as_ptr() as usize;
        for record in &records {
            let image = images.entry(record.chunk).or_insert_with(|| Image {
                slot: None,
                slot_seq: 0,
                version: ChunkVersion::default(),
                exists: false,
                changed: false,
                blocks: vec![BlockSource::Entry(BlockEntry::UNMAPPED); bpc as usize],
            });
            if batch.header.seq <= image.slot_seq {
                report.records_skipped += 1;
                continue;
            }
            if unconfirmed && record.kind == RecordKind::Remap && !remap_landed(record, check)? {
                tracing::warn!(chunk = %record.chunk, seq = batch.header.seq,
                    "dropping an unacknowledged redirected write whose data is not on disk");
                report.records_dropped += 1;
                continue;
            }
            let data_at = payload_at + (record.body.as_ptr() as usize - payload.as_ptr() as usize);
            apply(image, record, index, data_at);
            report.records_applied += 1;
        }
    }
    Ok(())
}

fn remap_landed(record: &RecordRef<'_>, check: &mut DataCheck<'_>) -> Result<bool, OpenError> {
    for i in 0..record.block_count {
        if !check(record.phys(i), record.crc(i))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Applies one record. `body_at` is the byte offset of its body within the batch buffer.
fn apply(image: &mut Image, record: &RecordRef<'_>, batch: usize, body_at: usize) {
    image.changed = true;
    let first = record.first_block as usize;
    let count = record.block_count as usize;
    match record.kind {
        RecordKind::Data => {
            let data_at = body_at + count * 4;
            for i in 0..count {
                let at = data_at + i * 4096;
                let crc = record.crc(i as u32);
                image.blocks[first + i] = BlockSource::Journal { batch, at, crc };
            }
        }
        RecordKind::Remap => {
            for i in 0..count {
                let entry = BlockEntry {
                    phys: record.phys(i as u32),
                    crc: record.crc(i as u32),
                };
                image.blocks[first + i] = BlockSource::Entry(entry);
            }
        }
        RecordKind::Unmap => {
            image.blocks[first..first + count].fill(BlockSource::Entry(BlockEntry::UNMAPPED));
        }
        RecordKind::Delete => {
            image.blocks.fill(BlockSource::Entry(BlockEntry::UNMAPPED));
            image.exists = false;
            image.version = ChunkVersion::default();
            return;
        }
    }
    // Highest version wins, as in `ChunkState::touch`: records of one chunk may be journaled
    // out of version order.
    image.version = if image.exists {
        image.version.max(record.version)
    } else {
        record.version
    };
    image.exists = true;
}
