//! Replication service tests: three in-process nodes on 127.0.0.1, each a `PeerServer` over its
//! own file-backed `Store` and `ReplicationService`, sharing hand-built cluster views (one
//! watch channel per node, so a test can deliver a map to some nodes and not others). A `Peers`
//! pool with its own node id stands in for the gateway and sends frames to PG primaries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use basalt::ids::{ChunkKey, ChunkVersion, ClusterId, DriveId, Epoch, NodeId, PgId, VolumeId};
use basalt::placement::{
    ClusterDescription, DriveDescription, NodeDescription, NodeState, PlacementMap, PoolId,
    PoolSpec,
};
use basalt::wire::Status;
use basalt::wire::{
    Bytes, ClusterSecret, ControlKind, Features, HandshakeConfig, Header, Opcode, RequestId,
};
use blockd::frontends::{VolumeBackend, VolumeExtent};
use blockd::gateway::{Gateway, GatewayConfig, VolumeSpec};
use blockd::peer::{PeerConfig, PeerServer, Peers, Router};
use blockd::replication::{
    AllocationRun, BLOCK_STATUS_VERSION, BlockStatusReply, BlockStatusRequest, Limits, MetaReport,
    ReplicationConfig, ReplicationService,
};
use blockd::store::geometry::GeometryOptions;
use blockd::store::handle::format;
use blockd::store::{FormatOptions, OpenOptions, Store};
use blockd::view::{ClusterView, MapPublisher, VolumeView, map_channel};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const POOL: PoolId = PoolId(0);
const VOLUME: VolumeId = VolumeId(7);
const GATEWAY: NodeId = NodeId(100);
const DRIVE_BYTES: u64 = 1 << 30;
/// Engine deadline for a write: short, so blocked writes fail quickly.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a request waits for a node's view to reach its epoch.
const VIEW_WAIT: Duration = Duration::from_secs(2);
/// Safety net for every wait in these tests; never reached when the code works.
const WAIT_MAX: Duration = Duration::from_secs(30);

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn cluster_id() -> ClusterId {
    ClusterId(uuid::Uuid::from_u128(0x7265_706c_0000_0001))
}

fn peer_config(node: NodeId) -> PeerConfig {
    let mut config = PeerConfig::new(HandshakeConfig {
        cluster: cluster_id(),
        node,
        secret: ClusterSecret::new(&[9; 32]).expect("test secret"),
        features: Features::NONE,
    });
    config.connect_timeout = Duration::from_secs(2);
    config.handshake_timeout = Duration::from_secs(2);
    config.call_timeout = Duration::from_secs(15);
    config.reconnect_backoff_min = Duration::from_millis(20);
    config.reconnect_backoff_max = Duration::from_millis(200);
    config
}

fn replication_config(node: NodeId) -> ReplicationConfig {
    let mut config = ReplicationConfig::new(node);
    config.limits = Limits {
        op_timeout: OP_TIMEOUT,
        gap_timeout: Duration::from_secs(1),
        retry_backoff: Duration::from_millis(20),
        ..Limits::default()
    };
    config.view_wait = VIEW_WAIT;
    config
}

/// One storage node: its store and failure channel, and what runs over them.
struct Node {
    id: NodeId,
    store: Arc<Store>,
    running: Mutex<Running>,
    reports: mpsc::Sender<MetaReport>,
    failures: tokio::sync::Mutex<mpsc::Receiver<MetaReport>>,
    _dir: TempDir,
}

/// A node's replication service, peer server and view channel; replaced by a restart.
struct Running {
    service: Arc<ReplicationService>,
    server: Option<PeerServer>,
    views: MapPublisher,
}

/// What the views are built from; changed by the tests.
struct Placement {
    description: ClusterDescription,
    map: PlacementMap,
    addrs: BTreeMap<NodeId, SocketAddr>,
}

/// Three nodes, the placement the views are built from, and the gateway's pool. Shared by the
/// tasks of a test behind an `Arc`.
struct Cluster {
    nodes: Vec<Node>,
    placement: Mutex<Placement>,
    chunk_size_bytes: u32,
    gateway: Peers,
}

async fn new_store(dir: &TempDir, node: NodeId) -> Arc<Store> {
    let drive = dir.path().join("drive.img");
    std::fs::File::create(&drive)
        .and_then(|file| file.set_len(DRIVE_BYTES))
        .expect("create sparse drive file");
    let options = FormatOptions {
        cluster_id: cluster_id(),
        node_id: node,
        drive_id: None,
        geometry: GeometryOptions::default(),
        force: false,
    };
    format(&drive, &options, None).expect("format drive");
    let store = Store::open(&drive, OpenOptions::default())
        .await
        .expect("open store");
    Arc::new(store)
}

fn view_of(placement: &Placement, chunk_size_bytes: u32) -> ClusterView {
    ClusterView {
        map: placement.map.clone(),
        chunk_size_bytes,
        node_addrs: placement.addrs.clone(),
        volumes: BTreeMap::from([(
            "vol".to_owned(),
            VolumeView {
                id: VOLUME,
                size_bytes: 1 << 30,
                pool: POOL,
            },
        )]),
        next_volume_id: 0,
    }
}

