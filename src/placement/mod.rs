//! Placement: which drives hold each placement group (DESIGN §1).
//!
//! Pure steps. [`pg_of`] hashes a chunk to a placement group (PG) of its pool, and
//! [`compute_up_sets`] gives every PG of a pool an ordered set of drives (the first is the
//! primary). [`PlacementMap`] stores the result with the epoch the data path tags its I/O with;
//! the metadata service keeps it explicitly and moves it with [`PlacementMap::update`] (from the
//! previous map and the new cluster description) only when the cluster changes, so nodes never
//! derive the map on their own.
//!
//! # Algorithm
//! Weighted rendezvous hashing in two levels, like CRUSH's `chooseleaf` (details and the reasons
//! for each choice in `select.rs`):
//! 1. Every eligible node (not out, with weighted drives) draws `u = xxh3(pool, pg, node)`. The
//!    nodes are ranked by Pareto order-sampling keys `odds(u) / odds(λ)`, where `λ` is the node's
//!    capacity share of the PG's replicas (capped at 1): each node ends up in a fraction of the
//!    PGs proportional to its weight, even with few, unequal nodes.
//! 2. Nodes are taken in that order in rounds: round `r` admits a node only while its failure
//!    domain holds at most `r` of the PG's replicas, so every zone (a node without a zone is its
//!    own domain) is used once before any is used twice. With at least `replicas` zones, replicas
//!    land in distinct zones; with fewer, they spread as evenly as the zones allow. Replicas are
//!    always on distinct nodes.
//! 3. The chosen nodes are ordered by straw2 (`-ln(u') / weight`, an independent draw), so the
//!    primary is each node in proportion to its weight; on each, straw2 over its drives picks
//!    the drive.
//!
//! The acting set is the up set minus the nodes that are down, order kept, so a node going down
//! shortens its PGs' acting sets without moving anything else and gets exactly its old PGs back
//! when it returns — but a change never moves the primary to a member that was not acting, and
//! serving members the up set dropped stay acting, until the primary reports every member in
//! sync and the metadata service *settles* the PG (`map.rs`: transitional acting sets). An update starts from the previous map (`sticky.rs`): a node marked out is
//! replaced in the PGs that held it and nowhere else; a new node takes the PGs whose computed
//! set now includes it. Without that, unequal weights would re-sort a few unrelated PGs.
//!
//! # Determinism
//! Raft replicas recompute the map when they apply a command, so every machine must produce the
//! same bits. No floating point is used (`fixed.rs`): logarithms are integer fixed point and
//! straw2 scores are compared exactly by cross-multiplying in `u128`. Ties go to the lower id.
//! The input is put in canonical order (sorted by id) first, so its order does not matter.

mod fixed;
mod map;
mod select;
mod sticky;
#[cfg(test)]
mod tests;

pub use map::{
    ACTING_EXTRA_MAX, MapInvariantError, MapUpdate, PgHealth, PgPlacement, PlacementMap, Pool,
    SettleError,
};

use crate::ids::{DriveId, NodeId, PgId, VolumeId};
use select::{Placer, Prepared};
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the chunk → PG hash ("basalt-p"). Fixed forever: changing it moves every chunk.
pub const PG_HASH_SEED: u64 = 0x6261_7361_6c74_2d70;
/// Seed of the node and drive draws ("basalt-d"). Fixed forever: changing it reshuffles every
/// acting set.
pub const DRAW_HASH_SEED: u64 = 0x6261_7361_6c74_2d64;
/// Seed of the draws that order an acting set ("basalt-o"), independent of the membership draws
/// so that being chosen says nothing about being primary.
pub const ORDER_HASH_SEED: u64 = 0x6261_7361_6c74_2d6f;
/// Most PGs a pool may have. Bounds the map's size (and the time to recompute it on a change).
pub const PG_COUNT_MAX: u32 = 1 << 16;
/// Most replicas of a PG (DESIGN §1: a volume has 1..=5 replicas).
pub const REPLICAS_MAX: u8 = 5;
/// Most pools in a map: one per replica count is what the metadata service creates.
pub const POOLS_MAX: usize = 16;
/// Most nodes in a cluster description. Recomputing a map costs `pg_count × nodes` draws.
pub const NODES_MAX: usize = 1024;
/// Most drives on one node.
pub const DRIVES_PER_NODE_MAX: usize = 64;
/// Largest drive weight (the metadata service uses MiB: 2^40 MiB is an exbibyte). Keeps a
/// cluster's total weight (`WEIGHT_MAX × DRIVES_PER_NODE_MAX × NODES_MAX`) and `replicas ×` a
/// node's weight inside `u64`, and straw2's `draw × weight` far inside `u128`.
pub const WEIGHT_MAX: u64 = 1 << 40;
/// Longest zone name, in bytes.
pub const ZONE_NAME_LENGTH_MAX: usize = 63;

