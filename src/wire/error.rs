//! Codec errors, grouped by who is at fault: [`FrameError`] is always the peer's (bad bytes on a
//! connection, fatal to that connection), [`EncodeError`] is always ours (a caller built a frame
//! the protocol does not allow). [`FieldError`] names the broken field rule for both.

use super::header::Opcode;

/// Why bytes from a peer are not a valid frame. Every variant is fatal to the connection: the
/// decoder stops at the first one and keeps returning it (DESIGN §6, STYLE 9).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    // -- Not our protocol at all.
    /// The stream does not start frames with [`super::MAGIC`]: a foreign client or lost framing.
    #[error("bad magic {found:02x?}: not a Basalt peer stream")]
    Magic {
        /// The four bytes found where the magic belongs.
        found: [u8; 4],
    },
    /// The peer speaks a protocol version this build does not.
    #[error("protocol version {found} (this node speaks {supported})")]
    Version {
        /// Version byte in the frame.
        found: u8,
        /// The version this build speaks.
        supported: u8,
    },

    // -- Damaged in transit (or forged without the checksum).
    /// The header does not match its crc32c; no length in it can be trusted.
    #[error("header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the bytes received.
        computed: u32,
    },
    /// The payload does not match the crc32c in its (valid) header.
    #[error("payload checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    PayloadChecksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the payload received.
        computed: u32,
    },

    // -- Over a limit.
    /// The header announces a payload larger than this connection accepts.
    #[error("payload of {payload_size_bytes} bytes exceeds the limit of {limit_bytes}")]
    Oversized {
        /// Payload size announced by the header.
        payload_size_bytes: u32,
        /// The decoder's limit ([`super::FRAME_PAYLOAD_SIZE_MAX`] or the handshake's).
        limit_bytes: u32,
    },

    // -- Well-formed bytes, invalid meaning.
    /// The opcode is not defined in this protocol version.
    #[error("unknown opcode {code}")]
    UnknownOpcode {
        /// The opcode byte.
        code: u8,
    },
    /// A defined opcode that does not belong to the connection's current stage: I/O before
    /// the handshake finished, or a handshake frame after it.
    #[error("{opcode} frame is not allowed at this stage of the connection")]
    OutOfStage {
        /// The frame's opcode.
        opcode: Opcode,
    },
    /// The status is not defined in this protocol version.
    #[error("unknown status {code}")]
    UnknownStatus {
        /// The status code.
        code: u16,
    },
    /// A field breaks the rules of the frame's opcode.
    #[error("invalid {opcode} frame: {error}")]
    Field {
        /// The frame's opcode.
        opcode: Opcode,
        /// The rule broken.
        error: FieldError,
    },

    // -- Wrong amount of bytes.
    /// A whole-buffer decode was given fewer bytes than one frame.
    #[error("short frame: {size_bytes} bytes, need {needed_bytes}")]
    Short {
        /// Bytes given.
        size_bytes: usize,
        /// Bytes needed for the frame (as far as known).
        needed_bytes: usize,
    },
    /// A whole-buffer decode was given bytes after the frame.
    #[error("{trailing_bytes} trailing bytes after the frame")]
    Trailing {
        /// Bytes left over.
        trailing_bytes: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered_bytes} bytes of it buffered)")]
    Truncated {
        /// Bytes of the unfinished frame that had arrived (header bytes included once parsed).
        buffered_bytes: usize,
    },
}

/// A broken field rule of an opcode (table in `docs/wire-protocol.md`, "Field rules").
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// A flag bit this version does not define.
    #[error("unknown flag bits")]
    UnknownFlags,
    /// A reserved byte is non-zero; reserved fields are zero until a version defines them.
    #[error("reserved field is not zero")]
    ReservedNonZero,
    /// FUA on a reply or on a request that changes nothing.
    #[error("FUA flag on a frame that cannot carry it")]
    FuaNotAllowed,
    /// A reply to an opcode that is never replied to (the handshake's).
    #[error("this opcode has no replies")]
    ReplyNotAllowed,
    /// A request with a status other than OK.
    #[error("status set in a request")]
    StatusInRequest,
    /// A handshake frame with an address, flags or request id: they are all zero.
    #[error("handshake frame with non-zero address fields")]
    HandshakeAddress,
    /// An offset or length on an opcode that addresses no range.
    #[error("range on an opcode without one")]
    UnexpectedRange,
    /// A zero length on an opcode that needs a range.
    #[error("empty range")]
    EmptyRange,
    /// Offset or length not a multiple of the 512-byte sector.
    #[error("range not sector-aligned")]
    Unaligned,
    /// The range ends beyond the largest chunk size.
    #[error("range ends beyond the largest chunk")]
    BeyondChunk,
    /// A data range longer than [`super::IO_SIZE_BYTES_MAX`].
    #[error("data range longer than the I/O size limit")]
    DataTooLong,
    /// A gateway request with a PG version: only the primary assigns versions.
    #[error("pg_version set in a request that does not carry one")]
    UnexpectedPgVersion,
    /// A replication request without the version the primary assigned.
    #[error("replication request without a pg_version")]
    MissingPgVersion,
    /// The payload size is not what the opcode and length require.
    #[error("payload of {found_bytes} bytes, expected {expected_bytes}")]
    PayloadSize {
        /// Size the rules require.
        expected_bytes: usize,
        /// Size announced by the header.
        found_bytes: usize,
    },
    /// The payload is shorter than the opcode's minimum (a control envelope header).
    #[error("payload of {found_bytes} bytes, at least {min_bytes} needed")]
    PayloadTooShort {
        /// Smallest size the rules allow.
        min_bytes: usize,
        /// Size announced by the header.
        found_bytes: usize,
    },
}

/// Why a frame cannot be encoded: a caller bug (the frame would be refused by every receiver).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The payload is larger than [`super::FRAME_PAYLOAD_SIZE_MAX`].
    #[error("payload of {payload_size_bytes} bytes exceeds the limit of {limit_bytes}")]
    Oversized {
        /// Payload size given.
        payload_size_bytes: usize,
        /// The limit.
        limit_bytes: u32,
    },
    /// A field breaks the opcode's rules.
    #[error("invalid frame: {0}")]
    Field(#[source] FieldError),
}
