//! The HTTP API's view of the node: [`ControlPlane`] over the Raft node and proposal
//! forwarding, and the API listener (with `/metrics` when metrics are on).

use std::sync::Arc;

use anyhow::Context;
use basalt::api::{ClusterReports, RaftRole, RaftView, ScrubFigures, ScrubPassView, ScrubStatus};
use basalt::ids::NodeId;
use basalt::meta::{CommandKind, CommandResult, MetaState};
use tokio_util::sync::CancellationToken;

use super::{NodeShared, ProposeFailure};
use crate::api::{AuthConfig, ControlPlane, LeaderInfo};
use crate::meta::Role;
use crate::metrics::cluster::{ClusterCollector, ClusterSnapshot, ClusterSource};
use crate::metrics::{Exporter, Metrics};
use crate::peer::BoxFuture;
use crate::replication::{PassFigures, ScrubSnapshot};

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
            voters: status.voters.keys().copied().collect(),
            learners: status.learners.keys().copied().collect(),
        }
    }

    fn propose(&self, kind: CommandKind) -> BoxFuture<'_, Result<CommandResult, ProposeFailure>> {
        Box::pin(self.0.propose(kind))
    }

    fn scrub_status(&self) -> Option<ScrubStatus> {
        if self.0.stores.is_empty() {
            return None;
        }
        Some(scrub_view(
            self.0.node_id,
            &self.0.replication_stats.scrub().snapshot(),
        ))
    }

    fn scrub_start(&self) -> Option<bool> {
        if self.0.stores.is_empty() {
            return None;
        }
        Some(self.0.replication_stats.scrub().request_pass())
    }

    fn pg_reports(&self) -> BoxFuture<'_, ClusterReports> {
        Box::pin(super::pg_stats::collect(&self.0))
    }
}

/// The API's view of a node's scrub figures.
fn scrub_view(node: NodeId, snapshot: &ScrubSnapshot) -> ScrubStatus {
    let figures = |f: &PassFigures| ScrubFigures {
        chunks: f.chunks,
        blocks: f.blocks,
        errors: f.errors,
        repairs: f.repairs,
        unrepaired: f.unrepaired,
        skipped_chunks: f.skipped_chunks,
    };
    ScrubStatus {
        node: node.0,
        running: snapshot.running,
        passes: snapshot.passes,
        chunks_done: snapshot.progress.0,
        chunks_total: snapshot.progress.1,
        current: figures(&snapshot.current),
        total: figures(&snapshot.total),
        last_pass: snapshot.last.map(|(at, last)| ScrubPassView {
            finished: basalt::api::unix_ms_to_rfc3339(at),
            finished_unix_ms: at,
            figures: figures(&last),
        }),
        read_repairs: snapshot.read_repairs,
        reads_repaired: snapshot.reads_repaired,
    }
}

/// The metrics collectors' view of the node: Raft status and applied state, read at scrape
/// time.
struct NodeClusterSource(Arc<NodeShared>);

impl ClusterSource for NodeClusterSource {
    fn snapshot(&self) -> ClusterSnapshot {
        ClusterSnapshot {
            raft: self.0.meta.status(),
            state: self.0.meta.read_state(),
            now_unix_ms: super::now_unix_ms(),
            replication: self.0.replication_stats.snapshot(),
            chunk_size_bytes: self.0.maps().current().chunk_size_bytes,
        }
    }
}

/// Binds the API listener and serves it until `cancel`; serves `/metrics` from `metrics` if
/// they are on.
pub async fn start(
    shared: &Arc<NodeShared>,
    metrics: Option<&Metrics>,
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
    let control = Arc::new(NodeControlPlane(Arc::clone(shared)));
    let router = match metrics {
        Some(metrics) => {
            let source = Arc::new(NodeClusterSource(Arc::clone(shared)));
            let collector = ClusterCollector::new(source, Arc::clone(shared.peers.stats()));
            let exporter = Arc::new(Exporter::new(metrics, vec![Box::new(collector)]));
            crate::api::router_with(control, auth, exporter.router()).layer(
                axum::middleware::from_fn_with_state(
                    metrics.api.clone(),
                    crate::metrics::api::count_requests,
                ),
            )
        }
        None => crate::api::router(control, auth),
    };
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
