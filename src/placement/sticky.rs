//! Steering a stored map towards the computed placement while moving as little as possible.
//!
//! # Why the previous map is an input
//! Pareto keys depend on every node's share of the weight, so with unequal weights any change of
//! the eligible set shifts every node's key a little and a few PGs that never held the changed
//! node would re-sort if the map were recomputed from scratch. Each moved replica is a backfill
//! of a whole PG, so [`next_up_set`] keeps the previous up set unless the change concerns it:
//! - a member that left (out, gone, or its drive gone) is replaced by the best-ranked node the
//!   failure-domain rounds admit, appended after the rest (it has no data, so it is not made
//!   primary); the other members and their order stay;
//! - a PG whose computed set or previous set holds a *changed* node (new, back from out,
//!   re-weighted, moved to another zone) adopts the computed set, keeping the members both share
//!   in their old order and appending the newcomers: that is how a new node receives data;
//! - anything else is left exactly as it was.
//!
//! Removing a node thus changes only the PGs that held it (one replica each), and adding one
//! changes only the PGs it enters. The price is that the map is a function of its history, not
//! of the cluster alone; it stays close to the computed placement because every PG that is
//! touched is steered to it (measured in the property tests and `docs/placement.md`).

use super::select::{Placer, Prepared};
use super::{DriveDescription, Member, PoolSpec};
use crate::ids::{NodeId, PgId};
use serde::{Deserialize, Serialize};

/// What placement knew about an eligible node when the map was last computed: a node whose
/// record differs (or that is new) is *changed* and may pull PGs towards it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct NodeBasis {
    pub(super) id: NodeId,
    pub(super) zone: Option<String>,
    pub(super) drives: Vec<DriveDescription>,
}

/// The basis of a prepared cluster, sorted by node id.
pub(super) fn basis_of(prepared: &Prepared) -> Vec<NodeBasis> {
    let basis: Vec<NodeBasis> = prepared
        .nodes
        .iter()
        .map(|node| NodeBasis {
            id: node.id,
            zone: node.zone.clone(),
            drives: node.drives.clone(),
        })
        .collect();
    debug_assert!(basis.windows(2).all(|pair| pair[0].id < pair[1].id));
    basis
}

/// Eligible nodes whose record is not in `previous` (new, back from out, changed weight or zone).
pub(super) fn changed_nodes(prepared: &Prepared, previous: &[NodeBasis]) -> Vec<NodeId> {
    let current = basis_of(prepared);
    let changed: Vec<NodeId> = current
        .into_iter()
        .filter(
            |node| match previous.binary_search_by_key(&node.id, |n| n.id) {
                Ok(index) => previous[index] != *node,
                Err(_) => true,
            },
        )
        .map(|node| node.id)
        .collect();
    debug_assert!(changed.windows(2).all(|pair| pair[0] < pair[1]));
    changed
}

/// Every PG's next up set for one pool, from the previous up sets (indexed by PG).
pub(super) fn next_up_sets(
    prepared: &Prepared,
    spec: &PoolSpec,
    previous: &[&[Member]],
    changed: &[NodeId],
) -> Vec<Vec<Member>> {
    assert_eq!(
        previous.len(),
        spec.pg_count as usize,
        "one previous set per PG"
    );
    let mut placer = Placer::new(prepared, usize::from(spec.replicas));
    let domains = prepared.domain_count();
    let sets: Vec<Vec<Member>> = (0..spec.pg_count)
        .zip(previous)
        .map(|(pg, prev)| {
            next_up_set(
                &mut placer,
                prepared,
                spec,
                PgId(pg),
                prev,
                changed,
                domains,
            )
        })
        .collect();
    debug_assert_eq!(sets.len(), previous.len());
    sets
}

/// One PG's next up set (see the module doc for the rules).
fn next_up_set(
    placer: &mut Placer<'_>,
    prepared: &Prepared,
    spec: &PoolSpec,
    pg: PgId,
    previous: &[Member],
    changed: &[NodeId],
    domains: usize,
) -> Vec<Member> {
    let kept: Vec<Member> = previous
        .iter()
        .filter(|member| {
            prepared
                .index_of(member.node)
                .is_some_and(|index| prepared.nodes[index].has_drive(member.drive))
        })
        .copied()
        .collect();
    let computed = placer.up_set(spec.id, pg);
    let is_changed = |member: &Member| changed.binary_search(&member.node).is_ok();
    let touched = computed.iter().chain(&kept).any(is_changed);
    let wanted = usize::from(spec.replicas).min(prepared.nodes.len());
    let next = if touched {
        adopt(&kept, &computed)
    } else if kept.len() < wanted {
        placer.fill(spec.id, pg, &kept)
    } else {
        kept
    };
    // Safety net: a kept set spread over fewer domains than the rounds would use is replaced.
    let next = if spread(prepared, &next) < domains.min(next.len()) {
        adopt(&next, &computed)
    } else {
        next
    };
    debug_assert!(next.len() <= usize::from(spec.replicas));
    next
}

/// The computed set's members, those already in `kept` first in their old order.
fn adopt(kept: &[Member], computed: &[Member]) -> Vec<Member> {
    let mut next: Vec<Member> = kept
        .iter()
        .filter(|m| computed.contains(m))
        .copied()
        .collect();
    let retained = next.len();
    next.extend(computed.iter().filter(|m| !kept.contains(m)).copied());
    debug_assert_eq!(next.len(), computed.len());
    debug_assert!(retained <= kept.len());
    next
}

/// Number of distinct failure domains a set uses.
fn spread(prepared: &Prepared, set: &[Member]) -> usize {
    let mut domains: Vec<u32> = set
        .iter()
        .filter_map(|member| prepared.index_of(member.node))
        .map(|index| prepared.nodes[index].domain)
        .collect();
    domains.sort_unstable();
    domains.dedup();
    domains.len()
}
