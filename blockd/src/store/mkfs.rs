//! `blockd format`: writing a new, empty store onto a drive.
//!
//! The superblocks are zeroed first, then the chunk-slot area is zeroed and the anchors are
//! written, then the superblocks. A crash in between leaves a drive without a valid superblock
//! (format again) rather than a half-formatted one that opens. The slot area must read as
//! zeroes (never written) because anything else there is taken for a damaged slot, which is
//! never reused. The journal is not zeroed: every batch carries the format's random nonce and
//! the journal generation, and anything else is treated as never written.

use basalt::ids::{ClusterId, DriveId, NodeId};
use basalt::units::BLOCK_SIZE_BYTES;

use super::buf::AlignedBuf;
use super::engine::{DriveEngine, OpKind, flush, read_at, run_many, write_at};
use super::format::{Anchor, Superblock};
use super::geometry::{ANCHOR_OFFSET, Geometry, GeometryError, GeometryOptions, SUPERBLOCK_OFFSET};
use super::recovery::finish_write_anchor;

const BLOCK: usize = BLOCK_SIZE_BYTES as usize;

/// What to format.
#[derive(Clone, Copy, Debug)]
pub struct FormatOptions {
    /// Cluster the drive will belong to.
    pub cluster_id: ClusterId,
    /// Node that will own it.
    pub node_id: NodeId,
    /// The drive's id (random if not given).
    pub drive_id: Option<DriveId>,
    /// Layout choices.
    pub geometry: GeometryOptions,
    /// Overwrite an existing Basalt store.
    pub force: bool,
}

/// Why `format` refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum MkfsError {
    /// The drive already holds a store and `force` was not given.
    #[error("drive already holds a Basalt store ({0}); refusing to overwrite it without --force")]
    AlreadyFormatted(String),
    /// The drive cannot hold a store with these options.
    #[error(transparent)]
    Geometry(#[from] GeometryError),
    /// The device failed.
    #[error("drive I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Formats the drive behind `engine`; returns the new superblock.
pub fn format_drive(
    engine: &mut dyn DriveEngine,
    opts: &FormatOptions,
    now_unix_secs: u64,
) -> Result<Superblock, MkfsError> {
    let geometry = Geometry::compute(engine.device_size(), opts.geometry)?;
    if !opts.force {
        refuse_existing(engine)?;
    }
    let superblock = Superblock {
        cluster_id: opts.cluster_id,
        node_id: opts.node_id,
        drive_id: opts
            .drive_id
            .unwrap_or_else(|| DriveId(uuid::Uuid::new_v4())),
        format_nonce: loop {
            let nonce = rand::random::<u64>();
            if nonce != 0 {
                break nonce;
            }
        },
        created_unix_secs: now_unix_secs,
        geometry,
    };
    write_at(engine, SUPERBLOCK_OFFSET, AlignedBuf::zeroed(2 * BLOCK))?;
    write_at(engine, ANCHOR_OFFSET, AlignedBuf::zeroed(2 * BLOCK))?;
    zero_range(engine, geometry.meta_offset, geometry.data_offset)?;
    flush(engine)?;
    let anchor = Anchor {
        anchor_seq: 1,
        generation: 1,
        tail_offset: 0,
        tail_seq: 1,
    };
    finish_write_anchor(engine, &anchor, superblock.format_nonce)?;
    let mut blocks = AlignedBuf::zeroed(2 * BLOCK);
    for copy in 0..2 {
        let bytes = superblock.encode(copy as u32);
        blocks.as_mut_slice()[copy * BLOCK..(copy + 1) * BLOCK].copy_from_slice(&bytes);
    }
    write_at(engine, SUPERBLOCK_OFFSET, blocks)?;
    flush(engine)?;
    Ok(superblock)
}

/// Bytes zeroed per write while clearing the slot area.
const ZERO_WRITE_BYTES: u64 = 1 << 20;

/// Writes zeroes over `start..end` (block aligned), many writes in flight.
fn zero_range(engine: &mut dyn DriveEngine, start: u64, end: u64) -> std::io::Result<()> {
    let zeroes = std::sync::Arc::new(AlignedBuf::zeroed(ZERO_WRITE_BYTES as usize));
    let mut offset = start;
    while offset < end {
        let mut writes = Vec::new();
        while offset < end && writes.len() < 64 {
            let len = (end - offset).min(ZERO_WRITE_BYTES) as usize;
            let buf = zeroes.clone();
            writes.push(OpKind::Write {
                offset,
                buf,
                range: 0..len,
            });
            offset += len as u64;
        }
        run_many(engine, writes)?;
    }
    Ok(())
}

fn refuse_existing(engine: &mut dyn DriveEngine) -> Result<(), MkfsError> {
    let blocks = read_at(engine, SUPERBLOCK_OFFSET, 2 * BLOCK)?;
    for bytes in blocks.as_slice().chunks_exact(BLOCK) {
        if !Superblock::has_magic(bytes) {
            continue;
        }
        let what = match Superblock::decode(bytes) {
            Ok(sb) => format!(
                "cluster {}, node {}, drive {}",
                sb.cluster_id, sb.node_id, sb.drive_id
            ),
            Err(e) => format!("superblock unreadable: {e}"),
        };
        return Err(MkfsError::AlreadyFormatted(what));
    }
    Ok(())
}
