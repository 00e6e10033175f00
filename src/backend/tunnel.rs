//! The backend the udp and userspace VXLAN modules both build: weft's workers
//! ([`engine::Dataplane`]), the kernel route of the overlay network through their TUN device,
//! and the route snapshots made from leases. Only the wire, the lease
//! attributes and the per-lease route differ; each module supplies those.
//!
//! Lease sets arrive complete after every change; the route table is updated by the difference
//! to the routes published before ([`RouteTable::apply`]). When every lease has the same prefix
//! length (flannel's leases all have `SubnetLen`) and the set comes ordered by subnet (as the
//! control plane sends it), no lease can hide another, so a lease's route depends on that lease
//! alone: one pass compares the set with the previous one by subnet and [`fingerprint`], and
//! only new or changed leases are decoded. A change in a set of 65 536 leases then costs that
//! pass plus the changed routes, not 65 536 lease decodings and a table rebuild. Any other set
//! takes [`super::usable`] (address order decides between overlapping leases) and a full diff.
//!
//! IPv6 only (`EnableIPv4: false`, userspace vxlan; [`HostInfo::ipv4`] false): the data plane has
//! no IPv4 half (no IPv4 socket, no IPv4 address or route on the TUN device), leases make IPv6
//! routes only, and the MTU is the IPv6 one (underlay − 70).

use super::{Backend, HostInfo, SkipLog};
use crate::netlink::{Netlink, RouteSpec, RTPROT_STATIC};
use anyhow::{Context, Result};
use control::{Lease, LeaseAttrs};
use engine::{
    Dataplane, DataplaneConfig, DataplaneV6, Ipv4Net, Ipv6Net, Route, Route6, RouteChange,
    RouteTable, StatsSource, Wire,
};
use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

/// Turns one lease into a route, or refuses it (wrong backend type, VNI, bad data).
pub(crate) type ToRoute = fn(&Lease, Ipv4Net, &TunnelParams) -> Option<Route>;

/// What routes are built with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TunnelParams {
    /// Peers' UDP port.
    pub(crate) port: u16,
    /// Our wire.
    pub(crate) wire: Wire,
}

/// An engine-based backend.
#[derive(Debug)]
pub(crate) struct Tunnel {
    host: HostInfo,
    attrs: LeaseAttrs,
    params: TunnelParams,
    to_route: ToRoute,
    table: Arc<RouteTable>,
    net: Option<(Ipv4Net, Ipv4Net)>,
    /// The lease set received before [`Backend::start`], applied by it.
    pending: Vec<Lease>,
    /// The previous lease set as (subnet, [`fingerprint`]), in the order received: 16 bytes a
    /// lease instead of a copy of it.
    prev: Vec<(control::Ipv4Net, u64)>,
    /// The prefix length of every lease in `prev`, if [`one_length`] holds for it.
    prev_len: Option<u8>,
    /// The routes in the table, to diff the next set against.
    published: BTreeMap<Ipv4Net, Route>,
    dp: Option<Dataplane>,
    skip: SkipLog,
    name: &'static str,
    /// Dual stack or IPv6 only (userspace vxlan): the IPv6 half.
    v6: Option<TunnelV6>,
}

/// The IPv6 half of a dual-stack tunnel: IPv6 leases (`PublicIPv6`, `BackendV6Data`) become
/// [`Route6`]s, and the data plane carries inner IPv6 over the IPv6 underlay.
#[derive(Debug)]
struct TunnelV6 {
    /// Our public IPv6 address (bound, the outer source of what we send).
    public: Ipv6Addr,
    /// Our IPv6 VTEP MAC (`BackendV6Data`).
    mac: [u8; 6],
    /// The IPv6 network and our IPv6 subnet, from [`Backend::set_ipv6_subnet`].
    net: Option<(Ipv6Net, Ipv6Net)>,
    /// The IPv6 routes in the table, to diff the next set against.
    published: BTreeMap<Ipv6Net, Route6>,
}

