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
    ClusterDescription, Member, POOLS_MAX, PlacementError, PoolId, PoolSpec, REPLICAS_MAX,
    compute_up_sets, pg_of,
};
use crate::ids::{Epoch, NodeId, PgId, VolumeId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most members a transitional acting set may hold beyond the pool's `replicas` (the serving
/// members the up set dropped). Bounds the fan-out of a write while a PG moves.
pub const ACTING_EXTRA_MAX: usize = REPLICAS_MAX as usize;

/// One PG's current placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgPlacement {
    up: Vec<Member>,
    acting: Vec<Member>,
    since: Epoch,
    /// The acting set is transitional: it keeps a primary or members the up set does not give
    /// it, until the primary reports every member in sync and the PG is settled.
    #[serde(default)]
    pending: bool,
}

impl PgPlacement {
    /// The members that own the PG, down ones included, primary-preference order: what a node
    /// coming back up rejoins, and what recovery tracks as "should hold the data".
    pub fn up(&self) -> &[Member] {
        &self.up
    }

    /// The ordered acting set: the first member is the primary. Empty when every member is down.
    /// While the PG is [pending](Self::is_pending) it may hold serving members outside the up
    /// set (being replaced) and a primary that is not the up set's first.
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

    /// Whether the acting set is transitional (see [`PlacementMap::settle`]): data is moving to
    /// the members the up set names, and the old ones keep serving until it has.
    pub fn is_pending(&self) -> bool {
        self.pending
    }
}

impl PgPlacement {
    /// A settled placement from an up set: the acting set is the up set minus down nodes, order
    /// kept.
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
        Self {
            up,
            acting,
            since,
            pending: false,
        }
    }

    /// Steers `self` (settled, freshly computed) from the `previous` placement so that no change
    /// moves data or the primary role before the data is there:
    /// - the primary stays the first member of the previous acting set that still acts (so a
    ///   node coming back is recovered by the primary that served while it was away, instead of
    ///   taking the role back with stale data and forcing a second failover);
    /// - previous members that still serve but left the up set (rebalanced away, draining) stay
    ///   acting after the new ones, so redundancy never drops while a new member backfills.
    ///
    /// The result is pending when it differs from the settled set; [`PlacementMap::settle`]
    /// ends that once the primary reports every member in sync.
    fn steered_from(
        mut self,
        previous: &Self,
        serving: &impl Fn(&Member) -> bool,
        replicas: usize,
    ) -> Self {
        let holds_node = |set: &[Member], node: NodeId| set.iter().any(|m| m.node == node);
        let mut retained: Vec<Member> = previous
            .acting
            .iter()
            .filter(|m| serving(m) && !holds_node(&self.acting, m.node))
            .copied()
            .collect();
        // Keep the fan-out bounded; the oldest retained members (first) hold the most data.
        retained.truncate(ACTING_EXTRA_MAX.min(replicas));
        let present = |m: &Member| self.acting.contains(m) || retained.contains(m);
        let primary = previous
            .acting
            .iter()
            .find(|m| present(m))
            .or(self.acting.first())
            .copied();
        let Some(primary) = primary else {
            return self;
        };
        let mut acting = vec![primary];
        acting.extend(self.acting.iter().filter(|m| **m != primary));
        acting.extend(retained.iter().filter(|m| **m != primary));
        if acting != self.acting {
            self.acting = acting;
            self.pending = true;
        }
        self
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

/// Why a PG was not settled.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SettleError {
    /// No such pool or PG.
    #[error("{pool} has no pg {}", pg.0)]
    NoSuchPg {
        /// The pool named.
        pool: PoolId,
        /// The PG named.
        pg: PgId,
    },
    /// The PG's acting set changed after the report (it changed in `since`).
    #[error("the placement changed since (in epoch {since})")]
    Stale {
        /// When the PG's acting set last changed.
        since: Epoch,
    },
    /// Settling now would leave fewer members than the PG has: a new member is down.
    #[error("settling would drop a copy: a member of the up set is down")]
    WouldDropCopy,
    /// The cluster description is invalid.
    #[error(transparent)]
    Placement(PlacementError),
}

