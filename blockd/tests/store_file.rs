//! Store on real files: the io_uring engine, the on-disk checksums, input validation, the open
//! checks and the `blockd` CLI, against a regular file on the target directory's filesystem
//! (not tmpfs, which has no O_DIRECT).
//!
//! Method: every test formats its own file in a fresh directory under `CARGO_TARGET_TMPDIR`,
//! drives the public async API, and compares what it reads with a byte-for-byte model of what
//! was acknowledged (data, allocated blocks and versions per chunk).

use std::collections::{BTreeSet, HashMap};
use std::fs::OpenOptions as FsOpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use basalt::ids::{ChunkKey, ChunkVersion, ClusterId, Epoch, NodeId, VolumeId};
use blockd::store::device::DeviceError;
use blockd::store::format::{FORMAT_VERSION, Superblock};
use blockd::store::geometry::GeometryOptions;
use blockd::store::handle::{EngineKind, FormatDriveError, format};
use blockd::store::mkfs::MkfsError;
use blockd::store::{Expect, Extent, FormatOptions, OpenError, OpenOptions, Store, StoreError};
use bytes::Bytes;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;
const BLOCK: u32 = 4096;
const DRIVE_BYTES: u64 = 64 * MIB;
const CLUSTER: ClusterId = ClusterId(uuid::Uuid::from_u128(0x5eed_0001_b45a_0017));
const NODE: NodeId = NodeId(3);

/// A forked child holds copies of the parent's descriptors, including the drive's locked open
/// file description, until it execs. A test that closes and reopens a drive while the CLI test
/// is spawning `blockd` can therefore see `Busy` for a moment, so the CLI test runs alone.
static SPAWN_GUARD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("store_file")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create scratch directory")
}

fn format_options(force: bool) -> FormatOptions {
    FormatOptions {
        cluster_id: CLUSTER,
        node_id: NODE,
        drive_id: None,
        geometry: GeometryOptions::default(),
        force,
    }
}

/// Creates and formats a `DRIVE_BYTES` file drive named `name` in `dir`.
fn new_drive(dir: &TempDir, name: &str) -> (PathBuf, Superblock) {
    let path = dir.path().join(name);
    let sb = format(&path, &format_options(false), Some(DRIVE_BYTES)).expect("format");
    assert_eq!((sb.cluster_id, sb.node_id), (CLUSTER, NODE));
    (path, sb)
}

fn open_options(engine: EngineKind) -> OpenOptions {
    OpenOptions {
        expect: Expect {
            cluster_id: Some(CLUSTER),
            node_id: Some(NODE),
        },
        engine,
        ..OpenOptions::default()
    }
}

async fn open(path: &Path) -> Store {
    Store::open(path, open_options(EngineKind::IoUring))
        .await
        .expect("open store")
}

fn key(index: u64) -> ChunkKey {
    ChunkKey::new(VolumeId(11), index)
}

fn version(n: u64) -> ChunkVersion {
    ChunkVersion {
        epoch: Epoch(2),
        version: n,
    }
}

/// `len` bytes that never repeat within a drive for distinct seeds (every 8 bytes differ).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    for (i, word) in data.chunks_exact_mut(8).enumerate() {
        let v = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64)).wrapping_add(seed);
        word.copy_from_slice(&v.to_le_bytes());
    }
    data
}

/// What every chunk must hold: bytes, allocated blocks and version.
struct Model {
    chunk_bytes: u32,
    data: HashMap<ChunkKey, Vec<u8>>,
    allocated: HashMap<ChunkKey, BTreeSet<u32>>,
    versions: HashMap<ChunkKey, ChunkVersion>,
}

impl Model {
    fn new(chunk_bytes: u32) -> Self {
        Self {
            chunk_bytes,
            data: HashMap::new(),
            allocated: HashMap::new(),
            versions: HashMap::new(),
        }
    }

