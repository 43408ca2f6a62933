//! Node, PG and cluster views, built from a node's local copy of the metadata state.

use super::PgListQuery;
use super::pg_status::{ClusterReports, pg_state_of};
use super::unix_ms_to_rfc3339;
use crate::ids::{ClusterId, NodeId};
use crate::meta::{CommandKind, MetaState, NodeRecord, NodeRole};
use crate::placement::{Member, NodeState, Pool};
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

/// Whether a PG can serve, and whether it is catching up (see [`super::classify_pg`]).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PgStatus {
    /// All replicas present and in sync.
    Active,
    /// At least `min_size` replicas: writes continue with reduced redundancy.
    Degraded,
    /// Fewer than `min_size`, or no primary: writes block.
    Inactive,
    /// A new primary is agreeing with the members on the PG's history; I/O waits.
    Peering,
    /// The primary is copying writes a returning member missed.
    Recovering,
    /// The primary is filling a member new to the PG.
    Backfilling,
}

impl PgStatus {
    /// Every state, in the order counts and tables show them.
    pub const ALL: [PgStatus; 6] = [
        PgStatus::Active,
        PgStatus::Degraded,
        PgStatus::Peering,
        PgStatus::Recovering,
        PgStatus::Backfilling,
        PgStatus::Inactive,
    ];

    /// The state's name, as the API spells it.
    pub fn label(self) -> &'static str {
        match self {
            PgStatus::Active => "active",
            PgStatus::Degraded => "degraded",
            PgStatus::Inactive => "inactive",
            PgStatus::Peering => "peering",
            PgStatus::Recovering => "recovering",
            PgStatus::Backfilling => "backfilling",
        }
    }
}

impl std::str::FromStr for PgStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        PgStatus::ALL
            .into_iter()
            .find(|state| state.label() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = PgStatus::ALL.iter().map(|s| s.label()).collect();
                format!(
                    "unknown PG state {text:?}: expected one of {}",
                    names.join(", ")
                )
            })
    }
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
    /// Its state (the map's view refined by the primary's report).
    pub state: PgStatus,
    /// Map epoch in which the acting set last changed.
    pub since_epoch: u64,
    /// The acting set is transitional: data is moving to the up set's members while the
    /// primary that served and the members being replaced keep serving; the PG settles once
    /// its primary reports every member in sync.
    #[serde(default)]
    pub pending: bool,
    /// Chunks recovery or backfill still has to copy to its members.
    #[serde(default)]
    pub remaining_objects: u64,
    /// Allocated bytes of those chunks.
    #[serde(default)]
    pub remaining_bytes: u64,
    /// Whether the primary answered: false when the state comes from the map alone.
    #[serde(default)]
    pub reported: bool,
}

impl PgView {
    /// Views of every PG of `pool`, states from the map alone.
    pub fn of_pool(pool: &Pool) -> Vec<PgView> {
        Self::of_pool_with(pool, &ClusterReports::default())
    }

    /// Views of every PG of `pool`, states refined by the primaries' `reports`.
    pub fn of_pool_with(pool: &Pool, reports: &ClusterReports) -> Vec<PgView> {
        (0u32..)
            .zip(pool.pgs())
            .map(|(index, pg)| {
                let (state, remaining_objects, remaining_bytes) =
                    pg_state_of(pool, index, pg, reports);
                PgView {
                    pool: pool.spec().id.0,
                    id: index,
                    acting: pg.acting().iter().map(PgMemberView::from).collect(),
                    up: pg.up().iter().map(PgMemberView::from).collect(),
                    state,
                    since_epoch: pg.since().0,
                    pending: pg.is_pending(),
                    remaining_objects,
                    remaining_bytes,
                    reported: pg.primary().is_some_and(|p| reports.answered(p.node)),
                }
            })
            .collect()
    }
}

/// `GET /v1/pgs` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PgList {
    /// The map epoch these acting sets belong to.
    pub epoch: u64,
    /// The PGs asked for (every PG of every pool, or those in the asked state), from `offset`,
    /// at most `limit`.
    pub pgs: Vec<PgView>,
    /// How many PGs match the query in all (all pages).
    #[serde(default)]
    pub total: u64,
    /// The `offset` of the next page, absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u64>,
    /// Up nodes that did not answer in time: the PGs they lead show the map's state alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_nodes: Vec<u64>,
}

impl PgList {
    /// Every PG of the state's map, states from the map alone.
    pub fn new(state: &MetaState) -> Self {
        Self::query(state, &ClusterReports::default(), &PgListQuery::default())
    }

