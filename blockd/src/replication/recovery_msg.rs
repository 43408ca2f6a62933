//! The peering and recovery control messages ([`ControlKind::PG_RECOVERY`]): how a primary
//! learns a member's chunk labels, copies chunks between itself and a member, and declares a
//! member level with its history.
//!
//! Every request names the PG and the sender's epoch. A member answers only its primary in that
//! epoch (`Labels`, `Push`, `SyncPoint` pass through the member's PG task, which first moves to
//! the epoch, so a member that answered a new primary's query accepts nothing more from the old
//! one); `Read` is served by any member of the PG at that epoch from its store. Refusals carry a
//! wire [`Status`] code and the responder's epoch, like [`super::BlockStatusReply`].
//!
//! [`ControlKind::PG_RECOVERY`]: basalt::wire::ControlKind::PG_RECOVERY

use basalt::ids::{ChunkKey, ChunkVersion, Epoch, PgId};
use basalt::placement::PoolId;
use basalt::wire::Status;
use serde::{Deserialize, Serialize};

use super::block_status::AllocationRun;
use super::scrub::{BlockFix, ChunkDigest};

/// Schema version of [`RecoveryRequest`] and [`RecoveryReply`].
pub const RECOVERY_VERSION: u16 = 1;

/// Largest byte range one `Read` or `Push::Write` carries: well inside a frame's payload limit
/// with the envelope and run list around it.
pub const RECOVERY_PIECE_BYTES_MAX: u32 = 1024 * 1024;

/// Which PG a message is about (PG ids are per pool).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgRef {
    /// The pool.
    pub pool: PoolId,
    /// The PG.
    pub pg: PgId,
}

/// One step of copying a chunk onto a member. A copy is `Delete`, then the source's allocated
/// extents in order, each acknowledged (durable) before the next is sent; only the last one
/// carries the source's label, so a copy cut short never looks complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushStep {
    /// Remove the chunk (it reads as zeros and has no label).
    Delete,
    /// Write `data` at `offset` and label the chunk at least `label`.
    Write {
        /// Byte offset within the chunk (a multiple of 512).
        offset: u32,
        /// The label to record.
        label: ChunkVersion,
        /// The bytes (a non-zero multiple of 512, at most [`RECOVERY_PIECE_BYTES_MAX`]).
        data: Vec<u8>,
    },
    /// Unmap `[offset, offset + len)` and label the chunk at least `label` (how a copy of a
    /// chunk without data gets its label).
    Unmap {
        /// Byte offset within the chunk.
        offset: u32,
        /// Length in bytes.
        len: u32,
        /// The label to record.
        label: ChunkVersion,
    },
}

impl PushStep {
    /// Whether the step's range is sector-aligned, non-empty and inside a chunk of
    /// `chunk_size_bytes` (and a write's data at most [`RECOVERY_PIECE_BYTES_MAX`]).
    pub fn is_valid(&self, chunk_size_bytes: u32) -> bool {
        let range_ok = |offset: u32, len: u64| {
            len > 0
                && u64::from(offset).is_multiple_of(512)
                && len.is_multiple_of(512)
                && u64::from(offset) + len <= u64::from(chunk_size_bytes)
        };
        match self {
            PushStep::Delete => true,
            PushStep::Write { offset, data, .. } => {
                data.len() as u64 <= u64::from(RECOVERY_PIECE_BYTES_MAX)
                    && range_ok(*offset, data.len() as u64)
            }
            PushStep::Unmap { offset, len, .. } => range_ok(*offset, u64::from(*len)),
        }
    }
}

