//! The authenticated peer handshake (DESIGN §6), sans-IO.
//!
//! Four frames, after which both sides know the other speaks a common protocol version,
//! belongs to the same cluster, and knows the cluster secret:
//!
//! 1. initiator → HELLO (versions, cluster id, node id, features, nonce);
//! 2. acceptor checks it and answers HELLO + PROOF, its HMAC over both HELLOs;
//! 3. initiator verifies that PROOF and answers its own PROOF;
//! 4. acceptor verifies it. Each side now holds an [`Established`].
//!
//! A side that refuses (version, cluster, proof, identity, protocol) queues one REFUSE frame
//! naming the reason, then the connection must be closed. The secret never crosses the wire,
//! proofs are bound to both fresh nonces (no replay) and to the sender's role (no reflection),
//! and are compared in constant time. The handshake authenticates the peer; it does not protect
//! later frames from a man in the middle that relays the handshake (DESIGN §6: TLS is the
//! option for that).
//!
//! Nonces come from the caller (OS RNG in the daemon, a seeded RNG in simulations) and must be
//! fresh per connection: a repeated nonce pair would make a recorded proof valid again. There
//! is no clock here either: the transport bounds how long a handshake may take.
//!
//! [`Handshake`] drives the typed phases ([`phases`]) from bytes. Use it like a rustls
//! connection: feed received bytes to [`Handshake::handle_input`], then drain
//! [`Handshake::poll_transmit`] to the socket, then check [`Handshake::poll_established`]; after
//! an error, still drain `poll_transmit` (it holds the REFUSE) before closing.

mod auth;
mod messages;
mod phases;

#[cfg(test)]
mod tests;

use bytes::BytesMut;

pub use auth::{CLUSTER_SECRET_SIZE_MAX, CLUSTER_SECRET_SIZE_MIN, ClusterSecret, SecretError};
pub use messages::{
    Features, HELLO_SIZE_BYTES, Hello, HelloError, NONCE_SIZE_BYTES, Nonce, PROOF_SIZE_BYTES,
    Proof, REFUSE_SIZE_BYTES, RefuseReason, Role,
};
pub use phases::{
    AcceptorAwaitHello, AcceptorAwaitProof, Established, HandshakeConfig, InitiatorAwaitHello,
    InitiatorAwaitProof,
};

use messages::Refuse;

use super::PROTOCOL_VERSION;
use super::error::FieldError;
use super::error::FrameError;
use super::frame::{Frame, FrameDecoder, Stage};
use super::header::{Header, Opcode, RequestId};
use crate::ids::{ClusterId, NodeId};

