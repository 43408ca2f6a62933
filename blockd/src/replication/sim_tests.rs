//! Deterministic simulation: one PG on three nodes, engines wired by an in-memory network.
//!
//! Goal: under reordered and delayed messages, store completions in random order, maps that
//! reach each node at different times, replicas dropped and re-added, stale gateways and
//! MapBehind re-submissions, the engine keeps its safety invariants:
//! - every node submits versions to its store strictly in order, and a replica's version `v`
//!   is the primary's version `v` (same range, kind and payload);
//! - a write answered `Ok` is durable (with every earlier version) on the primary, on every
//!   member the primary counts as in sync at that moment, and on at least `min_size` nodes;
//! - every request gets exactly one answer, and a flush is answered only after every write
//!   accepted before it;
//! - after the fault phase drains, every in-sync member holds the primary's whole sequence.
//!
//! Method: a seeded [`SimRng`] drives everything; time is virtual (milliseconds after a fixed
//! base instant) and jumps to the next event or engine timer. Node 1 stays primary; peering
//! (at start) and recovery of returning replicas are simulated by the harness (copying the
//! primary's sequence while its writes are paused). Set `REPLICATION_SIM_SEED` to replay one
//! seed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use basalt::ids::{ChunkKey, ChunkVersion, Epoch, NodeId, PgId, VolumeId};
use basalt::wire::Status;

use super::*;
use crate::store::engine::sim::SimRng;

const SEEDS: u64 = 200;
const OPS_PER_SEED: u64 = 300;
const NODE_COUNT: usize = 3;
const CHUNK_SIZE: u32 = 64 * 1024;
const CHUNK_COUNT: u64 = 3;
/// Client requests and map changes happen in this window; afterwards the system drains.
const FAULT_WINDOW_MS: u64 = 3000;
const MESSAGE_DELAY_MS_MAX: u64 = 30;
/// Longer than the gap timeout, shorter than the op timeout.
const SLOW_MESSAGE_DELAY_MS_MAX: u64 = 1000;
const STORE_DELAY_MS_MAX: u64 = 20;
const MAP_DELAY_MS_MAX: u64 = 50;
const STEPS_MAX: usize = 1_000_000;

fn limits() -> Limits {
    Limits {
        op_timeout: Duration::from_millis(2000),
        gap_timeout: Duration::from_millis(400),
        retry_backoff: Duration::from_millis(20),
        ..Limits::default()
    }
}

fn node_id(index: usize) -> NodeId {
    NodeId(index as u64 + 1)
}

fn index_of(node: NodeId) -> usize {
    (node.0 - 1) as usize
}

#[derive(Debug)]
enum Msg {
    Replicate(Replicate<u64>),
    Reply(ReplicaReply),
}

#[derive(Debug)]
enum Event {
    Client,
    Deliver {
        to: usize,
        msg: Msg,
    },
    StoreDone {
        node: usize,
        version: u64,
    },
    Map {
        node: usize,
        map: MapView,
    },
    MetaRandom,
    MetaDown(NodeId),
    /// The primary's peering round in `epoch` completes.
    Peer {
        epoch: Epoch,
        members: Vec<NodeId>,
    },
    /// A recovery job starts copying to `member` (it stops applying writes).
    Recover {
        member: usize,
        epoch: Epoch,
    },
    /// The recovery job's passes are done.
    RecoveryReady {
        member: usize,
        epoch: Epoch,
    },
    /// The final copy to `member` (the primary's writes are paused).
    FinalCopy {
        member: usize,
        epoch: Epoch,
        head: ChunkVersion,
    },
}

#[derive(Debug)]
enum Request {
    Write(ClientWrite<u64>),
    Read(ClientRead),
    Flush(ClientFlush),
    Replicate(Replicate<u64>),
}

#[derive(Debug, Clone)]
enum TokenKind {
    Write {
        id: Option<u64>,
    },
    Read,
    Flush {
        before: BTreeSet<u64>,
    },
    Replicate {
        from: NodeId,
        version: u64,
    },
    /// A sync point sent during peering (`final_sync: None`) or a final sync.
    Sync {
        final_sync: Option<Epoch>,
    },
}

