//! The gateway over real peer connections on 127.0.0.1: three `PeerServer`s, each serving I/O
//! straight from its own store (no replication: that is the replication engine's job), a
//! placement map with one replica per PG, and a `GatewayVolume` in front.
//!
//! Method: each test service enforces the epoch rules a primary enforces (`STALE_EPOCH` with
//! its epoch for an older request, `NOT_PRIMARY` when its map names another primary) against
//! its own copy of the map, which the test publishes separately from the gateway's, so the
//! two can disagree on purpose. Data is checked against an in-memory model and against the
//! stores themselves (every chunk must be on its primary's store and nowhere else).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use basalt::ids::{ChunkKey, ChunkVersion, ClusterId, DriveId, NodeId, VolumeId};
use basalt::placement::{
    ClusterDescription, DriveDescription, NodeDescription, NodeState, PlacementMap, PoolId,
    PoolSpec,
};
use basalt::wire::{Bytes, ClusterSecret, Features, Frame, HandshakeConfig, Opcode, Status};
use blockd::frontends::nbd::{NbdConfig, NbdServer};
use blockd::frontends::{StaticExports, VolumeBackend, VolumeError, ZeroFlags};
use blockd::gateway::{
    ClusterView, Gateway, GatewayConfig, GatewayVolume, MapPublisher, VolumeSpec, map_channel,
};
use blockd::peer::{BoxFuture, IoHandler, PeerConfig, PeerServer, Peers, Reply, Router};
use blockd::store::engine::sim::SimRng;
use blockd::store::geometry::GeometryOptions;
use blockd::store::handle::format;
use blockd::store::{FormatOptions, OpenOptions, Store, StoreError};
use tempfile::TempDir;
use tokio::process::Command;
use tokio::task::JoinSet;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Small chunks, so short ranges cross chunks and a 4 MiB volume spans 64 of them.
const CHUNK_BYTES: u32 = 64 * 1024;
/// Smaller than a chunk, so data requests are also cut within chunks.
const PIECE_BYTES: u32 = 16 * 1024;
const VOL_BYTES: u64 = 4 * MIB;
const VOLUME: VolumeId = VolumeId(7);
const POOL: PoolId = PoolId(0);
const PG_COUNT: u32 = 16;
const NODES: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
/// The gateway's own node id (a client-mode node with no drives).
const GATEWAY_NODE: NodeId = NodeId(100);
const DRIVE_BYTES: u64 = 128 * MIB;
/// Safety net for every wait; never reached when the code works.
const WAIT_MAX: Duration = Duration::from_secs(60);

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn cluster_id() -> ClusterId {
    ClusterId(uuid::Uuid::from_u128(0x6a7e_3a79))
}

fn peer_config(node: NodeId) -> PeerConfig {
    let mut config = PeerConfig::new(HandshakeConfig {
        cluster: cluster_id(),
        node,
        secret: ClusterSecret::new(&[0x5a; 32]).expect("test secret"),
        features: Features::NONE,
    });
    config.call_timeout = Duration::from_secs(20);
    config.reconnect_backoff_min = Duration::from_millis(10);
    config.reconnect_backoff_max = Duration::from_millis(100);
    config
}

fn gateway_config() -> GatewayConfig {
    GatewayConfig {
        request_timeout: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(10),
        retry_delay_min: Duration::from_millis(2),
        retry_delay_max: Duration::from_millis(50),
        piece_size_bytes_max: PIECE_BYTES,
        ..GatewayConfig::default()
    }
}

fn spec() -> VolumeSpec {
    VolumeSpec {
        id: VOLUME,
        pool: POOL,
        size_bytes: VOL_BYTES,
        read_only: false,
    }
}

/// Concurrency the servers saw, across all three: pieces and data bytes being served at once.
#[derive(Default)]
struct Load {
    pieces: AtomicUsize,
    pieces_max: AtomicUsize,
    bytes: AtomicUsize,
    bytes_max: AtomicUsize,
    /// Time each request is held, in microseconds (0: none).
    delay_us: AtomicU64,
}

