//! Property tests of the frame codec: round trips of arbitrary valid frames, and arbitrary or
//! corrupted input never panicking and never decoding to anything but a canonical frame.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32};

use super::header::{HEADER_CRC_OFFSET, RawHeader};
use super::*;
use crate::ids::{ChunkKey, Epoch, PgId, VolumeId};
use crate::units::{CHUNK_SIZE_BYTES_MAX, SECTOR_SIZE_BYTES};

const CHUNK_SECTORS: u32 = CHUNK_SIZE_BYTES_MAX / SECTOR_SIZE_BYTES;
/// Data payloads in generated frames stay small so many cases run quickly.
const DATA_SECTORS_MAX: u32 = 32;

/// Random choices from which [`build`] makes a frame that obeys the field rules.
#[derive(Clone, Debug)]
struct Knobs {
    opcode: Opcode,
    reply: bool,
    status: Status,
    fua: bool,
    ids: (u64, u32, u64, u64),
    chunk: (u64, u64, u32),
    sectors: (u32, u32),
    payload: (u8, usize),
}

fn arb_knobs() -> impl Strategy<Value = Knobs> {
    (
        prop::sample::select(Opcode::ALL.to_vec()),
        any::<bool>(),
        prop::sample::select(Status::ALL.to_vec()),
        any::<bool>(),
        any::<(u64, u32, u64, u64)>(),
        any::<(u64, u64, u32)>(),
        any::<(u32, u32)>(),
        (any::<u8>(), 0..64usize),
    )
        .prop_map(
            |(opcode, reply, status, fua, ids, chunk, sectors, payload)| Knobs {
                opcode,
                reply,
                status,
                fua,
                ids,
                chunk,
                sectors,
                payload,
            },
        )
}

fn pattern(seed: u8, size_bytes: usize) -> Bytes {
    (0..size_bytes)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect::<Vec<u8>>()
        .into()
}

/// A valid frame from `knobs`, written from the rules in docs/wire-protocol.md rather than
/// from the codec's table, so the two are checked against each other.
fn build(knobs: &Knobs) -> Frame {
    use Opcode::*;
    let (request_id, pg, epoch, pg_version) = knobs.ids;
    if let Some(size) = match knobs.opcode {
        Hello => Some(HELLO_SIZE_BYTES),
        Proof => Some(PROOF_SIZE_BYTES),
        Refuse => Some(REFUSE_SIZE_BYTES),
        _ => None,
    } {
        let header = Header::new(knobs.opcode, RequestId(0));
        return Frame::new(header, pattern(knobs.payload.0, size)).unwrap();
    }
    let mut header = Header::new(knobs.opcode, RequestId(request_id));
    header.pg = PgId(pg);
    header.epoch = Epoch(epoch);
    let (volume, index, generation) = knobs.chunk;
    header.chunk = ChunkKey {
        volume: VolumeId(volume),
        index,
        generation,
    };
    let data = matches!(knobs.opcode, Write | Read | ReplicateWrite);
    let ranged = !matches!(knobs.opcode, Flush | Control);
    if ranged {
        let length_max = if data {
            DATA_SECTORS_MAX
        } else {
            CHUNK_SECTORS
        };
        let length = knobs.sectors.1 % length_max + 1;
        let offset = knobs.sectors.0 % (CHUNK_SECTORS - length + 1);
        header.offset_bytes = offset * SECTOR_SIZE_BYTES;
        header.length_bytes = length * SECTOR_SIZE_BYTES;
    }
    let replicate = matches!(
        knobs.opcode,
        ReplicateWrite | ReplicateTrim | ReplicateZeroes
    );
    header.pg_version = match knobs.opcode {
        Control => pg_version,
        _ if replicate => pg_version.max(1),
        _ => 0,
    };
    let mutating = ranged && knobs.opcode != Read;
    if knobs.fua && mutating && !knobs.reply {
        header.flags = Flags::FUA;
    }
    let data_size = header.length_bytes as usize;
    let control_size = CONTROL_ENVELOPE_HEADER_SIZE_BYTES + knobs.payload.1;
    let payload_size = match (knobs.reply, knobs.opcode) {
        (false, Write | ReplicateWrite) => data_size,
        (false, Control) => control_size,
        (true, Read) if knobs.status == Status::Ok => data_size,
        (true, Control) if knobs.status == Status::Ok => control_size,
        _ => 0,
    };
    if knobs.reply {
        header = Header {
            pg_version,
            ..header.reply(knobs.status, Epoch(epoch))
        };
    }
    Frame::new(header, pattern(knobs.payload.0, payload_size)).unwrap()
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out).unwrap();
    out
}

