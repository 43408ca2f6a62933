//! Glue between the Raft layer (`crate::meta`) and the rest of the node: the metadata state
//! machine as a [`ReplicatedState`], and Raft RPCs carried over authenticated peer connections.

use std::net::SocketAddr;
use std::sync::Arc;

use basalt::ids::NodeId;
use basalt::meta::{Command, CommandResult, MetaState};
use basalt::wire::{Bytes, ControlKind};

use crate::meta::{RaftTransport, ReplicatedState, SnapshotError, TransportError};
use crate::peer::{BoxFuture, PeerError, Peers};

/// Version of the RAFT control body (the Raft layer's own postcard RPC encoding).
pub const RAFT_CONTROL_VERSION: u16 = 1;

impl ReplicatedState for MetaState {
    type Command = Command;
    type Response = CommandResult;

    fn apply(&mut self, cmd: &Command) -> CommandResult {
        MetaState::apply(self, cmd)
    }

    fn to_snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        Ok(MetaState::to_snapshot(self))
    }

    fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        MetaState::from_snapshot(bytes).map_err(SnapshotError::new)
    }
}

/// Sends Raft RPCs as CONTROL frames of kind RAFT over the node's peer pool, so Raft traffic is
/// authenticated by the same cluster-secret handshake as everything else.
pub struct PeerRaftTransport {
    peers: Arc<Peers>,
}

impl PeerRaftTransport {
    /// A transport over `peers`.
    pub fn new(peers: Arc<Peers>) -> Self {
        PeerRaftTransport { peers }
    }
}

impl RaftTransport for PeerRaftTransport {
    fn call<'a>(
        &'a self,
        target: u64,
        addr: &'a str,
        request: Vec<u8>,
    ) -> BoxFuture<'a, Result<Vec<u8>, TransportError>> {
        Box::pin(async move {
            let node = NodeId(target);
            let addr: SocketAddr = addr.parse().map_err(|e| {
                TransportError::Unreachable(format!("bad peer address {addr:?}: {e}"))
            })?;
            if self.peers.address(node) != Some(addr) {
                self.peers.set_address(node, addr);
            }
            match self
                .peers
                .call_control(
                    node,
                    ControlKind::RAFT,
                    RAFT_CONTROL_VERSION,
                    Bytes::from(request),
                )
                .await
            {
                Ok(body) => Ok(body.to_vec()),
                Err(e) if e.is_unsent() => Err(TransportError::Unreachable(e.to_string())),
                Err(e) => Err(TransportError::Failed(e.to_string())),
            }
        })
    }
}

/// Whether a peer error means "try again later" rather than a bug.
pub fn is_transient(e: &PeerError) -> bool {
    e.is_unsent()
        || matches!(
            e,
            PeerError::ConnectionLost { .. } | PeerError::Timeout { .. }
        )
}
