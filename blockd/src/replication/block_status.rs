//! The BLOCK_STATUS control message ([`ControlKind::BLOCK_STATUS`]): a gateway asks a chunk's
//! PG primary which parts of a chunk range its store has allocated, so NBD `base:allocation`
//! shows a thin volume's holes over the network.
//!
//! The answer is advisory (NBD block status is a hint): it reflects every write the primary
//! has acknowledged, and may or may not reflect writes still in flight. Only the primary in
//! the responder's view answers; everyone else refuses with the status a READ would get
//! (`STALE_EPOCH` with the newer epoch, `NOT_PRIMARY`), so the gateway reuses its retry table.
//!
//! [`ControlKind::BLOCK_STATUS`]: basalt::wire::ControlKind::BLOCK_STATUS

use basalt::ids::{Epoch, VolumeId};
use basalt::units::SECTOR_SIZE_BYTES;
use basalt::wire::Status;
use serde::{Deserialize, Serialize};

/// Schema version of [`BlockStatusRequest`] and [`BlockStatusReply`].
pub const BLOCK_STATUS_VERSION: u16 = 1;

/// "Which parts of `[offset, offset + len)` of chunk `chunk_index` of `volume` hold data?"
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStatusRequest {
    /// The volume.
    pub volume: VolumeId,
    /// The chunk within the volume (selects the PG).
    pub chunk_index: u64,
    /// Byte offset within the chunk (a multiple of 512).
    pub offset: u32,
    /// Length in bytes (a non-zero multiple of 512, within the chunk).
    pub len: u32,
    /// The sender's map epoch.
    pub epoch: Epoch,
}

/// A run of the requested range that is uniformly allocated or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationRun {
    /// Length in bytes (a non-zero multiple of 512).
    pub len: u32,
    /// Holds data; `false` is a hole that reads as zeroes.
    pub allocated: bool,
}

/// The primary's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockStatusReply {
    /// The runs, in order from the request's offset, covering exactly its length.
    Runs(Vec<AllocationRun>),
    /// Not answered here: `status` is a wire [`Status`] code, `epoch` the responder's.
    Refused {
        /// Why ([`Status::code`]).
        status: u16,
        /// The responder's map epoch (a `STALE_EPOCH` refusal names the newer map).
        epoch: Epoch,
    },
}

impl BlockStatusReply {
    /// A refusal with `status` at `epoch`.
    pub fn refused(status: Status, epoch: Epoch) -> Self {
        BlockStatusReply::Refused {
            status: status.code(),
            epoch,
        }
    }
}

/// Why a reply's runs do not describe the requested range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunsError {
    /// A run is empty or not a multiple of 512 bytes.
    #[error("a run of {len} bytes is empty or not sector-aligned")]
    BadRun {
        /// The run's length.
        len: u32,
    },
    /// The runs do not add up to the requested length.
    #[error("runs cover {covered} bytes of a {expected}-byte request")]
    Coverage {
        /// Sum of the runs.
        covered: u64,
        /// The request's length.
        expected: u64,
    },
}

/// Checks that `runs` tile a range of `len` bytes (a peer's answer is input, not trusted).
pub fn check_runs(runs: &[AllocationRun], len: u32) -> Result<(), RunsError> {
    let mut covered = 0u64;
    for run in runs {
        if run.len == 0 || !run.len.is_multiple_of(SECTOR_SIZE_BYTES) {
            return Err(RunsError::BadRun { len: run.len });
        }
        covered += u64::from(run.len);
    }
    if covered != u64::from(len) {
        return Err(RunsError::Coverage {
            covered,
            expected: u64::from(len),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: request and reply survive postcard, and a refusal carries its status and epoch.
    #[test]
    fn messages_round_trip() {
        let request = BlockStatusRequest {
            volume: VolumeId(7),
            chunk_index: 3,
            offset: 512,
            len: 8192,
            epoch: Epoch(4),
        };
        let bytes = postcard::to_stdvec(&request).expect("encode");
        assert_eq!(
            postcard::from_bytes::<BlockStatusRequest>(&bytes).expect("decode"),
            request
        );
        let replies = [
            BlockStatusReply::Runs(vec![
                AllocationRun {
                    len: 4096,
                    allocated: true,
                },
                AllocationRun {
                    len: 4096,
                    allocated: false,
                },
            ]),
            BlockStatusReply::refused(Status::StaleEpoch, Epoch(9)),
        ];
        for reply in replies {
            let bytes = postcard::to_stdvec(&reply).expect("encode");
            assert_eq!(
                postcard::from_bytes::<BlockStatusReply>(&bytes).expect("decode"),
                reply
            );
        }
        assert_eq!(
            BlockStatusReply::refused(Status::NotPrimary, Epoch(2)),
            BlockStatusReply::Refused {
                status: Status::NotPrimary.code(),
                epoch: Epoch(2)
            }
        );
    }

    /// Goal: runs must be non-empty, sector-aligned and cover the request exactly.
    #[test]
    fn runs_are_checked() {
        let run = |len, allocated| AllocationRun { len, allocated };
        assert_eq!(
            check_runs(&[run(512, true), run(3584, false)], 4096),
            Ok(())
        );
        assert_eq!(
            check_runs(&[run(0, true), run(4096, false)], 4096),
            Err(RunsError::BadRun { len: 0 })
        );
        assert_eq!(
            check_runs(&[run(100, true)], 100),
            Err(RunsError::BadRun { len: 100 })
        );
        assert_eq!(
            check_runs(&[run(512, true)], 1024),
            Err(RunsError::Coverage {
                covered: 512,
                expected: 1024
            })
        );
        assert!(check_runs(&[], 512).is_err());
    }
}
