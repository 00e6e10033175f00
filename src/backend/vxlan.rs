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

use super::routes::{self, RouteKeeper, RESYNC};
use super::{Backend, HostInfo, SkipLog};
use crate::netlink::{Netlink, RouteSpec, VxlanSpec};
use anyhow::{Context, Result};
use control::lease::format_mac;
use control::{Lease, LeaseAttrs, VxlanConfig};
use engine::{Ipv4Net, StatsSource};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

/// Route protocol of the per-peer routes on the device (`boot`, what flannel's routes get).
const RTPROT_BOOT: u8 = 3;
/// Route protocol the kernel gives routes it derives from addresses.
const RTPROT_KERNEL: u8 = 2;

/// How a peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// Through the vxlan device.
    Vxlan { ip: Ipv4Addr, mac: [u8; 6] },
    /// DirectRouting: a plain route via the on-link peer.
    Direct { ip: Ipv4Addr },
}

/// The kernel vxlan backend.
#[derive(Debug)]
pub(crate) struct Vxlan {
    host: HostInfo,
    cfg: VxlanConfig,
    nl: Netlink,
    spec: VxlanSpec,
    index: u32,
    mac: [u8; 6],
    net: Option<(Ipv4Net, Ipv4Net)>,
    leases: Vec<Lease>,
    programmed: BTreeMap<Ipv4Net, Peer>,
    direct: Option<RouteKeeper>,
    pruned: bool,
    skip: SkipLog,
    failures: u64,
    recreated: u64,
    /// Peers reprogrammed because an entry of theirs went missing.
    repaired: u64,
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

impl Vxlan {
    pub(crate) fn new(host: &HostInfo, cfg: &VxlanConfig) -> Result<Self> {
        let mut nl = Netlink::new().context("opening a netlink socket")?;
        nl.name_link(host.underlay_index, &host.underlay.name);
        let underlay_mtu = cfg.mtu.unwrap_or(host.underlay.mtu);
        let spec = VxlanSpec {
            name: format!("flannel.{}", cfg.vni),
            vni: cfg.vni,
            local: host.public_ip,
            underlay_index: host.underlay_index,
            port: cfg.port_set.then_some(cfg.port),
            gbp: cfg.gbp,
            learning: cfg.learning,
            mtu: underlay_mtu.saturating_sub(engine::dataplane::VXLAN_OVERHEAD),
            mac: None,
        };
        let (index, mac) = ensure_device(&mut nl, &spec)?;
        Ok(Vxlan {
            host: host.clone(),
            cfg: cfg.clone(),
            nl,
            spec,
            index,
            mac,
            net: None,
            leases: Vec::new(),
            programmed: BTreeMap::new(),
            direct: None,
            pruned: false,
            skip: SkipLog::default(),
            failures: 0,
            recreated: 0,
            repaired: 0,
            next_retry: Instant::now() + RESYNC,
        })
    }

    /// Address and link state of the device: our subnet's network address /32 only.
    fn configure_device(&mut self) -> Result<()> {
        let Some((network, local)) = self.net else {
            return Ok(());
        };
        let name = &self.spec.name;
        for (addr, prefix) in self.nl.addresses(self.index)? {
            if (addr, prefix) != (local.addr(), 32) && network.contains(addr) {
                self.nl.delete_address(self.index, addr, prefix)?;
                tracing::info!(device = %name, %addr, prefix, "removed an old address");
            }
        }
        self.nl.add_address(self.index, local.addr(), 32)?;
        self.nl.set_link_up(self.index)?;
        // flannel sets accept_ra=0 on its device; without IPv6 the file does not exist.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_ra"), "0");
        Ok(())
    }

    fn on_link(&mut self, ip: Ipv4Addr) -> bool {
        match self.nl.route_get(ip) {
            Ok(r) => r.gateway.is_none(),
            Err(e) => {
                tracing::warn!(%ip, "route lookup: {e}");
                false
            }
        }
    }

    fn onlink_route(&self, subnet: Ipv4Net) -> RouteSpec {
        RouteSpec {
            dst: subnet.addr(),
            prefix: subnet.prefix(),
            gateway: Some(subnet.addr()),
            oif: self.index,
            onlink: true,
            protocol: RTPROT_BOOT,
        }
    }

    fn program(&mut self, subnet: Ipv4Net, ip: Ipv4Addr, mac: [u8; 6]) -> std::io::Result<()> {
        let gw = subnet.addr();
        self.nl.replace_neigh(self.index, gw, mac)?;
        self.nl.replace_fdb(self.index, mac, ip)?;
        let r = self.onlink_route(subnet);
        self.nl.replace_route(&r)
    }

