//! The PG replication engine (DESIGN §4) as a sans-IO core: one [`PgEngine`] per PG per node,
//! primary or replica as the placement map says. `docs/replication.md` describes the design,
//! its invariants and what failover, peering and recovery (issue 5) add.
//!
//! [`ReplicationService`] is the async shell that runs a node's engines: one task per hosted
//! PG, fed by the peer server's I/O frames, the cluster view and its own store and network I/O.
//!
//! The engine takes events (`handle_*`: client requests, replicate frames, replica replies,
//! store completions, maps, timeouts) and returns [`Action`]s (`poll_action`: store
//! submissions, frames to send, replies, failure reports). It owns no data: payloads are an
//! opaque handle `P` (the daemon uses `bytes::Bytes`), cloned once per copy sent.
//!
//! # Crash consistency
//! - Order: a primary submits a write to its store (`LocalApply`) before it sends any copy
//!   (`Replicate`), and submits in version order; a replica submits in version order and
//!   never skips one. The store orders overlapping writes by arrival, so every member applies
//!   the same sequence.
//! - Durable when: a write is acknowledged to the client only when it is durable on the primary
//!   and on every in-sync member of the acting set, at least `min_size` copies, each with every
//!   earlier version (durability is tracked as a prefix, so an acknowledged copy has no holes
//!   before it).
//! - May roll back: a write that was not acknowledged (timed out, primary lost) may survive on
//!   some members and not others; issue 5's peering makes the members agree. Nothing is
//!   persisted by the engine itself: the PG log lives in memory and the store's chunk versions
//!   are the durable record.

mod actor;
mod block_status;
mod local;
mod log;
mod pg;
mod primary;
mod recovery;
mod recovery_msg;
mod recovery_plan;
mod replica;
mod scrub;
mod service;
mod stats;
mod sweep;
mod types;

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

pub use block_status::{
    AllocationRun, BLOCK_STATUS_VERSION, BlockStatusReply, BlockStatusRequest, RunsError,
    check_runs,
};
pub use log::{LogEntry, PgLog};
pub use pg::{Lease, PgEngine, RecoveryVerdict};
pub use recovery::{FINAL_FIXES_MAX, Throttle};
pub use recovery_msg::{
    PgRef, PushStep, RECOVERY_PIECE_BYTES_MAX, RECOVERY_VERSION, RecoveryReply, RecoveryRequest,
};
pub use recovery_plan::{ChunkFix, Labels, PeeringPlan, diff, level_members, plan_peering};
pub use scrub::{
    BlockDigest, BlockFix, ChunkDigest, ChunkVerdict, PassFigures, REPAIR_BLOCKS_MAX,
    SCRUB_BYTES_PER_SEC_DEFAULT, SCRUB_INTERVAL_DEFAULT, ScrubSettings, ScrubSnapshot, ScrubStats,
    compare, zero_block_crc,
};
pub use service::{
    MetaReport, PG_INBOX_DEPTH_DEFAULT, PgKey, RECOVERY_BYTES_PER_SEC_DEFAULT, ReplicationConfig,
    ReplicationError, ReplicationService, VIEW_WAIT_DEFAULT,
};
pub use stats::{MemberProgress, Progress, ReplicationSnapshot, ReplicationStats};
pub use types::{
    ACKS_WAITING_MAX_DEFAULT, Action, ChunkRange, ClientFlush, ClientRead, ClientWrite,
    DUPLICATE_TOKENS_MAX, EngineError, GAP_TIMEOUT_DEFAULT, LOG_ENTRIES_MAX_DEFAULT, Limits,
    MapView, MemberSync, Mutation, OP_TIMEOUT_DEFAULT, OPS_PENDING_MAX_DEFAULT,
    OPS_WAITING_MAX_DEFAULT, OpKind, Outcome, Peered, PgConfig, PgState,
    REPLICA_BUFFER_BYTES_MAX_DEFAULT, REPLICA_BUFFER_OPS_MAX_DEFAULT, RETRY_BACKOFF_DEFAULT,
    ReplicaReply, Replicate, SETTLE_RETRY, SyncPoint, Token, store_status,
};
