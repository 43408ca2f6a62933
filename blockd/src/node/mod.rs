//! A running storage node: the composition of drives, peer transport, metadata service and
//! (as they land) the data path and API, started from a [`NodeConfig`].
//!
//! Start-up order: identity (cluster id, secret) → drives → peer pool → Raft node → peer
//! listener (Raft, proposal forwarding, joins, heartbeats) → membership task (bootstrap or
//! join, register, heartbeat, failure detection on the leader) → view publisher.

mod api;
pub mod control;
pub mod drives;
pub mod exports;
pub mod identity;
mod membership;
pub mod pg_stats;
pub mod raft;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use basalt::config::NodeConfig;
use basalt::ids::{ClusterId, DriveId, Epoch, NodeId, PgId};
use basalt::meta::{
    Command, CommandKind, CommandResult, FailureDetector, MetaState, NodeRole, SETTLE_BATCH_MAX,
};
use basalt::placement::PoolId;
use basalt::wire::{ControlKind, Features, HandshakeConfig};
use tokio_util::sync::CancellationToken;

pub use crate::api::ProposeFailure;
use crate::frontends::nbd::{NbdConfig, NbdServer};
use crate::gateway::{Gateway, GatewayConfig};
use crate::meta::{MetaNode, MetaNodeConfig, ProposeError};
use crate::metrics::Metrics;
use crate::peer::{PeerConfig, PeerServer, Peers, Router};
use crate::replication::{MetaReport, ReplicationConfig, ReplicationService};
use crate::store::Store;
use crate::view::{ClusterView, MapWatch, map_channel};
use control::{
    HeartbeatHandler, JoinHandler, JoinReply, JoinRequest, META_CONTROL_VERSION, ProposeHandler,
    ProposeReply, ProposeRequest, RaftHandler,
};

/// How long a forwarded proposal may take end to end before the caller gets an error.
pub const PROPOSE_BOUND: Duration = Duration::from_secs(10);

/// State shared by the node's tasks and peer handlers.
pub struct NodeShared {
    /// This node.
    pub node_id: NodeId,
    /// The cluster this node belongs to.
    pub cluster_id: ClusterId,
    /// The validated configuration.
    pub config: NodeConfig,
    /// The metadata service's Raft node.
    pub meta: MetaNode<MetaState>,
    /// Authenticated connections to other nodes for the data path (replication, recovery,
    /// gateway pieces, status fan-outs).
    pub peers: Arc<Peers>,
    /// Separate connections for the metadata service (Raft RPCs, forwarded proposals). A peer
    /// connection reads no further while its per-connection request bound is full; data-path
    /// requests that wait for a newer map (peering after a partition heals) can fill it, and
    /// the Raft traffic that would bring that map must not queue behind them.
    pub meta_peers: Arc<Peers>,
    /// Limits and handshake identity for peer connections.
    pub peer_config: PeerConfig,
    /// This node's drives, by drive id.
    pub stores: BTreeMap<DriveId, Arc<Store>>,
    /// The leader's failure detector (None while not leader).
    detector: Mutex<Option<FailureDetector>>,
    /// The data path's view of the cluster.
    maps: MapWatch,
    /// This node's read lease (its expiry), extended by heartbeats the leader answers.
    lease: tokio::sync::watch::Sender<Option<std::time::Instant>>,
    /// PG states and recovery progress the replication service reports (metrics, API).
    pub replication_stats: Arc<crate::replication::ReplicationStats>,
}

