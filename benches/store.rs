//! Store benchmark: the drive store against fio on the same disk, same patterns, same depth.
//!
//! Goal: tell how much of the drive the store delivers. fio with io_uring and O_DIRECT is the
//! reference for what the disk can do; the store adds checksums, block maps, a journal and a
//! request channel on top. Method:
//! - Two 2 GiB files on the benchmark filesystem (ext4 expected, never tmpfs): one holds the
//!   store, one is fio's. Both are written in full first, so neither side pays for ext4
//!   converting unwritten extents on its first writes (a raw drive has no such cost).
//! - The store is formatted and its first 1 GiB of volume space is written with 1 MiB writes, so
//!   reads hit real data; fio uses the first 1 GiB of its file the same way.
//! - Each case runs for `BASALT_BENCH_SECS` (default 10) on the store, with one request loop per
//!   unit of queue depth, all inside one tokio task (as fio keeps its queue full from one
//!   thread), then on fio with `--iodepth` equal to it. fio writes use `--fdatasync=1` because
//!   every acknowledged store write is durable. `BASALT_BENCH_ROUNDS` repeats each case,
//!   alternating store and fio, and the targets use the median ratio.
//! - Latency goes into an hdrhistogram; CPU per I/O is the process's user+system time over the
//!   case (`getrusage`) divided by the I/Os completed.
//!
//! Every block written carries its chunk and block number, so reads are checked on a sample
//! and a verification pass (also after reopening the store) fails the run on wrong data. Targets
//! are printed, never asserted: a benchmark reports, a slow machine must not make it fail.
//!
//! Run: `cargo bench -p blockd --bench store`. Env: `BASALT_BENCH_DIR` (directory for the two
//! files, default a temporary directory under /var/tmp), `BASALT_BENCH_SECS` (seconds per case),
//! `BASALT_BENCH_CASES` (comma-separated substrings of the case names to run, default all).

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use basalt::ids::{ChunkKey, ChunkVersion, ClusterId, Epoch, NodeId, VolumeId};
use blockd::store::engine::sim::SimRng;
use blockd::store::geometry::GeometryOptions;
use blockd::store::handle::format as format_drive;
use blockd::store::{FormatOptions, OpenOptions, Store, StoreStats};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::Value;

/// Size of each benchmark file: large enough that the disk, not a cache, serves the I/O.
const FILE_SIZE_BYTES: u64 = 2 << 30;
/// Part of the volume (store) or file (fio) every case works on; prefilled before reads.
const REGION_BYTES: u64 = 1 << 30;
/// Store chunk size (the cluster default).
const CHUNK_SIZE_BYTES: u32 = 4 << 20;
/// Chunks covering the region.
const REGION_CHUNKS: u64 = REGION_BYTES / CHUNK_SIZE_BYTES as u64;
/// The store's block size; every written block carries a header identifying it.
const BLOCK_BYTES: usize = 4096;
/// Bytes of the per-block header: chunk index (u64) and block index (u32), then a magic.
const HEADER_BYTES: usize = 16;
const HEADER_MAGIC: u32 = 0xba5a_17be;
/// Size of the prefill writes (and of the file-conditioning writes).
const PREFILL_IO_BYTES: u32 = 1 << 20;
/// Concurrent prefill writes: enough to stream, few enough to keep memory small.
const PREFILL_QUEUE_DEPTH: usize = 8;
/// Every n-th read of a task is checked in full, so checking costs well under 1% of CPU/IO.
const READ_VERIFY_EVERY: u64 = 256;
/// Random blocks checked by each verification pass.
const VERIFY_SAMPLE_BLOCKS: u64 = 512;
/// Default seconds per case (store and fio each).
const CASE_SECS_DEFAULT: f64 = 10.0;
/// Largest latency the histograms track (longer ones saturate), in nanoseconds.
const LATENCY_NS_MAX: u64 = 60_000_000_000;
const VOLUME: VolumeId = VolumeId(1);
/// Linux `TMPFS_MAGIC`: results on tmpfs would measure memory, not a disk.
const TMPFS_MAGIC: u64 = 0x0102_1994;
/// Free space needed: both files plus slack.
const FREE_BYTES_MIN: u64 = 2 * FILE_SIZE_BYTES + (256 << 20);

/// An I/O pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pattern {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
}

impl Pattern {
    fn is_write(self) -> bool {
        matches!(self, Self::RandWrite | Self::SeqWrite)
    }