/// Starts node `id`'s replication service over `store` under `view`, and its peer server.
async fn run_node(
    id: NodeId,
    store: &Arc<Store>,
    view: ClusterView,
    reports: mpsc::Sender<MetaReport>,
) -> Running {
    let (views, maps) = map_channel(view);
    let drive: DriveId = store.superblock().drive_id;
    let peers = Arc::new(Peers::new(peer_config(id)).expect("pool"));
    let stores = BTreeMap::from([(drive, Arc::clone(store))]);
    let service = ReplicationService::start(replication_config(id), stores, peers, maps, reports)
        .await
        .expect("start replication");
    let router = service.routes(Router::new());
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = PeerServer::bind(addr, peer_config(id), Arc::new(router))
        .await
        .expect("bind");
    Running {
        service,
        server: Some(server),
        views,
    }
}

fn cluster_description(ids: &[NodeId], stores: &[Arc<Store>]) -> ClusterDescription {
    ClusterDescription {
        nodes: ids
            .iter()
            .zip(stores)
            .map(|(id, store)| NodeDescription {
                id: *id,
                zone: None,
                state: NodeState::Up,
                drives: vec![DriveDescription {
                    id: store.superblock().drive_id,
                    weight: 1024,
                }],
            })
            .collect(),
    }
}

impl Cluster {
    async fn start() -> Arc<Cluster> {
        init_logs();
        let ids = [NodeId(1), NodeId(2), NodeId(3)];
        let mut stores = Vec::new();
        let mut dirs = Vec::new();
        for id in ids {
            let dir = tempfile::Builder::new()
                .prefix("replication")
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .expect("scratch directory");
            stores.push(new_store(&dir, id).await);
            dirs.push(dir);
        }
        let description = cluster_description(&ids, &stores);
        let mut map = PlacementMap::new();
        let spec = PoolSpec {
            id: POOL,
            pg_count: 16,
            replicas: 3,
            min_size: 2,
        };
        map.add_pool(spec, &description).expect("add pool");
        let chunk_size_bytes = stores[0].chunk_size_bytes();
        let mut placement = Placement {
            description,
            map,
            addrs: BTreeMap::new(),
        };
        let gateway = Peers::new(peer_config(GATEWAY)).expect("gateway pool");
        let mut nodes = Vec::new();
        // Services start with a view without addresses (no server is bound yet); the full view
        // follows in the same epoch.
        for ((id, store), dir) in ids.into_iter().zip(stores).zip(dirs) {
            let (reports, failures) = mpsc::channel(64);
            let view = view_of(&placement, chunk_size_bytes);
            let running = run_node(id, &store, view, reports.clone()).await;
            let addr = running.server.as_ref().expect("server").local_addr();
            placement.addrs.insert(id, addr);
            gateway.set_address(id, addr);
            nodes.push(Node {
                id,
                store,
                running: Mutex::new(running),
                reports,
                failures: tokio::sync::Mutex::new(failures),
                _dir: dir,
            });
        }
        let cluster = Cluster {
            nodes,
            placement: Mutex::new(placement),
            chunk_size_bytes,
            gateway,
        };
        cluster.publish(&[0, 1, 2]);
        cluster.check_hosting();
        Arc::new(cluster)
    }

    /// Every node runs an engine for each of the 16 PGs (3 nodes, 3 replicas).
    fn check_hosting(&self) {
        for node in &self.nodes {
            let hosted = node.running().service.hosted_pgs().len();
            assert_eq!(hosted, 16, "{} hosts every PG", node.id);
        }
    }

    /// Stops every node's service and server and starts new ones over the same stores (the
    /// engines start from the stores' chunk versions), on new ports.
    async fn restart(&self) {
        for node in &self.nodes {
            let (server, service) = {
                let mut running = node.running();
                (running.server.take(), Arc::clone(&running.service))
            };
            if let Some(server) = server {
                server.shutdown().await;
            }
            service.shutdown().await;
        }
        for node in &self.nodes {
            let view = view_of(&self.placement(), self.chunk_size_bytes);
            let running = run_node(node.id, &node.store, view, node.reports.clone()).await;
            let addr = running.server.as_ref().expect("server").local_addr();
            self.placement().addrs.insert(node.id, addr);
            self.gateway.set_address(node.id, addr);
            *node.running() = running;
        }
        self.publish(&[0, 1, 2]);
        self.check_hosting();
    }

    /// Restarts node `index` alone (a crash and restart: new engines from its store's
    /// labels, a new port), telling every node its new address in the same epoch.
    async fn restart_node(&self, index: usize) {
        let node = &self.nodes[index];
        let (server, service) = {
            let mut running = node.running();
            (running.server.take(), Arc::clone(&running.service))
        };
        if let Some(server) = server {
            server.shutdown().await;
        }
        service.shutdown().await;
        let view = view_of(&self.placement(), self.chunk_size_bytes);
        let running = run_node(node.id, &node.store, view, node.reports.clone()).await;
        let addr = running.server.as_ref().expect("server").local_addr();
        self.placement().addrs.insert(node.id, addr);
        self.gateway.set_address(node.id, addr);
        *node.running() = running;
        // Same epoch: the other nodes learn the address through their peer pools directly.
        let view = view_of(&self.placement(), self.chunk_size_bytes);
        for other in &self.nodes {
            other.running().views.publish(view.clone());
        }
    }

