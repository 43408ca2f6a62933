//! Unit tests: one per rule of the engine, each driving one or two engines by hand.

use std::time::{Duration, Instant};

use basalt::ids::{ChunkKey, ChunkVersion, Epoch, NodeId, PgId, VolumeId};
use basalt::wire::Status;

use super::*;

const CHUNK_SIZE: u32 = 1024 * 1024;

type Engine = PgEngine<u32>;

fn node(id: u64) -> NodeId {
    NodeId(id)
}

fn map(epoch: u64, acting: &[u64], min_size: u8) -> MapView {
    MapView {
        epoch: Epoch(epoch),
        acting: acting.iter().copied().map(NodeId).collect(),
        min_size,
        settle: None,
    }
}

fn config(id: u64) -> PgConfig {
    PgConfig {
        pg: PgId(7),
        node: node(id),
        chunk_size_bytes: CHUNK_SIZE,
        limits: Limits::default(),
    }
}

/// An engine at open, already peered (primary: every member level at `head`) or synced with
/// its primary (replica), with those actions drained.
fn engine(id: u64, view: MapView, head: u64, now: Instant) -> Engine {
    let mut engine = fresh_engine(id, view.clone(), head, now);
    settle(&mut engine, &view, now);
    engine
}

/// An engine at open, before peering or a sync point.
fn fresh_engine(id: u64, view: MapView, head: u64, now: Instant) -> Engine {
    let head = ChunkVersion {
        epoch: Epoch(1),
        version: head,
    };
    PgEngine::new(config(id), view, head, now).unwrap()
}

/// Finishes peering (primary: every member level) or applies a sync point from the primary at
/// the engine's own head (replica), and drains what that emits.
fn settle(engine: &mut Engine, view: &MapView, now: Instant) {
    let head = engine.head();
    match engine.state() {
        PgState::Peering => {
            let actions = drain(engine);
            let members = actions
                .iter()
                .find_map(|action| match action {
                    Action::Peer { members, .. } => Some(members.clone()),
                    _ => None,
                })
                .expect("a peering primary asks to peer");
            engine.handle_peered(
                now,
                Peered {
                    epoch: view.epoch,
                    head,
                    in_sync: members,
                },
            );
        }
        PgState::Replica => {
            let sync = SyncPoint {
                token: Token(9_999),
                from: view.acting[0],
                epoch: view.epoch,
                head,
            };
            accepted(engine.handle_sync_point(now, sync));
        }
        _ => {}
    }
    drain(engine);
}

fn range(index: u64, offset: u32, len: u32) -> ChunkRange {
    ChunkRange {
        chunk: ChunkKey::new(VolumeId(1), index),
        offset,
        len,
    }
}

fn write(token: u64, epoch: u64, payload: u32) -> ClientWrite<u32> {
    ClientWrite {
        token: Token(token),
        epoch: Epoch(epoch),
        range: range(0, 0, 4096),
        mutation: Mutation::Write(payload),
    }
}

fn replicate(token: u64, from: u64, epoch: u64, version: u64) -> Replicate<u32> {
    Replicate {
        token: Token(token),
        from: node(from),
        epoch: Epoch(epoch),
        version,
        range: range(0, 0, 4096),
        mutation: Mutation::Write(version as u32),
    }
}

fn ok(version: u64, from: u64, epoch: u64) -> ReplicaReply {
    reply(version, from, Status::Ok, epoch)
}

fn reply(version: u64, from: u64, status: Status, epoch: u64) -> ReplicaReply {
    ReplicaReply {
        version,
        from: node(from),
        status,
        epoch: Epoch(epoch),
    }
}

fn drain(engine: &mut Engine) -> Vec<Action<u32>> {
    std::iter::from_fn(|| engine.poll_action()).collect()
}

fn replies(actions: &[Action<u32>]) -> Vec<(u64, Status)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Reply { token, status, .. } => Some((token.0, *status)),
            _ => None,
        })
        .collect()
}

fn accepted<R: std::fmt::Debug>(outcome: Outcome<R>) {
    assert!(matches!(outcome, Outcome::Accepted), "{outcome:?}");
}

/// A primary of [1, 2, 3] at epoch 5 with head 10.
fn primary(now: Instant) -> Engine {
    engine(1, map(5, &[1, 2, 3], 2), 10, now)
}

