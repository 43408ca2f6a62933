//! The metadata service's Raft layer, in one process over the in-memory transport: elections,
//! replication, leader failover, restarts from disk, snapshot catch-up, torn log tails, and
//! openraft's storage conformance suite against our log and state-machine stores.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockd::meta::{
    LogStore, MemRouter, MetaNode, MetaNodeConfig, ProposeError, ReplicatedState, Request,
    SnapshotError, StateMachineStore, TypeConfig,
};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::type_config::alias::EntryOf;
use openraft::{RaftLogReader, StorageError};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

/// A toy replicated key-value map; `applied` counts commands so order and duplicates show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Kv {
    map: BTreeMap<String, String>,
    applied: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum KvCmd {
    Set(String, String),
}

impl ReplicatedState for Kv {
    type Command = KvCmd;
    type Response = Option<String>;

    fn apply(&mut self, cmd: &KvCmd) -> Option<String> {
        self.applied += 1;
        match cmd {
            KvCmd::Set(k, v) => self.map.insert(k.clone(), v.clone()),
        }
    }

    fn to_snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        postcard::to_stdvec(self).map_err(SnapshotError::new)
    }

    fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        postcard::from_bytes(bytes).map_err(SnapshotError::new)
    }
}

const WAIT: Duration = Duration::from_secs(10);

fn addr(id: u64) -> String {
    format!("mem://{id}")
}

fn set(k: impl Into<String>, v: impl Into<String>) -> KvCmd {
    KvCmd::Set(k.into(), v.into())
}

/// Nodes of one test cluster, each with its own data directory under `root`.
struct Cluster {
    router: Arc<MemRouter>,
    root: TempDir,
    nodes: BTreeMap<u64, MetaNode<Kv>>,
    tweak: fn(&mut MetaNodeConfig),
}

fn fast(config: &mut MetaNodeConfig) {
    config.heartbeat_interval = Duration::from_millis(50);
    config.election_timeout_min = Duration::from_millis(300);
    config.election_timeout_max = Duration::from_millis(600);
    config.propose_timeout = Duration::from_secs(3);
}

