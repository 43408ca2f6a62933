//! The handshake's phases as types. Each transition consumes the phase and one message and
//! returns the next phase (plus what to send) or an error, so a phase cannot be reused after
//! it has handled a message, and [`Established`] exists only at the end of a successful run.
//!
//! ```text
//!  initiator                                   acceptor
//!  InitiatorAwaitHello  ---- HELLO(i) ---->    AcceptorAwaitHello
//!                       <--- HELLO(a) -----    (checks version, cluster, identity)
//!  InitiatorAwaitProof  <--- PROOF(a) -----    AcceptorAwaitProof
//!  (verifies PROOF(a))  ---- PROOF(i) ---->    (verifies PROOF(i))
//!  Established                                 Established
//! ```

use super::HandshakeError;
use super::auth::{ClusterSecret, Transcript};
use super::messages::{Features, Hello, Nonce, Proof, Role};
use crate::ids::{ClusterId, NodeId};
use crate::wire::PROTOCOL_VERSION;

/// What a node brings to every handshake.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// The cluster this node belongs to; peers of other clusters are refused.
    pub cluster: ClusterId,
    /// This node's id, announced to the peer.
    pub node: NodeId,
    /// The shared cluster secret both sides prove knowledge of.
    pub secret: ClusterSecret,
    /// Optional features this node supports.
    pub features: Features,
}

impl HandshakeConfig {
    fn hello(&self, role: Role, nonce: Nonce) -> Hello {
        Hello {
            version_min: PROTOCOL_VERSION,
            version_max: PROTOCOL_VERSION,
            role,
            features: self.features,
            node: self.node,
            cluster: self.cluster,
            nonce,
        }
    }

    /// Checks the peer's HELLO against ours; returns the version to speak.
    fn check_peer(
        &self,
        own: &Hello,
        peer: &Hello,
        expected_peer: Option<NodeId>,
    ) -> Result<u8, HandshakeError> {
        let expected_role = own.role.peer();
        if peer.role != expected_role {
            return Err(HandshakeError::WrongRole {
                expected: expected_role,
                found: peer.role,
            });
        }
        let version = own.version_max.min(peer.version_max);
        if version < own.version_min.max(peer.version_min) {
            return Err(HandshakeError::VersionMismatch {
                ours_min: own.version_min,
                ours_max: own.version_max,
                theirs_min: peer.version_min,
                theirs_max: peer.version_max,
            });
        }
        if peer.cluster != self.cluster {
            return Err(HandshakeError::ClusterMismatch {
                ours: self.cluster,
                theirs: peer.cluster,
            });
        }
        if peer.node == self.node {
            return Err(HandshakeError::SelfConnection { node: self.node });
        }
        match expected_peer {
            Some(expected) if expected != peer.node => Err(HandshakeError::UnexpectedPeer {
                expected,
                found: peer.node,
            }),
            _ => Ok(version),
        }
    }
}

/// Proof that a connection completed the handshake: only a successful run constructs one.
/// A session is built from it, so an unauthenticated connection cannot carry I/O.
#[derive(Debug)]
pub struct Established {
    peer: NodeId,
    role: Role,
    version: u8,
    features: Features,
}

impl Established {
    /// The authenticated peer's node id. An acceptor should check it against the map.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// This node's role on the connection.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The protocol version both sides speak.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The optional features both sides support.
    pub fn features(&self) -> Features {
        self.features
    }
}

/// The data both proof phases carry.
struct Agreed {
    secret: ClusterSecret,
    transcript: Transcript,
    peer: NodeId,
    version: u8,
    features: Features,
}

impl Agreed {
    fn new(
        config: HandshakeConfig,
        role: Role,
        initiator: &Hello,
        acceptor: &Hello,
        version: u8,
    ) -> Self {
        let peer = match role {
            Role::Initiator => acceptor,
            Role::Acceptor => initiator,
        };
        Agreed {
            transcript: Transcript {
                initiator_hello: initiator.encode(),
                acceptor_hello: acceptor.encode(),
            },
            peer: peer.node,
            version,
            features: config.features.intersection(peer.features),
            secret: config.secret,
        }
    }

