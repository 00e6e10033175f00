//! Encapsulation: route lookup and TTL handling, then the wire format's header.
//!
//! Encapsulating is deciding the peer and decrementing the TTL in place (weft is one router hop, as
//! flannel's proxy and the kernel's vxlan device are). Where flannel drops a packet whose TTL runs
//! out silently, weft answers with an ICMP time exceeded, so traceroute works across the overlay.
//!
//! What then goes in front of the packet depends on the [`Wire`]:
//! * udp (flannel's udp backend): nothing, the UDP payload is the bare inner IPv4 packet;
//! * vxlan: the 8-byte VXLAN header with our VNI and a 14-byte inner Ethernet header from our VTEP
//!   MAC to the peer's, written into the [`header_len`](Encapsulator::header_len) bytes the caller
//!   keeps free in front of the packet (the batch's headroom), so nothing is copied.

use crate::route::{Hop, Hop6, RouteSnapshot};
use crate::stats::DropReason;
use crate::wire::{self, icmp, icmpv6, ipv4, ipv6, vxlan, Wire};
use std::net::{SocketAddrV4, SocketAddrV6};

/// What to do with a packet read from the TUN device (the outcome of encapsulation;
/// [`DecapVerdict`] is the receiving side's).
///
/// [`DecapVerdict`]: crate::decap::DecapVerdict
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncapVerdict {
    /// Send the (TTL-decremented, encapsulated) packet to this peer.
    Forward(SocketAddrV4),
    /// Drop it; if `reply` is set, answer the sender with that ICMP error.
    Drop {
        /// Counter to charge.
        reason: DropReason,
        /// ICMP error to write back into the TUN device, subject to rate limiting.
        reply: Option<icmp::ErrorKind>,
    },
}

/// Encapsulation for flannel's udp wire format: decides where `packet` (one IPv4 packet read from
/// the TUN device) goes, and decrements its TTL when it is forwarded; the packet itself is then the
/// UDP payload (the format has no header). Never panics, whatever the bytes.
pub fn encapsulate_udp(packet: &mut [u8], routes: &RouteSnapshot) -> EncapVerdict {
    match route(packet, routes) {
        Ok(hop) => EncapVerdict::Forward(hop.peer),
        Err(drop) => drop,
    }
}

/// Route lookup and TTL handling shared by every wire format.
#[inline]
fn route(packet: &mut [u8], routes: &RouteSnapshot) -> Result<Hop, EncapVerdict> {
    let view = match ipv4::Packet::new_checked(&packet[..]) {
        Ok(p) => p,
        Err(wire::Error::NotIpv4) => return Err(drop(DropReason::TxNotIpv4)),
        Err(_) => return Err(drop(DropReason::TxMalformed)),
    };
    let Some(hop) = routes.lookup(view.dst_addr()) else {
        let reply = icmp::may_reply_to(&view).then_some(icmp::ErrorKind::NetUnreachable);
        return Err(EncapVerdict::Drop {
            reason: DropReason::NoRoute,
            reply,
        });
    };
    if view.ttl() <= 1 {
        let reply = icmp::may_reply_to(&view).then_some(icmp::ErrorKind::TimeExceeded);
        return Err(EncapVerdict::Drop {
            reason: DropReason::TtlExceeded,
            reply,
        });
    }
    ipv4::Packet::new_unchecked(packet).decrement_ttl();
    Ok(hop)
}

fn drop(reason: DropReason) -> EncapVerdict {
    EncapVerdict::Drop {
        reason,
        reply: None,
    }
}

/// Encapsulation for one wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encapsulator {
    wire: Wire,
}

impl Encapsulator {
    /// An encapsulator for `wire`.
    pub const fn new(wire: Wire) -> Encapsulator {
        Encapsulator { wire }
    }

    /// The wire format.
    pub const fn wire(&self) -> Wire {
        self.wire
    }

