//! The node-to-node transport: a thin tokio shell around the sans-IO codec [`basalt::wire`]
//! (DESIGN §6, `docs/wire-protocol.md`, "Transport").
//!
//! - [`PeerServer`] accepts TCP connections, runs the acceptor side of the handshake under a
//!   deadline, then reads frames and hands each request to a [`PeerService`] on its own task, so
//!   requests on one connection run concurrently and are answered out of order. At most
//!   [`PeerConfig::server_requests_concurrent_max`] requests run per connection; at the bound the
//!   connection stops reading (TCP backpressure reaches the sender).
//! - [`PeerClient`] is one authenticated connection: pipelined [`PeerClient::call`]s matched to
//!   their replies by [`basalt::wire::InFlight`], each under a timeout. When the connection dies
//!   every call in flight on it fails at once with [`PeerError::ConnectionLost`].
//! - [`Peers`] is a pool of clients keyed by [`basalt::ids::NodeId`]: an updatable address book, lazy
//!   connection on first use, reconnection with bounded exponential backoff.
//!
//! Each connection has one writer task that drains a queue of encoded frames into vectored
//! writes (header and payload as separate slices: a 4 KiB payload is never copied). Any error in
//! a peer's bytes closes that connection only, with a `tracing` log and a per-reason counter in
//! [`PeerStats`]; a handshake failure first flushes the REFUSE frame naming the reason.

mod client;
mod error;
mod io;
mod pool;
mod server;
mod service;
mod stats;

use std::time::Duration;

use basalt::wire::{HandshakeConfig, REQUESTS_IN_FLIGHT_MAX};

pub use client::PeerClient;
pub use error::{CloseReason, PeerError};
pub use pool::Peers;
pub use server::PeerServer;
pub use service::{BoxFuture, ControlHandler, IoHandler, PeerService, Reply, Router};
pub use stats::{PeerStats, PeerStatsSnapshot};

/// Most frames the writer task takes from its queue for one vectored write. Caps the work per
/// wake and the `iovec` count (two slices per frame) well under Linux's `IOV_MAX` of 1024.
pub const WRITE_BATCH_FRAMES_MAX: usize = 32;

/// Most slices passed to one `writev`: a header and a payload per frame of a batch.
pub const WRITE_SLICES_MAX: usize = 2 * WRITE_BATCH_FRAMES_MAX;

/// Smallest read, in bytes: enough for several small frames per system call.
pub const READ_SIZE_BYTES_MIN: usize = 64 * 1024;

/// Most accepted connections one server keeps open; at the bound it stops accepting (the
/// kernel backlog absorbs, then refuses, more). A cluster has at most a few hundred nodes, each
/// opening a handful of connections.
pub const SERVER_CONNECTIONS_MAX: usize = 4096;

/// Most connections [`Peers`] keeps to one peer: more only adds sockets once the peer's
/// cores are busy.
pub const CONNECTIONS_PER_PEER_MAX: usize = 16;

/// Longest reconnect backoff accepted, so a typo cannot make a peer unreachable for days.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(3600);

const _: () = assert!(WRITE_SLICES_MAX <= 1024);
const _: () = assert!(READ_SIZE_BYTES_MIN >= basalt::wire::FRAME_HEADER_SIZE_BYTES);

/// Everything a node needs to open or accept peer connections. Built with [`PeerConfig::new`]
/// and adjusted field by field (tests shorten the timeouts).
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// This node's identity and the cluster secret, for every handshake.
    pub handshake: HandshakeConfig,
    /// How long a handshake may take from TCP accept/connect to established; slower or silent
    /// peers are dropped so they cannot pin connection slots.
    pub handshake_timeout: Duration,
    /// How long a TCP connect may take.
    pub connect_timeout: Duration,
    /// Default deadline of one [`PeerClient::call`], from queueing to reply.
    pub call_timeout: Duration,
    /// Requests a client may have in flight on one connection (1 ..= [`REQUESTS_IN_FLIGHT_MAX`]);
    /// further calls wait for a slot.
    pub client_requests_in_flight_max: usize,
    /// Requests a server runs at once per connection (1 ..= [`REQUESTS_IN_FLIGHT_MAX`]); at the
    /// bound it stops reading.
    pub server_requests_concurrent_max: usize,
    /// Connections a server keeps open (1 ..= [`SERVER_CONNECTIONS_MAX`]).
    pub server_connections_max: usize,
    /// Connections [`Peers`] opens to each peer, used round robin
    /// (1 ..= [`CONNECTIONS_PER_PEER_MAX`]).
    pub connections_per_peer: usize,
    /// First delay before reconnecting to a peer after a failed connect.
    pub reconnect_backoff_min: Duration,
    /// Largest delay between reconnect attempts (the delay doubles up to it; at most
    /// [`RECONNECT_BACKOFF_MAX`]).
    pub reconnect_backoff_max: Duration,
}

