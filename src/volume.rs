//! Volume addressing: how a byte range of a volume maps onto its chunks.
//!
//! A volume is cut into fixed-size chunks (DESIGN §2); chunk `i` covers bytes
//! `[i * C, (i + 1) * C)`. Every path that turns a client request into chunk operations (the
//! local single-drive backend now, the cluster gateway later) splits the request here, so the
//! rule lives in one pure, tested place.

/// The part of a volume byte range that falls inside one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkSpan {
    /// Chunk index within the volume.
    pub chunk_index: u64,
    /// Byte offset of the span within the chunk.
    pub offset_in_chunk: u32,
    /// Length of the span in bytes (never 0).
    pub len: u32,
    /// Byte offset of the span within the volume (where it sits in the caller's request).
    pub volume_offset: u64,
}

impl ChunkSpan {
    /// Offset of this span relative to the start of the request it came from.
    pub fn request_offset(&self, request_offset: u64) -> u64 {
        self.volume_offset - request_offset
    }
}

/// Splits `[offset, offset + len)` at chunk boundaries, in ascending order. An empty range
/// yields nothing. A range running past `u64::MAX` is cut there (callers validate ranges
/// against the volume size first, so this only keeps the iterator total).
///
/// # Panics
/// If `chunk_size_bytes` is 0: chunk sizes come from a validated geometry, never from input.
pub fn split_range(offset: u64, len: u64, chunk_size_bytes: u32) -> SplitRange {
    assert!(chunk_size_bytes > 0, "chunk size must be positive");
    let end = offset.saturating_add(len);
    SplitRange {
        next: offset,
        end,
        chunk_size: u64::from(chunk_size_bytes),
    }
}

/// Iterator returned by [`split_range`].
#[derive(Clone, Debug)]
pub struct SplitRange {
    next: u64,
    end: u64,
    chunk_size: u64,
}

impl Iterator for SplitRange {
    type Item = ChunkSpan;

    fn next(&mut self) -> Option<ChunkSpan> {
        if self.next >= self.end {
            return None;
        }
        let chunk_index = self.next / self.chunk_size;
        let offset_in_chunk = self.next % self.chunk_size;
        let room = self.chunk_size - offset_in_chunk;
        let len = room.min(self.end - self.next);
        let span = ChunkSpan {
            chunk_index,
            // Both are below the chunk size, which is a u32.
            offset_in_chunk: offset_in_chunk as u32,
            len: len as u32,
            volume_offset: self.next,
        };
        self.next += len;
        Some(span)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let count = span_count(self.next, self.end, self.chunk_size);
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        (count, Some(count))
    }
}

impl ExactSizeIterator for SplitRange {}

impl std::iter::FusedIterator for SplitRange {}

fn span_count(start: u64, end: u64, chunk_size: u64) -> u64 {
    if start >= end {
        return 0;
    }
    (end - 1) / chunk_size - start / chunk_size + 1
}

/// Number of chunks a volume of `size_bytes` spans (the last one may be partial).
pub fn chunk_count(size_bytes: u64, chunk_size_bytes: u32) -> u64 {
    assert!(chunk_size_bytes > 0, "chunk size must be positive");
    size_bytes.div_ceil(u64::from(chunk_size_bytes))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn splits_at_chunk_boundaries() {
        // Goal: a range straddling two boundaries becomes head, whole chunk, tail.
        let spans: Vec<_> = split_range(4096 - 512, 4096 + 1024, 4096).collect();
        assert_eq!(
            spans,
            vec![
                ChunkSpan {
                    chunk_index: 0,
                    offset_in_chunk: 3584,
                    len: 512,
                    volume_offset: 3584
                },
                ChunkSpan {
                    chunk_index: 1,
                    offset_in_chunk: 0,
                    len: 4096,
                    volume_offset: 4096
                },
                ChunkSpan {
                    chunk_index: 2,
                    offset_in_chunk: 0,
                    len: 512,
                    volume_offset: 8192
                },
            ]
        );
        assert_eq!(spans[2].request_offset(3584), 4608);
    }

    #[test]
    fn empty_and_edge_ranges() {
        // Goal: nothing for an empty range; a range ending at u64::MAX stays finite.
        assert_eq!(split_range(123, 0, 4096).count(), 0);
        let tail: Vec<_> = split_range(u64::MAX - 10, 100, 1 << 20).collect();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].len, 10);
        assert_eq!(chunk_count(0, 4096), 0);
        assert_eq!(chunk_count(4097, 4096), 2);
    }

    proptest! {
        #[test]
        fn spans_tile_the_range(
            offset in 0u64..(1 << 40),
            len in 0u64..(1 << 26),
            shift in 9u32..27,
        ) {
            // Goal: spans are non-empty, contiguous, inside one chunk each, cover the range
            // exactly, and size_hint is exact.
            let chunk = 1u32 << shift;
            let iter = split_range(offset, len, chunk);
            let hint = iter.size_hint().0;
            let spans: Vec<_> = iter.collect();
            prop_assert_eq!(spans.len(), hint);
            let mut next = offset;
            for span in &spans {
                prop_assert!(span.len > 0);
                prop_assert_eq!(span.volume_offset, next);
                prop_assert_eq!(span.chunk_index, next / u64::from(chunk));
                prop_assert_eq!(u64::from(span.offset_in_chunk), next % u64::from(chunk));
                prop_assert!(u64::from(span.offset_in_chunk) + u64::from(span.len) <= u64::from(chunk));
                next += u64::from(span.len);
            }
            prop_assert_eq!(next, offset + len);
            // Only the first and last span may be partial.
            for span in spans.iter().skip(1).take(spans.len().saturating_sub(2)) {
                prop_assert_eq!(span.len, chunk);
            }
        }
    }
}
