//! The HTTP API's view of the node: [`ControlPlane`] over the Raft node and proposal
//! forwarding, and the API listener.

use std::sync::Arc;

use anyhow::Context;
use basalt::api::{RaftRole, RaftView};
use basalt::ids::NodeId;
use basalt::meta::{CommandKind, CommandResult, MetaState};
use tokio_util::sync::CancellationToken;

use super::{NodeShared, ProposeFailure};
use crate::api::{AuthConfig, ControlPlane, LeaderInfo};
use crate::meta::Role;
use crate::peer::BoxFuture;

/// The API's handle on the node.
pub struct NodeControlPlane(pub Arc<NodeShared>);

impl ControlPlane for NodeControlPlane {
    fn node_id(&self) -> NodeId {
        self.0.node_id
    }

    fn state(&self) -> Arc<MetaState> {
        self.0.meta.read_state()
    }

    fn leader(&self) -> Option<LeaderInfo> {
        let (leader, _) = self.0.meta.leader()?;
        let node = NodeId(leader);
        let api_addr = self
            .0
            .meta
            .read_state()
            .node(node)
            .map(|record| record.addresses.api.clone());
        Some(LeaderInfo { node, api_addr })
    }

    fn raft_status(&self) -> RaftView {
        let status = self.0.meta.status();
        RaftView {
            node_id: status.node_id,
            role: match status.role {
                Role::Leader => RaftRole::Leader,
                Role::Follower => RaftRole::Follower,
                Role::Candidate => RaftRole::Candidate,
                Role::Learner => RaftRole::Learner,
                Role::Shutdown => RaftRole::Shutdown,
            },
            term: status.term,
            committed_index: status.committed_index,
            applied_index: status.applied_index,
        }
    }

    fn propose(&self, kind: CommandKind) -> BoxFuture<'_, Result<CommandResult, ProposeFailure>> {
        Box::pin(self.0.propose(kind))
    }
}

/// Binds the API listener and serves it until `cancel`.
pub async fn start(
    shared: &Arc<NodeShared>,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let config = &shared.config;
    let mut tokens = Vec::new();
    for (i, token) in config.security.tokens.iter().enumerate() {
        let raw = match token.source() {
            basalt::config::SecretSource::Inline(raw) => raw.to_owned(),
            basalt::config::SecretSource::File(path) => std::fs::read_to_string(path)
                .with_context(|| format!("security.tokens[{i}].token_file {}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        };
        tokens.push((raw, token.role));
    }
    let mut auth =
        AuthConfig::from_raw_tokens(tokens.iter().map(|(raw, role)| (raw.as_str(), *role)));
    auth.open_metrics = config.api.open_metrics;
    let router = crate::api::router(Arc::new(NodeControlPlane(Arc::clone(shared))), auth);
    let listen = config.api.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("api.listen {listen}"))?;
    tracing::info!(api = %listen, "HTTP API listening");
    Ok(tokio::spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(e) = crate::api::serve(listener, router, shutdown).await {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    }))
}