    /// Marks node `index` up again and moves the map to the next epoch (not published yet).
    fn mark_up(&self, index: usize) -> Epoch {
        let mut placement = self.placement();
        let Placement {
            description, map, ..
        } = &mut *placement;
        description.nodes[index].state = NodeState::Up;
        map.update(description).expect("map update");
        map.epoch()
    }

    /// Waits until every node stores the same bytes and label for each of `chunks`.
    async fn wait_converged(&self, chunks: &[u64]) {
        let len = self.chunk_size_bytes;
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let mut level = true;
            for index in chunks {
                let stored = self.stored_all(*index, 0, len).await;
                level &= stored.iter().all(|copy| *copy == stored[0]);
            }
            if level {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replicas did not converge in time"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn placement(&self) -> MutexGuard<'_, Placement> {
        self.placement.lock().expect("placement lock")
    }

    fn epoch(&self) -> Epoch {
        self.placement().map.epoch()
    }

    /// Sends the current view to the nodes at `indexes`.
    fn publish(&self, indexes: &[usize]) {
        let view = view_of(&self.placement(), self.chunk_size_bytes);
        for index in indexes {
            self.nodes[*index].running().views.publish(view.clone());
        }
    }

    /// Marks node `index` down and moves the map to the next epoch (not published yet).
    fn mark_down(&self, index: usize) -> Epoch {
        let mut placement = self.placement();
        let Placement {
            description, map, ..
        } = &mut *placement;
        description.nodes[index].state = NodeState::Down;
        let update = map.update(description).expect("map update");
        assert!(
            update.changed_pgs > 0,
            "a node going down changes acting sets"
        );
        map.epoch()
    }

    /// Stops node `index`'s peer server: it accepts nothing more and its connections close.
    async fn stop_server(&self, index: usize) {
        let server = self.nodes[index].running().server.take();
        if let Some(server) = server {
            server.shutdown().await;
        }
    }

    /// The PG and acting nodes of chunk `index` in the current map.
    fn locate(&self, index: u64) -> (PgId, Vec<NodeId>) {
        let placement = self.placement();
        let pool = placement.map.pool(POOL).expect("pool");
        let (pg, placement) = pool.locate(VOLUME, index);
        (pg, placement.acting().iter().map(|m| m.node).collect())
    }

    fn primary(&self, index: u64) -> NodeId {
        self.locate(index).1[0]
    }

    /// The first chunk index from `from` on whose primary is `node` in the current map.
    fn chunk_led_by(&self, node: NodeId, from: u64) -> u64 {
        (from..from + 10_000)
            .find(|index| self.primary(*index) == node)
            .expect("some chunk is led by every node")
    }

    /// A request for chunk `index` as the gateway builds it, routed by `epoch`.
    fn header(&self, opcode: Opcode, epoch: Epoch, index: u64, offset: u32, len: u32) -> Header {
        let mut header = Header::new(opcode, RequestId(0));
        header.pg = self.locate(index).0;
        header.epoch = epoch;
        header.chunk = ChunkKey::new(VOLUME, index);
        header.offset_bytes = offset;
        header.length_bytes = len;
        header
    }

    /// Sends a request to `to`; returns the reply's status, epoch and payload.
    async fn call(&self, to: NodeId, header: Header, payload: Bytes) -> (Status, Epoch, Bytes) {
        let reply = tokio::time::timeout(WAIT_MAX, self.gateway.call(to, header, payload))
            .await
            .expect("reply in time")
            .expect("transport");
        (reply.header.status, reply.header.epoch, reply.payload)
    }

    /// Writes `data` at `offset` of chunk `index` through `to` under `epoch`.
    async fn write_to(
        &self,
        to: NodeId,
        epoch: Epoch,
        index: u64,
        offset: u32,
        data: Bytes,
    ) -> (Status, Epoch) {
        let header = self.header(Opcode::Write, epoch, index, offset, data.len() as u32);
        let (status, epoch, _) = self.call(to, header, data).await;
        (status, epoch)
    }

    /// Writes through the chunk's primary in the current map, under `epoch`.
    async fn write_at(&self, epoch: Epoch, index: u64, offset: u32, data: Bytes) -> Status {
        let primary = self.primary(index);
        self.write_to(primary, epoch, index, offset, data).await.0
    }

    async fn read_at(&self, index: u64, offset: u32, len: u32) -> Bytes {
        let header = self.header(Opcode::Read, self.epoch(), index, offset, len);
        let (status, _, data) = self.call(self.primary(index), header, Bytes::new()).await;
        assert_eq!(status, Status::Ok, "read chunk {index}");
        data
    }

    /// What node `node` stores for chunk `index`: the range's bytes and the chunk version.
    async fn stored(
        &self,
        node: usize,
        index: u64,
        offset: u32,
        len: u32,
    ) -> (Bytes, Option<ChunkVersion>) {
        let store = &self.nodes[node].store;
        let chunk = ChunkKey::new(VOLUME, index);
        let data = store.read(chunk, offset, len).await.expect("store read");
        let version = store.chunk_version(chunk).await.expect("chunk version");
        (data, version)
    }

    /// What every store holds for a range of chunk `index`, by node index.
    async fn stored_all(
        &self,
        index: u64,
        offset: u32,
        len: u32,
    ) -> Vec<(Bytes, Option<ChunkVersion>)> {
        let mut all = Vec::new();
        for node in 0..self.nodes.len() {
            all.push(self.stored(node, index, offset, len).await);
        }
        all
    }

    /// Applies every `Settle` report the nodes sent so far (as the metadata service would) and
    /// publishes the map if any PG settled; returns how many did.
    async fn apply_settles(&self) -> usize {
        let mut settled = 0;
        for node in &self.nodes {
            let mut receiver = node.failures.lock().await;
            while let Ok(report) = receiver.try_recv() {
                let MetaReport::Settle { pg, since } = report else {
                    continue;
                };
                let mut placement = self.placement();
                let Placement {
                    description, map, ..
                } = &mut *placement;
                if let Ok(update) = map.settle(pg.pool, pg.pg, since, description) {
                    settled += update.changed_pgs;
                }
            }
        }
        if settled > 0 {
            self.publish(&[0, 1, 2]);
        }
        settled
    }

    /// Waits until no PG of the map is transitional, settling what the primaries report.
    async fn wait_settled(&self) {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            self.apply_settles().await;
            let pending = self.placement().map.pools()[0]
                .pgs()
                .iter()
                .filter(|pg| pg.is_pending())
                .count();
            if pending == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{pending} PGs did not settle in time"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until node `node` reports `failed`.
    async fn expect_report(&self, node: usize, failed: NodeId) {
        let mut receiver = self.nodes[node].failures.lock().await;
        let wait = async {
            loop {
                match receiver.recv().await {
                    Some(MetaReport::Peer { node, .. }) if node == failed => return,
                    Some(_) => continue,
                    None => panic!("failure channel closed"),
                }
            }
        };
        tokio::time::timeout(WAIT_MAX, wait)
            .await
            .expect("failure report in time");
    }
}

impl Node {
    fn running(&self) -> MutexGuard<'_, Running> {
        self.running.lock().expect("running lock")
    }
}

/// Chunks led by each node, two per node, for the recovery tests.
fn spread_chunks(cluster: &Cluster) -> Vec<u64> {
    let mut chunks = Vec::new();
    for node in [NodeId(1), NodeId(2), NodeId(3)] {
        let first = cluster.chunk_led_by(node, 0);
        chunks.push(first);
        chunks.push(cluster.chunk_led_by(node, first + 1));
    }
    chunks
}

/// Writes `seed`-patterned data to each of `chunks` (at an offset depending on the seed) and
/// trims another range, all through the current primaries under the current epoch.
async fn write_round(cluster: &Cluster, chunks: &[u64], seed: u8) {
    let epoch = cluster.epoch();
    for (i, index) in chunks.iter().enumerate() {
        let offset = (u32::from(seed) * 3 + i as u32) % 64 * 4096;
        let data = pattern(seed.wrapping_add(i as u8), 8192);
        let status = cluster.write_at(epoch, *index, offset, data).await;
        assert_eq!(status, Status::Ok, "write to chunk {index}");
        let mut header = cluster.header(Opcode::Trim, epoch, *index, offset + 65536, 4096);
        header.length_bytes = 4096;
        let (status, _, _) = cluster
            .call(cluster.primary(*index), header, Bytes::new())
            .await;
        assert_eq!(status, Status::Ok, "trim of chunk {index}");
    }
}

fn pattern(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i / 512) as u8))
        .collect::<Vec<u8>>()
        .into()
}