    fn is_random(self) -> bool {
        matches!(self, Self::RandRead | Self::RandWrite)
    }

    /// fio's `--rw` value.
    fn fio_rw(self) -> &'static str {
        match self {
            Self::RandRead => "randread",
            Self::RandWrite => "randwrite",
            Self::SeqRead => "read",
            Self::SeqWrite => "write",
        }
    }
}

/// One benchmark case.
#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    pattern: Pattern,
    io_bytes: u32,
    queue_depth: usize,
}

/// Sequential cases keep a few 1 MiB requests in flight, as a streaming reader or writer (or
/// the replication layer copying a chunk) does; one at a time would measure round trips.
const SEQUENTIAL_QUEUE_DEPTH: usize = 4;

/// Reads first (they need the prefilled data intact, and writes then rewrite the same content).
const CASES: [Case; 6] = [
    case("randread 4k QD1", Pattern::RandRead, 4096, 1),
    case("randread 4k QD32", Pattern::RandRead, 4096, 32),
    case(
        "seqread 1M QD4",
        Pattern::SeqRead,
        1 << 20,
        SEQUENTIAL_QUEUE_DEPTH,
    ),
    case("randwrite 4k QD1", Pattern::RandWrite, 4096, 1),
    case("randwrite 4k QD32", Pattern::RandWrite, 4096, 32),
    case(
        "seqwrite 1M QD4",
        Pattern::SeqWrite,
        1 << 20,
        SEQUENTIAL_QUEUE_DEPTH,
    ),
];

const fn case(name: &'static str, pattern: Pattern, io_bytes: u32, queue_depth: usize) -> Case {
    Case {
        name,
        pattern,
        io_bytes,
        queue_depth,
    }
}

/// Results of one side of a case, in the units the table prints.
#[derive(Clone, Copy, Debug)]
struct Measured {
    iops: f64,
    mb_per_sec: f64,
    p50_ns: f64,
    p99_ns: f64,
    cpu_per_io_ns: f64,
}

/// fio's results plus the CPU of the whole fio process (a cross-check of its own figure).
#[derive(Clone, Copy, Debug)]
struct FioMeasured {
    measured: Measured,
    process_cpu_per_io_ns: f64,
}

/// How the store's journal behaved during a case.
#[derive(Clone, Copy, Debug, Default)]
struct JournalDelta {
    records: u64,
    batches: u64,
    checkpoints: u64,
}

/// One line of the final table.
#[derive(Debug)]
struct Row {
    case: Case,
    /// 1-based; cases run `BASALT_BENCH_ROUNDS` times, alternating store and fio.
    round: u32,
    store: Measured,
    journal: JournalDelta,
    fio: Option<FioMeasured>,
}

fn main() -> anyhow::Result<()> {
    let case_duration = case_duration()?;
    let dir = bench_dir()?;
    check_filesystem(dir.path())?;
    let fio = fio_version();
    print_setup(dir.path(), case_duration, fio.as_deref());
    let store_path = dir.path().join("store.img");
    let fio_path = dir.path().join("fio.img");
    let base = Bytes::from(random_bytes(0x5eed, BLOCK_BYTES));
    condition_file(&store_path)?;
    if fio.is_some() {
        condition_file(&fio_path)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let store = runtime.block_on(format_and_prefill(&store_path, &base))?;
    let mut rows = Vec::new();
    let rounds = rounds()?;
    for case in selected_cases() {
        for round in 1..=rounds {
            println!("running {} (round {round} of {rounds}) ...", case.name);
            let (store_result, journal) =
                runtime.block_on(run_store_case(&store, case, case_duration, &base))?;
            let fio_result = match fio {
                Some(_) => run_fio_case(case, &fio_path, case_duration),
                None => None,
            };
            rows.push(Row {
                case,
                round,
                store: store_result,
                journal,
                fio: fio_result,
            });
        }
    }
    runtime.block_on(verify_close_reopen(store, &store_path, &base))?;
    print_table(&rows, fio.is_some());
    print_targets(&rows);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Setup

/// Seconds per case from `BASALT_BENCH_SECS` (fractions allowed, for quick trial runs).
fn case_duration() -> anyhow::Result<Duration> {
    let Ok(text) = std::env::var("BASALT_BENCH_SECS") else {
        return Ok(Duration::from_secs_f64(CASE_SECS_DEFAULT));
    };
    let secs: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("BASALT_BENCH_SECS={text:?} is not a number of seconds"))?;
    ensure!(
        secs.is_finite() && secs >= 0.1,
        "BASALT_BENCH_SECS={text:?} must be at least 0.1"
    );
    Ok(Duration::from_secs_f64(secs))
}

/// Rounds per case from `BASALT_BENCH_ROUNDS` (default 1). Each round runs the store, then
/// fio; several short rounds show how much the machine's noise moves the ratios.
fn rounds() -> anyhow::Result<u32> {
    let Ok(text) = std::env::var("BASALT_BENCH_ROUNDS") else {
        return Ok(1);
    };
    let rounds: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("BASALT_BENCH_ROUNDS={text:?} is not a count"))?;
    ensure!(rounds >= 1, "BASALT_BENCH_ROUNDS must be at least 1");
    Ok(rounds)
}

