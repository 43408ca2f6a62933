//! Partition tests (issue 5): a PG's primary is cut off from the other nodes by the fault
//! harness (`tests/common/netns.rs`: every node in its own network namespace, faults as
//! nftables rules). Writes continue through a surviving node once the map has failed the PG
//! over; the isolated node, still reachable by the client, must not answer a read with data
//! once its lease has expired (it would serve the old data); after healing, every member
//! holds the same chunks with the same bytes.
//!
//! 3 nodes, a volume with 3 replicas (`min_size` 2), `down_after` 3 s: the lease is 2 s.
//! Needs root (network namespaces); skipped with a message otherwise.

mod common;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use basalt::ids::VolumeId;
use basalt::placement::pg_of;
use common::netns::{FaultCluster, NetLab, skip_reason, subnet_ip};
use common::{ClusterSpec, Http, TestCluster, wait_for, workspace_bin};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
/// The cluster's chunk size (the default).
const CHUNK: u64 = 4 * MIB;
/// The volume's size: 16 chunks, so every node is the primary of some of them.
const VOLUME_BYTES: u64 = 64 * MIB;
/// Bytes written at `CHUNK * index + OFFSET` in the chosen chunk.
const OFFSET: u64 = 64 * 1024;
const LEN: u64 = 64 * 1024;
/// The first and second contents of the range.
const A: u8 = 0xaa;
const B: u8 = 0xbb;
/// Bound on the cluster forming, the volume appearing, healing.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Client-side bound on one read through the isolated node: it may queue reads until its
/// request deadline instead of failing them.
const READ_TIMEOUT: Duration = Duration::from_secs(8);
/// Bound on one write attempt (the gateway's own request timeout is 30 s).
const WRITE_TIMEOUT: Duration = Duration::from_secs(45);

/// What one read returned.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// Data: the range was one byte value throughout.
    Uniform(u8),
    /// Data, not uniform (first byte).
    Mixed(u8),
    /// The server answered with an error.
    Error(String),
    /// No answer within [`READ_TIMEOUT`], or the connection failed.
    NoAnswer(String),
}

impl Read {
    fn is_data(&self) -> bool {
        matches!(self, Read::Uniform(_) | Read::Mixed(_))
    }
}

