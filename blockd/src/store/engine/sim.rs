//! A simulated drive with a volatile write cache, for power-loss testing.
//!
//! Model: a completed write sits in the cache until a flush covers it; a flush makes durable
//! every write that completed before the flush was *submitted*. A power loss keeps the durable
//! image and, for every 4 KiB sector of every cached or still in-flight write, independently
//! and in random order, either applies that sector's new contents or drops them. So a crash can
//! lose any unflushed write, tear it at sector granularity, and reorder it against others.
//! Operations complete in an order the test chooses (`complete_random`), so concurrent writers
//! interleave as on a real device. Everything is driven by a seed for replay.

use std::collections::VecDeque;
use std::io;

use super::{Completion, DriveEngine, DriveOp, OpKind, SubmitError, check_bounds};
use crate::store::buf::AlignedBuf;

const SECTOR: usize = 4096;

/// Small deterministic PRNG (SplitMix64): the simulation must replay from a seed, and the
/// store crate needs no random-number dependency for it.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        self.next_u64() % n
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

struct CachedWrite {
    offset: u64,
    data: Vec<u8>,
}

struct PendingOp {
    op: DriveOp,
    /// For a flush: how many cache entries existed when it was submitted.
    cache_mark: usize,
}

/// In-memory drive with a volatile cache; see the module documentation.
pub struct SimDrive {
    durable: Vec<u8>,
    cache: Vec<CachedWrite>,
    pending: Vec<PendingOp>,
    done: VecDeque<Completion>,
    /// Complete operations in random order inside `wait` (tests that don't drive it by hand).
    auto_complete: bool,
    rng: SimRng,
    /// Counts submitted operations, so tests can crash after the n-th.
    pub ops_submitted: u64,
    /// Fail every operation with EIO once this many have been submitted (crash injection).
    pub fail_after_ops: Option<u64>,
}

impl SimDrive {
    /// A zero-filled drive of `size` bytes.
    pub fn new(size: u64, seed: u64) -> Self {
        Self::from_image(vec![0; size as usize], seed)
    }

    /// A drive whose durable contents are `image`.
    pub fn from_image(image: Vec<u8>, seed: u64) -> Self {
        assert!(image.len().is_multiple_of(SECTOR));
        Self {
            durable: image,
            cache: Vec::new(),
            pending: Vec::new(),
            done: VecDeque::new(),
            auto_complete: true,
            rng: SimRng::new(seed),
            ops_submitted: 0,
            fail_after_ops: None,
        }
    }

    /// Let the test choose completion order with `complete_random` instead of `wait`.
    pub fn set_manual_completion(&mut self) {
        self.auto_complete = false;
    }

    /// Number of submitted, not yet completed operations.
    pub fn pending_ops(&self) -> usize {
        self.pending.len()
    }

    /// Completes up to `n` randomly chosen pending operations.
    pub fn complete_random(&mut self, n: usize) {
        for _ in 0..n {
            if self.pending.is_empty() {
                return;
            }
            let i = self.rng.below(self.pending.len() as u64) as usize;
            let p = self.pending.swap_remove(i);
            self.finish(p);
        }
    }

    fn view_read(&self, offset: u64, buf: &mut [u8]) {
        let start = offset as usize;
        buf.copy_from_slice(&self.durable[start..start + buf.len()]);
        for w in &self.cache {
            overlay(buf, offset, w.offset, &w.data);
        }
    }

    fn finish(&mut self, p: PendingOp) {
        let PendingOp { op, cache_mark } = p;
        let failed = self.fail_after_ops.is_some_and(|n| self.ops_submitted > n);
        let (result, buf) = match op.kind {
            _ if failed => (Err(io::Error::other("simulated power loss")), None),
            OpKind::Read { offset, mut buf } => {
                let r = check_bounds(self.durable.len() as u64, offset, buf.len());
                if r.is_ok() {
                    self.view_read(offset, buf.as_mut_slice());
                }
                (r, Some(buf))
            }
            OpKind::Write { offset, buf, range } => {
                let r = check_bounds(self.durable.len() as u64, offset, range.len());
                if r.is_ok() {
                    let data = buf.as_slice()[range].to_vec();
                    self.cache.push(CachedWrite { offset, data });
                }
                (r, None)
            }
            OpKind::Flush => {
                let mark = cache_mark.min(self.cache.len());
                for w in self.cache.drain(..mark) {
                    let start = w.offset as usize;
                    self.durable[start..start + w.data.len()].copy_from_slice(&w.data);
                }
                // Marks of other pending flushes shift down with the drained entries.
                for other in &mut self.pending {
                    other.cache_mark = other.cache_mark.saturating_sub(mark);
                }
                (Ok(()), None)
            }
        };
        self.done.push_back(Completion {
            id: op.id,
            result,
            buf,
        });
    }

