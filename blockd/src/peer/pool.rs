//! [`Peers`]: client connections to every other node, by node id, opened on first use and
//! reopened after failures with bounded backoff.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use basalt::ids::NodeId;
use basalt::wire::{Bytes, ControlKind, Frame, Header};
use tokio::time::Instant;

use super::PeerConfig;
use super::client::PeerClient;
use super::error::PeerError;
use super::stats::PeerStats;

/// Exponential backoff between connection attempts: the delay doubles with each consecutive
/// failure, from `min` up to `max`, and resets on success. No jitter: nodes reconnect to a
/// restarted peer at different moments anyway, since their failures were at different times.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Doublings after which the delay stops growing (`min * 2^20` exceeds any sane `max`).
    const DOUBLINGS_MAX: u32 = 20;

    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        debug_assert!(min <= max);
        Backoff {
            min,
            max,
            failures: 0,
        }
    }

    /// Records a failed attempt; returns how long to wait before the next one.
    pub(crate) fn on_failure(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(Self::DOUBLINGS_MAX);
        let delay = self.min.saturating_mul(1 << doublings).min(self.max);
        debug_assert!(delay <= self.max);
        delay
    }

    /// Records a successful attempt: the next failure waits `min` again.
    pub(crate) fn on_success(&mut self) {
        self.failures = 0;
    }
}

/// One node in the address book.
struct Entry {
    addr: SocketAddr,
    /// `connections_per_peer` slots, filled on demand.
    connections: Vec<Option<Arc<PeerClient>>>,
    /// Next slot to use (round robin).
    next_index: usize,
    backoff: Backoff,
    /// No dialling before this instant (after a failed attempt).
    retry_at: Option<Instant>,
    /// Held while dialling, so concurrent first calls open one connection, not many.
    dialing: Arc<tokio::sync::Mutex<()>>,
}

impl Entry {
    fn live(&self, index: usize) -> Option<Arc<PeerClient>> {
        self.connections[index]
            .as_ref()
            .filter(|client| client.is_open())
            .cloned()
    }
}

/// Connections to the other nodes of the cluster, keyed by node id. Share it behind an `Arc`;
/// every method takes `&self`.
pub struct Peers {
    config: PeerConfig,
    stats: Arc<PeerStats>,
    book: Mutex<HashMap<NodeId, Entry>>,
}

impl Peers {
    /// An empty pool; fill the address book with [`Self::set_address`].
    pub fn new(config: PeerConfig) -> Result<Peers, PeerError> {
        Self::with_stats(config, Arc::default())
    }

    /// An empty pool counting into `stats`, so a node's separate pools (data path, metadata
    /// service) show as one set of connection metrics.
    pub fn with_stats(config: PeerConfig, stats: Arc<PeerStats>) -> Result<Peers, PeerError> {
        config.validate()?;
        Ok(Peers {
            config,
            stats,
            book: Mutex::new(HashMap::new()),
        })
    }

    /// The pool's counters (all its connections).
    pub fn stats(&self) -> &Arc<PeerStats> {
        &self.stats
    }

    fn book(&self) -> MutexGuard<'_, HashMap<NodeId, Entry>> {
        // Every update under this lock is a single field or map write: still consistent.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets where `node` listens. A changed address drops the pool's connections to the old
    /// one (calls already running on them finish) and forgets the backoff.
    pub fn set_address(&self, node: NodeId, addr: SocketAddr) {
        let mut book = self.book();
        if book.get(&node).is_some_and(|entry| entry.addr == addr) {
            return;
        }
        let (min, max) = (
            self.config.reconnect_backoff_min,
            self.config.reconnect_backoff_max,
        );
        book.insert(
            node,
            Entry {
                addr,
                connections: vec![None; self.config.connections_per_peer],
                next_index: 0,
                backoff: Backoff::new(min, max),
                retry_at: None,
                dialing: Arc::new(tokio::sync::Mutex::new(())),
            },
        );
    }

    /// Forgets `node` and drops the pool's connections to it.
    pub fn remove(&self, node: NodeId) {
        self.book().remove(&node);
    }

    /// Where `node` listens, if known.
    pub fn address(&self, node: NodeId) -> Option<SocketAddr> {
        self.book().get(&node).map(|entry| entry.addr)
    }

    /// A live connection to `node`, dialling one if needed (round robin over
    /// `connections_per_peer`). Fails fast with [`PeerError::Backoff`] while a failed peer's
    /// backoff runs.
    pub async fn client(&self, node: NodeId) -> Result<Arc<PeerClient>, PeerError> {
        let (index, dialing) = {
            let mut book = self.book();
            let entry = book.get_mut(&node).ok_or(PeerError::UnknownPeer { node })?;
            let index = entry.next_index;
            entry.next_index = (index + 1) % entry.connections.len();
            if let Some(client) = entry.live(index) {
                return Ok(client);
            }
            (index, entry.dialing.clone())
        };
        let _dialing = dialing.lock().await;
        let addr = {
            let mut book = self.book();
            let entry = book.get_mut(&node).ok_or(PeerError::UnknownPeer { node })?;
            if let Some(client) = entry.live(index) {
                return Ok(client);
            }
            let now = Instant::now();
            if let Some(retry_at) = entry.retry_at.filter(|at| *at > now) {
                let retry_in = retry_at - now;
                return Err(PeerError::Backoff { node, retry_in });
            }
            entry.addr
        };
        let stats = self.stats.clone();
        let result = PeerClient::connect_with_stats(&self.config, addr, Some(node), stats).await;
        let mut book = self.book();
        let entry = book.get_mut(&node).filter(|entry| entry.addr == addr);
        match (result, entry) {
            (Ok(client), Some(entry)) => {
                let client = Arc::new(client);
                entry.connections[index] = Some(client.clone());
                entry.backoff.on_success();
                entry.retry_at = None;
                Ok(client)
            }
            // The address changed while dialling: use the connection, do not keep it.
            (Ok(client), None) => Ok(Arc::new(client)),
            (Err(error), Some(entry)) => {
                let delay = entry.backoff.on_failure();
                entry.retry_at = Some(Instant::now() + delay);
                tracing::debug!(%node, %addr, %error, ?delay, "peer unreachable, backing off");
                Err(error)
            }
            (Err(error), None) => Err(error),
        }
    }

    /// [`PeerClient::call`] on a connection to `node`.
    pub async fn call(
        &self,
        node: NodeId,
        header: Header,
        payload: Bytes,
    ) -> Result<Frame, PeerError> {
        self.client(node).await?.call(header, payload).await
    }

    /// [`PeerClient::call_control`] on a connection to `node`.
    pub async fn call_control(
        &self,
        node: NodeId,
        kind: ControlKind,
        version: u16,
        body: Bytes,
    ) -> Result<Bytes, PeerError> {
        let client = self.client(node).await?;
        client.call_control(kind, version, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the delay starts at `min`, doubles per failure, stops at `max`, and a success
    /// starts over.
    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(10), ms(75));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.on_failure()).collect();
        assert_eq!(delays, [ms(10), ms(20), ms(40), ms(75), ms(75), ms(75)]);
        for _ in 0..100 {
            assert_eq!(backoff.on_failure(), ms(75));
        }
        backoff.on_success();
        assert_eq!(backoff.on_failure(), ms(10));
    }
}
