//! Cluster, node and token commands: success, no-op repeats and every refusal.

use super::*;
use crate::ids::Epoch;

#[test]
fn init_cluster_once_and_repeatable() {
    let mut state = MetaState::new();
    let outcome = run(&mut state, T0, init_kind(64)).unwrap();
    assert_eq!(
        outcome,
        Outcome::ClusterInitialized {
            cluster_id: cluster_id(1),
            created: true
        }
    );
    let info = state.cluster().unwrap();
    assert_eq!(
        (info.pg_count, info.default_replicas, info.min_size),
        (64, 3, 2)
    );
    assert_eq!(info.created_unix_ms, T0);
    let again = run(&mut state, T0 + 1, init_kind(64)).unwrap();
    assert!(matches!(
        again,
        Outcome::ClusterInitialized { created: false, .. }
    ));
    let other = CommandKind::InitCluster {
        cluster_id: cluster_id(2),
        chunk_size_bytes: 4 << 20,
        pg_count: 64,
        default_replicas: 3,
        min_size: 2,
    };
    assert_eq!(
        run(&mut state, T0 + 2, other),
        Err(MetaError::AlreadyInitialized {
            cluster_id: cluster_id(1)
        })
    );
}

#[test]
fn init_cluster_refuses_bad_parameters() {
    let bad = [
        (3000, 64, 3, 2),
        (4 << 20, 1000, 3, 2),
        (4 << 20, 1 << 17, 3, 2),
        (4 << 20, 64, 0, 1),
        (4 << 20, 64, 6, 2),
        (4 << 20, 64, 3, 4),
        (4 << 20, 64, 3, 0),
    ];
    for (chunk_size_bytes, pg_count, default_replicas, min_size) in bad {
        let mut state = MetaState::new();
        let kind = CommandKind::InitCluster {
            cluster_id: cluster_id(1),
            chunk_size_bytes,
            pg_count,
            default_replicas,
            min_size,
        };
        let result = run(&mut state, T0, kind);
        assert!(
            matches!(result, Err(MetaError::InvalidClusterParams { .. })),
            "{result:?}"
        );
        assert!(state.cluster().is_none());
    }
}

#[test]
fn everything_else_needs_a_cluster() {
    let kinds = [
        register_kind(1),
        CommandKind::MarkNodeDown { node: NodeId(1) },
        CommandKind::RecordHeartbeats { beats: vec![] },
        CommandKind::DeleteVolume {
            volume: crate::ids::VolumeId(1),
        },
        CommandKind::RemoveToken { name: "a".into() },
    ];
    for kind in kinds {
        let mut state = MetaState::new();
        assert_eq!(run(&mut state, T0, kind), Err(MetaError::NotInitialized));
    }
}

#[test]
fn default_pool_appears_with_the_third_node() {
    let mut state = cluster(2, 32);
    assert!(state.map().pools().is_empty());
    assert_eq!(state.epoch(), Epoch(0));
    let outcome = run(&mut state, T0 + 10, register_kind(3)).unwrap();
    assert!(matches!(
        outcome,
        Outcome::Node {
            state: NodeState::Up,
            changed: true,
            ..
        }
    ));
    let pool = state.map().pool(ClusterInfo::pool_for(3)).unwrap();
    assert_eq!(pool.pgs().len(), 32);
    assert!(pool.pgs().iter().all(|pg| pg.acting().len() == 3));
    assert!(state.epoch() > Epoch(0));
}

#[test]
fn register_updates_and_repeats() {
    let mut state = cluster(3, 16);
    let epoch = state.epoch();
    let same = run(&mut state, T0 + 10, register_kind(2)).unwrap();
    assert!(matches!(same, Outcome::Node { changed: false, .. }));
    assert_eq!(state.epoch(), epoch);
    let mut moved = register_kind(2);
    if let CommandKind::RegisterNode { addresses, .. } = &mut moved {
        addresses.api = "node2.example:9640".into();
    }
    let changed = run(&mut state, T0 + 11, moved).unwrap();
    assert!(matches!(changed, Outcome::Node { changed: true, .. }));
    assert_eq!(
        state.node(NodeId(2)).unwrap().addresses.api,
        "node2.example:9640"
    );
    assert_eq!(state.node(NodeId(2)).unwrap().registered_unix_ms, T0 + 2);
}

