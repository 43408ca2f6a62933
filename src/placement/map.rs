//! The placement map: every pool's acting sets and the epoch that versions them (DESIGN §1, §4).
//!
//! The metadata service owns one map and changes it only through [`PlacementMap::add_pool`] and
//! [`PlacementMap::update`], which bump the epoch whenever any acting set changes; gateways,
//! primaries and replicas compare epochs to reject stale I/O. Each PG also records the epoch its
//! acting set last changed in (`since`, Ceph's "same interval since"): peering after a failover
//! (issue 5) needs to know which writes were made under which membership.
//!
//! Each PG stores its *up set* (the members that own it, down ones included) and its *acting
//! set* (the up set minus the down nodes, order kept). A node going down shrinks acting sets and
//! moves nothing; coming back restores them; only out nodes are replaced (`sticky.rs`).

use super::select::Prepared;
use super::sticky::{NodeBasis, basis_of, changed_nodes, next_up_sets};
use super::{
    ClusterDescription, Member, POOLS_MAX, PlacementError, PoolId, PoolSpec, compute_up_sets, pg_of,
};
use crate::ids::{Epoch, NodeId, PgId, VolumeId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One PG's current placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgPlacement {
    up: Vec<Member>,
    acting: Vec<Member>,
    since: Epoch,
}

impl PgPlacement {
    /// The members that own the PG, down ones included, primary-preference order: what a node
    /// coming back up rejoins, and what recovery tracks as "should hold the data".
    pub fn up(&self) -> &[Member] {
        &self.up
    }

    /// The ordered acting set: the first member is the primary. Empty when every member is down.
    pub fn acting(&self) -> &[Member] {
        &self.acting
    }

    /// The primary, which orders and forwards the PG's writes.
    pub fn primary(&self) -> Option<Member> {
        self.acting.first().copied()
    }

    /// The epoch in which the acting set last changed.
    pub fn since(&self) -> Epoch {
        self.since
    }
}

impl PgPlacement {
    /// A placement from an up set: the acting set is the up set minus down nodes, order kept.
    fn new(up: Vec<Member>, prepared: &Prepared, since: Epoch) -> Self {
        let acting: Vec<Member> = up
            .iter()
            .filter(|member| {
                prepared
                    .index_of(member.node)
                    .is_some_and(|index| !prepared.nodes[index].down)
            })
            .copied()
            .collect();
        debug_assert!(acting.len() <= up.len());
        Self { up, acting, since }
    }
}

/// Whether a PG can serve, from its acting set size (DESIGN §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PgHealth {
    /// All replicas present.
    Active,
    /// Fewer than `replicas` but at least `min_size`: writes continue, redundancy is reduced.
    Degraded,
    /// Fewer than `min_size`: writes block until members return.
    Inactive,
}

/// A pool: its spec and one placement per PG (indexed by `PgId`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    spec: PoolSpec,
    pgs: Vec<PgPlacement>,
}

impl Pool {
    /// The pool's parameters.
    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    /// Every PG's placement; index `i` is `PgId(i)`.
    pub fn pgs(&self) -> &[PgPlacement] {
        &self.pgs
    }

    /// One PG's placement, `None` if the id is out of range (e.g. from a peer's bad frame).
    pub fn pg(&self, pg: PgId) -> Option<&PgPlacement> {
        self.pgs.get(pg.0 as usize)
    }

    /// Where a chunk lives: its PG and that PG's placement. What the gateway routes by.
    pub fn locate(&self, volume: VolumeId, chunk_index: u64) -> (PgId, &PgPlacement) {
        let pg = pg_of(volume, chunk_index, self.spec.pg_count);
        let placement = &self.pgs[pg.0 as usize];
        (pg, placement)
    }

    /// A PG's health from its acting set size, `None` if the id is out of range.
    pub fn health(&self, pg: PgId) -> Option<PgHealth> {
        let size = self.pg(pg)?.acting.len();
        Some(if size >= usize::from(self.spec.replicas) {
            PgHealth::Active
        } else if size >= usize::from(self.spec.min_size) {
            PgHealth::Degraded
        } else {
            PgHealth::Inactive
        })
    }
}

/// What an update did: the metadata service logs it and recovery sizes its work from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapUpdate {
    /// The map's epoch afterwards.
    pub epoch: Epoch,
    /// PGs whose up or acting set changed (0: the epoch did not move).
    pub changed_pgs: usize,
    /// Up-set members that are new (replicas to backfill), over all pools.
    pub moved_replicas: usize,
}

/// A broken map invariant: a bug, or a corrupted snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("placement map invariant violated: {0}")]
pub struct MapInvariantError(pub String);

/// Every pool's acting sets, versioned by an epoch that rises on every change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementMap {
    epoch: Epoch,
    pools: Vec<Pool>,
    /// The eligible nodes as of the last computation; tells `update` which nodes changed.
    basis: Vec<NodeBasis>,
}

impl PlacementMap {
    /// An empty map at epoch 0 (no pools yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// The map's epoch: every I/O is tagged with it.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The pools, sorted by id.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// A pool by id.
    pub fn pool(&self, id: PoolId) -> Option<&Pool> {
        self.pools.iter().find(|pool| pool.spec.id == id)
    }

