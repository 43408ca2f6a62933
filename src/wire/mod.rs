//! The node-to-node ("peer") protocol codec: frames, the authenticated handshake and the
//! control envelope (DESIGN §6). `docs/wire-protocol.md` documents the format byte by byte.
//!
//! Pure and sans-IO like the rest of `basalt`: bytes in, frames and bytes out. The daemon's
//! transport (`blockd/src/peer/`) owns the sockets, the clock and the random nonces and feeds
//! this module; nothing here can block, allocate without a bound set by a named limit, or panic
//! on bytes from the network.
//!
//! # Frame
//!
//! Every message on a peer connection, the handshake included, is one frame: a fixed 96-byte
//! little-endian header followed by `payload_size` bytes of payload.
//!
//! ```text
//!  0        4    5    6        8                16       20       22       24
//!  +--------+----+----+--------+----------------+--------+--------+--------+
//!  | magic  |ver | op | flags  |   request_id   |   pg   | status | rsvd0  |
//!  +--------+----+----+--------+----------------+--------+--------+--------+
//!  24               32               40               48               56
//!  +----------------+----------------+----------------+----------------+
//!  |     epoch      |   pg_version   |     volume     |  chunk_index   |
//!  +----------------+----------------+----------------+----------------+
//!  56       60       64       68       72                               88
//!  +--------+--------+--------+--------+--------------------------------+
//!  | gener. | offset | length |pl_size |      reserved (16 bytes)       |
//!  +--------+--------+--------+--------+--------------------------------+
//!  88       92       96
//!  +--------+--------+---------------------------- - - - ---+
//!  |pl_crc  |hdr_crc |  payload (payload_size bytes)        |
//!  +--------+--------+---------------------------- - - - ---+
//! ```
//!
//! `hdr_crc` is crc32c over bytes `0..92` (so it also covers `pl_crc`), `pl_crc` is crc32c of the
//! payload. A receiver checks magic, version and `hdr_crc` before it believes any length in the
//! header, bounds the payload by [`FRAME_PAYLOAD_SIZE_MAX`], validates every field against the
//! opcode, and only then waits for the payload. The payload of a 4 KiB write is sent as a
//! second slice of a vectored write ([`Header::encode`]) and handed to the store as a
//! zero-copy [`bytes::Bytes`] slice of the receive buffer ([`FrameDecoder::handle_input`]).
//!
//! # Connection lifecycle
//!
//! 1. [`Handshake`]: HELLO / PROOF / REFUSE frames authenticate both nodes with the cluster
//!    secret and check protocol version and cluster id.
//! 2. [`Established`]: a fresh [`FrameDecoder`] reads the I/O and CONTROL frames that follow
//!    (and refuses handshake frames). Requests are pipelined and answered out of order;
//!    replies echo the request id and address, and the requester's [`InFlight`] table matches
//!    each reply to its request.
//!
//! Any decode error is fatal to the connection it came from (and only to it): the decoder keeps
//! returning the same error, so a transport can never resynchronise on attacker-chosen bytes.

mod control;
mod error;
mod frame;
mod handshake;
mod header;
mod inflight;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use bytes::{Bytes, BytesMut};
pub use control::{CONTROL_ENVELOPE_HEADER_SIZE_BYTES, ControlEnvelope, ControlError, ControlKind};
pub use error::{EncodeError, FieldError, FrameError};
pub use frame::{Frame, FrameDecoder, encode_frame};
pub use handshake::{
    AcceptorAwaitHello, AcceptorAwaitProof, CLUSTER_SECRET_SIZE_MAX, CLUSTER_SECRET_SIZE_MIN,
    ClusterSecret, Established, Features, HELLO_SIZE_BYTES, Handshake, HandshakeConfig,
    HandshakeError, Hello, HelloError, InitiatorAwaitHello, InitiatorAwaitProof, NONCE_SIZE_BYTES,
    Nonce, PROOF_SIZE_BYTES, Proof, REFUSE_SIZE_BYTES, RefuseReason, Role, SecretError,
};
pub use header::{Flags, Header, Opcode, RequestId, Status};
pub use inflight::{InFlight, REQUESTS_IN_FLIGHT_MAX, ReplyError, RequestError};

