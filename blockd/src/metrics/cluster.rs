//! Cluster and metadata metrics, read at scrape time from one [`ClusterSnapshot`]: node
//! states and heartbeat ages, the map epoch, this node's Raft status, volumes; and the
//! replication section ([`super::replication`]) from the same snapshot.
//!
//! Every node reports the cluster-wide figures from its own copy of the replicated state, so
//! dashboards aggregate them with `max` (not `sum`) across nodes.

use std::sync::Arc;

use basalt::meta::MetaState;
use basalt::placement::NodeState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};

use super::{encode_gauge, encode_gauges};
use crate::meta::{MetaStatus, Role};
use crate::peer::PeerStats;
use crate::replication::ReplicationSnapshot;

/// Labels naming a node (the subject of the series, not the node reporting it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// The node id.
    pub node: String,
}

/// Labels of the node-state gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeStateLabels {
    /// The node id.
    pub node: String,
    /// `up`, `down` or `out`.
    pub state: &'static str,
}

/// Labels naming a volume.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeNameLabels {
    /// The volume name.
    pub volume: String,
}

/// What the collectors read in one scrape.
#[derive(Clone, Debug)]
pub struct ClusterSnapshot {
    /// This node's Raft status.
    pub raft: MetaStatus,
    /// This node's applied copy of the metadata state.
    pub state: Arc<MetaState>,
    /// The local clock (Unix ms), for heartbeat ages.
    pub now_unix_ms: u64,
    /// This node's PG engine states and recovery progress.
    pub replication: ReplicationSnapshot,
    /// The cluster's chunk size (recovery progress in bytes).
    pub chunk_size_bytes: u32,
}

/// Where the collector gets its snapshot: the node, or a test.
pub trait ClusterSource: Send + Sync + 'static {
    /// The state as of now.
    fn snapshot(&self) -> ClusterSnapshot;
}

/// Encodes the cluster, metadata and replication families at scrape time.
pub struct ClusterCollector {
    source: Arc<dyn ClusterSource>,
    peers: Arc<PeerStats>,
}

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCollector").finish_non_exhaustive()
    }
}

impl ClusterCollector {
    /// A collector over `source`; `peers` holds the replica write latency.
    pub fn new(source: Arc<dyn ClusterSource>, peers: Arc<PeerStats>) -> Self {
        Self { source, peers }
    }
}

fn state_label(state: NodeState) -> &'static str {
    match state {
        NodeState::Up => "up",
        NodeState::Down => "down",
        NodeState::Out => "out",
        NodeState::Draining => "draining",
    }
}

/// Encodes the node, volume and Raft families of `snapshot`.
pub fn encode_cluster(
    encoder: &mut DescriptorEncoder,
    snapshot: &ClusterSnapshot,
) -> Result<(), std::fmt::Error> {
    let state = &snapshot.state;
    let mut states = Vec::new();
    let mut ages = Vec::new();
    for (id, node) in state.nodes() {
        for s in [
            NodeState::Up,
            NodeState::Down,
            NodeState::Out,
            NodeState::Draining,
        ] {
            let labels = NodeStateLabels {
                node: id.0.to_string(),
                state: state_label(s),
            };
            states.push((labels, u64::from(node.state == s)));
        }
        let age_ms = snapshot
            .now_unix_ms
            .saturating_sub(node.last_heartbeat_unix_ms);
        let labels = NodeLabels {
            node: id.0.to_string(),
        };
        ages.push((labels, age_ms as f64 / 1000.0));
    }
    encode_gauges(
        encoder,
        "node_state",
        "1 for the state each node is in (up, down, out), 0 for the others",
        states,
    )?;
    encode_gauges(
        encoder,
        "node_heartbeat_age_seconds",
        "Time since the leader last recorded a heartbeat from each node (local clock)",
        ages,
    )?;
    encode_gauge(
        encoder,
        "map_epoch",
        "Epoch of the placement map",
        state.epoch().0,
    )?;
    let volumes = state
        .volumes()
        .values()
        .map(|v| {
            let labels = VolumeNameLabels {
                volume: v.name.clone(),
            };
            (labels, v.size_bytes)
        })
        .collect();
    encode_gauges(
        encoder,
        "volume_size_bytes",
        "Provisioned size of each volume",
        volumes,
    )?;
    encode_raft(encoder, &snapshot.raft)
}

