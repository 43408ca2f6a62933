//! Node commands: registration, heartbeats, and the up → down → out lifecycle.
//!
//! Every change that matters to placement builds the new node table aside, moves the map to it
//! (`PlacementMap::update`, all-or-nothing), and only then commits both, so a refused change
//! (e.g. marking out a node a pool cannot do without) leaves nodes and map as they were.
//!
//! Map rules (issue 3 §5, `docs/placement.md`): down → the node leaves its PGs' acting sets,
//! order of the rest kept, nothing moves; up (from down) → it rejoins exactly its old PGs; out →
//! its replicas are reassigned, survivors stay in place; up from out → it counts as a changed
//! node and takes back the PGs the placement computes for it (backfilled by recovery).

use super::command::SETTLE_BATCH_MAX;
use super::outcome::{CommandResult, MetaError, Outcome};
use super::state::MetaState;
use super::types::{ClusterInfo, DriveInfo, NodeAddresses, NodeRecord, NodeRole, is_valid_name};
use crate::config::is_host_port;
use crate::ids::{Epoch, NodeId, PgId};
use crate::placement::{
    ClusterDescription, DRIVES_PER_NODE_MAX, DriveDescription, NODES_MAX, NodeDescription,
    NodeState, PoolId, PoolSpec, WEIGHT_MAX, ZONE_NAME_LENGTH_MAX, failure_domains,
};
use std::collections::BTreeMap;

/// Longest address string a node may register, in bytes (a DNS name is at most 253).
pub const ADDRESS_LENGTH_MAX: usize = 260;

/// Bytes per unit of placement weight: drives are weighed in MiB (`docs/placement.md`).
const WEIGHT_UNIT_BYTES: u64 = 1 << 20;

impl MetaState {
    pub(super) fn register_node(
        &mut self,
        node: NodeId,
        addresses: &NodeAddresses,
        zone: &Option<String>,
        role: NodeRole,
        drives: &[DriveInfo],
    ) -> CommandResult {
        if self.removed_nodes.contains(&node) {
            return Err(MetaError::NodeRemoved { node });
        }
        self.check_registration(node, addresses, zone, drives)?;
        let now = self.clock_unix_ms;
        let mut sorted = drives.to_vec();
        sorted.sort_by_key(|drive| drive.id);
        let mut nodes = self.nodes.clone();
        let record = nodes.entry(node).or_insert_with(|| NodeRecord {
            id: node,
            addresses: addresses.clone(),
            zone: zone.clone(),
            role,
            drives: Vec::new(),
            state: NodeState::Up,
            out_by_operator: false,
            state_since_unix_ms: now,
            last_heartbeat_unix_ms: now,
            registered_unix_ms: now,
        });
        let before = record.clone();
        record.addresses = addresses.clone();
        record.zone = zone.clone();
        record.role = role;
        record.drives = sorted;
        let changed = *record != before || !self.nodes.contains_key(&node);
        self.commit_nodes(nodes)?;
        Ok(self.node_outcome(node, changed))
    }

    /// Range checks of a registration, before anything is touched.
    fn check_registration(
        &self,
        node: NodeId,
        addresses: &NodeAddresses,
        zone: &Option<String>,
        drives: &[DriveInfo],
    ) -> Result<(), MetaError> {
        let invalid = |reason: &str| {
            Err(MetaError::InvalidNode {
                node,
                reason: reason.to_owned(),
            })
        };
        let address_ok =
            |address: &str| address.len() <= ADDRESS_LENGTH_MAX && is_host_port(address);
        if node.0 == 0 {
            return invalid("node id 0 is reserved");
        }
        if !self.nodes.contains_key(&node) && self.nodes.len() >= NODES_MAX {
            return invalid("the cluster is at its node limit");
        }
        if zone
            .as_ref()
            .is_some_and(|z| !is_valid_name(z) || z.len() > ZONE_NAME_LENGTH_MAX)
        {
            return invalid("zone must match [a-z0-9][a-z0-9._-]{0,62}");
        }
        let nbd_ok = addresses.nbd.as_deref().is_none_or(address_ok);
        if !address_ok(&addresses.peer) || !address_ok(&addresses.api) || !nbd_ok {
            return invalid("addresses must be host:port");
        }
        if drives.len() > DRIVES_PER_NODE_MAX {
            return invalid("too many drives");
        }
        let mut ids: Vec<_> = drives.iter().map(|drive| drive.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return invalid("a drive is listed twice");
        }
        for other in self.nodes.values().filter(|other| other.id != node) {
            if let Some(drive) = other
                .drives
                .iter()
                .find(|d| ids.binary_search(&d.id).is_ok())
            {
                return Err(MetaError::DriveInUse {
                    drive: drive.id,
                    owner: other.id,
                });
            }
        }
        Ok(())
    }

