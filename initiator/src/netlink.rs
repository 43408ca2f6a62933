//! The kernel's generic-netlink NBD interface as bytes, sans-IO.
//!
//! Builds the requests `basalt-initiator` sends (family lookup, `NBD_CMD_CONNECT`,
//! `DISCONNECT`, `RECONFIGURE`, `STATUS`) and parses what the kernel answers or multicasts
//! (acks, errors, the connect reply, the status device list, `LINK_DEAD`). No sockets here:
//! [`crate::kernel`] moves the bytes. Layouts follow `include/uapi/linux/netlink.h`,
//! `genetlink.h` and `nbd-netlink.h`; netlink is host-endian, which is little-endian on every
//! platform the initiator is built for (asserted below).

use std::fmt;

const _: () = assert!(cfg!(target_endian = "little"), "netlink is host-endian");

// ---- netlink / genetlink ---------------------------------------------------------------------

/// `nlmsghdr` length.
pub const NLMSG_HDR_BYTES: usize = 16;
/// `genlmsghdr` length.
pub const GENL_HDR_BYTES: usize = 4;
/// `nlattr` header length.
const NLA_HDR_BYTES: usize = 4;
/// `NLMSG_ERROR`: an error or (error 0) an acknowledgement.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: end of a multipart answer.
pub const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 1;
/// `NLM_F_ACK`: ask for an acknowledgement.
pub const NLM_F_ACK: u16 = 4;
/// `NLA_F_NESTED`: the attribute holds attributes.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// Flag bits of `nla_type` that are not the type.
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

/// The generic-netlink controller's fixed family id.
pub const GENL_ID_CTRL: u16 = 0x10;
/// `CTRL_CMD_GETFAMILY`.
pub const CTRL_CMD_GETFAMILY: u8 = 3;
/// `CTRL_CMD_NEWFAMILY`: the answer to `GETFAMILY`.
pub const CTRL_CMD_NEWFAMILY: u8 = 1;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;

// ---- nbd-netlink.h ---------------------------------------------------------------------------

/// Generic-netlink family name of the NBD driver.
pub const NBD_FAMILY_NAME: &str = "nbd";
/// Its multicast group (link-dead notifications).
pub const NBD_MCAST_GROUP_NAME: &str = "nbd_mc_group";
/// `NBD_GENL_VERSION`.
pub const NBD_GENL_VERSION: u8 = 1;

/// `NBD_CMD_*`.
pub mod cmd {
    /// Attach sockets to a device.
    pub const CONNECT: u8 = 1;
    /// Detach a device.
    pub const DISCONNECT: u8 = 2;
    /// Change a connected device (replace dead sockets, timeouts).
    pub const RECONFIGURE: u8 = 3;
    /// Kernel multicast: a connection of a device died.
    pub const LINK_DEAD: u8 = 4;
    /// Which devices exist and whether they are connected.
    pub const STATUS: u8 = 5;
}

/// `NBD_ATTR_*`.
pub mod attr {
    /// u32 device index.
    pub const INDEX: u16 = 1;
    /// u64 size.
    pub const SIZE_BYTES: u16 = 2;
    /// u64 logical block size.
    pub const BLOCK_SIZE_BYTES: u16 = 3;
    /// u64 per-request timeout in seconds.
    pub const TIMEOUT: u16 = 4;
    /// u64 `NBD_FLAG_*` transmission flags.
    pub const SERVER_FLAGS: u16 = 5;
    /// u64 `NBD_CFLAG_*`.
    pub const CLIENT_FLAGS: u16 = 6;
    /// Nested `SOCK_ITEM`s.
    pub const SOCKETS: u16 = 7;
    /// u64 seconds I/O waits for a reconnect once every connection is dead.
    pub const DEAD_CONN_TIMEOUT: u16 = 8;
    /// Nested `DEVICE_ITEM`s (status replies).
    pub const DEVICE_LIST: u16 = 9;
    /// `NBD_SOCK_ITEM`.
    pub const SOCK_ITEM: u16 = 1;
    /// `NBD_SOCK_FD`: u32.
    pub const SOCK_FD: u16 = 1;
    /// `NBD_DEVICE_ITEM`.
    pub const DEVICE_ITEM: u16 = 1;
    /// `NBD_DEVICE_INDEX`: u32.
    pub const DEVICE_INDEX: u16 = 1;
    /// `NBD_DEVICE_CONNECTED`: u8.
    pub const DEVICE_CONNECTED: u16 = 2;
}

