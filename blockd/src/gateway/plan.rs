//! Pure request planning: cutting a volume range into pieces and choosing where each goes.
//! No clock, no sockets; the shell in `volume.rs` runs what this decides.

use std::net::SocketAddr;

use basalt::ids::{NodeId, PgId, VolumeId};
use basalt::placement::PoolId;
use basalt::volume::{SplitRange, split_range};

use super::view::ClusterView;

/// One network request's worth of a volume range: inside one chunk and at most the piece size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Chunk index within the volume.
    pub(crate) chunk_index: u64,
    /// Byte offset within the chunk.
    pub(crate) offset_in_chunk: u32,
    /// Length in bytes (never 0).
    pub(crate) len: u32,
    /// Byte offset relative to the start of the request (where its data sits in the buffer).
    pub(crate) request_offset: u64,
}

/// Splits `[offset, offset + len)` at chunk boundaries, then each chunk's span into pieces of
/// at most `piece_size_max` bytes (`None`: no second split, for TRIM and WRITE_ZEROES, whose
/// range is a description only). Pieces come in ascending order and tile the range.
pub(crate) fn pieces(
    offset: u64,
    len: u64,
    chunk_size_bytes: u32,
    piece_size_max: Option<u32>,
) -> Pieces {
    let piece_size_max = piece_size_max
        .unwrap_or(chunk_size_bytes)
        .min(chunk_size_bytes);
    assert!(piece_size_max > 0, "piece size must be positive");
    Pieces {
        request_start: offset,
        spans: split_range(offset, len, chunk_size_bytes),
        current: None,
        piece_size_max,
    }
}

/// Iterator returned by [`pieces`].
#[derive(Clone, Debug)]
pub(crate) struct Pieces {
    request_start: u64,
    spans: SplitRange,
    /// The rest of the chunk span being cut: (chunk, offset in chunk, length, volume offset).
    current: Option<(u64, u32, u32, u64)>,
    piece_size_max: u32,
}

impl Iterator for Pieces {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        let (chunk_index, offset_in_chunk, rest, volume_offset) = match self.current.take() {
            Some(current) => current,
            None => {
                let span = self.spans.next()?;
                let (chunk, offset, len) = (span.chunk_index, span.offset_in_chunk, span.len);
                (chunk, offset, len, span.volume_offset)
            }
        };
        debug_assert!(rest > 0);
        let len = rest.min(self.piece_size_max);
        if len < rest {
            let next_offset = volume_offset + u64::from(len);
            self.current = Some((chunk_index, offset_in_chunk + len, rest - len, next_offset));
        }
        Some(Piece {
            chunk_index,
            offset_in_chunk,
            len,
            request_offset: volume_offset - self.request_start,
        })
    }
}

/// Where to send one piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    /// The chunk's placement group.
    pub(crate) pg: PgId,
    /// The PG's primary.
    pub(crate) node: NodeId,
    /// The primary's peer address.
    pub(crate) addr: SocketAddr,
}

/// Why a piece cannot be routed by a view. All of them wait for a newer map.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NoRoute {
    /// The map has no such pool (yet: the metadata service has not published it).
    #[error("{pool} is not in map {epoch}")]
    Pool {
        /// The volume's pool.
        pool: PoolId,
        /// The map's epoch.
        epoch: basalt::ids::Epoch,
    },
    /// Every member of the PG is down.
    #[error("{pg} has no acting member in map {epoch}")]
    Primary {
        /// The PG.
        pg: PgId,
        /// The map's epoch.
        epoch: basalt::ids::Epoch,
    },
    /// The primary's address is not known.
    #[error("no address for {node}, primary of {pg}")]
    Address {
        /// The primary.
        node: NodeId,
        /// The PG.
        pg: PgId,
    },
}