#[test]
fn write_applies_locally_then_replicates_in_order() {
    // Goal: the first write gets head+1, LocalApply comes before every Replicate, and each
    // other member gets exactly one copy under the current epoch.
    let now = Instant::now();
    let mut p = primary(now);
    accepted(p.handle_client_write(now, write(1, 5, 42)));
    let actions = drain(&mut p);
    let version = ChunkVersion {
        epoch: Epoch(5),
        version: 11,
    };
    assert_eq!(
        actions[0],
        Action::LocalApply {
            version,
            range: range(0, 0, 4096),
            mutation: Mutation::Write(42)
        }
    );
    let targets: Vec<NodeId> = actions[1..]
        .iter()
        .map(|action| match action {
            Action::Replicate {
                to, epoch, version, ..
            } => {
                assert_eq!((*epoch, *version), (Epoch(5), 11));
                *to
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(targets, vec![node(2), node(3)]);
    assert_eq!(p.head(), version);
    assert_eq!(p.log().head(), 11);
}

#[test]
fn epoch_and_role_checks() {
    // Goal: stale requests get StaleEpoch with our epoch, newer ones come back as MapBehind,
    // a non-primary answers NotPrimary, a range beyond the chunk is OutOfRange.
    let now = Instant::now();
    let mut p = primary(now);
    accepted(p.handle_client_write(now, write(1, 4, 0)));
    assert_eq!(
        drain(&mut p),
        vec![Action::Reply {
            token: Token(1),
            status: Status::StaleEpoch,
            epoch: Epoch(5)
        }]
    );
    match p.handle_client_write(now, write(2, 6, 0)) {
        Outcome::MapBehind { wanted, request } => {
            assert_eq!(wanted, Epoch(6));
            assert_eq!(request.token, Token(2));
        }
        Outcome::Accepted => panic!("newer epoch must wait for the map"),
    }
    assert!(drain(&mut p).is_empty());
    let mut bad = write(3, 5, 0);
    bad.range = range(0, CHUNK_SIZE - 512, 4096);
    accepted(p.handle_client_write(now, bad));
    assert_eq!(replies(&drain(&mut p)), vec![(3, Status::OutOfRange)]);

    let mut r = engine(2, map(5, &[1, 2, 3], 2), 10, now);
    accepted(r.handle_client_write(now, write(4, 5, 0)));
    accepted(r.handle_client_read(
        now,
        ClientRead {
            token: Token(5),
            epoch: Epoch(5),
            range: range(0, 0, 512),
        },
    ));
    let answers = replies(&drain(&mut r));
    assert_eq!(
        answers,
        vec![(4, Status::NotPrimary), (5, Status::NotPrimary)]
    );
}

#[test]
fn ack_needs_local_durability_and_every_member() {
    // Goal: neither the local store nor a subset of replicas is enough; the reply comes after
    // the last of them, in any order.
    let now = Instant::now();
    let mut p = primary(now);
    accepted(p.handle_client_write(now, write(1, 5, 0)));
    drain(&mut p);
    p.handle_replica_reply(now, ok(11, 2, 5));
    p.handle_local_done(now, 11, Ok(()));
    assert!(replies(&drain(&mut p)).is_empty());
    p.handle_replica_reply(now, ok(11, 3, 5));
    assert_eq!(replies(&drain(&mut p)), vec![(1, Status::Ok)]);
    assert_eq!(p.pending_count(), 0);
}

#[test]
fn local_durability_is_a_prefix() {
    // Goal: v12 durable before v11 does not complete v12: an acknowledged copy has no holes.
    let now = Instant::now();
    let mut p = engine(1, map(5, &[1], 1), 10, now);
    accepted(p.handle_client_write(now, write(1, 5, 0)));
    accepted(p.handle_client_write(now, write(2, 5, 0)));
    drain(&mut p);
    p.handle_local_done(now, 12, Ok(()));
    assert!(replies(&drain(&mut p)).is_empty());
    assert_eq!(p.durable_through(), 10);
    p.handle_local_done(now, 11, Ok(()));
    assert_eq!(
        replies(&drain(&mut p)),
        vec![(1, Status::Ok), (2, Status::Ok)]
    );
}

#[test]
fn below_min_size_writes_wait_and_time_out() {
    // Goal: with fewer than min_size members a write gets no version and no copies; it is
    // answered Timeout at its deadline, never Ok.
    let now = Instant::now();
    let mut p = engine(1, map(5, &[1], 2), 10, now);
    assert_eq!(p.state(), PgState::Inactive);
    accepted(p.handle_client_write(now, write(1, 5, 0)));
    assert!(drain(&mut p).is_empty());
    assert_eq!(p.head().version, 10);
    let deadline = p.poll_timeout().unwrap();
    assert_eq!(deadline, now + OP_TIMEOUT_DEFAULT);
    p.handle_timeout(deadline - Duration::from_millis(1));
    assert!(drain(&mut p).is_empty());
    p.handle_timeout(deadline);
    assert_eq!(replies(&drain(&mut p)), vec![(1, Status::Timeout)]);
}

#[test]
fn blocked_writes_resume_when_members_return() {
    // Goal: a member that left and returns is recovered before it counts (a recovery job,
    // then a final sync with writes paused), and the writes that waited below min_size are
    // then assigned in arrival order.
    let now = Instant::now();
    let mut p = engine(1, map(5, &[1, 2], 2), 10, now);
    p.handle_map(now, map(6, &[1], 2)).unwrap();
    accepted(p.handle_client_write(now, write(1, 6, 100)));
    accepted(p.handle_client_write(now, write(2, 6, 200)));
    assert!(drain(&mut p).is_empty());
    p.handle_map(now, map(7, &[1, 2], 2)).unwrap();
    assert_eq!(p.members(), vec![(node(2), MemberSync::NeedsRecovery)]);
    assert_eq!(
        drain(&mut p),
        vec![Action::Recover {
            member: node(2),
            epoch: Epoch(7)
        }]
    );
    assert!(p.handle_recovery_ready(now, node(2), Epoch(7)));
    let head = p.head();
    assert_eq!(
        drain(&mut p),
        vec![Action::FinalSync {
            member: node(2),
            epoch: Epoch(7),
            head
        }]
    );
    p.handle_recovery_done(now, node(2), Epoch(7), true);
    assert_eq!(p.members(), vec![(node(2), MemberSync::InSync)]);
    let actions = drain(&mut p);
    let applied: Vec<(u64, u32)> = actions
        .iter()
        .filter_map(|action| match action {
            Action::LocalApply {
                version,
                mutation: Mutation::Write(payload),
                ..
            } => Some((version.version, *payload)),
            _ => None,
        })
        .collect();
    assert_eq!(applied, vec![(11, 100), (12, 200)]);
    assert_eq!(
        actions.len(),
        4,
        "two local applies, two copies: {actions:?}"
    );
}

#[test]
fn dropped_member_is_no_longer_waited_for() {
    // Goal: an in-flight write completes once the map drops the silent member, as long as
    // min_size copies remain; the member returns needing recovery.
    let now = Instant::now();
    let mut p = primary(now);
    accepted(p.handle_client_write(now, write(1, 5, 0)));
    drain(&mut p);
    p.handle_local_done(now, 11, Ok(()));
    p.handle_replica_reply(now, ok(11, 2, 5));
    assert!(replies(&drain(&mut p)).is_empty());
    p.handle_map(now, map(6, &[1, 2], 2)).unwrap();
    assert_eq!(replies(&drain(&mut p)), vec![(1, Status::Ok)]);
    p.handle_map(now, map(7, &[1, 2, 3], 2)).unwrap();
    let recovering = MemberSync::NeedsRecovery;
    assert_eq!(
        p.members(),
        vec![(node(2), MemberSync::InSync), (node(3), recovering)]
    );
    assert_eq!(p.state(), PgState::Recovering);
    // New writes skip the recovering member and complete without it.
    accepted(p.handle_client_write(now, write(2, 7, 0)));
    let actions = drain(&mut p);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Replicate { to, .. } if *to == node(3)))
    );
    p.handle_local_done(now, 12, Ok(()));
    p.handle_replica_reply(now, ok(12, 2, 7));
    assert_eq!(replies(&drain(&mut p)), vec![(2, Status::Ok)]);
}