/// Runs `program` in the client namespace, killed after `timeout` (`None` then).
fn client_run(
    fc: &FaultCluster,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Option<Output> {
    let mut child = fc
        .client_command(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    // Drained while it runs: a full pipe would stall the client.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
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
        if let Ok(Some(status)) = child.try_wait() {
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
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn nbd_uri(fc: &FaultCluster, n: u8) -> String {
    format!("nbd://{}/part", fc.cluster.nbd_addr(n))
}

/// Reads `[offset, offset + LEN)` through node `n`'s export with qemu-io (hex dump).
fn read(fc: &FaultCluster, n: u8, offset: u64) -> Read {
    let command = format!("read -v {offset} {LEN}");
    let uri = nbd_uri(fc, n);
    let args = ["-f", "raw", "-c", command.as_str(), uri.as_str()];
    let Some(output) = client_run(fc, "qemu-io", &args, READ_TIMEOUT) else {
        return Read::NoAnswer("client timeout".into());
    };
    let out = text(&output.stdout);
    let err = text(&output.stderr);
    if out.contains("read failed") || err.contains("read failed") {
        return Read::Error(format!("{out}{err}").trim().to_owned());
    }
    if !output.status.success() || !out.contains(&format!("read {LEN}/{LEN} bytes")) {
        return Read::NoAnswer(format!("{out}{err}").trim().to_owned());
    }
    // Dump lines: `0001a000:  aa aa ... (16 bytes)  ................`
    let bytes: Vec<u8> = out
        .lines()
        .filter(|line| line.len() > 10 && line.as_bytes()[8] == b':')
        .flat_map(|line| {
            line[10..]
                .split_whitespace()
                .take(16)
                .map(|hex| u8::from_str_radix(hex, 16).expect("hex byte"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(bytes.len() as u64, LEN, "qemu-io dump:\n{out}");
    if bytes.iter().all(|b| *b == bytes[0]) {
        Read::Uniform(bytes[0])
    } else {
        Read::Mixed(bytes[0])
    }
}

/// Writes `pattern` over `[offset, offset + LEN)` through node `n` with qemu-io; true when
/// acknowledged.
fn write(fc: &FaultCluster, n: u8, offset: u64, pattern: u8) -> Result<(), String> {
    let command = format!("write -P {pattern:#x} {offset} {LEN}");
    let uri = nbd_uri(fc, n);
    let args = ["-f", "raw", "-c", command.as_str(), uri.as_str()];
    let output = client_run(fc, "qemu-io", &args, WRITE_TIMEOUT).ok_or("client timeout")?;
    let out = text(&output.stdout) + &text(&output.stderr);
    if output.status.success() && out.contains("wrote ") && !out.contains("failed") {
        Ok(())
    } else {
        Err(out)
    }
}

/// `GET path` on node `n`'s API from the client namespace (200 only).
fn api_get(fc: &FaultCluster, n: u8, path: &str) -> Option<Value> {
    fc.in_client(|| {
        let reply = fc.cluster.get(&Http::new(), n, path).ok()?;
        (reply.status == 200).then_some(reply.json)
    })
}

/// Node `n`'s Prometheus text, from the client namespace.
fn metrics(fc: &FaultCluster, n: u8) -> Option<String> {
    fc.in_client(|| {
        let reply = fc.cluster.get(&Http::new(), n, "/metrics").ok()?;
        (reply.status == 200).then_some(reply.text)
    })
}

/// Value of a gauge line `name` (with its labels) in Prometheus text.
fn gauge(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Every node sees three nodes up, health ok, every PG of pool 3 active (none peering or
/// recovering on the node that leads it) and nothing left to recover.
fn converged(fc: &FaultCluster, pg_count: u64) -> bool {
    (1..=3).all(|n| {
        let healthy = api_get(fc, n, "/v1/cluster")
            .is_some_and(|s| s["health"] == "ok" && s["nodes"]["up"] == 3);
        let settled = metrics(fc, n).is_some_and(|m| {
            gauge(&m, r#"basalt_pgs{pool="3",state="active"}"#) == Some(pg_count)
                && gauge(&m, "basalt_recovery_remaining_objects") == Some(0)
        });
        healthy && settled
    })
}

/// `blockd inspect --chunks` of node `n`'s drive (stopped): chunk key → (label, crc32c).
fn drive_chunks(cluster: &TestCluster, n: u8) -> BTreeMap<String, (String, String)> {
    let drive = &cluster.nodes[usize::from(n) - 1].config.drives[0].path;
    let output = std::process::Command::new(workspace_bin("blockd"))
        .args(["inspect", "--chunks", "--drive"])
        .arg(drive)
        .output()
        .expect("run blockd inspect");
    assert!(
        output.status.success(),
        "blockd inspect {}: {}",
        drive.display(),
        text(&output.stderr)
    );
    // chunk <key> epoch <e> version <v> blocks <n> crc32c <hex>
    text(&output.stdout)
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [
                    "chunk",
                    key,
                    "epoch",
                    e,
                    "version",
                    v,
                    "blocks",
                    _,
                    "crc32c",
                    crc,
                ] => Some(((*key).to_owned(), (format!("{e}v{v}"), (*crc).to_owned()))),
                _ => None,
            }
        })
        .collect()
}

/// crc32c of a chunk holding `pattern` at `[OFFSET, OFFSET + LEN)` and zeroes elsewhere.
fn expected_crc(pattern: u8) -> String {
    let mut chunk = vec![0u8; CHUNK as usize];
    chunk[OFFSET as usize..(OFFSET + LEN) as usize].fill(pattern);
    format!("{:08x}", crc32c::crc32c(&chunk))
}

/// The chunk a partition test uses and the nodes' roles for it.
struct Target {
    volume: u64,
    index: u64,
    /// PGs of pool 3.
    pg_count: u32,
    /// The chunk's PG primary, to be isolated.
    p: u8,
    /// The node writes go through.
    w: u8,
    /// The third node.
    s: u8,
    /// Byte offset of the written range in the volume.
    offset: u64,
}

/// Creates the test's volume through node `leader`; returns its id.
fn create_volume(fc: &FaultCluster, leader: u8) -> u64 {
    let size = format!("{}MiB", VOLUME_BYTES / MIB);
    wait_for(READY_TIMEOUT, || {
        fc.in_client(|| {
            let body = json!({"name": "part", "size": size});
            let reply = fc
                .cluster
                .post(&Http::new(), leader, "/v1/volumes", &body)
                .ok()?;
            (reply.status == 201 || reply.status == 200).then(|| reply.json["id"].as_u64())?
        })
    })
    .unwrap_or_else(|| panic!("volume never created\n{}", fc.cluster.logs()))
}

/// Picks a chunk of `volume` whose PG's primary is (or, with `leader_primary` false, is not)
/// the Raft leader: the `skip`-th such chunk, counting around.
fn pick_target(
    fc: &FaultCluster,
    volume: u64,
    leader: u8,
    leader_primary: bool,
    skip: usize,
) -> Target {
    let pgs = api_get(fc, leader, "/v1/pgs").expect("GET /v1/pgs");
    let pool: Vec<&Value> = pgs["pgs"]
        .as_array()
        .expect("pgs")
        .iter()
        .filter(|pg| pg["pool"] == 3)
        .collect();
    let pg_count = u32::try_from(pool.len()).expect("PG count");
    let primary_of = |index: u64| -> u8 {
        let pg = pg_of(VolumeId(volume), index, pg_count).0 as usize;
        let node = pool[pg]["acting"][0]["node"].as_u64().expect("primary");
        u8::try_from(node).expect("node id")
    };
    let candidates: Vec<u64> = (0..VOLUME_BYTES / CHUNK)
        .filter(|&i| (primary_of(i) == leader) == leader_primary)
        .collect();
    assert!(!candidates.is_empty(), "no chunk with the wanted primary");
    let index = candidates[skip % candidates.len()];
    let p = primary_of(index);
    let w = (1..=3).find(|&n| n != p).expect("a writer");
    let s = (1..=3).find(|&n| n != p && n != w).expect("a third node");
    eprintln!("leader {leader}; chunk {index}: primary {p}, writes through {w}, third {s}");
    Target {
        volume,
        index,
        pg_count,
        p,
        w,
        s,
        offset: index * CHUNK + OFFSET,
    }
}

/// Waits until every node's export answers with `before` at the target, writes `value`
/// through the writer and reads it back through every node.
fn write_everywhere(fc: &FaultCluster, t: &Target, before: u8, value: u8) {
    let mut last = Vec::new();
    let exports = wait_for(READY_TIMEOUT, || {
        last = (1..=3).map(|n| read(fc, n, t.offset)).collect();
        last.iter()
            .all(|r| *r == Read::Uniform(before))
            .then_some(())
    });
    assert!(
        exports.is_some(),
        "exports never answered {before:#x}: {last:?}\n{}",
        fc.cluster.logs()
    );
    write(fc, t.w, t.offset, value)
        .unwrap_or_else(|e| panic!("write {value:#x}: {e}\n{}", fc.cluster.logs()));
    for n in 1..=3 {
        assert_eq!(
            read(fc, n, t.offset),
            Read::Uniform(value),
            "{value:#x} through node {n}"
        );
    }
}

/// Heals the isolated node and waits until it serves `value` and the cluster has converged.
fn heal_and_converge(fc: &mut FaultCluster, t: &Target, value: u8) {
    fc.heal(t.p);
    let healed = Instant::now();
    let served = wait_for(READY_TIMEOUT, || {
        (read(fc, t.p, t.offset) == Read::Uniform(value)).then_some(())
    });
    assert!(
        served.is_some(),
        "node {} never served {value:#x} after healing\n{}",
        t.p,
        fc.cluster.logs()
    );
    let settled = wait_for(READY_TIMEOUT, || {
        converged(fc, u64::from(t.pg_count)).then_some(())
    });
    assert!(
        settled.is_some(),
        "cluster never converged after healing\n{}",
        fc.cluster.logs()
    );
    eprintln!("converged {:?} after healing", healed.elapsed());
}

/// Stops every node and compares the drives chunk by chunk: every member holds the same
/// chunks with the same bytes, and each chunk in `written` (index → pattern) holds its pattern.
fn stop_and_compare(fc: &mut FaultCluster, volume: u64, written: &BTreeMap<u64, u8>) {
    for n in 1..=3 {
        assert!(
            fc.cluster.stop(n).is_some(),
            "node {n} did not stop cleanly"
        );
    }
    let copies: Vec<_> = (1..=3).map(|n| drive_chunks(&fc.cluster, n)).collect();
    for (index, pattern) in written {
        let key = format!("{}/{index}", VolumeId(volume));
        let (_, crc) = copies[0]
            .get(&key)
            .unwrap_or_else(|| panic!("node 1 lacks chunk {key}: {:?}", copies[0]));
        assert_eq!(
            crc,
            &expected_crc(*pattern),
            "chunk {key} holds {pattern:#x}"
        );
    }
    for (i, copy) in copies.iter().enumerate().skip(1) {
        assert_eq!(copy, &copies[0], "node {} differs from node 1", i + 1);
    }
}

/// Cuts the target's primary off, checks it serves no data once its lease has expired, and
/// writes `value` through a surviving node once the PG has failed over.
fn cut_and_write(fc: &mut FaultCluster, t: &Target, lease: Duration, value: u8) {
    let (p, w, offset) = (t.p, t.w, t.offset);
    let epoch_before = api_get(fc, w, "/v1/cluster").expect("status")["epoch"].clone();

    // Cut the primary off. Its lease ends at most `lease` after its last heartbeat.
    fc.partition(p);
    let cut = Instant::now();
    std::thread::sleep(lease + Duration::from_secs(1));
    let stale = read(fc, p, offset);
    eprintln!(
        "{:?} after the cut, read through {p}: {stale:?}",
        cut.elapsed()
    );
    assert!(
        !stale.is_data(),
        "node {p} answered a read with data {:?} after the cut (lease {lease:?})\n{}",
        stale,
        fc.cluster.logs()
    );

    // Writes continue through a surviving node once the PG has failed over.
    let mut last = String::new();
    let wrote = wait_for(Duration::from_secs(120), || {
        match write(fc, w, offset, value) {
            Ok(()) => Some(cut.elapsed()),
            Err(e) => {
                last = e;
                None
            }
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "write {value:#x} never succeeded: {last}\n{}",
            fc.cluster.logs()
        )
    });
    eprintln!("{value:#x} acknowledged {wrote:?} after the cut");
    assert_eq!(
        read(fc, w, offset),
        Read::Uniform(value),
        "through node {w}"
    );
    assert_eq!(
        read(fc, t.s, offset),
        Read::Uniform(value),
        "through node {}",
        t.s
    );
    let status = api_get(fc, w, "/v1/cluster").expect("status");
    assert!(status["epoch"].as_u64() > epoch_before.as_u64(), "{status}");
    assert_eq!(
        fc.in_client(|| fc.cluster.node_state(&Http::new(), w, p))
            .as_deref(),
        Some("down")
    );

    // The isolated node still holds the old data and is still reachable by the client: it
    // must not answer with it.
    for attempt in 0..2 {
        let stale = read(fc, p, offset);
        eprintln!("after the write, read through {p} ({attempt}): {stale:?}");
        assert!(
            !stale.is_data(),
            "node {p} answered a read with data {stale:?} after {value:#x} was acknowledged\n{}",
            fc.cluster.logs()
        );
    }
}

/// The partition scenario. `leader_primary`: cut off the metadata service's Raft leader
/// (choosing a chunk it is the primary of); otherwise a primary that is not the leader.
fn isolated_primary(net: u8, leader_primary: bool) {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the partition test: {why}");
        return;
    }
    let spec = ClusterSpec::new(net, 3);
    let lease = spec.down_after * 2 / 3;
    let mut fc = FaultCluster::start(&spec);
    let leader = fc
        .in_client(|| fc.cluster.wait_formed(&Http::new(), 3, READY_TIMEOUT))
        .unwrap_or_else(|| panic!("cluster never formed\n{}", fc.cluster.logs()));
    let volume = create_volume(&fc, leader);
    let t = pick_target(&fc, volume, leader, leader_primary, 0);
    write_everywhere(&fc, &t, 0, A);
    cut_and_write(&mut fc, &t, lease, B);
    heal_and_converge(&mut fc, &t, B);
    stop_and_compare(&mut fc, t.volume, &BTreeMap::from([(t.index, B)]));
}

/// Goal: a primary that is not the metadata leader, cut off from the other nodes, stops
/// serving reads once its lease has expired; writes continue on the new primary; after
/// healing the three copies are identical.
#[test]
fn isolated_primary_serves_no_stale_reads_and_converges() {
    isolated_primary(91, false);
}

/// Goal: the same when the isolated primary is also the metadata service's Raft leader
/// (it keeps believing it leads until it hears of a newer term).
#[test]
fn isolated_leader_primary_serves_no_stale_reads_and_converges() {
    isolated_primary(92, true);
}

/// Goal (soak mode; the bounded versions are the two tests above): partitions over and over
/// lose nothing and never serve stale data. Each round picks a chunk whose primary is the Raft
/// leader (odd rounds) or not (even rounds), writes a new pattern, cuts the primary off,
/// checks it serves no data after its lease, writes the next pattern through a survivor,
/// heals, waits for convergence and reads every chunk written so far through every node.
/// At the end every node is stopped and the drives are compared chunk by chunk.
/// `BASALT_SOAK_SECS=600 cargo test -p basalt --test cluster_partition soak`.
#[test]
fn partition_soak() {
    let Some(secs) = common::soak_only() else {
        return;
    };
    if let Some(why) = skip_reason() {
        eprintln!("skipping the partition soak: {why}");
        return;
    }
    let spec = ClusterSpec::new(94, 3);
    let lease = spec.down_after * 2 / 3;
    let mut fc = FaultCluster::start(&spec);
    let formed = |fc: &FaultCluster| {
        fc.in_client(|| fc.cluster.wait_formed(&Http::new(), 3, READY_TIMEOUT))
            .unwrap_or_else(|| panic!("cluster not formed\n{}", fc.cluster.logs()))
    };
    let volume = create_volume(&fc, formed(&fc));
    let mut written: BTreeMap<u64, u8> = BTreeMap::new();
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        let leader = formed(&fc);
        let t = pick_target(&fc, volume, leader, rounds % 2 == 1, rounds as usize);
        let before = written.get(&t.index).copied().unwrap_or(0);
        let first = 1 + u8::try_from(rounds * 2 % 254).expect("pattern");
        write_everywhere(&fc, &t, before, first);
        cut_and_write(&mut fc, &t, lease, first + 1);
        heal_and_converge(&mut fc, &t, first + 1);
        written.insert(t.index, first + 1);
        for (&index, &pattern) in &written {
            for n in 1..=3 {
                assert_eq!(
                    read(&fc, n, index * CHUNK + OFFSET),
                    Read::Uniform(pattern),
                    "chunk {index} through node {n} after round {rounds}"
                );
            }
        }
        rounds += 1;
        eprintln!(
            "round {rounds} (primary {} isolated) done at {:?}",
            t.p,
            started.elapsed()
        );
    }
    assert!(rounds >= 2, "only {rounds} rounds");
    stop_and_compare(&mut fc, volume, &written);
    eprintln!("{rounds} partitions, {} chunks compared", written.len());
}

/// Goal: the harness's faults do what they say, checked with TCP connects between its
/// namespaces (no cluster): a partition cuts a node off from the other nodes both ways but not
/// from the client; a cut between two nodes leaves the client alone; a 100% drop rate drops
/// everything; healing restores every path.
#[test]
fn fault_harness_cuts_drops_and_heals_links() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the fault harness test: {why}");
        return;
    }
    let mut lab = NetLab::create(2);
    let port = 7000;
    // Listeners that never accept: the kernel completes handshakes into the backlog.
    let _listeners: Vec<std::net::TcpListener> = (1..=2)
        .map(|n| {
            lab.in_netns(&lab.node_netns(n), || {
                std::net::TcpListener::bind((subnet_ip(n), port)).expect("bind in namespace")
            })
        })
        .collect();
    let (node1, node2, client) = (lab.node_netns(1), lab.node_netns(2), lab.client_netns());
    let connects = |lab: &NetLab, from: &str, to: u8| {
        lab.in_netns(from, || {
            let addr = std::net::SocketAddr::new(subnet_ip(to), port);
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(700)).is_ok()
        })
    };
    let paths = |lab: &NetLab| {
        [
            connects(lab, &node1, 2),
            connects(lab, &node2, 1),
            connects(lab, &client, 1),
            connects(lab, &client, 2),
        ]
    };
    assert_eq!(paths(&lab), [true; 4], "healthy");
    lab.partition(1);
    assert_eq!(
        paths(&lab),
        [false, false, true, true],
        "node 1 partitioned"
    );
    lab.heal(1);
    assert_eq!(paths(&lab), [true; 4], "healed");
    lab.cut(2, 1);
    assert_eq!(
        paths(&lab),
        [false, false, true, true],
        "link 1-2 cut at node 2"
    );
    lab.heal(1);
    assert_eq!(
        paths(&lab),
        [true; 4],
        "healing node 1 removes node 2's cut"
    );
    lab.drop_rate(1, 100);
    assert_eq!(
        paths(&lab),
        [false, false, true, true],
        "100% drop at node 1"
    );
    lab.drop_rate(1, 0);
    assert_eq!(paths(&lab), [true; 4], "no drop");
    match lab.delay(1, 20) {
        Ok(()) => {
            assert_eq!(paths(&lab), [true; 4], "delayed, not dropped");
            lab.delay(1, 0).expect("remove the delay");
        }
        Err(e) => eprintln!("delay not available here: {e}"),
    }
}
