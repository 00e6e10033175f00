//! Backends: how this host's subnet is reached from the others.
//!
//! The main thread owns the backend; nothing else touches it. Once the control plane has read
//! the network config, the main thread hands it to [`create`], which picks the backend by
//! `Backend.Type` (case-insensitive) and sets up what must exist before our lease is written
//! (the vxlan device, whose MAC goes into the lease). From then on every backend is driven
//! through the same [`Backend`] interface: [`Backend::start`] once our lease is held,
//! [`Backend::set_leases`] with the newest complete set of the other hosts' leases (the control
//! thread sends them through [`lease_sets`], which keeps only the newest, so blocking netlink
//! calls never hold up etcd renewals), [`Backend::tick`] every second. The control plane never
//! learns which backend runs.
//!
//! | module | `Backend` | data path |
//! |---|---|---|
//! | [`udp`] | `{"Type":"udp"}` | weft's workers, flannel's udp wire (port 8285) |
//! | [`vxlan`] | `{"Type":"vxlan"}` | the kernel's vxlan device `flannel.<VNI>`, programmed as flannel does; `DirectRouting` adds plain routes for on-link peers |
//! | [`vxlan_user`] | `{"Type":"vxlan","Userspace":true}` | weft's workers speaking VXLAN, interoperable with kernel peers |
//! | [`hostgw`] | `{"Type":"host-gw"}` | plain kernel routes via each peer's public IP |
//! | [`alloc`] | `{"Type":"alloc"}` | none: only the lease |
//! | [`extension`] | `{"Type":"extension",...}` | whatever the configured commands set up |
//! | [`wireguard`] | `{"Type":"wireguard"}` | weft's WireGuard workers (`engine::wg`), device `flannel-wg`, interoperable with kernel WireGuard peers |

pub(crate) mod alloc;
pub(crate) mod extension;
mod family;
pub(crate) mod hostgw;
use crate::netlink;
mod routes;
mod tunnel;
pub(crate) mod udp;
pub(crate) mod vxlan;
pub(crate) mod vxlan_user;
pub(crate) mod wireguard;

pub(crate) use tunnel::{dataplane_config as tunnel_config, start_dataplane, stats_line};

use crate::cli::RunArgs;
use crate::iface::Underlay;
use anyhow::{Context, Result};
use control::{Lease, LeaseAttrs, NetworkConfig};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use engine::{Ipv4Net, StatsSource};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The control plane's form of an engine network (static mode's subnet.env); with [`engine_net`]
/// the one place where the two types meet.
pub(crate) fn control_net(n: Ipv4Net) -> control::Ipv4Net {
    control::Ipv4Net::new(n.addr(), n.prefix()).expect("an engine prefix length is at most 32")
}

/// The engine's form of a control-plane network: with [`control_net`] the one place where the two types meet.
pub(crate) fn engine_net(n: control::Ipv4Net) -> Ipv4Net {
    Ipv4Net::new(n.addr(), n.prefix_len())
        .expect("control::Ipv4Net keeps its prefix length at most 32")
}

/// The sending half of [`lease_sets`].
#[derive(Debug)]
pub(crate) struct LeaseSender {
    tx: Sender<Vec<Lease>>,
    /// Takes back a set not yet received, to make room for a newer one.
    unread: Receiver<Vec<Lease>>,
}

impl LeaseSender {
    /// Sends `leases`, replacing a set the owner has not received yet. Never blocks.
    pub(crate) fn send(&self, mut leases: Vec<Lease>) {
        // One sender (the control thread): if the slot is full, take the stale set out and try
        // again; when the owner received it meanwhile, the slot is empty and the retry succeeds.
        loop {
            match self.tx.try_send(leases) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(l)) => {
                    leases = l;
                    let _ = self.unread.try_recv();
                }
            }
        }
    }
}

