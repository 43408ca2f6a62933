//! Reading what is on the drive: superblock, anchor, slots and the live journal.

use std::collections::HashMap;

use basalt::ids::{ChunkKey, ChunkVersion};
use basalt::units::BLOCK_SIZE_BYTES;

use super::{Expect, OpenError};
use crate::store::buf::AlignedBuf;
use crate::store::core::journal::next_batch_offset;
use crate::store::engine::{DriveEngine, OpKind, read_at, run_many};
use crate::store::format::{
    Anchor, BATCH_HEADER_SIZE_BYTES, BatchHeader, BlockEntry, FormatError, RecordKind, SlotContent,
    SlotCursor, Superblock, decode_records, decode_slot, stamp_is_newer,
};
use crate::store::geometry::{ANCHOR_OFFSET, Geometry, SUPERBLOCK_OFFSET};

const BLOCK: u64 = BLOCK_SIZE_BYTES as u64;
/// Bytes of slot area read per operation.
const SLOT_READ_BYTES_MAX: u64 = 1 << 20;
/// Slot-area reads in flight at once.
const SLOT_READS_IN_FLIGHT: usize = 32;

/// Reads both superblock copies and checks the drive's identity.
pub(super) fn read_superblock(
    engine: &mut dyn DriveEngine,
    expect: &Expect,
) -> Result<Superblock, OpenError> {
    if engine.device_size() < 2 * BLOCK {
        let size = engine.device_size();
        return Err(OpenError::NotFormatted(format!(
            "device of {size} bytes is too small"
        )));
    }
    let blocks = read_at(engine, SUPERBLOCK_OFFSET, 2 * BLOCK as usize)?;
    let copies = blocks
        .as_slice()
        .chunks_exact(BLOCK as usize)
        .map(Superblock::decode);
    let mut errors = Vec::new();
    let mut found = None;
    for (copy, result) in copies.enumerate() {
        match result {
            Ok(sb) => {
                found.get_or_insert(sb);
            }
            Err(FormatError::Version { found, supported }) => {
                return Err(OpenError::UnsupportedVersion { found, supported });
            }
            Err(e) => errors.push(format!("superblock copy {copy}: {e}")),
        }
    }
    let sb = found.ok_or_else(|| OpenError::NotFormatted(errors.join("; ")))?;
    check_identity(&sb, expect)?;
    sb.geometry.validate()?;
    if engine.device_size() < sb.geometry.device_size_bytes {
        let formatted = sb.geometry.device_size_bytes;
        return Err(OpenError::Truncated {
            actual: engine.device_size(),
            formatted,
        });
    }
    Ok(sb)
}

fn check_identity(sb: &Superblock, expect: &Expect) -> Result<(), OpenError> {
    if let Some(expected) = expect.cluster_id.filter(|&c| c != sb.cluster_id) {
        return Err(OpenError::WrongCluster {
            found: sb.cluster_id,
            expected,
        });
    }
    if let Some(expected) = expect.node_id.filter(|&n| n != sb.node_id) {
        return Err(OpenError::WrongNode {
            found: sb.node_id,
            expected,
        });
    }
    Ok(())
}

/// The valid anchor copy with the highest `anchor_seq`.
pub(super) fn read_anchor(
    engine: &mut dyn DriveEngine,
    geo: &Geometry,
    nonce: u64,
) -> Result<Anchor, OpenError> {
    let blocks = read_at(engine, ANCHOR_OFFSET, 2 * BLOCK as usize)?;
    let mut errors = Vec::new();
    let mut best: Option<Anchor> = None;
    for (copy, bytes) in blocks.as_slice().chunks_exact(BLOCK as usize).enumerate() {
        match Anchor::decode(bytes, nonce) {
            Ok(a) if anchor_fits(&a, geo) => {
                if best.is_none_or(|b| a.anchor_seq > b.anchor_seq) {
                    best = Some(a);
                }
            }
            Ok(_) => errors.push(format!("anchor copy {copy}: tail outside the journal")),
            Err(e) => errors.push(format!("anchor copy {copy}: {e}")),
        }
    }
    best.ok_or_else(|| OpenError::Damaged(format!("no valid anchor ({})", errors.join("; "))))
}

