//! Store on a real block device: a loop device (direct I/O) over a file, formatted with the
//! `blockd` CLI and driven through the async API.
//!
//! Needs root and `losetup`. Without them the test fails, naming what is missing, unless
//! `BASALT_SKIP_LOOP=1` is set (CI runs as root and must not skip). The loop device is always
//! detached, also when the test fails.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use basalt::ids::{ChunkKey, ChunkVersion, ClusterId, Epoch, NodeId, VolumeId};
use blockd::store::format::SUPERBLOCK_MAGIC;
use blockd::store::{Expect, OpenOptions, Store};
use bytes::Bytes;

const SKIP_ENV: &str = "BASALT_SKIP_LOOP";
const BACKING_BYTES: u64 = 256 << 20;
const CLUSTER: ClusterId = ClusterId(uuid::Uuid::from_u128(0x100b_de71_ce00));
const NODE: NodeId = NodeId(9);
const SECTOR: u32 = 512;
const BLOCK: u32 = 4096;

/// Why this host cannot run the test, if it cannot.
fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("the loop device test must run as root".into());
    }
    match Command::new("losetup").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Some(format!("`losetup --version` failed: {}", out.status)),
        Err(e) => return Some(format!("`losetup` cannot be run: {e}")),
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control is missing (no loop driver?)".into());
    }
    None
}

/// An attached loop device, detached on drop.
struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    fn attach(backing: &Path) -> Self {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(backing)
            .output()
            .expect("run losetup");
        assert!(out.status.success(), "losetup failed: {}", describe(&out));
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(path.starts_with("/dev/loop"), "losetup printed {path:?}");
        Self { path: path.into() }
    }

    /// `losetup --list` line of this device (shows whether direct I/O is on).
    fn describe(&self) -> String {
        Command::new("losetup")
            .args(["--list", "--output", "NAME,DIO,LOG-SEC,BACK-FILE"])
            .arg(&self.path)
            .output()
            .map_or_else(
                |e| e.to_string(),
                |out| String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            )
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        match Command::new("losetup").arg("-d").arg(&self.path).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("detaching {}: {}", self.path.display(), describe(&out)),
            Err(e) => eprintln!("detaching {}: {e}", self.path.display()),
        }
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn blockd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blockd"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run blockd")
}

fn open_options() -> OpenOptions {
    OpenOptions {
        expect: Expect {
            cluster_id: Some(CLUSTER),
            node_id: Some(NODE),
        },
        ..OpenOptions::default()
    }
}

fn pattern(seed: u64, len: u32) -> Vec<u8> {
    let mut data = vec![0u8; len as usize];
    for (i, word) in data.chunks_exact_mut(8).enumerate() {
        let v = (seed ^ (i as u64)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        word.copy_from_slice(&v.to_le_bytes());
    }
    data
}

/// Requests written: (chunk, offset, len, seed). Later ones overlap earlier ones partly.
fn workload(chunk_bytes: u32) -> Vec<(u64, u32, u32, u64)> {
    let mut ops = Vec::new();
    for chunk in 0..4u64 {
        ops.push((chunk, 0, chunk_bytes / 4, 10 + chunk));
        ops.push((chunk, chunk_bytes / 2, 256 * 1024 + SECTOR, 20 + chunk));
        ops.push((chunk, 3 * BLOCK + SECTOR, 5 * SECTOR, 30 + chunk));
        ops.push((chunk, 8 * BLOCK, 16 * BLOCK, 40 + chunk));
        ops.push((
            chunk,
            chunk_bytes - BLOCK - SECTOR,
            BLOCK + SECTOR,
            50 + chunk,
        ));
    }
    ops
}

fn key(chunk: u64) -> ChunkKey {
    ChunkKey::new(VolumeId(31), chunk)
}

/// Writes the workload and returns the expected content of each chunk.
async fn write_all(store: &Store) -> Vec<Vec<u8>> {
    let chunk_bytes = store.chunk_size_bytes();
    let mut expected = vec![vec![0u8; chunk_bytes as usize]; 4];
    for (n, (chunk, offset, len, seed)) in (1..).zip(workload(chunk_bytes)) {
        let data = pattern(seed, len);
        let version = ChunkVersion {
            epoch: Epoch(1),
            version: n,
        };
        store
            .write(key(chunk), offset, Bytes::from(data.clone()), version)
            .await
            .unwrap_or_else(|e| panic!("write {chunk} {offset}+{len}: {e}"));
        let at = offset as usize;
        expected[chunk as usize][at..at + len as usize].copy_from_slice(&data);
    }
    expected
}

async fn verify(store: &Store, expected: &[Vec<u8>]) {
    for (chunk, want) in (0..).zip(expected) {
        let got = store
            .read(key(chunk), 0, store.chunk_size_bytes())
            .await
            .unwrap_or_else(|e| panic!("read chunk {chunk}: {e}"));
        assert!(got[..] == want[..], "chunk {chunk} differs");
    }
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.chunk_count, expected.len() as u64, "{stats:?}");
    assert_eq!(stats.checksum_errors, 0, "{stats:?}");
}

