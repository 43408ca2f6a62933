//! Data-block allocator with a quarantine for freed blocks.
//!
//! A bitmap of the data area, searched next-fit from a cursor so that a large write (and a run
//! of small ones) lands on consecutive blocks. A block freed by a durable remap is not reusable
//! at once: a read issued before the remap may still be reading it. Freed blocks wait in a
//! quarantine tagged with a "free generation" and are released once every read that started
//! before that generation has completed.

use std::collections::{BTreeMap, VecDeque};

/// A run of consecutive physical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// First block.
    pub start: u32,
    /// Number of blocks.
    pub len: u32,
}

/// Bitmap allocator over `block_count` data blocks.
#[derive(Debug)]
pub struct Allocator {
    bits: Vec<u64>,
    block_count: u32,
    free_count: u32,
    cursor: u32,
    free_generation: u64,
    quarantine: VecDeque<(u64, Vec<u32>)>,
    quarantined_count: u32,
    reads_in_flight: BTreeMap<u64, u32>,
}

impl Allocator {
    /// All blocks free.
    pub fn new(block_count: u32) -> Self {
        assert!(block_count > 0);
        Self {
            bits: vec![0; (block_count as usize).div_ceil(64)],
            block_count,
            free_count: block_count,
            cursor: 0,
            free_generation: 0,
            quarantine: VecDeque::new(),
            quarantined_count: 0,
            reads_in_flight: BTreeMap::new(),
        }
    }

    /// Blocks available for allocation now.
    pub fn free_count(&self) -> u32 {
        self.free_count
    }

    /// Blocks in use, including quarantined ones.
    pub fn used_count(&self) -> u32 {
        self.block_count - self.free_count
    }

    /// Blocks freed but still quarantined.
    pub fn quarantined_count(&self) -> u32 {
        self.quarantined_count
    }

    /// Whether `block` is in use.
    pub fn is_used(&self, block: u32) -> bool {
        self.bits[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// Marks a block used (loading metadata at open). Returns false if it already was: two
    /// mappings claim the same block.
    pub fn mark_used(&mut self, block: u32) -> bool {
        assert!(
            block < self.block_count,
            "block {block} outside the data area"
        );
        if self.is_used(block) {
            return false;
        }
        self.bits[(block / 64) as usize] |= 1 << (block % 64);
        self.free_count -= 1;
        true
    }

    fn clear(&mut self, block: u32) {
        debug_assert!(self.is_used(block));
        self.bits[(block / 64) as usize] &= !(1 << (block % 64));
        self.free_count += 1;
    }

    /// Allocates `count` blocks as few runs as possible, or nothing if fewer are free.
    pub fn allocate(&mut self, count: u32) -> Option<Vec<Run>> {
        if count == 0 || count > self.free_count {
            return None;
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut needed = count;
        let mut block = self.cursor;
        let mut scanned: u64 = 0;
        while needed > 0 {
            assert!(
                scanned <= u64::from(self.block_count),
                "free count out of sync with bitmap"
            );
            if block >= self.block_count {
                block = 0;
            }
            if self.skip_full_word(&mut block, &mut scanned) {
                continue;
            }
            if !self.is_used(block) {
                self.mark_used(block);
                match runs.last_mut() {
                    Some(run) if run.start + run.len == block => run.len += 1,
                    _ => runs.push(Run {
                        start: block,
                        len: 1,
                    }),
                }
                needed -= 1;
            }
            block += 1;
            scanned += 1;
        }
        self.cursor = block % self.block_count;
        Some(runs)
    }

    /// Skips a whole bitmap word when it is full and `block` is at its start.
    fn skip_full_word(&self, block: &mut u32, scanned: &mut u64) -> bool {
        if (*block).is_multiple_of(64) && self.bits[(*block / 64) as usize] == u64::MAX {
            let step = 64.min(self.block_count - *block);
            *block += step;
            *scanned += u64::from(step);
            return true;
        }
        false
    }

    /// Returns blocks: reusable after every read that started before now has completed.
    pub fn free(&mut self, blocks: Vec<u32>) {
        if blocks.is_empty() {
            return;
        }
        self.free_generation += 1;
        self.quarantined_count += blocks.len() as u32;
        self.quarantine.push_back((self.free_generation, blocks));
        self.release();
    }

    /// Returns blocks for immediate reuse (no read can reference them).
    pub fn free_now(&mut self, block: u32) {
        self.clear(block);
    }

    /// Registers a starting read; pass the token to `read_done`.
    pub fn read_started(&mut self) -> u64 {
        *self
            .reads_in_flight
            .entry(self.free_generation)
            .or_default() += 1;
        self.free_generation
    }

    /// A read registered with `token` completed.
    pub fn read_done(&mut self, token: u64) {
        let Some(count) = self.reads_in_flight.get_mut(&token) else {
            debug_assert!(false, "read_done without read_started");
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.reads_in_flight.remove(&token);
            self.release();
        }
    }

    fn release(&mut self) {
        let oldest_read = self.reads_in_flight.keys().next().copied();
        while let Some((generation, _)) = self.quarantine.front() {
            // A read with token t started before every free of generation > t.
            if oldest_read.is_some_and(|t| t < *generation) {
                break;
            }
            let Some((_, blocks)) = self.quarantine.pop_front() else {
                break;
            };
            self.quarantined_count -= blocks.len() as u32;
            for b in blocks {
                self.clear(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_contiguously_and_wraps() {
        let mut a = Allocator::new(200);
        assert_eq!(a.allocate(10), Some(vec![Run { start: 0, len: 10 }]));
        assert_eq!(a.allocate(5), Some(vec![Run { start: 10, len: 5 }]));
        a.free((0..10).collect());
        assert_eq!(a.free_count(), 195);
        let runs = a.allocate(190).unwrap();
        assert_eq!(runs.iter().map(|r| r.len).sum::<u32>(), 190);
        assert_eq!(a.free_count(), 5);
        assert_eq!(a.allocate(6), None);
    }

    #[test]
    fn quarantine_waits_for_older_reads() {
        let mut a = Allocator::new(64);
        let runs = a.allocate(4).unwrap();
        assert_eq!(runs.len(), 1);
        let token = a.read_started();
        a.free(vec![0, 1]);
        assert_eq!(a.free_count(), 60, "still quarantined");
        let later = a.read_started();
        a.read_done(token);
        assert_eq!(a.free_count(), 62, "released although a newer read runs");
        a.read_done(later);
        assert_eq!(a.quarantined_count(), 0);
    }

    #[test]
    fn double_claim_is_detected() {
        let mut a = Allocator::new(8);
        assert!(a.mark_used(3));
        assert!(!a.mark_used(3));
    }
}