    /// The PGs `query` asks for, states refined by the primaries' `reports`.
    pub fn query(state: &MetaState, reports: &ClusterReports, query: &PgListQuery) -> Self {
        let matching: Vec<PgView> = state
            .map()
            .pools()
            .iter()
            .flat_map(|pool| PgView::of_pool_with(pool, reports))
            .filter(|view| query.state.is_none_or(|wanted| view.state == wanted))
            .collect();
        let total = matching.len() as u64;
        let offset = query.offset.unwrap_or(0);
        let limit = query.limit();
        let pgs: Vec<PgView> = matching
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect();
        let end = offset.saturating_add(pgs.len() as u64);
        Self {
            epoch: state.epoch().0,
            pgs,
            total,
            next_offset: (end < total).then_some(end),
            unreachable_nodes: reports.unreachable.clone(),
        }
    }
}

/// Overall health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Every node up, every PG active.
    Ok,
    /// Serving, with reduced redundancy (a node down or out, or a PG degraded, peering,
    /// recovering or backfilling).
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
    /// Peering.
    #[serde(default)]
    pub peering: u32,
    /// Recovering (a returning member catching up).
    #[serde(default)]
    pub recovering: u32,
    /// Backfilling (a new member being filled).
    #[serde(default)]
    pub backfilling: u32,
}

impl PgCounts {
    /// The counter of `state`.
    fn slot(&mut self, state: PgStatus) -> &mut u32 {
        match state {
            PgStatus::Active => &mut self.active,
            PgStatus::Degraded => &mut self.degraded,
            PgStatus::Inactive => &mut self.inactive,
            PgStatus::Peering => &mut self.peering,
            PgStatus::Recovering => &mut self.recovering,
            PgStatus::Backfilling => &mut self.backfilling,
        }
    }

    /// How many PGs are in `state`.
    pub fn get(&self, state: PgStatus) -> u32 {
        match state {
            PgStatus::Active => self.active,
            PgStatus::Degraded => self.degraded,
            PgStatus::Inactive => self.inactive,
            PgStatus::Peering => self.peering,
            PgStatus::Recovering => self.recovering,
            PgStatus::Backfilling => self.backfilling,
        }
    }

    /// Counts one more PG in `state`.
    pub fn count(&mut self, state: PgStatus) {
        let slot = self.slot(state);
        *slot = slot.saturating_add(1);
    }

    /// Every PG counted.
    pub fn total(&self) -> u32 {
        PgStatus::ALL
            .into_iter()
            .fold(0u32, |sum, state| sum.saturating_add(self.get(state)))
    }
}

/// Recovery across the cluster (`GET /v1/cluster`), from every up node's report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecoveryView {
    /// Chunks recovery and backfill still have to copy, over every PG.
    pub remaining_objects: u64,
    /// Allocated bytes of those chunks.
    pub remaining_bytes: u64,
    /// Bytes the answering nodes' peering and recovery copied since they started.
    pub recovered_bytes: u64,
    /// Chunks the answering nodes' peering and recovery copied or deleted since they started.
    pub recovered_objects: u64,
    /// Up nodes that did not answer in time: the figures miss their share.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_nodes: Vec<u64>,
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
    /// Recovery progress over the cluster (absent in a bare state view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryView>,
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
    /// The voters of the metadata service, as this node knows them.
    #[serde(default)]
    pub voters: Vec<u64>,
    /// Its non-voting members (followers), as this node knows them.
    #[serde(default)]
    pub learners: Vec<u64>,
}

impl ClusterStatus {
    /// The status from this node's copy of the state and its view of the leader, PG states
    /// from the map alone.
    pub fn new(state: &MetaState, leader: Option<NodeId>) -> Self {
        let mut status = Self::with_reports(state, leader, &ClusterReports::default());
        status.recovery = None;
        status
    }

    /// The status with PG states refined by the primaries' `reports`, and their recovery.
    pub fn with_reports(
        state: &MetaState,
        leader: Option<NodeId>,
        reports: &ClusterReports,
    ) -> Self {
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
        let mut recovery = RecoveryView {
            recovered_bytes: reports.recovered_bytes,
            recovered_objects: reports.recovered_objects,
            unreachable_nodes: reports.unreachable.clone(),
            ..RecoveryView::default()
        };
        for pool in state.map().pools() {
            for (index, pg) in (0u32..).zip(pool.pgs()) {
                let (s, objects, bytes) = pg_state_of(pool, index, pg, reports);
                pgs.count(s);
                recovery.remaining_objects = recovery.remaining_objects.saturating_add(objects);
                recovery.remaining_bytes = recovery.remaining_bytes.saturating_add(bytes);
            }
        }
        let health = if state.cluster().is_none() || leader.is_none() || pgs.inactive > 0 {
            Health::Unavailable
        } else if nodes.down > 0 || nodes.out > 0 || pgs.active < pgs.total() {
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
            recovery: Some(recovery),
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
