//! The task that runs one PG's [`PgEngine`] on this node: the only owner of the engine, so
//! every input for the PG is serialized without a lock, while PGs run independently.
//!
//! It takes requests from its inbox, map changes from its own view watch, store completions and
//! replica replies from the I/O it started, and the engine's timer; after each input it performs
//! the engine's actions in emission order. A `LocalApply` is *queued* to the store before the
//! next action is performed (the store orders overlapping writes by arrival), and only its
//! completion is awaited concurrently. A `Replicate` call is polled once before the next action,
//! so copies to one replica usually leave in version order (the replica buffers any that do
//! not).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use basalt::ids::{ChunkKey, ChunkVersion, DriveId, Epoch, NodeId};
use basalt::placement::Member;
use basalt::units::BLOCK_SIZE_BYTES;
use basalt::wire::{Bytes, Frame, Header, RequestId, Status};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::pg::{Lease, PgEngine, RecoveryVerdict};
use super::recovery::{RecoveryCtx, Throttle, pg_labels};
use super::recovery_msg::{PushStep, RecoveryReply};
use super::scrub::RepairJob;
use super::service::{MetaReport, PgKey, in_interval, map_view, pg_interval};
use super::stats::ReplicationStats;
use super::sweep;
use super::types::{
    Action, ChunkRange, ClientFlush, ClientRead, ClientWrite, MemberSync, Mutation, Outcome,
    Peered, PgState, ReplicaReply, Replicate, SyncPoint, Token, store_status,
};
use crate::peer::{PeerError, Peers, Reply};
use crate::store::{Store, StoreError};
use crate::view::ClusterView;

/// Work the task started and awaits concurrently.
type Work = Pin<Box<dyn Future<Output = Event> + Send>>;

/// A request for the PG, decoded from a frame by the service.
#[derive(Debug)]
pub(crate) enum Request {
    /// WRITE / TRIM / WRITE_ZEROES from a gateway.
    Write {
        epoch: Epoch,
        range: ChunkRange,
        mutation: Mutation<Bytes>,
    },
    /// READ from a gateway.
    Read { epoch: Epoch, range: ChunkRange },
    /// FLUSH from a gateway.
    Flush { epoch: Epoch },
    /// REPLICATE_* from the primary.
    Replicate {
        from: NodeId,
        epoch: Epoch,
        version: u64,
        range: ChunkRange,
        mutation: Mutation<Bytes>,
    },
    /// A peering or recovery message from the primary.
    Recovery {
        from: NodeId,
        epoch: Epoch,
        op: RecoveryOp,
    },
    /// Rewrite blocks of a chunk, keeping its label, if it is still at the job's label and
    /// nothing is in flight: from this node's scrub (`from` `None`, this node must be the
    /// primary) or the primary's (`Some`, this node must be its replica).
    Repair {
        from: Option<NodeId>,
        epoch: Epoch,
        job: RepairJob,
    },
    /// Delete `chunks` of the PG from `store` (this node's `drive`) if the latest view lists
    /// this node on that drive neither up nor acting: from the node's sweep.
    Sweep {
        epoch: Epoch,
        drive: DriveId,
        store: Arc<Store>,
        chunks: Vec<ChunkKey>,
    },
}

impl Request {
    /// The epoch the request was sent in.
    fn epoch_mut(&mut self) -> &mut Epoch {
        match self {
            Request::Write { epoch, .. }
            | Request::Read { epoch, .. }
            | Request::Flush { epoch }
            | Request::Replicate { epoch, .. }
            | Request::Recovery { epoch, .. }
            | Request::Repair { epoch, .. }
            | Request::Sweep { epoch, .. } => epoch,
        }
    }
}

/// The part of a peering/recovery message the PG task handles (reads bypass it).
#[derive(Debug)]
pub(crate) enum RecoveryOp {
    /// List the PG's chunk labels.
    Labels,
    /// Apply one step of a chunk copy.
    Push { chunk: ChunkKey, step: PushStep },
    /// Our copy matches the primary's history up to `head`.
    SyncPoint { head: ChunkVersion },
}

/// One message in a PG task's inbox: a request and where its answer goes.
#[derive(Debug)]
pub(crate) struct Input {
    pub(crate) request: Request,
    pub(crate) reply: oneshot::Sender<Reply>,
}

/// A request handed back as `MapBehind`, kept until the view reaches its epoch.
#[derive(Debug)]
enum Parked {
    Write(ClientWrite<Bytes>),
    Read(ClientRead),
    Flush(ClientFlush),
    Replicate(Replicate<Bytes>),
    SyncPoint(SyncPoint),
    Recovery {
        token: Token,
        from: NodeId,
        epoch: Epoch,
        op: RecoveryOp,
    },
}

