//! Opening a drive: identify it, load its metadata and replay the journal.
//!
//! Runs synchronously on the drive's thread before any request is served:
//! 1. [`scan`] reads the superblock (checking cluster, node and format version), the newest
//!    anchor, every chunk slot (newest valid copy) and the journal from the anchor's tail up to
//!    the first batch that is not intact, of the anchor's generation and the next sequence
//!    number.
//! 2. [`replay`] applies the journal records to the slot images, skipping records a slot
//!    already reflects. Redirected (`Remap`) data in the last, unconfirmed batch is verified
//!    against its crcs; a record whose data did not reach the disk was never acknowledged and
//!    is dropped whole.
//! 3. [`finish`] copies journaled data to fresh blocks, writes the slots of every changed
//!    chunk, and writes an anchor with an empty journal and a new generation, each step
//!    followed by a flush. A crash at any point leaves the previous anchor and journal valid,
//!    so recovery can simply run again.

mod finish;
mod replay;
mod scan;

use std::io;

use basalt::ids::{ClusterId, NodeId};

use super::core::CoreInit;
use super::engine::DriveEngine;
use super::format::Superblock;
use super::geometry::GeometryError;

/// What the opener expects the drive to be; `None` accepts any value.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expect {
    /// Cluster the node belongs to.
    pub cluster_id: Option<ClusterId>,
    /// The node opening the drive.
    pub node_id: Option<NodeId>,
}

/// Why a drive cannot be opened. Each variant names the mismatch so an operator can act.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No valid superblock.
    #[error("not a Basalt drive, or its superblocks are damaged: {0}")]
    NotFormatted(String),
    /// Formatted by a newer (or unknown) version of Basalt.
    #[error("drive has on-disk format version {found}; this build supports version {supported}")]
    UnsupportedVersion {
        /// Version on disk.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The drive belongs to another cluster.
    #[error("drive belongs to cluster {found}, but this node is in cluster {expected}")]
    WrongCluster {
        /// Cluster id on disk.
        found: ClusterId,
        /// Cluster id of the opener.
        expected: ClusterId,
    },
    /// The drive was formatted for another node.
    #[error("drive was formatted for node {found}, but this is node {expected}")]
    WrongNode {
        /// Node id on disk.
        found: NodeId,
        /// Node id of the opener.
        expected: NodeId,
    },
    /// The device is smaller than when it was formatted.
    #[error("device is {actual} bytes but was formatted with {formatted} bytes (truncated?)")]
    Truncated {
        /// Current device size.
        actual: u64,
        /// Size recorded in the superblock.
        formatted: u64,
    },
    /// The superblock's layout is not usable.
    #[error("superblock geometry is invalid: {0}")]
    Geometry(#[from] GeometryError),
    /// Metadata that must be intact is not.
    #[error("drive metadata is damaged: {0}")]
    Damaged(String),
    /// The drive cannot be opened at all.
    #[error(transparent)]
    Device(#[from] crate::store::device::DeviceError),
    /// The device failed.
    #[error("drive I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// What recovery found and did, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Intact journal batches found after the anchor's tail.
    pub batches: u64,
    /// Records applied.
    pub records_applied: u64,
    /// Records already reflected by their chunk's slot.
    pub records_skipped: u64,
    /// Redirected writes whose data never reached the disk (never acknowledged).
    pub records_dropped: u64,
    /// Slots whose two copies are both damaged.
    pub corrupt_slots: u64,
    /// Live chunks after recovery.
    pub chunks: u64,
}

/// A recovered drive: its identity and the state to start the core with.
#[derive(Debug)]
pub struct Recovered {
    /// The drive's superblock.
    pub superblock: Superblock,
    /// State for `StoreCore::new`.
    pub init: CoreInit,
    /// What recovery did.
    pub report: RecoveryReport,
}

/// Opens a drive: see the module documentation.
pub fn recover(engine: &mut dyn DriveEngine, expect: &Expect) -> Result<Recovered, OpenError> {
    let superblock = scan::read_superblock(engine, expect)?;
    let nonce = superblock.format_nonce;
    let geo = superblock.geometry;
    let anchor = scan::read_anchor(engine, &geo, nonce)?;
    let slots = scan::read_slots(engine, &geo, nonce)?;
    let journal = scan::read_journal(engine, &geo, nonce, &anchor)?;
    let mut report = RecoveryReport {
        batches: journal.batches.len() as u64,
        corrupt_slots: slots.corrupt.len() as u64,
        ..RecoveryReport::default()
    };
    let mut images = replay::from_slots(&slots);
    replay::replay(
        &mut images,
        &journal,
        &geo,
        &mut report,
        &mut |phys, crc| scan::block_has_crc(engine, &geo, phys, crc),
    )?;
    let init = finish::finish(
        engine,
        &superblock,
        anchor,
        slots,
        &journal,
        images,
        &mut report,
    )?;
    tracing::info!(?report, "drive recovered");
    Ok(Recovered {
        superblock,
        init,
        report,
    })
}

/// Writes an anchor to its copy and flushes (shared with `mkfs`).
pub(crate) fn finish_write_anchor(
    engine: &mut dyn DriveEngine,
    anchor: &super::format::Anchor,
    nonce: u64,
) -> io::Result<()> {
    finish::write_anchor(engine, anchor, nonce)
}