    pub(super) fn record_heartbeats(&mut self, beats: &[(NodeId, u64)]) -> CommandResult {
        if beats.len() > NODES_MAX {
            return Err(MetaError::CommandTooLarge {
                reason: format!("{} heartbeats, at most {NODES_MAX}", beats.len()),
            });
        }
        let mut recorded: u32 = 0;
        for (node, at_unix_ms) in beats {
            if let Some(record) = self.nodes.get_mut(node) {
                record.last_heartbeat_unix_ms = record.last_heartbeat_unix_ms.max(*at_unix_ms);
                recorded = recorded.saturating_add(1);
            }
        }
        Ok(Outcome::HeartbeatsRecorded { recorded })
    }

    pub(super) fn mark_down(&mut self, node: NodeId) -> CommandResult {
        let record = self
            .nodes
            .get(&node)
            .ok_or(MetaError::NodeNotFound { node })?;
        if record.state != NodeState::Up {
            return Ok(self.node_outcome(node, false));
        }
        self.change_state(node, NodeState::Down, false)
    }

    pub(super) fn mark_up(&mut self, node: NodeId) -> CommandResult {
        let record = self
            .nodes
            .get(&node)
            .ok_or(MetaError::NodeNotFound { node })?;
        if record.state == NodeState::Up {
            return Ok(self.node_outcome(node, false));
        }
        self.change_state(node, NodeState::Up, false)
    }

    /// Marks a node out. An operator's mark on a serving node starts a drain (`Draining`: it
    /// keeps serving until its PGs settled elsewhere); the detector's mark on a draining node
    /// (it stopped) finishes it, still pinned out by the operator.
    pub(super) fn mark_out(&mut self, node: NodeId, by_operator: bool) -> CommandResult {
        let record = self
            .nodes
            .get_mut(&node)
            .ok_or(MetaError::NodeNotFound { node })?;
        match record.state {
            NodeState::Out => {
                // Already out: an operator's mark still pins it out against the detector.
                let changed = by_operator && !record.out_by_operator;
                record.out_by_operator |= by_operator;
                Ok(self.node_outcome(node, changed))
            }
            NodeState::Draining if by_operator => Ok(self.node_outcome(node, false)),
            NodeState::Draining => self.change_state(node, NodeState::Out, true),
            NodeState::Up if by_operator => self.change_state(node, NodeState::Draining, true),
            NodeState::Up | NodeState::Down => self.change_state(node, NodeState::Out, by_operator),
        }
    }

    /// Forgets a node for good. Only an out node that no PG lists any more (drained, or its
    /// copies rebuilt elsewhere and settled) can go, so removing it neither moves a PG nor
    /// drops a copy some PG still needs. Its drives are free to register on another node.
    pub(super) fn remove_node(&mut self, node: NodeId) -> CommandResult {
        if self.removed_nodes.contains(&node) {
            return Ok(Outcome::NodeRemoved {
                node,
                removed: false,
            });
        }
        let record = self
            .nodes
            .get(&node)
            .ok_or(MetaError::NodeNotFound { node })?;
        let in_use = |reason: String| Err(MetaError::NodeInUse { node, reason });
        if record.state != NodeState::Out {
            return in_use(format!(
                "it is {:?}; drain it (`basalt node drain`), stop it, and wait until it is out",
                record.state
            ));
        }
        if let Some((pool, pg)) = self.map.first_pg_listing(node) {
            return in_use(format!(
                "{pool} pg {} still lists it; wait until its copies are rebuilt elsewhere",
                pg.0
            ));
        }
        let mut nodes = self.nodes.clone();
        nodes.remove(&node);
        self.commit_nodes(nodes)?;
        self.removed_nodes.insert(node);
        Ok(Outcome::NodeRemoved {
            node,
            removed: true,
        })
    }

    /// Whether settling the PG now would change the map (see `PlacementMap::would_settle`):
    /// nodes propose only reports that would, so a PG whose new member is down does not turn
    /// into an empty log entry every retry.
    pub fn settle_would_change(&self, pool: PoolId, pg: PgId, since: Epoch) -> bool {
        self.map
            .would_settle(pool, pg, since, &describe(&self.nodes))
    }

