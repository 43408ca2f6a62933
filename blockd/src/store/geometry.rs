//! Where each area of a drive lives.
//!
//! ```text
//! 0        4K       8K       12K      16K                  journal_end          data_offset       end
//! | SB (A) | SB (B) | AN (A) | AN (B) | journal ...........| slots (2 copies) ..| data blocks ......|
//! ```
//! SB = superblock, AN = journal anchor. Every offset and size is a multiple of 4 KiB. The
//! geometry is decided once by `blockd format` and recorded in the superblock; opening a drive
//! re-validates it so a damaged superblock cannot point I/O outside the device.

use basalt::units::{self, BLOCK_SIZE_BYTES};

use super::format::{SLOT_ENTRY_SIZE_BYTES, SLOT_HEADER_AREA_BYTES};

const BLOCK: u64 = BLOCK_SIZE_BYTES as u64;

/// Offset of superblock copy A; copy B follows it.
pub const SUPERBLOCK_OFFSET: u64 = 0;
/// Offset of journal anchor copy A; copy B follows it.
pub const ANCHOR_OFFSET: u64 = 2 * BLOCK;
/// Offset of the journal.
pub const JOURNAL_OFFSET: u64 = 4 * BLOCK;
/// Default largest journal batch. Bounds the memory a batch pins and the space wasted when the
/// journal wraps; a batch never straddles the journal's end.
pub const JOURNAL_BATCH_SIZE_MAX_DEFAULT: u32 = 1024 * 1024;
/// Smallest allowed largest batch: one 4 KiB header block plus one data block.
pub const JOURNAL_BATCH_SIZE_MAX_MIN: u32 = 2 * BLOCK_SIZE_BYTES;
/// The journal must hold at least this many largest batches, so a checkpoint can always free
/// space while a batch waits.
pub const JOURNAL_BATCHES_MIN: u64 = 4;
/// Default journal size as a fraction of the device (1/`JOURNAL_FRACTION`), clamped below.
pub const JOURNAL_FRACTION: u64 = 32;
/// Default journal size bounds, in bytes.
pub const JOURNAL_SIZE_BYTES_MIN_DEFAULT: u64 = 4 * 1024 * 1024;
/// Upper bound of the default journal size, in bytes.
pub const JOURNAL_SIZE_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
/// Default number of chunk slots per chunk-sized piece of data area. Thin chunks may hold few
/// blocks, so a drive can hold more chunks than its capacity divided by the chunk size.
pub const SLOT_OVERCOMMIT_DEFAULT: u64 = 2;
/// Physical block numbers are u32 on disk, and `u32::MAX` means "unmapped".
pub const DATA_BLOCKS_MAX: u64 = u32::MAX as u64 - 1;

/// Everything needed to address a drive's areas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Device size in bytes when formatted.
    pub device_size_bytes: u64,
    /// Chunk size in bytes (cluster-wide).
    pub chunk_size_bytes: u32,
    /// Journal area.
    pub journal_offset: u64,
    /// Journal size in bytes.
    pub journal_size_bytes: u64,
    /// Largest journal batch in bytes.
    pub journal_batch_size_max: u32,
    /// Metadata (chunk slot) area.
    pub meta_offset: u64,
    /// Number of chunk slots.
    pub slot_count: u32,
    /// Size of one slot copy in bytes.
    pub slot_copy_size_bytes: u32,
    /// Data area.
    pub data_offset: u64,
    /// Number of 4 KiB data blocks.
    pub data_blocks: u64,
}

