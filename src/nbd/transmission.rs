//! Transmission phase: request header decoding and validation, and reply encoding.
//!
//! Requests are validated here as far as possible without touching the volume: flags allowed
//! for the command, features the export advertised, read-only, alignment to
//! [`BLOCK_SIZE_MIN_BYTES`], length limits and the export-size range. A request that fails is
//! answered by the session with an NBD error code (`EINVAL`, `EPERM`, `ENOSPC`) and the
//! connection stays usable; its payload, if any, is skipped without being buffered. Only
//! framing the session cannot recover from (bad magic, a payload over [`PAYLOAD_BYTES_MAX`]) is
//! connection-fatal.
//!
//! Replies are encoded by [`ReplyEncoder`] into caller-owned buffers. For reads the encoder
//! writes only the header, so the caller can send header and data buffer with one vectored
//! write and no copy of the data.

use bytes::{BufMut, Bytes};
use zerocopy::IntoBytes;
use zerocopy::big_endian::{U16, U32, U64};

use super::consts::{
    BLOCK_SIZE_MIN_BYTES, BLOCK_STATUS_EXTENTS_MAX, BLOCK_STATUS_PAYLOAD_BYTES_MAX,
    CMD_BLOCK_STATUS, CMD_CACHE, CMD_DISC, CMD_FLAG_DF, CMD_FLAG_FAST_ZERO, CMD_FLAG_FUA,
    CMD_FLAG_NO_HOLE, CMD_FLAG_PAYLOAD_LEN, CMD_FLAG_REQ_ONE, CMD_FLUSH, CMD_READ, CMD_TRIM,
    CMD_WRITE, CMD_WRITE_ZEROES, EXTENDED_REPLY_MAGIC, EXTENDED_REQUEST_MAGIC,
    FLAG_BLOCK_STATUS_PAYLOAD, FLAG_READ_ONLY, FLAG_SEND_DF, FLAG_SEND_FAST_ZERO, FLAG_SEND_FLUSH,
    FLAG_SEND_FUA, FLAG_SEND_TRIM, FLAG_SEND_WRITE_ZEROES, PAYLOAD_BYTES_MAX, REPLY_FLAG_DONE,
    REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_BLOCK_STATUS_EXT, REPLY_TYPE_ERROR,
    REPLY_TYPE_ERROR_OFFSET, REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE,
    REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRING_BYTES_MAX, STRUCTURED_REPLY_MAGIC,
};
use super::error::{MalformedInput, NbdError, ProtocolViolation};
use super::wire::{
    self, BlockStatusExtPrefix, CompactRequest, ErrorPrefix, ExtendedReply, ExtendedRequest,
    Extent32, Extent64, OffsetHole, SimpleReply, StructuredReply,
};

/// NBD error codes carried in replies (the spec's portable subset of errno values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// Operation not permitted (write to a read-only export).
    Perm = 1,
    /// Input/output error (the volume failed the I/O).
    Io = 5,
    /// Cannot allocate memory.
    NoMem = 12,
    /// Invalid argument (bad flags, alignment, range).
    Inval = 22,
    /// No space left (write beyond the end).
    NoSpc = 28,
    /// Value too large (`DF` read too big to send unfragmented).
    Overflow = 75,
    /// Operation not supported (`FAST_ZERO` that would be slow).
    NotSup = 95,
    /// Server shutting down.
    Shutdown = 108,
}

impl ErrorCode {
    /// Wire value.
    pub fn to_wire(self) -> u32 {
        self as u32
    }

    /// Parses a wire value; `None` for values outside the spec (clients treat them as `EINVAL`).
    pub fn from_wire(value: u32) -> Option<Self> {
        let code = match value {
            1 => Self::Perm,
            5 => Self::Io,
            12 => Self::NoMem,
            22 => Self::Inval,
            28 => Self::NoSpc,
            75 => Self::Overflow,
            95 => Self::NotSup,
            108 => Self::Shutdown,
            _ => return None,
        };
        Some(code)
    }
}

