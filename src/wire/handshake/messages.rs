//! Handshake payloads: HELLO, PROOF and REFUSE, each a fixed-size little-endian record.

use std::fmt;

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::ids::{ClusterId, NodeId};

/// Size of a handshake nonce, in bytes: 256 bits, so a nonce never repeats by chance.
pub const NONCE_SIZE_BYTES: usize = 32;
/// Size of a HELLO payload, in bytes.
pub const HELLO_SIZE_BYTES: usize = 72;
/// Size of a PROOF payload (an HMAC-SHA256 tag), in bytes.
pub const PROOF_SIZE_BYTES: usize = 32;
/// Size of a REFUSE payload, in bytes.
pub const REFUSE_SIZE_BYTES: usize = 4;

/// A fresh random value each side puts in its HELLO, so every transcript (and so every proof
/// and session key) is unique and a recorded proof is useless on another connection. The caller
/// supplies it (from the OS RNG in the daemon, from a seed in simulations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; NONCE_SIZE_BYTES]);

/// Which end of the connection a node is. Part of the HELLO and of each proof's label, so a
/// message reflected back at its sender is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// Opened the TCP connection; sends the first HELLO.
    Initiator = 1,
    /// Accepted the TCP connection; proves itself first.
    Acceptor = 2,
}

impl Role {
    /// The role at the other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Initiator => Role::Acceptor,
            Role::Acceptor => Role::Initiator,
        }
    }

    fn from_code(code: u8) -> Option<Role> {
        [Role::Initiator, Role::Acceptor]
            .into_iter()
            .find(|role| *role as u8 == code)
    }
}

/// Optional protocol features, one bit each. Each side offers what it supports; the session
/// uses the intersection. Version 1 defines none, so later features need no version bump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Features(pub u64);

impl Features {
    /// No optional features.
    pub const NONE: Features = Features(0);

    /// The features both sides support.
    pub fn intersection(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }
}

/// HELLO as it sits on the wire.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct RawHello {
    version_min: u8,
    version_max: u8,
    role: u8,
    reserved: [u8; 5],
    features: U64,
    node: U64,
    cluster: [u8; 16],
    nonce: [u8; NONCE_SIZE_BYTES],
}

const _: () = assert!(size_of::<RawHello>() == HELLO_SIZE_BYTES);

/// The first message of each side: who it is, what it speaks, and its nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Oldest protocol version the sender speaks.
    pub version_min: u8,
    /// Newest protocol version the sender speaks.
    pub version_max: u8,
    /// The sender's role.
    pub role: Role,
    /// Optional features the sender supports.
    pub features: Features,
    /// The sender's node id.
    pub node: NodeId,
    /// The cluster the sender belongs to.
    pub cluster: ClusterId,
    /// The sender's fresh nonce.
    pub nonce: Nonce,
}

/// Why a HELLO payload is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// Not exactly [`HELLO_SIZE_BYTES`] long.
    #[error("HELLO of {found_bytes} bytes, expected {HELLO_SIZE_BYTES}")]
    Size {
        /// Bytes given.
        found_bytes: usize,
    },
    /// A role code this version does not define.
    #[error("unknown role {code}")]
    UnknownRole {
        /// The role byte.
        code: u8,
    },
    /// A reserved byte is non-zero.
    #[error("reserved bytes are not zero")]
    ReservedNonZero,
    /// The version range is empty or starts at the invalid version 0.
    #[error("empty version range {min}..={max}")]
    EmptyVersionRange {
        /// Oldest version claimed.
        min: u8,
        /// Newest version claimed.
        max: u8,
    },
}

impl Hello {
    /// The payload bytes. Canonical: decoding them gives back `self`, and every decodable
    /// payload re-encodes to itself, which the transcript relies on.
    pub fn encode(&self) -> [u8; HELLO_SIZE_BYTES] {
        let raw = RawHello {
            version_min: self.version_min,
            version_max: self.version_max,
            role: self.role as u8,
            reserved: [0; 5],
            features: U64::new(self.features.0),
            node: U64::new(self.node.0),
            cluster: *self.cluster.0.as_bytes(),
            nonce: self.nonce.0,
        };
        let mut bytes = [0u8; HELLO_SIZE_BYTES];
        bytes.copy_from_slice(raw.as_bytes());
        bytes
    }