    fn write(&mut self, chunk: ChunkKey, offset: u32, bytes: &[u8], v: ChunkVersion) {
        let size = self.chunk_bytes as usize;
        let data = self.data.entry(chunk).or_insert_with(|| vec![0; size]);
        data[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
        let blocks = offset / BLOCK..(offset + bytes.len() as u32).div_ceil(BLOCK);
        self.allocated.entry(chunk).or_default().extend(blocks);
        self.versions.insert(chunk, v);
    }

    /// Whole blocks in the range stop being allocated; partial edge blocks keep their state.
    fn trim(&mut self, chunk: ChunkKey, offset: u32, len: u32, v: ChunkVersion) {
        let Some(data) = self.data.get_mut(&chunk) else {
            return;
        };
        data[offset as usize..(offset + len) as usize].fill(0);
        let allocated = self.allocated.entry(chunk).or_default();
        for block in offset.div_ceil(BLOCK)..(offset + len) / BLOCK {
            allocated.remove(&block);
        }
        self.versions.insert(chunk, v);
    }

    fn delete(&mut self, chunk: ChunkKey) {
        self.data.remove(&chunk);
        self.allocated.remove(&chunk);
        self.versions.remove(&chunk);
    }

    fn bytes(&self, chunk: ChunkKey, offset: u32, len: u32) -> Vec<u8> {
        let range = offset as usize..(offset + len) as usize;
        self.data
            .get(&chunk)
            .map_or_else(|| vec![0; len as usize], |d| d[range].to_vec())
    }

    fn allocated_bytes(&self) -> u64 {
        let blocks: usize = self.allocated.values().map(BTreeSet::len).sum();
        blocks as u64 * u64::from(BLOCK)
    }

    /// Block status of a whole chunk, merged into runs.
    fn extents(&self, chunk: ChunkKey) -> Vec<Extent> {
        let allocated = self.allocated.get(&chunk);
        let mut extents: Vec<Extent> = Vec::new();
        for block in 0..self.chunk_bytes / BLOCK {
            let is = allocated.is_some_and(|a| a.contains(&block));
            match extents.last_mut() {
                Some(e) if e.allocated == is => e.len += BLOCK,
                _ => extents.push(Extent {
                    offset: block * BLOCK,
                    len: BLOCK,
                    allocated: is,
                }),
            }
        }
        extents
    }
}

/// Reads every chunk in the model (and one never written) in full and compares everything the
/// store reports about it.
async fn check_all(store: &Store, model: &Model) {
    let chunk_bytes = model.chunk_bytes;
    let mut chunks: Vec<ChunkKey> = model.data.keys().copied().collect();
    chunks.push(key(999));
    for chunk in chunks {
        let data = store.read(chunk, 0, chunk_bytes).await.expect("read chunk");
        let expected = model.bytes(chunk, 0, chunk_bytes);
        assert!(data[..] == expected[..], "chunk {chunk} differs from model");
        let status = store
            .block_status(chunk, 0, chunk_bytes)
            .await
            .expect("status");
        assert_eq!(status, model.extents(chunk), "block status of {chunk}");
        let v = store.chunk_version(chunk).await.expect("version");
        assert_eq!(v, model.versions.get(&chunk).copied(), "version of {chunk}");
    }
    let listed = store.list_chunks().await.expect("list chunks");
    let mut expected: Vec<(ChunkKey, ChunkVersion, u32)> = model
        .versions
        .iter()
        .map(|(k, v)| (*k, *v, model.allocated.get(k).map_or(0, |a| a.len() as u32)))
        .collect();
    expected.sort();
    let listed: Vec<_> = listed
        .iter()
        .map(|c| (c.chunk, c.version, c.allocated_blocks))
        .collect();
    assert_eq!(listed, expected, "list_chunks");
    settled_allocated_bytes(store, model.allocated_bytes()).await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.chunk_count, expected.len() as u64, "{stats:?}");
    assert_eq!(stats.checksum_errors, 0, "{stats:?}");
}

/// `allocated_bytes` once blocks replaced by acknowledged requests have been released: freed
/// blocks count until their reuse is safe (see `StoreStats::allocated_bytes`), which may be a
/// moment after the acknowledgement. Fails if it does not reach `expected` within a second.
async fn settled_allocated_bytes(store: &Store, expected: u64) -> u64 {
    const ATTEMPTS: u32 = 100;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        store.flush().await.expect("flush");
        let stats = store.stats().await.expect("stats");
        if stats.allocated_bytes == expected {
            return expected;
        }
        last = Some(stats);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("allocated_bytes never reached {expected}: {last:?}");
}

