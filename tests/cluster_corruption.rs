//! Corruption test (issue 5, "repair from checksums"): blocks of one member's drive file are
//! damaged while it is stopped; afterwards reads through NBD return the right data (the
//! primary answers from another member and rewrites its copy), a scrub finds and repairs every
//! remaining bad copy, the figures add up to the number of damaged blocks, and a second scrub
//! finds nothing.
//!
//! Multi-process, 3 nodes on 127.0.67.x, `nbdcopy` as the client (`libnbd-bin`).

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use basalt::api::client::Client;
use basalt::api::{ClusterStatus, ScrubStatus, VolumeCreateRequest, VolumeView};
use basalt::ids::{ChunkKey, VolumeId};
use basalt::size::Size;
use blockd::store::{OpenOptions, Store};
use common::{ADMIN_TOKEN, ClusterSpec, TestCluster, wait_for};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;
const CHUNK: u64 = 4 * MIB;
/// The volume: 16 chunks.
const VOLUME_BYTES: u64 = 64 * MIB;
/// Every block starts with this tag and its index, so it can be found in a drive file.
const TAG: &[u8; 8] = b"SCRUBTST";
/// The damaged member.
const VICTIM: u8 = 3;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SCRUB_TIMEOUT: Duration = Duration::from_secs(120);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn api(cluster: &TestCluster, n: u8) -> Client {
    Client::new(
        &cluster.api_url(n),
        Some(ADMIN_TOKEN.into()),
        Duration::from_secs(10),
    )
    .expect("API client")
}

fn status(cluster: &TestCluster, n: u8) -> Option<ClusterStatus> {
    runtime().block_on(api(cluster, n).cluster_status()).ok()
}

/// Waits until node `n` sees a leader, 3 nodes up and every PG active.
fn wait_healthy(cluster: &TestCluster, n: u8) {
    wait_for(READY_TIMEOUT, || {
        status(cluster, n).filter(|s| {
            s.leader.is_some() && s.nodes.up == 3 && s.pgs.degraded == 0 && s.pgs.inactive == 0
        })
    })
    .unwrap_or_else(|| panic!("cluster not healthy\n{}", cluster.logs()));
}

fn create_volume(cluster: &TestCluster, name: &str, size: u64) -> VolumeView {
    let rt = runtime();
    let client = api(cluster, 1);
    let request = VolumeCreateRequest {
        name: name.into(),
        size: Size(size),
        replicas: None,
    };
    let mut last = String::new();
    wait_for(READY_TIMEOUT, || {
        match rt.block_on(client.create_volume(&request, Some(name))) {
            Ok(view) => Some(view),
            Err(e) => {
                last = e.to_string();
                std::thread::sleep(Duration::from_millis(400));
                None
            }
        }
    })
    .unwrap_or_else(|| panic!("create volume {name}: {last}\n{}", cluster.logs()))
}

/// Runs a client that must succeed within [`CLIENT_TIMEOUT`].
fn run(cluster: &TestCluster, program: &str, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let mut stderr = child.stderr.take().expect("stderr pipe");
    let drain = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for client") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} timed out\n{}", cluster.logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = drain.join().unwrap_or_default();
    assert!(
        status.success(),
        "{program} {args:?} failed ({status}):\n{}\n{}",
        String::from_utf8_lossy(&stderr),
        cluster.logs()
    );
    Output {
        status,
        stdout: Vec::new(),
        stderr,
    }
}

/// The content of block `index` in generation `generation` (a soak round rewrites the volume
/// with the next one): the tag, the index, the generation, then pseudo-random bytes from both.
fn block_content(generation: u64, index: u64) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK as usize];
    block[..8].copy_from_slice(TAG);
    block[8..16].copy_from_slice(&index.to_le_bytes());
    block[16..24].copy_from_slice(&generation.to_le_bytes());
    let mut state = (index ^ generation.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in block[24..].chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
    block
}

fn write_input(path: &Path, generation: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create input"));
    for index in 0..VOLUME_BYTES / BLOCK {
        file.write_all(&block_content(generation, index))
            .expect("write input");
    }
    file.flush().expect("flush input");
}

