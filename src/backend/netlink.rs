//! Kernel networking state through rtnetlink: the synchronous layer the kernel backends (vxlan,
//! host-gw) use to program links, IPv4 addresses, neighbours, FDB entries and main-table routes.
//!
//! # Contract
//! * One [`Netlink`] owns one `NETLINK_ROUTE` socket, bound in the network namespace of the thread
//!   that called [`Netlink::new`]. Every call sends one request and blocks until the kernel has
//!   answered it: an ACK (or NACK) for changes, `NLMSG_DONE` for dumps. Replies carrying another
//!   sequence number (leftovers of an earlier failed call) or coming from a non-kernel port are
//!   skipped. A dump the kernel marks `NLM_F_DUMP_INTR` (changed while dumping) is repeated.
//! * Messages are built and parsed by `netlink-packet-route`; nothing here runs `ip`.
//! * Errors are `io::Error`s whose message names the operation and the object, e.g.
//!   `replacing route 10.1.16.0/24 via 192.0.2.2 dev eth0 proto 153: Network is unreachable
//!   (os error 101): Nexthop has invalid gateway` (the last part is the kernel's extended ACK
//!   text, when it sends one). Their `kind()` is the errno's kind (`io::Error::raw_os_error` is
//!   `None` for an error with a message; the tests read the errno itself).
//! * Deletes are idempotent: deleting what is already gone is `Ok` (`ENOENT`/`ESRCH`/
//!   `EADDRNOTAVAIL`), and so is adding an address that is already there (`EEXIST`).
//! * IPv4 only, main routing table only (flannel-compat §6, §7).

use std::fmt;
use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{
    parse_u32, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::libc;

/// Route protocol (`rtm_protocol`) weft tags its host-gw and `DirectRouting` routes with, so that a
/// restarted daemon can find and remove the stale ones: 0x99 (153). The kernel interprets only
/// 0..=4; `rtnetlink.h` and iproute2's `rt_protos` name 8..=18, 42 (babel), 99 (openr) and
/// 186..=192, FRR adds 190/191 and 193..=198, Calico uses 80. `ip route` shows it as `proto 153`.
pub(crate) const RTPROT_WEFT: u8 = 0x99;

/// Destination UDP port of a vxlan device created without `IFLA_VXLAN_PORT` (the vxlan module's
/// `udp_port` parameter, the pre-IANA Linux port); flannel relies on it when `Port` is 0.
pub(crate) const VXLAN_DEFAULT_PORT: u16 = 8472;

/// How often a dump interrupted by concurrent changes (`NLM_F_DUMP_INTR`) is retried.
const DUMP_ATTEMPTS: usize = 3;

/// `NLMSGERR_ATTR_MSG` (`linux/netlink.h`): the extended ACK's human-readable error string.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Length of `struct nlmsghdr`, all that a capped (`NETLINK_CAP_ACK`) NACK echoes of the request.
const NLMSG_HEADER_LEN: usize = 16;

/// A network interface as `RTM_GETLINK` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    /// Interface index.
    pub(crate) index: u32,
    /// Interface name (`IFLA_IFNAME`).
    pub(crate) name: String,
    /// `IFLA_INFO_KIND` ("vxlan", "tun", "veth", ...); `None` for devices without rtnl link ops.
    pub(crate) kind: Option<String>,
    /// Hardware address, when it is an Ethernet (6-byte) one.
    pub(crate) mac: Option<[u8; 6]>,
    /// MTU in bytes.
    pub(crate) mtu: u32,
    /// Administratively up (`IFF_UP`), regardless of carrier.
    pub(crate) up: bool,
    /// The vxlan configuration, for `kind == Some("vxlan")`.
    pub(crate) vxlan: Option<VxlanAttrs>,
}

/// The vxlan attributes that decide whether an existing device can be reused (flannel-compat §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VxlanAttrs {
    /// VXLAN network identifier (`IFLA_VXLAN_ID`).
    pub(crate) vni: u32,
    /// Source address of encapsulated packets (`IFLA_VXLAN_LOCAL`); `None` when unset.
    pub(crate) local: Option<Ipv4Addr>,
    /// Underlay interface index (`IFLA_VXLAN_LINK`); `None` when unset (the kernel omits 0).
    pub(crate) link: Option<u32>,
    /// Destination UDP port (`IFLA_VXLAN_PORT`, host order).
    pub(crate) port: u16,
    /// Source-MAC learning (`IFLA_VXLAN_LEARNING`).
    pub(crate) learning: bool,
    /// Group Based Policy extension (`IFLA_VXLAN_GBP`).
    pub(crate) gbp: bool,
}

impl VxlanAttrs {
    /// Whether a device with these attributes is what `spec` would create (MTU, MAC and name aside).
    pub(crate) fn matches(&self, spec: &VxlanSpec) -> bool {
        self.vni == spec.vni
            && self.local == Some(spec.local)
            && self.link == Some(spec.underlay_index).filter(|&i| i != 0)
            && self.port == spec.port.unwrap_or(VXLAN_DEFAULT_PORT)
            && self.learning == spec.learning
            && self.gbp == spec.gbp
    }
}

/// A vxlan device to create, as flannel creates `flannel.<VNI>` (flannel-compat §6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VxlanSpec {
    /// Device name, e.g. `flannel.1`.
    pub(crate) name: String,
    /// VXLAN network identifier.
    pub(crate) vni: u32,
    /// Local (public) address used as the outer source.
    pub(crate) local: Ipv4Addr,
    /// Interface index of the underlay (external) interface; 0 sends no `IFLA_VXLAN_LINK`.
    pub(crate) underlay_index: u32,
    /// Destination UDP port; `None` leaves it to the kernel default ([`VXLAN_DEFAULT_PORT`]).
    pub(crate) port: Option<u16>,
    /// Enable the Group Based Policy extension.
    pub(crate) gbp: bool,
    /// Enable source-MAC learning (flannel: off).
    pub(crate) learning: bool,
    /// Device MTU.
    pub(crate) mtu: u32,
    /// Hardware address; `None` lets the kernel pick a random one.
    pub(crate) mac: Option<[u8; 6]>,
}

