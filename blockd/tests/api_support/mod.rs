//! Shared by the API and CLI tests: the API router served on 127.0.0.1 over a fake control
//! plane that applies commands straight to a `MetaState` (no Raft), initialised as a 3-node
//! cluster.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use basalt::api::{RaftRole, RaftView};
use basalt::ids::{ClusterId, DriveId, NodeId};
use basalt::meta::{
    Command, CommandKind, CommandResult, DriveInfo, MetaState, NodeAddresses, NodeRole, TokenRole,
    token_sha256,
};
use blockd::api::{AuthConfig, ControlPlane, LeaderInfo, ProposeFailure};
use futures_util::future::BoxFuture;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Accepted from the node config (`AuthConfig`).
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
/// Stored (hashed) in the replicated state, read-only.
pub const READ_TOKEN: &str = "read-only-token-for-tests";

const T0: u64 = 1_760_000_000_000;

/// A control plane over a bare `MetaState`: commands are applied at once, node 1 leads.
pub struct FakeControlPlane {
    state: Mutex<Arc<MetaState>>,
    clock: AtomicU64,
    fail_next: Mutex<Option<ProposeFailure>>,
}

impl FakeControlPlane {
    fn new() -> Self {
        Self {
            state: Mutex::new(Arc::new(MetaState::new())),
            clock: AtomicU64::new(T0),
            fail_next: Mutex::new(None),
        }
    }

    /// Applies `kind` now (for test setup).
    pub fn apply(&self, kind: CommandKind) -> CommandResult {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.state.lock().unwrap();
        let mut next = MetaState::clone(&guard);
        let result = next.apply(&Command::new(now, kind));
        *guard = Arc::new(next);
        result
    }
}

impl ControlPlane for FakeControlPlane {
    fn node_id(&self) -> NodeId {
        NodeId(1)
    }

    fn state(&self) -> Arc<MetaState> {
        self.state.lock().unwrap().clone()
    }

    fn leader(&self) -> Option<LeaderInfo> {
        Some(LeaderInfo {
            node: NodeId(1),
            api_addr: Some("127.0.0.1:9640".into()),
        })
    }

    fn raft_status(&self) -> RaftView {
        RaftView {
            node_id: 1,
            role: RaftRole::Leader,
            term: 1,
            committed_index: Some(1),
            applied_index: Some(1),
            voters: vec![1],
            learners: Vec::new(),
        }
    }

    fn propose(&self, kind: CommandKind) -> BoxFuture<'_, Result<CommandResult, ProposeFailure>> {
        Box::pin(async move {
            if let Some(failure) = self.fail_next.lock().unwrap().take() {
                return Err(failure);
            }
            Ok(self.apply(kind))
        })
    }

    fn now_unix_ms(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }
}

/// A running API server and a client for it.
pub struct Cluster {
    pub base: String,
    pub cp: Arc<FakeControlPlane>,
    pub http: reqwest::Client,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

fn register(node: u64) -> CommandKind {
    CommandKind::RegisterNode {
        node: NodeId(node),
        addresses: NodeAddresses {
            peer: format!("127.0.0.{node}:9641"),
            api: format!("127.0.0.{node}:9640"),
            nbd: Some(format!("127.0.0.{node}:10809")),
        },
        zone: None,
        role: NodeRole::Voter,
        drives: vec![DriveInfo {
            id: DriveId(uuid::Uuid::from_u128(u128::from(node))),
            capacity_bytes: 1 << 40,
        }],
    }
}

/// A server over an initialised 3-node cluster (16 PGs, 3 replicas) with a read-only token.
pub async fn start() -> Cluster {
    let cluster = start_empty().await;
    let init = CommandKind::InitCluster {
        cluster_id: ClusterId(uuid::Uuid::from_u128(0xba5a17)),
        chunk_size_bytes: 4 << 20,
        pg_count: 16,
        default_replicas: 3,
        min_size: 2,
    };
    cluster.cp.apply(init).unwrap();
    for node in 1..=3 {
        cluster.register_node(node);
    }
    cluster
        .cp
        .apply(CommandKind::AddToken {
            name: "reader".into(),
            role: TokenRole::ReadOnly,
            token_sha256: token_sha256(READ_TOKEN),
        })
        .unwrap();
    cluster
}

/// A server over a node with no cluster yet.
pub async fn start_empty() -> Cluster {
    let cp = Arc::new(FakeControlPlane::new());
    let auth = AuthConfig::from_raw_tokens([(ADMIN_TOKEN, TokenRole::Admin)]);
    let router = blockd::api::router(cp.clone(), auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(blockd::api::serve(listener, router, async move {
        let _ = rx.await;
    }));
    let http = basalt::api::client::http_client_builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    Cluster {
        base,
        cp,
        http,
        _shutdown: tx,
    }
}

impl Cluster {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn register_node(&self, node: u64) {
        self.cp.apply(register(node)).unwrap();
    }

    pub fn cluster_id(&self) -> String {
        self.cp.state().cluster_id().unwrap().0.to_string()
    }

    pub fn fail_next(&self, failure: ProposeFailure) {
        *self.cp.fail_next.lock().unwrap() = Some(failure);
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request(Method::GET, path).await
    }

    pub async fn request(&self, method: Method, path: &str) -> (StatusCode, Value) {
        send(
            self.http
                .request(method, self.url(path))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(
            self.http
                .post(self.url(path))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body),
        )
        .await
    }
}

/// Sends `request`; returns the status and the body as JSON (`null` when empty). Error
/// responses must be problem documents.
pub async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.bytes().await.unwrap();
    if !status.is_success() {
        assert_eq!(
            content_type.as_deref(),
            Some("application/problem+json"),
            "{status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, body)
}