/// Offsets in `drive` of the 4 KiB-aligned copies of each block in `wanted` (generation
/// `generation`).
fn locate(drive: &Path, generation: u64, wanted: &[u64]) -> Vec<(u64, Vec<u64>)> {
    let mut found: Vec<(u64, Vec<u64>)> = wanted.iter().map(|i| (*i, Vec::new())).collect();
    let mut file = std::fs::File::open(drive).expect("open drive");
    let mut buf = vec![0u8; MIB as usize];
    let mut base = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..]).expect("read drive");
            if n == 0 {
                break;
            }
            filled += n;
        }
        for (i, block) in buf[..filled].chunks_exact(BLOCK as usize).enumerate() {
            if &block[..8] != TAG {
                continue;
            }
            let index = u64::from_le_bytes(block[8..16].try_into().expect("8 bytes"));
            if let Some((_, offsets)) = found.iter_mut().find(|(w, _)| *w == index)
                && block == block_content(generation, index).as_slice()
            {
                offsets.push(base + i as u64 * BLOCK);
            }
        }
        if filled < buf.len() {
            return found;
        }
        base += filled as u64;
    }
}

fn scrub_status(cluster: &TestCluster, n: u8) -> ScrubStatus {
    runtime()
        .block_on(api(cluster, n).scrub_status())
        .unwrap_or_else(|e| panic!("scrub status of node {n}: {e}"))
}

/// Starts a pass on every node and waits until each completed one more; returns the last
/// pass's figures of each node.
fn scrub_all(cluster: &TestCluster) -> Vec<ScrubStatus> {
    let before: Vec<u64> = (1..=3).map(|n| scrub_status(cluster, n).passes).collect();
    for n in 1..=3 {
        let started = runtime()
            .block_on(api(cluster, n).scrub_start())
            .unwrap_or_else(|e| panic!("start scrub on node {n}: {e}"));
        assert!(started.started, "node {n} was already scrubbing");
    }
    (1..=3u8)
        .map(|n| {
            wait_for(SCRUB_TIMEOUT, || {
                let status = scrub_status(cluster, n);
                (status.passes > before[usize::from(n) - 1] && !status.running).then_some(status)
            })
            .unwrap_or_else(|| panic!("node {n} did not finish a scrub\n{}", cluster.logs()))
        })
        .collect()
}

/// Flips a byte in the only copy of each block of `wanted` (generation `generation`) in
/// `drive`; returns how many.
fn corrupt(drive: &Path, generation: u64, wanted: &[u64]) -> u64 {
    let located = locate(drive, generation, wanted);
    {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(drive)
            .expect("open drive for writing");
        for (index, offsets) in &located {
            assert_eq!(
                offsets.len(),
                1,
                "block {index} should have exactly one copy on the drive"
            );
            let at = offsets[0] + 100;
            let mut byte = [0u8; 1];
            file.seek(SeekFrom::Start(at)).expect("seek");
            file.read_exact(&mut byte).expect("read byte");
            byte[0] ^= 0xff;
            file.seek(SeekFrom::Start(at)).expect("seek");
            file.write_all(&byte).expect("flip byte");
        }
        file.sync_all().expect("sync drive");
    }
    located.len() as u64
}

/// Opens `drive` (its node stopped) and checks every chunk of `volume` reads back as `expected`.
fn assert_store_whole(drive: &Path, volume: VolumeId, expected: &[u8]) {
    let rt = runtime();
    rt.block_on(async {
        let store = Store::open(drive, OpenOptions::default())
            .await
            .expect("open the damaged drive");
        for index in 0..VOLUME_BYTES / CHUNK {
            let chunk = ChunkKey::new(volume, index);
            let bytes = store
                .read(chunk, 0, store.chunk_size_bytes())
                .await
                .unwrap_or_else(|e| panic!("chunk {index} on the damaged node: {e}"));
            let at = (index * CHUNK) as usize;
            assert!(
                bytes[..] == expected[at..at + CHUNK as usize],
                "chunk {index} on the damaged node differs"
            );
        }
        store.close().await.expect("close store");
    });
}

/// Blocks rewritten by read repair so far, summed over the nodes.
fn read_repairs(cluster: &TestCluster) -> u64 {
    (1..=3).map(|n| scrub_status(cluster, n).read_repairs).sum()
}