/// Transmission commands. `Disconnect` exists for client encoding; the server session turns it
/// into [`super::session::Event::Closed`] and never hands it out as a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// `CMD_READ`.
    Read,
    /// `CMD_WRITE`.
    Write,
    /// `CMD_DISC`.
    Disconnect,
    /// `CMD_FLUSH`.
    Flush,
    /// `CMD_TRIM`.
    Trim,
    /// `CMD_CACHE`.
    Cache,
    /// `CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `CMD_BLOCK_STATUS`.
    BlockStatus,
}

impl CommandKind {
    /// Wire value.
    pub fn to_wire(self) -> u16 {
        match self {
            Self::Read => CMD_READ,
            Self::Write => CMD_WRITE,
            Self::Disconnect => CMD_DISC,
            Self::Flush => CMD_FLUSH,
            Self::Trim => CMD_TRIM,
            Self::Cache => CMD_CACHE,
            Self::WriteZeroes => CMD_WRITE_ZEROES,
            Self::BlockStatus => CMD_BLOCK_STATUS,
        }
    }

    /// Parses a wire value; `None` for commands this codec does not know.
    pub fn from_wire(value: u16) -> Option<Self> {
        let kind = match value {
            CMD_READ => Self::Read,
            CMD_WRITE => Self::Write,
            CMD_DISC => Self::Disconnect,
            CMD_FLUSH => Self::Flush,
            CMD_TRIM => Self::Trim,
            CMD_CACHE => Self::Cache,
            CMD_WRITE_ZEROES => Self::WriteZeroes,
            CMD_BLOCK_STATUS => Self::BlockStatus,
            _ => return None,
        };
        Some(kind)
    }

    /// Whether `offset`/`length` address the export (and so are range- and alignment-checked).
    fn addresses_export(self) -> bool {
        !matches!(self, Self::Disconnect | Self::Flush)
    }
}

/// Command flags of a request (`CMD_FLAG_*`), kept as the wire bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CommandFlags(pub u16);

impl CommandFlags {
    /// Force unit access.
    pub const FUA: Self = Self(CMD_FLAG_FUA);
    /// Write zeroes without punching a hole.
    pub const NO_HOLE: Self = Self(CMD_FLAG_NO_HOLE);
    /// Read without fragmenting.
    pub const DF: Self = Self(CMD_FLAG_DF);
    /// One extent per context.
    pub const REQ_ONE: Self = Self(CMD_FLAG_REQ_ONE);
    /// Zero only if fast.
    pub const FAST_ZERO: Self = Self(CMD_FLAG_FAST_ZERO);
    /// Length is the payload length (extended headers).
    pub const PAYLOAD_LEN: Self = Self(CMD_FLAG_PAYLOAD_LEN);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// These flags with the bits of `other` cleared.
    pub fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

/// Which reply (and request header) style the connection negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyMode {
    /// Compact requests, simple replies only (kernel nbd.ko).
    Simple,
    /// Compact requests, structured replies (`OPT_STRUCTURED_REPLY`).
    Structured,
    /// Extended 32-byte requests and replies (`OPT_EXTENDED_HEADERS`).
    Extended,
}

impl ReplyMode {
    /// Whether requests use the 32-byte extended header.
    pub fn extended_headers(self) -> bool {
        self == Self::Extended
    }

    /// Whether structured reply chunks may be sent.
    pub fn structured(self) -> bool {
        self != Self::Simple
    }

    /// Size of one request header in this mode.
    pub fn request_header_bytes(self) -> usize {
        if self.extended_headers() {
            size_of::<ExtendedRequest>()
        } else {
            size_of::<CompactRequest>()
        }
    }
}

/// A decoded request header, before validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// `CMD_FLAG_*` bits as sent.
    pub flags: u16,
    /// `CMD_*` code as sent.
    pub command: u16,
    /// Opaque client cookie.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Effect or payload length (widened to 64 bits for compact headers).
    pub length: u64,
}

