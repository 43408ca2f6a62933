//! The server session: one NBD connection, sans-IO.
//!
//! # Driving it
//! After reading bytes into a `BytesMut`, the shell calls [`ServerSession::handle_input`], then
//! drains [`ServerSession::poll_transmit`] (write those bytes to the socket) and
//! [`ServerSession::poll_event`] (execute requests). For each completed request it encodes the
//! reply with [`ServerSession::reply_encoder`] into its own buffer. Replies from the session and
//! from the caller are whole messages; write them in any order but never interleave one inside
//! another (in particular not between a read header and its data).
//!
//! `handle_input` stops early, leaving bytes in the buffer, when [`EVENTS_QUEUED_MAX`] events
//! or [`TRANSMIT_BYTES_MAX`] output bytes are pending: call it again after draining, even if no
//! new bytes arrived. That turns a client that pipelines faster than the volume completes, or
//! never reads its replies, into TCP backpressure instead of memory growth.
//!
//! # Failure
//! A connection-fatal error is sticky: every later `handle_input` returns the same
//! [`NbdError`] and consumes nothing. Bytes already queued (for example a `REP_ERR_TOO_BIG`
//! explaining the hang-up) and events decoded before the failure can still be drained.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use super::consts::{EVENTS_QUEUED_MAX, TRANSMIT_BYTES_MAX};
use super::error::NbdError;
use super::export::ExportCatalog;
use super::handshake::{self, Handshake, Negotiated, ServerConfig};
use super::transmission::{
    self, CommandKind, Disposition, ReplyEncoder, ReplyTo, Request, RequestError, RequestHeader,
    TransmissionParams,
};

/// What the session tells its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake finished; requests follow. Boxed: it is rare and large.
    Ready(Box<Negotiated>),
    /// A validated request to execute and answer with [`ServerSession::reply_encoder`].
    /// Requests of length 0 and invalid requests never appear: the session answers them.
    Request(Request),
    /// The client ended the session cleanly. After [`CloseReason::Disconnected`] the caller
    /// finishes and answers requests already handed out, flushes, then closes the socket.
    Closed(CloseReason),
}

/// Why a session ended cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// `OPT_ABORT` during the handshake (acknowledged).
    Aborted,
    /// `CMD_DISC` during transmission (no reply is due).
    Disconnected,
}

/// One server-side NBD connection.
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    state: Result<Phase, NbdError>,
    encoder: Option<ReplyEncoder>,
    transmit: Vec<u8>,
    events: VecDeque<Event>,
}

#[derive(Debug)]
enum Phase {
    Handshake(Handshake),
    Transmission(Transmission),
    Closed,
}

/// Result of one step of either phase.
enum Step {
    NeedInput,
    Progress,
    Go(Box<Negotiated>),
    Close(CloseReason),
}

impl ServerSession {
    /// A new connection; the greeting is already queued for [`Self::poll_transmit`].
    pub fn new(config: ServerConfig) -> Self {
        let mut transmit = Vec::new();
        let handshake = Handshake::start(&mut transmit);
        Self {
            config,
            state: Ok(Phase::Handshake(handshake)),
            encoder: None,
            transmit,
            events: VecDeque::new(),
        }
    }

    /// Consumes whole messages from the front of `input` and returns how many bytes it took.
    /// Incomplete messages stay in `input`. Export lookups go to `catalog` (see
    /// [`super::export`] for why this is a synchronous call).
    pub fn handle_input(
        &mut self,
        catalog: &dyn ExportCatalog,
        input: &mut BytesMut,
    ) -> Result<usize, NbdError> {
        let start = input.len();
        loop {
            if self.events.len() >= EVENTS_QUEUED_MAX || self.transmit.len() >= TRANSMIT_BYTES_MAX {
                break;
            }
            let step = match &mut self.state {
                Err(error) => return Err(error.clone()),
                Ok(Phase::Closed) => break,
                Ok(Phase::Handshake(handshake)) => handshake
                    .handle_message(&self.config, catalog, input, &mut self.transmit)
                    .map(Step::from),
                Ok(Phase::Transmission(transmission)) => {
                    transmission.handle_message(input, &mut self.transmit, &mut self.events)
                }
            };
            match step {
                Err(error) => {
                    self.state = Err(error.clone());
                    return Err(error);
                }
                Ok(Step::NeedInput) => break,
                Ok(Step::Progress) => {}
                Ok(Step::Go(negotiated)) => self.enter_transmission(negotiated),
                Ok(Step::Close(reason)) => {
                    self.state = Ok(Phase::Closed);
                    self.events.push_back(Event::Closed(reason));
                }
            }
        }
        Ok(start - input.len())
    }

    fn enter_transmission(&mut self, negotiated: Box<Negotiated>) {
        let params = TransmissionParams {
            mode: negotiated.mode,
            size_bytes: negotiated.export.size_bytes,
            transmission_flags: negotiated.transmission_flags,
            base_allocation: negotiated.base_allocation,
        };
        self.encoder = Some(ReplyEncoder::new(params.mode));
        self.state = Ok(Phase::Transmission(Transmission::new(params)));
        self.events.push_back(Event::Ready(negotiated));
    }

