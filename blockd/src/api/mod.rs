//! The HTTP provisioning API (`/v1`, DESIGN §8), served by every node with axum.
//!
//! Handlers read the node's local copy of the metadata state and turn writes into
//! [`CommandKind`]s. They reach the cluster only through [`ControlPlane`], which the daemon
//! implements on top of its Raft node (stamping each command's time, forwarding it to the
//! leader, waiting until it is applied locally) and tests implement on a bare [`MetaState`].
//!
//! Every failure, including axum's own (unknown route, wrong method, bad JSON, wrong content
//! type, oversized body), is answered with an RFC 9457 problem document
//! (`application/problem+json`) whose `type` is a [`basalt::api::ProblemType`] code. Bearer-token
//! auth covers everything but `/healthz` (and `/metrics` when `open_metrics` is set). The OpenAPI
//! 3.1 document is generated from the handlers and served at `/v1/openapi.json`.
//!
//! Conventions and the problem codes are in `docs/api.md`.

mod auth;
mod error;
mod extract;
mod handlers;
mod openapi;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use basalt::api::{ClusterReports, RaftView};
use basalt::ids::NodeId;
use basalt::meta::{CommandKind, CommandResult, MetaState, TokenRole, token_sha256};
use futures_util::future::BoxFuture;

pub use error::ApiError;
pub use openapi::openapi_document;

/// Largest request body accepted; larger ones are refused with `payload-too-large` (413).
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// Path of the Prometheus endpoint, served by the router `blockd::metrics::Exporter` passes to
/// [`router_with`].
pub const METRICS_PATH: &str = "/metrics";

/// Path of the liveness probe (never needs a token).
pub const HEALTHZ_PATH: &str = "/healthz";

/// The Raft leader as a node knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's node id.
    pub node: NodeId,
    /// Its API address (`host:port`), if known.
    pub api_addr: Option<String>,
}

/// Why a proposal produced no result. Each becomes a 5xx problem the client may retry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeFailure {
    /// No leader is known (an election is under way, or no quorum): `no-quorum` (503).
    #[error("no leader is known: {0}")]
    NoLeader(String),
    /// The leader is known but this node could not forward the command to it: `not-leader`
    /// (503).
    #[error("cannot reach the leader: {0}")]
    LeaderUnreachable(String),
    /// The leader cannot reach a majority: `no-quorum` (503).
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The command did not commit in time, or leadership changed while it was in flight; it may
    /// still be applied: `no-quorum` (503). Creates carry an idempotency key, so retrying is
    /// safe.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The metadata service is stopped or broken: `internal` (500).
    #[error("metadata service failure: {0}")]
    Internal(String),
}

/// What the API handlers need from the node: its copy of the state, the Raft view, and a way
/// to get a command applied. The daemon implements it over `MetaNode`; tests over a bare
/// [`MetaState`].
pub trait ControlPlane: Send + Sync + 'static {
    /// This node's id (exports list the answering node first).
    fn node_id(&self) -> NodeId;

    /// The node's current applied copy of the state; reads answer from it.
    fn state(&self) -> Arc<MetaState>;

    /// The Raft leader this node knows of.
    fn leader(&self) -> Option<LeaderInfo>;

    /// This node's Raft view for `GET /v1/cluster`.
    fn raft_status(&self) -> RaftView;

    /// Gets `kind` committed and applied: the implementation stamps the command's time,
    /// forwards it to the leader if this node is not the leader, and resolves only once the
    /// command is applied to the state [`ControlPlane::state`] returns (so a handler can read
    /// its own write). `Ok` carries the state machine's answer, including its refusals.
    fn propose(&self, kind: CommandKind) -> BoxFuture<'_, Result<CommandResult, ProposeFailure>>;

    /// The node's scrub (`GET /v1/scrub`); `None` on a node without a replication service.
    fn scrub_status(&self) -> Option<basalt::api::ScrubStatus> {
        None
    }

    /// Starts a scrub pass now (`POST /v1/scrub`): `Some(false)` if one is running, `None` on
    /// a node without a replication service.
    fn scrub_start(&self) -> Option<bool> {
        None
    }

    /// What every up node reports about the PGs it leads (engine states, recovery left), for
    /// cluster-wide PG states. The daemon asks each node with a bounded wait; the default
    /// knows no engine, so PG states come from the map alone.
    fn pg_reports(&self) -> BoxFuture<'_, ClusterReports> {
        Box::pin(async { ClusterReports::default() })
    }

    /// The node's wall clock in Unix ms (for ages such as `last_heartbeat_age_ms`).
    fn now_unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
            })
    }
}

/// A bearer token this node accepts on its own authority (from its config file), besides the
/// tokens stored in the replicated state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticToken {
    /// SHA-256 of the token (see [`token_sha256`]); the raw token is not kept.
    pub sha256: [u8; 32],
    /// What it may do.
    pub role: TokenRole,
}

/// Who may call the API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// Tokens from the node's config (`[[security.tokens]]`).
    pub tokens: Vec<StaticToken>,
    /// Serve [`METRICS_PATH`] without a token (`api.open_metrics`).
    pub open_metrics: bool,
}

impl AuthConfig {
    /// Accepts `tokens` as (raw token, role) pairs, keeping only their hashes.
    pub fn from_raw_tokens<'a>(tokens: impl IntoIterator<Item = (&'a str, TokenRole)>) -> Self {
        Self {
            tokens: tokens
                .into_iter()
                .map(|(token, role)| StaticToken {
                    sha256: token_sha256(token),
                    role,
                })
                .collect(),
            open_metrics: false,
        }
    }
}

/// The API router: every `/v1` route, `/healthz`, problem documents for every failure, bearer
/// auth and the body limit. The daemon serves it with [`serve`].
pub fn router(cp: Arc<dyn ControlPlane>, auth: AuthConfig) -> Router {
    router_with(cp, auth, Router::new())
}

/// [`router`] plus `extra` routes (e.g. [`METRICS_PATH`]) that get the same auth, problem
/// handling and body limit. `extra` must not set a fallback.
pub fn router_with(cp: Arc<dyn ControlPlane>, auth: AuthConfig, extra: Router) -> Router {
    let (routes, document) = handlers::api_routes().split_for_parts();
    let document = openapi::finish(document);
    let state = handlers::AppState {
        cp: cp.clone(),
        openapi: Arc::new(document),
    };
    let auth = Arc::new(auth::Authenticator::new(cp, auth));
    routes
        .with_state(state)
        .merge(extra)
        .fallback(error::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn(error::problem_responses))
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
