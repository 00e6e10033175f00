//! Encapsulation for flannel's udp wire format: route lookup and TTL handling.
//!
//! The UDP payload is the bare inner IPv4 packet, so encapsulating is deciding the peer and
//! decrementing the TTL in place (weft is one router hop, as flannel's proxy is). Where flannel drops
//! a packet whose TTL runs out silently, weft answers with an ICMP time exceeded, so traceroute works
//! across the overlay.

use crate::route::RouteSnapshot;
use crate::stats::DropReason;
use crate::wire::{self, icmp, ipv4};
use std::net::SocketAddrV4;

/// What to do with a packet read from the TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// Send the (TTL-decremented) packet to this peer.
    Forward(SocketAddrV4),
    /// Drop it; if `reply` is set, answer the sender with that ICMP error.
    Drop {
        /// Counter to charge.
        reason: DropReason,
        /// ICMP error to write back into the TUN device, subject to rate limiting.
        reply: Option<icmp::ErrorKind>,
    },
}

/// Decides where `packet` (one IPv4 packet read from the TUN device) goes, and decrements its TTL
/// when it is forwarded. Never panics, whatever the bytes.
pub fn encapsulate(packet: &mut [u8], routes: &RouteSnapshot) -> Encap {
    let view = match ipv4::Packet::new_checked(&packet[..]) {
        Ok(p) => p,
        Err(wire::Error::NotIpv4) => return drop(DropReason::TxNotIpv4),
        Err(_) => return drop(DropReason::TxMalformed),
    };
    let Some(peer) = routes.lookup(view.dst_addr()) else {
        let reply = icmp::may_reply_to(&view).then_some(icmp::ErrorKind::NetUnreachable);
        return Encap::Drop {
            reason: DropReason::NoRoute,
            reply,
        };
    };
    if view.ttl() <= 1 {
        let reply = icmp::may_reply_to(&view).then_some(icmp::ErrorKind::TimeExceeded);
        return Encap::Drop {
            reason: DropReason::TtlExceeded,
            reply,
        };
    }
    ipv4::Packet::new_unchecked(packet).decrement_ttl();
    Encap::Forward(peer)
}

fn drop(reason: DropReason) -> Encap {
    Encap::Drop {
        reason,
        reply: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decap::{decapsulate, DecapPolicy, Verdict};
    use crate::route::Route;
    use std::net::Ipv4Addr;

    const HOST_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const HOST_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    fn table(peer: Ipv4Addr, net: &str) -> RouteSnapshot {
        RouteSnapshot::build(
            1,
            [Route {
                subnet: net.parse().expect("valid"),
                peer: SocketAddrV4::new(peer, 8285),
            }],
        )
        .expect("one route")
    }

    fn packet(src: [u8; 4], dst: [u8; 4], ttl: u8, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let mut p = ipv4::Packet::new_unchecked(&mut v[..]);
        p.set_version_and_header_len(20);
        p.set_total_len(len as u16);
        p.set_ttl(ttl);
        p.set_protocol(6);
        p.set_src_addr(src.into());
        p.set_dst_addr(dst.into());
        p.fill_checksum();
        for (i, b) in v[20..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        v
    }

    #[test]
    fn forwards_and_decrements_ttl() {
        let mut p = packet([10, 1, 1, 2], [10, 1, 2, 2], 64, 100);
        assert_eq!(
            encapsulate(&mut p, &table(HOST_B, "10.1.2.0/24")),
            Encap::Forward(SocketAddrV4::new(HOST_B, 8285))
        );
        let v = ipv4::Packet::new_checked(&p[..]).expect("still valid");
        assert_eq!(v.ttl(), 63);
        assert!(v.verify_checksum());
    }

    #[test]
    fn round_trip_through_decap() {
        // Host A encapsulates towards B; B's decapsulator delivers exactly the forwarded bytes.
        for len in [20usize, 28, 64, 1400, 1472] {
            let orig = packet([10, 1, 1, 2], [10, 1, 2, 2], 64, len);
            let mut p = orig.clone();
            assert!(matches!(
                encapsulate(&mut p, &table(HOST_B, "10.1.2.0/24")),
                Encap::Forward(_)
            ));
            let policy = DecapPolicy {
                network: "10.1.0.0/16".parse().expect("valid"),
                local: "10.1.2.0/24".parse().expect("valid"),
                accept_any_source: false,
            };
            let verdict = decapsulate(HOST_A, &p, &table(HOST_A, "10.1.1.0/24"), &policy);
            assert_eq!(verdict, Verdict::Deliver(0..len));
            assert_eq!(p[20..], orig[20..]);
            assert_eq!(p[8], orig[8] - 1);
        }
    }

    #[test]
    fn no_route_replies_net_unreachable() {
        let mut p = packet([10, 1, 1, 2], [10, 1, 9, 2], 64, 40);
        assert_eq!(
            encapsulate(&mut p, &table(HOST_B, "10.1.2.0/24")),
            Encap::Drop {
                reason: DropReason::NoRoute,
                reply: Some(icmp::ErrorKind::NetUnreachable)
            }
        );
    }

    #[test]
    fn ttl_one_replies_time_exceeded() {
        let mut p = packet([10, 1, 1, 2], [10, 1, 2, 2], 1, 40);
        assert_eq!(
            encapsulate(&mut p, &table(HOST_B, "10.1.2.0/24")),
            Encap::Drop {
                reason: DropReason::TtlExceeded,
                reply: Some(icmp::ErrorKind::TimeExceeded)
            }
        );
        assert_eq!(p[8], 1, "a dropped packet is left alone");
    }

    #[test]
    fn non_ipv4_and_malformed_are_dropped() {
        let mut six = vec![0x60u8; 40];
        assert_eq!(
            encapsulate(&mut six, &table(HOST_B, "10.1.2.0/24")),
            Encap::Drop {
                reason: DropReason::TxNotIpv4,
                reply: None
            }
        );
        let mut short = vec![0x45u8; 10];
        assert_eq!(
            encapsulate(&mut short, &table(HOST_B, "10.1.2.0/24")),
            Encap::Drop {
                reason: DropReason::TxMalformed,
                reply: None
            }
        );
    }
}
