//! The fixed frame header: its wire layout, its typed form and the per-opcode field rules.
//!
//! The rules live in one table ([`Opcode::shape`]) used by both the encoder and the decoder, so
//! whatever we can send we can also receive, and whatever we receive re-encodes to the same bytes.

use std::fmt;
use std::ops::BitOr;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::error::{FieldError, FrameError};
use super::frame::Stage;
use super::{
    CONTROL_ENVELOPE_HEADER_SIZE_BYTES, FRAME_HEADER_SIZE_BYTES, HELLO_SIZE_BYTES,
    IO_SIZE_BYTES_MAX, MAGIC, PROOF_SIZE_BYTES, PROTOCOL_VERSION, REFUSE_SIZE_BYTES,
};
use crate::ids::{ChunkKey, ChunkVersion, Epoch, PgId, VolumeId};
use crate::units::{CHUNK_SIZE_BYTES_MAX, SECTOR_SIZE_BYTES};

/// Offset of `header_crc`, the last field: the header checksum covers every byte before it.
pub(crate) const HEADER_CRC_OFFSET: usize = FRAME_HEADER_SIZE_BYTES - 4;

/// The header exactly as it sits on the wire. Private to the codec: everything else uses
/// [`Header`], whose values are known to be valid.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default)]
#[repr(C)]
pub(crate) struct RawHeader {
    pub(crate) magic: [u8; 4],
    pub(crate) version: u8,
    pub(crate) opcode: u8,
    pub(crate) flags: U16,
    pub(crate) request_id: U64,
    pub(crate) pg: U32,
    pub(crate) status: U16,
    pub(crate) reserved0: U16,
    pub(crate) epoch: U64,
    pub(crate) pg_version: U64,
    pub(crate) volume: U64,
    pub(crate) chunk_index: U64,
    pub(crate) generation: U32,
    pub(crate) offset: U32,
    pub(crate) length: U32,
    pub(crate) payload_size: U32,
    pub(crate) reserved1: [u8; 16],
    pub(crate) payload_crc: U32,
    pub(crate) header_crc: U32,
}

const _: () = assert!(std::mem::offset_of!(RawHeader, header_crc) == HEADER_CRC_OFFSET);
const _: () = assert!(std::mem::offset_of!(RawHeader, epoch) == 24);
const _: () = assert!(std::mem::offset_of!(RawHeader, generation) == 56);
const _: () = assert!(std::mem::offset_of!(RawHeader, reserved1) == 72);

/// What a frame asks for. Numbered in groups (handshake 1.., gateway→primary 16..,
/// primary→replica 32.., control 48..) so each group can grow without renumbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Handshake: protocol versions, cluster id, node id and a fresh nonce.
    Hello = 1,
    /// Handshake: HMAC proof that the sender knows the cluster secret.
    Proof = 2,
    /// Handshake: the sender refuses the connection and says why, then closes.
    Refuse = 3,
    /// Gateway → primary: write the payload at `offset` of the chunk.
    Write = 16,
    /// Gateway → primary: read `length` bytes at `offset`; the OK reply carries them.
    Read = 17,
    /// Gateway → primary: deallocate a range (reads back as zeros).
    Trim = 18,
    /// Gateway → primary: make a range read as zeros without sending them.
    WriteZeroes = 19,
    /// Gateway → primary: barrier; replied once every earlier acknowledged write is durable.
    Flush = 20,
    /// Primary → replica: apply a write at the version the primary assigned.
    ReplicateWrite = 32,
    /// Primary → replica: apply a trim at the version the primary assigned.
    ReplicateTrim = 33,
    /// Primary → replica: apply a write-zeroes at the version the primary assigned.
    ReplicateZeroes = 34,
    /// Any node → any node: a [`super::ControlEnvelope`] (Raft, map watch, PG log, recovery).
    Control = 48,
}

impl Opcode {
    /// Every opcode, for tests and exhaustive tables.
    pub const ALL: [Opcode; 12] = [
        Opcode::Hello,
        Opcode::Proof,
        Opcode::Refuse,
        Opcode::Write,
        Opcode::Read,
        Opcode::Trim,
        Opcode::WriteZeroes,
        Opcode::Flush,
        Opcode::ReplicateWrite,
        Opcode::ReplicateTrim,
        Opcode::ReplicateZeroes,
        Opcode::Control,
    ];

