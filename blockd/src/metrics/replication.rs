//! Replication metrics, read at scrape time: PG states from the placement map and the node
//! states, refined by this node's own engines (the PGs it leads that are peering or
//! recovering), recovery progress from the replication service's stats, scrub progress, and
//! the replica write latency the peer transport measures.
//!
//! A PG's state comes from [`basalt::api::classify_pg`], the function the API's `GET /v1/pgs`
//! uses: the map's acting set decides `active` / `degraded` / `inactive`, and for the PGs this
//! node leads its engine refines that to `peering`, `recovering` or `backfilling` (the API
//! asks every node for its PGs; a scrape only knows this node's). Scrub figures are this node's
//! passes over the PGs it leads; before its first pass the last completed scrub is the
//! cluster's creation time.

use std::collections::BTreeMap;

use basalt::api::{ClusterReports, pg_state_of};
use basalt::ids::NodeId;
use basalt::meta::MetaState;
use basalt::placement::PoolId;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;

use super::cluster::ClusterSnapshot;
use super::{encode_counter, encode_gauge, encode_gauges};
use crate::peer::PeerStats;

/// A PG state as counted: the API's.
pub use basalt::api::PgStatus as PgState;

/// Every PG state a gauge exists for.
pub const PG_STATES: [PgState; 6] = PgState::ALL;

/// Labels of the PG-state gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PgStateLabels {
    /// The pool id.
    pub pool: String,
    /// The PG state.
    pub state: &'static str,
}

/// PGs per pool and state, every state present (at zero) for every pool of the map.
/// `reports` holds what is known of the primaries' engines (a scrape: this node's own).
pub fn pg_states(state: &MetaState, reports: &ClusterReports) -> BTreeMap<(PoolId, PgState), u64> {
    let mut counts = BTreeMap::new();
    for pool in state.map().pools() {
        let spec = pool.spec();
        for s in PG_STATES {
            counts.insert((spec.id, s), 0);
        }
        for (index, pg) in (0u32..).zip(pool.pgs()) {
            let (s, _, _) = pg_state_of(pool, index, pg, reports);
            *counts.entry((spec.id, s)).or_default() += 1;
        }
    }
    counts
}

/// This node's own report as the only one known (what a scrape can see without asking peers).
fn local_reports(snapshot: &ClusterSnapshot) -> ClusterReports {
    let mut reports = ClusterReports::default();
    reports.add(
        snapshot
            .replication
            .pg_report(NodeId(snapshot.raft.node_id)),
    );
    reports
}

/// Encodes the PG-state gauges.
fn encode_pg_states(
    encoder: &mut DescriptorEncoder,
    snapshot: &ClusterSnapshot,
) -> Result<(), std::fmt::Error> {
    let pgs = pg_states(&snapshot.state, &local_reports(snapshot))
        .into_iter()
        .map(|((pool, s), count)| {
            let labels = PgStateLabels {
                pool: pool.0.to_string(),
                state: s.label(),
            };
            (labels, count)
        })
        .collect();
    encode_gauges(
        encoder,
        "pgs",
        "PGs per pool and state (this node's view of the cluster)",
        pgs,
    )
}

