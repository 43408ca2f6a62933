//! `blockd demo`: the single-drive quick start.
//!
//! Formats a file-backed drive (once), runs concurrent verified writers against it, reads
//! everything back, closes the store cleanly, reopens it (recovery) and verifies again. Every
//! byte is checked against what was acknowledged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use basalt::ids::{ChunkKey, ChunkVersion, ClusterId, Epoch, NodeId, VolumeId};
use bytes::Bytes;
use clap::Args;

use super::parse_size;
use crate::store::engine::sim::SimRng;
use crate::store::geometry::GeometryOptions;
use crate::store::handle::format as format_drive;
use crate::store::{FormatOptions, OpenOptions, Store};

/// Arguments of `blockd demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Directory for the drive file.
    #[arg(long, default_value = "basalt-demo")]
    pub data_dir: PathBuf,
    /// Size of the drive file created on first run.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,
    /// How long the writers run.
    #[arg(long, default_value = "3s", value_parser = humantime_duration)]
    pub duration: Duration,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

const BLOCK: u32 = 4096;
const VOLUME: VolumeId = VolumeId(1);

/// Block content derived from a seed, so verification needs no copy of the data.
fn block_pattern(seed: u64, out: &mut [u8]) {
    for (i, word) in out.chunks_exact_mut(8).enumerate() {
        let v = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64).wrapping_mul(0xff51_afd7);
        word.copy_from_slice(&v.to_le_bytes());
    }
}

/// What each (chunk, block) must contain: the seed of its last acknowledged write.
type Expected = HashMap<(u64, u32), u64>;

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let drive = args.data_dir.join("drive0.img");
    if !drive.exists() {
        let opts = FormatOptions {
            cluster_id: ClusterId(uuid::Uuid::new_v4()),
            node_id: NodeId(1),
            drive_id: None,
            geometry: GeometryOptions::default(),
            force: false,
        };
        let sb = format_drive(&drive, &opts, Some(args.size))?;
        println!(
            "formatted {} ({})",
            drive.display(),
            bytesize::ByteSize(args.size)
        );
        println!(
            "  cluster {} node {} drive {}",
            sb.cluster_id, sb.node_id, sb.drive_id
        );
    }
    super::runtime()?.block_on(demo(args, drive))
}

async fn demo(args: &DemoArgs, drive: PathBuf) -> anyhow::Result<()> {
    let store = Arc::new(Store::open(&drive, OpenOptions::default()).await?);
    println!(
        "opened {}: recovery {:?}",
        drive.display(),
        store.recovery_report()
    );
    let stats = store.stats().await?;
    let chunk_size = store.chunk_size_bytes();
    // Use half the capacity so the demo never runs out of space, whatever was there before.
    let chunks = (stats.capacity_bytes / 2 / u64::from(chunk_size)).max(1);
    let writers = args.writers.max(1);
    println!(
        "writing with {writers} writers for {:?} over {chunks} chunks ...",
        args.duration
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let deadline = started + args.duration;
        let mine: Vec<u64> = (0..chunks)
            .filter(|c| c % writers as u64 == w as u64)
            .collect();
        tasks.push(tokio::spawn(writer(store, mine, chunk_size, deadline)));
    }
    let mut expected = Expected::new();
    let (mut latencies, mut bytes) = (Vec::new(), 0u64);
    for task in tasks {
        let result = task.await??;
        expected.extend(result.expected);
        latencies.extend(result.latencies);
        bytes += result.bytes;
    }
    report_throughput(&latencies, bytes, started.elapsed());
    verify(&store, &expected, chunk_size).await?;
    print_stats(&store).await?;
    let store = Arc::into_inner(store).context("writers still hold the store")?;
    store.close().await?;
    let store = Store::open(&drive, OpenOptions::default()).await?;
    println!("reopened: recovery {:?}", store.recovery_report());
    verify(&store, &expected, chunk_size).await?;
    store.close().await?;
    println!("demo OK: every acknowledged write read back, before and after reopening");
    Ok(())
}

struct WriterResult {
    expected: Expected,
    latencies: Vec<Duration>,
    bytes: u64,
}

async fn writer(
    store: Arc<Store>,
    chunks: Vec<u64>,
    chunk_size: u32,
    deadline: Instant,
) -> anyhow::Result<WriterResult> {
    let mut out = WriterResult {
        expected: Expected::new(),
        latencies: Vec::new(),
        bytes: 0,
    };
    if chunks.is_empty() {
        return Ok(out);
    }
    let mut rng = SimRng::new(rand::random());
    let blocks_per_chunk = chunk_size / BLOCK;
    let mut version = 0;
    while Instant::now() < deadline {
        let chunk = chunks[rng.below(chunks.len() as u64) as usize];
        let blocks = [1u32, 1, 1, 4, 16, 256][rng.below(6) as usize].min(blocks_per_chunk);
        let first = rng.below(u64::from(blocks_per_chunk - blocks) + 1) as u32;
        let seed = rng.next_u64();
        let mut data = vec![0u8; (blocks * BLOCK) as usize];
        for (i, block) in data.chunks_exact_mut(BLOCK as usize).enumerate() {
            block_pattern(seed ^ i as u64, block);
        }
        version += 1;
        let key = ChunkKey::new(VOLUME, chunk);
        let v = ChunkVersion {
            epoch: Epoch(1),
            version,
        };
        let t = Instant::now();
        store
            .write(key, first * BLOCK, Bytes::from(data), v)
            .await?;
        out.latencies.push(t.elapsed());
        out.bytes += u64::from(blocks * BLOCK);
        for i in 0..blocks {
            out.expected.insert((chunk, first + i), seed ^ u64::from(i));
        }
    }
    Ok(out)
}

fn report_throughput(latencies: &[Duration], bytes: u64, elapsed: Duration) {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let pct = |p: f64| {
        sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
    };
    let secs = elapsed.as_secs_f64();
    println!(
        "  {} writes, {:.0} IOPS, {:.1} MB/s, latency p50 {:?} p99 {:?}",
        sorted.len(),
        sorted.len() as f64 / secs,
        bytes as f64 / secs / 1e6,
        pct(0.5).copied().unwrap_or_default(),
        pct(0.99).copied().unwrap_or_default()
    );
}

async fn verify(store: &Store, expected: &Expected, chunk_size: u32) -> anyhow::Result<()> {
    let mut by_chunk: HashMap<u64, Vec<(u32, u64)>> = HashMap::new();
    for (&(chunk, block), &seed) in expected {
        by_chunk.entry(chunk).or_default().push((block, seed));
    }
    let mut want = vec![0u8; BLOCK as usize];
    for (chunk, blocks) in by_chunk {
        let data = store
            .read(ChunkKey::new(VOLUME, chunk), 0, chunk_size)
            .await?;
        for (block, seed) in blocks {
            block_pattern(seed, &mut want);
            if data[(block * BLOCK) as usize..][..BLOCK as usize] != want[..] {
                bail!("chunk {chunk} block {block}: data differs from the acknowledged write");
            }
        }
    }
    println!("  verified {} blocks", expected.len());
    Ok(())
}

async fn print_stats(store: &Store) -> anyhow::Result<()> {
    let s = store.stats().await?;
    println!(
        "  store: capacity {} allocated {} chunks {}; journal: {} batches for {} records, {} checkpoints",
        bytesize::ByteSize(s.capacity_bytes),
        bytesize::ByteSize(s.allocated_bytes),
        s.chunk_count,
        s.journal_batches,
        s.journal_records,
        s.checkpoints
    );
    Ok(())
}