    /// Bytes written in front of the inner packet: 0 for udp, [`vxlan::HEADER_LEN`] for vxlan.
    pub const fn header_len(&self) -> usize {
        self.wire.header_len()
    }

    /// Encapsulates the inner packet in `frame[header_len()..]` (one IPv4 packet read from the TUN
    /// device; the bytes in front are room for the header). On `Forward` the TTL was decremented,
    /// the header written, and all of `frame` is the UDP payload to send; on `Drop` `frame` is left
    /// untouched. Never panics, whatever the bytes (a `frame` shorter than the header is
    /// `TxMalformed`).
    #[inline]
    pub fn encapsulate(&self, frame: &mut [u8], routes: &RouteSnapshot) -> EncapVerdict {
        match self.wire {
            Wire::Udp => encapsulate_udp(frame, routes),
            Wire::Vxlan { vni, mac } => {
                let Some((header, packet)) = frame.split_at_mut_checked(vxlan::HEADER_LEN) else {
                    return drop(DropReason::TxMalformed);
                };
                let hop = match route(packet, routes) {
                    Ok(hop) => hop,
                    Err(drop) => return drop,
                };
                let repr = vxlan::Repr {
                    vni,
                    dst_mac: hop.mac,
                    src_mac: mac,
                    ethertype: vxlan::ETHERTYPE_IPV4,
                };
                repr.emit(&mut vxlan::Packet::new_unchecked(header));
                EncapVerdict::Forward(hop.peer)
            }
        }
    }
}

/// What to do with an IPv6 packet read from the TUN device ([`Encapsulator6`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncapVerdict6 {
    /// Send the (hop-limit-decremented, encapsulated) packet to this peer over the IPv6 underlay.
    Forward(SocketAddrV6),
    /// Drop it; if `reply` is set, answer the sender with that ICMPv6 error.
    Drop {
        /// Counter to charge.
        reason: DropReason,
        /// ICMPv6 error to write back into the TUN device, subject to rate limiting.
        reply: Option<icmpv6::ErrorKind>,
    },
}

fn drop6(reason: DropReason) -> EncapVerdict6 {
    EncapVerdict6::Drop {
        reason,
        reply: None,
    }
}

/// VXLAN encapsulation of inner IPv6 packets for the IPv6 underlay, as the kernel's
/// `flannel-v6.<VNI>` device sends them: the VNI of IPv4, ethertype IPv6, from this host's IPv6
/// VTEP MAC to the peer's (`BackendV6Data`).
///
/// Checked in this order: a well-formed IPv6 header (`Ipv6Jumbo` for a jumbogram, `TxMalformed`
/// otherwise) no longer than `mtu` (`TxTooBig` with an ICMPv6 packet too big; super-packets
/// are cut before they get here); a unicast destination (`Ipv6Multicast`: the TUN device's own
/// neighbour discovery and MLD); a source that may cross a router (`Ipv6BadSource`: link-local,
/// IPv4-mapped, …); a route (`NoRoute`, ICMPv6 no route); a hop limit above 1 (`TtlExceeded`,
/// ICMPv6 time exceeded). Then the hop limit is decremented and the header written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encapsulator6 {
    /// VXLAN network identifier.
    pub vni: u32,
    /// This host's IPv6 VTEP MAC: the source of every inner Ethernet header sent.
    pub mac: [u8; 6],
    /// Largest inner packet: the TUN device's MTU (the IPv6 underlay MTU minus 70).
    pub mtu: usize,
}

impl Encapsulator6 {
    /// Encapsulates the inner IPv6 packet in `frame[vxlan::HEADER_LEN..]` (the bytes in front
    /// are room for the header). On `Forward` the hop limit was decremented, the header written,
    /// and all of `frame` is the UDP payload to send; on `Drop` `frame` is left untouched. Never
    /// panics, whatever the bytes.
    pub fn encapsulate(&self, frame: &mut [u8], routes: &RouteSnapshot) -> EncapVerdict6 {
        let Some((header, packet)) = frame.split_at_mut_checked(vxlan::HEADER_LEN) else {
            return drop6(DropReason::TxMalformed);
        };
        let hop = match self.route(packet, routes) {
            Ok(hop) => hop,
            Err(drop) => return drop,
        };
        let repr = vxlan::Repr {
            vni: self.vni,
            dst_mac: hop.mac,
            src_mac: self.mac,
            ethertype: vxlan::ETHERTYPE_IPV6,
        };
        repr.emit(&mut vxlan::Packet::new_unchecked(header));
        EncapVerdict6::Forward(hop.peer)
    }

