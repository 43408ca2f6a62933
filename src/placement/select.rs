//! One PG's acting set: Pareto order sampling over nodes, failure-domain rounds, then straw2
//! for the order of the chosen nodes and for the drive on each.
//!
//! # Why Pareto keys rather than plain straw2 for membership
//! Plain straw2 picks the first member with probability exactly `weight / total`, but taking the
//! best `k` is sampling without replacement, which over-represents light nodes: with 4–8 nodes
//! whose weights differ by 2×, the lightest hold up to ~20% more than their share (CRUSH's
//! "multi-pick anomaly"). Pareto order sampling (Rosén, 1997) ranks node `i` by
//! `odds(u_i) / odds(λ_i)`, where `u_i` is its uniform draw and `λ_i` its target inclusion
//! probability (`k × weight / total`, capped at 1 by water-filling); its inclusion
//! probabilities match the targets to within a percent or two. It is still rendezvous hashing:
//! a node's key depends only on its own draw and target, so equal-weight clusters keep every
//! minimal-movement property exactly. The cost with unequal weights: a membership change moves
//! every target slightly, so a few PGs that did not hold the changed node re-sort (see the
//! property tests for the measured bound).
//!
//! # Why straw2 for the order
//! Among the chosen nodes, the primary is the straw2 winner (an independent draw), so each node is
//! primary roughly in proportion to its weight even when it is in every PG (a capped target).
//!
//! # Why the draws are not one xxh3 each
//! A map costs `pg_count × nodes` draws and the metadata service recomputes it on every cluster
//! change. Each node's id and each PG's key are hashed once with xxh3; a draw mixes the two with
//! the splitmix64 finalizer (full avalanche, a few multiplications), about ten times cheaper.

use super::fixed::{log2_ratio, logit_of_hash, neglog};
use super::{
    ClusterDescription, DRAW_HASH_SEED, DriveDescription, Member, NodeDescription, NodeState,
    ORDER_HASH_SEED, PlacementError, PoolId,
};
use crate::ids::{DriveId, NodeId, PgId};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// An eligible node (not out, with weighted drives), drives filtered and sorted by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PreparedNode {
    pub(super) id: NodeId,
    pub(super) domain: u32,
    pub(super) zone: Option<String>,
    pub(super) down: bool,
    pub(super) weight: u64,
    pub(super) drives: Vec<DriveDescription>,
    /// xxh3 of the id under `DRAW_HASH_SEED`, mixed with each PG's key for membership draws.
    membership_hash: u64,
    /// xxh3 of the id under `ORDER_HASH_SEED`, for the primary-order draws.
    order_hash: u64,
}

impl PreparedNode {
    /// Whether `drive` is one of this node's weighted drives.
    pub(super) fn has_drive(&self, drive: DriveId) -> bool {
        self.drives.binary_search_by_key(&drive, |d| d.id).is_ok()
    }
}

/// The eligible nodes sorted by id, failure domains numbered: the input in canonical form.
pub(super) struct Prepared {
    pub(super) nodes: Vec<PreparedNode>,
}

/// A node's target inclusion probability as a sort key offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// Target 1: in every PG (while the failure domains allow).
    Always,
    /// Target 0: every slot is taken by nodes with target 1; used only as a fallback.
    Never,
    /// `log2(odds(λ))` in fixed point.
    Logit(i64),
}

/// Places the PGs of one pool: targets computed once, buffers reused across PGs.
pub(super) struct Placer<'a> {
    prepared: &'a Prepared,
    targets: Vec<Target>,
    replicas: usize,
    keyed: Vec<(i64, usize)>,
    chosen: Vec<usize>,
    domain_counts: Vec<(u32, u8)>,
}

impl Prepared {
    /// Validates the description and puts it in canonical form (sorted by id).
    pub(super) fn new(cluster: &ClusterDescription) -> Result<Self, PlacementError> {
        super::validate_cluster(cluster)?;
        let mut sorted: Vec<&NodeDescription> = cluster.nodes.iter().collect();
        sorted.sort_by_key(|node| node.id);
        let zone_names: BTreeSet<&str> = sorted
            .iter()
            .filter_map(|node| node.zone.as_deref())
            .collect();
        let zones: BTreeMap<&str, u32> = zone_names.into_iter().zip(0u32..).collect();
        let zone_count = zones.len() as u32;
        let mut nodes = Vec::with_capacity(sorted.len());
        for (index, node) in (0u32..).zip(sorted) {
            let mut drives: Vec<DriveDescription> = node
                .drives
                .iter()
                .filter(|drive| drive.weight > 0)
                .cloned()
                .collect();
            drives.sort_by_key(|drive| drive.id);
            let weight: u64 = drives.iter().map(|drive| drive.weight).sum();
            if matches!(node.state, NodeState::Out | NodeState::Draining) || weight == 0 {
                continue;
            }
            let domain = match node.zone.as_deref() {
                Some(zone) => zones.get(zone).copied().unwrap_or(0),
                None => zone_count + index,
            };
            let id_bytes = node.id.0.to_le_bytes();
            nodes.push(PreparedNode {
                id: node.id,
                domain,
                zone: node.zone.clone(),
                down: node.state == NodeState::Down,
                weight,
                drives,
                membership_hash: xxh3_64_with_seed(&id_bytes, DRAW_HASH_SEED),
                order_hash: xxh3_64_with_seed(&id_bytes, ORDER_HASH_SEED),
            });
        }
        debug_assert!(nodes.windows(2).all(|pair| pair[0].id < pair[1].id));
        Ok(Self { nodes })
    }