#[test]
fn never_acknowledged_below_min_size() {
    // Goal: members acknowledged the write, but the map then leaves fewer than min_size
    // members: the write is not answered Ok, and times out.
    let now = Instant::now();
    let mut p = primary(now);
    accepted(p.handle_client_write(now, write(1, 5, 0)));
    drain(&mut p);
    p.handle_replica_reply(now, ok(11, 2, 5));
    p.handle_map(now, map(6, &[1], 2)).unwrap();
    p.handle_local_done(now, 11, Ok(()));
    assert!(replies(&drain(&mut p)).is_empty());
    p.handle_timeout(now + OP_TIMEOUT_DEFAULT);
    assert_eq!(replies(&drain(&mut p)), vec![(1, Status::Timeout)]);
}

#[test]
fn new_member_is_not_part_of_earlier_writes() {
    // Goal: a member added while a write is in flight is not sent it and not waited for.
    let now = Instant::now();
    let mut p = engine(1, map(5, &[1, 2], 2), 10, now);
    accepted(p.handle_client_write(now, write(1, 5, 0)));
    drain(&mut p);
    p.handle_map(now, map(6, &[1, 2, 3], 2)).unwrap();
    assert_eq!(
        drain(&mut p),
        vec![Action::Recover {
            member: node(3),
            epoch: Epoch(6)
        }]
    );
    p.handle_local_done(now, 11, Ok(()));
    p.handle_replica_reply(now, ok(11, 2, 5));
    assert_eq!(replies(&drain(&mut p)), vec![(1, Status::Ok)]);
    let unknown = MemberSync::NeedsRecovery;
    assert_eq!(p.members()[1], (node(3), unknown));
}

