//! The async shell: [`Gateway`] (shared limits, peers, map) and [`GatewayVolume`] (one
//! volume's [`VolumeBackend`]), running the pieces `plan.rs` cuts with the decisions
//! `retry.rs` makes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use basalt::ids::{ChunkKey, Epoch, NodeId, PgId};
use basalt::units::SECTOR_SIZE_BYTES;
use basalt::wire::{Bytes, ControlKind, Flags, Header, Opcode, RequestId, Status};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::plan::{self, NoRoute, Piece, Pieces, Route};
use super::retry::{Deadlines, Next, Outcome, Retry, RetryPolicy};
use super::view::{ClusterView, MapWatch};
use super::{GatewayConfig, GatewayError, GatewayStats, VolumeSpec};
use crate::frontends::{VolumeBackend, VolumeError, VolumeExtent, ZeroFlags};
use crate::peer::{PeerError, PeerService, Peers, Router};
use crate::replication::{BLOCK_STATUS_VERSION, BlockStatusReply, BlockStatusRequest, check_runs};
use basalt::wire::Frame;

/// Chunks one `block_status` call describes at most; the client asks again for the rest.
pub const BLOCK_STATUS_CHUNKS_MAX: u64 = 64;

/// The job opcode of a block-status query: the one CONTROL message the gateway sends
/// ([`ControlKind::BLOCK_STATUS`]), routed and retried like a READ of the same range.
const BLOCK_STATUS_OP: Opcode = Opcode::Control;

/// The volume client of one node: routes every volume's pieces to PG primaries, under one
/// set of in-flight bounds. Cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    peers: Arc<Peers>,
    maps: MapWatch,
    config: GatewayConfig,
    pieces: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    stats: GatewayStats,
    /// Zeroes for `NO_HOLE` zeroing, one piece long, made on first use.
    zeroes: OnceLock<Bytes>,
    /// This node and its own peer service: pieces whose primary is this node skip the network
    /// (and the handshake, which refuses a connection to oneself) and are handled as a
    /// connection would hand them over.
    local: Option<(NodeId, Arc<Router>)>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("epoch", &self.inner.maps.current().epoch())
            .field("pieces_in_flight", &self.pieces_in_flight())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway sending through `peers` (whose address book it fills from the view's
    /// `node_addrs`) and routing by the views `maps` delivers.
    pub fn new(
        peers: Arc<Peers>,
        maps: MapWatch,
        config: GatewayConfig,
    ) -> Result<Self, GatewayError> {
        Self::with_local(peers, maps, config, None)
    }

    /// A gateway on a storage node: pieces whose primary is `local.0` go straight to the
    /// node's own peer service `local.1` (I/O and BLOCK_STATUS) instead of through a peer
    /// connection.
    pub fn with_local(
        peers: Arc<Peers>,
        maps: MapWatch,
        config: GatewayConfig,
        local: Option<(NodeId, Arc<Router>)>,
    ) -> Result<Self, GatewayError> {
        config.validate()?;
        let inner = Inner {
            peers,
            maps,
            pieces: Arc::new(Semaphore::new(config.pieces_in_flight_max)),
            bytes: Arc::new(Semaphore::new(config.bytes_in_flight_max)),
            config,
            stats: GatewayStats::default(),
            zeroes: OnceLock::new(),
            local,
        };
        Ok(Gateway {
            inner: Arc::new(inner),
        })
    }

    /// A backend for one volume; frontends call it through [`VolumeBackend`].
    pub fn volume(&self, spec: VolumeSpec) -> Result<GatewayVolume, GatewayError> {
        let sector = u64::from(SECTOR_SIZE_BYTES);
        if spec.size_bytes == 0 || !spec.size_bytes.is_multiple_of(sector) {
            return Err(GatewayError::Volume {
                volume: spec.id,
                why: "size is not a non-zero multiple of 512",
            });
        }
        Ok(GatewayVolume {
            gateway: Arc::clone(&self.inner),
            shared: Arc::new(VolumeShared {
                spec,
                dirty: Mutex::new(BTreeSet::new()),
            }),
        })
    }

    /// The map source this gateway routes by.
    pub fn maps(&self) -> &MapWatch {
        &self.inner.maps
    }

    /// The gateway's counters.
    pub fn stats(&self) -> &GatewayStats {
        &self.inner.stats
    }

    /// Pieces admitted and not yet complete.
    pub fn pieces_in_flight(&self) -> usize {
        self.inner.config.pieces_in_flight_max - self.inner.pieces.available_permits()
    }

    /// Data bytes admitted and not yet complete.
    pub fn bytes_in_flight(&self) -> usize {
        self.inner.config.bytes_in_flight_max - self.inner.bytes.available_permits()
    }
}