/// Why a handshake failed. Grouped by who is at fault; [`Self::refusal`] says what to tell
/// the peer. Every variant ends the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    // -- Bad bytes from the peer.
    /// A handshake frame failed to decode.
    #[error("handshake frame: {0}")]
    Frame(#[from] FrameError),
    /// A HELLO payload is malformed.
    #[error("malformed HELLO: {0}")]
    MalformedHello(#[from] HelloError),

    // -- The peer broke the protocol.
    /// A frame that is not the one the current phase waits for.
    #[error("unexpected {opcode} frame while {phase}")]
    UnexpectedFrame {
        /// The phase that received it.
        phase: &'static str,
        /// The frame's opcode.
        opcode: Opcode,
    },
    /// The HELLO claims the wrong role (e.g. our own HELLO reflected back).
    #[error("peer claims role {found:?}, expected {expected:?}")]
    WrongRole {
        /// The role the peer must have.
        expected: Role,
        /// The role it claims.
        found: Role,
    },

    // -- Incompatible peer.
    /// No protocol version in common.
    #[error(
        "no common protocol version: ours {ours_min}..={ours_max}, theirs {theirs_min}..={theirs_max}"
    )]
    VersionMismatch {
        /// Oldest version we speak.
        ours_min: u8,
        /// Newest version we speak.
        ours_max: u8,
        /// Oldest version the peer speaks.
        theirs_min: u8,
        /// Newest version the peer speaks.
        theirs_max: u8,
    },
    /// The peer belongs to another cluster.
    #[error("peer belongs to cluster {theirs}, we to {ours}")]
    ClusterMismatch {
        /// Our cluster.
        ours: ClusterId,
        /// The peer's cluster.
        theirs: ClusterId,
    },

    // -- Authentication and identity.
    /// The peer's proof is wrong: it does not know the cluster secret, or replayed a proof from
    /// another connection.
    #[error("peer's proof does not verify")]
    BadProof,
    /// The peer announces our own node id: we dialled ourselves.
    #[error("connected to ourselves ({node})")]
    SelfConnection {
        /// Our node id.
        node: NodeId,
    },
    /// The peer is not the node we dialled.
    #[error("expected peer {expected}, found {found}")]
    UnexpectedPeer {
        /// The node we meant to reach.
        expected: NodeId,
        /// The node that answered.
        found: NodeId,
    },

    // -- The peer ended it.
    /// The peer refused the connection.
    #[error("peer refused: {reason} (it speaks versions {peer_version_min}..={peer_version_max})")]
    Refused {
        /// Its reason.
        reason: RefuseReason,
        /// Oldest version it speaks.
        peer_version_min: u8,
        /// Newest version it speaks.
        peer_version_max: u8,
    },
    /// The peer closed the connection between frames before the handshake finished.
    #[error("connection closed during the handshake")]
    Closed,
}

impl HandshakeError {
    /// The reason to send in a REFUSE frame, or `None` when there is no one to tell (the peer
    /// refused or left first).
    pub fn refusal(&self) -> Option<RefuseReason> {
        match self {
            HandshakeError::Frame(FrameError::Version { .. }) => Some(RefuseReason::Version),
            HandshakeError::Frame(FrameError::Truncated { .. }) => None,
            HandshakeError::Frame(_)
            | HandshakeError::MalformedHello(_)
            | HandshakeError::UnexpectedFrame { .. }
            | HandshakeError::WrongRole { .. } => Some(RefuseReason::Protocol),
            HandshakeError::VersionMismatch { .. } => Some(RefuseReason::Version),
            HandshakeError::ClusterMismatch { .. } => Some(RefuseReason::Cluster),
            HandshakeError::BadProof => Some(RefuseReason::Auth),
            HandshakeError::SelfConnection { .. } | HandshakeError::UnexpectedPeer { .. } => {
                Some(RefuseReason::Peer)
            }
            HandshakeError::Refused { .. } | HandshakeError::Closed => None,
        }
    }
}

/// Where a [`Handshake`] is.
enum Phase {
    InitiatorAwaitHello(InitiatorAwaitHello),
    InitiatorAwaitProof(InitiatorAwaitProof),
    AcceptorAwaitHello(AcceptorAwaitHello),
    AcceptorAwaitProof(AcceptorAwaitProof),
    /// Done, result not yet collected by [`Handshake::poll_established`].
    Established(Established),
    /// Done and collected.
    Finished,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::InitiatorAwaitHello(_) | Phase::AcceptorAwaitHello(_) => "awaiting HELLO",
            Phase::InitiatorAwaitProof(_) | Phase::AcceptorAwaitProof(_) => "awaiting PROOF",
            Phase::Established(_) | Phase::Finished => "established",
        }
    }

    fn awaits_frame(&self) -> bool {
        !matches!(self, Phase::Established(_) | Phase::Finished)
    }

    /// The one transition function: consumes the phase and a frame, queues what to send.
    fn handle_frame(self, frame: &Frame, transmit: &mut BytesMut) -> Result<Phase, HandshakeError> {
        let payload = &frame.payload[..];
        match (self, frame.header.opcode) {
            (_, Opcode::Refuse) => Err(refused(payload)),
            (Phase::InitiatorAwaitHello(phase), Opcode::Hello) => Ok(Phase::InitiatorAwaitProof(
                phase.handle_hello(&Hello::decode(payload)?)?,
            )),
            (Phase::InitiatorAwaitProof(phase), Opcode::Proof) => {
                let (established, proof) = phase.handle_proof(&decode_proof(payload)?)?;
                queue_frame(transmit, Opcode::Proof, proof.as_bytes());
                Ok(Phase::Established(established))
            }
            (Phase::AcceptorAwaitHello(phase), Opcode::Hello) => {
                let (next, hello, proof) = phase.handle_hello(&Hello::decode(payload)?)?;
                queue_frame(transmit, Opcode::Hello, &hello.encode());
                queue_frame(transmit, Opcode::Proof, proof.as_bytes());
                Ok(Phase::AcceptorAwaitProof(next))
            }
            (Phase::AcceptorAwaitProof(phase), Opcode::Proof) => Ok(Phase::Established(
                phase.handle_proof(&decode_proof(payload)?)?,
            )),
            (phase, opcode) => Err(HandshakeError::UnexpectedFrame {
                phase: phase.name(),
                opcode,
            }),
        }
    }
}

