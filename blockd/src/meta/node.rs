//! [`MetaNode`]: the facade the rest of `blockd` uses — start a Raft node on a data directory,
//! bootstrap or join a cluster, propose commands, read the applied state, report status.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{ClientWriteError, ForwardToLeader, InitializeError, RaftError};
use openraft::{
    BasicNode, ChangeMembers, Config, Instant, Raft, ReadPolicy, ServerState, SnapshotPolicy,
};
use tokio::sync::watch;

use super::log_store::LogStore;
use super::network::{NetworkFactory, RaftTransport, serve_rpc};
use super::state_machine::{Applied, StateMachineStore};
use super::{NodeId, ReplicatedState, Request, TypeConfig};

/// Settings of one Raft node.
#[derive(Debug, Clone)]
pub struct MetaNodeConfig {
    /// This node's id (never reused for a node that lost its data directory).
    pub node_id: NodeId,
    /// Where the log (`raft/`) and the snapshot (`snapshot`) live.
    pub data_dir: PathBuf,
    /// Name shared by all nodes of the cluster (diagnostics only).
    pub cluster_name: String,
    /// Leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_after_logs: u64,
    /// Entries kept in the log behind a snapshot, so briefly lagging followers catch up from the
    /// log rather than by a full snapshot.
    pub logs_kept_after_snapshot: u64,
    /// How long [`MetaNode::propose`] waits for its command to commit and apply.
    pub propose_timeout: Duration,
}

impl MetaNodeConfig {
    /// Defaults suited to a LAN: 150 ms heartbeats, 0.75–1.5 s election timeout, a snapshot
    /// every 1000 entries keeping 500 behind it, 5 s proposal timeout.
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            data_dir: data_dir.into(),
            cluster_name: "basalt".into(),
            heartbeat_interval: Duration::from_millis(150),
            election_timeout_min: Duration::from_millis(750),
            election_timeout_max: Duration::from_millis(1500),
            snapshot_after_logs: 1000,
            logs_kept_after_snapshot: 500,
            propose_timeout: Duration::from_secs(5),
        }
    }

    fn raft_config(&self) -> Result<Config, MetaError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: ms(self.heartbeat_interval),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_after_logs),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            enable_pre_vote: Some(true),
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| MetaError::Config(e.to_string()))
    }
}

/// Failures of starting, bootstrapping and administering a node.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The configuration is inconsistent (e.g. election timeout not above the heartbeat).
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// The log or snapshot could not be opened or read.
    #[error("raft storage: {0}")]
    Storage(#[from] std::io::Error),
    /// `initialize` was given voters that do not include this node.
    #[error("this node is not among the initial voters: {0}")]
    NotInMembers(String),
    /// The Raft node has stopped (shut down, or a storage error made it stop).
    #[error("raft node stopped: {0}")]
    Stopped(String),
    /// A wait ran out of time.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// Why a proposal (or a membership change) did not produce a response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; send the request to `leader_addr` instead.
    #[error("not the leader; the leader is node {leader_id} at {leader_addr}")]
    ForwardToLeader {
        /// The current leader's id.
        leader_id: NodeId,
        /// The current leader's Raft address (as registered in the membership).
        leader_addr: String,
    },
    /// No leader is known right now (an election is under way or there is no quorum).
    #[error("no leader is known (election in progress or no quorum)")]
    NoLeader,
    /// This node leads but has not heard from a quorum recently; the command did not commit
    /// within the deadline and may still commit later (outcome unknown).
    #[error("no quorum: the leader cannot reach a majority of voters")]
    NoQuorum,
    /// The command did not commit within the deadline; it may still commit later (outcome
    /// unknown; commands should be idempotent).
    #[error("timed out after {0:?}; outcome unknown")]
    Timeout(Duration),
    /// Leadership changed after the command was appended; it may or may not commit (outcome
    /// unknown; retry only idempotent commands).
    #[error("leadership changed while the command was in flight; outcome unknown")]
    OutcomeUnknown,
    /// A membership change was refused (e.g. another one is in progress, or an unknown node).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The command or its response could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// The Raft node has stopped.
    #[error("raft node stopped: {0}")]
    Stopped(String),
}

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts proposals.
    Leader,
    /// A voter following the leader.
    Follower,
    /// A voter running an election.
    Candidate,
    /// A non-voting member (or a node not yet part of a cluster).
    Learner,
    /// Stopped.
    Shutdown,
}

/// A point-in-time view of the node for the API and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaStatus {
    /// This node's id.
    pub node_id: NodeId,
    /// This node's role.
    pub role: Role,
    /// Current Raft term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The known leader's address.
    pub leader_addr: Option<String>,
    /// Index of the last entry in the local log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry known committed.
    pub committed_index: Option<u64>,
    /// Index of the last entry applied to the state machine.
    pub applied_index: Option<u64>,
    /// Last index covered by the current snapshot.
    pub snapshot_index: Option<u64>,
    /// Last index removed from the log.
    pub purged_index: Option<u64>,
    /// Voters and their addresses (union of both configurations during a joint change).
    pub voters: BTreeMap<NodeId, String>,
    /// Non-voting members and their addresses.
    pub learners: BTreeMap<NodeId, String>,
}

