//! Fixed-layout NBD headers as `zerocopy` big-endian structs.
//!
//! One struct per fixed header or fixed payload prefix, so field order and widths are written
//! down once and checked by size assertions. Encoders append `as_bytes()`; decoders use
//! `read_from_prefix` and never index raw slices by hand.

use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Greeting {
    /// [`super::consts::NBD_MAGIC`].
    pub nbd_magic: U64,
    /// [`super::consts::IHAVEOPT`].
    pub option_magic: U64,
    /// Handshake flags (`FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES`).
    pub handshake_flags: U16,
}

/// Header of an option request (client to server).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct OptionHeader {
    /// [`super::consts::IHAVEOPT`].
    pub magic: U64,
    /// `OPT_*` code.
    pub option: U32,
    /// Bytes of option data that follow.
    pub length: U32,
}

/// Header of an option reply (server to client).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct OptionReplyHeader {
    /// [`super::consts::OPTION_REPLY_MAGIC`].
    pub magic: U64,
    /// The option this answers.
    pub option: U32,
    /// `REP_*` code.
    pub reply_type: U32,
    /// Bytes of reply data that follow.
    pub length: U32,
}

/// Answer to `OPT_EXPORT_NAME` (followed by 124 zero bytes unless `NO_ZEROES`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ExportNameReply {
    /// Export size in bytes.
    pub size: U64,
    /// Transmission flags.
    pub transmission_flags: U16,
}

/// `REP_INFO` payload of type `INFO_EXPORT`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct InfoExport {
    /// [`super::consts::INFO_EXPORT`].
    pub info_type: U16,
    /// Export size in bytes.
    pub size: U64,
    /// Transmission flags.
    pub transmission_flags: U16,
}

/// `REP_INFO` payload of type `INFO_BLOCK_SIZE`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct InfoBlockSize {
    /// [`super::consts::INFO_BLOCK_SIZE`].
    pub info_type: U16,
    /// Minimum block size.
    pub minimum: U32,
    /// Preferred block size.
    pub preferred: U32,
    /// Maximum payload size.
    pub maximum: U32,
}

/// Compact transmission request header (28 bytes).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct CompactRequest {
    /// [`super::consts::REQUEST_MAGIC`].
    pub magic: U32,
    /// `CMD_FLAG_*` bits.
    pub flags: U16,
    /// `CMD_*` code.
    pub command: U16,
    /// Opaque client cookie (formerly "handle").
    pub cookie: U64,
    /// Byte offset into the export.
    pub offset: U64,
    /// Effect length, or payload length for writes.
    pub length: U32,
}

/// Extended transmission request header (32 bytes).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ExtendedRequest {
    /// [`super::consts::EXTENDED_REQUEST_MAGIC`].
    pub magic: U32,
    /// `CMD_FLAG_*` bits.
    pub flags: U16,
    /// `CMD_*` code.
    pub command: U16,
    /// Opaque client cookie.
    pub cookie: U64,
    /// Byte offset into the export.
    pub offset: U64,
    /// Payload length if `CMD_FLAG_PAYLOAD_LEN`, else effect length.
    pub length: U64,
}

/// Simple reply header (16 bytes), followed by read data on a successful simple read.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SimpleReply {
    /// [`super::consts::SIMPLE_REPLY_MAGIC`].
    pub magic: U32,
    /// NBD error code, 0 on success.
    pub error: U32,
    /// Cookie of the request answered.
    pub cookie: U64,
}

/// Structured reply chunk header (20 bytes).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct StructuredReply {
    /// [`super::consts::STRUCTURED_REPLY_MAGIC`].
    pub magic: U32,
    /// `REPLY_FLAG_*` bits.
    pub flags: U16,
    /// `REPLY_TYPE_*` code.
    pub reply_type: U16,
    /// Cookie of the request answered.
    pub cookie: U64,
    /// Bytes of chunk payload that follow.
    pub length: U32,
}

/// Extended reply chunk header (32 bytes).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ExtendedReply {
    /// [`super::consts::EXTENDED_REPLY_MAGIC`].
    pub magic: U32,
    /// `REPLY_FLAG_*` bits.
    pub flags: U16,
    /// `REPLY_TYPE_*` code.
    pub reply_type: U16,
    /// Cookie of the request answered.
    pub cookie: U64,
    /// Offset of the request answered (informational).
    pub offset: U64,
    /// Bytes of chunk payload that follow.
    pub length: U64,
}

