//! flannel's host-gw backend: a kernel route per peer subnet via the peer's public IP on the
//! underlay interface. No encapsulation, so it needs every host on one L2 segment; a peer that
//! is not on-link gets no route (logged, retried), as in flannel.

use super::routes::{self, RouteKeeper};
use super::{Backend, HostInfo, SkipLog};
use crate::netlink::Netlink;
use anyhow::{bail, Context, Result};
use control::{Lease, LeaseAttrs};
use engine::{Ipv4Net, StatsSource};

/// The host-gw backend.
#[derive(Debug)]
pub(crate) struct HostGw {
    host: HostInfo,
    nl: Netlink,
    keeper: Option<RouteKeeper>,
    net: Option<(Ipv4Net, Ipv4Net)>,
    leases: Vec<Lease>,
    skip: SkipLog,
}

impl HostGw {
    pub(crate) fn new(host: &HostInfo) -> Result<Self> {
        if host.public_ip != host.underlay.addr {
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
            keeper: None,
            net: None,
            leases: Vec::new(),
            skip: SkipLog::default(),
        })
    }

    fn apply(&mut self) {
        let (Some((network, local)), Some(keeper)) = (self.net, self.keeper.as_mut()) else {
            return;
        };
        let oif = self.host.underlay_index;
        let (desired, skipped) = super::usable(&self.leases, network, local, |l| {
            l.attrs.is_backend("host-gw").then_some(l.attrs.public_ip)
        });
        self.skip.report("host-gw", skipped);
        let desired = desired
            .into_iter()
            .map(|(n, ip)| (n, routes::via(n, ip, oif)))
            .collect();
        keeper.set(&mut self.nl, desired);
    }
}

impl Backend for HostGw {
    fn name(&self) -> &'static str {
        "host-gw"
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs::host_gw(self.host.public_ip)
    }

    fn mtu(&self) -> u32 {
        self.host.underlay.mtu
    }

    fn start(&mut self, network: Ipv4Net, local: Ipv4Net) -> Result<()> {
        self.keeper =
            Some(RouteKeeper::adopt(&mut self.nl, network).context("reading weft's routes")?);
        self.net = Some((network, local));
        self.apply();
        tracing::info!(
            underlay = %self.host.underlay.name,
            routes = self.keeper.as_ref().map_or(0, RouteKeeper::len),
            "host-gw routes programmed"
        );
        Ok(())
    }

    fn set_leases(&mut self, leases: &[Lease]) {
        self.leases = leases.to_vec();
        self.apply();
    }

    fn tick(&mut self) -> Result<()> {
        if let Some(k) = self.keeper.as_mut() {
            k.tick(&mut self.nl);
        }
        Ok(())
    }

    fn stats(&self) -> String {
        self.keeper.as_ref().map_or_else(String::new, |k| {
            format!(
                " routes={} routes_readded={} route_failures={}",
                k.len(),
                k.readded,
                k.failures
            )
        })
    }

    fn dataplane(&self) -> Option<StatsSource> {
        None
    }

    fn stop(self: Box<Self>) -> String {
        self.stats()
    }
}
