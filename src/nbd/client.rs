//! The client side of the NBD handshake, sans-IO: what a host initiator runs in userspace
//! before handing a connected socket to the kernel (which only speaks the transmission phase).
//!
//! Fixed newstyle, `NO_ZEROES` when offered, then one `OPT_GO` asking for `INFO_BLOCK_SIZE`.
//! No structured replies or extended headers are negotiated, because the Linux `nbd` driver
//! reads simple replies only. Drive it like the server session: feed received bytes to
//! [`ClientHandshake::handle_input`], send what [`ClientHandshake::poll_transmit`] yields, until
//! `handle_input` returns the [`ClientNegotiated`] outcome; the connection is then in
//! transmission and belongs to whoever runs that phase.

use bytes::{Buf, BytesMut};
use zerocopy::FromBytes;
use zerocopy::IntoBytes;
use zerocopy::big_endian::{U16, U32, U64};

use super::consts::{
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT,
    INFO_BLOCK_SIZE, INFO_EXPORT, NBD_MAGIC, OPT_GO, OPTION_DATA_BYTES_MAX, OPTION_REPLY_MAGIC,
    REP_ACK, REP_ERR_UNKNOWN, REP_FLAG_ERROR, REP_INFO, STRING_BYTES_MAX,
};
use super::export::BlockSizeConstraints;
use super::wire::{Greeting, InfoBlockSize, InfoExport, OptionHeader, OptionReplyHeader};

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
}
