//! Per-drive metrics: device I/O measured by [`MeteredEngine`] on the drive thread, and
//! capacity, journal and checksum figures read from the store's own counters at scrape time.
//!
//! The store already counts what it does (`StoreStats`); duplicating those counters would
//! cost the drive thread work on every request. Only what the store cannot know about itself
//! — how long the device takes and how many operations it holds — is measured here, by an
//! engine wrapper, so the store core stays free of metrics.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt::ids::{DriveId, NodeId};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};

use super::histogram::LatencyHistogram;
use super::{encode_counters, encode_gauges, encode_histograms};
use crate::store::engine::{Completion, DriveEngine, DriveOp, OpKind, SubmitError};
use crate::store::idmap::{IdMap, id_map};
use crate::store::{Store, StoreStats};

/// How long a scrape waits for one drive's counters before reporting the previous ones.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Labels of per-drive series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriveLabels {
    /// The node that owns the drive.
    pub node: String,
    /// The drive id (from its superblock).
    pub drive: String,
}

/// Labels of per-drive, per-operation series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriveOpLabels {
    /// The node that owns the drive.
    pub node: String,
    /// The drive id.
    pub drive: String,
    /// `read`, `write` or `flush`.
    pub op: &'static str,
}

const OPS: [&str; 3] = ["read", "write", "flush"];

fn op_index(kind: &OpKind) -> usize {
    match kind {
        OpKind::Read { .. } => 0,
        OpKind::Write { .. } => 1,
        OpKind::Flush => 2,
    }
}

/// Device-level counters of one drive, updated by its thread only (relaxed atomics).
#[derive(Debug, Default)]
pub struct DriveIo {
    queue_depth: AtomicI64,
    latency: [LatencyHistogram; 3],
    errors: AtomicU64,
}

impl DriveIo {
    /// A wrapper for [`Store::open_wrapped`] that measures into `io`.
    pub fn wrapper(io: &Arc<DriveIo>) -> crate::store::handle::EngineWrap {
        let io = Arc::clone(io);
        Box::new(move |engine| Box::new(MeteredEngine::new(engine, io)))
    }
}

/// A drive engine that times each operation from submission to completion and publishes the
/// number the device holds. Runs on the drive thread, so its own map needs no lock.
pub struct MeteredEngine {
    inner: Box<dyn DriveEngine>,
    io: Arc<DriveIo>,
    started: IdMap<(Instant, usize)>,
}

impl MeteredEngine {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn DriveEngine>, io: Arc<DriveIo>) -> Self {
        Self {
            inner,
            io,
            started: id_map(),
        }
    }

    fn publish_depth(&self) {
        let depth = i64::try_from(self.inner.in_flight()).unwrap_or(i64::MAX);
        self.io.queue_depth.store(depth, Ordering::Relaxed);
    }
}

impl DriveEngine for MeteredEngine {
    fn device_size(&self) -> u64 {
        self.inner.device_size()
    }

    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn submit(&mut self, op: DriveOp) -> Result<(), SubmitError> {
        let (id, index) = (op.id, op_index(&op.kind));
        self.inner.submit(op)?;
        self.started.insert(id, (Instant::now(), index));
        self.publish_depth();
        Ok(())
    }

    fn wait(&mut self, block: bool) -> io::Result<()> {
        self.inner.wait(block)
    }

