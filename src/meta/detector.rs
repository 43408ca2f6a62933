//! The failure detector the Raft leader runs (DESIGN §5): heartbeats in, node-state proposals
//! out. Pure: the caller passes the time and the current state.
//!
//! Rules, for each registered node (`down_after`, `out_after` from the config):
//! - **up → down** when nothing was heard from it for `down_after`. Silence is counted from the
//!   later of its last heartbeat to *this* leader and the moment this leader took over, so a
//!   fresh leader (which never heard anyone) gives every node a full `down_after` of grace.
//! - **down → up** (and **out → up**, unless an operator marked it out) when it was heard
//!   within the last `down_after`.
//! - **down → out** when it has been down (by state time) for `out_after` and this leader has
//!   been in charge for at least `down_after` without hearing from it.
//!
//! A proposal is not repeated for the same node and verdict within `down_after`: it is in the
//! log by then or was refused (e.g. marking out a node a pool cannot spare), and retrying at
//! that pace is enough.

use super::command::CommandKind;
use super::state::MetaState;
use crate::ids::NodeId;
use crate::placement::{NODES_MAX, NodeState};
use std::collections::BTreeMap;
use std::time::Duration;

/// What the detector wants done to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Propose `MarkNodeDown`.
    Down,
    /// Propose `MarkNodeUp`.
    Up,
    /// Propose `MarkNodeOut` (by the detector, not an operator).
    Out,
}

/// One proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The node.
    pub node: NodeId,
    /// What to do.
    pub verdict: Verdict,
}

impl Proposal {
    /// The command to propose.
    pub fn command(&self) -> CommandKind {
        match self.verdict {
            Verdict::Down => CommandKind::MarkNodeDown { node: self.node },
            Verdict::Up => CommandKind::MarkNodeUp { node: self.node },
            Verdict::Out => CommandKind::MarkNodeOut {
                node: self.node,
                by_operator: false,
            },
        }
    }
}

/// Heartbeat bookkeeping of one leadership term. Create a new one on becoming leader.
#[derive(Clone, Debug)]
pub struct FailureDetector {
    down_after_ms: u64,
    out_after_ms: u64,
    leader_since_ms: u64,
    last_heard_ms: BTreeMap<NodeId, u64>,
    proposed: BTreeMap<NodeId, (Verdict, u64)>,
}

impl FailureDetector {
    /// A detector for a leader that took over at `now_ms` (Unix ms).
    pub fn new(down_after: Duration, out_after: Duration, now_ms: u64) -> Self {
        // Sub-millisecond settings round up to 1 ms: a zero grace would mark everyone down.
        let down_after_ms = u64::try_from(down_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let out_after_ms = u64::try_from(out_after.as_millis()).unwrap_or(u64::MAX);
        Self {
            down_after_ms,
            out_after_ms,
            leader_since_ms: now_ms,
            last_heard_ms: BTreeMap::new(),
            proposed: BTreeMap::new(),
        }
    }

    /// A heartbeat from `node` arrived at `now_ms`.
    pub fn handle_heartbeat(&mut self, node: NodeId, now_ms: u64) {
        if self.last_heard_ms.len() >= NODES_MAX && !self.last_heard_ms.contains_key(&node) {
            return; // An unknown flood; `tick` drops ids the state does not know.
        }
        let last = self.last_heard_ms.entry(node).or_insert(now_ms);
        *last = (*last).max(now_ms);
    }

    /// The state changes to propose now, given the current state.
    pub fn tick(&mut self, now_ms: u64, state: &MetaState) -> Vec<Proposal> {
        self.last_heard_ms
            .retain(|node, _| state.nodes().contains_key(node));
        self.proposed
            .retain(|node, _| state.nodes().contains_key(node));
        let mut proposals = Vec::new();
        for (id, record) in state.nodes() {
            let Some(verdict) = self.verdict(now_ms, *id, record) else {
                continue;
            };
            let repeat = self.proposed.get(id).is_some_and(|(previous, at)| {
                *previous == verdict && now_ms.saturating_sub(*at) < self.down_after_ms
            });
            if !repeat {
                self.proposed.insert(*id, (verdict, now_ms));
                proposals.push(Proposal { node: *id, verdict });
            }
        }
        debug_assert!(proposals.len() <= state.nodes().len());
        proposals
    }

    fn verdict(&self, now_ms: u64, id: NodeId, record: &super::NodeRecord) -> Option<Verdict> {
        let heard = self.last_heard_ms.get(&id).copied();
        let silent_since = heard.unwrap_or(0).max(self.leader_since_ms);
        let silent = now_ms.saturating_sub(silent_since) >= self.down_after_ms;
        let heard_recently = heard.is_some() && !silent;
        match record.state {
            NodeState::Up if silent => Some(Verdict::Down),
            NodeState::Down if heard_recently => Some(Verdict::Up),
            NodeState::Down => {
                let down_for = now_ms.saturating_sub(record.state_since_unix_ms);
                (silent && down_for >= self.out_after_ms).then_some(Verdict::Out)
            }
            NodeState::Out if heard_recently && !record.out_by_operator => Some(Verdict::Up),
            // A draining node that stopped: its drain is over, whether or not it finished.
            NodeState::Draining if silent => Some(Verdict::Out),
            _ => None,
        }
    }

    /// The last heartbeat heard from each node, for a `RecordHeartbeats` command (the leader
    /// proposes one every few seconds so the API can show heartbeat ages).
    pub fn heartbeats(&self) -> Vec<(NodeId, u64)> {
        self.last_heard_ms
            .iter()
            .map(|(node, at)| (*node, *at))
            .collect()
    }
}