/// A started node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    shared: Arc<NodeShared>,
    server: PeerServer,
    nbd: NbdServer<exports::ClusterExports>,
    nbd_addr: SocketAddr,
    replication: Arc<ReplicationService>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Milliseconds since the Unix epoch by the local clock (stamped into commands).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Node {
    /// Starts a node from its configuration: opens (or creates) its drives, starts the
    /// metadata service and the peer listener, and bootstraps or joins the cluster in the
    /// background.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        let secret = identity::load_secret(&config)?;
        let cluster_id = identity::cluster_id(&config, &secret);
        let node_id = config.node_id;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("data_dir {}", config.data_dir.display()))?;

        let (stores, metrics) = drives::open_all(&config, cluster_id).await?;

        let handshake = HandshakeConfig {
            cluster: cluster_id,
            node: node_id,
            secret: secret.secret.clone(),
            features: Features::default(),
        };
        let peer_config = PeerConfig::new(handshake);
        let (peers, meta_peers) = peer_pools(&peer_config)?;

        let meta = start_meta(&config, cluster_id, &meta_peers).await?;

        let (publisher, maps) = map_channel(view::build(&meta.read_state()));
        let shared = Arc::new(NodeShared {
            node_id,
            cluster_id,
            config,
            meta,
            peers,
            meta_peers,
            peer_config: peer_config.clone(),
            stores,
            detector: Mutex::new(None),
            maps,
            lease: tokio::sync::watch::Sender::new(None),
            replication_stats: Arc::default(),
        });

        let (report_tx, report_rx) = tokio::sync::mpsc::channel(META_REPORTS_QUEUED_MAX);
        let replication = start_replication(&shared, report_tx).await?;
        let router = Arc::new(build_router(&shared, &replication));
        let listen = shared.config.peer.listen;
        let server = PeerServer::bind(listen, peer_config, Arc::clone(&router))
            .await
            .with_context(|| format!("peer.listen {listen}"))?;
        tracing::info!(
            node = %node_id, cluster = %cluster_id, peer = %server.local_addr(),
            "node started"
        );

        let (nbd, nbd_addr) = start_nbd(&shared, router, metrics.as_deref()).await?;

        let cancel = CancellationToken::new();
        let api_task = api::start(&shared, metrics.as_deref(), cancel.clone()).await?;
        let tasks = vec![
            api_task,
            tokio::spawn(membership::run(Arc::clone(&shared), cancel.clone())),
            tokio::spawn(view::publish(
                Arc::clone(&shared),
                publisher,
                cancel.clone(),
            )),
            tokio::spawn(forward_meta_reports(
                Arc::clone(&shared),
                report_rx,
                cancel.clone(),
            )),
        ];
        Ok(Node {
            shared,
            server,
            nbd,
            nbd_addr,
            replication,
            cancel,
            tasks,
        })
    }

    /// The shared state (metadata node, peers, stores) for the API and data path.
    pub fn shared(&self) -> &Arc<NodeShared> {
        &self.shared
    }

    /// The peer listener's bound address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The NBD listener's bound address.
    pub fn nbd_addr(&self) -> SocketAddr {
        self.nbd_addr
    }

    /// Stops the NBD exports (finishing in-flight requests), background tasks, the peer
    /// listener, the Raft node and the drives.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.nbd.shutdown().await;
        self.cancel.cancel();
        self.replication.shutdown().await;
        for task in self.tasks {
            let _ = task.await;
        }
        self.server.shutdown().await;
        if let Err(e) = self.shared.meta.shutdown().await {
            tracing::warn!(error = %e, "metadata service shutdown");
        }
        for store in self.shared.stores.values() {
            if let Err(e) = store.checkpoint().await {
                tracing::warn!(error = %e, "drive checkpoint at shutdown");
            }
        }
        Ok(())
    }
}

/// The data path's and the metadata service's peer pools (see [`NodeShared::meta_peers`]),
/// counting into one set of connection metrics.
fn peer_pools(config: &PeerConfig) -> anyhow::Result<(Arc<Peers>, Arc<Peers>)> {
    let peers = Arc::new(Peers::new(config.clone()).context("peer pool")?);
    let meta_peers = Arc::new(
        Peers::with_stats(config.clone(), Arc::clone(peers.stats())).context("meta peer pool")?,
    );
    Ok((peers, meta_peers))
}

/// Starts this node's Raft instance of the metadata service, its RPCs carried by `peers`.
async fn start_meta(
    config: &NodeConfig,
    cluster_id: ClusterId,
    peers: &Arc<Peers>,
) -> anyhow::Result<MetaNode<MetaState>> {
    let mut meta_config = MetaNodeConfig::new(config.node_id.0, config.data_dir.join("meta"));
    meta_config.cluster_name = cluster_id.to_string();
    let transport = Arc::new(raft::PeerRaftTransport::new(Arc::clone(peers)));
    MetaNode::start(meta_config, transport, MetaState::new())
        .await
        .context("metadata service")
}