/// An IPv4 unicast route in the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteSpec {
    /// Destination network address.
    pub(crate) dst: Ipv4Addr,
    /// Destination prefix length.
    pub(crate) prefix: u8,
    /// Next hop; `None` for a directly connected (scope link) route.
    pub(crate) gateway: Option<Ipv4Addr>,
    /// Output interface index; 0 = unspecified (lets a delete match any).
    pub(crate) oif: u32,
    /// `RTNH_F_ONLINK`: the gateway is on the link even though no prefix says so.
    pub(crate) onlink: bool,
    /// `rtm_protocol`; 0 in a delete matches any protocol.
    pub(crate) protocol: u8,
}

/// The errno inside an error returned by this module (or any `io::Error` made from an errno).
#[cfg(test)]
pub(crate) fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<OpError>())
            .map(|op| op.errno)
    })
}

/// A failed operation: what was attempted, the errno, and the kernel's extended ACK text.
#[derive(Debug)]
struct OpError {
    what: String,
    errno: i32,
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
enum Failure {
    /// The kernel answered with this (positive) errno.
    Kernel { errno: i32, ext_ack: Option<String> },
    /// The socket failed, or a reply could not be decoded.
    Local(io::Error),
}

impl Failure {
    /// The kernel's errno, if the kernel refused the request.
    fn kernel_errno(&self) -> Option<i32> {
        match self {
            Failure::Kernel { errno, .. } => Some(*errno),
            Failure::Local(_) => None,
        }
    }

    /// The `io::Error` for callers: `what` followed by the cause.
    fn into_io(self, what: String) -> io::Error {
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
fn tolerate(result: Result<(), Failure>, tolerated: &[i32]) -> Result<(), Failure> {
    match result {
        Err(f) if f.kernel_errno().is_some_and(|e| tolerated.contains(&e)) => Ok(()),
        other => other,
    }
}

/// Kernel replies to one request.
struct Replies {
    /// The inner (rtnetlink) messages, in order.
    messages: Vec<RouteNetlinkMessage>,
    /// Some part of a dump carried `NLM_F_DUMP_INTR`: the dump may be inconsistent.
    interrupted: bool,
}

/// A synchronous rtnetlink (`NETLINK_ROUTE`) connection; see the module doc for the contract.
#[derive(Debug)]
pub(crate) struct Netlink {
    socket: Socket,
    seq: u32,
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
        Ok(Netlink { socket, seq: 0 })
    }

    // ---- links ----

    /// The link called `name`, or `None` if there is none.
    pub(crate) fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg)
            .map_err(|f| f.into_io(format!("looking up link {name}")))
    }

