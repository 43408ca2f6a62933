//! [`ReplicationStats`]: what this node's PG tasks and recovery jobs report for metrics and the
//! API, kept outside the tasks so a scrape never waits for one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use basalt::api::{MemberRecovery, NodePgReport, PgEngineState, PgReport};
use basalt::ids::NodeId;

use super::scrub::{ScrubSnapshot, ScrubStats};
use super::service::PgKey;
use super::types::PgState;

/// Per-PG engine states and recovery progress of one node. Updated when a state changes or a
/// chunk is copied (never per client request).
#[derive(Debug, Default)]
pub struct ReplicationStats {
    states: Mutex<HashMap<PgKey, PgState>>,
    remaining: Mutex<HashMap<(PgKey, NodeId), Progress>>,
    /// Members whose running recovery is a backfill (they held nothing of the PG at its start).
    backfills: Mutex<HashSet<(PgKey, NodeId)>>,
    recovered_bytes: AtomicU64,
    recovered_chunks: AtomicU64,
    swept_chunks: AtomicU64,
    /// The scrub's and read repair's figures, and the switch that starts a pass.
    pub(crate) scrub: ScrubStats,
}

/// What a recovery pass still has to copy to one member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Chunks left to fix.
    pub chunks: u64,
    /// Allocated bytes of the chunks left to copy.
    pub bytes: u64,
}

/// Recovery of one member of one PG in a [`ReplicationSnapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberProgress {
    /// The PG.
    pub key: PgKey,
    /// The member being recovered.
    pub member: NodeId,
    /// What is left.
    pub left: Progress,
    /// The member held no chunk of the PG when its recovery started.
    pub backfill: bool,
}

/// A copy of [`ReplicationStats`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationSnapshot {
    /// The engine state of every PG this node runs.
    pub states: Vec<(PgKey, PgState)>,
    /// Chunks the latest recovery passes of this node's primaries still had to copy.
    pub remaining_chunks: u64,
    /// Allocated bytes of those chunks.
    pub remaining_bytes: u64,
    /// Every member being recovered, by PG.
    pub recovery: Vec<MemberProgress>,
    /// Bytes copied by recovery and peering since start.
    pub recovered_bytes: u64,
    /// Chunks copied or deleted by recovery and peering since start.
    pub recovered_chunks: u64,
    /// Chunks the sweep deleted since start (deleted volumes, copies no PG needs here).
    pub swept_chunks: u64,
    /// Scrub and read repair figures.
    pub scrub: ScrubSnapshot,
}

impl ReplicationStats {
    /// Records a PG's engine state.
    pub(crate) fn set_state(&self, key: PgKey, state: PgState) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.insert(key, state);
    }

    /// Records how many chunks recovery of `member` still has to fix (0 removes the entry).
    pub(crate) fn set_remaining(&self, key: PgKey, member: NodeId, chunks: u64) {
        self.set_progress(key, member, Progress { chunks, bytes: 0 });
    }

    /// Records what recovery of `member` still has to fix (0 chunks removes the entry).
    pub(crate) fn set_progress(&self, key: PgKey, member: NodeId, left: Progress) {
        let mut remaining = self
            .remaining
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if left.chunks == 0 {
            remaining.remove(&(key, member));
        } else {
            remaining.insert((key, member), left);
        }
    }

    /// Marks the running recovery of `member` as a backfill (it held nothing of the PG).
    pub(crate) fn mark_backfill(&self, key: PgKey, member: NodeId) {
        let mut backfills = self
            .backfills
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        backfills.insert((key, member));
    }

    /// Recovery of `member` ended (done or cancelled): forgets its backfill mark.
    pub(crate) fn end_recovery(&self, key: PgKey, member: NodeId) {
        let mut backfills = self
            .backfills
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        backfills.remove(&(key, member));
    }

    /// Forgets the recovery progress of every member of `key` (its epoch moved on).
    pub(crate) fn clear_remaining(&self, key: PgKey) {
        let mut remaining = self
            .remaining
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        remaining.retain(|(pg, _), _| *pg != key);
        drop(remaining);
        let mut backfills = self
            .backfills
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        backfills.retain(|(pg, _)| *pg != key);
    }

    /// Counts one chunk fixed with `bytes` copied.
    pub(crate) fn add_recovered(&self, bytes: u64) {
        self.recovered_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.recovered_chunks.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts chunks the sweep deleted.
    pub(crate) fn add_swept(&self, chunks: u64) {
        self.swept_chunks.fetch_add(chunks, Ordering::Relaxed);
    }

    /// The node's scrub: figures, and [`ScrubStats::request_pass`] to start a pass now.
    pub fn scrub(&self) -> &ScrubStats {
        &self.scrub
    }

    /// The current figures.
    pub fn snapshot(&self) -> ReplicationSnapshot {
        let mut states: Vec<(PgKey, PgState)> = self
            .states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(key, state)| (*key, *state))
            .collect();
        states.sort_by_key(|(key, _)| *key);
        let remaining: HashMap<(PgKey, NodeId), Progress> = self
            .remaining
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let backfills: HashSet<(PgKey, NodeId)> = self
            .backfills
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let remaining_chunks = remaining.values().map(|p| p.chunks).sum();
        let remaining_bytes = remaining.values().map(|p| p.bytes).sum();
        // A backfill between two passes has no remaining entry but is still under way.
        let mut members: Vec<(PgKey, NodeId)> =
            remaining.keys().chain(backfills.iter()).copied().collect();
        members.sort_unstable();
        members.dedup();
        let recovery = members
            .into_iter()
            .map(|(key, member)| MemberProgress {
                key,
                member,
                left: remaining.get(&(key, member)).copied().unwrap_or_default(),
                backfill: backfills.contains(&(key, member)),
            })
            .collect();
        ReplicationSnapshot {
            states,
            remaining_chunks,
            remaining_bytes,
            recovery,
            recovered_bytes: self.recovered_bytes.load(Ordering::Relaxed),
            recovered_chunks: self.recovered_chunks.load(Ordering::Relaxed),
            swept_chunks: self.swept_chunks.load(Ordering::Relaxed),
            scrub: self.scrub.snapshot(),
        }
    }
}

