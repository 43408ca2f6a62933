//! [`ReplicationService`]: the async shell that runs this node's [`PgEngine`]s (DESIGN §4,
//! `docs/replication.md` "Shell").
//!
//! One task per hosted PG owns that PG's engine (`actor.rs`); the service routes each I/O frame
//! to the task of the frame's PG through a bounded inbox and awaits the answer. A view task
//! follows the cluster view: it keeps the peer address book current and starts a PG task for
//! every PG whose acting set names this node. Each PG task watches the view itself, so map
//! changes reach every engine without a fan-out step.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use basalt::ids::{ChunkKey, ChunkVersion, DriveId, Epoch, NodeId, PgId, VolumeId};
use basalt::placement::{Member, PoolId, pg_of};
use basalt::units::SECTOR_SIZE_BYTES;
use basalt::wire::{Bytes, ControlKind, Frame, Header, Opcode, Status};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::actor::{self, Input, PgTask, RecoveryOp, Request, error_reply};
use super::block_status::{
    AllocationRun, BLOCK_STATUS_VERSION, BlockStatusReply, BlockStatusRequest,
};
use super::pg::PgEngine;
use super::recovery::Throttle;
use super::recovery::{RecoveryCtx, pg_labels};
use super::recovery_msg::{
    RECOVERY_PIECE_BYTES_MAX, RECOVERY_VERSION, RecoveryReply, RecoveryRequest,
};
use super::scrub::{self, RepairJob, ScrubPg, ScrubSettings};
use super::stats::ReplicationStats;
use super::sweep;
use super::types::{
    ChunkRange, EngineError, Limits, MapView, Mutation, OpKind, PgConfig, store_status,
};
use crate::peer::{BoxFuture, ControlHandler, IoHandler, Peers, Reply, Router};
use crate::store::{Store, StoreError};
use crate::view::{ClusterView, MapWatch};

/// Default bound on how long a request waits for this node's view to reach the request's
/// epoch (or to learn its volume) before it is answered `Timeout`. A map change reaches every
/// node within milliseconds; seconds mean the metadata service is unreachable from here.
pub const VIEW_WAIT_DEFAULT: Duration = Duration::from_secs(5);

/// Default number of requests queued to one PG's task before the frame's handler waits (and
/// through the server's per-connection bound, the sender). Above the engine's own queues, so
/// the engine is what answers `Busy`.
pub const PG_INBOX_DEPTH_DEFAULT: usize = 1024;

/// A PG's full name: PG ids are per pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgKey {
    /// The pool.
    pub pool: PoolId,
    /// The PG within the pool.
    pub pg: PgId,
}

impl fmt::Display for PgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pool, self.pg)
    }
}

/// Settings of the replication service on one node.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// This node.
    pub node: NodeId,
    /// Every engine's timeouts and bounds.
    pub limits: Limits,
    /// See [`VIEW_WAIT_DEFAULT`].
    pub view_wait: Duration,
    /// See [`PG_INBOX_DEPTH_DEFAULT`].
    pub pg_inbox_depth: usize,
    /// Bytes per second all of this node's recovery copies share (0: unlimited). See
    /// [`RECOVERY_BYTES_PER_SEC_DEFAULT`].
    pub recovery_bytes_per_sec: u64,
    /// The node's read lease (its expiry), kept by the heartbeat loop; `None` when there is no
    /// metadata service to grant one (leases not enforced). Set `limits.lease_wait` with it.
    pub leases: Option<watch::Receiver<Option<Instant>>>,
    /// Where the PG tasks report states and recovery progress (shared with metrics).
    pub stats: Arc<ReplicationStats>,
    /// The background scrub of the PGs this node leads.
    pub scrub: ScrubSettings,
    /// Time between two sweeps of copies no PG needs here any more (zero: never).
    pub sweep_interval: Duration,
}

/// Default recovery bandwidth of a node (the config's `[recovery] bytes_per_sec`).
pub const RECOVERY_BYTES_PER_SEC_DEFAULT: u64 = basalt::config::RECOVERY_BYTES_PER_SEC_DEFAULT;

impl ReplicationConfig {
    /// Defaults for `node`.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            limits: Limits::default(),
            view_wait: VIEW_WAIT_DEFAULT,
            pg_inbox_depth: PG_INBOX_DEPTH_DEFAULT,
            recovery_bytes_per_sec: RECOVERY_BYTES_PER_SEC_DEFAULT,
            leases: None,
            stats: Arc::default(),
            scrub: ScrubSettings::default(),
            sweep_interval: basalt::config::SWEEP_INTERVAL_DEFAULT,
        }
    }
}

