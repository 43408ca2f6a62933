//! The metadata service's state machine (DESIGN §5), pure: no Raft, no I/O, no clock.
//!
//! The daemon's openraft glue (`blockd/src/meta/`) carries [`Command`]s as log entries and
//! calls [`MetaState::apply`] on every replica in log order; [`MetaState::to_snapshot`] /
//! [`MetaState::from_snapshot`] are its snapshots. Because a command carries its own time and
//! `apply` is deterministic, replicas that apply the same log hold identical states.
//!
//! The state holds the cluster's parameters, nodes (addresses, zone, drives, up/down/out, last
//! heartbeat), the placement map with its epoch (moved by node commands, see `nodes.rs`),
//! volumes, API tokens (as hashes) and idempotency keys. The leader's [`FailureDetector`]
//! turns heartbeats into `MarkNode*` proposals.

mod command;
mod detector;
mod idempotency;
mod invariants;
mod nodes;
mod outcome;
mod snapshot;
mod state;
mod tokens;
mod types;
mod volumes;

#[cfg(test)]
mod tests;

pub use command::{Command, CommandKind, SETTLE_BATCH_MAX};
pub use detector::{FailureDetector, Proposal, Verdict};
pub use idempotency::{
    IDEMPOTENCY_KEY_LENGTH_MAX, IDEMPOTENCY_KEYS_MAX, IDEMPOTENCY_RETENTION_MS, IdempotencyStore,
    is_valid_idempotency_key,
};
pub use invariants::StateInvariantError;
pub use nodes::ADDRESS_LENGTH_MAX;
pub use outcome::{CommandResult, MetaError, Outcome};
pub use snapshot::{SNAPSHOT_MAGIC, SNAPSHOT_VERSION, SnapshotError};
pub use state::MetaState;
pub use tokens::TOKENS_MAX;
pub use types::{
    ApiToken, ClusterInfo, DriveInfo, NAME_LENGTH_MAX, NodeAddresses, NodeRecord, NodeRole,
    TokenRole, Volume, VolumeState, is_valid_name, token_sha256,
};
pub use volumes::{VOLUME_SIZE_BYTES_MAX, VOLUMES_MAX, check_volume_size};