#[test]
fn losing_the_primary_role_fails_client_requests() {
    // Goal: in-flight, waiting and flush requests are answered NotPrimary; local applies
    // already submitted still complete (the node is now a replica at the same head).
    let now = Instant::now();
    let mut p = primary(now);
    accepted(p.handle_client_write(now, write(1, 5, 0)));
    accepted(p.handle_client_flush(
        now,
        ClientFlush {
            token: Token(2),
            epoch: Epoch(5),
        },
    ));
    drain(&mut p);
    p.handle_map(now, map(6, &[2, 1, 3], 2)).unwrap();
    let answers = replies(&drain(&mut p));
    assert_eq!(
        answers,
        vec![(1, Status::NotPrimary), (2, Status::NotPrimary)]
    );
    assert_eq!(p.state(), PgState::Replica);
    assert_eq!(p.durable_through(), 10);
    // Until the new primary peered with it, the node applies nothing from it.
    accepted(p.handle_replicate(now, replicate(8, 2, 6, 12)));
    assert_eq!(replies(&drain(&mut p)), vec![(8, Status::Unsynced)]);
    p.handle_local_done(now, 11, Ok(()));
    assert_eq!(p.durable_through(), 11);
    let head = p.head();
    let sync = SyncPoint {
        token: Token(7),
        from: node(2),
        epoch: Epoch(6),
        head,
    };
    accepted(p.handle_sync_point(now, sync));
    assert_eq!(replies(&drain(&mut p)), vec![(7, Status::Ok)]);
    // The new primary's next version is accepted in order.
    accepted(p.handle_replicate(now, replicate(9, 2, 6, 12)));
    assert!(matches!(drain(&mut p)[0], Action::LocalApply { .. }));
}

#[test]
fn replica_error_is_reported_once_and_the_write_waits() {
    // Goal: an I/O error from a replica produces one ReportFailure; the write completes when
    // the map drops that replica.
    let now = Instant::now();
    let mut p = primary(now);
    accepted(p.handle_client_write(now, write(1, 5, 0)));
    accepted(p.handle_client_write(now, write(2, 5, 0)));
    drain(&mut p);
    p.handle_local_done(now, 11, Ok(()));
    p.handle_local_done(now, 12, Ok(()));
    p.handle_replica_reply(now, ok(11, 2, 5));
    p.handle_replica_reply(now, ok(12, 2, 5));
    p.handle_replica_reply(now, reply(11, 3, Status::IoError, 5));
    p.handle_replica_reply(now, reply(12, 3, Status::IoError, 5));
    assert_eq!(
        drain(&mut p),
        vec![Action::ReportFailure {
            node: node(3),
            epoch: Epoch(5)
        }]
    );
    p.handle_map(now, map(6, &[1, 2], 2)).unwrap();
    assert_eq!(
        replies(&drain(&mut p)),
        vec![(1, Status::Ok), (2, Status::Ok)]
    );
}

#[test]
fn stale_epoch_replies_are_resent_under_the_newer_epoch() {
    // Goal: a replica ahead of us is re-sent the copy once our map catches up; one whose
    // epoch we already have is re-sent at once; an answer to an older copy is ignored.
    let now = Instant::now();
    let mut p = primary(now);
    accepted(p.handle_client_write(now, write(1, 5, 0)));
    drain(&mut p);
    p.handle_replica_reply(now, reply(11, 2, Status::StaleEpoch, 6));
    assert!(drain(&mut p).is_empty());
    p.handle_map(now, map(6, &[1, 2, 3], 2)).unwrap();
    let resent = drain(&mut p);
    assert!(matches!(
        resent.as_slice(),
        [Action::Replicate { to, epoch: Epoch(6), version: 11, .. }] if *to == node(2)
    ));
    p.handle_replica_reply(now, reply(11, 3, Status::StaleEpoch, 6));
    assert_eq!(drain(&mut p).len(), 1, "re-sent at once to node 3");
    p.handle_replica_reply(now, reply(11, 3, Status::StaleEpoch, 6));
    assert!(drain(&mut p).is_empty(), "late answer to the older copy");
}

#[test]
fn busy_replica_gets_a_retry_after_backoff() {
    // Goal: Busy schedules a re-send of every unacknowledged version up to the refused one.
    let now = Instant::now();
    let mut p = primary(now);
    accepted(p.handle_client_write(now, write(1, 5, 0)));
    accepted(p.handle_client_write(now, write(2, 5, 0)));
    drain(&mut p);
    p.handle_replica_reply(now, reply(12, 2, Status::Busy, 5));
    let due = p.poll_timeout().unwrap();
    assert_eq!(due, now + RETRY_BACKOFF_DEFAULT);
    p.handle_timeout(due);
    let versions: Vec<(NodeId, u64)> = drain(&mut p)
        .iter()
        .filter_map(|a| match a {
            Action::Replicate { to, version, .. } => Some((*to, *version)),
            _ => None,
        })
        .collect();
    assert_eq!(versions, vec![(node(2), 11), (node(2), 12)]);
}

#[test]
fn local_store_failure_stops_the_pg() {
    // Goal: a failed local apply answers the write with the store's status, emits
    // StopServing, and every later request gets the same status.
    let now = Instant::now();
    let mut p = primary(now);
    accepted(p.handle_client_write(now, write(1, 5, 0)));
    drain(&mut p);
    p.handle_local_done(now, 11, Err(Status::IoError));
    let actions = drain(&mut p);
    assert_eq!(
        actions[0],
        Action::StopServing {
            status: Status::IoError
        }
    );
    assert_eq!(replies(&actions), vec![(1, Status::IoError)]);
    assert_eq!(p.state(), PgState::Failed);
    accepted(p.handle_client_write(now, write(2, 5, 0)));
    assert_eq!(replies(&drain(&mut p)), vec![(2, Status::IoError)]);
}