/// The cases named by `BASALT_BENCH_CASES` (comma-separated substrings of case names, e.g.
/// `randread`), or all of them. For quick iterations on one case; reads still see prefilled data.
fn selected_cases() -> Vec<Case> {
    let Ok(filter) = std::env::var("BASALT_BENCH_CASES") else {
        return CASES.to_vec();
    };
    let wanted: Vec<&str> = filter.split(',').map(str::trim).collect();
    CASES
        .into_iter()
        .filter(|c| wanted.iter().any(|w| c.name.contains(w)))
        .collect()
}

/// A temporary directory under `BASALT_BENCH_DIR`, or under /var/tmp (disk-backed on common
/// distributions, unlike /tmp which is often tmpfs). Removed when the benchmark ends.
fn bench_dir() -> anyhow::Result<tempfile::TempDir> {
    let parent = std::env::var_os("BASALT_BENCH_DIR")
        .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    tempfile::Builder::new()
        .prefix("basalt-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))
}

/// Refuses tmpfs and filesystems without room for both files.
fn check_filesystem(dir: &Path) -> anyhow::Result<()> {
    let fs = rustix::fs::statfs(dir).with_context(|| format!("statfs {}", dir.display()))?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures.
    let fs_type = fs.f_type as u64;
    ensure!(
        fs_type != TMPFS_MAGIC,
        "{} is on tmpfs; set BASALT_BENCH_DIR to a directory on a disk",
        dir.display()
    );
    let vfs = rustix::fs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    ensure!(
        free >= FREE_BYTES_MIN,
        "{} has {} MiB free; the benchmark needs {} MiB",
        dir.display(),
        free >> 20,
        FREE_BYTES_MIN >> 20
    );
    Ok(())
}

/// fio's version, or None (with a message) if fio cannot be run.
fn fio_version() -> Option<String> {
    match Command::new("fio").arg("--version").output() {
        Ok(out) if out.status.success() => {
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        _ => {
            println!("NOTE: fio not found (install it, e.g. `apt-get install fio`);");
            println!("      the fio reference columns and the target ratios are skipped.");
            None
        }
    }
}

fn print_setup(dir: &Path, case_duration: Duration, fio: Option<&str>) {
    println!("Basalt store benchmark");
    println!("  directory: {}", dir.display());
    println!(
        "  files: 2 x {} MiB (store, fio), region {} MiB, {:.1} s per case and side",
        FILE_SIZE_BYTES >> 20,
        REGION_BYTES >> 20,
        case_duration.as_secs_f64()
    );
    if let Some(version) = fio {
        println!("  fio: {version}, io_uring, direct=1; writes with fdatasync=1 (durable, like");
        println!("       acknowledged store writes)");
    }
}

/// `n` bytes from a seeded generator: incompressible, and the same on every run.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = SimRng::new(seed);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Creates `path` and writes all of it (non-zero data), then syncs. A file that was only
/// fallocated makes the first write to each extent also a metadata update; a written file
/// behaves like a raw drive, which is what the store runs on in production (and `blockd
/// format` must cope with old contents, as on a reused drive).
fn condition_file(path: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let buffer = random_bytes(0xf111, PREFILL_IO_BYTES as usize);
    let mut file =
        std::fs::File::create_new(path).with_context(|| format!("creating {}", path.display()))?;
    for _ in 0..FILE_SIZE_BYTES / u64::from(PREFILL_IO_BYTES) {
        file.write_all(&buffer)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    println!(
        "  wrote {} in {:.1} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// User plus system CPU time of `who` (`RUSAGE_SELF` or `RUSAGE_CHILDREN`), in nanoseconds.
fn cpu_time_ns(who: libc::c_int) -> anyhow::Result<f64> {
    // SAFETY: `rusage` is a plain struct of integers, for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one `rusage` through the pointer, which points to the live,
    // aligned local above; it keeps no reference to it.
    let rc = unsafe { libc::getrusage(who, &raw mut usage) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    let ns = |t: libc::timeval| t.tv_sec as f64 * 1e9 + t.tv_usec as f64 * 1e3;
    Ok(ns(usage.ru_utime) + ns(usage.ru_stime))
}

// ---------------------------------------------------------------------------------------------
// Block contents

/// Writes block `block` of chunk `chunk` into `out`: the shared random base, headed by the
/// block's identity, so any block read back can be checked without remembering what was written.
fn fill_block(out: &mut [u8], base: &[u8], chunk: u64, block: u32) {
    out.copy_from_slice(base);
    write_header(out, chunk, block);
}

fn write_header(out: &mut [u8], chunk: u64, block: u32) {
    out[..8].copy_from_slice(&chunk.to_le_bytes());
    out[8..12].copy_from_slice(&block.to_le_bytes());
    out[12..HEADER_BYTES].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
}

/// The data of a write of `len` bytes at `offset` of `chunk`, in a new buffer.
fn payload(base: &[u8], chunk: u64, offset: u32, len: u32) -> Bytes {
    let mut data = vec![0u8; len as usize];
    let first = offset / BLOCK_BYTES as u32;
    for (i, block) in data.chunks_exact_mut(BLOCK_BYTES).enumerate() {
        fill_block(block, base, chunk, first + i as u32);
    }
    Bytes::from(data)
}

/// Builds a task's write payloads, reusing the buffer of an earlier write once the store has let
/// go of it: only the block headers change, so the benchmark's own share of the CPU per write
/// is a few stores rather than an allocation, page faults and a copy of up to 1 MiB. (The store
/// holds a write's data until the request is fully applied, which can be after it is
/// acknowledged, hence several candidates.)
#[derive(Debug, Default)]
struct PayloadBuilder {
    recent: VecDeque<Bytes>,
}

/// Earlier payloads a task keeps as candidates for reuse.
const PAYLOADS_KEPT: usize = 4;

impl PayloadBuilder {
    fn build(&mut self, base: &[u8], chunk: u64, offset: u32, len: u32) -> Bytes {
        let free = self
            .recent
            .iter()
            .position(|b| b.len() == len as usize && b.is_unique());
        let reused = free
            .and_then(|i| self.recent.remove(i))
            .and_then(|b| b.try_into_mut().ok());
        let Some(mut buf) = reused else {
            return payload(base, chunk, offset, len);
        };
        let first = offset / BLOCK_BYTES as u32;
        for (i, block) in buf.chunks_exact_mut(BLOCK_BYTES).enumerate() {
            write_header(block, chunk, first + i as u32);
        }
        buf.freeze()
    }

    /// Keeps `data` as a candidate for reuse.
    fn recycle(&mut self, data: Bytes) {
        if self.recent.len() == PAYLOADS_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(data);
    }
}

/// Checks data read at `offset` of `chunk` against what every write there put.
fn check_data(data: &[u8], base: &[u8], chunk: u64, offset: u32) -> anyhow::Result<()> {
    let first = offset / BLOCK_BYTES as u32;
    let mut want = [0u8; BLOCK_BYTES];
    for (i, block) in data.chunks(BLOCK_BYTES).enumerate() {
        let index = first + i as u32;
        fill_block(&mut want, base, chunk, index);
        if block != want {
            let found = &block[..HEADER_BYTES.min(block.len())];
            bail!("chunk {chunk} block {index}: wrong data read back (header {found:02x?})");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Store side

/// The store layout: defaults, with the chunk size pinned so the region maps to whole chunks.
fn geometry_options() -> GeometryOptions {
    GeometryOptions {
        chunk_size_bytes: Some(CHUNK_SIZE_BYTES),
        ..GeometryOptions::default()
    }
}

/// Formats the store file and writes the whole region through the store.
async fn format_and_prefill(path: &Path, base: &Bytes) -> anyhow::Result<Arc<Store>> {
    let opts = FormatOptions {
        cluster_id: ClusterId(uuid::Uuid::new_v4()),
        node_id: NodeId(1),
        drive_id: None,
        geometry: geometry_options(),
        force: false,
    };
    format_drive(path, &opts, None).context("formatting the store file")?;
    let store = Arc::new(Store::open(path, OpenOptions::default()).await?);
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..PREFILL_QUEUE_DEPTH {
        let (store, next, base) = (store.clone(), next.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            prefill_worker(&store, &next, &base).await
        }));
    }
    for task in tasks {
        task.await.context("prefill task panicked")??;
    }
    println!(
        "  store: formatted, prefilled {} MiB in {:.1} s",
        REGION_BYTES >> 20,
        started.elapsed().as_secs_f64()
    );
    verify_sample(&store, base, 1).await?;
    Ok(store)
}

/// Writes 1 MiB pieces of the region, taking the next unwritten one each time.
async fn prefill_worker(store: &Store, next: &AtomicU64, base: &[u8]) -> anyhow::Result<()> {
    let pieces = REGION_BYTES / u64::from(PREFILL_IO_BYTES);
    loop {
        let piece = next.fetch_add(1, Ordering::Relaxed);
        if piece >= pieces {
            return Ok(());
        }
        let (chunk, offset) = locate(piece * u64::from(PREFILL_IO_BYTES));
        let data = payload(base, chunk, offset, PREFILL_IO_BYTES);
        store
            .write(ChunkKey::new(VOLUME, chunk), offset, data, version(1))
            .await
            .with_context(|| format!("prefill write chunk {chunk} offset {offset}"))?;
    }
}

/// Chunk index and offset within it of a byte of the region.
fn locate(region_offset: u64) -> (u64, u32) {
    let chunk_size = u64::from(CHUNK_SIZE_BYTES);
    (
        region_offset / chunk_size,
        (region_offset % chunk_size) as u32,
    )
}

fn version(version: u64) -> ChunkVersion {
    ChunkVersion {
        epoch: Epoch(1),
        version,
    }
}

/// Reads random blocks and a few whole chunks of the region and checks them.
async fn verify_sample(store: &Store, base: &[u8], seed: u64) -> anyhow::Result<()> {
    let mut rng = SimRng::new(seed);
    let blocks_per_chunk = u64::from(CHUNK_SIZE_BYTES) / BLOCK_BYTES as u64;
    for _ in 0..VERIFY_SAMPLE_BLOCKS {
        let chunk = rng.below(REGION_CHUNKS);
        let offset = (rng.below(blocks_per_chunk) as usize * BLOCK_BYTES) as u32;
        let data = store
            .read(ChunkKey::new(VOLUME, chunk), offset, BLOCK_BYTES as u32)
            .await?;
        check_data(&data, base, chunk, offset)?;
    }
    for chunk in [0, rng.below(REGION_CHUNKS), REGION_CHUNKS - 1] {
        let data = store
            .read(ChunkKey::new(VOLUME, chunk), 0, CHUNK_SIZE_BYTES)
            .await?;
        ensure!(
            data.len() == CHUNK_SIZE_BYTES as usize,
            "short read of chunk {chunk}"
        );
        check_data(&data, base, chunk, 0)?;
    }
    Ok(())
}

/// Final check: verify, close cleanly, reopen (recovery) and verify again.
async fn verify_close_reopen(store: Arc<Store>, path: &Path, base: &[u8]) -> anyhow::Result<()> {
    verify_sample(&store, base, 2).await?;
    let store = Arc::into_inner(store).context("a benchmark task still holds the store")?;
    store.close().await?;
    let store = Store::open(path, OpenOptions::default()).await?;
    verify_sample(&store, base, 3).await?;
    store.close().await?;
    println!(
        "verification: {} random blocks and 3 whole chunks correct before and after reopen",
        VERIFY_SAMPLE_BLOCKS
    );
    Ok(())
}

/// What every task of a store case shares.
struct CaseContext {
    store: Arc<Store>,
    case: Case,
    base: Bytes,
    deadline: Instant,
    /// Next sequential position (in I/O-size units), shared so the tasks form one stream.
    next_position: AtomicU64,
    /// Write versions: increasing across all tasks, as the replication layer would send them.
    next_version: AtomicU64,
}

/// Runs `case` on the store; returns its results and what the journal did meanwhile.
async fn run_store_case(
    store: &Arc<Store>,
    case: Case,
    duration: Duration,
    base: &Bytes,
) -> anyhow::Result<(Measured, JournalDelta)> {
    let stats_before = store.stats().await?;
    let cpu_before = cpu_time_ns(libc::RUSAGE_SELF)?;
    let started = Instant::now();
    let context = Arc::new(CaseContext {
        store: store.clone(),
        case,
        base: base.clone(),
        deadline: started + duration,
        next_position: AtomicU64::new(0),
        next_version: AtomicU64::new(2),
    });
    let mut latency = new_histogram()?;
    if std::env::var("BASALT_BENCH_TASKS").is_ok_and(|v| v == "many") {
        let tasks: Vec<_> = (0..case.queue_depth)
            .map(|task| tokio::spawn(store_worker(context.clone(), task as u64)))
            .collect();
        for task in tasks {
            let task_latency = task.await.context("benchmark task panicked")??;
            latency.add(&task_latency)?;
        }
    } else {
        let workers: Vec<_> = (0..case.queue_depth)
            .map(|task| store_worker(context.clone(), task as u64))
            .collect();
        let results = tokio::spawn(join_all(workers))
            .await
            .context("benchmark task panicked")?;
        for task_latency in results {
            latency.add(&task_latency?)?;
        }
    }
    let elapsed_secs = started.elapsed().as_secs_f64();
    let cpu_ns = cpu_time_ns(libc::RUSAGE_SELF)? - cpu_before;
    let stats_after = store.stats().await?;
    let ios = latency.len() as f64;
    ensure!(ios > 0.0, "{}: no I/O completed", case.name);
    let measured = Measured {
        iops: ios / elapsed_secs,
        mb_per_sec: ios * f64::from(case.io_bytes) / elapsed_secs / 1e6,
        p50_ns: latency.value_at_quantile(0.50) as f64,
        p99_ns: latency.value_at_quantile(0.99) as f64,
        cpu_per_io_ns: cpu_ns / ios,
    };
    Ok((measured, journal_delta(&stats_before, &stats_after)))
}

/// Runs `futures` concurrently inside the calling task (like fio's one thread keeping its queue
/// full) and returns their outputs in order. Each wake-up polls the unfinished ones; with a few
/// dozen futures whose pending polls are an atomic load each, that costs less than a task each.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)?)
}

fn journal_delta(before: &StoreStats, after: &StoreStats) -> JournalDelta {
    JournalDelta {
        records: after.journal_records - before.journal_records,
        batches: after.journal_batches - before.journal_batches,
        checkpoints: after.checkpoints - before.checkpoints,
    }
}

/// One unit of queue depth: issues I/O back to back until the deadline; returns latencies.
async fn store_worker(context: Arc<CaseContext>, task: u64) -> anyhow::Result<Histogram<u64>> {
    let CaseContext { store, case, .. } = &*context;
    let mut rng = SimRng::new(0xb0b0 ^ task.wrapping_mul(0x9e37_79b9));
    let mut latency = new_histogram()?;
    let mut ios = 0u64;
    let mut payloads = PayloadBuilder::default();
    while Instant::now() < context.deadline {
        let (chunk, offset) = next_target(&context, &mut rng);
        let key = ChunkKey::new(VOLUME, chunk);
        if case.pattern.is_write() {
            let data = payloads.build(&context.base, chunk, offset, case.io_bytes);
            let v = version(context.next_version.fetch_add(1, Ordering::Relaxed));
            let started = Instant::now();
            store.write(key, offset, data.clone(), v).await?;
            latency.saturating_record(started.elapsed().as_nanos() as u64);
            payloads.recycle(data);
        } else {
            let started = Instant::now();
            let data = store.read(key, offset, case.io_bytes).await?;
            latency.saturating_record(started.elapsed().as_nanos() as u64);
            ensure!(data.len() == case.io_bytes as usize, "short read");
            if ios.is_multiple_of(READ_VERIFY_EVERY) {
                check_data(&data, &context.base, chunk, offset)?;
            }
        }
        ios += 1;
    }
    Ok(latency)
}

/// Chunk and offset of a task's next I/O: uniform over the region, or the stream's next piece.
fn next_target(context: &CaseContext, rng: &mut SimRng) -> (u64, u32) {
    let io_bytes = u64::from(context.case.io_bytes);
    let positions = REGION_BYTES / io_bytes;
    let position = if context.case.pattern.is_random() {
        rng.below(positions)
    } else {
        context.next_position.fetch_add(1, Ordering::Relaxed) % positions
    };
    locate(position * io_bytes)
}

// ---------------------------------------------------------------------------------------------
// fio side

/// fio's arguments for `case` on `path`.
fn fio_args(case: Case, path: &Path, duration: Duration) -> Vec<String> {
    let mut args = vec![
        format!("--name={}", case.name.replace(' ', "-")),
        format!("--filename={}", path.display()),
        "--ioengine=io_uring".to_owned(),
        "--direct=1".to_owned(),
        format!("--rw={}", case.pattern.fio_rw()),
        format!("--bs={}", case.io_bytes),
        format!("--iodepth={}", case.queue_depth),
        format!("--size={REGION_BYTES}"),
        "--norandommap".to_owned(),
        "--randrepeat=0".to_owned(),
        "--allow_file_create=0".to_owned(),
        "--time_based".to_owned(),
        format!("--runtime={}ms", duration.as_millis()),
        "--output-format=json".to_owned(),
    ];
    if case.pattern.is_write() {
        args.push("--fdatasync=1".to_owned());
    }
    args
}

/// Runs `case` with fio. A failing fio is reported and skipped: it says nothing about the store.
fn run_fio_case(case: Case, path: &Path, duration: Duration) -> Option<FioMeasured> {
    let args = fio_args(case, path, duration);
    println!("  fio {}", args.join(" "));
    match run_fio(&args) {
        Ok(measured) => Some(measured),
        Err(e) => {
            println!("  WARNING: fio failed, its columns stay empty for this case: {e:#}");
            None
        }
    }
}

fn run_fio(args: &[String]) -> anyhow::Result<FioMeasured> {
    let cpu_before = cpu_time_ns(libc::RUSAGE_CHILDREN)?;
    let out = Command::new("fio")
        .args(args)
        .output()
        .context("running fio")?;
    let process_cpu_ns = cpu_time_ns(libc::RUSAGE_CHILDREN)? - cpu_before;
    if !out.status.success() {
        bail!(
            "fio exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    // fio may print notices before the JSON document.
    let json_start = stdout.find('{').context("no JSON in fio's output")?;
    let report: Value = serde_json::from_str(&stdout[json_start..]).context("parsing fio JSON")?;
    let job = report.pointer("/jobs/0").context("fio JSON has no job")?;
    let measured = parse_fio_job(job)?;
    let ios = number(job, "/write/total_ios")? + number(job, "/read/total_ios")?;
    Ok(FioMeasured {
        measured,
        process_cpu_per_io_ns: process_cpu_ns / ios.max(1.0),
    })
}

/// Extracts the table's figures from fio's job report. For writes, latency is the write's
/// completion latency plus the following fdatasync's, at the same percentile: only then is
/// the write durable, as a store write is when acknowledged.
fn parse_fio_job(job: &Value) -> anyhow::Result<Measured> {
    let side = if number(job, "/write/total_ios")? > 0.0 {
        "write"
    } else {
        "read"
    };
    let percentile = |p: &str| -> anyhow::Result<f64> {
        let clat = number(job, &format!("/{side}/clat_ns/percentile/{p}"))?;
        let sync = if side == "write" {
            number(job, &format!("/sync/lat_ns/percentile/{p}"))?
        } else {
            0.0
        };
        Ok(clat + sync)
    };
    let ios = number(job, &format!("/{side}/total_ios"))?;
    ensure!(ios > 0.0, "fio completed no I/O");
    let cpu_percent = number(job, "/usr_cpu")? + number(job, "/sys_cpu")?;
    let runtime_ns = number(job, "/job_runtime")? * 1e6;
    Ok(Measured {
        iops: number(job, &format!("/{side}/iops"))?,
        mb_per_sec: number(job, &format!("/{side}/bw_bytes"))? / 1e6,
        p50_ns: percentile("50.000000")?,
        p99_ns: percentile("99.000000")?,
        cpu_per_io_ns: cpu_percent / 100.0 * runtime_ns / ios,
    })
}

/// The number at JSON `pointer` in `value`.
fn number(value: &Value, pointer: &str) -> anyhow::Result<f64> {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .with_context(|| format!("fio JSON has no number at {pointer}"))
}

// ---------------------------------------------------------------------------------------------
// Report

/// A latency in the unit that keeps it readable.
fn latency(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2}ms", ns / 1e6)
    } else {
        format!("{:.1}us", ns / 1e3)
    }
}

fn print_table(rows: &[Row], fio_ran: bool) {
    println!();
    println!(
        "{:<21} | {:>35} | {:>35} | {:>6} | {:>8}",
        "", "store", "fio (io_uring, direct=1)", "IOPS", "fio CPU"
    );
    let side = format!("{:>8} {:>7} {:>8} {:>8}", "IOPS", "MB/s", "p50", "p99");
    println!(
        "{:<21} | {side} {:>6} | {side} {:>6} | {:>6} | {:>8}",
        "case", "CPU/IO", "CPU/IO", "s/fio", "process"
    );
    println!("{}", "-".repeat(21 + 3 + 42 + 3 + 42 + 3 + 6 + 3 + 8));
    let rounds = rows.iter().map(|r| r.round).max().unwrap_or(1);
    for row in rows {
        let fio = row
            .fio
            .map_or_else(|| format!("{:>42}", "n/a"), |f| format_side(&f.measured));
        let ratio = row.fio.map_or_else(
            || "n/a".to_owned(),
            |f| format!("{:.2}", row.store.iops / f.measured.iops),
        );
        let process = row
            .fio
            .map_or_else(|| "n/a".to_owned(), |f| latency(f.process_cpu_per_io_ns));
        let name = if rounds > 1 {
            format!("{} #{}", row.case.name, row.round)
        } else {
            row.case.name.to_owned()
        };
        println!(
            "{name:<21} | {} | {fio} | {ratio:>6} | {process:>8}",
            format_side(&row.store)
        );
    }
    print_table_notes(rows, fio_ran);
}

fn format_side(m: &Measured) -> String {
    format!(
        "{:>8.0} {:>7.1} {:>8} {:>8} {:>6}",
        m.iops,
        m.mb_per_sec,
        latency(m.p50_ns),
        latency(m.p99_ns),
        latency(m.cpu_per_io_ns)
    )
}

fn print_table_notes(rows: &[Row], fio_ran: bool) {
    println!();
    println!("CPU/IO: user+system CPU time per I/O. Store: getrusage(RUSAGE_SELF) over the case");
    println!("(client tasks, drive thread, io_uring workers). fio: (usr_cpu+sys_cpu) x runtime /");
    println!(
        "ios from its JSON (fio's own thread only); 'fio CPU process': getrusage of the whole"
    );
    println!("fio process including its io_uring worker threads and start-up.");
    if fio_ran {
        println!("fio writes use --fdatasync=1 (each write durable, like an acknowledged store");
        println!(
            "write); their p50/p99 = write completion + fdatasync latency at that percentile."
        );
    }
    for row in rows.iter().filter(|r| r.case.pattern.is_write()) {
        let j = row.journal;
        println!(
            "store journal, {}: {} records in {} batches ({:.1} per fdatasync), {} checkpoints",
            row.case.name,
            j.records,
            j.batches,
            j.records as f64 / j.batches.max(1) as f64,
            j.checkpoints
        );
    }
}

fn print_targets(rows: &[Row]) {
    // With several rounds, the median ratio over them (the middle one, or the mean of the two
    // middle ones).
    let ratio = |name: &str, f: fn(&Measured) -> f64| {
        let mut ratios: Vec<f64> = rows
            .iter()
            .filter(|r| r.case.name == name)
            .filter_map(|r| r.fio.map(|fio| f(&r.store) / f(&fio.measured)))
            .collect();
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        match n {
            0 => "n/a (no fio result)".to_owned(),
            1 => format!("{:.2}", ratios[0]),
            _ => {
                let median = (ratios[(n - 1) / 2] + ratios[n / 2]) / 2.0;
                let all: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
                format!("{median:.2} (median of {})", all.join(", "))
            }
        }
    };
    println!();
    println!(
        "randread QD32 store/fio = {} (target >= 0.8)",
        ratio("randread 4k QD32", |m| m.iops)
    );
    println!(
        "randwrite QD32 store/fio = {} (target >= 0.5, fio fdatasync=1)",
        ratio("randwrite 4k QD32", |m| m.iops)
    );
    println!(
        "randwrite QD1 p50 store/fio = {} (target <= 2.0)",
        ratio("randwrite 4k QD1", |m| m.p50_ns)
    );
}