/// A one-slot channel carrying lease sets from the control thread to the backend's owner. Only
/// the newest set matters (each is complete), so a new set replaces one not yet received: a slow
/// backend never works through stale sets and the control thread never waits for it.
pub(crate) fn lease_sets() -> (LeaseSender, Receiver<Vec<Lease>>) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    (
        LeaseSender {
            tx,
            unread: rx.clone(),
        },
        rx,
    )
}

/// What every backend needs to know about this host.
#[derive(Debug, Clone)]
pub(crate) struct HostInfo {
    /// The command line.
    pub(crate) args: RunArgs,
    /// The underlay interface.
    pub(crate) underlay: Underlay,
    /// Index of the underlay interface.
    pub(crate) underlay_index: u32,
    /// Our public IP (the lease's `PublicIP`).
    pub(crate) public_ip: Ipv4Addr,
    /// Our public IPv6 address (the lease's `PublicIPv6`): `--public-ipv6`, else the underlay's
    /// IPv6 address. [`create`] keeps it only with `EnableIPv6`, so a backend sees `Some` exactly
    /// when it runs dual stack.
    pub(crate) public_ipv6: Option<std::net::Ipv6Addr>,
    /// Whether the network has an IPv4 part (`EnableIPv4`); [`create`] clears it for an
    /// IPv6-only network, whose backends then program IPv6 only.
    pub(crate) ipv4: bool,
}

impl HostInfo {
    pub(crate) fn new(
        args: &RunArgs,
        underlay: &Underlay,
        public_ip: Ipv4Addr,
        public_ipv6: Option<std::net::Ipv6Addr>,
    ) -> Result<Self> {
        let underlay_index = nix::net::if_::if_nametoindex(underlay.name.as_str())
            .with_context(|| format!("index of interface {}", underlay.name))?;
        Ok(HostInfo {
            args: args.clone(),
            underlay: underlay.clone(),
            underlay_index,
            public_ip,
            public_ipv6,
            ipv4: true,
        })
    }
}

/// One backend; see the module doc. Only its owner, the main thread, calls it.
pub(crate) trait Backend {
    /// Name for logs (`udp`, `vxlan`, `vxlan (userspace)`, `host-gw`, `alloc`, `extension`).
    fn name(&self) -> &'static str;
    /// The attributes our lease publishes.
    fn lease_attrs(&self) -> LeaseAttrs;
    /// The MTU containers should use (`FLANNEL_MTU`).
    fn mtu(&self) -> u32;
    /// Dual stack or IPv6 only: our lease's IPv6 subnet `local` in the IPv6 network, before
    /// [`Backend::start`]. Only backends that carry IPv6 (kernel vxlan, host-gw, userspace vxlan
    /// in dual stack) are created
    /// for an IPv6 config ([`create`] refuses the others), so the rest keep this default, which
    /// refuses.
    fn set_ipv6_subnet(
        &mut self,
        _network: control::subnet::Ipv6Net,
        local: control::subnet::Ipv6Net,
    ) -> Result<()> {
        anyhow::bail!(
            "the {} backend carries IPv4 only (IPv6 subnet {local})",
            self.name()
        )
    }
    /// Our lease for `local` in `network` is held: bring the data path up. On an IPv6-only
    /// network both are `0.0.0.0/0` and mean nothing (see [`HostInfo::ipv4`]).
    fn start(&mut self, network: Ipv4Net, local: Ipv4Net) -> Result<()>;
    /// The newest complete set of the other hosts' leases (before [`Backend::start`] they are
    /// kept and applied by it).
    fn set_leases(&mut self, leases: &[Lease]);
    /// Called every second: health checks and periodic repair. An error ends the daemon.
    fn tick(&mut self) -> Result<()>;
    /// Counters for the stats line (`key=value` pairs, leading space).
    fn stats(&self) -> String;
    /// The data plane's counters, for backends that run weft's workers.
    fn dataplane(&self) -> Option<StatsSource>;
    /// The wireguard data plane's counters and peers (the wireguard backend only).
    fn wireguard(&self) -> Option<engine::wg::WgStatsSource> {
        None
    }
    /// Stops the data path; returns the final counters for the log. Kernel state (vxlan device,
    /// routes) is left in place, as flannel does, so traffic keeps flowing across a restart.
    fn stop(self: Box<Self>) -> String;
}

