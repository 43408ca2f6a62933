//! The primary role: version assignment, fan-out, acknowledgement, map changes.
//!
//! A write is answered `Ok` only when (1) the local store holds it durably together with every
//! earlier version, (2) every member it was sent to (the in-sync members of the acting set at
//! assignment that are still in the acting set) acknowledged it, and (3) the copies on members
//! of the *current* acting set, this node included, number at least `min_size`. Members that
//! join later are not part of it; members that leave stop being waited for.
//!
//! A new primary peers before it serves ([`Action::Peer`]); members that may lack writes are
//! recovered ([`Action::Recover`]) and rejoin the write path at a version boundary reached by
//! pausing new writes until none is in flight ([`Action::FinalSync`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use basalt::ids::{ChunkVersion, Epoch, NodeId};
use basalt::wire::Status;

use super::pg::Shared;
use super::types::{
    Action, ClientFlush, ClientRead, ClientWrite, MapView, MemberSync, Peered, PgState,
    ReplicaReply, SETTLE_RETRY, Token,
};

/// Another member of the acting set, as the primary tracks it.
#[derive(Debug)]
struct Member {
    node: NodeId,
    sync: MemberSync,
    /// The epoch a [`Action::Recover`] was last emitted for it in.
    recover_emitted: Option<Epoch>,
}

/// A member on its way back into the write path: new writes wait until none is in flight,
/// then the shell copies what still differs and sends the member a sync point.
#[derive(Debug)]
struct FinalSync {
    member: NodeId,
    /// [`Action::FinalSync`] went out.
    emitted: bool,
}

/// A member a pending write still waits for.
#[derive(Debug)]
struct Waited {
    node: NodeId,
    /// Epoch of the latest copy sent to it.
    sent_epoch: Epoch,
    /// It answered `StaleEpoch` with this epoch, newer than ours: re-send once we have it.
    stale_until: Option<Epoch>,
}

/// A write with a version, not yet answered.
#[derive(Debug)]
struct PendingOp<P> {
    token: Token,
    write: ClientWrite<P>,
    deadline: Instant,
    local_durable: bool,
    waiting: Vec<Waited>,
    acked: Vec<NodeId>,
}

/// A client request that cannot proceed yet (peering, fewer than `min_size` copies, or
/// queued behind one that cannot), with its deadline.
#[derive(Debug)]
enum Waiting<P> {
    Write(ClientWrite<P>, Instant),
    Read(ClientRead, Instant),
    Flush(ClientFlush, Instant),
}

impl<P> Waiting<P> {
    fn deadline(&self) -> Instant {
        match self {
            Waiting::Write(_, deadline)
            | Waiting::Read(_, deadline)
            | Waiting::Flush(_, deadline) => *deadline,
        }
    }

    fn token(&self) -> Token {
        match self {
            Waiting::Write(write, _) => write.token,
            Waiting::Read(read, _) => read.token,
            Waiting::Flush(flush, _) => flush.token,
        }
    }
}

/// A back-off re-send to a member that answered `Busy` or `Timeout`.
#[derive(Debug)]
struct Retry {
    node: NodeId,
    due: Instant,
    /// Re-send every pending version up to this one that the member has not acknowledged.
    up_to: u64,
}

/// State of the primary role.
#[derive(Debug)]
pub(crate) struct Primary<P> {
    /// Serving is held until peering completes.
    peering: bool,
    /// No request is served before this: the previous primary's read lease (of at most
    /// `lease_wait`) has run out by then.
    serve_after: Instant,
    /// Peering finished before `serve_after`: applied once it passes.
    peered_early: Option<Box<Peered>>,
    /// The epoch an [`Action::Peer`] was emitted for.
    peer_emitted: Option<Epoch>,
    /// The other acting members, in map order.
    members: Vec<Member>,
    /// The member being brought back into the write path, if any.
    final_sync: Option<FinalSync>,
    pending: BTreeMap<u64, PendingOp<P>>,
    deadlines: BTreeSet<(Instant, u64)>,
    waiting: VecDeque<Waiting<P>>,
    /// Flush barriers: (last version assigned before the flush, its token), in order.
    flushes: VecDeque<(u64, Token)>,
    retries: Vec<Retry>,
    /// Members reported failed in the current epoch.
    reported: Vec<NodeId>,
    /// When [`Action::Settle`] may be (re-)emitted for the current transition.
    settle_due: Option<Instant>,
}

