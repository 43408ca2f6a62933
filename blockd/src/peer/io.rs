//! Socket plumbing shared by servers and clients: the handshake driver, the per-connection
//! writer task and the [`Closer`] that ends a connection exactly once.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use basalt::ids::NodeId;
use basalt::wire::{
    Bytes, BytesMut, EncodeError, Established, FRAME_HEADER_SIZE_BYTES, FrameDecoder, Handshake,
    HandshakeError, Header,
};
use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::CloseReason;
use super::stats::PeerStats;
use super::{READ_SIZE_BYTES_MIN, WRITE_BATCH_FRAMES_MAX, WRITE_SLICES_MAX};

/// Bytes read per system call during the handshake: every handshake frame fits.
const HANDSHAKE_READ_SIZE_BYTES: usize = 1024;

/// One frame queued for a connection's writer: the encoded header and the payload, kept apart
/// so the payload goes out as its own slice of a vectored write.
#[derive(Debug)]
pub(crate) struct OutFrame {
    header: [u8; FRAME_HEADER_SIZE_BYTES],
    payload: Bytes,
}

impl OutFrame {
    /// Encodes `header` for `payload` (checksums computed here, on the sender's task).
    pub(crate) fn encode(header: &Header, payload: Bytes) -> Result<Self, EncodeError> {
        let header = header.encode(&payload)?;
        Ok(OutFrame { header, payload })
    }
}

/// Why [`drive_handshake`] failed.
#[derive(Debug)]
pub(crate) enum HandshakeFailure {
    /// The handshake refused the peer or was refused (the REFUSE, if any, was flushed).
    Handshake(HandshakeError),
    /// The socket failed.
    Io(io::Error),
}

/// Runs `handshake` over `stream` to completion. On a handshake error the REFUSE it queued is
/// flushed (best effort) and the write side shut down before returning. Bytes the peer sent
/// after its last handshake frame stay in `input` for the session's decoder. No deadline here:
/// the caller wraps this in one.
pub(crate) async fn drive_handshake<S>(
    stream: &mut S,
    handshake: &mut Handshake,
    input: &mut BytesMut,
) -> Result<Established, HandshakeFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut output = BytesMut::new();
    loop {
        if handshake.poll_transmit(&mut output) > 0 {
            stream
                .write_all(&output)
                .await
                .map_err(HandshakeFailure::Io)?;
            output.clear();
        }
        if let Some(established) = handshake.poll_established() {
            return Ok(established);
        }
        input.reserve(HANDSHAKE_READ_SIZE_BYTES);
        let read_size = stream.read_buf(input).await.map_err(HandshakeFailure::Io)?;
        let result = if read_size == 0 {
            handshake.handle_eof(input)
        } else {
            handshake.handle_input(input)
        };
        if let Err(error) = result {
            if handshake.poll_transmit(&mut output) > 0 {
                // Best effort: the peer may already be gone, and the error is what we report.
                let _ = stream.write_all(&output).await;
            }
            let _ = stream.shutdown().await;
            return Err(HandshakeFailure::Handshake(error));
        }
    }
}

/// Reads at least once into `input`, reserving what the decoder waits for (bounded by the
/// frame limit the decoder already checked) or [`READ_SIZE_BYTES_MIN`]. Returns the bytes read;
/// zero is end of stream.
pub(crate) async fn read_more<R: AsyncRead + Unpin>(
    socket: &mut R,
    input: &mut BytesMut,
    decoder: &FrameDecoder,
) -> io::Result<usize> {
    let wanted_bytes = decoder.bytes_needed(input).max(READ_SIZE_BYTES_MIN);
    input.reserve(wanted_bytes);
    socket.read_buf(input).await
}

/// Ends one connection exactly once: the first reason recorded wins, is counted in the stats
/// and logged; closing also cancels every task of the connection.
#[derive(Debug)]
pub(crate) struct Closer {
    cancel: CancellationToken,
    reason: OnceLock<CloseReason>,
    stats: Arc<PeerStats>,
    peer: NodeId,
    remote: SocketAddr,
}

impl Closer {
    pub(crate) fn new(
        cancel: CancellationToken,
        stats: Arc<PeerStats>,
        peer: NodeId,
        remote: SocketAddr,
    ) -> Self {
        Closer {
            cancel,
            reason: OnceLock::new(),
            stats,
            peer,
            remote,
        }
    }

    /// Records why the connection ends without cancelling its tasks (a peer that closed its
    /// side still gets the replies already being computed). Returns whether this was first.
    pub(crate) fn record(&self, reason: CloseReason, detail: fmt::Arguments<'_>) -> bool {
        if self.reason.set(reason).is_err() {
            return false;
        }
        self.stats.on_closed(reason);
        let (peer, remote) = (self.peer, self.remote);
        match reason {
            CloseReason::PeerClosed | CloseReason::Local => {
                tracing::debug!(%peer, %remote, %reason, %detail, "peer connection closed");
            }
            _ => tracing::warn!(%peer, %remote, %reason, %detail, "closing peer connection"),
        }
        true
    }

    /// Records `reason` (if first) and cancels every task of the connection.
    pub(crate) fn close(&self, reason: CloseReason, detail: fmt::Arguments<'_>) {
        self.record(reason, detail);
        self.cancel.cancel();
    }

    /// The recorded reason; `Local` if none was (the owner dropped the connection).
    pub(crate) fn reason(&self) -> CloseReason {
        self.reason.get().copied().unwrap_or(CloseReason::Local)
    }