fn anchor_fits(a: &Anchor, geo: &Geometry) -> bool {
    a.tail_offset.is_multiple_of(BLOCK)
        && a.tail_offset + u64::from(geo.journal_batch_size_max) <= geo.journal_size_bytes
        && a.tail_seq > 0
}

/// A live chunk found in a slot.
#[derive(Debug)]
pub(super) struct SlotChunk {
    pub slot: u32,
    pub seq: u64,
    pub chunk: ChunkKey,
    pub version: ChunkVersion,
    pub blocks: Vec<BlockEntry>,
}

/// The slot area, decoded.
#[derive(Debug, Default)]
pub(super) struct SlotScan {
    /// Live chunks (one slot per chunk).
    pub live: Vec<SlotChunk>,
    /// Per slot, the copy written last (the next write goes to the other).
    pub cursors: Vec<SlotCursor>,
    /// Slots whose newest copy is empty.
    pub free: Vec<u32>,
    /// Slots that lost to a newer slot of the same chunk: rewritten empty by `finish`.
    pub stale: Vec<u32>,
    /// Slots with both copies damaged: never reused.
    pub corrupt: Vec<u32>,
}

/// Reads and decodes every slot.
pub(super) fn read_slots(
    engine: &mut dyn DriveEngine,
    geo: &Geometry,
    nonce: u64,
) -> Result<SlotScan, OpenError> {
    let pair = 2 * u64::from(geo.slot_copy_size_bytes);
    let slots_per_read = (SLOT_READ_BYTES_MAX / pair).max(1) as u32;
    let mut scan = SlotScan {
        cursors: vec![SlotCursor::default(); geo.slot_count as usize],
        ..SlotScan::default()
    };
    let mut by_chunk: HashMap<ChunkKey, usize> = HashMap::new();
    let starts: Vec<u32> = (0..geo.slot_count)
        .step_by(slots_per_read as usize)
        .collect();
    for group in starts.chunks(SLOT_READS_IN_FLIGHT) {
        let reads = group
            .iter()
            .map(|&first| {
                let count = slots_per_read.min(geo.slot_count - first);
                let buf = AlignedBuf::zeroed((u64::from(count) * pair) as usize);
                OpKind::Read {
                    offset: geo.slot_offset(first, 0),
                    buf,
                }
            })
            .collect();
        for (&first, buf) in group.iter().zip(run_many(engine, reads)?) {
            let buf = buf.ok_or_else(|| OpenError::Damaged("slot read returned no data".into()))?;
            for (i, pair_bytes) in buf.as_slice().chunks_exact(pair as usize).enumerate() {
                let slot = first + i as u32;
                decode_pair(&mut scan, &mut by_chunk, slot, pair_bytes, geo, nonce);
            }
        }
    }
    Ok(scan)
}

fn decode_pair(
    scan: &mut SlotScan,
    by_chunk: &mut HashMap<ChunkKey, usize>,
    slot: u32,
    bytes: &[u8],
    geo: &Geometry,
    nonce: u64,
) {
    let (bpc, data_blocks) = (geo.blocks_per_chunk(), geo.data_blocks);
    let half = bytes.len() / 2;
    // A copy from an earlier format of the device (another nonce) was never written by this one.
    let decode = |c: &[u8]| match decode_slot(c, nonce, bpc, data_blocks) {
        Err(FormatError::Nonce) => Ok((SlotContent::Empty { seq: 0 }, 0)),
        other => other,
    };
    let copies = [decode(&bytes[..half]), decode(&bytes[half..])];
    let newest = match (&copies[0], &copies[1]) {
        (Ok((_, a)), Ok((_, b))) => usize::from(stamp_is_newer(*b, *a)),
        (Ok(_), Err(_)) => 0,
        (Err(_), Ok(_)) => 1,
        (Err(a), Err(b)) => {
            tracing::error!(slot, copy0 = %a, copy1 = %b, "chunk slot damaged in both copies");
            scan.corrupt.push(slot);
            return;
        }
    };
    let [a, b] = copies;
    let Ok((content, stamp)) = (if newest == 0 { a } else { b }) else {
        unreachable!("the newest copy decoded")
    };
    scan.cursors[slot as usize] = SlotCursor {
        newest_copy: newest as u8,
        stamp,
    };
    match content {
        SlotContent::Live {
            seq,
            chunk,
            version,
            blocks,
        } => {
            let entry = SlotChunk {
                slot,
                seq,
                chunk,
                version,
                blocks,
            };
            match by_chunk.get(&chunk).copied() {
                Some(i) if scan.live[i].seq >= seq => scan.stale.push(slot),
                Some(i) => {
                    scan.stale.push(scan.live[i].slot);
                    scan.live[i] = entry;
                }
                None => {
                    by_chunk.insert(chunk, scan.live.len());
                    scan.live.push(entry);
                }
            }
        }
        SlotContent::Empty { .. } => scan.free.push(slot),
    }
}

