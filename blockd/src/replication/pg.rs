//! [`PgEngine`]: one PG on one node, in whichever role the map gives it.

use std::collections::VecDeque;
use std::time::Instant;

use basalt::ids::{ChunkVersion, Epoch, NodeId, PgId};
use basalt::units::is_valid_chunk_size;
use basalt::wire::Status;

use super::local::Local;
use super::log::{LogEntry, PgLog};
use super::primary::Primary;
use super::replica::Replica;
use super::types::{
    Action, ChunkRange, ClientFlush, ClientRead, ClientWrite, EngineError, MapView, MemberSync,
    Mutation, Outcome, Peered, PgConfig, PgState, ReplicaReply, Replicate, SyncPoint, Token,
};

/// What a member does with a peering query or recovery push (see
/// [`PgEngine::handle_recovery_request`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryVerdict {
    /// Serve it.
    Allow,
    /// The request's epoch is newer than our map: wait for it, then ask again.
    Behind(Epoch),
    /// Answer with this status (`StaleEpoch` carries our epoch).
    Refuse(Status),
}

/// The read lease this node holds from the metadata service (DESIGN §4).
///
/// The node's heartbeat loop extends it while the metadata leader answers and the node's map is
/// current; a primary serves reads only while it is valid, so a primary cut off from the
/// metadata service (or stuck on an old map) stops serving reads when it ends. Not enforced
/// when the shell has no metadata service (in-process tests): then it is always valid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    enforced: bool,
    until: Option<Instant>,
}

impl Lease {
    /// A lease that is checked, valid until `until`.
    pub fn until(until: Option<Instant>) -> Self {
        Self {
            enforced: true,
            until,
        }
    }

    /// Whether the primary may serve reads at `now`.
    pub fn valid(&self, now: Instant) -> bool {
        !self.enforced || self.until.is_some_and(|until| until > now)
    }

    /// When it ends, if it is enforced and held.
    pub fn expiry(&self) -> Option<Instant> {
        if self.enforced { self.until } else { None }
    }
}

/// State both roles use: the map, the local store's progress, the log and the output queue.
#[derive(Debug)]
pub(crate) struct Shared<P> {
    pub(crate) config: PgConfig,
    pub(crate) map: MapView,
    pub(crate) local: Local,
    pub(crate) log: PgLog,
    pub(crate) lease: Lease,
    pub(crate) actions: VecDeque<Action<P>>,
}

impl<P: Clone> Shared<P> {
    /// Queues an answer carrying this node's epoch.
    pub(crate) fn reply(&mut self, token: Token, status: Status) {
        self.actions.push_back(Action::Reply {
            token,
            status,
            epoch: self.map.epoch,
        });
    }

    /// Submits the next version to the local store and logs it.
    pub(crate) fn apply_local(
        &mut self,
        version: ChunkVersion,
        range: ChunkRange,
        mutation: Mutation<P>,
    ) {
        self.local.submit(version);
        self.log.append(LogEntry {
            version,
            range,
            kind: mutation.kind(),
        });
        self.actions.push_back(Action::LocalApply {
            version,
            range,
            mutation,
        });
    }

    /// Moves the local head (and the log's start) to `head`; nothing may be in flight.
    pub(crate) fn reset_head(&mut self, head: ChunkVersion) {
        self.local.reset(head);
        self.log = PgLog::new(self.config.limits.log_entries_max, head.version);
    }

    /// The epoch of the map.
    pub(crate) fn epoch(&self) -> Epoch {
        self.map.epoch
    }
}

/// What this node is for the PG.
#[derive(Debug)]
enum Role<P> {
    /// First in the acting set: orders and fans out writes, serves reads.
    Primary(Primary<P>),
    /// Another member: applies the primary's writes in version order.
    Replica(Replica<P>),
    /// Not in the acting set: answers nothing but epoch errors.
    Stray,
    /// The local store failed a mutation; every request gets this status.
    Failed(Status),
}

/// Result of the epoch check every request goes through first.
enum Gate {
    /// Same epoch: go on.
    Pass,
    /// The request is from a newer map.
    Behind,
    /// Already answered (stale epoch or failed PG).
    Answered,
}

/// The replication engine of one PG on one node (DESIGN §4), sans-IO.
///
/// Inputs are `handle_*` calls, each given the current time; outputs are [`Action`]s drained
/// with [`poll_action`](Self::poll_action) after every input, in order. The shell also arms a
/// timer for [`poll_timeout`](Self::poll_timeout) and calls
/// [`handle_timeout`](Self::handle_timeout) when it fires (a spurious call is harmless). The
/// engine never reads the clock, touches the store or the network: the shell does that and
/// reports back (`handle_local_done`, `handle_replica_reply`, `handle_map`).
#[derive(Debug)]
pub struct PgEngine<P> {
    shared: Shared<P>,
    role: Role<P>,
}

