//! One NBD connection: the read loop that drives the session, the writer task, and the end of
//! the connection (finish in-flight requests, flush, close).

use std::sync::Arc;

use basalt::nbd::{CloseReason, CommandKind, Event, NbdError, ReplyEncoder, ServerSession};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use super::execute::{Catalog, execute};
use super::{RunState, Shared};
use crate::frontends::{Exports, VolumeBackend};
use crate::metrics::frontend::{HandshakeFailure, NbdConnection};

/// Smallest read buffer reservation.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Buffer of the writer: small replies coalesce into one write.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// One whole reply (or session output): `head` then `data`, never interleaved with another.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) head: Vec<u8>,
    pub(super) data: Bytes,
}

/// Why the read loop stopped.
#[derive(Debug, thiserror::Error)]
enum End {
    /// `OPT_ABORT` or `CMD_DISC`.
    #[error("client ended the session ({0:?})")]
    Clean(CloseReason),
    /// The client closed its side without saying goodbye.
    #[error("client closed the connection")]
    Eof,
    /// The client broke the protocol; only this connection ends.
    #[error("{0}")]
    Fatal(NbdError),
    /// Reading the socket failed.
    #[error("read failed: {0}")]
    Io(std::io::Error),
    /// The handshake did not finish in time.
    #[error("handshake not finished in time")]
    HandshakeTimeout,
    /// The server is shutting down.
    #[error("server shutting down")]
    Shutdown,
    /// The writer stopped (the socket is unusable).
    #[error("write side closed")]
    WriterGone,
    /// The export was removed between its lookup and `OPT_GO`.
    #[error("export {0:?} disappeared during the handshake")]
    ExportGone(String),
}

/// Serves one accepted connection to the end.
pub(super) async fn serve<S, E>(stream: S, peer: String, shared: Arc<Shared<E>>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    E: Exports,
{
    let (reader, writer) = tokio::io::split(stream);
    let config = shared.config;
    let (tx, rx) = mpsc::channel(config.requests_in_flight_max + 8);
    let writer = tokio::spawn(write_loop(writer, rx, shared.state.subscribe()));
    let mut connection = Connection {
        shared: Arc::clone(&shared),
        session: ServerSession::new(config.session),
        tx,
        in_flight: Arc::new(Semaphore::new(config.requests_in_flight_max)),
        volume: None,
        encoder: None,
        context: None,
        mutated: false,
        counted: None,
    };
    tracing::debug!(%peer, "NBD connection opened");
    let end = connection.run(reader).await;
    connection.count_end(&end);
    match &end {
        End::Clean(_) | End::Eof | End::Shutdown => {
            tracing::debug!(%peer, reason = %end, "NBD connection closing");
        }
        End::Fatal(error) => {
            tracing::warn!(%peer, class = ?error.class(), %error, "NBD client broke the protocol; closing its connection");
        }
        End::Io(_) | End::HandshakeTimeout | End::WriterGone | End::ExportGone(_) => {
            tracing::info!(%peer, reason = %end, "NBD connection closing");
        }
    }
    connection.finish(&peer).await;
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%peer, %error, "NBD connection write side failed"),
        Err(error) => tracing::warn!(%peer, %error, "NBD writer task failed"),
    }
    tracing::debug!(%peer, "NBD connection closed");
}

struct Connection<E: Exports> {
    shared: Arc<Shared<E>>,
    session: ServerSession,
    tx: mpsc::Sender<Outgoing>,
    in_flight: Arc<Semaphore>,
    volume: Option<Arc<E::Volume>>,
    encoder: Option<ReplyEncoder>,
    context: Option<u32>,
    mutated: bool,
    /// Counts this connection while it is in transmission (metrics on).
    counted: Option<NbdConnection>,
}