impl<P: Clone> Primary<P> {
    /// A primary in the `Peering` state for the current map. No member counts as a copy
    /// until peering has compared it with the adopted history.
    pub(crate) fn new(shared: &Shared<P>, now: Instant) -> Self {
        let me = shared.config.node;
        let members = shared
            .map
            .acting
            .iter()
            .filter(|node| **node != me)
            .map(|node| Member {
                node: *node,
                sync: MemberSync::NeedsRecovery,
                recover_emitted: None,
            })
            .collect();
        Self {
            peering: true,
            serve_after: now + shared.config.limits.lease_wait,
            peered_early: None,
            peer_emitted: None,
            members,
            final_sync: None,
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            waiting: VecDeque::new(),
            flushes: VecDeque::new(),
            retries: Vec::new(),
            reported: Vec::new(),
            settle_due: None,
        }
    }

    /// Asks the shell to peer in the current epoch, once nothing is in flight locally (a
    /// node that was a replica may still be applying its old primary's writes, and peering
    /// compares what the store holds).
    pub(crate) fn start_peering(&mut self, shared: &mut Shared<P>) {
        let epoch = shared.epoch();
        if !self.peering || self.peer_emitted == Some(epoch) {
            return;
        }
        if shared.local.durable_through() != shared.local.head().version {
            return;
        }
        self.peer_emitted = Some(epoch);
        let members = self.members.iter().map(|m| m.node).collect();
        shared.actions.push_back(Action::Peer { epoch, members });
    }

    /// Peering finished: adopt its head, count the members it found level, start recovering
    /// the others, and serve what queued meanwhile.
    pub(crate) fn peered(&mut self, shared: &mut Shared<P>, now: Instant, peered: Peered) {
        if !self.peering || peered.epoch != shared.epoch() {
            return;
        }
        if now < self.serve_after {
            // Another node may still hold a read lease for this PG's old map.
            self.peered_early = Some(Box::new(peered));
            return;
        }
        debug_assert!(
            self.pending.is_empty(),
            "a peering primary has assigned nothing"
        );
        let head = peered.head.max(shared.local.head());
        shared.reset_head(head);
        for member in &mut self.members {
            member.sync = if peered.in_sync.contains(&member.node) {
                MemberSync::InSync
            } else {
                MemberSync::NeedsRecovery
            };
        }
        tracing::info!(pg = %shared.config.pg, epoch = %peered.epoch, %head, in_sync = ?peered.in_sync, "peering done");
        self.peering = false;
        self.request_recovery(shared);
        self.pump(shared, now);
        self.maybe_settle(shared, now);
    }

    /// The node's lease changed: serve the reads that waited for it.
    pub(crate) fn lease_changed(&mut self, shared: &mut Shared<P>, now: Instant) {
        self.pump(shared, now);
    }

    /// Emits [`Action::Recover`] for every member that needs recovery and has none running
    /// in the current epoch.
    fn request_recovery(&mut self, shared: &mut Shared<P>) {
        if self.peering {
            return;
        }
        let epoch = shared.epoch();
        for member in &mut self.members {
            if member.sync == MemberSync::NeedsRecovery && member.recover_emitted != Some(epoch) {
                member.recover_emitted = Some(epoch);
                shared.actions.push_back(Action::Recover {
                    member: member.node,
                    epoch,
                });
            }
        }
    }