impl<P: Clone> PgEngine<P> {
    /// Opens the PG at the store's `head` (the highest chunk version held for this PG, or the
    /// default zero version for an empty PG), under `map`.
    pub fn new(
        config: PgConfig,
        map: MapView,
        head: ChunkVersion,
        now: Instant,
    ) -> Result<Self, EngineError> {
        config.limits.validate()?;
        if !is_valid_chunk_size(config.chunk_size_bytes) {
            return Err(EngineError::InvalidChunkSize(config.chunk_size_bytes));
        }
        map.validate()?;
        let shared = Shared {
            config,
            map,
            local: Local::new(head),
            log: PgLog::new(config.limits.log_entries_max, head.version),
            lease: Lease::default(),
            actions: VecDeque::new(),
        };
        let mut engine = Self {
            shared,
            role: Role::Stray,
        };
        engine.role = engine.role_for_map(now);
        Ok(engine)
    }

    /// The role the current map gives this node, entered fresh (no earlier role to carry over).
    fn role_for_map(&mut self, now: Instant) -> Role<P> {
        let me = self.shared.config.node;
        if self.shared.map.primary() == Some(me) {
            let mut primary = Primary::new(&self.shared, now);
            primary.start_peering(&mut self.shared);
            Role::Primary(primary)
        } else if let (true, Some(primary)) =
            (self.shared.map.contains(me), self.shared.map.primary())
        {
            Role::Replica(Replica::new(primary, false))
        } else {
            Role::Stray
        }
    }

    /// Runs `serve` on a request that passed the epoch check; hands it back as `MapBehind`
    /// when it is from a newer map.
    fn gated<R>(
        &mut self,
        token: Token,
        epoch: Epoch,
        request: R,
        serve: impl FnOnce(&mut Self, R),
    ) -> Outcome<R> {
        match self.gate(token, epoch) {
            Gate::Behind => Outcome::MapBehind {
                wanted: epoch,
                request,
            },
            Gate::Answered => Outcome::Accepted,
            Gate::Pass => {
                serve(self, request);
                Outcome::Accepted
            }
        }
    }

    fn gate(&mut self, token: Token, epoch: Epoch) -> Gate {
        if let Role::Failed(status) = self.role {
            self.shared.reply(token, status);
            return Gate::Answered;
        }
        let own = self.shared.epoch();
        if epoch > own {
            Gate::Behind
        } else if epoch < own {
            self.shared.reply(token, Status::StaleEpoch);
            Gate::Answered
        } else {
            Gate::Pass
        }
    }

    /// A client write, trim or write-zeroes. On the primary of the request's epoch it gets the
    /// next version, goes to the local store and to every in-sync member, and is answered `Ok`
    /// once all of them (and at least `min_size` copies) hold it durably.
    pub fn handle_client_write(
        &mut self,
        now: Instant,
        request: ClientWrite<P>,
    ) -> Outcome<ClientWrite<P>> {
        let (token, epoch) = (request.token, request.epoch);
        self.gated(token, epoch, request, |engine, request| {
            match &mut engine.role {
                Role::Primary(primary) => primary.client_write(&mut engine.shared, now, request),
                _ => engine.shared.reply(request.token, Status::NotPrimary),
            }
        })
    }

    /// A client read: served from the local store by the primary while it holds its lease.
    pub fn handle_client_read(&mut self, now: Instant, request: ClientRead) -> Outcome<ClientRead> {
        let (token, epoch) = (request.token, request.epoch);
        self.gated(token, epoch, request, |engine, request| {
            match &mut engine.role {
                Role::Primary(primary) => primary.client_read(&mut engine.shared, now, request),
                _ => engine.shared.reply(request.token, Status::NotPrimary),
            }
        })
    }

    /// A client flush: answered once every write accepted before it has been answered.
    pub fn handle_client_flush(
        &mut self,
        now: Instant,
        request: ClientFlush,
    ) -> Outcome<ClientFlush> {
        let (token, epoch) = (request.token, request.epoch);
        self.gated(token, epoch, request, |engine, request| {
            match &mut engine.role {
                Role::Primary(primary) => primary.client_flush(&mut engine.shared, now, request),
                _ => engine.shared.reply(request.token, Status::NotPrimary),
            }
        })
    }

    /// A REPLICATE_* frame from the primary: applied in version order, answered `Ok` once
    /// durable here together with every earlier version.
    pub fn handle_replicate(
        &mut self,
        now: Instant,
        request: Replicate<P>,
    ) -> Outcome<Replicate<P>> {
        let (token, epoch) = (request.token, request.epoch);
        self.gated(token, epoch, request, |engine, request| {
            match &mut engine.role {
                Role::Replica(replica) => replica.replicate(&mut engine.shared, now, request),
                _ => {
                    tracing::warn!(
                        pg = %engine.shared.config.pg,
                        from = %request.from,
                        epoch = %request.epoch,
                        "replicate from a node that is not our primary in the same epoch"
                    );
                    engine.shared.reply(request.token, Status::Invalid);
                }
            }
        })
    }

