//! Protocol constants of NBD (NetworkBlockDevice/nbd `doc/proto.md`) and Basalt's limits.
//!
//! Names follow the specification with the `NBD_` prefix dropped (`NBD_OPT_GO` is [`OPT_GO`]), so
//! every value can be checked against the spec by name. All multi-byte fields are big-endian on
//! the wire. The second half of this file holds Basalt's own limits: every buffer, list or loop a
//! client can grow has a named maximum here, and their relations are asserted at compile time.

use crate::units::{BLOCK_SIZE_BYTES, SECTOR_SIZE_BYTES};

// ---- Magic numbers -------------------------------------------------------------------------

/// First 8 bytes the server sends: ASCII `NBDMAGIC`.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// Newstyle greeting magic and the magic opening every option request: ASCII `IHAVEOPT`.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic opening every option reply in fixed newstyle negotiation.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a compact (28-byte) transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of an extended (32-byte) transmission request, used once extended headers are on.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Magic of a simple (16-byte) reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk (20-byte header).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Magic of an extended reply chunk (32-byte header).
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

// ---- Handshake flags (server, 16 bits) and client flags (32 bits) --------------------------

/// Server handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server handshake flag: the server can omit the 124 zero bytes after `OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle (Basalt requires it).
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client does not want the 124 zero bytes after `OPT_EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this server understands; any other bit closes the connection (spec MUST).
pub const CLIENT_FLAGS_KNOWN: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

// ---- Transmission flags (16 bits, per export) -----------------------------------------------

/// Always set: the flags field is valid.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// The export rejects writes.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// `CMD_FLUSH` is supported.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// `CMD_FLAG_FUA` is supported.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// The export behaves like a rotational disk (a scheduling hint).
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
/// `CMD_TRIM` is supported.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// `CMD_WRITE_ZEROES` (and `CMD_FLAG_NO_HOLE`) is supported.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// `CMD_FLAG_DF` is supported on reads (only with structured replies).
pub const FLAG_SEND_DF: u16 = 1 << 7;
/// Flush and FUA effects are visible across connections: clients may use several.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// `CMD_RESIZE` (experimental extension; never set by Basalt).
pub const FLAG_SEND_RESIZE: u16 = 1 << 9;
/// `CMD_CACHE` is supported.
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
/// `CMD_FLAG_FAST_ZERO` is supported on `CMD_WRITE_ZEROES`.
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;
/// `CMD_BLOCK_STATUS` may carry a context-id filter payload (only with extended headers).
pub const FLAG_BLOCK_STATUS_PAYLOAD: u16 = 1 << 12;

// ---- Options -------------------------------------------------------------------------------

/// Choose an export and enter transmission; cannot report errors.
pub const OPT_EXPORT_NAME: u32 = 1;
/// Client gives up negotiation.
pub const OPT_ABORT: u32 = 2;
/// List exports.
pub const OPT_LIST: u32 = 3;
/// Withdrawn `PEEK_EXPORT` extension; answered as unsupported.
pub const OPT_PEEK_EXPORT: u32 = 4;
/// Upgrade to TLS.
pub const OPT_STARTTLS: u32 = 5;
/// Describe an export without entering transmission.
pub const OPT_INFO: u32 = 6;
/// Describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Enable structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// List metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Select metadata contexts for `CMD_BLOCK_STATUS`.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Enable 32-byte extended request and reply headers.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// ---- Option reply types --------------------------------------------------------------------

/// Option accepted / list finished.
pub const REP_ACK: u32 = 1;
/// One export in an `OPT_LIST` answer.
pub const REP_SERVER: u32 = 2;
/// One information item in an `OPT_INFO`/`OPT_GO` answer.
pub const REP_INFO: u32 = 3;
/// One metadata context in a `*_META_CONTEXT` answer.
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks error replies.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// Option unknown to this server.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// Option known but forbidden by policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// Option syntactically or semantically invalid.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// Option unsupported on this platform.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
/// TLS must be negotiated first.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
/// The named export does not exist.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// The server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
/// The client must request `INFO_BLOCK_SIZE` before `OPT_GO`.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
/// Request or reply too large to process.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;
/// Extended headers are in force, so this option no longer applies.
pub const REP_ERR_EXT_HEADER_REQD: u32 = REP_FLAG_ERROR | 10;

// ---- Information types (in `REP_INFO`) -----------------------------------------------------

/// Export size and transmission flags (mandatory before a successful `OPT_GO`).
pub const INFO_EXPORT: u16 = 0;
/// Canonical export name.
pub const INFO_NAME: u16 = 1;
/// Human-readable description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Minimum / preferred / maximum block size.
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---- Commands and command flags ------------------------------------------------------------

/// Read `length` bytes at `offset`.
pub const CMD_READ: u16 = 0;
/// Write the payload at `offset`.
pub const CMD_WRITE: u16 = 1;
/// Soft disconnect: no reply.
pub const CMD_DISC: u16 = 2;
/// Make every completed write durable.
pub const CMD_FLUSH: u16 = 3;
/// Discard a range (a hint).
pub const CMD_TRIM: u16 = 4;
/// Prefetch a range (a hint).
pub const CMD_CACHE: u16 = 5;
/// Zero a range without a payload.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Query allocation status of a range.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Force unit access: reply only once the command's writes are durable.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// `CMD_WRITE_ZEROES`: do not punch a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// `CMD_READ`: answer with at most one content chunk.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// `CMD_BLOCK_STATUS`: at most one extent per context.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// `CMD_WRITE_ZEROES`: fail with `ENOTSUP` unless zeroing is fast.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// Extended headers: `length` is the payload length, not the effect length.
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;
/// Every command flag the spec defines; other bits are answered with `EINVAL`.
pub const CMD_FLAGS_KNOWN: u16 = CMD_FLAG_FUA
    | CMD_FLAG_NO_HOLE
    | CMD_FLAG_DF
    | CMD_FLAG_REQ_ONE
    | CMD_FLAG_FAST_ZERO
    | CMD_FLAG_PAYLOAD_LEN;

// ---- Reply flags and chunk types -----------------------------------------------------------

/// Last chunk of a structured/extended reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Success with no payload (must carry `REPLY_FLAG_DONE`).
pub const REPLY_TYPE_NONE: u16 = 0;
/// Read data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// A range that reads as zeroes.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Block status extents with 32-bit lengths.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Block status extents with 64-bit lengths (mandatory with extended headers).
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
/// Bit 15 marks error chunks.
pub const REPLY_TYPE_FLAG_ERROR: u16 = 1 << 15;
/// An error for the whole request.
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_FLAG_ERROR | 1;
/// An error at a given offset.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_FLAG_ERROR | 2;

// ---- Metadata contexts ---------------------------------------------------------------------

/// The one metadata context Basalt serves: thin allocation of the volume.
pub const CONTEXT_BASE_ALLOCATION: &str = "base:allocation";
/// The `base:` namespace wildcard accepted by `OPT_LIST_META_CONTEXT`.
pub const CONTEXT_BASE_NAMESPACE: &str = "base:";
/// Context id Basalt assigns to `base:allocation` in `OPT_SET_META_CONTEXT` answers.
pub const CONTEXT_ID_BASE_ALLOCATION: u32 = 1;
/// `base:allocation` status bit: the extent is not allocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` status bit: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

