//! The async handle to a store and the drive thread behind it.
//!
//! Each drive has one dedicated thread that owns the drive engine and the sans-IO core. Async
//! callers send requests over a bounded channel (back-pressure when the drive is saturated) and
//! await a oneshot reply. The thread drains every queued request, every completion and every
//! drive operation the core produced before it submits them together and sleeps, so many
//! concurrent requests share one `io_uring_enter` and one journal flush.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use basalt::ids::{ChunkKey, ChunkVersion};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::core::{CoreOptions, StoreCore};
use super::device::{BUSY_WAIT_DEFAULT, create_file, open_device};
use super::doorbell::Doorbell;
use super::engine::sync::SyncEngine;
use super::engine::uring::UringEngine;
use super::engine::{DriveEngine, DriveOp, SubmitError};
use super::format::Superblock;
use super::idmap::{IdMap, id_map};
use super::mkfs::{FormatOptions, MkfsError, format_drive};
use super::recovery::{Expect, OpenError, RecoveryReport, recover};
use super::types::{ChunkInfo, Extent, Reply, Request, StoreError, StoreStats};

/// Requests queued to a drive thread before senders wait.
pub const REQUEST_QUEUE_DEPTH: usize = 1024;
/// Requests taken from the queue per round, so completions keep flowing under load.
const REQUESTS_PER_ROUND_MAX: usize = 256;

/// Which I/O engine drives the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring (production).
    #[default]
    IoUring,
    /// Blocking pread/pwrite, for hosts where io_uring is disabled.
    Blocking,
}

/// How to open a store.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    /// Identity the drive must have.
    pub expect: Expect,
    /// Runtime tunables.
    pub core: CoreOptions,
    /// I/O engine.
    pub engine: EngineKind,
    /// How long to wait for a previous holder of the drive's lock (see `BUSY_WAIT_DEFAULT`).
    pub busy_wait: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            expect: Expect::default(),
            core: CoreOptions::default(),
            engine: EngineKind::default(),
            busy_wait: BUSY_WAIT_DEFAULT,
        }
    }
}

struct Message {
    request: Request,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

/// An open store. Cheap to share behind an `Arc`; every method may be called concurrently.
pub struct Store {
    tx: mpsc::Sender<Message>,
    doorbell: Doorbell,
    thread: Option<JoinHandle<()>>,
    superblock: Superblock,
    report: RecoveryReport,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("drive_id", &self.superblock.drive_id)
            .finish()
    }
}

fn make_engine(
    kind: EngineKind,
    path: &Path,
    doorbell: &Doorbell,
    busy_wait: Duration,
) -> Result<Box<dyn DriveEngine>, OpenError> {
    let device = open_device(path, busy_wait)?;
    let bell = Some(doorbell.clone());
    Ok(match kind {
        EngineKind::IoUring => Box::new(UringEngine::new(device.file, device.size_bytes, bell)?),
        EngineKind::Blocking => Box::new(SyncEngine::new(device.file, device.size_bytes, bell)),
    })
}

/// How long `format` waits for the drive's lock: shorter than an open's wait, since formatting
/// a drive that is in use is refused anyway.
const FORMAT_BUSY_WAIT: Duration = Duration::from_secs(1);

