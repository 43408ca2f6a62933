//! The client side of the NBD handshake, sans-IO: what a host initiator runs in userspace
//! before handing a connected socket to the kernel (which only speaks the transmission phase).
//!
//! Fixed newstyle, `NO_ZEROES` when offered, then one `OPT_GO` asking for `INFO_BLOCK_SIZE`.
//! No structured replies or extended headers are negotiated, because the Linux `nbd` driver
//! reads simple replies only. Drive it like the server session: feed received bytes to
//! [`ClientHandshake::handle_input`], send what [`ClientHandshake::poll_transmit`] yields, until
//! `handle_input` returns the [`ClientNegotiated`] outcome; the connection is then in
//! transmission and belongs to whoever runs that phase.
//!
//! A userspace client (the `basalt audit` workload) runs that phase with [`ClientTransmission`]:
//! it encodes compact requests with fresh cookies, remembers what is in flight, and decodes the
//! simple replies (whose read data has no length field, so the decoder needs the request's).

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};
use zerocopy::FromBytes;
use zerocopy::IntoBytes;
use zerocopy::big_endian::{U16, U32, U64};

use super::consts::{
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, FLAG_READ_ONLY,
    FLAG_SEND_FLUSH, FLAG_SEND_FUA, IHAVEOPT, INFO_BLOCK_SIZE, INFO_EXPORT, NBD_MAGIC, OPT_GO,
    OPTION_DATA_BYTES_MAX, OPTION_REPLY_MAGIC, PAYLOAD_BYTES_MAX, REP_ACK, REP_ERR_UNKNOWN,
    REP_FLAG_ERROR, REP_INFO, SIMPLE_REPLY_MAGIC, STRING_BYTES_MAX,
};
use super::export::BlockSizeConstraints;
use super::transmission::{
    CommandFlags, CommandKind, ErrorCode, ReplyMode, RequestHeader, check_range,
    encode_request_header,
};
use super::wire::{
    Greeting, InfoBlockSize, InfoExport, OptionHeader, OptionReplyHeader, SimpleReply,
};

/// Longest server message quoted in a [`ClientHandshakeError::Refused`].
const REFUSAL_MESSAGE_CHARS_MAX: usize = 512;
/// `REP_INFO` replies accepted in one `OPT_GO` answer (a server sends two or four).
const INFO_REPLIES_MAX: u32 = 64;

/// What the server agreed to for the export; the kernel needs all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientNegotiated {
    /// Export size in bytes.
    pub size_bytes: u64,
    /// Transmission flags (`FLAG_*` in [`super::consts`]).
    pub transmission_flags: u16,
    /// Block size constraints, when the server sent `INFO_BLOCK_SIZE`.
    pub block_sizes: Option<BlockSizeConstraints>,
}

/// Why a client handshake failed; the connection is useless afterwards.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientHandshakeError {
    /// The peer's first bytes are not an NBD newstyle greeting.
    #[error("not an NBD server (greeting magic {nbd_magic:#018x} {option_magic:#018x})")]
    NotNbd {
        /// First 64 bits received.
        nbd_magic: u64,
        /// Second 64 bits received.
        option_magic: u64,
    },
    /// The server does not speak fixed newstyle negotiation.
    #[error("server does not offer fixed newstyle negotiation")]
    NoFixedNewstyle,
    /// The export name cannot be sent.
    #[error("export name of {bytes} bytes is longer than {STRING_BYTES_MAX}")]
    NameTooLong {
        /// Its length.
        bytes: usize,
    },
    /// The server refused `OPT_GO`.
    #[error("server refused the export ({}): {message}", refusal_name(*.reply_type))]
    Refused {
        /// The `REP_ERR_*` code.
        reply_type: u32,
        /// The server's message (may be empty).
        message: String,
    },
    /// The server broke the protocol.
    #[error("protocol error from server: {0}")]
    Protocol(String),
}

impl ClientHandshakeError {
    /// Whether the server said the export does not exist (as opposed to being unusable).
    pub fn is_unknown_export(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                reply_type: REP_ERR_UNKNOWN,
                ..
            }
        )
    }
}