use crate::units::{BLOCK_SIZE_BYTES, CHUNK_SIZE_BYTES_DEFAULT, CHUNK_SIZE_BYTES_MAX};

/// First four bytes of every frame. Lets a receiver reject a stream that is not a Basalt peer
/// connection (an HTTP probe, an NBD client on the wrong port) after four bytes.
pub const MAGIC: [u8; 4] = *b"BSLT";

/// The one protocol version this build speaks. A frame with another version byte is refused
/// before anything else in it is trusted; the HELLO carries a version range so a later build can
/// negotiate.
pub const PROTOCOL_VERSION: u8 = 1;

/// Size of the fixed frame header, in bytes. Fixed so the I/O path never parses a variable
/// layout; 96 bytes keep it within two cache lines and leave 16 reserved bytes (room for a
/// truncated frame MAC or a trace id) without a format change.
pub const FRAME_HEADER_SIZE_BYTES: usize = 96;

/// Largest data range one READ or WRITE frame may carry, in bytes. The gateway splits requests
/// at chunk boundaries and then into pieces of at most this size, so a peer never has to buffer
/// more than this for one I/O. Equal to the default chunk size, so recovery can move a default
/// chunk in one frame; larger chunks (up to [`CHUNK_SIZE_BYTES_MAX`]) move in pieces.
pub const IO_SIZE_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// Room above [`IO_SIZE_BYTES_MAX`] for a CONTROL message that carries a full data range plus
/// its own metadata (a recovery read reply, a Raft entry holding a write), in bytes.
pub const FRAME_PAYLOAD_SLACK_BYTES: u32 = 64 * 1024;

/// Largest payload any frame may carry, in bytes. Bounds the memory one frame from a peer can
/// pin before its checksum is verified; a larger `payload_size` is refused after the header.
pub const FRAME_PAYLOAD_SIZE_MAX: u32 = IO_SIZE_BYTES_MAX + FRAME_PAYLOAD_SLACK_BYTES;

/// Largest payload accepted before the peer is authenticated, in bytes: a HELLO is the largest
/// handshake frame. Keeps an unauthenticated peer from making us buffer megabytes.
pub const HANDSHAKE_PAYLOAD_SIZE_MAX: u32 = 128;

const _: () = assert!(size_of::<header::RawHeader>() == FRAME_HEADER_SIZE_BYTES);
const _: () = assert!(FRAME_HEADER_SIZE_BYTES <= 96);
const _: () = assert!(FRAME_HEADER_SIZE_BYTES.is_multiple_of(8));
const _: () = assert!(IO_SIZE_BYTES_MAX.is_multiple_of(BLOCK_SIZE_BYTES));
const _: () = assert!(IO_SIZE_BYTES_MAX >= CHUNK_SIZE_BYTES_DEFAULT);
const _: () = assert!(IO_SIZE_BYTES_MAX <= CHUNK_SIZE_BYTES_MAX);
const _: () = assert!(
    FRAME_PAYLOAD_SIZE_MAX as usize
        >= IO_SIZE_BYTES_MAX as usize + CONTROL_ENVELOPE_HEADER_SIZE_BYTES
);
// A whole frame's size is computed in u32 and usize without overflow.
const _: () =
    assert!(FRAME_PAYLOAD_SIZE_MAX as u64 + FRAME_HEADER_SIZE_BYTES as u64 <= u32::MAX as u64);
const _: () = assert!(HANDSHAKE_PAYLOAD_SIZE_MAX as usize >= HELLO_SIZE_BYTES);
const _: () = assert!(HANDSHAKE_PAYLOAD_SIZE_MAX as usize >= PROOF_SIZE_BYTES);
const _: () = assert!(HANDSHAKE_PAYLOAD_SIZE_MAX as usize >= REFUSE_SIZE_BYTES);
const _: () = assert!(HANDSHAKE_PAYLOAD_SIZE_MAX <= FRAME_PAYLOAD_SIZE_MAX);
