//! Volume commands: create (idempotent with a key), resize (grow only), delete.

use super::idempotency::create_fingerprint;
use super::outcome::{CommandResult, MetaError, Outcome, truncated};
use super::state::MetaState;
use super::types::{ClusterInfo, Volume, VolumeState, is_valid_name};
use crate::ids::VolumeId;
use crate::placement::REPLICAS_MAX;
use crate::units::BLOCK_SIZE_BYTES;

/// Largest volume, in bytes (1 PiB): bounds chunk counts and keeps sizes far from overflow.
pub const VOLUME_SIZE_BYTES_MAX: u64 = 1 << 50;
/// Most live volumes in a cluster: bounds the state (and snapshot) size.
pub const VOLUMES_MAX: usize = 100_000;

const _: () = assert!(VOLUME_SIZE_BYTES_MAX.is_multiple_of(BLOCK_SIZE_BYTES as u64));

/// Checks a volume size: > 0, a multiple of 4 KiB, at most `VOLUME_SIZE_BYTES_MAX`.
pub fn check_volume_size(size_bytes: u64) -> Result<(), MetaError> {
    let reason = if size_bytes == 0 {
        "must be > 0"
    } else if !size_bytes.is_multiple_of(u64::from(BLOCK_SIZE_BYTES)) {
        "must be a multiple of 4096 bytes"
    } else if size_bytes > VOLUME_SIZE_BYTES_MAX {
        "must be at most 1 PiB"
    } else {
        return Ok(());
    };
    Err(MetaError::InvalidSize {
        size_bytes,
        reason: reason.to_owned(),
    })
}

impl MetaState {
    pub(super) fn create_volume(
        &mut self,
        name: &str,
        size_bytes: u64,
        replicas: Option<u8>,
        idempotency_key: Option<&str>,
    ) -> CommandResult {
        let fingerprint = create_fingerprint(name, size_bytes, replicas);
        if let Some(key) = idempotency_key
            && let Some(first) = self.idempotency.lookup(key, &fingerprint)?
        {
            return Ok(first);
        }
        let volume = self.new_volume(name, size_bytes, replicas)?;
        self.next_volume_id = volume.id.0.saturating_add(1);
        self.volume_names.insert(volume.name.clone(), volume.id);
        self.volumes.insert(volume.id, volume.clone());
        let outcome = Outcome::Volume(volume);
        if let Some(key) = idempotency_key {
            self.idempotency
                .record(key, fingerprint, outcome.clone(), self.clock_unix_ms);
        }
        Ok(outcome)
    }

    /// Validates a create and makes sure its pool exists; the volume is not stored yet.
    fn new_volume(
        &mut self,
        name: &str,
        size_bytes: u64,
        replicas: Option<u8>,
    ) -> Result<Volume, MetaError> {
        let Some(cluster) = self.cluster.clone() else {
            return Err(MetaError::NotInitialized);
        };
        if !is_valid_name(name) {
            return Err(MetaError::InvalidName {
                name: truncated(name),
            });
        }
        check_volume_size(size_bytes)?;
        let replicas = replicas.unwrap_or(cluster.default_replicas);
        if !(1..=REPLICAS_MAX).contains(&replicas) {
            return Err(MetaError::InvalidReplicas { replicas });
        }
        if self.volume_names.contains_key(name) {
            return Err(MetaError::VolumeExists {
                name: name.to_owned(),
            });
        }
        if self.volumes.len() >= VOLUMES_MAX {
            return Err(MetaError::TooManyVolumes { limit: VOLUMES_MAX });
        }
        if self.next_volume_id == u64::MAX {
            // 2^64 creates cannot happen; refusing keeps ids unique regardless.
            return Err(MetaError::TooManyVolumes { limit: VOLUMES_MAX });
        }
        let spec = self.pool_spec(&cluster, replicas);
        let description = self.description();
        self.ensure_pool(spec, &description)
            .map_err(|error| match error {
                MetaError::NotEnoughNodes { available, .. } => MetaError::TooManyReplicas {
                    replicas,
                    available,
                },
                other => other,
            })?;
        Ok(Volume {
            // Ids start at 1 so that 0 never names a volume.
            id: VolumeId(self.next_volume_id.max(1)),
            name: name.to_owned(),
            size_bytes,
            replicas,
            pool: ClusterInfo::pool_for(replicas),
            state: VolumeState::Available,
            created_unix_ms: self.clock_unix_ms,
        })
    }

    pub(super) fn resize_volume(&mut self, volume: VolumeId, size_bytes: u64) -> CommandResult {
        check_volume_size(size_bytes)?;
        let record = self
            .volumes
            .get_mut(&volume)
            .ok_or(MetaError::VolumeNotFound { volume })?;
        if size_bytes < record.size_bytes {
            return Err(MetaError::ShrinkNotAllowed {
                current_bytes: record.size_bytes,
                requested_bytes: size_bytes,
            });
        }
        record.size_bytes = size_bytes;
        Ok(Outcome::Volume(record.clone()))
    }

    pub(super) fn delete_volume(&mut self, volume: VolumeId) -> CommandResult {
        let record = self
            .volumes
            .remove(&volume)
            .ok_or(MetaError::VolumeNotFound { volume })?;
        let removed = self.volume_names.remove(&record.name);
        debug_assert_eq!(removed, Some(volume));
        Ok(Outcome::VolumeDeleted {
            volume,
            name: record.name,
        })
    }
}
