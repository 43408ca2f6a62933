//! Whole frames: the incremental [`FrameDecoder`] and [`encode_frame`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{EncodeError, FrameError};
use super::header::{DecodedHeader, Header, Opcode, check_prefix, decode_header};
use super::{FRAME_HEADER_SIZE_BYTES, FRAME_PAYLOAD_SIZE_MAX, HANDSHAKE_PAYLOAD_SIZE_MAX};

/// One decoded frame: a header that passed every field rule and a payload that matched its
/// checksum. The payload is a slice of the receive buffer, not a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The validated header.
    pub header: Header,
    /// The verified payload.
    pub payload: Bytes,
}

impl Frame {
    /// A frame, checked against the field rules so it is known to be encodable.
    pub fn new(header: Header, payload: Bytes) -> Result<Self, EncodeError> {
        header.encode(&payload)?;
        Ok(Frame { header, payload })
    }

    /// Appends the whole frame to `out` (one copy of the payload). Prefer [`Header::encode`]
    /// plus a vectored write on the hot path.
    pub fn encode(&self, out: &mut impl BufMut) -> Result<(), EncodeError> {
        encode_frame(&self.header, &self.payload, out)
    }

    /// Decodes exactly one frame of any opcode from `bytes`, refusing short input and
    /// trailing bytes. Checks the format only, not the connection phase: for tests, fuzzing
    /// and tools; connections use [`FrameDecoder`].
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let mut input = BytesMut::from(bytes);
        let mut decoder = FrameDecoder::with_stage(Stage::Any);
        match decoder.handle_input(&mut input)? {
            Some(_) if !input.is_empty() => Err(FrameError::Trailing {
                trailing_bytes: input.len(),
            }),
            Some(frame) => Ok(frame),
            None => Err(FrameError::Short {
                size_bytes: bytes.len(),
                needed_bytes: bytes.len() + decoder.bytes_needed(&input),
            }),
        }
    }
}

/// Appends `header` and `payload` to `out` as one frame.
pub fn encode_frame(
    header: &Header,
    payload: &[u8],
    out: &mut impl BufMut,
) -> Result<(), EncodeError> {
    let header_bytes = header.encode(payload)?;
    out.put_slice(&header_bytes);
    out.put_slice(payload);
    Ok(())
}

/// Which part of a connection a decoder serves; decides the payload limit and the opcodes
/// accepted, so a handshake frame can never be mistaken for I/O or the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Before authentication: only HELLO, PROOF and REFUSE, payloads up to
    /// [`HANDSHAKE_PAYLOAD_SIZE_MAX`].
    Handshake,
    /// After authentication: every opcode but the handshake's, up to [`FRAME_PAYLOAD_SIZE_MAX`].
    Session,
    /// Whole-buffer format checks ([`Frame::decode`]): any opcode, the protocol limit.
    Any,
}

impl Stage {
    pub(crate) fn payload_size_max(self) -> u32 {
        match self {
            Stage::Handshake => HANDSHAKE_PAYLOAD_SIZE_MAX,
            Stage::Session | Stage::Any => FRAME_PAYLOAD_SIZE_MAX,
        }
    }

    pub(crate) fn allows(self, opcode: Opcode) -> bool {
        match self {
            Stage::Handshake => opcode.is_handshake(),
            Stage::Session => !opcode.is_handshake(),
            Stage::Any => true,
        }
    }
}

/// Where the decoder is within the current frame.
#[derive(Clone, Debug)]
enum DecodeState {
    /// Waiting for the next frame's header.
    AwaitHeader,
    /// The header was valid and consumed; waiting for its payload.
    AwaitPayload(DecodedHeader),
}