    /// The link with interface index `index`, or `None` if there is none.
    pub(crate) fn link_by_index(&mut self, index: u32) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg)
            .map_err(|f| f.into_io(format!("looking up link ifindex {index}")))
    }

    /// All links of the namespace.
    pub(crate) fn links(&mut self) -> io::Result<Vec<Link>> {
        let messages = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .map_err(|f| f.into_io("listing links".to_string()))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(parse_link(link)),
                _ => None,
            })
            .collect())
    }

    /// Creates a vxlan device as flannel does (flannel-compat §6.1); `EEXIST` if the name is taken.
    pub(crate) fn add_vxlan(&mut self, spec: &VxlanSpec) -> io::Result<()> {
        let mut data = vec![InfoVxlan::Id(spec.vni), InfoVxlan::Local(spec.local)];
        if spec.underlay_index != 0 {
            data.push(InfoVxlan::Link(spec.underlay_index));
        }
        if let Some(port) = spec.port {
            data.push(InfoVxlan::Port(port)); // emitted big-endian, as the kernel expects
        }
        data.push(InfoVxlan::Learning(spec.learning));
        if spec.gbp {
            data.push(InfoVxlan::Gbp);
        }
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.clone()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        if let Some(mac) = spec.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        let result = self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL);
        result.map_err(|f| {
            let dev = self.dev_name(spec.underlay_index);
            let port = spec.port.unwrap_or(VXLAN_DEFAULT_PORT);
            f.into_io(format!(
                "creating vxlan device {} (vni {}, local {}, dev {dev}, dstport {port})",
                spec.name, spec.vni, spec.local
            ))
        })
    }

    /// Deletes the link with interface index `index`.
    pub(crate) fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let what = format!("deleting link {}", self.dev_name(index));
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack(RouteNetlinkMessage::DelLink(msg), 0)
            .map_err(|f| f.into_io(what))
    }

    /// Sets `IFF_UP` on the link.
    pub(crate) fn set_link_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        let result = self.ack(RouteNetlinkMessage::SetLink(msg), 0);
        result.map_err(|f| f.into_io(format!("setting link {} up", self.dev_name(index))))
    }

    /// Sets the link's MTU.
    pub(crate) fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        let result = self.ack(RouteNetlinkMessage::SetLink(msg), 0);
        result.map_err(|f| f.into_io(format!("setting mtu {mtu} on {}", self.dev_name(index))))
    }

    // ---- addresses ----

    /// The IPv4 addresses (with prefix length) of the link.
    pub(crate) fn addresses(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let result = self.dump(RouteNetlinkMessage::GetAddress(msg));
        let messages = result
            .map_err(|f| f.into_io(format!("listing addresses of {}", self.dev_name(index))))?;
        let mut out = Vec::new();
        for m in messages {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index || a.header.family != AddressFamily::Inet {
                continue;
            }
            // For IPv4, IFA_LOCAL is the interface's own address; IFA_ADDRESS differs from it
            // only on point-to-point links, where it is the peer.
            let (mut local, mut address) = (None, None);
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(std::net::IpAddr::V4(ip)) => local = Some(*ip),
                    AddressAttribute::Address(std::net::IpAddr::V4(ip)) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                out.push((ip, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Adds `addr/prefix` to the link; already present is `Ok`.
    pub(crate) fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let msg = address_message(index, addr, prefix);
        let result = self.ack(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        );
        tolerate(result, &[libc::EEXIST]).map_err(|f| {
            f.into_io(format!(
                "adding address {addr}/{prefix} to {}",
                self.dev_name(index)
            ))
        })
    }

    /// Removes `addr/prefix` from the link; already absent is `Ok`.
    pub(crate) fn delete_address(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> io::Result<()> {
        let msg = address_message(index, addr, prefix);
        let result = self.ack(RouteNetlinkMessage::DelAddress(msg), 0);
        tolerate(result, &[libc::EADDRNOTAVAIL]).map_err(|f| {
            f.into_io(format!(
                "deleting address {addr}/{prefix} from {}",
                self.dev_name(index)
            ))
        })
    }

    // ---- neighbours and FDB ----

    /// `ip neigh replace IP lladdr MAC dev X nud permanent` (flannel-compat §6.2 step 1).
    /// The kernel flushes a device's neighbours, permanent ones too, when it goes down.
    pub(crate) fn replace_neigh(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> io::Result<()> {
        let mut msg = neigh_message(AddressFamily::Inet, index, ip);
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        let result = self.ack(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        );
        result.map_err(|f| {
            let dev = self.dev_name(index);
            f.into_io(format!(
                "replacing neighbour {ip} lladdr {} dev {dev}",
                Mac(mac)
            ))
        })
    }

    /// `ip neigh del IP dev X`; already absent is `Ok`.
    pub(crate) fn delete_neigh(&mut self, index: u32, ip: Ipv4Addr) -> io::Result<()> {
        let msg = neigh_message(AddressFamily::Inet, index, ip);
        let result = self.ack(RouteNetlinkMessage::DelNeighbour(msg), 0);
        tolerate(result, &[libc::ENOENT]).map_err(|f| {
            f.into_io(format!(
                "deleting neighbour {ip} dev {}",
                self.dev_name(index)
            ))
        })
    }

    /// `bridge fdb replace MAC dev X dst DST self permanent` (flannel-compat §6.2 step 2).
    /// The vxlan driver wants `NTF_SELF` (else `EOPNOTSUPP`), `NDA_DST` and a permanent or
    /// reachable state (else `EINVAL`); permanent entries survive the device going down.
    pub(crate) fn replace_fdb(
        &mut self,
        index: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> io::Result<()> {
        let mut msg = fdb_message(index, mac, dst);
        msg.header.state = NeighbourState::Permanent;
        let result = self.ack(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        );
        result.map_err(|f| {
            let dev = self.dev_name(index);
            f.into_io(format!(
                "replacing fdb entry {} dev {dev} dst {dst}",
                Mac(mac)
            ))
        })
    }

    /// `bridge fdb del MAC dev X dst DST self`; already absent (or lacking that remote) is `Ok`.
    pub(crate) fn delete_fdb(&mut self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> io::Result<()> {
        let msg = fdb_message(index, mac, dst);
        let result = self.ack(RouteNetlinkMessage::DelNeighbour(msg), 0);
        tolerate(result, &[libc::ENOENT]).map_err(|f| {
            let dev = self.dev_name(index);
            f.into_io(format!(
                "deleting fdb entry {} dev {dev} dst {dst}",
                Mac(mac)
            ))
        })
    }

    /// The IPv4 neighbours of the link that have a hardware address.
    pub(crate) fn neighbours(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, [u8; 6])>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        let result = self.dump(RouteNetlinkMessage::GetNeighbour(msg));
        let messages = result
            .map_err(|f| f.into_io(format!("listing neighbours of {}", self.dev_name(index))))?;
        let mut out = Vec::new();
        for m in messages {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index || n.header.family != AddressFamily::Inet {
                continue;
            }
            let (mut ip, mut mac) = (None, None);
            for attr in &n.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac6(l),
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push((ip, mac));
            }
        }
        Ok(out)
    }

    /// The bridge FDB entries of the link: MAC and, for vxlan remotes, the IPv4 destination.
    pub(crate) fn fdb(&mut self, index: u32) -> io::Result<Vec<([u8; 6], Option<Ipv4Addr>)>> {
        // A bare ndmsg is the legacy form of the AF_BRIDGE dump request: the kernel dumps the
        // FDB of every device (it filters only on an ifinfomsg header), so filter here.
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        let result = self.dump(RouteNetlinkMessage::GetNeighbour(msg));
        let messages =
            result.map_err(|f| f.into_io(format!("listing fdb of {}", self.dev_name(index))))?;
        let mut out = Vec::new();
        for m in messages {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index || n.header.family != AddressFamily::Bridge {
                continue;
            }
            let (mut dst, mut mac) = (None, None);
            for attr in &n.attributes {
                match attr {
                    NeighbourAttribute::Destination(a) => dst = neighbour_ipv4(a),
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac6(l),
                    _ => {}
                }
            }
            if let Some(mac) = mac {
                out.push((mac, dst));
            }
        }
        Ok(out)
    }

    // ---- routes ----

    /// `ip route replace` of an IPv4 unicast route in the main table.
    pub(crate) fn replace_route(&mut self, r: &RouteSpec) -> io::Result<()> {
        let mut msg = route_message(r);
        msg.header.scope = if r.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        let result = self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        );
        result.map_err(|f| f.into_io(format!("replacing route {}", self.describe_route(r))))
    }

    /// `ip route del`; matches on what `r` sets (protocol 0, oif 0, no gateway match any).
    /// Already absent is `Ok`.
    pub(crate) fn delete_route(&mut self, r: &RouteSpec) -> io::Result<()> {
        let mut msg = route_message(r);
        // RT_SCOPE_NOWHERE matches a route of any scope in fib_table_delete(), as `ip route del`.
        msg.header.scope = RouteScope::NoWhere;
        let result = self.ack(RouteNetlinkMessage::DelRoute(msg), 0);
        tolerate(result, &[libc::ENOENT, libc::ESRCH])
            .map_err(|f| f.into_io(format!("deleting route {}", self.describe_route(r))))
    }

    /// The IPv4 unicast routes of the main table, only those of `protocol` when it is `Some`.
    /// Multipath routes are listed with no gateway and oif 0.
    pub(crate) fn routes(&mut self, protocol: Option<u8>) -> io::Result<Vec<RouteSpec>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let messages = self
            .dump(RouteNetlinkMessage::GetRoute(msg))
            .map_err(|f| f.into_io("listing routes".to_string()))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .filter(|r| {
                r.header.address_family == AddressFamily::Inet
                    && r.header.kind == RouteType::Unicast
                    && route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
                    && protocol.is_none_or(|p| u8::from(r.header.protocol) == p)
            })
            .map(|r| parse_route(&r))
            .collect())
    }

    /// `ip route get DST`: the route the kernel would use; `gateway` is `None` when on-link.
    pub(crate) fn route_get(&mut self, dst: Ipv4Addr) -> io::Result<RouteSpec> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 32;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        let what = || format!("looking up route to {dst}");
        let replies = self
            .exec(RouteNetlinkMessage::GetRoute(msg), NLM_F_ACK)
            .map_err(|f| f.into_io(what()))?;
        replies
            .messages
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(parse_route(&r)),
                _ => None,
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: no route in the reply", what()),
                )
            })
    }

    // ---- request machinery ----

    /// One `RTM_GETLINK` for a single link; `ENODEV` becomes `None`.
    fn get_link(&mut self, msg: LinkMessage) -> Result<Option<Link>, Failure> {
        match self.exec(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK) {
            Ok(replies) => Ok(replies.messages.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(parse_link(link)),
                _ => None,
            })),
            Err(f) if f.kernel_errno() == Some(libc::ENODEV) => Ok(None),
            Err(f) => Err(f),
        }
    }

    /// A change request that returns nothing but the kernel's ACK.
    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), Failure> {
        self.exec(msg, flags | NLM_F_ACK).map(drop)
    }

    /// A dump request; repeated while the kernel reports it as interrupted.
    fn dump(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, Failure> {
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
    fn exec(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<Replies, Failure> {
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

    /// The interface's name for messages, `ifindex N` if it has none (or `none` for 0).
    fn dev_name(&mut self, index: u32) -> String {
        if index == 0 {
            return "none".to_string();
        }
        match self.link_by_index(index) {
            Ok(Some(link)) => link.name,
            _ => format!("ifindex {index}"),
        }
    }

    /// `10.1.16.0/24 via 192.0.2.2 dev eth0 onlink proto 153`, as `ip route` prints it.
    fn describe_route(&mut self, r: &RouteSpec) -> String {
        let dev = (r.oif != 0).then(|| self.dev_name(r.oif));
        let mut s = format!("{}/{}", r.dst, r.prefix);
        if let Some(gw) = r.gateway {
            s.push_str(" via ");
            s.push_str(&gw.to_string());
        }
        if let Some(dev) = dev {
            s.push_str(" dev ");
            s.push_str(&dev);
        }
        if r.onlink {
            s.push_str(" onlink");
        }
        if r.protocol != 0 {
            s.push_str(" proto ");
            s.push_str(&r.protocol.to_string());
        }
        s
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
fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The `NLMSGERR_ATTR_MSG` text of a NACK, whose payload after the errno is `after_code`.
fn ext_ack_text(flags: u16, after_code: &[u8]) -> Option<String> {
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

/// The fields of a `RTM_NEWLINK` reply that [`Link`] keeps.
fn parse_link(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        vxlan: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Address(mac) => link.mac = mac6(&mac),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            link.vxlan = Some(parse_vxlan(&data));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// The [`VxlanAttrs`] in an `IFLA_INFO_DATA` of kind vxlan.
fn parse_vxlan(data: &[InfoVxlan]) -> VxlanAttrs {
    let mut attrs = VxlanAttrs {
        vni: 0,
        local: None,
        link: None,
        port: VXLAN_DEFAULT_PORT,
        // The kernel always reports IFLA_VXLAN_LEARNING; learning is its default when unset.
        learning: true,
        gbp: false,
    };
    for attr in data {
        match *attr {
            InfoVxlan::Id(vni) => attrs.vni = vni,
            InfoVxlan::Local(ip) => attrs.local = Some(ip),
            InfoVxlan::Link(index) => attrs.link = Some(index).filter(|&i| i != 0),
            InfoVxlan::Port(port) => attrs.port = port,
            InfoVxlan::Learning(on) => attrs.learning = on,
            InfoVxlan::Gbp => attrs.gbp = true,
            _ => {}
        }
    }
    attrs
}

/// An `RTM_NEWADDR`/`RTM_DELADDR` body for an IPv4 address.
fn address_message(index: u32, addr: Ipv4Addr, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr.into()));
    msg.attributes.push(AddressAttribute::Address(addr.into()));
    msg
}

/// A neighbour message for `ip` on the link (state and lladdr left to the caller).
fn neigh_message(family: AddressFamily, index: u32, ip: Ipv4Addr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = index;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    msg
}

/// An `AF_BRIDGE`, `NTF_SELF` neighbour message: the vxlan driver's own FDB, not a bridge's.
fn fdb_message(index: u32, mac: [u8; 6], dst: Ipv4Addr) -> NeighbourMessage {
    let mut msg = neigh_message(AddressFamily::Bridge, index, dst);
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg
}

/// An `RTM_NEWROUTE`/`RTM_DELROUTE` body for `r` in the main table (scope left to the caller).
fn route_message(r: &RouteSpec) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = r.prefix;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(r.protocol);
    msg.header.kind = RouteType::Unicast;
    if r.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(r.dst)));
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
    }
    if r.oif != 0 {
        msg.attributes.push(RouteAttribute::Oif(r.oif));
    }
    msg
}

/// The route's table: `RTA_TABLE` when present (ids above 255), else `rtm_table`.
fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// The [`RouteSpec`] of an IPv4 `RTM_NEWROUTE`.
fn parse_route(r: &RouteMessage) -> RouteSpec {
    let mut spec = RouteSpec {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix: r.header.destination_prefix_length,
        gateway: None,
        oif: 0,
        onlink: r.header.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(r.header.protocol),
    };
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => spec.dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => spec.gateway = Some(*ip),
            RouteAttribute::Oif(index) => spec.oif = *index,
            _ => {}
        }
    }
    spec
}