async fn wait_done<T>(task: JoinHandle<T>) -> T {
    tokio::time::timeout(WAIT_MAX, task)
        .await
        .expect("task done in time")
        .expect("task did not panic")
}

/// Goal: writes through each node's primary read back, and every replica stores the same bytes
/// with the same chunk version. Method: a chunk led by each node, an aligned 8 KiB write and an
/// unaligned 1.5 KiB overwrite, then the three stores read directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_every_replica_and_read_back() {
    let cluster = Cluster::start().await;
    let epoch = cluster.epoch();
    let mut from = 0;
    for (seed, node) in [NodeId(1), NodeId(2), NodeId(3)].into_iter().enumerate() {
        let index = cluster.chunk_led_by(node, from);
        from = index + 1;
        let seed = seed as u8;
        let first = pattern(seed + 1, 8192);
        let status = cluster.write_at(epoch, index, 4096, first.clone()).await;
        assert_eq!(status, Status::Ok);
        let second = pattern(seed + 100, 1536);
        let status = cluster.write_at(epoch, index, 4608, second.clone()).await;
        assert_eq!(status, Status::Ok);
        let mut expected = first.to_vec();
        expected[512..2048].copy_from_slice(&second);
        assert_eq!(cluster.read_at(index, 4096, 8192).await, expected);
        let stored = cluster.stored_all(index, 4096, 8192).await;
        for (node, (data, version)) in stored.iter().enumerate() {
            assert_eq!(
                data.as_ref(),
                expected.as_slice(),
                "node {node} chunk {index}"
            );
            assert_eq!(*version, stored[0].1, "node {node} chunk {index} version");
            assert!(version.is_some_and(|v| v.version > 0 && v.epoch == epoch));
        }
    }
}