fn refusal_name(reply_type: u32) -> &'static str {
    match reply_type & !REP_FLAG_ERROR {
        1 => "unsupported",
        2 => "policy",
        3 => "invalid",
        4 => "platform",
        5 => "TLS required",
        6 => "unknown export",
        7 => "shutting down",
        8 => "block size required",
        9 => "too big",
        _ => "error",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitGreeting,
    AwaitGoReplies { infos: u32 },
    Done,
}

/// One client handshake (see the module doc for the driving loop).
#[derive(Debug)]
pub struct ClientHandshake {
    export_name: String,
    state: Result<State, ClientHandshakeError>,
    transmit: Vec<u8>,
    export: Option<(u64, u16)>,
    block_sizes: Option<BlockSizeConstraints>,
}

impl ClientHandshake {
    /// A handshake that will ask for `export_name`.
    pub fn new(export_name: &str) -> Result<Self, ClientHandshakeError> {
        if export_name.len() > STRING_BYTES_MAX {
            return Err(ClientHandshakeError::NameTooLong {
                bytes: export_name.len(),
            });
        }
        Ok(Self {
            export_name: export_name.to_owned(),
            state: Ok(State::AwaitGreeting),
            transmit: Vec::new(),
            export: None,
            block_sizes: None,
        })
    }

