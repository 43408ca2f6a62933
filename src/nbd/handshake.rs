//! Server side of the fixed newstyle handshake (option haggling).
//!
//! The server sends its greeting, reads the client flags, then answers options one at a time
//! until `OPT_GO`/`OPT_EXPORT_NAME` succeeds (transmission) or `OPT_ABORT` arrives. Option
//! data is buffered only once its header is known and its length is at most
//! [`OPTION_DATA_BYTES_MAX`]. Every refusal the protocol can express is an option error reply
//! and haggling goes on; only what it cannot express ends the connection.
//!
//! # TLS
//! `OPT_STARTTLS` is answered with `REP_ERR_POLICY` ([`TlsMode::Disabled`]). To add TLS later, a
//! new mode acknowledges it, emits an event telling the shell to wrap the stream, and resets
//! this state to fresh defaults (the spec forbids keeping options negotiated before TLS).

use bytes::{Buf, BytesMut};
use zerocopy::IntoBytes;
use zerocopy::big_endian::{U16, U32, U64};

use super::consts::{
    CLIENT_FLAGS_KNOWN, CONTEXT_BASE_ALLOCATION, CONTEXT_BASE_NAMESPACE,
    CONTEXT_ID_BASE_ALLOCATION, EXPORT_NAME_ZEROES_BYTES, FLAG_BLOCK_STATUS_PAYLOAD,
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, FLAG_SEND_DF,
    HANDSHAKE_OPTIONS_MAX, IHAVEOPT, INFO_BLOCK_SIZE, INFO_DESCRIPTION, INFO_EXPORT, INFO_NAME,
    LIST_EXPORTS_MAX, NBD_MAGIC, OPT_ABORT, OPT_EXPORT_NAME, OPT_EXTENDED_HEADERS, OPT_GO,
    OPT_INFO, OPT_LIST, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_STARTTLS,
    OPT_STRUCTURED_REPLY, OPTION_DATA_BYTES_MAX, OPTION_REPLY_MAGIC, REP_ACK,
    REP_ERR_BLOCK_SIZE_REQD, REP_ERR_EXT_HEADER_REQD, REP_ERR_INVALID, REP_ERR_POLICY,
    REP_ERR_TOO_BIG, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO, REP_META_CONTEXT, REP_SERVER,
    STRING_BYTES_MAX,
};
use super::error::{MalformedInput, NbdError, ProtocolViolation, Unsupported};
use super::export::{BlockSizeConstraints, ExportCatalog, ExportInfo};
use super::transmission::ReplyMode;
use super::wire::OptionReplyHeader;
use super::wire::{self, ExportNameReply, Greeting, InfoBlockSize, InfoExport, OptionHeader};

/// How the server treats `OPT_STARTTLS`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// No TLS on this listener: `OPT_STARTTLS` gets `REP_ERR_POLICY` (spec NOTLS mode).
    #[default]
    Disabled,
}

/// Per-listener handshake policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// Refuse `OPT_GO` without an `INFO_BLOCK_SIZE` request (`REP_ERR_BLOCK_SIZE_REQD`) and
    /// `OPT_EXPORT_NAME` altogether. Off by default: the spec says servers SHOULD NOT refuse
    /// such clients (kernel nbd-client, fio), and Basalt instead answers requests outside its
    /// 512-byte alignment with `EINVAL`, which the spec allows.
    pub block_size_required: bool,
    /// TLS policy.
    pub tls: TlsMode,
}

/// Everything agreed in the handshake, handed to the caller when transmission starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The export, as the catalog described it.
    pub export: ExportInfo,
    /// The name the client asked for (may differ from `export.name` for a default export).
    pub requested_name: String,
    /// Transmission flags sent to the client.
    pub transmission_flags: u16,
    /// Header and reply style for the transmission phase.
    pub mode: ReplyMode,
    /// Context id of `base:allocation` if the client selected it for this export.
    pub base_allocation: Option<u32>,
    /// Whether the client promised (by asking for `INFO_BLOCK_SIZE` in `OPT_GO`) to honour our
    /// block size constraints. Requests are checked either way.
    pub block_size_agreed: bool,
}

