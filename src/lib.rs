//! Basalt core library: the pure logic shared by the daemon (`blockd`), the host initiator and
//! the `basalt` CLI.
//!
//! Nothing in this crate opens a socket, touches a disk or reads the clock: codecs take bytes and
//! return bytes or events, placement takes a cluster description and returns a map. That keeps
//! every piece unit-testable and fuzzable, and keeps the daemon's async code a thin shell.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod config;
pub mod ids;
pub mod meta;
pub mod nbd;
pub mod placement;
pub mod size;
pub mod units;
pub mod volume;
pub mod wire;