impl Parked {
    fn token(&self) -> Token {
        match self {
            Parked::Write(write) => write.token,
            Parked::Read(read) => read.token,
            Parked::Flush(flush) => flush.token,
            Parked::Replicate(replicate) => replicate.token,
            Parked::SyncPoint(sync) => sync.token,
            Parked::Recovery { token, .. } => *token,
        }
    }
}

/// How long new writes may stay paused for a member's final sync before it is abandoned (and
/// retried after another pass): bounds the pause clients see.
const FINAL_SYNC_WAIT_MAX: Duration = Duration::from_secs(3);

/// Pause before a recovery job starts again after a refused or failed final sync.
const RECOVERY_RESTART_DELAY: Duration = Duration::from_millis(500);

/// What finished among the task's concurrent work.
#[derive(Debug)]
enum Event {
    /// The store finished a `LocalApply`.
    LocalDone {
        version: u64,
        result: Result<(), Status>,
    },
    /// A REPLICATE_* call ended.
    Replied {
        to: NodeId,
        version: u64,
        result: Result<Frame, PeerError>,
    },
    /// Work that answered its client itself (reads), or a cancelled job.
    Nothing,
    /// A peering round finished.
    Peered(Peered),
    /// Recovery passes left little to copy to `member`.
    RecoveryReady { member: NodeId, epoch: Epoch },
    /// The final sync of `member` ended.
    RecoveryDone {
        member: NodeId,
        epoch: Epoch,
        ok: bool,
    },
    /// The bound on a final sync's pause passed.
    FinalSyncTimeout { member: NodeId, epoch: Epoch },
    /// A read met corrupt blocks and was answered from a member: rewrite ours.
    ReadRepair { epoch: Epoch, job: RepairJob },
}

/// Where a member's final sync stands in this task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FinalPhase {
    member: NodeId,
    epoch: Epoch,
    /// The engine emitted `FinalSync` and the job runs.
    started: bool,
}

/// Everything a PG task needs besides its engine.
pub(crate) struct PgTask {
    pub(crate) key: PgKey,
    pub(crate) node: NodeId,
    pub(crate) drive: DriveId,
    pub(crate) engine: PgEngine<Bytes>,
    pub(crate) store: Arc<Store>,
    pub(crate) peers: Arc<Peers>,
    pub(crate) view: watch::Receiver<Arc<ClusterView>>,
    pub(crate) meta_reports: mpsc::Sender<MetaReport>,
    /// How long a `MapBehind` request waits for the view.
    pub(crate) view_wait: Duration,
    /// Deadline of one REPLICATE_* call.
    pub(crate) replicate_timeout: Duration,
    /// The node's recovery bandwidth.
    pub(crate) throttle: Arc<Throttle>,
    /// The node's read lease, if enforced.
    pub(crate) lease: Option<watch::Receiver<Option<Instant>>>,
    /// Where the PG's state and recovery progress are reported.
    pub(crate) stats: Arc<ReplicationStats>,
}

/// The running state of a PG task.
struct Actor {
    task: PgTask,
    view_open: bool,
    responders: HashMap<Token, oneshot::Sender<Reply>>,
    next_token: u64,
    parked: Vec<(Epoch, Instant, Parked)>,
    work: FuturesUnordered<Work>,
    /// Results that were ready at once, fed to the engine after the current actions.
    ready: VecDeque<Event>,
    /// Cancels the peering/recovery jobs of `jobs_epoch` when the epoch moves on.
    jobs: CancellationToken,
    jobs_epoch: Epoch,
    final_phase: Option<FinalPhase>,
    /// The state last reported to `stats`.
    reported_state: Option<PgState>,
}

/// Runs the PG until `cancel` fires or every inbox sender is gone.
pub(crate) async fn run(task: PgTask, inbox: mpsc::Receiver<Input>, cancel: CancellationToken) {
    let mut actor = Actor {
        task,
        view_open: true,
        responders: HashMap::new(),
        next_token: 1,
        parked: Vec::new(),
        work: FuturesUnordered::new(),
        ready: VecDeque::new(),
        jobs: CancellationToken::new(),
        jobs_epoch: Epoch::default(),
        final_phase: None,
        reported_state: None,
    };
    actor.jobs_epoch = actor.task.engine.epoch();
    actor.apply_lease();
    // The view may have moved on between the engine's creation and now.
    actor.task.view.mark_changed();
    actor.run(inbox, cancel).await;
}