/// Starts the replication service with the node's stores, peers, view and read lease.
async fn start_replication(
    shared: &Arc<NodeShared>,
    meta_reports: tokio::sync::mpsc::Sender<MetaReport>,
) -> anyhow::Result<Arc<ReplicationService>> {
    let mut config = ReplicationConfig::new(shared.node_id);
    config.leases = Some(shared.lease.subscribe());
    config.stats = Arc::clone(&shared.replication_stats);
    config.limits.lease_wait = lease_duration(&shared.config);
    config.recovery_bytes_per_sec = shared.config.recovery.bytes_per_sec.bytes();
    config.sweep_interval = shared.config.recovery.sweep_interval;
    config.scrub = crate::replication::ScrubSettings {
        enabled: shared.config.scrub.enabled,
        bytes_per_sec: shared.config.scrub.bytes_per_sec.bytes(),
        interval: shared.config.scrub.interval,
    };
    ReplicationService::start(
        config,
        shared.stores.clone(),
        Arc::clone(&shared.peers),
        shared.maps(),
        meta_reports,
    )
    .await
    .context("replication service")
}

/// How long a heartbeat's answer lets a node serve reads: two thirds of `meta.down_after`, so
/// a node cut off from the leader stops serving reads before the leader can mark it down and
/// hand its PGs to another primary (which also waits this long before serving).
fn lease_duration(config: &NodeConfig) -> std::time::Duration {
    config.meta.down_after * 2 / 3
}

/// Reports the replication engines may queue before the oldest are dropped.
const META_REPORTS_QUEUED_MAX: usize = 256;

/// How long settle reports are gathered into one `SettlePgs` proposal: a node joining or
/// draining makes hundreds of PGs ready within moments, and one map change per PG would make
/// every node re-process the map that many times.
const SETTLE_GATHER: std::time::Duration = std::time::Duration::from_millis(100);

/// Acts on the replication engines' reports. PGs ready to settle are gathered for
/// [`SETTLE_GATHER`] and proposed as one `SettlePgs` (the engines repeat their reports while
/// they hold, so a lost proposal only costs time). Failure reports are logged: marking nodes
/// down is left to the leader's heartbeat-based failure detector, since a replica that times
/// out on one primary may be healthy (the reporter may be the one cut off), and dropping a
/// healthy member costs a recovery, so one report is not evidence enough.
async fn forward_meta_reports(
    shared: Arc<NodeShared>,
    mut reports: tokio::sync::mpsc::Receiver<MetaReport>,
    cancel: CancellationToken,
) {
    let mut settles: Vec<(PoolId, PgId, Epoch)> = Vec::new();
    let mut propose_at: Option<tokio::time::Instant> = None;
    loop {
        let gathered = async move {
            match propose_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = gathered => {
                propose_at = None;
                settles.sort_unstable();
                settles.dedup();
                let state = shared.meta.read_state();
                settles.retain(|(pool, pg, since)| state.settle_would_change(*pool, *pg, *since));
                for batch in settles.chunks(SETTLE_BATCH_MAX) {
                    propose_settles(&shared, batch.to_vec()).await;
                }
                settles.clear();
            }
            report = reports.recv() => match report {
                Some(MetaReport::Settle { pg, since }) => {
                    settles.push((pg.pool, pg.pg, since));
                    propose_at.get_or_insert_with(|| tokio::time::Instant::now() + SETTLE_GATHER);
                }
                Some(report) => tracing::warn!(?report, "replication failure report"),
                None => return,
            },
        }
    }
}

async fn propose_settles(shared: &NodeShared, pgs: Vec<(PoolId, PgId, Epoch)>) {
    let count = pgs.len();
    match shared.propose(CommandKind::SettlePgs { pgs }).await {
        Ok(Ok(outcome)) => tracing::info!(reported = count, ?outcome, "settle proposed"),
        Ok(Err(e)) => tracing::warn!(reported = count, error = %e, "settle refused"),
        Err(e) => tracing::warn!(reported = count, error = %e, "settle not proposed"),
    }
}

