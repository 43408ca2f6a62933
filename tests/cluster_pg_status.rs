//! Cluster-wide PG states and recovery progress (issue 5, "reported"): a node is killed, data
//! is written through NBD while it is down, and it comes back; `GET /v1/pgs` shows the PGs go
//! degraded → recovering → active with what is left reaching 0, and the CLI's `cluster
//! status`, `pg list` and `cluster status --watch` (no terminal) print it.
//!
//! Runs on 127.0.69.1-3. Needs `fio` (with its nbd engine) like `tests/cluster_nbd.rs`.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use basalt::api::client::Client;
use basalt::api::{ClusterStatus, PgList, PgStatus, VolumeCreateRequest};
use basalt::size::Size;
use common::{ADMIN_TOKEN, ClusterSpec, TestCluster, wait_for, workspace_bin};

const MIB: u64 = 1 << 20;
/// Data written while node 3 is down.
const WRITE_MIB: u64 = 64;
/// Bound on the cluster forming, a node being marked down or up, a volume appearing.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on recovery of the missed writes (debug daemons on a loaded machine).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(240);
/// Bound on one client run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

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

fn status(rt: &tokio::runtime::Runtime, client: &Client) -> Option<ClusterStatus> {
    rt.block_on(client.cluster_status()).ok()
}

fn pgs(rt: &tokio::runtime::Runtime, client: &Client) -> Option<PgList> {
    rt.block_on(client.pgs_in(None)).ok()
}