#[test]
fn reads_and_flushes_on_the_primary() {
    // Goal: reads go straight to the local store; a flush waits for earlier writes only.
    let now = Instant::now();
    let mut p = primary(now);
    let read = ClientRead {
        token: Token(1),
        epoch: Epoch(5),
        range: range(3, 512, 1024),
    };
    accepted(p.handle_client_read(now, read));
    assert_eq!(
        drain(&mut p),
        vec![Action::LocalRead {
            token: Token(1),
            range: range(3, 512, 1024)
        }]
    );
    assert!(p.lease().valid(now));
    let flush = |token| ClientFlush {
        token: Token(token),
        epoch: Epoch(5),
    };
    accepted(p.handle_client_flush(now, flush(2)));
    assert_eq!(replies(&drain(&mut p)), vec![(2, Status::Ok)]);
    accepted(p.handle_client_write(now, write(3, 5, 0)));
    accepted(p.handle_client_flush(now, flush(4)));
    accepted(p.handle_client_write(now, write(5, 5, 0)));
    drain(&mut p);
    for version in [11, 12] {
        p.handle_local_done(now, version, Ok(()));
        p.handle_replica_reply(now, ok(version, 2, 5));
    }
    // The later write completes on its own; the flush waits for the earlier one.
    p.handle_replica_reply(now, ok(12, 3, 5));
    assert_eq!(replies(&drain(&mut p)), vec![(5, Status::Ok)]);
    p.handle_replica_reply(now, ok(11, 3, 5));
    assert_eq!(
        replies(&drain(&mut p)),
        vec![(3, Status::Ok), (4, Status::Ok)]
    );
}

#[test]
fn replica_applies_in_order_and_acks_after_durability() {
    // Goal: v11 applies at once, v13 waits for v12, then both apply in order; each is
    // acknowledged only when it and every earlier version are durable.
    let now = Instant::now();
    let mut r = engine(2, map(5, &[1, 2, 3], 2), 10, now);
    accepted(r.handle_replicate(now, replicate(1, 1, 5, 11)));
    accepted(r.handle_replicate(now, replicate(3, 1, 5, 13)));
    let applied = |actions: &[Action<u32>]| -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::LocalApply { version, .. } => Some(version.version),
                _ => None,
            })
            .collect()
    };
    assert_eq!(applied(&drain(&mut r)), vec![11]);
    assert_eq!(r.poll_timeout(), Some(now + GAP_TIMEOUT_DEFAULT));
    accepted(r.handle_replicate(now, replicate(2, 1, 5, 12)));
    assert_eq!(applied(&drain(&mut r)), vec![12, 13]);
    assert_eq!(r.poll_timeout(), None);
    r.handle_local_done(now, 13, Ok(()));
    r.handle_local_done(now, 12, Ok(()));
    assert!(replies(&drain(&mut r)).is_empty());
    r.handle_local_done(now, 11, Ok(()));
    assert_eq!(
        replies(&drain(&mut r)),
        vec![(1, Status::Ok), (2, Status::Ok), (3, Status::Ok)]
    );
    assert_eq!(r.head().version, 13);
    assert_eq!(r.head().epoch, Epoch(5));
}

#[test]
fn replica_answers_duplicates_once_durable() {
    // Goal: a re-sent version already submitted is not applied again; it is answered when
    // durable (at once if it already is).
    let now = Instant::now();
    let mut r = engine(2, map(5, &[1, 2], 2), 10, now);
    accepted(r.handle_replicate(now, replicate(1, 1, 5, 11)));
    accepted(r.handle_replicate(now, replicate(2, 1, 5, 11)));
    let actions = drain(&mut r);
    assert_eq!(actions.len(), 1, "one apply only: {actions:?}");
    r.handle_local_done(now, 11, Ok(()));
    assert_eq!(
        replies(&drain(&mut r)),
        vec![(1, Status::Ok), (2, Status::Ok)]
    );
    accepted(r.handle_replicate(now, replicate(3, 1, 5, 10)));
    assert_eq!(replies(&drain(&mut r)), vec![(3, Status::Ok)]);
}

#[test]
fn replica_epoch_and_sender_checks() {
    // Goal: older epoch → StaleEpoch; newer → MapBehind; a sender that is not our primary →
    // Invalid.
    let now = Instant::now();
    let mut r = engine(2, map(5, &[1, 2, 3], 2), 10, now);
    accepted(r.handle_replicate(now, replicate(1, 1, 4, 11)));
    accepted(r.handle_replicate(now, replicate(2, 3, 5, 11)));
    assert_eq!(
        replies(&drain(&mut r)),
        vec![(1, Status::StaleEpoch), (2, Status::Invalid)]
    );
    assert!(matches!(
        r.handle_replicate(now, replicate(3, 1, 6, 11)),
        Outcome::MapBehind {
            wanted: Epoch(6),
            ..
        }
    ));
}