/// One volume served through a [`Gateway`].
pub struct GatewayVolume {
    gateway: Arc<Inner>,
    shared: Arc<VolumeShared>,
}

impl std::fmt::Debug for GatewayVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayVolume")
            .field("spec", &self.shared.spec)
            .finish_non_exhaustive()
    }
}

/// What every piece of a volume shares.
struct VolumeShared {
    spec: VolumeSpec,
    /// Nodes sent a mutation since the last successful flush: the ones FLUSH goes to.
    dirty: Mutex<BTreeSet<NodeId>>,
}

impl VolumeShared {
    fn dirty(&self) -> MutexGuard<'_, BTreeSet<NodeId>> {
        // Every update is one set operation: the set is consistent even after a panic.
        self.dirty.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where a piece goes.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// The primary of this chunk, looked up afresh for every attempt.
    Chunk(u64),
    /// This node, while it is still a primary of the volume's pool (FLUSH).
    Node(NodeId),
}

/// One piece to send: opcode, address within its chunk, payload.
#[derive(Clone, Debug)]
struct Job {
    opcode: Opcode,
    target: Target,
    offset_in_chunk: u32,
    len: u32,
    payload: Bytes,
    fua: bool,
}

impl Job {
    fn mutating(&self) -> bool {
        matches!(
            self.opcode,
            Opcode::Write | Opcode::Trim | Opcode::WriteZeroes
        )
    }

    /// Data bytes the piece holds in flight (its payload or its reply).
    fn weight_bytes(&self) -> u32 {
        match self.opcode {
            Opcode::Write | Opcode::Read => self.len,
            _ => 0,
        }
    }

    /// The destination in `view`; `Ok(None)` when there is nothing left to do.
    fn resolve(&self, view: &ClusterView, spec: &VolumeSpec) -> Result<Option<Route>, NoRoute> {
        match self.target {
            Target::Chunk(chunk_index) => {
                plan::route(view, spec.pool, spec.id, chunk_index).map(Some)
            }
            Target::Node(node) => {
                if !plan::is_primary_of_any(view, spec.pool, node) {
                    return Ok(None);
                }
                let pg = PgId(0);
                let addr = *view
                    .node_addrs
                    .get(&node)
                    .ok_or(NoRoute::Address { node, pg })?;
                Ok(Some(Route { pg, node, addr }))
            }
        }
    }

    /// Whether the piece's PG can serve in `view` (see [`plan::available`]); a flush owed to a
    /// node always can.
    fn available(&self, view: &ClusterView, spec: &VolumeSpec) -> bool {
        match self.target {
            Target::Chunk(chunk_index) => plan::available(view, spec.pool, spec.id, chunk_index),
            Target::Node(_) => true,
        }
    }

    fn header(&self, spec: &VolumeSpec, route: &Route, epoch: Epoch) -> Header {
        let mut header = Header::new(self.opcode, RequestId(0));
        header.pg = route.pg;
        header.epoch = epoch;
        if let Target::Chunk(chunk_index) = self.target {
            header.chunk = ChunkKey::new(spec.id, chunk_index);
            header.offset_bytes = self.offset_in_chunk;
            header.length_bytes = self.len;
        } else {
            header.chunk = ChunkKey::new(spec.id, 0);
        }
        if self.fua && self.mutating() {
            header.flags = Flags::FUA;
        }
        header
    }
}