/// Goal: concurrent overlapping writes to one chunk end identical on every replica (the
/// primary's version order is every member's apply order). Method: 48 writes of 8 KiB at
/// overlapping offsets in flight at once, then the stores compared and read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_overlapping_writes_end_identical() {
    let cluster = Cluster::start().await;
    let epoch = cluster.epoch();
    let index = cluster.chunk_led_by(NodeId(2), 0);
    let mut tasks = Vec::new();
    for seed in 0..48u8 {
        let cluster = Arc::clone(&cluster);
        let offset = u32::from(seed % 12) * 2048;
        tasks.push(tokio::spawn(async move {
            cluster
                .write_at(epoch, index, offset, pattern(seed, 8192))
                .await
        }));
    }
    for task in tasks {
        assert_eq!(wait_done(task).await, Status::Ok);
    }
    let len = 64 * 1024;
    let stored = cluster.stored_all(index, 0, len).await;
    for (node, (data, _)) in stored.iter().enumerate() {
        assert!(data == &stored[0].0, "node {node} differs from node 0");
    }
    assert!(cluster.read_at(index, 0, len).await == stored[0].0);
    // The store records the version of the last write it made durable, which for
    // non-overlapping writes need not be the highest; one write over the whole range is last
    // everywhere.
    let last = pattern(99, 32 * 1024);
    assert_eq!(
        cluster.write_at(epoch, index, 0, last.clone()).await,
        Status::Ok
    );
    let stored = cluster.stored_all(index, 0, 32 * 1024).await;
    for (node, (data, version)) in stored.iter().enumerate() {
        assert!(data == &last, "node {node} final write");
        let version = version.map(|v| v.version);
        assert_eq!(version, Some(49), "node {node}: one version per write");
    }
}

/// Goal: DESIGN §4's degraded path. A write in flight when a replica dies is reported and
/// completes once the new map drops the replica; writes continue on the two survivors; with a
/// second node gone the PG is below `min_size` and a write times out, unacknowledged and
/// unapplied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_writes_continue_and_block_below_min_size() {
    let cluster = Cluster::start().await;
    let first_epoch = cluster.epoch();
    let index = cluster.chunk_led_by(NodeId(1), 0);
    let old = pattern(1, 4096);
    let status = cluster.write_at(first_epoch, index, 0, old.clone()).await;
    assert_eq!(status, Status::Ok);

    // Node 3 dies; a write is in flight on node 1, which reports node 3 and keeps waiting.
    cluster.stop_server(2).await;
    let new = pattern(2, 4096);
    let writer = {
        let cluster = Arc::clone(&cluster);
        let new = new.clone();
        tokio::spawn(async move { cluster.write_at(first_epoch, index, 0, new).await })
    };
    cluster.expect_report(0, NodeId(3)).await;
    assert!(
        !writer.is_finished(),
        "acknowledged without node 3 in the old map"
    );
    let second_epoch = cluster.mark_down(2);
    cluster.publish(&[0, 1, 2]);
    assert_eq!(wait_done(writer).await, Status::Ok);
    let stored = cluster.stored_all(index, 0, 4096).await;
    assert!(
        stored[0].0 == new && stored[1].0 == new,
        "on both survivors"
    );
    assert!(stored[2].0 == old, "node 3 was down");

    // Writes go on with two copies, including PGs node 3 used to lead.
    let mut from = 0;
    for (seed, node) in [NodeId(1), NodeId(2)].into_iter().enumerate() {
        let index = cluster.chunk_led_by(node, from);
        from = index + 1;
        let data = pattern(10 + seed as u8, 4096);
        let status = cluster
            .write_at(second_epoch, index, 8192, data.clone())
            .await;
        assert_eq!(status, Status::Ok);
        let stored = cluster.stored_all(index, 8192, 4096).await;
        assert!(stored[0].0 == data && stored[1].0 == data, "chunk {index}");
        assert_eq!(stored[0].1, stored[1].1, "chunk {index} version");
    }

    // Node 2 dies too: one copy left, below min_size. The write is never acknowledged.
    cluster.stop_server(1).await;
    let third_epoch = cluster.mark_down(1);
    cluster.publish(&[0, 1, 2]);
    let blocked = pattern(3, 4096);
    let status = cluster.write_at(third_epoch, index, 0, blocked).await;
    assert!(
        matches!(status, Status::Timeout | Status::IoError),
        "blocked write answered {status:?}"
    );
    let (data, _) = cluster.stored(0, index, 0, 4096).await;
    assert!(data == new, "a write without min_size copies was applied");
}

