//! The built-in configuration of a loopback test cluster (what `basalt up` starts and what
//! `config/node{1,2,3}.toml` spell out).

use super::{API_PORT_DEFAULT, ClusterParams, NBD_PORT_DEFAULT, PEER_PORT_DEFAULT};
use super::{ApiConfig, DriveConfig, MetaConfig, NbdConfig, NodeConfig, PeerConfig};
use super::{ConfigError, MetricsConfig, SecurityConfig};
use crate::ids::NodeId;
use crate::size::Size;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

/// Size of each file-backed drive of a local cluster node: room for a few test volumes.
pub const LOCAL_DRIVE_SIZE_BYTES: u64 = 1 << 30;

impl NodeConfig {
    /// Node `n` (1-based) of a loopback cluster: listens on `127.0.0.n` with the default ports,
    /// keeps its data and one 1 GiB file-backed drive under `data_root/node<n>`; node 1
    /// bootstraps the cluster, the others join through it. `n` must be 1..=254.
    pub fn local_cluster(n: u8, data_root: &Path, cluster_secret: &str) -> NodeConfig {
        assert!((1..=254).contains(&n), "local cluster node number {n}");
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, n));
        let first_peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), PEER_PORT_DEFAULT);
        let node_dir = data_root.join(format!("node{n}"));
        let config = NodeConfig {
            node_id: NodeId(u64::from(n)),
            cluster_id: None,
            zone: None,
            data_dir: node_dir.clone(),
            nbd: NbdConfig {
                listen: SocketAddr::new(ip, NBD_PORT_DEFAULT),
                socket: None,
            },
            api: ApiConfig {
                listen: SocketAddr::new(ip, API_PORT_DEFAULT),
                ..ApiConfig::default()
            },
            peer: PeerConfig {
                listen: SocketAddr::new(ip, PEER_PORT_DEFAULT),
                advertise: None,
            },
            drives: vec![DriveConfig {
                path: node_dir.join("drive0.img"),
                size: Some(Size(LOCAL_DRIVE_SIZE_BYTES)),
            }],
            meta: MetaConfig {
                bootstrap: n == 1,
                join: if n == 1 {
                    Vec::new()
                } else {
                    vec![first_peer.to_string()]
                },
                ..MetaConfig::default()
            },
            cluster: ClusterParams::default(),
            security: SecurityConfig {
                cluster_secret: Some(cluster_secret.to_owned()),
                cluster_secret_file: None,
                tokens: Vec::new(),
            },
            metrics: MetricsConfig::default(),
            scrub: super::ScrubConfig::default(),
            recovery: super::RecoveryConfig::default(),
        };
        debug_assert!(config.meta.bootstrap != (n != 1));
        config
    }

    /// The config as TOML text (what `basalt up` writes next to the data it creates).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|error| ConfigError::Parse {
            message: error.to_string(),
        })
    }
}