/// The primary of chunk `chunk_index` of `volume` (in `pool`) in `view`.
pub(crate) fn route(
    view: &ClusterView,
    pool: PoolId,
    volume: VolumeId,
    chunk_index: u64,
) -> Result<Route, NoRoute> {
    let epoch = view.epoch();
    let pool = view.map.pool(pool).ok_or(NoRoute::Pool { pool, epoch })?;
    let (pg, placement) = pool.locate(volume, chunk_index);
    let node = placement
        .primary()
        .ok_or(NoRoute::Primary { pg, epoch })?
        .node;
    let addr = *view
        .node_addrs
        .get(&node)
        .ok_or(NoRoute::Address { node, pg })?;
    Ok(Route { pg, node, addr })
}

/// Whether the PG of chunk `chunk_index` has at least `min_size` acting members in `view`: it
/// can serve once a failover settles, so a request for it waits rather than fails.
pub(crate) fn available(
    view: &ClusterView,
    pool: PoolId,
    volume: VolumeId,
    chunk_index: u64,
) -> bool {
    view.map.pool(pool).is_some_and(|pool| {
        let (_, placement) = pool.locate(volume, chunk_index);
        placement.acting().len() >= usize::from(pool.spec().min_size)
    })
}

/// Whether `node` is still the primary of any PG of `pool` in `view`: a FLUSH is owed only to
/// nodes that still order writes.
pub(crate) fn is_primary_of_any(view: &ClusterView, pool: PoolId, node: NodeId) -> bool {
    view.map.pool(pool).is_some_and(|pool| {
        pool.pgs()
            .iter()
            .any(|pg| pg.primary().is_some_and(|member| member.node == node))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(offset: u64, len: u64, chunk: u32, max: Option<u32>) -> Vec<(u64, u32, u32, u64)> {
        pieces(offset, len, chunk, max)
            .map(|p| (p.chunk_index, p.offset_in_chunk, p.len, p.request_offset))
            .collect()
    }

    /// Goal: a range is cut at chunk boundaries first, then at the piece size, and the pieces
    /// tile it in order with their positions in the request.
    #[test]
    fn pieces_split_at_chunks_then_piece_size() {
        const K: u32 = 1024;
        let (k, k64) = (K, u64::from(K));
        assert_eq!(
            collect(3 * k64, 10 * k64, 8 * k, Some(2 * k)),
            vec![
                (0, 3 * k, 2 * k, 0),
                (0, 5 * k, 2 * k, 2 * k64),
                (0, 7 * k, k, 4 * k64),
                (1, 0, 2 * k, 5 * k64),
                (1, 2 * k, 2 * k, 7 * k64),
                (1, 4 * k, k, 9 * k64),
            ]
        );
        // Without a piece size, one piece per chunk.
        assert_eq!(
            collect(3 * k64, 10 * k64, 8 * k, None),
            vec![(0, 3 * k, 5 * k, 0), (1, 0, 5 * k, 5 * k64)]
        );
        assert!(collect(512, 0, 4096, Some(4096)).is_empty());
    }

    proptest::proptest! {
        /// Goal: for any range, chunk size and piece size, pieces are non-empty, within one
        /// chunk and the piece size, contiguous, and cover the range exactly.
        #[test]
        fn pieces_tile_the_range(
            sector in 0u64..1 << 22,
            sectors in 0u64..1 << 14,
            chunk_shift in 12u32..17,
            piece_sectors in 1u32..300,
        ) {
            let (offset, len) = (sector * 512, sectors * 512);
            let chunk = 1u32 << chunk_shift;
            let max = piece_sectors * 512;
            let mut next = 0u64;
            for piece in pieces(offset, len, chunk, Some(max)) {
                proptest::prop_assert!(piece.len > 0 && piece.len <= max);
                proptest::prop_assert_eq!(piece.request_offset, next);
                let volume_offset = offset + next;
                proptest::prop_assert_eq!(piece.chunk_index, volume_offset / u64::from(chunk));
                proptest::prop_assert_eq!(
                    u64::from(piece.offset_in_chunk), volume_offset % u64::from(chunk));
                proptest::prop_assert!(piece.offset_in_chunk + piece.len <= chunk);
                next += u64::from(piece.len);
            }
            proptest::prop_assert_eq!(next, len);
        }
    }
}