/// Why a geometry cannot be built or trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GeometryError {
    /// The chunk size is not a power of two within the supported range.
    #[error("chunk size {0} bytes is not a power of two between 4 KiB and 64 MiB")]
    ChunkSize(u32),
    /// The journal or batch size is unusable.
    #[error("journal of {journal} bytes with batches of up to {batch} bytes is invalid: {why}")]
    Journal {
        /// Journal size.
        journal: u64,
        /// Largest batch.
        batch: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// The device cannot hold the fixed areas plus some data.
    #[error("device of {device} bytes is too small (needs at least {needed} bytes)")]
    TooSmall {
        /// Device size.
        device: u64,
        /// Minimum size for this geometry.
        needed: u64,
    },
    /// A recorded geometry is internally inconsistent.
    #[error("inconsistent geometry: {0}")]
    Inconsistent(&'static str),
}

/// Choices `blockd format` may override; `None` picks the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct GeometryOptions {
    /// Chunk size in bytes (default 4 MiB).
    pub chunk_size_bytes: Option<u32>,
    /// Journal size in bytes.
    pub journal_size_bytes: Option<u64>,
    /// Largest journal batch in bytes.
    pub journal_batch_size_max: Option<u32>,
    /// Number of chunk slots.
    pub slot_count: Option<u32>,
}