/// Goal: a request routed by an old map is refused with `StaleEpoch` carrying the new epoch
/// (the gateway refreshes its map from it), and a node that is not the primary answers
/// `NotPrimary`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_is_refused_with_the_new_epoch() {
    let cluster = Cluster::start().await;
    let old_epoch = cluster.epoch();
    let index = cluster.chunk_led_by(NodeId(1), 0);
    let new_epoch = cluster.mark_down(2);
    cluster.publish(&[0, 1, 2]);
    let (status, epoch) = cluster
        .write_to(NodeId(1), old_epoch, index, 0, pattern(1, 4096))
        .await;
    assert_eq!((status, epoch), (Status::StaleEpoch, new_epoch));
    let header = cluster.header(Opcode::Read, old_epoch, index, 0, 4096);
    let (status, epoch, _) = cluster.call(NodeId(1), header, Bytes::new()).await;
    assert_eq!((status, epoch), (Status::StaleEpoch, new_epoch));
    let replica = cluster.locate(index).1[1];
    let (status, _) = cluster
        .write_to(replica, new_epoch, index, 0, pattern(1, 4096))
        .await;
    assert_eq!(status, Status::NotPrimary);
    let (status, _) = cluster
        .write_to(NodeId(1), new_epoch, index, 0, pattern(1, 4096))
        .await;
    assert_eq!(status, Status::Ok);
}

/// Goal: requests from a newer map than a node has wait for it (bounded) instead of failing.
/// Method: the new map reaches the primary only; its copy to the replica waits there until the
/// map arrives. A request for an epoch no node ever gets is answered `Timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_from_a_newer_map_wait_for_it() {
    let cluster = Cluster::start().await;
    let new_epoch = cluster.mark_down(2);
    cluster.publish(&[0]);
    let index = cluster.chunk_led_by(NodeId(1), 0);
    let data = pattern(4, 4096);
    let writer = {
        let cluster = Arc::clone(&cluster);
        let data = data.clone();
        tokio::spawn(async move { cluster.write_at(new_epoch, index, 0, data).await })
    };
    // Node 2 cannot acknowledge a copy from an epoch it has not seen.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !writer.is_finished(),
        "acknowledged before the replica had the map"
    );
    cluster.publish(&[1]);
    assert_eq!(wait_done(writer).await, Status::Ok);
    let stored = cluster.stored_all(index, 0, 4096).await;
    assert!(stored[0].0 == data && stored[1].0 == data);

    let future_epoch = Epoch(new_epoch.0 + 5);
    let (status, epoch) = cluster
        .write_to(NodeId(1), future_epoch, index, 0, pattern(5, 4096))
        .await;
    assert_eq!((status, epoch), (Status::Timeout, new_epoch));
}

/// Goal: engines started over stores that already hold data continue each PG's version
/// sequence from the highest chunk version (a restarted primary that started from zero would
/// reuse versions its replicas already hold, and they would skip its writes as duplicates).
/// Method: three writes, restart every node's service, one more write; every replica holds
/// it at version 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_engines_continue_from_the_stores_versions() {
    let cluster = Cluster::start().await;
    let epoch = cluster.epoch();
    let index = cluster.chunk_led_by(NodeId(1), 0);
    for seed in 0..3u8 {
        let offset = u32::from(seed) * 4096;
        let status = cluster
            .write_at(epoch, index, offset, pattern(seed, 4096))
            .await;
        assert_eq!(status, Status::Ok);
    }
    cluster.restart().await;
    let data = pattern(50, 4096);
    let status = cluster.write_at(epoch, index, 0, data.clone()).await;
    assert_eq!(status, Status::Ok);
    assert!(cluster.read_at(index, 0, 4096).await == data);
    let stored = cluster.stored_all(index, 0, 4096).await;
    for (node, (bytes, version)) in stored.iter().enumerate() {
        assert!(
            bytes == &data,
            "node {node} holds the write made after the restart"
        );
        let version = version.map(|v| v.version);
        assert_eq!(
            version,
            Some(4),
            "node {node} continues the version sequence"
        );
    }
}

/// Goal: TRIM and WRITE_ZEROES replicate like writes (every replica reads zeroes), FLUSH is
/// answered by the primary, and a frame naming the wrong PG for its chunk is refused
/// `Invalid` without touching the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_zeroes_flush_and_misrouted_frames() {
    let cluster = Cluster::start().await;
    let epoch = cluster.epoch();
    let index = cluster.chunk_led_by(NodeId(3), 0);
    let data = pattern(7, 16384);
    assert_eq!(
        cluster.write_at(epoch, index, 0, data.clone()).await,
        Status::Ok
    );
    let primary = cluster.primary(index);
    for (opcode, offset) in [(Opcode::Trim, 0), (Opcode::WriteZeroes, 8192)] {
        let header = cluster.header(opcode, epoch, index, offset, 4096);
        let (status, _, _) = cluster.call(primary, header, Bytes::new()).await;
        assert_eq!(status, Status::Ok, "{opcode:?}");
    }
    let mut expected = data.to_vec();
    expected[..4096].fill(0);
    expected[8192..12288].fill(0);
    let stored = cluster.stored_all(index, 0, 16384).await;
    for (node, (bytes, version)) in stored.iter().enumerate() {
        assert!(bytes.as_ref() == expected.as_slice(), "node {node}");
        assert_eq!(version.map(|v| v.version), Some(3), "node {node}");
    }
    // FLUSH goes to a node (PG 0, the volume's chunk 0): a barrier in every PG it leads.
    let mut flush = Header::new(Opcode::Flush, RequestId(0));
    flush.epoch = epoch;
    flush.chunk = ChunkKey::new(VOLUME, 0);
    for node in [NodeId(1), NodeId(2), NodeId(3)] {
        let (status, _, _) = cluster.call(node, flush, Bytes::new()).await;
        assert_eq!(status, Status::Ok, "flush on {node}");
    }
    let mut stale = flush;
    stale.epoch = Epoch(epoch.0 - 1);
    let (status, reply_epoch, _) = cluster.call(primary, stale, Bytes::new()).await;
    assert_eq!(
        (status, reply_epoch),
        (Status::StaleEpoch, epoch),
        "stale flush"
    );

    let mut wrong = cluster.header(Opcode::Write, epoch, index, 0, 4096);
    wrong.pg = PgId((wrong.pg.0 + 1) % 16);
    let (status, reply_epoch, _) = cluster.call(primary, wrong, pattern(8, 4096)).await;
    assert_eq!((status, reply_epoch), (Status::Invalid, epoch));
    let (bytes, _) = cluster.stored(0, index, 0, 4096).await;
    assert!(
        bytes.iter().all(|byte| *byte == 0),
        "misrouted write applied"
    );
}