/// `NBD_CFLAG_DESTROY_ON_DISCONNECT`: remove the device when it disconnects.
pub const CFLAG_DESTROY_ON_DISCONNECT: u64 = 1 << 0;
/// `NBD_CFLAG_DISCONNECT_ON_CLOSE`: disconnect when the netlink socket that connected closes.
pub const CFLAG_DISCONNECT_ON_CLOSE: u64 = 1 << 1;

/// What `NBD_CMD_CONNECT` carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectParams {
    /// `/dev/nbd<index>`, or `None` for the first free device.
    pub index: Option<u32>,
    /// Export size.
    pub size_bytes: u64,
    /// Logical block size (a power of two, 512 to 4096).
    pub block_size_bytes: u64,
    /// Per-request timeout in seconds (0 leaves the kernel default).
    pub timeout_secs: u64,
    /// How long I/O waits for a reconnect when every connection is dead (0: fail at once).
    pub dead_conn_timeout_secs: u64,
    /// Transmission flags from the handshake.
    pub server_flags: u64,
    /// `CFLAG_*`.
    pub client_flags: u64,
    /// Connected, negotiated socket file descriptors.
    pub sockets: Vec<u32>,
}

/// One request to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `CTRL_CMD_GETFAMILY` for a family name.
    GetFamily(String),
    /// `NBD_CMD_CONNECT`.
    Connect(ConnectParams),
    /// `NBD_CMD_DISCONNECT` of a device.
    Disconnect {
        /// Device index.
        index: u32,
    },
    /// `NBD_CMD_RECONFIGURE`: hand over sockets that take the slots of dead connections.
    Reconfigure {
        /// Device index.
        index: u32,
        /// New connected, negotiated sockets.
        sockets: Vec<u32>,
    },
    /// `NBD_CMD_STATUS` of one device or of all.
    Status {
        /// Device index, or `None` for every device.
        index: Option<u32>,
    },
}

/// Appends one attribute (header, payload, padding to 4 bytes).
fn put_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = NLA_HDR_BYTES + payload.len();
    // Attributes here are at most a few hundred bytes; u16 lengths are netlink's own limit.
    let len = u16::try_from(len).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn put_u32(out: &mut Vec<u8>, kind: u16, value: u32) {
    put_attr(out, kind, &value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, kind: u16, value: u64) {
    put_attr(out, kind, &value.to_le_bytes());
}

/// `SOCKETS` holding one `SOCK_ITEM { SOCK_FD }` per descriptor.
fn put_sockets(out: &mut Vec<u8>, sockets: &[u32]) {
    let mut items = Vec::new();
    for &fd in sockets {
        let mut item = Vec::new();
        put_u32(&mut item, attr::SOCK_FD, fd);
        put_attr(&mut items, attr::SOCK_ITEM | NLA_F_NESTED, &item);
    }
    put_attr(out, attr::SOCKETS | NLA_F_NESTED, &items);
}

impl Request {
    /// The whole netlink message: `nlmsghdr` (with `REQUEST | ACK`), `genlmsghdr`, attributes.
    /// `nbd_family` is the id the kernel gave the `nbd` family (ignored for `GetFamily`).
    pub fn encode(&self, nbd_family: u16, seq: u32, port: u32) -> Vec<u8> {
        let mut attrs = Vec::new();
        let (family, command, version) = match self {
            Request::GetFamily(name) => {
                let mut bytes = name.as_bytes().to_vec();
                bytes.push(0);
                put_attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, &bytes);
                (GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1)
            }
            Request::Connect(params) => {
                if let Some(index) = params.index {
                    put_u32(&mut attrs, attr::INDEX, index);
                }
                put_u64(&mut attrs, attr::SIZE_BYTES, params.size_bytes);
                put_u64(&mut attrs, attr::BLOCK_SIZE_BYTES, params.block_size_bytes);
                put_u64(&mut attrs, attr::SERVER_FLAGS, params.server_flags);
                if params.timeout_secs > 0 {
                    put_u64(&mut attrs, attr::TIMEOUT, params.timeout_secs);
                }
                if params.dead_conn_timeout_secs > 0 {
                    put_u64(
                        &mut attrs,
                        attr::DEAD_CONN_TIMEOUT,
                        params.dead_conn_timeout_secs,
                    );
                }
                put_u64(&mut attrs, attr::CLIENT_FLAGS, params.client_flags);
                put_sockets(&mut attrs, &params.sockets);
                (nbd_family, cmd::CONNECT, NBD_GENL_VERSION)
            }
            Request::Disconnect { index } => {
                put_u32(&mut attrs, attr::INDEX, *index);
                (nbd_family, cmd::DISCONNECT, NBD_GENL_VERSION)
            }
            Request::Reconfigure { index, sockets } => {
                put_u32(&mut attrs, attr::INDEX, *index);
                put_sockets(&mut attrs, sockets);
                (nbd_family, cmd::RECONFIGURE, NBD_GENL_VERSION)
            }
            Request::Status { index } => {
                if let Some(index) = index {
                    put_u32(&mut attrs, attr::INDEX, *index);
                }
                (nbd_family, cmd::STATUS, NBD_GENL_VERSION)
            }
        };
        let len = NLMSG_HDR_BYTES + GENL_HDR_BYTES + attrs.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&family.to_le_bytes());
        out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&port.to_le_bytes());
        out.extend_from_slice(&[command, version, 0, 0]);
        out.extend_from_slice(&attrs);
        debug_assert_eq!(out.len(), len);
        out
    }
}