/// Runs `program` to completion within `timeout` (killed and reported otherwise); stdout and
/// stderr are captured.
fn run(program: &str, args: &[&str], timeout: Duration) -> Output {
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
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("wait for killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A sequential 1 MiB write of `size_mib` through NBD with fio; must succeed.
fn fio_write(cluster: &TestCluster, uri: &str, size_mib: u64) {
    let uri_arg = format!("--uri={uri}");
    let size_arg = format!("--size={size_mib}m");
    let args = [
        "--name=pgstatus",
        "--ioengine=nbd",
        uri_arg.as_str(),
        "--rw=write",
        "--bs=1m",
        "--iodepth=8",
        size_arg.as_str(),
    ];
    let output = run("fio", &args, CLIENT_TIMEOUT);
    assert!(
        output.status.success(),
        "fio failed: {}\n{}\n{}",
        text(&output.stdout),
        text(&output.stderr),
        cluster.logs()
    );
}

/// `basalt --api <node n> <args>` with the admin token.
fn basalt(cluster: &TestCluster, n: u8, args: &[&str], timeout: Duration) -> Output {
    let bin = workspace_bin("basalt");
    let api = cluster.api_url(n);
    let mut all = vec!["--api", api.as_str(), "--token", ADMIN_TOKEN];
    all.extend_from_slice(args);
    run(bin.to_str().expect("utf-8 path"), &all, timeout)
}

/// Goal: while a node is down its PGs are degraded; after it returns the PGs that missed
/// writes are reported recovering (with chunks and bytes left) until every PG is active and
/// nothing is left; the CLI shows the same.
#[test]
fn pg_states_follow_a_node_through_recovery() {
    let mut cluster = TestCluster::start(&ClusterSpec::new(69, 3));
    let rt = runtime();
    let client = api(&cluster, 1);
    let before = wait_for(READY_TIMEOUT, || {
        status(&rt, &client).filter(|s| s.leader.is_some() && s.nodes.up == 3)
    })
    .unwrap_or_else(|| panic!("cluster never formed\n{}", cluster.logs()));
    let uri = create_and_export(&cluster, &rt, &client);
    // Every PG that will miss writes holds a copy on node 3 first: its recovery then catches
    // a returning member up (recovering), not a new one (backfilling).
    fio_write(&cluster, &uri, WRITE_MIB);

    let healthy = pgs(&rt, &client).expect("PG list");
    assert!(healthy.total > 0 && healthy.pgs.len() as u64 == healthy.total);
    assert!(
        healthy
            .pgs
            .iter()
            .all(|pg| pg.state == PgStatus::Active && pg.reported),
        "{healthy:?}"
    );

    cluster.kill(3);
    let degraded = wait_for(READY_TIMEOUT, || {
        status(&rt, &client).filter(|s| s.nodes.down == 1 && s.epoch > before.epoch)
    })
    .unwrap_or_else(|| panic!("node 3 never marked down\n{}", cluster.logs()));
    assert!(degraded.pgs.degraded > 0, "{degraded:?}");
    let filtered = rt
        .block_on(client.pgs_in(Some(PgStatus::Degraded)))
        .expect("degraded PGs");
    // (New primaries may still be peering: the counts move between two calls.)
    assert!(filtered.total > 0 && filtered.pgs.len() as u64 == filtered.total);
    assert!(filtered.pgs.iter().all(|pg| pg.state == PgStatus::Degraded));

    fio_write(&cluster, &uri, WRITE_MIB);
    cluster.start_node(3);

    let (done, seen) = wait_recovered(&rt, &client);
    assert!(
        done.is_some(),
        "PGs never all active again (seen {seen:?})\n{}",
        cluster.logs()
    );
    assert!(
        seen.contains(&PgStatus::Recovering),
        "no PG was reported recovering (seen {seen:?})\n{}",
        cluster.logs()
    );
    assert!(!seen.contains(&PgStatus::Inactive), "{seen:?}");
    let after = status(&rt, &client).expect("status");
    let recovery = after.recovery.clone().expect("recovery figures");
    assert_eq!(
        (recovery.remaining_objects, recovery.remaining_bytes),
        (0, 0)
    );
    assert!(recovery.recovered_bytes > 0, "{recovery:?}");
    assert_eq!(after.pgs.active, after.pgs.total());

    check_cli(&cluster, &after);
}

/// Creates the volume `pgs` and waits for node 1 to export it; returns its NBD URI.
fn create_and_export(
    cluster: &TestCluster,
    rt: &tokio::runtime::Runtime,
    client: &Client,
) -> String {
    let request = VolumeCreateRequest {
        name: "pgs".into(),
        size: Size(WRITE_MIB * MIB),
        replicas: None,
    };
    wait_for(READY_TIMEOUT, || {
        rt.block_on(client.create_volume(&request, Some("pgs")))
            .ok()
    })
    .unwrap_or_else(|| panic!("volume not created\n{}", cluster.logs()));
    let uri = format!("nbd://{}/pgs", cluster.nbd_addr(1));
    let exported = wait_for(READY_TIMEOUT, || {
        run("nbdinfo", &[uri.as_str()], Duration::from_secs(20))
            .status
            .success()
            .then_some(())
    });
    assert!(
        exported.is_some(),
        "export never appeared\n{}",
        cluster.logs()
    );
    uri
}

/// The CLI on a recovered cluster: one status, PG lists, and a watch without a terminal.
fn check_cli(cluster: &TestCluster, after: &ClusterStatus) {
    let short = Duration::from_secs(30);
    let out = basalt(cluster, 2, &["cluster", "status"], short);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    assert!(
        shown.contains("recovery") && shown.contains("0 objects (0 B) left"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("{} active", after.pgs.active)),
        "{shown}"
    );

    let out = basalt(cluster, 3, &["pg", "list"], short);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    assert!(
        shown.contains("STATE") && shown.contains("active"),
        "{shown}"
    );
    let out = basalt(cluster, 3, &["pg", "list", "--state", "recovering"], short);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("recovering"),
        "{}",
        text(&out.stdout)
    );
    let out = basalt(cluster, 3, &["pg", "list", "--state", "bogus"], short);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    let watch = &["cluster", "status", "--watch", "--interval", "300ms"];
    let out = basalt(cluster, 1, watch, Duration::from_secs(2));
    let shown = text(&out.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    assert!(
        lines.len() >= 2,
        "watch printed {lines:?}\n{}",
        text(&out.stderr)
    );
    assert!(
        lines.iter().all(|line| line.starts_with("health=ok")),
        "{lines:?}"
    );
}

/// Polls `GET /v1/pgs` until every PG is active again with nothing left (after recovery was
/// seen); returns the last list (None on timeout) and every state seen.
fn wait_recovered(
    rt: &tokio::runtime::Runtime,
    client: &Client,
) -> (Option<PgList>, BTreeSet<PgStatus>) {
    let mut seen: BTreeSet<PgStatus> = BTreeSet::new();
    let mut most_left = (0u64, 0u64);
    let started = Instant::now();
    let done = wait_for(RECOVERY_TIMEOUT, || {
        let list = pgs(rt, client)?;
        seen.extend(list.pgs.iter().map(|pg| pg.state));
        let left = list.pgs.iter().fold((0, 0), |(o, b), pg| {
            (o + pg.remaining_objects, b + pg.remaining_bytes)
        });
        most_left = (most_left.0.max(left.0), most_left.1.max(left.1));
        let all_active = list.pgs.iter().all(|pg| pg.state == PgStatus::Active);
        // Right after the restart the map may show node 3 up before its PGs' primaries
        // start recovering: done only once recovery was seen.
        let recovered = seen.contains(&PgStatus::Recovering);
        (recovered && all_active && left == (0, 0) && list.unreachable_nodes.is_empty())
            .then_some(list)
    });
    let elapsed = started.elapsed();
    eprintln!("recovered in {elapsed:?}; states seen {seen:?}; most left {most_left:?}");
    (done, seen)
}
