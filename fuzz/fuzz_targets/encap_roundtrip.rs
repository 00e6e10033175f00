//! `engine::encapsulate_udp` on host A, then `engine::decapsulate_udp` on the peer it forwards to.
//!
//! Hosts: A 192.0.2.1 leases 10.1.1.0/24, B 192.0.2.2 leases 10.1.2.0/24, C 192.0.2.3 leases
//! 10.1.3.0/24. A routes to B and C; each peer routes back to A and to the third host.
//!
//! Input byte 0 picks the mode:
//! * odd: the rest of the input is taken as the packet, as read from the TUN device;
//! * even: a valid IPv4 packet is built from the rest: bytes 1..: header length (5..=15 words),
//!   TTL, destination choice (B, C or 4 raw address bytes), destination host, source choice
//!   (A's subnet or 4 raw bytes), then options and payload; total length and checksum are filled in.
//!
//! Checked: no panic; a dropped packet is left untouched (NoRoute / TTL drops match what the
//! built packet says); a forwarded packet goes to the peer leasing its destination, with the TTL
//! one lower, every other byte but the checksum unchanged, and a checksum that verifies exactly when
//! it verified before (recomputed here: `verify_checksum` is a no-op under `cfg(fuzzing)`); at the
//! peer (overlay 10.1.0.0/16, local = the destination's subnet), decapsulation delivers exactly the
//! forwarded bytes when the inner source lies in A's subnet or outside the overlay (a peer host's
//! own address), and drops it as spoofed otherwise.
#![no_main]

use engine::stats::DropReason;
use engine::wire::{checksum, ipv4};
use engine::{
    decapsulate_udp, encapsulate_udp, DecapPolicy, EncapVerdict, Ipv4Net, Route, RouteSnapshot, DecapVerdict,
};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;

const PORT: u16 = 8285;

struct Host {
    ip: Ipv4Addr,
    subnet: Ipv4Net,
}

fn hosts() -> &'static [Host; 3] {
    static H: OnceLock<[Host; 3]> = OnceLock::new();
    H.get_or_init(|| {
        [1u8, 2, 3].map(|n| Host {
            ip: Ipv4Addr::new(192, 0, 2, n),
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 1, n, 0), 24).expect("/24"),
        })
    })
}

/// The overlay network all three subnets lie in.
fn overlay() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 1, 0, 0), 16).expect("/16")
}

/// Each host's routes: every other host's subnet.
fn tables() -> &'static [RouteSnapshot; 3] {
    static T: OnceLock<[RouteSnapshot; 3]> = OnceLock::new();
    T.get_or_init(|| {
        let h = hosts();
        [0usize, 1, 2].map(|me| {
            RouteSnapshot::build(
                1,
                h.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != me)
                    .map(|(_, o)| Route::udp(o.subnet, SocketAddrV4::new(o.ip, PORT))),
            )
            .expect("disjoint")
        })
    })
}

fn header_sum_ok(p: &[u8]) -> bool {
    let hl = usize::from(p[0] & 0x0f) * 4;
    checksum::sum(&p[..hl]) == 0xffff
}

/// Builds a valid IPv4 packet from `d` (`None` if `d` is too short to choose its fields).
fn build(d: &[u8]) -> Option<Vec<u8>> {
    let h = hosts();
    let mut it = d.iter().copied();
    let words = usize::from(it.next()? % 11) + 5; // 5..=15
    let ttl = it.next()?;
    let dst = match it.next()? % 3 {
        0 => Ipv4Addr::from(u32::from(h[1].subnet.addr()) | u32::from(it.next()?)),
        1 => Ipv4Addr::from(u32::from(h[2].subnet.addr()) | u32::from(it.next()?)),
        _ => Ipv4Addr::new(it.next()?, it.next()?, it.next()?, it.next()?),
    };
    let src = if it.next()? % 4 != 3 {
        Ipv4Addr::from(u32::from(h[0].subnet.addr()) | u32::from(it.next()?))
    } else {
        Ipv4Addr::new(it.next()?, it.next()?, it.next()?, it.next()?)
    };
    let proto = it.next()?;
    let rest: Vec<u8> = it.collect();
    let len = (20 + rest.len()).max(words * 4).min(usize::from(u16::MAX));
    let mut v = vec![0u8; len];
    // Options (zero-padded if the input is short), then payload.
    for (o, b) in v[20..].iter_mut().zip(rest.iter()) {
        *o = *b;
    }
    let mut p = ipv4::Packet::new_unchecked(&mut v[..]);
    p.set_version_and_header_len(words * 4);
    p.set_total_len(len as u16);
    p.set_ttl(ttl);
    p.set_protocol(proto);
    p.set_src_addr(src);
    p.set_dst_addr(dst);
    p.fill_checksum();
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let built = mode & 1 == 0;
    let orig = if built {
        match build(rest) {
            Some(v) => v,
            None => return,
        }
    } else {
        rest.to_vec()
    };
    let h = hosts();
    let t = tables();
    let mut pkt = orig.clone();
    match encapsulate_udp(&mut pkt, &t[0]) {
        EncapVerdict::Drop { reason, .. } => {
            assert_eq!(
                pkt, orig,
                "a dropped packet must be left untouched ({reason:?})"
            );
            if built {
                let dst = Ipv4Addr::new(orig[16], orig[17], orig[18], orig[19]);
                let routed = t[0].lookup(dst).is_some();
                let expect = if !routed {
                    DropReason::NoRoute
                } else {
                    DropReason::TtlExceeded
                };
                assert_eq!(reason, expect, "built packet to {dst}, TTL {}", orig[8]);
                assert!(
                    !routed || orig[8] <= 1,
                    "routed packet with TTL {} dropped",
                    orig[8]
                );
            }
        }
        EncapVerdict::Forward(peer) => {
            let view = ipv4::Packet::new_checked(&orig[..]).expect("forwarded packet must be IPv4");
            assert!(view.ttl() > 1, "forwarded with TTL {}", view.ttl());
            let dst = view.dst_addr();
            let (to, to_host) = h
                .iter()
                .enumerate()
                .find(|(_, x)| x.subnet.contains(dst))
                .expect("forwarded to a destination without a subnet");
            assert_ne!(to, 0, "A forwarded a packet for its own subnet");
            assert_eq!(peer, SocketAddrV4::new(to_host.ip, PORT));
            assert_eq!(pkt.len(), orig.len());
            assert_eq!(pkt[8], orig[8] - 1, "TTL must drop by one");
            for i in (0..pkt.len()).filter(|i| ![8, 10, 11].contains(i)) {
                assert_eq!(pkt[i], orig[i], "byte {i} changed by encapsulation");
            }
            let before = header_sum_ok(&orig);
            let after = header_sum_ok(&pkt);
            assert_eq!(
                before, after,
                "checksum validity changed (was {before}) by the TTL patch"
            );
            if built {
                assert!(
                    after,
                    "built packet's checksum no longer verifies after the TTL patch"
                );
            }
            let policy = DecapPolicy {
                network: overlay(),
                local: to_host.subnet,
                accept_any_source: false,
            };
            let verdict = decapsulate_udp(h[0].ip, &pkt, &t[to], &policy);
            let src = view.src_addr();
            if h[0].subnet.contains(src) || !overlay().contains(src) {
                assert_eq!(verdict, DecapVerdict::Deliver(0..pkt.len()));
            } else {
                assert_eq!(verdict, DecapVerdict::Drop(DropReason::Spoofed));
            }
        }
    }
});
