//! Wakes a drive thread that sleeps in its engine when a new request is queued.
//!
//! An eventfd the engine can wait on together with drive completions (io_uring reads it as one
//! more operation). Callers ring only when the thread announced it is about to sleep, so a busy
//! drive costs no extra system call per request.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::event::{EventfdFlags, eventfd};

/// Shared handle to the eventfd; clones ring the same bell.
#[derive(Clone, Debug)]
pub struct Doorbell {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fd: OwnedFd,
    sleeping: AtomicBool,
}

impl Doorbell {
    /// A new, silent doorbell.
    pub fn new() -> io::Result<Self> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC)?;
        Ok(Self {
            inner: Arc::new(Inner {
                fd,
                sleeping: AtomicBool::new(false),
            }),
        })
    }

    /// Called by producers after queueing work: wakes the thread if it sleeps or is about to.
    pub fn ring(&self) {
        // Pairs with the fence in `prepare_sleep`: either the thread sees the queued work, or
        // this sees the sleeping flag.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.inner.sleeping.swap(false, Ordering::SeqCst) {
            // A failed write can only mean the counter is saturated, i.e. already rung.
            let _ = rustix::io::write(&self.inner.fd, &1u64.to_ne_bytes());
        }
    }

    /// Wakes the thread whether or not it announced sleep (shutdown).
    pub fn ring_always(&self) {
        let _ = rustix::io::write(&self.inner.fd, &1u64.to_ne_bytes());
    }

    /// Called by the thread before re-checking its queue and blocking. If the queue turns out
    /// non-empty the thread calls `cancel_sleep` instead of blocking.
    pub fn prepare_sleep(&self) {
        self.inner.sleeping.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// The thread will not block after all.
    pub fn cancel_sleep(&self) {
        self.inner.sleeping.store(false, Ordering::SeqCst);
    }

    /// Blocks until rung (engines without their own wait primitive).
    pub fn wait(&self) -> io::Result<()> {
        let mut value = [0u8; 8];
        loop {
            match rustix::io::read(&self.inner.fd, &mut value) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The eventfd, for engines that wait on it themselves.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }
}
