//! `--ip-blackhole-route`: a blackhole route for this host's own subnet, as flanneld adds it
//! (docs/compatibility.md, "Flags"): first after one `--iptables-resync` interval, then checked
//! every interval and added again when it is missing; never removed. Traffic to addresses of the
//! subnet that no container holds is then dropped here instead of following the default route
//! back out (setups without a bridge holding the subnet). Unlike flanneld's (metric 0), weft's
//! route has the highest metric, so a bridge holding the subnet keeps its traffic. Dual stack:
//! the same for the IPv6 subnet, as flanneld.

use crate::netlink::Netlink;
use anyhow::{Context, Result};
use engine::Ipv4Net;
use std::time::{Duration, Instant};

/// The route's keeper, ticked by the main thread.
#[derive(Debug)]
pub(crate) struct BlackholeRoute {
    nl: Netlink,
    /// The IPv4 subnet (`None` on an IPv6-only network).
    subnet: Option<Ipv4Net>,
    /// Dual stack: the IPv6 subnet.
    subnet6: Option<control::subnet::Ipv6Net>,
    period: Duration,
    next: Instant,
}

impl BlackholeRoute {
    /// Keeps a blackhole route for `subnet`, checked every `period` from one period on.
    pub(crate) fn new(subnet: Ipv4Net, period: Duration) -> Result<BlackholeRoute> {
        let nl = Netlink::new().context("--ip-blackhole-route: opening a netlink socket")?;
        Ok(BlackholeRoute {
            nl,
            subnet: Some(subnet),
            subnet6: None,
            period,
            next: Instant::now() + period,
        })
    }

    /// Also keeps a blackhole route for the IPv6 subnet `subnet6`.
    pub(crate) fn with_ipv6(mut self, subnet6: control::subnet::Ipv6Net) -> BlackholeRoute {
        self.subnet6 = Some(subnet6);
        self
    }

    /// Keeps no IPv4 route (an IPv6-only network).
    pub(crate) fn without_ipv4(mut self) -> BlackholeRoute {
        self.subnet = None;
        self
    }

    /// Adds the route when its time has come and it is missing. Failures are logged and tried
    /// again next period; the route is an optimisation, the overlay works without it.
    pub(crate) fn tick(&mut self) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + self.period;
        if let Some(s) = self.subnet {
            keep(&mut self.nl, s.addr(), s.prefix());
        }
        if let Some(s6) = self.subnet6 {
            keep(&mut self.nl, s6.addr(), s6.prefix_len());
        }
    }
}

/// Adds the blackhole route `dst/prefix` if it is missing; failures are logged.
fn keep<A: crate::netlink::NlAddr>(nl: &mut Netlink, dst: A, prefix: u8) {
    match nl.has_blackhole_route(dst, prefix) {
        Ok(true) => {}
        Ok(false) => match nl.add_blackhole_route(dst, prefix) {
            Ok(()) => tracing::info!(subnet = %format!("{dst}/{prefix}"), "blackhole route added"),
            Err(e) => tracing::warn!("--ip-blackhole-route: {e}"),
        },
        Err(e) => tracing::warn!("--ip-blackhole-route: {e}"),
    }
}
