//! Kernel networking state through rtnetlink: the synchronous layer the daemon uses to program
//! links, IPv4 addresses, neighbours, FDB entries and main-table routes (the kernel vxlan and
//! host-gw backends, and the route of the overlay network through weft's TUN device).
//!
//! * [`request`]: the socket, one request and its replies (ACK, NACK with extended ACK, dumps),
//!   and the errors;
//! * [`ops`]: the operations, one per `ip`/`bridge` command they stand for, with the builders and
//!   parsers of their messages;
//! * `tests`: unit tests of the reply handling, and privileged tests, each in its own network
//!   namespace, that check every operation against what iproute2 shows.
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
//! * No request is made only to word an error: interfaces are named by what the connection knows
//!   of them (links it looked up, listed or was told of with [`Netlink::name_link`]), else as
//!   `ifindex N`.
//! * Deletes are idempotent: deleting what is already gone is `Ok` (`ENOENT`/`ESRCH`/
//!   `EADDRNOTAVAIL`), and so is adding an address that is already there (`EEXIST`).
//! * Main routing table only (docs/compatibility.md §7.2, §7.4). Addresses, neighbours, FDB
//!   destinations and routes are generic over the address family ([`NlAddr`]: `Ipv4Addr` or
//!   `Ipv6Addr`); the family of every message follows from the address type, and the dumps list
//!   only that family. A vxlan device's local address may be either (`flannel-v6.<VNI>`).

mod ops;
mod request;
#[cfg(test)]
mod tests;

pub(crate) use request::Netlink;

use netlink_packet_route::neighbour::NeighbourAddress;
use netlink_packet_route::route::RouteAddress;
use netlink_packet_route::AddressFamily;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family the netlink layer speaks: `Ipv4Addr` (`AF_INET`) or `Ipv6Addr`
/// (`AF_INET6`).
pub(crate) trait NlAddr:
    Copy + Eq + Ord + std::fmt::Display + std::fmt::Debug + Into<IpAddr> + Send + 'static
{
    /// The message family.
    const FAMILY: AddressFamily;
    /// The length of a host prefix (32 or 128).
    const BITS: u8;
    /// The address as a route attribute.
    fn route_addr(self) -> RouteAddress;
    /// The address of a route attribute of this family.
    fn from_route_addr(a: &RouteAddress) -> Option<Self>;
    /// The address of a neighbour attribute of this family (`AF_BRIDGE` messages carry raw
    /// bytes: 4 or 16 of them).
    fn from_neigh_addr(a: &NeighbourAddress) -> Option<Self>;
    /// The address as a neighbour attribute.
    fn neigh_addr(self) -> NeighbourAddress;
    /// The address of this family in `ip`.
    fn from_ip(ip: IpAddr) -> Option<Self>;
    /// `0.0.0.0` or `::`.
    fn unspecified() -> Self;
}

impl NlAddr for Ipv4Addr {
    const FAMILY: AddressFamily = AddressFamily::Inet;
    const BITS: u8 = 32;
    fn route_addr(self) -> RouteAddress {
        RouteAddress::Inet(self)
    }
    fn from_route_addr(a: &RouteAddress) -> Option<Self> {
        match a {
            RouteAddress::Inet(ip) => Some(*ip),
            _ => None,
        }
    }
    fn from_neigh_addr(a: &NeighbourAddress) -> Option<Self> {
        match a {
            NeighbourAddress::Inet(ip) => Some(*ip),
            NeighbourAddress::Other(b) => <[u8; 4]>::try_from(b.as_slice()).ok().map(Self::from),
            _ => None,
        }
    }
    fn neigh_addr(self) -> NeighbourAddress {
        NeighbourAddress::Inet(self)
    }
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }
    fn unspecified() -> Self {
        Ipv4Addr::UNSPECIFIED
    }
}

impl NlAddr for Ipv6Addr {
    const FAMILY: AddressFamily = AddressFamily::Inet6;
    const BITS: u8 = 128;
    fn route_addr(self) -> RouteAddress {
        RouteAddress::Inet6(self)
    }
    fn from_route_addr(a: &RouteAddress) -> Option<Self> {
        match a {
            RouteAddress::Inet6(ip) => Some(*ip),
            _ => None,
        }
    }
    fn from_neigh_addr(a: &NeighbourAddress) -> Option<Self> {
        match a {
            NeighbourAddress::Inet6(ip) => Some(*ip),
            NeighbourAddress::Other(b) => <[u8; 16]>::try_from(b.as_slice()).ok().map(Self::from),
            _ => None,
        }
    }
    fn neigh_addr(self) -> NeighbourAddress {
        NeighbourAddress::Inet6(self)
    }
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        }
    }
    fn unspecified() -> Self {
        Ipv6Addr::UNSPECIFIED
    }
}

/// Route protocol (`rtm_protocol`) weft tags its host-gw and `DirectRouting` routes with, so that a
/// restarted daemon can find and remove the stale ones: 0x99 (153). The kernel interprets only
/// 0..=4; `rtnetlink.h` and iproute2's `rt_protos` name 8..=18, 42 (babel), 99 (openr) and
/// 186..=192, FRR adds 190/191 and 193..=198, Calico uses 80. `ip route` shows it as `proto 153`.
pub(crate) const RTPROT_WEFT: u8 = 0x99;

/// Route protocol `static` (`RTPROT_STATIC`): the route of the whole overlay network through the
/// TUN device, as flannel's udp backend tags it.
pub(crate) const RTPROT_STATIC: u8 = 4;

/// Destination UDP port of a vxlan device created without `IFLA_VXLAN_PORT` (the vxlan module's
/// `udp_port` parameter, the pre-IANA Linux port); flannel relies on it when `Port` is 0.
pub(crate) use control::config::VXLAN_DEFAULT_PORT;

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

/// The vxlan attributes that decide whether an existing device can be reused (docs/compatibility.md §7.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VxlanAttrs {
    /// VXLAN network identifier (`IFLA_VXLAN_ID`).
    pub(crate) vni: u32,
    /// Source address of encapsulated packets (`IFLA_VXLAN_LOCAL` or `IFLA_VXLAN_LOCAL6`);
    /// `None` when unset.
    pub(crate) local: Option<IpAddr>,
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

/// A vxlan device to create, as flannel creates `flannel.<VNI>` (docs/compatibility.md §7.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VxlanSpec {
    /// Device name, e.g. `flannel.1` (`flannel-v6.1` for the IPv6 device).
    pub(crate) name: String,
    /// VXLAN network identifier.
    pub(crate) vni: u32,
    /// Local (public) address used as the outer source; its family is the device's.
    pub(crate) local: IpAddr,
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

/// A unicast route in the main table (IPv4 unless `A` is `Ipv6Addr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteSpec<A = Ipv4Addr> {
    /// Destination network address.
    pub(crate) dst: A,
    /// Destination prefix length.
    pub(crate) prefix: u8,
    /// Next hop; `None` for a directly connected (scope link) route.
    pub(crate) gateway: Option<A>,
    /// Output interface index; 0 = unspecified (lets a delete match any).
    pub(crate) oif: u32,
    /// `RTNH_F_ONLINK`: the gateway is on the link even though no prefix says so.
    pub(crate) onlink: bool,
    /// `rtm_protocol`; 0 in a delete matches any protocol.
    pub(crate) protocol: u8,
}

/// The errno inside an error returned by this module (or any `io::Error` made from an errno).
#[cfg(test)]
pub(crate) fn errno(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<request::OpError>())
            .map(|op| op.errno)
    })
}
