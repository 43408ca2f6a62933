//! Node, PG and cluster views, built from a node's local copy of the metadata state.

use super::unix_ms_to_rfc3339;
use crate::ids::{ClusterId, NodeId};
use crate::meta::{CommandKind, MetaState, NodeRecord, NodeRole};
use crate::placement::{Member, NodeState, PgHealth, Pool};
use crate::size::Size;
use serde::{Deserialize, Serialize};

/// A node's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NodeStatus {
    /// Heartbeating; serves its replicas.
    Up,
    /// Silent for `down_after`; left out of acting sets until it returns.
    Down,
    /// Gone (or drained and stopped): its replicas were reassigned.
    Out,
    /// Being drained: its replicas are rebuilt elsewhere while it keeps serving them.
    Draining,
}

impl From<NodeState> for NodeStatus {
    fn from(state: NodeState) -> Self {
        match state {
            NodeState::Up => NodeStatus::Up,
            NodeState::Down => NodeStatus::Down,
            NodeState::Out => NodeStatus::Out,
            NodeState::Draining => NodeStatus::Draining,
        }
    }
}

/// How a node is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeAddressesView {
    /// Peer address, `host:port`.
    pub peer: String,
    /// HTTP API address, `host:port`.
    pub api: String,
    /// NBD address, `host:port`, if it serves NBD over TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<String>,
}

/// A drive of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriveView {
    /// The drive's id (from its superblock).
    pub id: uuid::Uuid,
    /// Usable capacity in bytes.
    pub capacity_bytes: u64,
}

/// A node, as `GET /v1/nodes` and `GET /v1/nodes/{id}` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    /// The node's id.
    pub id: u64,
    /// How to reach it.
    pub addresses: NodeAddressesView,
    /// Failure domain, if configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Raft voter or follower.
    pub role: NodeRole,
    /// Up, down or out.
    pub state: NodeStatus,
    /// Marked out by an operator (drained): stays out until marked up.
    pub drained: bool,
    /// When the state last changed, RFC 3339.
    #[schema(format = DateTime)]
    pub state_since: String,
    /// Milliseconds since the last heartbeat the leader recorded (by this node's clock).
    pub last_heartbeat_age_ms: u64,
    /// Its drives.
    pub drives: Vec<DriveView>,
}

impl NodeView {
    /// The view of `record` at `now_unix_ms` (the answering node's clock, for the age).
    pub fn new(record: &NodeRecord, now_unix_ms: u64) -> Self {
        Self {
            id: record.id.0,
            addresses: NodeAddressesView {
                peer: record.addresses.peer.clone(),
                api: record.addresses.api.clone(),
                nbd: record.addresses.nbd.clone(),
            },
            zone: record.zone.clone(),
            role: record.role,
            state: record.state.into(),
            drained: record.out_by_operator,
            state_since: unix_ms_to_rfc3339(record.state_since_unix_ms),
            last_heartbeat_age_ms: now_unix_ms.saturating_sub(record.last_heartbeat_unix_ms),
            drives: record
                .drives
                .iter()
                .map(|drive| DriveView {
                    id: drive.id.0,
                    capacity_bytes: drive.capacity_bytes,
                })
                .collect(),
        }
    }
}

/// `GET /v1/nodes` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeList {
    /// Every registered node, by id.
    pub nodes: Vec<NodeView>,
}

/// Whether a PG can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PgStatus {
    /// All replicas present.
    Active,
    /// At least `min_size` replicas: writes continue with reduced redundancy.
    Degraded,
    /// Fewer than `min_size`: writes block.
    Inactive,
}

/// One member of an acting set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PgMemberView {
    /// The node.
    pub node: u64,
    /// The drive on it.
    pub drive: uuid::Uuid,
}

impl From<&Member> for PgMemberView {
    fn from(member: &Member) -> Self {
        Self {
            node: member.node.0,
            drive: member.drive.0,
        }
    }
}

/// A placement group, as `GET /v1/pgs` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PgView {
    /// The pool (= its replica count).
    pub pool: u32,
    /// The PG's index in the pool.
    pub id: u32,
    /// Ordered acting set; the first member is the primary.
    pub acting: Vec<PgMemberView>,
    /// Members that own the PG, down ones included.
    pub up: Vec<PgMemberView>,
    /// Active, degraded or inactive.
    pub state: PgStatus,
    /// Map epoch in which the acting set last changed.
    pub since_epoch: u64,
}

impl PgView {
    /// Views of every PG of `pool`.
    pub fn of_pool(pool: &Pool) -> Vec<PgView> {
        (0u32..)
            .zip(pool.pgs())
            .map(|(index, pg)| PgView {
                pool: pool.spec().id.0,
                id: index,
                acting: pg.acting().iter().map(PgMemberView::from).collect(),
                up: pg.up().iter().map(PgMemberView::from).collect(),
                state: pg_status(pool, index),
                since_epoch: pg.since().0,
            })
            .collect()
    }
}

fn pg_status(pool: &Pool, index: u32) -> PgStatus {
    match pool.health(crate::ids::PgId(index)) {
        Some(PgHealth::Active) => PgStatus::Active,
        Some(PgHealth::Degraded) => PgStatus::Degraded,
        _ => PgStatus::Inactive,
    }
}

/// `GET /v1/pgs` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PgList {
    /// The map epoch these acting sets belong to.
    pub epoch: u64,
    /// Every PG of every pool.
    pub pgs: Vec<PgView>,
}