/// The engine's form of a control-plane IPv6 prefix.
fn engine_net6(n: control::subnet::Ipv6Net) -> Ipv6Net {
    Ipv6Net::new(n.addr(), n.prefix_len())
        .expect("control::Ipv6Net keeps its prefix length at most 128")
}

/// The IPv6 route of a vxlan lease of VNI `vni` (its `PublicIPv6` and `BackendV6Data` VTEP MAC)
/// for its IPv6 subnet, if it has all three.
fn route6_of(l: &Lease, vni: u32, port: u16) -> Option<Route6> {
    let subnet = engine_net6(l.ipv6_subnet?);
    let public = l.attrs.public_ipv6?;
    let mac = super::family::vxlan_peer_of::<control::subnet::Ipv6Net>(l, vni)?;
    Some(Route6::vxlan(
        subnet,
        SocketAddrV6::new(public, port, 0, 0),
        mac,
    ))
}

/// The data plane's configuration for `host` (shared with static mode); without an IPv4 part
/// ([`HostInfo::ipv4`] false) it binds no IPv4 socket (`bind` is `None`).
pub(crate) fn dataplane_config(
    host: &HostInfo,
    network: Ipv4Net,
    local: Ipv4Net,
    port: u16,
    wire: Wire,
) -> DataplaneConfig {
    let args = &host.args;
    DataplaneConfig {
        tun_name: args.tun_name.clone(),
        underlay_mtu: host.underlay.mtu,
        network,
        local,
        bind: host
            .ipv4
            .then(|| SocketAddrV4::new(host.underlay.addr, port)),
        workers: args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        batch_size: args.batch_size,
        accept_any_source: args.accept_any_source,
        socket_buffer: engine::dataplane::DEFAULT_SOCKET_BUFFER,
        offload: args.offload.into(),
        // WEFT_NO_TSO_WRITE=1 turns TSO super-packet writes off, for comparisons.
        tso_writes: !matches!(std::env::var("WEFT_NO_TSO_WRITE").as_deref(), Ok("1")),
        wire,
    }
}

/// Starts the data plane and routes the whole overlay network through its TUN device, as
/// flannel's udp backend does (`NET dev TUN proto static`, scope global). Nothing needs removing
/// at the end: deleting the device (when the last worker's queue closes) removes the route too.
pub(crate) fn start_dataplane(cfg: &DataplaneConfig, routes: Arc<RouteTable>) -> Result<Dataplane> {
    start_dataplane_dual(cfg, None, routes)
}

/// [`start_dataplane`] with an IPv6 half: the IPv6 network is routed through the TUN device too
/// (IPv6 only, `cfg.bind` `None`: only the IPv6 network).
pub(crate) fn start_dataplane_dual(
    cfg: &DataplaneConfig,
    v6: Option<&DataplaneV6>,
    routes: Arc<RouteTable>,
) -> Result<Dataplane> {
    let dp = Dataplane::start_dual(cfg, v6, routes).context("starting the data plane")?;
    if let Some(v6) = v6 {
        route_network6(&cfg.tun_name, v6.network).with_context(|| {
            format!(
                "routing the IPv6 overlay network {} through {}",
                v6.network, cfg.tun_name
            )
        })?;
    }
    if cfg.bind.is_none() {
        return Ok(dp);
    }
    // On error `dp` is dropped here, which stops the workers and removes the device.
    route_network(cfg).with_context(|| {
        format!(
            "routing the overlay network {} through {}",
            cfg.network, cfg.tun_name
        )
    })?;
    Ok(dp)
}

/// `ip -6 route replace <network> dev <tun> proto static` in the calling thread's namespace.
fn route_network6(tun: &str, network: Ipv6Net) -> std::io::Result<()> {
    let mut nl = Netlink::new()?;
    let link = nl.link_by_name(tun)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{tun} vanished right after its creation"),
        )
    })?;
    nl.replace_device_route(&RouteSpec::<Ipv6Addr> {
        dst: network.addr(),
        prefix: network.prefix(),
        gateway: None,
        oif: link.index,
        onlink: false,
        protocol: RTPROT_STATIC,
    })
}

