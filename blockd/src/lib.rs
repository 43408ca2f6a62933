//! `blockd`, the Basalt storage node daemon, as a library: the binary in `main.rs` is a thin
//! command-line shell over these modules, and integration tests and benchmarks use them
//! directly.

pub mod api;
pub mod cli;
pub mod frontends;
pub mod gateway;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod replication;
pub mod store;
pub mod view;
