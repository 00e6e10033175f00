//! flannel's vxlan backend on the kernel's data plane: weft only programs the kernel.
//!
//! * Device `flannel.<VNI>`: `vxlan id <VNI> local <public IP> dev <underlay> [dstport <Port>]
//!   nolearning [gbp]`, MTU = underlay MTU (or `MTU`) − 50, address = our subnet's network
//!   address /32. An existing device with the same VNI, local address, underlay, port, GBP and
//!   learning is reused (its MAC, which peers know from our lease, is kept); any other is deleted
//!   and created anew with a random locally administered MAC.
//! * Per vxlan lease (subnet S, public IP P, VTEP MAC M): permanent neighbour S.0 → M, FDB entry
//!   M → P, and the route S via S.0 onlink on the device (in that order, so the kernel never has
//!   to resolve anything); removed when the lease goes. With `DirectRouting`, a peer that is
//!   on-link (`ip route get P` has no gateway) gets the plain route S via P instead.
//! * At the first lease set after a start, entries on the device that no lease explains (peers
//!   that left while weft was down) are removed; failed entries are retried every 10 s; a
//!   device deleted from outside is recreated with the same MAC and reprogrammed; a device set
//!   down from outside is set up again (the kernel flushed its neighbours and routes) and
//!   reprogrammed; every 10 s a peer whose neighbour, FDB entry or route went missing is
//!   reprogrammed.
//! * Dual stack (`EnableIPv6`): a second device `flannel-v6.<VNI>` with the same VNI, port and
//!   options, our public IPv6 address as local, MTU = underlay MTU (or `MTU`) − 70 (the kernel's
//!   cap for VXLAN over IPv6; flanneld asks for − 50 and gets the same), `accept_ra` 0, address = our IPv6
//!   subnet's network address /128 (other addresses but link-local ones removed). Each lease
//!   with an IPv6 subnet, a `PublicIPv6` and `BackendV6Data` gets the same neighbour, FDB entry
//!   and onlink route on it (DirectRouting: `ip -6 route get`), and the device is checked and
//!   repaired like the IPv4 one. Unlike flanneld, a deleted `flannel-v6.<VNI>` is recreated.
//!   IPv6 only (`EnableIPv4: false`): `flannel-v6.<VNI>` alone, no `BackendData` in the lease.

use super::family::{self, Family};
use super::routes::{self, RouteKeeper, RESYNC};
use super::{Backend, HostInfo, SkipLog};
use crate::netlink::{Netlink, NlAddr, RouteSpec, VxlanSpec};
use anyhow::{Context, Result};
use control::lease::format_mac;
use control::subnet::Ipv6Net;
use control::{Lease, LeaseAttrs, VxlanConfig};
use engine::{Ipv4Net, StatsSource};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

/// Route protocol of the per-peer routes on the device (`boot`, what flannel's routes get).
const RTPROT_BOOT: u8 = 3;
/// Route protocol the kernel gives routes it derives from addresses.
const RTPROT_KERNEL: u8 = 2;
/// Outer headers of VXLAN over IPv6 (40 + 8 + 8 + 14): the kernel caps a vxlan device with an
/// IPv6 local address at the underlay MTU minus this, whatever MTU it is created with.
const VXLAN6_OVERHEAD: u32 = 70;

/// How a peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer<A> {
    /// Through the vxlan device.
    Vxlan { ip: A, mac: [u8; 6] },
    /// DirectRouting: a plain route via the on-link peer.
    Direct { ip: A },
}

/// One vxlan device and what it holds: `flannel.<VNI>` (IPv4) or `flannel-v6.<VNI>` (IPv6).
#[derive(Debug)]
struct Device<N: Family> {
    spec: VxlanSpec,
    index: u32,
    mac: [u8; 6],
    net: Option<(N, N)>,
    programmed: BTreeMap<N, Peer<N::Addr>>,
    direct: Option<RouteKeeper<N>>,
    pruned: bool,
    skip: SkipLog,
    failures: u64,
    recreated: u64,
    /// Peers reprogrammed because an entry of theirs went missing.
    repaired: u64,
}

/// The kernel vxlan backend.
#[derive(Debug)]
pub(crate) struct Vxlan {
    host: HostInfo,
    cfg: VxlanConfig,
    nl: Netlink,
    /// The IPv4 device (`None` on an IPv6-only network).
    v4: Option<Device<Ipv4Net>>,
    /// Dual stack or IPv6 only: the IPv6 device.
    v6: Option<Device<Ipv6Net>>,
    leases: Vec<Lease>,
    next_retry: Instant,
}