const _: () = assert!(PG_COUNT_MAX.is_power_of_two());
const _: () = assert!(REPLICAS_MAX as usize <= POOLS_MAX);
const _: () = assert!(
    (WEIGHT_MAX as u128) * (DRIVES_PER_NODE_MAX as u128) * (NODES_MAX as u128) < (1u128 << 63)
);
const _: () = assert!((REPLICAS_MAX as u128) * (WEIGHT_MAX as u128) * 64 < (1u128 << 63));

/// A pool's id: its index in the map. Volumes live in one pool; a PG is named by (pool, PG).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct PoolId(pub u32);

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pool-{}", self.0)
    }
}

/// A node's state as placement sees it (issue 3's up/down/out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// Heartbeating: holds its replicas and serves them.
    Up,
    /// Missed heartbeats for `down_after`: still owns its PGs (they wait for it to come back),
    /// but is left out of acting sets so I/O continues without it.
    Down,
    /// Gone for good (or drained by an operator and then stopped): its replicas are rebuilt
    /// elsewhere.
    Out,
    /// An operator asked to move its data off: it takes no new placement and its replicas are
    /// rebuilt elsewhere, but it keeps serving them until the new members are in sync, so a drain
    /// never lowers redundancy.
    Draining,
}

impl NodeState {
    /// Whether the node runs and serves the replicas it holds (up, or draining).
    pub fn is_serving(self) -> bool {
        matches!(self, Self::Up | Self::Draining)
    }
}

/// One drive as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveDescription {
    /// The drive's id.
    pub id: DriveId,
    /// Relative capacity weight (the metadata service uses capacity in MiB); 0 takes no data.
    pub weight: u64,
}

/// One node as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescription {
    /// The node's id.
    pub id: NodeId,
    /// Failure domain above the node; `None` makes the node its own domain.
    pub zone: Option<String>,
    /// Up, down or out.
    pub state: NodeState,
    /// The node's drives; a node without weighted drives is a pure gateway and holds no data.
    pub drives: Vec<DriveDescription>,
}

/// The cluster as placement sees it: the only input besides the pool's parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDescription {
    /// The nodes, in any order.
    pub nodes: Vec<NodeDescription>,
}

/// A replica's home: one drive on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The node that serves the replica.
    pub node: NodeId,
    /// The drive on that node that stores it.
    pub drive: DriveId,
}

/// A pool's fixed parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// The pool's id.
    pub id: PoolId,
    /// Number of PGs, a power of two in `1..=PG_COUNT_MAX`, fixed for the pool's life.
    pub pg_count: u32,
    /// Replicas per PG, `1..=REPLICAS_MAX`.
    pub replicas: u8,
    /// Fewest acting members a PG accepts writes with, `1..=replicas`.
    pub min_size: u8,
}

impl PoolSpec {
    /// Checks the parameters; the map holds only valid specs.
    pub fn validate(&self) -> Result<(), PlacementError> {
        let valid = self.pg_count.is_power_of_two()
            && self.pg_count <= PG_COUNT_MAX
            && (1..=REPLICAS_MAX).contains(&self.replicas)
            && (1..=self.replicas).contains(&self.min_size);
        if valid {
            Ok(())
        } else {
            Err(PlacementError::InvalidPool { spec: *self })
        }
    }
}

/// Placement errors: all of them are the caller's input (a bad description or pool spec).
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PlacementError {
    /// The cluster lists a node twice.
    #[error("node {node} is listed twice")]
    DuplicateNode {
        /// The repeated node.
        node: NodeId,
    },
    /// A drive appears twice (on one node or on two).
    #[error("drive {drive} is listed twice")]
    DuplicateDrive {
        /// The repeated drive.
        drive: DriveId,
    },
    /// More nodes than `NODES_MAX`.
    #[error("{count} nodes exceed the limit of {NODES_MAX}")]
    TooManyNodes {
        /// Nodes given.
        count: usize,
    },
    /// A node has more drives than `DRIVES_PER_NODE_MAX`, or a drive weighs more than
    /// `WEIGHT_MAX`, or a zone name is longer than `ZONE_NAME_LENGTH_MAX`.
    #[error("node {node} exceeds a limit (drives, drive weight or zone name length)")]
    NodeLimit {
        /// The offending node.
        node: NodeId,
    },
    /// Pool parameters out of range.
    #[error("invalid pool parameters {spec:?}")]
    InvalidPool {
        /// The rejected spec.
        spec: PoolSpec,
    },
    /// A pool with this id already exists.
    #[error("{pool} already exists")]
    PoolExists {
        /// The existing pool.
        pool: PoolId,
    },
    /// Too many pools.
    #[error("a map holds at most {POOLS_MAX} pools")]
    TooManyPools,
    /// Fewer eligible nodes (up or down, with weighted drives, not out) than replicas: no acting
    /// set could ever be complete, so a pool is not created for it.
    #[error("{replicas} replicas need {replicas} failure domains, only {available} eligible nodes")]
    TooFewFailureDomains {
        /// Replicas requested.
        replicas: u8,
        /// Eligible nodes.
        available: usize,
    },
}

