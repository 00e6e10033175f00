//! The two address families of the kernel backends (dual stack, docs/compatibility.md §11.1):
//! what a lease holds for each family, so that the vxlan and host-gw code is written once for
//! both.
//!
//! | | IPv4 ([`engine::Ipv4Net`]) | IPv6 ([`Ipv6Net`]) |
//! |---|---|---|
//! | subnet | the key's IPv4 part | the key's IPv6 part (`…&fc00:0:0:5::-64`) |
//! | public address | `PublicIP` | `PublicIPv6` |
//! | vxlan data | `BackendData` | `BackendV6Data` |
//! | vxlan device | `flannel.<VNI>` | `flannel-v6.<VNI>` |

use super::engine_net;
use crate::netlink::NlAddr;
use control::lease::{BadLeaseValue, VxlanData};
use control::subnet::Ipv6Net;
use control::Lease;
use engine::Ipv4Net;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// One address family's network type and where a lease keeps its values.
pub(crate) trait Family:
    Copy + Ord + Eq + std::fmt::Display + std::fmt::Debug + Send + 'static
{
    /// The address type.
    type Addr: NlAddr;
    /// `"IPv4"` or `"IPv6"`, for logs.
    const NAME: &'static str;
    /// The network address.
    fn net_addr(&self) -> Self::Addr;
    /// The prefix length.
    fn net_prefix(&self) -> u8;
    /// The network of `addr/prefix` (host bits cleared).
    fn from_parts(addr: Self::Addr, prefix: u8) -> Option<Self>;
    /// Whether `ip` lies inside this network.
    fn holds(&self, ip: Self::Addr) -> bool;
    /// Whether `other` lies entirely inside this network.
    fn holds_net(&self, other: &Self) -> bool {
        other.net_prefix() >= self.net_prefix() && self.holds(other.net_addr())
    }
    /// Whether the two networks share an address.
    fn shares(&self, other: &Self) -> bool {
        self.holds_net(other) || other.holds_net(self)
    }
    /// Whether an address found on our vxlan device of this family goes when `local` (this
    /// network, our subnet) is configured: IPv4 removes other addresses inside `network`
    /// (`self`), IPv6 every address but `local`/128 and link-local ones (flannel).
    fn stale_device_address(&self, local: &Self, addr: Self::Addr, prefix: u8) -> bool;
    /// The lease's subnet of this family.
    fn subnet_of(l: &Lease) -> Option<Self>;
    /// The lease's public address of this family.
    fn public_of(l: &Lease) -> Option<Self::Addr>;
    /// The lease's vxlan data of this family (`BackendData` or `BackendV6Data`).
    fn vxlan_data_of(l: &Lease) -> Result<VxlanData, BadLeaseValue>;
}

impl Family for Ipv4Net {
    type Addr = Ipv4Addr;
    const NAME: &'static str = "IPv4";
    fn net_addr(&self) -> Ipv4Addr {
        self.addr()
    }
    fn net_prefix(&self) -> u8 {
        self.prefix()
    }
    fn from_parts(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        Ipv4Net::new(addr, prefix)
    }
    fn holds(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip)
    }
    fn stale_device_address(&self, local: &Self, addr: Ipv4Addr, prefix: u8) -> bool {
        (addr, prefix) != (local.addr(), 32) && self.contains(addr)
    }
    fn subnet_of(l: &Lease) -> Option<Self> {
        Some(engine_net(l.subnet))
    }
    fn public_of(l: &Lease) -> Option<Ipv4Addr> {
        Some(l.attrs.public_ip)
    }
    fn vxlan_data_of(l: &Lease) -> Result<VxlanData, BadLeaseValue> {
        l.attrs.vxlan_data()
    }
}

impl Family for Ipv6Net {
    type Addr = Ipv6Addr;
    const NAME: &'static str = "IPv6";
    fn net_addr(&self) -> Ipv6Addr {
        self.addr()
    }
    fn net_prefix(&self) -> u8 {
        self.prefix_len()
    }
    fn from_parts(addr: Ipv6Addr, prefix: u8) -> Option<Self> {
        Ipv6Net::new(addr, prefix)
    }
    fn holds(&self, ip: Ipv6Addr) -> bool {
        self.contains(ip)
    }
    fn stale_device_address(&self, local: &Self, addr: Ipv6Addr, prefix: u8) -> bool {
        (addr, prefix) != (local.addr(), 128) && !addr.is_unicast_link_local()
    }
    fn subnet_of(l: &Lease) -> Option<Self> {
        l.ipv6_subnet
    }
    fn public_of(l: &Lease) -> Option<Ipv6Addr> {
        l.attrs.public_ipv6
    }
    fn vxlan_data_of(l: &Lease) -> Result<VxlanData, BadLeaseValue> {
        l.attrs.vxlan_v6_data()
    }
}