/// Result of handling one handshake message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The next message is not complete yet.
    NeedInput,
    /// A message was consumed; haggling continues.
    Progress,
    /// Transmission starts.
    Go(Box<Negotiated>),
    /// The client sent `OPT_ABORT` (acknowledged).
    Abort,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    ClientFlags,
    OptionHeader,
    OptionData {
        option: u32,
        length: u32,
    },
    /// Option data over [`OPTION_DATA_BYTES_MAX`] streams past unbuffered, then is refused.
    SkipOption {
        option: u32,
        remaining: u32,
    },
}

/// The last `OPT_SET_META_CONTEXT`: which export it named and whether it selected
/// `base:allocation` (the spec ties contexts to that export name).
#[derive(Clone, Debug, PartialEq, Eq)]
struct MetaSelection {
    export_name: String,
    base_allocation: bool,
}

/// Option-haggling state of one connection.
#[derive(Debug)]
pub(crate) struct Handshake {
    step: Step,
    no_zeroes: bool,
    structured: bool,
    extended: bool,
    meta: Option<MetaSelection>,
    options_seen: u32,
}

impl Handshake {
    /// Starts a handshake, appending the server greeting to `out`.
    pub(crate) fn start(out: &mut Vec<u8>) -> Self {
        let greeting = Greeting {
            nbd_magic: U64::new(NBD_MAGIC),
            option_magic: U64::new(IHAVEOPT),
            handshake_flags: U16::new(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES),
        };
        out.extend_from_slice(greeting.as_bytes());
        Self {
            step: Step::ClientFlags,
            no_zeroes: false,
            structured: false,
            extended: false,
            meta: None,
            options_seen: 0,
        }
    }

    /// Bytes the next message needs at the front of the input.
    pub(crate) fn wanted_bytes(&self) -> usize {
        match self.step {
            Step::ClientFlags => 4,
            Step::OptionHeader => size_of::<OptionHeader>(),
            Step::OptionData { length, .. } => length as usize,
            Step::SkipOption { .. } => 1,
        }
    }