/// A PROOF payload. The frame layer already fixed its size, so the error is unreachable in
/// practice; it is still typed rather than a panic because the bytes are the peer's.
fn decode_proof(payload: &[u8]) -> Result<Proof, HandshakeError> {
    Proof::decode(payload).ok_or_else(|| wrong_size(Opcode::Proof, PROOF_SIZE_BYTES, payload))
}

/// The peer's REFUSE, as the error this side ends with.
fn refused(payload: &[u8]) -> HandshakeError {
    match Refuse::decode(payload) {
        Some(refuse) => HandshakeError::Refused {
            reason: refuse.reason,
            peer_version_min: refuse.version_min,
            peer_version_max: refuse.version_max,
        },
        None => wrong_size(Opcode::Refuse, REFUSE_SIZE_BYTES, payload),
    }
}

fn wrong_size(opcode: Opcode, expected_bytes: usize, payload: &[u8]) -> HandshakeError {
    let error = FieldError::PayloadSize {
        expected_bytes,
        found_bytes: payload.len(),
    };
    HandshakeError::Frame(FrameError::Field { opcode, error })
}

/// Appends one of our own handshake frames. Infallible by construction: the header is all
/// zero but the opcode, and the payload is a fixed-size array checked against the handshake
/// limit at compile time, so none of `encode`'s checks can fail.
fn queue_frame<const N: usize>(transmit: &mut BytesMut, opcode: Opcode, payload: &[u8; N]) {
    const { assert!(N <= super::HANDSHAKE_PAYLOAD_SIZE_MAX as usize) };
    debug_assert!(opcode.is_handshake());
    let header = Header::new(opcode, RequestId(0));
    let raw = header.to_raw(N as u32, crc32c::crc32c(payload));
    debug_assert!(
        header.validate(N).is_ok(),
        "handshake frame breaks a field rule"
    );
    transmit.extend_from_slice(zerocopy::IntoBytes::as_bytes(&raw));
    transmit.extend_from_slice(payload);
}

/// One side of the handshake, driven by bytes: the sticky, byte-level shell around the typed
/// phases. Input bytes are consumed only up to the end of the last handshake frame, so frames
/// the peer pipelines after its last handshake frame stay in the caller's buffer for the
/// session's [`FrameDecoder`].
pub struct Handshake {
    /// `Err` once failed: every later call returns the same error and does nothing else.
    state: Result<Phase, HandshakeError>,
    decoder: FrameDecoder,
    transmit: BytesMut,
}