    fn poll_completion(&mut self) -> Option<Completion> {
        let completion = self.inner.poll_completion()?;
        if let Some((started, index)) = self.started.remove(&completion.id) {
            self.io.latency[index].observe(started.elapsed());
        }
        if completion.result.is_err() {
            self.io.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.publish_depth();
        Some(completion)
    }
}

/// One drive as the collector sees it.
struct DriveEntry {
    id: DriveId,
    store: Arc<Store>,
    io: Arc<DriveIo>,
    stats: Option<StoreStats>,
}

/// Every drive of the node. `refresh` fetches the stores' counters (async, before a scrape);
/// encoding reads the last ones fetched.
#[derive(Default)]
pub struct DriveMetrics {
    node: String,
    drives: Mutex<BTreeMap<DriveId, DriveEntry>>,
}

impl std::fmt::Debug for DriveMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriveMetrics")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl DriveMetrics {
    /// Metrics of the drives of `node`.
    pub fn new(node: NodeId) -> Self {
        Self {
            node: node.0.to_string(),
            drives: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds an opened drive; `io` is what its engine wrapper measures into.
    pub fn add(&self, store: Arc<Store>, io: Arc<DriveIo>) {
        let id = store.superblock().drive_id;
        let entry = DriveEntry {
            id,
            store,
            io,
            stats: None,
        };
        lock(&self.drives).insert(id, entry);
    }

    /// Fetches every store's counters, each bounded by [`STATS_TIMEOUT`]; a drive that does
    /// not answer keeps its previous figures.
    pub async fn refresh(&self) {
        let stores: Vec<(DriveId, Arc<Store>)> = lock(&self.drives)
            .values()
            .map(|d| (d.id, Arc::clone(&d.store)))
            .collect();
        for (id, store) in stores {
            match tokio::time::timeout(STATS_TIMEOUT, store.stats()).await {
                Ok(Ok(stats)) => {
                    if let Some(entry) = lock(&self.drives).get_mut(&id) {
                        entry.stats = Some(stats);
                    }
                }
                Ok(Err(error)) => tracing::debug!(drive = %id, %error, "drive stats"),
                Err(_) => tracing::debug!(drive = %id, "drive stats timed out"),
            }
        }
    }

    fn labels(&self, id: DriveId) -> DriveLabels {
        DriveLabels {
            node: self.node.clone(),
            drive: id.to_string(),
        }
    }
}

/// Encodes one gauge or counter family of every drive from its stats.
fn stats_series(
    metrics: &DriveMetrics,
    drives: &BTreeMap<DriveId, DriveEntry>,
    value: impl Fn(&StoreStats) -> u64,
) -> Vec<(DriveLabels, u64)> {
    drives
        .values()
        .filter_map(|d| d.stats.as_ref().map(|s| (metrics.labels(d.id), value(s))))
        .collect()
}

/// A family read from the store's counters: name, help, and the field.
type StatsField = (&'static str, &'static str, fn(&StoreStats) -> u64);

const STATS_GAUGES: [StatsField; 7] = [
    ("drive_capacity_bytes", "Data area of the drive", |s| {
        s.capacity_bytes
    }),
    (
        "drive_allocated_bytes",
        "Data area in use (including blocks waiting to be reused)",
        |s| s.allocated_bytes,
    ),
    ("drive_free_bytes", "Data area free", |s| s.free_bytes),
    ("drive_chunks", "Chunks held on the drive", |s| {
        s.chunk_count
    }),
    (
        "drive_journal_size_bytes",
        "Size of the drive's journal",
        |s| s.journal_size_bytes,
    ),
    (
        "drive_journal_used_bytes",
        "Journal bytes holding records not yet checkpointed",
        |s| s.journal_used_bytes,
    ),
    (
        "drive_corrupt_slots",
        "Metadata slots found damaged (both copies) when the drive was opened",
        |s| s.corrupt_slots,
    ),
];

const STATS_COUNTERS: [StatsField; 6] = [
    (
        "drive_checksum_errors",
        "Blocks that failed checksum verification on read",
        |s| s.checksum_errors,
    ),
    (
        "drive_journal_batches",
        "Journal batches written (group commits); records / batches is the batch size",
        |s| s.journal_batches,
    ),
    ("drive_journal_records", "Journal records written", |s| {
        s.journal_records
    }),
    (
        "drive_writes_journaled",
        "Writes that went through the journal with their data",
        |s| s.writes_journaled,
    ),
    (
        "drive_writes_redirected",
        "Writes that went straight to fresh blocks",
        |s| s.writes_redirected,
    ),
    ("drive_checkpoints", "Checkpoints completed", |s| {
        s.checkpoints
    }),
];

impl DriveMetrics {
    /// The device-level families measured by [`MeteredEngine`].
    fn encode_io(
        &self,
        encoder: &mut DescriptorEncoder,
        drives: &BTreeMap<DriveId, DriveEntry>,
    ) -> Result<(), std::fmt::Error> {
        let depth = drives
            .values()
            .map(|d| {
                let depth = d.io.queue_depth.load(Ordering::Relaxed);
                (self.labels(d.id), u64::try_from(depth).unwrap_or(0))
            })
            .collect();
        encode_gauges(
            encoder,
            "drive_queue_depth",
            "Operations submitted to the device (io_uring) and not yet completed",
            depth,
        )?;
        let errors = drives
            .values()
            .map(|d| (self.labels(d.id), d.io.errors.load(Ordering::Relaxed)))
            .collect();
        encode_counters(
            encoder,
            "drive_io_errors",
            "Device operations that failed",
            errors,
        )?;
        let mut latency = Vec::new();
        for d in drives.values() {
            for (op, histogram) in OPS.iter().zip(&d.io.latency) {
                let labels = DriveOpLabels {
                    node: self.node.clone(),
                    drive: d.id.to_string(),
                    op,
                };
                latency.push((labels, histogram.clone()));
            }
        }
        encode_histograms(
            encoder,
            "drive_io_latency_seconds",
            "Device operation latency, submission to completion",
            latency,
        )
    }
}

impl Collector for DriveMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let drives = lock(&self.drives);
        for (name, help, value) in STATS_GAUGES {
            encode_gauges(&mut encoder, name, help, stats_series(self, &drives, value))?;
        }
        for (name, help, value) in STATS_COUNTERS {
            encode_counters(&mut encoder, name, help, stats_series(self, &drives, value))?;
        }
        self.encode_io(&mut encoder, &drives)
    }
}

/// Locks a mutex that only guards plain data (a panic elsewhere cannot leave it invalid).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::sim::SimDrive;
    use crate::store::engine::{flush, read_at, write_at};

    /// Goal: every device operation through the wrapper is timed under its kind, and the
    /// queue depth returns to zero once the engine is idle.
    #[test]
    fn metered_engine_times_each_operation() {
        let io = Arc::new(DriveIo::default());
        let mut engine = MeteredEngine::new(Box::new(SimDrive::new(1 << 20, 7)), Arc::clone(&io));
        write_at(
            &mut engine,
            4096,
            crate::store::buf::AlignedBuf::zeroed(4096),
        )
        .unwrap();
        read_at(&mut engine, 4096, 4096).unwrap();
        read_at(&mut engine, 0, 4096).unwrap();
        flush(&mut engine).unwrap();
        let counts: Vec<u64> = io.latency.iter().map(LatencyHistogram::count).collect();
        assert_eq!(counts, [2, 1, 1]);
        assert_eq!(io.queue_depth.load(Ordering::Relaxed), 0);
        assert_eq!(io.errors.load(Ordering::Relaxed), 0);
    }
}
