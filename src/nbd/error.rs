//! Connection-fatal errors of the server session, grouped by who is at fault.
//!
//! Per-request problems (a misaligned read, a write to a read-only export) are not here: they
//! are [`super::transmission::RequestError`]s, answered with an NBD error code while the
//! connection stays usable. Everything here ends the connection, and the session stays failed
//! with the same error afterwards (rustls-style sticky state).

use super::consts::{HANDSHAKE_OPTIONS_MAX, OPTION_DATA_BYTES_MAX, PAYLOAD_BYTES_MAX};

/// Why a server session failed. Cloneable so the sticky state can hand the same value back on
/// every later call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NbdError {
    /// The client sent bytes that do not parse as NBD.
    #[error("malformed input: {0}")]
    Malformed(#[from] MalformedInput),
    /// The bytes parse, but break a rule the spec makes mandatory.
    #[error("protocol violation: {0}")]
    Violation(#[from] ProtocolViolation),
    /// The client needs something this server does not offer and the protocol gives no way to
    /// say so politely.
    #[error("unsupported: {0}")]
    Unsupported(#[from] Unsupported),
}

/// Fault class of an [`NbdError`], for metrics and log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultClass {
    /// Garbage on the wire (often not an NBD client at all).
    MalformedInput,
    /// A buggy or hostile NBD client.
    ProtocolViolation,
    /// A well-behaved client asking for something we lack.
    Unsupported,
}

impl NbdError {
    /// The fault class, so callers can log garbage quietly and incompatibilities loudly.
    pub fn class(&self) -> FaultClass {
        match self {
            Self::Malformed(_) => FaultClass::MalformedInput,
            Self::Violation(_) => FaultClass::ProtocolViolation,
            Self::Unsupported(_) => FaultClass::Unsupported,
        }
    }
}

/// Bytes that are not NBD.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedInput {
    /// An option request did not start with `IHAVEOPT`.
    #[error("option magic {found:#018x} is not IHAVEOPT")]
    OptionMagic {
        /// The 64 bits received instead.
        found: u64,
    },
    /// A transmission request carried the wrong magic for the negotiated header style.
    #[error("request magic {found:#010x}, expected {expected:#010x}")]
    RequestMagic {
        /// The 32 bits received.
        found: u32,
        /// The magic of the negotiated (compact or extended) style.
        expected: u32,
    },
    /// `OPT_EXPORT_NAME` carried a name that is not UTF-8 (it cannot be answered with an
    /// error, so the connection ends).
    #[error("export name is not valid UTF-8")]
    ExportNameNotUtf8,
}

/// Mandatory rules the client broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// Client flags we did not advertise (the spec says the server MUST drop the connection).
    #[error("unknown client flags {flags:#x}")]
    UnknownClientFlags {
        /// All flags the client sent.
        flags: u32,
    },
    /// An `OPT_EXPORT_NAME` longer than [`OPTION_DATA_BYTES_MAX`]. Other oversized options are
    /// skipped and refused with `REP_ERR_TOO_BIG`; this one has no error reply.
    #[error("option {option} carries {length} bytes, limit is {OPTION_DATA_BYTES_MAX}")]
    OptionTooLarge {
        /// The option code.
        option: u32,
        /// The announced data length.
        length: u32,
    },
    /// More than [`HANDSHAKE_OPTIONS_MAX`] options: treated as a denial of service.
    #[error("more than {HANDSHAKE_OPTIONS_MAX} options in one handshake")]
    TooManyOptions,
    /// `OPT_EXPORT_NAME` after extended headers were agreed (the spec forbids it, and the
    /// option has no way to report an error).
    #[error("OPT_EXPORT_NAME after extended headers were negotiated")]
    ExportNameWithExtendedHeaders,
    /// A request announced a payload larger than [`PAYLOAD_BYTES_MAX`]; we refuse to read it.
    #[error("request payload of {length} bytes exceeds {PAYLOAD_BYTES_MAX}")]
    PayloadTooLarge {
        /// The announced payload length.
        length: u64,
    },
}

/// What a client needed that we do not offer, where the protocol cannot carry a refusal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unsupported {
    /// The client did not set `FLAG_C_FIXED_NEWSTYLE`; plain newstyle is not served.
    #[error("client does not speak fixed newstyle negotiation")]
    NotFixedNewstyle,
    /// `OPT_EXPORT_NAME` named an export that does not exist (no error reply is possible).
    #[error("OPT_EXPORT_NAME for unknown export {name:?}")]
    UnknownExport {
        /// The name requested.
        name: String,
    },
    /// `OPT_EXPORT_NAME` cannot agree on block sizes, and this server is configured to
    /// require that agreement.
    #[error("OPT_EXPORT_NAME cannot negotiate block sizes, which this server requires")]
    BlockSizeRequired,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_variants() {
        // Goal: every wrapper maps to its own fault class, for logging and metrics.
        let malformed = NbdError::from(MalformedInput::ExportNameNotUtf8);
        let violation = NbdError::from(ProtocolViolation::TooManyOptions);
        let unsupported = NbdError::from(Unsupported::NotFixedNewstyle);
        assert_eq!(malformed.class(), FaultClass::MalformedInput);
        assert_eq!(violation.class(), FaultClass::ProtocolViolation);
        assert_eq!(unsupported.class(), FaultClass::Unsupported);
        assert!(violation.to_string().contains("options"));
    }
}