/// The first scrub's findings plus the read repairs since `repairs_before` are the damaged
/// blocks, all repaired, every chunk compared once.
fn check_first_scrub(
    cluster: &TestCluster,
    first: &[ScrubStatus],
    corrupted: u64,
    repairs_before: u64,
) {
    let read_repairs = read_repairs(cluster) - repairs_before;
    let figures: Vec<_> = first
        .iter()
        .map(|s| s.last_pass.as_ref().expect("a last pass").figures)
        .collect();
    let errors: u64 = figures.iter().map(|f| f.errors).sum();
    let repairs: u64 = figures.iter().map(|f| f.repairs).sum();
    let unrepaired: u64 = figures.iter().map(|f| f.unrepaired).sum();
    let chunks: u64 = figures.iter().map(|f| f.chunks).sum();
    eprintln!(
        "damaged {corrupted}, read repairs {read_repairs}, scrub errors {errors}, repairs {repairs}"
    );
    assert_eq!(
        read_repairs + errors,
        corrupted,
        "read repairs and scrub findings add up to the damaged blocks: {first:?}"
    );
    assert_eq!(repairs, errors, "every finding repaired: {first:?}");
    assert_eq!(unrepaired, 0, "{first:?}");
    assert_eq!(
        chunks,
        VOLUME_BYTES / CHUNK,
        "every chunk scrubbed once: {first:?}"
    );
}

/// A corruption test's cluster on 127.0.`net`.x with its volume; returns the cluster and the
/// volume.
fn corruption_cluster(net: u8) -> (TestCluster, VolumeView) {
    let cluster = TestCluster::start(&ClusterSpec::new(net, 3));
    wait_healthy(&cluster, 1);
    let volume = create_volume(&cluster, "scrub", VOLUME_BYTES);
    let exported = wait_for(READY_TIMEOUT, || {
        let ok = Command::new("nbdinfo")
            .arg(uri(&cluster, 1))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(())
    });
    assert!(
        exported.is_some(),
        "export never appeared\n{}",
        cluster.logs()
    );
    (cluster, volume)
}

fn uri(cluster: &TestCluster, n: u8) -> String {
    format!("nbd://{}/scrub", cluster.nbd_addr(n))
}

fn path_str(path: &Path) -> String {
    path.to_str().expect("UTF-8 path").to_owned()
}

/// What one round did.
struct Round {
    /// Blocks damaged.
    corrupted: u64,
    /// Of them, rewritten by read repair while the volume was read back.
    read_repaired: u64,
    /// The content written (the volume's image).
    expected: Vec<u8>,
}

/// One round: writes generation `generation` of the volume through `writer`, stops `victim`,
/// flips a byte in each of `wanted` blocks on its drive, starts it; then (a) every byte reads
/// back right through the victim's gateway, (b) a scrub on every node repairs every damaged
/// block read repair did not, the counts adding up, (c) a second scrub finds nothing.
fn damage_and_repair(
    cluster: &mut TestCluster,
    generation: u64,
    writer: u8,
    victim: u8,
    wanted: &[u64],
) -> Round {
    let input = cluster.dir().join("in.img");
    write_input(&input, generation);
    run(
        cluster,
        "nbdcopy",
        &[&path_str(&input), &uri(cluster, writer)],
    );
    cluster.stop(victim);
    let drive = cluster.nodes[usize::from(victim) - 1].config.drives[0]
        .path
        .clone();
    let corrupted = corrupt(&drive, generation, wanted);
    cluster.start_node(victim);
    wait_healthy(cluster, victim);
    // The counters are per process: the victim's started again at zero.
    let repairs_before = read_repairs(cluster);

    // (a) Every byte reads back right, through the damaged node's gateway.
    let output = cluster.dir().join("out.img");
    run(
        cluster,
        "nbdcopy",
        &[&uri(cluster, victim), &path_str(&output)],
    );
    let (read_back, expected) = (
        std::fs::read(&output).expect("read output"),
        std::fs::read(&input).expect("read input"),
    );
    assert!(
        read_back == expected,
        "data read back differs from what was written (generation {generation})"
    );
    let read_repaired = read_repairs(cluster) - repairs_before;

    // (b) A scrub on every node finds and repairs every damaged block not yet rewritten.
    let first = scrub_all(cluster);
    check_first_scrub(cluster, &first, corrupted, repairs_before);

    // (c) A second pass finds nothing.
    let second = scrub_all(cluster);
    for status in &second {
        let last = status.last_pass.as_ref().expect("a last pass").figures;
        assert_eq!(
            last.errors, 0,
            "second pass of node {}: {status:?}",
            status.node
        );
    }
    Round {
        corrupted,
        read_repaired,
        expected,
    }
}