/// Writes, then reads back the written range and a margin around it.
async fn write_and_check(
    store: &Store,
    model: &mut Model,
    (chunk, offset, len): (ChunkKey, u32, u32),
    seed: u64,
) {
    let v = version(seed);
    let data = pattern(seed, len as usize);
    store
        .write(chunk, offset, Bytes::from(data.clone()), v)
        .await
        .unwrap_or_else(|e| panic!("write {chunk} {offset}+{len}: {e}"));
    model.write(chunk, offset, &data, v);
    let read = store.read(chunk, offset, len).await.expect("read back");
    assert!(read[..] == data[..], "read back {chunk} {offset}+{len}");
    let from = offset.saturating_sub(2 * BLOCK);
    let to = (offset + len + 2 * BLOCK).min(model.chunk_bytes);
    let around = store
        .read(chunk, from, to - from)
        .await
        .expect("read around");
    assert!(
        around[..] == model.bytes(chunk, from, to - from)[..],
        "neighbourhood of {chunk} {offset}+{len}"
    );
}

/// Writes of many shapes: aligned, sub-block, crossing blocks, large (redirected) and up to the
/// chunk's end.
async fn write_phase(store: &Store, model: &mut Model) {
    let end = model.chunk_bytes;
    let (a, b) = (key(1), key(2));
    let cases = [
        (a, 0, BLOCK),
        (a, 512, 512),
        (a, 5 * BLOCK + 1024, 3 * 512),
        (a, 7 * BLOCK - 512, BLOCK),
        (a, 16 * BLOCK + 512, 200 * 1024),
        (a, end - 2 * BLOCK, 2 * BLOCK),
        (a, end - 512, 512),
        (b, 0, end),
        (b, MIB as u32, 64 * 1024),
        (b, MIB as u32 + 512, 64 * 1024 + 1024),
    ];
    for (seed, case) in (1..).zip(cases) {
        write_and_check(store, model, case, seed).await;
    }
    // Never-written ranges read as zeroes and report holes.
    let zeroes = store
        .read(a, 100 * BLOCK, 8 * BLOCK)
        .await
        .expect("read hole");
    assert!(zeroes.iter().all(|&x| x == 0));
    let extents = store
        .block_status(key(3), 512, BLOCK)
        .await
        .expect("status");
    let hole = Extent {
        offset: 512,
        len: BLOCK,
        allocated: false,
    };
    assert_eq!(extents, vec![hole]);
    assert_eq!(store.chunk_version(key(3)).await.expect("version"), None);
    check_all(store, model).await;
}

/// Trim and write-zeroes release whole blocks and zero partial ones.
async fn trim_phase(store: &Store, model: &mut Model) {
    let (a, b) = (key(1), key(2));
    let cases = [
        (b, 0, 2 * MIB as u32, false),
        (a, 16 * BLOCK, 64 * BLOCK, true),
        (a, 512, 1024, false),
        (a, 5 * BLOCK + 512, BLOCK, true),
        (b, 3 * MIB as u32 + 512, 5 * BLOCK, false),
    ];
    for (n, (chunk, offset, len, zeroes)) in (100..).zip(cases) {
        let before = settled_allocated_bytes(store, model.allocated_bytes()).await;
        let v = version(n);
        let result = if zeroes {
            store.write_zeroes(chunk, offset, len, v).await
        } else {
            store.trim(chunk, offset, len, v).await
        };
        result.unwrap_or_else(|e| panic!("trim {chunk} {offset}+{len}: {e}"));
        model.trim(chunk, offset, len, v);
        let read = store.read(chunk, offset, len).await.expect("read trimmed");
        assert!(
            read.iter().all(|&x| x == 0),
            "{chunk} {offset}+{len} not zero"
        );
        let after = settled_allocated_bytes(store, model.allocated_bytes()).await;
        if len >= 2 * BLOCK {
            assert!(after < before, "trim freed nothing: {before} -> {after}");
        }
    }
    check_all(store, model).await;
}