    fn route(&self, packet: &mut [u8], routes: &RouteSnapshot) -> Result<Hop6, EncapVerdict6> {
        let view = match ipv6::Packet::new_checked(&packet[..]) {
            Ok(p) => p,
            Err(wire::Error::Jumbo) => return Err(drop6(DropReason::Ipv6Jumbo)),
            Err(_) => return Err(drop6(DropReason::TxMalformed)),
        };
        let refuse = |reason, kind| {
            let reply = icmpv6::may_reply_to(&view, kind).then_some(kind);
            Err(EncapVerdict6::Drop { reason, reply })
        };
        if packet.len() > self.mtu {
            let kind = icmpv6::ErrorKind::PacketTooBig {
                mtu: self.mtu as u32,
            };
            return refuse(DropReason::TxTooBig, kind);
        }
        if view.dst_addr().is_multicast() {
            return Err(drop6(DropReason::Ipv6Multicast));
        }
        if crate::decap::bad_ipv6_source(view.src_addr()) {
            return Err(drop6(DropReason::Ipv6BadSource));
        }
        let Some(hop) = routes.lookup6(view.dst_addr()) else {
            return refuse(DropReason::NoRoute, icmpv6::ErrorKind::NoRoute);
        };
        if view.hop_limit() <= 1 {
            return refuse(DropReason::TtlExceeded, icmpv6::ErrorKind::HopLimitExceeded);
        }
        ipv6::Packet::new_unchecked(packet).decrement_hop_limit();
        Ok(hop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decap::{decapsulate_udp, DecapPolicy, DecapVerdict};
    use crate::route::Route;
    use std::net::Ipv4Addr;

    const HOST_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const HOST_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    fn table(peer: Ipv4Addr, net: &str) -> RouteSnapshot {
        RouteSnapshot::build(
            1,
            [Route::udp(
                net.parse().expect("valid"),
                SocketAddrV4::new(peer, 8285),
            )],
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
            encapsulate_udp(&mut p, &table(HOST_B, "10.1.2.0/24")),
            EncapVerdict::Forward(SocketAddrV4::new(HOST_B, 8285))
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
                encapsulate_udp(&mut p, &table(HOST_B, "10.1.2.0/24")),
                EncapVerdict::Forward(_)
            ));
            let policy = DecapPolicy {
                network: "10.1.0.0/16".parse().expect("valid"),
                local: "10.1.2.0/24".parse().expect("valid"),
                accept_any_source: false,
            };
            let verdict = decapsulate_udp(HOST_A, &p, &table(HOST_A, "10.1.1.0/24"), &policy);
            assert_eq!(verdict, DecapVerdict::Deliver(0..len));
            assert_eq!(p[20..], orig[20..]);
            assert_eq!(p[8], orig[8] - 1);
        }
    }

    #[test]
    fn no_route_replies_net_unreachable() {
        let mut p = packet([10, 1, 1, 2], [10, 1, 9, 2], 64, 40);
        assert_eq!(
            encapsulate_udp(&mut p, &table(HOST_B, "10.1.2.0/24")),
            EncapVerdict::Drop {
                reason: DropReason::NoRoute,
                reply: Some(icmp::ErrorKind::NetUnreachable)
            }
        );
    }