/// The leases a backend can use in family `N`: those with a subnet and a public address of this
/// family, the subnet inside `network` and not overlapping `local` or an earlier lease (etcd
/// holds whatever anyone wrote); `accept` gets the lease and its public address and turns it
/// into the backend's per-peer value or refuses it. Returns them and how many leases were
/// skipped (leases without this family count as skipped).
pub(crate) fn usable_of<N: Family, T>(
    leases: &[Lease],
    network: N,
    local: N,
    mut accept: impl FnMut(&Lease, N::Addr) -> Option<T>,
) -> (BTreeMap<N, T>, usize) {
    let mut candidates: Vec<(N, T)> = leases
        .iter()
        .filter_map(|l| {
            let subnet = N::subnet_of(l)?;
            let public = N::public_of(l)?;
            if !network.holds_net(&subnet) || subnet.shares(&local) {
                return None;
            }
            accept(l, public).map(|t| (subnet, t))
        })
        .collect();
    // By address, then the wider first: a subnet overlapping an accepted one overlaps the last
    // accepted one (they are disjoint and sorted), so it is enough to compare with that.
    candidates.sort_by_key(|(s, _)| (s.net_addr(), s.net_prefix()));
    let mut out = BTreeMap::new();
    let mut last: Option<N> = None;
    for (subnet, t) in candidates {
        if last.is_some_and(|l| l.shares(&subnet)) {
            continue;
        }
        last = Some(subnet);
        out.insert(subnet, t);
    }
    let skipped = leases.len() - out.len();
    (out, skipped)
}

/// [`super::vxlan_peer`] for family `N`: the VTEP MAC of a vxlan lease of VNI `vni` from
/// `BackendData` (IPv4) or `BackendV6Data` (IPv6).
pub(crate) fn vxlan_peer_of<N: Family>(l: &Lease, vni: u32) -> Option<[u8; 6]> {
    if !l.attrs.is_backend("vxlan") {
        return None;
    }
    match N::vxlan_data_of(l) {
        Ok(d) if d.vni == vni => Some(d.vtep_mac),
        Ok(d) => {
            tracing::debug!(key = %l.key(), vni = d.vni, family = N::NAME, "ignoring a vxlan lease of another VNI");
            None
        }
        Err(e) => {
            tracing::debug!(key = %l.key(), family = N::NAME, "ignoring a vxlan lease: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use control::LeaseAttrs;

    fn lease(v4: &str, v6: Option<&str>, ip6: Option<&str>) -> Lease {
        Lease {
            subnet: v4.parse().expect("valid"),
            ipv6_subnet: v6.map(|s| s.parse().expect("valid")),
            attrs: LeaseAttrs::host_gw(Ipv4Addr::new(192, 0, 2, 2))
                .with_public_ipv6(ip6.map(|s| s.parse().expect("valid"))),
            expiration: None,
        }
    }

    #[test]
    fn usable_of_ipv6_takes_leases_with_both_v6_parts_inside_and_disjoint() {
        let net6: Ipv6Net = "fc00::/48".parse().expect("valid");
        let local6: Ipv6Net = "fc00:0:0:1::/64".parse().expect("valid");
        let leases = [
            lease("10.1.2.0/24", Some("fc00:0:0:2::/64"), Some("fd00::2")),
            // v4-only lease: no IPv6 route.
            lease("10.1.3.0/24", None, None),
            // v6 subnet but no PublicIPv6: unreachable over IPv6.
            lease("10.1.4.0/24", Some("fc00:0:0:4::/64"), None),
            // Outside the network, and our own subnet.
            lease("10.1.5.0/24", Some("fc01::/64"), Some("fd00::5")),
            lease("10.1.6.0/24", Some("fc00:0:0:1::/64"), Some("fd00::6")),
            // Overlapping an earlier one.
            lease("10.1.7.0/24", Some("fc00:0:0:2::/80"), Some("fd00::7")),
            lease("10.1.8.0/24", Some("fc00:0:0:8::/64"), Some("fd00::8")),
        ];
        let (got, skipped) = usable_of(&leases, net6, local6, |l, ip| {
            l.attrs.is_backend("host-gw").then_some(ip)
        });
        let got: Vec<String> = got.iter().map(|(n, ip)| format!("{n}={ip}")).collect();
        assert_eq!(got, ["fc00:0:0:2::/64=fd00::2", "fc00:0:0:8::/64=fd00::8"]);
        assert_eq!(skipped, 5);
    }

    #[test]
    fn vxlan_peer_of_reads_the_family_s_data() {
        let mut l = lease("10.1.2.0/24", Some("fc00:0:0:2::/64"), Some("fd00::2"));
        l.attrs = LeaseAttrs::vxlan_dual(
            Ipv4Addr::new(192, 0, 2, 2),
            "fd00::2".parse().expect("valid"),
            1,
            Some([2, 0, 0, 0, 0, 4]),
            [2, 0, 0, 0, 0, 6],
        );
        assert_eq!(vxlan_peer_of::<Ipv4Net>(&l, 1), Some([2, 0, 0, 0, 0, 4]));
        assert_eq!(vxlan_peer_of::<Ipv6Net>(&l, 1), Some([2, 0, 0, 0, 0, 6]));
        assert_eq!(vxlan_peer_of::<Ipv6Net>(&l, 2), None);
        l.attrs.backend_v6_data = None;
        assert_eq!(vxlan_peer_of::<Ipv6Net>(&l, 1), None);
    }
}