// ---- Fixed sizes ---------------------------------------------------------------------------

/// Zero bytes after an `OPT_EXPORT_NAME` answer unless `NO_ZEROES` was agreed.
pub const EXPORT_NAME_ZEROES_BYTES: usize = 124;

// ---- Basalt limits -------------------------------------------------------------------------

/// Longest string (export name, description, query, message) the spec allows, in bytes.
pub const STRING_BYTES_MAX: usize = 4096;
/// Largest option payload we buffer, in bytes. The largest legitimate option is a
/// `SET_META_CONTEXT` with a full-length name and a handful of full-length queries; a larger
/// option streams past unbuffered and is answered `REP_ERR_TOO_BIG` (`REP_ERR_UNSUP` if
/// unknown), so a hostile client can never make us hold more than this plus one header.
pub const OPTION_DATA_BYTES_MAX: u32 = 16 * 1024;
/// Options one connection may send before we hard-disconnect it as a denial of service. Sized
/// so `nbdinfo --list` (one `LIST`, then `INFO` and `LIST_META_CONTEXT` per export) fits.
pub const HANDSHAKE_OPTIONS_MAX: u32 = 16 * 1024;
/// Exports announced in one `OPT_LIST` answer; a longer catalog ends the list with
/// `REP_ERR_TOO_BIG` rather than let one option produce unbounded output.
pub const LIST_EXPORTS_MAX: usize = 4096;
/// Smallest request alignment (offset and length) Basalt accepts: the classic sector.
pub const BLOCK_SIZE_MIN_BYTES: u32 = SECTOR_SIZE_BYTES;
/// Alignment at which requests avoid read-modify-write: the store's block.
pub const BLOCK_SIZE_PREFERRED_BYTES: u32 = BLOCK_SIZE_BYTES;
/// Largest read or write payload, in bytes (2^25, the size every client must tolerate). A write
/// header announcing more is a connection-fatal error: its payload is never buffered.
pub const PAYLOAD_BYTES_MAX: u32 = 32 * 1024 * 1024;
/// Largest `CMD_BLOCK_STATUS` filter payload: the effect length and up to 16 context ids.
pub const BLOCK_STATUS_PAYLOAD_BYTES_MAX: u32 = 8 + 4 * 16;
/// Most extents in one block status chunk; bounds both what we send and what the client
/// decoder accepts (the spec recommends servers cap this).
pub const BLOCK_STATUS_EXTENTS_MAX: usize = 64 * 1024;
/// Most events the server session queues before it stops consuming input until the caller
/// drains them with `poll_event` (TCP backpressure instead of unbounded queues).
pub const EVENTS_QUEUED_MAX: usize = 256;
/// Bytes of pending output beyond which the server session stops consuming input until the
/// caller drains it with `poll_transmit` (a client that never reads cannot grow it further than
/// one more message).
pub const TRANSMIT_BYTES_MAX: usize = 256 * 1024;