    /// Takes `node` out of the write path: it may lack a write (it timed out, or says it is
    /// not in sync). Writes in flight stop waiting for it; recovery brings it back.
    fn demote(&mut self, shared: &mut Shared<P>, node: NodeId) {
        let Some(member) = self.members.iter_mut().find(|m| m.node == node) else {
            return;
        };
        if member.sync == MemberSync::InSync {
            tracing::warn!(pg = %shared.config.pg, %node, "member out of the write path until recovered");
            member.sync = MemberSync::NeedsRecovery;
        }
        for op in self.pending.values_mut() {
            op.waiting.retain(|w| w.node != node);
        }
        self.retries.retain(|retry| retry.node != node);
        self.request_recovery(shared);
    }

    /// A recovery pass found little left to copy to `member`: pause new writes and, once every
    /// assigned one is durable here, emit [`Action::FinalSync`]. False (and nothing changes) when the member
    /// does not need recovery in this epoch or another member is finishing.
    pub(crate) fn recovery_ready(
        &mut self,
        shared: &mut Shared<P>,
        member: NodeId,
        epoch: Epoch,
    ) -> bool {
        let needs = self
            .members
            .iter()
            .any(|m| m.node == member && m.sync == MemberSync::NeedsRecovery);
        if self.peering || epoch != shared.epoch() || self.final_sync.is_some() || !needs {
            return false;
        }
        self.final_sync = Some(FinalSync {
            member,
            emitted: false,
        });
        self.maybe_final_sync(shared);
        true
    }

    fn maybe_final_sync(&mut self, shared: &mut Shared<P>) {
        let Some(final_sync) = &mut self.final_sync else {
            return;
        };
        // Writes already assigned may stay pending (they may wait for this very member to
        // make `min_size`): once all of them are durable here, the final copy carries them.
        if final_sync.emitted || shared.local.durable_through() != shared.local.head().version {
            return;
        }
        final_sync.emitted = true;
        shared.actions.push_back(Action::FinalSync {
            member: final_sync.member,
            epoch: shared.epoch(),
            head: shared.local.head(),
        });
    }

    /// The final sync of `member` ended: on success it is in sync at the head it was given
    /// (no write was assigned since); either way new writes resume.
    pub(crate) fn recovery_done(
        &mut self,
        shared: &mut Shared<P>,
        now: Instant,
        member: NodeId,
        epoch: Epoch,
        ok: bool,
    ) {
        if epoch != shared.epoch() || self.final_sync.as_ref().map(|f| f.member) != Some(member) {
            return;
        }
        self.final_sync = None;
        if ok && let Some(m) = self.members.iter_mut().find(|m| m.node == member) {
            tracing::info!(pg = %shared.config.pg, node = %member, head = %shared.local.head(), "member recovered, back in the write path");
            m.sync = MemberSync::InSync;
            // The final copy included every write assigned so far (all durable here, none
            // assigned since): the member holds each pending one durably.
            for op in self.pending.values_mut() {
                op.waiting.retain(|w| w.node != member);
                if !op.acked.contains(&member) {
                    op.acked.push(member);
                }
            }
            self.try_complete_all(shared);
        }
        self.pump(shared, now);
        self.maybe_settle(shared, now);
    }

    fn in_sync_copies(&self) -> usize {
        1 + self
            .members
            .iter()
            .filter(|member| member.sync == MemberSync::InSync)
            .count()
    }

    /// Under a transitional acting set with every member in sync (none peering, recovering
    /// or finishing), asks the shell to settle the PG; repeats every [`SETTLE_RETRY`] while
    /// that holds, since the report may be lost or refused for now.
    fn maybe_settle(&mut self, shared: &mut Shared<P>, now: Instant) {
        let Some(since) = shared.map.settle else {
            self.settle_due = None;
            return;
        };
        let level = !self.peering
            && self.final_sync.is_none()
            && self.members.iter().all(|m| m.sync == MemberSync::InSync);
        if !level {
            self.settle_due = None;
            return;
        }
        if self.settle_due.is_some_and(|due| now < due) {
            return;
        }
        self.settle_due = Some(now + SETTLE_RETRY);
        tracing::info!(pg = %shared.config.pg, %since, "every member in sync: asking to settle");
        shared.actions.push_back(Action::Settle { since });
    }

