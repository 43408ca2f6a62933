//! Drive engines: the only code that performs drive I/O.
//!
//! The store core (`super::core`) decides *what* to read, write and flush; an engine does it.
//! Engines own each operation and its buffer from `submit` until the matching `Completion` is
//! handed back, and produce exactly one completion per operation, errors included.
//!
//! - [`uring::UringEngine`]: production, io_uring on an O_DIRECT file descriptor.
//! - [`sync::SyncEngine`]: blocking `pread`/`pwrite`, for machines where io_uring is disabled.
//! - [`sim::SimDrive`]: in-memory drive with a volatile write cache, for power-loss tests.

pub mod sim;
pub mod sync;
pub mod uring;

use std::io;
use std::ops::Range;
use std::sync::Arc;

use super::buf::AlignedBuf;

/// Identifies an operation between submission and completion. Unique among in-flight ops.
pub type OpId = u64;

/// One drive operation.
#[derive(Debug)]
pub enum OpKind {
    /// Read `buf.len()` bytes at `offset` into `buf`.
    Read {
        /// Device offset (4 KiB aligned).
        offset: u64,
        /// Destination; returned in the completion.
        buf: AlignedBuf,
    },
    /// Write `buf[range]` at `offset`. The buffer is shared (e.g. with the read overlay), so the
    /// engine only reads it.
    Write {
        /// Device offset (4 KiB aligned).
        offset: u64,
        /// Source buffer.
        buf: Arc<AlignedBuf>,
        /// Byte range of `buf` to write (4 KiB aligned).
        range: Range<usize>,
    },
    /// Make every write completed before this flush was submitted durable.
    Flush,
}

/// An operation with its id.
#[derive(Debug)]
pub struct DriveOp {
    /// Caller-chosen id, echoed in the completion.
    pub id: OpId,
    /// What to do.
    pub kind: OpKind,
}

/// The result of one operation.
#[derive(Debug)]
pub struct Completion {
    /// Id of the operation.
    pub id: OpId,
    /// Success, or the device error.
    pub result: io::Result<()>,
    /// The read buffer of a `Read`, filled on success.
    pub buf: Option<AlignedBuf>,
}

/// Rejection of a submission (the operation is returned with the error).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No room: the caller must wait for completions first.
    #[error("drive queue full")]
    QueueFull(Box<DriveOp>),
}

/// A drive I/O engine. See the module documentation for the ownership contract.
pub trait DriveEngine: Send {
    /// Size of the device in bytes.
    fn device_size(&self) -> u64;
    /// How many more operations can be submitted before completions are reaped.
    fn capacity(&self) -> usize;
    /// Number of operations submitted and not yet returned by `poll_completion`.
    fn in_flight(&self) -> usize;
    /// Queues an operation. It may not start until `wait` is called.
    fn submit(&mut self, op: DriveOp) -> Result<(), SubmitError>;
    /// Starts queued operations. With `block`, then waits until a completion is available or
    /// the engine's doorbell rings (a new request arrived); returns at once if neither can
    /// happen (nothing in flight, no doorbell).
    fn wait(&mut self, block: bool) -> io::Result<()>;
    /// Takes one finished operation, if any.
    fn poll_completion(&mut self) -> Option<Completion>;
}

/// Submits one operation and blocks until it completes (start-up and recovery paths, which run
/// before any concurrent work exists).
pub fn run_one(engine: &mut dyn DriveEngine, kind: OpKind) -> io::Result<Option<AlignedBuf>> {
    assert_eq!(engine.in_flight(), 0, "run_one needs an idle engine");
    const SYNC_OP_ID: OpId = u64::MAX - 1;
    engine
        .submit(DriveOp {
            id: SYNC_OP_ID,
            kind,
        })
        .map_err(|_| io::Error::other("drive queue full on an idle engine"))?;
    loop {
        if let Some(c) = engine.poll_completion() {
            assert_eq!(c.id, SYNC_OP_ID);
            return c.result.map(|()| c.buf);
        }
        engine.wait(true)?;
    }
}

/// Reads `len` bytes at `offset` synchronously.
pub fn read_at(engine: &mut dyn DriveEngine, offset: u64, len: usize) -> io::Result<AlignedBuf> {
    let buf = AlignedBuf::zeroed(len);
    let buf = run_one(engine, OpKind::Read { offset, buf })?;
    buf.ok_or_else(|| io::Error::other("engine returned no read buffer"))
}

/// Writes `data` (block-aligned length) at `offset` synchronously.
pub fn write_at(engine: &mut dyn DriveEngine, offset: u64, data: AlignedBuf) -> io::Result<()> {
    let range = 0..data.len();
    run_one(
        engine,
        OpKind::Write {
            offset,
            buf: Arc::new(data),
            range,
        },
    )
    .map(|_| ())
}

/// Flushes synchronously.
pub fn flush(engine: &mut dyn DriveEngine) -> io::Result<()> {
    run_one(engine, OpKind::Flush).map(|_| ())
}

/// Checks that an operation stays inside the device and is block-aligned; engines refuse
/// anything else with `EINVAL` rather than touching the wrong bytes.
pub fn check_bounds(device_size: u64, offset: u64, len: usize) -> io::Result<()> {
    let aligned = offset.is_multiple_of(4096) && len.is_multiple_of(4096);
    let inside = offset
        .checked_add(len as u64)
        .is_some_and(|end| end <= device_size);
    if aligned && inside {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "I/O of {len} bytes at {offset} is misaligned or outside the device ({device_size} bytes)"
            ),
        ))
    }
}

/// Runs independent operations with as many in flight as the engine allows and waits for all
/// of them (start-up and recovery paths). Returns the read buffers in operation order (`None`
/// for writes and flushes), or the first error.
pub fn run_many(
    engine: &mut dyn DriveEngine,
    kinds: Vec<OpKind>,
) -> io::Result<Vec<Option<AlignedBuf>>> {
    assert_eq!(engine.in_flight(), 0, "run_many needs an idle engine");
    let total = kinds.len();
    let mut results: Vec<Option<AlignedBuf>> = (0..total).map(|_| None).collect();
    let mut pending = kinds.into_iter().enumerate();
    let mut next = pending.next();
    let (mut done, mut first_error) = (0, None);
    while done < total {
        while let Some((i, kind)) = next.take() {
            if engine.capacity() == 0 {
                next = Some((i, kind));
                break;
            }
            match engine.submit(DriveOp {
                id: i as OpId,
                kind,
            }) {
                Ok(()) => next = pending.next(),
                Err(SubmitError::QueueFull(op)) => {
                    next = Some((i, op.kind));
                    break;
                }
            }
        }
        while let Some(c) = engine.poll_completion() {
            done += 1;
            match c.result {
                Ok(()) => results[c.id as usize] = c.buf,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if done < total {
            engine.wait(true)?;
        }
    }
    first_error.map_or(Ok(results), Err)
}