    fn unprogram(&mut self, subnet: Ipv4Net, ip: Ipv4Addr, mac: [u8; 6]) {
        let r = self.onlink_route(subnet);
        let results = [
            self.nl.delete_route(&r),
            self.nl.delete_fdb(self.index, mac, ip),
            self.nl.delete_neigh(self.index, subnet.addr()),
        ];
        for e in results.into_iter().filter_map(Result::err) {
            tracing::warn!(%subnet, "{e}");
        }
    }

    /// Removes device entries that no desired peer explains (once after a start).
    fn prune(&mut self, desired: &BTreeMap<Ipv4Net, Peer>) -> std::io::Result<()> {
        let want: Vec<(Ipv4Net, Ipv4Addr, [u8; 6])> = desired
            .iter()
            .filter_map(|(n, p)| match p {
                Peer::Vxlan { ip, mac } => Some((*n, *ip, *mac)),
                Peer::Direct { .. } => None,
            })
            .collect();
        let mut removed = 0;
        for r in self.nl.routes(None)? {
            if r.oif == self.index
                && r.protocol != RTPROT_KERNEL
                && !want
                    .iter()
                    .any(|(n, _, _)| (n.addr(), n.prefix()) == (r.dst, r.prefix))
            {
                self.nl.delete_route(&r)?;
                removed += 1;
            }
        }
        for (mac, dst) in self.nl.fdb(self.index)? {
            let Some(dst) = dst else { continue };
            if !want.iter().any(|(_, ip, m)| (*m, *ip) == (mac, dst)) {
                self.nl.delete_fdb(self.index, mac, dst)?;
                removed += 1;
            }
        }
        for (ip, mac) in self.nl.neighbours(self.index)? {
            if !want.iter().any(|(n, _, m)| (n.addr(), *m) == (ip, mac)) {
                self.nl.delete_neigh(self.index, ip)?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(device = %self.spec.name, removed, "removed entries of peers that are gone");
        }
        Ok(())
    }

    fn apply(&mut self) {
        let Some((network, local)) = self.net else {
            return;
        };
        let vni = self.cfg.vni;
        let (usable, skipped) = super::usable(&self.leases, network, local, |l| {
            super::vxlan_peer(l, vni).map(|mac| (l.attrs.public_ip, mac))
        });
        self.skip.report("vxlan", skipped);
        let mut desired = BTreeMap::new();
        for (subnet, (ip, mac)) in usable {
            let peer = if self.cfg.direct_routing && self.on_link(ip) {
                Peer::Direct { ip }
            } else {
                Peer::Vxlan { ip, mac }
            };
            desired.insert(subnet, peer);
        }
        if !self.pruned {
            match self.prune(&desired) {
                Ok(()) => self.pruned = true,
                Err(e) => tracing::warn!(device = %self.spec.name, "removing stale entries: {e}"),
            }
        }
        // Gone or changed: take down what was programmed for the old value.
        let old: Vec<(Ipv4Net, Peer)> = self
            .programmed
            .iter()
            .filter(|(n, p)| desired.get(n) != Some(p))
            .map(|(n, p)| (*n, *p))
            .collect();
        for (subnet, peer) in old {
            self.programmed.remove(&subnet);
            if let Peer::Vxlan { ip, mac } = peer {
                self.unprogram(subnet, ip, mac);
                tracing::info!(%subnet, %ip, mac = %format_mac(&mac), "vxlan peer removed");
            }
        }
        let mut direct = BTreeMap::new();
        for (subnet, peer) in &desired {
            match *peer {
                Peer::Direct { ip } => {
                    direct.insert(*subnet, routes::via(*subnet, ip, self.host.underlay_index));
                    self.programmed.insert(*subnet, *peer);
                }
                Peer::Vxlan { ip, mac } if !self.programmed.contains_key(subnet) => {
                    match self.program(*subnet, ip, mac) {
                        Ok(()) => {
                            tracing::info!(%subnet, %ip, mac = %format_mac(&mac), "vxlan peer added");
                            self.programmed.insert(*subnet, *peer);
                        }
                        Err(e) => {
                            self.failures += 1;
                            tracing::error!(%subnet, "programming vxlan peer {ip}: {e}; retrying");
                        }
                    }
                }
                Peer::Vxlan { .. } => {}
            }
        }
        if let Some(k) = self.direct.as_mut() {
            k.set(&mut self.nl, direct);
        }
    }

    /// Forgets the vxlan peers whose neighbour, FDB entry or route is no longer on the device
    /// (flushed by the kernel when the device went down, or deleted from outside), so that the
    /// next [`Vxlan::apply`] programs them again.
    fn verify(&mut self) {
        let peers: Vec<(Ipv4Net, Ipv4Addr, [u8; 6])> = self
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
        let listed = self.nl.routes(None).and_then(|r| {
            let n = self.nl.neighbours(self.index)?;
            Ok((r, n, self.nl.fdb(self.index)?))
        });
        let (routes, neighbours, fdb) = match listed {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(device = %self.spec.name, "checking the peers' entries: {e}");
                return;
            }
        };
        for (subnet, ip, mac) in peers {
            let gw = subnet.addr();
            let route = routes.iter().any(|r| {
                r.oif == self.index
                    && (r.dst, r.prefix) == (subnet.addr(), subnet.prefix())
                    && r.gateway == Some(gw)
            });
            let neigh = neighbours.contains(&(gw, mac));
            let fdb = fdb.contains(&(mac, Some(ip)));
            if !(route && neigh && fdb) {
                tracing::warn!(%subnet, %ip, route, neigh, fdb, "entries of a vxlan peer went missing; reprogramming it");
                self.programmed.remove(&subnet);
                self.repaired += 1;
            }
        }
    }

