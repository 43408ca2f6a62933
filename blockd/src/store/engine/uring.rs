//! io_uring engine: one ring per drive, driven by the drive's own thread.
//!
//! Submissions are pushed to the submission queue and handed to the kernel in one
//! `io_uring_enter` per `wait`, so everything the store core produced while handling a batch of
//! requests and completions goes down together. The doorbell's eventfd is read through the same
//! ring, so the thread has exactly one place to block.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{IoUring, opcode, squeue, types};

use super::{Completion, DriveEngine, DriveOp, OpId, OpKind, SubmitError, check_bounds};
use crate::store::doorbell::Doorbell;
use crate::store::idmap::{IdMap, id_map};

/// Submission queue entries per ring; bounds the operations in flight on one drive.
pub const RING_ENTRIES: u32 = 256;
/// Operations the store may have in flight: one ring entry stays reserved for the doorbell.
pub const IN_FLIGHT_OPS_MAX: usize = RING_ENTRIES as usize - 1;
const DOORBELL_OP_ID: OpId = u64::MAX;

/// io_uring engine over an O_DIRECT file descriptor.
pub struct UringEngine {
    ring: IoUring,
    file: File,
    device_size: u64,
    /// Operations the kernel owns: buffers stay here until their completion is reaped.
    in_flight: IdMap<DriveOp>,
    done: VecDeque<Completion>,
    doorbell: Option<Doorbell>,
    doorbell_buf: Box<[u8; 8]>,
    doorbell_armed: bool,
    /// The ring was created disabled and is enabled by the first thread that submits, which
    /// becomes its only issuer (see `build_ring`).
    disabled: bool,
}

/// Creates the ring. Preferred set-up: completions are processed only when the drive thread
/// asks for them (`DEFER_TASKRUN`, which needs `SINGLE_ISSUER`), so a completion arriving while
/// the thread works neither interrupts it (an inter-processor interrupt, costly in a VM) nor
/// wakes it before it waits. The ring starts disabled so that the thread that first submits,
/// not the one that built the engine, becomes its issuer. Kernels before 6.1 refuse these flags;
/// the plain set-up is the fallback.
fn build_ring() -> io::Result<(IoUring, bool)> {
    let deferred = IoUring::builder()
        .setup_cqsize(RING_ENTRIES * 2)
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_r_disabled()
        .build(RING_ENTRIES);
    match deferred {
        Ok(ring) => Ok((ring, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!("io_uring without DEFER_TASKRUN (kernel older than 6.1)");
            let ring = IoUring::builder()
                .setup_cqsize(RING_ENTRIES * 2)
                .build(RING_ENTRIES)?;
            Ok((ring, false))
        }
        Err(e) => Err(e),
    }
}

impl UringEngine {
    /// Creates the ring for `file` (opened with O_DIRECT by the caller).
    pub fn new(file: File, device_size: u64, doorbell: Option<Doorbell>) -> io::Result<Self> {
        let (ring, disabled) = build_ring()?;
        let mut engine = Self {
            ring,
            disabled,
            file,
            device_size,
            in_flight: id_map(),
            done: VecDeque::new(),
            doorbell,
            doorbell_buf: Box::new([0; 8]),
            doorbell_armed: false,
        };
        engine.arm_doorbell()?;
        Ok(engine)
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.file.as_raw_fd())
    }

    fn arm_doorbell(&mut self) -> io::Result<()> {
        let Some(bell) = &self.doorbell else {
            return Ok(());
        };
        if self.doorbell_armed {
            return Ok(());
        }
        let fd: RawFd = bell.fd().as_raw_fd();
        let entry = opcode::Read::new(types::Fd(fd), self.doorbell_buf.as_mut_ptr(), 8)
            .build()
            .user_data(DOORBELL_OP_ID);
        // SAFETY: the 8-byte buffer is a heap allocation owned by `self` and never freed or
        // reused while the read is armed (`doorbell_armed` is cleared only when its CQE is
        // reaped); the eventfd outlives the ring because `self.doorbell` holds it.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("no ring entry for the doorbell"))?;
        self.doorbell_armed = true;
        Ok(())
    }

    fn entry_for(&mut self, op: &mut DriveOp) -> Result<squeue::Entry, io::Error> {
        let fd = self.fd();
        let entry = match &mut op.kind {
            OpKind::Read { offset, buf } => {
                check_bounds(self.device_size, *offset, buf.len())?;
                opcode::Read::new(fd, buf.as_mut_ptr(), buf.len() as u32)
                    .offset(*offset)
                    .build()
            }
            OpKind::Write { offset, buf, range } => {
                check_bounds(self.device_size, *offset, range.len())?;
                let ptr = buf.as_slice()[range.clone()].as_ptr();
                opcode::Write::new(fd, ptr, range.len() as u32)
                    .offset(*offset)
                    .build()
            }
            OpKind::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        };
        Ok(entry.user_data(op.id))
    }

    fn reap(&mut self) {
        let mut rearm = false;
        for cqe in self.ring.completion() {
            let id = cqe.user_data();
            if id == DOORBELL_OP_ID {
                self.doorbell_armed = false;
                rearm = true;
                continue;
            }
            let Some(op) = self.in_flight.remove(&id) else {
                tracing::error!(id, "completion for an unknown operation");
                continue;
            };
            self.done.push_back(complete(op, cqe.result()));
        }
        if rearm && let Err(e) = self.arm_doorbell() {
            tracing::error!(error = %e, "cannot re-arm the drive doorbell");
        }
    }
}