    /// The connection's cancellation token.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The counters this connection reports to.
    pub(crate) fn stats(&self) -> &PeerStats {
        &self.stats
    }

    /// The authenticated peer.
    pub(crate) fn peer(&self) -> NodeId {
        self.peer
    }
}

/// The writer task of one connection: takes up to [`WRITE_BATCH_FRAMES_MAX`] queued frames at a
/// time and writes them with vectored writes. Ends when the queue's senders are all gone
/// (after shutting the write side down) or the connection is cancelled; a write error closes
/// the connection.
pub(crate) async fn run_writer<W: AsyncWrite + Unpin>(
    mut socket: W,
    mut queue: mpsc::Receiver<OutFrame>,
    closer: Arc<Closer>,
) {
    let mut headers = BytesMut::new();
    let mut chunks: VecDeque<Bytes> = VecDeque::with_capacity(WRITE_SLICES_MAX);
    loop {
        let first = tokio::select! {
            biased;
            () = closer.token().cancelled() => return,
            frame = queue.recv() => frame,
        };
        let Some(first) = first else {
            let _ = socket.shutdown().await;
            return;
        };
        headers.reserve(FRAME_HEADER_SIZE_BYTES * WRITE_BATCH_FRAMES_MAX);
        push_frame(&mut chunks, &mut headers, first);
        for _ in 1..WRITE_BATCH_FRAMES_MAX {
            match queue.try_recv() {
                Ok(frame) => push_frame(&mut chunks, &mut headers, frame),
                Err(_) => break,
            }
        }
        let result = tokio::select! {
            biased;
            () = closer.token().cancelled() => return,
            result = write_chunks(&mut socket, &mut chunks) => result,
        };
        if let Err(error) = result {
            closer.close(CloseReason::Io, format_args!("write: {error}"));
            return;
        }
        debug_assert!(chunks.is_empty());
    }
}

/// Appends a frame's header (into the shared header buffer, no allocation per frame) and its
/// payload (by reference) to the chunks to write.
fn push_frame(chunks: &mut VecDeque<Bytes>, headers: &mut BytesMut, frame: OutFrame) {
    headers.extend_from_slice(&frame.header);
    chunks.push_back(headers.split().freeze());
    if !frame.payload.is_empty() {
        chunks.push_back(frame.payload);
    }
}

/// Writes every chunk, at most [`WRITE_SLICES_MAX`] slices per system call.
async fn write_chunks<W: AsyncWrite + Unpin>(
    socket: &mut W,
    chunks: &mut VecDeque<Bytes>,
) -> io::Result<()> {
    while !chunks.is_empty() {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES_MAX];
        let count = chunks.len().min(WRITE_SLICES_MAX);
        for (slice, chunk) in slices.iter_mut().zip(chunks.iter()) {
            *slice = IoSlice::new(chunk);
        }
        let written_bytes = socket.write_vectored(&slices[..count]).await?;
        if written_bytes == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        advance_chunks(chunks, written_bytes);
    }
    Ok(())
}

/// Drops the first `written_bytes` bytes of `chunks` after a (possibly partial) vectored write:
/// whole chunks are removed, a partly written one is advanced in place.
fn advance_chunks(chunks: &mut VecDeque<Bytes>, mut written_bytes: usize) {
    while written_bytes > 0 {
        let Some(front) = chunks.front_mut() else {
            debug_assert!(false, "wrote more bytes than were queued");
            return;
        };
        if written_bytes >= front.len() {
            written_bytes -= front.len();
            chunks.pop_front();
        } else {
            front.advance(written_bytes);
            written_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> VecDeque<Bytes> {
        parts.iter().map(|part| Bytes::from_static(part)).collect()
    }

    /// Goal: after any partial write, the chunks left are exactly the unwritten suffix of the
    /// concatenation. Method: every split point of a three-chunk queue.
    #[test]
    fn advance_chunks_leaves_the_unwritten_suffix() {
        let parts: [&'static [u8]; 3] = [b"header", b"p", b"payload"];
        let all: Vec<u8> = parts.concat();
        for written in 0..=all.len() {
            let mut queue = chunks(&parts);
            advance_chunks(&mut queue, written);
            let left: Vec<u8> = queue
                .iter()
                .flat_map(|chunk| chunk.iter().copied())
                .collect();
            assert_eq!(left, all[written..], "after {written} bytes");
            assert!(queue.iter().all(|chunk| !chunk.is_empty()));
        }
    }

    /// Goal: the writer sends queued frames byte for byte, header then payload, in queue
    /// order, through partial writes (a duplex pipe of 7 bytes forces many).
    #[tokio::test]
    async fn writer_sends_frames_in_order() {
        use basalt::wire::{Frame, Opcode, RequestId};
        let (client, mut server) = tokio::io::duplex(7);
        let (sender, receiver) = mpsc::channel(8);
        let closer = Arc::new(Closer::new(
            CancellationToken::new(),
            Arc::new(PeerStats::default()),
            NodeId(1),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        ));
        let writer = tokio::spawn(run_writer(client, receiver, closer));
        let mut expected = Vec::new();
        for id in 0..3u64 {
            let mut header = Header::new(Opcode::Write, RequestId(id));
            header.length_bytes = 512;
            let payload = Bytes::from(vec![id as u8; 512]);
            Frame::new(header, payload.clone())
                .unwrap()
                .encode(&mut expected)
                .unwrap();
            sender
                .send(OutFrame::encode(&header, payload).unwrap())
                .await
                .unwrap();
        }
        drop(sender);
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        writer.await.unwrap();
        assert_eq!(received, expected);
    }
}
