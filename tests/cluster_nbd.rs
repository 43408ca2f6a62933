//! Real NBD clients against a 3-node cluster of `blockd` processes (issue 4's tests): every
//! volume is exported by every node through its gateway, 3 replicas, `min_size` 2.
//!
//! The clients (`nbdinfo`, `qemu-io`, `nbdcopy`, `fio`) run as child processes, each bounded
//! by a timeout; the packages come from `scripts/test` (`libnbd-bin`, `qemu-utils`, `fio`).
//! Each test starts its own cluster on 127.0.<net>.1-3 with its own `net`.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use basalt::api::client::Client;
use basalt::api::{ClusterStatus, VolumeCreateRequest, VolumeView};
use basalt::ids::{ChunkKey, VolumeId};
use basalt::size::Size;
use blockd::store::{OpenOptions, Store};
use common::{ADMIN_TOKEN, ClusterSpec, TestCluster, wait_for};
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// The cluster's chunk size (the default).
const CHUNK: u64 = 4 * MIB;
/// Bound on one client run (a 256 MiB copy through debug daemons included).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on a cluster becoming ready, a volume appearing, a map change.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A runtime for the API client and the store (the harness itself is synchronous).
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

/// Node `n`'s view of the cluster, or `None` while its API does not answer.
fn status(cluster: &TestCluster, n: u8) -> Option<ClusterStatus> {
    runtime().block_on(api(cluster, n).cluster_status()).ok()
}

/// Waits until node `n` sees a leader and `up` nodes up; returns that status.
fn wait_ready(cluster: &TestCluster, n: u8, up: u32) -> ClusterStatus {
    wait_for(READY_TIMEOUT, || {
        status(cluster, n).filter(|s| s.leader.is_some() && s.nodes.up == up)
    })
    .unwrap_or_else(|| panic!("cluster not ready with {up} nodes up\n{}", cluster.logs()))
}

/// Creates a volume through node 1's API, retrying while the cluster is still forming.
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

fn uri(cluster: &TestCluster, n: u8, export: &str) -> String {
    format!("nbd://{}/{export}", cluster.nbd_addr(n))
}

/// Waits until `uri` answers `nbdinfo` (the node's view names the volume).
fn wait_export(cluster: &TestCluster, uri: &str) {
    let found = wait_for(READY_TIMEOUT, || {
        let output = run_unchecked("nbdinfo", &["--json", uri], Duration::from_secs(20));
        output.status.success().then_some(())
    });
    assert!(
        found.is_some(),
        "export {uri} never appeared\n{}",
        cluster.logs()
    );
}

/// Runs a client to completion within `timeout` (killed and reported otherwise).
fn run_unchecked(program: &str, args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout pipe")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr pipe")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for client") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{program} {args:?} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Runs a client that must succeed.
fn run(cluster: &TestCluster, program: &str, args: &[&str]) -> Output {
    let output = run_unchecked(program, args, CLIENT_TIMEOUT);
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr),
        cluster.logs()
    );
    output
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json(output: &Output) -> Value {
    let stdout = text(&output.stdout);
    // fio prints notes before its JSON document.
    let start = stdout.find(['{', '[']).unwrap_or(0);
    serde_json::from_str(&stdout[start..])
        .unwrap_or_else(|e| panic!("client printed invalid JSON ({e}):\n{stdout}"))
}

/// `nbdinfo --map` as (offset, length, type) runs, adjacent runs of one type merged; type 0
/// is data, 3 a hole that reads as zeroes.
fn map(cluster: &TestCluster, uri: &str) -> Vec<(u64, u64, u64)> {
    let extents = json(&run(cluster, "nbdinfo", &["--map", "--json", uri]));
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    for e in extents.as_array().expect("map is a JSON array") {
        let field = |name: &str| e[name].as_u64().expect("numeric map field");
        let (offset, length, kind) = (field("offset"), field("length"), field("type"));
        match runs.last_mut() {
            Some(last) if last.2 == kind && last.0 + last.1 == offset => last.1 += length,
            _ => runs.push((offset, length, kind)),
        }
    }
    runs
}

/// Runs `qemu-io` commands on `uri`; every command must succeed.
fn qemu_io(cluster: &TestCluster, commands: &[String], uri: &str) -> String {
    let mut args = vec!["-f", "raw"];
    for command in commands {
        args.extend(["-c", command.as_str()]);
    }
    args.push(uri);
    let output = run(cluster, "qemu-io", &args);
    let out = text(&output.stdout);
    assert!(
        !out.contains("failed") && !out.contains("error"),
        "qemu-io reported a failure:\n{out}\nstderr:\n{}",
        text(&output.stderr)
    );
    out
}

