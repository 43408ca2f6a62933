//! The acknowledged-write audit (`basalt audit`, `docs/audit.md`) against a 3-node cluster of
//! `blockd` processes on 127.0.68.x: nodes killed with SIGKILL under load, then a full-cluster
//! power-cycle with writes in flight, then every acknowledged write must read back.
//!
//! The long version is the soak mode: `BASALT_SOAK_SECS=600 cargo test --test cluster_audit`
//! (`BASALT_SOAK_NET` picks another 127.0.x net so it can run beside the suite).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use basalt::api::client::Client;
use basalt::api::{ClusterStatus, VolumeCreateRequest};
use basalt::audit::{
    AUDIT_BLOCK_BYTES, LOG_HEADER_BYTES, RECORD_BYTES, Record, RecordKind, decode_log,
    encode_header,
};
use basalt::size::Size;
use common::{ADMIN_TOKEN, ClusterSpec, TestCluster, wait_for, workspace_bin};
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// Bound on a cluster becoming ready, a volume appearing.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on one `basalt audit check` or `qemu-io` run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the writer keeps trying to reconnect (covers a full-cluster restart).
const RECONNECT_SECS: u64 = 150;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn status(cluster: &TestCluster, n: u8) -> Option<ClusterStatus> {
    let client = Client::new(
        &cluster.api_url(n),
        Some(ADMIN_TOKEN.into()),
        Duration::from_secs(10),
    )
    .expect("API client");
    runtime().block_on(client.cluster_status()).ok()
}

/// Waits until node `n` sees a leader, every node up and (with `active`) no inactive PG.
fn wait_healthy(cluster: &TestCluster, n: u8, active: bool) -> ClusterStatus {
    wait_for(READY_TIMEOUT, || {
        status(cluster, n)
            .filter(|s| s.leader.is_some() && s.nodes.up == 3 && (!active || s.pgs.inactive == 0))
    })
    .unwrap_or_else(|| panic!("cluster not healthy\n{}", cluster.logs()))
}

