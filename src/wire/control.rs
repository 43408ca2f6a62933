//! The CONTROL frame's payload: a versioned envelope around a postcard-serialised message.
//!
//! Control traffic (Raft RPCs, map watch, PG log queries, recovery reads) is rarer and richer
//! than I/O, so it uses serde + postcard (DESIGN §10) instead of fixed headers. The envelope's
//! `(kind, version)` pair tells the receiver which schema the body uses before it deserialises
//! anything, so a message type can change shape by bumping its version while old and new nodes
//! share a cluster; a receiver answers a pair it does not know with
//! [`super::Status::Unsupported`] instead of guessing.
//!
//! ```text
//!  0        2        4
//!  +--------+--------+--------------------- - - -
//!  |  kind  |version |  body (postcard)
//!  +--------+--------+--------------------- - - -
//! ```

use std::fmt;

use bytes::{BufMut, Bytes};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::FRAME_PAYLOAD_SIZE_MAX;

/// Size of the envelope header (kind and version, both u16 little-endian), in bytes.
pub const CONTROL_ENVELOPE_HEADER_SIZE_BYTES: usize = 4;

/// Largest body an envelope may carry, in bytes: what is left of a frame payload.
const CONTROL_BODY_SIZE_MAX: usize =
    FRAME_PAYLOAD_SIZE_MAX as usize - CONTROL_ENVELOPE_HEADER_SIZE_BYTES;

/// Which control message family the body belongs to. A registry of numbers rather than an
/// enum so the codec never refuses a kind a newer peer introduced: the control layer answers
/// `Unsupported` instead, and the connection survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ControlKind(pub u16);

impl ControlKind {
    /// Raft RPCs of the metadata service (append entries, vote, snapshot).
    pub const RAFT: ControlKind = ControlKind(1);
    /// Placement-map watch: subscription and map updates.
    pub const MAP_WATCH: ControlKind = ControlKind(2);
    /// Peering and recovery between a PG's primary and its members: chunk labels, chunk
    /// reads and pushes, sync points.
    pub const PG_RECOVERY: ControlKind = ControlKind(3);
    /// Reserved (recovery reads travel as [`Self::PG_RECOVERY`] messages).
    pub const RECOVERY_READ: ControlKind = ControlKind(4);
    /// Metadata commands forwarded to the Raft leader by a node that is not the leader.
    pub const META_PROPOSE: ControlKind = ControlKind(5);
    /// A new node asking the cluster to add it to the metadata service's membership.
    pub const META_JOIN: ControlKind = ControlKind(6);
    /// Liveness beacons from every node to the metadata leader (failure detection).
    pub const HEARTBEAT: ControlKind = ControlKind(7);
    /// Thin-allocation query of a chunk range, answered by the PG primary from its store
    /// (NBD `base:allocation` through the gateway).
    pub const BLOCK_STATUS: ControlKind = ControlKind(8);
    /// A node's report of the PGs it leads (engine states, recovery remaining), which the API
    /// of any node collects from every up node for cluster-wide PG states.
    pub const PG_STATS: ControlKind = ControlKind(10);
}

impl fmt::Display for ControlKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "control-kind-{}", self.0)
    }
}

/// Why a control envelope or its body could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    // -- Bad bytes from the peer.
    /// The payload is shorter than the envelope header.
    #[error("control payload of {size_bytes} bytes is shorter than the envelope header")]
    Short {
        /// Bytes given.
        size_bytes: usize,
    },
    /// Kind 0 is reserved so an all-zero payload is never a valid message.
    #[error("control kind 0 is reserved")]
    ReservedKind,
    /// The body is not a valid postcard encoding of the expected type.
    #[error("control body of {kind} v{version} does not decode")]
    Body {
        /// The envelope's kind.
        kind: ControlKind,
        /// The envelope's version.
        version: u16,
        /// What postcard reported.
        #[source]
        source: postcard::Error,
    },
    /// The body decoded but bytes were left over: a schema mismatch, not a valid message.
    #[error("{trailing_bytes} trailing bytes after the control body of {kind}")]
    Trailing {
        /// The envelope's kind.
        kind: ControlKind,
        /// Bytes left over.
        trailing_bytes: usize,
    },

    // -- Caller bugs.
    /// The message serialises to more than a frame can carry.
    #[error("control body of {size_bytes} bytes exceeds the limit of {limit_bytes}")]
    Oversized {
        /// Serialised body size.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// The message could not be serialised.
    #[error("control message does not serialise")]
    Serialize(#[source] postcard::Error),
}

/// A CONTROL frame's payload: kind, version and an opaque body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlEnvelope {
    /// Message family.
    pub kind: ControlKind,
    /// Schema version of the body within the family.
    pub version: u16,
    /// The serialised message (postcard for every kind defined so far).
    pub body: Bytes,
}

