//! flannel's udp backend: weft's workers carry each IPv4 packet as the payload of one UDP
//! datagram to the peer's port (8285 by default). Leases publish no `BackendType`.

use super::tunnel::{Tunnel, TunnelParams};
use super::{Backend, HostInfo};
use anyhow::Result;
use control::{Lease, LeaseAttrs};
use engine::{Ipv4Net, Route, StatsSource, Wire};
use std::net::SocketAddrV4;

/// The udp backend.
#[derive(Debug)]
pub(crate) struct Udp {
    tunnel: Tunnel,
    public_ip: std::net::Ipv4Addr,
}

/// udp leases (no `BackendType`, or `udp`) become routes to the peer's port.
pub(crate) fn route(l: &Lease, subnet: Ipv4Net, p: &TunnelParams) -> Option<Route> {
    l.attrs
        .is_backend("udp")
        .then(|| Route::udp(subnet, SocketAddrV4::new(l.attrs.public_ip, p.port)))
}

impl Udp {
    pub(crate) fn new(host: &HostInfo, port: u16) -> Self {
        let params = TunnelParams {
            port,
            wire: Wire::Udp,
        };
        Udp {
            tunnel: Tunnel::new("udp", host, params, route),
            public_ip: host.public_ip,
        }
    }
}

impl Backend for Udp {
    fn name(&self) -> &'static str {
        "udp"
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs::udp(self.public_ip)
    }

    fn mtu(&self) -> u32 {
        self.tunnel.mtu()
    }

    fn start(&mut self, network: Ipv4Net, local: Ipv4Net) -> Result<()> {
        self.tunnel.start(network, local)
    }

    fn set_leases(&mut self, leases: &[Lease]) {
        self.tunnel.set_leases(leases);
    }

    fn tick(&mut self) -> Result<()> {
        self.tunnel.tick()
    }

    fn stats(&self) -> String {
        self.tunnel.stats()
    }

    fn dataplane(&self) -> Option<StatsSource> {
        self.tunnel.dataplane()
    }

    fn stop(self: Box<Self>) -> String {
        self.tunnel.stop()
    }
}
