//! On-disk records of a drive, byte for byte (see `docs/store-format.md`).
//!
//! Every record is a fixed little-endian `zerocopy` struct followed, for some kinds, by an
//! array. Each carries a crc32c and the drive's `format_nonce`, so a record left over from an
//! earlier format of the same device, or a torn write, is recognised and never trusted.
//! Decoding never panics on bad bytes: it returns a typed `FormatError`.

use basalt::ids::{ChunkKey, ChunkVersion, ClusterId, DriveId, Epoch, NodeId, VolumeId};
use basalt::units::BLOCK_SIZE_BYTES;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::geometry::Geometry;

/// Current on-disk format version. Bump it on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// Superblock magic.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"BASALTSB";
/// Journal anchor magic.
pub const ANCHOR_MAGIC: [u8; 8] = *b"BASALTAN";
/// Journal batch magic ("BJNL" little-endian).
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"BJNL");
/// Chunk slot magic ("BSLT" little-endian).
pub const SLOT_MAGIC: u32 = u32::from_le_bytes(*b"BSLT");
/// Bytes reserved at the start of a slot copy for its header.
pub const SLOT_HEADER_AREA_BYTES: u32 = 128;
/// Bytes per block-map entry in a slot: physical block (u32) and crc32c (u32).
pub const SLOT_ENTRY_SIZE_BYTES: u32 = 8;
/// Physical block number meaning "not allocated" (reads as zeroes).
pub const UNMAPPED: u32 = u32::MAX;

/// Why bytes read from a drive are not a valid record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Shorter than the record.
    #[error("record truncated: {have} of {need} bytes")]
    Short {
        /// Bytes available.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not this kind of record at all.
    #[error("bad magic")]
    Magic,
    /// A format version this build does not know.
    #[error("format version {found} is not supported (this build reads version {supported})")]
    Version {
        /// Version on disk.
        found: u32,
        /// Version this build writes.
        supported: u32,
    },
    /// The checksum does not match: torn write or media corruption.
    #[error("checksum mismatch")]
    Checksum,
    /// Written by an earlier format of this device.
    #[error("record from another format of this device")]
    Nonce,
    /// A field is out of its valid range.
    #[error("invalid field: {0}")]
    Field(&'static str),
}

fn crc_with_zeroed_field(bytes: &[u8], crc_field_offset: usize) -> u32 {
    debug_assert!(crc_field_offset + 4 <= bytes.len());
    let crc = crc32c::crc32c(&bytes[..crc_field_offset]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &bytes[crc_field_offset + 4..])
}

fn read_struct<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Result<T, FormatError> {
    T::read_from_prefix(bytes)
        .map(|(value, _)| value)
        .map_err(|_| FormatError::Short {
            have: bytes.len(),
            need: size_of::<T>(),
        })
}

// ---------------------------------------------------------------------------------------------
// Superblock

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy)]
struct SuperblockRaw {
    magic: [u8; 8],
    format_version: U32,
    copy_index: U32,
    cluster_id: [u8; 16],
    drive_id: [u8; 16],
    node_id: U64,
    format_nonce: U64,
    created_unix_secs: U64,
    device_size_bytes: U64,
    block_size: U32,
    chunk_size_bytes: U32,
    journal_offset: U64,
    journal_size_bytes: U64,
    journal_batch_size_max: U32,
    slot_copy_size_bytes: U32,
    meta_offset: U64,
    slot_count: U32,
    reserved0: U32,
    data_offset: U64,
    data_blocks: U64,
    reserved: [u8; 32],
    crc: U32,
    reserved1: U32,
}

const SUPERBLOCK_CRC_OFFSET: usize = size_of::<SuperblockRaw>() - 8;
const _: () = assert!(size_of::<SuperblockRaw>() <= BLOCK_SIZE_BYTES as usize);

/// Identity and geometry of a drive, written twice by `blockd format` and never rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Cluster the drive belongs to.
    pub cluster_id: ClusterId,
    /// Node the drive was formatted for.
    pub node_id: NodeId,
    /// The drive's own id.
    pub drive_id: DriveId,
    /// Random per format; every other record repeats it.
    pub format_nonce: u64,
    /// Format time (seconds since the Unix epoch).
    pub created_unix_secs: u64,
    /// Layout of the areas.
    pub geometry: Geometry,
}