    /// The device vanished (deleted from outside): create it again with the same MAC.
    fn recreate(&mut self) -> Result<()> {
        let mut spec = self.spec.clone();
        spec.mac = Some(self.mac);
        let (index, mac) = ensure_device(&mut self.nl, &spec)?;
        self.index = index;
        self.mac = mac;
        self.configure_device()?;
        self.programmed
            .retain(|_, p| matches!(p, Peer::Direct { .. }));
        self.recreated += 1;
        self.apply();
        Ok(())
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
        LeaseAttrs::vxlan(self.host.public_ip, self.cfg.vni, self.mac)
    }

    fn mtu(&self) -> u32 {
        self.spec.mtu
    }

    fn start(&mut self, network: Ipv4Net, local: Ipv4Net) -> Result<()> {
        self.net = Some((network, local));
        self.configure_device()
            .with_context(|| format!("configuring {}", self.spec.name))?;
        if self.cfg.direct_routing {
            self.direct =
                Some(RouteKeeper::adopt(&mut self.nl, network).context("reading weft's routes")?);
        }
        self.apply();
        tracing::info!(device = %self.spec.name, address = %local.addr(), peers = self.programmed.len(), direct_routing = self.cfg.direct_routing, "vxlan device programmed");
        Ok(())
    }

    fn set_leases(&mut self, leases: &[Lease]) {
        self.leases = leases.to_vec();
        self.apply();
    }

    fn tick(&mut self) -> Result<()> {
        if self.net.is_none() {
            return Ok(());
        }
        match self.nl.link_by_name(&self.spec.name) {
            Ok(Some(l)) if l.index == self.index && l.up => {}
            Ok(Some(l)) if l.index == self.index => {
                // Going down flushed its neighbours and routes (permanent ones too).
                tracing::warn!(device = %self.spec.name, "vxlan device was set down; setting it up and reprogramming it");
                self.nl
                    .set_link_up(self.index)
                    .with_context(|| format!("setting {} up", self.spec.name))?;
                self.verify();
                self.apply();
            }
            Ok(_) => {
                tracing::warn!(device = %self.spec.name, "vxlan device vanished; recreating it");
                self.recreate()?;
            }
            Err(e) => tracing::warn!("looking up {}: {e}", self.spec.name),
        }
        if Instant::now() >= self.next_retry {
            self.next_retry = Instant::now() + RESYNC;
            self.verify();
            self.apply();
            if let Some(k) = self.direct.as_mut() {
                k.resync(&mut self.nl);
            }
        }
        Ok(())
    }

    fn stats(&self) -> String {
        let direct = self
            .programmed
            .values()
            .filter(|p| matches!(p, Peer::Direct { .. }))
            .count();
        format!(
            " device={} peers={} direct={} failures={} recreated={} repaired={}",
            self.spec.name,
            self.programmed.len(),
            direct,
            self.failures,
            self.recreated,
            self.repaired
        )
    }

    fn dataplane(&self) -> Option<StatsSource> {
        None
    }

    fn stop(self: Box<Self>) -> String {
        self.stats()
    }
}
