//! Snapshots: the whole state, postcard-encoded inside a versioned, checksummed envelope.
//!
//! ```text
//!  0         8        12              20        24
//!  +---------+--------+---------------+---------+------------------ - -
//!  | magic   |version | body length   | crc32c  | body (postcard MetaState)
//!  +---------+--------+---------------+---------+------------------ - -
//! ```
//! All integers little-endian. A reader refuses other magic, a version it does not know (a
//! newer node's snapshot must not be half-understood), a length or checksum mismatch, trailing
//! bytes, and a body that decodes but breaks the state invariants.

use super::state::MetaState;
use thiserror::Error;

/// First bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"BSLTMETA";
/// The body schema this code writes and reads. Bump on any change of the state's shape.
pub const SNAPSHOT_VERSION: u32 = 2;
/// Envelope header size, in bytes.
pub const SNAPSHOT_HEADER_SIZE_BYTES: usize = 24;

/// Why a snapshot could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Shorter than the header.
    #[error("snapshot of {size_bytes} bytes is shorter than its header")]
    Short {
        /// Bytes given.
        size_bytes: usize,
    },
    /// Not a metadata snapshot.
    #[error("not a metadata snapshot (bad magic)")]
    Magic,
    /// Written by a version this code does not know.
    #[error("snapshot version {version} is not supported (this node reads {SNAPSHOT_VERSION})")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// The header's body length disagrees with the bytes given.
    #[error("snapshot body is {actual} bytes, header says {declared}")]
    Length {
        /// From the header.
        declared: u64,
        /// Present.
        actual: usize,
    },
    /// The body's checksum does not match.
    #[error("snapshot checksum mismatch")]
    Checksum,
    /// The body is not a valid encoding of the state.
    #[error("snapshot body does not decode")]
    Decode(#[source] postcard::Error),
    /// The body decoded with bytes left over.
    #[error("snapshot body has {count} trailing bytes")]
    TrailingBytes {
        /// Bytes left.
        count: usize,
    },
    /// The body decoded to a state that breaks an invariant.
    #[error("snapshot state is invalid")]
    Invalid(#[source] super::StateInvariantError),
}

impl MetaState {
    /// The state as snapshot bytes.
    pub fn to_snapshot(&self) -> Vec<u8> {
        // Serialising plain structs, maps and vectors to a Vec cannot fail in postcard.
        let body = postcard::to_allocvec(self).expect("metadata state always serialises");
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_SIZE_BYTES + body.len());
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        debug_assert_eq!(out.len(), SNAPSHOT_HEADER_SIZE_BYTES);
        out.extend_from_slice(&body);
        out
    }

    /// Reads snapshot bytes back, refusing anything but an intact snapshot of this version.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let Some((header, body)) = bytes.split_at_checked(SNAPSHOT_HEADER_SIZE_BYTES) else {
            return Err(SnapshotError::Short {
                size_bytes: bytes.len(),
            });
        };
        let field = |range: std::ops::Range<usize>| &header[range];
        if field(0..8) != SNAPSHOT_MAGIC {
            return Err(SnapshotError::Magic);
        }
        let version = u32::from_le_bytes(le_array(field(8..12)));
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion { version });
        }
        let declared = u64::from_le_bytes(le_array(field(12..20)));
        if declared != body.len() as u64 {
            return Err(SnapshotError::Length {
                declared,
                actual: body.len(),
            });
        }
        if u32::from_le_bytes(le_array(field(20..24))) != crc32c::crc32c(body) {
            return Err(SnapshotError::Checksum);
        }
        let (state, rest): (MetaState, _) =
            postcard::take_from_bytes(body).map_err(SnapshotError::Decode)?;
        if !rest.is_empty() {
            return Err(SnapshotError::TrailingBytes { count: rest.len() });
        }
        state.check_invariants().map_err(SnapshotError::Invalid)?;
        Ok(state)
    }
}

/// A fixed-size array from a slice of exactly that size (the header ranges above).
fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}
