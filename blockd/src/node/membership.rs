//! The node's life in the cluster: bootstrap or join the metadata service, register its
//! addresses and drives, heartbeat the leader, and (while leader) run the failure detector.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use basalt::ids::NodeId;
use basalt::meta::{CommandKind, DriveInfo, FailureDetector, MetaError, MetaState, NodeAddresses};
use basalt::wire::ControlKind;
use tokio_util::sync::CancellationToken;

use super::control::{
    self, Heartbeat, HeartbeatReply, JoinReply, JoinRequest, META_CONTROL_VERSION,
};
use super::{NodeShared, now_unix_ms};
use crate::peer::PeerClient;

/// Pause between attempts of a start-up step that failed (no leader yet, peer unreachable).
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// How often the leader's failure detector looks at heartbeat ages.
const DETECTOR_TICK: Duration = Duration::from_millis(250);

/// How often the leader records heartbeat times in the replicated state (for the API).
const RECORD_HEARTBEATS_EVERY: Duration = Duration::from_secs(5);

/// Runs until `cancel`: join, register, then heartbeat and detect failures.
pub async fn run(shared: Arc<NodeShared>, cancel: CancellationToken) {
    let start = async {
        enter_membership(&shared).await;
        register(&shared).await;
    };
    tokio::select! {
        () = cancel.cancelled() => return,
        () = start => {}
    }
    tokio::select! {
        () = cancel.cancelled() => {}
        () = heartbeat_loop(&shared) => {}
        () = detector_loop(&shared) => {}
    }
}

