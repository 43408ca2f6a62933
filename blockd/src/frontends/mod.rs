//! Frontends: the protocols clients use to reach volumes (NBD now, vhost-user-blk later), and
//! the one boundary they all call through.
//!
//! A frontend only speaks its protocol. Everything it does to a volume goes through
//! [`VolumeBackend`], and it finds volumes by name through [`Exports`]. Two implementations
//! exist or are planned: [`local::LocalVolume`] (one local store, for tests and single-node
//! development) and the cluster gateway (the replicated path, DESIGN §4).
//!
//! # Contract
//! - Offsets and lengths are bytes, multiples of [`basalt::units::SECTOR_SIZE_BYTES`], and lie
//!   within [`VolumeBackend::size_bytes`]. Frontends validate this before calling (the NBD
//!   session does); a backend answers a violation with [`VolumeError::Invalid`].
//! - A completed `write`, `trim` or `write_zeroes` is durable (every replica has persisted it).
//!   `flush` is therefore a barrier for mutations still in flight, and `fua` asks the backend
//!   to make sure of durability before returning even if it caches.
//! - Methods may be called concurrently, also for overlapping ranges; overlapping mutations
//!   in flight at the same time may land in either order, as on a disk.

pub mod local;
pub mod nbd;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use basalt::nbd::ErrorCode;
use bytes::Bytes;

/// How `write_zeroes` may zero a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// The range must stay allocated (NBD `NO_HOLE`): write zeroes instead of punching a hole.
    pub no_hole: bool,
    /// Only zero if it is faster than writing zeroes (NBD `FAST_ZERO`); otherwise fail at once
    /// with [`VolumeError::SlowZero`] without changing anything.
    pub fast: bool,
}

/// One run of a volume with uniform allocation, as `block_status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeExtent {
    /// Length in bytes: a non-zero multiple of 512.
    pub len: u64,
    /// Not allocated (a thin hole).
    pub hole: bool,
    /// Known to read as zeroes.
    pub zero: bool,
}

/// Why a volume operation failed. Each variant maps to the errno a block protocol reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// The data could not be read or persisted (a replica or drive failed, or too few replicas
    /// are reachable). NBD `EIO`.
    #[error("I/O error: {0}")]
    Io(String),
    /// The request is malformed for this volume (range, alignment). NBD `EINVAL`.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No space left to allocate the write. NBD `ENOSPC`.
    #[error("no space left on the volume's storage")]
    NoSpace,
    /// A `FAST_ZERO` request that would not be faster than writing zeroes. NBD `ENOTSUP`.
    #[error("zeroing this range would not be fast")]
    SlowZero,
    /// The volume does not accept writes. NBD `EPERM`.
    #[error("volume is read-only")]
    ReadOnly,
    /// The node is shutting down. NBD `ESHUTDOWN`.
    #[error("shutting down")]
    ShuttingDown,
}

impl VolumeError {
    /// The NBD error code to answer with.
    pub fn nbd_code(&self) -> ErrorCode {
        match self {
            Self::Io(_) => ErrorCode::Io,
            Self::Invalid(_) => ErrorCode::Inval,
            Self::NoSpace => ErrorCode::NoSpc,
            Self::SlowZero => ErrorCode::NotSup,
            Self::ReadOnly => ErrorCode::Perm,
            Self::ShuttingDown => ErrorCode::Shutdown,
        }
    }
}

/// What a frontend can do to one volume. Implemented by the local store backend and by the
/// cluster gateway. Futures are `Send` so frontends can run each request on its own task.
pub trait VolumeBackend: Send + Sync + 'static {
    /// Volume size in bytes (a multiple of 512).
    fn size_bytes(&self) -> u64;

    /// Whether writes, trims and zeroing are refused.
    fn read_only(&self) -> bool {
        false
    }

    /// Reads `len` bytes at `offset` (at most 32 MiB); unwritten ranges read as zeroes. The
    /// result is exactly `len` bytes long.
    fn read(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes, VolumeError>> + Send;

    /// Writes `data` at `offset`; durable when it returns. With `fua`, the backend must not
    /// return before the data is on stable storage even if it normally caches.
    fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> impl Future<Output = Result<(), VolumeError>> + Send;

    /// Discards a range: it reads as zeroes afterwards and whole blocks stop using space.
    fn trim(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), VolumeError>> + Send;

    /// Makes a range read as zeroes, as `flags` allow.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> impl Future<Output = Result<(), VolumeError>> + Send;

    /// Returns once every mutation that completed before the call is durable (and, for
    /// backends that can, once mutations in flight at the call have completed).
    fn flush(&self) -> impl Future<Output = Result<(), VolumeError>> + Send;

    /// Allocation of `[offset, offset + len)`, in order from `offset`. The extents may cover
    /// only a prefix of the range (at least one extent, never past its end); callers ask again
    /// for the rest.
    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<VolumeExtent>, VolumeError>> + Send;
}

