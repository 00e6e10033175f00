//! `engine::decapsulate` on any datagram from any underlay source.
//!
//! Input: 4 bytes of outer source address (big-endian, as on the wire), then the UDP payload.
//! The route snapshot and policy are fixed (host A, local subnet 10.1.1.0/24, three peers, one of
//! them leasing two subnets and one a /16 so two prefix groups are probed). Each datagram is judged
//! under both the strict and the accept-any-source policy.
//!
//! Checked: no panic; a `Deliver` range lies inside the datagram and is one IPv4 packet whose total
//! length is the range's length, addressed to the local subnet; under the strict policy the outer
//! source is a peer, and when the inner source lies in the overlay network (10.0.0.0/8) the outer
//! source is the very peer whose subnet holds it (a source outside the overlay is a peer host's own
//! address, accepted from any peer); strict ⇒ permissive.
//! The header checksum is *not* asserted: under `cfg(fuzzing)` the engine skips verifying it.
#![no_main]

use engine::wire::ipv4;
use engine::{decapsulate, DecapPolicy, Ipv4Net, Route, RouteSnapshot, Verdict};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("literal CIDR")
}

fn routes() -> &'static RouteSnapshot {
    static R: OnceLock<RouteSnapshot> = OnceLock::new();
    R.get_or_init(|| {
        let r = |subnet: &str, peer: [u8; 4]| {
            Route::udp(net(subnet), SocketAddrV4::new(Ipv4Addr::from(peer), 8285))
        };
        RouteSnapshot::build(
            1,
            [
                r("10.1.2.0/24", [192, 0, 2, 2]),
                r("10.1.3.0/24", [192, 0, 2, 3]),
                r("10.1.4.0/24", [192, 0, 2, 2]),
                r("10.2.0.0/16", [198, 51, 100, 4]),
            ],
        )
        .expect("disjoint routes")
    })
}

fn check(outer_src: Ipv4Addr, datagram: &[u8], policy: &DecapPolicy) -> bool {
    let snap = routes();
    match decapsulate(outer_src, datagram, snap, policy) {
        Verdict::Drop(_) => false,
        Verdict::Deliver(range) => {
            assert!(
                range.start <= range.end && range.end <= datagram.len(),
                "range {range:?} outside a {}-byte datagram",
                datagram.len()
            );
            let inner = &datagram[range.clone()];
            let p = ipv4::Packet::new_checked(inner)
                .unwrap_or_else(|e| panic!("delivered range {range:?} is not IPv4: {e:?}"));
            assert_eq!(
                usize::from(p.total_len()),
                inner.len(),
                "total length ≠ range length"
            );
            assert!(p.header_len() >= ipv4::HEADER_LEN && p.header_len() <= inner.len());
            assert!(
                policy.local.contains(p.dst_addr()),
                "delivered to {} outside local {}",
                p.dst_addr(),
                policy.local
            );
            if !policy.accept_any_source {
                assert!(
                    snap.is_peer(outer_src),
                    "delivered from non-peer {outer_src}"
                );
            }
            if !policy.accept_any_source && policy.network.contains(p.src_addr()) {
                assert_eq!(
                    snap.lookup(p.src_addr()).map(|h| *h.peer.ip()),
                    Some(outer_src),
                    "inner source {} not leased by sender {outer_src}",
                    p.src_addr()
                );
            }
            true
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((src, datagram)) = data.split_first_chunk::<4>() else {
        return;
    };
    let outer_src = Ipv4Addr::from(*src);
    let strict = DecapPolicy {
        network: net("10.0.0.0/8"),
        local: net("10.1.1.0/24"),
        accept_any_source: false,
    };
    let any = DecapPolicy {
        accept_any_source: true,
        ..strict
    };
    let delivered_strict = check(outer_src, datagram, &strict);
    let delivered_any = check(outer_src, datagram, &any);
    assert!(
        !delivered_strict || delivered_any,
        "accept_any_source dropped what the strict policy delivers"
    );
});
