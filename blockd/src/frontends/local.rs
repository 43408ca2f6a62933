//! A volume stored on one local drive, without replication: tests and single-node development.
//!
//! Every request is split at chunk boundaries ([`basalt::volume::split_range`]) and the pieces
//! go to the [`Store`] concurrently as chunk operations on `(volume, chunk index)`. The store
//! accepts 512-byte-aligned ranges and read-modify-writes partial 4 KiB blocks itself, so no
//! alignment work happens here. Allocation (`block_status`) is the store's thin allocation.
//!
//! This is not the replicated path: a write is on one drive when it completes. The cluster
//! gateway implements the same [`VolumeBackend`] over the PG primaries.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use basalt::ids::{ChunkKey, ChunkVersion, Epoch, VolumeId};
use basalt::units::SECTOR_SIZE_BYTES;
use basalt::volume::{ChunkSpan, split_range};
use bytes::Bytes;
use tokio::task::JoinSet;

use super::{VolumeBackend, VolumeError, VolumeExtent, ZeroFlags};
use crate::store::{Store, StoreError};

/// Chunk operations one request keeps in flight at once. A 64-bit trim or zeroing can span
/// many chunks; 16 keeps a `NO_HOLE` zeroing's store buffers near 16 chunks (64 MiB).
pub const PIECES_IN_FLIGHT_MAX: usize = 16;
/// Chunks one `block_status` call describes at most; the caller asks again for the rest.
pub const BLOCK_STATUS_CHUNKS_MAX: u64 = 64;
/// Epoch stamped on chunk versions written by a local volume (there is no cluster map).
const LOCAL_EPOCH: Epoch = Epoch(1);

/// A volume on one local [`Store`].
#[derive(Debug)]
pub struct LocalVolume {
    store: Arc<Store>,
    volume: VolumeId,
    size_bytes: u64,
    chunk_size: u32,
    next_version: AtomicU64,
    zeroes: OnceLock<Bytes>,
}

impl LocalVolume {
    /// Serves `volume` of `size_bytes` (a non-zero multiple of 512) from `store`. Chunk versions
    /// continue after the highest one the store holds for this volume, so they keep increasing
    /// across restarts.
    pub async fn open(
        store: Arc<Store>,
        volume: VolumeId,
        size_bytes: u64,
    ) -> Result<Self, VolumeError> {
        if size_bytes == 0 || !size_bytes.is_multiple_of(u64::from(SECTOR_SIZE_BYTES)) {
            return Err(VolumeError::Invalid(format!(
                "volume size {size_bytes} is not a non-zero multiple of {SECTOR_SIZE_BYTES}"
            )));
        }
        let chunks = store.list_chunks().await.map_err(store_error)?;
        let last = chunks
            .iter()
            .filter(|info| info.chunk.volume == volume)
            .map(|info| info.version.version)
            .max()
            .unwrap_or(0);
        Ok(Self {
            chunk_size: store.chunk_size_bytes(),
            store,
            volume,
            size_bytes,
            next_version: AtomicU64::new(last + 1),
            zeroes: OnceLock::new(),
        })
    }

    /// The volume id chunks are stored under.
    pub fn volume_id(&self) -> VolumeId {
        self.volume
    }

    /// The store behind this volume.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn key(&self, span: &ChunkSpan) -> ChunkKey {
        ChunkKey::new(self.volume, span.chunk_index)
    }

    fn version(&self) -> ChunkVersion {
        ChunkVersion {
            epoch: LOCAL_EPOCH,
            version: self.next_version.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        let sector = u64::from(SECTOR_SIZE_BYTES);
        let in_range = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.size_bytes);
        if !in_range || !offset.is_multiple_of(sector) || !len.is_multiple_of(sector) {
            return Err(VolumeError::Invalid(format!(
                "range {offset}+{len} is misaligned or beyond the volume size {}",
                self.size_bytes
            )));
        }
        Ok(())
    }

    /// A shared buffer of zeroes, one chunk long (sliced for `NO_HOLE` zeroing).
    fn zeroes(&self) -> &Bytes {
        self.zeroes
            .get_or_init(|| Bytes::from(vec![0u8; self.chunk_size as usize]))
    }

    async fn trim_range(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.check(offset, len)?;
        let spans = split_range(offset, len, self.chunk_size);
        run_spans(spans, |span| {
            let (store, key, version) = (Arc::clone(&self.store), self.key(&span), self.version());
            async move {
                store
                    .trim(key, span.offset_in_chunk, span.len, version)
                    .await
                    .map_err(store_error)
            }
        })
        .await
        .map(drop)
    }

    async fn write_range(&self, offset: u64, data: Bytes) -> Result<(), VolumeError> {
        self.check(offset, data.len() as u64)?;
        let spans = split_range(offset, data.len() as u64, self.chunk_size);
        run_spans(spans, |span| {
            let start = span.request_offset(offset) as usize;
            let piece = data.slice(start..start + span.len as usize);
            let (store, key, version) = (Arc::clone(&self.store), self.key(&span), self.version());
            async move {
                store
                    .write(key, span.offset_in_chunk, piece, version)
                    .await
                    .map_err(store_error)
            }
        })
        .await
        .map(drop)
    }
}

