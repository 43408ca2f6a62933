//! A node's configuration file (`config/*.toml`, documented key by key in
//! `docs/configuration.md`).
//!
//! Parsing is pure: [`NodeConfig::parse`] takes the file's text and the directory relative
//! paths resolve against (the config file's own directory), so the daemon reads the file and
//! this module never touches the disk. Every table rejects unknown keys, and [`validate`] runs
//! after parsing so that a bad value is refused at start-up with an error naming its key
//! (`meta.down_after: must be > 0`).
//!
//! Defaults listen on loopback only: a node is reachable from elsewhere only when its config
//! says so.

mod duration;
mod local;
#[cfg(test)]
mod tests;
mod validate;

pub use local::LOCAL_DRIVE_SIZE_BYTES;
pub(crate) use validate::is_host_port;
pub use validate::{
    CONFIG_TOKENS_MAX, ConfigError, JOIN_ADDRESSES_MAX, SECRET_LENGTH_MIN, validate,
};

use crate::ids::{ClusterId, NodeId};
use crate::meta::{NodeRole, TokenRole};
use crate::size::Size;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default NBD port (IANA-registered for NBD).
pub const NBD_PORT_DEFAULT: u16 = 10809;
/// Default HTTP API port.
pub const API_PORT_DEFAULT: u16 = 9640;
/// Default node-to-node (peer) port.
pub const PEER_PORT_DEFAULT: u16 = 9641;
/// Default silence before a node is marked down (DESIGN §5).
pub const DOWN_AFTER_DEFAULT: Duration = Duration::from_secs(5);
/// Default time down before a node is marked out and its data re-replicated (DESIGN §5).
pub const OUT_AFTER_DEFAULT: Duration = Duration::from_secs(600);
/// Default interval between a node's heartbeats to the leader.
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Default PG count of the cluster's pools: 1024 per node for 3 nodes rounds to 4096 for good
/// balance (`docs/placement.md`), but 1024 keeps the map small for small clusters.
pub const PG_COUNT_DEFAULT: u32 = 1024;
/// Default replica count of a volume (DESIGN §1).
pub const REPLICAS_DEFAULT: u8 = 3;
/// Default fewest acting members a PG writes with (DESIGN §4).
pub const MIN_SIZE_DEFAULT: u8 = 2;

/// One node's configuration: identity, listen addresses, drives, metadata role, secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id; unique in the cluster, never reused, > 0.
    pub node_id: NodeId,
    /// The cluster this node belongs to. When set, the node refuses peers and stored state of
    /// any other cluster, and a bootstrapping node creates the cluster with this id; when unset,
    /// a bootstrapping node picks a random id and a joining node adopts the cluster's.
    #[serde(default)]
    pub cluster_id: Option<ClusterId>,
    /// Failure domain (rack, room, host group); replicas go to distinct zones where possible.
    #[serde(default)]
    pub zone: Option<String>,
    /// Where the node keeps its Raft log, snapshots and local state.
    pub data_dir: PathBuf,
    /// The NBD frontend.
    #[serde(default)]
    pub nbd: NbdConfig,
    /// The HTTP provisioning API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Node-to-node traffic (Raft, replication, recovery).
    #[serde(default)]
    pub peer: PeerConfig,
    /// Drives this node stores data on; none makes it a pure gateway.
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// The metadata service (Raft) role and failure detection.
    #[serde(default)]
    pub meta: MetaConfig,
    /// Parameters a bootstrapping node creates the cluster with; ignored by other nodes.
    #[serde(default)]
    pub cluster: ClusterParams,
    /// Cluster secret and API tokens.
    pub security: SecurityConfig,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Background checksum scrub of the PGs this node leads.
    #[serde(default)]
    pub scrub: ScrubConfig,
    /// Recovery and backfill of the PGs this node leads.
    #[serde(default)]
    pub recovery: RecoveryConfig,
}

/// Default recovery copy rate of a node: well below a drive's and a 10 GbE link's, so client
/// I/O keeps most of both while a returning or new member catches up.
pub const RECOVERY_BYTES_PER_SEC_DEFAULT: u64 = 256 * 1024 * 1024;

/// `[recovery]`: how fast this node's primaries copy chunks to members that returned, were
/// added, or replace a drained node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryConfig {
    /// Bytes per second all of this node's recovery copies share (0: unlimited).
    #[serde(default = "default_recovery_rate")]
    pub bytes_per_sec: Size,
    /// How often the node drops copies no PG needs from it any more (chunks of deleted
    /// volumes, chunks of PGs that moved away and settled); 0 turns the sweep off.
    #[serde(default = "default_sweep_interval", with = "duration")]
    pub sweep_interval: Duration,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            bytes_per_sec: default_recovery_rate(),
            sweep_interval: default_sweep_interval(),
        }
    }
}

/// Default time between two sweeps of copies no longer needed.
pub const SWEEP_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);

