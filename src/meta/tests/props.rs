//! Property tests: random command sequences (valid and not) never panic, keep every invariant
//! after each step, never move the epoch back or reuse a volume id, change nothing when
//! refused; snapshots round-trip; two replicas applying the same log end up identical.

use super::*;
use crate::ids::{Epoch, VolumeId};
use proptest::prelude::*;
use std::collections::BTreeSet;

const NODE_IDS: u64 = 6;

fn node_id() -> impl Strategy<Value = NodeId> {
    (0..=NODE_IDS).prop_map(NodeId)
}

fn register() -> impl Strategy<Value = CommandKind> {
    let zone = prop_oneof![
        Just(None),
        Just(Some("a".to_owned())),
        Just(Some("b".to_owned()))
    ];
    // Drive owner is usually the node itself, sometimes another node (a conflict).
    let drives = prop::collection::vec((0..=NODE_IDS, 0u8..3, 0u64..(200 * GIB)), 0..3);
    (node_id(), zone, drives).prop_map(|(node, zone, drives)| CommandKind::RegisterNode {
        node,
        addresses: addresses(node.0),
        zone,
        role: NodeRole::Voter,
        drives: drives
            .into_iter()
            .map(|(owner, index, capacity_bytes)| DriveInfo {
                id: drive(if owner == 0 { node.0 } else { owner }, index),
                capacity_bytes,
            })
            .collect(),
    })
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(4095),
        Just(GIB),
        Just(2 * GIB),
        Just(VOLUME_SIZE_BYTES_MAX),
        Just(VOLUME_SIZE_BYTES_MAX + 4096),
        (1u64..1000).prop_map(|blocks| blocks * 4096),
        any::<u64>(),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c.d"), Just("Bad"), Just("")].prop_map(str::to_owned)
}

fn volume_id() -> impl Strategy<Value = VolumeId> {
    (0u64..8).prop_map(VolumeId)
}

fn command_kind() -> impl Strategy<Value = CommandKind> {
    let key =
        prop::option::of(prop_oneof![Just("k1"), Just("k2"), Just("")].prop_map(String::from));
    prop_oneof![
        1 => (0u32..3, 0u8..7).prop_map(|(pg, replicas)| CommandKind::InitCluster {
            cluster_id: cluster_id(1),
            chunk_size_bytes: 4 << 20,
            pg_count: [16, 8, 1000][pg as usize],
            default_replicas: replicas,
            min_size: 2,
        }),
        4 => register(),
        1 => prop::collection::vec((node_id(), any::<u64>()), 0..4)
            .prop_map(|beats| CommandKind::RecordHeartbeats { beats }),
        2 => node_id().prop_map(|node| CommandKind::MarkNodeDown { node }),
        2 => node_id().prop_map(|node| CommandKind::MarkNodeUp { node }),
        1 => node_id().prop_map(|node| CommandKind::RemoveNode { node }),
        2 => (node_id(), any::<bool>())
            .prop_map(|(node, by_operator)| CommandKind::MarkNodeOut { node, by_operator }),
        3 => prop::collection::vec((0u32..3, 0u32..16, 0u64..24), 0..6).prop_map(|pgs| {
            CommandKind::SettlePgs {
                pgs: pgs
                    .into_iter()
                    .map(|(pool, pg, since)| {
                        (
                            crate::placement::PoolId(pool),
                            crate::ids::PgId(pg),
                            crate::ids::Epoch(since),
                        )
                    })
                    .collect(),
            }
        }),
        4 => (name(), size(), prop::option::of(0u8..7), key).prop_map(
            |(name, size_bytes, replicas, idempotency_key)| CommandKind::CreateVolume {
                name,
                size_bytes,
                replicas,
                idempotency_key,
            }
        ),
        2 => (volume_id(), size())
            .prop_map(|(volume, size_bytes)| CommandKind::ResizeVolume { volume, size_bytes }),
        2 => volume_id().prop_map(|volume| CommandKind::DeleteVolume { volume }),
        1 => (name(), any::<bool>(), 0u8..3).prop_map(|(name, admin, secret)| {
            CommandKind::AddToken {
                name,
                role: if admin { TokenRole::Admin } else { TokenRole::ReadOnly },
                token_sha256: [secret; 32],
            }
        }),
        1 => name().prop_map(|name| CommandKind::RemoveToken { name }),
    ]
}

/// A log: mostly rising times (sometimes a step back, as after a leader change). Most logs
/// start like a real cluster (init, then a few nodes registering) so that later commands reach
/// volumes and placement rather than bouncing off `NotInitialized`.
fn log() -> impl Strategy<Value = Vec<Command>> {
    let steps = prop::collection::vec((command_kind(), -2_000i64..100_000_000), 1..60);
    (0u64..=6, steps).prop_map(|(prefix, steps)| {
        let mut now = T0;
        let mut log = Vec::with_capacity(steps.len() + 6);
        if prefix > 0 {
            log.push(Command::new(now, init_kind(16)));
            log.extend((1..prefix).map(|node| Command::new(now + node, register_kind(node))));
        }
        for (kind, delta) in steps {
            now = now.saturating_add_signed(delta);
            log.push(Command::new(now, kind));
        }
        log
    })
}

/// Checks the state after one step; `before` is the state before it.
fn check_step(before: &MetaState, after: &MetaState, result: &CommandResult, seen: &BTreeSet<u64>) {
    after.check_invariants().unwrap();
    assert!(after.epoch() >= before.epoch(), "epoch went back");
    assert!(after.next_volume_id >= before.next_volume_id);
    for pool in after.map().pools() {
        for pg in pool.pgs() {
            let replicas = usize::from(pool.spec().replicas);
            assert!(pg.acting().len() <= replicas + crate::placement::ACTING_EXTRA_MAX);
            assert!(pg.is_pending() || pg.acting().len() <= replicas);
        }
    }
    for (id, volume) in after.volumes() {
        let new = !before.volumes().contains_key(id);
        assert!(!(new && seen.contains(&id.0)), "{id} reused");
        assert_eq!(volume.pool, ClusterInfo::pool_for(volume.replicas));
    }
    if result.is_err() {
        let mut expected = before.clone();
        expected.clock_unix_ms = after.clock_unix_ms;
        expected.idempotency.prune(after.clock_unix_ms);
        assert_eq!(&expected, after, "a refused command changed the state");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_logs_keep_invariants(log in log()) {
        let mut state = MetaState::new();
        let mut seen: BTreeSet<u64> = BTreeSet::new();
        let mut epochs: Vec<Epoch> = Vec::new();
        for command in &log {
            let before = state.clone();
            let result = state.apply(command);
            check_step(&before, &state, &result, &seen);
            seen.extend(state.volumes().keys().map(|id| id.0));
            epochs.push(state.epoch());
        }
        prop_assert!(epochs.windows(2).all(|pair| pair[0] <= pair[1]));
        let restored = MetaState::from_snapshot(&state.to_snapshot()).unwrap();
        prop_assert_eq!(&restored, &state);
    }

    #[test]
    fn replicas_applying_the_same_log_agree(log in log()) {
        let mut first = MetaState::new();
        let mut second = MetaState::new();
        for (index, command) in log.iter().enumerate() {
            let a = first.apply(command);
            let b = second.apply(command);
            prop_assert_eq!(a, b);
            // A replica restored from a snapshot mid-log continues identically.
            if index == log.len() / 2 {
                second = MetaState::from_snapshot(&second.to_snapshot()).unwrap();
            }
        }
        prop_assert_eq!(first.to_snapshot(), second.to_snapshot());
        prop_assert_eq!(first, second);
    }
}
