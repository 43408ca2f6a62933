//! Hash maps keyed by the store's own sequential ids (request tags, operation ids).
//!
//! Every request passes through several such maps on the drive thread (reply tag, read state,
//! operation purpose, in-flight operation). The default SipHash costs more than the map work for
//! a `u64` key; these keys are counters the store hands out itself, never input from outside, so
//! a multiplicative hash is enough and cannot be steered into collisions by a client.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by a store-generated `u64` id.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A new, empty [`IdMap`].
pub fn id_map<V>() -> IdMap<V> {
    IdMap::default()
}

/// Fibonacci hashing of one `u64`: the multiplication spreads consecutive ids over the high
/// bits (which hashbrown uses for its control bytes) and keeps the low bits distinct.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher {
    hash: u64,
}

/// 2^64 divided by the golden ratio, rounded to odd.
const FIBONACCI_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.hash
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are expected; fold anything else in byte by byte.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.hash = (self.hash.rotate_left(5) ^ id).wrapping_mul(FIBONACCI_MULTIPLIER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_spread_and_round_trip() {
        let mut map = id_map();
        for id in 0..10_000u64 {
            map.insert(id, id * 2);
        }
        for id in 0..10_000u64 {
            assert_eq!(map.remove(&id), Some(id * 2));
        }
        assert!(map.is_empty());
        let top_bits: std::collections::HashSet<u64> = (0..128u64)
            .map(|id| {
                let mut h = IdHasher::default();
                h.write_u64(id);
                h.finish() >> 57
            })
            .collect();
        assert!(
            top_bits.len() > 64,
            "control bytes should vary: {}",
            top_bits.len()
        );
    }
}