    /// The opcode with wire code `code`, if this version defines one.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.code() == code)
    }

    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Whether this opcode belongs to the handshake; a session must not see these afterwards.
    pub fn is_handshake(self) -> bool {
        matches!(self, Opcode::Hello | Opcode::Proof | Opcode::Refuse)
    }

    /// The field rules for this opcode (see `docs/wire-protocol.md`, "Field rules").
    fn shape(self) -> Shape {
        use PayloadRule as P;
        use RangeRule as R;
        use VersionRule as V;
        let (range, request, reply, version, mutating) = match self {
            Opcode::Hello => (R::Empty, P::Fixed(HELLO_SIZE_BYTES), None, V::Zero, false),
            Opcode::Proof => (R::Empty, P::Fixed(PROOF_SIZE_BYTES), None, V::Zero, false),
            Opcode::Refuse => (R::Empty, P::Fixed(REFUSE_SIZE_BYTES), None, V::Zero, false),
            Opcode::Write => (R::Data, P::Data, Some(P::Empty), V::Zero, true),
            Opcode::Read => (R::Data, P::Empty, Some(P::Data), V::Zero, false),
            Opcode::Trim | Opcode::WriteZeroes => {
                (R::Extent, P::Empty, Some(P::Empty), V::Zero, true)
            }
            Opcode::Flush => (R::Empty, P::Empty, Some(P::Empty), V::Zero, false),
            Opcode::ReplicateWrite => (R::Data, P::Data, Some(P::Empty), V::NonZero, true),
            Opcode::ReplicateTrim | Opcode::ReplicateZeroes => {
                (R::Extent, P::Empty, Some(P::Empty), V::NonZero, true)
            }
            Opcode::Control => (R::Empty, P::Control, Some(P::Control), V::Any, false),
        };
        Shape {
            range,
            request,
            reply,
            version,
            mutating,
        }
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Field rules of one opcode. Private: callers see the rules through [`FieldError`].
struct Shape {
    range: RangeRule,
    request: PayloadRule,
    /// Payload of an OK reply; `None` if the opcode is never replied to.
    reply: Option<PayloadRule>,
    /// Rule for `pg_version` in requests (replies may carry any version).
    version: VersionRule,
    /// Whether the opcode changes data, and so may carry [`Flags::FUA`].
    mutating: bool,
}

/// What `offset` and `length` must look like.
#[derive(Clone, Copy)]
enum RangeRule {
    /// Both zero.
    Empty,
    /// A range whose bytes travel in a frame: non-empty, sector-aligned, inside a chunk, at most
    /// [`IO_SIZE_BYTES_MAX`].
    Data,
    /// A range that travels as a description only: non-empty, sector-aligned, inside a chunk.
    Extent,
}

/// What the payload must look like.
#[derive(Clone, Copy)]
enum PayloadRule {
    Empty,
    /// Exactly `length` bytes.
    Data,
    /// At least a control envelope header.
    Control,
    /// Exactly this many bytes.
    Fixed(usize),
}

/// What `pg_version` must be in a request.
#[derive(Clone, Copy)]
enum VersionRule {
    /// Zero: the gateway does not know versions; the primary assigns them.
    Zero,
    /// Non-zero: a replica applies exactly the version the primary assigned.
    NonZero,
    Any,
}

/// Per-frame flags. Unknown bits are refused, so a later version can give them meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Flags(u16);

impl Flags {
    /// No flags: a request.
    pub const NONE: Flags = Flags(0);
    /// The frame is a reply to the request with the same request id.
    pub const REPLY: Flags = Flags(1 << 0);
    /// Force unit access: the mutating request must be durable before it is acknowledged. All
    /// v1 writes already are; carried so a later write-back mode keeps NBD FUA semantics.
    pub const FUA: Flags = Flags(1 << 1);
    /// Every bit this version defines.
    pub const KNOWN: Flags = Flags(Self::REPLY.0 | Self::FUA.0);

    /// The raw bits.
    pub fn bits(self) -> u16 {
        self.0
    }

    /// The flags with raw bits `bits`, if this version defines every one of them.
    pub fn from_bits(bits: u16) -> Option<Self> {
        (bits & !Self::KNOWN.0 == 0).then_some(Flags(bits))
    }

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// Outcome carried by a reply. A request always carries `Ok` (zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u16)]
pub enum Status {
    /// Done; for a mutating request, durable on every member of the acting set.
    #[default]
    Ok = 0,
    /// The request's epoch is older than the responder's; the reply's `epoch` field carries the
    /// responder's epoch so the sender knows which map to fetch before retrying.
    StaleEpoch = 1,
    /// The responder is not the primary of this PG in its map.
    NotPrimary = 2,
    /// The store failed the I/O; retrying elsewhere may succeed.
    IoError = 3,
    /// A checksum mismatch in stored data; the replication layer repairs and may retry.
    Corrupt = 4,
    /// The range or chunk lies outside the volume or the cluster's chunk size.
    OutOfRange = 5,
    /// The responder is overloaded (a bounded queue is full); retry after a back-off.
    Busy = 6,
    /// The responder gave up waiting (e.g. for replicas); the outcome of a write is unknown.
    Timeout = 7,
    /// Well-formed but semantically invalid (e.g. a write to a snapshot generation).
    Invalid = 8,
    /// The responder does not implement this request (e.g. an unknown control kind/version).
    Unsupported = 9,
    /// The drive has no space left for a new allocation.
    NoSpace = 10,
    /// The responder's copy of the PG is not known to match the sender's history (it
    /// restarted, or it rejoined without being recovered): the primary recovers it before
    /// replicating to it again.
    Unsynced = 11,
}

impl Status {
    /// Every status, for tests and exhaustive tables.
    pub const ALL: [Status; 12] = [
        Status::Ok,
        Status::StaleEpoch,
        Status::NotPrimary,
        Status::IoError,
        Status::Corrupt,
        Status::OutOfRange,
        Status::Busy,
        Status::Timeout,
        Status::Invalid,
        Status::Unsupported,
        Status::NoSpace,
        Status::Unsynced,
    ];

    /// The status with wire code `code`, if this version defines one.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.code() == code)
    }

    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// Matches a reply to its request on a pipelined connection. Chosen by the requester, unique
/// among its requests in flight on that connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RequestId(pub u64);

/// A frame header with every field typed. Building one and passing it to [`Header::encode`] is
/// the only way to produce a header, and [`super::FrameDecoder`] only returns headers that pass
/// the same field rules, so a `Header` from the wire can be trusted as far as its shape goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// What the frame asks for.
    pub opcode: Opcode,
    /// Reply and FUA bits.
    pub flags: Flags,
    /// Chosen by the requester, echoed by the reply.
    pub request_id: RequestId,
    /// The placement group the chunk maps to (the receiver checks it is primary or member).
    pub pg: PgId,
    /// Outcome, in replies; `Ok` in requests.
    pub status: Status,
    /// In requests, the map epoch the sender routed by; in replies, the responder's epoch.
    pub epoch: Epoch,
    /// Per-PG write version: assigned by the primary, carried by REPLICATE_* requests.
    pub pg_version: u64,
    /// The chunk addressed (volume, index, snapshot generation).
    pub chunk: ChunkKey,
    /// Byte offset of the range within the chunk.
    pub offset_bytes: u32,
    /// Byte length of the range.
    pub length_bytes: u32,
}

impl Header {
    /// A request header for `opcode` with every other field zero; set the fields it needs.
    pub fn new(opcode: Opcode, request_id: RequestId) -> Self {
        Header {
            opcode,
            flags: Flags::NONE,
            request_id,
            pg: PgId(0),
            status: Status::Ok,
            epoch: Epoch(0),
            pg_version: 0,
            chunk: ChunkKey::new(VolumeId(0), 0),
            offset_bytes: 0,
            length_bytes: 0,
        }
    }

    /// The reply to this request: same opcode, id and address, the REPLY flag, `status`, and
    /// the responder's epoch (which a STALE_EPOCH reply must carry).
    pub fn reply(&self, status: Status, responder_epoch: Epoch) -> Self {
        debug_assert!(!self.is_reply(), "replying to a reply");
        Header {
            flags: Flags::REPLY,
            status,
            epoch: responder_epoch,
            ..*self
        }
    }

    /// Whether this frame is a reply.
    pub fn is_reply(&self) -> bool {
        self.flags.contains(Flags::REPLY)
    }

    /// The (epoch, version) this frame carries, as a replica records it.
    pub fn chunk_version(&self) -> ChunkVersion {
        ChunkVersion {
            epoch: self.epoch,
            version: self.pg_version,
        }
    }

    /// Checks the opcode's field rules for a frame with a `payload_size`-byte payload.
    pub(crate) fn validate(&self, payload_size: usize) -> Result<(), FieldError> {
        let shape = self.opcode.shape();
        self.validate_flags_and_status(&shape)?;
        if self.opcode.is_handshake() && self.has_address() {
            return Err(FieldError::HandshakeAddress);
        }
        validate_range(shape.range, self.offset_bytes, self.length_bytes)?;
        if !self.is_reply() {
            match (shape.version, self.pg_version) {
                (VersionRule::Zero, 1..) => return Err(FieldError::UnexpectedPgVersion),
                (VersionRule::NonZero, 0) => return Err(FieldError::MissingPgVersion),
                _ => {}
            }
        }
        let rule = match (self.is_reply(), self.status) {
            (false, _) => shape.request,
            (true, Status::Ok) => shape.reply.unwrap_or(PayloadRule::Empty),
            (true, _) => PayloadRule::Empty,
        };
        validate_payload(rule, self.length_bytes, payload_size)
    }

    fn validate_flags_and_status(&self, shape: &Shape) -> Result<(), FieldError> {
        if self.flags.contains(Flags::FUA) && (self.is_reply() || !shape.mutating) {
            return Err(FieldError::FuaNotAllowed);
        }
        if self.is_reply() && shape.reply.is_none() {
            return Err(FieldError::ReplyNotAllowed);
        }
        if !self.is_reply() && self.status != Status::Ok {
            return Err(FieldError::StatusInRequest);
        }
        Ok(())
    }

    fn has_address(&self) -> bool {
        self.flags != Flags::NONE
            || self.request_id != RequestId(0)
            || self.pg != PgId(0)
            || self.status != Status::Ok
            || self.epoch != Epoch(0)
            || self.pg_version != 0
            || self.chunk != ChunkKey::new(VolumeId(0), 0)
    }

    /// Encodes the header for `payload`: validates the field rules, fills in the payload size
    /// and both checksums. Send the result and `payload` as two slices of one vectored write,
    /// so the payload is never copied into a frame buffer.
    pub fn encode(
        &self,
        payload: &[u8],
    ) -> Result<[u8; FRAME_HEADER_SIZE_BYTES], super::EncodeError> {
        let limit = super::FRAME_PAYLOAD_SIZE_MAX;
        let payload_size = u32::try_from(payload.len())
            .ok()
            .filter(|size| *size <= limit)
            .ok_or(super::EncodeError::Oversized {
                payload_size_bytes: payload.len(),
                limit_bytes: limit,
            })?;
        self.validate(payload.len())
            .map_err(super::EncodeError::Field)?;
        let raw = self.to_raw(payload_size, crc32c::crc32c(payload));
        let mut bytes = [0u8; FRAME_HEADER_SIZE_BYTES];
        bytes.copy_from_slice(raw.as_bytes());
        debug_assert!(
            decode_header(&bytes, Stage::Any).is_ok(),
            "encoded header must decode"
        );
        Ok(bytes)
    }

    pub(crate) fn to_raw(self, payload_size: u32, payload_crc: u32) -> RawHeader {
        let mut raw = RawHeader {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            opcode: self.opcode.code(),
            flags: U16::new(self.flags.bits()),
            request_id: U64::new(self.request_id.0),
            pg: U32::new(self.pg.0),
            status: U16::new(self.status.code()),
            reserved0: U16::ZERO,
            epoch: U64::new(self.epoch.0),
            pg_version: U64::new(self.pg_version),
            volume: U64::new(self.chunk.volume.0),
            chunk_index: U64::new(self.chunk.index),
            generation: U32::new(self.chunk.generation),
            offset: U32::new(self.offset_bytes),
            length: U32::new(self.length_bytes),
            payload_size: U32::new(payload_size),
            reserved1: [0; 16],
            payload_crc: U32::new(payload_crc),
            header_crc: U32::ZERO,
        };
        raw.header_crc = U32::new(crc32c::crc32c(&raw.as_bytes()[..HEADER_CRC_OFFSET]));
        raw
    }
}

/// A header that passed every check, with what the decoder needs to read its payload.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecodedHeader {
    pub(crate) header: Header,
    pub(crate) payload_size: usize,
    pub(crate) payload_crc: u32,
}

