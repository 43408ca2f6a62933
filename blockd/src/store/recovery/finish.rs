//! Writing the recovered state back so the journal can start empty.

use std::collections::HashMap;
use std::sync::Arc;

use basalt::units::BLOCK_SIZE_BYTES;

use super::replay::{BlockSource, Image, Images};
use super::scan::{JournalScan, SlotScan};
use super::{OpenError, RecoveryReport};
use crate::store::alloc::Allocator;
use crate::store::buf::AlignedBuf;
use crate::store::core::CoreInit;
use crate::store::core::chunk::ChunkState;
use crate::store::engine::{DriveEngine, OpKind, flush, run_many};
use crate::store::format::{
    Anchor, BlockEntry, RecordKind, SlotContent, SlotCursor, Superblock, decode_records,
    encode_slot,
};
use crate::store::geometry::Geometry;

const BLOCK: usize = BLOCK_SIZE_BYTES as usize;

/// Makes the recovered state durable without the journal, then starts a new journal
/// generation. See the module documentation of `recovery` for why each step is safe.
pub(super) fn finish(
    engine: &mut dyn DriveEngine,
    sb: &Superblock,
    anchor: Anchor,
    mut slots: SlotScan,
    journal: &JournalScan,
    mut images: Images,
    report: &mut RecoveryReport,
) -> Result<CoreInit, OpenError> {
    let geo = sb.geometry;
    images.retain(|_, image| image.exists || (image.changed && image.slot.is_some()));
    let mut allocator = allocator_for(&geo, &images)?;
    let writes = place_journaled_blocks(&geo, journal, &mut images, &mut allocator)?;
    if !writes.is_empty() {
        run_many(engine, writes)?;
        flush(engine)?;
    }
    let final_seq = journal.next_seq - 1;
    let slot_writes = slot_writes(&geo, sb.format_nonce, final_seq, &mut slots, &mut images)?;
    if !slot_writes.is_empty() {
        run_many(engine, slot_writes)?;
        flush(engine)?;
    }
    let anchor = Anchor {
        anchor_seq: anchor.anchor_seq + 1,
        generation: anchor.generation + 1,
        tail_offset: journal.head_offset,
        tail_seq: journal.next_seq,
    };
    write_anchor(engine, &anchor, sb.format_nonce)?;
    let chunks: HashMap<_, _> = images
        .into_iter()
        .filter(|(_, image)| image.exists)
        .map(|(key, image)| (key, chunk_state(&geo, image, final_seq)))
        .collect();
    report.chunks = chunks.len() as u64;
    Ok(CoreInit {
        geometry: geo,
        format_nonce: sb.format_nonce,
        chunks,
        slot_cursors: slots.cursors,
        free_slots: slots.free,
        allocator,
        anchor,
        corrupt_slots: slots.corrupt.len() as u64,
    })
}

/// The allocator with every block of a live chunk in use.
fn allocator_for(geo: &Geometry, images: &Images) -> Result<Allocator, OpenError> {
    let blocks = u32::try_from(geo.data_blocks)
        .map_err(|_| OpenError::Damaged("data block count exceeds the format".into()))?;
    let mut allocator = Allocator::new(blocks);
    for (key, image) in images.iter().filter(|(_, i)| i.exists) {
        for source in &image.blocks {
            if let BlockSource::Entry(e) = source
                && e.is_mapped()
                && !allocator.mark_used(e.phys)
            {
                tracing::error!(chunk = %key, phys = e.phys, "data block mapped twice");
            }
        }
    }
    Ok(allocator)
}

/// Gives every block whose data is only in the journal a fresh data block, and returns the
/// writes that copy it there. Blocks any scanned `Remap` record names are avoided, so running
/// recovery again after a crash sees the same data under those records.
fn place_journaled_blocks(
    geo: &Geometry,
    journal: &JournalScan,
    images: &mut Images,
    allocator: &mut Allocator,
) -> Result<Vec<OpKind>, OpenError> {
    let reserved = reserve_remap_targets(geo, journal, allocator);
    let mut writes = Vec::new();
    for image in images.values_mut().filter(|i| i.exists) {
        writes.extend(place_chunk(geo, journal, image, allocator)?);
    }
    reserved.into_iter().for_each(|b| allocator.free_now(b));
    Ok(writes)
}

fn reserve_remap_targets(geo: &Geometry, journal: &JournalScan, alloc: &mut Allocator) -> Vec<u32> {
    let mut reserved = Vec::new();
    for batch in &journal.batches {
        let bpc = geo.blocks_per_chunk();
        let Ok(records) = decode_records(batch.payload(), batch.header.record_count, bpc) else {
            continue;
        };
        for r in records.iter().filter(|r| r.kind == RecordKind::Remap) {
            for i in 0..r.block_count {
                if alloc.mark_used(r.phys(i)) {
                    reserved.push(r.phys(i));
                }
            }
        }
    }
    reserved
}