/// Which backend a config selects.
pub(crate) fn kind(config: &NetworkConfig) -> &'static str {
    match &config.backend {
        control::Backend::Udp { .. } => "udp",
        control::Backend::Vxlan(v) if v.userspace => "vxlan (userspace)",
        control::Backend::Vxlan(_) => "vxlan",
        control::Backend::HostGw => "host-gw",
        control::Backend::Alloc => "alloc",
        control::Backend::Extension(_) => "extension",
        control::Backend::Wireguard(_) => "wireguard",
        _ => "unknown",
    }
}

/// Creates the backend the config selects, after removing what other backends left on this
/// host (a backend switch across a restart).
pub(crate) fn create(config: &NetworkConfig, host: &HostInfo) -> Result<Box<dyn Backend>> {
    let kind = kind(config);
    check_families(config)?;
    let mut host = host.clone();
    if !config.enable_ipv4 {
        // IPv6 only: no IPv4 side; the lease's PublicIP is 0.0.0.0, as flannel writes it.
        host.public_ip = Ipv4Addr::UNSPECIFIED;
        host.ipv4 = false;
    }
    if config.ipv6.is_none() {
        host.public_ipv6 = None;
    } else if host.public_ipv6.is_none() {
        anyhow::bail!(
            "EnableIPv6: no public IPv6 address: {} has no global IPv6 address; give it one or \
             set --public-ipv6",
            host.underlay.name
        );
    }
    let host = &host;
    cleanup_others(config).context("removing the state of another backend")?;
    let b: Box<dyn Backend> = match &config.backend {
        control::Backend::Udp { port } => Box::new(udp::new(host, *port)),
        control::Backend::Vxlan(v) if v.userspace => Box::new(vxlan_user::new(host, v)),
        control::Backend::Vxlan(v) => Box::new(vxlan::Vxlan::new(host, v)?),
        control::Backend::HostGw => Box::new(hostgw::HostGw::new(host)?),
        control::Backend::Alloc => Box::new(alloc::Alloc::new(host)),
        control::Backend::Extension(e) => Box::new(extension::Extension::new(host, e)?),
        control::Backend::Wireguard(w) => Box::new(wireguard::Wireguard::new(host, w)?),
        _ => anyhow::bail!("backend {kind} is not supported"),
    };
    tracing::info!(backend = b.name(), mtu = b.mtu(), "backend set up");
    Ok(b)
}

/// Refuses address families the selected backend cannot carry (docs/compatibility.md §11.1):
/// IPv6 (dual stack or IPv6 only) is carried by the kernel vxlan, host-gw and wireguard backends
/// and by weft's own data plane (userspace vxlan); udp gets flannel's error; alloc/extension are
/// IPv4 only.
fn check_families(config: &NetworkConfig) -> Result<()> {
    if config.ipv6.is_none() {
        return Ok(());
    }
    match &config.backend {
        // Userspace vxlan: weft's workers carry both families over one TUN device, or IPv6 only.
        control::Backend::Vxlan(_) => Ok(()),
        control::Backend::HostGw => Ok(()),
        // Both families, in flannel's device layouts (`Mode`).
        control::Backend::Wireguard(_) => Ok(()),
        control::Backend::Udp { .. } => {
            anyhow::bail!("EnableIPv6=true: IPv6 is not supported with the udp backend")
        }
        _ => anyhow::bail!(
            "EnableIPv6=true: the {} backend carries IPv4 only; IPv6 needs vxlan, host-gw or wireguard",
            kind(config)
        ),
    }
}