/// Decodes one request header from the front of `bytes`; `Ok(None)` if it is incomplete.
pub fn decode_request_header(
    mode: ReplyMode,
    bytes: &[u8],
) -> Result<Option<RequestHeader>, MalformedInput> {
    if mode.extended_headers() {
        let Some((raw, _)) = wire::read_prefix::<ExtendedRequest>(bytes) else {
            return Ok(None);
        };
        check_request_magic(raw.magic.get(), EXTENDED_REQUEST_MAGIC)?;
        let (flags, command) = (raw.flags.get(), raw.command.get());
        let (cookie, offset, length) = (raw.cookie.get(), raw.offset.get(), raw.length.get());
        Ok(Some(RequestHeader {
            flags,
            command,
            cookie,
            offset,
            length,
        }))
    } else {
        let Some((raw, _)) = wire::read_prefix::<CompactRequest>(bytes) else {
            return Ok(None);
        };
        check_request_magic(raw.magic.get(), REQUEST_MAGIC)?;
        let (flags, command) = (raw.flags.get(), raw.command.get());
        let (cookie, offset) = (raw.cookie.get(), raw.offset.get());
        let length = u64::from(raw.length.get());
        Ok(Some(RequestHeader {
            flags,
            command,
            cookie,
            offset,
            length,
        }))
    }
}

fn check_request_magic(found: u32, expected: u32) -> Result<(), MalformedInput> {
    if found == expected {
        Ok(())
    } else {
        Err(MalformedInput::RequestMagic { found, expected })
    }
}

/// Encodes a request header (client side). Compact headers cannot carry lengths over 32 bits.
pub fn encode_request_header(
    mode: ReplyMode,
    header: &RequestHeader,
    out: &mut impl BufMut,
) -> Result<(), EncodeError> {
    let flags = U16::new(header.flags);
    let command = U16::new(header.command);
    let (cookie, offset) = (U64::new(header.cookie), U64::new(header.offset));
    if mode.extended_headers() {
        let magic = U32::new(EXTENDED_REQUEST_MAGIC);
        let length = U64::new(header.length);
        let raw = ExtendedRequest {
            magic,
            flags,
            command,
            cookie,
            offset,
            length,
        };
        out.put_slice(raw.as_bytes());
    } else {
        let length = u32::try_from(header.length).map_err(|_| EncodeError::LengthTooLarge)?;
        let magic = U32::new(REQUEST_MAGIC);
        let raw = CompactRequest {
            magic,
            flags,
            command,
            cookie,
            offset,
            length: U32::new(length),
        };
        out.put_slice(raw.as_bytes());
    }
    Ok(())
}

/// A validated request for the caller to execute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Opaque client cookie, echoed in the reply.
    pub cookie: u64,
    /// What to do.
    pub kind: CommandKind,
    /// Semantic flags (`FUA`, `NO_HOLE`, `DF`, `REQ_ONE`, `FAST_ZERO`); framing-only
    /// `PAYLOAD_LEN` is removed.
    pub flags: CommandFlags,
    /// Byte offset (0 for `Flush`).
    pub offset: u64,
    /// Effect length in bytes (for writes, the payload length; for block status, the
    /// effect length even when a filter payload was used; 0 for `Flush`).
    pub length: u64,
    /// Write data (empty for every other command). Shares the caller's input buffer.
    pub payload: Bytes,
}

impl Request {
    /// The addressing a reply to this request needs.
    pub fn reply_to(&self) -> ReplyTo {
        ReplyTo {
            cookie: self.cookie,
            offset: self.offset,
        }
    }
}

/// Identifies the request a reply answers: cookie, and offset (echoed in extended headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplyTo {
    /// The request's cookie.
    pub cookie: u64,
    /// The request's offset.
    pub offset: u64,
}

/// A request that is refused without closing the connection. The session answers these
/// itself; `code()` is the NBD error and `Display` the message sent with structured replies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A command code this server does not implement.
    #[error("unknown command {command}")]
    UnknownCommand {
        /// The code received.
        command: u16,
    },
    /// Flags that are undefined, not valid for this command, or not negotiated.
    #[error("flags {flags:#x} are not allowed for {kind:?}")]
    FlagsNotAllowed {
        /// The command.
        kind: CommandKind,
        /// The offending bits.
        flags: u16,
    },
    /// A command whose feature was not advertised or negotiated.
    #[error("{kind:?} was not negotiated for this export")]
    NotNegotiated {
        /// The command.
        kind: CommandKind,
    },
    /// A modifying command on a read-only export.
    #[error("export is read-only")]
    ReadOnly,
    /// Offset or length not a multiple of the minimum block size.
    #[error("offset {offset} or length {length} is not a multiple of {BLOCK_SIZE_MIN_BYTES}")]
    Misaligned {
        /// Request offset.
        offset: u64,
        /// Request length.
        length: u64,
    },
    /// A read or cache longer than the maximum payload.
    #[error("length {length} exceeds the maximum payload of {PAYLOAD_BYTES_MAX} bytes")]
    TooLong {
        /// Request length.
        length: u64,
    },
    /// A range that does not lie within the export.
    #[error("range {offset}+{length} is beyond the export size {size_bytes}")]
    OutOfRange {
        /// The command (writes get `ENOSPC`, others `EINVAL`).
        kind: CommandKind,
        /// Request offset.
        offset: u64,
        /// Request length.
        length: u64,
        /// Export size.
        size_bytes: u64,
    },
    /// A block status query of length 0 (no extent could describe it).
    #[error("block status of zero length")]
    ZeroLength,
    /// A block status filter payload that is malformed or names unknown contexts.
    #[error("invalid block status context filter")]
    BadFilter,
}

