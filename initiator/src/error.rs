//! Every way an initiator command fails, worded for the operator who typed it.

use std::io;

/// Why a command failed. Messages name the fix where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `nbd` generic-netlink family is missing.
    #[error(
        "the kernel has no NBD driver loaded: run `modprobe nbd` (package: the kernel's modules)"
    )]
    NoNbdModule,
    /// The kernel refused a command for lack of privilege.
    #[error("{op}: permission denied: attaching NBD devices needs root (CAP_SYS_ADMIN)")]
    NotPermitted {
        /// The command.
        op: &'static str,
    },
    /// The requested device is attached already.
    #[error("no free nbd device: {device} is in use")]
    DeviceBusy {
        /// `/dev/nbdN`.
        device: String,
    },
    /// A device argument that is not `/dev/nbdN` (or `nbdN`).
    #[error("invalid device {0:?}: expected /dev/nbdN")]
    BadDevice(String),
    /// A command-line value out of range.
    #[error("invalid argument: {0}")]
    BadArgument(String),
    /// The API says the volume does not exist.
    #[error("volume {volume:?} not found (asked {url})")]
    VolumeNotFound {
        /// The volume.
        volume: String,
        /// The API asked.
        url: String,
    },
    /// The API refused the token.
    #[error("the API at {url} refused the token: {detail}")]
    Unauthorized {
        /// The API.
        url: String,
        /// What it said.
        detail: String,
    },
    /// No API answered.
    #[error("cannot reach the Basalt API: {0}")]
    ApiUnreachable(String),
    /// The API answered with another error.
    #[error("the Basalt API failed: {0}")]
    Api(String),
    /// No endpoint completed the NBD handshake.
    #[error("no NBD endpoint of volume {volume:?} accepted a connection: {reasons}")]
    NoEndpoint {
        /// The volume.
        volume: String,
        /// Each endpoint and what went wrong.
        reasons: String,
    },
    /// The server offers something the kernel cannot use.
    #[error("export {export:?} at {address} cannot be attached: {reason}")]
    Incompatible {
        /// Export name.
        export: String,
        /// Server address.
        address: String,
        /// Why.
        reason: String,
    },
    /// A netlink command failed.
    #[error("kernel refused {op}: {error}")]
    Kernel {
        /// The command.
        op: &'static str,
        /// The errno as an I/O error.
        error: io::Error,
    },
    /// The netlink socket itself failed.
    #[error("netlink: {0}")]
    Netlink(String),
    /// Nothing matches a detach target.
    #[error("{0:?} is not attached (no such device or volume in `basalt-initiator list`)")]
    NotAttached(String),
    /// The state directory could not be read or written.
    #[error("state file {path}: {error}")]
    State {
        /// The file.
        path: String,
        /// The error.
        error: io::Error,
    },
}

impl Error {
    /// A kernel errno for command `op`, with the privilege case named.
    pub fn from_errno(op: &'static str, errno: i32) -> Self {
        if errno == 1 {
            return Error::NotPermitted { op };
        }
        if errno == 2 && op == "family lookup" {
            return Error::NoNbdModule;
        }
        Error::Kernel {
            op,
            error: io::Error::from_raw_os_error(errno),
        }
    }
}