impl Handshake {
    /// The dialling side; queues its HELLO. `expected_peer` is the node meant to be reached.
    pub fn initiator(config: HandshakeConfig, nonce: Nonce, expected_peer: Option<NodeId>) -> Self {
        let phase = InitiatorAwaitHello::new(config, nonce, expected_peer);
        let mut transmit = BytesMut::new();
        queue_frame(&mut transmit, Opcode::Hello, &phase.hello().encode());
        Self::with_phase(Phase::InitiatorAwaitHello(phase), transmit)
    }

    /// The accepting side; sends nothing until the initiator's HELLO arrives.
    pub fn acceptor(config: HandshakeConfig, nonce: Nonce) -> Self {
        let phase = AcceptorAwaitHello::new(config, nonce);
        Self::with_phase(Phase::AcceptorAwaitHello(phase), BytesMut::new())
    }

    fn with_phase(phase: Phase, transmit: BytesMut) -> Self {
        let decoder = FrameDecoder::with_stage(Stage::Handshake);
        Handshake {
            state: Ok(phase),
            decoder,
            transmit,
        }
    }

    /// Consumes handshake frames from the front of `input` until the handshake completes or
    /// more bytes are needed. Does nothing once established.
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<(), HandshakeError> {
        loop {
            let phase = match &mut self.state {
                Err(error) => return Err(error.clone()),
                Ok(phase) if !phase.awaits_frame() => return Ok(()),
                Ok(phase) => phase,
            };
            let frame = match self.decoder.handle_input(input) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(error) => return Err(self.fail(error.into())),
            };
            let phase = std::mem::replace(phase, Phase::Finished);
            match phase.handle_frame(&frame, &mut self.transmit) {
                Ok(next) => self.state = Ok(next),
                Err(error) => return Err(self.fail(error)),
            }
        }
    }

    /// The peer closed its sending side. Before the handshake finished that is an error:
    /// `Truncated` inside a frame, `Closed` between frames.
    pub fn handle_eof(&mut self, input: &BytesMut) -> Result<(), HandshakeError> {
        match &self.state {
            Err(error) => Err(error.clone()),
            Ok(phase) if !phase.awaits_frame() => Ok(()),
            Ok(_) => match self.decoder.handle_eof(input) {
                Err(error) => Err(self.fail(error.into())),
                Ok(()) => Err(self.fail(HandshakeError::Closed)),
            },
        }
    }

    /// Moves every queued byte (HELLO, PROOF, or a REFUSE after a failure) into `out`; returns
    /// how many. Call after every `handle_*` and after construction.
    pub fn poll_transmit(&mut self, out: &mut BytesMut) -> usize {
        let size_bytes = self.transmit.len();
        out.extend_from_slice(&self.transmit);
        self.transmit.clear();
        size_bytes
    }

    /// The result, once the handshake succeeded and everything queued has been drained by
    /// [`Self::poll_transmit`] (the initiator's last PROOF must reach the peer before the
    /// session sends anything). Returns it once; `None` before, after, and on failure.
    pub fn poll_established(&mut self) -> Option<Established> {
        if !self.transmit.is_empty() {
            return None;
        }
        let phase = self.state.as_mut().ok()?;
        match std::mem::replace(phase, Phase::Finished) {
            Phase::Established(established) => Some(established),
            other => {
                *phase = other;
                None
            }
        }
    }

    /// The error that ended the handshake, if any.
    pub fn error(&self) -> Option<&HandshakeError> {
        self.state.as_ref().err()
    }

    /// Records `error` (sticky) and queues the REFUSE it calls for.
    fn fail(&mut self, error: HandshakeError) -> HandshakeError {
        debug_assert!(
            self.state.is_ok(),
            "a failed handshake does no further work"
        );
        if let Some(reason) = error.refusal() {
            let refuse = Refuse {
                reason,
                version_min: PROTOCOL_VERSION,
                version_max: PROTOCOL_VERSION,
            };
            queue_frame(&mut self.transmit, Opcode::Refuse, &refuse.encode());
        }
        self.state = Err(error.clone());
        error
    }
}