    /// Adds a pool placed over `cluster` from scratch, in a new epoch (existing pools are updated
    /// to `cluster` in the same epoch). Refuses a pool that could never have full acting sets.
    pub fn add_pool(
        &mut self,
        spec: PoolSpec,
        cluster: &ClusterDescription,
    ) -> Result<MapUpdate, PlacementError> {
        spec.validate()?;
        if self.pool(spec.id).is_some() {
            return Err(PlacementError::PoolExists { pool: spec.id });
        }
        if self.pools.len() >= POOLS_MAX {
            return Err(PlacementError::TooManyPools);
        }
        self.apply(cluster, Some(spec))
    }

    /// Moves the map to `cluster` (nodes added, down, up, out, re-weighted): down nodes leave
    /// acting sets (order of the rest kept), out nodes are replaced, changed nodes pull their
    /// PGs to the computed placement, other PGs stay. If anything changed, the map moves to a
    /// new epoch and the changed PGs record it as `since`. On error the map is unchanged.
    pub fn update(&mut self, cluster: &ClusterDescription) -> Result<MapUpdate, PlacementError> {
        self.apply(cluster, None)
    }

    /// Computes every pool (and `new_pool`) before modifying anything, then commits.
    fn apply(
        &mut self,
        cluster: &ClusterDescription,
        new_pool: Option<PoolSpec>,
    ) -> Result<MapUpdate, PlacementError> {
        let prepared = Prepared::new(cluster)?;
        let available = prepared.nodes.len();
        let specs = self.pools.iter().map(|pool| pool.spec).chain(new_pool);
        // Report the most demanding pool: it is the one that needs the most nodes back.
        let replicas_max = specs.map(|spec| spec.replicas).max().unwrap_or(0);
        if usize::from(replicas_max) > available {
            return Err(PlacementError::TooFewFailureDomains {
                replicas: replicas_max,
                available,
            });
        }
        let changed = changed_nodes(&prepared, &self.basis);
        let mut computed: Vec<Vec<Vec<Member>>> = Vec::with_capacity(self.pools.len() + 1);
        for pool in &self.pools {
            let previous: Vec<&[Member]> = pool.pgs.iter().map(|pg| pg.up.as_slice()).collect();
            computed.push(next_up_sets(&prepared, &pool.spec, &previous, &changed));
        }
        let epoch = self.next_epoch();
        let mut update = MapUpdate {
            epoch: self.epoch,
            changed_pgs: 0,
            moved_replicas: 0,
        };
        for (pool, sets) in self.pools.iter_mut().zip(computed) {
            debug_assert_eq!(pool.pgs.len(), sets.len());
            for (placement, up) in pool.pgs.iter_mut().zip(sets) {
                let next = PgPlacement::new(up, &prepared, epoch);
                if placement.up != next.up || placement.acting != next.acting {
                    update.moved_replicas +=
                        next.up.iter().filter(|m| !placement.up.contains(m)).count();
                    update.changed_pgs += 1;
                    *placement = next;
                }
            }
        }
        if let Some(spec) = new_pool {
            let pgs: Vec<PgPlacement> = compute_up_sets(cluster, &spec)?
                .into_iter()
                .map(|up| PgPlacement::new(up, &prepared, epoch))
                .collect();
            update.changed_pgs += pgs.len();
            self.pools.push(Pool { spec, pgs });
            self.pools.sort_by_key(|pool| pool.spec.id);
        }
        if update.changed_pgs > 0 {
            self.epoch = epoch;
            update.epoch = epoch;
        }
        self.basis = basis_of(&prepared);
        debug_assert!(self.check_invariants().is_ok());
        Ok(update)
    }

    /// PGs (pool, PG) whose acting set contains `node`.
    pub fn pgs_of_node(&self, node: NodeId) -> impl Iterator<Item = (PoolId, PgId)> + '_ {
        self.pools.iter().flat_map(move |pool| {
            (0u32..)
                .zip(&pool.pgs)
                .filter_map(move |(index, placement)| {
                    let holds = placement.acting.iter().any(|member| member.node == node);
                    holds.then_some((pool.spec.id, PgId(index)))
                })
        })
    }

    /// Checks the map's structure: valid specs, one placement per PG, acting sets no larger
    /// than `replicas` with distinct nodes, no `since` after the epoch. Run after decoding a
    /// snapshot and by the tests.
    pub fn check_invariants(&self) -> Result<(), MapInvariantError> {
        let fail = |what: String| Err(MapInvariantError(what));
        if self
            .pools
            .windows(2)
            .any(|pair| pair[0].spec.id >= pair[1].spec.id)
        {
            return fail("pools not sorted by unique id".into());
        }
        for pool in &self.pools {
            let spec = pool.spec;
            if spec.validate().is_err() || pool.pgs.len() != spec.pg_count as usize {
                return fail(format!("{} has a bad spec or PG count", spec.id));
            }
            for (index, placement) in pool.pgs.iter().enumerate() {
                let mut nodes: Vec<NodeId> = placement.up.iter().map(|m| m.node).collect();
                nodes.sort_unstable();
                nodes.dedup();
                let too_big = placement.up.len() > usize::from(spec.replicas);
                let mut up_rest = placement.up.iter();
                let acting_in_up_order = placement
                    .acting
                    .iter()
                    .all(|member| up_rest.any(|m| m == member));
                let distinct = nodes.len() == placement.up.len();
                if too_big || !distinct || !acting_in_up_order || placement.since > self.epoch {
                    return fail(format!("{} pg {index} has a bad acting set", spec.id));
                }
            }
        }
        Ok(())
    }

    fn next_epoch(&self) -> Epoch {
        // 2^64 map changes cannot happen; saturating keeps this path panic-free regardless.
        Epoch(self.epoch.0.saturating_add(1))
    }
}