    /// Moves every pending output byte to the end of `out`; returns how many.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let count = self.transmit.len();
        out.append(&mut self.transmit);
        count
    }

    /// Whether output is waiting for [`Self::poll_transmit`].
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// The next event, in the order the input produced them.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes the next message needs at the front of the input (0 once closed or failed): a
    /// hint for sizing reads, e.g. to reserve room for a large write payload.
    pub fn input_wanted_bytes(&self) -> usize {
        match &self.state {
            Ok(Phase::Handshake(handshake)) => handshake.wanted_bytes(),
            Ok(Phase::Transmission(transmission)) => transmission.wanted_bytes(),
            Ok(Phase::Closed) | Err(_) => 0,
        }
    }

    /// The reply encoder for this connection, once transmission has started. It stays
    /// available after `CMD_DISC` so outstanding requests can still be answered.
    pub fn reply_encoder(&self) -> Option<ReplyEncoder> {
        self.encoder
    }

    /// Whether the client ended the session cleanly.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, Ok(Phase::Closed))
    }

    /// The sticky fatal error, if the session failed.
    pub fn error(&self) -> Option<&NbdError> {
        self.state.as_ref().err()
    }
}

impl From<handshake::Outcome> for Step {
    fn from(outcome: handshake::Outcome) -> Self {
        match outcome {
            handshake::Outcome::NeedInput => Self::NeedInput,
            handshake::Outcome::Progress => Self::Progress,
            handshake::Outcome::Go(negotiated) => Self::Go(negotiated),
            handshake::Outcome::Abort => Self::Close(CloseReason::Aborted),
        }
    }
}

/// Decoding state of the transmission phase.
#[derive(Debug)]
struct Transmission {
    params: TransmissionParams,
    encoder: ReplyEncoder,
    step: TxStep,
}

#[derive(Debug)]
enum TxStep {
    Header,
    WriteData {
        header: RequestHeader,
        length: u32,
    },
    Filter {
        header: RequestHeader,
        length: u32,
    },
    Skip {
        remaining: u64,
        to: ReplyTo,
        error: RequestError,
    },
}

impl Transmission {
    fn new(params: TransmissionParams) -> Self {
        Self {
            params,
            encoder: ReplyEncoder::new(params.mode),
            step: TxStep::Header,
        }
    }

    fn wanted_bytes(&self) -> usize {
        match &self.step {
            TxStep::Header => self.params.mode.request_header_bytes(),
            TxStep::WriteData { length, .. } | TxStep::Filter { length, .. } => *length as usize,
            TxStep::Skip { .. } => 1,
        }
    }

    fn handle_message(
        &mut self,
        input: &mut BytesMut,
        out: &mut Vec<u8>,
        events: &mut VecDeque<Event>,
    ) -> Result<Step, NbdError> {
        match &mut self.step {
            TxStep::Header => self.handle_header(input, out, events),
            TxStep::WriteData { header, length } => {
                let (header, length) = (*header, *length as usize);
                if input.len() < length {
                    return Ok(Step::NeedInput);
                }
                let payload = input.split_to(length).freeze();
                self.step = TxStep::Header;
                let request = transmission::make_request(&header, CommandKind::Write, payload);
                events.push_back(Event::Request(request));
                Ok(Step::Progress)
            }
            TxStep::Filter { header, length } => {
                let (header, length) = (*header, *length as usize);
                if input.len() < length {
                    return Ok(Step::NeedInput);
                }
                let filter = input.split_to(length);
                self.step = TxStep::Header;
                self.handle_filter(header, &filter, out, events);
                Ok(Step::Progress)
            }
            TxStep::Skip {
                remaining,
                to,
                error,
            } => {
                if input.is_empty() {
                    return Ok(Step::NeedInput);
                }
                let count = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                input.advance(count);
                *remaining -= count as u64;
                if *remaining == 0 {
                    self.encoder
                        .encode_error(*to, error.code(), &error.to_string(), out);
                    self.step = TxStep::Header;
                }
                Ok(Step::Progress)
            }
        }
    }

    fn handle_header(
        &mut self,
        input: &mut BytesMut,
        out: &mut Vec<u8>,
        events: &mut VecDeque<Event>,
    ) -> Result<Step, NbdError> {
        let mode = self.params.mode;
        let Some(header) = transmission::decode_request_header(mode, input)? else {
            return Ok(Step::NeedInput);
        };
        input.advance(mode.request_header_bytes());
        match transmission::assess(&header, &self.params)? {
            Disposition::Submit(request) => events.push_back(Event::Request(request)),
            Disposition::AwaitWriteData { header, length } => {
                self.step = TxStep::WriteData { header, length };
            }
            Disposition::AwaitFilter { header, length } => {
                self.step = TxStep::Filter { header, length };
            }
            Disposition::AnswerOk { to } => self.encoder.encode_ok(to, out),
            Disposition::Reject {
                to,
                error,
                skip_bytes: 0,
            } => {
                self.encoder
                    .encode_error(to, error.code(), &error.to_string(), out);
            }
            Disposition::Reject {
                to,
                error,
                skip_bytes,
            } => {
                self.step = TxStep::Skip {
                    remaining: skip_bytes,
                    to,
                    error,
                };
            }
            Disposition::Disconnect => return Ok(Step::Close(CloseReason::Disconnected)),
        }
        Ok(Step::Progress)
    }

    fn handle_filter(
        &mut self,
        mut header: RequestHeader,
        filter: &[u8],
        out: &mut Vec<u8>,
        events: &mut VecDeque<Event>,
    ) {
        let params = &self.params;
        let checked = transmission::parse_block_status_filter(filter, params).and_then(|length| {
            transmission::check_extent(CommandKind::BlockStatus, header.offset, length, params)
                .map(|()| length)
        });
        match checked {
            Ok(length) => {
                header.length = length;
                let request =
                    transmission::make_request(&header, CommandKind::BlockStatus, Bytes::new());
                events.push_back(Event::Request(request));
            }
            Err(error) => {
                let to = ReplyTo {
                    cookie: header.cookie,
                    offset: header.offset,
                };
                self.encoder
                    .encode_error(to, error.code(), &error.to_string(), out);
            }
        }
    }
}
