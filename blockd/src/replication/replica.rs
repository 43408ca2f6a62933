//! The replica role: apply the primary's writes strictly in version order.
//!
//! A copy for the next version is submitted to the store at once, followed by every buffered
//! successor; a copy from further ahead waits in a bounded buffer until the gap fills or the gap
//! deadline passes; a copy of a version already submitted is a duplicate (a re-send) and is
//! answered once that version is durable. Every answer `Ok` means "durable here together with
//! every earlier version".
//!
//! A replica applies nothing until its primary has told it, with a [`SyncPoint`], that its copy
//! matches the primary's history (after peering or recovery); before that, and after any
//! recovery push, it answers [`Status::Unsynced`]. A replica that restarted, or one whose
//! primary changed, therefore never counts as a copy by accident.

use std::collections::BTreeMap;
use std::time::Instant;

use basalt::ids::{ChunkVersion, NodeId};
use basalt::wire::Status;

use super::pg::Shared;
use super::types::{DUPLICATE_TOKENS_MAX, Mutation, Replicate, SyncPoint, Token};

/// A copy that arrived ahead of a missing version.
#[derive(Debug)]
struct Buffered<P> {
    /// Every delivery of this version waiting for an answer.
    tokens: Vec<Token>,
    request: Replicate<P>,
}

/// State of the replica role.
#[derive(Debug)]
pub(crate) struct Replica<P> {
    /// The primary of the current map: the only node whose copies are accepted.
    primary: NodeId,
    /// The primary confirmed our copy matches its history (a [`SyncPoint`]) and has not
    /// started recovering it since.
    synced: bool,
    buffer: BTreeMap<u64, Buffered<P>>,
    buffered_bytes: u64,
    /// When the buffered copies are dropped if the gap before them has not filled.
    gap_deadline: Option<Instant>,
}

fn payload_bytes<P>(request: &Replicate<P>) -> u64 {
    match request.mutation {
        Mutation::Write(_) => u64::from(request.range.len),
        Mutation::Trim | Mutation::Zeroes => 0,
    }
}

impl<P: Clone> Replica<P> {
    /// A replica of `primary`; `synced` only when continuing under the same primary.
    pub(crate) fn new(primary: NodeId, synced: bool) -> Self {
        Self {
            primary,
            synced,
            buffer: BTreeMap::new(),
            buffered_bytes: 0,
            gap_deadline: None,
        }
    }

    /// A copy from a sender whose epoch equals ours.
    pub(crate) fn replicate(
        &mut self,
        shared: &mut Shared<P>,
        now: Instant,
        request: Replicate<P>,
    ) {
        let valid = request.version != 0
            && request.range.is_valid(shared.config.chunk_size_bytes)
            && request.from == self.primary;
        if !valid {
            tracing::warn!(pg = %shared.config.pg, from = %request.from, version = request.version, "refusing invalid replicate");
            shared.reply(request.token, Status::Invalid);
            return;
        }
        if !self.synced {
            shared.reply(request.token, Status::Unsynced);
            return;
        }
        let head = shared.local.head().version;
        let acks_full = shared.local.waiter_count() >= shared.config.limits.acks_waiting_max;
        if request.version <= head {
            if request.version <= shared.local.durable_through() {
                shared.reply(request.token, Status::Ok);
            } else if acks_full {
                shared.reply(request.token, Status::Busy);
            } else {
                shared.local.add_waiter(request.version, request.token);
            }
        } else if request.version == head + 1 {
            if acks_full {
                shared.reply(request.token, Status::Busy);
                return;
            }
            let token = request.token;
            Self::apply(shared, request, &[token]);
            self.drain(shared, now);
        } else {
            self.hold(shared, now, request);
        }
    }

    /// The primary this replica follows.
    pub(crate) fn primary(&self) -> NodeId {
        self.primary
    }

    /// Whether the primary's writes are applied (see [`SyncPoint`]).
    pub(crate) fn synced(&self) -> bool {
        self.synced
    }