/// Encodes this node's scrub and read repair figures.
fn encode_scrub(
    encoder: &mut DescriptorEncoder,
    snapshot: &ClusterSnapshot,
) -> Result<(), std::fmt::Error> {
    let scrub = &snapshot.replication.scrub;
    let (done, total) = scrub.progress;
    encode_gauge(
        encoder,
        "scrub_progress_ratio",
        "Fraction of this node's current scrub pass done (0 between passes)",
        if total == 0 {
            0.0
        } else {
            done as f64 / total as f64
        },
    )?;
    let counters: [(&str, &str, u64); 6] = [
        (
            "scrub_chunks",
            "Chunks scrubbed by this node (every copy compared)",
            scrub.total.chunks,
        ),
        (
            "scrub_blocks",
            "Allocated blocks read and verified by this node's scrubs",
            scrub.total.blocks,
        ),
        (
            "scrub_errors",
            "Bad block copies (corrupt or differing) found by this node's scrubs",
            scrub.total.errors,
        ),
        (
            "scrub_repairs",
            "Block copies rewritten by this node's scrubs",
            scrub.total.repairs,
        ),
        (
            "read_repairs",
            "Blocks this node rewrote after a client read met them corrupt",
            scrub.read_repairs,
        ),
        (
            "read_repaired_reads",
            "Client reads this node answered from another member (local copy corrupt)",
            scrub.reads_repaired,
        ),
    ];
    for (name, help, value) in counters {
        encode_counter(encoder, name, help, value)?;
    }
    let created_ms = snapshot.state.cluster().map_or(0, |c| c.created_unix_ms);
    let last_ms = scrub.last.map_or(created_ms, |(at, _)| at.max(created_ms));
    encode_gauge(
        encoder,
        "scrub_last_completed_timestamp_seconds",
        "When this node last completed a scrub pass of the PGs it leads (Unix time; the \
         cluster's creation before the first pass)",
        last_ms as f64 / 1000.0,
    )?;
    Ok(())
}

/// Encodes the replication families of `snapshot`.
pub fn encode(
    encoder: &mut DescriptorEncoder,
    snapshot: &ClusterSnapshot,
    peers: &PeerStats,
) -> Result<(), std::fmt::Error> {
    encode_pg_states(encoder, snapshot)?;
    let replication = &snapshot.replication;
    let remaining_objects = replication.remaining_chunks;
    let gauges: [(&str, &str, u64); 2] = [
        (
            "recovery_remaining_bytes",
            "Allocated bytes of the chunks this node's primaries still have to copy in their \
             current recovery passes",
            replication.remaining_bytes,
        ),
        (
            "recovery_remaining_objects",
            "Chunks this node's primaries still have to copy in their current recovery passes",
            remaining_objects,
        ),
    ];
    for (name, help, value) in gauges {
        encode_gauge(encoder, name, help, value)?;
    }
    let counters: [(&str, &str, u64); 3] = [
        (
            "swept_chunks",
            "Chunks this node's sweep deleted (of deleted volumes, or copies no PG needs here)",
            replication.swept_chunks,
        ),
        (
            "recovery_bytes",
            "Bytes copied by this node's peering and recovery",
            replication.recovered_bytes,
        ),
        (
            "recovery_objects",
            "Chunks copied or deleted by this node's peering and recovery",
            replication.recovered_chunks,
        ),
    ];
    for (name, help, value) in counters {
        encode_counter(encoder, name, help, value)?;
    }
    encode_scrub(encoder, snapshot)?;
    let metric = encoder.encode_descriptor(
        "replica_write_latency_seconds",
        "Latency of a write, trim or zero copy sent to one replica, until its answer",
        None,
        MetricType::Histogram,
    )?;
    peers.replicate_latency.encode(metric)
}

#[cfg(test)]
pub(crate) mod tests {
    use basalt::api::{MemberRecovery, NodePgReport, PgEngineState, PgReport};
    use basalt::ids::{ClusterId, DriveId};
    use basalt::meta::{Command, CommandKind, DriveInfo, NodeAddresses, NodeRole};

    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn apply(state: &mut MetaState, now: u64, kind: CommandKind) {
        let result = state.apply(&Command::new(now, kind));
        assert!(result.is_ok(), "{result:?}");
    }