/// Goal: corrupt blocks on one member's drive file; reads return correct data; scrub finds and
/// repairs every corrupted block; the counts match; a second scrub finds nothing.
#[test]
fn corrupted_blocks_are_read_around_and_repaired() {
    let (mut cluster, volume) = corruption_cluster(67);
    // Three blocks of every chunk, two of them adjacent.
    let wanted: Vec<u64> = (0..VOLUME_BYTES / CHUNK)
        .flat_map(|c| [7, 500, 501].map(|b| c * (CHUNK / BLOCK) + b))
        .collect();
    let round = damage_and_repair(&mut cluster, 0, 1, VICTIM, &wanted);
    assert_eq!(round.corrupted, wanted.len() as u64, "every block found");
    let victim = scrub_status(&cluster, VICTIM);
    assert!(
        victim.reads_repaired > 0 && round.read_repaired > 0,
        "the damaged node led some chunks, so some reads met corrupt blocks: {victim:?}"
    );

    // The damaged node's own copy is whole again.
    cluster.stop(VICTIM);
    let drive = &cluster.nodes[usize::from(VICTIM) - 1].config.drives[0].path;
    assert_store_whole(drive, VolumeId(volume.id), &round.expected);
}

/// Goal (soak mode; the bounded version is the test above): damage again and again, on each
/// node in turn, at pseudo-random blocks (a seeded schedule, printed), with the volume
/// rewritten through another node every round; every round's reads are right and its counts
/// add up; at the end every node's drive holds the last generation whole.
/// `BASALT_SOAK_SECS=600 cargo test -p basalt --test cluster_corruption soak`.
#[test]
fn corruption_soak() {
    let Some(secs) = common::soak_only() else {
        return;
    };
    let (mut cluster, volume) = corruption_cluster(95);
    let mut next = common::seeded_schedule("damage schedule");
    let blocks_per_chunk = CHUNK / BLOCK;
    let started = Instant::now();
    let (mut generation, mut damaged, mut read_repaired) = (0u64, 0u64, 0u64);
    let mut expected = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        let victim = u8::try_from(generation % 3).expect("node") + 1;
        let writer = victim % 3 + 1;
        // 1–4 blocks in each chunk (the last one's neighbour too, when it has one).
        let mut wanted: Vec<u64> = (0..VOLUME_BYTES / CHUNK)
            .flat_map(|c| {
                let count = 1 + next(4);
                let mut blocks: Vec<u64> = (0..count)
                    .map(|_| c * blocks_per_chunk + next(blocks_per_chunk - 1))
                    .collect();
                blocks.push(blocks[blocks.len() - 1] + 1);
                blocks
            })
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let round = damage_and_repair(&mut cluster, generation, writer, victim, &wanted);
        assert_eq!(round.corrupted, wanted.len() as u64, "every block found");
        damaged += round.corrupted;
        read_repaired += round.read_repaired;
        expected = round.expected;
        generation += 1;
        eprintln!(
            "round {generation}: node {victim} damaged at {} blocks, {} read-repaired, the \
             rest scrubbed ({:?})",
            round.corrupted,
            round.read_repaired,
            started.elapsed()
        );
    }
    assert!(generation >= 2, "only {generation} rounds");
    for n in 1..=3 {
        cluster.stop(n);
    }
    for n in 1..=3u8 {
        let drive = &cluster.nodes[usize::from(n) - 1].config.drives[0].path;
        assert_store_whole(drive, VolumeId(volume.id), &expected);
    }
    eprintln!(
        "{generation} rounds: {damaged} blocks damaged, {read_repaired} read-repaired, {} \
         scrub-repaired, 0 wrong",
        damaged - read_repaired
    );
}