/// One export as a frontend lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportEntry {
    /// The name clients connect to (the volume name).
    pub name: String,
    /// Human-readable description; may be empty.
    pub description: String,
}

/// How frontends find volumes by name. Lookups are synchronous and must not block: every node
/// keeps the volume table in memory (see `basalt::nbd::export` for why).
pub trait Exports: Send + Sync + 'static {
    /// The backend type of this node's volumes.
    type Volume: VolumeBackend;

    /// The volume exported as `name`, if any.
    fn get(&self, name: &str) -> Option<Arc<Self::Volume>>;

    /// Every export a client may list, in the order to announce them.
    fn list(&self) -> Vec<ExportEntry>;

    /// The description of `name` (empty if none). The default searches [`Self::list`].
    fn description(&self, name: &str) -> String {
        self.list()
            .into_iter()
            .find(|entry| entry.name == name)
            .map(|entry| entry.description)
            .unwrap_or_default()
    }
}

/// Joins the pieces of a read, in request order, into the `len` bytes the frontend asked for
/// (no copy when there is one piece). A backend that got back a different total length
/// reports an I/O error instead of handing the client short or long data.
pub fn join_read_pieces(pieces: Vec<Bytes>, len: u32) -> Result<Bytes, VolumeError> {
    let data = if pieces.len() == 1 {
        pieces.into_iter().next().unwrap_or_default()
    } else {
        let mut joined = bytes::BytesMut::with_capacity(len as usize);
        for piece in &pieces {
            joined.extend_from_slice(piece);
        }
        joined.freeze()
    };
    if data.len() != len as usize {
        return Err(VolumeError::Io(format!(
            "read {} bytes for a {len}-byte request",
            data.len()
        )));
    }
    Ok(data)
}

/// Appends a run of `len` bytes (data, or a hole that reads as zeroes) to NBD extents, merging
/// it into the last extent when that has the same kind, so clients get the fewest extents.
pub fn push_extent(extents: &mut Vec<VolumeExtent>, len: u32, allocated: bool) {
    let hole = !allocated;
    match extents.last_mut() {
        Some(last) if last.hole == hole => last.len += u64::from(len),
        _ => extents.push(VolumeExtent {
            len: u64::from(len),
            hole,
            zero: hole,
        }),
    }
}

/// A fixed set of exports: tests and single-node development.
#[derive(Debug)]
pub struct StaticExports<V> {
    exports: BTreeMap<String, (String, Arc<V>)>,
}

impl<V> Default for StaticExports<V> {
    fn default() -> Self {
        Self {
            exports: BTreeMap::new(),
        }
    }
}

impl<V: VolumeBackend> StaticExports<V> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the export `name`.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        volume: Arc<V>,
    ) {
        self.exports
            .insert(name.into(), (description.into(), volume));
    }
}

impl<V: VolumeBackend> Exports for StaticExports<V> {
    type Volume = V;

    fn get(&self, name: &str) -> Option<Arc<V>> {
        self.exports.get(name).map(|(_, volume)| Arc::clone(volume))
    }

    fn list(&self) -> Vec<ExportEntry> {
        self.exports
            .iter()
            .map(|(name, (description, _))| ExportEntry {
                name: name.clone(),
                description: description.clone(),
            })
            .collect()
    }

    fn description(&self, name: &str) -> String {
        self.exports
            .get(name)
            .map(|(description, _)| description.clone())
            .unwrap_or_default()
    }
}
