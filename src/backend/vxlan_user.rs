//! Userspace VXLAN (`{"Type":"vxlan","Userspace":true}`): weft's workers speak the kernel vxlan
//! driver's wire format (VXLAN header with the VNI, inner Ethernet from VTEP MAC to VTEP MAC)
//! to the peers' port 8472, and publish an ordinary vxlan lease, so kernel vxlan hosts
//! (flannel's, or weft's kernel backend) and userspace hosts mix freely in one cluster.
//!
//! The VTEP MAC is derived from the public IP (`0e:57:` + its four bytes): locally
//! administered, unicast, and the same across restarts, so peers' neighbour entries stay valid.

use super::tunnel::{Tunnel, TunnelParams};
use super::{Backend, HostInfo};
use anyhow::Result;
use control::{Lease, LeaseAttrs, VxlanConfig};
use engine::{Ipv4Net, Route, StatsSource, Wire};
use std::net::{Ipv4Addr, SocketAddrV4};

/// The userspace VXLAN backend.
#[derive(Debug)]
pub(crate) struct VxlanUser {
    tunnel: Tunnel,
    public_ip: Ipv4Addr,
    vni: u32,
    mac: [u8; 6],
    mtu: u32,
}

/// The VTEP MAC of a userspace VXLAN host with this public IP.
pub(crate) fn vtep_mac(public_ip: Ipv4Addr) -> [u8; 6] {
    let o = public_ip.octets();
    [0x0e, 0x57, o[0], o[1], o[2], o[3]]
}

/// vxlan leases with our VNI and valid `BackendData` become routes to the peer's VTEP.
pub(crate) fn route(l: &Lease, subnet: Ipv4Net, p: &TunnelParams) -> Option<Route> {
    let Wire::Vxlan { vni, .. } = p.wire else {
        return None;
    };
    if !l.attrs.is_backend("vxlan") {
        return None;
    }
    match l.attrs.vxlan_data() {
        Ok(d) if d.vni == vni => Some(Route::vxlan(
            subnet,
            SocketAddrV4::new(l.attrs.public_ip, p.port),
            d.vtep_mac,
        )),
        Ok(d) => {
            tracing::debug!(%subnet, vni = d.vni, "ignoring a vxlan lease of another VNI");
            None
        }
        Err(e) => {
            tracing::debug!(%subnet, "ignoring a vxlan lease: {e}");
            None
        }
    }
}

impl VxlanUser {
    pub(crate) fn new(host: &HostInfo, cfg: &VxlanConfig) -> Result<Self> {
        let mac = vtep_mac(host.public_ip);
        let wire = Wire::Vxlan { vni: cfg.vni, mac };
        let mut host = host.clone();
        if let Some(mtu) = cfg.mtu {
            host.underlay.mtu = mtu;
        }
        let tunnel = Tunnel::new(
            "vxlan (userspace)",
            &host,
            TunnelParams {
                port: cfg.port,
                wire,
            },
            route,
        );
        Ok(VxlanUser {
            mtu: tunnel.mtu(),
            tunnel,
            public_ip: host.public_ip,
            vni: cfg.vni,
            mac,
        })
    }
}

impl Backend for VxlanUser {
    fn name(&self) -> &'static str {
        "vxlan (userspace)"
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs::vxlan(self.public_ip, self.vni, self.mac)
    }

    fn mtu(&self) -> u32 {
        self.mtu
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
}
