//! The accepting side: [`PeerServer`] listens, authenticates each connection and serves its
//! requests concurrently through a [`PeerService`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use basalt::ids::NodeId;
use basalt::wire::{
    Bytes, BytesMut, ControlEnvelope, Frame, FrameDecoder, Handshake, Nonce, Opcode, Status,
};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::{CloseReason, PeerError};
use super::io::{Closer, HandshakeFailure, OutFrame, drive_handshake, read_more, run_writer};
use super::service::PeerService;
use super::stats::PeerStats;
use super::{PeerConfig, SERVER_CONNECTIONS_MAX};

/// Pending connections the kernel queues for us while we are at the connection bound.
const LISTEN_BACKLOG: u32 = 1024;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

const _: () = assert!(LISTEN_BACKLOG as usize <= SERVER_CONNECTIONS_MAX);

/// What every task of one server shares.
struct ServerContext<S> {
    config: PeerConfig,
    service: Arc<S>,
    stats: Arc<PeerStats>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// A listening peer endpoint. Every task it starts (accept loop, connections, writers,
/// requests) is tracked; [`Self::shutdown`] cancels and awaits them all, dropping cancels them.
pub struct PeerServer {
    local_addr: SocketAddr,
    stats: Arc<PeerStats>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl PeerServer {
    /// Binds `addr` (port 0 picks a free port; see [`Self::local_addr`]) with `SO_REUSEADDR`,
    /// so a restarted node gets its port back, and starts accepting connections.
    pub async fn bind<S: PeerService>(
        addr: SocketAddr,
        config: PeerConfig,
        service: Arc<S>,
    ) -> Result<PeerServer, PeerError> {
        config.validate()?;
        let listener = listen(addr).map_err(|source| PeerError::Listen { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| PeerError::Listen { addr, source })?;
        let context = Arc::new(ServerContext {
            config,
            service,
            stats: Arc::new(PeerStats::default()),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        context
            .tracker
            .spawn(accept_loop(listener, context.clone()));
        tracing::info!(%local_addr, node = %context.config.handshake.node, "peer server listening");
        Ok(PeerServer {
            local_addr,
            stats: context.stats.clone(),
            cancel: context.cancel.clone(),
            tracker: context.tracker.clone(),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This server's counters.
    pub fn stats(&self) -> &Arc<PeerStats> {
        &self.stats
    }

    /// Stops accepting, closes every connection (requests in progress are dropped, their
    /// callers see the connection lost) and waits for every task to end.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections while fewer than `server_connections_max` are open.
async fn accept_loop<S: PeerService>(listener: TcpListener, context: Arc<ServerContext<S>>) {
    let slots = Arc::new(Semaphore::new(context.config.server_connections_max));
    loop {
        let slot = tokio::select! {
            () = context.cancel.cancelled() => return,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else { return };
        let accepted = tokio::select! {
            () = context.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                let context_for_task = context.clone();
                context.tracker.spawn(async move {
                    let _slot = slot;
                    serve_connection(stream, remote, context_for_task).await;
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a peer connection failed");
                tokio::select! {
                    () = context.cancel.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// One accepted connection, from handshake to close.
async fn serve_connection<S: PeerService>(
    mut stream: TcpStream,
    remote: SocketAddr,
    context: Arc<ServerContext<S>>,
) {
    context.stats.on_accepted();
    if let Err(error) = stream.set_nodelay(true) {
        context.stats.on_closed(CloseReason::Io);
        tracing::warn!(%remote, %error, "cannot set TCP_NODELAY; closing peer connection");
        return;
    }
    let Some((peer, input)) = accept_handshake(&mut stream, remote, &context).await else {
        return;
    };
    let closer = Arc::new(Closer::new(
        context.cancel.child_token(),
        context.stats.clone(),
        peer,
        remote,
    ));
    let (read, write) = stream.into_split();
    let (sender, queue) = mpsc::channel(context.config.server_requests_concurrent_max);
    context
        .tracker
        .spawn(run_writer(write, queue, closer.clone()));
    read_requests(read, input, sender, &context, &closer).await;
}

/// Runs the acceptor handshake under the deadline. Returns the authenticated peer and the
/// bytes it sent after the handshake, or `None` after logging and counting the failure.
async fn accept_handshake<S>(
    stream: &mut TcpStream,
    remote: SocketAddr,
    context: &ServerContext<S>,
) -> Option<(NodeId, BytesMut)> {
    let deadline = context.config.handshake_timeout;
    let mut handshake =
        Handshake::acceptor(context.config.handshake.clone(), Nonce(rand::random()));
    let mut input = BytesMut::new();
    let outcome = tokio::select! {
        () = context.cancel.cancelled() => return None,
        outcome = tokio::time::timeout(
            deadline,
            drive_handshake(stream, &mut handshake, &mut input),
        ) => outcome,
    };
    let (reason, detail) = match outcome {
        Ok(Ok(established)) => {
            context.stats.on_established();
            let peer = established.peer();
            tracing::debug!(%peer, %remote, "peer connection established");
            return Some((peer, input));
        }
        Err(_) => (
            CloseReason::HandshakeTimeout,
            format!("no handshake within {deadline:?}"),
        ),
        Ok(Err(HandshakeFailure::Handshake(error))) => {
            (CloseReason::of_handshake(&error), error.to_string())
        }
        Ok(Err(HandshakeFailure::Io(error))) => (CloseReason::Io, error.to_string()),
    };
    context.stats.on_closed(reason);
    tracing::warn!(%remote, %reason, %detail, "peer handshake failed; connection closed");
    None
}

/// The read loop of an established connection: decodes requests and starts a task for each,
/// waiting for a free request slot first (so at the bound it stops reading).
async fn read_requests<S: PeerService>(
    mut read: OwnedReadHalf,
    mut input: BytesMut,
    sender: mpsc::Sender<OutFrame>,
    context: &Arc<ServerContext<S>>,
    closer: &Arc<Closer>,
) {
    let slots = Arc::new(Semaphore::new(
        context.config.server_requests_concurrent_max,
    ));
    let mut decoder = FrameDecoder::new();
    loop {
        loop {
            let frame = match decoder.handle_input(&mut input) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => return closer.close(CloseReason::Frame, format_args!("{error}")),
            };
            if frame.header.is_reply() {
                let id = frame.header.request_id.0;
                let detail = format_args!("reply (id {id}) sent to a server");
                return closer.close(CloseReason::Protocol, detail);
            }
            let slot = tokio::select! {
                biased;
                () = closer.token().cancelled() => {
                    return closer.close(CloseReason::Local, format_args!("server shutdown"));
                }
                slot = slots.clone().acquire_owned() => slot,
            };
            let Ok(slot) = slot else { return };
            context.stats.on_request();
            spawn_request(context, closer, frame, sender.clone(), slot);
        }
        let result = tokio::select! {
            () = closer.token().cancelled() => {
                return closer.close(CloseReason::Local, format_args!("server shutdown"));
            }
            result = read_more(&mut read, &mut input, &decoder) => result,
        };
        match result {
            Ok(0) => {
                return match decoder.handle_eof(&input) {
                    Err(error) => closer.close(CloseReason::Frame, format_args!("{error}")),
                    // Requests already running still get their replies; the writer ends
                    // once they are sent.
                    Ok(()) => {
                        closer.record(CloseReason::PeerClosed, format_args!("end of stream"));
                    }
                };
            }
            Ok(_) => {}
            Err(error) => return closer.close(CloseReason::Io, format_args!("read: {error}")),
        }
    }
}

/// Runs one request on its own task and queues its reply; cancelled with the connection.
fn spawn_request<S: PeerService>(
    context: &Arc<ServerContext<S>>,
    closer: &Closer,
    frame: Frame,
    sender: mpsc::Sender<OutFrame>,
    slot: OwnedSemaphorePermit,
) {
    let service = context.service.clone();
    let cancel = closer.token().clone();
    let peer = closer.peer();
    context.tracker.spawn(async move {
        let _slot = slot;
        let work = async {
            if let Some(reply) = respond(&*service, peer, frame).await {
                // Fails only if the connection is closing; the reply has no one to go to.
                let _ = sender.send(reply).await;
            }
        };
        tokio::select! {
            () = cancel.cancelled() => {}
            () = work => {}
        }
    });
}

/// Computes the reply frame to one request.
async fn respond<S: PeerService>(service: &S, peer: NodeId, frame: Frame) -> Option<OutFrame> {
    let request = frame.header;
    debug_assert!(!request.is_reply());
    let (mut reply, payload) = if request.opcode == Opcode::Control {
        let (status, payload) = respond_control(service, peer, frame.payload).await;
        (request.reply(status, request.epoch), payload)
    } else {
        let answer = service.handle_io(peer, frame).await;
        let mut reply = request.reply(answer.status, answer.epoch);
        reply.pg_version = answer.pg_version;
        (reply, answer.payload)
    };
    match OutFrame::encode(&reply, payload) {
        Ok(frame) => Some(frame),
        Err(error) => {
            // The service built a reply the protocol forbids (our bug): the requester still
            // gets an answer rather than waiting for its timeout.
            tracing::error!(%peer, opcode = %request.opcode, %error, "invalid reply from service");
            reply.status = Status::IoError;
            reply.pg_version = 0;
            OutFrame::encode(&reply, Bytes::new()).ok()
        }
    }
}

/// Decodes a control envelope, runs the service and wraps its answer in an envelope of the
/// same kind and version. A bad envelope is answered `Invalid`; the connection lives on.
async fn respond_control<S: PeerService>(
    service: &S,
    peer: NodeId,
    payload: Bytes,
) -> (Status, Bytes) {
    let envelope = match ControlEnvelope::decode(payload) {
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::debug!(%peer, %error, "invalid control envelope");
            return (Status::Invalid, Bytes::new());
        }
    };
    let (kind, version) = (envelope.kind, envelope.version);
    match service
        .handle_control(peer, kind, version, envelope.body)
        .await
    {
        Ok(body) => {
            let reply = ControlEnvelope {
                kind,
                version,
                body,
            };
            let mut payload = BytesMut::with_capacity(reply.encoded_size());
            reply.encode(&mut payload);
            (Status::Ok, payload.freeze())
        }
        Err(status) => (status, Bytes::new()),
    }
}