/// Removes kernel state of backends other than the configured one: vxlan devices named
/// `flannel.<N>` (unless the kernel vxlan backend runs with that very VNI; it decides about its
/// own device) and routes weft tagged with its protocol (unless host-gw or DirectRouting will
/// reconcile them).
fn cleanup_others(config: &NetworkConfig) -> Result<()> {
    let mut nl = netlink::Netlink::new().context("opening a netlink socket")?;
    let (keep_vni, keep_routes) = match &config.backend {
        control::Backend::Vxlan(v) if !v.userspace => (Some(v.vni), v.direct_routing),
        control::Backend::HostGw => (None, true),
        // alloc and extension program nothing: whatever a tunnel backend left goes, as for udp.
        _ => (None, false),
    };
    for link in nl.links()? {
        let Some(n) = link.name.strip_prefix("flannel.") else {
            continue;
        };
        if link.kind.as_deref() != Some("vxlan") || n.parse::<u32>().is_err() {
            continue;
        }
        if config.enable_ipv4 && keep_vni.map(|v| v.to_string()) == Some(n.to_string()) {
            continue;
        }
        nl.delete_link(link.index)
            .with_context(|| format!("deleting {}", link.name))?;
        tracing::info!(device = %link.name, "removed the vxlan device of another backend, VNI or stack");
    }
    for link in nl.links()? {
        let Some(n) = link.name.strip_prefix("flannel-v6.") else {
            continue;
        };
        if link.kind.as_deref() != Some("vxlan") || n.parse::<u32>().is_err() {
            continue;
        }
        if config.ipv6.is_some() && keep_vni.map(|v| v.to_string()) == Some(n.to_string()) {
            continue;
        }
        nl.delete_link(link.index)
            .with_context(|| format!("deleting {}", link.name))?;
        tracing::info!(device = %link.name, "removed the IPv6 vxlan device of another backend, VNI or stack");
    }
    if !keep_routes {
        let stale = nl.routes(Some(netlink::RTPROT_WEFT))?;
        for r in &stale {
            nl.delete_route(r)?;
        }
        let stale6 = nl.routes_of::<std::net::Ipv6Addr>(Some(netlink::RTPROT_WEFT))?;
        for r in &stale6 {
            nl.delete_route(r)?;
        }
        let stale = [stale.len(), stale6.len()].iter().sum::<usize>();
        if stale > 0 {
            tracing::info!(
                removed = stale,
                "removed the routes of another backend (host-gw or DirectRouting)"
            );
        }
    }
    Ok(())
}

/// The leases a backend can use: of its `BackendType`, inside the network, not overlapping our
/// subnet or an earlier lease (etcd holds whatever anyone wrote). `accept` turns a lease into
/// the backend's per-peer value or refuses it. Returns the usable ones and how many were skipped.
/// The IPv4 case of [`family::usable_of`] for backends that do not need the public address.
pub(crate) fn usable<T>(
    leases: &[Lease],
    network: Ipv4Net,
    local: Ipv4Net,
    mut accept: impl FnMut(&Lease) -> Option<T>,
) -> (BTreeMap<Ipv4Net, T>, usize) {
    family::usable_of(leases, network, local, |l, _| accept(l))
}

/// The VTEP MAC of a vxlan lease of VNI `vni`; `None` for another backend type, another VNI or
/// bad `BackendData` (both vxlan data planes ignore those).
pub(crate) fn vxlan_peer(l: &Lease, vni: u32) -> Option<[u8; 6]> {
    if !l.attrs.is_backend("vxlan") {
        return None;
    }
    match l.attrs.vxlan_data() {
        Ok(d) if d.vni == vni => Some(d.vtep_mac),
        Ok(d) => {
            tracing::debug!(subnet = %l.subnet, vni = d.vni, "ignoring a vxlan lease of another VNI");
            None
        }
        Err(e) => {
            tracing::debug!(subnet = %l.subnet, "ignoring a vxlan lease: {e}");
            None
        }
    }
}

/// Logs the skipped count when it changes (a lease set arrives on every watch event).
#[derive(Debug, Default)]
pub(crate) struct SkipLog(usize);