/// Decodes `bytes` as a stream; every frame that comes out must re-encode to exactly the bytes
/// it was decoded from (the codec is canonical, so nothing is silently normalised).
fn decode_stream_canonically(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let mut decoder = FrameDecoder::new();
    let mut input = BytesMut::from(bytes);
    let mut frames = Vec::new();
    let mut consumed = 0;
    while let Some(frame) = decoder.handle_input(&mut input)? {
        let reencoded = encode(&frame);
        assert_eq!(&bytes[consumed..consumed + reencoded.len()], &reencoded[..]);
        consumed += reencoded.len();
        frames.push(frame);
    }
    Ok(frames)
}

/// How a test damages a valid frame.
#[derive(Clone, Debug)]
enum Damage {
    FlipBit { index: usize, bit: u8 },
    Overwrite { index: usize, byte: u8 },
    Truncate { size: usize },
    Insert { index: usize, byte: u8 },
}

fn arb_damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(index, bit)| Damage::FlipBit { index, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(index, byte)| Damage::Overwrite { index, byte }),
        any::<usize>().prop_map(|size| Damage::Truncate { size }),
        (any::<usize>(), any::<u8>()).prop_map(|(index, byte)| Damage::Insert { index, byte }),
    ]
}

fn apply(damage: &Damage, bytes: &mut Vec<u8>) {
    let size = bytes.len();
    match *damage {
        Damage::FlipBit { index, bit } => bytes[index % size] ^= 1 << bit,
        Damage::Overwrite { index, byte } => bytes[index % size] = byte,
        Damage::Truncate { size: keep } => bytes.truncate(keep % size),
        Damage::Insert { index, byte } => bytes.insert(index % (size + 1), byte),
    }
}

