//! `engine::decapsulate_udp` on any datagram from any underlay source.
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

#[path = "common.rs"]
mod common;

use engine::{decapsulate_udp, DecapPolicy, Route, RouteSnapshot, DecapVerdict};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;

fn routes() -> &'static RouteSnapshot {
    static R: OnceLock<RouteSnapshot> = OnceLock::new();
    R.get_or_init(|| {
        let r = |subnet: &str, peer: [u8; 4]| {
            Route::udp(
                common::net(subnet),
                SocketAddrV4::new(Ipv4Addr::from(peer), 8285),
            )
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
    match decapsulate_udp(outer_src, datagram, snap, policy) {
        DecapVerdict::Drop(_) => false,
        DecapVerdict::Deliver(range) => {
            common::assert_delivered(outer_src, datagram, &range, snap, policy);
            true
        }
    }
}

fuzz_target!(|data: &[u8]| common::both_policies(data, check));