// ---- parsing ---------------------------------------------------------------------------------

/// Bytes from the kernel that do not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed netlink message: {0}")]
pub struct ParseError(pub String);

/// One device in a status answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceStatus {
    /// `/dev/nbd<index>`.
    pub index: u32,
    /// Whether it has a configuration (sockets attached).
    pub connected: bool,
}

/// A generic-netlink family as the controller describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyInfo {
    /// Family id (the `nlmsg_type` of its messages).
    pub id: u16,
    /// Multicast groups: name and id.
    pub mcast_groups: Vec<(String, u32)>,
}

/// What one message from the kernel means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Request `seq` succeeded.
    Ack {
        /// Sequence number of the request.
        seq: u32,
    },
    /// Request `seq` failed with `errno` (positive).
    Error {
        /// Sequence number of the request.
        seq: u32,
        /// The errno.
        errno: i32,
    },
    /// End of a multipart answer.
    Done {
        /// Sequence number of the request.
        seq: u32,
    },
    /// Answer to `GetFamily`.
    Family {
        /// Sequence number of the request.
        seq: u32,
        /// The family.
        info: FamilyInfo,
    },
    /// Answer to `Connect`: the device it used.
    Connected {
        /// Sequence number of the request.
        seq: u32,
        /// Device index.
        index: u32,
    },
    /// Answer to `Status`.
    Status {
        /// Sequence number of the request.
        seq: u32,
        /// Devices, in the kernel's order.
        devices: Vec<DeviceStatus>,
    },
    /// Multicast: a connection of device `index` died.
    LinkDead {
        /// Device index.
        index: u32,
    },
    /// Anything else (kept for logs).
    Other {
        /// `nlmsg_type`.
        kind: u16,
        /// Sequence number.
        seq: u32,
    },
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Iterates `(type, payload)` over a buffer of attributes.
fn attrs(mut bytes: &[u8]) -> Result<Vec<(u16, &[u8])>, ParseError> {
    let mut out = Vec::new();
    while bytes.len() >= NLA_HDR_BYTES {
        let len = usize::from(le_u16(bytes, 0).unwrap_or(0));
        let kind = le_u16(bytes, 2).unwrap_or(0) & NLA_TYPE_MASK;
        if len < NLA_HDR_BYTES || len > bytes.len() {
            return Err(ParseError(format!(
                "attribute length {len} with {} bytes left",
                bytes.len()
            )));
        }
        out.push((kind, &bytes[NLA_HDR_BYTES..len]));
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    Ok(out)
}

fn attr_u32(payload: &[u8]) -> Result<u32, ParseError> {
    le_u32(payload, 0).ok_or_else(|| ParseError(format!("u32 of {} bytes", payload.len())))
}

fn parse_family(seq: u32, payload: &[u8]) -> Result<Message, ParseError> {
    let mut info = FamilyInfo {
        id: 0,
        mcast_groups: Vec::new(),
    };
    for (kind, value) in attrs(payload)? {
        match kind {
            CTRL_ATTR_FAMILY_ID => {
                info.id = le_u16(value, 0).ok_or_else(|| ParseError("family id".into()))?;
            }
            CTRL_ATTR_MCAST_GROUPS => {
                for (_, group) in attrs(value)? {
                    let (mut name, mut id) = (None, None);
                    for (kind, value) in attrs(group)? {
                        match kind {
                            CTRL_ATTR_MCAST_GRP_NAME => {
                                let text = value.split(|&b| b == 0).next().unwrap_or(&[]);
                                name = Some(String::from_utf8_lossy(text).into_owned());
                            }
                            CTRL_ATTR_MCAST_GRP_ID => id = Some(attr_u32(value)?),
                            _ => {}
                        }
                    }
                    if let (Some(name), Some(id)) = (name, id) {
                        info.mcast_groups.push((name, id));
                    }
                }
            }
            _ => {}
        }
    }
    if info.id == 0 {
        return Err(ParseError("family answer without an id".into()));
    }
    Ok(Message::Family { seq, info })
}

fn parse_nbd(seq: u32, command: u8, payload: &[u8]) -> Result<Message, ParseError> {
    let attributes = attrs(payload)?;
    let index = attributes
        .iter()
        .find(|(kind, _)| *kind == attr::INDEX)
        .map(|(_, value)| attr_u32(value))
        .transpose()?;
    match command {
        cmd::CONNECT => {
            let index = index.ok_or_else(|| ParseError("connect reply without index".into()))?;
            Ok(Message::Connected { seq, index })
        }
        cmd::LINK_DEAD => {
            let index = index.ok_or_else(|| ParseError("link-dead without index".into()))?;
            Ok(Message::LinkDead { index })
        }
        cmd::STATUS => {
            let mut devices = Vec::new();
            for (kind, list) in attributes {
                if kind != attr::DEVICE_LIST {
                    continue;
                }
                for (_, item) in attrs(list)? {
                    let (mut index, mut connected) = (None, false);
                    for (kind, value) in attrs(item)? {
                        match kind {
                            attr::DEVICE_INDEX => index = Some(attr_u32(value)?),
                            attr::DEVICE_CONNECTED => connected = value.first() == Some(&1),
                            _ => {}
                        }
                    }
                    let index = index.ok_or_else(|| ParseError("device without index".into()))?;
                    devices.push(DeviceStatus { index, connected });
                }
            }
            Ok(Message::Status { seq, devices })
        }
        _ => Ok(Message::Other { kind: 0, seq }),
    }
}

/// Parses every message in one datagram from the kernel. `nbd_family` tells NBD messages from
/// controller messages (`None` before the family is known).
pub fn parse(mut bytes: &[u8], nbd_family: Option<u16>) -> Result<Vec<Message>, ParseError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (Some(len), Some(kind), Some(seq)) =
            (le_u32(bytes, 0), le_u16(bytes, 4), le_u32(bytes, 8))
        else {
            return Err(ParseError(format!("{} trailing bytes", bytes.len())));
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len < NLMSG_HDR_BYTES || len > bytes.len() {
            return Err(ParseError(format!(
                "message length {len} with {} bytes left",
                bytes.len()
            )));
        }
        let body = &bytes[NLMSG_HDR_BYTES..len];
        let message = match kind {
            NLMSG_ERROR => {
                let code = le_u32(body, 0).ok_or_else(|| ParseError("short error".into()))?;
                // The kernel sends -errno; 0 is an acknowledgement.
                let errno = (code as i32).wrapping_neg();
                if errno == 0 {
                    Message::Ack { seq }
                } else {
                    Message::Error { seq, errno }
                }
            }
            NLMSG_DONE => Message::Done { seq },
            _ if body.len() < GENL_HDR_BYTES => Message::Other { kind, seq },
            GENL_ID_CTRL if body[0] == CTRL_CMD_NEWFAMILY => {
                parse_family(seq, &body[GENL_HDR_BYTES..])?
            }
            _ if Some(kind) == nbd_family => parse_nbd(seq, body[0], &body[GENL_HDR_BYTES..])?,
            _ => Message::Other { kind, seq },
        };
        out.push(message);
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
