//! The engine's inputs, outputs, limits and errors.

use std::time::Duration;

use basalt::ids::{ChunkKey, ChunkVersion, Epoch, NodeId, PgId};
use basalt::units::SECTOR_SIZE_BYTES;
use basalt::wire::{Opcode, Status};

use crate::store::StoreError;

/// Default time a client write, read or flush may wait for replicas, a map with enough members
/// or peering before it is answered with [`Status::Timeout`]. Longer than a map change takes
/// (failure detection plus publication) so a degraded write survives one, shorter than the
/// gateway's own request timeout so the gateway hears a definite answer.
pub const OP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default time a replica keeps out-of-order writes waiting for a missing earlier version
/// before dropping them with [`Status::Timeout`] (the primary re-sends). Reordering on a healthy
/// link takes microseconds; a gap this old means the earlier write is not coming.
pub const GAP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default delay before the primary re-sends to a replica that answered `Busy` or `Timeout`.
pub const RETRY_BACKOFF_DEFAULT: Duration = Duration::from_millis(20);
/// Default number of writes a primary may have assigned and not yet completed. Bounds the
/// payloads the engine pins; the gateway bounds its own in-flight I/O below this.
pub const OPS_PENDING_MAX_DEFAULT: usize = 1024;
/// Default number of client requests a primary queues while it cannot assign (below
/// `min_size`, peering); beyond it new requests get `Busy`.
pub const OPS_WAITING_MAX_DEFAULT: usize = 1024;
/// Default number of out-of-order writes a replica buffers; beyond it `Busy`.
pub const REPLICA_BUFFER_OPS_MAX_DEFAULT: usize = 256;
/// Default payload bytes a replica buffers out of order; beyond it `Busy`.
pub const REPLICA_BUFFER_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default number of replica acknowledgements waiting for local durability; beyond it `Busy`.
pub const ACKS_WAITING_MAX_DEFAULT: usize = 4096;
/// Default number of entries the in-memory PG log keeps. A member that fell further behind
/// than this is backfilled instead of caught up from the log (issue 5).
pub const LOG_ENTRIES_MAX_DEFAULT: usize = 4096;
/// How many duplicate deliveries of one buffered version a replica answers together; more get
/// `Busy`. A primary re-sends a version at most once per epoch change or back-off.
pub const DUPLICATE_TOKENS_MAX: usize = 4;

const _: () = assert!(GAP_TIMEOUT_DEFAULT.as_millis() < OP_TIMEOUT_DEFAULT.as_millis());
const _: () = assert!(RETRY_BACKOFF_DEFAULT.as_millis() < GAP_TIMEOUT_DEFAULT.as_millis());
const _: () = assert!(REPLICA_BUFFER_OPS_MAX_DEFAULT <= OPS_PENDING_MAX_DEFAULT);
const _: () = assert!(OPS_PENDING_MAX_DEFAULT <= LOG_ENTRIES_MAX_DEFAULT);

/// The shell's handle for one request it must answer (a client request or a replicate frame):
/// the engine only hands it back in [`Action::Reply`]. Unique among the engine's requests in
/// flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub u64);

/// A byte range of one chunk, as every request addresses data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRange {
    /// The chunk.
    pub chunk: ChunkKey,
    /// Byte offset within the chunk, a multiple of 512.
    pub offset: u32,
    /// Byte length, a non-zero multiple of 512.
    pub len: u32,
}

impl ChunkRange {
    /// Whether the range is sector-aligned, non-empty and inside a chunk of
    /// `chunk_size_bytes`: checked before a version is spent on it, so a bad range is a
    /// caller fault and never a store failure that would stop the PG.
    pub fn is_valid(&self, chunk_size_bytes: u32) -> bool {
        self.len != 0
            && self.offset.is_multiple_of(SECTOR_SIZE_BYTES)
            && self.len.is_multiple_of(SECTOR_SIZE_BYTES)
            && u64::from(self.offset) + u64::from(self.len) <= u64::from(chunk_size_bytes)
    }
}

