//! Unit tests of the frame codec: the golden layout, each decode error path, the field rules
//! from both the encoding and the decoding side, stream handling and stickiness.

use bytes::{Bytes, BytesMut};
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32};

use super::frame::Stage;
use super::header::{HEADER_CRC_OFFSET, RawHeader};
use super::*;
use crate::ids::{ChunkKey, Epoch, PgId, VolumeId};
use crate::units::CHUNK_SIZE_BYTES_MAX;

/// A 4 KiB WRITE with every addressing field set to something recognisable.
pub(crate) fn sample_write() -> (Header, Bytes) {
    let mut header = Header::new(Opcode::Write, RequestId(0x0102_0304_0506_0708));
    header.pg = PgId(42);
    header.epoch = Epoch(7);
    header.chunk = ChunkKey {
        volume: VolumeId(9),
        index: 3,
        generation: 0,
    };
    header.offset_bytes = 8192;
    header.length_bytes = 4096;
    let payload = Bytes::from((0..4096u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    (header, payload)
}

fn encoded(header: &Header, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(header, payload, &mut out).unwrap();
    out
}

/// Header bytes for `raw` with a correct header checksum, whatever the fields say: lets tests
/// reach the checks that come after the checksum.
fn seal(mut raw: RawHeader) -> Vec<u8> {
    raw.header_crc = U32::new(crc32c::crc32c(&raw.as_bytes()[..HEADER_CRC_OFFSET]));
    raw.as_bytes().to_vec()
}

/// A frame whose header fields bypass the encoder's rules (checksums still correct).
fn forge(header: &Header, payload: &[u8]) -> Vec<u8> {
    let raw = header.to_raw(payload.len() as u32, crc32c::crc32c(payload));
    let mut bytes = seal(raw);
    bytes.extend_from_slice(payload);
    bytes
}

fn decode_all(decoder: &mut FrameDecoder, input: &mut BytesMut) -> Result<Vec<Frame>, FrameError> {
    let mut frames = Vec::new();
    while let Some(frame) = decoder.handle_input(input)? {
        frames.push(frame);
    }
    Ok(frames)
}

/// Goal: pin the byte layout documented in docs/wire-protocol.md. Method: encode a known
/// header and compare every byte; a change here is a protocol change.
#[test]
fn golden_header_layout() {
    let (header, payload) = sample_write();
    let bytes = header.encode(&payload).unwrap();
    let payload_crc = crc32c::crc32c(&payload).to_le_bytes();
    let mut expected = Vec::new();
    expected.extend_from_slice(b"BSLT");
    expected.extend_from_slice(&[1, 16]); // version, opcode WRITE
    expected.extend_from_slice(&0u16.to_le_bytes()); // flags
    expected.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    expected.extend_from_slice(&42u32.to_le_bytes()); // pg
    expected.extend_from_slice(&[0, 0, 0, 0]); // status, reserved0
    expected.extend_from_slice(&7u64.to_le_bytes()); // epoch
    expected.extend_from_slice(&0u64.to_le_bytes()); // pg_version
    expected.extend_from_slice(&9u64.to_le_bytes()); // volume
    expected.extend_from_slice(&3u64.to_le_bytes()); // chunk index
    expected.extend_from_slice(&0u32.to_le_bytes()); // generation
    expected.extend_from_slice(&8192u32.to_le_bytes());
    expected.extend_from_slice(&4096u32.to_le_bytes()); // length
    expected.extend_from_slice(&4096u32.to_le_bytes()); // payload size
    expected.extend_from_slice(&[0; 16]);
    expected.extend_from_slice(&payload_crc);
    let header_crc = crc32c::crc32c(&expected);
    expected.extend_from_slice(&header_crc.to_le_bytes());
    assert_eq!(bytes.as_slice(), expected.as_slice());
    assert_eq!(
        crc32c::crc32c(b"123456789"),
        0xE306_9283,
        "crc32c is the Castagnoli CRC"
    );
}

/// Goal: the vectored form (header array + payload slice) is byte-identical to the one-buffer
/// form, and decodes back to the same frame.
#[test]
fn vectored_encoding_matches_and_round_trips() {
    let (header, payload) = sample_write();
    let header_bytes = header.encode(&payload).unwrap();
    let whole = encoded(&header, &payload);
    assert_eq!(&whole[..FRAME_HEADER_SIZE_BYTES], &header_bytes[..]);
    assert_eq!(&whole[FRAME_HEADER_SIZE_BYTES..], &payload[..]);
    let frame = Frame::decode(&whole).unwrap();
    assert_eq!(frame, Frame { header, payload });
}

/// Goal: a READ request and its OK reply carrying the data both round-trip; `reply` echoes
/// the address and sets the responder's epoch.
#[test]
fn read_reply_round_trips() {
    let (write, data) = sample_write();
    let read = Header {
        opcode: Opcode::Read,
        ..write
    };
    let reply = read.reply(Status::Ok, Epoch(8));
    assert!(reply.is_reply() && !read.is_reply());
    assert_eq!(
        (reply.request_id, reply.epoch, reply.chunk),
        (read.request_id, Epoch(8), read.chunk)
    );
    for (header, payload) in [(read, Bytes::new()), (reply, data)] {
        let frame = Frame::new(header, payload).unwrap();
        let mut out = BytesMut::new();
        frame.encode(&mut out).unwrap();
        assert_eq!(Frame::decode(&out).unwrap(), frame);
    }
    let stale = read.reply(Status::StaleEpoch, Epoch(12));
    let frame = Frame::decode(&encoded(&stale, &[])).unwrap();
    assert_eq!(
        (frame.header.status, frame.header.epoch),
        (Status::StaleEpoch, Epoch(12))
    );
}

/// Goal: bytes that are not a Basalt stream are refused after 4 bytes, a wrong version after 5,
/// before a whole header is buffered.
#[test]
fn magic_and_version_fail_fast() {
    let mut decoder = FrameDecoder::new();
    let mut input = BytesMut::from(&b"GET / HTTP/1.1"[..4]);
    let error = decoder.handle_input(&mut input).unwrap_err();
    assert_eq!(error, FrameError::Magic { found: *b"GET " });

    let mut decoder = FrameDecoder::new();
    let mut input = BytesMut::from(&b"BSL"[..]);
    assert_eq!(
        decoder.handle_input(&mut input),
        Ok(None),
        "a magic prefix needs more bytes"
    );
    input.extend_from_slice(&[b'T', 2]);
    let error = decoder.handle_input(&mut input).unwrap_err();
    assert_eq!(
        error,
        FrameError::Version {
            found: 2,
            supported: PROTOCOL_VERSION
        }
    );
}

/// Goal: a damaged header is caught by its checksum before its lengths are believed: a huge
/// payload size in a damaged header reports the checksum, not the size.
#[test]
fn header_checksum_is_checked_before_lengths() {
    let (header, payload) = sample_write();
    let mut bytes = encoded(&header, &payload);
    bytes[68..72].copy_from_slice(&u32::MAX.to_le_bytes()); // payload_size
    let error = Frame::decode(&bytes).unwrap_err();
    assert!(
        matches!(error, FrameError::HeaderChecksum { .. }),
        "{error:?}"
    );
    let mut bytes = encoded(&header, &payload);
    bytes[HEADER_CRC_OFFSET] ^= 1;
    assert!(matches!(
        Frame::decode(&bytes),
        Err(FrameError::HeaderChecksum { .. })
    ));
}

/// Goal: a sealed header announcing more than the limit is refused at the header, before the
/// payload is awaited; a decoder's own tighter limit applies the same way.
#[test]
fn oversized_payload_is_refused_at_the_header() {
    let (header, payload) = sample_write();
    let mut raw = header.to_raw(4096, crc32c::crc32c(&payload));
    raw.payload_size = U32::new(FRAME_PAYLOAD_SIZE_MAX + 1);
    let mut input = BytesMut::from(&seal(raw)[..]);
    let error = FrameDecoder::new().handle_input(&mut input).unwrap_err();
    let limit_bytes = FRAME_PAYLOAD_SIZE_MAX;
    assert_eq!(
        error,
        FrameError::Oversized {
            payload_size_bytes: limit_bytes + 1,
            limit_bytes
        }
    );

    let mut input = BytesMut::from(&encoded(&header, &payload)[..]);
    let mut decoder = FrameDecoder::with_stage(Stage::Handshake);
    let error = decoder.handle_input(&mut input).unwrap_err();
    assert!(matches!(
        error,
        FrameError::Oversized {
            payload_size_bytes: 4096,
            ..
        }
    ));
}

/// Goal: a payload that does not match its checksum is refused.
#[test]
fn payload_checksum_mismatch() {
    let (header, payload) = sample_write();
    let mut bytes = encoded(&header, &payload);
    *bytes.last_mut().unwrap() ^= 0x80;
    assert!(matches!(
        Frame::decode(&bytes),
        Err(FrameError::PayloadChecksum { .. })
    ));
}

/// A change to a sealed header and the error it must cause.
type Mutation = (fn(&mut RawHeader), FrameError);

/// Goal: unknown opcode, status and flag bits, and non-zero reserved bytes, are refused even
/// with a correct checksum.
#[test]
fn unknown_codes_and_reserved_bits_are_refused() {
    let (header, payload) = sample_write();
    let base = header.to_raw(4096, crc32c::crc32c(&payload));
    let cases: [Mutation; 5] = [
        (
            |raw| raw.opcode = 99,
            FrameError::UnknownOpcode { code: 99 },
        ),
        (
            |raw| raw.status = U16::new(77),
            FrameError::UnknownStatus { code: 77 },
        ),
        (
            |raw| raw.flags = U16::new(1 << 9),
            field(Opcode::Write, FieldError::UnknownFlags),
        ),
        (
            |raw| raw.reserved0 = U16::new(1),
            field(Opcode::Write, FieldError::ReservedNonZero),
        ),
        (
            |raw| raw.reserved1[15] = 1,
            field(Opcode::Write, FieldError::ReservedNonZero),
        ),
    ];
    for (mutate, expected) in cases {
        let mut raw = base;
        mutate(&mut raw);
        let mut bytes = seal(raw);
        bytes.extend_from_slice(&payload);
        assert_eq!(Frame::decode(&bytes), Err(expected));
    }
}

fn field(opcode: Opcode, error: FieldError) -> FrameError {
    FrameError::Field { opcode, error }
}

/// One header that breaks exactly one field rule, with its payload and the rule broken.
type Invalid = (Header, Vec<u8>, FieldError);

/// Valid headers of several opcodes for the invalid cases to break.
struct Samples {
    write: Header,
    data: Vec<u8>,
    read: Header,
    trim: Header,
    replicate: Header,
    control: Header,
    hello: Header,
}

fn samples() -> Samples {
    let (write, data) = sample_write();
    let with_opcode = |opcode| Header { opcode, ..write };
    Samples {
        write,
        data: data.to_vec(),
        read: with_opcode(Opcode::Read),
        trim: with_opcode(Opcode::Trim),
        replicate: Header {
            pg_version: 5,
            ..with_opcode(Opcode::ReplicateWrite)
        },
        control: Header::new(Opcode::Control, RequestId(1)),
        hello: Header::new(Opcode::Hello, RequestId(0)),
    }
}

fn invalid_headers() -> Vec<Invalid> {
    let mut all = invalid_flags_and_addresses();
    all.extend(invalid_ranges());
    all.extend(invalid_versions_and_payloads());
    all
}

/// Breaks of the flag, status and address rules.
fn invalid_flags_and_addresses() -> Vec<Invalid> {
    let Samples {
        write, read, hello, ..
    } = samples();
    vec![
        (
            Header {
                flags: Flags::FUA,
                ..read
            },
            vec![],
            FieldError::FuaNotAllowed,
        ),
        (
            write.reply(Status::Ok, Epoch(1)) | Flags::FUA,
            vec![],
            FieldError::FuaNotAllowed,
        ),
        (
            Header {
                flags: Flags::REPLY,
                ..hello
            },
            vec![0; 72],
            FieldError::ReplyNotAllowed,
        ),
        (
            Header {
                status: Status::Busy,
                ..read
            },
            vec![],
            FieldError::StatusInRequest,
        ),
        (
            Header {
                pg: PgId(1),
                ..hello
            },
            vec![0; 72],
            FieldError::HandshakeAddress,
        ),
    ]
}

/// Breaks of the range rules.
fn invalid_ranges() -> Vec<Invalid> {
    let Samples {
        read,
        trim,
        control,
        ..
    } = samples();
    let big = IO_SIZE_BYTES_MAX + 4096;
    let chunk_end = CHUNK_SIZE_BYTES_MAX - 4096;
    vec![
        (
            Header {
                length_bytes: 512,
                ..control
            },
            vec![1, 0, 1, 0],
            FieldError::UnexpectedRange,
        ),
        (
            Header {
                length_bytes: 0,
                ..trim
            },
            vec![],
            FieldError::EmptyRange,
        ),
        (
            Header {
                offset_bytes: 100,
                ..trim
            },
            vec![],
            FieldError::Unaligned,
        ),
        (
            Header {
                length_bytes: 1000,
                ..trim
            },
            vec![],
            FieldError::Unaligned,
        ),
        (
            Header {
                offset_bytes: chunk_end,
                length_bytes: 8192,
                ..trim
            },
            vec![],
            FieldError::BeyondChunk,
        ),
        (
            Header {
                length_bytes: big,
                ..read
            },
            vec![],
            FieldError::DataTooLong,
        ),
    ]
}

/// Breaks of the `pg_version` and payload-size rules.
fn invalid_versions_and_payloads() -> Vec<Invalid> {
    let Samples {
        write,
        data,
        read,
        replicate,
        control,
        hello,
        ..
    } = samples();
    vec![
        (
            Header {
                pg_version: 3,
                ..write
            },
            data.clone(),
            FieldError::UnexpectedPgVersion,
        ),
        (
            Header {
                pg_version: 0,
                ..replicate
            },
            data.clone(),
            FieldError::MissingPgVersion,
        ),
        (
            write,
            data[..512].to_vec(),
            FieldError::PayloadSize {
                expected_bytes: 4096,
                found_bytes: 512,
            },
        ),
        (
            read,
            vec![0; 8],
            FieldError::PayloadSize {
                expected_bytes: 0,
                found_bytes: 8,
            },
        ),
        (
            read.reply(Status::IoError, Epoch(1)),
            data,
            FieldError::PayloadSize {
                expected_bytes: 0,
                found_bytes: 4096,
            },
        ),
        (
            control,
            vec![1, 0],
            FieldError::PayloadTooShort {
                min_bytes: 4,
                found_bytes: 2,
            },
        ),
        (
            hello,
            vec![0; 71],
            FieldError::PayloadSize {
                expected_bytes: 72,
                found_bytes: 71,
            },
        ),
    ]
}

impl std::ops::BitOr<Flags> for Header {
    type Output = Header;
    fn bitor(self, flags: Flags) -> Header {
        Header {
            flags: self.flags | flags,
            ..self
        }
    }
}

/// Goal: every field rule is enforced identically by the encoder (caller bug) and the decoder
/// (peer fault), so we never send what a peer refuses and never accept what we cannot send.
#[test]
fn field_rules_hold_on_both_sides() {
    for (header, payload, rule) in invalid_headers() {
        assert_eq!(
            header.encode(&payload),
            Err(EncodeError::Field(rule)),
            "{header:?}"
        );
        let expected = field(header.opcode, rule);
        assert_eq!(
            Frame::decode(&forge(&header, &payload)),
            Err(expected),
            "{header:?}"
        );
    }
}

/// Goal: the encoder refuses a payload over the protocol limit.
#[test]
fn encode_refuses_oversized_payload() {
    let header = Header::new(Opcode::Control, RequestId(1));
    let payload = vec![1u8; FRAME_PAYLOAD_SIZE_MAX as usize + 1];
    let error = header.encode(&payload).unwrap_err();
    assert!(matches!(error, EncodeError::Oversized { .. }), "{error:?}");
    assert!(Frame::new(header, Bytes::from(payload)).is_err());
}

/// Goal: the whole-buffer decode names short input and trailing bytes.
#[test]
fn whole_buffer_decode_short_and_trailing() {
    let (header, payload) = sample_write();
    let bytes = encoded(&header, &payload);
    let short = Frame::decode(&bytes[..10]).unwrap_err();
    assert_eq!(
        short,
        FrameError::Short {
            size_bytes: 10,
            needed_bytes: FRAME_HEADER_SIZE_BYTES
        }
    );
    let short = Frame::decode(&bytes[..100]).unwrap_err();
    assert_eq!(
        short,
        FrameError::Short {
            size_bytes: 100,
            needed_bytes: bytes.len()
        }
    );
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(
        Frame::decode(&long),
        Err(FrameError::Trailing { trailing_bytes: 1 })
    );
}

/// Goal: end of stream inside a header or a payload is `Truncated`; between frames it is fine.
#[test]
fn eof_inside_a_frame_is_truncated() {
    let (header, payload) = sample_write();
    let bytes = encoded(&header, &payload);
    for cut in [1, 50, FRAME_HEADER_SIZE_BYTES, FRAME_HEADER_SIZE_BYTES + 7] {
        let mut decoder = FrameDecoder::new();
        let mut input = BytesMut::from(&bytes[..cut]);
        assert_eq!(decoder.handle_input(&mut input), Ok(None));
        assert_eq!(
            decoder.handle_eof(&input),
            Err(FrameError::Truncated {
                buffered_bytes: cut
            })
        );
        assert_eq!(
            decoder.handle_input(&mut input),
            Err(FrameError::Truncated {
                buffered_bytes: cut
            })
        );
    }
    let mut decoder = FrameDecoder::new();
    let mut input = BytesMut::from(&bytes[..]);
    assert!(decoder.handle_input(&mut input).unwrap().is_some());
    assert_eq!(decoder.handle_eof(&input), Ok(()));
}

/// Goal: errors are sticky: later calls return the same error, consume nothing and never
/// yield a frame, even when valid bytes follow.
#[test]
fn errors_are_sticky() {
    let (header, payload) = sample_write();
    let mut bytes = encoded(&header, &payload);
    bytes[8] ^= 1; // request id: header checksum now wrong
    let valid = encoded(&header, &payload);
    let mut decoder = FrameDecoder::new();
    let mut input = BytesMut::from(&bytes[..]);
    let first = decoder.handle_input(&mut input).unwrap_err();
    input.clear();
    input.extend_from_slice(&valid);
    assert_eq!(decoder.handle_input(&mut input), Err(first.clone()));
    assert_eq!(input.len(), valid.len(), "nothing consumed after an error");
    assert_eq!(decoder.error(), Some(&first));
    assert_eq!(decoder.handle_eof(&input), Err(first));
    assert_eq!(decoder.bytes_needed(&input), 0);
}

/// Goal: a decoder takes exactly one frame per call and leaves the rest of the buffer intact;
/// `bytes_needed` tracks what is missing.
#[test]
fn decoder_consumes_exactly_one_frame() {
    let (header, payload) = sample_write();
    let flush = Header::new(Opcode::Flush, RequestId(2));
    let mut stream = encoded(&header, &payload);
    let second = encoded(&flush, &[]);
    stream.extend_from_slice(&second);
    let mut decoder = FrameDecoder::new();
    let mut input = BytesMut::from(&stream[..FRAME_HEADER_SIZE_BYTES + 10]);
    assert_eq!(decoder.handle_input(&mut input), Ok(None));
    assert!(!decoder.is_at_frame_boundary());
    assert_eq!(decoder.bytes_needed(&input), 4096 - 10);
    input.extend_from_slice(&stream[FRAME_HEADER_SIZE_BYTES + 10..]);
    assert_eq!(
        decoder.handle_input(&mut input).unwrap().map(|f| f.header),
        Some(header)
    );
    assert_eq!(&input[..], &second[..]);
    assert!(decoder.is_at_frame_boundary());
    let frames = decode_all(&mut decoder, &mut input).unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].header, flush);
    assert!(input.is_empty());
    assert_eq!(decoder.bytes_needed(&input), FRAME_HEADER_SIZE_BYTES);
}