/// An intact journal batch.
#[derive(Debug)]
pub(super) struct ScannedBatch {
    pub header: BatchHeader,
    /// The whole batch (header, records, padding).
    pub buf: AlignedBuf,
}

impl ScannedBatch {
    /// The record bytes.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_slice()[BATCH_HEADER_SIZE_BYTES..][..self.header.payload_bytes as usize]
    }
}

/// The live part of the journal.
#[derive(Debug)]
pub(super) struct JournalScan {
    /// Consecutive intact batches from the tail.
    pub batches: Vec<ScannedBatch>,
    /// Journal offset after the last batch: where the next batch goes.
    pub head_offset: u64,
    /// Sequence number of the next batch.
    pub next_seq: u64,
    /// Batches up to this one are confirmed durable by a later batch's header.
    pub confirmed_seq: u64,
}

/// Reads batches from the anchor's tail until one is missing, torn or from another life.
pub(super) fn read_journal(
    engine: &mut dyn DriveEngine,
    geo: &Geometry,
    nonce: u64,
    anchor: &Anchor,
) -> Result<JournalScan, OpenError> {
    let mut scan = JournalScan {
        batches: Vec::new(),
        head_offset: anchor.tail_offset,
        next_seq: anchor.tail_seq,
        confirmed_seq: anchor.tail_seq - 1,
    };
    loop {
        let Some(batch) = read_batch(engine, geo, nonce, anchor.generation, &scan)? else {
            return Ok(scan);
        };
        let end = scan.head_offset + u64::from(batch.header.len_bytes);
        scan.head_offset =
            next_batch_offset(end, geo.journal_size_bytes, geo.journal_batch_size_max);
        scan.next_seq += 1;
        scan.confirmed_seq = scan.confirmed_seq.max(batch.header.durable_seq);
        scan.batches.push(batch);
    }
}

fn read_batch(
    engine: &mut dyn DriveEngine,
    geo: &Geometry,
    nonce: u64,
    generation: u64,
    scan: &JournalScan,
) -> Result<Option<ScannedBatch>, OpenError> {
    let offset = geo.journal_offset + scan.head_offset;
    let first = read_at(engine, offset, BLOCK as usize)?;
    let header = match BatchHeader::decode(first.as_slice(), nonce, geo.journal_batch_size_max) {
        Ok(h) if h.generation == generation && h.seq == scan.next_seq => h,
        _ => return Ok(None),
    };
    if scan.head_offset + u64::from(header.len_bytes) > geo.journal_size_bytes {
        return Ok(None);
    }
    let buf = if header.len_bytes as u64 == BLOCK {
        first
    } else {
        read_at(engine, offset, header.len_bytes as usize)?
    };
    let batch = ScannedBatch { header, buf };
    let payload = batch.payload();
    if crc32c::crc32c(payload) != header.payload_crc {
        return Ok(None);
    }
    let Ok(records) = decode_records(payload, header.record_count, geo.blocks_per_chunk()) else {
        tracing::warn!(
            seq = header.seq,
            "journal batch with valid checksum has bad records"
        );
        return Ok(None);
    };
    let phys_ok = records
        .iter()
        .filter(|r| r.kind == RecordKind::Remap)
        .all(|r| (0..r.block_count).all(|i| u64::from(r.phys(i)) < geo.data_blocks));
    Ok(phys_ok.then_some(batch))
}

/// Whether data block `phys` holds data with crc32c `crc` (verifying unconfirmed redirects).
pub(super) fn block_has_crc(
    engine: &mut dyn DriveEngine,
    geo: &Geometry,
    phys: u32,
    crc: u32,
) -> Result<bool, OpenError> {
    let buf = read_at(engine, geo.data_block_offset(phys), BLOCK as usize)?;
    Ok(crc32c::crc32c(buf.as_slice()) == crc)
}
