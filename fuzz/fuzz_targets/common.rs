//! What the decapsulation targets share: the policies and the checks on a delivered range.
//! Included by `decap.rs` and `decap_vxlan.rs` with `#[path]`; not a target itself.

use engine::wire::ipv4;
use engine::{DecapPolicy, Ipv4Net, RouteSnapshot};
use std::net::Ipv4Addr;
use std::ops::Range;

pub(crate) fn net(s: &str) -> Ipv4Net {
    s.parse().expect("literal CIDR")
}

/// Host A's policies: strict, and accepting any source.
pub(crate) fn policies() -> [DecapPolicy; 2] {
    let strict = DecapPolicy {
        network: net("10.0.0.0/8"),
        local: net("10.1.1.0/24"),
        accept_any_source: false,
    };
    [
        strict,
        DecapPolicy {
            accept_any_source: true,
            ..strict
        },
    ]
}

/// A delivered `range` lies inside the datagram and is one IPv4 packet whose total length is the
/// range's length, addressed to the local subnet; under the strict policy the outer source is a
/// peer, and when the inner source lies in the overlay network the outer source is the very peer
/// whose subnet holds it.
pub(crate) fn assert_delivered(
    outer_src: Ipv4Addr,
    datagram: &[u8],
    range: &Range<usize>,
    snap: &RouteSnapshot,
    policy: &DecapPolicy,
) {
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
        if policy.network.contains(p.src_addr()) {
            assert_eq!(
                snap.lookup(p.src_addr()).map(|h| *h.peer.ip()),
                Some(outer_src),
                "inner source {} not leased by sender {outer_src}",
                p.src_addr()
            );
        }
    }
}

/// Judges the datagram under both policies with `check` (true = delivered): strict ⇒ permissive.
pub(crate) fn both_policies(data: &[u8], check: impl Fn(Ipv4Addr, &[u8], &DecapPolicy) -> bool) {
    let Some((src, datagram)) = data.split_first_chunk::<4>() else {
        return;
    };
    let outer_src = Ipv4Addr::from(*src);
    let [strict, any] = policies();
    let delivered_strict = check(outer_src, datagram, &strict);
    let delivered_any = check(outer_src, datagram, &any);
    assert!(
        !delivered_strict || delivered_any,
        "accept_any_source dropped what the strict policy delivers"
    );
}