/// A stream of frames covering every payload rule.
pub(crate) fn sample_stream() -> (Vec<Frame>, Vec<u8>) {
    let (write, data) = sample_write();
    let read = Header {
        opcode: Opcode::Read,
        request_id: RequestId(2),
        ..write
    };
    let mut control = Header::new(Opcode::Control, RequestId(3));
    control.pg_version = 17;
    let envelope =
        ControlEnvelope::from_message(ControlKind::PG_RECOVERY, 1, &(1u32, "x")).unwrap();
    let mut control_payload = BytesMut::new();
    envelope.encode(&mut control_payload);
    let replicate = Header {
        opcode: Opcode::ReplicateZeroes,
        pg_version: 9,
        ..write
    };
    let write_small = Header {
        length_bytes: 512,
        ..write
    };
    let frames = vec![
        Frame::new(write_small, data.slice(..512)).unwrap(),
        Frame::new(read, Bytes::new()).unwrap(),
        Frame::new(read.reply(Status::Ok, Epoch(7)), data).unwrap(),
        Frame::new(control, control_payload.freeze()).unwrap(),
        Frame::new(replicate | Flags::FUA, Bytes::new()).unwrap(),
        Frame::new(replicate.reply(Status::Timeout, Epoch(7)), Bytes::new()).unwrap(),
    ];
    let mut stream = Vec::new();
    for frame in &frames {
        frame.encode(&mut stream).unwrap();
    }
    (frames, stream)
}