impl Load {
    fn enter(&self, bytes: usize) -> LoadGuard<'_> {
        let pieces = self.pieces.fetch_add(1, Ordering::SeqCst) + 1;
        self.pieces_max.fetch_max(pieces, Ordering::SeqCst);
        let total = self.bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.bytes_max.fetch_max(total, Ordering::SeqCst);
        LoadGuard { load: self, bytes }
    }

    fn reset(&self, delay: Duration) {
        self.pieces_max.store(0, Ordering::SeqCst);
        self.bytes_max.store(0, Ordering::SeqCst);
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }
}

struct LoadGuard<'a> {
    load: &'a Load,
    bytes: usize,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        self.load.pieces.fetch_sub(1, Ordering::SeqCst);
        self.load.bytes.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// A primary without replication: checks the epoch and primaryship against its own map, then
/// serves the request from its store.
struct TestPrimary {
    node: NodeId,
    store: Arc<Store>,
    maps: blockd::gateway::MapWatch,
    load: Arc<Load>,
    next_version: AtomicU64,
}

impl TestPrimary {
    async fn serve(&self, request: Frame) -> Reply {
        let view = self.maps.current();
        let epoch = view.epoch();
        let header = request.header;
        if header.epoch < epoch {
            return Reply::error(Status::StaleEpoch, epoch);
        }
        if header.opcode != Opcode::Flush {
            let Some(pool) = view.map.pool(POOL) else {
                return Reply::error(Status::NotPrimary, epoch);
            };
            let (pg, placement) = pool.locate(header.chunk.volume, header.chunk.index);
            if pg != header.pg {
                return Reply::error(Status::Invalid, epoch);
            }
            if placement.primary().map(|member| member.node) != Some(self.node) {
                return Reply::error(Status::NotPrimary, epoch);
            }
        }
        let weight = match header.opcode {
            Opcode::Write | Opcode::Read => header.length_bytes as usize,
            _ => 0,
        };
        let _load = self.load.enter(weight);
        let delay_us = self.load.delay_us.load(Ordering::SeqCst);
        if delay_us > 0 {
            tokio::time::sleep(Duration::from_micros(delay_us)).await;
        }
        let version = ChunkVersion {
            epoch,
            version: self.next_version.fetch_add(1, Ordering::SeqCst),
        };
        let (chunk, offset, len) = (header.chunk, header.offset_bytes, header.length_bytes);
        let store = &self.store;
        let result = match header.opcode {
            Opcode::Write => store
                .write(chunk, offset, request.payload, version)
                .await
                .map(|()| Bytes::new()),
            Opcode::Read => store.read(chunk, offset, len).await,
            Opcode::Trim => store
                .trim(chunk, offset, len, version)
                .await
                .map(|()| Bytes::new()),
            Opcode::WriteZeroes => store
                .write_zeroes(chunk, offset, len, version)
                .await
                .map(|()| Bytes::new()),
            Opcode::Flush => store.flush().await.map(|()| Bytes::new()),
            _ => return Reply::error(Status::Unsupported, epoch),
        };
        match result {
            Ok(payload) => Reply::ok(epoch, payload),
            Err(error) => Reply::error(status_of(&error), epoch),
        }
    }
}

fn status_of(error: &StoreError) -> Status {
    match error {
        StoreError::OutOfRange { .. } => Status::OutOfRange,
        StoreError::Misaligned { .. } | StoreError::ZeroLength => Status::Invalid,
        StoreError::NoSpace | StoreError::NoChunkSlots => Status::NoSpace,
        _ => Status::IoError,
    }
}

impl IoHandler for TestPrimary {
    fn handle_io(&self, _peer: NodeId, request: Frame) -> BoxFuture<'_, Reply> {
        Box::pin(self.serve(request))
    }
}

struct Node {
    id: NodeId,
    store: Arc<Store>,
    server: Option<PeerServer>,
    addr: SocketAddr,
    maps: MapPublisher,
}

/// Three nodes, the cluster description and map, and the gateway's map channel.
struct Cluster {
    _dir: TempDir,
    nodes: Vec<Node>,
    description: ClusterDescription,
    map: PlacementMap,
    gateway_maps: MapPublisher,
    load: Arc<Load>,
}