    fn establish(self, role: Role) -> Established {
        Established {
            peer: self.peer,
            role,
            version: self.version,
            features: self.features,
        }
    }
}

/// Initiator, HELLO sent: waiting for the acceptor's HELLO.
pub struct InitiatorAwaitHello {
    config: HandshakeConfig,
    own: Hello,
    expected_peer: Option<NodeId>,
}

impl InitiatorAwaitHello {
    /// Starts a handshake as initiator with a fresh `nonce`; send [`Self::hello`] first. With
    /// `expected_peer`, a peer announcing another node id (a reused address) is refused.
    pub fn new(config: HandshakeConfig, nonce: Nonce, expected_peer: Option<NodeId>) -> Self {
        let own = config.hello(Role::Initiator, nonce);
        InitiatorAwaitHello {
            config,
            own,
            expected_peer,
        }
    }

    /// The HELLO to send.
    pub fn hello(&self) -> &Hello {
        &self.own
    }

    /// Handles the acceptor's HELLO.
    pub fn handle_hello(self, peer: &Hello) -> Result<InitiatorAwaitProof, HandshakeError> {
        let version = self
            .config
            .check_peer(&self.own, peer, self.expected_peer)?;
        Ok(InitiatorAwaitProof {
            agreed: Agreed::new(self.config, Role::Initiator, &self.own, peer, version),
        })
    }
}

/// Initiator, both HELLOs known: waiting for the acceptor's proof.
pub struct InitiatorAwaitProof {
    agreed: Agreed,
}

impl InitiatorAwaitProof {
    /// Handles the acceptor's proof; on success returns the session and the proof to send.
    pub fn handle_proof(self, proof: &Proof) -> Result<(Established, Proof), HandshakeError> {
        let agreed = self.agreed;
        if !agreed
            .transcript
            .verify(&agreed.secret, Role::Acceptor, proof)
        {
            return Err(HandshakeError::BadProof);
        }
        let own_proof = agreed.transcript.proof(&agreed.secret, Role::Initiator);
        Ok((agreed.establish(Role::Initiator), own_proof))
    }
}

/// Acceptor, connection accepted: waiting for the initiator's HELLO.
pub struct AcceptorAwaitHello {
    config: HandshakeConfig,
    nonce: Nonce,
}

impl AcceptorAwaitHello {
    /// Starts a handshake as acceptor with a fresh `nonce`.
    pub fn new(config: HandshakeConfig, nonce: Nonce) -> Self {
        AcceptorAwaitHello { config, nonce }
    }

    /// Handles the initiator's HELLO; on success returns the next phase and the HELLO and
    /// proof to send, in that order.
    pub fn handle_hello(
        self,
        peer: &Hello,
    ) -> Result<(AcceptorAwaitProof, Hello, Proof), HandshakeError> {
        let own = self.config.hello(Role::Acceptor, self.nonce);
        let version = self.config.check_peer(&own, peer, None)?;
        let agreed = Agreed::new(self.config, Role::Acceptor, peer, &own, version);
        let proof = agreed.transcript.proof(&agreed.secret, Role::Acceptor);
        Ok((AcceptorAwaitProof { agreed }, own, proof))
    }
}

/// Acceptor, HELLO and proof sent: waiting for the initiator's proof.
pub struct AcceptorAwaitProof {
    agreed: Agreed,
}

impl AcceptorAwaitProof {
    /// Handles the initiator's proof.
    pub fn handle_proof(self, proof: &Proof) -> Result<Established, HandshakeError> {
        let agreed = self.agreed;
        if !agreed
            .transcript
            .verify(&agreed.secret, Role::Initiator, proof)
        {
            return Err(HandshakeError::BadProof);
        }
        Ok(agreed.establish(Role::Acceptor))
    }
}