/// Goal: framing does not depend on how TCP segments the stream. Method: split a stream of
/// frames at every byte boundary into two reads, and also feed it one byte at a time.
#[test]
fn stream_split_at_every_byte_boundary() {
    let (frames, stream) = sample_stream();
    for split in 0..=stream.len() {
        let mut decoder = FrameDecoder::new();
        let mut input = BytesMut::from(&stream[..split]);
        let mut decoded = decode_all(&mut decoder, &mut input).unwrap();
        input.extend_from_slice(&stream[split..]);
        decoded.extend(decode_all(&mut decoder, &mut input).unwrap());
        assert_eq!(decoded, frames, "split at {split}");
        assert!(input.is_empty() && decoder.handle_eof(&input).is_ok());
    }
    let mut decoder = FrameDecoder::new();
    let mut input = BytesMut::new();
    let mut decoded = Vec::new();
    for byte in &stream {
        input.extend_from_slice(&[*byte]);
        decoded.extend(decode_all(&mut decoder, &mut input).unwrap());
    }
    assert_eq!(decoded, frames);
}

/// Goal: opcode and status codes round-trip and unknown codes map to `None`.
#[test]
fn codes_round_trip() {
    for opcode in Opcode::ALL {
        assert_eq!(Opcode::from_code(opcode.code()), Some(opcode));
    }
    for status in Status::ALL {
        assert_eq!(Status::from_code(status.code()), Some(status));
    }
    assert_eq!(Opcode::from_code(0), None);
    assert_eq!(Status::from_code(Status::ALL.len() as u16), None);
    assert_eq!(Flags::from_bits(1 << 2), None);
    assert!((Flags::REPLY | Flags::FUA).contains(Flags::FUA));
}