fn create_volume(cluster: &TestCluster, name: &str, size: u64) {
    let rt = runtime();
    let client = Client::new(
        &cluster.api_url(1),
        Some(ADMIN_TOKEN.into()),
        Duration::from_secs(10),
    )
    .expect("API client");
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
    .unwrap_or_else(|| panic!("create volume {name}: {last}\n{}", cluster.logs()));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a program to completion within `timeout` (killed and reported otherwise).
fn run(program: &Path, args: &[&str], timeout: Duration) -> Output {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    finish(child, timeout, &format!("{} {args:?}", program.display()))
}

/// Waits for `child` (output piped) for at most `timeout`; kills it and panics after that.
fn finish(mut child: Child, timeout: Duration, what: &str) -> Output {
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
        if let Some(status) = child.try_wait().expect("wait for child") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    let Some(status) = status else {
        panic!(
            "{what} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            text(&stdout),
            text(&stderr)
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// `basalt --json audit check` of `log` through `nbd`.
fn audit_check(nbd: &str, log: &Path) -> Output {
    let log = log.to_str().expect("log path");
    run(
        &workspace_bin("basalt"),
        &[
            "--json", "audit", "check", "--nbd", nbd, "--export", "audit", "--log", log,
        ],
        CLIENT_TIMEOUT,
    )
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "invalid JSON ({e}):\n{}\nstderr:\n{}",
            text(&output.stdout),
            text(&output.stderr)
        )
    })
}

/// Sleeps until `at` after `start`, returning early (false) if the writer already exited.
fn sleep_until(start: Instant, at: Duration, writer: &mut Child) -> bool {
    while start.elapsed() < at {
        if matches!(writer.try_wait(), Ok(Some(_))) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// `basalt --json audit write` through `nbd` for `secs`: 16 writes of up to 64 KiB in flight.
fn writer_args(nbd: &str, log: &Path, secs: u64) -> Vec<String> {
    let mut args: Vec<String> = [
        "--json", "audit", "write", "--nbd", nbd, "--export", "audit",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(["--log".into(), log.to_str().expect("log path").to_owned()]);
    for (flag, value) in [
        ("--depth", 16),
        ("--seconds", secs),
        ("--reconnect-secs", RECONNECT_SECS),
    ] {
        args.extend([flag.to_owned(), value.to_string()]);
    }
    args.extend(["--block-size".into(), "64K".into()]);
    args
}

/// Starts `basalt audit write` with `args`. The export appears once node 1 has the volume in
/// its map, so the first connection is retried.
fn start_writer(cluster: &TestCluster, args: &[String]) -> Child {
    wait_for(READY_TIMEOUT, || {
        let mut child = Command::new(workspace_bin("basalt"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn basalt audit write");
        std::thread::sleep(Duration::from_secs(2));
        match child.try_wait() {
            Ok(Some(_)) => {
                let output = finish(child, Duration::from_secs(5), "early writer");
                eprintln!("writer not started yet: {}", text(&output.stderr));
                None
            }
            _ => Some(child),
        }
    })
    .unwrap_or_else(|| panic!("the audit writer never started\n{}", cluster.logs()))
}

/// Single-node kills every 15 s, alternating node 2 and node 1, each down for 3 s; then, 15 s
/// before the writer's end, every node at once (restarted after 2 s). Returns the number of
/// single-node kills.
fn kill_nodes(cluster: &mut TestCluster, writer: &mut Child, start: Instant, secs: u64) -> u32 {
    let power_cycle_at = Duration::from_secs(secs - 15);
    let mut at = Duration::from_secs(12);
    let mut victims = [2u8, 1].into_iter().cycle();
    let mut kills = 0;
    while at + Duration::from_secs(10) < power_cycle_at && sleep_until(start, at, writer) {
        let victim = victims.next().expect("cycle");
        eprintln!("{:?}: kill -9 node {victim}", start.elapsed());
        cluster.kill(victim);
        std::thread::sleep(Duration::from_secs(3));
        cluster.start_node(victim);
        kills += 1;
        at += Duration::from_secs(15);
    }
    assert!(
        sleep_until(start, power_cycle_at, writer),
        "the writer exited before the power-cycle"
    );
    eprintln!("{:?}: kill -9 every node", start.elapsed());
    for n in 1..=3 {
        cluster.kill(n);
    }
    std::thread::sleep(Duration::from_secs(2));
    for n in 1..=3 {
        cluster.start_node(n);
    }
    kills
}

/// Overwrites, with qemu-io through `nbd`, one block of the last acknowledged write that no
/// later write touched; returns its offset.
fn overwrite_an_acknowledged_block(nbd: &str, log: &Path) -> u64 {
    let decoded = decode_log(&std::fs::read(log).expect("read log")).expect("decode log");
    let victim = decoded
        .records
        .iter()
        .rev()
        .find(|r| r.kind == RecordKind::Ack)
        .expect("an acknowledged write");
    let later_intent = |block: u64| {
        decoded
            .records
            .iter()
            .any(|r| r.seq > victim.seq && r.blocks().contains(&block))
    };
    let block = victim
        .blocks()
        .find(|b| !later_intent(*b))
        .expect("the last acknowledged write has a block nothing later touched");
    let offset = block * AUDIT_BLOCK_BYTES;
    let uri = format!("nbd://{nbd}/audit");
    let qemu = run(
        Path::new("qemu-io"),
        &[
            "-f",
            "raw",
            "-c",
            &format!("write -P 0x5a {offset} 4096"),
            &uri,
        ],
        CLIENT_TIMEOUT,
    );
    assert!(
        qemu.status.success() && text(&qemu.stdout).contains("wrote 4096/4096"),
        "qemu-io: {}{}",
        text(&qemu.stdout),
        text(&qemu.stderr)
    );
    offset
}

/// Goal: no acknowledged write is lost or torn across node crashes and a full-cluster
/// power-cycle, and the checker catches a block changed behind its back. Method: `basalt
/// audit write` (16 writes of 4–64 KiB in flight) runs through node 1 for 75 s (or the soak
/// time) while node 2 and then node 1 itself (the writer's server: the connection drops, the
/// writer reconnects) are killed with SIGKILL and restarted after 3 s; then all three nodes are
/// killed at once with writes in flight and restarted. Once the cluster is healthy again,
/// `basalt audit check` through node 2 must find every acknowledged write, and writes lost with
/// a connection either landed whole per block or not at all. Finally qemu-io overwrites one
/// acknowledged block and the check must fail naming its offset.
#[test]
fn audit_survives_node_kills_and_a_full_cluster_power_cycle() {
    let soak = common::soak_secs();
    let net = std::env::var("BASALT_SOAK_NET")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(68);
    let mut cluster = TestCluster::start(&ClusterSpec::new(net, 3));
    wait_healthy(&cluster, 1, false);
    create_volume(&cluster, "audit", 64 * MIB);
    let nbd1 = cluster.nbd_addr(1).to_string();
    let log = cluster.dir().join("audit.log");

    let write_secs = if soak > 0 { soak.max(75) } else { 75 };
    let mut writer = start_writer(&cluster, &writer_args(&nbd1, &log, write_secs));
    let start = Instant::now();

    let kills = kill_nodes(&mut cluster, &mut writer, start, write_secs);
    let output = finish(
        writer,
        Duration::from_secs(write_secs + RECONNECT_SECS + 60),
        "basalt audit write",
    );
    eprintln!("writer stderr:\n{}", text(&output.stderr));
    assert!(
        output.status.success(),
        "the writer failed ({}):\n{}\n{}",
        output.status,
        text(&output.stdout),
        cluster.logs()
    );
    let summary = json(&output);
    eprintln!("{kills} single-node kills; writer: {summary}");
    assert!(kills >= 2, "fewer kills than planned");
    assert!(
        summary["reconnects"].as_u64() >= Some(2),
        "node 1's kill and the power-cycle both drop the writer's connection: {summary}"
    );
    assert!(
        summary["writes_acknowledged"].as_u64() > Some(100),
        "{summary}"
    );

    wait_healthy(&cluster, 2, true);
    let nbd2 = cluster.nbd_addr(2).to_string();
    let output = audit_check(&nbd2, &log);
    let report = json(&output);
    eprintln!("check: {report}");
    assert!(
        output.status.success() && report["mismatches"] == 0 && report["read_errors"] == 0,
        "acknowledged writes are missing:\n{report:#}\nstderr:\n{}\n{}",
        text(&output.stderr),
        cluster.logs()
    );
    assert!(report["blocks_checked"].as_u64() > Some(0), "{report}");

    let offset = overwrite_an_acknowledged_block(&nbd2, &log);
    let output = audit_check(&nbd2, &log);
    let report = json(&output);
    assert!(!output.status.success(), "the check must fail: {report:#}");
    assert_eq!(report["mismatches"], 1, "{report:#}");
    assert_eq!(
        report["first_mismatches"][0]["offset"], offset,
        "{report:#}"
    );
    assert_eq!(
        report["first_mismatches"][0]["found"], "unrecognised data",
        "{report:#}"
    );
}

/// Goal: a damaged record in the middle of a log fails the check before any I/O (it is not
/// mistaken for a torn tail), naming the record. Method: a log built with the library's
/// encoder, one byte of its second record flipped; the NBD address is never contacted.
#[test]
fn audit_check_refuses_a_corrupted_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("audit.log");
    let mut bytes = encode_header(7).to_vec();
    for seq in 1..=3 {
        let record = Record {
            kind: RecordKind::Intent,
            seq,
            offset: 0,
            length: 4096,
            payload_crc: 0,
        };
        bytes.extend_from_slice(&record.encode());
    }
    bytes[LOG_HEADER_BYTES + RECORD_BYTES + 9] ^= 0x40;
    std::fs::write(&log, &bytes).expect("write log");
    let output = run(
        &workspace_bin("basalt"),
        &[
            "audit",
            "check",
            "--nbd",
            "127.0.68.254:9",
            "--export",
            "audit",
            "--log",
            log.to_str().expect("path"),
        ],
        Duration::from_secs(30),
    );
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("record 1 (byte 64) is corrupt"),
        "the error names the record:\n{stderr}"
    );
}