impl PgList {
    /// Every PG of the state's map.
    pub fn new(state: &MetaState) -> Self {
        Self {
            epoch: state.epoch().0,
            pgs: state
                .map()
                .pools()
                .iter()
                .flat_map(PgView::of_pool)
                .collect(),
        }
    }
}

/// Overall health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Every node up, every PG active.
    Ok,
    /// Serving, with reduced redundancy (a node down or out, or a PG degraded).
    Degraded,
    /// Some data cannot be written (a PG inactive), no leader, or no cluster yet.
    Unavailable,
}

/// Node counts by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeCounts {
    /// Up.
    pub up: u32,
    /// Down.
    pub down: u32,
    /// Out.
    pub out: u32,
    /// Draining.
    #[serde(default)]
    pub draining: u32,
}

/// PG counts by status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PgCounts {
    /// Active.
    pub active: u32,
    /// Degraded.
    pub degraded: u32,
    /// Inactive.
    pub inactive: u32,
}

/// `GET /v1/cluster` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// The cluster's id; absent before `basalt cluster init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<uuid::Uuid>,
    /// The Raft leader as this node knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    /// The placement map's epoch.
    pub epoch: u64,
    /// Nodes by state.
    pub nodes: NodeCounts,
    /// PGs by status.
    pub pgs: PgCounts,
    /// Live volumes.
    pub volumes: u32,
    /// Overall health.
    pub health: Health,
    /// The answering node's Raft view (filled in by the daemon; absent in a bare state view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<RaftView>,
}

/// A node's role in the metadata service's Raft group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RaftRole {
    /// Accepts writes.
    Leader,
    /// A voter following the leader.
    Follower,
    /// A voter running an election.
    Candidate,
    /// A non-voting member, or a node not yet in a cluster.
    Learner,
    /// Stopped.
    Shutdown,
}

/// The answering node's view of the Raft group (`GET /v1/cluster`), for diagnosing a node that
/// lags or cannot find the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RaftView {
    /// The answering node.
    pub node_id: u64,
    /// Its role.
    pub role: RaftRole,
    /// Its current term.
    pub term: u64,
    /// Last log index it knows committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_index: Option<u64>,
    /// Last log index it applied to its copy of the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
}

impl ClusterStatus {
    /// The status from this node's copy of the state and its view of the leader.
    pub fn new(state: &MetaState, leader: Option<NodeId>) -> Self {
        let mut nodes = NodeCounts::default();
        for record in state.nodes().values() {
            let count = match record.state {
                NodeState::Up => &mut nodes.up,
                NodeState::Down => &mut nodes.down,
                NodeState::Out => &mut nodes.out,
                NodeState::Draining => &mut nodes.draining,
            };
            *count = count.saturating_add(1);
        }
        let mut pgs = PgCounts::default();
        for view in state.map().pools().iter().flat_map(PgView::of_pool) {
            let count = match view.state {
                PgStatus::Active => &mut pgs.active,
                PgStatus::Degraded => &mut pgs.degraded,
                PgStatus::Inactive => &mut pgs.inactive,
            };
            *count = count.saturating_add(1);
        }
        let health = if state.cluster().is_none() || leader.is_none() || pgs.inactive > 0 {
            Health::Unavailable
        } else if nodes.down > 0 || nodes.out > 0 || pgs.degraded > 0 {
            Health::Degraded
        } else {
            Health::Ok
        };
        Self {
            cluster_id: state.cluster_id().map(|id| id.0),
            leader: leader.map(|node| node.0),
            epoch: state.epoch().0,
            nodes,
            pgs,
            volumes: u32::try_from(state.volumes().len()).unwrap_or(u32::MAX),
            health,
            raft: None,
        }
    }
}

/// `POST /v1/cluster/init` body (`basalt cluster init`); every field has a default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterInitRequest {
    /// The cluster's id; a random one when absent.
    #[serde(default)]
    pub cluster_id: Option<uuid::Uuid>,
    /// PGs per pool, a power of two (default 1024).
    #[serde(default)]
    pub pg_count: Option<u32>,
    /// Default replica count, 1..=5 (default 3).
    #[serde(default)]
    pub replicas: Option<u8>,
    /// Fewest acting members a PG writes with (default 2, capped at `replicas`).
    #[serde(default)]
    pub min_size: Option<u8>,
    /// Chunk size, a power of two in 4 KiB..=64 MiB (default 4 MiB).
    #[serde(default)]
    pub chunk_size: Option<Size>,
}

impl ClusterInitRequest {
    /// The `InitCluster` command; `random_id` is used when the request names no id (the pure
    /// library has no randomness, so the handler supplies it).
    pub fn to_command(&self, random_id: uuid::Uuid) -> CommandKind {
        use crate::config::{MIN_SIZE_DEFAULT, PG_COUNT_DEFAULT, REPLICAS_DEFAULT};
        let replicas = self.replicas.unwrap_or(REPLICAS_DEFAULT);
        let chunk = self
            .chunk_size
            .map_or(crate::units::CHUNK_SIZE_BYTES_DEFAULT, |size| {
                u32::try_from(size.bytes()).unwrap_or(u32::MAX)
            });
        CommandKind::InitCluster {
            cluster_id: ClusterId(self.cluster_id.unwrap_or(random_id)),
            chunk_size_bytes: chunk,
            pg_count: self.pg_count.unwrap_or(PG_COUNT_DEFAULT),
            default_replicas: replicas,
            min_size: self.min_size.unwrap_or(MIN_SIZE_DEFAULT.min(replicas)),
        }
    }
}
