//! The NBD server: the async shell around [`basalt::nbd::ServerSession`].
//!
//! One [`NbdServer`] serves any number of TCP and unix-socket listeners. Each accepted
//! connection is one tokio task that feeds socket bytes to its session, plus a writer task that
//! owns the socket's write half. Requests run concurrently, each on its own task (at most
//! [`NbdConfig::requests_in_flight_max`] per connection), and their replies are written as they
//! complete, out of order. `docs/nbd.md` ("Server") describes the behaviour.

mod connection;
mod execute;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt::nbd::ServerConfig;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::Exports;
use crate::metrics::frontend::NbdMetrics;

/// Default for [`NbdConfig::handshake_timeout`].
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default for [`NbdConfig::requests_in_flight_max`].
pub const REQUESTS_IN_FLIGHT_DEFAULT: usize = 128;
/// Default for [`NbdConfig::connections_max`].
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// Default for [`NbdConfig::shutdown_grace`].
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(30);
/// How long an accept loop pauses after an accept error (e.g. out of descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Tunables of an [`NbdServer`].
#[derive(Clone, Copy, Debug)]
pub struct NbdConfig {
    /// Handshake policy of every session.
    pub session: ServerConfig,
    /// A connection that has not finished its handshake after this long is dropped, so idle
    /// unauthenticated sockets cannot pile up. `None` waits forever (a virtio-serial bridge
    /// may connect long before its guest speaks).
    pub handshake_timeout: Option<Duration>,
    /// Requests one connection executes at once; further requests wait (and, once the
    /// session's own queue is full, the socket stops being read: TCP backpressure).
    pub requests_in_flight_max: usize,
    /// Connections served at once; further connections are accepted and closed at once.
    pub connections_max: usize,
    /// How long [`NbdServer::shutdown`] lets connections finish in-flight requests before it
    /// drops them.
    pub shutdown_grace: Duration,
}

impl Default for NbdConfig {
    fn default() -> Self {
        Self {
            session: ServerConfig::default(),
            handshake_timeout: Some(HANDSHAKE_TIMEOUT_DEFAULT),
            requests_in_flight_max: REQUESTS_IN_FLIGHT_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
        }
    }
}

/// Server lifecycle, broadcast to accept loops and connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RunState {
    /// Accepting and serving.
    Running,
    /// Not accepting; connections finish what they started, flush and close.
    Draining,
    /// The grace period ran out: connections close now.
    Aborting,
}

/// What connection tasks share.
struct Shared<E> {
    exports: Arc<E>,
    config: NbdConfig,
    state: watch::Sender<RunState>,
    /// One permit per live connection; shutdown waits until it can take them all.
    connection_slots: Arc<Semaphore>,
    /// Connections being served (the semaphore cannot say while shutdown waits on it).
    live: AtomicUsize,
    /// Connection and error counters, if metrics are on.
    metrics: Option<NbdMetrics>,
}

/// An NBD server exporting the volumes of `E`.
pub struct NbdServer<E: Exports> {
    shared: Arc<Shared<E>>,
    listeners: Mutex<Vec<JoinHandle<()>>>,
    socket_paths: Mutex<Vec<PathBuf>>,
}

impl<E: Exports> std::fmt::Debug for NbdServer<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdServer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<E: Exports> NbdServer<E> {
    /// A server for `exports`; it serves nothing until given a listener.
    pub fn new(exports: Arc<E>, config: NbdConfig) -> Self {
        Self::with_metrics(exports, config, None)
    }