fn default_sweep_interval() -> Duration {
    SWEEP_INTERVAL_DEFAULT
}

fn default_recovery_rate() -> Size {
    Size(RECOVERY_BYTES_PER_SEC_DEFAULT)
}

/// Default scrub read rate of a node: a small share of a drive, so client I/O keeps the rest.
pub const SCRUB_BYTES_PER_SEC_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default time between the starts of two full scrub passes of a node.
pub const SCRUB_INTERVAL_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);

/// `[scrub]`: the background pass that reads every block of the PGs this node leads, checks
/// it against its checksum and the other members' copies, and repairs what differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrubConfig {
    /// Run passes every `interval` (a pass can always be started through the API).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Bytes per second a pass reads locally (0: unlimited).
    #[serde(default = "default_scrub_rate")]
    pub bytes_per_sec: Size,
    /// Time between the starts of two passes; the first runs one interval after start.
    #[serde(default = "default_scrub_interval", with = "duration")]
    pub interval: Duration,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bytes_per_sec: default_scrub_rate(),
            interval: default_scrub_interval(),
        }
    }
}

fn default_scrub_rate() -> Size {
    Size(SCRUB_BYTES_PER_SEC_DEFAULT)
}
fn default_scrub_interval() -> Duration {
    SCRUB_INTERVAL_DEFAULT
}

/// `[metrics]`: whether the node counts and serves Prometheus metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Count and serve `/metrics`. Off, the data path does no counting at all and
    /// `/metrics` answers 404 (for measuring what counting costs).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn default_true() -> bool {
    true
}

/// `[nbd]`: where the NBD frontend listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdConfig {
    /// TCP listen address.
    #[serde(default = "default_nbd_listen")]
    pub listen: SocketAddr,
    /// Optional unix socket to serve NBD on as well (local clients, "client mode").
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// `[api]`: where the HTTP API listens and what it serves without a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP listen address.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// `host:port` other nodes and clients use to reach this API (writes are forwarded to the
    /// leader's); defaults to `listen`, required when `listen` is a wildcard address.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Serve `/metrics` without a bearer token (`/healthz` never needs one). On by default so
    /// Prometheus can scrape without a secret; metrics name volumes and nodes but hold no
    /// data or credentials.
    #[serde(default = "default_true")]
    pub open_metrics: bool,
}

/// `[peer]`: where node-to-node connections arrive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// TCP listen address.
    #[serde(default = "default_peer_listen")]
    pub listen: SocketAddr,
    /// `host:port` other nodes dial; defaults to `listen`, required when `listen` is a wildcard.
    #[serde(default)]
    pub advertise: Option<String>,
}

/// `[[drives]]`: one drive (block device or file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Block device or file path.
    pub path: PathBuf,
    /// For a file-backed drive: the size to create the file with on first start. Unset for a
    /// block device (its size is the device's) or an existing file.
    #[serde(default)]
    pub size: Option<Size>,
}

/// `[meta]`: this node's part in the metadata service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    /// Raft voter (3 or 5 per cluster) or follower (non-voting learner).
    #[serde(default = "default_role")]
    pub role: NodeRole,
    /// This node creates the cluster if its data directory holds none. Exactly one voter of a
    /// new cluster sets it (or the cluster is created with `basalt cluster init`).
    #[serde(default)]
    pub bootstrap: bool,
    /// Peer addresses (`host:port`) of existing members to join through.
    #[serde(default)]
    pub join: Vec<String>,
    /// Silence after which the leader marks a node down.
    #[serde(default = "default_down_after", with = "duration")]
    pub down_after: Duration,
    /// Time down after which a node is marked out and its replicas rebuilt elsewhere.
    #[serde(default = "default_out_after", with = "duration")]
    pub out_after: Duration,
    /// How often this node heartbeats the leader; must be shorter than `down_after`.
    #[serde(default = "default_heartbeat_interval", with = "duration")]
    pub heartbeat_interval: Duration,
}

/// `[cluster]`: what a bootstrapping node creates the cluster with (fixed afterwards).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterParams {
    /// PGs per pool, a power of two.
    #[serde(default = "default_pg_count")]
    pub pg_count: u32,
    /// Replica count of volumes created without one.
    #[serde(default = "default_replicas")]
    pub replicas: u8,
    /// Fewest acting members a PG accepts writes with.
    #[serde(default = "default_min_size")]
    pub min_size: u8,
    /// Chunk size, a power of two between 4 KiB and 64 MiB.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: Size,
}

