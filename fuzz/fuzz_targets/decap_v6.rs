//! `engine::Decapsulator6` (VXLAN with inner IPv6 over the IPv6 underlay) on any datagram from any
//! IPv6 underlay source.
//!
//! Input: 16 bytes of outer source address (as on the wire), then the UDP payload. Host A (VNI 1,
//! IPv6 VTEP MAC 0a:58:00:00:00:a1, local subnet fd00:1:0:1::/64 of the network fd00:1::/56) has
//! three IPv6 peers, one leasing two subnets and one a /48 outside the network, so two prefix
//! groups are probed. Each datagram is judged under the strict and the accept-any-source policy.
//!
//! Checked: no panic; the VXLAN/Ethernet checks give exactly the drop reason an independent reading
//! of the bytes predicts, in order (Truncated, VxlanBadHeader, VxlanWrongVni, VxlanWrongMac,
//! VxlanNotIpv6); every drop past them is one of the IPv6 reasons; a `Deliver` range runs from byte
//! 22 to the datagram's end and holds one IPv6 packet whose payload length is the rest of the
//! range, whose extension headers walk to a transport header, with a unicast destination in the
//! local subnet and a source that is not unspecified, loopback, multicast, link-local or
//! IPv4-mapped; under the strict policy the outer source is a peer, and when the inner source lies
//! in the overlay network the outer source is the very peer whose subnet holds it; strict ⇒
//! permissive.
#![no_main]

use engine::route::Route6;
use engine::stats::DropReason;
use engine::wire::{ipv6, vxlan};
use engine::{DecapPolicy6, DecapVerdict, Decapsulator6, Ipv6Net, RouteSnapshot};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::OnceLock;

const VNI: u32 = 1;
const MAC: [u8; 6] = [0x0a, 0x58, 0, 0, 0, 0xa1];

fn net(s: &str) -> Ipv6Net {
    s.parse().expect("literal CIDR")
}

fn routes() -> &'static RouteSnapshot {
    static R: OnceLock<RouteSnapshot> = OnceLock::new();
    R.get_or_init(|| {
        let r = |subnet: &str, peer: &str, last: u8| {
            Route6::vxlan(
                net(subnet),
                SocketAddrV6::new(peer.parse().expect("literal"), 8472, 0, 0),
                [0x0a, 0x58, 0, 0, 0, last],
            )
        };
        RouteSnapshot::build_dual(
            1,
            [],
            [
                r("fd00:1:0:2::/64", "2001:db8::b", 0xb1),
                r("fd00:1:0:3::/64", "2001:db8::c", 0xc1),
                r("fd00:1:0:4::/64", "2001:db8::b", 0xb1),
                r("fd00:2::/48", "2001:db8::d", 0xd1),
            ],
        )
        .expect("disjoint routes")
    })
}

fn policies() -> [DecapPolicy6; 2] {
    let strict = DecapPolicy6 {
        network: net("fd00:1::/56"),
        local: net("fd00:1:0:1::/64"),
        accept_any_source: false,
    };
    [
        strict,
        DecapPolicy6 {
            accept_any_source: true,
            ..strict
        },
    ]
}

/// The verdict of the VXLAN and Ethernet checks, read straight from the bytes (not via the view).
fn expected_header_drop(d: &[u8]) -> Option<DropReason> {
    if d.len() < 22 {
        return Some(DropReason::Truncated);
    }
    if d[0] != 0x08 || d[1..4] != [0, 0, 0] || d[7] != 0 {
        return Some(DropReason::VxlanBadHeader);
    }
    if d[4..7] != [0, 0, 1] {
        return Some(DropReason::VxlanWrongVni);
    }
    if d[8..14] != MAC || d[14..20] == MAC {
        return Some(DropReason::VxlanWrongMac);
    }
    if d[20..22] != [0x86, 0xdd] {
        return Some(DropReason::VxlanNotIpv6);
    }
    None
}

fn check(outer_src: Ipv6Addr, datagram: &[u8], policy: &DecapPolicy6) -> bool {
    let snap = routes();
    let d = Decapsulator6 {
        vni: VNI,
        mac: MAC,
        policy: *policy,
    };
    let verdict = d.decapsulate(outer_src, datagram, snap);
    if let Some(reason) = expected_header_drop(datagram) {
        assert_eq!(verdict, DecapVerdict::Drop(reason), "header checks");
        return false;
    }
    let range = match verdict {
        DecapVerdict::Drop(r) => {
            assert!(
                matches!(
                    r,
                    DropReason::Truncated
                        | DropReason::NotIpv6
                        | DropReason::Ipv6Jumbo
                        | DropReason::LengthMismatch
                        | DropReason::Ipv6ExtChainTooLong
                        | DropReason::Ipv6BadExtHeader
                        | DropReason::Ipv6Multicast
                        | DropReason::Ipv6BadSource
                        | DropReason::NotLocal
                        | DropReason::UnknownSender
                        | DropReason::Spoofed
                ),
                "unexpected reason {r:?}"
            );
            return false;
        }
        DecapVerdict::Deliver(range) => range,
    };
    assert_eq!(
        range,
        vxlan::HEADER_LEN..datagram.len(),
        "range is not the inner packet"
    );
    let inner = &datagram[range];
    assert!(inner.len() >= ipv6::HEADER_LEN && inner[0] >> 4 == 6);
    assert_eq!(
        usize::from(u16::from_be_bytes([inner[4], inner[5]])),
        inner.len() - ipv6::HEADER_LEN,
        "payload length"
    );
    let p = ipv6::Packet::new_checked(inner).expect("delivered packet is valid");
    let t = p.transport().expect("delivered packet walks");
    assert!(t.offset <= inner.len());
    let (src, dst) = (p.src_addr(), p.dst_addr());
    assert!(!dst.is_multicast() && policy.local.contains(dst));
    assert!(
        !(src.is_unspecified()
            || src.is_loopback()
            || src.is_multicast()
            || src.is_unicast_link_local()
            || src.to_ipv4_mapped().is_some()),
        "delivered from {src}"
    );
    if !policy.accept_any_source {
        assert!(snap.is_peer6(outer_src), "unknown sender delivered");
        if policy.network.contains(src) {
            let hop = snap.lookup6(src).expect("inner source routed");
            assert_eq!(*hop.peer.ip(), outer_src, "spoofed source delivered");
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((src, datagram)) = data.split_first_chunk::<16>() else {
        return;
    };
    let outer_src = Ipv6Addr::from(*src);
    let [strict, any] = policies();
    if check(outer_src, datagram, &strict) {
        assert!(
            check(outer_src, datagram, &any),
            "strict delivers, permissive drops"
        );
    } else {
        check(outer_src, datagram, &any);
    }
});