/// Goal: the real gateway works against the replication service end to end: unaligned
/// requests split over several chunks, FLUSH per node, and a node failure in the middle
/// (published to the nodes and the gateway) without a failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_volume_survives_a_node_failure() {
    let cluster = Cluster::start().await;
    let (gateway_maps, maps) = map_channel(view_of(&cluster.placement(), cluster.chunk_size_bytes));
    let peers = Arc::new(Peers::new(peer_config(NodeId(101))).expect("gateway pool"));
    let config = GatewayConfig {
        request_timeout: Duration::from_secs(20),
        retry_delay_min: Duration::from_millis(2),
        retry_delay_max: Duration::from_millis(50),
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(peers, maps, config).expect("gateway");
    let volume = gateway
        .volume(VolumeSpec {
            id: VOLUME,
            pool: POOL,
            size_bytes: 1 << 30,
            read_only: false,
        })
        .expect("volume");
    let chunk = u64::from(cluster.chunk_size_bytes);
    let first_offset = 3 * chunk - 4096 + 512;
    let first = pattern(21, 2 * chunk as usize + 8192);
    volume
        .write(first_offset, first.clone(), false)
        .await
        .expect("write");
    volume.flush().await.expect("flush");
    let read = volume
        .read(first_offset, first.len() as u32)
        .await
        .expect("read");
    assert!(read == first, "read back across chunks");

    cluster.stop_server(2).await;
    cluster.mark_down(2);
    cluster.publish(&[0, 1, 2]);
    gateway_maps.publish(view_of(&cluster.placement(), cluster.chunk_size_bytes));
    let second_offset = 7 * chunk - 1024;
    let second = pattern(22, chunk as usize);
    volume
        .write(second_offset, second.clone(), true)
        .await
        .expect("degraded write");
    volume.flush().await.expect("degraded flush");
    let read = volume
        .read(second_offset, second.len() as u32)
        .await
        .expect("read");
    assert!(read == second, "degraded read back");
    let read = volume
        .read(first_offset, first.len() as u32)
        .await
        .expect("read");
    assert!(read == first, "earlier data still readable");
    let index = second_offset / chunk + 1;
    let stored = cluster.stored_all(index, 0, 4096).await;
    assert!(
        stored[0].0 == stored[1].0,
        "survivors agree on chunk {index}"
    );
    assert!(
        stored[0].0 == second.slice(1024..5120),
        "survivors hold the degraded write"
    );
}

/// Goal: BLOCK_STATUS reports the primary store's thin allocation through the gateway: holes on
/// a fresh volume, data where written, merged across chunks and primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_status_shows_holes_and_data() {
    let cluster = Cluster::start().await;
    let (_gateway_maps, maps) =
        map_channel(view_of(&cluster.placement(), cluster.chunk_size_bytes));
    let peers = Arc::new(Peers::new(peer_config(NodeId(102))).expect("gateway pool"));
    let gateway = Gateway::new(peers, maps, GatewayConfig::default()).expect("gateway");
    let volume = gateway
        .volume(VolumeSpec {
            id: VOLUME,
            pool: POOL,
            size_bytes: 1 << 30,
            read_only: false,
        })
        .expect("volume");
    let chunk = u64::from(cluster.chunk_size_bytes);
    let hole = |len| VolumeExtent {
        len,
        hole: true,
        zero: true,
    };
    let data = |len| VolumeExtent {
        len,
        hole: false,
        zero: false,
    };
    let fresh = volume
        .block_status(0, 4 * chunk)
        .await
        .expect("block status");
    assert_eq!(fresh, vec![hole(4 * chunk)], "a fresh volume is one hole");

    // 8 KiB from 4 KiB before the end of chunk 1 (two primaries), and 512 bytes in chunk 3.
    let first = chunk * 2 - 4096;
    volume
        .write(first, pattern(3, 8192), false)
        .await
        .expect("write across chunks");
    volume
        .write(3 * chunk + 1024, pattern(4, 512), false)
        .await
        .expect("unaligned write");
    let map = volume
        .block_status(0, 4 * chunk)
        .await
        .expect("block status");
    assert_eq!(
        map,
        vec![
            hole(first),
            data(8192),
            hole(chunk - 4096),
            data(4096), // the store allocates whole 4 KiB blocks
            hole(chunk - 4096),
        ]
    );
    // An unaligned query inside a data block.
    let inner = volume
        .block_status(first + 512, 1024)
        .await
        .expect("block status");
    assert_eq!(inner, vec![data(1024)]);
}