#[test]
fn register_refuses_bad_nodes() {
    let mut state = cluster(3, 16);
    let before = state.clone();
    let with = |edit: &dyn Fn(&mut CommandKind)| {
        let mut kind = register_kind(4);
        edit(&mut kind);
        kind
    };
    let cases = [
        with(&|k| {
            if let CommandKind::RegisterNode { node, .. } = k {
                *node = NodeId(0);
            }
        }),
        with(&|k| {
            if let CommandKind::RegisterNode { zone, .. } = k {
                *zone = Some("Rack A".into());
            }
        }),
        with(&|k| {
            if let CommandKind::RegisterNode { addresses, .. } = k {
                addresses.peer = "no port".into();
            }
        }),
        with(&|k| {
            if let CommandKind::RegisterNode { drives, .. } = k {
                *drives = (0..65)
                    .map(|i| DriveInfo {
                        id: drive(4, i),
                        capacity_bytes: GIB,
                    })
                    .collect();
            }
        }),
        with(&|k| {
            if let CommandKind::RegisterNode { drives, .. } = k {
                drives.push(drives[0]);
            }
        }),
    ];
    for kind in cases {
        let result = run(&mut state, T0 + 20, kind);
        assert!(
            matches!(result, Err(MetaError::InvalidNode { .. })),
            "{result:?}"
        );
    }
    let stolen = with(&|k| {
        if let CommandKind::RegisterNode { drives, .. } = k {
            drives[0].id = drive(2, 0);
        }
    });
    assert_eq!(
        run(&mut state, T0 + 21, stolen),
        Err(MetaError::DriveInUse {
            drive: drive(2, 0),
            owner: NodeId(2)
        })
    );
    assert_eq!(state.nodes(), before.nodes());
    assert_eq!(state.map(), before.map());
}

#[test]
fn heartbeats_keep_the_latest_and_ignore_strangers() {
    let mut state = cluster(3, 16);
    let beats = vec![(NodeId(1), T0 + 500), (NodeId(9), T0 + 500), (NodeId(2), 5)];
    let outcome = run(
        &mut state,
        T0 + 600,
        CommandKind::RecordHeartbeats { beats },
    );
    assert_eq!(outcome, Ok(Outcome::HeartbeatsRecorded { recorded: 2 }));
    assert_eq!(
        state.node(NodeId(1)).unwrap().last_heartbeat_unix_ms,
        T0 + 500
    );
    assert_eq!(
        state.node(NodeId(2)).unwrap().last_heartbeat_unix_ms,
        T0 + 2
    );
    let flood = vec![(NodeId(1), T0); crate::placement::NODES_MAX + 1];
    let result = run(
        &mut state,
        T0 + 700,
        CommandKind::RecordHeartbeats { beats: flood },
    );
    assert!(matches!(result, Err(MetaError::CommandTooLarge { .. })));
}