impl RequestError {
    /// The NBD error code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::ReadOnly => ErrorCode::Perm,
            Self::OutOfRange {
                kind: CommandKind::Write | CommandKind::WriteZeroes,
                ..
            } => ErrorCode::NoSpc,
            _ => ErrorCode::Inval,
        }
    }
}

/// Whether `[offset, offset + length)` lies within an export of `size_bytes`, without
/// overflow. Exposed so callers holding only an export size can apply the same rule.
pub fn check_range(size_bytes: u64, offset: u64, length: u64) -> bool {
    offset
        .checked_add(length)
        .is_some_and(|end| end <= size_bytes)
}

/// Negotiated facts the transmission phase validates against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransmissionParams {
    /// Header and reply style.
    pub mode: ReplyMode,
    /// Export size in bytes.
    pub size_bytes: u64,
    /// Transmission flags sent to the client.
    pub transmission_flags: u16,
    /// Context id of `base:allocation` if it was selected for this export.
    pub base_allocation: Option<u32>,
}

impl TransmissionParams {
    fn has(&self, flag: u16) -> bool {
        self.transmission_flags & flag != 0
    }
}

/// What the session does with a decoded header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Hand the request to the caller.
    Submit(Request),
    /// Read `length` bytes of write data, then submit.
    AwaitWriteData { header: RequestHeader, length: u32 },
    /// Read a `length`-byte block status filter, then validate it.
    AwaitFilter { header: RequestHeader, length: u32 },
    /// Answer success without involving the caller (a zero-length request moves no data).
    AnswerOk { to: ReplyTo },
    /// Skip `skip_bytes` of payload, then answer with the error.
    Reject {
        to: ReplyTo,
        error: RequestError,
        skip_bytes: u64,
    },
    /// `CMD_DISC`.
    Disconnect,
}

/// Classifies a decoded header. `Err` only for a payload we refuse to read.
pub(crate) fn assess(
    header: &RequestHeader,
    params: &TransmissionParams,
) -> Result<Disposition, NbdError> {
    if header.command == CMD_DISC {
        return Ok(Disposition::Disconnect);
    }
    let to = ReplyTo {
        cookie: header.cookie,
        offset: header.offset,
    };
    let payload_bytes = payload_length(header, params.mode);
    if payload_bytes > u64::from(PAYLOAD_BYTES_MAX) {
        return Err(ProtocolViolation::PayloadTooLarge {
            length: payload_bytes,
        }
        .into());
    }
    let reject = |error| Disposition::Reject {
        to,
        error,
        skip_bytes: payload_bytes,
    };
    let Some(kind) = CommandKind::from_wire(header.command) else {
        return Ok(reject(RequestError::UnknownCommand {
            command: header.command,
        }));
    };
    if let Err(error) = check_command(kind, header.flags, params) {
        return Ok(reject(error));
    }
    // Bounded by PAYLOAD_BYTES_MAX above, so the narrowing cannot fail.
    let length = u32::try_from(payload_bytes).unwrap_or(u32::MAX);
    if kind == CommandKind::BlockStatus && payload_bytes > 0 {
        if length < 12 || length % 4 != 0 || length > BLOCK_STATUS_PAYLOAD_BYTES_MAX {
            return Ok(reject(RequestError::BadFilter));
        }
        return Ok(Disposition::AwaitFilter {
            header: *header,
            length,
        });
    }
    if let Err(error) = check_extent(kind, header.offset, header.length, params) {
        return Ok(reject(error));
    }
    if header.length == 0 && kind != CommandKind::Flush {
        return Ok(Disposition::AnswerOk { to });
    }
    if kind == CommandKind::Write {
        return Ok(Disposition::AwaitWriteData {
            header: *header,
            length,
        });
    }
    Ok(Disposition::Submit(make_request(
        header,
        kind,
        Bytes::new(),
    )))
}

