//! `basalt-initiator`: attaches Basalt volumes to this host as `/dev/nbdX` through the
//! kernel's generic-netlink NBD interface, and keeps them attached across node failures.
//!
//! Layers, pure first: [`netlink`] turns requests into bytes and kernel messages into typed
//! values; `basalt::nbd::client` runs the NBD handshake over any byte stream. The rest is a thin
//! synchronous shell: [`kernel`] owns the netlink sockets, [`endpoints`] asks the API where a
//! volume is exported and opens negotiated connections, [`attach`] wires them to a device,
//! [`state`] records what is attached under `/run/basalt/`, and [`supervise`] swaps in new
//! connections when the kernel reports one dead. `docs/initiator.md` is the operator's guide.
#![forbid(unsafe_code)]

pub mod attach;
pub mod endpoints;
pub mod error;
pub mod kernel;
pub mod netlink;
pub mod state;
pub mod supervise;

pub use error::Error;
