//! The metadata service's Raft layer: openraft with a persistent log and snapshots on the
//! node's local disk, generic over the replicated application state.
//!
//! Boundaries (so the pure state machine and the peer transport plug in without this module
//! knowing them):
//! - [`ReplicatedState`]: the application state machine (commands in, responses out, whole-state
//!   snapshots). Commands travel through Raft as opaque postcard bytes ([`Request`]), so the
//!   openraft type configuration is one concrete [`TypeConfig`] and only [`MetaNode`] and the
//!   state-machine store are generic.
//! - [`RaftTransport`]: moves opaque RPC bytes to a peer; the receiving side hands them to
//!   [`MetaNode::handle_rpc`].
//!
//! Pieces: [`log_store`] (segment log: crc32c-framed records, fsync before acknowledging, torn
//! tail cut on open), [`state_machine`] (apply, snapshots in `<data_dir>/snapshot`, a watch of
//! the applied state), [`network`] (openraft network over a [`RaftTransport`]),
//! [`mem_transport`] (in-process transport for tests), [`node`] (the [`MetaNode`] facade).

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

mod fsutil;
pub mod log_store;
pub mod mem_transport;
pub mod network;
pub mod node;
pub mod state_machine;

pub use log_store::{LogReader, LogStore};
pub use mem_transport::MemRouter;
pub use network::{RaftTransport, TransportError};
pub use node::{MetaError, MetaNode, MetaNodeConfig, MetaStatus, ProposeError, Role};
pub use state_machine::{Applied, StateMachineStore};

/// Raft node id: the same number as the node's `basalt::ids::NodeId`.
pub type NodeId = u64;

/// A Raft log entry's application payload: one postcard-encoded `ReplicatedState::Command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request(pub Vec<u8>);

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command({} bytes)", self.0.len())
    }
}

/// The reply to an applied entry: a postcard-encoded `ReplicatedState::Response` (empty for
/// blank and membership entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(pub Vec<u8>);

openraft::declare_raft_types!(
    /// openraft's type configuration for the metadata service.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

/// A snapshot could not be made from, or turned back into, the application state.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SnapshotError(pub String);

impl SnapshotError {
    /// Wraps any displayable cause.
    pub fn new(cause: impl fmt::Display) -> Self {
        Self(cause.to_string())
    }
}

/// The application state machine replicated by Raft.
///
/// `apply` must be deterministic: every node applies the same commands in the same order and must
/// reach the same state. It must not fail; a command that is invalid in the current state is
/// answered with an error inside `Response`.
pub trait ReplicatedState: Clone + Send + Sync + 'static {
    /// A change proposed through [`MetaNode::propose`].
    type Command: Serialize + DeserializeOwned + fmt::Debug + Send + Sync + 'static;
    /// What applying a command returns to the proposer.
    type Response: Serialize + DeserializeOwned + fmt::Debug + Send + Sync + 'static;

    /// Applies one committed command.
    fn apply(&mut self, cmd: &Self::Command) -> Self::Response;

    /// Serializes the whole state for a snapshot.
    fn to_snapshot(&self) -> Result<Vec<u8>, SnapshotError>;

    /// Rebuilds the state from [`to_snapshot`](Self::to_snapshot) bytes.
    fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError>;
}