/// A random locally administered unicast MAC (flannel's `byte0 = (rand & 0xfe) | 0x02`).
fn random_mac() -> [u8; 6] {
    use std::hash::{BuildHasher, Hasher};
    let mut mac = [0u8; 6];
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    mac.copy_from_slice(&h.finish().to_le_bytes()[..6]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

impl<N: Family> Device<N> {
    /// Creates or reuses the device of `spec`.
    fn new(nl: &mut Netlink, spec: VxlanSpec) -> Result<Self> {
        let (index, mac) = ensure_device(nl, &spec)?;
        Ok(Device {
            spec,
            index,
            mac,
            net: None,
            programmed: BTreeMap::new(),
            direct: None,
            pruned: false,
            skip: SkipLog::default(),
            failures: 0,
            recreated: 0,
            repaired: 0,
        })
    }

    /// Address and link state of the device: our subnet's network address /32 (/128) only.
    fn configure(&mut self, nl: &mut Netlink) -> Result<()> {
        let Some((network, local)) = self.net else {
            return Ok(());
        };
        let name = &self.spec.name;
        let host_len = <N::Addr as NlAddr>::BITS;
        for (addr, prefix) in nl.addresses_of::<N::Addr>(self.index)? {
            if network.stale_device_address(&local, addr, prefix) {
                nl.delete_address(self.index, addr, prefix)?;
                tracing::info!(device = %name, %addr, prefix, "removed an old address");
            }
        }
        // flannel sets accept_ra=0 on its devices; on the IPv4 one the file exists only when the
        // kernel has IPv6. Before the address, so that no router advertisement is taken.
        let ra = format!("/proc/sys/net/ipv6/conf/{name}/accept_ra");
        if let Err(e) = std::fs::write(&ra, "0") {
            if N::Addr::FAMILY == netlink_packet_route::AddressFamily::Inet6 {
                anyhow::bail!("setting {ra} to 0: {e}");
            }
        }
        nl.add_address(self.index, local.net_addr(), host_len)?;
        nl.set_link_up(self.index)?;
        Ok(())
    }

    fn on_link(nl: &mut Netlink, ip: N::Addr) -> bool {
        match nl.route_get(ip) {
            Ok(r) => r.gateway.is_none(),
            Err(e) => {
                tracing::warn!(%ip, "route lookup: {e}");
                false
            }
        }
    }

    fn onlink_route(&self, subnet: N) -> RouteSpec<N::Addr> {
        RouteSpec {
            dst: subnet.net_addr(),
            prefix: subnet.net_prefix(),
            gateway: Some(subnet.net_addr()),
            oif: self.index,
            onlink: true,
            protocol: RTPROT_BOOT,
        }
    }

    fn program(
        &mut self,
        nl: &mut Netlink,
        subnet: N,
        ip: N::Addr,
        mac: [u8; 6],
    ) -> std::io::Result<()> {
        let gw = subnet.net_addr();
        nl.replace_neigh(self.index, gw, mac)?;
        nl.replace_fdb(self.index, mac, ip)?;
        let r = self.onlink_route(subnet);
        nl.replace_route(&r)
    }

    fn unprogram(&mut self, nl: &mut Netlink, subnet: N, ip: N::Addr, mac: [u8; 6]) {
        let r = self.onlink_route(subnet);
        let results = [
            nl.delete_route(&r),
            nl.delete_fdb(self.index, mac, ip),
            nl.delete_neigh(self.index, subnet.net_addr()),
        ];
        for e in results.into_iter().filter_map(Result::err) {
            tracing::warn!(%subnet, "{e}");
        }
    }

    /// Removes device entries that no desired peer explains (once after a start).
    fn prune(
        &mut self,
        nl: &mut Netlink,
        desired: &BTreeMap<N, Peer<N::Addr>>,
    ) -> std::io::Result<()> {
        let want: Vec<(N, N::Addr, [u8; 6])> = desired
            .iter()
            .filter_map(|(n, p)| match p {
                Peer::Vxlan { ip, mac } => Some((*n, *ip, *mac)),
                Peer::Direct { .. } => None,
            })
            .collect();
        let mut removed = 0;
        for r in nl.routes_of::<N::Addr>(None)? {
            if r.oif == self.index
                && r.protocol != RTPROT_KERNEL
                && !want
                    .iter()
                    .any(|(n, _, _)| (n.net_addr(), n.net_prefix()) == (r.dst, r.prefix))
            {
                nl.delete_route(&r)?;
                removed += 1;
            }
        }
        for (mac, dst) in nl.fdb_of::<N::Addr>(self.index)? {
            let Some(dst) = dst else { continue };
            if !want.iter().any(|(_, ip, m)| (*m, *ip) == (mac, dst)) {
                nl.delete_fdb(self.index, mac, dst)?;
                removed += 1;
            }
        }
        for (ip, mac) in nl.neighbours_of::<N::Addr>(self.index)? {
            if !want.iter().any(|(n, _, m)| (n.net_addr(), *m) == (ip, mac)) {
                nl.delete_neigh(self.index, ip)?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(device = %self.spec.name, removed, "removed entries of peers that are gone");
        }
        Ok(())
    }

    fn apply(&mut self, nl: &mut Netlink, cfg: &VxlanConfig, underlay: u32, leases: &[Lease]) {
        let Some((network, local)) = self.net else {
            return;
        };
        let vni = cfg.vni;
        let (usable, skipped) = family::usable_of(leases, network, local, |l, ip| {
            family::vxlan_peer_of::<N>(l, vni).map(|mac| (ip, mac))
        });
        self.skip.report(&self.spec.name, skipped);
        let mut desired = BTreeMap::new();
        for (subnet, (ip, mac)) in usable {
            let peer = if cfg.direct_routing && Self::on_link(nl, ip) {
                Peer::Direct { ip }
            } else {
                Peer::Vxlan { ip, mac }
            };
            desired.insert(subnet, peer);
        }
        if !self.pruned {
            match self.prune(nl, &desired) {
                Ok(()) => self.pruned = true,
                Err(e) => tracing::warn!(device = %self.spec.name, "removing stale entries: {e}"),
            }
        }
        // Gone or changed: take down what was programmed for the old value.
        let old: Vec<(N, Peer<N::Addr>)> = self
            .programmed
            .iter()
            .filter(|(n, p)| desired.get(n) != Some(p))
            .map(|(n, p)| (*n, *p))
            .collect();
        for (subnet, peer) in old {
            self.programmed.remove(&subnet);
            if let Peer::Vxlan { ip, mac } = peer {
                self.unprogram(nl, subnet, ip, mac);
                tracing::info!(device = %self.spec.name, %subnet, %ip, mac = %format_mac(&mac), "vxlan peer removed");
            }
        }
        let mut direct = BTreeMap::new();
        for (subnet, peer) in &desired {
            match *peer {
                Peer::Direct { ip } => {
                    direct.insert(*subnet, routes::via(*subnet, ip, underlay));
                    self.programmed.insert(*subnet, *peer);
                }
                Peer::Vxlan { ip, mac } if !self.programmed.contains_key(subnet) => {
                    match self.program(nl, *subnet, ip, mac) {
                        Ok(()) => {
                            tracing::info!(device = %self.spec.name, %subnet, %ip, mac = %format_mac(&mac), "vxlan peer added");
                            self.programmed.insert(*subnet, *peer);
                        }
                        Err(e) => {
                            self.failures += 1;
                            tracing::error!(device = %self.spec.name, %subnet, "programming vxlan peer {ip}: {e}; retrying");
                        }
                    }
                }
                Peer::Vxlan { .. } => {}
            }
        }
        if let Some(k) = self.direct.as_mut() {
            k.set(nl, direct);
        }
    }

    /// Forgets the vxlan peers whose neighbour, FDB entry or route is no longer on the device
    /// (flushed by the kernel when the device went down, or deleted from outside), so that the
    /// next [`Device::apply`] programs them again.
    fn verify(&mut self, nl: &mut Netlink) {
        let peers: Vec<(N, N::Addr, [u8; 6])> = self
            .programmed
            .iter()
            .filter_map(|(n, p)| match p {
                Peer::Vxlan { ip, mac } => Some((*n, *ip, *mac)),
                Peer::Direct { .. } => None,
            })
            .collect();
        if peers.is_empty() {
            return;
        }
        let listed = nl.routes_of::<N::Addr>(None).and_then(|r| {
            let n = nl.neighbours_of::<N::Addr>(self.index)?;
            Ok((r, n, nl.fdb_of::<N::Addr>(self.index)?))
        });
        let (routes, neighbours, fdb) = match listed {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(device = %self.spec.name, "checking the peers' entries: {e}");
                return;
            }
        };
        for (subnet, ip, mac) in peers {
            let gw = subnet.net_addr();
            let route = routes.iter().any(|r| {
                r.oif == self.index
                    && (r.dst, r.prefix) == (subnet.net_addr(), subnet.net_prefix())
                    && r.gateway == Some(gw)
            });
            let neigh = neighbours.contains(&(gw, mac));
            let fdb = fdb.contains(&(mac, Some(ip)));
            if !(route && neigh && fdb) {
                tracing::warn!(device = %self.spec.name, %subnet, %ip, route, neigh, fdb, "entries of a vxlan peer went missing; reprogramming it");
                self.programmed.remove(&subnet);
                self.repaired += 1;
            }
        }
    }

    /// The device vanished (deleted from outside): create it again with the same MAC.
    fn recreate(&mut self, nl: &mut Netlink) -> Result<()> {
        let mut spec = self.spec.clone();
        spec.mac = Some(self.mac);
        let (index, mac) = ensure_device(nl, &spec)?;
        self.index = index;
        self.mac = mac;
        self.configure(nl)?;
        self.programmed
            .retain(|_, p| matches!(p, Peer::Direct { .. }));
        self.recreated += 1;
        Ok(())
    }

    /// Our subnet is known: configure the device and program the peers.
    fn start(
        &mut self,
        nl: &mut Netlink,
        cfg: &VxlanConfig,
        underlay: u32,
        leases: &[Lease],
        network: N,
        local: N,
    ) -> Result<()> {
        self.net = Some((network, local));
        self.configure(nl)
            .with_context(|| format!("configuring {}", self.spec.name))?;
        if cfg.direct_routing {
            self.direct = Some(RouteKeeper::adopt(nl, network).context("reading weft's routes")?);
        }
        self.apply(nl, cfg, underlay, leases);
        tracing::info!(device = %self.spec.name, address = %local.net_addr(), peers = self.programmed.len(), direct_routing = cfg.direct_routing, "vxlan device programmed");
        Ok(())
    }

    /// The one-second check: link state (set up again, or recreated), and with `resync` the
    /// peers' entries and the direct routes.
    fn tick(
        &mut self,
        nl: &mut Netlink,
        cfg: &VxlanConfig,
        underlay: u32,
        leases: &[Lease],
        resync: bool,
    ) -> Result<()> {
        if self.net.is_none() {
            return Ok(());
        }
        match nl.link_by_name(&self.spec.name) {
            Ok(Some(l)) if l.index == self.index && l.up => {}
            Ok(Some(l)) if l.index == self.index => {
                // Going down flushed its neighbours and routes (permanent ones too).
                tracing::warn!(device = %self.spec.name, "vxlan device was set down; setting it up and reprogramming it");
                nl.set_link_up(self.index)
                    .with_context(|| format!("setting {} up", self.spec.name))?;
                self.verify(nl);
                self.apply(nl, cfg, underlay, leases);
            }
            Ok(_) => {
                tracing::warn!(device = %self.spec.name, "vxlan device vanished; recreating it");
                self.recreate(nl)?;
                self.apply(nl, cfg, underlay, leases);
            }
            Err(e) => tracing::warn!("looking up {}: {e}", self.spec.name),
        }
        if resync {
            self.verify(nl);
            self.apply(nl, cfg, underlay, leases);
            if let Some(k) = self.direct.as_mut() {
                k.resync(nl);
            }
        }
        Ok(())
    }

    fn direct_count(&self) -> usize {
        self.programmed
            .values()
            .filter(|p| matches!(p, Peer::Direct { .. }))
            .count()
    }

    /// This device's part of the stats line, its names ending in `suffix` (`""` for IPv4, `"6"`
    /// for IPv6).
    fn stats(&self, suffix: &str) -> String {
        format!(
            " device{suffix}={} peers{suffix}={} direct{suffix}={} failures{suffix}={} recreated{suffix}={} repaired{suffix}={}",
            self.spec.name,
            self.programmed.len(),
            self.direct_count(),
            self.failures,
            self.recreated,
            self.repaired
        )
    }
}

impl Vxlan {
    /// Creates (or reuses) `flannel.<VNI>` (unless the network is IPv6 only) and, when the host
    /// has a public IPv6 address (dual stack or IPv6 only, see [`super::create`]),
    /// `flannel-v6.<VNI>`.
    pub(crate) fn new(host: &HostInfo, cfg: &VxlanConfig) -> Result<Self> {
        let mut nl = Netlink::new().context("opening a netlink socket")?;
        nl.name_link(host.underlay_index, &host.underlay.name);
        let underlay_mtu = cfg.mtu.unwrap_or(host.underlay.mtu);
        let spec = |name: String, local: IpAddr| VxlanSpec {
            name,
            vni: cfg.vni,
            local,
            underlay_index: host.underlay_index,
            port: cfg.port_set.then_some(cfg.port),
            gbp: cfg.gbp,
            learning: cfg.learning,
            // flannel asks for MTU − 50 for both devices; the kernel makes that MTU − 70 for the
            // IPv6 one, which is what it gets here, so that a reused device is not "fixed".
            mtu: underlay_mtu.saturating_sub(if local.is_ipv6() {
                VXLAN6_OVERHEAD
            } else {
                engine::dataplane::VXLAN_OVERHEAD
            }),
            mac: None,
        };
        let v4 = if host.ipv4 {
            Some(Device::new(
                &mut nl,
                spec(format!("flannel.{}", cfg.vni), host.public_ip.into()),
            )?)
        } else {
            None
        };
        let v6 = match host.public_ipv6 {
            Some(ip6) => Some(Device::new(
                &mut nl,
                spec(format!("flannel-v6.{}", cfg.vni), ip6.into()),
            )?),
            None => None,
        };
        if v4.is_none() && v6.is_none() {
            anyhow::bail!("vxlan: an IPv6-only network without a public IPv6 address");
        }
        Ok(Vxlan {
            host: host.clone(),
            cfg: cfg.clone(),
            nl,
            v4,
            v6,
            leases: Vec::new(),
            next_retry: Instant::now() + RESYNC,
        })
    }

    fn apply(&mut self) {
        let underlay = self.host.underlay_index;
        if let Some(v4) = self.v4.as_mut() {
            v4.apply(&mut self.nl, &self.cfg, underlay, &self.leases);
        }
        if let Some(v6) = self.v6.as_mut() {
            v6.apply(&mut self.nl, &self.cfg, underlay, &self.leases);
        }
    }
}

/// Reuses a compatible `spec.name` or (re)creates it; returns its index and MAC.
fn ensure_device(nl: &mut Netlink, spec: &VxlanSpec) -> Result<(u32, [u8; 6])> {
    let name = &spec.name;
    if let Some(link) = nl.link_by_name(name)? {
        let compatible = link.vxlan.as_ref().is_some_and(|v| v.matches(spec));
        match (compatible, link.mac) {
            (true, Some(mac)) if spec.mac.is_none_or(|m| m == mac) => {
                if link.mtu != spec.mtu {
                    nl.set_mtu(link.index, spec.mtu)?;
                }
                tracing::info!(device = %name, mac = %format_mac(&mac), "reusing the existing vxlan device");
                return Ok((link.index, mac));
            }
            _ => {
                tracing::info!(device = %name, existing = ?link.vxlan, "existing device is not compatible; recreating it");
                nl.delete_link(link.index)?;
            }
        }
    }
    let mut spec = spec.clone();
    let mac = spec.mac.unwrap_or_else(random_mac);
    spec.mac = Some(mac);
    nl.add_vxlan(&spec)?; // the error names the device and its attributes
    let link = nl
        .link_by_name(name)?
        .with_context(|| format!("{name} missing right after its creation"))?;
    if link.mac != Some(mac) {
        anyhow::bail!(
            "{name}: MAC is {:?}, expected {}",
            link.mac.map(|m| format_mac(&m)),
            format_mac(&mac)
        );
    }
    tracing::info!(device = %name, vni = spec.vni, local = %spec.local, mtu = spec.mtu, mac = %format_mac(&mac), "vxlan device created");
    Ok((link.index, mac))
}

impl Backend for Vxlan {
    fn name(&self) -> &'static str {
        "vxlan"
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        let v4_mac = self.v4.as_ref().map(|d| d.mac);
        match (&self.v6, self.host.public_ipv6) {
            (Some(v6), Some(ip6)) => {
                LeaseAttrs::vxlan_dual(self.host.public_ip, ip6, self.cfg.vni, v4_mac, v6.mac)
            }
            // Without IPv6 `new` made the IPv4 device.
            _ => LeaseAttrs::vxlan(
                self.host.public_ip,
                self.cfg.vni,
                v4_mac.unwrap_or_default(),
            ),
        }
    }

    /// `FLANNEL_MTU`: the IPv4 device's, as flannel; IPv6 only: the IPv6 device's.
    fn mtu(&self) -> u32 {
        match (&self.v4, &self.v6) {
            (Some(d), _) => d.spec.mtu,
            (None, Some(d)) => d.spec.mtu,
            (None, None) => 0,
        }
    }

    fn set_ipv6_subnet(&mut self, network: Ipv6Net, local: Ipv6Net) -> Result<()> {
        match self.v6.as_mut() {
            Some(v6) => {
                v6.net = Some((network, local));
                Ok(())
            }
            None => anyhow::bail!("vxlan: an IPv6 subnet ({local}) without the IPv6 device"),
        }
    }

    fn start(&mut self, network: Ipv4Net, local: Ipv4Net) -> Result<()> {
        let underlay = self.host.underlay_index;
        if let Some(v4) = self.v4.as_mut() {
            v4.start(
                &mut self.nl,
                &self.cfg,
                underlay,
                &self.leases,
                network,
                local,
            )?;
        }
        if let Some(v6) = self.v6.as_mut() {
            let Some((network6, local6)) = v6.net else {
                anyhow::bail!("vxlan: {} has no IPv6 subnet to carry", v6.spec.name);
            };
            v6.start(
                &mut self.nl,
                &self.cfg,
                underlay,
                &self.leases,
                network6,
                local6,
            )?;
        }
        Ok(())
    }

    fn set_leases(&mut self, leases: &[Lease]) {
        self.leases = leases.to_vec();
        self.apply();
    }

    fn tick(&mut self) -> Result<()> {
        let resync = Instant::now() >= self.next_retry;
        if resync {
            self.next_retry = Instant::now() + RESYNC;
        }
        let underlay = self.host.underlay_index;
        if let Some(v4) = self.v4.as_mut() {
            v4.tick(&mut self.nl, &self.cfg, underlay, &self.leases, resync)?;
        }
        if let Some(v6) = self.v6.as_mut() {
            v6.tick(&mut self.nl, &self.cfg, underlay, &self.leases, resync)?;
        }
        Ok(())
    }

    fn stats(&self) -> String {
        let mut s = String::new();
        if let Some(d) = &self.v4 {
            s.push_str(&d.stats(""));
        }
        if let Some(d) = &self.v6 {
            s.push_str(&d.stats("6"));
        }
        s
    }

    fn dataplane(&self) -> Option<StatsSource> {
        None
    }

    fn stop(self: Box<Self>) -> String {
        self.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn device<N: Family>(name: &str, local: IpAddr, peers: &[(N, Peer<N::Addr>)]) -> Device<N> {
        Device {
            spec: VxlanSpec {
                name: name.to_string(),
                vni: 1,
                local,
                underlay_index: 0,
                port: None,
                gbp: false,
                learning: false,
                mtu: 1450,
                mac: None,
            },
            index: 0,
            mac: [2, 0, 0, 0, 0, 1],
            net: None,
            programmed: peers.iter().cloned().collect(),
            direct: None,
            pruned: false,
            skip: SkipLog::default(),
            failures: 3,
            recreated: 1,
            repaired: 2,
        }
    }

    #[test]
    fn stats_name_each_family_s_figures() {
        let v4 = device::<Ipv4Net>(
            "flannel.1",
            IpAddr::from([192, 0, 2, 1]),
            &[
                (
                    "10.1.2.0/24".parse().expect("valid"),
                    Peer::Direct {
                        ip: Ipv4Addr::new(192, 0, 2, 2),
                    },
                ),
                (
                    "10.1.3.0/24".parse().expect("valid"),
                    Peer::Vxlan {
                        ip: Ipv4Addr::new(192, 0, 2, 3),
                        mac: [2, 0, 0, 0, 0, 3],
                    },
                ),
            ],
        );
        let v6 = device::<Ipv6Net>("flannel-v6.1", "fd00::1".parse().expect("valid"), &[]);
        assert_eq!(
            v4.stats(""),
            " device=flannel.1 peers=2 direct=1 failures=3 recreated=1 repaired=2"
        );
        assert_eq!(
            v6.stats("6"),
            " device6=flannel-v6.1 peers6=0 direct6=0 failures6=3 recreated6=1 repaired6=2"
        );
    }
}
