//! Replication metrics, read at scrape time: PG states from the placement map and the node
//! states, refined by this node's own engines (the PGs it leads that are peering or
//! recovering), recovery progress from the replication service's stats, scrub progress, and
//! the replica write latency the peer transport measures.
//!
//! A PG is `active` when every member of its up set is on an up node, `degraded` when at
//! least the pool's `min_size` are, `inactive` below that (its I/O blocks); a PG this node
//! leads counts as `peering` or `recovering` while its engine is. Backfill does not exist yet:
//! its figures are reported at zero. Scrub figures are this node's passes over the PGs it
//! leads; before its first pass the last completed scrub is the cluster's creation time.

use std::collections::{BTreeMap, HashMap};

use basalt::ids::PgId;
use basalt::meta::MetaState;
use basalt::placement::{NodeState, PoolId};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;

use super::cluster::ClusterSnapshot;
use super::{encode_counter, encode_gauge, encode_gauges};
use crate::peer::PeerStats;
use crate::replication::{PgKey, PgState as EngineState};

/// Every PG state a gauge exists for.
pub const PG_STATES: [PgState; 6] = [
    PgState::Active,
    PgState::Degraded,
    PgState::Peering,
    PgState::Recovering,
    PgState::Backfilling,
    PgState::Inactive,
];

/// A PG state as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PgState {
    /// Every member up.
    Active,
    /// At least `min_size` members up.
    Degraded,
    /// A new primary of this node agreeing with the members on the PG's history.
    Peering,
    /// A primary of this node copying missed writes to a member.
    Recovering,
    /// A new member being filled (not reported yet: always 0).
    Backfilling,
    /// Fewer than `min_size` members up: I/O blocks.
    Inactive,
}

impl PgState {
    /// The `state` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Degraded => "degraded",
            Self::Peering => "peering",
            Self::Recovering => "recovering",
            Self::Backfilling => "backfilling",
            Self::Inactive => "inactive",
        }
    }
}

/// Labels of the PG-state gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PgStateLabels {
    /// The pool id.
    pub pool: String,
    /// The PG state.
    pub state: &'static str,
}

/// PGs per pool and state, every state present (at zero) for every pool of the map. `local`
/// is this node's engines' states: a PG it leads that is peering or recovering counts so.
pub fn pg_states(
    state: &MetaState,
    local: &[(PgKey, EngineState)],
) -> BTreeMap<(PoolId, PgState), u64> {
    let engines: HashMap<(PoolId, PgId), EngineState> = local
        .iter()
        .map(|(key, state)| ((key.pool, key.pg), *state))
        .collect();
    let mut counts = BTreeMap::new();
    for pool in state.map().pools() {
        let spec = pool.spec();
        for s in PG_STATES {
            counts.insert((spec.id, s), 0);
        }
        for (index, pg) in pool.pgs().iter().enumerate() {
            let id = PgId(u32::try_from(index).unwrap_or(u32::MAX));
            match engines.get(&(spec.id, id)) {
                Some(EngineState::Peering) => {
                    *counts.entry((spec.id, PgState::Peering)).or_default() += 1;
                    continue;
                }
                Some(EngineState::Recovering) => {
                    *counts.entry((spec.id, PgState::Recovering)).or_default() += 1;
                    continue;
                }
                _ => {}
            }
            let up = pg
                .up()
                .iter()
                .filter(|m| state.node(m.node).is_some_and(|n| n.state == NodeState::Up))
                .count();
            let s = if up >= usize::from(spec.replicas) {
                PgState::Active
            } else if up >= usize::from(spec.min_size) {
                PgState::Degraded
            } else {
                PgState::Inactive
            };
            *counts.entry((spec.id, s)).or_default() += 1;
        }
    }
    counts
}

/// Encodes the PG-state gauges.
fn encode_pg_states(
    encoder: &mut DescriptorEncoder,
    snapshot: &ClusterSnapshot,
) -> Result<(), std::fmt::Error> {
    let pgs = pg_states(&snapshot.state, &snapshot.replication.states)
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
            "Bytes this node's primaries still have to copy in their current recovery passes \
             (at most a chunk each)",
            remaining_objects * u64::from(snapshot.chunk_size_bytes),
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
    let counters: [(&str, &str, u64); 2] = [
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
    use basalt::ids::{ClusterId, DriveId, NodeId};
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
        pg_states(state, &[])
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
        assert_eq!(pg_states(&state, &[]).len(), PG_STATES.len());
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

    /// Goal: PGs this node's engines are peering or recovering count in those states instead
    /// of the state the map alone gives; other engine states leave the map's answer.
    #[test]
    fn local_engines_refine_pg_states() {
        let state = cluster();
        let pool = state
            .map()
            .pools()
            .first()
            .map(|p| p.spec().id)
            .expect("a pool");
        let key = |pg| PgKey { pool, pg: PgId(pg) };
        let local = [
            (key(0), EngineState::Peering),
            (key(1), EngineState::Recovering),
            (key(2), EngineState::Replica),
        ];
        let counts = pg_states(&state, &local);
        assert_eq!(counts[&(pool, PgState::Peering)], 1);
        assert_eq!(counts[&(pool, PgState::Recovering)], 1);
        assert_eq!(counts[&(pool, PgState::Active)], 6);
    }
}