    /// Parses a HELLO payload, refusing anything non-canonical.
    pub fn decode(bytes: &[u8]) -> Result<Hello, HelloError> {
        let raw = RawHello::read_from_bytes(bytes).map_err(|_| HelloError::Size {
            found_bytes: bytes.len(),
        })?;
        let role = Role::from_code(raw.role).ok_or(HelloError::UnknownRole { code: raw.role })?;
        if raw.reserved != [0; 5] {
            return Err(HelloError::ReservedNonZero);
        }
        let (min, max) = (raw.version_min, raw.version_max);
        if min == 0 || min > max {
            return Err(HelloError::EmptyVersionRange { min, max });
        }
        Ok(Hello {
            version_min: min,
            version_max: max,
            role,
            features: Features(raw.features.get()),
            node: NodeId(raw.node.get()),
            cluster: ClusterId(uuid::Uuid::from_bytes(raw.cluster)),
            nonce: Nonce(raw.nonce),
        })
    }
}

/// An HMAC-SHA256 tag proving knowledge of the cluster secret for one transcript. Not
/// `PartialEq`: proofs are compared only in constant time, inside the handshake.
#[derive(Clone, Copy, Debug)]
pub struct Proof(pub(crate) [u8; PROOF_SIZE_BYTES]);

impl Proof {
    /// A proof from its wire bytes.
    pub fn from_bytes(bytes: [u8; PROOF_SIZE_BYTES]) -> Self {
        Proof(bytes)
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8; PROOF_SIZE_BYTES] {
        &self.0
    }

    /// Parses a PROOF payload.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Proof> {
        bytes
            .first_chunk()
            .filter(|_| bytes.len() == PROOF_SIZE_BYTES)
            .copied()
            .map(Proof)
    }
}

/// Why a node refuses a connection, sent in a REFUSE frame just before it closes so the other
/// side can log a reason instead of a bare reset. Deliberately coarse: it says which check
/// failed, never anything about the secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// The peer broke the handshake protocol (bad frame, unexpected message).
    Protocol,
    /// No protocol version in common.
    Version,
    /// The peer belongs to another cluster.
    Cluster,
    /// The peer's proof is wrong: it does not know the cluster secret.
    Auth,
    /// The peer is not the node expected (or is this node itself).
    Peer,
    /// A reason code this version does not know (sent by a newer peer).
    Unknown(u16),
}

impl RefuseReason {
    /// The wire code.
    pub fn code(self) -> u16 {
        match self {
            RefuseReason::Protocol => 1,
            RefuseReason::Version => 2,
            RefuseReason::Cluster => 3,
            RefuseReason::Auth => 4,
            RefuseReason::Peer => 5,
            RefuseReason::Unknown(code) => code,
        }
    }

    /// The reason for wire code `code`; total, so a newer peer's reason is still reported.
    pub fn from_code(code: u16) -> RefuseReason {
        match code {
            1 => RefuseReason::Protocol,
            2 => RefuseReason::Version,
            3 => RefuseReason::Cluster,
            4 => RefuseReason::Auth,
            5 => RefuseReason::Peer,
            other => RefuseReason::Unknown(other),
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseReason::Unknown(code) => write!(f, "unknown reason {code}"),
            known => fmt::Debug::fmt(known, f),
        }
    }
}

/// A REFUSE payload: the reason and the refuser's version range (so a version mismatch can be
/// logged with both sides' versions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refuse {
    pub(crate) reason: RefuseReason,
    pub(crate) version_min: u8,
    pub(crate) version_max: u8,
}

impl Refuse {
    pub(crate) fn encode(&self) -> [u8; REFUSE_SIZE_BYTES] {
        let [code_low, code_high] = self.reason.code().to_le_bytes();
        [code_low, code_high, self.version_min, self.version_max]
    }

    /// Parses a REFUSE payload (the frame layer already fixed its size).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Refuse> {
        let [code_low, code_high, version_min, version_max] = *bytes.first_chunk()?;
        let reason = RefuseReason::from_code(u16::from_le_bytes([code_low, code_high]));
        (bytes.len() == REFUSE_SIZE_BYTES).then_some(Refuse {
            reason,
            version_min,
            version_max,
        })
    }
}