/// What a mutation does, without its data: what the PG log records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Write data.
    Write,
    /// Deallocate (reads back as zeros).
    Trim,
    /// Make the range read as zeros.
    Zeroes,
}

impl OpKind {
    /// The kind a gateway→primary opcode asks for; `None` for non-mutating opcodes.
    pub fn from_client_opcode(opcode: Opcode) -> Option<Self> {
        match opcode {
            Opcode::Write => Some(OpKind::Write),
            Opcode::Trim => Some(OpKind::Trim),
            Opcode::WriteZeroes => Some(OpKind::Zeroes),
            _ => None,
        }
    }

    /// The kind a primary→replica opcode carries; `None` for other opcodes.
    pub fn from_replicate_opcode(opcode: Opcode) -> Option<Self> {
        match opcode {
            Opcode::ReplicateWrite => Some(OpKind::Write),
            Opcode::ReplicateTrim => Some(OpKind::Trim),
            Opcode::ReplicateZeroes => Some(OpKind::Zeroes),
            _ => None,
        }
    }

    /// The REPLICATE_* opcode that carries this kind to a replica.
    pub fn replicate_opcode(self) -> Opcode {
        match self {
            OpKind::Write => Opcode::ReplicateWrite,
            OpKind::Trim => Opcode::ReplicateTrim,
            OpKind::Zeroes => Opcode::ReplicateZeroes,
        }
    }
}

/// The wire status for a failed store request, as the shell reports it to the engine
/// (`handle_local_done`) or to a client (`LocalRead`). Caller faults cannot happen for ranges
/// the engine checked, so they map to `Invalid`.
pub fn store_status(error: &StoreError) -> Status {
    match error {
        StoreError::OutOfRange { .. } => Status::OutOfRange,
        StoreError::Misaligned { .. } | StoreError::ZeroLength => Status::Invalid,
        StoreError::Corrupt { .. } => Status::Corrupt,
        StoreError::NoSpace | StoreError::NoChunkSlots => Status::NoSpace,
        StoreError::Io(_) | StoreError::Failed(_) | StoreError::Closed => Status::IoError,
    }
}

/// A mutation with its data. `P` is the shell's payload handle (`bytes::Bytes` in the daemon):
/// the engine clones it once per copy it sends, which for `Bytes` is a reference count, so a
/// 4 KiB write is never copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation<P> {
    /// Write the payload (exactly `len` bytes; the frame decoder checked that).
    Write(P),
    /// Deallocate the range.
    Trim,
    /// Zero the range.
    Zeroes,
}

impl<P> Mutation<P> {
    /// The mutation's kind.
    pub fn kind(&self) -> OpKind {
        match self {
            Mutation::Write(_) => OpKind::Write,
            Mutation::Trim => OpKind::Trim,
            Mutation::Zeroes => OpKind::Zeroes,
        }
    }
}

/// A client (gateway) write, trim or write-zeroes for the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientWrite<P> {
    /// Answered with [`Action::Reply`].
    pub token: Token,
    /// The map epoch the gateway routed by.
    pub epoch: Epoch,
    /// Where.
    pub range: ChunkRange,
    /// What.
    pub mutation: Mutation<P>,
}

/// A client read for the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientRead {
    /// Handed back in [`Action::LocalRead`] or [`Action::Reply`].
    pub token: Token,
    /// The map epoch the gateway routed by.
    pub epoch: Epoch,
    /// Where.
    pub range: ChunkRange,
}

/// A client flush: a barrier over every write the primary accepted before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientFlush {
    /// Answered with [`Action::Reply`].
    pub token: Token,
    /// The map epoch the gateway routed by.
    pub epoch: Epoch,
}

/// A REPLICATE_* frame from a primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replicate<P> {
    /// Answered with [`Action::Reply`].
    pub token: Token,
    /// The sending node.
    pub from: NodeId,
    /// The sender's map epoch (the frame's `epoch`).
    pub epoch: Epoch,
    /// The version the primary assigned (the frame's `pg_version`, non-zero).
    pub version: u64,
    /// Where.
    pub range: ChunkRange,
    /// What.
    pub mutation: Mutation<P>,
}