    /// The primary starts copying chunks here: stop applying its writes until it sends a
    /// sync point (a write applied into a chunk being copied could leave the copy's label
    /// claiming data it lacks).
    pub(crate) fn recovery_started(&mut self, shared: &mut Shared<P>) {
        if self.synced {
            tracing::info!(pg = %shared.config.pg, primary = %self.primary, "primary is recovering this copy");
        }
        self.synced = false;
        self.drop_all(shared, Status::Unsynced);
    }

    /// A sync point from the primary: our copy matches its history up to `head`.
    pub(crate) fn sync_point(&mut self, shared: &mut Shared<P>, request: SyncPoint) {
        if request.from != self.primary {
            shared.reply(request.token, Status::Invalid);
            return;
        }
        if shared.local.durable_through() != shared.local.head().version {
            // Our own earlier applies are still landing: the primary retries shortly.
            shared.reply(request.token, Status::Busy);
            return;
        }
        self.drop_all(shared, Status::Unsynced);
        shared.reset_head(request.head);
        self.synced = true;
        tracing::info!(pg = %shared.config.pg, primary = %self.primary, head = %request.head, "in sync with the primary");
        shared.reply(request.token, Status::Ok);
    }

    fn apply(shared: &mut Shared<P>, request: Replicate<P>, tokens: &[Token]) {
        let version = ChunkVersion {
            epoch: shared.epoch(),
            version: request.version,
        };
        shared.apply_local(version, request.range, request.mutation);
        for token in tokens {
            shared.local.add_waiter(request.version, *token);
        }
    }

    /// Applies every buffered copy that is now next in line.
    fn drain(&mut self, shared: &mut Shared<P>, now: Instant) {
        let mut advanced = false;
        loop {
            let next = shared.local.head().version + 1;
            let Some(buffered) = self.buffer.remove(&next) else {
                break;
            };
            self.buffered_bytes -= payload_bytes(&buffered.request);
            Self::apply(shared, buffered.request, &buffered.tokens);
            advanced = true;
        }
        if self.buffer.is_empty() {
            self.gap_deadline = None;
        } else if advanced {
            self.gap_deadline = Some(now + shared.config.limits.gap_timeout);
        }
    }

    /// Buffers a copy from beyond the next version, within the bounds.
    fn hold(&mut self, shared: &mut Shared<P>, now: Instant, request: Replicate<P>) {
        if let Some(buffered) = self.buffer.get_mut(&request.version) {
            if buffered.tokens.len() >= DUPLICATE_TOKENS_MAX {
                shared.reply(request.token, Status::Busy);
            } else {
                buffered.tokens.push(request.token);
            }
            return;
        }
        let limits = &shared.config.limits;
        let bytes = payload_bytes(&request);
        if self.buffer.len() >= limits.replica_buffer_ops_max
            || self.buffered_bytes + bytes > limits.replica_buffer_bytes_max
        {
            shared.reply(request.token, Status::Busy);
            return;
        }
        if self.gap_deadline.is_none() {
            self.gap_deadline = Some(now + limits.gap_timeout);
        }
        self.buffered_bytes += bytes;
        let tokens = vec![request.token];
        self.buffer
            .insert(request.version, Buffered { tokens, request });
    }

    /// Drops the buffer when the gap deadline passed: the primary re-sends.
    pub(crate) fn timeout(&mut self, shared: &mut Shared<P>, now: Instant) {
        if self.gap_deadline.is_some_and(|deadline| deadline <= now) {
            tracing::warn!(
                pg = %shared.config.pg,
                head = shared.local.head().version,
                buffered = self.buffer.len(),
                "gap before buffered writes did not fill in time"
            );
            self.drop_all(shared, Status::Timeout);
        }
    }

    /// Answers every buffered copy with `status` and empties the buffer.
    pub(crate) fn drop_all(&mut self, shared: &mut Shared<P>, status: Status) {
        for (_, buffered) in std::mem::take(&mut self.buffer) {
            for token in buffered.tokens {
                shared.reply(token, status);
            }
        }
        self.buffered_bytes = 0;
        self.gap_deadline = None;
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.gap_deadline
    }
}
