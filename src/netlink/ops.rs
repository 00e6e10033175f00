//! The operations: links, addresses, neighbours, FDB entries and routes, each the equivalent of
//! one `ip`/`bridge` command, with the builders of their requests and the parsers of the replies.

use std::net::IpAddr;
#[cfg(test)]
use std::net::Ipv4Addr;

use control::lease::format_mac;
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::libc;
use std::io;

use super::request::{tolerate, Failure, Netlink};
use super::{Link, NlAddr, RouteSpec, VxlanAttrs, VxlanSpec, VXLAN_DEFAULT_PORT};

impl Netlink {
    // ---- links ----

    /// The link called `name`, or `None` if there is none.
    pub(crate) fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg)
            .map_err(|f| f.into_io(format!("looking up link {name}")))
    }

    /// The link with interface index `index`, or `None` if there is none.
    #[cfg(test)]
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
        let links: Vec<Link> = messages
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(parse_link(link)),
                _ => None,
            })
            .collect();
        for l in &links {
            self.learn_name(l.index, &l.name);
        }
        Ok(links)
    }

    /// Creates a vxlan device as flannel does (docs/compatibility.md §7.2.1); `EEXIST` if the name is taken.
    pub(crate) fn add_vxlan(&mut self, spec: &VxlanSpec) -> io::Result<()> {
        let local = match spec.local {
            IpAddr::V4(ip) => InfoVxlan::Local(ip),
            IpAddr::V6(ip) => InfoVxlan::Local6(ip),
        };
        let mut data = vec![InfoVxlan::Id(spec.vni), local];
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
            .map_err(|f| f.into_io(what))?;
        self.forget_name(index);
        Ok(())
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
    #[cfg(test)]
    pub(crate) fn addresses(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        self.addresses_of(index)
    }

    /// The addresses of family `A` (with prefix length) of the link.
    pub(crate) fn addresses_of<A: NlAddr>(&mut self, index: u32) -> io::Result<Vec<(A, u8)>> {
        let mut msg = AddressMessage::default();
        msg.header.family = A::FAMILY;
        let result = self.dump(RouteNetlinkMessage::GetAddress(msg));
        let messages = result
            .map_err(|f| f.into_io(format!("listing addresses of {}", self.dev_name(index))))?;
        let mut out = Vec::new();
        for m in messages {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index || a.header.family != A::FAMILY {
                continue;
            }
            // For IPv4, IFA_LOCAL is the interface's own address; IFA_ADDRESS differs from it
            // only on point-to-point links, where it is the peer. IPv6 reports IFA_ADDRESS.
            let (mut local, mut address) = (None, None);
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = A::from_ip(*ip),
                    AddressAttribute::Address(ip) => address = A::from_ip(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                out.push((ip, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Adds `addr/prefix` to the link; already present is `Ok`. An IPv6 address is added without
    /// duplicate address detection (`nodad`), so that it is usable at once.
    pub(crate) fn add_address<A: NlAddr>(
        &mut self,
        index: u32,
        addr: A,
        prefix: u8,
    ) -> io::Result<()> {
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
    pub(crate) fn delete_address<A: NlAddr>(
        &mut self,
        index: u32,
        addr: A,
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

    /// `ip neigh replace IP lladdr MAC dev X nud permanent` (docs/compatibility.md §7.2.2 step 1).
    /// The kernel flushes a device's neighbours, permanent ones too, when it goes down.
    pub(crate) fn replace_neigh<A: NlAddr>(
        &mut self,
        index: u32,
        ip: A,
        mac: [u8; 6],
    ) -> io::Result<()> {
        let mut msg = neigh_message(A::FAMILY, index, ip);
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
                format_mac(&mac)
            ))
        })
    }

    /// `ip neigh del IP dev X`; already absent is `Ok`.
    pub(crate) fn delete_neigh<A: NlAddr>(&mut self, index: u32, ip: A) -> io::Result<()> {
        let msg = neigh_message(A::FAMILY, index, ip);
        let result = self.ack(RouteNetlinkMessage::DelNeighbour(msg), 0);
        tolerate(result, &[libc::ENOENT]).map_err(|f| {
            f.into_io(format!(
                "deleting neighbour {ip} dev {}",
                self.dev_name(index)
            ))
        })
    }

    /// `bridge fdb replace MAC dev X dst DST self permanent` (docs/compatibility.md §7.2.2 step 2).
    /// The vxlan driver wants `NTF_SELF` (else `EOPNOTSUPP`), `NDA_DST` and a permanent or
    /// reachable state (else `EINVAL`); permanent entries survive the device going down.
    pub(crate) fn replace_fdb<A: NlAddr>(
        &mut self,
        index: u32,
        mac: [u8; 6],
        dst: A,
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
                format_mac(&mac)
            ))
        })
    }

    /// `bridge fdb del MAC dev X dst DST self`; already absent (or lacking that remote) is `Ok`.
    pub(crate) fn delete_fdb<A: NlAddr>(
        &mut self,
        index: u32,
        mac: [u8; 6],
        dst: A,
    ) -> io::Result<()> {
        let msg = fdb_message(index, mac, dst);
        let result = self.ack(RouteNetlinkMessage::DelNeighbour(msg), 0);
        tolerate(result, &[libc::ENOENT]).map_err(|f| {
            let dev = self.dev_name(index);
            f.into_io(format!(
                "deleting fdb entry {} dev {dev} dst {dst}",
                format_mac(&mac)
            ))
        })
    }

    /// The IPv4 neighbours of the link that have a hardware address.
    #[cfg(test)]
    pub(crate) fn neighbours(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, [u8; 6])>> {
        self.neighbours_of(index)
    }

    /// The neighbours of family `A` of the link that have a hardware address.
    pub(crate) fn neighbours_of<A: NlAddr>(&mut self, index: u32) -> io::Result<Vec<(A, [u8; 6])>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = A::FAMILY;
        let result = self.dump(RouteNetlinkMessage::GetNeighbour(msg));
        let messages = result
            .map_err(|f| f.into_io(format!("listing neighbours of {}", self.dev_name(index))))?;
        let mut out = Vec::new();
        for m in messages {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index || n.header.family != A::FAMILY {
                continue;
            }
            let (mut ip, mut mac) = (None, None);
            for attr in &n.attributes {
                match attr {
                    NeighbourAttribute::Destination(a) => ip = A::from_neigh_addr(a),
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
    #[cfg(test)]
    pub(crate) fn fdb(&mut self, index: u32) -> io::Result<Vec<([u8; 6], Option<Ipv4Addr>)>> {
        self.fdb_of(index)
    }

    /// The bridge FDB entries of the link: MAC and, for vxlan remotes, the destination when it
    /// is of family `A`.
    pub(crate) fn fdb_of<A: NlAddr>(
        &mut self,
        index: u32,
    ) -> io::Result<Vec<([u8; 6], Option<A>)>> {
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
                    NeighbourAttribute::Destination(a) => dst = A::from_neigh_addr(a),
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

    /// `ip route replace` of a unicast route in the main table.
    pub(crate) fn replace_route<A: NlAddr>(&mut self, r: &RouteSpec<A>) -> io::Result<()> {
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

    /// `ip route replace DST dev X proto static scope global`: the route of the whole overlay
    /// network through weft's TUN device as flannel's udp backend adds it (scope universe, where
    /// `ip` would default to scope link for a route without a gateway). `r.gateway` must be `None`.
    pub(crate) fn replace_device_route<A: NlAddr>(&mut self, r: &RouteSpec<A>) -> io::Result<()> {
        let mut msg = route_message(r);
        msg.header.scope = RouteScope::Universe;
        let result = self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        );
        result.map_err(|f| f.into_io(format!("replacing route {}", self.describe_route(r))))
    }

    /// `ip route del`; matches on what `r` sets (protocol 0, oif 0, no gateway match any).
    /// Already absent is `Ok`.
    pub(crate) fn delete_route<A: NlAddr>(&mut self, r: &RouteSpec<A>) -> io::Result<()> {
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
        self.routes_of(protocol)
    }

    /// [`Netlink::routes`] of family `A`.
    pub(crate) fn routes_of<A: NlAddr>(
        &mut self,
        protocol: Option<u8>,
    ) -> io::Result<Vec<RouteSpec<A>>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = A::FAMILY;
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
                r.header.address_family == A::FAMILY
                    && r.header.kind == RouteType::Unicast
                    && route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
                    && protocol.is_none_or(|p| u8::from(r.header.protocol) == p)
            })
            .map(|r| parse_route(&r))
            .collect())
    }

    /// Whether the main table has a blackhole route for exactly `dst/prefix`.
    pub(crate) fn has_blackhole_route<A: NlAddr>(
        &mut self,
        dst: A,
        prefix: u8,
    ) -> io::Result<bool> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = A::FAMILY;
        let messages = self
            .dump(RouteNetlinkMessage::GetRoute(msg))
            .map_err(|f| f.into_io("listing routes".to_string()))?;
        Ok(messages.into_iter().any(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => {
                r.header.address_family == A::FAMILY
                    && r.header.kind == RouteType::BlackHole
                    && route_table(&r) == u32::from(RouteHeader::RT_TABLE_MAIN)
                    && r.header.destination_prefix_length == prefix
                    && parse_route::<A>(&r).dst == dst
            }
            _ => false,
        }))
    }

    /// `ip route add blackhole DST/PREFIX metric 4294967295` in the main table (flannel's
    /// `--ip-blackhole-route`; flannel adds it with metric 0). The highest metric lets every other
    /// route for the same prefix win (a bridge holding the subnet), so the blackhole only takes
    /// what no interface claims. Already present is `Ok`.
    pub(crate) fn add_blackhole_route<A: NlAddr>(&mut self, dst: A, prefix: u8) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = A::FAMILY;
        msg.header.destination_prefix_length = prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::BlackHole;
        msg.attributes
            .push(RouteAttribute::Destination(dst.route_addr()));
        msg.attributes
            .push(RouteAttribute::Priority(BLACKHOLE_METRIC));
        let result = self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        );
        tolerate(result, &[libc::EEXIST])
            .map_err(|f| f.into_io(format!("adding route blackhole {dst}/{prefix}")))
    }

    /// `ip route get DST`: the route the kernel would use; `gateway` is `None` when on-link.
    pub(crate) fn route_get<A: NlAddr>(&mut self, dst: A) -> io::Result<RouteSpec<A>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = A::FAMILY;
        msg.header.destination_prefix_length = A::BITS;
        msg.attributes
            .push(RouteAttribute::Destination(dst.route_addr()));
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
            Ok(replies) => {
                let link = replies.messages.into_iter().find_map(|m| match m {
                    RouteNetlinkMessage::NewLink(link) => Some(parse_link(link)),
                    _ => None,
                });
                if let Some(l) = &link {
                    self.learn_name(l.index, &l.name);
                }
                Ok(link)
            }
            Err(f) if f.kernel_errno() == Some(libc::ENODEV) => Ok(None),
            Err(f) => Err(f),
        }
    }

    /// `10.1.16.0/24 via 192.0.2.2 dev eth0 onlink proto 153`, as `ip route` prints it.
    fn describe_route<A: NlAddr>(&self, r: &RouteSpec<A>) -> String {
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
            InfoVxlan::Local(ip) => attrs.local = Some(ip.into()),
            InfoVxlan::Local6(ip) => attrs.local = Some(ip.into()),
            InfoVxlan::Link(index) => attrs.link = Some(index).filter(|&i| i != 0),
            InfoVxlan::Port(port) => attrs.port = port,
            InfoVxlan::Learning(on) => attrs.learning = on,
            InfoVxlan::Gbp => attrs.gbp = true,
            _ => {}
        }
    }
    attrs
}