/// Formats `device` with the CLI; checks that a second format is refused.
fn format_with_cli(device: &str) {
    let cluster = CLUSTER.0.to_string();
    let node = NODE.0.to_string();
    let args = [
        "format",
        "--drive",
        device,
        "--cluster-id",
        &cluster,
        "--node-id",
        &node,
    ];
    let out = blockd(&args);
    assert!(out.status.success(), "format: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&cluster),
        "{}",
        describe(&out)
    );
    let again = blockd(&args);
    assert!(
        !again.status.success(),
        "second format: {}",
        describe(&again)
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("--force"),
        "second format: {}",
        describe(&again)
    );
}

async fn exercise(device: &Path) {
    let name = device.to_str().expect("utf-8 device path");
    format_with_cli(name);
    let store = Store::open(device, open_options())
        .await
        .expect("open loop device");
    let capacity = store.stats().await.expect("stats").capacity_bytes;
    assert!(
        capacity > BACKING_BYTES / 2 && capacity < BACKING_BYTES,
        "{capacity}"
    );
    let expected = write_all(&store).await;
    verify(&store, &expected).await;
    // The drive is in use: even a forced format must be refused.
    let cluster = CLUSTER.0.to_string();
    let forced = [
        "format",
        "--drive",
        name,
        "--cluster-id",
        &cluster,
        "--node-id",
        "9",
        "--force",
    ];
    let out = blockd(&forced);
    assert!(
        !out.status.success(),
        "format of a drive in use: {}",
        describe(&out)
    );
    store.close().await.expect("close");

    let store = Store::open(device, open_options()).await.expect("reopen");
    assert_eq!(store.recovery_report().chunks, 4);
    verify(&store, &expected).await;
    store.close().await.expect("close");
    let inspect = blockd(&["inspect", "--drive", name]);
    assert!(inspect.status.success(), "inspect: {}", describe(&inspect));
    assert!(String::from_utf8_lossy(&inspect.stdout).contains(&cluster));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_device_format_write_reopen() {
    if let Some(reason) = unavailable() {
        if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
            eprintln!("skipping the loop device test ({SKIP_ENV}=1): {reason}");
            return;
        }
        panic!("{reason}; set {SKIP_ENV}=1 to skip this test on such a host");
    }
    let dir = tempfile::Builder::new()
        .prefix("store_loop")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch directory");
    let backing = dir.path().join("backing.img");
    File::create(&backing)
        .and_then(|f| f.set_len(BACKING_BYTES))
        .expect("create backing file");
    {
        let device = LoopDevice::attach(&backing);
        eprintln!("{}", device.describe());
        exercise(&device.path).await;
    }
    // Detached: the store's writes reached the backing file.
    let mut head = [0u8; 8];
    let file = File::open(&backing).expect("open backing file");
    file.read_exact_at(&mut head, 0).expect("read backing file");
    assert_eq!(head, SUPERBLOCK_MAGIC);
}
