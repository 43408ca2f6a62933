//! Tests of the metadata state machine: each command's success and refusals (`commands.rs`,
//! `volumes.rs`), the failure detector (`detector.rs`), snapshots (`snapshot.rs`), and property
//! tests over random command sequences (`props.rs`).

mod commands;
mod detector;
mod props;
mod snapshot;
mod volumes;

use super::*;
use crate::ids::{ClusterId, DriveId, NodeId};
use crate::placement::NodeState;

pub(super) const T0: u64 = 1_700_000_000_000;
pub(super) const GIB: u64 = 1 << 30;

pub(super) fn cluster_id(n: u8) -> ClusterId {
    ClusterId(uuid::Uuid::from_bytes([n; 16]))
}

pub(super) fn drive(node: u64, index: u8) -> DriveId {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&node.to_le_bytes());
    bytes[15] = index;
    DriveId(uuid::Uuid::from_bytes(bytes))
}

pub(super) fn addresses(node: u64) -> NodeAddresses {
    NodeAddresses {
        peer: format!("127.0.0.{node}:9641"),
        api: format!("127.0.0.{node}:9640"),
        nbd: Some(format!("127.0.0.{node}:10809")),
    }
}

pub(super) fn init_kind(pg_count: u32) -> CommandKind {
    CommandKind::InitCluster {
        cluster_id: cluster_id(1),
        chunk_size_bytes: 4 << 20,
        pg_count,
        default_replicas: 3,
        min_size: 2,
    }
}

pub(super) fn register_kind(node: u64) -> CommandKind {
    CommandKind::RegisterNode {
        node: NodeId(node),
        addresses: addresses(node),
        zone: None,
        role: NodeRole::Voter,
        drives: vec![DriveInfo {
            id: drive(node, 0),
            capacity_bytes: 100 * GIB,
        }],
    }
}

/// Applies `kind` at `now`, returning the result.
pub(super) fn run(state: &mut MetaState, now: u64, kind: CommandKind) -> CommandResult {
    state.apply(&Command::new(now, kind))
}

/// An initialised cluster of `nodes` registered nodes (ids 1..=nodes), `pg_count` PGs, every
/// PG settled (nodes registered after the pool was created took PGs from the first ones).
pub(super) fn cluster(nodes: u64, pg_count: u32) -> MetaState {
    let mut state = MetaState::new();
    run(&mut state, T0, init_kind(pg_count)).unwrap();
    for node in 1..=nodes {
        run(&mut state, T0 + node, register_kind(node)).unwrap();
    }
    settle_all(&mut state, T0 + nodes);
    state.check_invariants().unwrap();
    state
}

/// Every PG's acting set in the pool for `replicas`, as node ids.
pub(super) fn acting_nodes(state: &MetaState, replicas: u8) -> Vec<Vec<NodeId>> {
    let pool = state.map().pool(ClusterInfo::pool_for(replicas)).unwrap();
    pool.pgs()
        .iter()
        .map(|pg| pg.acting().iter().map(|m| m.node).collect())
        .collect()
}

/// Applies one `SettlePgs` for every pending PG (as their primaries would); returns how many.
pub(super) fn settle_all(state: &mut MetaState, now: u64) -> usize {
    let pgs: Vec<(
        crate::placement::PoolId,
        crate::ids::PgId,
        crate::ids::Epoch,
    )> = state
        .map()
        .pools()
        .iter()
        .flat_map(|pool| {
            (0u32..)
                .zip(pool.pgs())
                .filter(|(_, pg)| pg.is_pending())
                .map(|(index, pg)| (pool.spec().id, crate::ids::PgId(index), pg.since()))
        })
        .collect();
    if pgs.is_empty() {
        return 0;
    }
    let count = pgs.len();
    let outcome = run(state, now, CommandKind::SettlePgs { pgs });
    assert!(
        matches!(outcome, Ok(Outcome::PgsSettled { settled, .. }) if settled as usize == count),
        "{outcome:?}"
    );
    state.check_invariants().unwrap();
    count
}

pub(super) fn node_state(state: &MetaState, node: u64) -> NodeState {
    state.node(NodeId(node)).unwrap().state
}