/// `ip route replace <network> dev <tun> proto static` in the calling thread's namespace.
fn route_network(cfg: &DataplaneConfig) -> std::io::Result<()> {
    let mut nl = Netlink::new()?;
    let link = nl.link_by_name(&cfg.tun_name)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} vanished right after its creation", cfg.tun_name),
        )
    })?;
    nl.replace_device_route(&RouteSpec {
        dst: cfg.network.addr(),
        prefix: cfg.network.prefix(),
        gateway: None,
        oif: link.index,
        onlink: false,
        protocol: RTPROT_STATIC,
    })
}

impl Tunnel {
    /// A backend named `name` for `host` (whose underlay MTU is the one to subtract the wire's
    /// overhead from) publishing `attrs`.
    pub(crate) fn new(
        name: &'static str,
        host: &HostInfo,
        attrs: LeaseAttrs,
        params: TunnelParams,
        to_route: ToRoute,
    ) -> Self {
        Tunnel {
            host: host.clone(),
            attrs,
            params,
            to_route,
            table: Arc::new(RouteTable::new()),
            net: None,
            pending: Vec::new(),
            prev: Vec::new(),
            prev_len: None,
            published: BTreeMap::new(),
            dp: None,
            skip: SkipLog::default(),
            name,
            v6: None,
        }
    }

    /// Makes this a dual-stack tunnel (vxlan only): our public IPv6 address `public` and IPv6
    /// VTEP MAC `mac`; the lease attributes are the caller's.
    pub(crate) fn with_ipv6(mut self, public: Ipv6Addr, mac: [u8; 6]) -> Self {
        self.v6 = Some(TunnelV6 {
            public,
            mac,
            net: None,
            published: BTreeMap::new(),
        });
        self
    }

    /// The IPv6 route changes `leases` make against what was published, when dual stack.
    fn changes6(&mut self, leases: &[Lease], changes: &mut Vec<RouteChange>) {
        let (Some(v6), Wire::Vxlan { vni, .. }) = (self.v6.as_mut(), self.params.wire) else {
            return;
        };
        let Some((network, local)) = v6.net else {
            return;
        };
        let port = self.params.port;
        let (routes, _) = super::family::usable_of(
            leases,
            control::subnet::Ipv6Net::new(network.addr(), network.prefix())
                .expect("prefix at most 128"),
            control::subnet::Ipv6Net::new(local.addr(), local.prefix())
                .expect("prefix at most 128"),
            |l, _| route6_of(l, vni, port),
        );
        let routes: BTreeMap<Ipv6Net, Route6> =
            routes.into_values().map(|r| (r.subnet, r)).collect();
        for (subnet, _) in v6.published.iter() {
            if !routes.contains_key(subnet) {
                changes.push(RouteChange::Remove6(*subnet));
            }
        }
        for (subnet, r) in &routes {
            if v6.published.get(subnet) != Some(r) {
                changes.push(RouteChange::Set6(*r));
            }
        }
        v6.published = routes;
    }

    fn publish(&mut self, leases: &[Lease]) {
        let Some((network, local)) = self.net else {
            return;
        };
        let mut changes = Vec::new();
        // IPv6 only: no IPv4 routes (the leases' subnets are all 0.0.0.0/0).
        let incremental = self.host.ipv4 && self.changes4(leases, network, local, &mut changes);
        self.changes6(leases, &mut changes);
        if changes.is_empty() {
            return;
        }
        match self.table.apply(changes.iter().copied()) {
            Ok(generation) => {
                tracing::debug!(
                    generation,
                    changes = changes.len(),
                    routes = self.table.load().len(),
                    incremental,
                    "routes updated"
                )
            }
            Err(e) => {
                tracing::error!("keeping the current routes: {e}");
                // Diff the next set against what the table really holds.
                self.published = self.table.load().routes().map(|r| (r.subnet, r)).collect();
                if let Some(v6) = self.v6.as_mut() {
                    v6.published = self.table.load().routes6().map(|r| (r.subnet, r)).collect();
                }
                self.prev.clear();
                self.prev_len = None;
            }
        }
    }

