//! Plain kernel routes to peers' subnets (host-gw, and vxlan's DirectRouting), kept equal to a
//! desired set: routes are tagged with weft's route protocol so a restart finds its own, stale
//! ones are removed, failed ones are retried and routes deleted from outside are re-added.
//! One keeper per address family ([`Family`]): IPv4 routes, or with dual stack IPv6 routes.

use super::family::Family;
use crate::netlink::{Netlink, RouteSpec, RTPROT_WEFT};
use engine::Ipv4Net;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often the kernel's table is compared with the desired routes (flannel's host-gw: 10 s).
pub(crate) const RESYNC: Duration = Duration::from_secs(10);

/// The route to `subnet` via `gateway` on interface `oif`.
pub(crate) fn via<N: Family>(subnet: N, gateway: N::Addr, oif: u32) -> RouteSpec<N::Addr> {
    RouteSpec {
        dst: subnet.net_addr(),
        prefix: subnet.net_prefix(),
        gateway: Some(gateway),
        oif,
        onlink: false,
        protocol: RTPROT_WEFT,
    }
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct RouteKeeper<N: Family = Ipv4Net> {
    /// What should be installed.
    desired: BTreeMap<N, RouteSpec<N::Addr>>,
    /// What we installed (or found tagged as ours at start).
    installed: BTreeMap<N, RouteSpec<N::Addr>>,
    next_resync: Instant,
    /// Routes re-added because they went missing.
    pub(crate) readded: u64,
    /// Failed attempts to add a route.
    pub(crate) failures: u64,
}

impl<N: Family> RouteKeeper<N> {
    /// A keeper that adopts the routes weft left tagged inside `network` (they are removed at
    /// the first [`RouteKeeper::set`] unless still wanted, so a restart does not blip them).
    /// Tagged routes of the family outside `network` are deleted.
    pub(crate) fn adopt(nl: &mut Netlink, network: N) -> std::io::Result<Self> {
        let mut installed = BTreeMap::new();
        for r in nl.routes_of::<N::Addr>(Some(RTPROT_WEFT))? {
            match N::from_parts(r.dst, r.prefix) {
                Some(n) if network.holds_net(&n) => {
                    installed.insert(n, r);
                }
                _ => nl.delete_route(&r)?,
            }
        }
        Ok(RouteKeeper {
            desired: BTreeMap::new(),
            installed,
            next_resync: Instant::now() + RESYNC,
            readded: 0,
            failures: 0,
        })
    }

    /// Number of desired routes.
    pub(crate) fn len(&self) -> usize {
        self.desired.len()
    }

    /// This keeper's part of a backend's stats line, its names carrying `suffix` (`""` for
    /// IPv4, `"6"` for IPv6): `routes`, `routes_readded`, `route_failures`.
    pub(crate) fn stats(&self, suffix: &str) -> String {
        format!(
            " routes{suffix}={} routes{suffix}_readded={} route{suffix}_failures={}",
            self.len(),
            self.readded,
            self.failures
        )
    }

    /// Makes `desired` the routes: removes what is no longer wanted, adds or replaces the rest.
    /// Failures are logged and retried at the next resync.
    pub(crate) fn set(&mut self, nl: &mut Netlink, desired: BTreeMap<N, RouteSpec<N::Addr>>) {
        let stale: Vec<N> = self
            .installed
            .iter()
            .filter(|(n, r)| desired.get(n) != Some(r))
            .map(|(n, _)| *n)
            .collect();
        for n in stale {
            if let Some(r) = self.installed.remove(&n) {
                if !desired.contains_key(&n) {
                    match nl.delete_route(&r) {
                        Ok(()) => tracing::info!(subnet = %n, "route removed"),
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
            }
        }
        for (n, r) in &desired {
            if !self.installed.contains_key(n) {
                self.install(nl, *n, r);
            }
        }
        self.desired = desired;
    }

    fn install(&mut self, nl: &mut Netlink, n: N, r: &RouteSpec<N::Addr>) -> bool {
        match nl.replace_route(r) {
            Ok(()) => {
                tracing::info!(subnet = %n, via = ?r.gateway, "route added");
                self.installed.insert(n, *r);
                true
            }
            Err(e) => {
                // flannel logs and keeps going: a peer that is not on-link gets no route.
                self.failures += 1;
                tracing::error!(
                    "{e} (peer not on-link? retrying every {}s)",
                    RESYNC.as_secs()
                );
                false
            }
        }
    }

    /// Every [`RESYNC`]: re-adds desired routes missing from the kernel's table.
    pub(crate) fn tick(&mut self, nl: &mut Netlink) {
        if Instant::now() < self.next_resync {
            return;
        }
        self.next_resync = Instant::now() + RESYNC;
        self.resync(nl);
    }

    /// Compares the kernel's table with the desired routes now.
    pub(crate) fn resync(&mut self, nl: &mut Netlink) {
        let present = match nl.routes_of::<N::Addr>(Some(RTPROT_WEFT)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("listing routes: {e}");
                return;
            }
        };
        let missing: Vec<(N, RouteSpec<N::Addr>)> = self
            .desired
            .iter()
            .filter(|(_, r)| !present.iter().any(|p| same_route(p, r)))
            .map(|(n, r)| (*n, *r))
            .collect();
        for (n, r) in missing {
            let was_installed = self.installed.remove(&n).is_some();
            if self.install(nl, n, &r) && was_installed {
                self.readded += 1;
                tracing::warn!(subnet = %n, "route was missing; re-added");
            }
        }
    }
}

fn same_route<A: PartialEq>(a: &RouteSpec<A>, b: &RouteSpec<A>) -> bool {
    a.dst == b.dst && a.prefix == b.prefix && a.gateway == b.gateway && a.oif == b.oif
}
