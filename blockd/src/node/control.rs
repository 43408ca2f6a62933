//! Control messages between nodes for the metadata service: proposals forwarded to the Raft
//! leader, join requests, and heartbeats; and the peer handlers that serve them.
//!
//! All three are small postcard messages in CONTROL frames, so they share the peer
//! connection's authentication: only nodes holding the cluster secret can propose, join or
//! keep a node alive.

use std::sync::Arc;

use basalt::ids::NodeId;
use basalt::meta::{Command, CommandResult, NodeRole};
use basalt::wire::{Bytes, Status};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::NodeShared;
use super::raft::RAFT_CONTROL_VERSION;
use crate::peer::{BoxFuture, ControlHandler};

/// Version of the META_PROPOSE, META_JOIN and HEARTBEAT bodies.
pub const META_CONTROL_VERSION: u16 = 1;

/// A command for the leader to propose.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProposeRequest {
    /// The command, time already stamped by the forwarding node.
    pub command: Command,
}

/// The leader's answer to a forwarded proposal.
#[derive(Debug, Serialize, Deserialize)]
pub enum ProposeReply {
    /// Committed and applied; the state machine's result, and the leader's applied log index
    /// at that moment (the forwarder waits for its own copy to reach it, so callers can read
    /// their own writes).
    Applied {
        /// The state machine's answer.
        result: CommandResult,
        /// The leader's applied index after applying it.
        applied_index: Option<u64>,
    },
    /// The receiver is not the leader; try this one (if known).
    NotLeader {
        /// The leader the receiver knows of: (node id, peer address).
        leader: Option<(u64, String)>,
    },
    /// The leader cannot reach a quorum of voters.
    NoQuorum,
    /// Outcome unknown (timeout or leadership change); commands are idempotent, retry.
    Unknown(String),
    /// Refused for another reason.
    Failed(String),
}

/// A node asking to be added to the metadata service's membership.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The joining node.
    pub node: NodeId,
    /// Its peer address (what Raft uses to reach it).
    pub peer_addr: String,
    /// Voter or follower (learner).
    pub role: NodeRole,
}

/// The answer to a join.
#[derive(Debug, Serialize, Deserialize)]
pub enum JoinReply {
    /// The node is a member (learner or voter) now.
    Joined,
    /// The receiver is not the leader; try this one (if known).
    NotLeader {
        /// The leader the receiver knows of: (node id, peer address).
        leader: Option<(u64, String)>,
    },
    /// Refused or failed.
    Failed(String),
}

/// "I am alive", sent to the leader every heartbeat interval.
#[derive(Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender (also authenticated by the connection; they must agree).
    pub node: NodeId,
}

/// The leader's answer to a heartbeat: what the node needs to extend its read lease.
#[derive(Debug, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The leader's map epoch: a node whose own map is older gets no lease until it caught up
    /// (it may still act on a map in which it leads PGs it no longer leads).
    pub epoch: basalt::ids::Epoch,
    /// Whether the metadata state has the node serving (up, or draining).
    pub up: bool,
}

/// Encodes a control body; the types here always serialise.
pub fn encode<T: Serialize>(message: &T) -> Bytes {
    match postcard::to_stdvec(message) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            debug_assert!(false, "control message does not serialise: {e}");
            Bytes::new()
        }
    }
}

fn decode<T: DeserializeOwned>(version: u16, body: &[u8]) -> Result<T, Status> {
    if version != META_CONTROL_VERSION {
        return Err(Status::Unsupported);
    }
    postcard::from_bytes(body).map_err(|_| Status::Invalid)
}

/// Serves RAFT control messages: hands them to the local Raft node.
pub struct RaftHandler(pub Arc<NodeShared>);

impl ControlHandler for RaftHandler {
    fn handle_control(
        &self,
        _peer: NodeId,
        version: u16,
        body: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, Status>> {
        Box::pin(async move {
            if version != RAFT_CONTROL_VERSION {
                return Err(Status::Unsupported);
            }
            Ok(Bytes::from(self.0.meta.handle_rpc(&body).await))
        })
    }
}

/// Serves META_PROPOSE: proposes a forwarded command if this node leads.
pub struct ProposeHandler(pub Arc<NodeShared>);

impl ControlHandler for ProposeHandler {
    fn handle_control(
        &self,
        _peer: NodeId,
        version: u16,
        body: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, Status>> {
        Box::pin(async move {
            let request: ProposeRequest = decode(version, &body)?;
            Ok(encode(&self.0.propose_local(&request.command).await))
        })
    }
}

/// Serves META_JOIN: adds the node to the Raft membership if this node leads.
pub struct JoinHandler(pub Arc<NodeShared>);

impl ControlHandler for JoinHandler {
    fn handle_control(
        &self,
        peer: NodeId,
        version: u16,
        body: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, Status>> {
        Box::pin(async move {
            let request: JoinRequest = decode(version, &body)?;
            if request.node != peer {
                return Err(Status::Invalid);
            }
            Ok(encode(&self.0.join_local(&request).await))
        })
    }
}

/// Serves HEARTBEAT: feeds the leader's failure detector.
pub struct HeartbeatHandler(pub Arc<NodeShared>);

impl ControlHandler for HeartbeatHandler {
    fn handle_control(
        &self,
        peer: NodeId,
        version: u16,
        body: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, Status>> {
        Box::pin(async move {
            let beat: Heartbeat = decode(version, &body)?;
            if beat.node != peer {
                return Err(Status::Invalid);
            }
            self.0.record_heartbeat(peer);
            let state = self.0.meta.read_state();
            let reply = HeartbeatReply {
                epoch: state.epoch(),
                up: state
                    .node(peer)
                    .is_some_and(|record| record.state.is_serving()),
            };
            Ok(encode(&reply))
        })
    }
}