    /// Moves queued bytes for the server into `out`; returns how many.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let count = self.transmit.len();
        out.append(&mut self.transmit);
        count
    }

    /// Consumes complete messages from `input`. `Ok(Some(..))` once `OPT_GO` succeeded (send
    /// anything still queued first); `Ok(None)` when more input is needed. Errors are sticky.
    pub fn handle_input(
        &mut self,
        input: &mut BytesMut,
    ) -> Result<Option<ClientNegotiated>, ClientHandshakeError> {
        loop {
            let state = self.state.clone()?;
            let step = match state {
                State::AwaitGreeting => self.on_greeting(input),
                State::AwaitGoReplies { infos } => self.on_go_reply(input, infos),
                State::Done => return Ok(self.outcome()),
            };
            match step {
                Ok(Some(next)) => self.state = Ok(next),
                Ok(None) => return Ok(None),
                Err(error) => {
                    self.state = Err(error.clone());
                    return Err(error);
                }
            }
        }
    }

    fn outcome(&self) -> Option<ClientNegotiated> {
        let (size_bytes, transmission_flags) = self.export?;
        Some(ClientNegotiated {
            size_bytes,
            transmission_flags,
            block_sizes: self.block_sizes,
        })
    }

    fn on_greeting(&mut self, input: &mut BytesMut) -> Result<Option<State>, ClientHandshakeError> {
        let Ok((greeting, _)) = Greeting::read_from_prefix(input) else {
            return Ok(None);
        };
        input.advance(size_of::<Greeting>());
        if greeting.nbd_magic.get() != NBD_MAGIC || greeting.option_magic.get() != IHAVEOPT {
            return Err(ClientHandshakeError::NotNbd {
                nbd_magic: greeting.nbd_magic.get(),
                option_magic: greeting.option_magic.get(),
            });
        }
        let server_flags = greeting.handshake_flags.get();
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(ClientHandshakeError::NoFixedNewstyle);
        }
        let mut client_flags = FLAG_C_FIXED_NEWSTYLE;
        if server_flags & FLAG_NO_ZEROES != 0 {
            client_flags |= FLAG_C_NO_ZEROES;
        }
        self.transmit
            .extend_from_slice(U32::new(client_flags).as_bytes());
        self.put_go();
        Ok(Some(State::AwaitGoReplies { infos: 0 }))
    }

    /// `OPT_GO`: name length, name, one information request (`INFO_BLOCK_SIZE`).
    fn put_go(&mut self) {
        let name = self.export_name.as_bytes();
        // Bounded by STRING_BYTES_MAX in `new`.
        let name_len = u32::try_from(name.len()).unwrap_or(u32::MAX);
        let header = OptionHeader {
            magic: U64::new(IHAVEOPT),
            option: U32::new(OPT_GO),
            length: U32::new(4 + name_len + 2 + 2),
        };
        self.transmit.extend_from_slice(header.as_bytes());
        self.transmit
            .extend_from_slice(U32::new(name_len).as_bytes());
        self.transmit.extend_from_slice(name);
        self.transmit.extend_from_slice(U16::new(1).as_bytes());
        self.transmit
            .extend_from_slice(U16::new(INFO_BLOCK_SIZE).as_bytes());
    }

    fn on_go_reply(
        &mut self,
        input: &mut BytesMut,
        infos: u32,
    ) -> Result<Option<State>, ClientHandshakeError> {
        let protocol = |text: String| Err(ClientHandshakeError::Protocol(text));
        let Ok((header, _)) = OptionReplyHeader::read_from_prefix(input) else {
            return Ok(None);
        };
        if header.magic.get() != OPTION_REPLY_MAGIC {
            return protocol(format!("option reply magic {:#018x}", header.magic.get()));
        }
        if header.option.get() != OPT_GO {
            return protocol(format!(
                "reply to option {} instead of GO",
                header.option.get()
            ));
        }
        let length = header.length.get();
        if length > OPTION_DATA_BYTES_MAX {
            return protocol(format!("option reply of {length} bytes"));
        }
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        let header_len = size_of::<OptionReplyHeader>();
        if input.len() < header_len + length {
            return Ok(None);
        }
        input.advance(header_len);
        let data = input.split_to(length);
        let reply_type = header.reply_type.get();
        match reply_type {
            REP_ACK => {
                if self.export.is_none() {
                    return protocol("GO acknowledged without INFO_EXPORT".into());
                }
                Ok(Some(State::Done))
            }
            REP_INFO => {
                if infos >= INFO_REPLIES_MAX {
                    return protocol(format!("more than {INFO_REPLIES_MAX} INFO replies"));
                }
                self.on_info(&data)?;
                Ok(Some(State::AwaitGoReplies { infos: infos + 1 }))
            }
            _ if reply_type & REP_FLAG_ERROR != 0 => {
                let message: String = String::from_utf8_lossy(&data)
                    .chars()
                    .take(REFUSAL_MESSAGE_CHARS_MAX)
                    .collect();
                Err(ClientHandshakeError::Refused {
                    reply_type,
                    message,
                })
            }
            _ => protocol(format!("unexpected reply type {reply_type:#x} to GO")),
        }
    }

    fn on_info(&mut self, data: &[u8]) -> Result<(), ClientHandshakeError> {
        let Ok((info_type, _)) = U16::read_from_prefix(data) else {
            return Err(ClientHandshakeError::Protocol("empty INFO reply".into()));
        };
        match info_type.get() {
            INFO_EXPORT => {
                let Ok(info) = InfoExport::read_from_bytes(data) else {
                    return Err(ClientHandshakeError::Protocol(format!(
                        "INFO_EXPORT of {} bytes",
                        data.len()
                    )));
                };
                self.export = Some((info.size.get(), info.transmission_flags.get()));
            }
            INFO_BLOCK_SIZE => {
                let Ok(info) = InfoBlockSize::read_from_bytes(data) else {
                    return Err(ClientHandshakeError::Protocol(format!(
                        "INFO_BLOCK_SIZE of {} bytes",
                        data.len()
                    )));
                };
                self.block_sizes = Some(BlockSizeConstraints {
                    minimum: info.minimum.get(),
                    preferred: info.preferred.get(),
                    maximum: info.maximum.get(),
                });
            }
            // Names, descriptions and future types are informational.
            _ => {}
        }
        Ok(())
    }
}

/// Requests one [`ClientTransmission`] keeps in flight at most (a bound on its cookie table).
pub const CLIENT_IN_FLIGHT_MAX: usize = 1024;

