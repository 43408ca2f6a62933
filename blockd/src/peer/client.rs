//! The dialling side: [`PeerClient`], one authenticated connection carrying pipelined calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use basalt::ids::NodeId;
use basalt::wire::{
    Bytes, BytesMut, ControlEnvelope, ControlKind, Frame, FrameDecoder, Handshake, Header,
    InFlight, Nonce, Opcode, RequestId, Status,
};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::PeerConfig;
use super::error::{CloseReason, PeerError};
use super::io::{Closer, HandshakeFailure, OutFrame, drive_handshake, read_more, run_writer};
use super::stats::PeerStats;

/// A call waiting for its reply. Holds one of the connection's in-flight slots until the
/// reply arrives or the connection dies, even if the caller gave up (the peer still owes it).
struct Pending {
    reply: oneshot::Sender<Frame>,
    _slot: OwnedSemaphorePermit,
}

/// The calls in flight on one connection.
struct Table {
    in_flight: InFlight,
    pending: HashMap<RequestId, Pending>,
    /// Set once the connection is dead; every later call fails with it.
    closed: Option<CloseReason>,
}

/// State shared by a client handle and its reader task.
struct Shared {
    closer: Arc<Closer>,
    slots: Arc<Semaphore>,
    next_request_id: AtomicU64,
    table: Mutex<Table>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves the table consistent (every update is one
        // map operation), so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lost(&self) -> PeerError {
        let reason = self.table().closed.unwrap_or_else(|| self.closer.reason());
        PeerError::ConnectionLost {
            peer: self.closer.peer(),
            reason,
        }
    }

    /// Hands a reply to its caller. A reply matching no call in flight is the peer's fault.
    fn deliver(&self, frame: Frame) -> Result<(), String> {
        let mut table = self.table();
        let request_id = frame.header.request_id;
        table
            .in_flight
            .handle_reply(&frame.header)
            .map_err(|error| error.to_string())?;
        let pending = table.pending.remove(&request_id);
        debug_assert!(
            pending.is_some(),
            "in-flight table and pending calls disagree"
        );
        if let Some(pending) = pending {
            // The caller may have timed out and gone; the slot is freed either way.
            let _ = pending.reply.send(frame);
        }
        Ok(())
    }

    /// Fails every call in flight (their senders drop) and refuses new ones.
    fn fail_all(&self) {
        let mut table = self.table();
        table.closed = Some(self.closer.reason());
        table.in_flight.drain();
        table.pending.clear();
        drop(table);
        self.slots.close();
    }
}

/// One authenticated connection to a peer, carrying pipelined requests answered out of order.
/// Dropping it closes the connection; calls in flight then fail with
/// [`PeerError::ConnectionLost`].
pub struct PeerClient {
    shared: Arc<Shared>,
    writer: mpsc::Sender<OutFrame>,
    call_timeout: Duration,
    addr: SocketAddr,
    tracker: TaskTracker,
}

impl PeerClient {
    /// Dials `addr` and runs the handshake under the configured deadlines. With
    /// `expected_peer`, a node announcing another id is refused.
    pub async fn connect(
        config: &PeerConfig,
        addr: SocketAddr,
        expected_peer: Option<NodeId>,
    ) -> Result<PeerClient, PeerError> {
        Self::connect_with_stats(config, addr, expected_peer, Arc::new(PeerStats::default())).await
    }