/// How many failure domains the eligible part of a cluster has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureDomains {
    /// Eligible nodes (not out, with weight).
    pub nodes: usize,
    /// Distinct domains among them (zones; a node without a zone counts as its own).
    pub zones: usize,
}

/// The PG a chunk belongs to: `xxh3(volume, chunk_index) mod pg_count`.
///
/// Snapshot generations of a chunk share its PG, so a snapshot's chunks live next to the live
/// ones. `pg_count` must be a power of two (the map's pools guarantee it).
pub fn pg_of(volume: VolumeId, chunk_index: u64, pg_count: u32) -> PgId {
    assert!(
        pg_count.is_power_of_two() && pg_count <= PG_COUNT_MAX,
        "bad pg_count {pg_count}"
    );
    let mut input = [0u8; 16];
    input[..8].copy_from_slice(&volume.0.to_le_bytes());
    input[8..].copy_from_slice(&chunk_index.to_le_bytes());
    let hash = xxh3_64_with_seed(&input, PG_HASH_SEED);
    let pg = hash & u64::from(pg_count - 1);
    debug_assert!(pg < u64::from(pg_count));
    PgId(pg as u32)
}

/// Counts the failure domains a pool would be placed over.
pub fn failure_domains(cluster: &ClusterDescription) -> Result<FailureDomains, PlacementError> {
    let prepared = Prepared::new(cluster)?;
    let nodes = prepared.nodes.len();
    let mut domains: Vec<u32> = prepared.nodes.iter().map(|node| node.domain).collect();
    domains.sort_unstable();
    domains.dedup();
    debug_assert!(domains.len() <= nodes);
    Ok(FailureDomains {
        nodes,
        zones: domains.len(),
    })
}

/// Computes every PG's up set for a pool from scratch: the members the algorithm wants, primary
/// first, down nodes included (they still own their PGs). What a new pool starts with and what
/// [`PlacementMap::update`] steers towards; the acting set is this minus the down nodes.
pub fn compute_up_sets(
    cluster: &ClusterDescription,
    spec: &PoolSpec,
) -> Result<Vec<Vec<Member>>, PlacementError> {
    spec.validate()?;
    let prepared = Prepared::new(cluster)?;
    let mut placer = Placer::new(&prepared, usize::from(spec.replicas));
    let sets: Vec<Vec<Member>> = (0..spec.pg_count)
        .map(|pg| placer.up_set(spec.id, PgId(pg)))
        .collect();
    debug_assert!(
        sets.iter()
            .all(|set| set.len() <= usize::from(spec.replicas))
    );
    Ok(sets)
}

fn validate_cluster(cluster: &ClusterDescription) -> Result<(), PlacementError> {
    if cluster.nodes.len() > NODES_MAX {
        return Err(PlacementError::TooManyNodes {
            count: cluster.nodes.len(),
        });
    }
    let mut node_ids: Vec<NodeId> = cluster.nodes.iter().map(|node| node.id).collect();
    node_ids.sort_unstable();
    if let Some(pair) = node_ids.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(PlacementError::DuplicateNode { node: pair[0] });
    }
    for node in &cluster.nodes {
        let zone_too_long = node
            .zone
            .as_ref()
            .is_some_and(|z| z.len() > ZONE_NAME_LENGTH_MAX);
        let too_heavy = node.drives.iter().any(|drive| drive.weight > WEIGHT_MAX);
        if node.drives.len() > DRIVES_PER_NODE_MAX || too_heavy || zone_too_long {
            return Err(PlacementError::NodeLimit { node: node.id });
        }
    }
    let mut drive_ids: Vec<DriveId> = cluster
        .nodes
        .iter()
        .flat_map(|node| node.drives.iter().map(|drive| drive.id))
        .collect();
    drive_ids.sort_unstable();
    if let Some(pair) = drive_ids.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(PlacementError::DuplicateDrive { drive: pair[0] });
    }
    Ok(())
}