    fn can_assign(&self, shared: &Shared<P>) -> bool {
        !self.peering
            && self.final_sync.is_none()
            && self.in_sync_copies() >= usize::from(shared.map.min_size)
    }

    fn can_read(&self, shared: &Shared<P>, now: Instant) -> bool {
        !self.peering && shared.lease.valid(now)
    }

    fn enqueue(&mut self, shared: &mut Shared<P>, waiting: Waiting<P>) {
        if self.waiting.len() >= shared.config.limits.ops_waiting_max {
            shared.reply(waiting.token(), Status::Busy);
        } else {
            self.waiting.push_back(waiting);
        }
    }

    pub(crate) fn client_write(
        &mut self,
        shared: &mut Shared<P>,
        now: Instant,
        write: ClientWrite<P>,
    ) {
        if !write.range.is_valid(shared.config.chunk_size_bytes) {
            shared.reply(write.token, Status::OutOfRange);
            return;
        }
        let deadline = now + shared.config.limits.op_timeout;
        if !self.waiting.is_empty() || !self.can_assign(shared) {
            self.enqueue(shared, Waiting::Write(write, deadline));
        } else if self.pending.len() >= shared.config.limits.ops_pending_max {
            shared.reply(write.token, Status::Busy);
        } else {
            self.assign(shared, write, deadline);
        }
    }

    pub(crate) fn client_read(&mut self, shared: &mut Shared<P>, now: Instant, read: ClientRead) {
        if !read.range.is_valid(shared.config.chunk_size_bytes) {
            shared.reply(read.token, Status::OutOfRange);
        } else if self.can_read(shared, now) {
            shared.actions.push_back(Action::LocalRead {
                token: read.token,
                range: read.range,
            });
        } else {
            let deadline = now + shared.config.limits.op_timeout;
            self.enqueue(shared, Waiting::Read(read, deadline));
        }
    }

    pub(crate) fn client_flush(
        &mut self,
        shared: &mut Shared<P>,
        now: Instant,
        flush: ClientFlush,
    ) {
        if self.waiting.is_empty() && !self.peering {
            self.add_barrier(shared, flush.token);
        } else {
            let deadline = now + shared.config.limits.op_timeout;
            self.enqueue(shared, Waiting::Flush(flush, deadline));
        }
    }

    /// Gives `write` the next version: local apply first, then one copy per in-sync member.
    fn assign(&mut self, shared: &mut Shared<P>, write: ClientWrite<P>, deadline: Instant) {
        let epoch = shared.epoch();
        let version = ChunkVersion {
            epoch,
            version: shared.local.head().version + 1,
        };
        shared.apply_local(version, write.range, write.mutation.clone());
        let mut waiting = Vec::with_capacity(self.members.len());
        for member in &self.members {
            if member.sync != MemberSync::InSync {
                continue;
            }
            shared.actions.push_back(Action::Replicate {
                to: member.node,
                epoch,
                version: version.version,
                range: write.range,
                mutation: write.mutation.clone(),
            });
            waiting.push(Waited {
                node: member.node,
                sent_epoch: epoch,
                stale_until: None,
            });
        }
        let op = PendingOp {
            token: write.token,
            write,
            deadline,
            local_durable: false,
            waiting,
            acked: Vec::new(),
        };
        let previous = self.pending.insert(version.version, op);
        assert!(
            previous.is_none(),
            "version {} assigned twice",
            version.version
        );
        self.deadlines.insert((deadline, version.version));
    }

    fn add_barrier(&mut self, shared: &mut Shared<P>, token: Token) {
        self.flushes.push_back((shared.local.head().version, token));
        self.check_flushes(shared);
    }