/// A 6-byte hardware address, `None` for any other length.
fn mac6(bytes: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(bytes).ok()
}

/// An IPv4 `NDA_DST`, which `AF_BRIDGE` messages carry as raw bytes.
fn neighbour_ipv4(a: &NeighbourAddress) -> Option<Ipv4Addr> {
    match a {
        NeighbourAddress::Inet(ip) => Some(*ip),
        NeighbourAddress::Other(bytes) => <[u8; 4]>::try_from(bytes.as_slice())
            .ok()
            .map(Ipv4Addr::from),
        _ => None,
    }
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
struct Mac([u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    //! Privileged tests run as root, each in a fresh network namespace `weft-nl-<pid>-<n>` that a
    //! guard deletes again (also on panic). Not root: they fail, unless `WEFT_SKIP_PRIVILEGED=1`.
    use super::*;
    use std::fs::File;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    use nix::sched::{setns, CloneFlags};

    static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

    const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const VTEP_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x01, 0x0f, 0x00];
    const PEER_MAC: [u8; 6] = [0x0e, 0x11, 0x22, 0x33, 0x44, 0x55];
    const PEER_MAC2: [u8; 6] = [0x0e, 0x66, 0x77, 0x88, 0x99, 0xaa];

    /// A fresh network namespace, deleted when dropped.
    struct Netns {
        name: String,
    }

    impl Netns {
        /// Creates the namespace, or returns `None` when privileged tests are skipped.
        fn new(test: &str) -> Option<Netns> {
            if !require_root(test) {
                return None;
            }
            let n = NS_COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("weft-nl-{}-{n}", std::process::id());
            cmd("ip", &["netns", "add", &name]);
            Some(Netns { name })
        }

        /// Creates the namespace with veth underlay `ul0` (192.0.2.1/24, up; peer `ul1` up).
        fn with_underlay(test: &str) -> Option<Netns> {
            let ns = Netns::new(test)?;
            ns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
            ns.ip(&["link", "set", "ul0", "up"]);
            ns.ip(&["link", "set", "ul1", "up"]);
            ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "ul0"]);
            Some(ns)
        }

        /// Runs `f` with a [`Netlink`] opened inside the namespace, on a thread that entered it.
        fn run<R: Send>(&self, f: impl FnOnce(&mut Netlink) -> R + Send) -> R {
            let path = format!("/var/run/netns/{}", self.name);
            std::thread::scope(|s| {
                let worker = s.spawn(|| {
                    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                    let mut nl = Netlink::new().expect("netlink socket");
                    f(&mut nl)
                });
                match worker.join() {
                    Ok(r) => r,
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            })
        }

        /// `ip -n <ns> args...`, panicking on failure; returns stdout.
        fn ip(&self, args: &[&str]) -> String {
            let mut all = vec!["-n", self.name.as_str()];
            all.extend_from_slice(args);
            cmd("ip", &all)
        }

        /// `ip netns exec <ns> args...` (for `bridge`), panicking on failure; returns stdout.
        fn exec(&self, args: &[&str]) -> String {
            let mut all = vec!["netns", "exec", self.name.as_str()];
            all.extend_from_slice(args);
            cmd("ip", &all)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            match Command::new("ip")
                .args(["netns", "del", &self.name])
                .output()
            {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "ip netns del {}: {}",
                    self.name,
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("ip netns del {}: {e}", self.name),
            }
        }
    }

    /// Runs a command, panicking with its stderr if it fails; returns stdout.
    fn cmd(program: &str, args: &[&str]) -> String {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `true` = run the privileged test; not root: panics, unless `WEFT_SKIP_PRIVILEGED=1`.
    fn require_root(test: &str) -> bool {
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                // Uid: real effective saved fs
                let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
                line.split_whitespace().nth(2).map(|euid| euid == "0")
            })
            .unwrap_or(false);
        if root {
            return true;
        }
        let reason = "needs root (CAP_NET_ADMIN, and CAP_SYS_ADMIN for network namespaces)";
        if std::env::var("WEFT_SKIP_PRIVILEGED").as_deref() == Ok("1") {
            eprintln!("SKIPPED {test}: {reason} (WEFT_SKIP_PRIVILEGED=1)");
            return false;
        }
        panic!("{test} {reason}; run as root or set WEFT_SKIP_PRIVILEGED=1 to skip it");
    }

    /// flannel's device: `flannel.1`, VNI 1, local 192.0.2.1, dev ul0, default port, nolearning.
    fn flannel_spec(underlay_index: u32) -> VxlanSpec {
        VxlanSpec {
            name: "flannel.1".to_string(),
            vni: 1,
            local: UNDERLAY_IP,
            underlay_index,
            port: None,
            gbp: false,
            learning: false,
            mtu: 1450,
            mac: Some(VTEP_MAC),
        }
    }

    /// Creates flannel's vxlan device on `ul0`, sets it up and returns its index.
    fn flannel_device(nl: &mut Netlink) -> u32 {
        let ul = nl.link_by_name("ul0").unwrap().expect("ul0 exists");
        nl.add_vxlan(&flannel_spec(ul.index)).unwrap();
        let index = nl
            .link_by_name("flannel.1")
            .unwrap()
            .expect("created")
            .index;
        nl.set_link_up(index).unwrap();
        index
    }

    fn errno_of<T: fmt::Debug>(r: io::Result<T>) -> (i32, String) {
        let e = r.expect_err("the kernel should refuse this");
        (errno(&e).expect("errno kept"), e.to_string())
    }

    #[test]
    fn vxlan_device_is_created_and_read_back_as_flannel_does() {
        let ns = Netns::with_underlay("vxlan_device_is_created_and_read_back_as_flannel_does");
        let Some(ns) = ns else {
            return;
        };
        ns.run(|nl| {
            assert_eq!(nl.link_by_name("flannel.1").unwrap(), None);
            let ul = nl.link_by_name("ul0").unwrap().expect("ul0 exists");
            assert_eq!(ul.kind.as_deref(), Some("veth"));
            let spec = flannel_spec(ul.index);
            nl.add_vxlan(&spec).unwrap();

            let link = nl.link_by_name("flannel.1").unwrap().expect("created");
            assert_eq!(link.name, "flannel.1");
            assert_eq!(link.kind.as_deref(), Some("vxlan"));
            assert_eq!(
                link.mac,
                Some(VTEP_MAC),
                "the MAC given at creation is kept"
            );
            assert_eq!(link.mtu, 1450);
            assert!(!link.up);
            let expected = VxlanAttrs {
                vni: 1,
                local: Some(UNDERLAY_IP),
                link: Some(ul.index),
                port: VXLAN_DEFAULT_PORT,
                learning: false,
                gbp: false,
            };
            assert_eq!(link.vxlan, Some(expected));
            assert!(expected.matches(&spec));
            let shown = ns.ip(&["-d", "link", "show", "flannel.1"]);
            for part in [
                "vxlan id 1 local 192.0.2.1 dev ul0",
                "dstport 8472",
                "nolearning",
            ] {
                assert!(shown.contains(part), "{part:?} missing in {shown}");
            }
            assert!(!shown.contains("gbp"), "{shown}");

            let (e, msg) = errno_of(nl.add_vxlan(&spec));
            assert_eq!(e, libc::EEXIST);
            assert_eq!(
                msg,
                "creating vxlan device flannel.1 (vni 1, local 192.0.2.1, dev ul0, dstport 8472): \
                 File exists (os error 17)"
            );

            let spec2 = VxlanSpec {
                name: "vx.2".to_string(),
                vni: 2,
                port: Some(4789),
                gbp: true,
                learning: true,
                mac: None,
                ..spec.clone()
            };
            nl.add_vxlan(&spec2).unwrap();
            let link2 = nl.link_by_name("vx.2").unwrap().expect("created");
            let attrs2 = link2.vxlan.expect("vxlan attributes");
            assert_eq!(
                attrs2,
                VxlanAttrs {
                    vni: 2,
                    local: Some(UNDERLAY_IP),
                    link: Some(ul.index),
                    port: 4789,
                    learning: true,
                    gbp: true,
                }
            );
            assert!(attrs2.matches(&spec2) && !attrs2.matches(&spec));
            assert!(link2.mac.is_some_and(|m| m != VTEP_MAC && m[0] & 0x01 == 0));
            let shown2 = ns.ip(&["-d", "link", "show", "vx.2"]);
            for part in ["vxlan id 2", "dstport 4789", " gbp"] {
                assert!(shown2.contains(part), "{part:?} missing in {shown2}");
            }
            assert!(!shown2.contains("nolearning"), "{shown2}");

            nl.set_mtu(link.index, 1400).unwrap();
            nl.set_link_up(link.index).unwrap();
            let link = nl.link_by_name("flannel.1").unwrap().expect("still there");
            assert!(link.up);
            assert_eq!(link.mtu, 1400);
            assert_eq!(nl.link_by_index(link.index).unwrap().as_ref(), Some(&link));

            let names: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
            for name in ["lo", "ul0", "ul1", "flannel.1", "vx.2"] {
                assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
            }

            nl.delete_link(link.index).unwrap();
            nl.delete_link(link2.index).unwrap();
            assert_eq!(nl.link_by_name("flannel.1").unwrap(), None);
            let names: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
            assert!(!names.iter().any(|n| n == "flannel.1" || n == "vx.2"));
            let (e, msg) = errno_of(nl.delete_link(link.index));
            assert_eq!(e, libc::ENODEV);
            assert!(
                msg.starts_with(&format!("deleting link ifindex {}: ", link.index)),
                "{msg}"
            );
        });
    }

    #[test]
    fn addresses_are_added_listed_and_deleted() {
        let ns = Netns::with_underlay("addresses_are_added_listed_and_deleted");
        let Some(ns) = ns else {
            return;
        };
        ns.run(|nl| {
            let index = flannel_device(nl);
            let lease = Ipv4Addr::new(10, 1, 15, 0);
            assert_eq!(nl.addresses(index).unwrap(), vec![]);
            nl.add_address(index, lease, 32).unwrap();
            nl.add_address(index, lease, 32).unwrap(); // EEXIST tolerated
            assert_eq!(nl.addresses(index).unwrap(), vec![(lease, 32)]);
            let ul = nl.link_by_name("ul0").unwrap().expect("ul0").index;
            assert_eq!(nl.addresses(ul).unwrap(), vec![(UNDERLAY_IP, 24)]);
            let shown = ns.ip(&["-4", "addr", "show", "dev", "flannel.1"]);
            assert!(shown.contains("inet 10.1.15.0/32"), "{shown}");

            nl.delete_address(index, lease, 32).unwrap();
            assert_eq!(nl.addresses(index).unwrap(), vec![]);
            nl.delete_address(index, lease, 32).unwrap(); // already gone
        });
    }

    #[test]
    fn neighbours_are_replaced_idempotently_and_deleted() {
        let ns = Netns::with_underlay("neighbours_are_replaced_idempotently_and_deleted");
        let Some(ns) = ns else {
            return;
        };
        ns.run(|nl| {
            let index = flannel_device(nl);
            let peer = Ipv4Addr::new(10, 1, 16, 0);
            nl.replace_neigh(index, peer, PEER_MAC).unwrap();
            nl.replace_neigh(index, peer, PEER_MAC).unwrap();
            assert_eq!(nl.neighbours(index).unwrap(), vec![(peer, PEER_MAC)]);
            nl.replace_neigh(index, peer, PEER_MAC2).unwrap();
            assert_eq!(nl.neighbours(index).unwrap(), vec![(peer, PEER_MAC2)]);
            let shown = ns.ip(&["neigh", "show", "dev", "flannel.1"]);
            let want = format!("10.1.16.0 lladdr {} PERMANENT", Mac(PEER_MAC2));
            assert!(shown.contains(&want), "{want:?} missing in {shown}");

            nl.delete_neigh(index, peer).unwrap();
            assert_eq!(nl.neighbours(index).unwrap(), vec![]);
            nl.delete_neigh(index, peer).unwrap(); // ENOENT tolerated
        });
    }

    #[test]
    fn fdb_entries_are_self_permanent_with_dst() {
        let ns = Netns::with_underlay("fdb_entries_are_self_permanent_with_dst");
        let Some(ns) = ns else {
            return;
        };
        ns.run(|nl| {
            let index = flannel_device(nl);
            let (p1, p2) = (Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3));
            let ours = |nl: &mut Netlink| -> Vec<([u8; 6], Option<Ipv4Addr>)> {
                let all = nl.fdb(index).unwrap();
                all.into_iter().filter(|(m, _)| *m == PEER_MAC).collect()
            };
            nl.replace_fdb(index, PEER_MAC, p1).unwrap();
            nl.replace_fdb(index, PEER_MAC, p1).unwrap();
            assert_eq!(ours(nl), vec![(PEER_MAC, Some(p1))]);
            let shown = ns.exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
            let want = format!("{} dst 192.0.2.2 self permanent", Mac(PEER_MAC));
            assert!(
                shown.lines().any(|l| l.trim() == want),
                "{want:?} missing in {shown}"
            );

            // Replace moves the entry to the new remote rather than adding a second one.
            nl.replace_fdb(index, PEER_MAC, p2).unwrap();
            assert_eq!(ours(nl), vec![(PEER_MAC, Some(p2))]);
            nl.delete_fdb(index, PEER_MAC, p1).unwrap(); // a remote it lacks: the kernel says Ok
            assert_eq!(ours(nl), vec![(PEER_MAC, Some(p2))]);
            nl.delete_fdb(index, PEER_MAC, p2).unwrap();
            assert_eq!(ours(nl), vec![]);
            nl.delete_fdb(index, PEER_MAC, p2).unwrap();
            let shown = ns.exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
            assert!(!shown.contains(&Mac(PEER_MAC).to_string()), "{shown}");
        });
    }

    #[test]
    fn routes_are_replaced_filtered_by_protocol_and_deleted() {
        let ns = Netns::with_underlay("routes_are_replaced_filtered_by_protocol_and_deleted");
        let Some(ns) = ns else {
            return;
        };
        ns.ip(&[
            "route",
            "add",
            "10.9.0.0/16",
            "via",
            "192.0.2.254",
            "dev",
            "ul0",
            "proto",
            "static",
        ]);
        ns.run(|nl| {
            let vx = flannel_device(nl);
            let ul = nl.link_by_name("ul0").unwrap().expect("ul0").index;
            let vxlan_route = RouteSpec {
                dst: Ipv4Addr::new(10, 1, 16, 0),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 1, 16, 0)),
                oif: vx,
                onlink: true,
                protocol: RTPROT_WEFT,
            };
            let hostgw_route = RouteSpec {
                dst: Ipv4Addr::new(10, 1, 17, 0),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(192, 0, 2, 2)),
                oif: ul,
                onlink: false,
                protocol: RTPROT_WEFT,
            };
            for r in [vxlan_route, hostgw_route, vxlan_route, hostgw_route] {
                nl.replace_route(&r).unwrap();
            }
            let mut ours = nl.routes(Some(RTPROT_WEFT)).unwrap();
            ours.sort_by_key(|r| r.dst);
            assert_eq!(ours, vec![vxlan_route, hostgw_route]);
            let shown = ns.ip(&["route", "show", "proto", "153"]);
            for want in [
                "10.1.16.0/24 via 10.1.16.0 dev flannel.1 onlink",
                "10.1.17.0/24 via 192.0.2.2 dev ul0",
            ] {
                assert!(
                    shown.lines().any(|l| l.trim() == want),
                    "{want:?} missing in {shown}"
                );
            }

            let all = nl.routes(None).unwrap();
            assert!(all.iter().any(|r| r.dst == Ipv4Addr::new(10, 9, 0, 0)
                && r.protocol == 4
                && r.gateway == Some(Ipv4Addr::new(192, 0, 2, 254))));
            assert!(all.iter().any(|r| r.dst == Ipv4Addr::new(192, 0, 2, 0)
                && r.prefix == 24
                && r.gateway.is_none()
                && r.oif == ul));
            assert!(
                all.iter().all(|r| r.dst != UNDERLAY_IP),
                "local table left out"
            );

            // Replacing with another gateway changes the route in place.
            let moved = RouteSpec {
                gateway: Some(Ipv4Addr::new(192, 0, 2, 3)),
                ..hostgw_route
            };
            nl.replace_route(&moved).unwrap();
            let mut ours = nl.routes(Some(RTPROT_WEFT)).unwrap();
            ours.sort_by_key(|r| r.dst);
            assert_eq!(ours, vec![vxlan_route, moved]);

            nl.delete_route(&vxlan_route).unwrap();
            nl.delete_route(&moved).unwrap();
            assert_eq!(nl.routes(Some(RTPROT_WEFT)).unwrap(), vec![]);
            nl.delete_route(&moved).unwrap(); // ESRCH tolerated
            let foreign = RouteSpec {
                dst: Ipv4Addr::new(10, 9, 0, 0),
                prefix: 16,
                gateway: None,
                oif: 0,
                onlink: false,
                protocol: RTPROT_WEFT,
            };
            nl.delete_route(&foreign).unwrap(); // another protocol's route is not ours to delete
            assert!(nl
                .routes(Some(4))
                .unwrap()
                .iter()
                .any(|r| r.dst == foreign.dst));
        });
    }

    #[test]
    fn route_get_tells_on_link_from_via_gateway() {
        let ns = Netns::with_underlay("route_get_tells_on_link_from_via_gateway");
        let Some(ns) = ns else {
            return;
        };
        ns.ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "192.0.2.254",
            "dev",
            "ul0",
        ]);
        ns.run(|nl| {
            let ul = nl.link_by_name("ul0").unwrap().expect("ul0").index;
            let on_link = nl.route_get(Ipv4Addr::new(192, 0, 2, 7)).unwrap();
            assert_eq!(on_link.gateway, None);
            assert_eq!(on_link.oif, ul);
            assert_eq!(
                (on_link.dst, on_link.prefix),
                (Ipv4Addr::new(192, 0, 2, 7), 32)
            );
            let routed = nl.route_get(Ipv4Addr::new(198, 51, 100, 9)).unwrap();
            assert_eq!(routed.gateway, Some(Ipv4Addr::new(192, 0, 2, 254)));
            assert_eq!(routed.oif, ul);
            let (e, msg) = errno_of(nl.route_get(Ipv4Addr::new(203, 0, 113, 5)));
            assert_eq!(e, libc::ENETUNREACH);
            assert!(msg.starts_with("looking up route to 203.0.113.5: Network is unreachable"));
        });
    }

    #[test]
    fn gateway_not_on_link_is_enetunreach_unless_onlink() {
        let ns = Netns::with_underlay("gateway_not_on_link_is_enetunreach_unless_onlink");
        let Some(ns) = ns else {
            return;
        };
        ns.run(|nl| {
            let ul = nl.link_by_name("ul0").unwrap().expect("ul0").index;
            let mut r = RouteSpec {
                dst: Ipv4Addr::new(10, 1, 18, 0),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(203, 0, 113, 1)),
                oif: ul,
                onlink: false,
                protocol: RTPROT_WEFT,
            };
            let e = nl.replace_route(&r).expect_err("gateway is not on-link");
            assert_eq!(errno(&e), Some(libc::ENETUNREACH));
            assert_eq!(e.kind(), io::ErrorKind::NetworkUnreachable);
            let msg = e.to_string();
            assert!(
                msg.starts_with(
                    "replacing route 10.1.18.0/24 via 203.0.113.1 dev ul0 proto 153: \
                     Network is unreachable (os error 101)"
                ),
                "{msg}"
            );
            eprintln!("kernel error as reported: {msg}");

            r.onlink = true;
            nl.replace_route(&r).unwrap();
            let got = nl.route_get(Ipv4Addr::new(10, 1, 18, 5)).unwrap();
            assert_eq!((got.gateway, got.oif), (r.gateway, ul));
            nl.delete_route(&r).unwrap();
        });
    }

    #[test]
    fn dumps_spanning_many_datagrams_are_complete() {
        let ns = Netns::with_underlay("dumps_spanning_many_datagrams_are_complete");
        let Some(ns) = ns else {
            return;
        };
        ns.run(|nl| {
            let ul = nl.link_by_name("ul0").unwrap().expect("ul0").index;
            let routes: Vec<RouteSpec> = (0..2000u32)
                .map(|i| RouteSpec {
                    dst: Ipv4Addr::from(0x0a64_0000 + i),
                    prefix: 32,
                    gateway: None,
                    oif: ul,
                    onlink: false,
                    protocol: RTPROT_WEFT,
                })
                .collect();
            for r in &routes {
                nl.replace_route(r).unwrap();
            }
            let mut listed = nl.routes(Some(RTPROT_WEFT)).unwrap();
            listed.sort_by_key(|r| r.dst);
            assert_eq!(listed, routes);
            for r in &routes {
                nl.delete_route(r).unwrap();
            }
            assert_eq!(nl.routes(Some(RTPROT_WEFT)).unwrap(), vec![]);
        });
    }

    #[test]
    fn namespace_is_deleted_even_when_the_test_panics() {
        let ns = Netns::new("namespace_is_deleted_even_when_the_test_panics");
        let Some(ns) = ns else {
            return;
        };
        let path = format!("/var/run/netns/{}", ns.name);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            ns.run(|nl| {
                assert!(nl.link_by_name("lo").unwrap().is_some());
                panic!("deliberate panic inside the namespace");
            });
        }));
        assert!(result.is_err());
        assert!(!std::path::Path::new(&path).exists(), "{path} left behind");
    }

    #[test]
    fn errors_keep_errno_and_name_the_operation() {
        let kernel = Failure::Kernel {
            errno: libc::ENETUNREACH,
            ext_ack: Some("Nexthop has invalid gateway".to_string()),
        };
        let e = kernel.into_io("replacing route 10.1.16.0/24 via 192.0.2.2 dev eth0".to_string());
        assert_eq!(errno(&e), Some(libc::ENETUNREACH));
        assert_eq!(e.kind(), io::ErrorKind::NetworkUnreachable);
        assert_eq!(
            e.to_string(),
            "replacing route 10.1.16.0/24 via 192.0.2.2 dev eth0: Network is unreachable \
             (os error 101): Nexthop has invalid gateway"
        );
        let local = Failure::Local(io::Error::from_raw_os_error(libc::ENOBUFS));
        let e = local.into_io("listing routes".to_string());
        assert_eq!(errno(&e), Some(libc::ENOBUFS));
        assert!(e.to_string().starts_with("listing routes: "), "{e}");
        let decode = Failure::Local(io::Error::new(io::ErrorKind::InvalidData, "bad"));
        let e = decode.into_io("listing links".to_string());
        assert_eq!(
            (errno(&e), e.to_string()),
            (None, "listing links: bad".to_string())
        );
        assert_eq!(
            errno(&io::Error::from_raw_os_error(libc::EEXIST)),
            Some(libc::EEXIST)
        );
    }

    #[test]
    fn ext_ack_text_is_read_from_capped_and_full_nacks() {
        let text = b"Nexthop has invalid gateway\0";
        let mut tlv = Vec::new();
        let nla_len = u16::try_from(4 + text.len()).expect("short text");
        tlv.extend_from_slice(&nla_len.to_ne_bytes());
        tlv.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        tlv.extend_from_slice(text);
        tlv.resize(align4(tlv.len()), 0);

        let mut capped = vec![0u8; NLMSG_HEADER_LEN];
        capped[..4].copy_from_slice(&64u32.to_ne_bytes()); // the request was longer
        capped.extend_from_slice(&tlv);
        let flags = NLM_F_ACK_TLVS | NLM_F_CAPPED;
        let want = Some("Nexthop has invalid gateway".to_string());
        assert_eq!(ext_ack_text(flags, &capped), want);
        assert_eq!(
            ext_ack_text(NLM_F_CAPPED, &capped),
            None,
            "no TLV flag, no text"
        );

        let mut full = vec![0u8; 22];
        full[..4].copy_from_slice(&22u32.to_ne_bytes()); // padded to 24
        full.resize(24, 0);
        full.extend_from_slice(&tlv);
        assert_eq!(ext_ack_text(NLM_F_ACK_TLVS, &full), want);
        assert_eq!(ext_ack_text(NLM_F_ACK_TLVS, &full[..3]), None, "truncated");
    }

    #[test]
    fn vxlan_attrs_match_only_the_same_spec() {
        let spec = flannel_spec(7);
        let attrs = VxlanAttrs {
            vni: 1,
            local: Some(UNDERLAY_IP),
            link: Some(7),
            port: VXLAN_DEFAULT_PORT,
            learning: false,
            gbp: false,
        };
        assert!(attrs.matches(&spec));
        assert!(attrs.matches(&VxlanSpec {
            port: Some(8472),
            mtu: 9000,
            mac: None,
            ..spec.clone()
        }));
        assert!(!attrs.matches(&VxlanSpec {
            port: Some(4789),
            ..spec.clone()
        }));
        assert!(!attrs.matches(&VxlanSpec {
            vni: 2,
            ..spec.clone()
        }));
        assert!(!attrs.matches(&VxlanSpec {
            underlay_index: 8,
            ..spec.clone()
        }));
        assert!(!attrs.matches(&VxlanSpec {
            gbp: true,
            ..spec.clone()
        }));
        assert!(!attrs.matches(&VxlanSpec {
            learning: true,
            ..spec.clone()
        }));
        assert!(!attrs.matches(&VxlanSpec {
            local: Ipv4Addr::new(192, 0, 2, 9),
            ..spec
        }));
    }
}