/// `[security]`: the cluster secret and API tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// The secret peers authenticate each other with (inline). Set this or the file, not both.
    #[serde(default)]
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (trailing newline ignored).
    #[serde(default)]
    pub cluster_secret_file: Option<PathBuf>,
    /// Bearer tokens this node accepts, besides those stored in the cluster.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// `[[security.tokens]]`: one bearer token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A label for logs and audit (`[a-z0-9][a-z0-9._-]{0,62}`).
    pub name: String,
    /// What the token may do.
    pub role: TokenRole,
    /// The token (inline). Set this or `token_file`, not both.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the token (trailing newline ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// Where a secret comes from, after validation guaranteed exactly one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretSource<'a> {
    /// Given in the config file.
    Inline(&'a str),
    /// To be read from this file (already resolved against the config's directory).
    File(&'a Path),
}

impl NodeConfig {
    /// Parses and validates a config file's text. Relative paths are resolved against
    /// `base_dir`, which should be the config file's directory (so a config works from any
    /// working directory).
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: NodeConfig = toml::from_str(text).map_err(|error| ConfigError::Parse {
            message: error.to_string(),
        })?;
        config.resolve_paths(base_dir);
        validate(&config)?;
        Ok(config)
    }

    /// Joins every relative path with `base_dir`.
    fn resolve_paths(&mut self, base_dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base_dir.join(&*path);
            }
        };
        resolve(&mut self.data_dir);
        self.drives.iter_mut().for_each(|d| resolve(&mut d.path));
        self.nbd.socket.iter_mut().for_each(resolve);
        self.security
            .cluster_secret_file
            .iter_mut()
            .for_each(resolve);
        for token in &mut self.security.tokens {
            token.token_file.iter_mut().for_each(resolve);
        }
    }

    /// Where the cluster secret comes from. Validation guarantees exactly one source.
    pub fn cluster_secret(&self) -> SecretSource<'_> {
        match (
            &self.security.cluster_secret,
            &self.security.cluster_secret_file,
        ) {
            (Some(secret), _) => SecretSource::Inline(secret),
            (None, Some(path)) => SecretSource::File(path),
            (None, None) => SecretSource::Inline(""),
        }
    }

    /// The peer address other nodes dial: `peer.advertise`, else `peer.listen`.
    pub fn peer_advertise(&self) -> String {
        advertised(&self.peer.advertise, self.peer.listen)
    }

    /// The API address clients and other nodes use: `api.advertise`, else `api.listen`.
    pub fn api_advertise(&self) -> String {
        advertised(&self.api.advertise, self.api.listen)
    }
}

impl TokenConfig {
    /// Where the token comes from. Validation guarantees exactly one source.
    pub fn source(&self) -> SecretSource<'_> {
        match (&self.token, &self.token_file) {
            (Some(token), _) => SecretSource::Inline(token),
            (None, Some(path)) => SecretSource::File(path),
            (None, None) => SecretSource::Inline(""),
        }
    }
}

fn advertised(advertise: &Option<String>, listen: SocketAddr) -> String {
    advertise.clone().unwrap_or_else(|| listen.to_string())
}

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn default_nbd_listen() -> SocketAddr {
    SocketAddr::new(LOOPBACK, NBD_PORT_DEFAULT)
}
fn default_api_listen() -> SocketAddr {
    SocketAddr::new(LOOPBACK, API_PORT_DEFAULT)
}
fn default_peer_listen() -> SocketAddr {
    SocketAddr::new(LOOPBACK, PEER_PORT_DEFAULT)
}
fn default_role() -> NodeRole {
    NodeRole::Voter
}
fn default_down_after() -> Duration {
    DOWN_AFTER_DEFAULT
}
fn default_out_after() -> Duration {
    OUT_AFTER_DEFAULT
}
fn default_heartbeat_interval() -> Duration {
    HEARTBEAT_INTERVAL_DEFAULT
}
fn default_pg_count() -> u32 {
    PG_COUNT_DEFAULT
}
fn default_replicas() -> u8 {
    REPLICAS_DEFAULT
}
fn default_min_size() -> u8 {
    MIN_SIZE_DEFAULT
}
fn default_chunk_size() -> Size {
    Size(u64::from(crate::units::CHUNK_SIZE_BYTES_DEFAULT))
}

impl Default for NbdConfig {
    fn default() -> Self {
        Self {
            listen: default_nbd_listen(),
            socket: None,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_api_listen(),
            advertise: None,
            open_metrics: true,
        }
    }
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            listen: default_peer_listen(),
            advertise: None,
        }
    }
}

impl Default for MetaConfig {
    fn default() -> Self {
        Self {
            role: default_role(),
            bootstrap: false,
            join: Vec::new(),
            down_after: DOWN_AFTER_DEFAULT,
            out_after: OUT_AFTER_DEFAULT,
            heartbeat_interval: HEARTBEAT_INTERVAL_DEFAULT,
        }
    }
}

impl Default for ClusterParams {
    fn default() -> Self {
        Self {
            pg_count: PG_COUNT_DEFAULT,
            replicas: REPLICAS_DEFAULT,
            min_size: MIN_SIZE_DEFAULT,
            chunk_size: default_chunk_size(),
        }
    }
}
