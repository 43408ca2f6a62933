//! Transport counters: plain atomics, read by tests and exported as metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use super::error::CloseReason;
use crate::metrics::LatencyHistogram;

/// Counters of one server or one pool of clients. Shared behind an `Arc`; every update is a
/// relaxed atomic add, so counting costs nothing on the I/O path.
#[derive(Debug, Default)]
pub struct PeerStats {
    accepted: AtomicU64,
    established: AtomicU64,
    requests: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
    /// Latency of REPLICATE_* calls (clients): the primary's fan-out to each replica.
    pub replicate_latency: LatencyHistogram,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStatsSnapshot {
    /// TCP connections accepted (servers) or dialled (clients).
    pub accepted: u64,
    /// Connections whose handshake succeeded.
    pub established: u64,
    /// Requests handled (servers) or sent (clients).
    pub requests: u64,
    /// Connections closed, per reason, indexed like [`CloseReason::ALL`].
    pub closed: [u64; CloseReason::ALL.len()],
}

impl PeerStatsSnapshot {
    /// Connections closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }
}

impl PeerStats {
    /// The current counters.
    pub fn snapshot(&self) -> PeerStatsSnapshot {
        PeerStatsSnapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            established: self.established.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            closed: std::array::from_fn(|index| self.closed[index].load(Ordering::Relaxed)),
        }
    }

    /// Connections closed for `reason` so far.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn on_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_established(&self) {
        self.established.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_closed(&self, reason: CloseReason) {
        self.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: each reason has its own counter slot (the index matches `ALL`).
    #[test]
    fn reasons_index_their_own_counter() {
        let stats = PeerStats::default();
        for (count, reason) in CloseReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), count);
            for _ in 0..=count {
                stats.on_closed(reason);
            }
        }
        let snapshot = stats.snapshot();
        for (count, reason) in CloseReason::ALL.into_iter().enumerate() {
            assert_eq!(snapshot.closed(reason), count as u64 + 1);
        }
    }
}