/// A header with correct magic, version and checksum but otherwise random fields, biased
/// towards defined codes so the field rules (not just the checksum) are exercised.
fn sealed_random_header(mut fields: [u8; FRAME_HEADER_SIZE_BYTES], payload: &[u8]) -> Vec<u8> {
    fields[..4].copy_from_slice(&MAGIC);
    fields[4] = PROTOCOL_VERSION;
    let mut raw = RawHeader::default();
    raw.as_mut_bytes().copy_from_slice(&fields);
    raw.opcode = Opcode::ALL[usize::from(raw.opcode) % Opcode::ALL.len()].code();
    raw.flags = U16::new(raw.flags.get() & Flags::KNOWN.bits());
    raw.status = U16::new(raw.status.get() % (Status::ALL.len() as u16 + 1));
    raw.reserved0 = U16::ZERO;
    raw.reserved1 = [0; 16];
    raw.offset = U32::new((raw.offset.get() % (CHUNK_SIZE_BYTES_MAX + 1)) & !511);
    raw.length = U32::new((raw.length.get() % (payload.len() as u32 + 1)) & !511);
    raw.payload_size = U32::new(raw.payload_size.get() % (payload.len() as u32 + 1));
    raw.payload_crc = U32::new(crc32c::crc32c(&payload[..raw.payload_size.get() as usize]));
    raw.header_crc = U32::new(crc32c::crc32c(&raw.as_bytes()[..HEADER_CRC_OFFSET]));
    let mut bytes = raw.as_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// Byte ranges of the header fields between the version byte and the checksums.
const HEADER_FIELDS: [(usize, usize); 16] = [
    (5, 1),
    (6, 2),
    (8, 8),
    (16, 4),
    (20, 2),
    (22, 2),
    (24, 8),
    (32, 8),
    (40, 8),
    (48, 8),
    (56, 4),
    (60, 4),
    (64, 4),
    (68, 4),
    (72, 16),
    (88, 4),
];

/// Overwrites one header field of a valid frame with `value` and re-seals the header checksum.
fn reseal_with_field(bytes: &mut [u8], field_index: usize, value: u128) {
    let (offset, size) = HEADER_FIELDS[field_index % HEADER_FIELDS.len()];
    bytes[offset..offset + size].copy_from_slice(&value.to_le_bytes()[..size]);
    let header_crc = crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]);
    bytes[HEADER_CRC_OFFSET..FRAME_HEADER_SIZE_BYTES].copy_from_slice(&header_crc.to_le_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Goal: every valid frame survives encode → decode unchanged, whole and vectored.
    #[test]
    fn valid_frames_round_trip(knobs in arb_knobs()) {
        let frame = build(&knobs);
        let bytes = encode(&frame);
        prop_assert_eq!(bytes.len(), FRAME_HEADER_SIZE_BYTES + frame.payload.len());
        let header = frame.header.encode(&frame.payload).unwrap();
        prop_assert_eq!(&bytes[..FRAME_HEADER_SIZE_BYTES], &header[..]);
        prop_assert_eq!(Frame::decode(&bytes).unwrap(), frame);
    }

    /// Goal: a damaged frame never panics the decoder and never decodes to a frame other than
    /// the canonical reading of the damaged bytes; a single flipped bit is always detected.
    #[test]
    fn damaged_frames_are_refused_or_canonical(knobs in arb_knobs(), damage in arb_damage()) {
        let mut bytes = encode(&build(&knobs));
        let original = bytes.clone();
        apply(&damage, &mut bytes);
        let streamed = decode_stream_canonically(&bytes);
        let whole = Frame::decode(&bytes);
        if let Ok(frame) = &whole {
            prop_assert_eq!(&encode(frame), &bytes);
        }
        if let Damage::FlipBit { .. } = damage {
            prop_assert!(whole.is_err(), "bit flip undetected");
            prop_assert!(streamed.is_err());
        }
        if bytes == original {
            prop_assert!(whole.is_ok());
        }
    }

    /// Goal: arbitrary bytes never panic the decoder, and any frame found is canonical.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_stream_canonically(&bytes);
        let _ = Frame::decode(&bytes);
    }

    /// Goal: headers that pass magic, version and checksum but carry random fields are either
    /// refused with a typed error or decoded canonically, never a panic.
    #[test]
    fn sealed_random_headers_never_panic(
        fields in prop::array::uniform32(any::<u8>()).prop_flat_map(|a| {
            (Just(a), prop::array::uniform32(any::<u8>()), prop::array::uniform32(any::<u8>()))
        }),
        payload in prop::collection::vec(any::<u8>(), 0..1100),
    ) {
        let mut header = [0u8; FRAME_HEADER_SIZE_BYTES];
        header[..32].copy_from_slice(&fields.0);
        header[32..64].copy_from_slice(&fields.1);
        header[64..].copy_from_slice(&fields.2);
        let bytes = sealed_random_header(header, &payload);
        let _ = decode_stream_canonically(&bytes);
    }

    /// Goal: one header field of a valid frame set to an arbitrary value, checksum re-sealed,
    /// exercises each field rule in isolation: a typed error or a canonical frame, never a panic.
    #[test]
    fn resealed_field_mutations_are_refused_or_canonical(
        knobs in arb_knobs(),
        field_index in any::<usize>(),
        value in prop_oneof![any::<u128>(), (0..4u128), (0..64u128).prop_map(|v| v * 512)],
    ) {
        let mut bytes = encode(&build(&knobs));
        reseal_with_field(&mut bytes, field_index, value);
        let _ = decode_stream_canonically(&bytes);
    }
}