#[test]
fn replica_buffer_is_bounded_and_times_out() {
    // Goal: out-of-order copies beyond the bound get Busy; at the gap deadline the buffered
    // ones are answered Timeout and nothing was applied.
    let now = Instant::now();
    let cfg = PgConfig {
        limits: Limits {
            replica_buffer_ops_max: 2,
            ..Limits::default()
        },
        ..config(2)
    };
    let head = ChunkVersion::default();
    let mut r: Engine = PgEngine::new(cfg, map(5, &[1, 2], 2), head, now).unwrap();
    settle(&mut r, &map(5, &[1, 2], 2), now);
    for version in 2..=4 {
        accepted(r.handle_replicate(now, replicate(version, 1, 5, version)));
    }
    assert_eq!(replies(&drain(&mut r)), vec![(4, Status::Busy)]);
    r.handle_timeout(now + GAP_TIMEOUT_DEFAULT);
    assert_eq!(
        replies(&drain(&mut r)),
        vec![(2, Status::Timeout), (3, Status::Timeout)]
    );
    assert_eq!(r.head().version, 0);
}

#[test]
fn replica_drops_buffer_on_a_new_map() {
    // Goal: buffered copies from the old epoch are answered StaleEpoch (the primary re-sends
    // them under the new one), so everything applied carries the epoch it was applied in.
    let now = Instant::now();
    let mut r = engine(2, map(5, &[1, 2], 2), 10, now);
    accepted(r.handle_replicate(now, replicate(1, 1, 5, 12)));
    r.handle_map(now, map(6, &[1, 2], 2)).unwrap();
    assert_eq!(
        drain(&mut r),
        vec![Action::Reply {
            token: Token(1),
            status: Status::StaleEpoch,
            epoch: Epoch(6)
        }]
    );
}

#[test]
fn replica_promoted_to_primary_continues_from_its_head() {
    // Goal: a replica named primary refuses its buffered copies, waits for its own applies
    // to land, peers (client writes queue meanwhile), and then assigns after the head peering
    // adopted.
    let now = Instant::now();
    let mut r = engine(2, map(5, &[1, 2, 3], 2), 10, now);
    accepted(r.handle_replicate(now, replicate(1, 1, 5, 11)));
    accepted(r.handle_replicate(now, replicate(2, 1, 5, 13)));
    drain(&mut r);
    r.handle_map(now, map(6, &[2, 3], 2)).unwrap();
    assert_eq!(replies(&drain(&mut r)), vec![(2, Status::StaleEpoch)]);
    assert_eq!(r.state(), PgState::Peering);
    accepted(r.handle_client_write(now, write(3, 6, 0)));
    assert!(
        drain(&mut r).is_empty(),
        "no peering while v11 is in flight"
    );
    // The replica-era acknowledgement still goes out when v11 is durable; peering starts.
    r.handle_local_done(now, 11, Ok(()));
    let actions = drain(&mut r);
    assert_eq!(replies(&actions), vec![(1, Status::Ok)]);
    assert!(actions.contains(&Action::Peer {
        epoch: Epoch(6),
        members: vec![node(3)]
    }));
    // Node 3 held a version 12 from the old primary: the adopted head is past it.
    let head = ChunkVersion {
        epoch: Epoch(5),
        version: 12,
    };
    r.handle_peered(
        now,
        Peered {
            epoch: Epoch(6),
            head,
            in_sync: vec![node(3)],
        },
    );
    assert_eq!(r.state(), PgState::Active);
    let actions = drain(&mut r);
    assert!(matches!(
        actions[0],
        Action::LocalApply {
            version: ChunkVersion {
                epoch: Epoch(6),
                version: 13
            },
            ..
        }
    ));
}

#[test]
fn invalid_maps_and_limits_are_refused() {
    let now = Instant::now();
    let mut p = primary(now);
    let duplicate = map(6, &[1, 2, 2], 2);
    assert!(matches!(
        p.handle_map(now, duplicate),
        Err(EngineError::DuplicateMember { .. })
    ));
    assert!(p.handle_map(now, map(6, &[1], 0)).is_err());
    assert_eq!(p.epoch(), Epoch(5));
    p.handle_map(now, map(4, &[2], 1)).unwrap();
    assert_eq!(p.epoch(), Epoch(5), "older maps are ignored");
    let mut limits = Limits::default();
    limits.gap_timeout = limits.op_timeout;
    let cfg = PgConfig {
        limits,
        ..config(1)
    };
    let result: Result<Engine, _> =
        PgEngine::new(cfg, map(1, &[1], 1), ChunkVersion::default(), now);
    assert!(matches!(result, Err(EngineError::InvalidLimits(_))));
}