/// Checks the first bytes of a frame as soon as they arrive, so a foreign stream is refused
/// before a whole header is buffered.
pub(crate) fn check_prefix(bytes: &[u8]) -> Result<(), FrameError> {
    if let Some(magic) = bytes.first_chunk::<4>()
        && *magic != MAGIC
    {
        return Err(FrameError::Magic { found: *magic });
    }
    match bytes.get(MAGIC.len()) {
        Some(&found) if found != PROTOCOL_VERSION => Err(FrameError::Version {
            found,
            supported: PROTOCOL_VERSION,
        }),
        _ => Ok(()),
    }
}

/// Decodes and fully validates one header for a decoder in `stage`. Order matters: magic,
/// version and checksum come before any length is believed, the size limit before any field
/// rule, the stage's opcode rule before the opcode's field rules.
pub(crate) fn decode_header(
    bytes: &[u8; FRAME_HEADER_SIZE_BYTES],
    stage: Stage,
) -> Result<DecodedHeader, FrameError> {
    check_prefix(bytes)?;
    let raw = RawHeader::read_from_bytes(bytes).map_err(|_| FrameError::Short {
        size_bytes: bytes.len(),
        needed_bytes: FRAME_HEADER_SIZE_BYTES,
    })?;
    let computed = crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]);
    if computed != raw.header_crc.get() {
        return Err(FrameError::HeaderChecksum {
            stored: raw.header_crc.get(),
            computed,
        });
    }
    let payload_size = raw.payload_size.get();
    let payload_size_max = stage.payload_size_max();
    if payload_size > payload_size_max {
        return Err(FrameError::Oversized {
            payload_size_bytes: payload_size,
            limit_bytes: payload_size_max,
        });
    }
    let header = typed_header(&raw)?;
    if !stage.allows(header.opcode) {
        return Err(FrameError::OutOfStage {
            opcode: header.opcode,
        });
    }
    let payload_size = payload_size as usize;
    header
        .validate(payload_size)
        .map_err(|error| FrameError::Field {
            opcode: header.opcode,
            error,
        })?;
    Ok(DecodedHeader {
        header,
        payload_size,
        payload_crc: raw.payload_crc.get(),
    })
}