    /// Consumes at most one message from the front of `input`, appending replies to `out`.
    pub(crate) fn handle_message(
        &mut self,
        config: &ServerConfig,
        catalog: &dyn ExportCatalog,
        input: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Result<Outcome, NbdError> {
        match self.step {
            Step::ClientFlags => {
                let Some((flags, _)) = wire::read_u32(input) else {
                    return Ok(Outcome::NeedInput);
                };
                input.advance(4);
                self.accept_client_flags(flags)?;
                self.step = Step::OptionHeader;
                Ok(Outcome::Progress)
            }
            Step::OptionHeader => {
                let Some((header, _)) = wire::read_prefix::<OptionHeader>(input) else {
                    return Ok(Outcome::NeedInput);
                };
                input.advance(size_of::<OptionHeader>());
                self.accept_option_header(&header)?;
                Ok(Outcome::Progress)
            }
            Step::OptionData { option, length } => {
                if input.len() < length as usize {
                    return Ok(Outcome::NeedInput);
                }
                let data = input.split_to(length as usize);
                self.step = Step::OptionHeader;
                self.handle_option(option, &data, config, catalog, out)
            }
            Step::SkipOption { option, remaining } => {
                Ok(self.skip_option(option, remaining, input, out))
            }
        }
    }

    /// Discards oversized option data as it arrives, then answers the option. Skipping rather
    /// than hanging up keeps the spec's baseline promise that an option the server will not
    /// process never stops it from parsing the next one.
    fn skip_option(
        &mut self,
        option: u32,
        remaining: u32,
        input: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Outcome {
        if input.is_empty() {
            return Outcome::NeedInput;
        }
        let count = (remaining as usize).min(input.len());
        input.advance(count);
        // `count <= remaining`, which is a u32, so neither conversion nor subtraction can fail.
        let remaining = remaining - count as u32;
        if remaining > 0 {
            self.step = Step::SkipOption { option, remaining };
            return Outcome::Progress;
        }
        self.step = Step::OptionHeader;
        match option {
            OPT_ABORT => {
                // The spec says to ignore any data sent with ABORT, however much there is.
                put_option_reply(out, option, REP_ACK, &[]);
                return Outcome::Abort;
            }
            _ if is_known_option(option) => {
                put_option_error(out, option, REP_ERR_TOO_BIG, "option data too large");
            }
            _ => put_option_error(out, option, REP_ERR_UNSUP, "unknown option"),
        }
        Outcome::Progress
    }

    fn accept_client_flags(&mut self, flags: u32) -> Result<(), NbdError> {
        if flags & !CLIENT_FLAGS_KNOWN != 0 {
            return Err(ProtocolViolation::UnknownClientFlags { flags }.into());
        }
        if flags & FLAG_C_FIXED_NEWSTYLE == 0 {
            return Err(Unsupported::NotFixedNewstyle.into());
        }
        self.no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
        Ok(())
    }

    fn accept_option_header(&mut self, header: &OptionHeader) -> Result<(), NbdError> {
        let magic = header.magic.get();
        if magic != IHAVEOPT {
            return Err(MalformedInput::OptionMagic { found: magic }.into());
        }
        self.options_seen += 1;
        if self.options_seen > HANDSHAKE_OPTIONS_MAX {
            return Err(ProtocolViolation::TooManyOptions.into());
        }
        let (option, length) = (header.option.get(), header.length.get());
        if length <= OPTION_DATA_BYTES_MAX {
            self.step = Step::OptionData { option, length };
        } else if option == OPT_EXPORT_NAME {
            // EXPORT_NAME has no error reply, and no export name can be this long.
            return Err(ProtocolViolation::OptionTooLarge { option, length }.into());
        } else {
            self.step = Step::SkipOption {
                option,
                remaining: length,
            };
        }
        Ok(())
    }

    fn handle_option(
        &mut self,
        option: u32,
        data: &[u8],
        config: &ServerConfig,
        catalog: &dyn ExportCatalog,
        out: &mut Vec<u8>,
    ) -> Result<Outcome, NbdError> {
        match option {
            OPT_EXPORT_NAME => return self.opt_export_name(data, config, catalog, out),
            OPT_INFO | OPT_GO => return Ok(self.opt_info_go(option, data, config, catalog, out)),
            OPT_ABORT => {
                // The spec says to ignore any data sent with ABORT.
                put_option_reply(out, option, REP_ACK, &[]);
                return Ok(Outcome::Abort);
            }
            OPT_LIST => opt_list(data, catalog, out),
            OPT_STARTTLS => opt_starttls(data, config, out),
            OPT_STRUCTURED_REPLY => self.opt_structured_reply(data, out),
            OPT_EXTENDED_HEADERS => self.opt_extended_headers(data, out),
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                self.opt_meta_context(option, data, catalog, out);
            }
            _ => put_option_error(out, option, REP_ERR_UNSUP, "unknown option"),
        }
        Ok(Outcome::Progress)
    }

    fn opt_export_name(
        &mut self,
        data: &[u8],
        config: &ServerConfig,
        catalog: &dyn ExportCatalog,
        out: &mut Vec<u8>,
    ) -> Result<Outcome, NbdError> {
        if self.extended {
            return Err(ProtocolViolation::ExportNameWithExtendedHeaders.into());
        }
        let name = std::str::from_utf8(data).map_err(|_| MalformedInput::ExportNameNotUtf8)?;
        if config.block_size_required {
            return Err(Unsupported::BlockSizeRequired.into());
        }
        let Some(export) = catalog.lookup(name) else {
            return Err(Unsupported::UnknownExport {
                name: name.to_owned(),
            }
            .into());
        };
        let flags = self.transmission_flags();
        let reply = ExportNameReply {
            size: U64::new(export.size_bytes),
            transmission_flags: U16::new(flags | export.features.transmission_flags()),
        };
        out.extend_from_slice(reply.as_bytes());
        if !self.no_zeroes {
            out.extend_from_slice(&[0; EXPORT_NAME_ZEROES_BYTES]);
        }
        Ok(Outcome::Go(Box::new(self.negotiated(export, name, false))))
    }

    fn opt_info_go(
        &mut self,
        option: u32,
        data: &[u8],
        config: &ServerConfig,
        catalog: &dyn ExportCatalog,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let Some(request) = InfoRequest::parse(data) else {
            put_option_error(out, option, REP_ERR_INVALID, "malformed INFO/GO request");
            return Outcome::Progress;
        };
        let Some(export) = catalog.lookup(request.name) else {
            put_option_error(out, option, REP_ERR_UNKNOWN, "no such export");
            return Outcome::Progress;
        };
        let flags = self.transmission_flags() | export.features.transmission_flags();
        put_info_export(out, option, export.size_bytes, flags);
        if request.wants_name {
            put_info_string(out, option, INFO_NAME, &export.name);
        }
        if request.wants_description && !export.description.is_empty() {
            put_info_string(out, option, INFO_DESCRIPTION, &export.description);
        }
        // Sent even unasked (the spec allows unrequested info): clients that understand it
        // learn our alignment, and the others are answered EINVAL on misaligned requests.
        put_info_block_size(out, option, BlockSizeConstraints::BASALT);
        if option == OPT_GO && config.block_size_required && !request.wants_block_size {
            let message = "request NBD_INFO_BLOCK_SIZE to use this server";
            put_option_error(out, option, REP_ERR_BLOCK_SIZE_REQD, message);
            return Outcome::Progress;
        }
        put_option_reply(out, option, REP_ACK, &[]);
        if option == OPT_INFO {
            return Outcome::Progress;
        }
        let negotiated = self.negotiated(export, request.name, request.wants_block_size);
        Outcome::Go(Box::new(negotiated))
    }

    fn opt_structured_reply(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let option = OPT_STRUCTURED_REPLY;
        if !data.is_empty() {
            put_option_error(out, option, REP_ERR_INVALID, "option takes no data");
        } else if self.extended {
            put_option_error(
                out,
                option,
                REP_ERR_EXT_HEADER_REQD,
                "extended headers in use",
            );
        } else if self.structured {
            put_option_error(
                out,
                option,
                REP_ERR_INVALID,
                "structured replies already on",
            );
        } else {
            self.structured = true;
            put_option_reply(out, option, REP_ACK, &[]);
        }
    }

    fn opt_extended_headers(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let option = OPT_EXTENDED_HEADERS;
        if !data.is_empty() {
            put_option_error(out, option, REP_ERR_INVALID, "option takes no data");
        } else if self.extended {
            put_option_error(out, option, REP_ERR_INVALID, "extended headers already on");
        } else {
            // Extended headers imply structured replies.
            self.extended = true;
            self.structured = true;
            put_option_reply(out, option, REP_ACK, &[]);
        }
    }

    fn opt_meta_context(
        &mut self,
        option: u32,
        data: &[u8],
        catalog: &dyn ExportCatalog,
        out: &mut Vec<u8>,
    ) {
        let select = option == OPT_SET_META_CONTEXT;
        if select {
            // SET replaces earlier selections even when it fails (spec).
            self.meta = None;
            // Block status needs structured replies; the spec says SET before them SHOULD
            // fail. LIST only MAY fail, and answering it costs nothing, so it is served.
            if !self.structured {
                let message = "negotiate structured replies first";
                put_option_error(out, option, REP_ERR_INVALID, message);
                return;
            }
        }
        let Some(request) = MetaRequest::parse(data) else {
            put_option_error(
                out,
                option,
                REP_ERR_INVALID,
                "malformed meta context request",
            );
            return;
        };
        if catalog.lookup(request.name).is_none() {
            put_option_error(out, option, REP_ERR_UNKNOWN, "no such export");
            return;
        }
        let matched = request.matches_base_allocation(select);
        if matched {
            let id = if select {
                CONTEXT_ID_BASE_ALLOCATION
            } else {
                0
            };
            let id = id.to_be_bytes();
            put_option_reply(
                out,
                option,
                REP_META_CONTEXT,
                &[&id, CONTEXT_BASE_ALLOCATION.as_bytes()],
            );
        }
        if select {
            let export_name = request.name.to_owned();
            self.meta = Some(MetaSelection {
                export_name,
                base_allocation: matched,
            });
        }
        put_option_reply(out, option, REP_ACK, &[]);
    }

    /// Flags that depend on negotiation rather than on the export.
    fn transmission_flags(&self) -> u16 {
        let mut flags = 0;
        if self.structured {
            flags |= FLAG_SEND_DF;
        }
        if self.extended {
            flags |= FLAG_BLOCK_STATUS_PAYLOAD;
        }
        flags
    }

    fn negotiated(
        &self,
        export: ExportInfo,
        requested_name: &str,
        block_size_agreed: bool,
    ) -> Negotiated {
        let mode = match (self.extended, self.structured) {
            (true, _) => ReplyMode::Extended,
            (false, true) => ReplyMode::Structured,
            (false, false) => ReplyMode::Simple,
        };
        let base_allocation = self
            .meta
            .as_ref()
            .filter(|meta| meta.base_allocation && meta.export_name == requested_name)
            .map(|_| CONTEXT_ID_BASE_ALLOCATION);
        let transmission_flags = self.transmission_flags() | export.features.transmission_flags();
        Negotiated {
            export,
            requested_name: requested_name.to_owned(),
            transmission_flags,
            mode,
            base_allocation,
            block_size_agreed,
        }
    }
}

/// Whether this server implements `option` (so an oversized one is `TOO_BIG`, not `UNSUP`).
fn is_known_option(option: u32) -> bool {
    matches!(
        option,
        OPT_EXPORT_NAME
            | OPT_ABORT
            | OPT_LIST
            | OPT_STARTTLS
            | OPT_INFO
            | OPT_GO
            | OPT_STRUCTURED_REPLY
            | OPT_LIST_META_CONTEXT
            | OPT_SET_META_CONTEXT
            | OPT_EXTENDED_HEADERS
    )
}

fn opt_list(data: &[u8], catalog: &dyn ExportCatalog, out: &mut Vec<u8>) {
    if !data.is_empty() {
        put_option_error(out, OPT_LIST, REP_ERR_INVALID, "option takes no data");
        return;
    }
    let exports = catalog.list();
    for export in exports.iter().take(LIST_EXPORTS_MAX) {
        let name = wire::truncate_utf8(&export.name, STRING_BYTES_MAX);
        let description = wire::truncate_utf8(&export.description, STRING_BYTES_MAX);
        let name_length = (name.len() as u32).to_be_bytes();
        let parts: [&[u8]; 3] = [&name_length, name.as_bytes(), description.as_bytes()];
        put_option_reply(out, OPT_LIST, REP_SERVER, &parts);
    }
    if exports.len() > LIST_EXPORTS_MAX {
        put_option_error(out, OPT_LIST, REP_ERR_TOO_BIG, "too many exports to list");
    } else {
        put_option_reply(out, OPT_LIST, REP_ACK, &[]);
    }
}

fn opt_starttls(data: &[u8], config: &ServerConfig, out: &mut Vec<u8>) {
    if !data.is_empty() {
        put_option_error(out, OPT_STARTTLS, REP_ERR_INVALID, "option takes no data");
        return;
    }
    match config.tls {
        TlsMode::Disabled => {
            put_option_error(out, OPT_STARTTLS, REP_ERR_POLICY, "TLS is not enabled here");
        }
    }
}

/// A parsed `OPT_INFO`/`OPT_GO` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// Export name.
    pub name: &'a str,
    /// `INFO_NAME` requested.
    pub wants_name: bool,
    /// `INFO_DESCRIPTION` requested.
    pub wants_description: bool,
    /// `INFO_BLOCK_SIZE` requested.
    pub wants_block_size: bool,
}