    /// The IPv4 route changes `leases` make against what was published (in `network`, not
    /// overlapping our `local`); whether they were found incrementally.
    fn changes4(
        &mut self,
        leases: &[Lease],
        network: Ipv4Net,
        local: Ipv4Net,
        changes: &mut Vec<RouteChange>,
    ) -> bool {
        let (to_route, params) = (self.to_route, self.params);
        let route_of = |l: &Lease| {
            let subnet = super::engine_net(l.subnet);
            if !network.contains_net(&subnet) || subnet.overlaps(&local) {
                return None;
            }
            to_route(l, subnet, &params)
        };
        let len = one_length(leases);
        // Incremental if this set and the previous one are of one length (or nothing was published).
        let fresh = self.prev.is_empty() && self.published.is_empty();
        let incremental = len.is_some() && (fresh || self.prev_len == len);
        let mut next = Vec::with_capacity(leases.len());
        let skipped = if incremental {
            // Merge by subnet with the previous set: removed, changed and new leases only.
            let published = &mut self.published;
            let mut old = self.prev.iter().peekable();
            for l in leases {
                let print = fingerprint(l);
                while let Some((s, _)) = old.next_if(|(s, _)| *s < l.subnet) {
                    forget(published, *s, changes);
                }
                let unchanged = old
                    .next_if(|(s, _)| *s == l.subnet)
                    .is_some_and(|(_, p)| *p == print);
                next.push((l.subnet, print));
                if unchanged {
                    continue;
                }
                match route_of(l) {
                    Some(r) => {
                        if published.insert(r.subnet, r) != Some(r) {
                            changes.push(RouteChange::Set(r));
                        }
                    }
                    None => forget(published, l.subnet, changes),
                }
            }
            for (s, _) in old {
                forget(published, *s, changes);
            }
            leases.len() - published.len()
        } else {
            let (routes, skipped) = super::usable(leases, network, local, route_of);
            changes.extend(diff(&self.published, &routes));
            self.published = routes;
            next.extend(leases.iter().map(|l| (l.subnet, fingerprint(l))));
            skipped
        };
        self.prev = next;
        self.prev_len = len;
        self.skip.report(self.name, skipped);
        incremental
    }
}

/// Removes the route of `s` from `published`, noting the change, if there is one.
fn forget(
    published: &mut BTreeMap<Ipv4Net, Route>,
    s: control::Ipv4Net,
    changes: &mut Vec<RouteChange>,
) {
    let subnet = super::engine_net(s);
    if published.remove(&subnet).is_some() {
        changes.push(RouteChange::Remove(subnet));
    }
}

/// The prefix length of every lease in `leases` if they all have the same one and come in
/// strictly increasing subnet order; `None` otherwise (also for no leases).
fn one_length(leases: &[Lease]) -> Option<u8> {
    let first = leases.first()?.subnet.prefix_len();
    let same = leases.iter().all(|l| l.subnet.prefix_len() == first);
    let ordered = leases.windows(2).all(|w| w[0].subnet < w[1].subnet);
    (same && ordered).then_some(first)
}

/// A 64-bit hash of everything in a lease a route can depend on (all of it but the expiry, which
/// is unknown for other hosts' leases): equal fingerprints mean the route is the one computed
/// before. Destructured field by field, so that a field added to [`Lease`] must be added here.
fn fingerprint(l: &Lease) -> u64 {
    use std::hash::{Hash, Hasher};
    let Lease {
        subnet,
        ipv6_subnet,
        attrs,
        expiration: _,
    } = l;
    let LeaseAttrs {
        public_ip,
        public_ipv6,
        backend_type,
        backend_data,
        backend_v6_data,
    } = attrs;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    subnet.hash(&mut h);
    ipv6_subnet.hash(&mut h);
    public_ip.hash(&mut h);
    public_ipv6.hash(&mut h);
    backend_type.hash(&mut h);
    backend_data.as_ref().map(|d| d.as_str()).hash(&mut h);
    backend_v6_data.as_ref().map(|d| d.as_str()).hash(&mut h);
    h.finish()
}