    /// The index of an eligible node, `None` if it is out or absent.
    pub(super) fn index_of(&self, node: NodeId) -> Option<usize> {
        self.nodes.binary_search_by_key(&node, |n| n.id).ok()
    }

    /// Number of distinct failure domains among the eligible nodes.
    pub(super) fn domain_count(&self) -> usize {
        let domains: BTreeSet<u32> = self.nodes.iter().map(|node| node.domain).collect();
        domains.len()
    }
}

impl<'a> Placer<'a> {
    /// Computes the nodes' targets for `replicas`.
    pub(super) fn new(prepared: &'a Prepared, replicas: usize) -> Self {
        assert!(replicas >= 1, "a pool has at least one replica");
        let targets = water_fill(prepared, replicas);
        debug_assert_eq!(targets.len(), prepared.nodes.len());
        Self {
            prepared,
            targets,
            replicas,
            keyed: Vec::with_capacity(prepared.nodes.len()),
            chosen: Vec::with_capacity(replicas),
            domain_counts: Vec::with_capacity(replicas),
        }
    }

    /// One PG's up set from scratch (down nodes included), primary first by straw2.
    pub(super) fn up_set(&mut self, pool: PoolId, pg: PgId) -> Vec<Member> {
        let key = pg_key(pool, pg);
        self.rank(key);
        self.choose(&[]);
        let nodes = &self.prepared.nodes;
        let mut ordered: Vec<(u64, usize)> = self
            .chosen
            .iter()
            .map(|&index| (neglog(mix(key, nodes[index].order_hash)), index))
            .collect();
        ordered.sort_unstable_by(|a, b| compare_straws(*a, *b, nodes));
        let set: Vec<Member> = ordered
            .iter()
            .map(|&(_, index)| member_on(key, &nodes[index]))
            .collect();
        debug_assert!(set.len() <= self.replicas);
        set
    }

    /// Completes `kept` (eligible members, distinct nodes, in order) to `replicas` members with
    /// the best-ranked nodes the failure-domain rounds admit, appended after the kept ones: a
    /// replacement has no data yet, so it should not become the primary.
    pub(super) fn fill(&mut self, pool: PoolId, pg: PgId, kept: &[Member]) -> Vec<Member> {
        let key = pg_key(pool, pg);
        let seed: Vec<usize> = kept
            .iter()
            .filter_map(|member| self.prepared.index_of(member.node))
            .collect();
        assert_eq!(seed.len(), kept.len(), "kept members must be eligible");
        self.rank(key);
        self.choose(&seed);
        let nodes = &self.prepared.nodes;
        let mut set = kept.to_vec();
        set.extend(
            self.chosen[seed.len()..]
                .iter()
                .map(|&index| member_on(key, &nodes[index])),
        );
        debug_assert!(set.len() <= self.replicas && set.len() >= kept.len());
        set
    }

    /// Sorts the eligible nodes into `keyed` by their Pareto keys for this PG, best first.
    fn rank(&mut self, key: u64) {
        let nodes = &self.prepared.nodes;
        self.keyed.clear();
        for (index, (node, target)) in nodes.iter().zip(&self.targets).enumerate() {
            let sort_key = match *target {
                Target::Always => i64::MIN,
                Target::Never => i64::MAX,
                Target::Logit(logit) => logit_of_hash(mix(key, node.membership_hash)) - logit,
            };
            self.keyed.push((sort_key, index));
        }
        self.keyed.sort_unstable();
        debug_assert_eq!(self.keyed.len(), nodes.len());
    }

