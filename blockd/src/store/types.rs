//! Requests, replies and errors of a store.

use std::io;

use basalt::ids::{ChunkKey, ChunkVersion};
use bytes::Bytes;

/// An operation on a store. Offsets and lengths are bytes within the chunk, aligned to 512.
#[derive(Debug)]
pub enum Request {
    /// Write `data` at `offset`; durable when acknowledged.
    Write {
        /// Chunk to write.
        chunk: ChunkKey,
        /// Byte offset within the chunk.
        offset: u32,
        /// Bytes to write (a multiple of 512).
        data: Bytes,
        /// Version the chunk has after this write.
        version: ChunkVersion,
    },
    /// Read `len` bytes at `offset`; unwritten blocks read as zeroes.
    Read {
        /// Chunk to read.
        chunk: ChunkKey,
        /// Byte offset within the chunk.
        offset: u32,
        /// Bytes to read.
        len: u32,
    },
    /// Release a range (TRIM or WRITE_ZEROES): it reads as zeroes afterwards and whole blocks
    /// stop costing space.
    Unmap {
        /// Chunk to change.
        chunk: ChunkKey,
        /// Byte offset within the chunk.
        offset: u32,
        /// Bytes to release.
        len: u32,
        /// Version the chunk has afterwards.
        version: ChunkVersion,
    },
    /// Completes once every mutating request received before it has completed.
    Flush,
    /// The chunk's last applied version (None: the chunk does not exist here).
    ChunkVersion {
        /// Chunk to query.
        chunk: ChunkKey,
    },
    /// Every chunk with its version and allocation (recovery).
    ListChunks,
    /// Remove a chunk and free its blocks.
    DeleteChunk {
        /// Chunk to delete.
        chunk: ChunkKey,
    },
    /// Allocated and unallocated extents of a range (NBD `base:allocation`).
    BlockStatus {
        /// Chunk to query.
        chunk: ChunkKey,
        /// Byte offset within the chunk.
        offset: u32,
        /// Bytes to describe.
        len: u32,
    },
    /// Capacity and counters.
    Stats,
    /// Write back all metadata and empty the journal as far as possible (clean shutdown).
    Checkpoint,
}

/// The successful result of a request.
#[derive(Debug)]
pub enum Reply {
    /// Write, Unmap, Flush, DeleteChunk, Checkpoint.
    Done,
    /// Read.
    Data(Bytes),
    /// ChunkVersion.
    Version(Option<ChunkVersion>),
    /// ListChunks.
    Chunks(Vec<ChunkInfo>),
    /// BlockStatus.
    Extents(Vec<Extent>),
    /// Stats.
    Stats(StoreStats),
}

/// One chunk held by the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    /// The chunk.
    pub chunk: ChunkKey,
    /// Its last applied version.
    pub version: ChunkVersion,
    /// Blocks holding data.
    pub allocated_blocks: u32,
}

/// A run of a chunk that is uniformly allocated or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset within the chunk.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
    /// Whether the run holds data (false: a hole that reads as zeroes).
    pub allocated: bool,
}

/// Capacity, usage and activity counters of one drive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes of data area.
    pub capacity_bytes: u64,
    /// Bytes of data area in use (including blocks waiting to be reused).
    pub allocated_bytes: u64,
    /// Bytes of data area free.
    pub free_bytes: u64,
    /// Chunks held.
    pub chunk_count: u64,
    /// Chunk slots in the metadata area.
    pub chunk_slots: u64,
    /// Journal size.
    pub journal_size_bytes: u64,
    /// Journal bytes holding records not yet checkpointed.
    pub journal_used_bytes: u64,
    /// Slots found damaged at open (both copies unreadable).
    pub corrupt_slots: u64,
    /// Writes that went through the journal with their data.
    pub writes_journaled: u64,
    /// Writes that went straight to fresh blocks.
    pub writes_redirected: u64,
    /// Journal batches written.
    pub journal_batches: u64,
    /// Journal records written.
    pub journal_records: u64,
    /// Checkpoints completed.
    pub checkpoints: u64,
    /// Blocks that failed checksum verification on read.
    pub checksum_errors: u64,
}

/// Why a store request failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Caller fault: the range does not fit in the chunk.
    #[error("range {offset}+{len} is outside the chunk of {chunk_size} bytes")]
    OutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Chunk size.
        chunk_size: u32,
    },
    /// Caller fault: offset or length not a multiple of 512 bytes.
    #[error("offset {offset} or length {len} is not a multiple of 512 bytes")]
    Misaligned {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
    },
    /// Caller fault: nothing to do.
    #[error("zero-length request")]
    ZeroLength,
    /// Media fault: a block failed its checksum. The replication layer repairs it from a peer.
    #[error("checksum mismatch in chunk {chunk} block {block}")]
    Corrupt {
        /// The chunk.
        chunk: ChunkKey,
        /// Block index within the chunk.
        block: u32,
    },
    /// Media fault: a read failed.
    #[error("drive read failed: {0}")]
    Io(#[source] io::Error),
    /// Capacity: not enough free data blocks.
    #[error("no free space on the drive")]
    NoSpace,
    /// Capacity: every chunk slot is in use.
    #[error("no free chunk slot on the drive")]
    NoChunkSlots,
    /// The store stopped after a write or flush failed; nothing more is accepted.
    #[error("store failed and stopped: {0}")]
    Failed(String),
    /// The store was closed.
    #[error("store is closed")]
    Closed,
}