/// The drives of nodes that run and serve what they hold (up or draining), sorted: the members
/// a transitional acting set may keep.
fn serving_members(cluster: &ClusterDescription) -> Vec<Member> {
    let mut members: Vec<Member> = cluster
        .nodes
        .iter()
        .filter(|node| node.state.is_serving())
        .flat_map(|node| {
            node.drives.iter().map(|drive| Member {
                node: node.id,
                drive: drive.id,
            })
        })
        .collect();
    members.sort_unstable();
    members
}

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

    /// Ends a PG's transition: its acting set becomes the up set minus down nodes, dropping the
    /// members that were kept while the new ones caught up and handing the primary role to the
    /// up set's first. Called when the PG's primary reports every acting member in sync under
    /// the placement that changed at `since`; a report about an older placement is stale (the
    /// members changed since, and the primary will report again). Refused while the settled set
    /// would hold fewer members than both `replicas` and the current acting set (a new member
    /// went down again): settling then would drop a copy. See [`Self::settle_all`] for many.
    pub fn settle(
        &mut self,
        pool: PoolId,
        pg: PgId,
        since: Epoch,
        cluster: &ClusterDescription,
    ) -> Result<MapUpdate, SettleError> {
        let prepared = Prepared::new(cluster).map_err(SettleError::Placement)?;
        let epoch = self.next_epoch();
        let changed = self.settle_one(&prepared, epoch, pool, pg, since)?;
        Ok(self.commit_settled(epoch, usize::from(changed)))
    }

    /// Settles every PG of `reports` (pool, PG, `since`) that [`Self::settle`] would, in one new
    /// epoch: primaries report in bursts (a node joining moves hundreds of PGs), and one map
    /// change per PG would make every node re-process the map that many times. Reports that
    /// would be refused are skipped; the count of settled PGs is in the result.
    pub fn settle_all(
        &mut self,
        reports: &[(PoolId, PgId, Epoch)],
        cluster: &ClusterDescription,
    ) -> Result<MapUpdate, PlacementError> {
        let prepared = Prepared::new(cluster)?;
        let epoch = self.next_epoch();
        let mut changed = 0;
        for (pool, pg, since) in reports {
            if let Ok(true) = self.settle_one(&prepared, epoch, *pool, *pg, *since) {
                changed += 1;
            }
        }
        Ok(self.commit_settled(epoch, changed))
    }

    /// Whether [`Self::settle`] would change the PG now: a report that would not (stale, not
    /// pending, a new member down) need not be proposed.
    pub fn would_settle(
        &self,
        pool: PoolId,
        pg: PgId,
        since: Epoch,
        cluster: &ClusterDescription,
    ) -> bool {
        Prepared::new(cluster).is_ok_and(|prepared| {
            matches!(
                self.settled(&prepared, self.epoch, pool, pg, since),
                Ok(Some(_))
            )
        })
    }

    /// The PG's settled placement in `epoch`, `None` if it is not pending.
    fn settled(
        &self,
        prepared: &Prepared,
        epoch: Epoch,
        pool: PoolId,
        pg: PgId,
        since: Epoch,
    ) -> Result<Option<PgPlacement>, SettleError> {
        let pool = self.pool(pool).ok_or(SettleError::NoSuchPg { pool, pg })?;
        let replicas = usize::from(pool.spec.replicas);
        let placement = pool.pg(pg).ok_or(SettleError::NoSuchPg {
            pool: pool.spec.id,
            pg,
        })?;
        if placement.since != since {
            return Err(SettleError::Stale {
                since: placement.since,
            });
        }
        if !placement.pending {
            return Ok(None);
        }
        let settled = PgPlacement::new(placement.up.clone(), prepared, epoch);
        if settled.acting.len() < replicas.min(placement.acting.len()) {
            return Err(SettleError::WouldDropCopy);
        }
        Ok(Some(settled))
    }

    /// Settles one PG into `epoch` (not yet committed); true if it changed.
    fn settle_one(
        &mut self,
        prepared: &Prepared,
        epoch: Epoch,
        pool: PoolId,
        pg: PgId,
        since: Epoch,
    ) -> Result<bool, SettleError> {
        let Some(settled) = self.settled(prepared, epoch, pool, pg, since)? else {
            return Ok(false);
        };
        let slot = self
            .pools
            .iter_mut()
            .find(|p| p.spec.id == pool)
            .and_then(|pool| pool.pgs.get_mut(pg.0 as usize));
        debug_assert!(slot.is_some(), "settled() found the PG");
        if let Some(slot) = slot {
            *slot = settled;
        }
        Ok(true)
    }

    /// Moves the map to `epoch` if `changed` PGs settled into it.
    fn commit_settled(&mut self, epoch: Epoch, changed: usize) -> MapUpdate {
        if changed > 0 {
            self.epoch = epoch;
        }
        debug_assert!(self.check_invariants().is_ok());
        MapUpdate {
            epoch: self.epoch,
            changed_pgs: changed,
            moved_replicas: 0,
        }
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
        let serving = serving_members(cluster);
        let serving = |member: &Member| serving.binary_search(member).is_ok();
        for (pool, sets) in self.pools.iter_mut().zip(computed) {
            debug_assert_eq!(pool.pgs.len(), sets.len());
            let replicas = usize::from(pool.spec.replicas);
            for (placement, up) in pool.pgs.iter_mut().zip(sets) {
                let next = PgPlacement::new(up, &prepared, epoch)
                    .steered_from(placement, &serving, replicas);
                if placement.up != next.up
                    || placement.acting != next.acting
                    || placement.pending != next.pending
                {
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

    /// The first PG (pool, PG) whose up or acting set lists `node`: a node still listed may
    /// hold a copy some PG needs, so it cannot be forgotten.
    pub fn first_pg_listing(&self, node: NodeId) -> Option<(PoolId, PgId)> {
        self.pools.iter().find_map(|pool| {
            (0u32..).zip(&pool.pgs).find_map(|(index, placement)| {
                let listed = placement.up.iter().chain(&placement.acting);
                listed
                    .into_iter()
                    .any(|member| member.node == node)
                    .then_some((pool.spec.id, PgId(index)))
            })
        })
    }

    /// Checks the map's structure: valid specs, one placement per PG, each PG's sets well
    /// formed (`placement_is_valid`). Run after decoding a
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
                if !placement_is_valid(placement, usize::from(spec.replicas), self.epoch) {
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

/// One PG's structure: an up set of at most `replicas` distinct nodes; an acting set of distinct
/// nodes, bounded, whose members after the primary that are in the up set keep its order; a
/// settled acting set is exactly a sub-sequence of the up set; no `since` after the epoch.
fn placement_is_valid(placement: &PgPlacement, replicas: usize, epoch: Epoch) -> bool {
    let distinct = |set: &[Member]| {
        let mut nodes: Vec<NodeId> = set.iter().map(|m| m.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.len() == set.len()
    };
    let in_up_order = |set: &[Member]| {
        let mut up_rest = placement.up.iter();
        set.iter().all(|member| up_rest.any(|m| m == member))
    };
    let followers: Vec<Member> = placement
        .acting
        .iter()
        .skip(1)
        .filter(|m| placement.up.contains(m))
        .copied()
        .collect();
    let shape_ok = if placement.pending {
        placement.acting.len() <= replicas + ACTING_EXTRA_MAX.min(replicas)
            && in_up_order(&followers)
    } else {
        in_up_order(&placement.acting)
    };
    placement.up.len() <= replicas
        && distinct(&placement.up)
        && distinct(&placement.acting)
        && shape_ok
        && placement.since <= epoch
}