    /// Power loss: returns the image a reboot would find (see the module documentation).
    pub fn crash_image(mut self) -> Vec<u8> {
        let mut sectors: Vec<(u64, Vec<u8>)> = Vec::new();
        let in_flight_writes = self.pending.drain(..).filter_map(|p| match p.op.kind {
            OpKind::Write { offset, buf, range } => Some(CachedWrite {
                offset,
                data: buf.as_slice()[range].to_vec(),
            }),
            _ => None,
        });
        let writes: Vec<CachedWrite> = self.cache.drain(..).chain(in_flight_writes).collect();
        for w in &writes {
            for (i, s) in w.data.chunks(SECTOR).enumerate() {
                sectors.push((w.offset + (i * SECTOR) as u64, s.to_vec()));
            }
        }
        // Random order, each sector kept or lost independently.
        for i in (1..sectors.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            sectors.swap(i, j);
        }
        for (offset, data) in sectors {
            if self.rng.chance(1, 2) {
                let start = offset as usize;
                self.durable[start..start + data.len()].copy_from_slice(&data);
            }
        }
        self.durable
    }

    /// The durable image plus everything cached, as after a clean flush.
    pub fn flushed_image(mut self) -> Vec<u8> {
        for w in self.cache.drain(..) {
            let start = w.offset as usize;
            self.durable[start..start + w.data.len()].copy_from_slice(&w.data);
        }
        self.durable
    }

    /// Mutable access to the durable image (corruption tests).
    pub fn durable_mut(&mut self) -> &mut [u8] {
        &mut self.durable
    }
}

fn overlay(buf: &mut [u8], buf_offset: u64, w_offset: u64, data: &[u8]) {
    let start = buf_offset.max(w_offset);
    let end = (buf_offset + buf.len() as u64).min(w_offset + data.len() as u64);
    if start < end {
        let (b, d, n) = (
            (start - buf_offset) as usize,
            (start - w_offset) as usize,
            (end - start) as usize,
        );
        buf[b..b + n].copy_from_slice(&data[d..d + n]);
    }
}

impl DriveEngine for SimDrive {
    fn device_size(&self) -> u64 {
        self.durable.len() as u64
    }

    fn capacity(&self) -> usize {
        1024usize.saturating_sub(self.pending.len() + self.done.len())
    }

    fn in_flight(&self) -> usize {
        self.pending.len() + self.done.len()
    }

    fn submit(&mut self, op: DriveOp) -> Result<(), SubmitError> {
        self.ops_submitted += 1;
        let cache_mark = self.cache.len();
        self.pending.push(PendingOp { op, cache_mark });
        Ok(())
    }

    fn wait(&mut self, _block: bool) -> io::Result<()> {
        if self.auto_complete {
            let n = self.pending.len();
            self.complete_random(n);
        }
        Ok(())
    }

    fn poll_completion(&mut self) -> Option<Completion> {
        self.done.pop_front()
    }
}

impl SimDrive {
    /// Reads directly from the current view (test inspection, no operation).
    pub fn peek(&self, offset: u64, len: usize) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(len);
        self.view_read(offset, buf.as_mut_slice());
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn write(drive: &mut SimDrive, id: u64, offset: u64, byte: u8) {
        let buf = Arc::new(AlignedBuf::copy_from(&[byte; 4096]));
        drive
            .submit(DriveOp {
                id,
                kind: OpKind::Write {
                    offset,
                    buf,
                    range: 0..4096,
                },
            })
            .unwrap();
    }

    #[test]
    fn flush_covers_only_writes_completed_before_it() {
        let mut d = SimDrive::new(1 << 20, 1);
        d.set_manual_completion();
        write(&mut d, 1, 0, 0xaa);
        d.complete_random(1);
        d.submit(DriveOp {
            id: 2,
            kind: OpKind::Flush,
        })
        .unwrap();
        write(&mut d, 3, 4096, 0xbb);
        d.complete_random(2);
        let image = d.flushed_image();
        assert_eq!(image[0], 0xaa);
        assert_eq!(image[4096], 0xbb);
    }

    #[test]
    fn crash_keeps_durable_and_tears_the_rest() {
        let mut d = SimDrive::new(1 << 20, 7);
        d.set_manual_completion();
        write(&mut d, 1, 0, 1);
        d.complete_random(1);
        d.submit(DriveOp {
            id: 2,
            kind: OpKind::Flush,
        })
        .unwrap();
        d.complete_random(1);
        write(&mut d, 3, 0, 2);
        d.complete_random(1);
        let image = d.crash_image();
        assert!(image[0] == 1 || image[0] == 2);
    }
}