/// Why a request could not be queued; nothing was sent and the connection is still usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientRequestError {
    /// `[offset, offset + length)` is outside the export.
    #[error("range {offset}+{length} is outside the export of {size_bytes} bytes")]
    OutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        length: u64,
        /// Export size.
        size_bytes: u64,
    },
    /// Empty, or longer than [`PAYLOAD_BYTES_MAX`].
    #[error("length {length} is not in 1..={PAYLOAD_BYTES_MAX}")]
    BadLength {
        /// Requested length.
        length: u64,
    },
    /// The export is read-only or the server did not offer the command or flag.
    #[error("the server does not allow {0}")]
    NotOffered(&'static str),
    /// [`CLIENT_IN_FLIGHT_MAX`] requests are already in flight.
    #[error("{CLIENT_IN_FLIGHT_MAX} requests already in flight")]
    TooManyInFlight,
    /// The connection already failed or was disconnected.
    #[error("the connection is closed")]
    Closed,
}

/// Why the reply stream cannot be decoded; the connection is useless afterwards (sticky).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientReplyError {
    /// Not a simple reply (this client negotiates no structured replies).
    #[error("reply magic {0:#010x}")]
    Magic(u32),
    /// A reply for a cookie that is not in flight.
    #[error("reply for unknown cookie {0:#x}")]
    UnknownCookie(u64),
}

/// The outcome of one request, as the server answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReply {
    /// Cookie returned when the request was queued.
    pub cookie: u64,
    /// The request's command.
    pub kind: CommandKind,
    /// The request's offset.
    pub offset: u64,
    /// The request's length (0 for flush).
    pub length: u64,
    /// `Ok` with the data for a read (empty otherwise), or the server's error: a known
    /// [`ErrorCode`], or the raw value for codes outside the spec.
    pub result: Result<Bytes, Result<ErrorCode, u32>>,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    kind: CommandKind,
    offset: u64,
    length: u64,
}

/// The client side of the transmission phase over simple replies, sans-IO: queue requests,
/// send what [`Self::poll_transmit`] yields, feed received bytes to [`Self::handle_input`]
/// until it returns `Ok(None)`. Requests may be answered in any order.
#[derive(Debug)]
pub struct ClientTransmission {
    negotiated: ClientNegotiated,
    next_cookie: u64,
    in_flight: HashMap<u64, InFlight>,
    transmit: Vec<u8>,
    failed: Option<ClientReplyError>,
    disconnected: bool,
}

impl ClientTransmission {
    /// Transmission on a connection whose handshake ended with `negotiated`.
    pub fn new(negotiated: ClientNegotiated) -> Self {
        Self {
            negotiated,
            next_cookie: 1,
            in_flight: HashMap::new(),
            transmit: Vec::new(),
            failed: None,
            disconnected: false,
        }
    }

    /// What the handshake negotiated (size, flags).
    pub fn negotiated(&self) -> ClientNegotiated {
        self.negotiated
    }

    /// Requests sent (or queued) and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Queues a write of `data` at `offset`; returns its cookie.
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<u64, ClientRequestError> {
        let flags = self.negotiated.transmission_flags;
        if flags & FLAG_READ_ONLY != 0 {
            return Err(ClientRequestError::NotOffered("writes (read-only export)"));
        }
        if fua && flags & FLAG_SEND_FUA == 0 {
            return Err(ClientRequestError::NotOffered("FUA"));
        }
        let fua = if fua { CommandFlags::FUA.0 } else { 0 };
        let length = data.len() as u64;
        let cookie = self.queue(CommandKind::Write, fua, offset, length)?;
        self.transmit.extend_from_slice(data);
        Ok(cookie)
    }

    /// Queues a read of `length` bytes at `offset`; returns its cookie.
    pub fn read(&mut self, offset: u64, length: u32) -> Result<u64, ClientRequestError> {
        self.queue(CommandKind::Read, 0, offset, u64::from(length))
    }

    /// Queues a flush (every write answered so far becomes durable); returns its cookie.
    pub fn flush(&mut self) -> Result<u64, ClientRequestError> {
        if self.negotiated.transmission_flags & FLAG_SEND_FLUSH == 0 {
            return Err(ClientRequestError::NotOffered("FLUSH"));
        }
        self.queue(CommandKind::Flush, 0, 0, 0)
    }