    /// A replica's answer to a [`Action::Replicate`]. Ignored unless this node is the primary
    /// and still waits for that member's answer on that version.
    pub fn handle_replica_reply(&mut self, now: Instant, reply: ReplicaReply) {
        if let Role::Primary(primary) = &mut self.role {
            primary.replica_reply(&mut self.shared, now, reply);
        }
    }

    /// The local store finished the [`Action::LocalApply`] of `version`. An error stops the PG
    /// on this node ([`Action::StopServing`]): its copy no longer matches the others.
    pub fn handle_local_done(&mut self, _now: Instant, version: u64, result: Result<(), Status>) {
        if let Role::Failed(_) = self.role {
            return;
        }
        if !self.shared.local.complete(version) {
            tracing::warn!(pg = %self.shared.config.pg, version, "completion for a version not in flight");
            return;
        }
        if let Err(status) = result {
            self.fail(status);
            return;
        }
        for token in self.shared.local.take_durable_waiters() {
            self.shared.reply(token, Status::Ok);
        }
        if let Role::Primary(primary) = &mut self.role {
            primary.local_durable(&mut self.shared);
            primary.start_peering(&mut self.shared);
        }
    }

    /// The node's read lease changed (see [`Lease`]); reads queued for it may go now.
    pub fn handle_lease(&mut self, now: Instant, lease: Lease) {
        self.shared.lease = lease;
        if let Role::Primary(primary) = &mut self.role {
            primary.lease_changed(&mut self.shared, now);
        }
    }

    /// Peering (started by [`Action::Peer`]) finished in `peered.epoch`. Ignored unless this
    /// node is still peering as primary in that epoch.
    pub fn handle_peered(&mut self, now: Instant, peered: Peered) {
        if let Role::Primary(primary) = &mut self.role {
            primary.peered(&mut self.shared, now, peered);
        }
    }

    /// A recovery pass found little left to copy to `member`: the primary pauses new writes
    /// and emits [`Action::FinalSync`] once none is in flight. False if refused (not primary,
    /// another epoch, the member does not need recovery, or another member is finishing).
    pub fn handle_recovery_ready(&mut self, _now: Instant, member: NodeId, epoch: Epoch) -> bool {
        match &mut self.role {
            Role::Primary(primary) => primary.recovery_ready(&mut self.shared, member, epoch),
            _ => false,
        }
    }

    /// The final sync of `member` ended (`ok`: every chunk matches and it accepted the sync
    /// point). Writes resume; on success the member is back in the write path.
    pub fn handle_recovery_done(&mut self, now: Instant, member: NodeId, epoch: Epoch, ok: bool) {
        if let Role::Primary(primary) = &mut self.role {
            primary.recovery_done(&mut self.shared, now, member, epoch, ok);
        }
    }

    /// A peering query or recovery push from `from` in `epoch`: allowed when `from` is this
    /// node's primary in that epoch. A push (`recovering`) also stops the replica applying
    /// writes until the next sync point.
    pub fn handle_recovery_request(
        &mut self,
        from: NodeId,
        epoch: Epoch,
        recovering: bool,
    ) -> RecoveryVerdict {
        if let Role::Failed(status) = self.role {
            return RecoveryVerdict::Refuse(status);
        }
        let own = self.shared.epoch();
        if epoch > own {
            return RecoveryVerdict::Behind(epoch);
        }
        if epoch < own {
            return RecoveryVerdict::Refuse(Status::StaleEpoch);
        }
        match &mut self.role {
            Role::Replica(replica) if replica.primary() == from => {
                if recovering {
                    replica.recovery_started(&mut self.shared);
                }
                RecoveryVerdict::Allow
            }
            _ => RecoveryVerdict::Refuse(Status::NotPrimary),
        }
    }

    /// A sync point from the primary (see [`SyncPoint`]).
    pub fn handle_sync_point(&mut self, _now: Instant, request: SyncPoint) -> Outcome<SyncPoint> {
        let (token, epoch) = (request.token, request.epoch);
        self.gated(token, epoch, request, |engine, request| {
            match &mut engine.role {
                Role::Replica(replica) => replica.sync_point(&mut engine.shared, request),
                _ => engine.shared.reply(request.token, Status::NotPrimary),
            }
        })
    }