impl Superblock {
    /// Encodes copy `copy_index` into a 4 KiB block.
    pub fn encode(&self, copy_index: u32) -> [u8; BLOCK_SIZE_BYTES as usize] {
        let g = &self.geometry;
        let raw = SuperblockRaw {
            magic: SUPERBLOCK_MAGIC,
            format_version: FORMAT_VERSION.into(),
            copy_index: copy_index.into(),
            cluster_id: *self.cluster_id.0.as_bytes(),
            drive_id: *self.drive_id.0.as_bytes(),
            node_id: self.node_id.0.into(),
            format_nonce: self.format_nonce.into(),
            created_unix_secs: self.created_unix_secs.into(),
            device_size_bytes: g.device_size_bytes.into(),
            block_size: BLOCK_SIZE_BYTES.into(),
            chunk_size_bytes: g.chunk_size_bytes.into(),
            journal_offset: g.journal_offset.into(),
            journal_size_bytes: g.journal_size_bytes.into(),
            journal_batch_size_max: g.journal_batch_size_max.into(),
            slot_copy_size_bytes: g.slot_copy_size_bytes.into(),
            meta_offset: g.meta_offset.into(),
            slot_count: g.slot_count.into(),
            reserved0: 0.into(),
            data_offset: g.data_offset.into(),
            data_blocks: g.data_blocks.into(),
            reserved: [0; 32],
            crc: 0.into(),
            reserved1: 0.into(),
        };
        let mut block = [0u8; BLOCK_SIZE_BYTES as usize];
        raw.write_to_prefix(&mut block)
            .expect("superblock fits in a block");
        let crc =
            crc_with_zeroed_field(&block[..size_of::<SuperblockRaw>()], SUPERBLOCK_CRC_OFFSET);
        block[SUPERBLOCK_CRC_OFFSET..SUPERBLOCK_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        block
    }

    /// Whether `bytes` start with the superblock magic (formatted by some Basalt version).
    pub fn has_magic(bytes: &[u8]) -> bool {
        bytes.starts_with(&SUPERBLOCK_MAGIC)
    }

    /// Decodes and validates one superblock copy.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let raw: SuperblockRaw = read_struct(bytes)?;
        if raw.magic != SUPERBLOCK_MAGIC {
            return Err(FormatError::Magic);
        }
        if raw.format_version.get() != FORMAT_VERSION {
            let found = raw.format_version.get();
            return Err(FormatError::Version {
                found,
                supported: FORMAT_VERSION,
            });
        }
        let crc =
            crc_with_zeroed_field(&bytes[..size_of::<SuperblockRaw>()], SUPERBLOCK_CRC_OFFSET);
        if crc != raw.crc.get() {
            return Err(FormatError::Checksum);
        }
        if raw.block_size.get() != BLOCK_SIZE_BYTES {
            return Err(FormatError::Field("block size"));
        }
        let geometry = Geometry {
            device_size_bytes: raw.device_size_bytes.get(),
            chunk_size_bytes: raw.chunk_size_bytes.get(),
            journal_offset: raw.journal_offset.get(),
            journal_size_bytes: raw.journal_size_bytes.get(),
            journal_batch_size_max: raw.journal_batch_size_max.get(),
            meta_offset: raw.meta_offset.get(),
            slot_count: raw.slot_count.get(),
            slot_copy_size_bytes: raw.slot_copy_size_bytes.get(),
            data_offset: raw.data_offset.get(),
            data_blocks: raw.data_blocks.get(),
        };
        geometry
            .validate()
            .map_err(|_| FormatError::Field("geometry"))?;
        Ok(Self {
            cluster_id: ClusterId(uuid::Uuid::from_bytes(raw.cluster_id)),
            node_id: NodeId(raw.node_id.get()),
            drive_id: DriveId(uuid::Uuid::from_bytes(raw.drive_id)),
            format_nonce: raw.format_nonce.get(),
            created_unix_secs: raw.created_unix_secs.get(),
            geometry,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Journal anchor

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy)]
struct AnchorRaw {
    magic: [u8; 8],
    format_nonce: U64,
    anchor_seq: U64,
    generation: U64,
    tail_offset: U64,
    tail_seq: U64,
    reserved: [u8; 16],
    crc: U32,
    reserved1: U32,
}

const ANCHOR_CRC_OFFSET: usize = size_of::<AnchorRaw>() - 8;

/// Where journal replay starts. Rewritten (alternating copies) after every checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// Increases with every anchor write; the valid copy with the highest wins.
    pub anchor_seq: u64,
    /// Journal generation: batches of any other generation are ignored. Changes on every open,
    /// so a batch left over from before a crash can never be mistaken for a new one.
    pub generation: u64,
    /// Offset of the oldest live batch, relative to the journal start.
    pub tail_offset: u64,
    /// Sequence number the batch at `tail_offset` must carry.
    pub tail_seq: u64,
}

impl Anchor {
    /// Encodes into a 4 KiB block.
    pub fn encode(&self, format_nonce: u64) -> [u8; BLOCK_SIZE_BYTES as usize] {
        let raw = AnchorRaw {
            magic: ANCHOR_MAGIC,
            format_nonce: format_nonce.into(),
            anchor_seq: self.anchor_seq.into(),
            generation: self.generation.into(),
            tail_offset: self.tail_offset.into(),
            tail_seq: self.tail_seq.into(),
            reserved: [0; 16],
            crc: 0.into(),
            reserved1: 0.into(),
        };
        let mut block = [0u8; BLOCK_SIZE_BYTES as usize];
        raw.write_to_prefix(&mut block)
            .expect("anchor fits in a block");
        let crc = crc_with_zeroed_field(&block[..size_of::<AnchorRaw>()], ANCHOR_CRC_OFFSET);
        block[ANCHOR_CRC_OFFSET..ANCHOR_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        block
    }

    /// Device offset of the copy this anchor is written to: copies alternate with
    /// `anchor_seq`, so a torn anchor write leaves the previous anchor intact.
    pub fn device_offset(&self) -> u64 {
        crate::store::geometry::ANCHOR_OFFSET + (self.anchor_seq % 2) * u64::from(BLOCK_SIZE_BYTES)
    }

    /// Decodes one anchor copy.
    pub fn decode(bytes: &[u8], format_nonce: u64) -> Result<Self, FormatError> {
        let raw: AnchorRaw = read_struct(bytes)?;
        if raw.magic != ANCHOR_MAGIC {
            return Err(FormatError::Magic);
        }
        let crc = crc_with_zeroed_field(&bytes[..size_of::<AnchorRaw>()], ANCHOR_CRC_OFFSET);
        if crc != raw.crc.get() {
            return Err(FormatError::Checksum);
        }
        if raw.format_nonce.get() != format_nonce {
            return Err(FormatError::Nonce);
        }
        Ok(Self {
            anchor_seq: raw.anchor_seq.get(),
            generation: raw.generation.get(),
            tail_offset: raw.tail_offset.get(),
            tail_seq: raw.tail_seq.get(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Journal batch header

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy)]
struct BatchHeaderRaw {
    magic: U32,
    version: U16,
    flags: U16,
    format_nonce: U64,
    generation: U64,
    seq: U64,
    durable_seq: U64,
    len_bytes: U32,
    payload_bytes: U32,
    record_count: U32,
    payload_crc: U32,
    header_crc: U32,
    reserved: U32,
}

/// Size of a batch header in bytes; records follow it directly.
pub const BATCH_HEADER_SIZE_BYTES: usize = size_of::<BatchHeaderRaw>();
const BATCH_HEADER_CRC_OFFSET: usize = BATCH_HEADER_SIZE_BYTES - 8;
const _: () = assert!(BATCH_HEADER_SIZE_BYTES == 64);

/// One group-committed journal write: a header and the records of many requests, padded to
/// whole blocks, made durable by one flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Journal generation (see `Anchor::generation`).
    pub generation: u64,
    /// Batch sequence number, consecutive within the journal.
    pub seq: u64,
    /// Highest batch sequence number known durable (flushed) when this batch was built. Batches
    /// up to it are "confirmed": their redirected data blocks are durable too.
    pub durable_seq: u64,
    /// Length of the whole batch on disk, a multiple of 4 KiB.
    pub len_bytes: u32,
    /// Bytes of records after the header.
    pub payload_bytes: u32,
    /// Number of records.
    pub record_count: u32,
    /// crc32c of the record bytes.
    pub payload_crc: u32,
}

impl BatchHeader {
    /// Writes the header into the first bytes of `out`.
    pub fn encode_into(&self, format_nonce: u64, out: &mut [u8]) {
        let raw = BatchHeaderRaw {
            magic: BATCH_MAGIC.into(),
            version: 1.into(),
            flags: 0.into(),
            format_nonce: format_nonce.into(),
            generation: self.generation.into(),
            seq: self.seq.into(),
            durable_seq: self.durable_seq.into(),
            len_bytes: self.len_bytes.into(),
            payload_bytes: self.payload_bytes.into(),
            record_count: self.record_count.into(),
            payload_crc: self.payload_crc.into(),
            header_crc: 0.into(),
            reserved: 0.into(),
        };
        raw.write_to_prefix(out)
            .expect("caller provides room for the header");
        let crc = crc_with_zeroed_field(&out[..BATCH_HEADER_SIZE_BYTES], BATCH_HEADER_CRC_OFFSET);
        out[BATCH_HEADER_CRC_OFFSET..BATCH_HEADER_CRC_OFFSET + 4]
            .copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a header; `len_bytes` is checked against `batch_size_max` before anyone uses it.
    pub fn decode(
        bytes: &[u8],
        format_nonce: u64,
        batch_size_max: u32,
    ) -> Result<Self, FormatError> {
        let raw: BatchHeaderRaw = read_struct(bytes)?;
        if raw.magic.get() != BATCH_MAGIC {
            return Err(FormatError::Magic);
        }
        let crc = crc_with_zeroed_field(&bytes[..BATCH_HEADER_SIZE_BYTES], BATCH_HEADER_CRC_OFFSET);
        if crc != raw.header_crc.get() {
            return Err(FormatError::Checksum);
        }
        if raw.format_nonce.get() != format_nonce {
            return Err(FormatError::Nonce);
        }
        let len = raw.len_bytes.get();
        if !len.is_multiple_of(BLOCK_SIZE_BYTES) || len == 0 || len > batch_size_max {
            return Err(FormatError::Field("batch length"));
        }
        if raw.payload_bytes.get() as usize > len as usize - BATCH_HEADER_SIZE_BYTES {
            return Err(FormatError::Field("batch payload length"));
        }
        Ok(Self {
            generation: raw.generation.get(),
            seq: raw.seq.get(),
            durable_seq: raw.durable_seq.get(),
            len_bytes: len,
            payload_bytes: raw.payload_bytes.get(),
            record_count: raw.record_count.get(),
            payload_crc: raw.payload_crc.get(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Journal records

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy)]
struct RecordHeaderRaw {
    kind: u8,
    reserved: [u8; 3],
    first_block: U32,
    block_count: U32,
    generation: U32,
    volume: U64,
    index: U64,
    epoch: U64,
    version: U64,
}

/// Size of a record header in bytes.
pub const RECORD_HEADER_SIZE_BYTES: usize = size_of::<RecordHeaderRaw>();
const _: () = assert!(RECORD_HEADER_SIZE_BYTES == 48);

/// What a journal record does to a chunk. Every kind *sets* blocks to a value, so replaying a
/// record over a state that already includes it changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Small write with its data inline ("deferred": copied to fresh blocks after it is durable).
    Data = 1,
    /// Large write whose data went straight to fresh blocks; the record carries the new block
    /// numbers and crcs.
    Remap = 2,
    /// Blocks released (TRIM / WRITE_ZEROES): they read as zeroes.
    Unmap = 3,
    /// The whole chunk deleted.
    Delete = 4,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Data),
            2 => Some(Self::Remap),
            3 => Some(Self::Unmap),
            4 => Some(Self::Delete),
            _ => None,
        }
    }
}

/// A decoded record, borrowing its arrays from the batch buffer.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    /// Record kind.
    pub kind: RecordKind,
    /// Chunk the record changes.
    pub chunk: ChunkKey,
    /// Version the chunk has after the record.
    pub version: ChunkVersion,
    /// First block changed.
    pub first_block: u32,
    /// Number of blocks changed.
    pub block_count: u32,
    /// `Data`: crc per block then the blocks; `Remap`: (phys, crc) per block; else empty.
    pub body: &'a [u8],
}

impl RecordRef<'_> {
    /// crc32c of block `i` of the record (`Data` and `Remap`).
    pub fn crc(&self, i: u32) -> u32 {
        let at = match self.kind {
            RecordKind::Data => i as usize * 4,
            _ => i as usize * 8 + 4,
        };
        u32::from_le_bytes(self.body[at..at + 4].try_into().expect("4 bytes"))
    }

    /// New physical block of block `i` (`Remap`).
    pub fn phys(&self, i: u32) -> u32 {
        debug_assert_eq!(self.kind, RecordKind::Remap);
        let at = i as usize * 8;
        u32::from_le_bytes(self.body[at..at + 4].try_into().expect("4 bytes"))
    }

    /// Data of block `i` (`Data`).
    pub fn data(&self, i: u32) -> &[u8] {
        debug_assert_eq!(self.kind, RecordKind::Data);
        let start = self.block_count as usize * 4 + i as usize * BLOCK_SIZE_BYTES as usize;
        &self.body[start..start + BLOCK_SIZE_BYTES as usize]
    }
}

/// Body length of a record of `kind` covering `block_count` blocks.
pub fn record_body_len(kind: RecordKind, block_count: u32) -> usize {
    let n = block_count as usize;
    match kind {
        RecordKind::Data => n * (4 + BLOCK_SIZE_BYTES as usize),
        RecordKind::Remap => n * 8,
        RecordKind::Unmap | RecordKind::Delete => 0,
    }
}

/// Appends a record header to `out`; the caller appends the body (see `record_body_len`).
pub fn encode_record_header(
    out: &mut Vec<u8>,
    kind: RecordKind,
    chunk: ChunkKey,
    version: ChunkVersion,
    first_block: u32,
    block_count: u32,
) {
    let raw = RecordHeaderRaw {
        kind: kind as u8,
        reserved: [0; 3],
        first_block: first_block.into(),
        block_count: block_count.into(),
        generation: chunk.generation.into(),
        volume: chunk.volume.0.into(),
        index: chunk.index.into(),
        epoch: version.epoch.0.into(),
        version: version.version.into(),
    };
    out.extend_from_slice(raw.as_bytes());
}

/// Decodes the records of a batch payload whose crc has been verified. Fails on the first
/// malformed record; `blocks_per_chunk` bounds block ranges.
pub fn decode_records(
    mut payload: &[u8],
    record_count: u32,
    blocks_per_chunk: u32,
) -> Result<Vec<RecordRef<'_>>, FormatError> {
    let mut records = Vec::with_capacity(record_count.min(4096) as usize);
    for _ in 0..record_count {
        let raw: RecordHeaderRaw = read_struct(payload)?;
        let kind = RecordKind::from_u8(raw.kind).ok_or(FormatError::Field("record kind"))?;
        let (first, count) = (raw.first_block.get(), raw.block_count.get());
        let in_chunk = first
            .checked_add(count)
            .is_some_and(|end| end <= blocks_per_chunk);
        if !in_chunk || (count == 0 && kind != RecordKind::Delete) {
            return Err(FormatError::Field("record block range"));
        }
        let body_len = record_body_len(kind, count);
        let rest = &payload[RECORD_HEADER_SIZE_BYTES..];
        if rest.len() < body_len {
            return Err(FormatError::Short {
                have: rest.len(),
                need: body_len,
            });
        }
        records.push(RecordRef {
            kind,
            chunk: ChunkKey {
                volume: VolumeId(raw.volume.get()),
                index: raw.index.get(),
                generation: raw.generation.get(),
            },
            version: ChunkVersion {
                epoch: Epoch(raw.epoch.get()),
                version: raw.version.get(),
            },
            first_block: first,
            block_count: count,
            body: &rest[..body_len],
        });
        payload = &rest[body_len..];
    }
    if !payload.is_empty() {
        return Err(FormatError::Field("trailing bytes after the last record"));
    }
    Ok(records)
}

// ---------------------------------------------------------------------------------------------
// Chunk slots

#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy)]
struct SlotHeaderRaw {
    magic: U32,
    version: U16,
    state: U16,
    format_nonce: U64,
    seq: U64,
    volume: U64,
    index: U64,
    generation: U32,
    block_count: U32,
    epoch: U64,
    version_number: U64,
    crc: U32,
    stamp: U32,
}

const SLOT_CRC_OFFSET: usize = size_of::<SlotHeaderRaw>() - 8;
const _: () = assert!(size_of::<SlotHeaderRaw>() <= SLOT_HEADER_AREA_BYTES as usize);
const SLOT_STATE_EMPTY: u16 = 0;
const SLOT_STATE_LIVE: u16 = 1;

/// One physical-block mapping: where a chunk's logical block lives and its crc32c.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    /// Physical data block, or `UNMAPPED`.
    pub phys: u32,
    /// crc32c of the block's 4 KiB (meaningless when unmapped).
    pub crc: u32,
}