/// What a store holds: the sequence submitted, and which versions the shell reported durable.
type Applied = (ChunkRange, OpKind, Option<u64>);

struct SimNode {
    engine: PgEngine<u64>,
    submitted: Vec<Applied>,
    last_label: ChunkVersion,
    durable: BTreeSet<u64>,
    durable_prefix: u64,
    tokens: HashMap<u64, TokenKind>,
    open_writes: BTreeSet<u64>,
    parked: Vec<(Epoch, Request)>,
}

#[derive(Default, Debug)]
struct Stats {
    writes_acked: u64,
    writes_failed: u64,
    reads: u64,
    flushes_ok: u64,
    map_behind: u64,
    write_failures: BTreeMap<String, u64>,
}

struct Sim {
    rng: SimRng,
    base: Instant,
    now_ms: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    nodes: Vec<SimNode>,
    meta: MapView,
    up: BTreeSet<usize>,
    history: Vec<Applied>,
    write_version: HashMap<u64, u64>,
    next_token: u64,
    next_id: u64,
    clients_left: u64,
    stats: Stats,
    /// Members that accepted a peering sync point in the current round.
    synced_now: Vec<usize>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = SimRng::new(seed);
        let base = Instant::now();
        let min_size = if rng.chance(1, 4) { 1 } else { 2 };
        let meta = MapView {
            epoch: Epoch(1),
            acting: (0..NODE_COUNT).map(node_id).collect(),
            min_size,
            settle: None,
        };
        let nodes = (0..NODE_COUNT)
            .map(|index| {
                let config = PgConfig {
                    pg: PgId(0),
                    node: node_id(index),
                    chunk_size_bytes: CHUNK_SIZE,
                    limits: limits(),
                };
                let head = ChunkVersion::default();
                SimNode {
                    engine: PgEngine::new(config, meta.clone(), head, base).unwrap(),
                    submitted: Vec::new(),
                    last_label: head,
                    durable: BTreeSet::new(),
                    durable_prefix: 0,
                    tokens: HashMap::new(),
                    open_writes: BTreeSet::new(),
                    parked: Vec::new(),
                }
            })
            .collect();
        let mut sim = Self {
            rng,
            base,
            now_ms: 0,
            seq: 0,
            events: BTreeMap::new(),
            nodes,
            meta,
            up: (0..NODE_COUNT).collect(),
            history: Vec::new(),
            write_version: HashMap::new(),
            next_token: 1,
            next_id: 1,
            clients_left: OPS_PER_SEED,
            stats: Stats::default(),
            synced_now: Vec::new(),
        };
        sim.process(0);
        for _ in 0..OPS_PER_SEED {
            let at = sim.rng.below(FAULT_WINDOW_MS);
            sim.schedule_at(at, Event::Client);
        }
        let mut at = 0;
        while at < FAULT_WINDOW_MS {
            at += 100 + sim.rng.below(300);
            sim.schedule_at(at, Event::MetaRandom);
        }
        sim
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms)
    }

    fn schedule_at(&mut self, at_ms: u64, event: Event) {
        self.seq += 1;
        self.events.insert((at_ms, self.seq), event);
    }

    fn schedule_in(&mut self, delay_ms_max: u64, event: Event) {
        let at = self.now_ms + self.rng.below(delay_ms_max + 1);
        self.schedule_at(at, event);
    }

    /// Runs until no event and no timer is left.
    fn run(&mut self) {
        for _ in 0..STEPS_MAX {
            let timer = (0..NODE_COUNT)
                .filter_map(|i| self.nodes[i].engine.poll_timeout().map(|t| (t, i)))
                .min();
            let event_at = self.events.keys().next().map(|(at, _)| *at);
            match (timer, event_at) {
                (None, None) => return,
                (Some((deadline, index)), at)
                    if at.is_none_or(|at| deadline < self.base + Duration::from_millis(at)) =>
                {
                    let deadline_ms = deadline.duration_since(self.base).as_millis() as u64;
                    self.now_ms = self.now_ms.max(deadline_ms);
                    let now = self.now();
                    self.nodes[index].engine.handle_timeout(now);
                    self.process(index);
                }
                _ => {
                    let Some(((at, _), event)) = self.events.pop_first() else {
                        unreachable!("checked above");
                    };
                    self.now_ms = at;
                    self.handle(event);
                }
            }
        }
        panic!("simulation did not drain in {STEPS_MAX} steps");
    }

    fn handle(&mut self, event: Event) {
        let now = self.now();
        match event {
            Event::Client => self.client(),
            Event::Deliver { to, msg } => match msg {
                Msg::Replicate(request) => {
                    let token = request.token.0;
                    let kind = TokenKind::Replicate {
                        from: request.from,
                        version: request.version,
                    };
                    self.nodes[to].tokens.insert(token, kind);
                    self.submit(to, Request::Replicate(request));
                }
                Msg::Reply(reply) => {
                    self.nodes[to].engine.handle_replica_reply(now, reply);
                    self.process(to);
                }
            },
            Event::StoreDone { node, version } => {
                let sim_node = &mut self.nodes[node];
                sim_node.durable.insert(version);
                while sim_node.durable.contains(&(sim_node.durable_prefix + 1)) {
                    sim_node.durable_prefix += 1;
                }
                sim_node.engine.handle_local_done(now, version, Ok(()));
                self.process(node);
            }
            Event::Map { node, map } => {
                self.nodes[node].engine.handle_map(now, map).unwrap();
                self.process(node);
                self.unpark(node);
            }
            Event::MetaRandom => self.meta_random(),
            Event::MetaDown(node) => {
                if self.up.remove(&index_of(node)) {
                    self.publish();
                }
            }
            Event::Peer { epoch, members } => self.peer(epoch, members),
            Event::Recover { member, epoch } => self.recover(member, epoch),
            Event::RecoveryReady { member, epoch } => self.recovery_ready(member, epoch),
            Event::FinalCopy {
                member,
                epoch,
                head,
            } => self.final_copy(member, epoch, head),
        }
    }

    /// A recovery job starts: the member stops applying writes, passes follow.
    fn recover(&mut self, member: usize, epoch: Epoch) {
        if self.nodes[0].engine.epoch() != epoch {
            return;
        }
        let verdict = self.nodes[member]
            .engine
            .handle_recovery_request(node_id(0), epoch, true);
        self.process(member);
        match verdict {
            RecoveryVerdict::Allow => self.schedule_in(100, Event::RecoveryReady { member, epoch }),
            _ => self.schedule_in(100, Event::Recover { member, epoch }),
        }
    }

    fn recovery_ready(&mut self, member: usize, epoch: Epoch) {
        let now = self.now();
        let accepted = self.nodes[0]
            .engine
            .handle_recovery_ready(now, node_id(member), epoch);
        self.process(0);
        if !accepted && self.needs_recovery(member, epoch) {
            self.schedule_in(100, Event::Recover { member, epoch });
        }
    }

    fn needs_recovery(&self, member: usize, epoch: Epoch) -> bool {
        self.nodes[0].engine.epoch() == epoch
            && self.nodes[0]
                .engine
                .members()
                .contains(&(node_id(member), MemberSync::NeedsRecovery))
    }

    /// Whether `member` has nothing in flight in its store.
    fn quiet(&self, member: usize) -> bool {
        let node = &self.nodes[member];
        node.durable_prefix as usize == node.submitted.len()
    }

    /// Sends a sync point at `head` from the primary to `member`; its answer comes through
    /// `reply` as a `TokenKind::Sync`.
    fn send_sync_point(
        &mut self,
        member: usize,
        epoch: Epoch,
        head: ChunkVersion,
        final_sync: Option<Epoch>,
    ) {
        let token = Token(self.next_token);
        self.next_token += 1;
        self.nodes[member]
            .tokens
            .insert(token.0, TokenKind::Sync { final_sync });
        let sync = SyncPoint {
            token,
            from: node_id(0),
            epoch,
            head,
        };
        let now = self.now();
        match self.nodes[member].engine.handle_sync_point(now, sync) {
            Outcome::Accepted => self.process(member),
            Outcome::MapBehind { .. } => {
                self.nodes[member].tokens.remove(&token.0);
                if let Some(epoch) = final_sync {
                    self.nodes[0]
                        .engine
                        .handle_recovery_done(now, node_id(member), epoch, false);
                    self.process(0);
                    self.schedule_in(100, Event::Recover { member, epoch });
                }
            }
        }
    }

    /// Peering: members that hold exactly the primary's sequence and accept a sync point are
    /// level; the rest are recovered.
    fn peer(&mut self, epoch: Epoch, members: Vec<NodeId>) {
        if self.nodes[0].engine.epoch() != epoch {
            return;
        }
        let head = self.nodes[0].engine.head();
        self.synced_now.clear();
        for member in members {
            let index = index_of(member);
            let verdict =
                self.nodes[index]
                    .engine
                    .handle_recovery_request(node_id(0), epoch, false);
            let level = self.nodes[index].submitted == self.nodes[0].submitted;
            if verdict == RecoveryVerdict::Allow && level && self.quiet(index) {
                self.send_sync_point(index, epoch, head, None);
            }
        }
        let in_sync = self.synced_now.drain(..).map(node_id).collect();
        let now = self.now();
        self.nodes[0].engine.handle_peered(
            now,
            Peered {
                epoch,
                head,
                in_sync,
            },
        );
        self.process(0);
    }

    /// The final sync: copy the primary's whole sequence to `member` (writes are paused, so
    /// it is stable) and send the sync point.
    fn final_copy(&mut self, member: usize, epoch: Epoch, head: ChunkVersion) {
        let now = self.now();
        if self.nodes[0].engine.epoch() != epoch {
            return;
        }
        let verdict = self.nodes[member]
            .engine
            .handle_recovery_request(node_id(0), epoch, true);
        self.process(member);
        if verdict != RecoveryVerdict::Allow {
            self.nodes[0]
                .engine
                .handle_recovery_done(now, node_id(member), epoch, false);
            self.process(0);
            self.schedule_in(100, Event::Recover { member, epoch });
            return;
        }
        if !self.quiet(member) {
            self.schedule_in(
                20,
                Event::FinalCopy {
                    member,
                    epoch,
                    head,
                },
            );
            return;
        }
        let copy = self.nodes[0].submitted.clone();
        let target = &mut self.nodes[member];
        target.durable = (1..=copy.len() as u64).collect();
        target.durable_prefix = copy.len() as u64;
        target.submitted = copy;
        target.last_label = head;
        self.send_sync_point(member, epoch, head, Some(epoch));
    }

    fn random_range(&mut self) -> ChunkRange {
        let sectors = CHUNK_SIZE / 512;
        let len_sectors = 1 + self.rng.below(16) as u32;
        let offset_sectors = self.rng.below(u64::from(sectors - len_sectors)) as u32;
        ChunkRange {
            chunk: ChunkKey::new(VolumeId(1), self.rng.below(CHUNK_COUNT)),
            offset: offset_sectors * 512,
            len: len_sectors * 512,
        }
    }

    /// One gateway request, usually to the primary under the newest epoch.
    fn client(&mut self) {
        self.clients_left -= 1;
        let target = if self.rng.chance(3, 100) {
            1 + self.rng.below(NODE_COUNT as u64 - 1) as usize
        } else {
            0
        };
        let epoch = if self.rng.chance(1, 10) && self.meta.epoch.0 > 1 {
            Epoch(self.meta.epoch.0 - 1)
        } else {
            self.meta.epoch
        };
        let token = Token(self.next_token);
        self.next_token += 1;
        let roll = self.rng.below(100);
        let request = if roll < 80 {
            let (mutation, id) = match roll {
                0..70 => {
                    self.next_id += 1;
                    (Mutation::Write(self.next_id), Some(self.next_id))
                }
                70..75 => (Mutation::Trim, None),
                _ => (Mutation::Zeroes, None),
            };
            let range = self.random_range();
            Request::Write(ClientWrite {
                token,
                epoch,
                range,
                mutation,
            })
            .with_kind(TokenKind::Write { id })
        } else if roll < 92 {
            let range = self.random_range();
            Request::Read(ClientRead {
                token,
                epoch,
                range,
            })
            .with_kind(TokenKind::Read)
        } else {
            let before = BTreeSet::new();
            Request::Flush(ClientFlush { token, epoch }).with_kind(TokenKind::Flush { before })
        };
        let (request, kind) = request;
        self.nodes[target].tokens.insert(token.0, kind);
        self.submit(target, request);
    }

    /// Hands a request to a node's engine, parking it if the node's map is behind.
    fn submit(&mut self, index: usize, request: Request) {
        let now = self.now();
        let node = &mut self.nodes[index];
        let parked = match request {
            Request::Write(write) => {
                let token = write.token.0;
                node.open_writes.insert(token);
                match node.engine.handle_client_write(now, write) {
                    Outcome::Accepted => None,
                    Outcome::MapBehind { wanted, request } => {
                        node.open_writes.remove(&token);
                        Some((wanted, Request::Write(request)))
                    }
                }
            }
            Request::Read(read) => match node.engine.handle_client_read(now, read) {
                Outcome::Accepted => None,
                Outcome::MapBehind { wanted, request } => Some((wanted, Request::Read(request))),
            },
            Request::Flush(flush) => {
                let before = node.open_writes.clone();
                node.tokens
                    .insert(flush.token.0, TokenKind::Flush { before });
                match node.engine.handle_client_flush(now, flush) {
                    Outcome::Accepted => None,
                    Outcome::MapBehind { wanted, request } => {
                        Some((wanted, Request::Flush(request)))
                    }
                }
            }
            Request::Replicate(copy) => match node.engine.handle_replicate(now, copy) {
                Outcome::Accepted => None,
                Outcome::MapBehind { wanted, request } => {
                    Some((wanted, Request::Replicate(request)))
                }
            },
        };
        if let Some((wanted, request)) = parked {
            assert!(wanted > node.engine.epoch());
            self.stats.map_behind += 1;
            node.parked.push((wanted, request));
        }
        self.process(index);
    }

    /// Re-submits parked requests whose map has arrived.
    fn unpark(&mut self, index: usize) {
        let epoch = self.nodes[index].engine.epoch();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.nodes[index].parked)
            .into_iter()
            .partition(|(wanted, _)| *wanted <= epoch);
        self.nodes[index].parked = waiting;
        for (_, request) in ready {
            self.submit(index, request);
        }
    }

    fn meta_random(&mut self) {
        let replica = 1 + self.rng.below(NODE_COUNT as u64 - 1) as usize;
        match self.rng.below(10) {
            0..4 => {
                self.up.remove(&replica);
            }
            4..8 => {
                self.up.insert(replica);
            }
            _ => {}
        }
        self.publish();
    }

    /// Publishes a new map (node 1 always primary) that reaches each node after its own delay.
    fn publish(&mut self) {
        self.meta.epoch = Epoch(self.meta.epoch.0 + 1);
        self.meta.acting = self.up.iter().copied().map(node_id).collect();
        for node in 0..NODE_COUNT {
            let map = self.meta.clone();
            self.schedule_in(MAP_DELAY_MS_MAX, Event::Map { node, map });
        }
    }

    /// Performs every action a node's engine emitted.
    fn process(&mut self, index: usize) {
        while let Some(action) = self.nodes[index].engine.poll_action() {
            match action {
                Action::LocalApply {
                    version,
                    range,
                    mutation,
                } => self.local_apply(index, version, range, mutation),
                Action::Replicate {
                    to,
                    epoch,
                    version,
                    range,
                    mutation,
                } => {
                    let token = Token(self.next_token);
                    self.next_token += 1;
                    let msg = Msg::Replicate(Replicate {
                        token,
                        from: node_id(index),
                        epoch,
                        version,
                        range,
                        mutation,
                    });
                    let to = index_of(to);
                    if self.rng.chance(2, 100) {
                        // A duplicate delivery (a shell re-sending after reconnecting).
                        let Msg::Replicate(copy) = &msg else {
                            unreachable!()
                        };
                        let mut copy = copy.clone();
                        copy.token = Token(self.next_token);
                        self.next_token += 1;
                        let msg = Msg::Replicate(copy);
                        self.schedule_in(MESSAGE_DELAY_MS_MAX, Event::Deliver { to, msg });
                    }
                    self.send(to, msg);
                }
                action @ (Action::Peer { .. }
                | Action::Recover { .. }
                | Action::FinalSync { .. }) => self.recovery_action(index, action),
                Action::LocalRead { token, .. } => {
                    assert_eq!(index, 0, "only the primary serves reads");
                    let kind = self.nodes[index].tokens.remove(&token.0);
                    assert!(matches!(kind, Some(TokenKind::Read)), "{kind:?}");
                    self.stats.reads += 1;
                }
                Action::Reply {
                    token,
                    status,
                    epoch,
                } => self.reply(index, token, status, epoch),
                Action::ReportFailure { node, .. } => {
                    assert_ne!(node, node_id(0), "the primary never reports itself");
                    self.schedule_in(MAP_DELAY_MS_MAX, Event::MetaDown(node));
                }
                Action::StopServing { status } => panic!("no store fails here: {status:?}"),
                // The simulated maps are never transitional.
                Action::Settle { since } => panic!("settle without a transition: {since}"),
            }
        }
    }

    /// Sends a message with a random delay; a few are held far longer than the gap timeout.
    /// Schedules the harness's stand-in for a peering or recovery job.
    fn recovery_action(&mut self, index: usize, action: Action<u64>) {
        match action {
            Action::Peer { epoch, members } => {
                assert_eq!(index, 0, "only node 1 leads");
                self.schedule_in(50, Event::Peer { epoch, members });
            }
            Action::Recover { member, epoch } => {
                let member = index_of(member);
                self.schedule_in(50, Event::Recover { member, epoch });
            }
            Action::FinalSync {
                member,
                epoch,
                head,
            } => {
                let member = index_of(member);
                self.schedule_in(
                    50,
                    Event::FinalCopy {
                        member,
                        epoch,
                        head,
                    },
                );
            }
            _ => unreachable!("not a recovery action"),
        }
    }

    fn send(&mut self, to: usize, msg: Msg) {
        let delay_ms_max = if self.rng.chance(1, 100) {
            SLOW_MESSAGE_DELAY_MS_MAX
        } else {
            MESSAGE_DELAY_MS_MAX
        };
        self.schedule_in(delay_ms_max, Event::Deliver { to, msg });
    }

    fn local_apply(
        &mut self,
        index: usize,
        version: ChunkVersion,
        range: ChunkRange,
        mutation: Mutation<u64>,
    ) {
        let payload = match mutation {
            Mutation::Write(id) => Some(id),
            Mutation::Trim | Mutation::Zeroes => None,
        };
        let applied = (range, mutation.kind(), payload);
        let node = &mut self.nodes[index];
        assert_eq!(
            version.version,
            node.submitted.len() as u64 + 1,
            "node {index} submits in order"
        );
        assert!(version > node.last_label, "labels grow on node {index}");
        assert!(version.epoch <= node.engine.epoch());
        node.last_label = version;
        node.submitted.push(applied);
        if index == 0 {
            self.history.push(applied);
            if let Some(id) = payload {
                self.write_version.insert(id, version.version);
            }
        } else {
            let primary = self.history.get(version.version as usize - 1);
            assert_eq!(primary, Some(&applied), "node {index} v{}", version.version);
        }
        let event = Event::StoreDone {
            node: index,
            version: version.version,
        };
        self.schedule_in(STORE_DELAY_MS_MAX, event);
    }

    fn reply(&mut self, index: usize, token: Token, status: Status, epoch: Epoch) {
        let node = &mut self.nodes[index];
        let Some(kind) = node.tokens.remove(&token.0) else {
            panic!("node {index}: answer to unknown or answered token {token:?}");
        };
        match kind {
            TokenKind::Write { id } => {
                node.open_writes.remove(&token.0);
                if status == Status::Ok {
                    self.stats.writes_acked += 1;
                    if let Some(id) = id {
                        self.check_ack(id);
                    }
                } else {
                    self.stats.writes_failed += 1;
                    let assigned = id.is_some_and(|id| self.write_version.contains_key(&id));
                    let key = format!("{status:?}{}", if assigned { "/assigned" } else { "" });
                    *self.stats.write_failures.entry(key).or_default() += 1;
                }
            }
            TokenKind::Flush { before } => {
                if status == Status::Ok {
                    let open: Vec<_> = before.intersection(&node.open_writes).collect();
                    assert!(open.is_empty(), "flush answered before writes {open:?}");
                    self.stats.flushes_ok += 1;
                }
            }
            TokenKind::Read => {}
            TokenKind::Replicate { from, version } => {
                assert_ne!(status, Status::Invalid, "node {index} refused v{version}");
                let reply = ReplicaReply {
                    version,
                    from: node_id(index),
                    status,
                    epoch,
                };
                self.send(index_of(from), Msg::Reply(reply));
            }
            TokenKind::Sync { final_sync: None } => {
                if status == Status::Ok {
                    self.synced_now.push(index);
                }
            }
            TokenKind::Sync {
                final_sync: Some(epoch),
            } => {
                let now = self.now();
                let ok = status == Status::Ok;
                self.nodes[0]
                    .engine
                    .handle_recovery_done(now, node_id(index), epoch, ok);
                self.process(0);
                if !ok && self.needs_recovery(index, epoch) {
                    self.schedule_in(
                        100,
                        Event::Recover {
                            member: index,
                            epoch,
                        },
                    );
                }
            }
        }
    }

    /// The acknowledgement invariants, checked at the moment the primary answers `Ok`.
    fn check_ack(&self, id: u64) {
        let version = self.write_version[&id];
        let entry = &self.history[version as usize - 1];
        let holds = |node: &SimNode| {
            node.durable_prefix >= version
                && node.submitted.get(version as usize - 1) == Some(entry)
        };
        assert!(
            holds(&self.nodes[0]),
            "acked v{version} not durable on the primary"
        );
        for (member, sync) in self.nodes[0].engine.members() {
            if sync == MemberSync::InSync {
                let node = &self.nodes[index_of(member)];
                assert!(holds(node), "acked v{version} missing on in-sync {member}");
            }
        }
        let copies = self.nodes.iter().filter(|node| holds(node)).count();
        let min_size = usize::from(self.meta.min_size);
        assert!(copies >= min_size, "acked v{version} with {copies} copies");
    }

    /// After draining: nothing left unanswered, in-sync members hold the whole sequence.
    fn check_drained(&self) {
        assert_eq!(self.clients_left, 0);
        for (index, node) in self.nodes.iter().enumerate() {
            assert!(
                node.parked.is_empty(),
                "node {index} still has parked requests"
            );
            let open: Vec<_> = node.tokens.iter().collect();
            assert!(open.is_empty(), "node {index}: unanswered {open:?}");
            assert_eq!(node.durable_prefix as usize, node.submitted.len());
        }
        let primary = &self.nodes[0];
        assert_eq!(primary.engine.pending_count(), 0);
        for (member, sync) in primary.engine.members() {
            if sync == MemberSync::InSync {
                let node = &self.nodes[index_of(member)];
                assert_eq!(node.submitted, self.history, "in-sync {member} diverged");
            }
        }
    }
}

