//! The netlink sockets: one for requests (send, then read until the kernel acknowledges), one
//! per supervisor subscribed to the `nbd` multicast group. Bytes come from and go to
//! [`crate::netlink`]; this module only moves them.

use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;

use crate::error::Error;
use crate::netlink::{
    self, ConnectParams, DeviceStatus, FamilyInfo, Message, NBD_FAMILY_NAME, NBD_MCAST_GROUP_NAME,
    Request,
};

/// Largest datagram read from the kernel (a status answer for many devices fits).
const RECV_BYTES_MAX: usize = 64 * 1024;
/// Datagrams read while waiting for one acknowledgement before giving up: the kernel answers
/// each request with at most a reply and an ack, so anything past this is a bug or a flood.
const DATAGRAMS_PER_REQUEST_MAX: usize = 1024;

fn netlink_error(what: &str, error: impl std::fmt::Display) -> Error {
    Error::Netlink(format!("{what}: {error}"))
}

/// A request socket bound to the `nbd` family.
pub struct Kernel {
    socket: NlSocket,
    family: FamilyInfo,
    seq: u32,
}

impl Kernel {
    /// Opens a netlink socket and looks the `nbd` family up; [`Error::NoNbdModule`] if the
    /// driver is not loaded.
    pub fn open() -> Result<Self, Error> {
        let socket = NlSocket::connect(NlFamily::Generic, None, Groups::empty())
            .map_err(|e| netlink_error("open generic netlink socket", e))?;
        let mut kernel = Kernel {
            socket,
            family: FamilyInfo {
                id: 0,
                mcast_groups: Vec::new(),
            },
            seq: 0,
        };
        let replies =
            kernel.transact("family lookup", &Request::GetFamily(NBD_FAMILY_NAME.into()))?;
        kernel.family = replies
            .into_iter()
            .find_map(|message| match message {
                Message::Family { info, .. } => Some(info),
                _ => None,
            })
            .ok_or(Error::NoNbdModule)?;
        Ok(kernel)
    }

    /// Sends `request` and returns the messages answering it, up to its acknowledgement.
    fn transact(&mut self, op: &'static str, request: &Request) -> Result<Vec<Message>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = request.encode(self.family.id, seq, 0);
        self.socket
            .send(&bytes, Msg::empty())
            .map_err(|e| netlink_error(op, e))?;
        let mut answers = Vec::new();
        let mut buffer = vec![0u8; RECV_BYTES_MAX];
        for _ in 0..DATAGRAMS_PER_REQUEST_MAX {
            let (len, _) = self
                .socket
                .recv(&mut buffer[..], Msg::empty())
                .map_err(|e| netlink_error(op, e))?;
            let family = (self.family.id != 0).then_some(self.family.id);
            let messages = netlink::parse(&buffer[..len.min(buffer.len())], family)
                .map_err(|e| netlink_error(op, e))?;
            for message in messages {
                match message {
                    Message::Ack { seq: s } if s == seq => return Ok(answers),
                    Message::Error { seq: s, errno } if s == seq => {
                        return Err(Error::from_errno(op, errno));
                    }
                    Message::Family { seq: s, .. }
                    | Message::Connected { seq: s, .. }
                    | Message::Status { seq: s, .. }
                        if s == seq =>
                    {
                        answers.push(message);
                    }
                    other => tracing::debug!(%other, "netlink message for another request"),
                }
            }
        }
        Err(netlink_error(op, "no acknowledgement from the kernel"))
    }

    /// `NBD_CMD_CONNECT`; returns the device index the kernel used.
    pub fn connect(&mut self, params: ConnectParams) -> Result<u32, Error> {
        let wanted = params.index;
        let answers = self.transact("connect", &Request::Connect(params))?;
        answers
            .into_iter()
            .find_map(|message| match message {
                Message::Connected { index, .. } => Some(index),
                _ => None,
            })
            .or(wanted)
            .ok_or_else(|| netlink_error("connect", "the kernel did not say which device"))
    }

    /// `NBD_CMD_DISCONNECT`.
    pub fn disconnect(&mut self, index: u32) -> Result<(), Error> {
        self.transact("disconnect", &Request::Disconnect { index })
            .map(drop)
    }

    /// `NBD_CMD_RECONFIGURE` with replacement sockets for dead connections.
    pub fn reconfigure(&mut self, index: u32, sockets: Vec<u32>) -> Result<(), Error> {
        self.transact("reconfigure", &Request::Reconfigure { index, sockets })
            .map(drop)
    }

    /// `NBD_CMD_STATUS` of one device or all.
    pub fn status(&mut self, index: Option<u32>) -> Result<Vec<DeviceStatus>, Error> {
        let answers = self.transact("status", &Request::Status { index })?;
        Ok(answers
            .into_iter()
            .flat_map(|message| match message {
                Message::Status { devices, .. } => devices,
                _ => Vec::new(),
            })
            .collect())
    }

    /// A socket subscribed to the family's multicast group, for link-dead notifications.
    pub fn subscribe(&self) -> Result<Notifications, Error> {
        let group = self
            .family
            .mcast_groups
            .iter()
            .find(|(name, _)| name == NBD_MCAST_GROUP_NAME)
            .map(|(_, id)| *id)
            .ok_or_else(|| netlink_error("subscribe", "the nbd family has no multicast group"))?;
        let socket = NlSocket::connect(NlFamily::Generic, None, Groups::empty())
            .map_err(|e| netlink_error("open multicast socket", e))?;
        socket
            .add_mcast_membership(Groups::new_groups(&[group]))
            .map_err(|e| netlink_error("join nbd_mc_group", e))?;
        Ok(Notifications {
            socket,
            family: self.family.id,
        })
    }
}

/// The multicast side: blocking reads of link-dead notifications.
pub struct Notifications {
    socket: NlSocket,
    family: u16,
}

impl Notifications {
    /// Blocks until the kernel multicasts; returns the device indexes reported dead.
    pub fn recv(&self) -> Result<Vec<u32>, Error> {
        let mut buffer = vec![0u8; RECV_BYTES_MAX];
        let (len, _) = self
            .socket
            .recv(&mut buffer[..], Msg::empty())
            .map_err(|e| netlink_error("multicast receive", e))?;
        let messages = netlink::parse(&buffer[..len.min(buffer.len())], Some(self.family))
            .map_err(|e| netlink_error("multicast receive", e))?;
        Ok(messages
            .into_iter()
            .filter_map(|message| match message {
                Message::LinkDead { index } => Some(index),
                _ => None,
            })
            .collect())
    }
}
