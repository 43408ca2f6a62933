//! Opening the raw drive: O_DIRECT, an exclusive lock, and its size.
//!
//! Data never passes through the page cache: the store's durability argument relies on its own
//! flushes, and caching would double memory use. `flock` keeps two processes (two `blockd`s, or
//! `blockd format` on a drive in use) from writing the same drive.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, SeekFrom, flock, seek};

/// An opened, locked drive.
#[derive(Debug)]
pub struct Device {
    /// The O_DIRECT file descriptor.
    pub file: File,
    /// Size in bytes (a block device's capacity, or a regular file's length).
    pub size_bytes: u64,
}

/// Why a drive cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Another process holds the drive's lock.
    #[error("{path} is in use by another process (exclusive lock held)")]
    Busy {
        /// The drive.
        path: String,
    },
    /// Opening or sizing failed.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The drive.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// Neither a block device nor a regular file.
    #[error("{path} is neither a block device nor a regular file")]
    NotADrive {
        /// The path.
        path: String,
    },
}

/// How long opening waits for another holder of the drive's lock to go away. A process killed
/// with SIGKILL keeps its lock until the kernel has torn down its io_uring (tens of
/// milliseconds, seconds under load), and a process forking elsewhere holds a copy of the
/// descriptor until it execs; a restarted daemon must not fail on either.
pub const BUSY_WAIT_DEFAULT: Duration = Duration::from_secs(10);

/// Opens `path` read-write with O_DIRECT and takes an exclusive lock on it, waiting up to
/// `busy_wait` for a previous holder to release it.
pub fn open_device(path: &Path, busy_wait: Duration) -> Result<Device, DeviceError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match open_device_once(path) {
            Err(DeviceError::Busy { .. }) if started.elapsed() + pause <= busy_wait => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn open_device_once(path: &Path) -> Result<Device, DeviceError> {
    let name = path.display().to_string();
    let open_error = |source| DeviceError::Open {
        path: name.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path)
        .map_err(open_error)?;
    let kind = file.metadata().map_err(open_error)?.file_type();
    if !kind.is_block_device() && !kind.is_file() {
        return Err(DeviceError::NotADrive { path: name });
    }
    match flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(DeviceError::Busy { path: name }),
        Err(e) => return Err(open_error(e.into())),
    }
    let size_bytes = seek(file.as_fd(), SeekFrom::End(0)).map_err(|e| open_error(e.into()))?;
    Ok(Device { file, size_bytes })
}

/// Creates a regular file of `size_bytes` with its space allocated up front (so a full
/// filesystem shows at format time, not as a write error later).
pub fn create_file(path: &Path, size_bytes: u64) -> Result<(), DeviceError> {
    let name = path.display().to_string();
    let open_error = |source| DeviceError::Open {
        path: name.clone(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(open_error)?;
    rustix::fs::fallocate(
        file.as_fd(),
        rustix::fs::FallocateFlags::empty(),
        0,
        size_bytes,
    )
    .map_err(|e| open_error(e.into()))?;
    Ok(())
}