#[test]
fn down_drops_the_node_keeping_order_and_up_restores() {
    let mut state = cluster(4, 64);
    let before = acting_nodes(&state, 3);
    let epoch = state.epoch();
    let outcome = run(
        &mut state,
        T0 + 100,
        CommandKind::MarkNodeDown { node: NodeId(2) },
    );
    assert!(matches!(
        outcome,
        Ok(Outcome::Node {
            state: NodeState::Down,
            changed: true,
            ..
        })
    ));
    assert!(state.epoch() > epoch);
    let after = acting_nodes(&state, 3);
    for (old, new) in before.iter().zip(&after) {
        let expected: Vec<NodeId> = old.iter().copied().filter(|n| *n != NodeId(2)).collect();
        assert_eq!(*new, expected);
    }
    let repeat = run(
        &mut state,
        T0 + 101,
        CommandKind::MarkNodeDown { node: NodeId(2) },
    );
    assert!(matches!(repeat, Ok(Outcome::Node { changed: false, .. })));
    run(
        &mut state,
        T0 + 200,
        CommandKind::MarkNodeUp { node: NodeId(2) },
    )
    .unwrap();
    // Back in its PGs, but the primaries that served meanwhile keep the role until settled.
    let returned = acting_nodes(&state, 3);
    for (old, new) in before.iter().zip(&returned) {
        let (mut old, mut new) = (old.clone(), new.clone());
        old.sort_unstable();
        new.sort_unstable();
        assert_eq!(old, new);
    }
    assert!(settle_all(&mut state, T0 + 250) > 0);
    assert_eq!(acting_nodes(&state, 3), before);
    assert_eq!(node_state(&state, 2), NodeState::Up);
    let unknown = run(
        &mut state,
        T0 + 300,
        CommandKind::MarkNodeDown { node: NodeId(9) },
    );
    assert_eq!(unknown, Err(MetaError::NodeNotFound { node: NodeId(9) }));
}

#[test]
fn out_reassigns_replicas_when_nodes_suffice() {
    let mut state = cluster(4, 64);
    run(
        &mut state,
        T0 + 100,
        CommandKind::MarkNodeDown { node: NodeId(4) },
    )
    .unwrap();
    let epoch = state.epoch();
    let out = CommandKind::MarkNodeOut {
        node: NodeId(4),
        by_operator: false,
    };
    run(&mut state, T0 + 200, out).unwrap();
    assert!(state.epoch() > epoch);
    assert_eq!(node_state(&state, 4), NodeState::Out);
    for set in acting_nodes(&state, 3) {
        assert_eq!(set.len(), 3);
        assert!(!set.contains(&NodeId(4)));
    }
    // Back from out: rejoins as a changed node and takes PGs again.
    run(
        &mut state,
        T0 + 300,
        CommandKind::MarkNodeUp { node: NodeId(4) },
    )
    .unwrap();
    assert!(
        acting_nodes(&state, 3)
            .iter()
            .any(|set| set.contains(&NodeId(4)))
    );
}

#[test]
fn out_refused_when_a_pool_would_lack_nodes() {
    let mut state = cluster(3, 16);
    run(
        &mut state,
        T0 + 100,
        CommandKind::MarkNodeDown { node: NodeId(3) },
    )
    .unwrap();
    let before = state.clone();
    let out = CommandKind::MarkNodeOut {
        node: NodeId(3),
        by_operator: true,
    };
    let result = run(&mut state, T0 + 200, out);
    assert_eq!(
        result,
        Err(MetaError::NotEnoughNodes {
            replicas: 3,
            available: 2
        })
    );
    assert_eq!(state.nodes(), before.nodes());
    assert_eq!(state.map(), before.map());
}

#[test]
fn operator_out_is_pinned() {
    let mut state = cluster(4, 16);
    let out = |by_operator| CommandKind::MarkNodeOut {
        node: NodeId(1),
        by_operator,
    };
    run(&mut state, T0 + 100, out(false)).unwrap();
    assert!(!state.node(NodeId(1)).unwrap().out_by_operator);
    let pinned = run(&mut state, T0 + 101, out(true)).unwrap();
    assert!(matches!(pinned, Outcome::Node { changed: true, .. }));
    assert!(state.node(NodeId(1)).unwrap().out_by_operator);
    run(
        &mut state,
        T0 + 102,
        CommandKind::MarkNodeUp { node: NodeId(1) },
    )
    .unwrap();
    assert!(!state.node(NodeId(1)).unwrap().out_by_operator);
}