    /// Settles the PGs whose primaries reported every member in sync (see
    /// `PlacementMap::settle_all`); stale reports are skipped.
    pub(super) fn settle_pgs(&mut self, pgs: &[(PoolId, PgId, Epoch)]) -> CommandResult {
        if pgs.len() > SETTLE_BATCH_MAX {
            return Err(MetaError::CommandTooLarge {
                reason: format!("{} PG reports (most {SETTLE_BATCH_MAX})", pgs.len()),
            });
        }
        let description = describe(&self.nodes);
        let update = self.map.settle_all(pgs, &description)?;
        Ok(Outcome::PgsSettled {
            settled: u32::try_from(update.changed_pgs).unwrap_or(u32::MAX),
            epoch: self.map.epoch(),
        })
    }

    /// Moves a node to `state` and the map with it, or refuses and changes nothing.
    fn change_state(&mut self, node: NodeId, state: NodeState, by_operator: bool) -> CommandResult {
        let now = self.clock_unix_ms;
        let mut nodes = self.nodes.clone();
        let Some(record) = nodes.get_mut(&node) else {
            return Err(MetaError::NodeNotFound { node });
        };
        debug_assert_ne!(record.state, state);
        record.state = state;
        record.state_since_unix_ms = now;
        record.out_by_operator =
            matches!(state, NodeState::Out | NodeState::Draining) && by_operator;
        if state == NodeState::Up {
            record.last_heartbeat_unix_ms = record.last_heartbeat_unix_ms.max(now);
        }
        self.commit_nodes(nodes)?;
        Ok(self.node_outcome(node, true))
    }

    /// Moves the map to `nodes`; on success stores `nodes` and creates the default pool once
    /// enough nodes exist. On error nothing changes.
    pub(super) fn commit_nodes(
        &mut self,
        nodes: BTreeMap<NodeId, NodeRecord>,
    ) -> Result<(), MetaError> {
        let description = describe(&nodes);
        self.map.update(&description)?;
        self.nodes = nodes;
        if let Some(cluster) = &self.cluster {
            let replicas = cluster.default_replicas;
            let spec = self.pool_spec(cluster, replicas);
            // Not enough nodes yet is normal while a cluster forms: the pool appears with the
            // node that makes it placeable.
            let _ = self.ensure_pool(spec, &description);
        }
        Ok(())
    }

    /// The spec of the pool for `replicas` (one pool per replica count).
    pub(super) fn pool_spec(&self, cluster: &ClusterInfo, replicas: u8) -> PoolSpec {
        PoolSpec {
            id: ClusterInfo::pool_for(replicas),
            pg_count: cluster.pg_count,
            replicas,
            min_size: cluster.min_size.min(replicas),
        }
    }

    /// Adds `spec`'s pool to the map unless it exists.
    pub(super) fn ensure_pool(
        &mut self,
        spec: PoolSpec,
        description: &ClusterDescription,
    ) -> Result<(), MetaError> {
        if self.map.pool(spec.id).is_some() {
            return Ok(());
        }
        let available = failure_domains(description)?.nodes;
        if available < usize::from(spec.replicas) {
            return Err(MetaError::TooManyReplicas {
                replicas: spec.replicas,
                available,
            });
        }
        self.map.add_pool(spec, description)?;
        Ok(())
    }

    /// The cluster as placement sees it.
    pub(super) fn description(&self) -> ClusterDescription {
        describe(&self.nodes)
    }

    fn node_outcome(&self, node: NodeId, changed: bool) -> Outcome {
        let state = self
            .nodes
            .get(&node)
            .map_or(NodeState::Out, |record| record.state);
        Outcome::Node {
            node,
            state,
            changed,
            epoch: self.map.epoch(),
        }
    }
}

/// Placement's view of a node table: drives weighed by capacity in MiB.
fn describe(nodes: &BTreeMap<NodeId, NodeRecord>) -> ClusterDescription {
    let nodes = nodes
        .values()
        .map(|record| NodeDescription {
            id: record.id,
            zone: record.zone.clone(),
            state: record.state,
            drives: record
                .drives
                .iter()
                .map(|drive| DriveDescription {
                    id: drive.id,
                    weight: (drive.capacity_bytes / WEIGHT_UNIT_BYTES).min(WEIGHT_MAX),
                })
                .collect(),
        })
        .collect();
    ClusterDescription { nodes }
}
