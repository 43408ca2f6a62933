//! What a server does with requests: the [`PeerService`] trait, and [`Router`], the service
//! the daemon assembles from independently registered handlers (replication I/O, Raft, map
//! watch, ...).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use basalt::ids::{Epoch, NodeId};
use basalt::wire::{Bytes, ControlKind, Frame, Status};

/// A boxed, sendable future: what the object-safe handler traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The answer to an I/O request. The server builds the reply header from the request (same
/// opcode, id and address, REPLY flag), so a handler cannot misaddress a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Outcome; anything but `Ok` must come with an empty payload.
    pub status: Status,
    /// The responder's map epoch (a `StaleEpoch` reply must carry it).
    pub epoch: Epoch,
    /// The PG version the primary assigned, for mutating requests; zero otherwise.
    pub pg_version: u64,
    /// The data of an OK READ reply; empty otherwise.
    pub payload: Bytes,
}

impl Reply {
    /// An OK reply carrying `payload` (empty for everything but READ).
    pub fn ok(epoch: Epoch, payload: Bytes) -> Self {
        Reply {
            status: Status::Ok,
            epoch,
            pg_version: 0,
            payload,
        }
    }

    /// A failed reply with `status` and no payload.
    pub fn error(status: Status, epoch: Epoch) -> Self {
        debug_assert_ne!(status, Status::Ok, "an error reply needs an error status");
        Reply {
            status,
            epoch,
            pg_version: 0,
            payload: Bytes::new(),
        }
    }
}

/// The server's request handler, implemented by the daemon. Each request runs on its own task;
/// many run at once, so implementations synchronise internally. `peer` is the authenticated
/// node at the other end.
///
/// Implementations may write `async fn` for both methods.
pub trait PeerService: Send + Sync + 'static {
    /// Handles an I/O request (READ, WRITE, REPLICATE_*, ...): any opcode but CONTROL.
    fn handle_io(&self, peer: NodeId, request: Frame) -> impl Future<Output = Reply> + Send;

    /// Handles a CONTROL request: returns the reply body (sent in an envelope of the same kind
    /// and version) or a status such as `Unsupported` for a kind or version it does not serve.
    fn handle_control(
        &self,
        peer: NodeId,
        kind: ControlKind,
        version: u16,
        body: Bytes,
    ) -> impl Future<Output = Result<Bytes, Status>> + Send;
}

/// Object-safe I/O handler for a [`Router`] (the replication layer).
pub trait IoHandler: Send + Sync + 'static {
    /// See [`PeerService::handle_io`].
    fn handle_io(&self, peer: NodeId, request: Frame) -> BoxFuture<'_, Reply>;
}

/// Object-safe handler of one control kind for a [`Router`] (Raft, map watch, PG log, ...).
pub trait ControlHandler: Send + Sync + 'static {
    /// Handles one message of the kind it is registered for; see
    /// [`PeerService::handle_control`].
    fn handle_control(
        &self,
        peer: NodeId,
        version: u16,
        body: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, Status>>;
}

/// A [`PeerService`] assembled from handlers registered one by one, so the metadata service,
/// the map watcher and the replication layer can each plug in without knowing the others.
/// Unregistered kinds are answered `Unsupported`; I/O without a handler `Unsupported` too.
#[derive(Default)]
pub struct Router {
    io: Option<Arc<dyn IoHandler>>,
    control: HashMap<ControlKind, Arc<dyn ControlHandler>>,
}

impl Router {
    /// A router that answers everything `Unsupported`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the I/O handler (replacing any earlier one).
    pub fn with_io(mut self, handler: Arc<dyn IoHandler>) -> Self {
        self.io = Some(handler);
        self
    }

    /// Registers the handler of control `kind` (replacing any earlier one).
    pub fn with_control(mut self, kind: ControlKind, handler: Arc<dyn ControlHandler>) -> Self {
        self.control.insert(kind, handler);
        self
    }
}

impl PeerService for Router {
    async fn handle_io(&self, peer: NodeId, request: Frame) -> Reply {
        match &self.io {
            Some(handler) => handler.handle_io(peer, request).await,
            None => Reply::error(Status::Unsupported, request.header.epoch),
        }
    }

    async fn handle_control(
        &self,
        peer: NodeId,
        kind: ControlKind,
        version: u16,
        body: Bytes,
    ) -> Result<Bytes, Status> {
        match self.control.get(&kind) {
            Some(handler) => handler.handle_control(peer, version, body).await,
            None => Err(Status::Unsupported),
        }
    }
}