#[test]
fn state_time_never_goes_back() {
    let mut state = cluster(3, 16);
    let now = state.clock_unix_ms();
    run(&mut state, 5, CommandKind::MarkNodeDown { node: NodeId(1) }).unwrap();
    assert_eq!(state.clock_unix_ms(), now);
    assert_eq!(state.node(NodeId(1)).unwrap().state_since_unix_ms, now);
}

#[test]
fn tokens_add_lookup_remove() {
    let mut state = cluster(1, 16);
    let hash = token_sha256("s3cret-token-value");
    let add = |name: &str, hash: [u8; 32]| CommandKind::AddToken {
        name: name.into(),
        role: TokenRole::ReadOnly,
        token_sha256: hash,
    };
    assert_eq!(
        run(&mut state, T0 + 1, add("ci", hash)),
        Ok(Outcome::TokenAdded { name: "ci".into() })
    );
    let found = state
        .token_by_sha256(&token_sha256("s3cret-token-value"))
        .unwrap();
    assert_eq!(
        (found.name.as_str(), found.role),
        ("ci", TokenRole::ReadOnly)
    );
    assert!(state.token_by_sha256(&token_sha256("other")).is_none());
    let twice = run(&mut state, T0 + 2, add("ci", token_sha256("x")));
    assert!(matches!(twice, Err(MetaError::TokenExists { .. })));
    let same_secret = run(&mut state, T0 + 2, add("ci2", hash));
    assert!(matches!(same_secret, Err(MetaError::TokenExists { .. })));
    let bad = run(&mut state, T0 + 2, add("Bad Name", token_sha256("y")));
    assert!(matches!(bad, Err(MetaError::InvalidTokenName { .. })));
    let remove = |name: &str| CommandKind::RemoveToken { name: name.into() };
    assert_eq!(
        run(&mut state, T0 + 3, remove("ci")),
        Ok(Outcome::TokenRemoved { name: "ci".into() })
    );
    assert!(state.token_by_sha256(&hash).is_none());
    let gone = run(&mut state, T0 + 4, remove("ci"));
    assert!(matches!(gone, Err(MetaError::TokenNotFound { .. })));
}

#[test]
fn commands_display() {
    let command = Command::new(5, CommandKind::MarkNodeDown { node: NodeId(3) });
    assert_eq!(command.to_string(), "mark-node-down node-3 @5ms");
    assert!(register_kind(2).to_string().contains("node-2"));
}

/// Goal: an operator's out on a serving node starts a drain: the node leaves every up set but
/// keeps serving (and leading) its PGs until they settle on their new members; marking it up
/// cancels the drain; the detector's out (it stopped) ends it, still pinned by the operator.
#[test]
fn operator_out_of_a_serving_node_drains_it() {
    let mut state = cluster(4, 32);
    let drain = CommandKind::MarkNodeOut {
        node: NodeId(2),
        by_operator: true,
    };
    let held = |state: &MetaState| {
        acting_nodes(state, 3)
            .iter()
            .filter(|set| set.contains(&NodeId(2)))
            .count()
    };
    let before = held(&state);
    run(&mut state, T0 + 100, drain.clone()).unwrap();
    assert_eq!(node_state(&state, 2), NodeState::Draining);
    assert_eq!(held(&state), before, "still serving everything it held");
    let pool = state.map().pool(ClusterInfo::pool_for(3)).unwrap();
    assert!(
        pool.pgs()
            .iter()
            .all(|pg| pg.up().iter().all(|m| m.node != NodeId(2)))
    );
    let repeat = run(&mut state, T0 + 101, drain.clone()).unwrap();
    assert!(matches!(repeat, Outcome::Node { changed: false, .. }));
    // Cancel, then drain again and let it finish.
    run(
        &mut state,
        T0 + 200,
        CommandKind::MarkNodeUp { node: NodeId(2) },
    )
    .unwrap();
    assert_eq!(node_state(&state, 2), NodeState::Up);
    settle_all(&mut state, T0 + 250);
    run(&mut state, T0 + 300, drain).unwrap();
    settle_all(&mut state, T0 + 350);
    assert_eq!(held(&state), 0, "drained once every PG settled");
    assert!(acting_nodes(&state, 3).iter().all(|set| set.len() == 3));
    let stopped = CommandKind::MarkNodeOut {
        node: NodeId(2),
        by_operator: false,
    };
    run(&mut state, T0 + 400, stopped).unwrap();
    assert_eq!(node_state(&state, 2), NodeState::Out);
    assert!(state.node(NodeId(2)).unwrap().out_by_operator);
}