    fn fail(&mut self, status: Status) {
        tracing::error!(pg = %self.shared.config.pg, ?status, "local store failed a mutation; PG stops here");
        self.shared
            .actions
            .push_back(Action::StopServing { status });
        for token in self.shared.local.take_all_waiters() {
            self.shared.reply(token, status);
        }
        match std::mem::replace(&mut self.role, Role::Failed(status)) {
            Role::Primary(mut primary) => primary.step_down(&mut self.shared, status),
            Role::Replica(mut replica) => replica.drop_all(&mut self.shared, status),
            Role::Stray | Role::Failed(_) => {}
        }
    }

    /// A newer placement map (older or equal epochs are ignored). Members that left stop
    /// being waited for; members that joined receive only later writes and are recorded as
    /// needing recovery unless they missed nothing; a primary that lost the role answers its
    /// in-flight client requests `NotPrimary`; a node that gained it starts serving.
    pub fn handle_map(&mut self, now: Instant, map: MapView) -> Result<(), EngineError> {
        map.validate()?;
        if map.epoch <= self.shared.map.epoch {
            return Ok(());
        }
        let old = std::mem::replace(&mut self.shared.map, map);
        let me = self.shared.config.node;
        let leads = self.shared.map.primary() == Some(me);
        self.role = match std::mem::replace(&mut self.role, Role::Stray) {
            Role::Failed(status) => Role::Failed(status),
            Role::Primary(mut primary) if leads => {
                primary.map_changed(&mut self.shared, now, &old);
                Role::Primary(primary)
            }
            Role::Primary(mut primary) => {
                primary.step_down(&mut self.shared, Status::NotPrimary);
                self.role_for_map(now)
            }
            Role::Replica(mut replica) => {
                // Buffered writes carry the old epoch: the primary re-sends them under the new.
                replica.drop_all(&mut self.shared, Status::StaleEpoch);
                let same_primary = self.shared.map.primary() == Some(replica.primary())
                    && self.shared.map.contains(me);
                if same_primary {
                    // Still following the same primary: our copy is as level as it was.
                    Role::Replica(Replica::new(replica.primary(), replica.synced()))
                } else {
                    self.role_for_map(now)
                }
            }
            Role::Stray => self.role_for_map(now),
        };
        Ok(())
    }

    /// The connection to `node` broke. If it is a member this primary replicates to, report
    /// it (once per epoch); writes keep waiting for the map that drops it.
    pub fn handle_peer_lost(&mut self, node: NodeId) {
        if let Role::Primary(primary) = &mut self.role {
            primary.peer_lost(&mut self.shared, node);
        }
    }

    /// Expires what is due at `now`: client requests past their deadline (`Timeout`),
    /// out-of-order replica buffers past the gap deadline, back-off re-sends.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.role {
            Role::Primary(primary) => primary.timeout(&mut self.shared, now),
            Role::Replica(replica) => replica.timeout(&mut self.shared, now),
            Role::Stray | Role::Failed(_) => {}
        }
    }

    /// The next action for the shell, in the order they must be performed.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.shared.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.role {
            Role::Primary(primary) => primary.next_deadline(),
            Role::Replica(replica) => replica.next_deadline(),
            Role::Stray | Role::Failed(_) => None,
        }
    }
}

impl<P> PgEngine<P> {
    /// The PG.
    pub fn pg(&self) -> PgId {
        self.shared.config.pg
    }

    /// The current map as this engine knows it.
    pub fn map(&self) -> &MapView {
        &self.shared.map
    }

    /// The current map epoch.
    pub fn epoch(&self) -> Epoch {
        self.shared.map.epoch
    }

    /// The last version submitted to the local store (assigned, on a primary) and its epoch.
    pub fn head(&self) -> ChunkVersion {
        self.shared.local.head()
    }

    /// Every version up to this one is durable in the local store.
    pub fn durable_through(&self) -> u64 {
        self.shared.local.durable_through()
    }

    /// The PG log.
    pub fn log(&self) -> &PgLog {
        &self.shared.log
    }

    /// The read lease (always valid until issue 5).
    pub fn lease(&self) -> &Lease {
        &self.shared.lease
    }

    /// The PG's state on this node.
    pub fn state(&self) -> PgState {
        match &self.role {
            Role::Primary(primary) => primary.state(&self.shared),
            Role::Replica(_) => PgState::Replica,
            Role::Stray => PgState::Stray,
            Role::Failed(_) => PgState::Failed,
        }
    }

    /// On a primary, the other acting members and whether each is in sync; empty otherwise.
    pub fn members(&self) -> Vec<(NodeId, MemberSync)> {
        match &self.role {
            Role::Primary(primary) => primary.members(),
            _ => Vec::new(),
        }
    }

    /// On a primary, writes assigned and not yet answered.
    pub fn pending_count(&self) -> usize {
        match &self.role {
            Role::Primary(primary) => primary.pending_count(),
            _ => 0,
        }
    }
}