impl BlockEntry {
    /// An unallocated block: reads as zeroes.
    pub const UNMAPPED: Self = Self {
        phys: UNMAPPED,
        crc: 0,
    };

    /// Whether the block has data.
    pub fn is_mapped(&self) -> bool {
        self.phys != UNMAPPED
    }
}

/// A decoded slot copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotContent {
    /// Never used, or a tombstone of a deleted chunk.
    Empty {
        /// Journal sequence number the tombstone reflects (0 if never written).
        seq: u64,
    },
    /// A live chunk.
    Live {
        /// Highest journal batch sequence number reflected in this copy.
        seq: u64,
        /// The chunk.
        chunk: ChunkKey,
        /// Its last applied version.
        version: ChunkVersion,
        /// Block map, `blocks_per_chunk` entries.
        blocks: Vec<BlockEntry>,
    },
}

impl SlotContent {
    /// Sequence number of the copy (which of two copies is newer).
    pub fn seq(&self) -> u64 {
        match self {
            Self::Empty { seq } | Self::Live { seq, .. } => *seq,
        }
    }
}

/// Which copy of a slot was written last, and its write stamp. Every slot write goes to the
/// other copy with the next stamp, so a torn write never damages the newest valid copy, and
/// the copy written last wins even when two copies reflect the same journal sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCursor {
    /// Copy (0 or 1) holding the newest content.
    pub newest_copy: u8,
    /// Its write stamp.
    pub stamp: u32,
}