/// An `RTM_NEWADDR`/`RTM_DELADDR` body for an address (IPv6: `nodad`).
fn address_message<A: NlAddr>(index: u32, addr: A, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = A::FAMILY;
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr.into()));
    msg.attributes.push(AddressAttribute::Address(addr.into()));
    if A::FAMILY == AddressFamily::Inet6 {
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    msg
}

/// A neighbour message for `ip` on the link (state and lladdr left to the caller).
fn neigh_message<A: NlAddr>(family: AddressFamily, index: u32, ip: A) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = index;
    msg.attributes
        .push(NeighbourAttribute::Destination(ip.neigh_addr()));
    msg
}

/// An `AF_BRIDGE`, `NTF_SELF` neighbour message: the vxlan driver's own FDB, not a bridge's.
fn fdb_message<A: NlAddr>(index: u32, mac: [u8; 6], dst: A) -> NeighbourMessage {
    let mut msg = neigh_message(AddressFamily::Bridge, index, dst);
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg
}

/// An `RTM_NEWROUTE`/`RTM_DELROUTE` body for `r` in the main table (scope left to the caller).
fn route_message<A: NlAddr>(r: &RouteSpec<A>) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = A::FAMILY;
    msg.header.destination_prefix_length = r.prefix;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(r.protocol);
    msg.header.kind = RouteType::Unicast;
    if r.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    msg.attributes
        .push(RouteAttribute::Destination(r.dst.route_addr()));
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(gw.route_addr()));
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

/// The [`RouteSpec`] of an `RTM_NEWROUTE` of family `A`.
fn parse_route<A: NlAddr>(r: &RouteMessage) -> RouteSpec<A> {
    let mut spec = RouteSpec {
        dst: A::unspecified(),
        prefix: r.header.destination_prefix_length,
        gateway: None,
        oif: 0,
        onlink: r.header.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(r.header.protocol),
    };
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Destination(a) => {
                if let Some(ip) = A::from_route_addr(a) {
                    spec.dst = ip;
                }
            }
            RouteAttribute::Gateway(a) => spec.gateway = A::from_route_addr(a).or(spec.gateway),
            RouteAttribute::Oif(index) => spec.oif = *index,
            _ => {}
        }
    }
    spec
}

/// Metric of the `--ip-blackhole-route` route: the lowest priority there is.
pub(crate) const BLACKHOLE_METRIC: u32 = u32::MAX;

/// A 6-byte hardware address, `None` for any other length.
fn mac6(bytes: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(bytes).ok()
}
