//! flannel's host-gw backend: a kernel route per peer subnet via the peer's public IP on the
//! underlay interface. No encapsulation, so it needs every host on one L2 segment; a peer that
//! is not on-link gets no route (logged, retried), as in flannel.
//!
//! Dual stack (`EnableIPv6`): also a route per peer IPv6 subnet via the peer's `PublicIPv6` on
//! the same interface, kept by its own [`RouteKeeper`] (same 10 s repair); a lease without an
//! IPv6 subnet or `PublicIPv6` gets no IPv6 route. IPv6 only: the IPv6 routes alone (and no NAT
//! check, which compares IPv4 addresses).

use super::family::{self, Family};
use super::routes::{self, RouteKeeper};
use super::{Backend, HostInfo, SkipLog};
use crate::netlink::Netlink;
use anyhow::{bail, Context, Result};
use control::subnet::Ipv6Net;
use control::{Lease, LeaseAttrs};
use engine::{Ipv4Net, StatsSource};

/// The routes of one family: the keeper, our network and subnet.
#[derive(Debug)]
struct Side<N: Family> {
    keeper: Option<RouteKeeper<N>>,
    net: Option<(N, N)>,
    skip: SkipLog,
}

impl<N: Family> Side<N> {
    fn new() -> Self {
        Side {
            keeper: None,
            net: None,
            skip: SkipLog::default(),
        }
    }

    fn apply(&mut self, nl: &mut Netlink, oif: u32, leases: &[Lease]) {
        let (Some((network, local)), Some(keeper)) = (self.net, self.keeper.as_mut()) else {
            return;
        };
        let (desired, skipped) = family::usable_of(leases, network, local, |l, ip| {
            l.attrs.is_backend("host-gw").then_some(ip)
        });
        self.skip.report(
            if N::NAME == "IPv6" {
                "host-gw (IPv6)"
            } else {
                "host-gw"
            },
            skipped,
        );
        let desired = desired
            .into_iter()
            .map(|(n, ip)| (n, routes::via(n, ip, oif)))
            .collect();
        keeper.set(nl, desired);
    }

    fn start(&mut self, nl: &mut Netlink, network: N, local: N) -> Result<()> {
        self.keeper = Some(RouteKeeper::adopt(nl, network).context("reading weft's routes")?);
        self.net = Some((network, local));
        Ok(())
    }

    fn len(&self) -> usize {
        self.keeper.as_ref().map_or(0, RouteKeeper::len)
    }
}

/// The host-gw backend.
#[derive(Debug)]
pub(crate) struct HostGw {
    host: HostInfo,
    nl: Netlink,
    /// The IPv4 routes (`None` on an IPv6-only network).
    v4: Option<Side<Ipv4Net>>,
    v6: Option<Side<Ipv6Net>>,
    leases: Vec<Lease>,
}

impl HostGw {
    pub(crate) fn new(host: &HostInfo) -> Result<Self> {
        if host.ipv4 && host.public_ip != host.underlay.addr {
            bail!(
                "your PublicIP ({}) differs from interface IP ({} on {}), meaning that probably \
                 you're on a NAT, which is not supported by host-gw backend",
                host.public_ip,
                host.underlay.addr,
                host.underlay.name
            );
        }
        let mut nl = Netlink::new().context("opening a netlink socket")?;
        nl.name_link(host.underlay_index, &host.underlay.name);
        Ok(HostGw {
            host: host.clone(),
            nl,
            v4: host.ipv4.then(Side::new),
            v6: host.public_ipv6.map(|_| Side::new()),
            leases: Vec::new(),
        })
    }

    fn apply(&mut self) {
        let oif = self.host.underlay_index;
        if let Some(v4) = self.v4.as_mut() {
            v4.apply(&mut self.nl, oif, &self.leases);
        }
        if let Some(v6) = self.v6.as_mut() {
            v6.apply(&mut self.nl, oif, &self.leases);
        }
    }
}

impl Backend for HostGw {
    fn name(&self) -> &'static str {
        "host-gw"
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs::host_gw(self.host.public_ip).with_public_ipv6(self.host.public_ipv6)
    }

    fn mtu(&self) -> u32 {
        self.host.underlay.mtu
    }

    fn set_ipv6_subnet(&mut self, network: Ipv6Net, local: Ipv6Net) -> Result<()> {
        match self.v6.as_mut() {
            Some(v6) => {
                v6.net = Some((network, local));
                Ok(())
            }
            None => bail!("host-gw: an IPv6 subnet ({local}) without a public IPv6 address"),
        }
    }

    fn start(&mut self, network: Ipv4Net, local: Ipv4Net) -> Result<()> {
        if let Some(v4) = self.v4.as_mut() {
            v4.start(&mut self.nl, network, local)?;
        }
        if let Some(v6) = self.v6.as_mut() {
            let Some((network6, local6)) = v6.net else {
                bail!("host-gw: no IPv6 subnet to route");
            };
            v6.start(&mut self.nl, network6, local6)?;
        }
        self.apply();
        tracing::info!(
            underlay = %self.host.underlay.name,
            routes = self.v4.as_ref().map_or(0, Side::len),
            routes6 = self.v6.as_ref().map_or(0, Side::len),
            "host-gw routes programmed"
        );
        Ok(())
    }

    fn set_leases(&mut self, leases: &[Lease]) {
        self.leases = leases.to_vec();
        self.apply();
    }

    fn tick(&mut self) -> Result<()> {
        if let Some(k) = self.v4.as_mut().and_then(|v| v.keeper.as_mut()) {
            k.tick(&mut self.nl);
        }
        if let Some(k) = self.v6.as_mut().and_then(|v| v.keeper.as_mut()) {
            k.tick(&mut self.nl);
        }
        Ok(())
    }

    fn stats(&self) -> String {
        let mut s = String::new();
        if let Some(k) = self.v4.as_ref().and_then(|v| v.keeper.as_ref()) {
            s.push_str(&k.stats(""));
        }
        if let Some(k) = self.v6.as_ref().and_then(|v| v.keeper.as_ref()) {
            s.push_str(&k.stats("6"));
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