/// The changes that turn the routes `old` into `new` (both ordered by subnet).
fn diff(old: &BTreeMap<Ipv4Net, Route>, new: &BTreeMap<Ipv4Net, Route>) -> Vec<RouteChange> {
    let mut changes = Vec::new();
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some((s, _)), None) => {
                changes.push(RouteChange::Remove(**s));
                o.next();
            }
            (None, Some((_, r))) => {
                changes.push(RouteChange::Set(**r));
                n.next();
            }
            (Some((os, or)), Some((ns, nr))) => match os.cmp(ns) {
                std::cmp::Ordering::Less => {
                    changes.push(RouteChange::Remove(**os));
                    o.next();
                }
                std::cmp::Ordering::Greater => {
                    changes.push(RouteChange::Set(**nr));
                    n.next();
                }
                std::cmp::Ordering::Equal => {
                    if or != nr {
                        changes.push(RouteChange::Set(**nr));
                    }
                    o.next();
                    n.next();
                }
            },
        }
    }
    changes
}

impl Backend for Tunnel {
    fn name(&self) -> &'static str {
        self.name
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        self.attrs.clone()
    }

    /// The TUN MTU: underlay MTU minus the wire's overhead; dual stack: the smaller of that and
    /// the underlay MTU minus 70 (VXLAN over IPv6), the one device carrying both; IPv6 only: the
    /// underlay MTU minus 70.
    fn mtu(&self) -> u32 {
        let mtu = self.host.underlay.mtu;
        let v4 = mtu.saturating_sub(self.params.wire.overhead());
        let v6 = mtu.saturating_sub(engine::dataplane::VXLAN6_OVERHEAD);
        match (self.host.ipv4, &self.v6) {
            (true, Some(_)) => v4.min(v6),
            (true, None) => v4,
            (false, _) => v6,
        }
    }

    fn set_ipv6_subnet(
        &mut self,
        network: control::subnet::Ipv6Net,
        local: control::subnet::Ipv6Net,
    ) -> Result<()> {
        match self.v6.as_mut() {
            Some(v6) => {
                v6.net = Some((engine_net6(network), engine_net6(local)));
                Ok(())
            }
            None => anyhow::bail!(
                "the {} backend carries IPv4 only (IPv6 subnet {local})",
                self.name
            ),
        }
    }

    fn start(&mut self, network: Ipv4Net, local: Ipv4Net) -> Result<()> {
        let cfg = dataplane_config(
            &self.host,
            network,
            local,
            self.params.port,
            self.params.wire,
        );
        let v6 = match &self.v6 {
            Some(v6) => {
                let Some((network6, local6)) = v6.net else {
                    anyhow::bail!("{}: IPv6 without an IPv6 subnet to carry", self.name);
                };
                Some(DataplaneV6 {
                    network: network6,
                    local: local6,
                    bind: SocketAddrV6::new(v6.public, self.params.port, 0, 0),
                    mac: v6.mac,
                    underlay_mtu: self.host.underlay.mtu,
                })
            }
            None if !self.host.ipv4 => {
                anyhow::bail!(
                    "{}: IPv6 only without an IPv6 address to carry it",
                    self.name
                )
            }
            None => None,
        };
        let dp = start_dataplane_dual(&cfg, v6.as_ref(), Arc::clone(&self.table))?;
        if let Some(v6) = &v6 {
            tracing::info!(
                backend = self.name,
                address = %v6.local.addr(),
                network = %v6.network,
                bind = %v6.bind,
                "IPv6 data plane running"
            );
        }
        tracing::info!(
            backend = self.name,
            tun = %cfg.tun_name,
            mtu = self.mtu(),
            address = ?cfg.bind.map(|_| local.addr()),
            bind = ?cfg.bind,
            workers = dp.workers(),
            pinned = dp.pinned(),
            batch = cfg.batch_size,
            udp_gso = dp.offloads().0,
            udp_gro = dp.offloads().1,
            tun_offload = dp.tun_offload(),
            "data plane running"
        );
        self.dp = Some(dp);
        self.net = Some((network, local));
        let pending = std::mem::take(&mut self.pending);
        self.publish(&pending);
        Ok(())
    }

    fn set_leases(&mut self, leases: &[Lease]) {
        if self.net.is_none() {
            self.pending = leases.to_vec();
        } else {
            self.publish(leases);
        }
    }

    fn tick(&mut self) -> Result<()> {
        match &self.dp {
            Some(dp) if !dp.healthy() => Err(anyhow::anyhow!("a worker thread stopped; exiting")),
            _ => Ok(()),
        }
    }

    fn stats(&self) -> String {
        self.dp.as_ref().map(stats_line).unwrap_or_default()
    }

    fn dataplane(&self) -> Option<StatsSource> {
        self.dp.as_ref().map(Dataplane::stats_source)
    }

    fn stop(self: Box<Self>) -> String {
        self.dp.map(|dp| dp.stop().to_string()).unwrap_or_default()
    }
}

