//! Who this node is and which cluster it belongs to: the cluster secret and cluster id.

use anyhow::Context;
use basalt::config::{NodeConfig, SecretSource};
use basalt::ids::ClusterId;
use basalt::wire::ClusterSecret;
use sha2::{Digest, Sha256};

/// The cluster secret, with the raw bytes it was made from (for [`cluster_id`]).
pub struct Secret {
    /// The handshake's secret.
    pub secret: ClusterSecret,
    raw: Vec<u8>,
}

/// Reads the cluster secret from the config (inline or from its file).
pub fn load_secret(config: &NodeConfig) -> anyhow::Result<Secret> {
    let text = match config.cluster_secret() {
        SecretSource::Inline(secret) => secret.to_owned(),
        SecretSource::File(path) => std::fs::read_to_string(path)
            .with_context(|| format!("security.cluster_secret_file {}", path.display()))?,
    };
    let raw = text.trim_end_matches(['\n', '\r']).as_bytes().to_vec();
    let secret = ClusterSecret::new(&raw).context("security.cluster_secret")?;
    Ok(Secret { secret, raw })
}

/// The cluster id: the configured one, or else one derived from the cluster secret, so every
/// node sharing a secret agrees on the id without an extra exchange before the handshake.
pub fn cluster_id(config: &NodeConfig, secret: &Secret) -> ClusterId {
    if let Some(id) = config.cluster_id {
        return id;
    }
    let mut hash = Sha256::new();
    hash.update(b"basalt cluster id v1\0");
    hash.update(&secret.raw);
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    ClusterId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}