/// Formats the drive at `path`. With `create_size_bytes`, first creates it as a preallocated
/// regular file of that size (it must not exist).
pub fn format(
    path: &Path,
    opts: &FormatOptions,
    create_size_bytes: Option<u64>,
) -> Result<Superblock, FormatDriveError> {
    if let Some(size) = create_size_bytes {
        create_file(path, size)?;
    }
    let doorbell = Doorbell::new().map_err(MkfsError::Io)?;
    let mut engine = match make_engine(EngineKind::IoUring, path, &doorbell, FORMAT_BUSY_WAIT) {
        Ok(engine) => engine,
        Err(OpenError::Device(e)) => return Err(e.into()),
        Err(e) => return Err(FormatDriveError::Open(e)),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(format_drive(engine.as_mut(), opts, now)?)
}

/// Why `format` failed.
#[derive(Debug, thiserror::Error)]
pub enum FormatDriveError {
    /// The drive could not be opened or created.
    #[error(transparent)]
    Device(#[from] super::device::DeviceError),
    /// Opening the engine failed.
    #[error(transparent)]
    Open(OpenError),
    /// Formatting refused or failed.
    #[error(transparent)]
    Mkfs(#[from] MkfsError),
}

/// Wraps a drive's engine before the store uses it (e.g. to measure device I/O).
pub type EngineWrap = Box<dyn FnOnce(Box<dyn DriveEngine>) -> Box<dyn DriveEngine> + Send>;

impl Store {
    /// Opens the drive at `path`: locks it, recovers it and starts its thread.
    pub async fn open(path: &Path, opts: OpenOptions) -> Result<Self, OpenError> {
        Self::open_wrapped(path, opts, Box::new(|engine| engine)).await
    }

    /// [`Store::open`] with the engine passed through `wrap` first.
    pub async fn open_wrapped(
        path: &Path,
        opts: OpenOptions,
        wrap: EngineWrap,
    ) -> Result<Self, OpenError> {
        let doorbell = Doorbell::new()?;
        let path = path.to_owned();
        let bell = doorbell.clone();
        let make = move || make_engine(opts.engine, &path, &bell, opts.busy_wait).map(wrap);
        Self::start(make, doorbell, opts).await
    }

    /// Opens a store over an engine the caller built (tests: simulated drives).
    pub async fn open_engine(
        engine: Box<dyn DriveEngine>,
        doorbell: Doorbell,
        opts: OpenOptions,
    ) -> Result<Self, OpenError> {
        Self::start(move || Ok(engine), doorbell, opts).await
    }

    async fn start<F>(make: F, doorbell: Doorbell, opts: OpenOptions) -> Result<Self, OpenError>
    where
        F: FnOnce() -> Result<Box<dyn DriveEngine>, OpenError> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE_DEPTH);
        let (opened_tx, opened_rx) = oneshot::channel();
        let bell = doorbell.clone();
        let thread = std::thread::Builder::new()
            .name("basalt-drive".into())
            .spawn(move || {
                let mut engine = match make() {
                    Ok(engine) => engine,
                    Err(e) => return drop(opened_tx.send(Err(e))),
                };
                match recover(engine.as_mut(), &opts.expect) {
                    Ok(recovered) => {
                        let core = StoreCore::new(recovered.init, opts.core);
                        let _ = opened_tx.send(Ok((recovered.superblock, recovered.report)));
                        DriveThread::new(core, engine, rx, bell).run();
                    }
                    Err(e) => drop(opened_tx.send(Err(e))),
                }
            })?;
        let result = opened_rx.await.unwrap_or_else(|_| {
            Err(OpenError::Damaged(
                "drive thread ended during recovery".into(),
            ))
        });
        match result {
            Ok((superblock, report)) => Ok(Self {
                tx,
                doorbell,
                thread: Some(thread),
                superblock,
                report,
            }),
            Err(e) => {
                let _ = thread.join();
                Err(e)
            }
        }
    }

    /// The drive's superblock (identity and geometry).
    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    /// What recovery did when the store was opened.
    pub fn recovery_report(&self) -> RecoveryReport {
        self.report
    }

    /// Chunk size of this drive.
    pub fn chunk_size_bytes(&self) -> u32 {
        self.superblock.geometry.chunk_size_bytes
    }

    async fn call(&self, request: Request) -> Result<Reply, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Message { request, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        self.doorbell.ring();
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn call_done(&self, request: Request) -> Result<(), StoreError> {
        match self.call(request).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Writes `data` at byte `offset` of `chunk` (multiples of 512 bytes); returns once
    /// durable. The chunk's version becomes `version`.
    pub async fn write(
        &self,
        chunk: ChunkKey,
        offset: u32,
        data: Bytes,
        version: ChunkVersion,
    ) -> Result<(), StoreError> {
        self.call_done(Request::Write {
            chunk,
            offset,
            data,
            version,
        })
        .await
    }

    /// Reads `len` bytes at `offset`; unwritten ranges read as zeroes.
    pub async fn read(&self, chunk: ChunkKey, offset: u32, len: u32) -> Result<Bytes, StoreError> {
        match self.call(Request::Read { chunk, offset, len }).await? {
            Reply::Data(data) => Ok(data),
            other => Err(unexpected(other)),
        }
    }

    /// Discards a range: it reads as zeroes and whole blocks stop using space. Durable when it
    /// returns.
    pub async fn trim(
        &self,
        chunk: ChunkKey,
        offset: u32,
        len: u32,
        version: ChunkVersion,
    ) -> Result<(), StoreError> {
        self.call_done(Request::Unmap {
            chunk,
            offset,
            len,
            version,
        })
        .await
    }

    /// Zeroes a range. Implemented as a discard (unallocated blocks read as zeroes), so it
    /// releases space and never writes zero blocks.
    pub async fn write_zeroes(
        &self,
        chunk: ChunkKey,
        offset: u32,
        len: u32,
        version: ChunkVersion,
    ) -> Result<(), StoreError> {
        self.trim(chunk, offset, len, version).await
    }

    /// Returns once every mutation issued before it has completed. (Each mutation is already
    /// durable when acknowledged; this is the barrier NBD FLUSH maps to.)
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.call_done(Request::Flush).await
    }

    /// The version of the chunk's replica here, or `None` if this drive does not hold it.
    pub async fn chunk_version(&self, chunk: ChunkKey) -> Result<Option<ChunkVersion>, StoreError> {
        match self.call(Request::ChunkVersion { chunk }).await? {
            Reply::Version(version) => Ok(version),
            other => Err(unexpected(other)),
        }
    }

    /// Every chunk held, with version and allocation (recovery compares these across nodes).
    pub async fn list_chunks(&self) -> Result<Vec<ChunkInfo>, StoreError> {
        match self.call(Request::ListChunks).await? {
            Reply::Chunks(chunks) => Ok(chunks),
            other => Err(unexpected(other)),
        }
    }

    /// Removes the chunk and frees its blocks; durable when it returns.
    pub async fn delete_chunk(&self, chunk: ChunkKey) -> Result<(), StoreError> {
        self.call_done(Request::DeleteChunk { chunk }).await
    }

    /// Allocated and unallocated extents of a range (NBD `base:allocation`).
    pub async fn block_status(
        &self,
        chunk: ChunkKey,
        offset: u32,
        len: u32,
    ) -> Result<Vec<Extent>, StoreError> {
        match self
            .call(Request::BlockStatus { chunk, offset, len })
            .await?
        {
            Reply::Extents(extents) => Ok(extents),
            other => Err(unexpected(other)),
        }
    }

    /// Capacity, usage and counters.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        match self.call(Request::Stats).await? {
            Reply::Stats(stats) => Ok(stats),
            other => Err(unexpected(other)),
        }
    }

    /// Writes all metadata back so the journal is (nearly) empty.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.call_done(Request::Checkpoint).await
    }

    /// Clean shutdown: checkpoint, then stop the thread. The next open replays nothing.
    pub async fn close(mut self) -> Result<(), StoreError> {
        let result = self.checkpoint().await;
        let thread = self.thread.take();
        drop(self);
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                return Err(StoreError::Failed("drive thread panicked".into()));
            }
        }
        result
    }
}