    /// Queues a soft disconnect (no reply); no request may follow it.
    pub fn disconnect(&mut self) {
        if self.disconnected || self.failed.is_some() {
            return;
        }
        self.disconnected = true;
        let header = RequestHeader {
            flags: 0,
            command: CommandKind::Disconnect.to_wire(),
            cookie: 0,
            offset: 0,
            length: 0,
        };
        // A zero length always fits the compact header.
        let _ = encode_request_header(ReplyMode::Simple, &header, &mut self.transmit);
    }

    fn queue(
        &mut self,
        kind: CommandKind,
        flags: u16,
        offset: u64,
        length: u64,
    ) -> Result<u64, ClientRequestError> {
        if self.disconnected || self.failed.is_some() {
            return Err(ClientRequestError::Closed);
        }
        if self.in_flight.len() >= CLIENT_IN_FLIGHT_MAX {
            return Err(ClientRequestError::TooManyInFlight);
        }
        if kind != CommandKind::Flush {
            if length == 0 || length > u64::from(PAYLOAD_BYTES_MAX) {
                return Err(ClientRequestError::BadLength { length });
            }
            let size_bytes = self.negotiated.size_bytes;
            if !check_range(size_bytes, offset, length) {
                return Err(ClientRequestError::OutOfRange {
                    offset,
                    length,
                    size_bytes,
                });
            }
        }
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1).max(1);
        let header = RequestHeader {
            flags,
            command: kind.to_wire(),
            cookie,
            offset,
            length,
        };
        // The length was bounded by PAYLOAD_BYTES_MAX above, so it fits 32 bits.
        encode_request_header(ReplyMode::Simple, &header, &mut self.transmit)
            .map_err(|_| ClientRequestError::BadLength { length })?;
        self.in_flight.insert(
            cookie,
            InFlight {
                kind,
                offset,
                length,
            },
        );
        Ok(cookie)
    }

    /// Moves queued bytes for the server into `out`; returns how many.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let count = self.transmit.len();
        out.append(&mut self.transmit);
        count
    }

    /// Decodes one reply from the front of `input`: `Ok(Some(..))` for a complete reply
    /// (call again for the next), `Ok(None)` when more input is needed. Errors are sticky.
    pub fn handle_input(
        &mut self,
        input: &mut BytesMut,
    ) -> Result<Option<ClientReply>, ClientReplyError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let Ok((header, _)) = SimpleReply::read_from_prefix(input) else {
            return Ok(None);
        };
        let fail = |this: &mut Self, error: ClientReplyError| {
            this.failed = Some(error.clone());
            Err(error)
        };
        if header.magic.get() != SIMPLE_REPLY_MAGIC {
            return fail(self, ClientReplyError::Magic(header.magic.get()));
        }
        let cookie = header.cookie.get();
        let Some(request) = self.in_flight.get(&cookie).copied() else {
            return fail(self, ClientReplyError::UnknownCookie(cookie));
        };
        let error = header.error.get();
        let header_len = size_of::<SimpleReply>();
        // A successful read's data follows; its length is the request's (bounded when queued).
        let data_len = if error == 0 && request.kind == CommandKind::Read {
            usize::try_from(request.length).unwrap_or(usize::MAX)
        } else {
            0
        };
        if input.len() < header_len.saturating_add(data_len) {
            return Ok(None);
        }
        self.in_flight.remove(&cookie);
        input.advance(header_len);
        let data = input.split_to(data_len).freeze();
        let result = if error == 0 {
            Ok(data)
        } else {
            Err(ErrorCode::from_wire(error).ok_or(error))
        };
        Ok(Some(ClientReply {
            cookie,
            kind: request.kind,
            offset: request.offset,
            length: request.length,
            result,
        }))
    }
}

#[cfg(test)]
mod tests {
    //! Goal: the client handshake interoperates with Basalt's own server session and sends
    //! exactly the bytes the spec lays out. Method: pump bytes between the two sans-IO halves;
    //! compare the client's output with bytes written out from the spec's field layouts.

    use super::*;
    use crate::nbd::{
        ExportCatalog, ExportFeatures, ExportInfo, ExportListing, ServerConfig, ServerSession,
    };

    struct OneExport(ExportInfo);

