//! The Raft network boundary.
//!
//! openraft's RPCs (append, vote, pre-vote, full snapshot) are encoded here into opaque bytes (a
//! version byte, then postcard) and handed to a [`RaftTransport`], which only moves bytes to the
//! node at an address and brings the reply back. On the receiving node the transport calls
//! [`MetaNode::handle_rpc`](super::MetaNode::handle_rpc) with the bytes; [`serve_rpc`] decodes
//! them, calls the local Raft and encodes the reply. The peer transport (TCP, authenticated) and
//! the in-memory test transport implement [`RaftTransport`] without knowing any Raft types.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::{BasicNode, OptionalSend, RPCTypes, Raft, RaftNetworkV2};
use serde::{Deserialize, Serialize};

use super::state_machine::StateMachineStore;
use super::{NodeId, ReplicatedState, TypeConfig};

/// Version of the RPC encoding; the first byte of every request and reply.
pub const RPC_VERSION: u8 = 1;

/// Why a transport could not deliver a request or bring back its reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The target cannot be reached now (refused, no route, cut off); openraft backs off.
    #[error("node unreachable: {0}")]
    Unreachable(String),
    /// The request may or may not have been delivered.
    #[error("transport failure: {0}")]
    Failed(String),
}

/// Moves opaque Raft RPC bytes to another node and returns its reply bytes.
///
/// Implemented by the peer transport (over its authenticated connection, as a control message)
/// and by [`MemRouter`](super::mem_transport::MemRouter) in tests. It must not connect eagerly and
/// must never be asked to call the local node. The caller applies openraft's per-RPC deadline
/// around the returned future.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `request` to node `target` at `addr` and returns the reply produced there by
    /// [`MetaNode::handle_rpc`](super::MetaNode::handle_rpc).
    fn call<'a>(
        &'a self,
        target: NodeId,
        addr: &'a str,
        request: Vec<u8>,
    ) -> BoxFuture<'a, Result<Vec<u8>, TransportError>>;
}

/// A Raft request on the wire.
#[derive(Serialize, Deserialize)]
enum RpcRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: VoteOf<TypeConfig>,
        meta: SnapshotMetaOf<TypeConfig>,
        data: Vec<u8>,
    },
}

/// A request and the node it is meant for (a stale address must not reach another node).
#[derive(Serialize, Deserialize)]
struct RpcEnvelope {
    target: NodeId,
    request: RpcRequest,
}

/// A Raft reply on the wire.
#[derive(Serialize, Deserialize)]
enum RpcReply {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    /// The receiver could not handle the request (wrong node, undecodable, Raft stopped).
    Error(String),
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut out = vec![RPC_VERSION];
    out.extend_from_slice(&postcard::to_stdvec(value)?);
    Ok(out)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&RPC_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unsupported raft rpc version {v}")),
        None => Err("empty raft rpc".into()),
    }
}

fn encode_reply(reply: &RpcReply) -> Vec<u8> {
    match encode(reply) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode raft rpc reply");
            // An `Error` reply with a fixed message always encodes.
            encode(&RpcReply::Error("reply encoding failed".into())).unwrap_or_default()
        }
    }
}

/// Handles one encoded request addressed to `me` with the local `raft`; always returns reply
/// bytes (errors travel as an error reply).
pub(crate) async fn serve_rpc<S: ReplicatedState>(
    me: NodeId,
    raft: &Raft<TypeConfig, StateMachineStore<S>>,
    request: &[u8],
) -> Vec<u8> {
    let envelope: RpcEnvelope = match decode(request) {
        Ok(e) => e,
        Err(e) => return encode_reply(&RpcReply::Error(format!("bad raft rpc: {e}"))),
    };
    if envelope.target != me {
        return encode_reply(&RpcReply::Error(format!(
            "raft rpc for node {} reached node {me}",
            envelope.target
        )));
    }
    let reply = match envelope.request {
        RpcRequest::Append(req) => match raft.append_entries(req).await {
            Ok(r) => RpcReply::Append(r),
            Err(e) => RpcReply::Error(e.to_string()),
        },
        RpcRequest::Vote(req) => match raft.vote(req).await {
            Ok(r) => RpcReply::Vote(r),
            Err(e) => RpcReply::Error(e.to_string()),
        },
        RpcRequest::PreVote(req) => match raft.pre_vote(req).await {
            Ok(r) => RpcReply::Vote(r),
            Err(e) => RpcReply::Error(e.to_string()),
        },
        RpcRequest::Snapshot { vote, meta, data } => {
            let snapshot = SnapshotOf::<TypeConfig, Vec<u8>> {
                meta,
                snapshot: data,
            };
            match raft.install_full_snapshot(vote, snapshot).await {
                Ok(r) => RpcReply::Snapshot(r),
                Err(e) => RpcReply::Error(e.to_string()),
            }
        }
    };
    encode_reply(&reply)
}