trait WithKind: Sized {
    fn with_kind(self, kind: TokenKind) -> (Self, TokenKind) {
        (self, kind)
    }
}

impl WithKind for Request {}

fn run_seed(seed: u64) -> Stats {
    let mut sim = Sim::new(seed);
    sim.run();
    sim.check_drained();
    sim.stats
}

#[test]
fn replication_simulation() {
    let seeds: Vec<u64> = match std::env::var("REPLICATION_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("REPLICATION_SIM_SEED is a number")],
        Err(_) => (0..SEEDS).collect(),
    };
    let mut total = Stats::default();
    for seed in seeds {
        let stats = match catch_unwind(AssertUnwindSafe(|| run_seed(seed))) {
            Ok(stats) => stats,
            Err(_) => {
                panic!("replication simulation failed; replay with REPLICATION_SIM_SEED={seed}")
            }
        };
        total.writes_acked += stats.writes_acked;
        total.writes_failed += stats.writes_failed;
        total.reads += stats.reads;
        total.flushes_ok += stats.flushes_ok;
        total.map_behind += stats.map_behind;
        for (status, count) in stats.write_failures {
            *total.write_failures.entry(status).or_default() += count;
        }
    }
    println!("{total:?}");
    // Liveness sanity: the faults must not starve the workload.
    assert!(total.writes_acked > total.writes_failed, "{total:?}");
    assert!(
        total.reads > 0 && total.flushes_ok > 0 && total.map_behind > 0,
        "{total:?}"
    );
}