impl SlotCursor {
    /// Copy and stamp for the next write.
    pub fn next(&self) -> (u8, u32) {
        (1 - self.newest_copy, self.stamp.wrapping_add(1))
    }
}

/// Serial-number comparison of write stamps (wrap-around safe).
pub fn stamp_is_newer(a: u32, than: u32) -> bool {
    (a.wrapping_sub(than) as i32) > 0
}

/// Encodes a slot copy with write stamp `stamp` into `out` (exactly one slot copy long).
pub fn encode_slot(content: &SlotContent, format_nonce: u64, stamp: u32, out: &mut [u8]) {
    out.fill(0);
    let (state, seq, chunk, version, blocks) = match content {
        SlotContent::Empty { seq } => (
            SLOT_STATE_EMPTY,
            *seq,
            None,
            ChunkVersion::default(),
            &[][..],
        ),
        SlotContent::Live {
            seq,
            chunk,
            version,
            blocks,
        } => (SLOT_STATE_LIVE, *seq, Some(*chunk), *version, &blocks[..]),
    };
    let raw = SlotHeaderRaw {
        magic: SLOT_MAGIC.into(),
        version: 1.into(),
        state: state.into(),
        format_nonce: format_nonce.into(),
        seq: seq.into(),
        volume: chunk.map_or(0, |c| c.volume.0).into(),
        index: chunk.map_or(0, |c| c.index).into(),
        generation: chunk.map_or(0, |c| c.generation).into(),
        block_count: (blocks.len() as u32).into(),
        epoch: version.epoch.0.into(),
        version_number: version.version.into(),
        crc: 0.into(),
        stamp: stamp.into(),
    };
    raw.write_to_prefix(out)
        .expect("slot copy holds its header");
    let entries = &mut out[SLOT_HEADER_AREA_BYTES as usize..];
    for (i, e) in blocks.iter().enumerate() {
        entries[i * 8..i * 8 + 4].copy_from_slice(&e.phys.to_le_bytes());
        entries[i * 8 + 4..i * 8 + 8].copy_from_slice(&e.crc.to_le_bytes());
    }
    let end = SLOT_HEADER_AREA_BYTES as usize + blocks.len() * 8;
    let crc = crc_with_zeroed_field(&out[..end], SLOT_CRC_OFFSET);
    out[SLOT_CRC_OFFSET..SLOT_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a slot copy and its write stamp. An all-zero copy (never written) is
/// `Empty { seq: 0 }` with stamp 0.
pub fn decode_slot(
    bytes: &[u8],
    format_nonce: u64,
    blocks_per_chunk: u32,
    data_blocks: u64,
) -> Result<(SlotContent, u32), FormatError> {
    let raw: SlotHeaderRaw = read_struct(bytes)?;
    if raw.magic.get() != SLOT_MAGIC {
        if bytes.iter().all(|&b| b == 0) {
            return Ok((SlotContent::Empty { seq: 0 }, 0));
        }
        return Err(FormatError::Magic);
    }
    let count = raw.block_count.get();
    let end = SLOT_HEADER_AREA_BYTES as usize + count as usize * 8;
    if (count != 0 && count != blocks_per_chunk) || end > bytes.len() {
        return Err(FormatError::Field("slot block count"));
    }
    if crc_with_zeroed_field(&bytes[..end], SLOT_CRC_OFFSET) != raw.crc.get() {
        return Err(FormatError::Checksum);
    }
    if raw.format_nonce.get() != format_nonce {
        return Err(FormatError::Nonce);
    }
    let seq = raw.seq.get();
    let stamp = raw.stamp.get();
    match raw.state.get() {
        SLOT_STATE_EMPTY => Ok((SlotContent::Empty { seq }, stamp)),
        SLOT_STATE_LIVE if count == blocks_per_chunk => {
            let entries = &bytes[SLOT_HEADER_AREA_BYTES as usize..end];
            let blocks = decode_entries(entries, data_blocks)?;
            let chunk = ChunkKey {
                volume: VolumeId(raw.volume.get()),
                index: raw.index.get(),
                generation: raw.generation.get(),
            };
            let epoch = Epoch(raw.epoch.get());
            let version = ChunkVersion {
                epoch,
                version: raw.version_number.get(),
            };
            Ok((
                SlotContent::Live {
                    seq,
                    chunk,
                    version,
                    blocks,
                },
                stamp,
            ))
        }
        _ => Err(FormatError::Field("slot state")),
    }
}

fn decode_entries(entries: &[u8], data_blocks: u64) -> Result<Vec<BlockEntry>, FormatError> {
    entries
        .chunks_exact(8)
        .map(|e| {
            let phys = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            let crc = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            if phys != UNMAPPED && u64::from(phys) >= data_blocks {
                return Err(FormatError::Field("slot block number"));
            }
            Ok(BlockEntry { phys, crc })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::geometry::GeometryOptions;

    fn superblock() -> Superblock {
        Superblock {
            cluster_id: ClusterId(uuid::Uuid::from_u128(7)),
            node_id: NodeId(3),
            drive_id: DriveId(uuid::Uuid::from_u128(9)),
            format_nonce: 0xdead_beef,
            created_unix_secs: 1_700_000_000,
            geometry: Geometry::compute(64 << 20, GeometryOptions::default()).unwrap(),
        }
    }

    #[test]
    fn superblock_round_trip_and_damage() {
        let sb = superblock();
        let mut block = sb.encode(1);
        assert_eq!(Superblock::decode(&block), Ok(sb));
        block[100] ^= 1;
        assert_eq!(Superblock::decode(&block), Err(FormatError::Checksum));
        let mut newer = sb.encode(0);
        newer[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            Superblock::decode(&newer),
            Err(FormatError::Version {
                found: 2,
                supported: 1
            })
        );
        assert_eq!(Superblock::decode(&[0u8; 4096]), Err(FormatError::Magic));
        assert!(matches!(
            Superblock::decode(&block[..10]),
            Err(FormatError::Short { .. })
        ));
    }

    #[test]
    fn anchor_round_trip() {
        let a = Anchor {
            anchor_seq: 5,
            generation: 2,
            tail_offset: 8192,
            tail_seq: 40,
        };
        let block = a.encode(11);
        assert_eq!(Anchor::decode(&block, 11), Ok(a));
        assert_eq!(Anchor::decode(&block, 12), Err(FormatError::Nonce));
    }

    #[test]
    fn records_round_trip() {
        let chunk = ChunkKey::new(VolumeId(4), 2);
        let version = ChunkVersion {
            epoch: Epoch(3),
            version: 10,
        };
        let mut payload = Vec::new();
        encode_record_header(&mut payload, RecordKind::Remap, chunk, version, 5, 2);
        for (phys, crc) in [(10u32, 0xaau32), (11, 0xbb)] {
            payload.extend_from_slice(&phys.to_le_bytes());
            payload.extend_from_slice(&crc.to_le_bytes());
        }
        encode_record_header(&mut payload, RecordKind::Delete, chunk, version, 0, 0);
        let recs = decode_records(&payload, 2, 1024).unwrap();
        assert_eq!(recs[0].phys(1), 11);
        assert_eq!(recs[0].crc(0), 0xaa);
        assert_eq!(recs[1].kind, RecordKind::Delete);
        assert!(decode_records(&payload, 3, 1024).is_err());
        assert!(
            decode_records(&payload, 2, 6).is_err(),
            "range past the chunk"
        );
    }

    #[test]
    fn slot_round_trip() {
        let mut blocks = vec![BlockEntry::UNMAPPED; 16];
        blocks[3] = BlockEntry { phys: 77, crc: 5 };
        let content = SlotContent::Live {
            seq: 9,
            chunk: ChunkKey::new(VolumeId(1), 1),
            version: ChunkVersion::default(),
            blocks,
        };
        let mut buf = vec![0u8; 4096];
        encode_slot(&content, 1, 5, &mut buf);
        assert_eq!(decode_slot(&buf, 1, 16, 100), Ok((content, 5)));
        assert!(stamp_is_newer(0, u32::MAX) && !stamp_is_newer(3, 3) && stamp_is_newer(4, 3));
        assert_eq!(
            decode_slot(&buf, 1, 16, 50),
            Err(FormatError::Field("slot block number"))
        );
        buf[200] ^= 0xff;
        assert_eq!(decode_slot(&buf, 1, 16, 100), Err(FormatError::Checksum));
        assert_eq!(
            decode_slot(&[0u8; 4096], 1, 16, 100),
            Ok((SlotContent::Empty { seq: 0 }, 0))
        );
    }
}

#[cfg(test)]
mod arbitrary_input {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Every decoder answers arbitrary bytes with a value or a typed error, never a panic.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
            let _ = Superblock::decode(&bytes);
            let _ = Anchor::decode(&bytes, 1);
            let _ = BatchHeader::decode(&bytes, 1, 1 << 20);
            let _ = decode_slot(&bytes, 1, 16, 1 << 20);
            let _ = decode_slot(&bytes, 1, 1024, 1 << 20);
            if let Ok(records) = decode_records(&bytes, 64, 16) {
                for r in records {
                    for i in 0..r.block_count {
                        match r.kind {
                            RecordKind::Data => { let _ = (r.crc(i), r.data(i).len()); }
                            RecordKind::Remap => { let _ = (r.crc(i), r.phys(i)); }
                            _ => {}
                        }
                    }
                }
            }
        }

        /// Records survive a round trip whatever their fields.
        #[test]
        fn record_round_trip(first in 0u32..16, count in 1u32..=16, volume: u64, index: u64) {
            prop_assume!(first + count <= 16);
            let chunk = ChunkKey::new(VolumeId(volume), index);
            let version = ChunkVersion { epoch: Epoch(2), version: 3 };
            let mut payload = Vec::new();
            encode_record_header(&mut payload, RecordKind::Unmap, chunk, version, first, count);
            let records = decode_records(&payload, 1, 16).expect("valid record");
            prop_assert_eq!(records[0].chunk, chunk);
            prop_assert_eq!((records[0].first_block, records[0].block_count), (first, count));
        }
    }
}