impl<'a> InfoRequest<'a> {
    /// Parses option data: name length, name, request count, requests; nothing may trail.
    /// Unknown information types are ignored (spec MUST).
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (name, rest) = wire::read_prefixed_bytes(data)?;
        let name = parse_string(name)?;
        let (count, mut rest) = wire::read_u16(rest)?;
        if rest.len() != usize::from(count) * 2 {
            return None;
        }
        let mut request = Self {
            name,
            wants_name: false,
            wants_description: false,
            wants_block_size: false,
        };
        while let Some((info, tail)) = wire::read_u16(rest) {
            match info {
                INFO_NAME => request.wants_name = true,
                INFO_DESCRIPTION => request.wants_description = true,
                INFO_BLOCK_SIZE => request.wants_block_size = true,
                _ => {}
            }
            rest = tail;
        }
        Some(request)
    }
}

/// A parsed `OPT_LIST_META_CONTEXT`/`OPT_SET_META_CONTEXT` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaRequest<'a> {
    /// Export name the contexts are for.
    pub name: &'a str,
    /// Query strings, each `namespace:leaf`.
    pub queries: Vec<&'a str>,
}

impl<'a> MetaRequest<'a> {
    /// Parses option data. `None` for overruns, trailing bytes, non-UTF-8 strings and queries
    /// without the namespace colon (answered `REP_ERR_INVALID`, which the spec allows).
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (name, rest) = wire::read_prefixed_bytes(data)?;
        let name = parse_string(name)?;
        let (count, mut rest) = wire::read_u32(rest)?;
        // Each query needs at least 4 bytes, which bounds the allocation by the data length.
        let mut queries = Vec::with_capacity((count as usize).min(rest.len() / 4));
        for _ in 0..count {
            let (query, tail) = wire::read_prefixed_bytes(rest)?;
            let query = parse_string(query)?;
            if !query.contains(':') {
                return None;
            }
            queries.push(query);
            rest = tail;
        }
        rest.is_empty().then_some(Self { name, queries })
    }

    /// Whether `base:allocation` is selected (`select`) or listed. Listing with no queries, or
    /// with the `base:` wildcard, lists it; selecting needs its exact name. Unknown namespaces
    /// and leaves are ignored, as the spec requires.
    pub fn matches_base_allocation(&self, select: bool) -> bool {
        if !select && self.queries.is_empty() {
            return true;
        }
        self.queries.iter().any(|query| {
            *query == CONTEXT_BASE_ALLOCATION || (!select && *query == CONTEXT_BASE_NAMESPACE)
        })
    }
}