    /// Answers every flush whose earlier writes have all been answered.
    fn check_flushes(&mut self, shared: &mut Shared<P>) {
        let oldest_pending = self.pending.keys().next().copied();
        while let Some(&(barrier, token)) = self.flushes.front() {
            if oldest_pending.is_some_and(|oldest| oldest <= barrier) {
                break;
            }
            self.flushes.pop_front();
            shared.reply(token, Status::Ok);
        }
    }

    /// Serves queued requests that can now proceed: reads whenever reads are possible, writes
    /// and flushes in arrival order while writes can be assigned.
    fn pump(&mut self, shared: &mut Shared<P>, now: Instant) {
        if self.can_read(shared, now) {
            let mut kept = VecDeque::with_capacity(self.waiting.len());
            for waiting in self.waiting.drain(..) {
                match waiting {
                    Waiting::Read(read, _) => shared.actions.push_back(Action::LocalRead {
                        token: read.token,
                        range: read.range,
                    }),
                    other => kept.push_back(other),
                }
            }
            self.waiting = kept;
        }
        self.pump_writes(shared);
    }

    /// Assigns queued writes and registers queued flushes, in arrival order, while writes can
    /// be assigned and `pending` has room. Called again whenever either may have changed.
    fn pump_writes(&mut self, shared: &mut Shared<P>) {
        loop {
            let ready = match self.waiting.front() {
                Some(Waiting::Write(..)) => {
                    self.can_assign(shared)
                        && self.pending.len() < shared.config.limits.ops_pending_max
                }
                Some(Waiting::Flush(..)) => !self.peering,
                Some(Waiting::Read(..)) | None => false,
            };
            if !ready {
                return;
            }
            match self.waiting.pop_front() {
                Some(Waiting::Write(write, deadline)) => self.assign(shared, write, deadline),
                Some(Waiting::Flush(flush, _)) => self.add_barrier(shared, flush.token),
                Some(Waiting::Read(..)) | None => {}
            }
        }
    }

    fn is_complete(op: &PendingOp<P>, map: &MapView) -> bool {
        let copies = 1 + op.acked.iter().filter(|node| map.contains(**node)).count();
        op.local_durable && op.waiting.is_empty() && copies >= usize::from(map.min_size)
    }

    /// Answers `version` if it is complete.
    fn try_complete(&mut self, shared: &mut Shared<P>, version: u64) {
        let Some(op) = self.pending.get(&version) else {
            return;
        };
        if !Self::is_complete(op, &shared.map) {
            return;
        }
        let deadline = op.deadline;
        if let Some(op) = self.pending.remove(&version) {
            self.deadlines.remove(&(deadline, version));
            shared.reply(op.token, Status::Ok);
        }
        self.check_flushes(shared);
        self.pump_writes(shared);
        self.maybe_final_sync(shared);
    }

    fn try_complete_all(&mut self, shared: &mut Shared<P>) {
        let versions: Vec<u64> = self.pending.keys().copied().collect();
        for version in versions {
            self.try_complete(shared, version);
        }
    }

    /// The local store's durable prefix grew.
    pub(crate) fn local_durable(&mut self, shared: &mut Shared<P>) {
        self.maybe_final_sync(shared);
        let durable = shared.local.durable_through();
        let mut newly = Vec::new();
        for (version, op) in self.pending.range_mut(..=durable) {
            if !op.local_durable {
                op.local_durable = true;
                newly.push(*version);
            }
        }
        for version in newly {
            self.try_complete(shared, version);
        }
    }

    fn resend(shared: &mut Shared<P>, version: u64, op: &mut PendingOp<P>, index: usize) {
        let epoch = shared.epoch();
        let waited = &mut op.waiting[index];
        waited.sent_epoch = epoch;
        waited.stale_until = None;
        shared.actions.push_back(Action::Replicate {
            to: waited.node,
            epoch,
            version,
            range: op.write.range,
            mutation: op.write.mutation.clone(),
        });
    }