/// Size of one slot copy for chunks of `chunk_size_bytes`.
pub fn slot_copy_size_bytes(chunk_size_bytes: u32) -> u32 {
    let entries = units::blocks_per_chunk(chunk_size_bytes) * SLOT_ENTRY_SIZE_BYTES;
    (SLOT_HEADER_AREA_BYTES + entries).div_ceil(BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES
}

impl Geometry {
    /// Lays out a device of `device_size_bytes`.
    pub fn compute(device_size_bytes: u64, opts: GeometryOptions) -> Result<Self, GeometryError> {
        let chunk = opts
            .chunk_size_bytes
            .unwrap_or(units::CHUNK_SIZE_BYTES_DEFAULT);
        if !units::is_valid_chunk_size(chunk) {
            return Err(GeometryError::ChunkSize(chunk));
        }
        let device = device_size_bytes / BLOCK * BLOCK;
        let batch = opts
            .journal_batch_size_max
            .unwrap_or(JOURNAL_BATCH_SIZE_MAX_DEFAULT);
        let journal = opts.journal_size_bytes.unwrap_or_else(|| {
            (device / JOURNAL_FRACTION)
                .clamp(
                    JOURNAL_SIZE_BYTES_MIN_DEFAULT,
                    JOURNAL_SIZE_BYTES_MAX_DEFAULT,
                )
                .max(u64::from(batch) * JOURNAL_BATCHES_MIN)
                / BLOCK
                * BLOCK
        });
        let slot_copy = slot_copy_size_bytes(chunk);
        let meta_offset = JOURNAL_OFFSET + journal;
        let remaining = device.saturating_sub(meta_offset);
        let slot_count = match opts.slot_count {
            Some(n) => u64::from(n),
            None => {
                // Each chunk-sized piece of data needs SLOT_OVERCOMMIT slots of two copies each.
                let per_chunk =
                    u64::from(chunk) + SLOT_OVERCOMMIT_DEFAULT * 2 * u64::from(slot_copy);
                (remaining / per_chunk * SLOT_OVERCOMMIT_DEFAULT).max(16)
            }
        };
        let slot_count = u32::try_from(slot_count)
            .map_err(|_| GeometryError::Inconsistent("too many chunk slots"))?;
        let data_offset = meta_offset + u64::from(slot_count) * 2 * u64::from(slot_copy);
        let needed = data_offset + u64::from(chunk);
        if device < needed {
            return Err(GeometryError::TooSmall {
                device: device_size_bytes,
                needed,
            });
        }
        let data_blocks = ((device - data_offset) / BLOCK).min(DATA_BLOCKS_MAX);
        let geometry = Self {
            device_size_bytes: device,
            chunk_size_bytes: chunk,
            journal_offset: JOURNAL_OFFSET,
            journal_size_bytes: journal,
            journal_batch_size_max: batch,
            meta_offset,
            slot_count,
            slot_copy_size_bytes: slot_copy,
            data_offset,
            data_blocks,
        };
        geometry.validate()?;
        Ok(geometry)
    }

    /// Checks that every area is aligned, ordered and inside the device.
    pub fn validate(&self) -> Result<(), GeometryError> {
        use GeometryError::Inconsistent as Bad;
        if !units::is_valid_chunk_size(self.chunk_size_bytes) {
            return Err(GeometryError::ChunkSize(self.chunk_size_bytes));
        }
        let (journal, batch) = (self.journal_size_bytes, self.journal_batch_size_max);
        let journal_error = |why| GeometryError::Journal {
            journal,
            batch,
            why,
        };
        if batch < JOURNAL_BATCH_SIZE_MAX_MIN || u64::from(batch) % BLOCK != 0 {
            return Err(journal_error(
                "batch size must be a multiple of 4 KiB and >= 8 KiB",
            ));
        }
        if journal % BLOCK != 0 || journal < u64::from(batch) * JOURNAL_BATCHES_MIN {
            return Err(journal_error(
                "journal must be a multiple of 4 KiB and >= 4 batches",
            ));
        }
        if self.journal_offset != JOURNAL_OFFSET || self.meta_offset != JOURNAL_OFFSET + journal {
            return Err(Bad("journal or metadata offset"));
        }
        if self.slot_copy_size_bytes != slot_copy_size_bytes(self.chunk_size_bytes) {
            return Err(Bad("slot size does not match the chunk size"));
        }
        let slots_bytes = u64::from(self.slot_count) * 2 * u64::from(self.slot_copy_size_bytes);
        if self.slot_count == 0 || self.data_offset != self.meta_offset + slots_bytes {
            return Err(Bad("slot area"));
        }
        if self.data_blocks == 0 || self.data_blocks > DATA_BLOCKS_MAX {
            return Err(Bad("data block count"));
        }
        let end = self
            .data_offset
            .checked_add(self.data_blocks * BLOCK)
            .ok_or(Bad("overflow"))?;
        if end > self.device_size_bytes || !self.device_size_bytes.is_multiple_of(BLOCK) {
            return Err(Bad("data area extends past the device"));
        }
        Ok(())
    }

    /// Blocks per chunk.
    pub fn blocks_per_chunk(&self) -> u32 {
        units::blocks_per_chunk(self.chunk_size_bytes)
    }

    /// Device offset of slot `slot`, copy `copy` (0 or 1).
    pub fn slot_offset(&self, slot: u32, copy: u8) -> u64 {
        debug_assert!(slot < self.slot_count && copy < 2);
        self.meta_offset
            + (u64::from(slot) * 2 + u64::from(copy)) * u64::from(self.slot_copy_size_bytes)
    }

    /// Device offset of data block `phys`.
    pub fn data_block_offset(&self, phys: u32) -> u64 {
        debug_assert!(u64::from(phys) < self.data_blocks);
        self.data_offset + u64::from(phys) * BLOCK
    }

    /// Data capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.data_blocks * BLOCK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_of_2_gib() {
        let g = Geometry::compute(2 << 30, GeometryOptions::default()).unwrap();
        assert_eq!(g.journal_size_bytes, 64 << 20);
        assert_eq!(g.slot_copy_size_bytes, 12 << 10);
        assert!(g.slot_count >= 900, "{g:?}");
        assert!(g.capacity_bytes() > (19 << 30) / 10, "{g:?}");
        g.validate().unwrap();
    }

    #[test]
    fn small_devices() {
        let opts = GeometryOptions {
            chunk_size_bytes: Some(64 * 1024),
            journal_size_bytes: Some(256 * 1024),
            journal_batch_size_max: Some(64 * 1024),
            slot_count: Some(64),
        };
        let g = Geometry::compute(8 << 20, opts).unwrap();
        assert_eq!(g.slot_copy_size_bytes, 4096);
        assert!(matches!(
            Geometry::compute(512 << 10, opts),
            Err(GeometryError::TooSmall { .. })
        ));
        let bad = GeometryOptions {
            chunk_size_bytes: Some(3000),
            ..opts
        };
        assert_eq!(
            Geometry::compute(8 << 20, bad),
            Err(GeometryError::ChunkSize(3000))
        );
        let bad = GeometryOptions {
            journal_size_bytes: Some(128 * 1024),
            ..opts
        };
        assert!(matches!(
            Geometry::compute(8 << 20, bad),
            Err(GeometryError::Journal { .. })
        ));
    }
}