/// Whether resending after this transport error may succeed: the peer was unreachable, or
/// the request's outcome is unknown (resent like a `TIMEOUT`; everything sent is idempotent).
fn retryable(error: &PeerError) -> bool {
    error.is_unsent()
        || matches!(
            error,
            PeerError::ConnectionLost { .. } | PeerError::Timeout { .. }
        )
}

impl Inner {
    fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            delay_min: self.config.retry_delay_min,
            delay_max: self.config.retry_delay_max,
        }
    }

    /// Waits (until `deadline`) for room for `job` under both in-flight bounds.
    async fn admit(
        &self,
        job: &Job,
        deadline: Instant,
    ) -> Result<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>), VolumeError> {
        let overloaded =
            || VolumeError::Io("gateway overloaded: no room for the request in time".into());
        let pieces = Arc::clone(&self.pieces).acquire_owned();
        let piece = tokio::time::timeout_at(deadline, pieces)
            .await
            .map_err(|_| overloaded())?
            .map_err(|_| VolumeError::ShuttingDown)?;
        let weight = job.weight_bytes();
        if weight == 0 {
            return Ok((piece, None));
        }
        let bytes = Arc::clone(&self.bytes).acquire_many_owned(weight);
        let bytes = tokio::time::timeout_at(deadline, bytes)
            .await
            .map_err(|_| overloaded())?
            .map_err(|_| VolumeError::ShuttingDown)?;
        Ok((piece, Some(bytes)))
    }

    /// Runs one piece to completion: admission, then attempts until done, failed or out of
    /// time. Returns the reply payload (a READ's data; empty otherwise).
    async fn run_piece(
        self: Arc<Self>,
        volume: Arc<VolumeShared>,
        job: Job,
        deadlines: Deadlines,
    ) -> Result<Bytes, VolumeError> {
        let _permits = self.admit(&job, deadlines.unavailable).await?;
        GatewayStats::count(&self.stats.pieces);
        let mut retry = Retry::new(deadlines, self.policy());
        loop {
            let now = Instant::now();
            let view = self.maps.current();
            retry.set_available(now, job.available(&view, &volume.spec));
            if let Some(error) = retry.expired(now) {
                return Err(self.failed(&volume, &job, error));
            }
            let epoch = view.epoch();
            let (outcome, payload) = match job.resolve(&view, &volume.spec) {
                Ok(None) => return Ok(Bytes::new()),
                Ok(Some(route)) => {
                    let remaining = retry.remaining(now);
                    self.attempt(&volume, &job, route, epoch, remaining).await
                }
                Err(no_route) => (Outcome::NoRoute(no_route.to_string()), Bytes::new()),
            };
            match retry.handle(Instant::now(), epoch, outcome) {
                Next::Done => return self.check_reply(&job, payload),
                Next::AwaitEpoch {
                    epoch: wanted,
                    until,
                } => {
                    GatewayStats::count(&self.stats.retries_stale_epoch);
                    tracing::debug!(volume = %volume.spec.id, %epoch, %wanted, "stale epoch, awaiting map");
                    let wait = until.saturating_duration_since(Instant::now());
                    if self.maps.wait_for_epoch(wanted, wait).await.is_none() {
                        // The publisher is gone: no newer map will come. Resending at once
                        // would only hammer the primary; wait out the request instead.
                        tokio::time::sleep_until(until).await;
                    }
                }
                Next::Backoff { until } => {
                    GatewayStats::count(&self.stats.retries_backoff);
                    let attempts = retry.attempts();
                    tracing::debug!(volume = %volume.spec.id, %epoch, attempts, "backing off");
                    let wait = until.saturating_duration_since(Instant::now());
                    self.maps.changed_after(epoch, wait).await;
                }
                Next::Fail(error) => return Err(self.failed(&volume, &job, error)),
            }
        }
    }

    /// One send to `route`, bounded by the attempt timeout and `remaining`.
    async fn attempt(
        &self,
        volume: &VolumeShared,
        job: &Job,
        route: Route,
        epoch: Epoch,
        remaining: std::time::Duration,
    ) -> (Outcome, Bytes) {
        self.peers.set_address(route.node, route.addr);
        if job.mutating() {
            // Before sending: a flush must cover every node that may have applied it.
            volume.dirty().insert(route.node);
        }
        let header = job.header(&volume.spec, &route, epoch);
        if job.opcode == BLOCK_STATUS_OP {
            return self.query_block_status(&header, route, remaining).await;
        }
        if let Some((me, handler)) = &self.local
            && *me == route.node
        {
            let frame = Frame {
                header,
                payload: job.payload.clone(),
            };
            // Bounded like a call over the network: the request's deadline holds either way.
            let timeout = self.config.attempt_timeout.min(remaining);
            return match tokio::time::timeout(timeout, handler.handle_io(*me, frame)).await {
                Ok(reply) => {
                    let outcome = Outcome::Reply {
                        status: reply.status,
                        epoch: reply.epoch,
                    };
                    (outcome, reply.payload)
                }
                Err(_) => {
                    let error = PeerError::Timeout { peer: *me, timeout };
                    let outcome = Outcome::Transport {
                        retryable: true,
                        detail: format!("{} ({}): {error}", route.node, route.pg),
                    };
                    (outcome, Bytes::new())
                }
            };
        }
        let timeout = self.config.attempt_timeout.min(remaining);
        let call = async {
            let client = self.peers.client(route.node).await?;
            client
                .call_with_timeout(header, job.payload.clone(), timeout)
                .await
        };
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout {
                peer: route.node,
                timeout,
            }),
        };
        match result {
            Ok(frame) => {
                let outcome = Outcome::Reply {
                    status: frame.header.status,
                    epoch: frame.header.epoch,
                };
                (outcome, frame.payload)
            }
            Err(error) => {
                let outcome = Outcome::Transport {
                    retryable: retryable(&error),
                    detail: format!("{} ({}): {error}", route.node, route.pg),
                };
                (outcome, Bytes::new())
            }
        }
    }

    /// One BLOCK_STATUS query for the piece `header` describes. The reply body (encoded
    /// [`BlockStatusReply::Runs`]) is the payload; a refusal becomes its status and epoch.
    async fn query_block_status(
        &self,
        header: &Header,
        route: Route,
        remaining: std::time::Duration,
    ) -> (Outcome, Bytes) {
        let request = BlockStatusRequest {
            volume: header.chunk.volume,
            chunk_index: header.chunk.index,
            offset: header.offset_bytes,
            len: header.length_bytes,
            epoch: header.epoch,
        };
        let body = match postcard::to_stdvec(&request) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                let detail = format!("block status request does not encode: {e}");
                return (
                    Outcome::Transport {
                        retryable: false,
                        detail,
                    },
                    Bytes::new(),
                );
            }
        };
        let result = self.call_block_status(route, body, remaining).await;
        match result {
            Ok(reply) => match postcard::from_bytes::<BlockStatusReply>(&reply) {
                Ok(BlockStatusReply::Runs(_)) => {
                    let outcome = Outcome::Reply {
                        status: Status::Ok,
                        epoch: header.epoch,
                    };
                    (outcome, reply)
                }
                Ok(BlockStatusReply::Refused { status, epoch }) => {
                    let status = Status::from_code(status).unwrap_or(Status::IoError);
                    (Outcome::Reply { status, epoch }, Bytes::new())
                }
                Err(e) => {
                    let detail = format!("{}: block status reply does not decode: {e}", route.node);
                    (
                        Outcome::Transport {
                            retryable: false,
                            detail,
                        },
                        Bytes::new(),
                    )
                }
            },
            // A status in place of a control reply (an unknown kind, a malformed body).
            Err(PeerError::Status { status, .. }) => (
                Outcome::Reply {
                    status,
                    epoch: header.epoch,
                },
                Bytes::new(),
            ),
            Err(error) => {
                let outcome = Outcome::Transport {
                    retryable: retryable(&error),
                    detail: format!("{} ({}): {error}", route.node, route.pg),
                };
                (outcome, Bytes::new())
            }
        }
    }

    /// Sends one encoded BLOCK_STATUS query to `route`'s node (this node's own router when it
    /// is the primary), bounded by the attempt timeout and `remaining`.
    async fn call_block_status(
        &self,
        route: Route,
        body: Bytes,
        remaining: std::time::Duration,
    ) -> Result<Bytes, PeerError> {
        let kind = ControlKind::BLOCK_STATUS;
        if let Some((me, router)) = &self.local
            && *me == route.node
        {
            return router
                .handle_control(*me, kind, BLOCK_STATUS_VERSION, body)
                .await
                .map_err(|status| PeerError::Status {
                    peer: *me,
                    kind,
                    status,
                });
        }
        let timeout = self.config.attempt_timeout.min(remaining);
        let call = self
            .peers
            .call_control(route.node, kind, BLOCK_STATUS_VERSION, body);
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout {
                peer: route.node,
                timeout,
            }),
        }
    }

    fn check_reply(&self, job: &Job, payload: Bytes) -> Result<Bytes, VolumeError> {
        if job.opcode == BLOCK_STATUS_OP {
            // Checked where the runs are decoded.
            return Ok(payload);
        }
        let expected = if job.opcode == Opcode::Read {
            job.len
        } else {
            0
        };
        if payload.len() != expected as usize {
            return Err(VolumeError::Io(format!(
                "{} reply carried {} bytes, expected {expected}",
                job.opcode,
                payload.len()
            )));
        }
        Ok(payload)
    }

    fn failed(&self, volume: &VolumeShared, job: &Job, error: VolumeError) -> VolumeError {
        GatewayStats::count(&self.stats.failures);
        tracing::warn!(
            volume = %volume.spec.id, opcode = %job.opcode, target = ?job.target,
            offset = job.offset_in_chunk, len = job.len, %error, "gateway piece failed"
        );
        error
    }

    fn zeroes(&self) -> &Bytes {
        self.zeroes
            .get_or_init(|| Bytes::from(vec![0u8; self.config.piece_size_bytes_max as usize]))
    }
}

