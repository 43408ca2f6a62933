//! [`ReplicationStats`]: what this node's PG tasks and recovery jobs report for metrics and the
//! API, kept outside the tasks so a scrape never waits for one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use basalt::ids::NodeId;

use super::scrub::{ScrubSnapshot, ScrubStats};
use super::service::PgKey;
use super::types::PgState;

/// Per-PG engine states and recovery progress of one node. Updated when a state changes or a
/// chunk is copied (never per client request).
#[derive(Debug, Default)]
pub struct ReplicationStats {
    states: Mutex<HashMap<PgKey, PgState>>,
    remaining: Mutex<HashMap<(PgKey, NodeId), u64>>,
    recovered_bytes: AtomicU64,
    recovered_chunks: AtomicU64,
    /// The scrub's and read repair's figures, and the switch that starts a pass.
    pub(crate) scrub: ScrubStats,
}

/// A copy of [`ReplicationStats`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationSnapshot {
    /// The engine state of every PG this node runs.
    pub states: Vec<(PgKey, PgState)>,
    /// Chunks the latest recovery passes of this node's primaries still had to copy.
    pub remaining_chunks: u64,
    /// Bytes copied by recovery and peering since start.
    pub recovered_bytes: u64,
    /// Chunks copied or deleted by recovery and peering since start.
    pub recovered_chunks: u64,
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
        let mut remaining = self
            .remaining
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if chunks == 0 {
            remaining.remove(&(key, member));
        } else {
            remaining.insert((key, member), chunks);
        }
    }

    /// Forgets the recovery progress of every member of `key` (its epoch moved on).
    pub(crate) fn clear_remaining(&self, key: PgKey) {
        let mut remaining = self
            .remaining
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        remaining.retain(|(pg, _), _| *pg != key);
    }

    /// Counts one chunk fixed with `bytes` copied.
    pub(crate) fn add_recovered(&self, bytes: u64) {
        self.recovered_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.recovered_chunks.fetch_add(1, Ordering::Relaxed);
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
        let remaining_chunks = self
            .remaining
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .sum();
        ReplicationSnapshot {
            states,
            remaining_chunks,
            recovered_bytes: self.recovered_bytes.load(Ordering::Relaxed),
            recovered_chunks: self.recovered_chunks.load(Ordering::Relaxed),
            scrub: self.scrub.snapshot(),
        }
    }
}