impl Actor {
    async fn run(&mut self, mut inbox: mpsc::Receiver<Input>, cancel: CancellationToken) {
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            self.perform().await;
            let state = self.task.engine.state();
            if self.reported_state != Some(state) {
                self.reported_state = Some(state);
                self.task.stats.set_state(self.task.key, state);
            }
            let next = self.next_deadline();
            if next != armed {
                if let Some(at) = next {
                    sleep.as_mut().reset(tokio::time::Instant::from_std(at));
                }
                armed = next;
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                changed = self.task.view.changed(), if self.view_open => match changed {
                    Ok(()) => self.apply_view(),
                    Err(_) => self.view_open = false,
                },
                changed = lease_changed(self.task.lease.as_mut()) => match changed {
                    Ok(()) => self.apply_lease(),
                    Err(_) => self.task.lease = None,
                },
                Some(event) = self.work.next(), if !self.work.is_empty() => match event {
                    Event::ReadRepair { epoch, job } => self.repair(None, epoch, job, None).await,
                    event => self.handle_event(event),
                },
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    self.expire(Instant::now());
                }
                input = inbox.recv() => match input {
                    Some(Input { request: Request::Repair { from, epoch, job }, reply }) => {
                        self.repair(from, epoch, job, Some(reply)).await;
                    }
                    Some(Input { request: Request::Sweep { drive, store, chunks, .. }, reply }) => {
                        let answer = self.sweep(drive, &store, &chunks).await;
                        let _ = reply.send(answer);
                    }
                    Some(input) => self.accept(input),
                    None => return,
                },
            }
        }
    }

    /// Hands the node's current lease to the engine.
    fn apply_lease(&mut self) {
        if let Some(lease) = self.task.lease.as_mut() {
            let until = *lease.borrow_and_update();
            self.task
                .engine
                .handle_lease(Instant::now(), Lease::until(until));
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let parked = self.parked.iter().map(|(_, deadline, _)| *deadline).min();
        [self.task.engine.poll_timeout(), parked]
            .into_iter()
            .flatten()
            .min()
    }

    /// Feeds the latest view's map for this PG to the engine and re-submits what waited for it.
    fn apply_view(&mut self) {
        let view = Arc::clone(&self.task.view.borrow_and_update());
        let map = map_view(&view, self.task.key);
        let now = Instant::now();
        if let Err(error) = self.task.engine.handle_map(now, map) {
            tracing::error!(pg = %self.task.key, %error, "refusing a malformed map");
        }
        let epoch = self.task.engine.epoch();
        if epoch != self.jobs_epoch {
            // Peering and recovery belong to their epoch; the engine asks again in this one.
            self.jobs.cancel();
            self.jobs = CancellationToken::new();
            self.jobs_epoch = epoch;
            self.final_phase = None;
            self.task.stats.clear_remaining(self.task.key);
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(wanted, _, _)| *wanted <= epoch);
        self.parked = later;
        for (_, _, request) in due {
            self.submit(now, request);
        }
    }

    /// The engine's timer fired, or a parked request's bound passed.
    fn expire(&mut self, now: Instant) {
        self.task.engine.handle_timeout(now);
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(_, deadline, _)| *deadline <= now);
        self.parked = kept;
        let epoch = self.task.engine.epoch();
        for (wanted, _, request) in expired {
            tracing::debug!(pg = %self.task.key, %wanted, %epoch, "no map for the request's epoch in time");
            self.answer(request.token(), error_reply(Status::Timeout, epoch));
        }
    }

    /// `epoch` as the engine compares it: the start of the PG's interval when the message
    /// belongs to the current one (see [`in_interval`]). Every request's epoch goes through
    /// here on its way in; the latest view is at least as new as the one the service checked
    /// the request against.
    fn interval_epoch(&self, epoch: Epoch) -> Epoch {
        let view = self.task.view.borrow();
        in_interval(epoch, pg_interval(&view, self.task.key), view.epoch())
    }

    fn accept(&mut self, mut input: Input) {
        let token = Token(self.next_token);
        self.next_token += 1;
        self.responders.insert(token, input.reply);
        let epoch = input.request.epoch_mut();
        *epoch = self.interval_epoch(*epoch);
        let parked = match input.request {
            Request::Write {
                epoch,
                range,
                mutation,
            } => Parked::Write(ClientWrite {
                token,
                epoch,
                range,
                mutation,
            }),
            Request::Read { epoch, range } => Parked::Read(ClientRead {
                token,
                epoch,
                range,
            }),
            Request::Flush { epoch } => Parked::Flush(ClientFlush { token, epoch }),
            Request::Replicate {
                from,
                epoch,
                version,
                range,
                mutation,
            } => Parked::Replicate(Replicate {
                token,
                from,
                epoch,
                version,
                range,
                mutation,
            }),
            Request::Recovery {
                from,
                epoch,
                op: RecoveryOp::SyncPoint { head },
            } => Parked::SyncPoint(SyncPoint {
                token,
                from,
                epoch,
                head,
            }),
            Request::Recovery { from, epoch, op } => Parked::Recovery {
                token,
                from,
                epoch,
                op,
            },
            Request::Repair { .. } | Request::Sweep { .. } => {
                // Taken by the run loop before `accept`.
                debug_assert!(false, "repair or sweep request reached accept");
                self.answer(
                    token,
                    error_reply(Status::Invalid, self.task.engine.epoch()),
                );
                return;
            }
        };
        self.submit(Instant::now(), parked);
    }

    /// Hands a request to the engine; parks it if the engine's map is behind the request.
    fn submit(&mut self, now: Instant, request: Parked) {
        let engine = &mut self.task.engine;
        let behind = match request {
            Parked::Write(write) => match engine.handle_client_write(now, write) {
                Outcome::Accepted => None,
                Outcome::MapBehind { wanted, request } => Some((wanted, Parked::Write(request))),
            },
            Parked::Read(read) => match engine.handle_client_read(now, read) {
                Outcome::Accepted => None,
                Outcome::MapBehind { wanted, request } => Some((wanted, Parked::Read(request))),
            },
            Parked::Flush(flush) => match engine.handle_client_flush(now, flush) {
                Outcome::Accepted => None,
                Outcome::MapBehind { wanted, request } => Some((wanted, Parked::Flush(request))),
            },
            Parked::Replicate(replicate) => match engine.handle_replicate(now, replicate) {
                Outcome::Accepted => None,
                Outcome::MapBehind { wanted, request } => {
                    Some((wanted, Parked::Replicate(request)))
                }
            },
            Parked::SyncPoint(sync) => match engine.handle_sync_point(now, sync) {
                Outcome::Accepted => None,
                Outcome::MapBehind { wanted, request } => {
                    Some((wanted, Parked::SyncPoint(request)))
                }
            },
            Parked::Recovery {
                token,
                from,
                epoch,
                op,
            } => {
                let pushing = matches!(op, RecoveryOp::Push { .. });
                match engine.handle_recovery_request(from, epoch, pushing) {
                    RecoveryVerdict::Allow => {
                        self.serve_recovery(token, op);
                        None
                    }
                    RecoveryVerdict::Refuse(status) => {
                        let reply = error_reply(status, engine.epoch());
                        self.answer(token, reply);
                        None
                    }
                    RecoveryVerdict::Behind(wanted) => Some((
                        wanted,
                        Parked::Recovery {
                            token,
                            from,
                            epoch,
                            op,
                        },
                    )),
                }
            }
        };
        if let Some((wanted, request)) = behind {
            self.parked
                .push((wanted, now + self.task.view_wait, request));
        }
    }

    fn handle_event(&mut self, event: Event) {
        let now = Instant::now();
        let engine = &mut self.task.engine;
        match event {
            Event::LocalDone { version, result } => engine.handle_local_done(now, version, result),
            Event::Replied {
                to,
                version,
                result: Ok(frame),
            } => engine.handle_replica_reply(
                now,
                ReplicaReply {
                    version,
                    from: to,
                    status: frame.header.status,
                    epoch: frame.header.epoch,
                },
            ),
            Event::Replied {
                to,
                version,
                result: Err(error),
            } => {
                let status = match &error {
                    // No reply in time: flow control, re-sent after the back-off.
                    PeerError::Timeout { .. } => Status::Timeout,
                    // Unreachable or the connection broke: report the member, and re-send
                    // after the back-off in case it is only the connection.
                    PeerError::ConnectionLost { .. } => {
                        engine.handle_peer_lost(to);
                        Status::Timeout
                    }
                    error if error.is_unsent() => {
                        engine.handle_peer_lost(to);
                        Status::Timeout
                    }
                    // A request we could not build: our bug, but the member gets no copy.
                    _ => Status::IoError,
                };
                tracing::debug!(pg = %self.task.key, %to, version, %error, "replicate call failed");
                let epoch = engine.epoch();
                engine.handle_replica_reply(
                    now,
                    ReplicaReply {
                        version,
                        from: to,
                        status,
                        epoch,
                    },
                );
            }
            Event::Nothing => {}
            event => self.handle_recovery_event(now, event),
        }
    }

    /// Peering and recovery job results.
    fn handle_recovery_event(&mut self, now: Instant, event: Event) {
        let engine = &mut self.task.engine;
        match event {
            Event::Peered(peered) => engine.handle_peered(now, peered),
            Event::RecoveryReady { member, epoch } => {
                if engine.handle_recovery_ready(now, member, epoch) {
                    self.final_phase = Some(FinalPhase {
                        member,
                        epoch,
                        started: false,
                    });
                    self.work.push(Box::pin(async move {
                        tokio::time::sleep(FINAL_SYNC_WAIT_MAX).await;
                        Event::FinalSyncTimeout { member, epoch }
                    }));
                } else {
                    self.restart_recovery(member, epoch);
                }
            }
            Event::FinalSyncTimeout { member, epoch } => {
                let waiting = FinalPhase {
                    member,
                    epoch,
                    started: false,
                };
                if self.final_phase == Some(waiting) {
                    tracing::info!(pg = %self.task.key, %member, "writes did not drain in time for the final sync; another pass first");
                    self.final_phase = None;
                    engine.handle_recovery_done(now, member, epoch, false);
                    self.restart_recovery(member, epoch);
                }
            }
            Event::RecoveryDone { member, epoch, ok } => {
                self.final_phase = None;
                engine.handle_recovery_done(now, member, epoch, ok);
                if !ok {
                    self.restart_recovery(member, epoch);
                }
            }
            Event::LocalDone { .. }
            | Event::Replied { .. }
            | Event::Nothing
            | Event::ReadRepair { .. } => {}
        }
    }

    /// The context recovery jobs of the current epoch run with.
    fn recovery_ctx(&self) -> RecoveryCtx {
        RecoveryCtx {
            key: self.task.key,
            store: Arc::clone(&self.task.store),
            peers: Arc::clone(&self.task.peers),
            view: Arc::clone(&self.task.view.borrow()),
            chunk_size_bytes: self.task.store.chunk_size_bytes(),
            throttle: Arc::clone(&self.task.throttle),
            stats: Arc::clone(&self.task.stats),
            call_timeout: self.task.replicate_timeout,
            cancel: self.jobs.clone(),
        }
    }

    /// Starts recovery passes for `member` (after `delay`), cancelled with the epoch.
    fn start_recovery(&mut self, member: NodeId, epoch: Epoch, delay: Duration) {
        let ctx = self.recovery_ctx();
        self.work.push(Box::pin(async move {
            tokio::select! {
                () = ctx.cancel.cancelled() => return Event::Nothing,
                () = tokio::time::sleep(delay) => {}
            }
            if ctx.recover(member, epoch).await {
                Event::RecoveryReady { member, epoch }
            } else {
                Event::Nothing
            }
        }));
    }

    /// Starts recovery of `member` again if it still needs it in this epoch.
    fn restart_recovery(&mut self, member: NodeId, epoch: Epoch) {
        let needs = self
            .task
            .engine
            .members()
            .iter()
            .any(|(node, sync)| *node == member && *sync == MemberSync::NeedsRecovery);
        if needs && epoch == self.task.engine.epoch() {
            self.start_recovery(member, epoch, RECOVERY_RESTART_DELAY);
        }
    }

    /// Serves a peering query or recovery push the engine allowed.
    fn serve_recovery(&mut self, token: Token, op: RecoveryOp) {
        let Some(responder) = self.responders.remove(&token) else {
            debug_assert!(false, "recovery request for an unknown token");
            return;
        };
        let store = Arc::clone(&self.task.store);
        let view = Arc::clone(&self.task.view.borrow());
        let key = self.task.key;
        let epoch = self.task.engine.epoch();
        self.work.push(Box::pin(async move {
            let result: Result<Bytes, StoreError> = async {
                match op {
                    RecoveryOp::Labels => {
                        let chunks = store.list_chunks().await?;
                        let labels = pg_labels(&view, key, &chunks).into_iter().collect();
                        let reply = RecoveryReply::Labels(labels);
                        Ok(postcard::to_stdvec(&reply)
                            .map(Bytes::from)
                            .unwrap_or_default())
                    }
                    RecoveryOp::Push { chunk, step } => {
                        match step {
                            PushStep::Delete => store.delete_chunk(chunk).await?,
                            PushStep::Write {
                                offset,
                                label,
                                data,
                            } => store.write(chunk, offset, Bytes::from(data), label).await?,
                            PushStep::Unmap { offset, len, label } => {
                                store.trim(chunk, offset, len, label).await?
                            }
                        }
                        Ok(Bytes::new())
                    }
                    // Handled by the engine.
                    RecoveryOp::SyncPoint { .. } => Ok(Bytes::new()),
                }
            }
            .await;
            let reply = match result {
                Ok(payload) => Reply::ok(epoch, payload),
                Err(error) => {
                    tracing::warn!(pg = %key, %error, "recovery request failed in the store");
                    error_reply(store_status(&error), epoch)
                }
            };
            // The primary may be gone; nothing to do then.
            let _ = responder.send(reply);
            Event::Nothing
        }));
    }

    /// Performs the engine's actions in emission order, then feeds results that were ready at
    /// once (and the actions they cause), until both are exhausted.
    async fn perform(&mut self) {
        loop {
            while let Some(action) = self.task.engine.poll_action() {
                self.perform_action(action).await;
            }
            match self.ready.pop_front() {
                Some(event) => self.handle_event(event),
                None => return,
            }
        }
    }

    async fn perform_action(&mut self, action: Action<Bytes>) {
        match action {
            Action::LocalApply {
                version,
                range,
                mutation,
            } => self.apply_local(version, range, mutation).await,
            Action::Replicate {
                to,
                epoch,
                version,
                range,
                mutation,
            } => self.replicate(to, epoch, version, range, mutation).await,
            Action::LocalRead { token, range } => self.read_local(token, range),
            Action::Reply {
                token,
                status,
                epoch,
            } => {
                let reply = if status == Status::Ok {
                    Reply::ok(epoch, Bytes::new())
                } else {
                    error_reply(status, epoch)
                };
                self.answer(token, reply);
            }
            Action::ReportFailure { node, epoch } => {
                tracing::warn!(pg = %self.task.key, %node, %epoch, "reporting a failed member");
                self.report(MetaReport::Peer {
                    reporter: self.task.node,
                    pg: self.task.key,
                    node,
                    epoch,
                });
            }
            action @ (Action::Peer { .. } | Action::Recover { .. } | Action::FinalSync { .. }) => {
                self.perform_recovery_action(action);
            }
            Action::Settle { since } => self.report(MetaReport::Settle {
                pg: self.task.key,
                since,
            }),
            Action::StopServing { status } => {
                tracing::error!(pg = %self.task.key, drive = %self.task.drive, ?status, "PG stopped on this node: local store failed");
                self.report(MetaReport::Drive {
                    reporter: self.task.node,
                    pg: self.task.key,
                    drive: self.task.drive,
                    status,
                });
            }
        }
    }

    /// Starts the job a peering or recovery action asks for.
    fn perform_recovery_action(&mut self, action: Action<Bytes>) {
        match action {
            Action::Peer { epoch, members } => {
                let ctx = self.recovery_ctx();
                tracing::info!(pg = %self.task.key, %epoch, ?members, "peering");
                self.work.push(Box::pin(async move {
                    match ctx.peer(epoch, members).await {
                        Some(peered) => Event::Peered(peered),
                        None => Event::Nothing,
                    }
                }));
            }
            Action::Recover { member, epoch } => {
                tracing::info!(pg = %self.task.key, %member, %epoch, "recovering member");
                self.start_recovery(member, epoch, Duration::ZERO);
            }
            Action::FinalSync {
                member,
                epoch,
                head,
            } => {
                self.final_phase = Some(FinalPhase {
                    member,
                    epoch,
                    started: true,
                });
                let ctx = self.recovery_ctx();
                self.work.push(Box::pin(async move {
                    let ok = ctx.final_sync(member, epoch, head).await;
                    Event::RecoveryDone { member, epoch, ok }
                }));
            }
            _ => debug_assert!(false, "not a recovery action"),
        }
    }

    /// Queues a mutation to the store before the next action runs (this is what fixes the
    /// apply order), and awaits its completion concurrently.
    async fn apply_local(
        &mut self,
        version: ChunkVersion,
        range: ChunkRange,
        mutation: Mutation<Bytes>,
    ) {
        let store = &self.task.store;
        let (chunk, offset) = (range.chunk, range.offset);
        let submitted = match mutation {
            Mutation::Write(data) => store.submit_write(chunk, offset, data, version).await,
            Mutation::Trim | Mutation::Zeroes => {
                store.submit_unmap(chunk, offset, range.len, version).await
            }
        };
        let version = version.version;
        match submitted {
            Ok(submitted) => self.work.push(Box::pin(async move {
                let result = submitted.done().await.map_err(|e| store_status(&e));
                Event::LocalDone { version, result }
            })),
            Err(error) => {
                let result = Err(store_status(&error));
                self.ready.push_back(Event::LocalDone { version, result });
            }
        }
    }

    /// Reads from the store; the read answers its client itself. A read that meets a corrupt
    /// block is answered from an in-sync member, and our bad blocks are rewritten afterwards
    /// (`Event::ReadRepair`).
    fn read_local(&mut self, token: Token, range: ChunkRange) {
        let Some(responder) = self.responders.remove(&token) else {
            debug_assert!(false, "read for an unknown token");
            return;
        };
        let store = Arc::clone(&self.task.store);
        let epoch = self.task.engine.epoch();
        let members: Vec<NodeId> = self
            .task
            .engine
            .members()
            .into_iter()
            .filter(|(_, sync)| *sync == MemberSync::InSync)
            .map(|(node, _)| node)
            .collect();
        let ctx = self.recovery_ctx();
        self.work.push(Box::pin(async move {
            let (reply, event) = match store.read(range.chunk, range.offset, range.len).await {
                Ok(data) => (Reply::ok(epoch, data), Event::Nothing),
                Err(error @ StoreError::Corrupt { .. }) => {
                    tracing::warn!(pg = %ctx.key, chunk = %range.chunk, %error, "corrupt block in a read; reading from another member");
                    match ctx.read_repair(epoch, range, &members).await {
                        Some((data, job)) => (
                            Reply::ok(epoch, data),
                            job.map_or(Event::Nothing, |job| Event::ReadRepair { epoch, job }),
                        ),
                        None => (error_reply(store_status(&error), epoch), Event::Nothing),
                    }
                }
                Err(error) => (error_reply(store_status(&error), epoch), Event::Nothing),
            };
            // The client may be gone; nothing to do then.
            let _ = responder.send(reply);
            event
        }));
    }

    /// Rewrites the blocks of `job` keeping the chunk's label, only if this node may (the
    /// primary for its own scrub and read repair, the primary's replica for the primary's
    /// scrub), the chunk is still at the job's label, and nothing is in flight for the PG
    /// here: then no write newer than the good copy can be overwritten. The writes are queued
    /// before anything else the engine submits; `reply` gets `Ok` once they are durable, or
    /// why not (`Busy`: try later).
    async fn repair(
        &mut self,
        from: Option<NodeId>,
        epoch: Epoch,
        job: RepairJob,
        reply: Option<oneshot::Sender<Reply>>,
    ) {
        let own = self.task.engine.epoch();
        let epoch = self.interval_epoch(epoch);
        if let Some(status) = self.repair_refusal(from, epoch, &job).await {
            tracing::debug!(pg = %self.task.key, chunk = %job.chunk, ?status, "repair not applied");
            if let Some(reply) = reply {
                let _ = reply.send(error_reply(status, own));
            }
            return;
        }
        let store = Arc::clone(&self.task.store);
        let mut queued = Vec::with_capacity(job.fixes.len());
        let mut failed = None;
        for fix in job.fixes {
            let offset = fix.block * BLOCK_SIZE_BYTES;
            let submitted = match fix.data {
                Some(data) => {
                    store
                        .submit_write(job.chunk, offset, Bytes::from(data), job.label)
                        .await
                }
                None => {
                    store
                        .submit_unmap(job.chunk, offset, BLOCK_SIZE_BYTES, job.label)
                        .await
                }
            };
            match submitted {
                Ok(submitted) => queued.push(submitted),
                Err(error) => {
                    failed = Some(store_status(&error));
                    break;
                }
            }
        }
        let (key, chunk) = (self.task.key, job.chunk);
        let stats = Arc::clone(&self.task.stats);
        let read_repair = reply.is_none();
        self.work.push(Box::pin(async move {
            let blocks = queued.len() as u64;
            let mut status = failed;
            for submitted in queued {
                if let Err(error) = submitted.done().await {
                    status = Some(store_status(&error));
                }
            }
            match status {
                None => {
                    tracing::info!(pg = %key, %chunk, blocks, "repaired corrupt or differing blocks");
                    if read_repair {
                        stats.scrub.add_read_repair(blocks);
                    }
                }
                Some(status) => {
                    tracing::warn!(pg = %key, %chunk, ?status, "repair write failed");
                }
            }
            if let Some(reply) = reply {
                let answer = match status {
                    None => Reply::ok(own, Bytes::new()),
                    Some(status) => error_reply(status, own),
                };
                let _ = reply.send(answer);
            }
            Event::Nothing
        }));
    }

    /// Deletes `chunks` (of this PG, on `drive`) if the latest view lists this node on that
    /// drive neither up nor acting. The task does nothing else meanwhile, so a map that brings
    /// the node back into the PG is applied after the deletions: a new primary's peering then
    /// lists what is really here. Answers `Ok` with the count deleted (u64 LE), `Busy` when
    /// the PG lists the node again.
    async fn sweep(&mut self, drive: DriveId, store: &Store, chunks: &[ChunkKey]) -> Reply {
        if self.task.view.has_changed().unwrap_or(false) {
            self.apply_view();
        }
        let view = Arc::clone(&self.task.view.borrow());
        let key = self.task.key;
        let own = self.task.engine.epoch();
        let me = Member {
            node: self.task.node,
            drive,
        };
        let serving = drive == self.task.drive && self.task.engine.state() != PgState::Stray;
        if serving || sweep::lists(&view, key, me) {
            return error_reply(Status::Busy, own);
        }
        match sweep::delete_chunks(store, &view, key, chunks).await {
            (deleted, None) => Reply::ok(own, Bytes::copy_from_slice(&deleted.to_le_bytes())),
            (_, Some((chunk, error))) => {
                tracing::warn!(pg = %key, %chunk, %error, "deleting a stray copy failed");
                error_reply(store_status(&error), own)
            }
        }
    }

    /// Why `job` may not be applied now (`None`: it may).
    async fn repair_refusal(
        &mut self,
        from: Option<NodeId>,
        epoch: Epoch,
        job: &RepairJob,
    ) -> Option<Status> {
        let engine = &mut self.task.engine;
        let own = engine.epoch();
        let refused = match from {
            Some(node) => match engine.handle_recovery_request(node, epoch, false) {
                RecoveryVerdict::Allow => None,
                RecoveryVerdict::Refuse(status) => Some(status),
                RecoveryVerdict::Behind(_) => Some(Status::Timeout),
            },
            None if epoch != own => Some(Status::StaleEpoch),
            None => {
                let primary = engine.map().primary() == Some(self.task.node);
                let serving = matches!(
                    engine.state(),
                    PgState::Active | PgState::Degraded | PgState::Recovering
                );
                (!primary || !serving).then_some(Status::NotPrimary)
            }
        };
        let quiet = engine.durable_through() == engine.head().version;
        if let Some(status) = refused.or((!quiet).then_some(Status::Busy)) {
            return Some(status);
        }
        match self.task.store.chunk_version(job.chunk).await {
            Ok(Some(label)) if label == job.label => None,
            Ok(_) => Some(Status::Busy),
            Err(error) => Some(store_status(&error)),
        }
    }

    /// Starts a REPLICATE_* call and polls it once, so it is queued on the connection before
    /// the next action runs (copies to one member leave in version order when the connection
    /// is up).
    async fn replicate(
        &mut self,
        to: NodeId,
        epoch: Epoch,
        version: u64,
        range: ChunkRange,
        mutation: Mutation<Bytes>,
    ) {
        let mut header = Header::new(mutation.kind().replicate_opcode(), RequestId(0));
        header.pg = self.task.key.pg;
        header.epoch = epoch;
        header.pg_version = version;
        header.chunk = range.chunk;
        header.offset_bytes = range.offset;
        header.length_bytes = range.len;
        let payload = match mutation {
            Mutation::Write(data) => data,
            Mutation::Trim | Mutation::Zeroes => Bytes::new(),
        };
        let peers = Arc::clone(&self.task.peers);
        let timeout = self.task.replicate_timeout;
        let mut call: Work = Box::pin(async move {
            let result = match peers.client(to).await {
                Ok(client) => client.call_with_timeout(header, payload, timeout).await,
                Err(error) => Err(error),
            };
            if let Err(PeerError::Backoff { retry_in, .. }) = &result {
                // Nothing was sent and nothing can be until the pool dials again: hold the
                // failure until then so the engine's re-send does not spin.
                tokio::time::sleep((*retry_in).min(timeout)).await;
            }
            Event::Replied {
                to,
                version,
                result,
            }
        });
        let polled = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        match polled {
            Poll::Ready(event) => self.ready.push_back(event),
            Poll::Pending => self.work.push(call),
        }
    }

    fn answer(&mut self, token: Token, reply: Reply) {
        match self.responders.remove(&token) {
            // The client may be gone (connection closed); nothing to do then.
            Some(responder) => drop(responder.send(reply)),
            None => tracing::warn!(pg = %self.task.key, ?token, "answer for an unknown request"),
        }
    }

    fn report(&self, report: MetaReport) {
        // Never block the PG on the reporter: the engine reports again in the next epoch, and
        // the metadata service's heartbeats detect a dead node anyway.
        if let Err(error) = self.task.meta_reports.try_send(report) {
            tracing::warn!(pg = %self.task.key, %error, "report to the metadata service dropped");
        }
    }
}

/// Resolves when the lease changes; never when leases are not enforced.
async fn lease_changed(
    lease: Option<&mut watch::Receiver<Option<Instant>>>,
) -> Result<(), watch::error::RecvError> {
    match lease {
        Some(lease) => lease.changed().await,
        None => std::future::pending().await,
    }
}

/// A failed reply: `status` (not `Ok`) and this node's epoch, no payload.
pub(crate) fn error_reply(status: Status, epoch: Epoch) -> Reply {
    Reply {
        status,
        epoch,
        pg_version: 0,
        payload: Bytes::new(),
    }
}