impl Cluster {
    async fn new(n: u64, tweak: fn(&mut MetaNodeConfig)) -> Self {
        let mut cluster = Self {
            router: MemRouter::new(),
            root: tempfile::tempdir().expect("create temp dir"),
            nodes: BTreeMap::new(),
            tweak,
        };
        for id in 1..=n {
            cluster.start_node(id).await;
        }
        let voters = (1..=n).map(|id| (id, addr(id))).collect();
        cluster.nodes[&1]
            .initialize(voters)
            .await
            .expect("initialize the cluster");
        cluster
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("node{id}"))
    }

    async fn start_node(&mut self, id: u64) {
        let mut config = MetaNodeConfig::new(id, self.dir(id));
        fast(&mut config);
        (self.tweak)(&mut config);
        let node = MetaNode::start(config, self.router.transport(id), Kv::default())
            .await
            .expect("start node");
        self.router.register(&node);
        self.router.heal(id);
        self.nodes.insert(id, node);
    }

    /// Stops node `id` and cuts it off, as a crash would.
    async fn kill(&mut self, id: u64) {
        self.router.isolate(id);
        self.router.unregister(id);
        let node = self.nodes.remove(&id).expect("node is running");
        node.shutdown().await.expect("shut node down");
    }

    /// The single live node that believes it leads, once the others agree.
    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let leaders: Vec<u64> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.is_leader())
                .map(|(id, _)| *id)
                .collect();
            if let [leader] = leaders[..] {
                let agreed = self
                    .nodes
                    .values()
                    .all(|n| n.leader().map(|(l, _)| l) == Some(leader));
                if agreed {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Proposes through whichever node leads, following redirects, within a bounded time.
    async fn propose(&self, cmd: KvCmd) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        let mut target = *self.nodes.keys().next().expect("cluster has nodes");
        loop {
            match self.nodes[&target].propose(&cmd).await {
                Ok(r) => return r,
                Err(ProposeError::ForwardToLeader { leader_id, .. })
                    if self.nodes.contains_key(&leader_id) =>
                {
                    target = leader_id;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "proposal kept failing: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    target = self.leader().await;
                }
            }
        }
    }

    /// Waits until every live node applied what `leader` applied, then checks equal states.
    async fn converge(&self) -> Kv {
        let leader = self.leader().await;
        let applied = self.nodes[&leader].subscribe().borrow().clone();
        let index = applied.index.expect("leader applied something");
        for node in self.nodes.values() {
            node.wait_applied(index, WAIT)
                .await
                .expect("node catches up with the leader");
        }
        let expected = applied.state;
        for (id, node) in &self.nodes {
            assert_eq!(
                *node.read_state(),
                *expected,
                "node {id} differs from the leader"
            );
        }
        (*expected).clone()
    }

    async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_and_redirect() {
    let cluster = Cluster::new(3, |_| {}).await;
    let leader = cluster.leader().await;
    for i in 0..20 {
        let prev = cluster
            .propose(set(format!("k{}", i % 5), format!("v{i}")))
            .await;
        assert_eq!(prev, (i >= 5).then(|| format!("v{}", i - 5)));
    }
    let state = cluster.converge().await;
    assert_eq!(state.applied, 20);
    assert_eq!(state.map.len(), 5);

    let follower = cluster
        .nodes
        .keys()
        .copied()
        .find(|id| *id != leader)
        .unwrap();
    match cluster.nodes[&follower].propose(&set("x", "y")).await {
        Err(ProposeError::ForwardToLeader {
            leader_id,
            leader_addr,
        }) => {
            assert_eq!(leader_id, leader);
            assert_eq!(leader_addr, addr(leader));
        }
        other => panic!("follower proposal should redirect, got {other:?}"),
    }

    let status = cluster.nodes[&leader].status();
    assert_eq!(status.role, blockd::meta::Role::Leader);
    assert_eq!(
        status.voters.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(status.leader_addr.as_deref(), Some(addr(leader).as_str()));
    // Initializing again (or elsewhere) is a no-op once the cluster exists.
    let voters = (1..=3).map(|id| (id, addr(id))).collect();
    cluster.nodes[&follower].initialize(voters).await.unwrap();
    cluster.shutdown().await;
}

/// Appends bytes to the newest log segment of a stopped node, as a torn write would leave.
fn tear_log_tail(data_dir: &Path, garbage: &[u8]) {
    let seg_dir = data_dir.join("raft").join("log");
    let newest = std::fs::read_dir(&seg_dir)
        .expect("tear the log tail")
        .map(|e| e.expect("tear the log tail").path())
        .max()
        .expect("tear the log tail");
    let mut f = OpenOptions::new()
        .append(true)
        .open(newest)
        .expect("tear the log tail");
    f.write_all(garbage).expect("tear the log tail");
    f.sync_all().expect("tear the log tail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_restarted_node_catches_up() {
    let mut cluster = Cluster::new(3, |_| {}).await;
    for i in 0..10 {
        cluster.propose(set(format!("a{i}"), "1")).await;
    }
    let old_leader = cluster.leader().await;
    cluster.kill(old_leader).await;

    let started = Instant::now();
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    assert!(started.elapsed() < WAIT);
    for i in 0..10 {
        cluster.propose(set(format!("b{i}"), "2")).await;
    }

    // A torn tail on the dead node's log is cut off on restart; the node then catches up.
    tear_log_tail(&cluster.dir(old_leader), &[0x40, 0, 0, 0, 0xde, 0xad]);
    cluster.start_node(old_leader).await;
    let state = cluster.converge().await;
    assert_eq!(state.applied, 20);
    assert_eq!(state.map.len(), 20);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_two_failures() {
    let mut cluster = Cluster::new(5, |_| {}).await;
    cluster.propose(set("before", "1")).await;
    let leader = cluster.leader().await;
    let other = cluster
        .nodes
        .keys()
        .copied()
        .find(|id| *id != leader)
        .unwrap();
    cluster.kill(leader).await;
    cluster.kill(other).await;
    for i in 0..10 {
        cluster.propose(set(format!("after{i}"), "1")).await;
    }
    let state = cluster.converge().await;
    assert_eq!(state.applied, 11);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restarts_from_disk() {
    let mut cluster = Cluster::new(3, |_| {}).await;
    for i in 0..15 {
        cluster.propose(set(format!("k{i}"), format!("{i}"))).await;
    }
    // One node holds a snapshot, the others only their log.
    let leader = cluster.leader().await;
    cluster.nodes[&leader].snapshot(WAIT).await.unwrap();
    for i in 15..30 {
        cluster.propose(set(format!("k{i}"), format!("{i}"))).await;
    }
    let before = cluster.converge().await;
    let applied: BTreeMap<u64, u64> = cluster
        .nodes
        .iter()
        .map(|(id, n)| (*id, n.status().applied_index.unwrap()))
        .collect();

    for id in 1..=3 {
        cluster.kill(id).await;
    }
    for id in 1..=3 {
        cluster.start_node(id).await;
    }
    // The committed state comes back from disk on every node, before any new election.
    for (id, index) in &applied {
        let node = &cluster.nodes[id];
        node.wait_applied(*index, WAIT).await.unwrap();
        assert_eq!(*node.read_state(), before, "node {id} after restart");
    }
    cluster.propose(set("after", "restart")).await;
    let after = cluster.converge().await;
    assert_eq!(after.applied, before.applied + 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::new(3, |c| {
        c.snapshot_after_logs = 10_000;
        c.logs_kept_after_snapshot = 0;
    })
    .await;
    cluster.propose(set("first", "1")).await;
    let leader = cluster.leader().await;
    let lagging = cluster
        .nodes
        .keys()
        .copied()
        .find(|id| *id != leader)
        .unwrap();
    cluster.router.isolate(lagging);
    for i in 0..40 {
        cluster.propose(set(format!("k{i}"), "v")).await;
    }
    let snap = cluster.nodes[&leader]
        .snapshot(WAIT)
        .await
        .unwrap()
        .unwrap();
    // The log behind the snapshot is gone, so only a snapshot can bring the lagging node back.
    let deadline = Instant::now() + WAIT;
    while cluster.nodes[&leader].status().purged_index < Some(snap) {
        assert!(Instant::now() < deadline, "leader did not purge its log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.router.heal(lagging);
    let state = cluster.converge().await;
    assert_eq!(state.applied, 41);
    // The lagging node's Raft metrics follow its state machine shortly.
    let deadline = Instant::now() + WAIT;
    loop {
        let status = cluster.nodes[&lagging].status();
        if status.snapshot_index >= Some(snap) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lagging node should hold the leader's snapshot: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The installed snapshot persists: the node restarts with the same state.
    cluster.kill(lagging).await;
    cluster.start_node(lagging).await;
    cluster.converge().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_and_is_promoted() {
    let mut cluster = Cluster::new(3, |_| {}).await;
    cluster.propose(set("a", "1")).await;
    let leader = cluster.leader().await;
    // A fresh node knows no leader until the leader adds it.
    cluster.start_node(4).await;
    cluster.nodes[&leader]
        .add_learner(4, addr(4), true)
        .await
        .unwrap();
    cluster.converge().await;
    assert!(cluster.nodes[&4].status().learners.contains_key(&4));
    cluster.nodes[&leader]
        .change_membership(BTreeSet::from([1, 2, 3, 4]))
        .await
        .unwrap();
    cluster.propose(set("b", "2")).await;
    let state = cluster.converge().await;
    assert_eq!(state.applied, 2);
    assert!(cluster.nodes[&4].status().voters.contains_key(&4));
    cluster.shutdown().await;
}

fn entry(term: u64, index: u64, payload: Vec<u8>) -> EntryOf<TypeConfig> {
    EntryOf::<TypeConfig>::new_normal(
        openraft::testing::log_id::<TypeConfig>(term, 1, index),
        Request(payload),
    )
}

async fn append(store: &mut LogStore, entries: Vec<EntryOf<TypeConfig>>) {
    let (tx, rx) = TypeConfig::oneshot();
    store
        .append(entries, IOFlushed::signal(tx))
        .await
        .expect("append and flush");
    rx.await
        .expect("append and flush")
        .expect("append and flush");
}

async fn open(dir: &Path) -> LogStore {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || LogStore::open(&dir))
        .await
        .expect("open the log")
        .expect("open the log")
}

async fn last_index(store: &mut LogStore) -> Option<u64> {
    store
        .get_log_state()
        .await
        .expect("log state")
        .last_log_id
        .map(|l| l.index)
}

#[tokio::test]
async fn torn_or_corrupt_log_tail_is_truncated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let raft_dir = dir.path().join("raft");
    {
        let mut store = open(&raft_dir).await;
        append(
            &mut store,
            (0..10).map(|i| entry(1, i, vec![i as u8; 100])).collect(),
        )
        .await;
    }

    // A partial header, then a partial record: both are cut off.
    for garbage in [&[7u8, 0, 0][..], &[100, 0, 0, 0, 1, 2, 3, 4, 5, 6][..]] {
        tear_log_tail(dir.path(), garbage);
        let mut store = open(&raft_dir).await;
        assert_eq!(last_index(&mut store).await, Some(9));
    }

    // A flipped byte in the last record: that record is dropped, never misread.
    {
        let seg = std::fs::read_dir(raft_dir.join("log"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x55;
        std::fs::write(&seg, &bytes).unwrap();
    }
    let mut store = open(&raft_dir).await;
    assert_eq!(last_index(&mut store).await, Some(8));
    let entries = store.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(entries.len(), 9);
    assert!(entries.iter().all(|e| e.index() < 9));

    // The log keeps working after the repair and survives another reopen.
    append(&mut store, vec![entry(2, 9, b"new".to_vec())]).await;
    drop(store);
    let mut store = open(&raft_dir).await;
    assert_eq!(last_index(&mut store).await, Some(9));
    let e = store.try_get_log_entries(9..10).await.unwrap();
    assert_eq!(
        e[0].log_id(),
        openraft::testing::log_id::<TypeConfig>(2, 1, 9)
    );
}

#[tokio::test]
async fn corruption_before_the_newest_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let raft_dir = dir.path().join("raft");
    {
        let mut store = open(&raft_dir).await;
        // Three 5 MiB entries fill more than one 8 MiB segment.
        for i in 0..3 {
            append(&mut store, vec![entry(1, i, vec![0xab; 5 << 20])]).await;
        }
    }
    let mut segs: Vec<PathBuf> = std::fs::read_dir(raft_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    assert!(segs.len() >= 2, "expected several segments, got {segs:?}");
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&segs[0], &bytes).unwrap();
    let dir2 = raft_dir.clone();
    let res = tokio::task::spawn_blocking(move || LogStore::open(&dir2))
        .await
        .unwrap();
    assert!(
        res.is_err(),
        "corruption in an older segment must not be repaired silently"
    );
}

#[tokio::test]
async fn vote_and_purge_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let raft_dir = dir.path().join("raft");
    let vote = openraft::Vote::new_committed(3, 2);
    {
        let mut store = open(&raft_dir).await;
        append(&mut store, (0..10).map(|i| entry(1, i, vec![1])).collect()).await;
        store.save_vote(&vote).await.unwrap();
        store
            .purge(openraft::testing::log_id::<TypeConfig>(1, 1, 4))
            .await
            .unwrap();
        store
            .truncate_after(Some(openraft::testing::log_id::<TypeConfig>(1, 1, 7)))
            .await
            .unwrap();
    }
    let mut store = open(&raft_dir).await;
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(4));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(7));
    let entries = store.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.index()).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore<Kv>, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore<Kv>), StorageError<TypeConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let path = dir.path().to_path_buf();
        let (log, sm) = tokio::task::spawn_blocking(move || {
            let log = LogStore::open(&path.join("raft"))?;
            let sm = StateMachineStore::open(&path, Kv::default())?;
            Ok::<_, std::io::Error>((log, sm))
        })
        .await
        .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?
        .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.unwrap();
}