/// Bytes of payload following the header: writes always carry one (even a non-compliant
/// extended write without `PAYLOAD_LEN`, which qemu also tolerates); other commands only with
/// `PAYLOAD_LEN` under extended headers.
fn payload_length(header: &RequestHeader, mode: ReplyMode) -> u64 {
    let flagged = header.flags & CMD_FLAG_PAYLOAD_LEN != 0;
    if header.command == CMD_WRITE || (mode.extended_headers() && flagged) {
        header.length
    } else {
        0
    }
}

/// Builds the request handed to the caller.
pub(crate) fn make_request(header: &RequestHeader, kind: CommandKind, payload: Bytes) -> Request {
    let flags = CommandFlags(header.flags).without(CommandFlags::PAYLOAD_LEN);
    let (offset, length) = match kind {
        CommandKind::Flush => (0, 0),
        _ => (header.offset, header.length),
    };
    Request {
        cookie: header.cookie,
        kind,
        flags,
        offset,
        length,
        payload,
    }
}

/// Flags, negotiation and read-only checks that need no addressing.
fn check_command(
    kind: CommandKind,
    flags: u16,
    params: &TransmissionParams,
) -> Result<(), RequestError> {
    let not_allowed = flags & !allowed_flags(kind, params);
    if not_allowed != 0 {
        return Err(RequestError::FlagsNotAllowed {
            kind,
            flags: not_allowed,
        });
    }
    // Before the negotiation check: the spec wants EPERM for a write or trim on a read-only
    // export, and a read-only export never advertises trim or zeroing.
    let modifies = matches!(
        kind,
        CommandKind::Write | CommandKind::Trim | CommandKind::WriteZeroes
    );
    if modifies && params.has(FLAG_READ_ONLY) {
        return Err(RequestError::ReadOnly);
    }
    let negotiated = match kind {
        CommandKind::Flush => params.has(FLAG_SEND_FLUSH),
        CommandKind::Trim => params.has(FLAG_SEND_TRIM),
        CommandKind::WriteZeroes => params.has(FLAG_SEND_WRITE_ZEROES),
        CommandKind::BlockStatus => params.base_allocation.is_some() && params.mode.structured(),
        // Cache is accepted even unadvertised: the spec notes clients that send it anyway.
        CommandKind::Read | CommandKind::Write | CommandKind::Cache | CommandKind::Disconnect => {
            true
        }
    };
    if !negotiated {
        return Err(RequestError::NotNegotiated { kind });
    }
    Ok(())
}

/// Flags valid for `kind` given what was advertised.
fn allowed_flags(kind: CommandKind, params: &TransmissionParams) -> u16 {
    let mut allowed = 0;
    if params.has(FLAG_SEND_FUA) {
        allowed |= CMD_FLAG_FUA;
    }
    let extended = params.mode.extended_headers();
    match kind {
        CommandKind::Read if params.has(FLAG_SEND_DF) => allowed |= CMD_FLAG_DF,
        CommandKind::Write if extended => allowed |= CMD_FLAG_PAYLOAD_LEN,
        CommandKind::WriteZeroes => {
            allowed |= CMD_FLAG_NO_HOLE;
            if params.has(FLAG_SEND_FAST_ZERO) {
                allowed |= CMD_FLAG_FAST_ZERO;
            }
        }
        CommandKind::BlockStatus => {
            allowed |= CMD_FLAG_REQ_ONE;
            if extended && params.has(FLAG_BLOCK_STATUS_PAYLOAD) {
                allowed |= CMD_FLAG_PAYLOAD_LEN;
            }
        }
        _ => {}
    }
    allowed
}