    impl ExportCatalog for OneExport {
        fn lookup(&self, name: &str) -> Option<ExportInfo> {
            (name == self.0.name).then(|| self.0.clone())
        }
        fn list(&self) -> Vec<ExportListing> {
            Vec::new()
        }
    }

    fn catalog(read_only: bool) -> OneExport {
        OneExport(ExportInfo {
            name: "vol".into(),
            description: String::new(),
            size_bytes: 1 << 30,
            features: ExportFeatures {
                read_only,
                ..ExportFeatures::writable_volume()
            },
        })
    }

    /// Runs both halves until the client finishes or fails (bounded rounds).
    fn run(
        client: &mut ClientHandshake,
        catalog: &OneExport,
    ) -> Result<ClientNegotiated, ClientHandshakeError> {
        let mut server = ServerSession::new(ServerConfig::default());
        let (mut to_client, mut to_server) = (BytesMut::new(), BytesMut::new());
        for _ in 0..16 {
            let mut out = Vec::new();
            server.poll_transmit(&mut out);
            to_client.extend_from_slice(&out);
            if let Some(done) = client.handle_input(&mut to_client)? {
                return Ok(done);
            }
            let mut out = Vec::new();
            client.poll_transmit(&mut out);
            to_server.extend_from_slice(&out);
            server
                .handle_input(catalog, &mut to_server)
                .map_err(|e| ClientHandshakeError::Protocol(e.to_string()))?;
        }
        panic!("handshake did not finish in 16 rounds");
    }

    #[test]
    fn negotiates_size_flags_and_block_sizes_with_basalt_server() {
        let mut client = ClientHandshake::new("vol").unwrap();
        let done = run(&mut client, &catalog(false)).unwrap();
        assert_eq!(done.size_bytes, 1 << 30);
        // HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES | CAN_MULTI_CONN |
        // SEND_FAST_ZERO: no structured replies were asked for.
        assert_eq!(
            done.transmission_flags,
            0x0001 | 0x0004 | 0x0008 | 0x0020 | 0x0040 | 0x0100 | 0x0800
        );
        assert_eq!(done.block_sizes, Some(BlockSizeConstraints::BASALT));
    }

    #[test]
    fn read_only_export_reports_read_only_flag() {
        let mut client = ClientHandshake::new("vol").unwrap();
        let done = run(&mut client, &catalog(true)).unwrap();
        assert_ne!(done.transmission_flags & 0x0002, 0);
    }

    #[test]
    fn unknown_export_is_a_refusal_and_sticky() {
        let mut client = ClientHandshake::new("nope").unwrap();
        let error = run(&mut client, &catalog(false)).unwrap_err();
        assert!(error.is_unknown_export(), "{error}");
        let again = client.handle_input(&mut BytesMut::new()).unwrap_err();
        assert_eq!(again, error);
    }