impl<E: Exports> Connection<E> {
    async fn run<R: AsyncRead + Unpin>(&mut self, mut reader: R) -> End {
        let mut state = self.shared.state.subscribe();
        let timeout = self.shared.config.handshake_timeout;
        let mut deadline = timeout.map(|timeout| Instant::now() + timeout);
        let mut input = BytesMut::with_capacity(READ_CHUNK_BYTES);
        loop {
            let catalog = Catalog(&*self.shared.exports);
            let before = input.len();
            let result = self.session.handle_input(&catalog, &mut input);
            let progressed = input.len() != before;
            let mut head = Vec::new();
            self.session.poll_transmit(&mut head);
            if !head.is_empty() && self.send(head).await.is_err() {
                return End::WriterGone;
            }
            let mut events = 0;
            while let Some(event) = self.session.poll_event() {
                events += 1;
                match event {
                    Event::Ready(negotiated) => {
                        let name = &negotiated.export.name;
                        let Some(volume) = self.shared.exports.get(name) else {
                            return End::ExportGone(name.clone());
                        };
                        tracing::debug!(export = %name, mode = ?negotiated.mode, "NBD transmission starts");
                        self.volume = Some(volume);
                        self.encoder = self.session.reply_encoder();
                        self.context = negotiated.base_allocation;
                        deadline = None;
                        self.counted = self.shared.metrics.as_ref().map(|m| m.connection(name));
                    }
                    Event::Request(request) => self.submit(request).await,
                    Event::Closed(reason) => return End::Clean(reason),
                }
            }
            if let Err(error) = result {
                return End::Fatal(error);
            }
            if progressed || events > 0 {
                continue;
            }
            let wanted = self
                .session
                .input_wanted_bytes()
                .saturating_sub(input.len());
            input.reserve(wanted.max(READ_CHUNK_BYTES));
            tokio::select! {
                biased;
                _ = state.wait_for(|s| *s != RunState::Running) => return End::Shutdown,
                () = sleep_until(deadline) => return End::HandshakeTimeout,
                read = reader.read_buf(&mut input) => match read {
                    Ok(0) => return End::Eof,
                    Ok(_) => {}
                    Err(error) => return End::Io(error),
                },
            }
        }
    }

    /// Counts a connection that ended in error: a protocol error in transmission, or a
    /// failed handshake.
    fn count_end(&self, end: &End) {
        let Some(metrics) = &self.shared.metrics else {
            return;
        };
        match (end, &self.counted) {
            (End::Fatal(_), Some(counted)) => counted.protocol_error(),
            (End::Fatal(_), None) => metrics.handshake_failed(HandshakeFailure::Protocol),
            (End::HandshakeTimeout, _) => metrics.handshake_failed(HandshakeFailure::Timeout),
            (End::ExportGone(_), _) => metrics.handshake_failed(HandshakeFailure::ExportGone),
            _ => {}
        }
    }

    async fn send(&self, head: Vec<u8>) -> Result<(), ()> {
        let message = Outgoing {
            head,
            data: Bytes::new(),
        };
        self.tx.send(message).await.map_err(drop)
    }

    /// Starts one request on its own task once an in-flight slot is free.
    async fn submit(&mut self, request: basalt::nbd::Request) {
        let (Some(volume), Some(encoder)) = (&self.volume, self.encoder) else {
            debug_assert!(false, "a request before transmission started");
            return;
        };
        let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
            return;
        };
        self.mutated |= matches!(
            request.kind,
            CommandKind::Write | CommandKind::Trim | CommandKind::WriteZeroes
        );
        let (volume, tx, context) = (Arc::clone(volume), self.tx.clone(), self.context);
        tokio::spawn(async move {
            let reply = execute(&*volume, request, encoder, context).await;
            // A closed writer means the connection is gone; the reply has nowhere to go.
            let _ = tx.send(reply).await;
            drop(permit);
        });
    }

    /// Waits for requests in flight (their replies are queued to the writer), flushes the
    /// volume if this connection changed it, and lets the writer finish.
    async fn finish(self, peer: &str) {
        let all = u32::try_from(self.shared.config.requests_in_flight_max).unwrap_or(u32::MAX);
        let mut state = self.shared.state.subscribe();
        tokio::select! {
            _ = self.in_flight.acquire_many(all) => {}
            _ = state.wait_for(|s| *s == RunState::Aborting) => return,
        }
        if let (Some(volume), true) = (&self.volume, self.mutated)
            && let Err(error) = volume.flush().await
        {
            tracing::warn!(%peer, %error, "flush at NBD disconnect failed");
        }
        // Dropping `self.tx` (the last sender) lets the writer drain and close.
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Writes replies in arrival order, coalescing small ones, until every sender is gone; then
/// shuts the write side down. Stops at once when the server aborts.
async fn write_loop<W: AsyncWrite + Unpin>(
    writer: W,
    mut rx: mpsc::Receiver<Outgoing>,
    mut state: watch::Receiver<RunState>,
) -> std::io::Result<()> {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    let work = async move {
        while let Some(message) = rx.recv().await {
            write_message(&mut writer, message).await?;
            while let Ok(message) = rx.try_recv() {
                write_message(&mut writer, message).await?;
            }
            writer.flush().await?;
        }
        writer.shutdown().await
    };
    tokio::select! {
        result = work => result,
        _ = state.wait_for(|s| *s == RunState::Aborting) => Ok(()),
    }
}

async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: Outgoing,
) -> std::io::Result<()> {
    writer.write_all(&message.head).await?;
    if !message.data.is_empty() {
        writer.write_all(&message.data).await?;
    }
    Ok(())
}