/// Incremental, sans-IO frame decoder for one connection.
///
/// The transport appends received bytes to a `BytesMut` and calls [`Self::handle_input`] until
/// it returns `Ok(None)` ("need more"). The decoder consumes bytes from the front of the buffer
/// as it validates them: a header is consumed once it has passed every check, its payload once
/// complete and verified, leaving later frames untouched (a handshake can hand the rest of the
/// buffer to the session's decoder).
///
/// Errors are sticky: after the first, every call returns it again and consumes nothing. The
/// connection must be closed; there is no resynchronising on a byte stream a peer controls.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    stage: Stage,
    state: Result<DecodeState, FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder for an established session (build it once [`super::Handshake`] yields an
    /// [`super::Established`]): payloads up to [`FRAME_PAYLOAD_SIZE_MAX`], and handshake
    /// opcodes refused, since a peer has no reason to send them once authenticated.
    pub fn new() -> Self {
        Self::with_stage(Stage::Session)
    }

    /// A decoder for one stage of a connection.
    pub(crate) fn with_stage(stage: Stage) -> Self {
        FrameDecoder {
            stage,
            state: Ok(DecodeState::AwaitHeader),
        }
    }

    /// Consumes bytes from the front of `input` and returns the next complete frame, or
    /// `Ok(None)` if more bytes are needed. Call again after a frame: `input` may hold more.
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let state = match &mut self.state {
            Ok(state) => state,
            Err(error) => return Err(error.clone()),
        };
        let result = step(state, self.stage, input);
        if let Err(error) = &result {
            self.state = Err(error.clone());
        }
        result
    }

    /// The peer closed its sending side. Returns `Truncated` (sticky, like any error) if a frame
    /// was cut short: part of a header in `input`, or a consumed header whose payload is missing.
    pub fn handle_eof(&mut self, input: &BytesMut) -> Result<(), FrameError> {
        let buffered_bytes = match &self.state {
            Err(error) => return Err(error.clone()),
            Ok(DecodeState::AwaitHeader) if input.is_empty() => return Ok(()),
            Ok(DecodeState::AwaitHeader) => input.len(),
            Ok(DecodeState::AwaitPayload(_)) => FRAME_HEADER_SIZE_BYTES + input.len(),
        };
        let error = FrameError::Truncated { buffered_bytes };
        self.state = Err(error.clone());
        Err(error)
    }

    /// How many more bytes `input` needs before the decoder can make progress: a hint for how
    /// much to read or reserve. Zero after an error or when a step is possible now.
    pub fn bytes_needed(&self, input: &BytesMut) -> usize {
        match &self.state {
            Err(_) => 0,
            Ok(DecodeState::AwaitHeader) => FRAME_HEADER_SIZE_BYTES.saturating_sub(input.len()),
            Ok(DecodeState::AwaitPayload(decoded)) => {
                decoded.payload_size.saturating_sub(input.len())
            }
        }
    }

    /// The error that ended this connection, if any.
    pub fn error(&self) -> Option<&FrameError> {
        self.state.as_ref().err()
    }

    /// Whether the decoder sits between frames (nothing of a frame consumed yet).
    pub fn is_at_frame_boundary(&self) -> bool {
        matches!(self.state, Ok(DecodeState::AwaitHeader))
    }
}

/// One decoding step: header if due, then payload if complete.
fn step(
    state: &mut DecodeState,
    stage: Stage,
    input: &mut BytesMut,
) -> Result<Option<Frame>, FrameError> {
    let decoded = match *state {
        DecodeState::AwaitPayload(decoded) => decoded,
        DecodeState::AwaitHeader => {
            check_prefix(input)?;
            let Some(bytes) = input.first_chunk::<FRAME_HEADER_SIZE_BYTES>() else {
                return Ok(None);
            };
            let decoded = decode_header(bytes, stage)?;
            input.advance(FRAME_HEADER_SIZE_BYTES);
            *state = DecodeState::AwaitPayload(decoded);
            decoded
        }
    };
    if input.len() < decoded.payload_size {
        return Ok(None);
    }
    let payload = input.split_to(decoded.payload_size).freeze();
    let computed = crc32c::crc32c(&payload);
    if computed != decoded.payload_crc {
        return Err(FrameError::PayloadChecksum {
            stored: decoded.payload_crc,
            computed,
        });
    }
    *state = DecodeState::AwaitHeader;
    debug_assert_eq!(payload.len(), decoded.payload_size);
    Ok(Some(Frame {
        header: decoded.header,
        payload,
    }))
}