    #[test]
    fn sends_the_spec_bytes() {
        let mut client = ClientHandshake::new("vol").unwrap();
        let mut greeting = BytesMut::new();
        greeting.extend_from_slice(b"NBDMAGIC");
        greeting.extend_from_slice(b"IHAVEOPT");
        greeting.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(client.handle_input(&mut greeting).unwrap(), None);
        assert!(greeting.is_empty());
        let mut out = Vec::new();
        client.poll_transmit(&mut out);
        let expected: Vec<u8> = [
            &3u32.to_be_bytes()[..], // FIXED_NEWSTYLE | NO_ZEROES
            b"IHAVEOPT",
            &7u32.to_be_bytes(),  // OPT_GO
            &11u32.to_be_bytes(), // 4 + 3 + 2 + 2
            &3u32.to_be_bytes(),
            b"vol",
            &1u16.to_be_bytes(),
            &3u16.to_be_bytes(), // INFO_BLOCK_SIZE
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn garbage_and_old_servers_are_refused() {
        let mut client = ClientHandshake::new("vol").unwrap();
        let mut input = BytesMut::from(&b"HTTP/1.1 400 Bad Request\r\n\r\n"[..]);
        assert!(matches!(
            client.handle_input(&mut input),
            Err(ClientHandshakeError::NotNbd { .. })
        ));
        let mut client = ClientHandshake::new("vol").unwrap();
        let mut input = BytesMut::new();
        input.extend_from_slice(b"NBDMAGICIHAVEOPT");
        input.extend_from_slice(&0u16.to_be_bytes());
        assert_eq!(
            client.handle_input(&mut input),
            Err(ClientHandshakeError::NoFixedNewstyle)
        );
    }

    #[test]
    fn byte_at_a_time_input_gives_the_same_outcome() {
        let catalog = catalog(false);
        let mut server = ServerSession::new(ServerConfig::default());
        let mut client = ClientHandshake::new("vol").unwrap();
        let (mut pending, mut to_client, mut to_server) =
            (Vec::new(), BytesMut::new(), BytesMut::new());
        let mut done = None;
        for _ in 0..4096 {
            let mut out = Vec::new();
            server.poll_transmit(&mut out);
            pending.extend_from_slice(&out);
            if !pending.is_empty() {
                to_client.extend_from_slice(&pending[..1]);
                pending.remove(0);
            }
            if let Some(outcome) = client.handle_input(&mut to_client).unwrap() {
                done = Some(outcome);
                break;
            }
            let mut out = Vec::new();
            client.poll_transmit(&mut out);
            to_server.extend_from_slice(&out);
            server.handle_input(&catalog, &mut to_server).unwrap();
        }
        assert_eq!(done.map(|d| d.size_bytes), Some(1 << 30));
    }

    /// A server session over an in-memory volume, driven from the client's bytes: answers
    /// reads, writes and flushes in reverse order of arrival (replies may come in any order).
    struct MemServer {
        session: ServerSession,
        data: Vec<u8>,
    }

    impl MemServer {
        fn pump(&mut self, catalog: &OneExport, from_client: &mut BytesMut) -> Vec<u8> {
            self.session.handle_input(catalog, from_client).unwrap();
            let mut out = Vec::new();
            self.session.poll_transmit(&mut out);
            let mut requests = Vec::new();
            while let Some(event) = self.session.poll_event() {
                if let crate::nbd::Event::Request(request) = event {
                    requests.push(request);
                }
            }
            let encoder = self.session.reply_encoder();
            for request in requests.into_iter().rev() {
                let encoder = encoder.unwrap();
                let start = usize::try_from(request.offset).unwrap();
                let end = start + usize::try_from(request.length).unwrap();
                match request.kind {
                    CommandKind::Write => {
                        self.data[start..end].copy_from_slice(&request.payload);
                        encoder.encode_ok(request.reply_to(), &mut out);
                    }
                    CommandKind::Read if request.offset == 8192 => {
                        encoder.encode_error(request.reply_to(), ErrorCode::Io, "", &mut out);
                    }
                    CommandKind::Read => {
                        let length = u32::try_from(request.length).unwrap();
                        encoder
                            .encode_read_header(
                                request.reply_to(),
                                request.offset,
                                length,
                                true,
                                &mut out,
                            )
                            .unwrap();
                        out.extend_from_slice(&self.data[start..end]);
                    }
                    _ => encoder.encode_ok(request.reply_to(), &mut out),
                }
            }
            out
        }
    }

    /// A client in transmission with a [`MemServer`] of 1 MiB.
    fn connected() -> (ClientTransmission, MemServer, OneExport) {
        let mut catalog = catalog(false);
        catalog.0.size_bytes = 1 << 20;
        let mut handshake = ClientHandshake::new("vol").unwrap();
        let mut server = MemServer {
            session: ServerSession::new(ServerConfig::default()),
            data: vec![0; 1 << 20],
        };
        let (mut to_client, mut to_server) = (BytesMut::new(), BytesMut::new());
        for _ in 0..16 {
            to_client.extend_from_slice(&server.pump(&catalog, &mut to_server));
            if let Some(done) = handshake.handle_input(&mut to_client).unwrap() {
                let mut out = Vec::new();
                handshake.poll_transmit(&mut out);
                assert!(out.is_empty() && to_client.is_empty());
                return (ClientTransmission::new(done), server, catalog);
            }
            let mut out = Vec::new();
            handshake.poll_transmit(&mut out);
            to_server.extend_from_slice(&out);
        }
        panic!("handshake did not finish");
    }

    /// Sends what the client queued, returns every reply the server sent back, fed to the
    /// client in `piece`-byte slices.
    fn exchange(
        client: &mut ClientTransmission,
        server: &mut MemServer,
        catalog: &OneExport,
        piece: usize,
    ) -> Vec<ClientReply> {
        let mut out = Vec::new();
        client.poll_transmit(&mut out);
        let replies = server.pump(catalog, &mut BytesMut::from(&out[..]));
        let mut input = BytesMut::new();
        let mut got = Vec::new();
        for slice in replies.chunks(piece) {
            input.extend_from_slice(slice);
            while let Some(reply) = client.handle_input(&mut input).unwrap() {
                got.push(reply);
            }
        }
        assert!(input.is_empty());
        got
    }

    #[test]
    fn transmission_round_trip_out_of_order_any_split() {
        // Goal: writes, reads, a read error and a flush in flight together are matched to
        // their cookies whatever the reply order and however the bytes are split.
        for piece in [1, 7, 16, 4096, usize::MAX] {
            let (mut client, mut server, catalog) = connected();
            let payload: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
            let write = client.write(4096, &payload, false).unwrap();
            let fua = client.write(65536, &payload[..4096], true).unwrap();
            let flush = client.flush().unwrap();
            assert_eq!(client.in_flight(), 3);
            let replies = exchange(&mut client, &mut server, &catalog, piece);
            let cookies: Vec<u64> = replies.iter().map(|r| r.cookie).collect();
            assert_eq!(cookies, [flush, fua, write], "reverse order");
            assert!(replies.iter().all(|r| r.result == Ok(Bytes::new())));

            let read = client.read(4096, 8192).unwrap();
            let failed = client.read(8192, 4096).unwrap();
            let replies = exchange(&mut client, &mut server, &catalog, piece);
            assert_eq!(replies.len(), 2);
            assert_eq!(replies[0].cookie, failed);
            assert_eq!(replies[0].result, Err(Ok(ErrorCode::Io)));
            assert_eq!(replies[1].cookie, read);
            assert_eq!(replies[1].kind, CommandKind::Read);
            assert_eq!(replies[1].result.as_deref(), Ok(&payload[..]));
            assert_eq!(client.in_flight(), 0);
        }
    }

    #[test]
    fn transmission_refuses_bad_requests_locally() {
        // Goal: requests the server would refuse are refused before anything is sent.
        let (mut client, _, _) = connected();
        assert!(matches!(
            client.write(1 << 20, &[0; 512], false),
            Err(ClientRequestError::OutOfRange { .. })
        ));
        assert!(matches!(
            client.read(0, 0),
            Err(ClientRequestError::BadLength { .. })
        ));
        assert!(matches!(
            client.read(0, PAYLOAD_BYTES_MAX + 1),
            Err(ClientRequestError::BadLength { .. })
        ));
        let mut out = Vec::new();
        assert_eq!(client.poll_transmit(&mut out), 0);
        client.disconnect();
        assert_eq!(client.poll_transmit(&mut out), 28);
        assert_eq!(&out[4..8], &[0, 0, 0, 2], "flags 0, CMD_DISC");
        assert_eq!(client.read(0, 512), Err(ClientRequestError::Closed));
    }

    #[test]
    fn transmission_garbage_and_unknown_cookies_are_sticky_errors() {
        // Goal: a reply stream that is not simple replies to our requests fails for good.
        let (mut client, _, _) = connected();
        let mut input = BytesMut::from(&[0x67u8, 0x44, 0x66, 0x98, 0, 0, 0, 0][..]);
        input.extend_from_slice(&99u64.to_be_bytes());
        let error = client.handle_input(&mut input).unwrap_err();
        assert_eq!(error, ClientReplyError::UnknownCookie(99));
        assert_eq!(client.handle_input(&mut BytesMut::new()), Err(error));
        let (mut client, _, _) = connected();
        let mut input = BytesMut::from(&[0xffu8; 16][..]);
        assert_eq!(
            client.handle_input(&mut input),
            Err(ClientReplyError::Magic(u32::MAX))
        );
    }
}