    /// Picks up to `replicas` nodes from `keyed` (best first) into `chosen`, after `seed`, in
    /// rounds that admit a node only while its failure domain holds at most `round` of the
    /// chosen: every domain is used once before any is used twice.
    fn choose(&mut self, seed: &[usize]) {
        self.chosen.clear();
        self.domain_counts.clear();
        for &index in seed {
            self.chosen.push(index);
            self.count_domain(self.prepared.nodes[index].domain);
        }
        let wanted = self.replicas.min(self.keyed.len()).max(seed.len());
        let mut round = 0u8;
        while self.chosen.len() < wanted {
            assert!(
                usize::from(round) <= self.replicas,
                "round {round} chose nothing"
            );
            for position in 0..self.keyed.len() {
                let index = self.keyed[position].1;
                if self.chosen.len() == wanted {
                    break;
                }
                if self.chosen.contains(&index) {
                    continue;
                }
                let domain = self.prepared.nodes[index].domain;
                if self.domain_used(domain) <= round {
                    self.count_domain(domain);
                    self.chosen.push(index);
                }
            }
            round += 1;
        }
    }

    fn domain_used(&self, domain: u32) -> u8 {
        self.domain_counts
            .iter()
            .find(|(d, _)| *d == domain)
            .map_or(0, |(_, count)| *count)
    }

    fn count_domain(&mut self, domain: u32) {
        match self.domain_counts.iter_mut().find(|(d, _)| *d == domain) {
            Some((_, count)) => *count += 1,
            None => self.domain_counts.push((domain, 1)),
        }
    }
}

/// Target inclusion probabilities `λ_i = k × w_i / W`, capped at 1 by water-filling: a node
/// whose share reaches 1 is in every PG, and the remaining slots are shared by the rest in
/// proportion to weight. Exact integer comparisons decide the caps.
fn water_fill(prepared: &Prepared, replicas: usize) -> Vec<Target> {
    let nodes = &prepared.nodes;
    let mut capped = vec![false; nodes.len()];
    loop {
        let slots = (replicas - capped.iter().filter(|c| **c).count()) as u64;
        let remaining: u64 = nodes
            .iter()
            .zip(&capped)
            .filter(|(_, c)| !**c)
            .map(|(n, _)| n.weight)
            .sum();
        let mut newly = false;
        for (node, capped) in nodes.iter().zip(capped.iter_mut()) {
            if !*capped && slots > 0 && slots * node.weight >= remaining {
                *capped = true;
                newly = true;
            }
        }
        if newly {
            continue;
        }
        let targets: Vec<Target> = nodes
            .iter()
            .zip(&capped)
            .map(|(node, capped)| match (*capped, slots) {
                (true, _) => Target::Always,
                (false, 0) => Target::Never,
                // slots × w < remaining here, so both sides of the ratio are at least 1.
                (false, _) => Target::Logit(log2_ratio(
                    slots * node.weight,
                    remaining - slots * node.weight,
                )),
            })
            .collect();
        debug_assert!(targets.iter().filter(|t| **t == Target::Always).count() <= replicas);
        return targets;
    }
}

/// Straw2 order, best first: `a.neglog / a.weight < b.neglog / b.weight`, compared exactly by
/// cross-multiplying; ties go to the lower node (index order is id order).
fn compare_straws(a: (u64, usize), b: (u64, usize), nodes: &[PreparedNode]) -> Ordering {
    let left = u128::from(a.0) * u128::from(nodes[b.1].weight);
    let right = u128::from(b.0) * u128::from(nodes[a.1].weight);
    left.cmp(&right).then(a.1.cmp(&b.1))
}

/// Straw2 over one node's drives (sorted by id, all weighted): exact for a single pick.
fn choose_drive(key: u64, drives: &[DriveDescription]) -> DriveId {
    assert!(!drives.is_empty(), "an eligible node has a weighted drive");
    let mut best = &drives[0];
    let mut best_neglog = neglog(draw_drive(key, best.id));
    for drive in &drives[1..] {
        let value = neglog(draw_drive(key, drive.id));
        let left = u128::from(value) * u128::from(best.weight);
        // Strictly better only: on a tie the earlier (lower) id stays.
        if left < u128::from(best_neglog) * u128::from(drive.weight) {
            best = drive;
            best_neglog = value;
        }
    }
    best.id
}

/// The member a chosen node contributes: the node and its straw2 drive for this PG.
fn member_on(key: u64, node: &PreparedNode) -> Member {
    Member {
        node: node.id,
        drive: choose_drive(key, &node.drives),
    }
}

/// The PG's identity in draws: different pools place independently. Hashed once per PG.
fn pg_key(pool: PoolId, pg: PgId) -> u64 {
    let raw = (u64::from(pool.0) << 32) | u64::from(pg.0);
    xxh3_64_with_seed(&raw.to_le_bytes(), DRAW_HASH_SEED)
}

fn draw_drive(key: u64, drive: DriveId) -> u64 {
    mix(key, xxh3_64_with_seed(drive.0.as_bytes(), DRAW_HASH_SEED))
}

/// One draw for (PG, item) from their xxh3 hashes: the splitmix64 finalizer of their xor.
fn mix(pg_hash: u64, item_hash: u64) -> u64 {
    let mut z = pg_hash ^ item_hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
