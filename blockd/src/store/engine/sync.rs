//! Blocking engine: each operation runs to completion inside `submit` with `pread`/`pwrite`/
//! `fdatasync`. A fallback for hosts where io_uring is disabled (seccomp,
//! `kernel.io_uring_disabled`), and a reference the io_uring engine is tested against.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use super::{Completion, DriveEngine, DriveOp, OpKind, SubmitError, check_bounds};
use crate::store::doorbell::Doorbell;

/// Blocking `pread`/`pwrite` engine.
pub struct SyncEngine {
    file: File,
    device_size: u64,
    done: VecDeque<Completion>,
    doorbell: Option<Doorbell>,
}

impl SyncEngine {
    /// Engine over an already opened (O_DIRECT) device.
    pub fn new(file: File, device_size: u64, doorbell: Option<Doorbell>) -> Self {
        Self {
            file,
            device_size,
            done: VecDeque::new(),
            doorbell,
        }
    }

    fn run(&mut self, kind: OpKind) -> (io::Result<()>, Option<crate::store::buf::AlignedBuf>) {
        match kind {
            OpKind::Read { offset, mut buf } => {
                let r = check_bounds(self.device_size, offset, buf.len())
                    .and_then(|()| read_exact_at(&self.file, buf.as_mut_slice(), offset));
                (r, Some(buf))
            }
            OpKind::Write { offset, buf, range } => {
                let data = &buf.as_slice()[range];
                let r = check_bounds(self.device_size, offset, data.len())
                    .and_then(|()| write_all_at(&self.file, data, offset));
                (r, None)
            }
            OpKind::Flush => (
                rustix::fs::fdatasync(self.file.as_fd()).map_err(Into::into),
                None,
            ),
        }
    }
}

fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pread(file.as_fd(), &mut *buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(file.as_fd(), buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl DriveEngine for SyncEngine {
    fn device_size(&self) -> u64 {
        self.device_size
    }

    fn capacity(&self) -> usize {
        usize::MAX / 2
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn submit(&mut self, op: DriveOp) -> Result<(), SubmitError> {
        let (result, buf) = self.run(op.kind);
        self.done.push_back(Completion {
            id: op.id,
            result,
            buf,
        });
        Ok(())
    }

    fn wait(&mut self, block: bool) -> io::Result<()> {
        if self.done.is_empty()
            && block
            && let Some(bell) = &self.doorbell
        {
            bell.wait()?;
        }
        Ok(())
    }

    fn poll_completion(&mut self) -> Option<Completion> {
        self.done.pop_front()
    }
}