#[test]
fn pg_log_is_bounded_and_answers_catch_up_queries() {
    // Goal: the log keeps the newest entries, says which chunks changed after a version, and
    // refuses a version older than its tail (backfill instead).
    let now = Instant::now();
    let cfg = PgConfig {
        limits: Limits {
            log_entries_max: 3,
            ..Limits::default()
        },
        ..config(1)
    };
    let head = ChunkVersion::default();
    let mut p: Engine = PgEngine::new(cfg, map(1, &[1], 1), head, now).unwrap();
    settle(&mut p, &map(1, &[1], 1), now);
    for (token, index) in [(1, 0), (2, 1), (3, 2), (4, 1)] {
        let mut w = write(token, 1, 0);
        w.range = range(index, 0, 4096);
        accepted(p.handle_client_write(now, w));
    }
    let log = p.log();
    assert_eq!((log.tail(), log.head()), (1, 4));
    assert!(log.since(0).is_none());
    let chunks: Vec<u64> = log
        .chunks_since(2)
        .unwrap()
        .iter()
        .map(|c| c.index)
        .collect();
    assert_eq!(chunks, vec![1, 2]);
    assert_eq!(log.since(4).unwrap().count(), 0);
}

#[test]
fn timed_out_member_cannot_rejoin_in_sync() {
    // Goal: a member that never acknowledged a write that timed out is reported, and when it
    // leaves and returns it needs recovery even though nothing new was assigned.
    let now = Instant::now();
    let mut p = primary(now);
    accepted(p.handle_client_write(now, write(1, 5, 0)));
    drain(&mut p);
    p.handle_local_done(now, 11, Ok(()));
    p.handle_replica_reply(now, ok(11, 2, 5));
    p.handle_timeout(now + OP_TIMEOUT_DEFAULT);
    let actions = drain(&mut p);
    assert!(actions.contains(&Action::ReportFailure {
        node: node(3),
        epoch: Epoch(5)
    }));
    p.handle_map(now, map(6, &[1, 2], 2)).unwrap();
    p.handle_map(now, map(7, &[1, 2, 3], 2)).unwrap();
    let expected = MemberSync::NeedsRecovery;
    assert_eq!(p.members()[1], (node(3), expected));
}

#[test]
fn queued_writes_are_assigned_as_pending_room_frees() {
    // Goal: writes queued while the PG was inactive are assigned in order as earlier ones
    // complete, not only on the next map change.
    let now = Instant::now();
    let cfg = PgConfig {
        limits: Limits {
            ops_pending_max: 1,
            ..Limits::default()
        },
        ..config(1)
    };
    let head = ChunkVersion::default();
    let mut p: Engine = PgEngine::new(cfg, map(5, &[1], 2), head, now).unwrap();
    settle(&mut p, &map(5, &[1], 2), now);
    accepted(p.handle_client_write(now, write(1, 5, 0)));
    accepted(p.handle_client_write(now, write(2, 5, 0)));
    p.handle_map(now, map(6, &[1, 2], 2)).unwrap();
    // Node 2 was never known to this primary: it needs recovery, the PG stays inactive.
    assert_eq!(p.state(), PgState::Inactive);
    assert_eq!(
        drain(&mut p),
        vec![Action::Recover {
            member: node(2),
            epoch: Epoch(6)
        }]
    );
    p.handle_map(now, map(7, &[1, 2], 1)).unwrap();
    assert_eq!(p.pending_count(), 1);
    let actions = drain(&mut p);
    let data: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a, Action::LocalApply { .. } | Action::Replicate { .. }))
        .collect();
    assert_eq!(data.len(), 1, "only the local apply: node 2 is recovering");
    assert!(actions.contains(&Action::Recover {
        member: node(2),
        epoch: Epoch(7)
    }));
    p.handle_local_done(now, 1, Ok(()));
    let actions = drain(&mut p);
    assert_eq!(replies(&actions), vec![(1, Status::Ok)]);
    assert!(
        matches!(actions.last(), Some(Action::LocalApply { version, .. }) if version.version == 2)
    );
}

#[test]
fn opcode_and_store_status_mapping() {
    use basalt::wire::Opcode;
    for kind in [OpKind::Write, OpKind::Trim, OpKind::Zeroes] {
        assert_eq!(
            OpKind::from_replicate_opcode(kind.replicate_opcode()),
            Some(kind)
        );
    }
    assert_eq!(
        OpKind::from_client_opcode(Opcode::WriteZeroes),
        Some(OpKind::Zeroes)
    );
    assert_eq!(OpKind::from_client_opcode(Opcode::Read), None);
    let io = crate::store::StoreError::Io(std::io::Error::other("disk"));
    assert_eq!(store_status(&io), Status::IoError);
    assert_eq!(
        store_status(&crate::store::StoreError::NoSpace),
        Status::NoSpace
    );
}