/// A running data plane's counters for the stats line (`key=value` pairs, leading space): the
/// route snapshot, worker health and heartbeat, and every counter.
pub(crate) fn stats_line(dp: &Dataplane) -> String {
    crate::metrics::line(&crate::metrics::dataplane(&dp.stats_source()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn routes(list: &[(&str, u8)]) -> BTreeMap<Ipv4Net, Route> {
        list.iter()
            .map(|(net, peer)| {
                let subnet: Ipv4Net = net.parse().expect("valid");
                let peer = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, *peer), 8285);
                (subnet, Route::udp(subnet, peer))
            })
            .collect()
    }

    #[test]
    fn fingerprints_follow_the_route_inputs() {
        let mut a = Lease {
            subnet: "10.1.2.0/24".parse().expect("valid"),
            ipv6_subnet: None,
            attrs: LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 2)),
            expiration: None,
        };
        let b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        a.expiration = Some(std::time::SystemTime::now());
        assert_eq!(
            fingerprint(&a),
            fingerprint(&b),
            "the expiry makes no route"
        );
        a.attrs.public_ip = Ipv4Addr::new(192, 0, 2, 3);
        assert_ne!(fingerprint(&a), fingerprint(&b));
        let mut c = b.clone();
        c.attrs.backend_type = Some("vxlan".into());
        assert_ne!(fingerprint(&c), fingerprint(&b));
        let mut d = c.clone();
        d.attrs.backend_data = control::lease::RawJson::new(r#"{"VNI":1}"#);
        assert!(d.attrs.backend_data.is_some());
        assert_ne!(fingerprint(&d), fingerprint(&c));
        let mut e = b.clone();
        e.subnet = "10.1.3.0/24".parse().expect("valid");
        assert_ne!(fingerprint(&e), fingerprint(&b));
    }

    #[test]
    fn diff_lists_what_changed_only() {
        let old = routes(&[("10.1.1.0/24", 1), ("10.1.2.0/24", 2), ("10.1.4.0/24", 4)]);
        let new = routes(&[("10.1.2.0/24", 9), ("10.1.3.0/24", 3), ("10.1.4.0/24", 4)]);
        let got = diff(&old, &new);
        assert_eq!(
            got,
            vec![
                RouteChange::Remove("10.1.1.0/24".parse().expect("valid")),
                RouteChange::Set(new[&"10.1.2.0/24".parse().expect("valid")]),
                RouteChange::Set(new[&"10.1.3.0/24".parse().expect("valid")]),
            ]
        );
        assert!(diff(&new, &new).is_empty());
        // Applied to a table holding `old`, the changes give a table holding `new`.
        let t = RouteTable::new();
        t.replace(old.values().copied()).expect("disjoint");
        t.apply(got).expect("disjoint");
        let mut now: Vec<Route> = t.load().routes().collect();
        now.sort_by_key(|r| r.subnet);
        assert_eq!(now, new.values().copied().collect::<Vec<_>>());
        let all_new = diff(&BTreeMap::new(), &new);
        assert_eq!(all_new.len(), 3);
        assert_eq!(diff(&new, &BTreeMap::new()).len(), 3);
    }
}
