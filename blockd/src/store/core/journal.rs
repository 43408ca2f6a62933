//! The journal writer: group commit of records into batches.
//!
//! # Crash consistency
//! Records are appended to an open batch. One batch at a time is written, then flushed; when
//! the flush completes every record in it is durable and its requests may be acknowledged. While
//! a batch is on its way, new records gather in the next one, so concurrent writers share a
//! flush. Each batch header carries `durable_seq`, the highest batch already flushed when it was
//! built; replay uses it to tell batches whose redirected data is certainly durable from the
//! last ones, whose data it must verify. Space is reused only after a checkpoint moved the tail
//! past a batch (see `checkpoint`).

use std::collections::VecDeque;

use crate::store::buf::{AlignedBuf, round_up_to_block};
use crate::store::format::{BATCH_HEADER_SIZE_BYTES, BatchHeader};

/// Identifies a request inside the core.
pub type ReqId = u64;

#[derive(Debug, Default)]
struct Builder {
    payload: Vec<u8>,
    record_count: u32,
    waiters: Vec<ReqId>,
}

#[derive(Debug)]
struct LiveBatch {
    seq: u64,
    offset: u64,
    footprint: u64,
}

/// A batch ready to be written.
#[derive(Debug)]
pub struct SealedBatch {
    /// Its sequence number.
    pub seq: u64,
    /// Device offset to write it at.
    pub device_offset: u64,
    /// Header, records and padding.
    pub buf: AlignedBuf,
}

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    Writing,
    Flushing,
}

/// Journal writer state; see the module documentation.
#[derive(Debug)]
pub struct Journal {
    device_offset: u64,
    size_bytes: u64,
    batch_size_max: u32,
    format_nonce: u64,
    generation: u64,
    head: u64,
    next_seq: u64,
    durable_seq: u64,
    used_bytes: u64,
    live: VecDeque<LiveBatch>,
    open: Builder,
    sealed: VecDeque<Builder>,
    in_flight: Option<(u64, Stage, Vec<ReqId>)>,
}

/// Offset of the batch after one ending at `end` (batches never straddle the journal's end:
/// if less than a largest batch remains, the next one starts over at 0).
pub fn next_batch_offset(end: u64, journal_size: u64, batch_size_max: u32) -> u64 {
    if journal_size - end < u64::from(batch_size_max) {
        0
    } else {
        end
    }
}

impl Journal {
    /// An empty journal whose next batch goes to `head` with sequence number `next_seq`.
    pub fn new(
        device_offset: u64,
        size_bytes: u64,
        batch_size_max: u32,
        format_nonce: u64,
        generation: u64,
        head: u64,
        next_seq: u64,
    ) -> Self {
        assert!(head + u64::from(batch_size_max) <= size_bytes);
        Self {
            device_offset,
            size_bytes,
            batch_size_max,
            format_nonce,
            generation,
            head,
            next_seq,
            durable_seq: next_seq - 1,
            used_bytes: 0,
            live: VecDeque::new(),
            open: Builder::default(),
            sealed: VecDeque::new(),
            in_flight: None,
        }
    }

    /// Largest record that fits in a batch.
    pub fn record_size_max(&self) -> usize {
        self.batch_size_max as usize - BATCH_HEADER_SIZE_BYTES
    }

    /// Appends one request's records (`bytes`, already encoded) to the open batch.
    pub fn append(&mut self, req: ReqId, record_count: u32, bytes: &[u8]) {
        assert!(
            bytes.len() <= self.record_size_max(),
            "record larger than a batch"
        );
        if self.open.payload.len() + bytes.len() > self.record_size_max() {
            self.sealed.push_back(std::mem::take(&mut self.open));
        }
        self.open.payload.extend_from_slice(bytes);
        self.open.record_count += record_count;
        self.open.waiters.push(req);
    }

    /// The next batch to write, if none is in flight, one has records and there is room.
    pub fn poll_seal(&mut self) -> Option<SealedBatch> {
        if self.in_flight.is_some() {
            return None;
        }
        let builder = match self.sealed.front() {
            Some(_) => self.sealed.pop_front()?,
            None if self.open.record_count > 0 => std::mem::take(&mut self.open),
            None => return None,
        };
        let len = round_up_to_block(BATCH_HEADER_SIZE_BYTES + builder.payload.len()) as u64;
        let end = self.head + len;
        let next = next_batch_offset(end, self.size_bytes, self.batch_size_max);
        let footprint = if next == 0 {
            self.size_bytes - self.head
        } else {
            len
        };
        if self.used_bytes + footprint > self.size_bytes {
            self.sealed.push_front(builder);
            return None;
        }
        Some(self.seal(builder, len, footprint, next))
    }