    /// [`Self::connect`], counting into `stats` (shared by a pool).
    pub(crate) async fn connect_with_stats(
        config: &PeerConfig,
        addr: SocketAddr,
        expected_peer: Option<NodeId>,
        stats: Arc<PeerStats>,
    ) -> Result<PeerClient, PeerError> {
        config.validate()?;
        let timeout = config.connect_timeout;
        let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(PeerError::ConnectTimeout { addr, timeout }),
            Ok(Err(source)) => return Err(PeerError::Connect { addr, source }),
            Ok(Ok(stream)) => stream,
        };
        stream
            .set_nodelay(true)
            .map_err(|source| PeerError::Connect { addr, source })?;
        stats.on_accepted();
        let (peer, input) =
            initiate_handshake(&mut stream, addr, config, expected_peer, &stats).await?;
        let closer = Arc::new(Closer::new(CancellationToken::new(), stats, peer, addr));
        let limit = config.client_requests_in_flight_max;
        let shared = Arc::new(Shared {
            closer: closer.clone(),
            slots: Arc::new(Semaphore::new(limit)),
            next_request_id: AtomicU64::new(1),
            table: Mutex::new(Table {
                in_flight: InFlight::new(limit),
                pending: HashMap::new(),
                closed: None,
            }),
        });
        let (read, write) = stream.into_split();
        // Every queued frame holds an in-flight slot, so the queue can never be full.
        let (writer, queue) = mpsc::channel(limit);
        let tracker = TaskTracker::new();
        tracker.spawn(run_writer(write, queue, closer));
        tracker.spawn(read_replies(read, input, shared.clone()));
        tracker.close();
        Ok(PeerClient {
            shared,
            writer,
            call_timeout: config.call_timeout,
            addr,
            tracker,
        })
    }

    /// The authenticated node at the other end.
    pub fn peer(&self) -> NodeId {
        self.shared.closer.peer()
    }

    /// The address dialled.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters this connection reports to (the pool's, for a pooled client).
    pub fn stats(&self) -> &PeerStats {
        self.shared.closer.stats()
    }

    /// Whether the connection still works (new calls can be sent).
    pub fn is_open(&self) -> bool {
        self.shared.table().closed.is_none() && !self.shared.closer.token().is_cancelled()
    }

    /// How many calls are waiting for replies.
    pub fn in_flight(&self) -> usize {
        self.shared.table().in_flight.len()
    }

    /// Sends a request and waits for its reply, under the configured call timeout. The request
    /// id in `header` is replaced by one unique on this connection. The reply is returned
    /// whatever its status; errors are transport failures only.
    pub async fn call(&self, header: Header, payload: Bytes) -> Result<Frame, PeerError> {
        self.call_with_timeout(header, payload, self.call_timeout)
            .await
    }

    /// [`Self::call`] with an explicit deadline (covers waiting for an in-flight slot).
    pub async fn call_with_timeout(
        &self,
        mut header: Header,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Frame, PeerError> {
        if header.is_reply() {
            return Err(PeerError::InvalidRequest {
                what: "a reply header cannot be sent as a request",
            });
        }
        let id = self.shared.next_request_id.fetch_add(1, Ordering::Relaxed);
        header.request_id = RequestId(id);
        let frame = OutFrame::encode(&header, payload)?;
        let replicate = matches!(
            header.opcode,
            Opcode::ReplicateWrite | Opcode::ReplicateTrim | Opcode::ReplicateZeroes
        );
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(timeout, self.send_and_wait(header, frame)).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout {
                peer: self.peer(),
                timeout,
            }),
        };
        if replicate {
            let stats = self.shared.closer.stats();
            stats.replicate_latency.observe(started.elapsed());
        }
        result
    }

    async fn send_and_wait(&self, header: Header, frame: OutFrame) -> Result<Frame, PeerError> {
        let shared = &self.shared;
        let slot = shared.slots.clone().acquire_owned().await;
        let slot = slot.map_err(|_| shared.lost())?;
        let (reply, reply_receiver) = oneshot::channel();
        {
            let mut table = shared.table();
            if let Some(reason) = table.closed {
                let peer = self.peer();
                return Err(PeerError::ConnectionLost { peer, reason });
            }
            // Cannot fail: the header is a request, ids are unique, and the slot bounds the
            // table. Checked anyway rather than trusted.
            table.in_flight.handle_request(&header).map_err(|_| {
                debug_assert!(false, "in-flight table refused a request");
                PeerError::InvalidRequest {
                    what: "request refused by the in-flight table",
                }
            })?;
            let pending = Pending { reply, _slot: slot };
            table.pending.insert(header.request_id, pending);
            // No await between recording and queueing, so a cancelled call cannot leave a
            // recorded request that was never sent. The queue holds at most one frame per slot.
            if shared.closer.token().is_cancelled() || self.writer.try_send(frame).is_err() {
                drop(table);
                shared
                    .closer
                    .close(CloseReason::Local, format_args!("writer gone"));
                return Err(shared.lost());
            }
        }
        shared.closer.stats().on_request();
        reply_receiver.await.map_err(|_| shared.lost())
    }

    /// Sends a CONTROL request and returns the reply's body. A reply status other than OK
    /// is [`PeerError::Status`].
    pub async fn call_control(
        &self,
        kind: ControlKind,
        version: u16,
        body: Bytes,
    ) -> Result<Bytes, PeerError> {
        if kind.0 == 0 {
            return Err(PeerError::InvalidRequest {
                what: "control kind 0 is reserved",
            });
        }
        let envelope = ControlEnvelope {
            kind,
            version,
            body,
        };
        let mut payload = BytesMut::with_capacity(envelope.encoded_size());
        envelope.encode(&mut payload);
        let header = Header::new(Opcode::Control, RequestId(0));
        let reply = self.call(header, payload.freeze()).await?;
        let peer = self.peer();
        let status = reply.header.status;
        if status != Status::Ok {
            return Err(PeerError::Status { peer, kind, status });
        }
        let envelope = ControlEnvelope::decode(reply.payload)
            .map_err(|source| PeerError::ControlReply { peer, source })?;
        if envelope.kind != kind {
            return Err(PeerError::ControlKindMismatch {
                peer,
                expected: kind,
                found: envelope.kind,
            });
        }
        Ok(envelope.body)
    }

    /// Closes the connection and waits for its tasks to end. Calls in flight fail.
    pub async fn close(&self) {
        self.shared
            .closer
            .close(CloseReason::Local, format_args!("closed by owner"));
        self.tracker.wait().await;
    }
}