struct Inner<S: ReplicatedState> {
    id: NodeId,
    raft: Raft<TypeConfig, StateMachineStore<S>>,
    applied: watch::Receiver<Applied<S>>,
    propose_timeout: Duration,
    election_timeout_max: Duration,
}

/// A running Raft node of the metadata service. Cheap to clone (a handle).
pub struct MetaNode<S: ReplicatedState> {
    inner: Arc<Inner<S>>,
}

impl<S: ReplicatedState> Clone for MetaNode<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

fn forward(f: &ForwardToLeader<TypeConfig>) -> ProposeError {
    match (f.leader_id, &f.leader_node) {
        (Some(leader_id), Some(node)) => ProposeError::ForwardToLeader {
            leader_id,
            leader_addr: node.addr.clone(),
        },
        _ => ProposeError::NoLeader,
    }
}

impl<S: ReplicatedState> MetaNode<S> {
    /// Opens the log and snapshot under `config.data_dir` (state restored from the snapshot,
    /// else `initial`) and starts the Raft node. A fresh node waits to be initialized or added.
    pub async fn start(
        config: MetaNodeConfig,
        transport: Arc<dyn RaftTransport>,
        initial: S,
    ) -> Result<Self, MetaError> {
        let raft_config = Arc::new(config.raft_config()?);
        let data_dir = config.data_dir.clone();
        let (log, sm) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let log = LogStore::open(&data_dir.join("raft"))?;
            let sm = StateMachineStore::open(&data_dir, initial)?;
            Ok((log, sm))
        })
        .await
        .map_err(|e| MetaError::Storage(std::io::Error::other(e)))??;
        let applied = sm.subscribe();
        let network = NetworkFactory {
            me: config.node_id,
            transport,
        };
        let raft = Raft::new(config.node_id, raft_config, network, log, sm)
            .await
            .map_err(|e| MetaError::Stopped(e.to_string()))?;
        tracing::info!(node_id = config.node_id, data_dir = %config.data_dir.display(), "raft node started");
        Ok(Self {
            inner: Arc::new(Inner {
                id: config.node_id,
                raft,
                applied,
                propose_timeout: config.propose_timeout,
                election_timeout_max: config.election_timeout_max,
            }),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Creates the cluster with `voters` (id → Raft address) as its first membership. Call on one
    /// node only; a node that is already part of a cluster returns `Ok` without change.
    pub async fn initialize(&self, voters: BTreeMap<NodeId, String>) -> Result<(), MetaError> {
        let raft = &self.inner.raft;
        if raft
            .is_initialized()
            .await
            .map_err(|e| MetaError::Stopped(e.to_string()))?
        {
            return Ok(());
        }
        let members: BTreeMap<NodeId, BasicNode> = voters
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        match raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(MetaError::NotInMembers(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(MetaError::Stopped(e.to_string())),
        }
    }

    /// Adds node `id` at `addr` as a non-voting member (followers stay learners; a future voter
    /// is added as a learner first). Leader only. With `wait_caught_up` it returns once the new
    /// member has replicated the log.
    pub async fn add_learner(
        &self,
        id: NodeId,
        addr: String,
        wait_caught_up: bool,
    ) -> Result<(), ProposeError> {
        let res = self
            .inner
            .raft
            .add_learner(id, BasicNode { addr }, wait_caught_up)
            .await;
        Self::admin_result(res.map(|_| ()))
    }

    /// Sets the voters to exactly `voters` (all must already be members); removed voters stay as
    /// learners. Leader only; runs joint consensus and returns when the change is committed.
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), ProposeError> {
        let res = self.inner.raft.change_membership(voters, true).await;
        Self::admin_result(res.map(|_| ()))
    }

    /// Takes `ids` out of the Raft membership for good: voters first (joint consensus; they
    /// are not kept as learners), then learners. Leader only; members not listed are left alone.
    pub async fn remove_members(&self, ids: &BTreeSet<NodeId>) -> Result<(), ProposeError> {
        for voters in [true, false] {
            // Read after the previous step: removed voters are gone, not learners.
            let status = self.status();
            let members = if voters {
                &status.voters
            } else {
                &status.learners
            };
            let chosen: BTreeSet<NodeId> = ids
                .iter()
                .filter(|id| members.contains_key(id))
                .copied()
                .collect();
            if chosen.is_empty() {
                continue;
            }
            let change = if voters {
                ChangeMembers::RemoveVoters(chosen)
            } else {
                ChangeMembers::RemoveNodes(chosen)
            };
            let res = self.inner.raft.change_membership(change, false).await;
            Self::admin_result(res.map(|_| ()))?;
        }
        Ok(())
    }

    fn admin_result(
        res: Result<(), RaftError<TypeConfig, ClientWriteError<TypeConfig>>>,
    ) -> Result<(), ProposeError> {
        match res {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(forward(&f)),
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(ProposeError::OutcomeUnknown)
            }
            Err(RaftError::APIError(e)) => Err(ProposeError::Membership(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ProposeError::Stopped(e.to_string())),
        }
    }

    /// Replicates `cmd` and returns the state machine's response once it is applied on this
    /// node (the leader). A follower returns [`ProposeError::ForwardToLeader`].
    pub async fn propose(&self, cmd: &S::Command) -> Result<S::Response, ProposeError> {
        let bytes = postcard::to_stdvec(cmd).map_err(|e| ProposeError::Codec(e.to_string()))?;
        let write = self.inner.raft.client_write(Request(bytes));
        let res = match tokio::time::timeout(self.inner.propose_timeout, write).await {
            Ok(res) => res,
            Err(_) => return Err(self.timeout_error()),
        };
        match res {
            Ok(resp) => postcard::from_bytes(&resp.data.0)
                .map_err(|e| ProposeError::Codec(format!("response: {e}"))),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(forward(&f)),
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(ProposeError::OutcomeUnknown)
            }
            Err(RaftError::APIError(e)) => Err(ProposeError::Membership(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ProposeError::Stopped(e.to_string())),
        }
    }

    /// Classifies a proposal timeout: a leader without recent quorum acknowledgement reports
    /// `NoQuorum`, anything else a plain timeout.
    fn timeout_error(&self) -> ProposeError {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        if metrics.state == ServerState::Leader {
            let stale = metrics
                .last_quorum_acked
                .as_ref()
                .is_none_or(|t| t.elapsed() > self.inner.election_timeout_max);
            if stale {
                return ProposeError::NoQuorum;
            }
        }
        ProposeError::Timeout(self.inner.propose_timeout)
    }

    /// The leader this node knows of and its address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.inner.raft.server_metrics().borrow_watched().clone();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())?;
        Some((leader, addr))
    }

    /// Whether this node currently believes it is the leader.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.is_leader()
    }

    /// Whether a quorum of voters confirms, within `bound`, that this node still leads (a
    /// Raft read index). A leader cut off from the other voters keeps believing it leads
    /// until it hears of a newer term, so its belief alone proves nothing about now.
    pub async fn confirm_leadership(&self, bound: Duration) -> bool {
        let confirm = self.inner.raft.ensure_linearizable(ReadPolicy::ReadIndex);
        matches!(tokio::time::timeout(bound, confirm).await, Ok(Ok(_)))
    }

    /// Term, role, leader, log positions and membership, for the API and metrics.
    pub fn status(&self) -> MetaStatus {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let addr = |id: &NodeId| {
            membership
                .get_node(id)
                .map(|n| n.addr.clone())
                .unwrap_or_default()
        };
        let voters: BTreeMap<NodeId, String> =
            membership.voter_ids().map(|id| (id, addr(&id))).collect();
        let learners: BTreeMap<NodeId, String> =
            membership.learner_ids().map(|id| (id, addr(&id))).collect();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        MetaStatus {
            node_id: self.inner.id,
            role,
            term: m.current_term,
            leader: m.current_leader,
            leader_addr: m
                .current_leader
                .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone())),
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.map(|c| c.index),
            applied_index: m.last_applied.map(|c| c.index),
            snapshot_index: m.snapshot.map(|c| c.index),
            purged_index: m.purged.map(|c| c.index),
            voters,
            learners,
        }
    }

    /// The latest applied state, without going through Raft (may lag the leader).
    pub fn read_state(&self) -> Arc<S> {
        self.inner.applied.borrow().state.clone()
    }

    /// A receiver that sees every newly applied state (for map watchers).
    pub fn subscribe(&self) -> watch::Receiver<Applied<S>> {
        self.inner.applied.clone()
    }

    /// Waits until this node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), MetaError> {
        let mut rx = self.inner.applied.clone();
        let wait = rx.wait_for(|a| a.index.is_some_and(|i| i >= index));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(MetaError::Stopped("state machine closed".into())),
            Err(_) => Err(MetaError::Timeout(format!("applied index {index}"))),
        }
    }

    /// Builds a snapshot of the applied state now and waits for it (the log behind it is
    /// purged per `logs_kept_after_snapshot`). Returns the snapshot's last index.
    pub async fn snapshot(&self, timeout: Duration) -> Result<Option<u64>, MetaError> {
        let applied = self.inner.applied.borrow().index;
        let raft = &self.inner.raft;
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| MetaError::Stopped(e.to_string()))?;
        if applied.is_some() {
            raft.wait(Some(timeout))
                .metrics(
                    |m| m.snapshot.map(|s| s.index) >= applied,
                    "snapshot covers applied index",
                )
                .await
                .map_err(|e| MetaError::Timeout(e.to_string()))?;
        }
        Ok(applied)
    }

    /// Handles Raft RPC bytes received by the peer transport; returns the reply bytes.
    pub async fn handle_rpc(&self, request: &[u8]) -> Vec<u8> {
        serve_rpc(self.inner.id, &self.inner.raft, request).await
    }

    /// Stops the Raft node; the log writer finishes queued writes and releases the directory.
    pub async fn shutdown(&self) -> Result<(), MetaError> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| MetaError::Stopped(e.to_string()))
    }
}