    /// Three registered nodes, 8 PGs of 3 replicas, `min_size` 2.
    pub(crate) fn cluster() -> MetaState {
        let mut state = MetaState::new();
        let init = CommandKind::InitCluster {
            cluster_id: ClusterId(uuid::Uuid::from_bytes([1; 16])),
            chunk_size_bytes: 4 << 20,
            pg_count: 8,
            default_replicas: 3,
            min_size: 2,
        };
        apply(&mut state, T0, init);
        for node in 1..=3u64 {
            let register = CommandKind::RegisterNode {
                node: NodeId(node),
                addresses: NodeAddresses {
                    peer: format!("127.0.0.{node}:9641"),
                    api: format!("127.0.0.{node}:9640"),
                    nbd: None,
                },
                zone: None,
                role: NodeRole::Voter,
                drives: vec![DriveInfo {
                    id: DriveId(uuid::Uuid::from_bytes([node as u8; 16])),
                    capacity_bytes: 1 << 30,
                }],
            };
            apply(&mut state, T0 + node, register);
        }
        state
    }

    fn count(state: &MetaState, s: PgState) -> u64 {
        pg_states(state, &ClusterReports::default())
            .iter()
            .filter(|((_, state), _)| *state == s)
            .map(|(_, n)| n)
            .sum()
    }

    /// Goal: every PG is active with all nodes up, degraded with one of three down, inactive
    /// with two down; every state has a (zero) entry, so every gauge has a series.
    #[test]
    fn pg_states_follow_node_states() {
        let mut state = cluster();
        assert_eq!(count(&state, PgState::Active), 8);
        assert_eq!(
            pg_states(&state, &ClusterReports::default()).len(),
            PG_STATES.len()
        );
        apply(
            &mut state,
            T0 + 10,
            CommandKind::MarkNodeDown { node: NodeId(3) },
        );
        assert_eq!(count(&state, PgState::Active), 0);
        assert_eq!(count(&state, PgState::Degraded), 8);
        apply(
            &mut state,
            T0 + 20,
            CommandKind::MarkNodeDown { node: NodeId(2) },
        );
        assert_eq!(count(&state, PgState::Inactive), 8);
        assert_eq!(count(&state, PgState::Peering), 0);
    }

    /// Goal: the PGs a node leads count as its engines report them (peering, recovering,
    /// backfilling); a report by a node that is not the PG's primary, or a replica's, leaves
    /// the map's answer.
    #[test]
    fn primary_reports_refine_pg_states() {
        let state = cluster();
        let pool = state.map().pools().first().expect("a pool");
        let primary = |pg: usize| pool.pgs()[pg].primary().expect("a primary").node;
        let report = |pg: u32, engine, recovery| PgReport {
            pool: pool.spec().id.0,
            pg,
            engine,
            recovery,
        };
        let member = |backfill| MemberRecovery {
            node: 9,
            objects: 3,
            bytes: 300,
            backfill,
        };
        let mut by_node: BTreeMap<NodeId, Vec<PgReport>> = BTreeMap::new();
        let mut add = |node: NodeId, pg| by_node.entry(node).or_default().push(pg);
        add(primary(0), report(0, PgEngineState::Peering, vec![]));
        add(
            primary(1),
            report(1, PgEngineState::Recovering, vec![member(false)]),
        );
        add(
            primary(2),
            report(2, PgEngineState::Recovering, vec![member(true)]),
        );
        add(primary(3), report(3, PgEngineState::Replica, vec![]));
        // Not the primary of PG 4: ignored.
        let other = NodeId(primary(4).0 % 3 + 1);
        add(other, report(4, PgEngineState::Peering, vec![]));
        let mut reports = ClusterReports::default();
        for (node, pgs) in by_node {
            reports.add(NodePgReport {
                node: node.0,
                pgs,
                recovered_bytes: 0,
                recovered_objects: 0,
            });
        }
        let id = pool.spec().id;
        let counts = pg_states(&state, &reports);
        assert_eq!(counts[&(id, PgState::Peering)], 1);
        assert_eq!(counts[&(id, PgState::Recovering)], 1);
        assert_eq!(counts[&(id, PgState::Backfilling)], 1);
        assert_eq!(counts[&(id, PgState::Active)], 5);
    }
}