/// Creates one [`NetworkClient`] per target; never connects by itself.
pub(crate) struct NetworkFactory {
    pub(crate) me: NodeId,
    pub(crate) transport: Arc<dyn RaftTransport>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = NetworkClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        debug_assert_ne!(
            target, self.me,
            "openraft asked for a client to the local node"
        );
        NetworkClient {
            me: self.me,
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// openraft's view of one remote node.
pub(crate) struct NetworkClient {
    me: NodeId,
    target: NodeId,
    addr: String,
    transport: Arc<dyn RaftTransport>,
}

/// Failure of one round trip, before it is shaped into openraft's error types.
enum CallError {
    Unreachable(String),
    Network(String),
    Timeout(Duration),
}

impl NetworkClient {
    async fn call(&self, request: RpcRequest, ttl: Duration) -> Result<RpcReply, CallError> {
        let envelope = RpcEnvelope {
            target: self.target,
            request,
        };
        let bytes = encode(&envelope).map_err(|e| CallError::Network(e.to_string()))?;
        let reply = tokio::time::timeout(ttl, self.transport.call(self.target, &self.addr, bytes))
            .await
            .map_err(|_| CallError::Timeout(ttl))?
            .map_err(|e| match e {
                TransportError::Unreachable(m) => CallError::Unreachable(m),
                TransportError::Failed(m) => CallError::Network(m),
            })?;
        match decode(&reply).map_err(CallError::Network)? {
            RpcReply::Error(m) => Err(CallError::Network(format!("node {}: {m}", self.target))),
            reply => Ok(reply),
        }
    }

    fn rpc_error(&self, e: CallError, action: RPCTypes) -> RPCError<TypeConfig> {
        match e {
            CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::from_string(m)),
            CallError::Network(m) => RPCError::Network(NetworkError::from_string(m)),
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout,
            }),
        }
    }

    fn unexpected(&self) -> CallError {
        CallError::Network(format!(
            "node {} sent a reply of the wrong kind",
            self.target
        ))
    }

    async fn vote_like(
        &mut self,
        request: RpcRequest,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(request, option.hard_ttl()).await {
            Ok(RpcReply::Vote(r)) => Ok(r),
            Ok(_) => Err(self.rpc_error(self.unexpected(), RPCTypes::Vote)),
            Err(e) => Err(self.rpc_error(e, RPCTypes::Vote)),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for NetworkClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RpcRequest::Append(rpc), option.hard_ttl()).await {
            Ok(RpcReply::Append(r)) => Ok(r),
            Ok(_) => Err(self.rpc_error(self.unexpected(), RPCTypes::AppendEntries)),
            Err(e) => Err(self.rpc_error(e, RPCTypes::AppendEntries)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_like(RpcRequest::Vote(rpc), option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_like(RpcRequest::PreVote(rpc), option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = RpcRequest::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let result = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            result = self.call(request, option.hard_ttl()) => result,
        };
        match result {
            Ok(RpcReply::Snapshot(r)) => Ok(r),
            Ok(_) => Err(StreamingError::Network(NetworkError::from_string(format!(
                "node {} sent a reply of the wrong kind",
                self.target
            )))),
            Err(CallError::Unreachable(m)) => {
                Err(StreamingError::Unreachable(Unreachable::from_string(m)))
            }
            Err(CallError::Network(m)) => {
                Err(StreamingError::Network(NetworkError::from_string(m)))
            }
            Err(CallError::Timeout(timeout)) => Err(StreamingError::Timeout(Timeout {
                action: RPCTypes::InstallSnapshot,
                id: self.me,
                target: self.target,
                timeout,
            })),
        }
    }
}