impl SkipLog {
    pub(crate) fn report(&mut self, backend: &str, skipped: usize) {
        if skipped != self.0 {
            if skipped > 0 {
                tracing::warn!(
                    backend,
                    skipped,
                    "leases not usable (other backend or VNI, outside the network, overlapping, or bad BackendData)"
                );
            }
            self.0 = skipped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("valid")
    }

    fn lease(subnet: &str, ip: [u8; 4], backend: Option<&str>) -> Lease {
        let mut attrs = LeaseAttrs::udp(Ipv4Addr::from(ip));
        attrs.backend_type = backend.map(str::to_string);
        Lease {
            subnet: subnet.parse().expect("valid"),
            ipv6_subnet: None,
            attrs,
            expiration: None,
        }
    }

    #[test]
    fn lease_sets_keep_only_the_newest() {
        let (tx, rx) = lease_sets();
        assert!(rx.try_recv().is_err(), "nothing sent yet");
        for ip in 1..=3 {
            tx.send(vec![lease("10.1.2.0/24", [192, 0, 2, ip], None)]);
        }
        let got = rx.try_recv().expect("a set");
        assert_eq!(got[0].attrs.public_ip, Ipv4Addr::new(192, 0, 2, 3));
        assert!(rx.try_recv().is_err(), "the older sets were replaced");
        tx.send(Vec::new());
        assert_eq!(rx.try_recv().expect("the next set").len(), 0);
    }

    #[test]
    fn lease_sets_never_lose_the_last_set() {
        let (tx, rx) = lease_sets();
        let sender = std::thread::spawn(move || {
            for n in 0..=2000u32 {
                tx.send(vec![
                    lease("10.1.2.0/24", [192, 0, 2, 2], None);
                    n as usize % 7
                ]);
                if n == 2000 {
                    tx.send(vec![lease("10.1.9.0/24", [192, 0, 2, 9], None)]);
                }
            }
        });
        let mut last = Vec::new();
        while let Ok(l) = rx.recv_timeout(std::time::Duration::from_secs(5)) {
            last = l;
            if last
                .first()
                .is_some_and(|l| l.attrs.public_ip == Ipv4Addr::new(192, 0, 2, 9))
            {
                break;
            }
        }
        sender.join().expect("sender");
        assert_eq!(last.len(), 1, "the last set sent is the last received");
        assert_eq!(last[0].attrs.public_ip, Ipv4Addr::new(192, 0, 2, 9));
    }

    #[test]
    fn engine_net_keeps_the_prefix() {
        let n: control::Ipv4Net = "10.1.2.0/24".parse().expect("valid");
        assert_eq!(engine_net(n), net("10.1.2.0/24"));
        let all: control::Ipv4Net = "0.0.0.0/0".parse().expect("valid");
        assert_eq!(engine_net(all), net("0.0.0.0/0"));
    }

    #[test]
    fn usable_skips_what_cannot_be_routed() {
        let leases = [
            lease("10.1.2.0/24", [192, 0, 2, 2], None),
            lease("10.1.3.0/24", [192, 0, 2, 3], Some("udp")),
            lease("10.1.4.0/24", [192, 0, 2, 4], Some("vxlan")),
            lease("10.9.0.0/24", [192, 0, 2, 5], None),
            lease("10.1.1.0/24", [192, 0, 2, 6], None),
            lease("10.1.2.0/25", [192, 0, 2, 7], None),
        ];
        let (got, skipped) = usable(&leases, net("10.1.0.0/16"), net("10.1.1.0/24"), |l| {
            l.attrs.is_backend("udp").then_some(l.attrs.public_ip)
        });
        assert_eq!(skipped, 4);
        let got: Vec<String> = got.iter().map(|(s, ip)| format!("{s}={ip}")).collect();
        assert_eq!(got, ["10.1.2.0/24=192.0.2.2", "10.1.3.0/24=192.0.2.3"]);
    }
}