/// Alignment, length and range checks for commands that address the export.
pub(crate) fn check_extent(
    kind: CommandKind,
    offset: u64,
    length: u64,
    params: &TransmissionParams,
) -> Result<(), RequestError> {
    if !kind.addresses_export() {
        return Ok(());
    }
    let alignment = u64::from(BLOCK_SIZE_MIN_BYTES);
    if !offset.is_multiple_of(alignment) || !length.is_multiple_of(alignment) {
        return Err(RequestError::Misaligned { offset, length });
    }
    let payload_sized = matches!(kind, CommandKind::Read | CommandKind::Cache);
    if payload_sized && length > u64::from(PAYLOAD_BYTES_MAX) {
        return Err(RequestError::TooLong { length });
    }
    if kind == CommandKind::BlockStatus && length == 0 {
        return Err(RequestError::ZeroLength);
    }
    if !check_range(params.size_bytes, offset, length) {
        let size_bytes = params.size_bytes;
        return Err(RequestError::OutOfRange {
            kind,
            offset,
            length,
            size_bytes,
        });
    }
    Ok(())
}

/// Parses a block status filter payload (effect length, then context ids) and returns the
/// effect length. Every id must be a context selected on this connection.
pub(crate) fn parse_block_status_filter(
    payload: &[u8],
    params: &TransmissionParams,
) -> Result<u64, RequestError> {
    let (effect_length, mut ids) = wire::read_u64(payload).ok_or(RequestError::BadFilter)?;
    if ids.is_empty() || ids.len() % 4 != 0 {
        return Err(RequestError::BadFilter);
    }
    while let Some((id, rest)) = wire::read_u32(ids) {
        if Some(id) != params.base_allocation {
            return Err(RequestError::BadFilter);
        }
        ids = rest;
    }
    Ok(effect_length)
}

/// One block status extent. `status` holds context-defined flags (`STATE_HOLE`, `STATE_ZERO`
/// for `base:allocation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Length in bytes (non-zero).
    pub length: u64,
    /// Status flags.
    pub status: u32,
}

/// A reply the caller asked for that the negotiated mode cannot express: a caller bug, so the
/// bytes are not written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Chunk types need structured replies; this connection uses simple replies.
    #[error("structured replies were not negotiated")]
    NeedsStructuredReplies,
    /// A simple read reply must carry the whole read at the request's offset in one piece.
    #[error("simple replies cannot split a read")]
    SimpleReadMustBeWhole,
    /// A content chunk or extent of zero bytes.
    #[error("empty chunk or extent")]
    Empty,
    /// A length that does not fit the field for this mode.
    #[error("length does not fit the header")]
    LengthTooLarge,
    /// More than [`BLOCK_STATUS_EXTENTS_MAX`] extents.
    #[error("more than {BLOCK_STATUS_EXTENTS_MAX} extents")]
    TooManyExtents,
}

/// Encodes replies for one connection's negotiated mode. Cheap to copy, so completion tasks
/// can each hold one. Every method appends whole messages (or, for reads, a whole header whose
/// data the caller appends next) to `out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyEncoder {
    mode: ReplyMode,
}

impl ReplyEncoder {
    /// An encoder for `mode`.
    pub fn new(mode: ReplyMode) -> Self {
        Self { mode }
    }

    /// The negotiated mode.
    pub fn mode(&self) -> ReplyMode {
        self.mode
    }

    /// Success without data (write, flush, trim, cache, write zeroes, a zero-length read): a
    /// simple reply without structured replies, else a final `NONE` chunk. The chunk is used
    /// for every command once structured replies are on because the spec forbids simple
    /// replies to reads then, and the encoder does not know which command it answers.
    pub fn encode_ok(&self, to: ReplyTo, out: &mut impl BufMut) {
        match self.mode {
            ReplyMode::Simple => put_simple(to.cookie, 0, out),
            ReplyMode::Structured | ReplyMode::Extended => {
                self.put_chunk(to, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0, out);
            }
        }
    }

    /// Final error for any request. Structured modes carry `message` (cut to the spec's string
    /// limit) for the client's user; simple replies carry only the code.
    pub fn encode_error(&self, to: ReplyTo, code: ErrorCode, message: &str, out: &mut impl BufMut) {
        if self.mode == ReplyMode::Simple {
            put_simple(to.cookie, code.to_wire(), out);
            return;
        }
        let message = wire::truncate_utf8(message, STRING_BYTES_MAX);
        let length = size_of::<ErrorPrefix>() + message.len();
        self.put_chunk(to, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, length as u64, out);
        put_error_prefix(code, message, out);
    }