/// The peer listener's handlers: replication I/O and block status, Raft, proposal
/// forwarding, joins, heartbeats and PG reports.
fn build_router(shared: &Arc<NodeShared>, replication: &Arc<ReplicationService>) -> Router {
    replication
        .routes(Router::new())
        .with_control(ControlKind::RAFT, Arc::new(RaftHandler(Arc::clone(shared))))
        .with_control(
            ControlKind::META_PROPOSE,
            Arc::new(ProposeHandler(Arc::clone(shared))),
        )
        .with_control(
            ControlKind::META_JOIN,
            Arc::new(JoinHandler(Arc::clone(shared))),
        )
        .with_control(
            ControlKind::HEARTBEAT,
            Arc::new(HeartbeatHandler(Arc::clone(shared))),
        )
        .with_control(
            ControlKind::PG_STATS,
            Arc::new(pg_stats::PgStatsHandler(Arc::clone(shared))),
        )
}

/// Starts the NBD exports (TCP, and the unix socket if configured) over a gateway, counting
/// into `metrics` if they are on.
async fn start_nbd(
    shared: &Arc<NodeShared>,
    local: Arc<Router>,
    metrics: Option<&Metrics>,
) -> anyhow::Result<(NbdServer<exports::ClusterExports>, SocketAddr)> {
    let gateway = Gateway::with_local(
        Arc::clone(&shared.peers),
        shared.maps(),
        GatewayConfig::default(),
        Some((shared.node_id, local)),
    )
    .context("gateway")?;
    let volume_metrics = metrics.map(|m| m.volumes.clone());
    let exports = Arc::new(exports::ClusterExports::new(
        gateway,
        shared.maps(),
        volume_metrics,
    ));
    let nbd_metrics = metrics.map(|m| m.nbd.clone());
    let nbd = NbdServer::with_metrics(exports, NbdConfig::default(), nbd_metrics);
    let nbd_listen = shared.config.nbd.listen;
    let nbd_addr = nbd
        .listen_tcp(nbd_listen)
        .await
        .with_context(|| format!("nbd.listen {nbd_listen}"))?;
    if let Some(path) = &shared.config.nbd.socket {
        nbd.listen_unix(path)
            .with_context(|| format!("nbd.socket {}", path.display()))?;
    }
    tracing::info!(nbd = %nbd_addr, "NBD exports listening");
    Ok((nbd, nbd_addr))
}

impl NodeShared {
    /// The data path's current view of the cluster.
    pub fn maps(&self) -> MapWatch {
        self.maps.clone()
    }

