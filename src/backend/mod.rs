//! Backends: how this host's subnet is reached from the others.
//!
//! The control plane reads the network config and hands it to [`create`], which picks the
//! backend by `Backend.Type` (case-insensitive) and sets up what must exist before our lease is
//! written (the vxlan device, whose MAC goes into the lease). From then on every backend is
//! driven through the same [`Backend`] interface: [`Backend::start`] once our lease is held,
//! [`Backend::set_leases`] with the complete set of the other hosts' leases after every change
//! (on the control thread), [`Backend::tick`] every second from the main thread. The control
//! plane never learns which backend runs.
//!
//! | module | `Backend` | data path |
//! |---|---|---|
//! | [`udp`] | `{"Type":"udp"}` | weft's workers, flannel's udp wire (port 8285) |
//! | [`vxlan`] | `{"Type":"vxlan"}` | the kernel's vxlan device `flannel.<VNI>`, programmed as flannel does; `DirectRouting` adds plain routes for on-link peers |
//! | [`vxlan_user`] | `{"Type":"vxlan","Userspace":true}` | weft's workers speaking VXLAN, interoperable with kernel peers |
//! | [`hostgw`] | `{"Type":"host-gw"}` | plain kernel routes via each peer's public IP |

pub(crate) mod hostgw;
use crate::netlink;
mod routes;
mod tunnel;
pub(crate) mod udp;
pub(crate) mod vxlan;
pub(crate) mod vxlan_user;

pub(crate) use tunnel::{dataplane_config as tunnel_config, start_dataplane, stats_line};

use crate::cli::RunArgs;
use crate::iface::Underlay;
use anyhow::{Context, Result};
use control::{Lease, LeaseAttrs, NetworkConfig};
use engine::{Ipv4Net, StatsSource};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

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
}

impl HostInfo {
    pub(crate) fn new(args: &RunArgs, underlay: &Underlay, public_ip: Ipv4Addr) -> Result<Self> {
        let underlay_index = nix::net::if_::if_nametoindex(underlay.name.as_str())
            .with_context(|| format!("index of interface {}", underlay.name))?;
        Ok(HostInfo {
            args: args.clone(),
            underlay: underlay.clone(),
            underlay_index,
            public_ip,
        })
    }
}

/// One backend; see the module doc.
pub(crate) trait Backend: Send {
    /// Name for logs (`udp`, `vxlan`, `vxlan (userspace)`, `host-gw`).
    fn name(&self) -> &'static str;
    /// The attributes our lease publishes.
    fn lease_attrs(&self) -> LeaseAttrs;
    /// The MTU containers should use (`FLANNEL_MTU`).
    fn mtu(&self) -> u32;
    /// Our lease for `local` in `network` is held: bring the data path up.
    fn start(&mut self, network: Ipv4Net, local: Ipv4Net) -> Result<()>;
    /// The complete set of the other hosts' leases (before [`Backend::start`] they are kept and
    /// applied by it).
    fn set_leases(&mut self, leases: &[Lease]);
    /// Called every second: health checks and periodic repair. An error ends the daemon.
    fn tick(&mut self) -> Result<()>;
    /// Counters for the stats line (`key=value` pairs, leading space).
    fn stats(&self) -> String;
    /// The data plane's counters, for backends that run weft's workers.
    fn dataplane(&self) -> Option<StatsSource>;
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
        _ => "unknown",
    }
}

/// Creates the backend the config selects, after removing what other backends left on this
/// host (a backend switch across a restart).
pub(crate) fn create(config: &NetworkConfig, host: &HostInfo) -> Result<Box<dyn Backend>> {
    let kind = kind(config);
    cleanup_others(config).context("removing the state of another backend")?;
    let b: Box<dyn Backend> = match &config.backend {
        control::Backend::Udp { port } => Box::new(udp::new(host, *port)),
        control::Backend::Vxlan(v) if v.userspace => Box::new(vxlan_user::new(host, v)),
        control::Backend::Vxlan(v) => Box::new(vxlan::Vxlan::new(host, v)?),
        control::Backend::HostGw => Box::new(hostgw::HostGw::new(host)?),
        _ => anyhow::bail!("backend {kind} is not supported"),
    };
    tracing::info!(backend = b.name(), mtu = b.mtu(), "backend set up");
    Ok(b)
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
        _ => (None, false),
    };
    for link in nl.links()? {
        let Some(n) = link.name.strip_prefix("flannel.") else {
            continue;
        };
        if link.kind.as_deref() != Some("vxlan") || n.parse::<u32>().is_err() {
            continue;
        }
        if keep_vni.map(|v| v.to_string()) == Some(n.to_string()) {
            continue;
        }
        nl.delete_link(link.index)
            .with_context(|| format!("deleting {}", link.name))?;
        tracing::info!(device = %link.name, "removed the vxlan device of another backend or VNI");
    }
    if !keep_routes {
        let stale = nl.routes(Some(netlink::RTPROT_WEFT))?;
        for r in &stale {
            nl.delete_route(r)?;
        }
        if !stale.is_empty() {
            tracing::info!(
                removed = stale.len(),
                "removed the routes of another backend (host-gw or DirectRouting)"
            );
        }
    }
    Ok(())
}

/// The leases a backend can use: of its `BackendType`, inside the network, not overlapping our
/// subnet or an earlier lease (etcd holds whatever anyone wrote). `accept` turns a lease into
/// the backend's per-peer value or refuses it. Returns the usable ones and how many were skipped.
pub(crate) fn usable<T>(
    leases: &[Lease],
    network: Ipv4Net,
    local: Ipv4Net,
    mut accept: impl FnMut(&Lease) -> Option<T>,
) -> (BTreeMap<Ipv4Net, T>, usize) {
    let mut candidates: Vec<(Ipv4Net, T)> = leases
        .iter()
        .filter_map(|l| {
            let subnet = Ipv4Net::new(l.subnet.addr(), l.subnet.prefix_len())?;
            if !network.contains_net(&subnet) || subnet.overlaps(&local) {
                return None;
            }
            accept(l).map(|t| (subnet, t))
        })
        .collect();
    candidates.sort_by_key(|(s, _)| (u32::from(s.addr()), s.prefix()));
    let mut out = BTreeMap::new();
    let mut end = 0u64; // one past the last address covered so far
    for (subnet, t) in candidates {
        let start = u64::from(u32::from(subnet.addr()));
        if start < end && !out.is_empty() {
            continue;
        }
        end = start + (1u64 << (32 - u32::from(subnet.prefix())));
        out.insert(subnet, t);
    }
    let skipped = leases.len() - out.len();
    (out, skipped)
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
