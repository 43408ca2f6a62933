//! What this node submitted to its store and what the store reported durable.
//!
//! Shared by both roles, so a node that changes role keeps counting its own store correctly:
//! writes it submitted as primary still complete after it stepped down, and a replica that
//! becomes primary assigns after the last version it submitted.
//!
//! Durability is tracked as a prefix: a version counts as durable on this node only when it and
//! every earlier version are (the store may complete writes out of order). So a copy counted
//! for an acknowledgement always holds the whole history before it, which is what a log head
//! means to peering (issue 5).

use std::collections::{BTreeMap, BTreeSet};

use basalt::ids::ChunkVersion;

use super::types::Token;

/// Submission head, writes not yet durable, and replica acknowledgements waiting for them.
#[derive(Debug)]
pub(crate) struct Local {
    head: ChunkVersion,
    in_flight: BTreeSet<u64>,
    waiters: BTreeMap<u64, Vec<Token>>,
    waiter_count: usize,
}

impl Local {
    /// Starts at the store's head: everything up to it is durable.
    pub(crate) fn new(head: ChunkVersion) -> Self {
        Self {
            head,
            in_flight: BTreeSet::new(),
            waiters: BTreeMap::new(),
            waiter_count: 0,
        }
    }

    /// The last version submitted to the store.
    pub(crate) fn head(&self) -> ChunkVersion {
        self.head
    }

    /// Moves the head to `head` (peering adopted it, or a primary declared this copy level
    /// with it). Nothing may be in flight: the store's labels are what was compared.
    pub(crate) fn reset(&mut self, head: ChunkVersion) {
        assert!(
            self.in_flight.is_empty(),
            "head reset with writes in flight"
        );
        self.head = head;
    }

    /// Records that `version` (the next one) was submitted.
    pub(crate) fn submit(&mut self, version: ChunkVersion) {
        assert_eq!(
            version.version,
            self.head.version + 1,
            "versions are submitted in order"
        );
        debug_assert!(version > self.head, "(epoch, version) only grows");
        self.head = version;
        self.in_flight.insert(version.version);
    }

    /// Records the store's completion of `version`; false if it was not in flight.
    pub(crate) fn complete(&mut self, version: u64) -> bool {
        self.in_flight.remove(&version)
    }

    /// Every version up to this one is durable here.
    pub(crate) fn durable_through(&self) -> u64 {
        self.in_flight
            .first()
            .map_or(self.head.version, |first| first - 1)
    }

    /// Number of acknowledgements waiting for durability.
    pub(crate) fn waiter_count(&self) -> usize {
        self.waiter_count
    }

    /// Answers `token` once `version` is durable here.
    pub(crate) fn add_waiter(&mut self, version: u64, token: Token) {
        debug_assert!(
            version <= self.head.version,
            "waiting for a version never submitted"
        );
        self.waiters.entry(version).or_default().push(token);
        self.waiter_count += 1;
    }

    /// Removes and returns the waiters whose version is now durable.
    pub(crate) fn take_durable_waiters(&mut self) -> Vec<Token> {
        let durable = self.durable_through();
        let later = self.waiters.split_off(&(durable + 1));
        let ready = std::mem::replace(&mut self.waiters, later);
        let tokens: Vec<Token> = ready.into_values().flatten().collect();
        self.waiter_count -= tokens.len();
        tokens
    }

    /// Removes and returns every waiter (the store failed).
    pub(crate) fn take_all_waiters(&mut self) -> Vec<Token> {
        self.waiter_count = 0;
        std::mem::take(&mut self.waiters)
            .into_values()
            .flatten()
            .collect()
    }
}