    /// Proposes a metadata command from anywhere in the cluster: locally if this node leads,
    /// otherwise forwarded to the leader over the peer connection. Bounded by
    /// [`PROPOSE_BOUND`].
    pub async fn propose(&self, kind: CommandKind) -> Result<CommandResult, ProposeFailure> {
        let command = Command::new(now_unix_ms(), kind);
        let deadline = tokio::time::Instant::now() + PROPOSE_BOUND;
        let mut last = String::from("no leader known");
        loop {
            let reply = match self.meta.leader() {
                Some((leader, _)) if leader == self.node_id.0 => self.propose_local(&command).await,
                Some((leader, addr)) => match self.forward_propose(leader, &addr, &command).await {
                    Ok(reply) => reply,
                    Err(e) => ProposeReply::NotLeader {
                        leader: Some((leader, e)),
                    },
                },
                None => ProposeReply::NotLeader { leader: None },
            };
            match reply {
                ProposeReply::Applied {
                    result,
                    applied_index,
                } => {
                    if let Some(index) = applied_index
                        && let Err(e) = self.meta.wait_applied(index, PROPOSE_BOUND).await
                    {
                        tracing::warn!(index, error = %e, "local copy did not catch up with the leader");
                    }
                    return Ok(result);
                }
                ProposeReply::NoQuorum => {
                    return Err(ProposeFailure::NoQuorum(
                        "the leader cannot reach a majority of voters".into(),
                    ));
                }
                ProposeReply::Unknown(e) => return Err(ProposeFailure::OutcomeUnknown(e)),
                ProposeReply::Failed(e) => return Err(ProposeFailure::Internal(e)),
                ProposeReply::NotLeader { leader } => {
                    if let Some((id, detail)) = leader {
                        last = format!("leader {id}: {detail}");
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProposeFailure::NoLeader(last));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn forward_propose(
        &self,
        leader: u64,
        addr: &str,
        command: &Command,
    ) -> Result<ProposeReply, String> {
        let node = NodeId(leader);
        let addr: SocketAddr = addr.parse().map_err(|e| format!("bad address: {e}"))?;
        if self.meta_peers.address(node) != Some(addr) {
            self.meta_peers.set_address(node, addr);
        }
        let body = control::encode(&ProposeRequest {
            command: command.clone(),
        });
        let reply = self
            .meta_peers
            .call_control(node, ControlKind::META_PROPOSE, META_CONTROL_VERSION, body)
            .await
            .map_err(|e| e.to_string())?;
        postcard::from_bytes(&reply).map_err(|e| format!("bad reply: {e}"))
    }

    /// Proposes on this node's Raft instance and classifies the outcome for a forwarder.
    pub(crate) async fn propose_local(&self, command: &Command) -> ProposeReply {
        match self.meta.propose(command).await {
            // The index comes from the state machine's own published state, which is updated
            // before the proposal's answer is sent; Raft's metrics (`status()`) may still show
            // an older index, and a forwarder waiting for that would not see its own write.
            Ok(result) => ProposeReply::Applied {
                result,
                applied_index: self.meta.subscribe().borrow().index,
            },
            Err(ProposeError::ForwardToLeader {
                leader_id,
                leader_addr,
            }) => ProposeReply::NotLeader {
                leader: Some((leader_id, leader_addr)),
            },
            Err(ProposeError::NoLeader) => ProposeReply::NotLeader { leader: None },
            Err(ProposeError::NoQuorum) => ProposeReply::NoQuorum,
            Err(e @ (ProposeError::Timeout(_) | ProposeError::OutcomeUnknown)) => {
                ProposeReply::Unknown(e.to_string())
            }
            Err(e) => ProposeReply::Failed(e.to_string()),
        }
    }

    /// Adds a joining node to the Raft membership (leader only).
    pub(crate) async fn join_local(&self, request: &JoinRequest) -> JoinReply {
        if !self.meta.is_leader() {
            return JoinReply::NotLeader {
                leader: self.meta.leader(),
            };
        }
        if self.meta.read_state().is_removed(request.node) {
            return JoinReply::Failed(format!(
                "{} was removed from the cluster; a node coming back needs a new id and wiped drives",
                request.node
            ));
        }
        let id = request.node.0;
        let status = self.meta.status();
        let is_voter = status.voters.contains_key(&id);
        let is_learner = status.learners.contains_key(&id);
        let wants_voter = request.role == NodeRole::Voter;
        if !is_voter
            && !is_learner
            && let Err(e) = self
                .meta
                .add_learner(id, request.peer_addr.clone(), wants_voter)
                .await
        {
            return JoinReply::Failed(format!("add learner: {e}"));
        }
        if wants_voter && !is_voter {
            let mut voters: BTreeSet<u64> = self.meta.status().voters.keys().copied().collect();
            voters.insert(id);
            if let Err(e) = self.meta.change_membership(voters).await {
                return JoinReply::Failed(format!("change membership: {e}"));
            }
        }
        tracing::info!(node = %request.node, role = ?request.role, "node joined the metadata service");
        JoinReply::Joined
    }

    /// Records a heartbeat in the leader's failure detector (ignored when not leader).
    /// A heartbeat sent at `sent` was answered by the leader at map `epoch`: extend the read
    /// lease to `sent` + the lease duration if the node is up and its own map is that new.
    pub(crate) fn extend_lease(
        &self,
        sent: std::time::Instant,
        epoch: basalt::ids::Epoch,
        up: bool,
    ) {
        if !up || self.maps.current().epoch() < epoch {
            return;
        }
        let until = sent + lease_duration(&self.config);
        self.lease.send_if_modified(|lease| {
            let longer = lease.is_none_or(|current| current < until);
            if longer {
                *lease = Some(until);
            }
            longer
        });
    }

    pub(crate) fn record_heartbeat(&self, node: NodeId) {
        if let Ok(mut detector) = self.detector.lock()
            && let Some(detector) = detector.as_mut()
        {
            detector.handle_heartbeat(node, now_unix_ms());
        }
    }
}

/// The published view as of now (for tests and the API).
pub fn current_view(shared: &NodeShared) -> Arc<ClusterView> {
    shared.maps.current()
}