/// What the service asks the metadata service to act on (the daemon forwards these).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaReport {
    /// Every member of a PG this node leads is in sync under a transitional acting set that
    /// changed in `since`: settle it (`CommandKind::SettlePg`). Repeated while it holds.
    Settle {
        /// The PG.
        pg: PgKey,
        /// The epoch its reported placement changed in.
        since: Epoch,
    },
    /// A member failed a replicated write of a PG `reporter` leads (error reply, broken
    /// connection, or a write that timed out without it): mark it down so a new epoch drops
    /// it from the acting set. Sent at most once per PG, member and epoch.
    Peer {
        /// This node.
        reporter: NodeId,
        /// The PG whose write it failed.
        pg: PgKey,
        /// The failed member.
        node: NodeId,
        /// The epoch it failed in.
        epoch: Epoch,
    },
    /// This node's drive failed a mutation: the PG stopped serving here and answers every
    /// request with `status`; the PG must move on without this copy.
    Drive {
        /// This node.
        reporter: NodeId,
        /// The PG that stopped.
        pg: PgKey,
        /// The drive that failed.
        drive: DriveId,
        /// The store's failure.
        status: Status,
    },
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The engine limits are inconsistent.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A bound in the configuration is zero.
    #[error("invalid replication configuration: {field}")]
    Config {
        /// The field.
        field: &'static str,
    },
    /// Listing a drive's chunks (to find each PG's head) failed.
    #[error("listing the chunks of drive {drive}: {source}")]
    ListChunks {
        /// The drive.
        drive: DriveId,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

/// The PG's map as an engine sees it: epoch, acting nodes, `min_size`, transition. A PG missing from the
/// view (cannot happen for a valid map) has no members.
pub(crate) fn map_view(view: &ClusterView, key: PgKey) -> MapView {
    let pool = view.map.pool(key.pool);
    let placement = pool.and_then(|pool| pool.pg(key.pg));
    let acting = placement
        .map(|placement| placement.acting().iter().map(|m| m.node).collect())
        .unwrap_or_default();
    MapView {
        // The engine lives in the PG's interval: a map change that leaves this PG as it was
        // is not a change for it (see `in_interval`).
        epoch: placement.map_or_else(|| view.epoch(), |placement| placement.since()),
        acting,
        // A missing pool has no members, so any non-zero value is equivalent.
        min_size: pool.map_or(1, |pool| pool.spec().min_size),
        settle: placement
            .filter(|placement| placement.is_pending())
            .map(|placement| placement.since()),
    }
}

/// The epoch PG `key`'s current placement began in (its `since`: the start of its interval).
/// Engines version their state and messages by it, not by the map's epoch: the map changes
/// whenever any PG settles or any node comes or goes, and an engine that restarted its
/// peering and recovery on each of those changes would never finish under churn (a soak saw
/// a PG's recovery restarted 15 times in 20 s until its writes timed out).
pub(crate) fn pg_interval(view: &ClusterView, key: PgKey) -> Option<Epoch> {
    view.map
        .pool(key.pool)
        .and_then(|pool| pool.pg(key.pg))
        .map(basalt::placement::PgPlacement::since)
}

/// The epoch a message stamped `epoch` counts as in a PG whose interval began at `since`, seen
/// in a view of epoch `view_epoch`: a message of the current interval (`epoch` between its
/// start and the view) counts as of the interval's start, so it meets an engine of the same
/// interval as current; an older one keeps its epoch (stale), and so does one from a map
/// newer than the view (the PG may have changed in between: it waits for that map).
pub(crate) fn in_interval(epoch: Epoch, since: Option<Epoch>, view_epoch: Epoch) -> Epoch {
    match since {
        Some(since) if since <= epoch && epoch <= view_epoch => since,
        _ => epoch,
    }
}

/// Where a volume's chunks are placed.
#[derive(Clone, Copy, Debug)]
struct VolumeRoute {
    pool: PoolId,
    pg_count: u32,
}

fn volume_route(view: &ClusterView, volume: VolumeId) -> Option<VolumeRoute> {
    let pool = view.volumes.values().find(|v| v.id == volume)?.pool;
    let pg_count = view.map.pool(pool)?.spec().pg_count;
    Some(VolumeRoute { pool, pg_count })
}

/// One PG of a scrub pass: the PG, its store here, its other acting members, its chunks.
type ScrubPlan = (PgKey, Arc<Store>, Vec<NodeId>, Vec<ChunkKey>);

/// A PG task's inbox.
#[derive(Clone)]
struct PgHandle {
    inbox: mpsc::Sender<Input>,
}

/// The routing table: read on every request (a shared lock held for two hash lookups, never
/// across an await), written only when the view changes or a PG task starts.
struct Table {
    /// The view `volumes` was built from.
    view: Arc<ClusterView>,
    volumes: HashMap<VolumeId, VolumeRoute>,
    pgs: HashMap<PgKey, PgHandle>,
}

/// Each PG's head on each drive, from the chunks the drives held at start. Chunks of volumes
/// the view does not know yet stay unresolved until a view names them.
#[derive(Default)]
struct Heads {
    known: HashMap<(DriveId, PgKey), ChunkVersion>,
    unresolved: HashMap<VolumeId, Vec<(DriveId, u64, ChunkVersion)>>,
}

impl Heads {
    fn resolve(&mut self, view: &ClusterView) {
        let volumes: Vec<VolumeId> = self.unresolved.keys().copied().collect();
        for volume in volumes {
            let Some(route) = volume_route(view, volume) else {
                continue;
            };
            for (drive, index, version) in self.unresolved.remove(&volume).unwrap_or_default() {
                let pg = pg_of(volume, index, route.pg_count);
                let key = PgKey {
                    pool: route.pool,
                    pg,
                };
                let head = self.known.entry((drive, key)).or_default();
                *head = (*head).max(version);
            }
        }
    }
}

/// State shared by the request handlers, the view task and the service handle.
struct Inner {
    config: ReplicationConfig,
    stores: BTreeMap<DriveId, Arc<Store>>,
    peers: Arc<Peers>,
    view: watch::Receiver<Arc<ClusterView>>,
    meta_reports: mpsc::Sender<MetaReport>,
    table: RwLock<Table>,
    heads: Mutex<Heads>,
    throttle: Arc<Throttle>,
    /// PGs without a task whose stray chunks the sweep is deleting: no task starts for them
    /// until it is done (see [`Inner::sweep_without_task`]).
    sweeping: Mutex<HashSet<PgKey>>,
    /// Woken when a PG leaves `sweeping`.
    swept: Notify,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// Runs the replication engines of one node: serves WRITE / READ / TRIM / WRITE_ZEROES / FLUSH
/// from gateways and REPLICATE_* from primaries as the I/O handler of the node's peer
/// [`crate::peer::Router`], and replicates through a [`Peers`] pool.
///
/// Requests of one PG are handled in order by that PG's task; PGs run in parallel. Dropping the
/// service (or [`Self::shutdown`]) stops every task; requests in progress are answered
/// `IoError`.
pub struct ReplicationService {
    inner: Arc<Inner>,
}

impl ReplicationService {
    /// Starts the service over this node's `stores` (one per drive, keyed by drive id): lists
    /// each drive's chunks to find every PG's head, then follows the views of `maps` (starting
    /// a task for each PG whose acting set names this node, and keeping `peers`' address book
    /// current). Failed members and drives, and PGs ready to settle, are sent to
    /// `meta_reports` (never blocking: a full channel drops the report with a warning).
    ///
    /// Register it with `Router::new().with_io(service.clone())`.
    pub async fn start(
        config: ReplicationConfig,
        stores: BTreeMap<DriveId, Arc<Store>>,
        peers: Arc<Peers>,
        maps: MapWatch,
        meta_reports: mpsc::Sender<MetaReport>,
    ) -> Result<Arc<Self>, ReplicationError> {
        let view = maps.receiver();
        config.limits.validate()?;
        if config.pg_inbox_depth == 0 {
            return Err(ReplicationError::Config {
                field: "pg_inbox_depth",
            });
        }
        let mut heads = Heads::default();
        for (drive, store) in &stores {
            let chunks =
                store
                    .list_chunks()
                    .await
                    .map_err(|source| ReplicationError::ListChunks {
                        drive: *drive,
                        source,
                    })?;
            for info in chunks {
                let chunk = info.chunk;
                heads.unresolved.entry(chunk.volume).or_default().push((
                    *drive,
                    chunk.index,
                    info.version,
                ));
            }
        }
        let current = Arc::clone(&view.borrow());
        let throttle = Arc::new(Throttle::new(config.recovery_bytes_per_sec));
        let inner = Arc::new(Inner {
            config,
            stores,
            peers,
            view,
            meta_reports,
            table: RwLock::new(Table {
                view: Arc::clone(&current),
                volumes: HashMap::new(),
                pgs: HashMap::new(),
            }),
            heads: Mutex::new(heads),
            throttle,
            sweeping: Mutex::default(),
            swept: Notify::new(),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        inner.apply_view(&current);
        let task = Arc::clone(&inner);
        inner.tracker.spawn(async move { task.follow_view().await });
        let task = Arc::clone(&inner);
        inner.tracker.spawn(async move { task.scrub_loop().await });
        let task = Arc::clone(&inner);
        inner.tracker.spawn(async move { task.sweep_loop().await });
        Ok(Arc::new(Self { inner }))
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.inner.config.node
    }

    /// Adds the service's handlers to a peer router: replication I/O, block status, and
    /// peering/recovery messages.
    pub fn routes(self: &Arc<Self>, router: Router) -> Router {
        router
            .with_io(Arc::clone(self) as _)
            .with_control(ControlKind::BLOCK_STATUS, Arc::clone(self) as _)
            .with_control(
                ControlKind::PG_RECOVERY,
                Arc::new(RecoveryControl(Arc::clone(&self.inner))),
            )
    }

    /// The PGs this node runs an engine for.
    pub fn hosted_pgs(&self) -> Vec<PgKey> {
        let mut keys: Vec<PgKey> = self.inner.table().pgs.keys().copied().collect();
        keys.sort();
        keys
    }

    /// Stops every task and waits for them; requests in progress are answered `IoError`.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

impl Drop for ReplicationService {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}

impl IoHandler for ReplicationService {
    fn handle_io(&self, peer: NodeId, request: Frame) -> BoxFuture<'_, Reply> {
        Box::pin(self.inner.serve(peer, request))
    }
}

/// Serves [`basalt::wire::ControlKind::BLOCK_STATUS`]: register it on the node's router (and
/// hand it to the gateway for this node's own PGs).
impl ControlHandler for ReplicationService {
    fn handle_control(
        &self,
        _peer: NodeId,
        version: u16,
        body: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, Status>> {
        Box::pin(async move {
            if version != BLOCK_STATUS_VERSION {
                return Err(Status::Unsupported);
            }
            let request: BlockStatusRequest =
                postcard::from_bytes(&body).map_err(|_| Status::Invalid)?;
            let reply = self.inner.block_status(request).await;
            postcard::to_stdvec(&reply)
                .map(Bytes::from)
                .map_err(|_| Status::IoError)
        })
    }
}

/// Serves [`ControlKind::PG_RECOVERY`] (see `recovery_msg`).
struct RecoveryControl(Arc<Inner>);

impl ControlHandler for RecoveryControl {
    fn handle_control(
        &self,
        peer: NodeId,
        version: u16,
        body: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, Status>> {
        Box::pin(async move {
            if version != RECOVERY_VERSION {
                return Err(Status::Unsupported);
            }
            let request: RecoveryRequest =
                postcard::from_bytes(&body).map_err(|_| Status::Invalid)?;
            let reply = self.0.recovery(peer, request).await;
            postcard::to_stdvec(&reply)
                .map(Bytes::from)
                .map_err(|_| Status::IoError)
        })
    }
}

impl Inner {
    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        // Every write is a whole-field assignment or one map insert: consistent after a panic.
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn table_mut(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn sweeping(&self) -> MutexGuard<'_, HashSet<PgKey>> {
        self.sweeping.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn heads(&self) -> MutexGuard<'_, Heads> {
        self.heads.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current_epoch(&self) -> Epoch {
        self.view.borrow().epoch()
    }

    /// Follows the view until the service stops or the publisher is gone.
    async fn follow_view(&self) {
        let mut view = self.view.clone();
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                changed = view.changed() => if changed.is_err() {
                    return;
                },
            }
            let current = Arc::clone(&view.borrow_and_update());
            self.apply_view(&current);
        }
    }

    /// Takes in a new view: peer addresses, chunk heads of newly known volumes, the routing
    /// table, and a task for every PG whose acting set names this node.
    fn apply_view(&self, view: &Arc<ClusterView>) {
        let me = self.config.node;
        for (node, addr) in &view.node_addrs {
            if *node != me {
                self.peers.set_address(*node, *addr);
            }
        }
        self.heads().resolve(view);
        let volumes: HashMap<VolumeId, VolumeRoute> = view
            .volumes
            .values()
            .filter_map(|v| volume_route(view, v.id).map(|route| (v.id, route)))
            .collect();
        {
            let mut table = self.table_mut();
            table.view = Arc::clone(view);
            table.volumes = volumes;
        }
        for (pool, pg) in view.map.pgs_of_node(me) {
            // A PG that cannot start here is logged by `ensure_pg`.
            let _ = self.ensure_pg(PgKey { pool, pg }, view);
        }
    }

    /// The task of `key`, started if this node is in its acting set in `view`. `None` when the
    /// node does not host the PG.
    fn ensure_pg(&self, key: PgKey, view: &ClusterView) -> Option<PgHandle> {
        if let Some(handle) = self.table().pgs.get(&key) {
            return Some(handle.clone());
        }
        let me = self.config.node;
        let placement = view.map.pool(key.pool)?.pg(key.pg)?;
        let member = placement.acting().iter().find(|m| m.node == me)?;
        let Some(store) = self.stores.get(&member.drive) else {
            tracing::error!(pg = %key, drive = %member.drive, "the map places a PG on a drive this node does not have");
            return None;
        };
        let head = self
            .heads()
            .known
            .get(&(member.drive, key))
            .copied()
            .unwrap_or_default();
        let mut table = self.table_mut();
        if let Some(handle) = table.pgs.get(&key) {
            return Some(handle.clone());
        }
        if self.sweeping().contains(&key) {
            // Its stray chunks are being deleted; the sweep starts the task when done.
            return None;
        }
        let config = PgConfig {
            pg: key.pg,
            node: me,
            chunk_size_bytes: store.chunk_size_bytes(),
            limits: self.config.limits,
        };
        let engine = match PgEngine::new(config, map_view(view, key), head, Instant::now()) {
            Ok(engine) => engine,
            Err(error) => {
                tracing::error!(pg = %key, %error, "cannot start the PG's engine");
                return None;
            }
        };
        tracing::debug!(pg = %key, drive = %member.drive, %head, "starting PG");
        let (sender, inbox) = mpsc::channel(self.config.pg_inbox_depth);
        let task = PgTask {
            key,
            node: me,
            drive: member.drive,
            engine,
            store: Arc::clone(store),
            peers: Arc::clone(&self.peers),
            view: self.view.clone(),
            meta_reports: self.meta_reports.clone(),
            view_wait: self.config.view_wait,
            replicate_timeout: self.config.limits.op_timeout,
            throttle: Arc::clone(&self.throttle),
            lease: self.config.leases.clone(),
            stats: Arc::clone(&self.config.stats),
        };
        self.tracker
            .spawn(actor::run(task, inbox, self.cancel.child_token()));
        let handle = PgHandle { inbox: sender };
        table.pgs.insert(key, handle.clone());
        Some(handle)
    }

    /// [`Self::ensure_pg`], waiting (at most `view_wait`) while the sweep deletes the PG's
    /// stray chunks here: a request that names this node a member again is served after that.
    async fn ensure_pg_after_sweep(&self, key: PgKey, view: &ClusterView) -> Option<PgHandle> {
        let deadline = tokio::time::Instant::now() + self.config.view_wait;
        loop {
            let swept = self.swept.notified();
            tokio::pin!(swept);
            swept.as_mut().enable();
            if let Some(handle) = self.ensure_pg(key, view) {
                return Some(handle);
            }
            if !self.sweeping().contains(&key) {
                return None;
            }
            if tokio::time::timeout_at(deadline, swept).await.is_err() {
                return None;
            }
        }
    }

    /// Sends `request` to a PG task and waits for its answer; `IoError` if the task is gone
    /// (the service is stopping).
    async fn ask(&self, handle: &PgHandle, request: Request) -> Reply {
        let (reply, answer) = oneshot::channel();
        if handle.inbox.send(Input { request, reply }).await.is_ok()
            && let Ok(reply) = answer.await
        {
            return reply;
        }
        error_reply(Status::IoError, self.current_epoch())
    }

    /// Answers one I/O frame.
    async fn serve(&self, peer: NodeId, frame: Frame) -> Reply {
        let header = frame.header;
        if header.opcode == Opcode::Flush {
            return self.flush(&header).await;
        }
        let Some(request) = decode(peer, frame) else {
            return error_reply(Status::Unsupported, self.current_epoch());
        };
        match self.route(&header).await {
            Ok(handle) => self.ask(&handle, request).await,
            Err(reply) => reply,
        }
    }

    /// The task of the frame's PG. Fast path: the routing table knows the volume, the
    /// request's epoch is not newer than the table's view, and the PG task runs. Otherwise
    /// [`Self::view_for`] the frame, then the PG's task is started if this node hosts the PG,
    /// or the frame is answered as a stray engine would.
    async fn route(&self, header: &Header) -> Result<PgHandle, Reply> {
        {
            let table = self.table();
            if header.epoch <= table.view.epoch()
                && let Some(route) = table.volumes.get(&header.chunk.volume)
            {
                let key = check_pg(header, *route, table.view.epoch())?;
                if let Some(handle) = table.pgs.get(&key) {
                    return Ok(handle.clone());
                }
            }
        }
        let (view, route) = self.view_for(header.chunk.volume, header.epoch).await?;
        let epoch = view.epoch();
        let key = check_pg(header, route, epoch)?;
        if let Some(handle) = self.ensure_pg_after_sweep(key, &view).await {
            return Ok(handle);
        }
        let status = if header.epoch < pg_interval(&view, key).unwrap_or(epoch) {
            Status::StaleEpoch
        } else if OpKind::from_replicate_opcode(header.opcode).is_some() {
            Status::Invalid
        } else {
            Status::NotPrimary
        };
        Err(error_reply(status, epoch))
    }

    /// A view with the request's `epoch` (or newer) that knows its `volume`, waiting for one
    /// at most `view_wait`; the request is answered `Timeout` if its epoch never came and
    /// `OutOfRange` if its volume is unknown.
    async fn view_for(
        &self,
        volume: VolumeId,
        wanted: Epoch,
    ) -> Result<(Arc<ClusterView>, VolumeRoute), Reply> {
        let ready =
            |view: &ClusterView| view.epoch() >= wanted && volume_route(view, volume).is_some();
        let view = {
            let current = self.view.borrow();
            ready(&current).then(|| Arc::clone(&current))
        };
        let view = match view {
            Some(view) => view,
            None => {
                let mut receiver = self.view.clone();
                let waited =
                    tokio::time::timeout(self.config.view_wait, receiver.wait_for(|v| ready(v)))
                        .await;
                match waited {
                    Ok(Ok(view)) => Arc::clone(&view),
                    _ => Arc::clone(&self.view.borrow()),
                }
            }
        };
        let epoch = view.epoch();
        if wanted > epoch {
            return Err(error_reply(Status::Timeout, epoch));
        }
        match volume_route(&view, volume) {
            Some(route) => Ok((view, route)),
            None => Err(error_reply(Status::OutOfRange, epoch)),
        }
    }

    /// FLUSH is addressed to a node (the gateway sends one to every primary it wrote to, naming
    /// the volume): a barrier in every PG of the volume's pool this node leads, answered once
    /// all of them are. A PG's answer other than `Ok` is the answer (`StaleEpoch` first, so the
    /// gateway fetches the newer map).
    async fn flush(&self, header: &Header) -> Reply {
        let (view, route) = match self.view_for(header.chunk.volume, header.epoch).await {
            Ok(found) => found,
            Err(reply) => return reply,
        };
        let epoch = view.epoch();
        let me = self.config.node;
        let led: Vec<PgKey> = view
            .map
            .pool(route.pool)
            .map(|pool| {
                (0u32..)
                    .zip(pool.pgs())
                    .filter(|(_, placement)| placement.primary().is_some_and(|m| m.node == me))
                    .map(|(pg, _)| PgKey {
                        pool: route.pool,
                        pg: PgId(pg),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if led.is_empty() {
            let status = if header.epoch < epoch {
                Status::StaleEpoch
            } else {
                Status::NotPrimary
            };
            return error_reply(status, epoch);
        }
        let flushes = led.into_iter().map(|key| {
            let handle = self.ensure_pg(key, &view);
            async move {
                match handle {
                    Some(handle) => {
                        let request = Request::Flush {
                            epoch: header.epoch,
                        };
                        self.ask(&handle, request).await
                    }
                    None => error_reply(Status::IoError, epoch),
                }
            }
        });
        let replies = futures_util::future::join_all(flushes).await;
        let stale = replies
            .iter()
            .filter(|reply| reply.status == Status::StaleEpoch)
            .max_by_key(|reply| reply.epoch);
        let failed = replies.iter().find(|reply| reply.status != Status::Ok);
        match stale.or(failed) {
            Some(reply) => reply.clone(),
            None => Reply::ok(epoch, Bytes::new()),
        }
    }
}

impl Inner {
    /// Answers a BLOCK_STATUS query from the store of this node's copy of the chunk, if this
    /// node is the chunk's PG primary in its view (refusals as for a READ: `StaleEpoch` for an
    /// older request epoch, `NotPrimary`, `Invalid` for a range outside the chunk).
    async fn block_status(&self, request: BlockStatusRequest) -> BlockStatusReply {
        let refused = |reply: Reply| BlockStatusReply::refused(reply.status, reply.epoch);
        let (view, route) = match self.view_for(request.volume, request.epoch).await {
            Ok(found) => found,
            Err(reply) => return refused(reply),
        };
        let epoch = view.epoch();
        let pg = pg_of(request.volume, request.chunk_index, route.pg_count);
        let key = PgKey {
            pool: route.pool,
            pg,
        };
        if request.epoch < pg_interval(&view, key).unwrap_or(epoch) {
            return BlockStatusReply::refused(Status::StaleEpoch, epoch);
        }
        let primary = view
            .map
            .pool(route.pool)
            .and_then(|pool| pool.pg(pg))
            .and_then(|placement| placement.primary())
            .filter(|member| member.node == self.config.node);
        let Some(store) = primary.and_then(|member| self.stores.get(&member.drive)) else {
            return BlockStatusReply::refused(Status::NotPrimary, epoch);
        };
        let sector = SECTOR_SIZE_BYTES;
        let in_chunk = request
            .offset
            .checked_add(request.len)
            .is_some_and(|end| end <= store.chunk_size_bytes());
        if request.len == 0
            || !in_chunk
            || !request.offset.is_multiple_of(sector)
            || !request.len.is_multiple_of(sector)
        {
            return BlockStatusReply::refused(Status::Invalid, epoch);
        }
        let chunk = ChunkKey::new(request.volume, request.chunk_index);
        match store.block_status(chunk, request.offset, request.len).await {
            Ok(extents) => {
                let mut runs: Vec<AllocationRun> = Vec::with_capacity(extents.len());
                for extent in extents.into_iter().filter(|extent| extent.len > 0) {
                    match runs.last_mut() {
                        Some(last) if last.allocated == extent.allocated => last.len += extent.len,
                        _ => runs.push(AllocationRun {
                            len: extent.len,
                            allocated: extent.allocated,
                        }),
                    }
                }
                BlockStatusReply::Runs(runs)
            }
            Err(error) => {
                tracing::warn!(%chunk, %error, "block status from the store failed");
                BlockStatusReply::refused(store_status(&error), epoch)
            }
        }
    }
}

impl Inner {
    /// Runs a scrub pass every `scrub.interval` (when enabled) and whenever one is requested,
    /// until the service stops.
    async fn scrub_loop(&self) {
        let settings = self.config.scrub;
        let throttle = Arc::new(Throttle::new(settings.bytes_per_sec));
        let mut next = tokio::time::Instant::now() + settings.interval;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.config.stats.scrub().requested() => {}
                () = tokio::time::sleep_until(next), if settings.enabled => {}
            }
            next = tokio::time::Instant::now() + settings.interval;
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.scrub_pass(&throttle) => {}
            }
        }
    }

    /// Sweeps copies no PG needs here any more every `sweep_interval` (see `sweep.rs`).
    async fn sweep_loop(&self) {
        let every = self.config.sweep_interval;
        if every.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.sweep_pass() => {}
            }
        }
    }

    /// One sweep: only under a valid lease (a node cut off from the metadata service keeps
    /// everything), deleted volumes' chunks directly (their ids never come back), strays
    /// through their PG's task or with its creation held back.
    async fn sweep_pass(&self) {
        let leased = self
            .config
            .leases
            .as_ref()
            .is_none_or(|lease| lease.borrow().is_some_and(|until| until > Instant::now()));
        if !leased {
            tracing::debug!("no lease: sweep skipped");
            return;
        }
        let view = Arc::clone(&self.view.borrow());
        let mut listed = BTreeMap::new();
        for (drive, store) in &self.stores {
            match store.list_chunks().await {
                Ok(chunks) => {
                    listed.insert(*drive, chunks.into_iter().map(|c| c.chunk).collect());
                }
                Err(error) => tracing::warn!(%drive, %error, "sweep: listing chunks failed"),
            }
        }
        let plan = sweep::plan(&view, self.config.node, &listed);
        if plan.is_empty() {
            return;
        }
        let mut deleted: u64 = 0;
        for (drive, chunk) in &plan.deleted_volumes {
            let Some(store) = self.stores.get(drive) else {
                continue;
            };
            match store.delete_chunk(*chunk).await {
                Ok(()) => deleted += 1,
                Err(error) => tracing::warn!(%chunk, %error, "sweep: deleting a chunk failed"),
            }
        }
        let mut strays: u64 = 0;
        for ((drive, key), chunks) in plan.strays {
            let Some(store) = self.stores.get(&drive) else {
                continue;
            };
            let handle = self.table().pgs.get(&key).cloned();
            strays += match handle {
                Some(handle) => {
                    let request = Request::Sweep {
                        epoch: view.epoch(),
                        drive,
                        store: Arc::clone(store),
                        chunks,
                    };
                    let reply = self.ask(&handle, request).await;
                    let count = <[u8; 8]>::try_from(reply.payload.as_ref());
                    count.map_or(0, u64::from_le_bytes)
                }
                None => self.sweep_without_task(key, drive, store, &chunks).await,
            };
        }
        self.config.stats.add_swept(deleted + strays);
        tracing::info!(
            deleted_volume_chunks = deleted,
            stray_chunks = strays,
            "sweep dropped copies no PG needs here"
        );
    }

    /// Deletes stray `chunks` of a PG that has no task here, holding back the task's creation
    /// meanwhile: a view that names this node a member again while the deletions run starts
    /// the task only after them (and requests for it wait, see `ensure_pg_after_sweep`).
    async fn sweep_without_task(
        &self,
        key: PgKey,
        drive: DriveId,
        store: &Store,
        chunks: &[ChunkKey],
    ) -> u64 {
        {
            let table = self.table_mut();
            let view = self.view.borrow();
            let me = Member {
                node: self.config.node,
                drive,
            };
            if table.pgs.contains_key(&key) || sweep::lists(&view, key, me) {
                return 0;
            }
            self.sweeping().insert(key);
        }
        let view = Arc::clone(&self.view.borrow());
        let (deleted, failed) = sweep::delete_chunks(store, &view, key, chunks).await;
        if let Some((chunk, error)) = failed {
            tracing::warn!(pg = %key, %chunk, %error, "sweep: deleting a chunk failed");
        }
        self.sweeping().remove(&key);
        self.swept.notify_waiters();
        // A view that named this node meanwhile found the creation held back.
        let view = Arc::clone(&self.view.borrow());
        let _ = self.ensure_pg(key, &view);
        deleted
    }

    /// One pass over every chunk of every PG this node leads.
    async fn scrub_pass(&self, throttle: &Arc<Throttle>) {
        let stats = self.config.stats.scrub();
        let view = Arc::clone(&self.view.borrow());
        let plan = self.scrub_plan(&view).await;
        let total: usize = plan.iter().map(|(_, _, _, chunks)| chunks.len()).sum();
        tracing::info!(pgs = plan.len(), chunks = total, "scrub pass starting");
        stats.pass_started(total as u64);
        for (key, store, members, chunks) in plan {
            let Some(handle) = self.ensure_pg(key, &view) else {
                continue;
            };
            let job = ScrubPg {
                ctx: RecoveryCtx {
                    key,
                    chunk_size_bytes: store.chunk_size_bytes(),
                    store,
                    peers: Arc::clone(&self.peers),
                    view: Arc::clone(&view),
                    throttle: Arc::clone(throttle),
                    stats: Arc::clone(&self.config.stats),
                    call_timeout: self.config.limits.op_timeout,
                    cancel: self.cancel.child_token(),
                },
                epoch: view.epoch(),
                members,
                inbox: handle.inbox.clone(),
                throttle: Arc::clone(throttle),
            };
            for chunk in chunks {
                stats.add(job.chunk(chunk).await);
            }
        }
        stats.pass_finished();
        let figures = stats.snapshot().current;
        tracing::info!(?figures, "scrub pass done");
    }

    /// The PGs this node leads in `view`: each with its store, other members and chunks.
    async fn scrub_plan(&self, view: &ClusterView) -> Vec<ScrubPlan> {
        let me = self.config.node;
        let mut listed: HashMap<DriveId, Vec<crate::store::ChunkInfo>> = HashMap::new();
        let mut plan = Vec::new();
        for (pool, pg) in view.map.pgs_of_node(me).collect::<Vec<_>>() {
            let key = PgKey { pool, pg };
            let Some(placement) = view.map.pool(pool).and_then(|p| p.pg(pg)) else {
                continue;
            };
            let Some(primary) = placement.acting().first().copied() else {
                continue;
            };
            let Some(store) = self.stores.get(&primary.drive) else {
                continue;
            };
            if primary.node != me {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(entry) = listed.entry(primary.drive) {
                match store.list_chunks().await {
                    Ok(chunks) => {
                        entry.insert(chunks);
                    }
                    Err(error) => {
                        tracing::warn!(drive = %primary.drive, %error, "scrub cannot list the drive's chunks");
                        continue;
                    }
                }
            }
            let chunks = listed.get(&primary.drive).map_or(&[][..], Vec::as_slice);
            let labels: Vec<ChunkKey> = pg_labels(view, key, chunks).into_keys().collect();
            let members: Vec<NodeId> = placement
                .acting()
                .iter()
                .map(|m| m.node)
                .filter(|node| *node != me)
                .collect();
            plan.push((key, Arc::clone(store), members, labels));
        }
        plan
    }

    /// A view at `wanted` or newer, waiting at most `view_wait` (the current one otherwise).
    async fn view_at(&self, wanted: Epoch) -> Arc<ClusterView> {
        let mut receiver = self.view.clone();
        let waited = tokio::time::timeout(
            self.config.view_wait,
            receiver.wait_for(|view| view.epoch() >= wanted),
        )
        .await;
        match waited {
            Ok(Ok(view)) => Arc::clone(&view),
            _ => Arc::clone(&self.view.borrow()),
        }
    }

    /// Whether `chunk` belongs to the PG `key` in `view`.
    fn chunk_in_pg(view: &ClusterView, key: PgKey, chunk: ChunkKey) -> bool {
        volume_route(view, chunk.volume).is_some_and(|route| {
            route.pool == key.pool && pg_of(chunk.volume, chunk.index, route.pg_count) == key.pg
        })
    }

    /// Answers a peering/recovery message from `peer`.
    async fn recovery(&self, peer: NodeId, request: RecoveryRequest) -> RecoveryReply {
        let pg = request.pg();
        let key = PgKey {
            pool: pg.pool,
            pg: pg.pg,
        };
        let epoch = request.epoch();
        let view = self.view_at(epoch).await;
        let ours = view.epoch();
        if ours < epoch {
            return RecoveryReply::refused(Status::Timeout, ours);
        }
        let op = match request {
            RecoveryRequest::Read {
                chunk, offset, len, ..
            } => {
                return self
                    .recovery_read(&view, key, epoch, chunk, offset, len)
                    .await;
            }
            request @ (RecoveryRequest::Digest { .. } | RecoveryRequest::Repair { .. }) => {
                return self.scrub_request(&view, key, peer, request).await;
            }
            RecoveryRequest::Labels { .. } => RecoveryOp::Labels,
            RecoveryRequest::Push { chunk, step, .. } => {
                let chunk_size = self
                    .stores
                    .values()
                    .next()
                    .map_or(0, |s| s.chunk_size_bytes());
                if !Self::chunk_in_pg(&view, key, chunk) || !step.is_valid(chunk_size) {
                    return RecoveryReply::refused(Status::Invalid, ours);
                }
                RecoveryOp::Push { chunk, step }
            }
            RecoveryRequest::SyncPoint { head, .. } => RecoveryOp::SyncPoint { head },
        };
        let Some(handle) = self.ensure_pg_after_sweep(key, &view).await else {
            let status = if epoch < pg_interval(&view, key).unwrap_or(ours) {
                Status::StaleEpoch
            } else {
                Status::NotPrimary
            };
            return RecoveryReply::refused(status, ours);
        };
        let reply = self
            .ask(
                &handle,
                Request::Recovery {
                    from: peer,
                    epoch,
                    op,
                },
            )
            .await;
        if reply.status != Status::Ok {
            RecoveryReply::refused(reply.status, reply.epoch)
        } else if reply.payload.is_empty() {
            RecoveryReply::Done
        } else {
            postcard::from_bytes(&reply.payload)
                .unwrap_or_else(|_| RecoveryReply::refused(Status::IoError, reply.epoch))
        }
    }

    /// Answers a scrub's `Digest` or `Repair` from `peer` (checked against `view`, which is
    /// at least the request's epoch).
    async fn scrub_request(
        &self,
        view: &ClusterView,
        key: PgKey,
        peer: NodeId,
        request: RecoveryRequest,
    ) -> RecoveryReply {
        let ours = view.epoch();
        let epoch = request.epoch();
        match request {
            RecoveryRequest::Digest {
                chunk,
                first_block,
                blocks,
                ..
            } => {
                let store = match self.member_store(view, key, epoch) {
                    Ok(store) => store,
                    Err(reply) => return reply,
                };
                if !scrub::digest_range_ok(first_block, blocks, store.chunk_size_bytes())
                    || !Self::chunk_in_pg(view, key, chunk)
                {
                    return RecoveryReply::refused(Status::Invalid, ours);
                }
                scrub::serve_digest(store, chunk, first_block, blocks, ours).await
            }
            RecoveryRequest::Repair {
                chunk,
                label,
                fixes,
                ..
            } => {
                let chunk_size = self
                    .stores
                    .values()
                    .next()
                    .map_or(0, |s| s.chunk_size_bytes());
                if !Self::chunk_in_pg(view, key, chunk) || !scrub::repair_ok(&fixes, chunk_size) {
                    return RecoveryReply::refused(Status::Invalid, ours);
                }
                let Some(handle) = self.ensure_pg_after_sweep(key, view).await else {
                    return RecoveryReply::refused(Status::NotPrimary, ours);
                };
                let job = RepairJob {
                    chunk,
                    label,
                    fixes,
                };
                let request = Request::Repair {
                    from: Some(peer),
                    epoch,
                    job,
                };
                let reply = self.ask(&handle, request).await;
                if reply.status == Status::Ok {
                    RecoveryReply::Done
                } else {
                    RecoveryReply::refused(reply.status, reply.epoch)
                }
            }
            _ => RecoveryReply::refused(Status::Invalid, ours),
        }
    }

    /// This node's store for the PG `key` if the node is an acting member of it in `view`,
    /// which must not be older than `epoch`; the refusal otherwise.
    fn member_store(
        &self,
        view: &ClusterView,
        key: PgKey,
        epoch: Epoch,
    ) -> Result<&Arc<Store>, RecoveryReply> {
        let ours = view.epoch();
        if epoch < pg_interval(view, key).unwrap_or(ours) {
            return Err(RecoveryReply::refused(Status::StaleEpoch, ours));
        }
        let me = self.config.node;
        let member = view
            .map
            .pool(key.pool)
            .and_then(|pool| pool.pg(key.pg))
            .and_then(|placement| placement.acting().iter().find(|m| m.node == me).copied());
        member
            .and_then(|member| self.stores.get(&member.drive))
            .ok_or(RecoveryReply::refused(Status::NotPrimary, ours))
    }

    /// A chunk range read for a peer's peering or recovery: served from this node's copy if
    /// it is a member of the PG in a view at least as new as the request's.
    async fn recovery_read(
        &self,
        view: &ClusterView,
        key: PgKey,
        epoch: Epoch,
        chunk: ChunkKey,
        offset: u32,
        len: u32,
    ) -> RecoveryReply {
        let ours = view.epoch();
        let store = match self.member_store(view, key, epoch) {
            Ok(store) => store,
            Err(reply) => return reply,
        };
        let valid = len > 0
            && len <= RECOVERY_PIECE_BYTES_MAX
            && offset.is_multiple_of(SECTOR_SIZE_BYTES)
            && len.is_multiple_of(SECTOR_SIZE_BYTES)
            && offset
                .checked_add(len)
                .is_some_and(|end| end <= store.chunk_size_bytes());
        if !valid || !Self::chunk_in_pg(view, key, chunk) {
            return RecoveryReply::refused(Status::Invalid, ours);
        }
        let result: Result<RecoveryReply, StoreError> = async {
            let mut runs: Vec<AllocationRun> = Vec::new();
            let mut data = Vec::new();
            for extent in store.block_status(chunk, offset, len).await? {
                if extent.len == 0 {
                    continue;
                }
                if extent.allocated {
                    data.extend_from_slice(&store.read(chunk, extent.offset, extent.len).await?);
                }
                match runs.last_mut() {
                    Some(last) if last.allocated == extent.allocated => last.len += extent.len,
                    _ => runs.push(AllocationRun {
                        len: extent.len,
                        allocated: extent.allocated,
                    }),
                }
            }
            Ok(RecoveryReply::Data { runs, data })
        }
        .await;
        result.unwrap_or_else(|error| {
            tracing::warn!(%chunk, %error, "recovery read from the store failed");
            RecoveryReply::refused(store_status(&error), ours)
        })
    }
}

/// The PG the frame names, checked against the chunk's placement; a mismatch is answered
/// `Invalid` with our `epoch`.
fn check_pg(header: &Header, route: VolumeRoute, epoch: Epoch) -> Result<PgKey, Reply> {
    let key = PgKey {
        pool: route.pool,
        pg: header.pg,
    };
    if pg_of(header.chunk.volume, header.chunk.index, route.pg_count) == header.pg {
        Ok(key)
    } else {
        Err(error_reply(Status::Invalid, epoch))
    }
}

/// The request a per-PG frame carries (FLUSH is per node, see `Inner::flush`); `None` for
/// opcodes the replication layer does not serve.
fn decode(peer: NodeId, frame: Frame) -> Option<Request> {
    let header = frame.header;
    let range = ChunkRange {
        chunk: header.chunk,
        offset: header.offset_bytes,
        len: header.length_bytes,
    };
    let mutation = |kind: OpKind| match kind {
        // The decoder checked the payload is exactly `length` bytes; it is a slice of the
        // receive buffer, passed on without a copy.
        OpKind::Write => Mutation::Write(frame.payload.clone()),
        OpKind::Trim => Mutation::Trim,
        OpKind::Zeroes => Mutation::Zeroes,
    };
    let epoch = header.epoch;
    if let Some(kind) = OpKind::from_client_opcode(header.opcode) {
        return Some(Request::Write {
            epoch,
            range,
            mutation: mutation(kind),
        });
    }
    if let Some(kind) = OpKind::from_replicate_opcode(header.opcode) {
        return Some(Request::Replicate {
            from: peer,
            epoch,
            version: header.pg_version,
            range,
            mutation: mutation(kind),
        });
    }
    match header.opcode {
        Opcode::Read => Some(Request::Read { epoch, range }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a message of the PG's current interval meets its engine as current whatever map
    /// it was stamped with; an older one stays stale; one from a map newer than the view keeps
    /// its epoch (the PG may have changed in between).
    #[test]
    fn messages_count_by_the_pg_interval() {
        let (since, view) = (Some(Epoch(5)), Epoch(9));
        assert_eq!(in_interval(Epoch(5), since, view), Epoch(5));
        assert_eq!(in_interval(Epoch(7), since, view), Epoch(5));
        assert_eq!(in_interval(Epoch(9), since, view), Epoch(5));
        assert_eq!(in_interval(Epoch(4), since, view), Epoch(4), "stale");
        assert_eq!(
            in_interval(Epoch(10), since, view),
            Epoch(10),
            "from a newer map"
        );
        assert_eq!(in_interval(Epoch(7), None, view), Epoch(7), "no such PG");
    }
}