    fn seal(&mut self, builder: Builder, len: u64, footprint: u64, next: u64) -> SealedBatch {
        let seq = self.next_seq;
        let mut buf = AlignedBuf::zeroed(len as usize);
        let header = BatchHeader {
            generation: self.generation,
            seq,
            durable_seq: self.durable_seq,
            len_bytes: len as u32,
            payload_bytes: builder.payload.len() as u32,
            record_count: builder.record_count,
            payload_crc: crc32c::crc32c(&builder.payload),
        };
        let out = buf.as_mut_slice();
        header.encode_into(self.format_nonce, out);
        out[BATCH_HEADER_SIZE_BYTES..][..builder.payload.len()].copy_from_slice(&builder.payload);
        let device_offset = self.device_offset + self.head;
        self.live.push_back(LiveBatch {
            seq,
            offset: self.head,
            footprint,
        });
        self.used_bytes += footprint;
        self.head = next;
        self.next_seq += 1;
        self.in_flight = Some((seq, Stage::Writing, builder.waiters));
        SealedBatch {
            seq,
            device_offset,
            buf,
        }
    }

    /// The batch write completed; the caller now flushes.
    pub fn on_written(&mut self, seq: u64) {
        let in_flight = self.in_flight.as_mut().expect("a batch is in flight");
        assert!(in_flight.0 == seq && in_flight.1 == Stage::Writing);
        in_flight.1 = Stage::Flushing;
    }

    /// The flush after batch `seq` completed: its records are durable. Returns their requests.
    pub fn on_flushed(&mut self, seq: u64) -> Vec<ReqId> {
        let (in_seq, stage, waiters) = self.in_flight.take().expect("a batch is in flight");
        assert!(in_seq == seq && stage == Stage::Flushing);
        assert_eq!(seq, self.durable_seq + 1);
        self.durable_seq = seq;
        waiters
    }

    /// Highest durable batch.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Sequence number the next sealed batch will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether a batch is being written or flushed.
    pub fn is_writing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether records are waiting for a batch.
    pub fn has_pending_records(&self) -> bool {
        self.open.record_count > 0 || !self.sealed.is_empty()
    }

    /// Journal bytes held by live batches.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Journal size.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Offset (within the journal) of batch `seq` if live, or of the head if `seq` is the next.
    pub fn offset_of(&self, seq: u64) -> Option<u64> {
        if seq == self.next_seq {
            return Some(self.head);
        }
        self.live.iter().find(|b| b.seq == seq).map(|b| b.offset)
    }

    /// Drops batches before `tail_seq`: a checkpoint made them unnecessary for replay.
    pub fn advance_tail(&mut self, tail_seq: u64) {
        assert!(
            tail_seq <= self.durable_seq + 1,
            "tail may not pass a batch that is not durable"
        );
        while let Some(b) = self.live.front() {
            if b.seq >= tail_seq {
                break;
            }
            self.used_bytes -= b.footprint;
            self.live.pop_front();
        }
    }

    /// The generation batches are written with.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_commit_and_wrap() {
        let mut j = Journal::new(16384, 64 * 1024, 16 * 1024, 1, 1, 0, 1);
        j.append(1, 1, &[7; 100]);
        j.append(2, 1, &[8; 100]);
        let b = j.poll_seal().unwrap();
        assert_eq!((b.seq, b.device_offset, b.buf.len()), (1, 16384, 4096));
        j.append(3, 1, &[9; 5000]);
        assert!(j.poll_seal().is_none(), "one batch in flight at a time");
        j.on_written(1);
        assert_eq!(j.on_flushed(1), vec![1, 2]);
        let b = j.poll_seal().unwrap();
        assert_eq!((b.seq, b.buf.len()), (2, 8192));
        j.on_written(2);
        j.on_flushed(2);
        assert_eq!(j.used_bytes(), 12288);
        // Fill up until the journal refuses, then free space by advancing the tail.
        let mut seq = 3;
        loop {
            j.append(seq, 1, &[1; 10000]);
            match j.poll_seal() {
                Some(b) => {
                    j.on_written(b.seq);
                    j.on_flushed(b.seq);
                    seq += 1;
                }
                None => break,
            }
        }
        assert!(j.used_bytes() + 16384 > 64 * 1024);
        j.advance_tail(seq);
        assert_eq!(j.used_bytes(), 0);
        assert!(j.poll_seal().is_some());
    }
}