/// A primary's statement to a member it peered with or recovered: "your copy of the PG now
/// matches my history up to `head`". Only after one does a replica apply the primary's writes
/// (it answers [`Status::Unsynced`] before), so a replica that restarted or missed writes is
/// never counted as a copy until the primary has checked it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncPoint {
    /// Answered with [`Action::Reply`].
    pub token: Token,
    /// The sending node (must be the map's primary).
    pub from: NodeId,
    /// The sender's map epoch.
    pub epoch: Epoch,
    /// The primary's head: the replica's next write is `head.version + 1`.
    pub head: ChunkVersion,
}

/// What peering established, as the shell reports it to [`PgEngine::handle_peered`].
///
/// [`PgEngine::handle_peered`]: super::PgEngine::handle_peered
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peered {
    /// The epoch peering ran in (results of an older epoch are ignored).
    pub epoch: Epoch,
    /// The adopted history's head: the highest version any member holds. The local store now
    /// holds every chunk at its newest label.
    pub head: ChunkVersion,
    /// Members whose copies matched the adopted history and accepted a [`SyncPoint`] at
    /// `head`; the others need recovery.
    pub in_sync: Vec<NodeId>,
}

/// A replica's answer to a [`Action::Replicate`], as the primary receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaReply {
    /// The version the reply is for.
    pub version: u64,
    /// The replying node.
    pub from: NodeId,
    /// Its status; `Ok` means durable on that replica, with every earlier version.
    pub status: Status,
    /// The replica's epoch (the reply frame's `epoch`).
    pub epoch: Epoch,
}

/// What a `handle_*` call did with a request.
#[must_use = "a MapBehind request must be re-submitted once the map arrives"]
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<R> {
    /// The engine took the request; its answer comes as actions.
    Accepted,
    /// The request carries a newer epoch than this node's map. The engine did nothing: the
    /// shell keeps the request, fetches the map, and re-submits it after [`PgEngine::handle_map`]
    /// reached `wanted` (or answers `Timeout` if the map does not come in time).
    ///
    /// [`PgEngine::handle_map`]: super::PgEngine::handle_map
    MapBehind {
        /// The epoch the request was sent under.
        wanted: Epoch,
        /// The request, handed back untouched.
        request: R,
    },
}

/// How often a primary repeats [`Action::Settle`] while its PG stays transitional with every
/// member in sync (a report can be lost, or refused while a member of the up set is down).
pub const SETTLE_RETRY: Duration = Duration::from_secs(2);

/// This node's view of the PG in one placement map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapView {
    /// The map's epoch.
    pub epoch: Epoch,
    /// Ordered acting set: the first node is the primary. Empty when every member is down.
    pub acting: Vec<NodeId>,
    /// Fewest copies (primary included) a write may be acknowledged with.
    pub min_size: u8,
    /// `Some(since)` while the acting set is transitional (it changed in epoch `since` and keeps
    /// a primary or members the up set does not): the primary reports [`Action::Settle`] once
    /// every member is in sync, and the metadata service then settles it.
    pub settle: Option<Epoch>,
}

impl MapView {
    /// The primary in this map.
    pub fn primary(&self) -> Option<NodeId> {
        self.acting.first().copied()
    }

    /// Whether `node` is in the acting set.
    pub fn contains(&self, node: NodeId) -> bool {
        self.acting.contains(&node)
    }

    pub(crate) fn validate(&self) -> Result<(), EngineError> {
        if self.min_size == 0 {
            return Err(EngineError::ZeroMinSize { epoch: self.epoch });
        }
        for (index, node) in self.acting.iter().enumerate() {
            if self.acting[..index].contains(node) {
                return Err(EngineError::DuplicateMember {
                    epoch: self.epoch,
                    node: *node,
                });
            }
        }
        Ok(())
    }
}

