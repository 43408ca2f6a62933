//! An in-process [`RaftTransport`] for tests: a registry of nodes in one process that delivers
//! RPC bytes by calling the target's [`MetaNode::handle_rpc`] directly, and can cut nodes off.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;

use super::network::{RaftTransport, TransportError};
use super::{MetaNode, NodeId, ReplicatedState};

type Handler = Arc<dyn Fn(Vec<u8>) -> BoxFuture<'static, Vec<u8>> + Send + Sync>;

#[derive(Default)]
struct Registry {
    nodes: HashMap<NodeId, Handler>,
    isolated: HashSet<NodeId>,
}

/// The registry; hand each node `router.transport(id)`.
#[derive(Default)]
pub struct MemRouter {
    registry: Mutex<Registry>,
}

impl MemRouter {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The transport node `me` uses: its calls fail while `me` or the target is cut off.
    pub fn transport(self: &Arc<Self>, me: NodeId) -> Arc<dyn RaftTransport> {
        Arc::new(MemTransport {
            me,
            router: self.clone(),
        })
    }

    /// Makes `node` reachable under its id (replacing an earlier registration).
    pub fn register<S: ReplicatedState>(&self, node: &MetaNode<S>) {
        let id = node.id();
        let node = node.clone();
        let handler: Handler = Arc::new(move |request: Vec<u8>| {
            let node = node.clone();
            Box::pin(async move { node.handle_rpc(&request).await })
        });
        self.lock().nodes.insert(id, handler);
    }

    /// Removes node `id` (it becomes unreachable and its handle is dropped).
    pub fn unregister(&self, id: NodeId) {
        self.lock().nodes.remove(&id);
    }

    /// Cuts node `id` off: calls to and from it fail as unreachable.
    pub fn isolate(&self, id: NodeId) {
        self.lock().isolated.insert(id);
    }

    /// Reconnects node `id`.
    pub fn heal(&self, id: NodeId) {
        self.lock().isolated.remove(&id);
    }
}

struct MemTransport {
    me: NodeId,
    router: Arc<MemRouter>,
}

impl RaftTransport for MemTransport {
    fn call<'a>(
        &'a self,
        target: NodeId,
        _addr: &'a str,
        request: Vec<u8>,
    ) -> BoxFuture<'a, Result<Vec<u8>, TransportError>> {
        Box::pin(async move {
            let handler = {
                let registry = self.router.lock();
                if registry.isolated.contains(&self.me) || registry.isolated.contains(&target) {
                    return Err(TransportError::Unreachable(format!(
                        "{} -> {target}: cut off",
                        self.me
                    )));
                }
                registry.nodes.get(&target).cloned()
            };
            match handler {
                Some(handler) => Ok(handler(request).await),
                None => Err(TransportError::Unreachable(format!(
                    "node {target} is not running"
                ))),
            }
        })
    }
}
