//! Userspace VXLAN (`{"Type":"vxlan","Userspace":true}`): weft's workers speak the kernel vxlan
//! driver's wire format (VXLAN header with the VNI, inner Ethernet from VTEP MAC to VTEP MAC)
//! to the peers' port 8472, and publish an ordinary vxlan lease, so kernel vxlan hosts
//! (flannel's, or weft's kernel backend) and userspace hosts mix freely in one cluster.
//!
//! The VTEP MAC is derived from the public IP (`0e:57:` + its four bytes): locally
//! administered, unicast, and the same across restarts, so peers' neighbour entries stay valid.

use super::tunnel::{Tunnel, TunnelParams};
use super::HostInfo;
use control::{Lease, LeaseAttrs, VxlanConfig};
use engine::{Ipv4Net, Route, Wire};
use std::net::{Ipv4Addr, SocketAddrV4};

/// The VTEP MAC of a userspace VXLAN host with this public IP.
pub(crate) fn vtep_mac(public_ip: Ipv4Addr) -> [u8; 6] {
    let o = public_ip.octets();
    [0x0e, 0x57, o[0], o[1], o[2], o[3]]
}

/// The VTEP MAC of an IPv6-only userspace VXLAN host: `0e:57:` + the 32-bit FNV-1a hash of its
/// whole public IPv6 address (every byte counts: hosts in different prefixes often share their
/// low bytes). Stable across restarts; two hosts collide with odds of about n²/2³³.
pub(crate) fn vtep_mac6(public_ipv6: std::net::Ipv6Addr) -> [u8; 6] {
    let h = public_ipv6
        .octets()
        .iter()
        .fold(0x811c_9dc5u32, |h, &b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
        .to_be_bytes();
    [0x0e, 0x57, h[0], h[1], h[2], h[3]]
}

/// vxlan leases with our VNI and valid `BackendData` become routes to the peer's VTEP.
fn route(l: &Lease, subnet: Ipv4Net, p: &TunnelParams) -> Option<Route> {
    let Wire::Vxlan { vni, .. } = p.wire else {
        return None;
    };
    super::vxlan_peer(l, vni)
        .map(|mac| Route::vxlan(subnet, SocketAddrV4::new(l.attrs.public_ip, p.port), mac))
}

/// The userspace VXLAN backend for `host` with the config's VNI, port and MTU.
pub(crate) fn new(host: &HostInfo, cfg: &VxlanConfig) -> Tunnel {
    // IPv6 only: PublicIP is 0.0.0.0 on every host, so the MAC comes from the IPv6 address.
    let mac = match host.public_ipv6.filter(|_| !host.ipv4) {
        Some(ip6) => vtep_mac6(ip6),
        None => vtep_mac(host.public_ip),
    };
    let mut host = host.clone();
    if let Some(mtu) = cfg.mtu {
        host.underlay.mtu = mtu;
    }
    let params = TunnelParams {
        port: cfg.port,
        wire: Wire::Vxlan { vni: cfg.vni, mac },
    };
    match host.public_ipv6 {
        // Dual stack: one VTEP MAC for both families (one TUN device), published in
        // `BackendData` and `BackendV6Data`.
        Some(ip6) => Tunnel::new(
            "vxlan (userspace)",
            &host,
            LeaseAttrs::vxlan_dual(host.public_ip, ip6, cfg.vni, host.ipv4.then_some(mac), mac),
            params,
            route,
        )
        .with_ipv6(ip6, mac),
        None => Tunnel::new(
            "vxlan (userspace)",
            &host,
            LeaseAttrs::vxlan(host.public_ip, cfg.vni, mac),
            params,
            route,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_mac_is_local_unicast_and_stable() {
        let m = vtep_mac(Ipv4Addr::new(192, 0, 2, 7));
        assert_eq!(m, [0x0e, 0x57, 192, 0, 2, 7]);
        assert_eq!(m[0] & 1, 0, "unicast");
        assert_eq!(m[0] & 2, 2, "locally administered");
    }

    #[test]
    fn vtep_mac6_hashes_the_whole_address() {
        let a: std::net::Ipv6Addr = "2001:db8:1::10".parse().unwrap();
        let b: std::net::Ipv6Addr = "2001:db8:2::10".parse().unwrap();
        assert_eq!(vtep_mac6(a), vtep_mac6(a), "stable");
        assert_ne!(vtep_mac6(a), vtep_mac6(b), "same low bytes, other prefix");
        // FNV-1a of the 16 zero bytes of `::`.
        let zero = vtep_mac6(std::net::Ipv6Addr::UNSPECIFIED);
        let mut h: u32 = 0x811c_9dc5;
        for _ in 0..16 {
            h = h.wrapping_mul(0x0100_0193);
        }
        assert_eq!(zero[2..], h.to_be_bytes());
        assert_eq!(&zero[..2], &[0x0e, 0x57]);
    }
}