    #[test]
    fn ttl_one_replies_time_exceeded() {
        let mut p = packet([10, 1, 1, 2], [10, 1, 2, 2], 1, 40);
        assert_eq!(
            encapsulate_udp(&mut p, &table(HOST_B, "10.1.2.0/24")),
            EncapVerdict::Drop {
                reason: DropReason::TtlExceeded,
                reply: Some(icmp::ErrorKind::TimeExceeded)
            }
        );
        assert_eq!(p[8], 1, "a dropped packet is left alone");
    }

    /// Host A's VTEP MAC.
    const MAC_A: [u8; 6] = [0x0a, 0x58, 0x0a, 0x01, 0x01, 0x00];
    /// Host B's VTEP MAC.
    const MAC_B: [u8; 6] = [0x0a, 0x58, 0x0a, 0x01, 0x02, 0x00];
    const VXLAN_A: Wire = Wire::Vxlan { vni: 1, mac: MAC_A };
    const VXLAN_B: Wire = Wire::Vxlan { vni: 1, mac: MAC_B };

    /// ICMP echo request 10.1.1.2 → 10.1.2.2, TTL 64, as read from host A's TUN device.
    #[rustfmt::skip]
    static INNER: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x00, 0x01, 0x40, 0x00, 0x40, 0x01, 0x23, 0xdb, 10, 1, 1, 2, 10, 1, 2, 2,
        0x08, 0x00, 0xf7, 0xfe, 0x00, 0x01, 0x00, 0x00,
    ];

    /// The UDP payload host A sends to B for [`INNER`]: what Linux's vxlan driver would send
    /// (flags 08, VNI 1, B's MAC ← A's MAC, IPv4), around the packet with its TTL one lower.
    #[rustfmt::skip]
    static VXLAN_FRAME: [u8; 50] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
        0x0a, 0x58, 0x0a, 0x01, 0x02, 0x00,
        0x0a, 0x58, 0x0a, 0x01, 0x01, 0x00,
        0x08, 0x00,
        0x45, 0x00, 0x00, 0x1c, 0x00, 0x01, 0x40, 0x00, 0x3f, 0x01, 0x24, 0xdb, 10, 1, 1, 2, 10, 1, 2, 2,
        0x08, 0x00, 0xf7, 0xfe, 0x00, 0x01, 0x00, 0x00,
    ];

    fn vxlan_table(peer: Ipv4Addr, mac: [u8; 6], net: &str) -> RouteSnapshot {
        RouteSnapshot::build(
            1,
            [Route::vxlan(
                net.parse().expect("valid"),
                SocketAddrV4::new(peer, 8472),
                mac,
            )],
        )
        .expect("one route")
    }

    /// `inner` behind 22 bytes of room, as the worker lays a packet out in its headroom.
    fn framed(inner: &[u8]) -> Vec<u8> {
        let mut v = vec![0xee; vxlan::HEADER_LEN];
        v.extend_from_slice(inner);
        v
    }

    #[test]
    fn vxlan_golden_frame() {
        let mut f = framed(&INNER);
        let e = Encapsulator::new(VXLAN_A);
        assert_eq!(e.header_len(), 22);
        assert_eq!(
            e.encapsulate(&mut f, &vxlan_table(HOST_B, MAC_B, "10.1.2.0/24")),
            EncapVerdict::Forward(SocketAddrV4::new(HOST_B, 8472))
        );
        // Every byte: VXLAN header, inner Ethernet, and the inner packet with TTL 63.
        assert_eq!(f[..], VXLAN_FRAME[..]);
        assert_eq!(f[..8], [0x08, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(f[8..14], MAC_B);
        assert_eq!(f[14..20], MAC_A);
        assert_eq!(f[20..22], [0x08, 0x00]);
        assert!(ipv4::Packet::new_checked(&f[22..])
            .expect("IPv4")
            .verify_checksum());
    }

    #[test]
    fn vxlan_round_trip_through_decap() {
        use crate::decap::Decapsulator;
        let policy = DecapPolicy {
            network: "10.1.0.0/16".parse().expect("valid"),
            local: "10.1.2.0/24".parse().expect("valid"),
            accept_any_source: false,
        };
        let at_b = Decapsulator::new(VXLAN_B, policy);
        for len in [20usize, 28, 64, 1400, 1450] {
            let orig = packet([10, 1, 1, 2], [10, 1, 2, 2], 64, len);
            let mut f = framed(&orig);
            assert_eq!(
                Encapsulator::new(VXLAN_A)
                    .encapsulate(&mut f, &vxlan_table(HOST_B, MAC_B, "10.1.2.0/24")),
                EncapVerdict::Forward(SocketAddrV4::new(HOST_B, 8472))
            );
            assert_eq!(f.len(), 22 + len);
            let verdict = at_b.decapsulate(HOST_A, &f, &vxlan_table(HOST_A, MAC_A, "10.1.1.0/24"));
            assert_eq!(verdict, DecapVerdict::Deliver(22..22 + len));
            assert_eq!(f[22 + 20..], orig[20..]);
            assert_eq!(f[22 + 8], orig[8] - 1);
        }
    }

    #[test]
    fn vxlan_drops_leave_the_frame_alone() {
        let routes = vxlan_table(HOST_B, MAC_B, "10.1.2.0/24");
        let e = Encapsulator::new(VXLAN_A);
        let mut no_route = framed(&packet([10, 1, 1, 2], [10, 1, 9, 2], 64, 40));
        let before = no_route.clone();
        assert_eq!(
            e.encapsulate(&mut no_route, &routes),
            EncapVerdict::Drop {
                reason: DropReason::NoRoute,
                reply: Some(icmp::ErrorKind::NetUnreachable)
            }
        );
        assert_eq!(no_route, before);
        let mut ttl1 = framed(&packet([10, 1, 1, 2], [10, 1, 2, 2], 1, 40));
        let before = ttl1.clone();
        assert_eq!(
            e.encapsulate(&mut ttl1, &routes),
            EncapVerdict::Drop {
                reason: DropReason::TtlExceeded,
                reply: Some(icmp::ErrorKind::TimeExceeded)
            }
        );
        assert_eq!(ttl1, before);
        let mut six = framed(&[0x60; 40]);
        assert_eq!(
            e.encapsulate(&mut six, &routes),
            EncapVerdict::Drop {
                reason: DropReason::TxNotIpv4,
                reply: None
            }
        );
        // No room for the headers: malformed, never a panic.
        for len in 0..=vxlan::HEADER_LEN {
            let mut short = vec![0x45; len];
            assert_eq!(
                e.encapsulate(&mut short, &routes),
                EncapVerdict::Drop {
                    reason: DropReason::TxMalformed,
                    reply: None
                }
            );
        }
    }

    #[test]
    fn udp_encapsulator_is_the_udp_function() {
        let e = Encapsulator::new(Wire::Udp);
        assert_eq!(e.header_len(), 0);
        assert_eq!(e.wire().overhead(), 28);
        assert_eq!(VXLAN_A.overhead(), 50);
        let mut a = packet([10, 1, 1, 2], [10, 1, 2, 2], 64, 100);
        let mut b = a.clone();
        let t = table(HOST_B, "10.1.2.0/24");
        assert_eq!(e.encapsulate(&mut a, &t), encapsulate_udp(&mut b, &t));
        assert_eq!(a, b);
    }

    #[test]
    fn non_ipv4_and_malformed_are_dropped() {
        let mut six = vec![0x60u8; 40];
        assert_eq!(
            encapsulate_udp(&mut six, &table(HOST_B, "10.1.2.0/24")),
            EncapVerdict::Drop {
                reason: DropReason::TxNotIpv4,
                reply: None
            }
        );
        let mut short = vec![0x45u8; 10];
        assert_eq!(
            encapsulate_udp(&mut short, &table(HOST_B, "10.1.2.0/24")),
            EncapVerdict::Drop {
                reason: DropReason::TxMalformed,
                reply: None
            }
        );
    }
}
