//! Commands: the entries of the metadata service's Raft log.
//!
//! A command carries everything its effect depends on, including the time (`now_unix_ms`, set
//! by the proposer from its clock), so every replica applying it reaches the same state. Raw
//! secrets never enter the log: tokens travel as their SHA-256.

use super::types::{DriveInfo, NodeAddresses, NodeRole, TokenRole};
use crate::ids::{ClusterId, Epoch, NodeId, PgId, VolumeId};
use crate::placement::PoolId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Most PG reports one `SettlePgs` command carries.
pub const SETTLE_BATCH_MAX: usize = 4096;

/// One log entry: when it was proposed and what it does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The proposer's clock (Unix ms). The state keeps the maximum it has seen, so a leader
    /// with a clock behind its predecessor's never moves state time backwards.
    pub now_unix_ms: u64,
    /// The change.
    pub kind: CommandKind,
}

impl Command {
    /// A command proposed at `now_unix_ms`.
    pub fn new(now_unix_ms: u64, kind: CommandKind) -> Self {
        Self { now_unix_ms, kind }
    }
}

/// What a command changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandKind {
    /// Creates the cluster; repeating it with the same id is a no-op.
    InitCluster {
        /// The new cluster's id.
        cluster_id: ClusterId,
        /// Chunk size, a power of two in 4 KiB..=64 MiB.
        chunk_size_bytes: u32,
        /// PGs per pool, a power of two.
        pg_count: u32,
        /// Replica count of volumes created without one (1..=5).
        default_replicas: u8,
        /// Fewest acting members a PG writes with (1..=default_replicas).
        min_size: u8,
    },
    /// Adds a node (state up) or updates its addresses, zone, role and drives.
    RegisterNode {
        /// The node.
        node: NodeId,
        /// How to reach it.
        addresses: NodeAddresses,
        /// Failure domain.
        zone: Option<String>,
        /// Voter or follower.
        role: NodeRole,
        /// All of its drives (replaces the previous list).
        drives: Vec<DriveInfo>,
    },
    /// Records heartbeats the leader received (batched: at most one entry per node).
    RecordHeartbeats {
        /// (node, leader clock at receipt in Unix ms).
        beats: Vec<(NodeId, u64)>,
    },
    /// Marks a node down: its PGs' acting sets drop it, the map epoch advances.
    MarkNodeDown {
        /// The node.
        node: NodeId,
    },
    /// Marks a down or out node up: it rejoins its PGs' acting sets.
    MarkNodeUp {
        /// The node.
        node: NodeId,
    },
    /// Marks a node out: its replicas are assigned to other nodes.
    MarkNodeOut {
        /// The node.
        node: NodeId,
        /// An operator drained it (the failure detector will not bring it back).
        by_operator: bool,
    },
    /// Forgets an out node that no PG lists any more (`basalt node remove`); its id is never
    /// registered again.
    RemoveNode {
        /// The node.
        node: NodeId,
    },
    /// Ends PGs' transitional acting sets (`PlacementMap::settle_all`), in one map change:
    /// each PG's primary reported every acting member in sync under the placement that changed
    /// at `since` (a report about an older placement is stale and skipped).
    SettlePgs {
        /// (pool, PG, `since`) of each report; at most `SETTLE_BATCH_MAX`.
        pgs: Vec<(PoolId, PgId, Epoch)>,
    },
    /// Creates a volume.
    CreateVolume {
        /// Unique name.
        name: String,
        /// Size in bytes, a multiple of 4 KiB.
        size_bytes: u64,
        /// Replicas; `None` takes the cluster default.
        replicas: Option<u8>,
        /// A client's `Idempotency-Key`: a repeat with the same key and request returns the
        /// first result.
        idempotency_key: Option<String>,
    },
    /// Grows a volume.
    ResizeVolume {
        /// The volume.
        volume: VolumeId,
        /// New size in bytes (not smaller than the current one).
        size_bytes: u64,
    },
    /// Deletes a volume; its id is never reused.
    DeleteVolume {
        /// The volume.
        volume: VolumeId,
    },
    /// Adds an API token.
    AddToken {
        /// Unique label.
        name: String,
        /// What it may do.
        role: TokenRole,
        /// SHA-256 of the token (see `token_sha256`).
        token_sha256: [u8; 32],
    },
    /// Removes an API token by name.
    RemoveToken {
        /// The token's label.
        name: String,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} @{}ms", self.kind, self.now_unix_ms)
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandKind::InitCluster { cluster_id, .. } => write!(f, "init-cluster {cluster_id}"),
            CommandKind::RegisterNode { node, drives, .. } => {
                write!(f, "register-node {node} ({} drives)", drives.len())
            }
            CommandKind::RecordHeartbeats { beats } => {
                write!(f, "record-heartbeats ({} nodes)", beats.len())
            }
            CommandKind::MarkNodeDown { node } => write!(f, "mark-node-down {node}"),
            CommandKind::MarkNodeUp { node } => write!(f, "mark-node-up {node}"),
            CommandKind::MarkNodeOut { node, by_operator } => {
                let who = if *by_operator { "operator" } else { "detector" };
                write!(f, "mark-node-out {node} by {who}")
            }
            CommandKind::RemoveNode { node } => write!(f, "remove-node {node}"),
            CommandKind::SettlePgs { pgs } => write!(f, "settle-pgs ({} PGs)", pgs.len()),
            CommandKind::CreateVolume {
                name, size_bytes, ..
            } => write!(f, "create-volume {name:?} {size_bytes} bytes"),
            CommandKind::ResizeVolume { volume, size_bytes } => {
                write!(f, "resize-volume {volume} to {size_bytes} bytes")
            }
            CommandKind::DeleteVolume { volume } => write!(f, "delete-volume {volume}"),
            CommandKind::AddToken { name, role, .. } => write!(f, "add-token {name:?} {role}"),
            CommandKind::RemoveToken { name } => write!(f, "remove-token {name:?}"),
        }
    }
}
