//! Identifiers shared by every layer.
//!
//! Each id is a newtype so a node id can never be passed where a volume id is expected. Ids that
//! cross the wire or the disk have a fixed width and are little-endian there.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_u64 {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_u64!(
    /// A volume's id: allocated by the metadata service, never reused.
    VolumeId,
    "vol-"
);
id_u64!(
    /// A storage or gateway node's id: allocated once per node, never reused for another node
    /// (a reused id with an empty log could split the Raft group).
    NodeId,
    "node-"
);
id_u64!(
    /// A placement map epoch: increases on every change of the map.
    Epoch,
    "e"
);

/// A placement group id: `hash(volume, chunk) mod pg_count`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct PgId(pub u32);

impl fmt::Display for PgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pg-{}", self.0)
    }
}

/// A cluster's identity, fixed when the cluster is created. Written into every drive's superblock
/// so a drive from another cluster is never opened by mistake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterId(pub uuid::Uuid);

/// A drive's identity, fixed when it is formatted; stays with the drive if it moves between
/// slots or nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DriveId(pub uuid::Uuid);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for DriveId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Names one chunk replica in a store: chunk `index` of volume `volume` in snapshot generation
/// `generation` (0 is the live volume; snapshots will use higher generations, so a snapshot's
/// chunks can sit next to the live ones without a format change).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkKey {
    /// The volume the chunk belongs to.
    pub volume: VolumeId,
    /// Chunk index within the volume: the chunk covers `[index*C, (index+1)*C)`.
    pub index: u64,
    /// Snapshot generation; 0 for the live volume.
    pub generation: u32,
}

impl ChunkKey {
    /// The live-volume chunk `index` of `volume`.
    pub fn new(volume: VolumeId, index: u64) -> Self {
        Self {
            volume,
            index,
            generation: 0,
        }
    }
}

impl fmt::Display for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.generation == 0 {
            write!(f, "{}/{}", self.volume, self.index)
        } else {
            write!(f, "{}/{}@{}", self.volume, self.index, self.generation)
        }
    }
}

/// The (epoch, version) a chunk replica last applied: the map epoch its primary wrote under and
/// the PG's write sequence number. Ordered lexicographically, which is the order peering and
/// recovery compare replicas in.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct ChunkVersion {
    /// Map epoch under which the write was made.
    pub epoch: Epoch,
    /// Per-PG version (write sequence number) of the write.
    pub version: u64,
}

impl fmt::Display for ChunkVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}v{}", self.epoch, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_version_orders_by_epoch_then_version() {
        let a = ChunkVersion {
            epoch: Epoch(1),
            version: 9,
        };
        let b = ChunkVersion {
            epoch: Epoch(2),
            version: 1,
        };
        assert!(a < b);
        assert_eq!(ChunkKey::new(VolumeId(3), 7).to_string(), "vol-3/7");
    }
}
