//! The drive store: one instance per raw drive, holding chunk replicas.
//!
//! Layering, from the disk up:
//! - [`engine`]: the only code that performs I/O (io_uring in production, a simulated drive with
//!   a volatile cache in the power-loss tests).
//! - [`format`] and [`geometry`]: the on-disk layout, pure encode/decode.
//! - [`core`]: the sans-IO store (block maps, allocator, journal, checkpoints). Requests and
//!   completions in, drive operations and replies out.
//! - [`recovery`] and [`mkfs`]: open-time replay and `blockd format`, synchronous over an engine.
//! - [`handle`]: the async [`Store`] handle and the per-drive thread that drives the core.
//!
//! The on-disk format and the crash-consistency argument are in `docs/store-format.md`.

pub mod alloc;
pub mod buf;
pub mod core;
pub mod device;
pub mod doorbell;
pub mod engine;
pub mod format;
pub mod geometry;
pub mod handle;
pub mod idmap;
pub mod mkfs;
pub mod recovery;
pub mod types;

pub use self::handle::{OpenOptions, Store, format};
pub use self::mkfs::FormatOptions;
pub use self::recovery::{Expect, OpenError};
pub use self::types::{ChunkInfo, Extent, StoreError, StoreStats};