    /// Header of a successful read carrying `data_length` bytes for `data_offset`; the caller
    /// writes exactly that many data bytes right after it (no copy through this encoder).
    /// Simple mode sends one piece: `data_offset` must be the request offset and `last` true.
    pub fn encode_read_header(
        &self,
        to: ReplyTo,
        data_offset: u64,
        data_length: u32,
        last: bool,
        out: &mut impl BufMut,
    ) -> Result<(), EncodeError> {
        if self.mode == ReplyMode::Simple {
            if !last || data_offset != to.offset {
                return Err(EncodeError::SimpleReadMustBeWhole);
            }
            put_simple(to.cookie, 0, out);
            return Ok(());
        }
        if data_length == 0 {
            return Err(EncodeError::Empty);
        }
        if !self.mode.extended_headers() && data_length > u32::MAX - 8 {
            return Err(EncodeError::LengthTooLarge);
        }
        let length = 8 + u64::from(data_length);
        self.put_chunk(to, done_flag(last), REPLY_TYPE_OFFSET_DATA, length, out);
        out.put_u64(data_offset);
        Ok(())
    }

    /// A whole successful read with its data copied in: for small reads and tests.
    pub fn encode_read(
        &self,
        to: ReplyTo,
        data: &[u8],
        out: &mut impl BufMut,
    ) -> Result<(), EncodeError> {
        if data.is_empty() && self.mode.structured() {
            self.put_chunk(to, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0, out);
            return Ok(());
        }
        let length = u32::try_from(data.len()).map_err(|_| EncodeError::LengthTooLarge)?;
        self.encode_read_header(to, to.offset, length, true, out)?;
        out.put_slice(data);
        Ok(())
    }

    /// A read chunk saying `length` bytes at `hole_offset` read as zeroes (thin volumes).
    pub fn encode_read_hole(
        &self,
        to: ReplyTo,
        hole_offset: u64,
        length: u32,
        last: bool,
        out: &mut impl BufMut,
    ) -> Result<(), EncodeError> {
        self.require_structured()?;
        if length == 0 {
            return Err(EncodeError::Empty);
        }
        let hole = OffsetHole {
            offset: U64::new(hole_offset),
            length: U32::new(length),
        };
        let payload = size_of::<OffsetHole>() as u64;
        self.put_chunk(to, done_flag(last), REPLY_TYPE_OFFSET_HOLE, payload, out);
        out.put_slice(hole.as_bytes());
        Ok(())
    }

    /// An error at `error_offset` within the request (partial read or write failure).
    pub fn encode_error_offset(
        &self,
        to: ReplyTo,
        code: ErrorCode,
        message: &str,
        error_offset: u64,
        last: bool,
        out: &mut impl BufMut,
    ) -> Result<(), EncodeError> {
        self.require_structured()?;
        let message = wire::truncate_utf8(message, STRING_BYTES_MAX);
        let length = size_of::<ErrorPrefix>() + message.len() + 8;
        self.put_chunk(
            to,
            done_flag(last),
            REPLY_TYPE_ERROR_OFFSET,
            length as u64,
            out,
        );
        put_error_prefix(code, message, out);
        out.put_u64(error_offset);
        Ok(())
    }

    /// The final `NONE` chunk closing a multi-chunk reply.
    pub fn encode_done(&self, to: ReplyTo, out: &mut impl BufMut) -> Result<(), EncodeError> {
        self.require_structured()?;
        self.put_chunk(to, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0, out);
        Ok(())
    }

