//! NBD protocol codec: the server side of one connection, sans-IO.
//!
//! Pure state machines over byte buffers, in the quinn-proto/rustls style: no sockets, no
//! tokio, no clock. The daemon's async shell (`blockd/src/frontends/nbd/`) only moves bytes
//! between the socket and [`ServerSession`], executes the [`Event::Request`]s it yields against
//! the gateway, and encodes replies with a [`ReplyEncoder`]. `docs/nbd.md` walks through the
//! driving loop; [`session`] states the contract.
//!
//! # Protocol subset (NetworkBlockDevice/nbd `doc/proto.md`)
//! - Handshake: fixed newstyle only (clients without `FLAG_C_FIXED_NEWSTYLE` are refused),
//!   `NO_ZEROES`. Options: `EXPORT_NAME`, `ABORT`, `LIST`, `INFO`, `GO` (`INFO_EXPORT`,
//!   `INFO_NAME`, `INFO_DESCRIPTION`, `INFO_BLOCK_SIZE`), `STRUCTURED_REPLY`,
//!   `EXTENDED_HEADERS`, `LIST_META_CONTEXT`/`SET_META_CONTEXT` with `base:allocation`.
//!   `STARTTLS` is refused with `REP_ERR_POLICY` (TLS comes later, see [`handshake`]);
//!   unknown options get `REP_ERR_UNSUP`, unknown exports `REP_ERR_UNKNOWN`, and oversized
//!   options are skipped unbuffered and refused, so haggling always continues.
//! - Transmission: compact (28-byte) and extended (32-byte) requests; `READ`, `WRITE`, `DISC`,
//!   `FLUSH`, `TRIM`, `WRITE_ZEROES` (`NO_HOLE`, `FAST_ZERO`), `BLOCK_STATUS` (`REQ_ONE`,
//!   extended-header context filter), and `CACHE` (let through even when not advertised, as
//!   the spec asks); flags `FUA`, `DF`, `PAYLOAD_LEN`. Replies: simple, structured and
//!   extended, with `NONE`, `OFFSET_DATA`, `OFFSET_HOLE`, `ERROR`, `ERROR_OFFSET`,
//!   `BLOCK_STATUS` and `BLOCK_STATUS_EXT` chunks.
//! - Not supported: oldstyle and plain newstyle negotiation, TLS, `CMD_RESIZE`, metadata
//!   contexts other than `base:allocation`, server-initiated shutdown
//!   (`REP_ERR_SHUTDOWN`/`ESHUTDOWN`). The client side ([`client`]) is the handshake (a host
//!   initiator then hands the socket to the kernel) and a simple-reply transmission codec for
//!   userspace tools (`basalt audit`).
//!
//! # Limits
//! Block sizes: minimum 512, preferred 4096, maximum payload 32 MiB
//! ([`consts::PAYLOAD_BYTES_MAX`]); always advertised with `INFO_BLOCK_SIZE`, and requests
//! outside them are refused (`EINVAL`; `ENOSPC` for writes past the end, `EPERM` on read-only
//! exports) whether or not the client asked, which the spec allows. Option data is buffered up
//! to [`consts::OPTION_DATA_BYTES_MAX`], options per handshake are capped at
//! [`consts::HANDSHAKE_OPTIONS_MAX`], queued events and output at
//! [`consts::EVENTS_QUEUED_MAX`] and [`consts::TRANSMIT_BYTES_MAX`]. A payload is buffered only
//! once its header has been validated against these limits; a refused write's payload is
//! skipped as it streams by.

pub mod client;
pub mod consts;
mod error;
pub mod export;
pub mod handshake;
pub mod session;
pub mod transmission;
pub mod wire;

#[cfg(test)]
mod tests;

pub use client::{
    ClientHandshake, ClientHandshakeError, ClientNegotiated, ClientReply, ClientReplyError,
    ClientRequestError, ClientTransmission,
};
pub use error::{FaultClass, MalformedInput, NbdError, ProtocolViolation, Unsupported};
pub use export::{BlockSizeConstraints, ExportCatalog, ExportFeatures, ExportInfo, ExportListing};
pub use handshake::{Negotiated, ServerConfig, TlsMode};
pub use session::{CloseReason, Event, ServerSession};
pub use transmission::{
    CommandFlags, CommandKind, EncodeError, ErrorCode, Extent, ReplyEncoder, ReplyMode, ReplyTo,
    Request, RequestError, check_range,
};