/// A mutation already queued to the drive thread by [`Store::submit_write`] or
/// [`Store::submit_unmap`]; [`Submitted::done`] waits for its result.
#[derive(Debug)]
pub struct Submitted(oneshot::Receiver<Result<Reply, StoreError>>);

impl Submitted {
    /// Waits until the mutation is durable (or failed).
    pub async fn done(self) -> Result<(), StoreError> {
        match self.0.await.map_err(|_| StoreError::Closed)?? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

/// Enqueue-now, await-later mutations: the store orders overlapping mutations by arrival, so a
/// caller that must fix the order (the replication shell applies versions in order) queues
/// each one before the next and awaits the completions later, concurrently.
impl Store {
    async fn submit(&self, request: Request) -> Result<Submitted, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Message { request, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        self.doorbell.ring();
        Ok(Submitted(rx))
    }

    /// [`Store::write`], returning once the write is queued (after every request queued
    /// before it); waits only while the queue is full.
    pub async fn submit_write(
        &self,
        chunk: ChunkKey,
        offset: u32,
        data: Bytes,
        version: ChunkVersion,
    ) -> Result<Submitted, StoreError> {
        self.submit(Request::Write {
            chunk,
            offset,
            data,
            version,
        })
        .await
    }

    /// [`Store::trim`] (and so [`Store::write_zeroes`]), returning once queued.
    pub async fn submit_unmap(
        &self,
        chunk: ChunkKey,
        offset: u32,
        len: u32,
        version: ChunkVersion,
    ) -> Result<Submitted, StoreError> {
        self.submit(Request::Unmap {
            chunk,
            offset,
            len,
            version,
        })
        .await
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the channel ends the thread once in-flight work is done; wake it to notice.
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        self.doorbell.ring_always();
    }
}

fn unexpected(reply: Reply) -> StoreError {
    StoreError::Failed(format!("internal error: unexpected reply {reply:?}"))
}

/// The loop of a drive's thread.
struct DriveThread {
    core: StoreCore,
    engine: Box<dyn DriveEngine>,
    rx: mpsc::Receiver<Message>,
    doorbell: Doorbell,
    waiting: IdMap<oneshot::Sender<Result<Reply, StoreError>>>,
    next_tag: u64,
    held: Option<DriveOp>,
    closing: bool,
}

impl DriveThread {
    fn new(
        core: StoreCore,
        engine: Box<dyn DriveEngine>,
        rx: mpsc::Receiver<Message>,
        doorbell: Doorbell,
    ) -> Self {
        let waiting = id_map();
        Self {
            core,
            engine,
            rx,
            doorbell,
            waiting,
            next_tag: 0,
            held: None,
            closing: false,
        }
    }

    fn run(mut self) {
        loop {
            // Completions first, and their replies out at once: the callers' threads start on
            // them while this one handles new requests and submits.
            let completed = self.take_completions();
            self.deliver_replies();
            let progressed = self.take_requests() | completed;
            self.submit_ops();
            self.deliver_replies();
            if self.closing && self.core.is_idle() && self.held.is_none() {
                break;
            }
            let block = !progressed && self.prepare_sleep();
            let waited = self.engine.wait(block);
            if block {
                self.doorbell.cancel_sleep();
            }
            if let Err(e) = waited {
                self.core.fail(format!("drive engine failed: {e}"));
                self.deliver_replies();
                if self.engine.in_flight() == 0 {
                    break;
                }
            }
        }
        self.deliver_replies();
    }

    /// Announces sleep; false if work arrived meanwhile.
    fn prepare_sleep(&mut self) -> bool {
        self.doorbell.prepare_sleep();
        if self.closing || !self.rx.is_empty() {
            self.doorbell.cancel_sleep();
            return false;
        }
        true
    }

    fn take_requests(&mut self) -> bool {
        let mut taken = false;
        for _ in 0..REQUESTS_PER_ROUND_MAX {
            match self.rx.try_recv() {
                Ok(Message { request, reply }) => {
                    self.next_tag += 1;
                    self.waiting.insert(self.next_tag, reply);
                    self.core.handle_request(self.next_tag, request);
                    taken = true;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closing = true;
                    break;
                }
            }
        }
        taken
    }

    fn take_completions(&mut self) -> bool {
        let mut taken = false;
        while let Some(c) = self.engine.poll_completion() {
            self.core.handle_completion(c);
            taken = true;
        }
        taken
    }

    fn submit_ops(&mut self) {
        loop {
            let Some(op) = self.held.take().or_else(|| self.core.poll_op()) else {
                return;
            };
            match self.engine.submit(op) {
                Ok(()) => {}
                Err(SubmitError::QueueFull(op)) => {
                    self.held = Some(*op);
                    return;
                }
            }
        }
    }

    fn deliver_replies(&mut self) {
        while let Some((tag, result)) = self.core.poll_reply() {
            if let Some(reply) = self.waiting.remove(&tag) {
                // The caller may have given up (dropped its future); that is fine.
                let _ = reply.send(result);
            }
        }
    }
}
