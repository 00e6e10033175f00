//! `engine::Decapsulator` with the vxlan wire format on any datagram from any underlay source.
//!
//! Input: 4 bytes of outer source address (big-endian, as on the wire), then the UDP payload.
//! Host A (VNI 1, VTEP MAC 0a:58:0a:01:01:00, local subnet 10.1.1.0/24) has three vxlan peers, one
//! of them leasing two subnets and one a /16 so two prefix groups are probed. Each datagram is
//! judged under both the strict and the accept-any-source policy.
//!
//! Checked: no panic; the VXLAN/Ethernet checks give exactly the drop reason an independent reading
//! of the bytes predicts, in order (Truncated, VxlanBadHeader, VxlanWrongVni, VxlanWrongMac,
//! VxlanNotIpv4); past them the verdict is the udp decapsulation of the inner packet, shifted by
//! the 22 header bytes; a `Deliver` range lies inside the datagram, runs from byte 22 to its end,
//! and holds one IPv4 packet whose total length is the range's length, addressed to the local
//! subnet; under the strict policy the outer source is a peer, and when the inner source lies in
//! the overlay network (10.0.0.0/8) the outer source is the very peer whose subnet holds it;
//! strict ⇒ permissive.
//! The header checksum is *not* asserted: under `cfg(fuzzing)` the engine skips verifying it.
#![no_main]

#[path = "common.rs"]
mod common;

use engine::stats::DropReason;
use engine::wire::vxlan;
use engine::{decapsulate_udp, DecapPolicy, Decapsulator, Route, RouteSnapshot, DecapVerdict, Wire};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;

const VNI: u32 = 1;
const MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x01, 0x01, 0x00];
const WIRE: Wire = Wire::Vxlan { vni: VNI, mac: MAC };

fn routes() -> &'static RouteSnapshot {
    static R: OnceLock<RouteSnapshot> = OnceLock::new();
    R.get_or_init(|| {
        let r = |subnet: &str, peer: [u8; 4], last: u8| {
            Route::vxlan(
                common::net(subnet),
                SocketAddrV4::new(Ipv4Addr::from(peer), 8472),
                [0x0a, 0x58, 0x0a, 0x01, last, 0x00],
            )
        };
        RouteSnapshot::build(
            1,
            [
                r("10.1.2.0/24", [192, 0, 2, 2], 2),
                r("10.1.3.0/24", [192, 0, 2, 3], 3),
                r("10.1.4.0/24", [192, 0, 2, 2], 2),
                r("10.2.0.0/16", [198, 51, 100, 4], 4),
            ],
        )
        .expect("disjoint routes")
    })
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
    if d[20..22] != [0x08, 0x00] {
        return Some(DropReason::VxlanNotIpv4);
    }
    None
}

fn check(outer_src: Ipv4Addr, datagram: &[u8], policy: &DecapPolicy) -> bool {
    let snap = routes();
    let verdict = Decapsulator::new(WIRE, *policy).decapsulate(outer_src, datagram, snap);
    if let Some(reason) = expected_header_drop(datagram) {
        assert_eq!(verdict, DecapVerdict::Drop(reason), "header checks");
        return false;
    }
    let inner = &datagram[vxlan::HEADER_LEN..];
    match (decapsulate_udp(outer_src, inner, snap, policy), &verdict) {
        (DecapVerdict::Drop(a), DecapVerdict::Drop(b)) => assert_eq!(a, *b, "inner drop reason"),
        (DecapVerdict::Deliver(a), DecapVerdict::Deliver(b)) => {
            assert_eq!(a.start + vxlan::HEADER_LEN..a.end + vxlan::HEADER_LEN, *b)
        }
        (udp, vx) => panic!("vxlan verdict {vx:?} but the inner packet alone gets {udp:?}"),
    }
    match verdict {
        DecapVerdict::Drop(_) => false,
        DecapVerdict::Deliver(range) => {
            common::assert_delivered(outer_src, datagram, &range, snap, policy);
            assert_eq!(
                range,
                vxlan::HEADER_LEN..datagram.len(),
                "range is not the inner packet"
            );
            true
        }
    }
}

fuzz_target!(|data: &[u8]| common::both_policies(data, check));
