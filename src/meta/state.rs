//! The replicated state and the `apply` entry point.

use super::command::{Command, CommandKind};
use super::idempotency::IdempotencyStore;
use super::outcome::{CommandResult, MetaError, Outcome};
use super::types::{ApiToken, ClusterInfo, NodeRecord, Volume};
use crate::ids::{ClusterId, Epoch, NodeId, VolumeId};
use crate::placement::{PG_COUNT_MAX, PlacementMap, PoolSpec, REPLICAS_MAX};
use crate::units::is_valid_chunk_size;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The metadata service's state: what every replica holds after applying the same log.
///
/// Changed only by [`MetaState::apply`], which is deterministic (no clock, no randomness, no
/// hash-order iteration) and total: any command, however malformed, yields a typed result and
/// leaves the state valid; a refused command changes nothing except state time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub(super) cluster: Option<ClusterInfo>,
    /// Largest command time applied so far (Unix ms): monotonic state time.
    pub(super) clock_unix_ms: u64,
    pub(super) nodes: BTreeMap<NodeId, NodeRecord>,
    /// Nodes removed from the cluster: their ids are never registered again (their drives
    /// may hold copies from an old interval; a node coming back needs a new id and wiped
    /// drives).
    pub(super) removed_nodes: BTreeSet<NodeId>,
    pub(super) map: PlacementMap,
    pub(super) volumes: BTreeMap<VolumeId, Volume>,
    pub(super) volume_names: BTreeMap<String, VolumeId>,
    /// The id the next volume gets; only grows, so ids are never reused.
    pub(super) next_volume_id: u64,
    pub(super) tokens: BTreeMap<String, ApiToken>,
    pub(super) token_hashes: BTreeMap<[u8; 32], String>,
    pub(super) idempotency: IdempotencyStore,
}

impl MetaState {
    /// An empty state: no cluster yet (the first command must be `InitCluster`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one command. Never panics; a refusal (`Err`) leaves the state unchanged apart
    /// from state time.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        self.clock_unix_ms = self.clock_unix_ms.max(command.now_unix_ms);
        self.idempotency.prune(self.clock_unix_ms);
        let result = self.dispatch(&command.kind);
        debug_assert!(self.check_invariants().is_ok(), "{command}");
        result
    }

    fn dispatch(&mut self, kind: &CommandKind) -> CommandResult {
        match kind {
            CommandKind::InitCluster {
                cluster_id,
                chunk_size_bytes,
                pg_count,
                default_replicas,
                min_size,
            } => {
                let spec = PoolSpec {
                    id: ClusterInfo::pool_for(*default_replicas),
                    pg_count: *pg_count,
                    replicas: *default_replicas,
                    min_size: *min_size,
                };
                self.init_cluster(*cluster_id, *chunk_size_bytes, spec)
            }
            _ if self.cluster.is_none() => Err(MetaError::NotInitialized),
            CommandKind::RegisterNode {
                node,
                addresses,
                zone,
                role,
                drives,
            } => self.register_node(*node, addresses, zone, *role, drives),
            CommandKind::RecordHeartbeats { beats } => self.record_heartbeats(beats),
            CommandKind::MarkNodeDown { node } => self.mark_down(*node),
            CommandKind::MarkNodeUp { node } => self.mark_up(*node),
            CommandKind::MarkNodeOut { node, by_operator } => self.mark_out(*node, *by_operator),
            CommandKind::RemoveNode { node } => self.remove_node(*node),
            CommandKind::SettlePgs { pgs } => self.settle_pgs(pgs),
            CommandKind::CreateVolume {
                name,
                size_bytes,
                replicas,
                idempotency_key,
            } => self.create_volume(name, *size_bytes, *replicas, idempotency_key.as_deref()),
            CommandKind::ResizeVolume { volume, size_bytes } => {
                self.resize_volume(*volume, *size_bytes)
            }
            CommandKind::DeleteVolume { volume } => self.delete_volume(*volume),
            CommandKind::AddToken {
                name,
                role,
                token_sha256,
            } => self.add_token(name, *role, token_sha256),
            CommandKind::RemoveToken { name } => self.remove_token(name),
        }
    }

    fn init_cluster(
        &mut self,
        cluster_id: ClusterId,
        chunk_size_bytes: u32,
        spec: PoolSpec,
    ) -> CommandResult {
        if let Some(cluster) = &self.cluster {
            return if cluster.id == cluster_id {
                Ok(Outcome::ClusterInitialized {
                    cluster_id,
                    created: false,
                })
            } else {
                Err(MetaError::AlreadyInitialized {
                    cluster_id: cluster.id,
                })
            };
        }
        let reason = if !is_valid_chunk_size(chunk_size_bytes) {
            Some("chunk size must be a power of two in 4 KiB..=64 MiB".to_owned())
        } else if spec.validate().is_err() {
            Some(format!(
                "pg_count must be a power of two <= {PG_COUNT_MAX}, replicas 1..={REPLICAS_MAX}, \
                 min_size 1..=replicas"
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(MetaError::InvalidClusterParams { reason });
        }
        self.cluster = Some(ClusterInfo {
            id: cluster_id,
            chunk_size_bytes,
            pg_count: spec.pg_count,
            default_replicas: spec.replicas,
            min_size: spec.min_size,
            created_unix_ms: self.clock_unix_ms,
        });
        Ok(Outcome::ClusterInitialized {
            cluster_id,
            created: true,
        })
    }

    /// The cluster's parameters, `None` before `InitCluster`.
    pub fn cluster(&self) -> Option<&ClusterInfo> {
        self.cluster.as_ref()
    }

    /// State time: the largest command time applied (Unix ms).
    pub fn clock_unix_ms(&self) -> u64 {
        self.clock_unix_ms
    }

    /// Every node, by id.
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeRecord> {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, node: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&node)
    }

    /// Whether `node` was removed from the cluster (its id is retired).
    pub fn is_removed(&self, node: NodeId) -> bool {
        self.removed_nodes.contains(&node)
    }

    /// The id the next volume gets: every id below it was used (live or deleted).
    pub fn next_volume_id(&self) -> u64 {
        self.next_volume_id
    }

    /// Every removed node id.
    pub fn removed_nodes(&self) -> &BTreeSet<NodeId> {
        &self.removed_nodes
    }

    /// The placement map (pools, acting sets, epoch).
    pub fn map(&self) -> &PlacementMap {
        &self.map
    }

    /// The placement map's epoch.
    pub fn epoch(&self) -> Epoch {
        self.map.epoch()
    }

    /// Every live volume, by id.
    pub fn volumes(&self) -> &BTreeMap<VolumeId, Volume> {
        &self.volumes
    }

    /// A live volume by id.
    pub fn volume(&self, volume: VolumeId) -> Option<&Volume> {
        self.volumes.get(&volume)
    }

    /// A live volume by name.
    pub fn volume_by_name(&self, name: &str) -> Option<&Volume> {
        self.volume_names
            .get(name)
            .and_then(|id| self.volumes.get(id))
    }

    /// Every API token, by name.
    pub fn tokens(&self) -> &BTreeMap<String, ApiToken> {
        &self.tokens
    }

    /// The token whose SHA-256 is `sha256` (hash the presented bearer token with
    /// `token_sha256`). A map lookup on a hash leaks nothing useful through timing.
    pub fn token_by_sha256(&self, sha256: &[u8; 32]) -> Option<&ApiToken> {
        self.token_hashes
            .get(sha256)
            .and_then(|name| self.tokens.get(name))
    }

    /// The cluster id, `None` before `InitCluster`.
    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.cluster.as_ref().map(|cluster| cluster.id)
    }
}
