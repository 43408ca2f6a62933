//! What applying a command returns: a typed outcome or a typed refusal.
//!
//! Both are serde so the Raft glue can hand them back to the proposer (the state machine's
//! response) and the idempotency store can keep a first result. A refusal changes nothing.

use super::types::Volume;
use crate::ids::{ClusterId, Epoch, NodeId, VolumeId};
use crate::placement::{NodeState, PlacementError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The result of `MetaState::apply`.
pub type CommandResult = Result<Outcome, MetaError>;

/// What a successful command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// `InitCluster`: `created` is false when the cluster already existed with this id.
    ClusterInitialized {
        /// The cluster's id.
        cluster_id: ClusterId,
        /// Whether this command created it.
        created: bool,
    },
    /// A node command: the node's state and the map epoch afterwards.
    Node {
        /// The node.
        node: NodeId,
        /// Its state now.
        state: NodeState,
        /// Whether the command changed anything.
        changed: bool,
        /// The placement map's epoch now.
        epoch: Epoch,
    },
    /// `RemoveNode`: `removed` is false when the node was removed before.
    NodeRemoved {
        /// The node.
        node: NodeId,
        /// Whether this command removed it.
        removed: bool,
    },
    /// `SettlePgs`: how many PGs settled (stale reports, and ones that would drop a copy,
    /// change nothing), and the map epoch afterwards.
    PgsSettled {
        /// PGs whose acting set changed.
        settled: u32,
        /// The placement map's epoch now.
        epoch: Epoch,
    },
    /// `RecordHeartbeats`: how many beats were for known nodes.
    HeartbeatsRecorded {
        /// Beats recorded.
        recorded: u32,
    },
    /// `CreateVolume` or `ResizeVolume`: the volume now (or, for a repeated create with the
    /// same idempotency key, as first created).
    Volume(Volume),
    /// `DeleteVolume`.
    VolumeDeleted {
        /// The deleted volume's id.
        volume: VolumeId,
        /// Its name (free for reuse now).
        name: String,
    },
    /// `AddToken`.
    TokenAdded {
        /// The token's label.
        name: String,
    },
    /// `RemoveToken`.
    TokenRemoved {
        /// The token's label.
        name: String,
    },
}