/// Goal: a node can be removed only once it is out and no PG lists it; removing it moves no
/// PG, frees its drives, retires its id (registration refused for good), and repeats are
/// no-ops.
#[test]
fn remove_only_an_out_node_no_pg_lists() {
    let mut state = cluster(4, 32);
    let remove = CommandKind::RemoveNode { node: NodeId(2) };
    let in_use = |result: CommandResult| matches!(result, Err(MetaError::NodeInUse { .. }));
    assert!(in_use(run(&mut state, T0 + 100, remove.clone())), "up");
    let drain = CommandKind::MarkNodeOut {
        node: NodeId(2),
        by_operator: true,
    };
    run(&mut state, T0 + 110, drain).unwrap();
    assert!(
        in_use(run(&mut state, T0 + 120, remove.clone())),
        "draining"
    );
    let stopped = CommandKind::MarkNodeOut {
        node: NodeId(2),
        by_operator: false,
    };
    run(&mut state, T0 + 130, stopped).unwrap();
    assert_eq!(node_state(&state, 2), NodeState::Out);
    // Out leaves every acting set at once (acting sets hold serving nodes only).
    settle_all(&mut state, T0 + 140);
    assert!(state.map().first_pg_listing(NodeId(2)).is_none());
    let before = acting_nodes(&state, 3);
    let epoch = state.epoch();
    let outcome = run(&mut state, T0 + 150, remove.clone()).unwrap();
    assert_eq!(
        outcome,
        Outcome::NodeRemoved {
            node: NodeId(2),
            removed: true
        }
    );
    assert!(state.node(NodeId(2)).is_none());
    assert!(state.is_removed(NodeId(2)));
    assert_eq!(acting_nodes(&state, 3), before, "no PG moved");
    assert!(state.epoch() >= epoch);
    let again = run(&mut state, T0 + 160, remove).unwrap();
    assert!(matches!(again, Outcome::NodeRemoved { removed: false, .. }));
    assert_eq!(
        run(&mut state, T0 + 170, register_kind(2)),
        Err(MetaError::NodeRemoved { node: NodeId(2) })
    );
    // Its drive may register on a new node (after a wipe).
    let mut fresh = register_kind(5);
    if let CommandKind::RegisterNode { drives, .. } = &mut fresh {
        drives[0].id = drive(2, 0);
    }
    run(&mut state, T0 + 180, fresh).unwrap();
    assert_eq!(
        run(
            &mut state,
            T0 + 190,
            CommandKind::RemoveNode { node: NodeId(9) }
        ),
        Err(MetaError::NodeNotFound { node: NodeId(9) })
    );
    state.check_invariants().unwrap();
}

/// Goal: a node still listed by a PG (out after a failure, copies not yet rebuilt and
/// settled) cannot be removed: its copy may be the one a PG still needs.
#[test]
fn remove_refused_while_a_pg_lists_the_node() {
    let mut state = cluster(3, 16);
    run(
        &mut state,
        T0 + 100,
        CommandKind::MarkNodeDown { node: NodeId(3) },
    )
    .unwrap();
    // Three nodes, three replicas: out is refused, so node 3 stays down and listed.
    let outcome = run(
        &mut state,
        T0 + 110,
        CommandKind::RemoveNode { node: NodeId(3) },
    );
    assert!(
        matches!(outcome, Err(MetaError::NodeInUse { .. })),
        "{outcome:?}"
    );
    assert!(state.map().first_pg_listing(NodeId(3)).is_some());
}