fn parse_string(bytes: &[u8]) -> Option<&str> {
    if bytes.len() > STRING_BYTES_MAX {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// Appends one option reply with the concatenation of `parts` as its data.
fn put_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, parts: &[&[u8]]) {
    let length: usize = parts.iter().map(|part| part.len()).sum();
    // Every reply we build is bounded by a few strings of STRING_BYTES_MAX.
    assert!(
        length <= OPTION_DATA_BYTES_MAX as usize,
        "option reply too large"
    );
    let header = OptionReplyHeader {
        magic: U64::new(OPTION_REPLY_MAGIC),
        option: U32::new(option),
        reply_type: U32::new(reply_type),
        length: U32::new(length as u32),
    };
    out.extend_from_slice(header.as_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Appends an error reply carrying a human-readable message.
fn put_option_error(out: &mut Vec<u8>, option: u32, reply_type: u32, message: &str) {
    put_option_reply(out, option, reply_type, &[message.as_bytes()]);
}

fn put_info_export(out: &mut Vec<u8>, option: u32, size_bytes: u64, flags: u16) {
    let info = InfoExport {
        info_type: U16::new(INFO_EXPORT),
        size: U64::new(size_bytes),
        transmission_flags: U16::new(flags),
    };
    put_option_reply(out, option, REP_INFO, &[info.as_bytes()]);
}

fn put_info_string(out: &mut Vec<u8>, option: u32, info_type: u16, text: &str) {
    let text = wire::truncate_utf8(text, STRING_BYTES_MAX);
    put_option_reply(
        out,
        option,
        REP_INFO,
        &[&info_type.to_be_bytes(), text.as_bytes()],
    );
}

fn put_info_block_size(out: &mut Vec<u8>, option: u32, sizes: BlockSizeConstraints) {
    let info = InfoBlockSize {
        info_type: U16::new(INFO_BLOCK_SIZE),
        minimum: U32::new(sizes.minimum),
        preferred: U32::new(sizes.preferred),
        maximum: U32::new(sizes.maximum),
    };
    put_option_reply(out, option, REP_INFO, &[info.as_bytes()]);
}