/// Why a command was refused. Grouped by cause; the API maps each to a problem type.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MetaError {
    // -- Cluster lifecycle.
    /// Any command but `InitCluster` before the cluster exists.
    #[error("the cluster is not initialized")]
    NotInitialized,
    /// `InitCluster` with a different id than the existing cluster's.
    #[error("the cluster is already initialized as {cluster_id}")]
    AlreadyInitialized {
        /// The existing cluster's id.
        cluster_id: ClusterId,
    },
    /// `InitCluster` parameters out of range.
    #[error("invalid cluster parameters: {reason}")]
    InvalidClusterParams {
        /// What is wrong.
        reason: String,
    },

    // -- Nodes.
    /// The node is not registered.
    #[error("{node} is not registered")]
    NodeNotFound {
        /// The node asked for.
        node: NodeId,
    },
    /// The node was removed from the cluster; its id is retired.
    #[error(
        "{node} was removed from the cluster; a node coming back needs a new id and wiped drives"
    )]
    NodeRemoved {
        /// The node.
        node: NodeId,
    },
    /// The node cannot be removed yet.
    #[error("{node} cannot be removed: {reason}")]
    NodeInUse {
        /// The node.
        node: NodeId,
        /// Why not, and what to do.
        reason: String,
    },
    /// A `RegisterNode` value out of range (zone name, drive count, addresses, node count).
    #[error("invalid node {node}: {reason}")]
    InvalidNode {
        /// The node.
        node: NodeId,
        /// What is wrong.
        reason: String,
    },
    /// A drive is already registered to another node.
    #[error("drive {drive} already belongs to {owner}")]
    DriveInUse {
        /// The drive.
        drive: crate::ids::DriveId,
        /// The node that has it.
        owner: NodeId,
    },
    /// The change would leave fewer eligible nodes than some pool's replica count.
    #[error("{replicas} replicas need {replicas} nodes, only {available} would be eligible")]
    NotEnoughNodes {
        /// Replicas the most demanding pool needs.
        replicas: u8,
        /// Eligible nodes (not out, with drives) after the change.
        available: usize,
    },
    /// Placement refused the cluster description (a bug or a limit).
    #[error("placement: {0}")]
    Placement(PlacementError),

    // -- Volumes.
    /// Name does not match `[a-z0-9][a-z0-9._-]{0,62}`.
    #[error("invalid volume name {name:?}: must match [a-z0-9][a-z0-9._-]{{0,62}}")]
    InvalidName {
        /// The name given (truncated).
        name: String,
    },
    /// Size zero, not a multiple of 4 KiB, or above the maximum.
    #[error("invalid size {size_bytes}: {reason}")]
    InvalidSize {
        /// The size given.
        size_bytes: u64,
        /// What is wrong.
        reason: String,
    },
    /// Replica count outside 1..=5.
    #[error("invalid replica count {replicas}: must be 1..=5")]
    InvalidReplicas {
        /// The count given.
        replicas: u8,
    },
    /// More replicas than eligible nodes.
    #[error("{replicas} replicas need {replicas} nodes with drives, the cluster has {available}")]
    TooManyReplicas {
        /// The count asked for.
        replicas: u8,
        /// Eligible nodes.
        available: usize,
    },
    /// A live volume already has this name.
    #[error("a volume named {name:?} exists")]
    VolumeExists {
        /// The name.
        name: String,
    },
    /// No live volume with this id.
    #[error("{volume} not found")]
    VolumeNotFound {
        /// The id asked for.
        volume: VolumeId,
    },
    /// A resize to a smaller size.
    #[error("volumes only grow: {current_bytes} bytes now, {requested_bytes} asked")]
    ShrinkNotAllowed {
        /// The volume's size.
        current_bytes: u64,
        /// The size asked for.
        requested_bytes: u64,
    },
    /// The volume limit is reached.
    #[error("the cluster holds at most {limit} volumes")]
    TooManyVolumes {
        /// The limit.
        limit: usize,
    },

    // -- Tokens.
    /// A token with this name or hash exists.
    #[error("a token named {name:?} (or with the same secret) exists")]
    TokenExists {
        /// The name given.
        name: String,
    },
    /// No token with this name.
    #[error("no token named {name:?}")]
    TokenNotFound {
        /// The name given.
        name: String,
    },
    /// Token name invalid.
    #[error("invalid token name {name:?}")]
    InvalidTokenName {
        /// The name given (truncated).
        name: String,
    },
    /// The token limit is reached.
    #[error("the cluster holds at most {limit} tokens")]
    TooManyTokens {
        /// The limit.
        limit: usize,
    },

    // -- Idempotency and malformed commands.
    /// The idempotency key was used before for a different request.
    #[error("idempotency key {key:?} was used for a different request")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// Idempotency key empty, too long or not printable ASCII.
    #[error("invalid idempotency key: 1..=255 printable ASCII characters")]
    InvalidIdempotencyKey,
    /// A command too large to apply (e.g. a heartbeat batch over the node limit).
    #[error("command too large: {reason}")]
    CommandTooLarge {
        /// What is over its limit.
        reason: String,
    },
}

impl From<PlacementError> for MetaError {
    fn from(error: PlacementError) -> Self {
        match error {
            PlacementError::TooFewFailureDomains {
                replicas,
                available,
            } => MetaError::NotEnoughNodes {
                replicas,
                available,
            },
            other => MetaError::Placement(other),
        }
    }
}

/// A name cut to a loggable length for an error message (names come from clients).
pub(super) fn truncated(name: &str) -> String {
    name.chars().take(80).collect()
}