/// Timeouts and bounds of one engine. [`Limits::default`] uses the `*_DEFAULT` constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// See [`OP_TIMEOUT_DEFAULT`].
    pub op_timeout: Duration,
    /// See [`GAP_TIMEOUT_DEFAULT`].
    pub gap_timeout: Duration,
    /// See [`RETRY_BACKOFF_DEFAULT`].
    pub retry_backoff: Duration,
    /// See [`OPS_PENDING_MAX_DEFAULT`].
    pub ops_pending_max: usize,
    /// See [`OPS_WAITING_MAX_DEFAULT`].
    pub ops_waiting_max: usize,
    /// See [`REPLICA_BUFFER_OPS_MAX_DEFAULT`].
    pub replica_buffer_ops_max: usize,
    /// See [`REPLICA_BUFFER_BYTES_MAX_DEFAULT`].
    pub replica_buffer_bytes_max: u64,
    /// See [`ACKS_WAITING_MAX_DEFAULT`].
    pub acks_waiting_max: usize,
    /// See [`LOG_ENTRIES_MAX_DEFAULT`].
    pub log_entries_max: usize,
    /// How long a new primary waits before serving: the longest read lease another node may
    /// still hold for the PG's previous map. Zero where leases are not enforced.
    pub lease_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            op_timeout: OP_TIMEOUT_DEFAULT,
            gap_timeout: GAP_TIMEOUT_DEFAULT,
            retry_backoff: RETRY_BACKOFF_DEFAULT,
            ops_pending_max: OPS_PENDING_MAX_DEFAULT,
            ops_waiting_max: OPS_WAITING_MAX_DEFAULT,
            replica_buffer_ops_max: REPLICA_BUFFER_OPS_MAX_DEFAULT,
            replica_buffer_bytes_max: REPLICA_BUFFER_BYTES_MAX_DEFAULT,
            acks_waiting_max: ACKS_WAITING_MAX_DEFAULT,
            log_entries_max: LOG_ENTRIES_MAX_DEFAULT,
            lease_wait: Duration::ZERO,
        }
    }
}

impl Limits {
    pub(crate) fn validate(&self) -> Result<(), EngineError> {
        let ordered = self.retry_backoff < self.gap_timeout && self.gap_timeout < self.op_timeout;
        let sized = self.ops_pending_max > 0
            && self.replica_buffer_ops_max > 0
            && self.acks_waiting_max > 0
            && self.log_entries_max > 0;
        if ordered && sized {
            Ok(())
        } else {
            Err(EngineError::InvalidLimits(*self))
        }
    }
}

/// Fixed parameters of one PG's engine on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgConfig {
    /// The PG.
    pub pg: PgId,
    /// This node.
    pub node: NodeId,
    /// The cluster's chunk size, to refuse ranges beyond a chunk before assigning a version.
    pub chunk_size_bytes: u32,
    /// Timeouts and bounds.
    pub limits: Limits,
}