/// Turns a CQE result into a completion; a short transfer is an error (O_DIRECT transfers are
/// all-or-nothing except at the end of the device).
fn complete(op: DriveOp, res: i32) -> Completion {
    let expected = match &op.kind {
        OpKind::Read { buf, .. } => buf.len(),
        OpKind::Write { range, .. } => range.len(),
        OpKind::Flush => 0,
    };
    let result = if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else if res as usize != expected {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short transfer: {res} of {expected} bytes"),
        ))
    } else {
        Ok(())
    };
    let buf = match op.kind {
        OpKind::Read { buf, .. } => Some(buf),
        _ => None,
    };
    Completion {
        id: op.id,
        result,
        buf,
    }
}

impl DriveEngine for UringEngine {
    fn device_size(&self) -> u64 {
        self.device_size
    }

    fn capacity(&self) -> usize {
        IN_FLIGHT_OPS_MAX.saturating_sub(self.in_flight.len() + self.done.len())
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len() + self.done.len()
    }

    fn submit(&mut self, mut op: DriveOp) -> Result<(), SubmitError> {
        assert!(
            !self.in_flight.contains_key(&op.id),
            "duplicate operation id {}",
            op.id
        );
        if self.capacity() == 0 {
            return Err(SubmitError::QueueFull(Box::new(op)));
        }
        let entry = match self.entry_for(&mut op) {
            Ok(entry) => entry,
            Err(e) => {
                self.done.push_back(complete_with_error(op, e));
                return Ok(());
            }
        };
        // SAFETY: every buffer the entry points to is owned by `op` (directly or through an
        // `Arc`), and `op` is stored in `self.in_flight` until its CQE is reaped, so the memory
        // stays valid and unmoved (heap allocations) while the kernel uses it.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            return Err(SubmitError::QueueFull(Box::new(op)));
        }
        self.in_flight.insert(op.id, op);
        Ok(())
    }

    fn wait(&mut self, block: bool) -> io::Result<()> {
        if !block || !self.done.is_empty() {
            return self.submit_pending(0);
        }
        // With nothing in flight, only the doorbell can end the wait.
        let can_wake = !self.in_flight.is_empty() || self.doorbell.is_some();
        self.submit_pending(usize::from(can_wake))
    }

    fn poll_completion(&mut self) -> Option<Completion> {
        if self.done.is_empty() {
            self.reap();
        }
        self.done.pop_front()
    }
}

impl UringEngine {
    fn submit_pending(&mut self, want: usize) -> io::Result<()> {
        if self.disabled {
            self.ring.submitter().register_enable_rings()?;
            self.disabled = false;
        }
        if want == 0 && self.ring.submission().is_empty() && !self.ring.submission().taskrun() {
            // Nothing to submit and no completion work pending: no system call needed.
            self.reap();
            return Ok(());
        }
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // Completion queue full: reap and retry.
                    self.reap();
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        self.reap();
        Ok(())
    }
}

fn complete_with_error(op: DriveOp, e: io::Error) -> Completion {
    let buf = match op.kind {
        OpKind::Read { buf, .. } => Some(buf),
        _ => None,
    };
    Completion {
        id: op.id,
        result: Err(e),
        buf,
    }
}