    /// Block status extents for one context: `BLOCK_STATUS` (32-bit lengths) or, with extended
    /// headers, `BLOCK_STATUS_EXT`. The caller honours `REQ_ONE` by passing one extent no
    /// longer than the request.
    pub fn encode_block_status(
        &self,
        to: ReplyTo,
        context_id: u32,
        extents: &[Extent],
        last: bool,
        out: &mut impl BufMut,
    ) -> Result<(), EncodeError> {
        self.require_structured()?;
        check_extents(extents, self.mode)?;
        let flags = done_flag(last);
        let count = extents.len() as u64;
        if self.mode.extended_headers() {
            let length = 8 + count * size_of::<Extent64>() as u64;
            self.put_chunk(to, flags, REPLY_TYPE_BLOCK_STATUS_EXT, length, out);
            let count = U32::new(extents.len() as u32);
            out.put_slice(
                BlockStatusExtPrefix {
                    context_id: U32::new(context_id),
                    count,
                }
                .as_bytes(),
            );
            for extent in extents {
                let (length, flags) = (U64::new(extent.length), U64::new(u64::from(extent.status)));
                out.put_slice(Extent64 { length, flags }.as_bytes());
            }
        } else {
            let length = 4 + count * size_of::<Extent32>() as u64;
            self.put_chunk(to, flags, REPLY_TYPE_BLOCK_STATUS, length, out);
            out.put_u32(context_id);
            for extent in extents {
                // check_extents proved every length fits 32 bits in this mode.
                let length = U32::new(extent.length as u32);
                out.put_slice(
                    Extent32 {
                        length,
                        flags: U32::new(extent.status),
                    }
                    .as_bytes(),
                );
            }
        }
        Ok(())
    }

    fn require_structured(&self) -> Result<(), EncodeError> {
        if self.mode.structured() {
            Ok(())
        } else {
            Err(EncodeError::NeedsStructuredReplies)
        }
    }

    /// Writes a chunk header. Payload lengths are bounded by callers (at most a data chunk of
    /// `u32::MAX` plus 8, or 64 Ki extents), so they fit the 32-bit structured field.
    fn put_chunk(
        &self,
        to: ReplyTo,
        flags: u16,
        reply_type: u16,
        length: u64,
        out: &mut impl BufMut,
    ) {
        debug_assert!(self.mode.structured());
        let (flags, reply_type, cookie) =
            (U16::new(flags), U16::new(reply_type), U64::new(to.cookie));
        if self.mode.extended_headers() {
            let magic = U32::new(EXTENDED_REPLY_MAGIC);
            let (offset, length) = (U64::new(to.offset), U64::new(length));
            let header = ExtendedReply {
                magic,
                flags,
                reply_type,
                cookie,
                offset,
                length,
            };
            out.put_slice(header.as_bytes());
        } else {
            assert!(
                length <= u64::from(u32::MAX),
                "structured chunk payload over 4 GiB"
            );
            let magic = U32::new(STRUCTURED_REPLY_MAGIC);
            let length = U32::new(length as u32);
            let header = StructuredReply {
                magic,
                flags,
                reply_type,
                cookie,
                length,
            };
            out.put_slice(header.as_bytes());
        }
    }
}

fn done_flag(last: bool) -> u16 {
    if last { REPLY_FLAG_DONE } else { 0 }
}

fn put_simple(cookie: u64, error: u32, out: &mut impl BufMut) {
    let magic = U32::new(SIMPLE_REPLY_MAGIC);
    let reply = SimpleReply {
        magic,
        error: U32::new(error),
        cookie: U64::new(cookie),
    };
    out.put_slice(reply.as_bytes());
}

fn put_error_prefix(code: ErrorCode, message: &str, out: &mut impl BufMut) {
    // truncate_utf8 bounded the message to STRING_BYTES_MAX, which fits 16 bits.
    let message_length = U16::new(message.len() as u16);
    out.put_slice(
        ErrorPrefix {
            error: U32::new(code.to_wire()),
            message_length,
        }
        .as_bytes(),
    );
    out.put_slice(message.as_bytes());
}

fn check_extents(extents: &[Extent], mode: ReplyMode) -> Result<(), EncodeError> {
    if extents.is_empty() {
        return Err(EncodeError::Empty);
    }
    if extents.len() > BLOCK_STATUS_EXTENTS_MAX {
        return Err(EncodeError::TooManyExtents);
    }
    for extent in extents {
        if extent.length == 0 {
            return Err(EncodeError::Empty);
        }
        if !mode.extended_headers() && extent.length > u64::from(u32::MAX) {
            return Err(EncodeError::LengthTooLarge);
        }
    }
    Ok(())
}