    pub(crate) fn replica_reply(
        &mut self,
        shared: &mut Shared<P>,
        now: Instant,
        reply: ReplicaReply,
    ) {
        let Some(op) = self.pending.get_mut(&reply.version) else {
            return;
        };
        let Some(index) = op.waiting.iter().position(|w| w.node == reply.from) else {
            return;
        };
        match reply.status {
            Status::Ok => {
                op.waiting.swap_remove(index);
                op.acked.push(reply.from);
                self.try_complete(shared, reply.version);
            }
            Status::StaleEpoch => {
                let waited = &mut op.waiting[index];
                if reply.epoch <= waited.sent_epoch {
                    // Answer to an older copy; a newer one is on its way.
                } else if reply.epoch <= shared.epoch() {
                    Self::resend(shared, reply.version, op, index);
                } else {
                    waited.stale_until =
                        Some(reply.epoch.max(waited.stale_until.unwrap_or_default()));
                }
            }
            Status::Busy | Status::Timeout => self.schedule_retry(shared, now, reply),
            Status::Unsynced => {
                self.demote(shared, reply.from);
                self.try_complete_all(shared);
            }
            status => {
                tracing::warn!(pg = %shared.config.pg, node = %reply.from, ?status, "replica failed a write");
                self.report(shared, reply.from);
            }
        }
    }

    fn schedule_retry(&mut self, shared: &Shared<P>, now: Instant, reply: ReplicaReply) {
        if let Some(retry) = self.retries.iter_mut().find(|r| r.node == reply.from) {
            retry.up_to = retry.up_to.max(reply.version);
        } else {
            self.retries.push(Retry {
                node: reply.from,
                due: now + shared.config.limits.retry_backoff,
                up_to: reply.version,
            });
        }
    }

    fn report(&mut self, shared: &mut Shared<P>, node: NodeId) {
        if !self.reported.contains(&node) {
            self.reported.push(node);
            shared.actions.push_back(Action::ReportFailure {
                node,
                epoch: shared.epoch(),
            });
        }
    }

    pub(crate) fn peer_lost(&mut self, shared: &mut Shared<P>, node: NodeId) {
        if self.members.iter().any(|member| member.node == node) {
            self.report(shared, node);
        }
    }

    /// The map changed and this node is still the primary.
    pub(crate) fn map_changed(&mut self, shared: &mut Shared<P>, now: Instant, old: &MapView) {
        debug_assert!(shared.map.epoch > old.epoch);
        self.reported.clear();
        // A final sync belongs to its epoch: the shell abandons it, writes resume, and the
        // member's recovery starts again in the new epoch.
        self.final_sync = None;
        let me = shared.config.node;
        for member in std::mem::take(&mut self.members) {
            if shared.map.contains(member.node) {
                self.members.push(member);
                continue;
            }
            tracing::info!(pg = %shared.config.pg, node = %member.node, "member left the acting set");
            for op in self.pending.values_mut() {
                op.waiting.retain(|w| w.node != member.node);
            }
            self.retries.retain(|retry| retry.node != member.node);
        }
        let arrivals: Vec<NodeId> = (shared.map.acting.iter().copied())
            .filter(|node| *node != me && !self.members.iter().any(|m| m.node == *node))
            .collect();
        for node in arrivals {
            tracing::info!(pg = %shared.config.pg, %node, "member joined the acting set; recovering it");
            self.members.push(Member {
                node,
                sync: MemberSync::NeedsRecovery,
                recover_emitted: None,
            });
        }
        let order = &shared.map.acting;
        self.members
            .sort_by_key(|m| order.iter().position(|node| *node == m.node));
        if self.peering {
            // Peer again with the new membership; the old round's result is ignored.
            self.peered_early = None;
            self.start_peering(shared);
        }
        self.request_recovery(shared);
        self.resend_stale(shared);
        self.try_complete_all(shared);
        self.pump(shared, now);
        self.check_flushes(shared);
        // A new transition (or the same one under a new epoch) is reported afresh.
        self.settle_due = None;
        self.maybe_settle(shared, now);
    }

