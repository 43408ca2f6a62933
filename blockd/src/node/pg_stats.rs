//! Cluster-wide PG states: the PG_STATS peer request each node serves with its own report
//! (the PGs it leads and their recovery), and the fan-out the API runs over every up node.

use std::sync::Arc;
use std::time::Duration;

use basalt::api::{ClusterReports, NodePgReport};
use basalt::ids::NodeId;
use basalt::wire::{Bytes, ControlKind, Status};

use super::NodeShared;
use super::control::encode;
use crate::peer::{BoxFuture, ControlHandler};

/// Version of the PG_STATS request (empty) and reply ([`NodePgReport`]) bodies.
pub const PG_STATS_VERSION: u16 = 1;

/// How long the fan-out waits for one node's answer before marking it unreachable.
pub const PG_STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// This node's report.
fn own_report(shared: &NodeShared) -> NodePgReport {
    shared
        .replication_stats
        .snapshot()
        .pg_report(shared.node_id)
}

/// Serves PG_STATS: this node's report.
pub struct PgStatsHandler(pub Arc<NodeShared>);

impl ControlHandler for PgStatsHandler {
    fn handle_control(
        &self,
        _peer: NodeId,
        version: u16,
        _body: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, Status>> {
        Box::pin(async move {
            if version != PG_STATS_VERSION {
                return Err(Status::Unsupported);
            }
            Ok(encode(&own_report(&self.0)))
        })
    }
}

/// Asks one node for its report, within [`PG_STATS_TIMEOUT`].
async fn ask(shared: &NodeShared, node: NodeId) -> Option<NodePgReport> {
    if node == shared.node_id {
        return Some(own_report(shared));
    }
    let call =
        shared
            .peers
            .call_control(node, ControlKind::PG_STATS, PG_STATS_VERSION, Bytes::new());
    match tokio::time::timeout(PG_STATS_TIMEOUT, call).await {
        Ok(Ok(body)) => match postcard::from_bytes::<NodePgReport>(&body) {
            Ok(report) if report.node == node.0 => Some(report),
            Ok(_) | Err(_) => {
                tracing::debug!(%node, "PG_STATS reply undecodable or from another node");
                None
            }
        },
        Ok(Err(error)) => {
            tracing::debug!(%node, %error, "PG_STATS not answered");
            None
        }
        Err(_) => {
            tracing::debug!(%node, "PG_STATS timed out");
            None
        }
    }
}

/// Every up node's report, asked in parallel; the ones that do not answer in time are listed
/// as unreachable.
pub async fn collect(shared: &NodeShared) -> ClusterReports {
    let state = shared.meta.read_state();
    let up: Vec<NodeId> = state
        .nodes()
        .values()
        .filter(|record| record.state.is_serving())
        .map(|record| {
            if shared.peers.address(record.id).is_none()
                && let Ok(addr) = record.addresses.peer.parse()
            {
                shared.peers.set_address(record.id, addr);
            }
            record.id
        })
        .collect();
    let answers = futures_util::future::join_all(up.iter().map(|node| ask(shared, *node))).await;
    let mut reports = ClusterReports::default();
    for (node, answer) in up.into_iter().zip(answers) {
        match answer {
            Some(report) => reports.add(report),
            None => reports.add_unreachable(node),
        }
    }
    reports
}
