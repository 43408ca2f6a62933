//! Transport errors, grouped so a caller can tell what to do: retry elsewhere or later
//! (unreachable, connection lost, timeout), report a caller bug (encode, config), or act on
//! the responder's answer (status).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use basalt::ids::NodeId;
use basalt::wire::{ControlError, ControlKind, EncodeError, HandshakeError, RefuseReason, Status};

/// Why a connection ended. One [`super::PeerStats`] counter per variant; carried by
/// [`PeerError::ConnectionLost`] so a caller knows whether its peer or the network failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The handshake did not finish before its deadline (a silent or slow peer).
    HandshakeTimeout,
    /// Authentication failed: a proof did not verify (different secrets), either side.
    Auth,
    /// The peer belongs to another cluster.
    Cluster,
    /// Any other handshake failure (protocol, version, identity, early close).
    Handshake,
    /// The peer sent bytes that are not a valid frame (garbage, oversized, bad checksum).
    Frame,
    /// Valid frames that break the session protocol: a request where a reply belongs or the
    /// other way round, or a reply that matches no request in flight.
    Protocol,
    /// A socket error while reading or writing.
    Io,
    /// The peer closed the connection.
    PeerClosed,
    /// This node closed it (server shutdown, client dropped).
    Local,
}

impl CloseReason {
    /// Every reason, for counters and tests.
    pub const ALL: [CloseReason; 9] = [
        CloseReason::HandshakeTimeout,
        CloseReason::Auth,
        CloseReason::Cluster,
        CloseReason::Handshake,
        CloseReason::Frame,
        CloseReason::Protocol,
        CloseReason::Io,
        CloseReason::PeerClosed,
        CloseReason::Local,
    ];

    /// Position in [`Self::ALL`] (the counter index).
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The reason a failed handshake is counted under.
    pub(crate) fn of_handshake(error: &HandshakeError) -> CloseReason {
        match error {
            HandshakeError::BadProof
            | HandshakeError::Refused {
                reason: RefuseReason::Auth,
                ..
            } => CloseReason::Auth,
            HandshakeError::ClusterMismatch { .. }
            | HandshakeError::Refused {
                reason: RefuseReason::Cluster,
                ..
            } => CloseReason::Cluster,
            _ => CloseReason::Handshake,
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            CloseReason::HandshakeTimeout => "handshake timed out",
            CloseReason::Auth => "authentication failed",
            CloseReason::Cluster => "cluster mismatch",
            CloseReason::Handshake => "handshake failed",
            CloseReason::Frame => "invalid frame",
            CloseReason::Protocol => "protocol violation",
            CloseReason::Io => "socket error",
            CloseReason::PeerClosed => "closed by peer",
            CloseReason::Local => "closed locally",
        };
        f.write_str(text)
    }
}

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    // -- Not connected: nothing was sent, retrying later or elsewhere is safe.
    /// The address book has no entry for the node.
    #[error("no address known for {node}")]
    UnknownPeer {
        /// The node asked for.
        node: NodeId,
    },
    /// The TCP connect failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// What the socket reported.
        #[source]
        source: io::Error,
    },
    /// The TCP connect or the handshake did not finish in time.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The address dialled.
        addr: SocketAddr,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The handshake failed: refused by the peer or refused by us (secret, cluster, identity).
    #[error("handshake with {addr}: {source}")]
    Handshake {
        /// The address dialled.
        addr: SocketAddr,
        /// The handshake's verdict.
        #[source]
        source: HandshakeError,
    },
    /// The last connect to the node failed and its backoff has not elapsed.
    #[error("{node} unreachable, next attempt in {retry_in:?}")]
    Backoff {
        /// The node asked for.
        node: NodeId,
        /// Time left before the pool dials again.
        retry_in: Duration,
    },

    // -- Sent, outcome unknown: a write may or may not have been applied.
    /// The connection ended before the reply arrived.
    #[error("connection to {peer} lost: {reason}")]
    ConnectionLost {
        /// The peer at the other end.
        peer: NodeId,
        /// Why the connection ended.
        reason: CloseReason,
    },
    /// No reply within the call's deadline.
    #[error("no reply from {peer} within {timeout:?}")]
    Timeout {
        /// The peer asked.
        peer: NodeId,
        /// The deadline that passed.
        timeout: Duration,
    },

    // -- The responder answered.
    /// A control call answered with a status other than OK.
    #[error("{peer} answered {kind} with {status:?}")]
    Status {
        /// The responder.
        peer: NodeId,
        /// The control kind asked for.
        kind: ControlKind,
        /// Its status.
        status: Status,
    },
    /// A control reply that is not a valid envelope of the kind asked for.
    #[error("bad control reply from {peer}: {source}")]
    ControlReply {
        /// The responder.
        peer: NodeId,
        /// What was wrong with it.
        #[source]
        source: ControlError,
    },
    /// A control reply of another kind than the request's.
    #[error("{peer} answered a {expected} request with {found}")]
    ControlKindMismatch {
        /// The responder.
        peer: NodeId,
        /// The kind asked for.
        expected: ControlKind,
        /// The kind of the reply.
        found: ControlKind,
    },

    // -- Caller or configuration bugs.
    /// The request breaks the frame rules and was not sent.
    #[error("invalid request: {0}")]
    Encode(#[from] EncodeError),
    /// A request header that is a reply, or a control body too large for a frame.
    #[error("invalid request: {what}")]
    InvalidRequest {
        /// What is wrong.
        what: &'static str,
    },
    /// A [`super::PeerConfig`] field is out of range.
    #[error("invalid peer configuration: {field}")]
    Config {
        /// The field.
        field: &'static str,
    },
    /// The listening socket could not be set up.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address to bind.
        addr: SocketAddr,
        /// What the socket reported.
        #[source]
        source: io::Error,
    },
}

impl PeerError {
    /// Whether the request never reached the peer, so it is safe to retry anywhere, even a
    /// write. Lost connections and timeouts are not: their outcome is unknown.
    pub fn is_unsent(&self) -> bool {
        matches!(
            self,
            PeerError::UnknownPeer { .. }
                | PeerError::Connect { .. }
                | PeerError::ConnectTimeout { .. }
                | PeerError::Handshake { .. }
                | PeerError::Backoff { .. }
        )
    }
}