impl VolumeBackend for LocalVolume {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, VolumeError> {
        self.check(offset, u64::from(len))?;
        let spans = split_range(offset, u64::from(len), self.chunk_size);
        let pieces = run_spans(spans, |span| {
            let (store, key) = (Arc::clone(&self.store), self.key(&span));
            async move {
                store
                    .read(key, span.offset_in_chunk, span.len)
                    .await
                    .map_err(store_error)
            }
        })
        .await?;
        crate::frontends::join_read_pieces(pieces, len)
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), VolumeError> {
        self.write_range(offset, data).await?;
        if fua {
            // Store writes are durable when acknowledged; the flush is the explicit barrier
            // FUA asks for, and costs little.
            self.store.flush().await.map_err(store_error)?;
        }
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.trim_range(offset, len).await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<(), VolumeError> {
        self.check(offset, len)?;
        if !flags.no_hole {
            // Unallocated blocks read as zeroes: punching the hole is the fast zero.
            return self.trim_range(offset, len).await;
        }
        if flags.fast {
            // Keeping the range allocated means writing zero blocks: no faster than a write.
            return Err(VolumeError::SlowZero);
        }
        let spans = split_range(offset, len, self.chunk_size);
        let zeroes = self.zeroes().clone();
        run_spans(spans, |span| {
            let piece = zeroes.slice(..span.len as usize);
            let (store, key, version) = (Arc::clone(&self.store), self.key(&span), self.version());
            async move {
                store
                    .write(key, span.offset_in_chunk, piece, version)
                    .await
                    .map_err(store_error)
            }
        })
        .await
        .map(drop)
    }

    async fn flush(&self) -> Result<(), VolumeError> {
        self.store.flush().await.map_err(store_error)
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<VolumeExtent>, VolumeError> {
        self.check(offset, len)?;
        if len == 0 {
            return Err(VolumeError::Invalid("block status of zero length".into()));
        }
        let chunk = u64::from(self.chunk_size);
        // Describe at most BLOCK_STATUS_CHUNKS_MAX chunks, ending on a chunk boundary.
        let limit = (offset / chunk + BLOCK_STATUS_CHUNKS_MAX) * chunk - offset;
        let spans = split_range(offset, len.min(limit), self.chunk_size);
        let per_chunk = run_spans(spans, |span| {
            let (store, key) = (Arc::clone(&self.store), self.key(&span));
            async move {
                store
                    .block_status(key, span.offset_in_chunk, span.len)
                    .await
                    .map_err(store_error)
            }
        })
        .await?;
        let mut extents: Vec<VolumeExtent> = Vec::new();
        for extent in per_chunk.into_iter().flatten() {
            crate::frontends::push_extent(&mut extents, extent.len, extent.allocated);
        }
        if extents.is_empty() {
            return Err(VolumeError::Io("store described no extents".into()));
        }
        Ok(extents)
    }
}

/// Runs `op` for every span, at most [`PIECES_IN_FLIGHT_MAX`] at a time, and returns the
/// results in span order. A single span runs inline (the common case: no task spawned). The
/// first error is returned; pieces still running are cancelled (their store calls may still
/// complete, as a failed multi-sector write may partly land on a disk).
async fn run_spans<I, F, Fut, T>(spans: I, mut op: F) -> Result<Vec<T>, VolumeError>
where
    I: ExactSizeIterator<Item = ChunkSpan>,
    F: FnMut(ChunkSpan) -> Fut,
    Fut: Future<Output = Result<T, VolumeError>> + Send + 'static,
    T: Send + 'static,
{
    let count = spans.len();
    if count == 1 {
        let mut results = Vec::with_capacity(1);
        for span in spans {
            results.push(op(span).await?);
        }
        return Ok(results);
    }
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    let mut tasks = JoinSet::new();
    for (index, span) in spans.enumerate() {
        if tasks.len() >= PIECES_IN_FLIGHT_MAX {
            collect_one(&mut tasks, &mut results).await?;
        }
        let piece = op(span);
        tasks.spawn(async move { (index, piece.await) });
    }
    while !tasks.is_empty() {
        collect_one(&mut tasks, &mut results).await?;
    }
    results
        .into_iter()
        .map(|result| result.ok_or_else(|| VolumeError::Io("a chunk operation was lost".into())))
        .collect()
}

async fn collect_one<T: 'static>(
    tasks: &mut JoinSet<(usize, Result<T, VolumeError>)>,
    results: &mut [Option<T>],
) -> Result<(), VolumeError> {
    match tasks.join_next().await {
        Some(Ok((index, Ok(value)))) => {
            results[index] = Some(value);
            Ok(())
        }
        Some(Ok((_, Err(error)))) => Err(error),
        Some(Err(join)) => Err(VolumeError::Io(format!("chunk operation failed: {join}"))),
        None => Ok(()),
    }
}

/// Maps a store failure to the volume error a frontend reports.
fn store_error(error: StoreError) -> VolumeError {
    match error {
        StoreError::OutOfRange { .. } | StoreError::Misaligned { .. } | StoreError::ZeroLength => {
            VolumeError::Invalid(error.to_string())
        }
        StoreError::NoSpace | StoreError::NoChunkSlots => VolumeError::NoSpace,
        StoreError::Closed => VolumeError::ShuttingDown,
        StoreError::Corrupt { .. } | StoreError::Io(_) | StoreError::Failed(_) => {
            VolumeError::Io(error.to_string())
        }
    }
}