/// Payload of `REPLY_TYPE_OFFSET_HOLE`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct OffsetHole {
    /// Start of the hole.
    pub offset: U64,
    /// Length of the hole (non-zero).
    pub length: U32,
}

/// Fixed prefix of every error chunk: error code and message length.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ErrorPrefix {
    /// NBD error code (non-zero).
    pub error: U32,
    /// Bytes of UTF-8 message that follow.
    pub message_length: U16,
}

/// One `REPLY_TYPE_BLOCK_STATUS` descriptor.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Extent32 {
    /// Extent length (non-zero).
    pub length: U32,
    /// Context-defined status flags.
    pub flags: U32,
}

/// Prefix of `REPLY_TYPE_BLOCK_STATUS_EXT`: context id and descriptor count.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct BlockStatusExtPrefix {
    /// Metadata context id.
    pub context_id: U32,
    /// Number of descriptors that follow.
    pub count: U32,
}

/// One `REPLY_TYPE_BLOCK_STATUS_EXT` descriptor.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Extent64 {
    /// Extent length (non-zero).
    pub length: U64,
    /// Context-defined status flags.
    pub flags: U64,
}

const _: () = assert!(size_of::<Greeting>() == 18);
const _: () = assert!(size_of::<OptionHeader>() == 16);
const _: () = assert!(size_of::<OptionReplyHeader>() == 20);
const _: () = assert!(size_of::<ExportNameReply>() == 10);
const _: () = assert!(size_of::<InfoExport>() == 12);
const _: () = assert!(size_of::<InfoBlockSize>() == 14);
const _: () = assert!(size_of::<CompactRequest>() == 28);
const _: () = assert!(size_of::<ExtendedRequest>() == 32);
const _: () = assert!(size_of::<SimpleReply>() == 16);
const _: () = assert!(size_of::<StructuredReply>() == 20);
const _: () = assert!(size_of::<ExtendedReply>() == 32);
const _: () = assert!(size_of::<OffsetHole>() == 12);
const _: () = assert!(size_of::<ErrorPrefix>() == 6);
const _: () = assert!(size_of::<Extent32>() == 8);
const _: () = assert!(size_of::<BlockStatusExtPrefix>() == 8);
const _: () = assert!(size_of::<Extent64>() == 16);

/// Reads a fixed header from the front of `bytes`, or `None` if too few bytes are present.
pub fn read_prefix<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Option<(T, &[u8])> {
    T::read_from_prefix(bytes).ok()
}

/// Reads a big-endian `u16` from the front of `bytes`.
pub fn read_u16(bytes: &[u8]) -> Option<(u16, &[u8])> {
    read_prefix::<U16>(bytes).map(|(value, rest)| (value.get(), rest))
}

/// Reads a big-endian `u32` from the front of `bytes`.
pub fn read_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    read_prefix::<U32>(bytes).map(|(value, rest)| (value.get(), rest))
}

/// Reads a big-endian `u64` from the front of `bytes`.
pub fn read_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    read_prefix::<U64>(bytes).map(|(value, rest)| (value.get(), rest))
}

/// Splits a `u32`-length-prefixed string off the front of `bytes`; `None` if it overruns.
pub fn read_prefixed_bytes(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (length, rest) = read_u32(bytes)?;
    let length = usize::try_from(length).ok()?;
    (length <= rest.len()).then(|| rest.split_at(length))
}

/// Truncates `text` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        // Goal: messages are cut to the spec's string limit without splitting a UTF-8 sequence.
        assert_eq!(truncate_utf8("abc", 10), "abc");
        assert_eq!(truncate_utf8("abc", 2), "ab");
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("", 0), "");
    }

    #[test]
    fn prefixed_bytes_reject_overrun() {
        // Goal: a length field larger than the remaining data is refused, not trusted.
        assert_eq!(
            read_prefixed_bytes(&[0, 0, 0, 2, b'a', b'b', b'c']),
            Some((&b"ab"[..], &b"c"[..]))
        );
        assert_eq!(read_prefixed_bytes(&[0, 0, 0, 4, b'a']), None);
        assert_eq!(read_prefixed_bytes(&[0, 0]), None);
    }
}