async fn new_store(dir: &Path, node: NodeId) -> Arc<Store> {
    let drive = dir.join(format!("drive-{}.img", node.0));
    std::fs::File::create(&drive)
        .and_then(|file| file.set_len(DRIVE_BYTES))
        .expect("create sparse drive file");
    let options = FormatOptions {
        cluster_id: cluster_id(),
        node_id: node,
        drive_id: None,
        geometry: GeometryOptions {
            chunk_size_bytes: Some(CHUNK_BYTES),
            slot_count: Some(512),
            ..GeometryOptions::default()
        },
        force: false,
    };
    format(&drive, &options, None).expect("format drive");
    let store = Store::open(&drive, OpenOptions::default())
        .await
        .expect("open store");
    Arc::new(store)
}

impl Cluster {
    async fn start() -> Self {
        init_logs();
        let dir = tempfile::Builder::new()
            .prefix("gateway")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("scratch directory");
        let description = ClusterDescription {
            nodes: NODES
                .iter()
                .map(|&id| NodeDescription {
                    id,
                    zone: None,
                    state: NodeState::Up,
                    drives: vec![DriveDescription {
                        id: DriveId(uuid::Uuid::from_u128(u128::from(id.0))),
                        weight: 1000,
                    }],
                })
                .collect(),
        };
        let mut map = PlacementMap::new();
        let pool = PoolSpec {
            id: POOL,
            pg_count: PG_COUNT,
            replicas: 1,
            min_size: 1,
        };
        map.add_pool(pool, &description).expect("place the pool");
        let load = Arc::new(Load::default());
        let mut nodes = Vec::new();
        for id in NODES {
            let store = new_store(dir.path(), id).await;
            let (maps, watch) = map_channel(ClusterView::empty());
            let service = TestPrimary {
                node: id,
                store: Arc::clone(&store),
                maps: watch,
                load: Arc::clone(&load),
                next_version: AtomicU64::new(1),
            };
            let router = Router::new().with_io(Arc::new(service));
            let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
            let server = PeerServer::bind(loopback, peer_config(id), Arc::new(router))
                .await
                .expect("bind peer server");
            let addr = server.local_addr();
            nodes.push(Node {
                id,
                store,
                server: Some(server),
                addr,
                maps,
            });
        }
        let (gateway_maps, _) = map_channel(ClusterView::empty());
        let cluster = Cluster {
            _dir: dir,
            nodes,
            description,
            map,
            gateway_maps,
            load,
        };
        cluster.publish_to_servers();
        cluster.publish_to_gateway();
        cluster
    }

    fn view(&self) -> ClusterView {
        ClusterView {
            map: self.map.clone(),
            chunk_size_bytes: CHUNK_BYTES,
            node_addrs: self
                .nodes
                .iter()
                .map(|n| (n.id, n.addr))
                .collect::<BTreeMap<_, _>>(),
            volumes: BTreeMap::new(),
            next_volume_id: 0,
        }
    }

    fn publish_to_servers(&self) {
        for node in &self.nodes {
            assert!(node.maps.publish(self.view()));
        }
    }

    fn publish_to_gateway(&self) {
        assert!(self.gateway_maps.publish(self.view()));
    }

    /// Moves the map to a new epoch in which `node` is out: its PGs get new primaries.
    fn mark_out(&mut self, node: NodeId) {
        let before = self.map.epoch();
        for description in &mut self.description.nodes {
            if description.id == node {
                description.state = NodeState::Out;
            }
        }
        self.map.update(&self.description).expect("update the map");
        assert!(self.map.epoch() > before);
    }

    fn gateway(&self, config: GatewayConfig) -> Gateway {
        let peers = Peers::new(peer_config(GATEWAY_NODE)).expect("peer pool");
        Gateway::new(Arc::new(peers), self.gateway_maps.subscribe(), config).expect("gateway")
    }