/// list_chunks, chunk_version and delete_chunk.
async fn chunk_phase(store: &Store, model: &mut Model) {
    let (b, c) = (key(2), key(4));
    write_and_check(store, model, (c, BLOCK, BLOCK), 200).await;
    assert_eq!(store.list_chunks().await.expect("list").len(), 3);
    let before = settled_allocated_bytes(store, model.allocated_bytes()).await;
    store.delete_chunk(b).await.expect("delete");
    model.delete(b);
    assert_eq!(store.chunk_version(b).await.expect("version"), None);
    let after = settled_allocated_bytes(store, model.allocated_bytes()).await;
    assert!(after < before, "delete freed nothing: {before} -> {after}");
    // Deleting a chunk this drive does not hold is not an error.
    store.delete_chunk(key(77)).await.expect("delete absent");
    store.flush().await.expect("flush");
    check_all(store, model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_through_io_uring_and_reopen() {
    let _no_spawns = SPAWN_GUARD.read().await;
    let dir = scratch();
    let (path, sb) = new_drive(&dir, "drive.img");
    let store = open(&path).await;
    assert_eq!(store.superblock().drive_id, sb.drive_id);
    let mut model = Model::new(store.chunk_size_bytes());
    let empty = store.stats().await.expect("stats");
    assert_eq!((empty.allocated_bytes, empty.chunk_count), (0, 0));
    write_phase(&store, &mut model).await;
    trim_phase(&store, &mut model).await;
    chunk_phase(&store, &mut model).await;
    store.close().await.expect("close");

    let store = open(&path).await;
    let report = store.recovery_report();
    assert_eq!(
        report.records_applied, 0,
        "clean close left work: {report:?}"
    );
    assert_eq!(report.chunks, model.versions.len() as u64, "{report:?}");
    check_all(&store, &model).await;
    // Keep writing after the reopen, then check again with the other engine.
    write_and_check(&store, &mut model, (key(1), 300 * BLOCK, 3 * BLOCK), 300).await;
    store.close().await.expect("close");
    let store = Store::open(&path, open_options(EngineKind::Blocking))
        .await
        .expect("open with blocking engine");
    check_all(&store, &model).await;
    store.close().await.expect("close");
}

/// Offset of the only data block of `path` holding `needle`.
fn find_block(path: &Path, sb: &Superblock, needle: &[u8]) -> u64 {
    let file = std::fs::File::open(path).expect("open drive file");
    let g = sb.geometry;
    let mut found = Vec::new();
    let mut buf = vec![0u8; MIB as usize];
    let end = g.data_offset + g.data_blocks * u64::from(BLOCK);
    let mut at = g.data_offset;
    while at < end {
        let len = (end - at).min(MIB) as usize;
        file.read_exact_at(&mut buf[..len], at)
            .expect("read drive file");
        for (i, block) in buf[..len].chunks_exact(BLOCK as usize).enumerate() {
            if block == needle {
                found.push(at + (i as u64) * u64::from(BLOCK));
            }
        }
        at += len as u64;
    }
    assert_eq!(found.len(), 1, "pattern found at {found:?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_block_is_reported_not_returned() {
    let _no_spawns = SPAWN_GUARD.read().await;
    const BLOCKS: u32 = 8;
    const DAMAGED: u32 = 5;
    let dir = scratch();
    let (path, sb) = new_drive(&dir, "drive.img");
    let (small, large) = (key(1), key(2));
    let store = open(&path).await;
    // One journaled write and one redirected write.
    let data = pattern(42, (BLOCKS * BLOCK) as usize);
    let big = pattern(43, 64 * BLOCK as usize);
    store
        .write(small, 0, Bytes::from(data.clone()), version(1))
        .await
        .expect("write");
    store
        .write(large, 0, Bytes::from(big.clone()), version(1))
        .await
        .expect("write");
    store.close().await.expect("close");

    let block = |d: &[u8], i: u32| d[(i * BLOCK) as usize..((i + 1) * BLOCK) as usize].to_vec();
    let at = find_block(&path, &sb, &block(&data, DAMAGED));
    let file = FsOpenOptions::new().write(true).open(&path).expect("open");
    file.write_all_at(&[0xde, 0xad, 0xbe, 0xef], at + 1000)
        .expect("damage");
    file.sync_all().expect("sync");
    drop(file);

    let store = open(&path).await;
    let is_damaged = |r: Result<Bytes, StoreError>| match r {
        Err(StoreError::Corrupt { chunk, block }) => chunk == small && block == DAMAGED,
        other => panic!("expected Corrupt in block {DAMAGED}, got {other:?}"),
    };
    assert!(is_damaged(store.read(small, 0, BLOCKS * BLOCK).await));
    assert!(is_damaged(store.read(small, DAMAGED * BLOCK, BLOCK).await));
    assert!(is_damaged(
        store.read(small, DAMAGED * BLOCK + 512, 512).await
    ));
    for i in (0..BLOCKS).filter(|&i| i != DAMAGED) {
        let read = store.read(small, i * BLOCK, BLOCK).await.expect("intact");
        assert!(read[..] == block(&data, i)[..], "block {i}");
    }
    let read = store.read(large, 0, 64 * BLOCK).await.expect("other chunk");
    assert!(read[..] == big[..]);
    assert!(store.stats().await.expect("stats").checksum_errors >= 3);
    // A partial write needs the damaged block's old bytes, so it must fail rather than merge.
    let partial = store.write(
        small,
        DAMAGED * BLOCK,
        Bytes::from(vec![1u8; 512]),
        version(2),
    );
    assert!(matches!(partial.await, Err(StoreError::Corrupt { .. })));
    // A whole-block overwrite (what repair from a peer does) replaces it.
    let fresh = pattern(44, BLOCK as usize);
    let repair = store.write(
        small,
        DAMAGED * BLOCK,
        Bytes::from(fresh.clone()),
        version(3),
    );
    repair.await.expect("repair write");
    let read = store
        .read(small, 0, BLOCKS * BLOCK)
        .await
        .expect("after repair");
    assert!(read[(DAMAGED * BLOCK) as usize..][..BLOCK as usize] == fresh[..]);
    store.close().await.expect("close");
}

fn assert_caller_fault(result: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    let ok = match what {
        "zero" => matches!(result, Err(StoreError::ZeroLength)),
        "misaligned" => matches!(result, Err(StoreError::Misaligned { .. })),
        "range" => matches!(result, Err(StoreError::OutOfRange { .. })),
        _ => false,
    };
    assert!(ok, "expected {what} error, got {result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_the_store_keeps_serving() {
    let _no_spawns = SPAWN_GUARD.read().await;
    let dir = scratch();
    let (path, _) = new_drive(&dir, "drive.img");
    let store = open(&path).await;
    let end = store.chunk_size_bytes();
    let c = key(1);
    let data = |len: usize| Bytes::from(pattern(7, len));
    store
        .write(c, 0, data(BLOCK as usize), version(1))
        .await
        .expect("write");
    let v = version(2);

    assert_caller_fault(store.write(c, 0, Bytes::new(), v).await, "zero");
    assert_caller_fault(store.read(c, 0, 0).await, "zero");
    assert_caller_fault(store.trim(c, 0, 0, v).await, "zero");
    assert_caller_fault(store.block_status(c, 0, 0).await, "zero");
    assert_caller_fault(store.write(c, 100, data(512), v).await, "misaligned");
    assert_caller_fault(store.write(c, 0, data(1000), v).await, "misaligned");
    assert_caller_fault(store.read(c, 512, 100).await, "misaligned");
    assert_caller_fault(store.read(c, 1, 512).await, "misaligned");
    assert_caller_fault(store.trim(c, 256, 512, v).await, "misaligned");
    assert_caller_fault(store.write(c, end - 512, data(1024), v).await, "range");
    assert_caller_fault(store.write(c, end, data(512), v).await, "range");
    assert_caller_fault(store.read(c, end - 4096, 8192).await, "range");
    assert_caller_fault(store.read(c, u32::MAX - 511, 512).await, "range");
    assert_caller_fault(store.trim(c, 0, end + 512, v).await, "range");
    assert_caller_fault(store.write_zeroes(c, end, 512, v).await, "range");
    assert_caller_fault(store.block_status(c, end - 512, 1024).await, "range");

    // Nothing changed, and the store still serves.
    assert_eq!(
        store.chunk_version(c).await.expect("version"),
        Some(version(1))
    );
    let read = store.read(c, 0, BLOCK).await.expect("read");
    assert!(read[..] == pattern(7, BLOCK as usize)[..]);
    store
        .write(c, end - 512, data(512), v)
        .await
        .expect("write at the end");
    store.close().await.expect("close");
}

async fn open_error(path: &Path, expect: Expect) -> OpenError {
    let opts = OpenOptions {
        expect,
        busy_wait: std::time::Duration::from_millis(300),
        ..OpenOptions::default()
    };
    match Store::open(path, opts).await {
        Ok(store) => panic!("open of {} succeeded: {store:?}", path.display()),
        Err(e) => e,
    }
}

fn expect_ours() -> Expect {
    open_options(EngineKind::IoUring).expect
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_refuses_truncated_garbage_and_foreign_drives() {
    let _no_spawns = SPAWN_GUARD.read().await;
    let dir = scratch();
    let (path, _) = new_drive(&dir, "truncated.img");
    let file = FsOpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(DRIVE_BYTES / 2).expect("truncate");
    drop(file);
    match open_error(&path, expect_ours()).await {
        OpenError::Truncated { actual, formatted } => {
            assert_eq!((actual, formatted), (DRIVE_BYTES / 2, DRIVE_BYTES));
        }
        e => panic!("expected Truncated, got {e:?}"),
    }

    let (path, _) = new_drive(&dir, "garbage.img");
    let file = FsOpenOptions::new().write(true).open(&path).expect("open");
    file.write_all_at(&pattern(9, 2 * BLOCK as usize), 0)
        .expect("garbage");
    drop(file);
    let e = open_error(&path, expect_ours()).await;
    assert!(matches!(e, OpenError::NotFormatted(_)), "{e:?}");

    let (path, _) = new_drive(&dir, "foreign.img");
    let other = ClusterId(uuid::Uuid::from_u128(0xfeed));
    let e = open_error(
        &path,
        Expect {
            cluster_id: Some(other),
            node_id: Some(NODE),
        },
    )
    .await;
    assert!(matches!(e, OpenError::WrongCluster { .. }), "{e:?}");
    let message = e.to_string();
    assert!(message.contains(&CLUSTER.to_string()), "{message}");
    assert!(message.contains(&other.to_string()), "{message}");
    let wrong_node = Expect {
        cluster_id: Some(CLUSTER),
        node_id: Some(NodeId(4)),
    };
    let e = open_error(&path, wrong_node).await;
    assert!(matches!(e, OpenError::WrongNode { .. }), "{e:?}");
    let message = e.to_string();
    let (ours, theirs) = (NODE.to_string(), NodeId(4).to_string());
    assert!(
        message.contains(&ours) && message.contains(&theirs),
        "{message}"
    );
    // Expecting nothing accepts any identity.
    let store = Store::open(&path, OpenOptions::default())
        .await
        .expect("open");
    store.close().await.expect("close");
}

/// Rewrites the version field of both superblock copies and fixes their checksums.
fn set_format_version(path: &Path, version: u32) {
    const VERSION_OFFSET: usize = 8;
    // `SuperblockRaw` is 184 bytes; the crc field is 8 bytes before its end.
    const RAW_BYTES: usize = 184;
    const CRC_OFFSET: usize = RAW_BYTES - 8;
    let file = FsOpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    for copy in 0..2u64 {
        let mut block = vec![0u8; BLOCK as usize];
        let at = copy * u64::from(BLOCK);
        file.read_exact_at(&mut block, at).expect("read superblock");
        Superblock::decode(&block).expect("valid superblock before patching");
        block[VERSION_OFFSET..VERSION_OFFSET + 4].copy_from_slice(&version.to_le_bytes());
        block[CRC_OFFSET..CRC_OFFSET + 4].fill(0);
        let crc = crc32c::crc32c(&block[..RAW_BYTES]);
        block[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        file.write_all_at(&block, at).expect("write superblock");
    }
    file.sync_all().expect("sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_refuses_newer_format_and_a_drive_in_use() {
    let _no_spawns = SPAWN_GUARD.read().await;
    let dir = scratch();
    let (path, _) = new_drive(&dir, "newer.img");
    // Patching back to the current version must give a drive that opens: proves the patch only
    // touches the version.
    set_format_version(&path, FORMAT_VERSION);
    open(&path).await.close().await.expect("close");
    set_format_version(&path, FORMAT_VERSION + 1);
    match open_error(&path, expect_ours()).await {
        OpenError::UnsupportedVersion { found, supported } => {
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
        }
        e => panic!("expected UnsupportedVersion, got {e:?}"),
    }

    let (path, _) = new_drive(&dir, "busy.img");
    let store = open(&path).await;
    let e = open_error(&path, expect_ours()).await;
    assert!(
        matches!(e, OpenError::Device(DeviceError::Busy { .. })),
        "{e:?}"
    );
    // Formatting a drive in use is refused even with force.
    let e = format(&path, &format_options(true), None).expect_err("format while open");
    assert!(
        matches!(e, FormatDriveError::Device(DeviceError::Busy { .. })),
        "{e:?}"
    );
    store.close().await.expect("close");
    open(&path).await.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_refuses_a_formatted_drive_without_force() {
    let _no_spawns = SPAWN_GUARD.read().await;
    let dir = scratch();
    let (path, first) = new_drive(&dir, "drive.img");
    let store = open(&path).await;
    store
        .write(
            key(1),
            0,
            Bytes::from(pattern(1, BLOCK as usize)),
            version(1),
        )
        .await
        .expect("write");
    store.close().await.expect("close");

    let e = format(&path, &format_options(false), None).expect_err("second format");
    assert!(
        matches!(e, FormatDriveError::Mkfs(MkfsError::AlreadyFormatted(_))),
        "{e:?}"
    );
    assert!(e.to_string().contains("--force"), "{e}");
    // Refusing changed nothing.
    let store = open(&path).await;
    assert_eq!(store.superblock().drive_id, first.drive_id);
    assert_eq!(store.list_chunks().await.expect("list").len(), 1);
    store.close().await.expect("close");

    let second = format(&path, &format_options(true), None).expect("forced format");
    assert_ne!(second.format_nonce, first.format_nonce);
    let store = open(&path).await;
    assert_eq!(store.superblock().drive_id, second.drive_id);
    assert!(store.list_chunks().await.expect("list").is_empty());
    store.close().await.expect("close");
}

fn blockd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blockd"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run blockd")
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn cli_format_and_inspect() {
    let _alone = SPAWN_GUARD.blocking_write();
    let dir = scratch();
    let help = blockd(&["format", "--help"]);
    assert!(help.status.success(), "{}", text(&help));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--force"));

    let drive = dir.path().join("cli.img");
    let drive = drive.to_str().expect("utf-8 path");
    let cluster = CLUSTER.0.to_string();
    let base = [
        "format",
        "--drive",
        drive,
        "--cluster-id",
        &cluster,
        "--node-id",
        "3",
    ];
    let made = blockd(&[&base[..], &["--size", "64MiB"]].concat());
    assert!(made.status.success(), "{}", text(&made));
    assert!(
        String::from_utf8_lossy(&made.stdout).contains(&cluster),
        "{}",
        text(&made)
    );

    let again = blockd(&base);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--force"),
        "{}",
        text(&again)
    );

    let inspect = blockd(&["inspect", "--drive", drive]);
    assert!(inspect.status.success(), "{}", text(&inspect));
    assert!(
        String::from_utf8_lossy(&inspect.stdout).contains(&cluster),
        "{}",
        text(&inspect)
    );

    let other = uuid::Uuid::from_u128(0xfeed).to_string();
    let wrong = blockd(&["inspect", "--drive", drive, "--cluster-id", &other]);
    assert!(!wrong.status.success(), "{}", text(&wrong));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains(&other) && stderr.contains(&cluster),
        "{}",
        text(&wrong)
    );

    let forced = blockd(&[&base[..], &["--force"]].concat());
    assert!(forced.status.success(), "{}", text(&forced));
    let missing = dir.path().join("missing.img");
    let missing = missing.to_str().expect("utf-8 path");
    let absent = blockd(&[
        "format",
        "--drive",
        missing,
        "--cluster-id",
        &cluster,
        "--node-id",
        "3",
    ]);
    assert!(!absent.status.success(), "{}", text(&absent));
}

/// A drive that held other data before `format` still has every chunk slot usable: format
/// clears the slot area, so old bytes there are not mistaken for damaged slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_over_old_data_leaves_every_slot_usable() {
    let dir = scratch();
    let path = dir.path().join("reused.img");
    std::fs::write(&path, vec![0xa5u8; DRIVE_BYTES as usize]).expect("old contents");
    let sb = format(&path, &format_options(false), None).expect("format over old data");
    let store = open(&path).await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.corrupt_slots, 0);
    let chunks = u64::from(sb.geometry.slot_count).min(32);
    for index in 0..chunks {
        let data = bytes::Bytes::from(pattern(index, BLOCK as usize));
        store
            .write(key(index), 0, data, version(1))
            .await
            .expect("write to a new chunk");
    }
    store.close().await.expect("close");
}
