//! `blockd format` and `blockd inspect`.

use std::path::PathBuf;

use anyhow::Context;
use basalt::ids::{ClusterId, DriveId, NodeId};
use clap::Args;

use super::parse_size;
use crate::store::geometry::GeometryOptions;
use crate::store::handle::format as format_drive;
use crate::store::{ChunkInfo, Expect, FormatOptions, OpenOptions, Store};

/// Arguments of `blockd format`.
#[derive(Args, Debug)]
pub struct FormatArgs {
    /// Block device or file to format.
    #[arg(long)]
    pub drive: PathBuf,
    /// Cluster the drive belongs to (UUID).
    #[arg(long)]
    pub cluster_id: uuid::Uuid,
    /// Node that owns the drive.
    #[arg(long)]
    pub node_id: u64,
    /// The drive's id (UUID; random if omitted).
    #[arg(long)]
    pub drive_id: Option<uuid::Uuid>,
    /// Create the drive as a preallocated file of this size (e.g. 10GiB); it must not exist.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Chunk size (power of two, 4KiB..64MiB; default 4MiB). Must match the cluster.
    #[arg(long, value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// Journal size (default: 1/32 of the drive, 4MiB..256MiB).
    #[arg(long, value_parser = parse_size)]
    pub journal_size: Option<u64>,
    /// Overwrite a drive that already holds a Basalt store.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `blockd inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Block device or file.
    #[arg(long)]
    pub drive: PathBuf,
    /// Refuse a drive of another cluster.
    #[arg(long)]
    pub cluster_id: Option<uuid::Uuid>,
    /// Refuse a drive of another node.
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Also list every chunk: its key, label (epoch, version), allocated blocks and a crc32c
    /// of its full contents (holes read as zeroes), so copies on different drives can be
    /// compared offline.
    #[arg(long)]
    pub chunks: bool,
}

/// Formats a drive and prints what was written.
pub fn format(args: &FormatArgs) -> anyhow::Result<()> {
    let chunk_size_bytes = args
        .chunk_size
        .map(u32::try_from)
        .transpose()
        .context("chunk size too large")?;
    let opts = FormatOptions {
        cluster_id: ClusterId(args.cluster_id),
        node_id: NodeId(args.node_id),
        drive_id: args.drive_id.map(DriveId),
        geometry: GeometryOptions {
            chunk_size_bytes,
            journal_size_bytes: args.journal_size,
            ..GeometryOptions::default()
        },
        force: args.force,
    };
    let sb = format_drive(&args.drive, &opts, args.size)
        .with_context(|| format!("formatting {}", args.drive.display()))?;
    let g = sb.geometry;
    println!("formatted {}", args.drive.display());
    println!(
        "  cluster {}  node {}  drive {}",
        sb.cluster_id, sb.node_id, sb.drive_id
    );
    println!(
        "  chunk {}  journal {}  chunk slots {}  data capacity {}",
        bytesize::ByteSize(u64::from(g.chunk_size_bytes)),
        bytesize::ByteSize(g.journal_size_bytes),
        g.slot_count,
        bytesize::ByteSize(g.capacity_bytes())
    );
    Ok(())
}

/// Opens a drive (running recovery), prints its state and closes it cleanly.
pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let opts = OpenOptions {
        expect: Expect {
            cluster_id: args.cluster_id.map(ClusterId),
            node_id: args.node_id.map(NodeId),
        },
        ..OpenOptions::default()
    };
    super::runtime()?.block_on(async {
        let store = Store::open(&args.drive, opts)
            .await
            .with_context(|| format!("opening {}", args.drive.display()))?;
        let sb = *store.superblock();
        let stats = store.stats().await?;
        let chunks = store.list_chunks().await?;
        println!("drive {}", args.drive.display());
        println!(
            "  cluster {}  node {}  drive {}",
            sb.cluster_id, sb.node_id, sb.drive_id
        );
        println!("  recovery: {:?}", store.recovery_report());
        println!(
            "  capacity {}  allocated {}  free {}  chunks {}",
            bytesize::ByteSize(stats.capacity_bytes),
            bytesize::ByteSize(stats.allocated_bytes),
            bytesize::ByteSize(stats.free_bytes),
            chunks.len()
        );
        if args.chunks {
            print_chunks(&store, chunks).await?;
        }
        store.close().await?;
        Ok(())
    })
}

/// Bytes read at a time when checksumming a chunk.
const CHECKSUM_READ_BYTES: u32 = 1 << 20;

/// One line per chunk, sorted by key:
/// `chunk <volume>/<index>[@<generation>] epoch <e> version <v> blocks <n> crc32c <hex>`.
async fn print_chunks(store: &Store, mut chunks: Vec<ChunkInfo>) -> anyhow::Result<()> {
    chunks.sort_unstable_by_key(|info| info.chunk);
    let chunk_size = store.chunk_size_bytes();
    for info in chunks {
        let mut crc = 0u32;
        let mut offset = 0u32;
        while offset < chunk_size {
            let len = CHECKSUM_READ_BYTES.min(chunk_size - offset);
            let data = store
                .read(info.chunk, offset, len)
                .await
                .with_context(|| format!("reading chunk {}", info.chunk))?;
            crc = crc32c::crc32c_append(crc, &data);
            offset += len;
        }
        println!(
            "chunk {} epoch {} version {} blocks {} crc32c {crc:08x}",
            info.chunk, info.version.epoch.0, info.version.version, info.allocated_blocks
        );
    }
    Ok(())
}