fn place_chunk(
    geo: &Geometry,
    journal: &JournalScan,
    image: &mut Image,
    allocator: &mut Allocator,
) -> Result<Vec<OpKind>, OpenError> {
    let pending: Vec<(usize, usize, usize, u32)> = image
        .blocks
        .iter()
        .enumerate()
        .filter_map(|(block, s)| match *s {
            BlockSource::Journal { batch, at, crc } => Some((block, batch, at, crc)),
            BlockSource::Entry(_) => None,
        })
        .collect();
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let runs = allocator
        .allocate(pending.len() as u32)
        .ok_or_else(|| OpenError::Damaged("no free data blocks for journaled writes".into()))?;
    let mut data = AlignedBuf::zeroed(pending.len() * BLOCK);
    let physical = runs.iter().flat_map(|r| r.start..r.start + r.len);
    for (i, ((block, batch, at, crc), phys)) in pending.into_iter().zip(physical).enumerate() {
        let src = &journal.batches[batch].buf.as_slice()[at..at + BLOCK];
        data.as_mut_slice()[i * BLOCK..(i + 1) * BLOCK].copy_from_slice(src);
        image.blocks[block] = BlockSource::Entry(BlockEntry { phys, crc });
    }
    let data = Arc::new(data);
    let mut at = 0;
    let mut writes = Vec::new();
    for run in runs {
        let len = run.len as usize * BLOCK;
        let offset = geo.data_block_offset(run.start);
        writes.push(OpKind::Write {
            offset,
            buf: data.clone(),
            range: at..at + len,
        });
        at += len;
    }
    Ok(writes)
}

/// Slot writes for changed chunks (live or tombstone) and stale duplicates; assigns slots to
/// chunks that had none.
fn slot_writes(
    geo: &Geometry,
    nonce: u64,
    seq: u64,
    slots: &mut SlotScan,
    images: &mut Images,
) -> Result<Vec<OpKind>, OpenError> {
    let mut contents: Vec<(u32, SlotContent)> = Vec::new();
    for slot in std::mem::take(&mut slots.stale) {
        contents.push((slot, SlotContent::Empty { seq }));
        slots.free.push(slot);
    }
    for (key, image) in images.iter_mut().filter(|(_, i)| i.changed) {
        if !image.exists {
            let slot = image
                .slot
                .take()
                .expect("retained deleted chunks have a slot");
            contents.push((slot, SlotContent::Empty { seq }));
            slots.free.push(slot);
            continue;
        }
        let slot = match image.slot {
            Some(slot) => slot,
            None => slots.free.pop().ok_or_else(|| {
                OpenError::Damaged(format!("no free chunk slot for replayed chunk {key}"))
            })?,
        };
        image.slot = Some(slot);
        let blocks = image.blocks.iter().map(entry_of).collect();
        let version = image.version;
        contents.push((
            slot,
            SlotContent::Live {
                seq,
                chunk: *key,
                version,
                blocks,
            },
        ));
    }
    let size = geo.slot_copy_size_bytes as usize;
    Ok(contents
        .into_iter()
        .map(|(slot, content)| {
            let (copy, stamp) = slots.cursors[slot as usize].next();
            slots.cursors[slot as usize] = SlotCursor {
                newest_copy: copy,
                stamp,
            };
            let mut buf = AlignedBuf::zeroed(size);
            encode_slot(&content, nonce, stamp, buf.as_mut_slice());
            let offset = geo.slot_offset(slot, copy);
            OpKind::Write {
                offset,
                buf: Arc::new(buf),
                range: 0..size,
            }
        })
        .collect())
}

fn entry_of(source: &BlockSource) -> BlockEntry {
    match source {
        BlockSource::Entry(e) => *e,
        BlockSource::Journal { .. } => unreachable!("journaled blocks were placed first"),
    }
}

/// Writes an anchor to its copy (alternating by `anchor_seq`) and flushes.
pub(crate) fn write_anchor(
    engine: &mut dyn DriveEngine,
    anchor: &Anchor,
    nonce: u64,
) -> std::io::Result<()> {
    let offset = anchor.device_offset();
    let buf = AlignedBuf::copy_from(&anchor.encode(nonce));
    crate::store::engine::write_at(engine, offset, buf)?;
    flush(engine)
}

fn chunk_state(geo: &Geometry, image: Image, seq: u64) -> ChunkState {
    let slot = image.slot.expect("live chunks have a slot after recovery");
    let mut state = ChunkState::new(slot, geo.blocks_per_chunk());
    state.version = image.version;
    state.blocks = image.blocks.iter().map(entry_of).collect();
    state.exists = true;
    state.last_seq = seq;
    state
}
