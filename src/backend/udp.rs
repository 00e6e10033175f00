//! flannel's udp backend: weft's workers carry each IPv4 packet as the payload of one UDP
//! datagram to the peer's port (8285 by default). Leases publish no `BackendType`.

use super::tunnel::{Tunnel, TunnelParams};
use super::HostInfo;
use control::{Lease, LeaseAttrs};
use engine::{Ipv4Net, Route, Wire};
use std::net::SocketAddrV4;

/// udp leases (no `BackendType`, or `udp`) become routes to the peer's port.
fn route(l: &Lease, subnet: Ipv4Net, p: &TunnelParams) -> Option<Route> {
    l.attrs
        .is_backend("udp")
        .then(|| Route::udp(subnet, SocketAddrV4::new(l.attrs.public_ip, p.port)))
}

/// The udp backend for `host`, on `port`.
pub(crate) fn new(host: &HostInfo, port: u16) -> Tunnel {
    let params = TunnelParams {
        port,
        wire: Wire::Udp,
    };
    Tunnel::new("udp", host, LeaseAttrs::udp(host.public_ip), params, route)
}
