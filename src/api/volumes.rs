//! Volume calls: create, resize, and the volume as the API shows it.

use super::unix_ms_to_rfc3339;
use crate::ids::VolumeId;
use crate::meta::{CommandKind, MetaError, Volume, VolumeState, check_volume_size, is_valid_name};
use crate::placement::REPLICAS_MAX;
use crate::size::Size;
use serde::{Deserialize, Serialize};

/// `POST /v1/volumes` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreateRequest {
    /// Unique name, `[a-z0-9][a-z0-9._-]{0,62}`; also the NBD export name.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", example = "db-1")]
    pub name: String,
    /// Size: bytes as an integer, or a string such as `"10G"` (K/M/G/T/P are powers of 1024).
    /// A multiple of 4 KiB, at most 1 PiB.
    pub size: Size,
    /// Replica count (1..=5); the cluster default (usually 3) when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 5)]
    pub replicas: Option<u8>,
}

impl VolumeCreateRequest {
    /// Checks what can be checked without the cluster state, so a bad request is refused
    /// before it reaches the leader. The state machine checks everything again.
    pub fn validate(&self) -> Result<(), MetaError> {
        if !is_valid_name(&self.name) {
            return Err(MetaError::InvalidName {
                name: self.name.chars().take(80).collect(),
            });
        }
        check_volume_size(self.size.bytes())?;
        match self.replicas {
            Some(replicas) if !(1..=REPLICAS_MAX).contains(&replicas) => {
                Err(MetaError::InvalidReplicas { replicas })
            }
            _ => Ok(()),
        }
    }

    /// The command that carries this request (with the `Idempotency-Key` header, if any).
    pub fn to_command(&self, idempotency_key: Option<String>) -> CommandKind {
        CommandKind::CreateVolume {
            name: self.name.clone(),
            size_bytes: self.size.bytes(),
            replicas: self.replicas,
            idempotency_key,
        }
    }
}

/// `POST /v1/volumes/{name}/resize` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeResizeRequest {
    /// New size (not smaller than the current one), bytes or a string such as `"20G"`.
    pub size: Size,
}

impl VolumeResizeRequest {
    /// The command that resizes `volume` (resolved from the path's name by the handler).
    pub fn to_command(&self, volume: VolumeId) -> CommandKind {
        CommandKind::ResizeVolume {
            volume,
            size_bytes: self.size.bytes(),
        }
    }
}

/// A volume's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeStatus {
    /// Created and usable.
    Available,
}

/// A volume, as every volume call returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeView {
    /// Never reused.
    pub id: u64,
    /// Unique name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Replica count.
    pub replicas: u8,
    /// Lifecycle state.
    pub state: VolumeStatus,
    /// Creation time, RFC 3339 (UTC).
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&Volume> for VolumeView {
    fn from(volume: &Volume) -> Self {
        Self {
            id: volume.id.0,
            name: volume.name.clone(),
            size_bytes: volume.size_bytes,
            replicas: volume.replicas,
            state: match volume.state {
                VolumeState::Available => VolumeStatus::Available,
            },
            created_at: unix_ms_to_rfc3339(volume.created_unix_ms),
        }
    }
}

/// `GET /v1/volumes` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeList {
    /// Every live volume, by id.
    pub volumes: Vec<VolumeView>,
}

/// One NBD endpoint a volume can be reached at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NbdEndpointView {
    /// The node serving it.
    pub node: u64,
    /// Its NBD address, `host:port`.
    pub address: String,
    /// Whether it is the node that answered (listed first: the cheapest path).
    pub local: bool,
}

/// `GET /v1/exports/{volume}` response: where a host initiator connects to the volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportView {
    /// The volume's name.
    pub volume: String,
    /// The NBD export name (the volume's name).
    pub export_name: String,
    /// The volume's size in bytes.
    pub size_bytes: u64,
    /// Every up node with an NBD address; the answering node first, then by node id.
    pub endpoints: Vec<NbdEndpointView>,
}