/// Goal: only the chunk's primary at the current epoch answers BLOCK_STATUS: a replica refuses
/// with NOT_PRIMARY, a query from an older map gets STALE_EPOCH with the current epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_status_is_answered_by_the_primary_only() {
    let cluster = Cluster::start().await;
    let index = 1;
    let epoch = cluster.epoch();
    let size = cluster.chunk_size_bytes;
    let status = cluster
        .write_at(epoch, index, size - 4096, pattern(5, 4096))
        .await;
    assert_eq!(status, Status::Ok);
    let acting = cluster.locate(index).1;
    let nodes = &cluster.gateway;
    let ask = |to: NodeId, epoch: Epoch| {
        let request = BlockStatusRequest {
            volume: VOLUME,
            chunk_index: index,
            offset: 0,
            len: cluster.chunk_size_bytes,
            epoch,
        };
        let body = Bytes::from(postcard::to_stdvec(&request).expect("encode"));
        async move {
            let reply = nodes
                .call_control(to, ControlKind::BLOCK_STATUS, BLOCK_STATUS_VERSION, body)
                .await
                .expect("control reply");
            postcard::from_bytes::<BlockStatusReply>(&reply).expect("decode reply")
        }
    };
    let run = |len, allocated| AllocationRun { len, allocated };
    assert_eq!(
        ask(acting[0], epoch).await,
        BlockStatusReply::Runs(vec![run(size - 4096, false), run(4096, true)])
    );
    assert_eq!(
        ask(acting[1], epoch).await,
        BlockStatusReply::refused(Status::NotPrimary, epoch)
    );
    cluster.mark_down(2);
    cluster.publish(&[0, 1, 2]);
    let newer = cluster.epoch();
    let (_, acting) = cluster.locate(index);
    assert_eq!(
        ask(acting[0], epoch).await,
        BlockStatusReply::refused(Status::StaleEpoch, newer)
    );
}

/// Goal: a member that was down while writes went on comes back level. Method: node 3 stops
/// and the map drops it; writes and trims continue on two copies (including PGs node 3 used
/// to lead, whose new primaries peer first); node 3 restarts and the map adds it back; its
/// primaries recover it chunk by chunk, then every store holds the same bytes and labels, and
/// later writes reach it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_member_is_recovered_and_rejoins() {
    let cluster = Cluster::start().await;
    let chunks = spread_chunks(&cluster);
    write_round(&cluster, &chunks, 1).await;
    cluster.stop_server(2).await;
    cluster.mark_down(2);
    cluster.publish(&[0, 1, 2]);
    write_round(&cluster, &chunks, 2).await;
    write_round(&cluster, &chunks, 3).await;
    let away = cluster.placement().map.clone();
    cluster.restart_node(2).await;
    cluster.mark_up(2);
    cluster.publish(&[0, 1, 2]);
    // Back in its PGs, but the primaries that served while it was away keep the role.
    let returned = cluster.placement().map.clone();
    for (before, after) in away.pools()[0].pgs().iter().zip(returned.pools()[0].pgs()) {
        assert_eq!(before.primary(), after.primary());
    }
    cluster.wait_converged(&chunks).await;
    write_round(&cluster, &chunks, 4).await;
    cluster.wait_converged(&chunks).await;
    // Recovered everywhere: the primaries report in sync and the PGs settle, handing node 3
    // its primaries back.
    cluster.wait_settled().await;
    let me = NodeId(3);
    let settled = cluster.placement().map.clone();
    let leads = settled.pools()[0]
        .pgs()
        .iter()
        .filter(|pg| pg.primary().is_some_and(|m| m.node == me))
        .count();
    assert!(leads > 0, "node 3 leads PGs again");
    write_round(&cluster, &chunks, 5).await;
    cluster.wait_converged(&chunks).await;
    let index = chunks[0];
    let stored = cluster.stored_all(index, 0, cluster.chunk_size_bytes).await;
    let read = cluster.read_at(index, 0, cluster.chunk_size_bytes).await;
    assert!(stored[2].0 == read, "node 3 holds what the primary serves");
}

/// Goal: a node killed and restarted before the map changes (same epoch) is never counted as a
/// copy of writes it missed. Method: node 3 restarts between two rounds of writes without a map
/// change; its fresh engines answer `Unsynced`, the primaries take it out of the write path
/// and recover it; writes succeed throughout and all copies converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_member_in_the_same_epoch_is_recovered() {
    let cluster = Cluster::start().await;
    let chunks = spread_chunks(&cluster);
    write_round(&cluster, &chunks, 1).await;
    let epoch = cluster.epoch();
    cluster.restart_node(2).await;
    write_round(&cluster, &chunks, 2).await;
    assert_eq!(cluster.epoch(), epoch, "no map change");
    cluster.wait_converged(&chunks).await;
    write_round(&cluster, &chunks, 3).await;
    cluster.wait_converged(&chunks).await;
}