/// What the engine asks the shell to do. Poll with [`PgEngine::poll_action`] after every
/// `handle_*` call and perform the actions in the order they come.
///
/// [`PgEngine::poll_action`]: super::PgEngine::poll_action
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P> {
    /// Submit this mutation to the local store. The store orders overlapping mutations by
    /// arrival, so the shell must submit `LocalApply` actions in emission order (which is
    /// version order), and report completion with `handle_local_done(version.version, ..)`.
    LocalApply {
        /// (epoch, version) to record in the chunk.
        version: ChunkVersion,
        /// Where.
        range: ChunkRange,
        /// What.
        mutation: Mutation<P>,
    },
    /// Send a REPLICATE_* frame to `to`; feed its reply to `handle_replica_reply`.
    Replicate {
        /// Destination member.
        to: NodeId,
        /// The frame's epoch (this node's current epoch).
        epoch: Epoch,
        /// The frame's `pg_version`.
        version: u64,
        /// Where.
        range: ChunkRange,
        /// What.
        mutation: Mutation<P>,
    },
    /// Read from the local store and answer the client with the data (or the store's error).
    LocalRead {
        /// The client request.
        token: Token,
        /// Where.
        range: ChunkRange,
    },
    /// Answer a request (client or replicate) with `status` and this node's `epoch`.
    Reply {
        /// The request.
        token: Token,
        /// The outcome.
        status: Status,
        /// The responder's epoch (a `StaleEpoch` reply tells the sender which map to fetch).
        epoch: Epoch,
    },
    /// Tell the metadata service that `node` failed a replicated write in `epoch`; the
    /// primary keeps waiting for the map that drops it. Emitted at most once per node and epoch.
    ReportFailure {
        /// The failed member.
        node: NodeId,
        /// The epoch it failed in.
        epoch: Epoch,
    },
    /// Peer: collect every member's chunk labels, pull into the local store each chunk some
    /// member holds at a newer label, send a [`SyncPoint`] to the members that then match, and
    /// report with `handle_peered`. Emitted when this node becomes primary (also at open) and
    /// again on every map change while peering, once nothing is in flight locally.
    Peer {
        /// The epoch to peer in (requests carry it, so members move to it first).
        epoch: Epoch,
        /// The other acting members, in map order.
        members: Vec<NodeId>,
    },
    /// Recover `member`: copy to it every chunk whose label differs from the local one (and
    /// delete those it should not have), in passes, throttled; when a pass finds little left,
    /// call `handle_recovery_ready`. Emitted once per member and epoch; the shell retries on
    /// its own until the epoch changes.
    Recover {
        /// The member to bring level.
        member: NodeId,
        /// The epoch the recovery runs in.
        epoch: Epoch,
    },
    /// New writes are paused and every assigned one is durable locally: copy the chunks that
    /// still differ to `member`, send it a [`SyncPoint`] at `head`, and report with
    /// `handle_recovery_done` (the member then also counts as a copy of the writes still
    /// pending, which may have waited for it to reach `min_size`).
    FinalSync {
        /// The member.
        member: NodeId,
        /// The epoch.
        epoch: Epoch,
        /// The head the member joins at.
        head: ChunkVersion,
    },
    /// Every acting member is in sync under a transitional acting set that changed in `since`:
    /// ask the metadata service to settle the PG (drop the members being replaced, hand the
    /// primary role to the up set's first). Repeated every [`SETTLE_RETRY`] while it holds.
    Settle {
        /// The epoch the reported placement changed in.
        since: Epoch,
    },
    /// The local store failed a mutation: this node's copy of the PG can no longer be trusted.
    /// The engine answers everything with `status` from now on; the shell should report the
    /// drive to the metadata service so the PG moves on without this node.
    StopServing {
        /// The store's failure.
        status: Status,
    },
}

/// Whether a primary may count on a member holding the PG's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberSync {
    /// Holds every version this primary assigned while it was a member: receives and must
    /// acknowledge every new write.
    InSync,
    /// May lack writes (it joined, restarted, or peering found its copy different):
    /// receives no writes and is not counted until recovery brings it level.
    NeedsRecovery,
}

/// The PG's state on this node, for the API and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgState {
    /// Primary with every acting member in sync.
    Active,
    /// Primary serving writes, with some acting members waiting for recovery.
    Degraded,
    /// Primary with fewer than `min_size` copies available: writes wait and time out.
    Inactive,
    /// New primary establishing the authoritative history before it serves.
    Peering,
    /// Primary serving writes while it copies missed data to some acting members.
    Recovering,
    /// Replica of another node's primary.
    Replica,
    /// Not in the acting set.
    Stray,
    /// The local store failed; nothing is served.
    Failed,
}

/// Why the engine refused its configuration or a map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The map names a node twice in one acting set.
    #[error("map {epoch} lists {node} twice in the acting set")]
    DuplicateMember {
        /// The map's epoch.
        epoch: Epoch,
        /// The repeated node.
        node: NodeId,
    },
    /// The map's `min_size` is zero.
    #[error("map {epoch} has min_size 0")]
    ZeroMinSize {
        /// The map's epoch.
        epoch: Epoch,
    },
    /// Timeouts not ordered backoff < gap < op, or a zero bound.
    #[error("invalid replication limits: {0:?}")]
    InvalidLimits(Limits),
    /// The chunk size is not a valid cluster chunk size.
    #[error("invalid chunk size {0} bytes")]
    InvalidChunkSize(u32),
}