fn encode_raft(encoder: &mut DescriptorEncoder, raft: &MetaStatus) -> Result<(), std::fmt::Error> {
    let is_leader = raft.role == Role::Leader;
    let families: [(&str, &str, u64); 7] = [
        ("raft_term", "This node's current Raft term", raft.term),
        (
            "raft_leader_id",
            "The Raft leader this node knows of (0: none)",
            raft.leader.unwrap_or(0),
        ),
        (
            "raft_has_leader",
            "1 if this node knows a Raft leader",
            u64::from(raft.leader.is_some()),
        ),
        (
            "raft_is_leader",
            "1 if this node is the Raft leader",
            u64::from(is_leader),
        ),
        (
            "raft_last_log_index",
            "Index of the last entry in this node's Raft log",
            raft.last_log_index.unwrap_or(0),
        ),
        (
            "raft_commit_index",
            "Highest Raft log index this node knows to be committed",
            raft.committed_index.unwrap_or(0),
        ),
        (
            "raft_applied_index",
            "Highest Raft log index applied to this node's metadata state",
            raft.applied_index.unwrap_or(0),
        ),
    ];
    for (name, help, value) in families {
        encode_gauge(encoder, name, help, value)?;
    }
    Ok(())
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.source.snapshot();
        encode_cluster(&mut encoder, &snapshot)?;
        super::replication::encode(&mut encoder, &snapshot, &self.peers)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metrics::encode_for_test;

    struct Fixed(ClusterSnapshot);

    impl ClusterSource for Fixed {
        fn snapshot(&self) -> ClusterSnapshot {
            self.0.clone()
        }
    }

    /// Goal: one scrape encodes node states (one 1 per node), heartbeat ages from the local
    /// clock, the map epoch, the Raft view and the replication section, without labels where
    /// a family has none.
    #[test]
    fn encodes_cluster_raft_and_replication() {
        let state = Arc::new(super::super::replication::tests::cluster());
        let heartbeat = state
            .node(basalt::ids::NodeId(2))
            .map_or(0, |n| n.last_heartbeat_unix_ms);
        let raft = MetaStatus {
            node_id: 1,
            role: Role::Leader,
            term: 4,
            leader: Some(1),
            leader_addr: None,
            last_log_index: Some(12),
            committed_index: Some(11),
            applied_index: Some(10),
            snapshot_index: None,
            purged_index: None,
            voters: BTreeMap::new(),
            learners: BTreeMap::new(),
        };
        let snapshot = ClusterSnapshot {
            raft,
            state,
            now_unix_ms: heartbeat + 1500,
            replication: ReplicationSnapshot::default(),
            chunk_size_bytes: 4 << 20,
        };
        let collector = ClusterCollector::new(Arc::new(Fixed(snapshot)), Arc::default());
        let text = encode_for_test(|registry| registry.register_collector(Box::new(collector)));
        for line in [
            r#"basalt_node_state{node="2",state="up"} 1"#,
            r#"basalt_node_state{node="2",state="down"} 0"#,
            r#"basalt_node_heartbeat_age_seconds{node="2"} 1.5"#,
            "basalt_map_epoch 1",
            "basalt_raft_term 4",
            "basalt_raft_is_leader 1",
            "basalt_raft_commit_index 11",
            "basalt_raft_applied_index 10",
            r#"basalt_pgs{pool="3",state="active"} 8"#,
            r#"basalt_pgs{pool="3",state="peering"} 0"#,
            "basalt_recovery_remaining_bytes 0",
            "basalt_scrub_repairs_total 0",
            "basalt_replica_write_latency_seconds_count 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }
}