fn typed_header(raw: &RawHeader) -> Result<Header, FrameError> {
    let opcode =
        Opcode::from_code(raw.opcode).ok_or(FrameError::UnknownOpcode { code: raw.opcode })?;
    let field = |error| FrameError::Field { opcode, error };
    let flags = Flags::from_bits(raw.flags.get()).ok_or(field(FieldError::UnknownFlags))?;
    let status = raw.status.get();
    let status = Status::from_code(status).ok_or(FrameError::UnknownStatus { code: status })?;
    if raw.reserved0.get() != 0 || raw.reserved1 != [0; 16] {
        return Err(field(FieldError::ReservedNonZero));
    }
    Ok(Header {
        opcode,
        flags,
        request_id: RequestId(raw.request_id.get()),
        pg: PgId(raw.pg.get()),
        status,
        epoch: Epoch(raw.epoch.get()),
        pg_version: raw.pg_version.get(),
        chunk: ChunkKey {
            volume: VolumeId(raw.volume.get()),
            index: raw.chunk_index.get(),
            generation: raw.generation.get(),
        },
        offset_bytes: raw.offset.get(),
        length_bytes: raw.length.get(),
    })
}

fn validate_range(rule: RangeRule, offset_bytes: u32, length_bytes: u32) -> Result<(), FieldError> {
    let (offset, length) = (offset_bytes, length_bytes);
    if let RangeRule::Empty = rule {
        return if offset == 0 && length == 0 {
            Ok(())
        } else {
            Err(FieldError::UnexpectedRange)
        };
    }
    if length == 0 {
        return Err(FieldError::EmptyRange);
    }
    if offset % SECTOR_SIZE_BYTES != 0 || length % SECTOR_SIZE_BYTES != 0 {
        return Err(FieldError::Unaligned);
    }
    if u64::from(offset) + u64::from(length) > u64::from(CHUNK_SIZE_BYTES_MAX) {
        return Err(FieldError::BeyondChunk);
    }
    if let RangeRule::Data = rule
        && length > IO_SIZE_BYTES_MAX
    {
        return Err(FieldError::DataTooLong);
    }
    Ok(())
}

fn validate_payload(
    rule: PayloadRule,
    length_bytes: u32,
    payload_size: usize,
) -> Result<(), FieldError> {
    let expected = match rule {
        PayloadRule::Empty => 0,
        PayloadRule::Data => length_bytes as usize,
        PayloadRule::Fixed(size) => size,
        PayloadRule::Control if payload_size >= CONTROL_ENVELOPE_HEADER_SIZE_BYTES => return Ok(()),
        PayloadRule::Control => {
            return Err(FieldError::PayloadTooShort {
                min_bytes: CONTROL_ENVELOPE_HEADER_SIZE_BYTES,
                found_bytes: payload_size,
            });
        }
    };
    if payload_size == expected {
        Ok(())
    } else {
        Err(FieldError::PayloadSize {
            expected_bytes: expected,
            found_bytes: payload_size,
        })
    }
}