impl PeerConfig {
    /// Defaults for a production node: 5 s handshake and connect deadlines, 30 s calls, a full
    /// in-flight table per client connection, 256 concurrent requests per server connection.
    pub fn new(handshake: HandshakeConfig) -> Self {
        PeerConfig {
            handshake,
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            client_requests_in_flight_max: REQUESTS_IN_FLIGHT_MAX,
            server_requests_concurrent_max: 256,
            server_connections_max: 1024,
            connections_per_peer: 1,
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(5),
        }
    }

    /// Checks the limits; a bad value is a configuration bug, refused before any socket opens
    /// (every constructor calls this; the daemon may call it when loading its configuration).
    pub fn validate(&self) -> Result<(), PeerError> {
        let bad = |field: &'static str| Err(PeerError::Config { field });
        if !(1..=REQUESTS_IN_FLIGHT_MAX).contains(&self.client_requests_in_flight_max) {
            return bad("client_requests_in_flight_max");
        }
        // A client never has more in flight, so a larger bound would never be reached.
        if !(1..=REQUESTS_IN_FLIGHT_MAX).contains(&self.server_requests_concurrent_max) {
            return bad("server_requests_concurrent_max");
        }
        if !(1..=SERVER_CONNECTIONS_MAX).contains(&self.server_connections_max) {
            return bad("server_connections_max");
        }
        if !(1..=CONNECTIONS_PER_PEER_MAX).contains(&self.connections_per_peer) {
            return bad("connections_per_peer");
        }
        if self.reconnect_backoff_min > self.reconnect_backoff_max {
            return bad("reconnect_backoff_min");
        }
        if self.reconnect_backoff_max > RECONNECT_BACKOFF_MAX {
            return bad("reconnect_backoff_max");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt::ids::{ClusterId, NodeId};
    use basalt::wire::{ClusterSecret, Features};

    fn config() -> PeerConfig {
        PeerConfig::new(HandshakeConfig {
            cluster: ClusterId(uuid::Uuid::nil()),
            node: NodeId(1),
            secret: ClusterSecret::new(&[1; 16]).unwrap(),
            features: Features::NONE,
        })
    }

    /// Goal: the defaults pass, and each limit out of range is refused naming its field.
    #[test]
    fn config_limits_are_checked() {
        config().validate().unwrap();
        type Edit = fn(&mut PeerConfig);
        let cases: [(&str, Edit); 7] = [
            ("client_requests_in_flight_max", |c| {
                c.client_requests_in_flight_max = REQUESTS_IN_FLIGHT_MAX + 1
            }),
            ("server_requests_concurrent_max", |c| {
                c.server_requests_concurrent_max = 0
            }),
            ("server_connections_max", |c| c.server_connections_max = 0),
            ("connections_per_peer", |c| {
                c.connections_per_peer = CONNECTIONS_PER_PEER_MAX + 1
            }),
            ("reconnect_backoff_min", |c| {
                c.reconnect_backoff_min = c.reconnect_backoff_max * 2
            }),
            ("reconnect_backoff_max", |c| {
                c.reconnect_backoff_max = RECONNECT_BACKOFF_MAX * 2
            }),
            ("client_requests_in_flight_max", |c| {
                c.client_requests_in_flight_max = 0
            }),
        ];
        for (expected, edit) in cases {
            let mut config = config();
            edit(&mut config);
            match config.validate() {
                Err(PeerError::Config { field }) => assert_eq!(field, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
    }
}
