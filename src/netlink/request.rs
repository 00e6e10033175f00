//! One request and its replies over the `NETLINK_ROUTE` socket: sending, collecting replies up to
//! the ACK, NACK or `NLMSG_DONE`, repeating interrupted dumps, reading the extended ACK, and
//! turning failures into `io::Error`s that name the operation.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use netlink_packet_core::{
    parse_u32, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::libc;

/// How often a dump interrupted by concurrent changes (`NLM_F_DUMP_INTR`) is retried.
const DUMP_ATTEMPTS: usize = 3;

/// `NLMSGERR_ATTR_MSG` (`linux/netlink.h`): the extended ACK's human-readable error string.
pub(super) const NLMSGERR_ATTR_MSG: u16 = 1;

/// Length of `struct nlmsghdr`, all that a capped (`NETLINK_CAP_ACK`) NACK echoes of the request.
pub(super) const NLMSG_HEADER_LEN: usize = 16;

/// A failed operation: what was attempted, the errno, and the kernel's extended ACK text.
#[derive(Debug)]
pub(super) struct OpError {
    what: String,
    pub(super) errno: i32,
    ext_ack: Option<String>,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = io::Error::from_raw_os_error(self.errno);
        write!(f, "{}: {os}", self.what)?;
        match &self.ext_ack {
            Some(text) => write!(f, ": {text}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for OpError {}

/// Why a request failed, before it is given the operation's description.
#[derive(Debug)]
pub(super) enum Failure {
    /// The kernel answered with this (positive) errno.
    Kernel { errno: i32, ext_ack: Option<String> },
    /// The socket failed, or a reply could not be decoded.
    Local(io::Error),
}

impl Failure {
    /// The kernel's errno, if the kernel refused the request.
    pub(super) fn kernel_errno(&self) -> Option<i32> {
        match self {
            Failure::Kernel { errno, .. } => Some(*errno),
            Failure::Local(_) => None,
        }
    }

    /// The `io::Error` for callers: `what` followed by the cause.
    pub(super) fn into_io(self, what: String) -> io::Error {
        let (errno, ext_ack) = match self {
            Failure::Kernel { errno, ext_ack } => (errno, ext_ack),
            Failure::Local(e) => match e.raw_os_error() {
                Some(errno) => (errno, None),
                None => return io::Error::new(e.kind(), format!("{what}: {e}")),
            },
        };
        let kind = io::Error::from_raw_os_error(errno).kind();
        io::Error::new(
            kind,
            OpError {
                what,
                errno,
                ext_ack,
            },
        )
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Local(e)
    }
}

/// `Ok` also when the kernel answered with one of `tolerated` (e.g. deleting what is gone).
pub(super) fn tolerate(result: Result<(), Failure>, tolerated: &[i32]) -> Result<(), Failure> {
    match result {
        Err(f) if f.kernel_errno().is_some_and(|e| tolerated.contains(&e)) => Ok(()),
        other => other,
    }
}

/// Kernel replies to one request.
pub(super) struct Replies {
    /// The inner (rtnetlink) messages, in order.
    pub(super) messages: Vec<RouteNetlinkMessage>,
    /// Some part of a dump carried `NLM_F_DUMP_INTR`: the dump may be inconsistent.
    interrupted: bool,
}

/// A synchronous rtnetlink (`NETLINK_ROUTE`) connection; see the module doc for the contract.
#[derive(Debug)]
pub(crate) struct Netlink {
    socket: Socket,
    /// Sequence number of the last request sent (one per request).
    pub(super) seq: u32,
    /// Interface names for error messages: those of the links looked up or listed, and those
    /// callers gave with [`Netlink::name_link`].
    names: BTreeMap<u32, String>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub(crate) fn new() -> io::Result<Netlink> {
        let opening =
            |e: io::Error| io::Error::new(e.kind(), format!("opening rtnetlink socket: {e}"));
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(opening)?;
        socket.bind_auto().map_err(opening)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(opening)?;
        // Extended ACKs (Linux 4.12) add the kernel's reason to EINVAL-style errors; capped ACKs
        // (4.3) keep NACKs small. Older kernels work without them, only with terser errors.
        if let Err(e) = socket.set_ext_ack(true) {
            tracing::debug!("rtnetlink: no extended ACKs: {e}");
        }
        if let Err(e) = socket.set_cap_ack(true) {
            tracing::debug!("rtnetlink: no capped ACKs: {e}");
        }
        Ok(Netlink {
            socket,
            seq: 0,
            names: BTreeMap::new(),
        })
    }

    /// A change request that returns nothing but the kernel's ACK.
    pub(super) fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), Failure> {
        self.exec(msg, flags | NLM_F_ACK).map(drop)
    }

    /// A dump request; repeated while the kernel reports it as interrupted.
    pub(super) fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        for _ in 1..DUMP_ATTEMPTS {
            let replies = self.exec(msg.clone(), NLM_F_DUMP)?;
            if !replies.interrupted {
                return Ok(replies.messages);
            }
        }
        let replies = self.exec(msg, NLM_F_DUMP)?;
        if replies.interrupted {
            return Err(Failure::Local(io::Error::new(
                io::ErrorKind::Interrupted,
                format!("dump interrupted by concurrent changes {DUMP_ATTEMPTS} times"),
            )));
        }
        Ok(replies.messages)
    }

    /// Sends `msg` and collects the replies up to the ACK, NACK or `NLMSG_DONE` for it.
    pub(super) fn exec(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Replies, Failure> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut replies = Replies {
            messages: Vec::new(),
            interrupted: false,
        };
        // A reply that fails to decode is reported, but only after the rest of the answer has
        // been read, so that the next request does not start in the middle of it.
        let mut undecodable: Option<String> = None;
        loop {
            let (datagram, from) = self.socket.recv_from_full()?;
            if from.port_number() != 0 {
                continue; // not from the kernel
            }
            let mut rest = datagram.as_slice();
            while !rest.is_empty() {
                let nl = NetlinkBuffer::new_checked(rest).map_err(|e| bad_reply(&e))?;
                let len = nl.length() as usize;
                let (msg_flags, msg_seq) = (nl.flags(), nl.sequence_number());
                let bytes = &rest[..len];
                rest = rest.get(align4(len)..).unwrap_or_default();
                if msg_seq != seq {
                    continue;
                }
                if msg_flags & NLM_F_DUMP_INTR != 0 {
                    replies.interrupted = true;
                }
                let parsed = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
                    Ok(parsed) => parsed,
                    Err(e) => {
                        undecodable.get_or_insert_with(|| e.to_string());
                        continue;
                    }
                };
                match parsed.payload {
                    NetlinkPayload::InnerMessage(inner) => replies.messages.push(inner),
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => finish(replies, undecodable),
                            Some(code) => Err(Failure::Kernel {
                                errno: code.get().saturating_abs(),
                                ext_ack: ext_ack_text(msg_flags, &err.header),
                            }),
                        };
                    }
                    NetlinkPayload::Done(done) if done.code != 0 => {
                        return Err(Failure::Kernel {
                            errno: done.code.saturating_abs(),
                            ext_ack: None,
                        });
                    }
                    NetlinkPayload::Done(_) => return finish(replies, undecodable),
                    NetlinkPayload::Overrun(_) => {
                        return Err(Failure::Local(io::Error::from_raw_os_error(libc::ENOBUFS)));
                    }
                    _ => {} // NLMSG_NOOP
                }
            }
        }
    }

    /// Names interface `index` in this connection's error messages (for interfaces it has not
    /// looked up or listed itself, such as the underlay).
    pub(crate) fn name_link(&mut self, index: u32, name: &str) {
        self.names.insert(index, name.to_string());
    }

    /// Remembers the name of a link the kernel reported.
    pub(super) fn learn_name(&mut self, index: u32, name: &str) {
        if !name.is_empty() && self.names.get(&index).is_none_or(|n| n != name) {
            self.names.insert(index, name.to_string());
        }
    }

    /// Forgets interface `index` (deleted).
    pub(super) fn forget_name(&mut self, index: u32) {
        self.names.remove(&index);
    }

    /// The interface's name for messages: the one this connection knows, else `ifindex N` (or
    /// `none` for 0). Never asks the kernel.
    pub(super) fn dev_name(&self, index: u32) -> String {
        match (index, self.names.get(&index)) {
            (0, _) => "none".to_string(),
            (_, Some(name)) => name.clone(),
            (_, None) => format!("ifindex {index}"),
        }
    }
}

/// The collected replies, unless one of them could not be decoded.
fn finish(replies: Replies, undecodable: Option<String>) -> Result<Replies, Failure> {
    match undecodable {
        None => Ok(replies),
        Some(e) => Err(Failure::Local(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("undecodable reply: {e}"),
        ))),
    }
}

/// A reply datagram whose netlink framing is broken.
fn bad_reply(e: &impl fmt::Display) -> Failure {
    Failure::Local(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed netlink reply: {e}"),
    ))
}

/// Netlink messages are padded to 4 bytes (`NLMSG_ALIGN`).
pub(super) fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The `NLMSGERR_ATTR_MSG` text of a NACK, whose payload after the errno is `after_code`.
pub(super) fn ext_ack_text(flags: u16, after_code: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // The NACK echoes the request: its header only when capped, else the whole message.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HEADER_LEN
    } else {
        parse_u32(after_code.get(..4)?).ok()? as usize
    };
    let tlvs = after_code.get(align4(echoed)..)?;
    NlasIterator::new(tlvs)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let text = String::from_utf8_lossy(nla.value());
            text.trim_end_matches('\0').to_string()
        })
        .filter(|text| !text.is_empty())
}