    fn primary_of(&self, chunk_index: u64) -> NodeId {
        let pool = self.map.pool(POOL).expect("pool");
        let (_, placement) = pool.locate(VOLUME, chunk_index);
        placement.primary().expect("a primary").node
    }

    fn node(&self, id: NodeId) -> &Node {
        self.nodes.iter().find(|node| node.id == id).expect("node")
    }

    /// A chunk index whose primary is `node`.
    fn chunk_on(&self, node: NodeId) -> u64 {
        (0..VOL_BYTES / u64::from(CHUNK_BYTES))
            .find(|&index| self.primary_of(index) == node)
            .expect("every node is primary of some chunk")
    }

    async fn shutdown(mut self) {
        for node in &mut self.nodes {
            if let Some(server) = node.server.take() {
                server.shutdown().await;
            }
        }
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT_MAX, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {WAIT_MAX:?}"))
}

/// Checks every chunk of the volume against the model on its primary's store, and that no
/// other store holds it.
async fn check_stores(cluster: &Cluster, model: &[u8]) {
    let chunk = CHUNK_BYTES as usize;
    for node in &cluster.nodes {
        let held = node.store.list_chunks().await.expect("list chunks");
        for info in held.iter().filter(|info| info.chunk.volume == VOLUME) {
            assert_eq!(
                cluster.primary_of(info.chunk.index),
                node.id,
                "{} holds chunk {} of another primary",
                node.id,
                info.chunk.index
            );
        }
    }
    for (index, expected) in model.chunks(chunk).enumerate() {
        let primary = cluster.node(cluster.primary_of(index as u64));
        let key = ChunkKey::new(VOLUME, index as u64);
        let data = primary
            .store
            .read(key, 0, CHUNK_BYTES)
            .await
            .expect("read store");
        assert!(
            data[..] == expected[..],
            "chunk {index} on {} differs from the model",
            primary.id
        );
    }
}

/// A random 512-aligned range of at most `len_max` bytes inside the volume.
fn random_range(rng: &mut SimRng, len_max: u64) -> (u64, u64) {
    let sectors = VOL_BYTES / 512;
    let len = (1 + rng.below(len_max / 512)) * 512;
    let offset = rng.below(sectors - len / 512 + 1) * 512;
    (offset, len)
}

/// One random operation on `volume`, mirrored in `model` (reads are compared with it).
async fn random_step(volume: &GatewayVolume, rng: &mut SimRng, model: &mut [u8], step: u32) {
    let (offset, len) = random_range(rng, 160 * KIB);
    let range = offset as usize..(offset + len) as usize;
    match rng.below(10) {
        0..=4 => {
            let fill = (step % 251 + 1) as u8;
            let data: Vec<u8> = (0..len).map(|i| fill ^ (i / 512) as u8).collect();
            model[range.clone()].copy_from_slice(&data);
            let fua = rng.chance(1, 4);
            within("write", volume.write(offset, Bytes::from(data), fua))
                .await
                .expect("write");
        }
        5..=7 => {
            let data = within("read", volume.read(offset, len as u32))
                .await
                .expect("read");
            assert!(
                data[..] == model[range],
                "step {step}: read {offset}+{len} differs"
            );
        }
        8 => {
            model[range].fill(0);
            within("trim", volume.trim(offset, len))
                .await
                .expect("trim");
        }
        _ => {
            model[range].fill(0);
            let flags = ZeroFlags {
                no_hole: rng.chance(1, 2),
                fast: false,
            };
            within("zero", volume.write_zeroes(offset, len, flags))
                .await
                .expect("write zeroes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_io_matches_a_model_and_lands_on_primaries() {
    // Goal: reads, writes, trims and zeroing at random 512-byte offsets and lengths (crossing
    // chunks and 4 KiB blocks, cut into pieces) read back like an in-memory model, and every
    // chunk sits on its PG primary's store only.
    // Method: 160 sequential operations from a logged seed, then a full read and a direct
    // comparison with each store.
    let cluster = Cluster::start().await;
    let gateway = cluster.gateway(gateway_config());
    let volume = gateway.volume(spec()).expect("volume");
    let seed = rand::random::<u64>() | 1;
    eprintln!("seed {seed:#x}");
    let mut rng = SimRng::new(seed);
    let mut model = vec![0u8; VOL_BYTES as usize];
    for step in 0..160u32 {
        random_step(&volume, &mut rng, &mut model, step).await;
        if step % 40 == 39 {
            within("flush", volume.flush()).await.expect("flush");
        }
    }
    for offset in (0..VOL_BYTES).step_by(MIB as usize) {
        let data = within("read", volume.read(offset, MIB as u32))
            .await
            .expect("read");
        let range = offset as usize..(offset + MIB) as usize;
        assert!(data[..] == model[range], "final read at {offset} differs");
    }
    check_stores(&cluster, &model).await;
    let stats = gateway.stats().snapshot();
    assert_eq!(stats.failures, 0, "{stats:?}");
    assert_eq!(gateway.pieces_in_flight(), 0);
    assert_eq!(gateway.bytes_in_flight(), 0);
    // FAST_ZERO that must keep the range allocated is refused without I/O.
    let flags = ZeroFlags {
        no_hole: true,
        fast: true,
    };
    assert!(matches!(
        volume.write_zeroes(0, 4096, flags).await,
        Err(VolumeError::SlowZero)
    ));
    assert!(matches!(
        volume.read(VOL_BYTES - 512, 1024).await,
        Err(VolumeError::Invalid(_))
    ));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_changes_are_followed_after_stale_epoch_and_not_primary() {
    // Goal: when the servers move to a newer map first, the gateway's requests get
    // STALE_EPOCH, it waits for the newer map, re-routes and succeeds; when the gateway is
    // ahead of the new primary, NOT_PRIMARY makes it back off until the primary catches up.
    // Method: mark node 3 out (its PGs get new primaries); publish to the servers, write,
    // publish to the gateway a little later. Then mark node 2 out and publish in the other
    // order. Data must read back and sit on the new primaries' stores.
    let mut cluster = Cluster::start().await;
    let gateway = cluster.gateway(gateway_config());
    let volume = gateway.volume(spec()).expect("volume");
    let mut model = vec![0u8; VOL_BYTES as usize];
    let write_all = |fill: u8, model: &mut Vec<u8>| {
        model.fill(fill);
        volume.write(0, Bytes::from(vec![fill; VOL_BYTES as usize]), false)
    };
    within("first write", write_all(1, &mut model))
        .await
        .expect("write");

    // Servers first: the gateway's epoch is stale.
    cluster.mark_out(NodeId(3));
    cluster.publish_to_servers();
    let newer = cluster.view();
    let write = write_all(2, &mut model);
    let publish_later = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(cluster.gateway_maps.publish(newer));
    };
    let (written, ()) = within("write across the map change", async {
        tokio::join!(write, publish_later)
    })
    .await;
    written.expect("write after the map change");
    let stats = gateway.stats().snapshot();
    assert!(stats.retries_stale_epoch > 0, "{stats:?}");
    assert_eq!(stats.failures, 0, "{stats:?}");
    let data = within("read", volume.read(0, VOL_BYTES as u32))
        .await
        .expect("read");
    assert!(data[..] == model[..]);
    check_stores_for_written(&cluster, 2).await;

    // Gateway first: the new primary's map is older than the request's epoch.
    cluster.mark_out(NodeId(2));
    cluster.publish_to_gateway();
    let before = gateway.stats().snapshot();
    let write = write_all(3, &mut model);
    let publish_later = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.publish_to_servers();
    };
    let (written, ()) = within("write ahead of the servers", async {
        tokio::join!(write, publish_later)
    })
    .await;
    written.expect("write once the servers catch up");
    let after = gateway.stats().snapshot();
    assert!(after.retries_backoff > before.retries_backoff, "{after:?}");
    let data = within("read", volume.read(0, VOL_BYTES as u32))
        .await
        .expect("read");
    assert!(data[..] == model[..]);
    check_stores_for_written(&cluster, 3).await;
    cluster.shutdown().await;
}

/// Every chunk of the volume, read from its current primary's store, is all `fill`.
async fn check_stores_for_written(cluster: &Cluster, fill: u8) {
    for index in 0..VOL_BYTES / u64::from(CHUNK_BYTES) {
        let primary = cluster.node(cluster.primary_of(index));
        let key = ChunkKey::new(VOLUME, index);
        let data = primary
            .store
            .read(key, 0, CHUNK_BYTES)
            .await
            .expect("read store");
        assert!(
            data.iter().all(|&byte| byte == fill),
            "chunk {index} on {} is not {fill}",
            primary.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_primary_fails_its_requests_after_the_bound() {
    // Goal: with one server gone (and still primary in the map), requests for its chunks fail
    // with an I/O error once the request bound has passed, while other chunks keep working.
    // Method: shut down node 3's server, use a 1 s bound (the map keeps the PG available, so
    // the failover bound is the one that applies: both 1 s), write one chunk on each node.
    let mut cluster = Cluster::start().await;
    let bound = Duration::from_secs(1);
    let config = GatewayConfig {
        request_timeout: bound,
        failover_timeout: bound,
        ..gateway_config()
    };
    let gateway = cluster.gateway(config);
    let volume = gateway.volume(spec()).expect("volume");
    let down = NodeId(3);
    let dead_chunk = cluster.chunk_on(down);
    let live_chunk = cluster.chunk_on(NodeId(1));
    // Connect first, so the failure is a lost connection and then refused dials.
    let offset = dead_chunk * u64::from(CHUNK_BYTES);
    within(
        "write",
        volume.write(offset, Bytes::from(vec![9u8; 4096]), false),
    )
    .await
    .expect("write while up");
    let server = cluster.nodes[2].server.take().expect("node 3 server");
    server.shutdown().await;

    let started = tokio::time::Instant::now();
    let result = within("write to a dead primary", async {
        volume
            .write(offset, Bytes::from(vec![8u8; 4096]), false)
            .await
    })
    .await;
    assert!(matches!(result, Err(VolumeError::Io(_))), "{result:?}");
    assert!(started.elapsed() >= bound, "failed before the bound");
    let result = within("read from a dead primary", volume.read(offset, 4096)).await;
    assert!(matches!(result, Err(VolumeError::Io(_))), "{result:?}");

    let live = live_chunk * u64::from(CHUNK_BYTES);
    within(
        "write to a live primary",
        volume.write(live, Bytes::from(vec![7u8; 8192]), false),
    )
    .await
    .expect("live write");
    let data = within("read", volume.read(live, 8192))
        .await
        .expect("live read");
    assert!(data.iter().all(|&byte| byte == 7));
    assert!(gateway.stats().snapshot().failures >= 2);
    assert_eq!(gateway.pieces_in_flight(), 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_respect_the_in_flight_bounds() {
    // Goal: many concurrent requests never have more pieces, nor more data bytes, in flight
    // at the servers than the gateway's bounds, and all complete.
    // Method: the servers hold each request 2 ms and record the most they served at once;
    // 48 concurrent requests of 1..4 pieces, first with a piece bound of 3, then with a byte
    // bound of two pieces.
    let cluster = Cluster::start().await;
    let cases = [
        (3, 64 * MIB as usize, 3, usize::MAX),
        (
            1024,
            2 * PIECE_BYTES as usize,
            usize::MAX,
            2 * PIECE_BYTES as usize,
        ),
    ];
    for (pieces_max, bytes_max, want_pieces, want_bytes) in cases {
        let config = GatewayConfig {
            pieces_in_flight_max: pieces_max,
            bytes_in_flight_max: bytes_max,
            ..gateway_config()
        };
        let gateway = cluster.gateway(config);
        let volume = Arc::new(gateway.volume(spec()).expect("volume"));
        cluster.load.reset(Duration::from_millis(2));
        let mut tasks = JoinSet::new();
        for i in 0..48u64 {
            let volume = Arc::clone(&volume);
            tasks.spawn(async move {
                let offset = i * 64 * KIB + 8 * KIB;
                let len = (1 + i % 4) * u64::from(PIECE_BYTES) - 8 * KIB;
                if i % 2 == 0 {
                    let data = Bytes::from(vec![i as u8; len as usize]);
                    volume.write(offset, data, false).await.map(drop)
                } else {
                    volume.read(offset, len as u32).await.map(drop)
                }
            });
        }
        within("concurrent requests", async {
            while let Some(result) = tasks.join_next().await {
                result.expect("task").expect("request");
            }
        })
        .await;
        let pieces = cluster.load.pieces_max.load(Ordering::SeqCst);
        let bytes = cluster.load.bytes_max.load(Ordering::SeqCst);
        assert!(
            pieces <= want_pieces,
            "{pieces} pieces at once, bound {want_pieces}"
        );
        assert!(
            bytes <= want_bytes,
            "{bytes} bytes at once, bound {want_bytes}"
        );
        assert!(pieces >= 2, "requests never overlapped ({pieces})");
        assert_eq!(gateway.pieces_in_flight(), 0);
        assert_eq!(gateway.bytes_in_flight(), 0);
    }
    cluster.load.reset(Duration::ZERO);
    cluster.shutdown().await;
}

async fn qemu_io(commands: &[String], uri: &str) -> String {
    let mut args = vec!["-f".to_owned(), "raw".to_owned()];
    for command in commands {
        args.extend(["-c".to_owned(), command.clone()]);
    }
    args.push(uri.to_owned());
    let output = within(
        "qemu-io",
        Command::new("qemu-io")
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run qemu-io (package qemu-utils, see scripts/test)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && !text.contains("failed") && !text.contains("error"),
        "qemu-io {args:?} failed:\n{text}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbd_over_the_gateway_with_qemu_io() {
    // Goal: a GatewayVolume served by the NBD server works for a real client: patterns at
    // 512-byte-aligned offsets, across chunk boundaries and across pieces, written by one
    // qemu-io run and read back by another, with zeroing and discard.
    let cluster = Cluster::start().await;
    let gateway = cluster.gateway(gateway_config());
    let volume: GatewayVolume = gateway.volume(spec()).expect("volume");
    let mut exports = StaticExports::new();
    exports.insert("vol", "volume through the gateway", Arc::new(volume));
    let server = NbdServer::new(Arc::new(exports), NbdConfig::default());
    let addr = server
        .listen_tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("listen");
    let uri = format!("nbd://{addr}/vol");
    let chunk = u64::from(CHUNK_BYTES);
    let ranges = [
        (512, 1024),
        (chunk - 1536, 3584),
        (5 * chunk + 2560, 200 * KIB),
        (VOL_BYTES - 1024, 1024),
    ];
    let (mut write, mut read) = (Vec::new(), Vec::new());
    for (i, (offset, len)) in ranges.into_iter().enumerate() {
        let pattern = 0x31 + i as u8 * 16;
        write.push(format!("write -P {pattern:#x} {offset} {len}"));
        read.push(format!("read -P {pattern:#x} {offset} {len}"));
        read.push(format!("read -P 0 {} 512", offset - 512));
    }
    let wrote = qemu_io(&write, &uri).await;
    assert_eq!(wrote.matches("wrote ").count(), write.len(), "{wrote}");
    let readback = qemu_io(&read, &uri).await;
    assert_eq!(readback.matches("read ").count(), read.len(), "{readback}");

    let zero = [
        "write -P 0x77 0 131072",
        "write -z 512 1024",
        "write -z -u 4096 65536",
        "discard 98304 4096",
        "read -P 0x77 0 512",
        "read -P 0 512 1024",
        "read -P 0x77 1536 2560",
        "read -P 0 4096 65536",
        "read -P 0x77 69632 28672",
        "read -P 0 98304 4096",
        "read -P 0x77 102400 28672",
        "flush",
    ]
    .map(str::to_owned);
    let text = qemu_io(&zero, &uri).await;
    assert_eq!(text.matches("read ").count(), 7, "{text}");
    within("nbd shutdown", server.shutdown()).await;
    assert_eq!(gateway.stats().snapshot().failures, 0);
    cluster.shutdown().await;
}