/// A peering or recovery request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryRequest {
    /// "Which chunks of the PG do you hold, at which labels?"
    Labels {
        /// The PG.
        pg: PgRef,
        /// The sender's epoch.
        epoch: Epoch,
    },
    /// Apply one step of a chunk copy. The member stops applying writes until the next sync
    /// point.
    Push {
        /// The PG.
        pg: PgRef,
        /// The sender's epoch.
        epoch: Epoch,
        /// The chunk.
        chunk: ChunkKey,
        /// What to do.
        step: PushStep,
    },
    /// "Your copy now matches my history up to `head`": the member applies writes from
    /// `head.version + 1` on.
    SyncPoint {
        /// The PG.
        pg: PgRef,
        /// The sender's epoch.
        epoch: Epoch,
        /// The primary's head.
        head: ChunkVersion,
    },
    /// Read `[offset, offset + len)` of a chunk: its allocation and the allocated bytes.
    Read {
        /// The PG.
        pg: PgRef,
        /// The sender's epoch.
        epoch: Epoch,
        /// The chunk.
        chunk: ChunkKey,
        /// Byte offset within the chunk (a multiple of 512).
        offset: u32,
        /// Length (a non-zero multiple of 512, at most [`RECOVERY_PIECE_BYTES_MAX`]).
        len: u32,
    },
    /// "What is your label of this chunk, and the crc32c of each of these blocks?" (scrub and
    /// read repair). Served by any member at that epoch from its store.
    Digest {
        /// The PG.
        pg: PgRef,
        /// The sender's epoch.
        epoch: Epoch,
        /// The chunk.
        chunk: ChunkKey,
        /// First block.
        first_block: u32,
        /// Number of blocks (0: the label only).
        blocks: u32,
    },
    /// Rewrite these blocks of a chunk, keeping its label, if the member's copy is still at
    /// `label` and nothing is in flight for the PG there (else `Busy`). How a scrub repairs a
    /// member's bad blocks without a full chunk copy.
    Repair {
        /// The PG.
        pg: PgRef,
        /// The sender's epoch.
        epoch: Epoch,
        /// The chunk.
        chunk: ChunkKey,
        /// The label the good content belongs to.
        label: ChunkVersion,
        /// The blocks (at most [`super::scrub::REPAIR_BLOCKS_MAX`]).
        fixes: Vec<BlockFix>,
    },
}

impl RecoveryRequest {
    /// The PG the request is about.
    pub fn pg(&self) -> PgRef {
        match self {
            RecoveryRequest::Labels { pg, .. }
            | RecoveryRequest::Push { pg, .. }
            | RecoveryRequest::SyncPoint { pg, .. }
            | RecoveryRequest::Read { pg, .. }
            | RecoveryRequest::Digest { pg, .. }
            | RecoveryRequest::Repair { pg, .. } => *pg,
        }
    }

    /// The sender's epoch.
    pub fn epoch(&self) -> Epoch {
        match self {
            RecoveryRequest::Labels { epoch, .. }
            | RecoveryRequest::Push { epoch, .. }
            | RecoveryRequest::SyncPoint { epoch, .. }
            | RecoveryRequest::Read { epoch, .. }
            | RecoveryRequest::Digest { epoch, .. }
            | RecoveryRequest::Repair { epoch, .. } => *epoch,
        }
    }
}

/// The answer to a [`RecoveryRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryReply {
    /// The PG's chunks on the member, with their labels (chunks of volumes the member's map
    /// does not know are left out).
    Labels(Vec<(ChunkKey, ChunkVersion)>),
    /// `Push` or `SyncPoint` done (durable).
    Done,
    /// A `Read`: runs covering the requested range in order, and the bytes of the allocated
    /// runs concatenated.
    Data {
        /// The runs.
        runs: Vec<AllocationRun>,
        /// The allocated bytes.
        data: Vec<u8>,
    },
    /// Not done: `status` is a wire [`Status`] code, `epoch` the responder's.
    Refused {
        /// Why ([`Status::code`]).
        status: u16,
        /// The responder's epoch.
        epoch: Epoch,
    },
    /// A `Digest`: the member's label and block digests.
    Digest(ChunkDigest),
}

impl RecoveryReply {
    /// A refusal with `status` at `epoch`.
    pub fn refused(status: Status, epoch: Epoch) -> Self {
        RecoveryReply::Refused {
            status: status.code(),
            epoch,
        }
    }
}
