//! The failure detector: grace for a fresh leader, down/up/out verdicts, no repeats.

use super::*;
use std::time::Duration;

const DOWN_MS: u64 = 5_000;
const OUT_MS: u64 = 60_000;

fn detector(now: u64) -> FailureDetector {
    FailureDetector::new(
        Duration::from_millis(DOWN_MS),
        Duration::from_millis(OUT_MS),
        now,
    )
}

fn verdicts(proposals: &[Proposal]) -> Vec<(u64, Verdict)> {
    proposals.iter().map(|p| (p.node.0, p.verdict)).collect()
}

/// Applies the detector's proposals to the state (as the leader would, through Raft).
fn apply_all(state: &mut MetaState, now: u64, proposals: &[Proposal]) {
    for proposal in proposals {
        let _ = run(state, now, proposal.command());
    }
}

#[test]
fn fresh_leader_gives_a_full_grace_period() {
    let state = cluster(3, 16);
    let leader_since = T0 + 1_000_000;
    let mut detector = detector(leader_since);
    assert!(detector.tick(leader_since + DOWN_MS - 1, &state).is_empty());
    let proposals = detector.tick(leader_since + DOWN_MS, &state);
    assert_eq!(
        verdicts(&proposals),
        vec![(1, Verdict::Down), (2, Verdict::Down), (3, Verdict::Down)]
    );
}

#[test]
fn heartbeating_nodes_stay_up_and_silent_ones_go_down_once() {
    let mut state = cluster(3, 16);
    let mut detector = detector(T0);
    let mut now = T0;
    let mut downs = Vec::new();
    for _ in 0..20 {
        now += 1_000;
        detector.handle_heartbeat(NodeId(1), now);
        detector.handle_heartbeat(NodeId(2), now);
        let proposals = detector.tick(now, &state);
        downs.extend(verdicts(&proposals));
        apply_all(&mut state, now, &proposals);
    }
    assert_eq!(downs, vec![(3, Verdict::Down)]);
}

#[test]
fn an_unapplied_proposal_is_retried_only_after_down_after() {
    let state = cluster(1, 16);
    let mut detector = detector(T0);
    let mut at = Vec::new();
    for step in 1..=40 {
        let now = T0 + step * 500;
        if !detector.tick(now, &state).is_empty() {
            at.push(now - T0);
        }
    }
    assert_eq!(at, vec![5_000, 10_000, 15_000, 20_000]);
}

#[test]
fn a_down_node_that_returns_is_marked_up() {
    let mut state = cluster(3, 16);
    let mut detector = detector(T0);
    let now = T0 + DOWN_MS;
    detector.handle_heartbeat(NodeId(1), now);
    detector.handle_heartbeat(NodeId(2), now);
    let proposals = detector.tick(now, &state);
    apply_all(&mut state, now, &proposals);
    assert_eq!(node_state(&state, 3), NodeState::Down);
    detector.handle_heartbeat(NodeId(3), now + 100);
    let proposals = detector.tick(now + 200, &state);
    assert_eq!(verdicts(&proposals), vec![(3, Verdict::Up)]);
    apply_all(&mut state, now + 200, &proposals);
    assert_eq!(node_state(&state, 3), NodeState::Up);
}

#[test]
fn a_node_down_for_out_after_is_marked_out_and_back_up_when_it_returns() {
    let mut state = cluster(4, 16);
    let mut detector = detector(T0);
    let mut now = T0;
    let mut seen = Vec::new();
    while now < T0 + OUT_MS + 2 * DOWN_MS {
        now += 1_000;
        for node in 1..=3 {
            detector.handle_heartbeat(NodeId(node), now);
        }
        let proposals = detector.tick(now, &state);
        seen.extend(verdicts(&proposals));
        apply_all(&mut state, now, &proposals);
    }
    assert_eq!(seen, vec![(4, Verdict::Down), (4, Verdict::Out)]);
    assert_eq!(node_state(&state, 4), NodeState::Out);
    detector.handle_heartbeat(NodeId(4), now);
    assert_eq!(
        verdicts(&detector.tick(now, &state)),
        vec![(4, Verdict::Up)]
    );
}

#[test]
fn an_operator_out_node_stays_out_while_it_heartbeats() {
    let mut state = cluster(4, 16);
    let out = CommandKind::MarkNodeOut {
        node: NodeId(4),
        by_operator: true,
    };
    run(&mut state, T0 + 10, out).unwrap();
    let mut detector = detector(T0);
    for node in 1..=4 {
        detector.handle_heartbeat(NodeId(node), T0 + 1_000);
    }
    assert!(detector.tick(T0 + 1_000, &state).is_empty());
}

#[test]
fn a_new_leader_waits_before_marking_a_long_down_node_out() {
    let mut state = cluster(4, 16);
    run(
        &mut state,
        T0 + 10,
        CommandKind::MarkNodeDown { node: NodeId(4) },
    )
    .unwrap();
    let leader_since = T0 + 10 * OUT_MS;
    let mut detector = detector(leader_since);
    for node in 1..=3 {
        detector.handle_heartbeat(NodeId(node), leader_since + 1);
    }
    assert!(detector.tick(leader_since + 1, &state).is_empty());
    // Node 4 gets its grace: a heartbeat within it brings it back instead.
    detector.handle_heartbeat(NodeId(4), leader_since + 2);
    assert_eq!(
        verdicts(&detector.tick(leader_since + 3, &state)),
        vec![(4, Verdict::Up)]
    );
    let mut other = self::detector(leader_since);
    for node in 1..=3 {
        other.handle_heartbeat(NodeId(node), leader_since + DOWN_MS);
    }
    assert_eq!(
        verdicts(&other.tick(leader_since + DOWN_MS, &state)),
        vec![(4, Verdict::Out)]
    );
}

#[test]
fn unknown_nodes_are_forgotten_and_heartbeats_exported() {
    let state = cluster(2, 16);
    let mut detector = detector(T0);
    detector.handle_heartbeat(NodeId(1), T0 + 5);
    detector.handle_heartbeat(NodeId(77), T0 + 5);
    detector.tick(T0 + 6, &state);
    assert_eq!(detector.heartbeats(), vec![(NodeId(1), T0 + 5)]);
}