impl From<PgState> for PgEngineState {
    fn from(state: PgState) -> Self {
        match state {
            PgState::Active => PgEngineState::Active,
            PgState::Degraded => PgEngineState::Degraded,
            PgState::Inactive => PgEngineState::Inactive,
            PgState::Peering => PgEngineState::Peering,
            PgState::Recovering => PgEngineState::Recovering,
            PgState::Replica => PgEngineState::Replica,
            PgState::Stray => PgEngineState::Stray,
            PgState::Failed => PgEngineState::Failed,
        }
    }
}

impl ReplicationSnapshot {
    /// This snapshot as `node`'s report for the cluster-wide PG states: the PGs it runs as
    /// primary (replica and stray engines say nothing about a PG's state) with their members'
    /// recovery.
    pub fn pg_report(&self, node: NodeId) -> NodePgReport {
        let mut recovery: HashMap<PgKey, Vec<MemberRecovery>> = HashMap::new();
        for progress in &self.recovery {
            recovery
                .entry(progress.key)
                .or_default()
                .push(MemberRecovery {
                    node: progress.member.0,
                    objects: progress.left.chunks,
                    bytes: progress.left.bytes,
                    backfill: progress.backfill,
                });
        }
        let pgs = self
            .states
            .iter()
            .filter(|(_, state)| !matches!(state, PgState::Replica | PgState::Stray))
            .map(|(key, state)| PgReport {
                pool: key.pool.0,
                pg: key.pg.0,
                engine: (*state).into(),
                recovery: recovery.remove(key).unwrap_or_default(),
            })
            .collect();
        NodePgReport {
            node: node.0,
            pgs,
            recovered_bytes: self.recovered_bytes,
            recovered_objects: self.recovered_chunks,
        }
    }
}

#[cfg(test)]
mod tests {
    use basalt::ids::PgId;
    use basalt::placement::PoolId;

    use super::*;

    fn key(pg: u32) -> PgKey {
        PgKey {
            pool: PoolId(3),
            pg: PgId(pg),
        }
    }

    /// Goal: the report lists the PGs this node leads with their members' recovery (bytes,
    /// backfill), leaves out replica and stray engines, and a backfill between two passes
    /// (no chunks counted) still shows.
    #[test]
    fn pg_report_lists_led_pgs_with_recovery() {
        let stats = ReplicationStats::default();
        stats.set_state(key(0), PgState::Recovering);
        stats.set_state(key(1), PgState::Replica);
        stats.set_state(key(2), PgState::Recovering);
        stats.set_state(key(3), PgState::Active);
        let left = Progress {
            chunks: 4,
            bytes: 4096,
        };
        stats.set_progress(key(0), NodeId(2), left);
        stats.mark_backfill(key(2), NodeId(4));
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.remaining_chunks, 4);
        assert_eq!(snapshot.remaining_bytes, 4096);
        let report = snapshot.pg_report(NodeId(1));
        assert_eq!(report.node, 1);
        let pgs: Vec<u32> = report.pgs.iter().map(|pg| pg.pg).collect();
        assert_eq!(pgs, [0, 2, 3]);
        assert_eq!(report.pgs[0].remaining(), (4, 4096));
        assert!(!report.pgs[0].recovery[0].backfill);
        assert!(report.pgs[1].recovery[0].backfill);
        assert_eq!(report.pgs[1].remaining(), (0, 0));
        assert!(report.pgs[2].recovery.is_empty());

        // The epoch moved on: progress and backfill marks are gone.
        stats.clear_remaining(key(0));
        stats.clear_remaining(key(2));
        let snapshot = stats.snapshot();
        assert!(snapshot.recovery.is_empty());
        assert_eq!(snapshot.remaining_chunks, 0);
    }
}
