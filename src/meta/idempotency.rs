//! Idempotency keys of creating calls: a retried create with the same key and the same
//! request returns the first result instead of failing with "exists" or creating twice.
//!
//! Only successes are recorded: a refused create changed nothing, so repeating it simply runs
//! it again. Entries expire `IDEMPOTENCY_RETENTION_MS` after they were recorded (state time,
//! which is monotonic, so expiry order is insertion order), and at most `IDEMPOTENCY_KEYS_MAX`
//! are kept (the oldest go first) so a client cannot grow the state without bound.

use super::outcome::{MetaError, Outcome};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};

/// How long a key is remembered: a day covers any sane client retry loop.
pub const IDEMPOTENCY_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;
/// Most keys remembered at once.
pub const IDEMPOTENCY_KEYS_MAX: usize = 10_000;
/// Longest key, in bytes.
pub const IDEMPOTENCY_KEY_LENGTH_MAX: usize = 255;

/// SHA-256 of a create request's fields: what a repeated key must match.
pub(super) fn create_fingerprint(name: &str, size_bytes: u64, replicas: Option<u8>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"create-volume\0");
    hasher.update((name.len() as u64).to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update(size_bytes.to_le_bytes());
    hasher.update([u8::from(replicas.is_some()), replicas.unwrap_or(0)]);
    hasher.finalize().into()
}

/// Whether `key` is 1..=255 printable ASCII characters (it arrives as an HTTP header).
pub fn is_valid_idempotency_key(key: &str) -> bool {
    (1..=IDEMPOTENCY_KEY_LENGTH_MAX).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    fingerprint: [u8; 32],
    outcome: Outcome,
    recorded_unix_ms: u64,
}

/// The remembered keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyStore {
    entries: BTreeMap<String, Entry>,
    /// Keys in the order they were recorded (oldest first).
    order: VecDeque<String>,
}

impl IdempotencyStore {
    /// The first result for `key`, if it is remembered with the same request; a conflict if
    /// it is remembered with another; `None` if unknown.
    pub(super) fn lookup(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
    ) -> Result<Option<Outcome>, MetaError> {
        if !is_valid_idempotency_key(key) {
            return Err(MetaError::InvalidIdempotencyKey);
        }
        match self.entries.get(key) {
            Some(entry) if entry.fingerprint == *fingerprint => Ok(Some(entry.outcome.clone())),
            Some(_) => Err(MetaError::IdempotencyConflict {
                key: key.to_owned(),
            }),
            None => Ok(None),
        }
    }

    /// Remembers a success (the key was looked up and is unknown).
    pub(super) fn record(&mut self, key: &str, fingerprint: [u8; 32], outcome: Outcome, now: u64) {
        debug_assert!(!self.entries.contains_key(key));
        let entry = Entry {
            fingerprint,
            outcome,
            recorded_unix_ms: now,
        };
        self.entries.insert(key.to_owned(), entry);
        self.order.push_back(key.to_owned());
        while self.order.len() > IDEMPOTENCY_KEYS_MAX {
            self.pop_oldest();
        }
    }

    /// Forgets keys older than the retention period.
    pub(super) fn prune(&mut self, now_unix_ms: u64) {
        while let Some(oldest) = self.order.front() {
            let expired = self.entries.get(oldest).is_none_or(|entry| {
                entry
                    .recorded_unix_ms
                    .saturating_add(IDEMPOTENCY_RETENTION_MS)
                    <= now_unix_ms
            });
            if !expired {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(key) = self.order.pop_front() {
            self.entries.remove(&key);
        }
    }

    /// Number of remembered keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Structural check for a decoded snapshot: index and order agree, within the cap.
    pub(super) fn is_consistent(&self) -> bool {
        let distinct: std::collections::BTreeSet<&String> = self.order.iter().collect();
        self.entries.len() == self.order.len()
            && distinct.len() == self.order.len()
            && self.order.len() <= IDEMPOTENCY_KEYS_MAX
            && self.order.iter().all(|key| self.entries.contains_key(key))
    }
}