impl GatewayVolume {
    /// The volume served.
    pub fn spec(&self) -> &VolumeSpec {
        &self.shared.spec
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        let sector = u64::from(SECTOR_SIZE_BYTES);
        let size = self.shared.spec.size_bytes;
        let in_range = offset.checked_add(len).is_some_and(|end| end <= size);
        if !in_range || !offset.is_multiple_of(sector) || !len.is_multiple_of(sector) {
            return Err(VolumeError::Invalid(format!(
                "range {offset}+{len} is misaligned or beyond the volume size {size}"
            )));
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<(), VolumeError> {
        if self.shared.spec.read_only {
            return Err(VolumeError::ReadOnly);
        }
        Ok(())
    }

    /// Starts a request: counts it and fixes its deadlines and chunk size.
    fn start(&self) -> Result<(Deadlines, u32), VolumeError> {
        GatewayStats::count(&self.gateway.stats.requests);
        let now = Instant::now();
        let config = &self.gateway.config;
        let deadline = Deadlines {
            unavailable: now + config.request_timeout,
            unavailable_for: config.request_timeout,
            available: now + config.failover_timeout,
        };
        let view = self.gateway.maps.current();
        if !view.is_valid() {
            // A publisher bug, never client input: refuse rather than split by a bad size.
            let size = view.chunk_size_bytes;
            return Err(VolumeError::Io(format!(
                "cluster view has invalid chunk size {size}"
            )));
        }
        Ok((deadline, view.chunk_size_bytes))
    }

    /// The pieces of a data range (READ, WRITE) or an extent (TRIM, WRITE_ZEROES).
    fn pieces(&self, offset: u64, len: u64, chunk_size: u32, data: bool) -> Pieces {
        let max = data.then_some(self.gateway.config.piece_size_bytes_max);
        plan::pieces(offset, len, chunk_size, max)
    }

    /// Runs `jobs` (at most `pieces_per_request_max` at once; one job inline) and returns
    /// their payloads in order. The first failure ends the request; pieces still running are
    /// cancelled (a request already sent may still be applied).
    async fn run<I>(&self, jobs: I, deadline: Deadlines) -> Result<Vec<Bytes>, VolumeError>
    where
        I: Iterator<Item = Job>,
    {
        let mut jobs = jobs.peekable();
        let mut results: Vec<Option<Bytes>> = Vec::new();
        let mut tasks = JoinSet::new();
        while let Some(job) = jobs.next() {
            let piece =
                Arc::clone(&self.gateway).run_piece(Arc::clone(&self.shared), job, deadline);
            if results.is_empty() && jobs.peek().is_none() {
                // The common case: one piece, no task.
                return Ok(vec![piece.await?]);
            }
            if tasks.len() >= self.gateway.config.pieces_per_request_max {
                collect_one(&mut tasks, &mut results).await?;
            }
            let index = results.len();
            results.push(None);
            tasks.spawn(async move { (index, piece.await) });
        }
        while !tasks.is_empty() {
            collect_one(&mut tasks, &mut results).await?;
        }
        results
            .into_iter()
            .map(|result| result.ok_or_else(|| VolumeError::Io("a piece was lost".into())))
            .collect()
    }

    async fn mutate_range(
        &self,
        opcode: Opcode,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Result<(), VolumeError> {
        self.check_writable()?;
        self.check(offset, len)?;
        let (deadline, chunk_size) = self.start()?;
        let jobs = self
            .pieces(offset, len, chunk_size, false)
            .map(|piece| Job {
                opcode,
                target: Target::Chunk(piece.chunk_index),
                offset_in_chunk: piece.offset_in_chunk,
                len: piece.len,
                payload: Bytes::new(),
                fua,
            });
        self.run(jobs, deadline).await.map(drop)
    }

    fn data_job(opcode: Opcode, piece: Piece, payload: Bytes, fua: bool) -> Job {
        Job {
            opcode,
            target: Target::Chunk(piece.chunk_index),
            offset_in_chunk: piece.offset_in_chunk,
            len: piece.len,
            payload,
            fua,
        }
    }
}

async fn collect_one(
    tasks: &mut JoinSet<(usize, Result<Bytes, VolumeError>)>,
    results: &mut [Option<Bytes>],
) -> Result<(), VolumeError> {
    match tasks.join_next().await {
        Some(Ok((index, Ok(value)))) => {
            results[index] = Some(value);
            Ok(())
        }
        Some(Ok((_, Err(error)))) => Err(error),
        Some(Err(join)) => Err(VolumeError::Io(format!("piece task failed: {join}"))),
        None => Ok(()),
    }
}

impl VolumeBackend for GatewayVolume {
    fn size_bytes(&self) -> u64 {
        self.shared.spec.size_bytes
    }

    fn read_only(&self) -> bool {
        self.shared.spec.read_only
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, VolumeError> {
        self.check(offset, u64::from(len))?;
        let (deadline, chunk_size) = self.start()?;
        let jobs = self
            .pieces(offset, u64::from(len), chunk_size, true)
            .map(|piece| Self::data_job(Opcode::Read, piece, Bytes::new(), false));
        let pieces = self.run(jobs, deadline).await?;
        crate::frontends::join_read_pieces(pieces, len)
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), VolumeError> {
        self.check_writable()?;
        self.check(offset, data.len() as u64)?;
        let (deadline, chunk_size) = self.start()?;
        let jobs = self
            .pieces(offset, data.len() as u64, chunk_size, true)
            .map(|piece| {
                let start = piece.request_offset as usize;
                let payload = data.slice(start..start + piece.len as usize);
                Self::data_job(Opcode::Write, piece, payload, fua)
            });
        self.run(jobs, deadline).await.map(drop)
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.mutate_range(Opcode::Trim, offset, len, false).await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<(), VolumeError> {
        self.check_writable()?;
        self.check(offset, len)?;
        if !flags.no_hole {
            // WRITE_ZEROES: the primaries deallocate (unallocated blocks read as zeroes).
            return self
                .mutate_range(Opcode::WriteZeroes, offset, len, false)
                .await;
        }
        if flags.fast {
            // Keeping the range allocated means sending zero blocks: no faster than a write.
            return Err(VolumeError::SlowZero);
        }
        let (deadline, chunk_size) = self.start()?;
        let zeroes = self.gateway.zeroes().clone();
        let jobs = self.pieces(offset, len, chunk_size, true).map(|piece| {
            let payload = zeroes.slice(..piece.len as usize);
            Self::data_job(Opcode::Write, piece, payload, false)
        });
        self.run(jobs, deadline).await.map(drop)
    }

    /// Sends FLUSH to every node this volume sent a mutation to since the last successful
    /// flush and that is still a primary of the volume's pool (a node that no longer is has
    /// nothing left to order: its acknowledged writes are durable on every replica, and its
    /// unacknowledged ones are being resent elsewhere). On failure the nodes stay owed.
    async fn flush(&self) -> Result<(), VolumeError> {
        let (deadline, _) = self.start()?;
        let nodes = std::mem::take(&mut *self.shared.dirty());
        if nodes.is_empty() {
            return Ok(());
        }
        let jobs = nodes.clone().into_iter().map(|node| Job {
            opcode: Opcode::Flush,
            target: Target::Node(node),
            offset_in_chunk: 0,
            len: 0,
            payload: Bytes::new(),
            fua: false,
        });
        let result = self.run(jobs, deadline).await;
        if result.is_err() {
            self.shared.dirty().extend(nodes);
        }
        result.map(drop)
    }

    /// Asks each chunk's primary for its store's allocation (BLOCK_STATUS), at most
    /// [`BLOCK_STATUS_CHUNKS_MAX`] chunks per call, and merges the answers into extents.
    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<VolumeExtent>, VolumeError> {
        self.check(offset, len)?;
        if len == 0 {
            return Err(VolumeError::Invalid("block status of zero length".into()));
        }
        let (deadline, chunk_size) = self.start()?;
        let chunk = u64::from(chunk_size);
        // Describe at most BLOCK_STATUS_CHUNKS_MAX chunks, ending on a chunk boundary.
        let limit = (offset / chunk + BLOCK_STATUS_CHUNKS_MAX) * chunk - offset;
        let pieces: Vec<Piece> = self
            .pieces(offset, len.min(limit), chunk_size, false)
            .collect();
        let jobs = pieces
            .clone()
            .into_iter()
            .map(|piece| Self::data_job(BLOCK_STATUS_OP, piece, Bytes::new(), false));
        let replies = self.run(jobs, deadline).await?;
        let mut extents: Vec<VolumeExtent> = Vec::new();
        for (piece, reply) in pieces.iter().zip(replies) {
            let runs = match postcard::from_bytes::<BlockStatusReply>(&reply) {
                Ok(BlockStatusReply::Runs(runs)) => runs,
                _ => return Err(VolumeError::Io("block status reply without runs".into())),
            };
            check_runs(&runs, piece.len)
                .map_err(|e| VolumeError::Io(format!("block status reply: {e}")))?;
            for run in runs {
                crate::frontends::push_extent(&mut extents, run.len, run.allocated);
            }
        }
        if extents.is_empty() {
            return Err(VolumeError::Io("block status described no extents".into()));
        }
        Ok(extents)
    }
}