/// fio with the nbd engine on `uri`: a 4 KiB random write job with a crc32c verify pass (or
/// only the verify pass of an earlier identical job). Returns the job's JSON report.
fn fio_verify(cluster: &TestCluster, uri: &str, size: &str, verify_only: bool) -> Value {
    let uri_arg = format!("--uri={uri}");
    let size_arg = format!("--size={size}");
    let mut args = vec![
        "--name=nbdverify",
        "--ioengine=nbd",
        uri_arg.as_str(),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=32",
        size_arg.as_str(),
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--do_verify=1",
        "--output-format=json",
    ];
    if verify_only {
        args.push("--verify_only");
    }
    let report = json(&run(cluster, "fio", &args));
    let job = report["jobs"][0].clone();
    assert_eq!(job["error"], 0, "{job}");
    job
}

/// A file of `len` pseudo-random bytes with a zero run at 16..20 MiB (nbdcopy sends zeroes as
/// WRITE_ZEROES); returns its crc32c.
fn random_file(path: &Path, len: u64) -> u32 {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create input"));
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut crc = 0u32;
    let mut block = vec![0u8; MIB as usize];
    for i in 0..len / MIB {
        if (16..20).contains(&i) {
            block.fill(0);
        } else {
            for word in block.chunks_exact_mut(8) {
                // xorshift64
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
        }
        crc = crc32c::crc32c_append(crc, &block);
        file.write_all(&block).expect("write input");
    }
    file.flush().expect("flush input");
    crc
}

fn file_crc(path: &Path) -> (u64, u32) {
    let mut file = std::fs::File::open(path).expect("open output");
    let (mut len, mut crc) = (0u64, 0u32);
    let mut block = vec![0u8; MIB as usize];
    loop {
        let n = file.read(&mut block).expect("read output");
        if n == 0 {
            return (len, crc);
        }
        len += n as u64;
        crc = crc32c::crc32c_append(crc, &block[..n]);
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// qemu-io writes at 512-byte offsets, one across the chunk 0/1 boundary, one at the end of
/// the volume, and the reads that check them and their untouched neighbours.
fn pattern_commands(volume_bytes: u64) -> (Vec<String>, Vec<String>) {
    let writes = [
        (512, 1024),
        (CHUNK - 1536, 3584),
        (CHUNK + 7 * 4096 + 2560, 512),
        (volume_bytes - 1024, 1024),
    ];
    let mut write = Vec::new();
    let mut read = Vec::new();
    for (i, (offset, length)) in writes.into_iter().enumerate() {
        let pattern = 0x21 + i * 16;
        write.push(format!("write -P {pattern:#x} {offset} {length}"));
        read.push(format!("read -P {pattern:#x} {offset} {length}"));
        read.push(format!("read -P 0 {} 512", offset - 512));
        if offset + length < volume_bytes {
            read.push(format!("read -P 0 {} 512", offset + length));
        }
    }
    (write, read)
}

/// Goal: the export is listed with its size and flags by every node; a fresh volume maps as
/// one hole; 512-byte-aligned writes through node 1 read back through node 2 and map as data
/// (whole 4 KiB blocks); a deleted volume's chunks are swept from every drive; and after a
/// clean stop the three drives hold identical chunks.
#[test]
fn nbdinfo_qemu_io_and_map_across_nodes() {
    let mut cluster = TestCluster::start(&ClusterSpec::new(61, 3));
    wait_ready(&cluster, 1, 3);
    let size = 64 * MIB;
    let volume = create_volume(&cluster, "vol", size);
    let (uri1, uri2) = (uri(&cluster, 1, "vol"), uri(&cluster, 2, "vol"));
    wait_export(&cluster, &uri1);
    wait_export(&cluster, &uri2);

    let info = json(&run(&cluster, "nbdinfo", &["--json", &uri1]));
    assert_eq!(info["protocol"], "newstyle-fixed");
    let export = &info["exports"][0];
    assert_eq!(export["export-name"], "vol");
    assert_eq!(export["export-size"], size);
    for flag in [
        "can_multi_conn",
        "can_trim",
        "can_fua",
        "can_flush",
        "can_zero",
        "can_fast_zero",
        "can_df",
    ] {
        assert_eq!(export[flag], true, "{flag} in {export}");
    }
    assert_eq!(export["is_read_only"], false);
    let list = json(&run(
        &cluster,
        "nbdinfo",
        &["--list", "--json", &uri(&cluster, 2, "")],
    ));
    let names: Vec<&str> = list["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .filter_map(|e| e["export-name"].as_str())
        .collect();
    assert_eq!(names, ["vol"]);

    assert_eq!(map(&cluster, &uri1), [(0, size, 3)], "a fresh volume");

    let (write, read) = pattern_commands(size);
    let wrote = qemu_io(&cluster, &write, &uri1);
    assert_eq!(wrote.matches("wrote ").count(), write.len(), "{wrote}");
    let readback = qemu_io(&cluster, &read, &uri2);
    assert_eq!(readback.matches("read ").count(), read.len(), "{readback}");

    // The store allocates whole 4 KiB blocks: [0, 4K), [4M-4K, 4M+4K), [4M+28K, 4M+32K),
    // [size-4K, size).
    let k4 = 4096;
    let expected = vec![
        (0, k4, 0),
        (k4, CHUNK - 2 * k4, 3),
        (CHUNK - k4, 2 * k4, 0),
        (CHUNK + k4, 6 * k4, 3),
        (CHUNK + 7 * k4, k4, 0),
        (CHUNK + 8 * k4, size - CHUNK - 9 * k4, 3),
        (size - k4, k4, 0),
    ];
    assert_eq!(map(&cluster, &uri2), expected, "after the writes");

    let scratch = write_and_delete_a_volume(&cluster);
    for n in 1..=3 {
        cluster.stop(n);
    }
    assert_replicas_identical(&cluster, VolumeId(volume.id), &[0, 1, size / CHUNK - 1]);
    for n in 1..=3 {
        let left = held_chunks(&cluster, n, Some(scratch));
        assert!(
            left.is_empty(),
            "node {n} kept chunks of a deleted volume: {left:?}"
        );
    }
}

/// Writes 4 chunks of a new volume, deletes it, and waits until every node's sweep dropped
/// copies (nothing else is to drop in a 3-node cluster). Returns the deleted volume's id.
fn write_and_delete_a_volume(cluster: &TestCluster) -> VolumeId {
    let scratch = create_volume(cluster, "scratch", 16 * MIB);
    let scratch_uri = uri(cluster, 1, "scratch");
    wait_export(cluster, &scratch_uri);
    let fill: Vec<String> = (0..4)
        .map(|i| format!("write -P 0x5a {} 8k", i * CHUNK))
        .collect();
    qemu_io(cluster, &fill, &scratch_uri);
    runtime()
        .block_on(api(cluster, 1).delete_volume("scratch"))
        .expect("delete scratch");
    for n in 1..=3 {
        let swept = common::wait_for(Duration::from_secs(30), || {
            cluster
                .log_tail(n, 400)
                .contains("sweep dropped copies")
                .then_some(())
        });
        assert!(
            swept.is_some(),
            "node {n} never swept\n{}",
            cluster.log_tail(n, 60)
        );
    }
    VolumeId(scratch.id)
}

/// The chunks (of `volume`, or all) on stopped node `n`'s drive.
fn held_chunks(cluster: &TestCluster, n: u8, volume: Option<VolumeId>) -> Vec<ChunkKey> {
    let path = cluster.nodes[usize::from(n) - 1].config.drives[0]
        .path
        .clone();
    runtime().block_on(async {
        let store = Store::open(&path, OpenOptions::default())
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let held = store
            .list_chunks()
            .await
            .expect("list chunks")
            .into_iter()
            .map(|info| info.chunk)
            .filter(|chunk| volume.is_none_or(|v| chunk.volume == v))
            .collect();
        store.close().await.expect("close store");
        held
    })
}

/// Opens every node's drive (the cluster is stopped) and checks that each holds `chunks` of
/// `volume` with the same bytes, and the same set of chunks of the volume.
fn assert_replicas_identical(cluster: &TestCluster, volume: VolumeId, chunks: &[u64]) {
    let rt = runtime();
    let mut copies: Vec<(Vec<u64>, Vec<Vec<u8>>)> = Vec::new();
    for node in &cluster.nodes {
        let path = &node.config.drives[0].path;
        let copy = rt.block_on(async {
            let store = Store::open(path, OpenOptions::default())
                .await
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            let mut held: Vec<u64> = store
                .list_chunks()
                .await
                .expect("list chunks")
                .into_iter()
                .filter(|info| info.chunk.volume == volume)
                .map(|info| info.chunk.index)
                .collect();
            held.sort_unstable();
            let mut data = Vec::new();
            for index in chunks {
                let chunk = ChunkKey::new(volume, *index);
                let bytes = store
                    .read(chunk, 0, store.chunk_size_bytes())
                    .await
                    .expect("read chunk");
                data.push(bytes.to_vec());
            }
            store.close().await.expect("close store");
            (held, data)
        });
        copies.push(copy);
    }
    let (held, data) = &copies[0];
    assert_eq!(held, chunks, "node 1 holds exactly the written chunks");
    for (i, chunk) in data.iter().enumerate() {
        assert!(
            chunk.iter().any(|b| *b != 0),
            "chunk {} has data",
            chunks[i]
        );
    }
    for (n, copy) in copies.iter().enumerate().skip(1) {
        assert_eq!(&copy.0, held, "node {} holds the same chunks", n + 1);
        assert!(&copy.1 == data, "node {} holds the same bytes", n + 1);
    }
}

/// Goal: a 256 MiB random file (with a zero run) copied in through node 1 and out through
/// node 2 by nbdcopy (multi-connection) comes back identical.
#[test]
fn nbdcopy_round_trip_256_mib() {
    let mut spec = ClusterSpec::new(62, 3);
    // 256 MiB on every node, plus the store's metadata and journal.
    spec.drive_size_bytes = 512 << 20;
    let cluster = TestCluster::start(&spec);
    wait_ready(&cluster, 1, 3);
    let size = 256 * MIB;
    create_volume(&cluster, "copy", size);
    let (uri1, uri2) = (uri(&cluster, 1, "copy"), uri(&cluster, 2, "copy"));
    wait_export(&cluster, &uri1);
    wait_export(&cluster, &uri2);

    let input = cluster.dir().join("in.img");
    let crc = random_file(&input, size);
    let output = cluster.dir().join("out.img");
    let started = Instant::now();
    run(&cluster, "nbdcopy", &[input.to_str().expect("path"), &uri1]);
    let copied_in = started.elapsed();
    run(
        &cluster,
        "nbdcopy",
        &[&uri2, output.to_str().expect("path")],
    );
    eprintln!(
        "nbdcopy 256 MiB: in {copied_in:?}, out {:?}",
        started.elapsed() - copied_in
    );
    assert_eq!(file_crc(&output), (size, crc));
}

/// Goal: fio's nbd engine (32 requests in flight, replies out of order) writes random 4 KiB
/// blocks and verifies them (crc32c); after every node stops and starts again, a verify-only
/// pass of the same job still finds every block.
#[test]
fn fio_verify_survives_a_full_cluster_restart() {
    let mut cluster = TestCluster::start(&ClusterSpec::new(63, 3));
    wait_ready(&cluster, 1, 3);
    create_volume(&cluster, "fio", 64 * MIB);
    let uri1 = uri(&cluster, 1, "fio");
    wait_export(&cluster, &uri1);

    let job = fio_verify(&cluster, &uri1, "32m", false);
    assert_eq!(job["write"]["io_bytes"], 32 * MIB, "{job}");
    assert_eq!(job["read"]["io_bytes"], 32 * MIB, "verify pass: {job}");

    for n in 1..=3 {
        cluster.stop(n);
    }
    for n in 1..=3 {
        cluster.start_node(n);
    }
    wait_ready(&cluster, 1, 3);
    let uri3 = uri(&cluster, 3, "fio");
    wait_export(&cluster, &uri3);
    let job = fio_verify(&cluster, &uri3, "32m", true);
    assert_eq!(job["read"]["io_bytes"], 32 * MIB, "verify-only pass: {job}");
}

/// Goal: with one node stopped, the map epoch advances and writes continue (and verify) with
/// two copies; with a second node stopped (below `min_size`, and no Raft majority to change
/// the map), a write fails with an I/O error within the gateway's failover timeout instead of
/// being acknowledged.
#[test]
fn degraded_writes_continue_then_fail_below_min_size() {
    let mut cluster = TestCluster::start(&ClusterSpec::new(64, 3));
    let before = wait_ready(&cluster, 1, 3);
    create_volume(&cluster, "deg", 64 * MIB);
    let uri1 = uri(&cluster, 1, "deg");
    wait_export(&cluster, &uri1);
    fio_verify(&cluster, &uri1, "8m", false);

    cluster.stop(3);
    let after = wait_for(READY_TIMEOUT, || {
        status(&cluster, 1).filter(|s| s.nodes.down == 1 && s.epoch > before.epoch)
    })
    .unwrap_or_else(|| panic!("node 3 never marked down\n{}", cluster.logs()));
    eprintln!("node 3 down: epoch {} -> {}", before.epoch, after.epoch);
    let job = fio_verify(&cluster, &uri1, "16m", false);
    assert_eq!(job["read"]["io_bytes"], 16 * MIB, "verify pass: {job}");

    cluster.stop(2);
    // Every PG has node 2 in its acting set: whichever chunk the write lands in, it cannot
    // reach two copies. With two of three voters gone the map cannot show node 2 down, so the
    // gateway sees min_size members and gives up after its failover timeout (60 s); qemu-io's
    // closing flush waits as long again.
    let started = Instant::now();
    let output = run_unchecked(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 8192 4096", &uri1],
        Duration::from_secs(240),
    );
    let elapsed = started.elapsed();
    let out = text(&output.stdout) + &text(&output.stderr);
    eprintln!("write below min_size failed after {elapsed:?}");
    assert!(
        out.contains("write failed") && out.contains("Input/output error"),
        "the write must fail with EIO:\n{out}\n{}",
        cluster.logs()
    );
    assert!(!out.contains("wrote "), "not acknowledged:\n{out}");
}

/// A kill test's cluster (on 127.0.`default_net`.x, or `BASALT_SOAK_NET` so a soak run can go
/// beside the test suite) with a volume for a job of `size_mib`; returns it and node 1's NBD URI.
fn kill_test_cluster(size_mib: u64, default_net: u8) -> (TestCluster, String, VolumeView) {
    let net = std::env::var("BASALT_SOAK_NET")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default_net);
    let mut spec = ClusterSpec::new(net, 3);
    spec.drive_size_bytes = spec.drive_size_bytes.max(2 * size_mib * MIB + 128 * MIB);
    let cluster = TestCluster::start(&spec);
    wait_ready(&cluster, 1, 3);
    let volume = create_volume(&cluster, "kill", (size_mib + 32) * MIB);
    let uri1 = uri(&cluster, 1, "kill");
    wait_export(&cluster, &uri1);
    (cluster, uri1, volume)
}

/// Which node a kill test kills.
#[derive(Clone, Copy, Debug)]
enum Victim {
    /// Node 2 or 3 at random.
    Random,
    /// The primary of the PG holding most of the volume's chunks, among nodes 2 and 3 (node 1
    /// carries the client's connection).
    BusiestPrimary {
        /// The volume's id.
        volume: u64,
        /// Its chunk count.
        chunks: u64,
    },
}

/// The primary (node 2 or 3) of the PG that holds the most chunks of `volume`.
fn busiest_primary(cluster: &TestCluster, volume: u64, chunks: u64) -> Option<u8> {
    let pgs = pg_views(cluster)?;
    let pool: Vec<&basalt::api::PgView> = pgs.iter().filter(|pg| pg.pool == 3).collect();
    let pg_count = u32::try_from(pool.len()).ok()?;
    let mut load: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    for chunk in 0..chunks {
        *load
            .entry(basalt::placement::pg_of(VolumeId(volume), chunk, pg_count).0)
            .or_default() += 1;
    }
    let mut ranked: Vec<(u32, u64)> = load.into_iter().collect();
    ranked.sort_by_key(|(pg, count)| (std::cmp::Reverse(*count), *pg));
    ranked.iter().find_map(|(pg, _)| {
        let primary = pool
            .iter()
            .find(|view| view.id == *pg)?
            .acting
            .first()?
            .node;
        u8::try_from(primary).ok().filter(|n| (2..=3).contains(n))
    })
}

/// Kills a node (SIGKILL, `victim` says which) every 10–20 s and starts it again after 1–6 s,
/// until `job` ends (at most 4 kills, or one per 10 s of a soak). Returns how many kills
/// happened.
fn kill_nodes_until<T>(
    cluster: &mut TestCluster,
    job: &std::thread::JoinHandle<T>,
    soak_secs: u64,
    victim: Victim,
) -> u64 {
    let mut next = common::seeded_schedule("kill schedule");
    let kills_max = if soak_secs > 0 { soak_secs / 10 } else { 4 };
    let mut kills = 0;
    while kills < kills_max {
        let until = Instant::now() + Duration::from_secs(10 + next(11));
        while Instant::now() < until {
            if job.is_finished() {
                return kills;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let random = 2 + (next(1000) % 2) as u8;
        let victim = match victim {
            Victim::Random => random,
            Victim::BusiestPrimary { volume, chunks } => {
                busiest_primary(cluster, volume, chunks).unwrap_or(random)
            }
        };
        let down = Duration::from_secs(1 + next(6));
        eprintln!("kill -9 node {victim}, restart after {down:?}");
        cluster.kill(victim);
        std::thread::sleep(down);
        cluster.start_node(victim);
        kills += 1;
    }
    kills
}

/// Goal: no acknowledged write is lost while storage nodes are killed with SIGKILL and
/// restarted under load. Method: fio (nbd engine, 4 KiB random writes, iodepth 16,
/// `verify=crc32c` with `verify_backlog`, rate-limited so the job lasts about a minute) writes
/// through node 1 while nodes 2 and 3 (between them the primaries of most PGs) are killed in
/// turn every 10–20 s and started again after 1–6 s: some restarts land before failure
/// detection (same epoch: the restarted copies are recovered), some after (failover, peering,
/// recovery when the node returns). fio must see no error; after a last full-cluster
/// restart a verify-only pass of the same job finds every block. The long version is the
/// soak mode (`BASALT_SOAK_SECS`).
#[test]
fn fio_verify_survives_nodes_killed_under_load() {
    kill_test(65, |_| Victim::Random);
}

/// Goal: the kill test, with the primary of the busiest PG (the one holding most of the
/// volume's chunks, on node 2 or 3) as the victim of every kill. Soak: filter `busiest`.
#[test]
fn fio_verify_survives_busiest_primary_kills() {
    kill_test(74, |volume| Victim::BusiestPrimary {
        volume: volume.id,
        chunks: volume.size_bytes.div_ceil(CHUNK),
    });
}

/// The kill test on net `net` (see `fio_verify_survives_nodes_killed_under_load`).
fn kill_test(net: u8, victim: impl Fn(&VolumeView) -> Victim) {
    let soak_secs = common::soak_secs();
    // 150 writes/s for 32 MiB is about 55 s; a soak run scales the size to its duration.
    let size_mib = if soak_secs > 0 {
        (soak_secs * 150 * 4 / 1024).max(32)
    } else {
        32
    };
    let (mut cluster, uri1, volume) = kill_test_cluster(size_mib, net);
    let args = verify_job_args("killverify", &uri1, size_mib);
    let fio = spawn_fio(&args, Duration::from_secs(240 + soak_secs * 2));
    let kills = kill_nodes_until(&mut cluster, &fio, soak_secs, victim(&volume));
    assert_fio_clean(&cluster, fio);
    eprintln!("{kills} kills during the job");
    assert!(kills >= 2, "the job ended before the faults ran");

    for n in 1..=3 {
        cluster.stop(n);
    }
    for n in 1..=3 {
        cluster.start_node(n);
    }
    wait_ready(&cluster, 1, 3);
    wait_export(&cluster, &uri1);
    assert_verify_only(&cluster, &args, size_mib);
}

/// A rate-limited fio verify job (nbd engine, 4 KiB random writes, iodepth 16, crc32c with
/// `verify_backlog`): about 150 writes/s, so `size_mib` sets its length.
fn verify_job_args(name: &str, uri: &str, size_mib: u64) -> Vec<String> {
    vec![
        format!("--name={name}"),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--rw=randwrite".into(),
        "--bs=4k".into(),
        "--iodepth=16".into(),
        format!("--size={size_mib}m"),
        "--rate_iops=150".into(),
        "--verify=crc32c".into(),
        "--verify_backlog=256".into(),
        "--verify_fatal=1".into(),
        "--verify_state_save=0".into(),
        "--do_verify=1".into(),
        "--output-format=json".into(),
    ]
}

/// Runs fio with `args` on a thread (bounded by `timeout`).
fn spawn_fio(args: &[String], timeout: Duration) -> std::thread::JoinHandle<Output> {
    let args = args.to_vec();
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_unchecked("fio", &args, timeout)
    })
}

/// Asserts the fio job ended without an error.
fn assert_fio_clean(cluster: &TestCluster, fio: std::thread::JoinHandle<Output>) {
    let output = fio.join().expect("fio thread");
    let out = text(&output.stdout);
    assert!(
        output.status.success(),
        "fio failed ({}):\n{out}\n{}\n{}",
        output.status,
        text(&output.stderr),
        cluster.logs()
    );
    let job = json(&output)["jobs"][0].clone();
    assert_eq!(job["error"], 0, "{job}\n{}", cluster.logs());
}

/// A verify-only pass of the job `args` (unthrottled): every block written reads back right.
fn assert_verify_only(cluster: &TestCluster, args: &[String], size_mib: u64) {
    let mut verify: Vec<&str> = args.iter().map(String::as_str).collect();
    verify.retain(|arg| !arg.starts_with("--rate_iops") && !arg.starts_with("--verify_backlog"));
    verify.push("--verify_only");
    let report = json(&run(cluster, "fio", &verify));
    let job = report["jobs"][0].clone();
    assert_eq!(job["error"], 0, "verify-only pass: {job}");
    assert_eq!(
        job["read"]["io_bytes"],
        size_mib * MIB,
        "verify-only pass read everything: {job}"
    );
}

/// Every PG of the cluster as node 1's API reports it, or `None` if the call failed.
fn pg_views(cluster: &TestCluster) -> Option<Vec<basalt::api::PgView>> {
    runtime()
        .block_on(api(cluster, 1).pgs_in(None))
        .ok()
        .map(|list| list.pgs)
}

/// Polls the PGs (every 250 ms, up to `bound`) until `done`; on every successful poll, asserts
/// that no PG has fewer than 3 acting members (redundancy never drops while data moves).
/// Returns the polls made.
fn watch_pgs_until(
    cluster: &TestCluster,
    what: &str,
    bound: Duration,
    done: impl Fn(&[basalt::api::PgView]) -> bool,
) -> u32 {
    let deadline = Instant::now() + bound;
    let mut polls = 0;
    loop {
        if let Some(pgs) = pg_views(cluster) {
            polls += 1;
            let short = pgs.iter().find(|pg| pg.acting.len() < 3);
            assert!(
                short.is_none(),
                "{what}: a PG dropped below 3 acting members: {short:?}\n{}",
                cluster.logs()
            );
            if done(&pgs) {
                return polls;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not finish in {bound:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether `node` is in the acting set of any PG.
fn holds(pgs: &[basalt::api::PgView], node: u64) -> bool {
    pgs.iter()
        .any(|pg| pg.acting.iter().any(|m| m.node == node))
}

/// Waits until `node` holds PGs and every PG has settled with 3 acting members (redundancy
/// checked on every poll); returns how long it took.
fn wait_rebalanced_onto(cluster: &TestCluster, node: u64) -> Duration {
    let started = Instant::now();
    watch_pgs_until(
        cluster,
        &format!("rebalance onto node {node}"),
        Duration::from_secs(90),
        |pgs| holds(pgs, node) && pgs.iter().all(|pg| !pg.pending && pg.acting.len() == 3),
    );
    started.elapsed()
}

/// Drains `node` (`node out` on a live node) and waits until it has left every PG, each
/// settled with 3 acting members (redundancy checked on every poll); returns how long it took.
fn drain(cluster: &TestCluster, node: u64) -> Duration {
    let drained = runtime()
        .block_on(api(cluster, 1).node_out(node))
        .unwrap_or_else(|e| panic!("drain node {node}: {e}\n{}", cluster.logs()));
    assert_eq!(drained.state, basalt::api::NodeStatus::Draining);
    let started = Instant::now();
    watch_pgs_until(
        cluster,
        &format!("drain of node {node}"),
        Duration::from_secs(90),
        |pgs| !holds(pgs, node) && pgs.iter().all(|pg| !pg.pending && pg.acting.len() == 3),
    );
    started.elapsed()
}

/// Waits until node `n`'s sweep dropped every copy it held (its drive reports no chunk): a
/// drained node holds nothing any PG needs.
fn wait_swept_empty(cluster: &TestCluster, n: u8) {
    let http = common::Http::new();
    let empty = common::wait_for(Duration::from_secs(60), || {
        let reply = cluster.get(&http, n, "/metrics").ok()?;
        let chunks: u64 = reply
            .text
            .lines()
            .filter(|line| line.starts_with("basalt_drive_chunks{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        (chunks == 0).then_some(())
    });
    assert!(
        empty.is_some(),
        "node {n} kept copies\n{}",
        cluster.log_tail(n, 60)
    );
}

/// Removes stopped, drained `node` once the detector marked it out: it leaves the node table
/// and the Raft voters, no PG lists it, and started again it is refused for good (its id is
/// retired) while the others keep serving.
fn remove_stopped_node(cluster: &mut TestCluster, node: u8) {
    let client = api(cluster, 1);
    let id = u64::from(node);
    let out = common::wait_for(Duration::from_secs(30), || {
        let view = runtime().block_on(client.node(id)).ok()?;
        (view.state == basalt::api::NodeStatus::Out).then_some(())
    });
    assert!(
        out.is_some(),
        "node {node} never marked out\n{}",
        cluster.logs()
    );
    runtime()
        .block_on(client.remove_node(id))
        .unwrap_or_else(|e| panic!("remove node {node}: {e}\n{}", cluster.logs()));
    runtime()
        .block_on(client.remove_node(id))
        .unwrap_or_else(|e| panic!("remove node {node} again: {e}"));
    let nodes = runtime().block_on(client.nodes()).expect("node list");
    assert!(nodes.nodes.iter().all(|view| view.id != id), "{nodes:?}");
    let left_raft = common::wait_for(Duration::from_secs(30), || {
        let raft = status(cluster, 1)?.raft?;
        (!raft.voters.contains(&id) && !raft.learners.contains(&id)).then_some(raft)
    });
    let raft = left_raft
        .unwrap_or_else(|| panic!("node {node} still in Raft membership\n{}", cluster.logs()));
    eprintln!("node {node} removed; metadata voters now {:?}", raft.voters);
    let pgs = pg_views(cluster).expect("PG list");
    assert!(!holds(&pgs, id) && pgs.iter().all(|pg| pg.acting.len() == 3));
    // Started again with its old id and drives, it is refused and serves nobody.
    cluster.start_node(node);
    let refused = common::wait_for(Duration::from_secs(30), || {
        cluster
            .log_tail(node, 200)
            .contains("registration refused for good")
            .then_some(())
    });
    assert!(refused.is_some(), "{}", cluster.log_tail(node, 80));
    let nodes = runtime().block_on(client.nodes()).expect("node list");
    assert!(nodes.nodes.iter().all(|view| view.id != id), "{nodes:?}");
    cluster.stop(node);
}

/// Goal: a cluster grows and shrinks under load without a verify error and without ever
/// holding fewer than 3 copies of a PG. Method: fio (nbd engine, crc32c verify with
/// `verify_backlog`, rate-limited to about 80 s) writes through node 1 of a 3-node cluster;
/// node 4 starts and joins: the PGs it takes keep their old members acting until it is
/// backfilled, then settle (acting = up, 3 members). Then node 2 is drained (`node out` on a
/// live node): it keeps serving until each of its PGs is rebuilt elsewhere, then leaves them;
/// then it is stopped and removed (`remove_stopped_node`). Every PG is polled throughout and
/// never has fewer than 3 acting members. A verify-only pass after the job reads every block
/// back.
#[test]
fn fio_verify_survives_growing_and_draining_under_load() {
    let mut spec = ClusterSpec::new(72, 3);
    spec.followers = 1;
    let mut cluster = TestCluster::configure(&spec);
    for n in 1..=3 {
        cluster.start_node(n);
    }
    wait_ready(&cluster, 1, 3);
    create_volume(&cluster, "grow", 64 * MIB);
    let uri1 = uri(&cluster, 1, "grow");
    wait_export(&cluster, &uri1);
    let args = verify_job_args("growverify", &uri1, 48);
    let fio = spawn_fio(&args, Duration::from_secs(300));
    std::thread::sleep(Duration::from_secs(5));

    // Grow: node 4 joins and takes its share; each PG settles once node 4 is level.
    cluster.start_node(4);
    wait_ready(&cluster, 1, 4);
    let took = wait_rebalanced_onto(&cluster, 4);
    eprintln!("rebalance onto node 4 settled in {took:?}");
    let grown_while_loaded = !fio.is_finished();

    // Shrink: drain node 2 while it serves, stop it, remove it.
    let took = drain(&cluster, 2);
    eprintln!("drain of node 2 finished in {took:?}");
    let drained_while_loaded = !fio.is_finished();
    wait_swept_empty(&cluster, 2);
    cluster.stop(2);
    let left = held_chunks(&cluster, 2, None);
    assert!(left.is_empty(), "the drained node kept copies: {left:?}");
    remove_stopped_node(&mut cluster, 2);

    assert_fio_clean(&cluster, fio);
    assert!(
        grown_while_loaded && drained_while_loaded,
        "the job ended before the cluster changed (grown {grown_while_loaded}, drained \
         {drained_while_loaded})"
    );
    assert_verify_only(&cluster, &args, 48);
}

/// Goal (soak mode; the bounded version is the test above): a cluster that keeps growing and
/// shrinking under load loses nothing. Node 4 joins, then nodes 2, 3 and 4 in turn are
/// drained, stopped, started again and brought back (`node up`), each step waiting for every
/// PG to settle with 3 acting members (checked on every poll), while a fio verify job runs for
/// the whole soak; a verify-only pass reads every block back at the end.
/// `BASALT_SOAK_SECS=600 cargo test -p basalt --test cluster_nbd grow_and_drain_soak`.
#[test]
fn grow_and_drain_soak() {
    let Some(soak_secs) = common::soak_only() else {
        return;
    };
    let size_mib = (soak_secs * 150 * 4 / 1024).max(48);
    let net = std::env::var("BASALT_SOAK_NET")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(96);
    let mut spec = ClusterSpec::new(net, 3);
    spec.followers = 1;
    spec.drive_size_bytes = spec.drive_size_bytes.max(2 * size_mib * MIB + 128 * MIB);
    let mut cluster = TestCluster::configure(&spec);
    for n in 1..=3 {
        cluster.start_node(n);
    }
    wait_ready(&cluster, 1, 3);
    create_volume(&cluster, "grow", (size_mib + 16) * MIB);
    let uri1 = uri(&cluster, 1, "grow");
    wait_export(&cluster, &uri1);
    let args = verify_job_args("growsoak", &uri1, size_mib);
    let fio = spawn_fio(&args, Duration::from_secs(240 + soak_secs * 2));
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(5));

    cluster.start_node(4);
    wait_ready(&cluster, 1, 4);
    eprintln!(
        "node 4 joined; rebalance settled in {:?}",
        wait_rebalanced_onto(&cluster, 4)
    );
    let mut cycles = 0u64;
    while !fio.is_finished() && started.elapsed() < Duration::from_secs(soak_secs + 120) {
        let node = [2u8, 3, 4][(cycles % 3) as usize];
        let drained = drain(&cluster, u64::from(node));
        cluster.stop(node);
        std::thread::sleep(Duration::from_secs(2));
        cluster.start_node(node);
        let back = wait_for(READY_TIMEOUT, || {
            runtime()
                .block_on(api(&cluster, 1).node_up(u64::from(node)))
                .ok()
        });
        assert!(
            back.is_some(),
            "node {node} never came back\n{}",
            cluster.logs()
        );
        wait_ready(&cluster, 1, 4);
        let rebalanced = wait_rebalanced_onto(&cluster, u64::from(node));
        cycles += 1;
        eprintln!(
            "cycle {cycles}: node {node} drained in {drained:?}, back and rebalanced in \
             {rebalanced:?} ({:?})",
            started.elapsed()
        );
    }
    assert_fio_clean(&cluster, fio);
    assert!(cycles >= 2, "only {cycles} cycles");
    assert_verify_only(&cluster, &args, size_mib);
    eprintln!("{cycles} drain-and-return cycles under load, 0 verify errors");
}
