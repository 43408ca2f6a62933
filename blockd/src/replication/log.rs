//! The PG log: the most recent mutations this node submitted to its store, in version order.
//!
//! Issue 5's log-based catch-up asks "which chunks changed after version v?" to bring a
//! returning member level without copying the whole PG; peering compares log heads. The log is
//! bounded ([`super::Limits::log_entries_max`]): a member further behind than its tail is
//! backfilled instead. It lives in memory and starts empty at open (its tail is then the
//! store's head): persisting it is part of issue 5's resumable recovery.

use std::collections::{BTreeSet, VecDeque};

use basalt::ids::{ChunkKey, ChunkVersion};

use super::types::{ChunkRange, OpKind};

/// One mutation, without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The (epoch, version) it was applied with.
    pub version: ChunkVersion,
    /// Where it applied.
    pub range: ChunkRange,
    /// What it did.
    pub kind: OpKind,
}

/// A bounded, contiguous run of log entries: versions `tail+1 ..= head`.
#[derive(Clone, Debug)]
pub struct PgLog {
    entries: VecDeque<LogEntry>,
    capacity: usize,
    /// The newest version *not* in the log: every version after it (up to the head) is.
    tail: u64,
}

impl PgLog {
    /// An empty log whose history starts after `head` (the store's head at open).
    pub fn new(capacity: usize, head: u64) -> Self {
        assert!(capacity > 0, "a PG log needs room for one entry");
        Self {
            entries: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            tail: head,
        }
    }

    /// Appends the next version, dropping the oldest entry when full.
    pub(crate) fn append(&mut self, entry: LogEntry) {
        assert_eq!(
            entry.version.version,
            self.head() + 1,
            "PG log must stay contiguous"
        );
        if self.entries.len() == self.capacity
            && let Some(oldest) = self.entries.pop_front()
        {
            self.tail = oldest.version.version;
        }
        self.entries.push_back(entry);
        debug_assert!(self.entries.len() <= self.capacity);
    }

    /// The newest version in the log (its tail when empty).
    pub fn head(&self) -> u64 {
        self.entries
            .back()
            .map_or(self.tail, |entry| entry.version.version)
    }

    /// The newest version not in the log; entries cover `tail+1 ..= head`.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &LogEntry> {
        self.entries.iter()
    }

    /// The entries after `version`, oldest first; `None` if the log no longer reaches back to
    /// `version` (the member must be backfilled).
    pub fn since(&self, version: u64) -> Option<impl Iterator<Item = &LogEntry>> {
        if version < self.tail {
            return None;
        }
        let skip = usize::try_from(version - self.tail).unwrap_or(usize::MAX);
        Some(self.entries.iter().skip(skip))
    }

    /// The chunks changed after `version`: what log-based catch-up copies.
    pub fn chunks_since(&self, version: u64) -> Option<BTreeSet<ChunkKey>> {
        Some(
            self.since(version)?
                .map(|entry| entry.range.chunk)
                .collect(),
        )
    }
}