/// Makes this node a member of the Raft group: initialises it on the bootstrap voter, or asks
/// the nodes in `meta.join` until the leader adds it. A restarted member skips this.
async fn enter_membership(shared: &NodeShared) {
    let me = shared.node_id.0;
    let status = shared.meta.status();
    if status.voters.contains_key(&me) || status.learners.contains_key(&me) {
        return;
    }
    let advertise = shared.config.peer_advertise();
    if shared.config.meta.bootstrap {
        loop {
            let voters = BTreeMap::from([(me, advertise.clone())]);
            match shared.meta.initialize(voters).await {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "bootstrap: initialise the metadata service"),
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        tracing::info!("bootstrapped a new metadata service");
        return;
    }
    let request = JoinRequest {
        node: shared.node_id,
        peer_addr: advertise,
        role: shared.config.meta.role,
    };
    let mut targets: Vec<String> = shared.config.meta.join.clone();
    loop {
        let mut next = Vec::new();
        for target in &targets {
            match ask_to_join(shared, target, &request).await {
                Ok(JoinReply::Joined) => {
                    tracing::info!(via = %target, "joined the cluster");
                    return;
                }
                Ok(JoinReply::NotLeader {
                    leader: Some((_, addr)),
                }) => next.push(addr),
                Ok(JoinReply::NotLeader { leader: None }) => {}
                Ok(JoinReply::Failed(e)) => {
                    tracing::warn!(via = %target, error = %e, "join refused")
                }
                Err(e) => tracing::debug!(via = %target, error = %e, "join attempt failed"),
            }
        }
        next.extend(shared.config.meta.join.iter().cloned());
        next.dedup();
        targets = next;
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

async fn ask_to_join(
    shared: &NodeShared,
    target: &str,
    request: &JoinRequest,
) -> Result<JoinReply, String> {
    let addr: SocketAddr = target.parse().map_err(|e| format!("bad address: {e}"))?;
    let client = PeerClient::connect(&shared.peer_config, addr, None)
        .await
        .map_err(|e| e.to_string())?;
    let reply = client
        .call_control(
            ControlKind::META_JOIN,
            META_CONTROL_VERSION,
            control::encode(request),
        )
        .await
        .map_err(|e| e.to_string());
    client.close().await;
    postcard::from_bytes(&reply?).map_err(|e| format!("bad reply: {e}"))
}

/// Creates the cluster record (bootstrap voter only, once) and registers this node's
/// addresses and drives; retried until the metadata service accepts them.
async fn register(shared: &NodeShared) {
    if shared.config.meta.bootstrap {
        loop {
            if shared.meta.read_state().cluster().is_some() {
                break;
            }
            let params = &shared.config.cluster;
            let kind = CommandKind::InitCluster {
                cluster_id: shared.cluster_id,
                chunk_size_bytes: u32::try_from(params.chunk_size.0).unwrap_or(u32::MAX),
                pg_count: params.pg_count,
                default_replicas: params.replicas,
                min_size: params.min_size,
            };
            match shared.propose(kind).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cluster initialisation refused");
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cluster initialisation"),
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    let mut drives = Vec::new();
    for (id, store) in &shared.stores {
        let capacity_bytes = match store.stats().await {
            Ok(stats) => stats.capacity_bytes,
            Err(e) => {
                tracing::warn!(drive = %id, error = %e, "drive stats");
                0
            }
        };
        drives.push(DriveInfo {
            id: *id,
            capacity_bytes,
        });
    }
    let config = &shared.config;
    let kind = CommandKind::RegisterNode {
        node: shared.node_id,
        addresses: NodeAddresses {
            peer: config.peer_advertise(),
            api: config.api_advertise(),
            nbd: Some(config.nbd.listen.to_string()),
        },
        zone: config.zone.clone(),
        role: config.meta.role,
        drives,
    };
    loop {
        match shared.propose(kind.clone()).await {
            Ok(Ok(_)) => {
                tracing::info!("registered with the metadata service");
                return;
            }
            Ok(Err(e @ MetaError::NodeRemoved { .. })) => {
                // Retrying cannot help: the id is retired. The node stays up for inspection.
                tracing::error!(error = %e, "registration refused for good");
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "registration refused"),
            Err(e) => tracing::warn!(error = %e, "registration"),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Sends a heartbeat to the current leader every `meta.heartbeat_interval`, over a connection
/// of its own: on the shared peer connection a heartbeat would queue behind recovery copies and
/// replicated writes, and a node busy moving data would be marked down for it. Each beat is
/// bounded by the interval; a failed one drops the connection (the next beat reconnects).
async fn heartbeat_loop(shared: &NodeShared) {
    let interval = shared.config.meta.heartbeat_interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut channel: Option<(u64, PeerClient)> = None;
    loop {
        ticker.tick().await;
        let Some((leader, addr)) = shared.meta.leader() else {
            continue;
        };
        let sent = std::time::Instant::now();
        if leader == shared.node_id.0 {
            channel = None;
            shared.record_heartbeat(shared.node_id);
            // A leader cut off from the other voters still believes it leads: its lease
            // needs a quorum's confirmation, like a follower's needs the leader's answer.
            if !shared.meta.confirm_leadership(interval).await {
                tracing::debug!("leadership not confirmed by a quorum: lease not extended");
                continue;
            }
            let state = shared.meta.read_state();
            let up = state
                .node(shared.node_id)
                .is_some_and(|record| record.state.is_serving());
            shared.extend_lease(sent, state.epoch(), up);
            continue;
        }
        if let Ok(addr) = addr.parse::<SocketAddr>()
            && shared.meta_peers.address(NodeId(leader)) != Some(addr)
        {
            // Forwarded proposals reach the leader through the metadata pool.
            shared.meta_peers.set_address(NodeId(leader), addr);
        }
        if channel.as_ref().is_none_or(|(to, _)| *to != leader) {
            channel = connect_heartbeats(shared, leader, &addr, interval).await;
        }
        let Some((_, client)) = &channel else {
            continue;
        };
        let body = control::encode(&Heartbeat {
            node: shared.node_id,
        });
        let call = client.call_control(ControlKind::HEARTBEAT, META_CONTROL_VERSION, body);
        match tokio::time::timeout(interval * 2, call).await {
            Ok(Ok(reply)) => match postcard::from_bytes::<HeartbeatReply>(&reply) {
                Ok(reply) => shared.extend_lease(sent, reply.epoch, reply.up),
                Err(e) => tracing::debug!(leader, error = %e, "heartbeat reply undecodable"),
            },
            Ok(Err(e)) => {
                tracing::debug!(leader, error = %e, "heartbeat not delivered");
                channel = None;
            }
            Err(_) => {
                tracing::debug!(leader, "heartbeat unanswered in time");
                channel = None;
            }
        }
    }
}

/// A connection of the heartbeat loop's own to `leader` at `addr` (bounded by `bound`).
async fn connect_heartbeats(
    shared: &NodeShared,
    leader: u64,
    addr: &str,
    bound: Duration,
) -> Option<(u64, PeerClient)> {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        tracing::debug!(leader, addr, "leader address unparsable");
        return None;
    };
    let connect = PeerClient::connect(&shared.peer_config, addr, Some(NodeId(leader)));
    match tokio::time::timeout(bound * 2, connect).await {
        Ok(Ok(client)) => Some((leader, client)),
        Ok(Err(e)) => {
            tracing::debug!(leader, error = %e, "heartbeat connection failed");
            None
        }
        Err(_) => {
            tracing::debug!(leader, "heartbeat connection timed out");
            None
        }
    }
}

/// While this node leads: takes nodes the metadata state removed out of the Raft membership
/// (`DELETE /v1/nodes/{id}` commits the removal; this makes the voter count match).
async fn remove_retired_members(shared: &NodeShared, state: &MetaState) {
    let status = shared.meta.status();
    let retired: BTreeSet<u64> = state
        .removed_nodes()
        .iter()
        .map(|node| node.0)
        .filter(|id| status.voters.contains_key(id) || status.learners.contains_key(id))
        .collect();
    if retired.is_empty() {
        return;
    }
    match shared.meta.remove_members(&retired).await {
        Ok(()) => tracing::info!(nodes = ?retired, "removed nodes left the metadata service"),
        Err(e) => {
            tracing::warn!(nodes = ?retired, error = %e, "removing nodes from the metadata service")
        }
    }
}

/// While this node leads: marks silent nodes down/out and returning ones up.
async fn detector_loop(shared: &NodeShared) {
    let meta_config = &shared.config.meta;
    let mut last_record = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(DETECTOR_TICK).await;
        if !shared.meta.is_leader() {
            if let Ok(mut detector) = shared.detector.lock() {
                *detector = None;
            }
            continue;
        }
        let now = now_unix_ms();
        let state = shared.meta.read_state();
        let (proposals, beats) = {
            let Ok(mut guard) = shared.detector.lock() else {
                continue;
            };
            let detector = guard.get_or_insert_with(|| {
                tracing::info!("leading the metadata service: failure detector started");
                FailureDetector::new(meta_config.down_after, meta_config.out_after, now)
            });
            detector.handle_heartbeat(shared.node_id, now);
            let proposals = detector.tick(now, &state);
            (proposals, detector.heartbeats())
        };
        for proposal in proposals {
            let kind = proposal.command();
            tracing::info!(command = %kind, "failure detector");
            match shared.propose(kind).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::info!(error = %e, "failure detector proposal refused"),
                Err(e) => tracing::warn!(error = %e, "failure detector proposal"),
            }
        }
        remove_retired_members(shared, &state).await;
        if last_record.elapsed() >= RECORD_HEARTBEATS_EVERY && !beats.is_empty() {
            last_record = tokio::time::Instant::now();
            if let Err(e) = shared
                .propose(CommandKind::RecordHeartbeats { beats })
                .await
            {
                tracing::debug!(error = %e, "recording heartbeats");
            }
        }
    }
}