impl ControlEnvelope {
    /// An envelope holding `message` serialised with postcard.
    ///
    /// # Panics
    /// If `kind` is the reserved kind 0: a caller bug, since every receiver refuses it.
    pub fn from_message<T: Serialize>(
        kind: ControlKind,
        version: u16,
        message: &T,
    ) -> Result<Self, ControlError> {
        assert_ne!(kind.0, 0, "control kind 0 is reserved");
        let body = postcard::to_stdvec(message).map_err(ControlError::Serialize)?;
        if body.len() > CONTROL_BODY_SIZE_MAX {
            let size_bytes = body.len();
            return Err(ControlError::Oversized {
                size_bytes,
                limit_bytes: CONTROL_BODY_SIZE_MAX,
            });
        }
        Ok(ControlEnvelope {
            kind,
            version,
            body: Bytes::from(body),
        })
    }

    /// The body deserialised as `T`; the caller picks `T` from `(kind, version)`. Trailing
    /// bytes are refused: a valid message of another schema must not pass as this one.
    pub fn decode_body<T: DeserializeOwned>(&self) -> Result<T, ControlError> {
        let (kind, version) = (self.kind, self.version);
        let (message, rest) =
            postcard::take_from_bytes::<T>(&self.body).map_err(|source| ControlError::Body {
                kind,
                version,
                source,
            })?;
        if !rest.is_empty() {
            return Err(ControlError::Trailing {
                kind,
                trailing_bytes: rest.len(),
            });
        }
        Ok(message)
    }

    /// Size of the encoded envelope, in bytes.
    pub fn encoded_size(&self) -> usize {
        CONTROL_ENVELOPE_HEADER_SIZE_BYTES + self.body.len()
    }

    /// Appends the envelope to `out` (to become a CONTROL frame's payload).
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u16_le(self.kind.0);
        out.put_u16_le(self.version);
        out.put_slice(&self.body);
    }

    /// Parses a CONTROL frame's payload. The body stays a zero-copy slice of `payload`.
    pub fn decode(payload: Bytes) -> Result<Self, ControlError> {
        let Some(head) = payload.first_chunk::<CONTROL_ENVELOPE_HEADER_SIZE_BYTES>() else {
            return Err(ControlError::Short {
                size_bytes: payload.len(),
            });
        };
        let kind = ControlKind(u16::from_le_bytes([head[0], head[1]]));
        let version = u16::from_le_bytes([head[2], head[3]]);
        if kind.0 == 0 {
            return Err(ControlError::ReservedKind);
        }
        let body = payload.slice(CONTROL_ENVELOPE_HEADER_SIZE_BYTES..);
        Ok(ControlEnvelope {
            kind,
            version,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ping {
        token: u64,
        note: String,
    }

    /// Goal: an envelope survives encode → decode and its body deserialises to the message.
    #[test]
    fn envelope_round_trip() {
        let ping = Ping {
            token: 7,
            note: "hi".into(),
        };
        let envelope = ControlEnvelope::from_message(ControlKind::PG_RECOVERY, 3, &ping).unwrap();
        let mut payload = Vec::new();
        envelope.encode(&mut payload);
        assert_eq!(payload.len(), envelope.encoded_size());
        assert_eq!(&payload[..4], &[3, 0, 3, 0]);
        let decoded = ControlEnvelope::decode(Bytes::from(payload)).unwrap();
        assert_eq!(decoded, envelope);
        assert_eq!(decoded.decode_body::<Ping>().unwrap(), ping);
    }

    /// Goal: every bad-bytes path yields its typed error.
    #[test]
    fn envelope_errors() {
        let short = ControlEnvelope::decode(Bytes::from_static(&[1, 0, 1]));
        assert!(matches!(short, Err(ControlError::Short { size_bytes: 3 })));
        let zero = ControlEnvelope::decode(Bytes::from_static(&[0, 0, 1, 0]));
        assert!(matches!(zero, Err(ControlError::ReservedKind)));

        let envelope = ControlEnvelope::from_message(ControlKind::RAFT, 1, &5u8).unwrap();
        let mut trailing = envelope.clone();
        trailing.body = Bytes::from_static(&[5, 9]);
        assert!(matches!(
            trailing.decode_body::<u8>(),
            Err(ControlError::Trailing { .. })
        ));
        let mut empty = envelope;
        empty.body = Bytes::new();
        assert!(matches!(
            empty.decode_body::<u8>(),
            Err(ControlError::Body { .. })
        ));
    }

    /// Goal: a message too large for one frame is refused at encode time, not by the peer.
    #[test]
    fn envelope_oversized_message_is_refused() {
        let big = vec![0u8; CONTROL_BODY_SIZE_MAX];
        let result = ControlEnvelope::from_message(ControlKind::RECOVERY_READ, 1, &big);
        assert!(matches!(result, Err(ControlError::Oversized { .. })));
    }
}