impl Drop for PeerClient {
    fn drop(&mut self) {
        self.shared
            .closer
            .close(CloseReason::Local, format_args!("client dropped"));
    }
}

/// Runs the initiator handshake under the deadline; returns the peer and leftover bytes.
async fn initiate_handshake(
    stream: &mut TcpStream,
    addr: SocketAddr,
    config: &PeerConfig,
    expected_peer: Option<NodeId>,
    stats: &PeerStats,
) -> Result<(NodeId, BytesMut), PeerError> {
    let nonce = Nonce(rand::random());
    let mut handshake = Handshake::initiator(config.handshake.clone(), nonce, expected_peer);
    let mut input = BytesMut::new();
    let timeout = config.handshake_timeout;
    let driven = drive_handshake(stream, &mut handshake, &mut input);
    let (reason, error) = match tokio::time::timeout(timeout, driven).await {
        Ok(Ok(established)) => {
            stats.on_established();
            return Ok((established.peer(), input));
        }
        Err(_) => (
            CloseReason::HandshakeTimeout,
            PeerError::ConnectTimeout { addr, timeout },
        ),
        Ok(Err(HandshakeFailure::Handshake(source))) => (
            CloseReason::of_handshake(&source),
            PeerError::Handshake { addr, source },
        ),
        Ok(Err(HandshakeFailure::Io(source))) => {
            (CloseReason::Io, PeerError::Connect { addr, source })
        }
    };
    stats.on_closed(reason);
    tracing::warn!(%addr, %reason, %error, "peer handshake failed; connection closed");
    Err(error)
}

/// The reader task: delivers replies until the connection ends, then fails what is left.
async fn read_replies(mut read: OwnedReadHalf, mut input: BytesMut, shared: Arc<Shared>) {
    let closer = &shared.closer;
    let mut decoder = FrameDecoder::new();
    loop {
        if let Err((reason, detail)) = deliver_buffered(&shared, &mut decoder, &mut input) {
            closer.close(reason, format_args!("{detail}"));
            break;
        }
        let result = tokio::select! {
            () = closer.token().cancelled() => break,
            result = read_more(&mut read, &mut input, &decoder) => result,
        };
        match result {
            Ok(0) => {
                match decoder.handle_eof(&input) {
                    Err(error) => closer.close(CloseReason::Frame, format_args!("{error}")),
                    Ok(()) => closer.close(CloseReason::PeerClosed, format_args!("end of stream")),
                }
                break;
            }
            Ok(_) => {}
            Err(error) => {
                closer.close(CloseReason::Io, format_args!("read: {error}"));
                break;
            }
        }
    }
    shared.fail_all();
}

/// Decodes and delivers every complete reply in `input`.
fn deliver_buffered(
    shared: &Shared,
    decoder: &mut FrameDecoder,
    input: &mut BytesMut,
) -> Result<(), (CloseReason, String)> {
    loop {
        let frame = match decoder.handle_input(input) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(error) => return Err((CloseReason::Frame, error.to_string())),
        };
        if !frame.header.is_reply() {
            let detail = format!(
                "request (id {}) sent to a client",
                frame.header.request_id.0
            );
            return Err((CloseReason::Protocol, detail));
        }
        shared
            .deliver(frame)
            .map_err(|detail| (CloseReason::Protocol, detail))?;
    }
}
