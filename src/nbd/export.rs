//! What the server session needs to know about exports, and how it asks for it.
//!
//! # Why a synchronous catalog
//! The session takes a `&dyn ExportCatalog` on every `handle_input` call instead of emitting a
//! "look up this export" event and waiting for an answer. Export lookup in Basalt never does
//! I/O: every node keeps a current copy of the volume table (DESIGN §5, map watch), so the
//! answer is a hash-map read. A synchronous call keeps the handshake a straight-line state
//! machine (no "waiting for lookup" state with a half-answered option), keeps `OPT_INFO` and
//! `OPT_GO` answers consistent within one call, and costs the async shell nothing. A catalog
//! that ever needs I/O can be a snapshot the shell refreshes before feeding input.

use super::consts::{
    BLOCK_SIZE_MIN_BYTES, BLOCK_SIZE_PREFERRED_BYTES, FLAG_CAN_MULTI_CONN, FLAG_HAS_FLAGS,
    FLAG_READ_ONLY, FLAG_ROTATIONAL, FLAG_SEND_CACHE, FLAG_SEND_FAST_ZERO, FLAG_SEND_FLUSH,
    FLAG_SEND_FUA, FLAG_SEND_TRIM, FLAG_SEND_WRITE_ZEROES, PAYLOAD_BYTES_MAX,
};

/// Source of export descriptions for the handshake. Implementations must not block or do I/O
/// (see the module docs); they are called from the session's input handler.
pub trait ExportCatalog {
    /// Describes the export named `name` (the empty name is the default export, if any), or
    /// `None` if it does not exist (answered with `REP_ERR_UNKNOWN`).
    fn lookup(&self, name: &str) -> Option<ExportInfo>;
    /// Every export a client may list, in the order to announce them. Only the first
    /// [`super::consts::LIST_EXPORTS_MAX`] are sent.
    fn list(&self) -> Vec<ExportListing>;
}

/// One export as `OPT_LIST` announces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportListing {
    /// Name a client passes to `OPT_GO` (the volume name).
    pub name: String,
    /// Human-readable description; may be empty.
    pub description: String,
}

/// What the session needs to answer `OPT_INFO`/`OPT_GO` and to validate requests afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Canonical name, sent as `INFO_NAME` (may differ from what the client asked, e.g. for the
    /// default export).
    pub name: String,
    /// Human-readable description, sent as `INFO_DESCRIPTION` when asked for and non-empty.
    pub description: String,
    /// Export size in bytes; requests beyond it are refused by the session.
    pub size_bytes: u64,
    /// Features of this export; they decide the transmission flags and which commands the
    /// session lets through.
    pub features: ExportFeatures,
}

/// Per-export capabilities. Plain booleans rather than raw flag bits so a catalog cannot set
/// bits the session does not implement; [`ExportFeatures::transmission_flags`] maps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct ExportFeatures {
    /// Writes, trims and zeroing are refused with `EPERM`.
    pub read_only: bool,
    /// `CMD_FLUSH` is offered.
    pub flush: bool,
    /// `CMD_FLAG_FUA` is offered.
    pub fua: bool,
    /// `CMD_TRIM` is offered (ignored when read-only).
    pub trim: bool,
    /// `CMD_WRITE_ZEROES` is offered (ignored when read-only).
    pub write_zeroes: bool,
    /// `CMD_FLAG_FAST_ZERO` is offered (needs `write_zeroes`).
    pub fast_zero: bool,
    /// `CMD_CACHE` is offered.
    pub cache: bool,
    /// Several connections see each other's flushed writes (Basalt: yes, no client cache).
    pub multi_conn: bool,
    /// Hint that the medium is rotational.
    pub rotational: bool,
}

impl ExportFeatures {
    /// A writable Basalt volume: flush, FUA, trim, write zeroes with fast zero, multi-conn
    /// (DESIGN §7). `CMD_CACHE` is not advertised (the gateway has nothing to prefetch into),
    /// though the session still lets it through because the spec notes clients send it anyway.
    pub fn writable_volume() -> Self {
        Self {
            read_only: false,
            flush: true,
            fua: true,
            trim: true,
            write_zeroes: true,
            fast_zero: true,
            cache: false,
            multi_conn: true,
            rotational: false,
        }
    }

    /// The export-dependent transmission flags (the session adds `SEND_DF` and
    /// `BLOCK_STATUS_PAYLOAD`, which depend on what was negotiated).
    pub fn transmission_flags(&self) -> u16 {
        let writable = !self.read_only;
        let write_zeroes = writable && self.write_zeroes;
        let bits = [
            (true, FLAG_HAS_FLAGS),
            (self.read_only, FLAG_READ_ONLY),
            (self.flush, FLAG_SEND_FLUSH),
            (self.fua, FLAG_SEND_FUA),
            (self.rotational, FLAG_ROTATIONAL),
            (writable && self.trim, FLAG_SEND_TRIM),
            (write_zeroes, FLAG_SEND_WRITE_ZEROES),
            (self.multi_conn, FLAG_CAN_MULTI_CONN),
            (self.cache, FLAG_SEND_CACHE),
            (write_zeroes && self.fast_zero, FLAG_SEND_FAST_ZERO),
        ];
        bits.iter()
            .filter(|(on, _)| *on)
            .fold(0, |acc, (_, bit)| acc | bit)
    }
}

/// Block size constraints as sent in `INFO_BLOCK_SIZE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizeConstraints {
    /// Required alignment of offsets and lengths.
    pub minimum: u32,
    /// Alignment that avoids read-modify-write.
    pub preferred: u32,
    /// Largest read/write payload.
    pub maximum: u32,
}

impl BlockSizeConstraints {
    /// Basalt's constraints: 512-byte sectors, 4 KiB blocks, 32 MiB payloads.
    pub const BASALT: Self = Self {
        minimum: BLOCK_SIZE_MIN_BYTES,
        preferred: BLOCK_SIZE_PREFERRED_BYTES,
        maximum: PAYLOAD_BYTES_MAX,
    };

    /// The spec's defaults when a server sends nothing: any alignment, 4 KiB preferred, no max.
    pub const SPEC_DEFAULT: Self = Self {
        minimum: 1,
        preferred: 4096,
        maximum: u32::MAX,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_export_hides_write_features() {
        // Goal: a read-only export never advertises trim or zeroing, whatever the catalog says.
        let features = ExportFeatures {
            read_only: true,
            ..ExportFeatures::writable_volume()
        };
        let flags = features.transmission_flags();
        assert_ne!(flags & FLAG_READ_ONLY, 0);
        assert_eq!(
            flags & (FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO),
            0
        );
        assert_ne!(flags & FLAG_HAS_FLAGS, 0);
    }

    #[test]
    fn fast_zero_needs_write_zeroes() {
        // Goal: SEND_FAST_ZERO is never set without SEND_WRITE_ZEROES (spec MUST).
        let features = ExportFeatures {
            write_zeroes: false,
            ..ExportFeatures::writable_volume()
        };
        assert_eq!(features.transmission_flags() & FLAG_SEND_FAST_ZERO, 0);
        let all = ExportFeatures::writable_volume().transmission_flags();
        assert_ne!(all & FLAG_SEND_FAST_ZERO, 0);
        assert_ne!(all & FLAG_CAN_MULTI_CONN, 0);
    }
}