    /// Re-sends copies a member refused as stale, now that our epoch caught up with its own.
    fn resend_stale(&mut self, shared: &mut Shared<P>) {
        let epoch = shared.epoch();
        for (version, op) in self.pending.iter_mut() {
            for index in 0..op.waiting.len() {
                if op.waiting[index]
                    .stale_until
                    .is_some_and(|until| until <= epoch)
                {
                    Self::resend(shared, *version, op, index);
                }
            }
        }
    }

    /// Answers every client request with `status` (this node stops being the primary, or its
    /// store failed). Local applies already submitted still complete through the shared state.
    pub(crate) fn step_down(&mut self, shared: &mut Shared<P>, status: Status) {
        for (_, op) in std::mem::take(&mut self.pending) {
            shared.reply(op.token, status);
        }
        self.deadlines.clear();
        for waiting in std::mem::take(&mut self.waiting) {
            shared.reply(waiting.token(), status);
        }
        for (_, token) in std::mem::take(&mut self.flushes) {
            shared.reply(token, status);
        }
        self.retries.clear();
    }

    pub(crate) fn timeout(&mut self, shared: &mut Shared<P>, now: Instant) {
        if now >= self.serve_after
            && let Some(peered) = self.peered_early.take()
        {
            self.peered(shared, now, *peered);
        }
        while let Some(&(deadline, version)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(op) = self.pending.remove(&version) {
                self.expire(shared, version, op);
            }
        }
        while self.waiting.front().is_some_and(|w| w.deadline() <= now) {
            if let Some(waiting) = self.waiting.pop_front() {
                shared.reply(waiting.token(), Status::Timeout);
            }
        }
        self.run_retries(shared, now);
        self.try_complete_all(shared);
        self.check_flushes(shared);
        self.pump_writes(shared);
        self.maybe_final_sync(shared);
        self.maybe_settle(shared, now);
    }

    /// A write missed its deadline: its outcome is unknown to the client. Members that never
    /// acknowledged it may lack it: they are reported and leave the write path until
    /// recovered (later writes could not be applied in order without it).
    fn expire(&mut self, shared: &mut Shared<P>, version: u64, op: PendingOp<P>) {
        tracing::warn!(pg = %shared.config.pg, version, waiting = op.waiting.len(), "write timed out");
        shared.reply(op.token, Status::Timeout);
        for waited in &op.waiting {
            self.report(shared, waited.node);
            self.demote(shared, waited.node);
        }
    }

    fn run_retries(&mut self, shared: &mut Shared<P>, now: Instant) {
        let (due, later): (Vec<Retry>, Vec<Retry>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|r| r.due <= now);
        self.retries = later;
        for retry in due {
            for (version, op) in self.pending.range_mut(..=retry.up_to) {
                if let Some(index) = op.waiting.iter().position(|w| w.node == retry.node) {
                    Self::resend(shared, *version, op, index);
                }
            }
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let op = self.deadlines.first().map(|(deadline, _)| *deadline);
        let waiting = self.waiting.front().map(Waiting::deadline);
        let retry = self.retries.iter().map(|r| r.due).min();
        let serve = self.peered_early.as_ref().map(|_| self.serve_after);
        [op, waiting, retry, serve, self.settle_due]
            .into_iter()
            .flatten()
            .min()
    }
}

impl<P> Primary<P> {
    pub(crate) fn state(&self, shared: &Shared<P>) -> PgState {
        let in_sync = 1 + self
            .members
            .iter()
            .filter(|m| m.sync == MemberSync::InSync)
            .count();
        if self.peering {
            PgState::Peering
        } else if in_sync < usize::from(shared.map.min_size) {
            PgState::Inactive
        } else if in_sync <= self.members.len() {
            PgState::Recovering
        } else {
            PgState::Active
        }
    }

    pub(crate) fn members(&self) -> Vec<(NodeId, MemberSync)> {
        self.members.iter().map(|m| (m.node, m.sync)).collect()
    }

    pub(crate) fn pending_count(&self) -> usize {
        self.pending.len()
    }
}