    /// [`NbdServer::new`], counting connections and errors into `metrics`.
    pub fn with_metrics(exports: Arc<E>, config: NbdConfig, metrics: Option<NbdMetrics>) -> Self {
        let config = NbdConfig {
            requests_in_flight_max: config
                .requests_in_flight_max
                .clamp(1, Semaphore::MAX_PERMITS),
            connections_max: config.connections_max.clamp(1, u32::MAX as usize),
            ..config
        };
        let (state, _) = watch::channel(RunState::Running);
        let shared = Shared {
            exports,
            config,
            state,
            connection_slots: Arc::new(Semaphore::new(config.connections_max)),
            live: AtomicUsize::new(0),
            metrics,
        };
        Self {
            shared: Arc::new(shared),
            listeners: Mutex::new(Vec::new()),
            socket_paths: Mutex::new(Vec::new()),
        }
    }

    /// Binds `addr` (port 0 picks a free port) and serves it; returns the bound address.
    pub async fn listen_tcp(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        self.serve_tcp(listener);
        Ok(local)
    }

    /// Binds a unix socket at `path` (which must not exist) and serves it. The socket file is
    /// removed at shutdown.
    pub fn listen_unix(&self, path: &Path) -> io::Result<()> {
        let listener = UnixListener::bind(path)?;
        lock(&self.socket_paths).push(path.to_owned());
        self.serve_unix(listener);
        Ok(())
    }

    /// Serves connections from an already bound TCP listener (e.g. socket activation).
    pub fn serve_tcp(&self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let task = tokio::spawn(async move {
            accept_loop(shared, "tcp", || async {
                let (stream, peer) = listener.accept().await?;
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
                }
                Ok((stream, peer.to_string()))
            })
            .await;
        });
        lock(&self.listeners).push(task);
    }

    /// Serves connections from an already bound unix listener.
    pub fn serve_unix(&self, listener: UnixListener) {
        let shared = Arc::clone(&self.shared);
        let task = tokio::spawn(async move {
            accept_loop(shared, "unix", || async {
                let (stream, _) = listener.accept().await?;
                Ok((stream, "unix".to_owned()))
            })
            .await;
        });
        lock(&self.listeners).push(task);
    }

    /// Connections currently being served.
    pub fn connection_count(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Graceful shutdown: stops accepting, lets every connection finish the requests it
    /// already read, flush its volume and close, then returns. Connections still busy after
    /// [`NbdConfig::shutdown_grace`] are dropped. Idempotent.
    pub async fn shutdown(&self) {
        self.shared.state.send_replace(RunState::Draining);
        let listeners: Vec<_> = lock(&self.listeners).drain(..).collect();
        for listener in listeners {
            let _ = listener.await;
        }
        for path in lock(&self.socket_paths).drain(..) {
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::debug!(path = %path.display(), %error, "cannot remove the NBD socket");
            }
        }
        let all = u32::try_from(self.shared.config.connections_max).unwrap_or(u32::MAX);
        let slots = &self.shared.connection_slots;
        let grace = self.shared.config.shutdown_grace;
        if tokio::time::timeout(grace, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                connections = self.connection_count(),
                "NBD connections still busy after the shutdown grace period; dropping them"
            );
            self.shared.state.send_replace(RunState::Aborting);
            let _ = tokio::time::timeout(grace, slots.acquire_many(all)).await;
        }
        tracing::info!("NBD server stopped");
    }
}

/// Accepts connections until the server stops running; one task per connection.
async fn accept_loop<E, S, A, F>(shared: Arc<Shared<E>>, kind: &'static str, mut accept: A)
where
    E: Exports,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    A: FnMut() -> F,
    F: Future<Output = io::Result<(S, String)>>,
{
    let mut state = shared.state.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = state.wait_for(|s| *s != RunState::Running) => break,
            accepted = accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(kind, %error, "NBD accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&shared.connection_slots).try_acquire_owned() else {
            tracing::warn!(kind, %peer, "too many NBD connections; refusing one");
            continue;
        };
        let shared = Arc::clone(&shared);
        shared.live.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            connection::serve(stream, peer, Arc::clone(&shared)).await;
            shared.live.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
}

/// Locks a mutex that only guards plain lists (a panic elsewhere cannot leave them invalid).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
