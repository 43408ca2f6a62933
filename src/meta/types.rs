//! The records the metadata state holds: cluster parameters, nodes, volumes, tokens.

use crate::ids::{ClusterId, DriveId, NodeId, VolumeId};
use crate::placement::{NodeState, PoolId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Longest volume, token or zone name, in bytes (DESIGN §1: `[a-z0-9][a-z0-9._-]{0,62}`).
pub const NAME_LENGTH_MAX: usize = 63;

/// Whether `name` is a valid volume, token or zone name: `[a-z0-9][a-z0-9._-]{0,62}`. Names
/// become NBD export names, file names and URL path segments, so they are kept boring.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    first_ok && rest_ok && bytes.len() <= NAME_LENGTH_MAX
}

/// A node's part in the metadata service's Raft group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    /// Votes in elections and counts for the quorum (3 or 5 per cluster).
    Voter,
    /// Receives the log (a non-voting learner) but does not vote.
    Follower,
}

/// What an API token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TokenRole {
    /// Every call.
    Admin,
    /// Only calls that change nothing (GET).
    ReadOnly,
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeRole::Voter => "voter",
            NodeRole::Follower => "follower",
        })
    }
}

impl fmt::Display for TokenRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenRole::Admin => "admin",
            TokenRole::ReadOnly => "read-only",
        })
    }
}

/// The cluster's fixed parameters, set by `InitCluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The cluster's id (also in every drive's superblock).
    pub id: ClusterId,
    /// Chunk size of every volume, a power of two.
    pub chunk_size_bytes: u32,
    /// PGs per pool, a power of two.
    pub pg_count: u32,
    /// Replica count of volumes created without one; the default pool has this many.
    pub default_replicas: u8,
    /// Fewest acting members a PG writes with (capped at a pool's replica count).
    pub min_size: u8,
    /// When the cluster was created (command time, Unix ms).
    pub created_unix_ms: u64,
}

impl ClusterInfo {
    /// The pool volumes with `replicas` replicas live in: one pool per replica count.
    pub fn pool_for(replicas: u8) -> PoolId {
        PoolId(u32::from(replicas))
    }
}

/// How a node is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddresses {
    /// Peer (node-to-node) address, `host:port`.
    pub peer: String,
    /// HTTP API address, `host:port`.
    pub api: String,
    /// NBD address, `host:port`; `None` if the node exports nothing over TCP.
    pub nbd: Option<String>,
}

/// A drive as the metadata service knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveInfo {
    /// The drive's id (from its superblock).
    pub id: DriveId,
    /// Usable capacity in bytes; placement weighs the drive by it.
    pub capacity_bytes: u64,
}

/// A node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's id.
    pub id: NodeId,
    /// How to reach it.
    pub addresses: NodeAddresses,
    /// Failure domain, if configured.
    pub zone: Option<String>,
    /// Voter or follower.
    pub role: NodeRole,
    /// Its drives, sorted by id.
    pub drives: Vec<DriveInfo>,
    /// Up, down or out.
    pub state: NodeState,
    /// Set when an operator marked the node out (drain): the failure detector then leaves it
    /// out even while it heartbeats, until an operator marks it up.
    pub out_by_operator: bool,
    /// When `state` last changed (command time, Unix ms): how long a node has been down.
    pub state_since_unix_ms: u64,
    /// Last heartbeat the leader recorded (Unix ms, leader's clock).
    pub last_heartbeat_unix_ms: u64,
    /// When the node first registered (command time, Unix ms).
    pub registered_unix_ms: u64,
}

/// A volume's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VolumeState {
    /// Created and usable. (Deletion removes the record at once; states for snapshots, clones
    /// and background deletion come with those features.)
    Available,
}

/// A volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Never reused.
    pub id: VolumeId,
    /// Unique among live volumes.
    pub name: String,
    /// Size in bytes, a multiple of 4 KiB.
    pub size_bytes: u64,
    /// Replica count, 1..=5.
    pub replicas: u8,
    /// The pool its chunks are placed in (one pool per replica count).
    pub pool: PoolId,
    /// Lifecycle state.
    pub state: VolumeState,
    /// When it was created (command time, Unix ms).
    pub created_unix_ms: u64,
}

/// An API token, stored as the SHA-256 of the token so the state (and its snapshots and log)
/// never holds a usable credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Unique label.
    pub name: String,
    /// What it may do.
    pub role: TokenRole,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
    /// When it was added (command time, Unix ms).
    pub created_unix_ms: u64,
}

/// SHA-256 of a presented token: what `AddToken` carries and what lookups compare.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "0", "db-1", "vol_2.img", &"a".repeat(63)] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "A",
            "a b",
            "a/b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