#[test]
fn reads_need_the_lease_and_a_new_primary_waits_out_the_old_one() {
    // Goal: with leases enforced, a primary queues reads while its lease is not valid and
    // serves them when it is renewed; a new primary serves nothing (reads or writes) until
    // `lease_wait` after it took the role, even when peering finished earlier.
    let now = Instant::now();
    let mut p = primary(now);
    p.handle_lease(now, Lease::until(None));
    let read = ClientRead {
        token: Token(1),
        epoch: Epoch(5),
        range: range(0, 0, 4096),
    };
    accepted(p.handle_client_read(now, read));
    assert!(drain(&mut p).is_empty(), "no lease, no read");
    p.handle_lease(now, Lease::until(Some(now + Duration::from_secs(2))));
    assert!(matches!(
        drain(&mut p)[..],
        [Action::LocalRead {
            token: Token(1),
            ..
        }]
    ));
    let later = now + Duration::from_secs(3);
    accepted(p.handle_client_read(
        later,
        ClientRead {
            token: Token(2),
            ..read
        },
    ));
    assert!(drain(&mut p).is_empty(), "the lease ran out");

    let wait = Duration::from_secs(2);
    let cfg = PgConfig {
        limits: Limits {
            lease_wait: wait,
            ..Limits::default()
        },
        ..config(1)
    };
    let view = map(6, &[1, 2], 2);
    let head = ChunkVersion::default();
    let mut q: Engine = PgEngine::new(cfg, view.clone(), head, now).unwrap();
    q.handle_lease(now, Lease::until(Some(now + Duration::from_secs(60))));
    assert_eq!(
        drain(&mut q),
        vec![Action::Peer {
            epoch: Epoch(6),
            members: vec![node(2)]
        }]
    );
    let peered = Peered {
        epoch: Epoch(6),
        head,
        in_sync: vec![node(2)],
    };
    q.handle_peered(now, peered);
    accepted(q.handle_client_write(now, write(3, 6, 9)));
    assert!(drain(&mut q).is_empty(), "waiting out the old lease");
    assert_eq!(q.state(), PgState::Peering);
    assert_eq!(q.poll_timeout(), Some(now + wait));
    q.handle_timeout(now + wait);
    assert_eq!(q.state(), PgState::Active);
    assert!(matches!(drain(&mut q)[0], Action::LocalApply { .. }));
}

#[test]
fn final_sync_completes_writes_that_waited_for_the_member() {
    // Goal: a write assigned with two copies, whose second copy then leaves the write path
    // (it answered Unsynced), waits below min_size; recovering that member does not need the
    // write to finish first: the final sync runs once it is durable locally, and the
    // recovered member counts as its copy.
    let now = Instant::now();
    let mut p = engine(1, map(5, &[1, 2], 2), 10, now);
    accepted(p.handle_client_write(now, write(1, 5, 7)));
    drain(&mut p);
    p.handle_replica_reply(now, reply(11, 2, Status::Unsynced, 5));
    assert!(drain(&mut p).contains(&Action::Recover {
        member: node(2),
        epoch: Epoch(5)
    }));
    assert!(p.handle_recovery_ready(now, node(2), Epoch(5)));
    assert!(drain(&mut p).is_empty(), "v11 not durable here yet");
    p.handle_local_done(now, 11, Ok(()));
    let head = p.head();
    assert_eq!(
        drain(&mut p),
        vec![Action::FinalSync {
            member: node(2),
            epoch: Epoch(5),
            head
        }]
    );
    p.handle_recovery_done(now, node(2), Epoch(5), true);
    assert_eq!(replies(&drain(&mut p)), vec![(1, Status::Ok)]);
    assert_eq!(p.state(), PgState::Active);
}

#[test]
fn transitional_map_is_reported_for_settling_once_every_member_is_in_sync() {
    // Goal: under a transitional acting set the primary asks to settle only when every member
    // is in sync (not while one recovers), repeats the request every SETTLE_RETRY while that
    // holds, and stops once the map is settled.
    let now = Instant::now();
    let mut p = primary(now);
    let settles = |actions: &[Action<u32>]| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Settle { .. }))
            .count()
    };
    // Node 4 joins (a rebalance: node 3 stays until the PG settles).
    let mut transitional = map(6, &[1, 2, 3, 4], 2);
    transitional.settle = Some(Epoch(6));
    p.handle_map(now, transitional.clone()).unwrap();
    let actions = drain(&mut p);
    assert!(actions.contains(&Action::Recover {
        member: node(4),
        epoch: Epoch(6)
    }));
    assert_eq!(settles(&actions), 0, "node 4 still needs recovery");
    assert!(p.handle_recovery_ready(now, node(4), Epoch(6)));
    drain(&mut p);
    p.handle_recovery_done(now, node(4), Epoch(6), true);
    let actions = drain(&mut p);
    assert!(actions.contains(&Action::Settle { since: Epoch(6) }));
    // Nothing more until the retry interval; then again.
    p.handle_timeout(now + Duration::from_millis(10));
    assert_eq!(settles(&drain(&mut p)), 0);
    let later = now + SETTLE_RETRY;
    assert_eq!(p.poll_timeout(), Some(later));
    p.handle_timeout(later);
    assert_eq!(settles(&drain(&mut p)), 1);
    // Settled: node 3 leaves, node 1 stays primary; nothing more to report.
    p.handle_map(later, map(7, &[1, 2, 4], 2)).unwrap();
    drain(&mut p);
    p.handle_timeout(later + SETTLE_RETRY * 2);
    assert_eq!(settles(&drain(&mut p)), 0);
    assert_eq!(p.state(), PgState::Active);
}