const _: () = assert!(BLOCK_SIZE_MIN_BYTES.is_power_of_two() && BLOCK_SIZE_MIN_BYTES <= 65536);
const _: () = assert!(BLOCK_SIZE_PREFERRED_BYTES.is_power_of_two());
const _: () = assert!(BLOCK_SIZE_PREFERRED_BYTES >= BLOCK_SIZE_MIN_BYTES);
const _: () = assert!(BLOCK_SIZE_PREFERRED_BYTES >= 512);
const _: () = assert!(PAYLOAD_BYTES_MAX.is_multiple_of(BLOCK_SIZE_MIN_BYTES));
const _: () = assert!(PAYLOAD_BYTES_MAX >= BLOCK_SIZE_PREFERRED_BYTES);
const _: () = assert!(PAYLOAD_BYTES_MAX >= 1024 * 1024);
const _: () = assert!(OPTION_DATA_BYTES_MAX as usize >= 2 * STRING_BYTES_MAX + 64);
const _: () = assert!(HANDSHAKE_OPTIONS_MAX as usize >= 3 * LIST_EXPORTS_MAX);
const _: () = assert!(BLOCK_STATUS_PAYLOAD_BYTES_MAX >= 12);
const _: () = assert!(BLOCK_STATUS_PAYLOAD_BYTES_MAX <= PAYLOAD_BYTES_MAX);
const _: () = assert!(STRING_BYTES_MAX <= u16::MAX as usize);
