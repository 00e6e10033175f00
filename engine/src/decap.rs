//! Decapsulation of flannel udp datagrams: a pure function from what arrived to a verdict.
//!
//! flannel's udp wire format has no header: the UDP payload is the bare inner IPv4 packet. flannel's
//! proxy accepts any datagram of 20 bytes or more from anyone and silently truncates long ones; weft
//! checks the packet and its origin before anything reaches the TUN device:
//!
//! 1. the datagram is a well-formed IPv4 packet whose total length is the datagram length;
//! 2. the header checksum verifies;
//! 3. the inner destination lies in the local subnet;
//! 4. the outer source is a peer (`UnknownSender` otherwise) and, when the inner source lies in the
//!    overlay network, is the very peer whose subnet holds it (`Spoofed` otherwise), unless the
//!    operator accepts any source. An inner source outside the overlay network is a peer host's own
//!    address (its reply to a container that reached it unmasqueraded, say) and is accepted from
//!    any peer: no peer can claim another peer's containers.

use crate::net::Ipv4Net;
use crate::route::RouteSnapshot;
use crate::stats::DropReason;
use crate::wire::{self, ipv4};
use std::net::Ipv4Addr;
use std::ops::Range;

/// What to do with a received datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Write this range of the datagram (the inner packet) into the TUN device.
    Deliver(Range<usize>),
    /// Drop it, counting the reason.
    Drop(DropReason),
}

/// What decapsulation checks against.
#[derive(Debug, Clone, Copy)]
pub struct DecapPolicy {
    /// The whole overlay network.
    pub network: Ipv4Net,
    /// The subnet this host leases.
    pub local: Ipv4Net,
    /// Skip the sender checks (mixed clusters where peers send from other addresses than they lease).
    pub accept_any_source: bool,
}

impl From<wire::Error> for DropReason {
    fn from(e: wire::Error) -> DropReason {
        match e {
            wire::Error::Truncated => DropReason::Truncated,
            wire::Error::NotIpv4 => DropReason::NotIpv4,
            wire::Error::BadHeaderLen => DropReason::BadHeaderLen,
            wire::Error::LengthMismatch => DropReason::LengthMismatch,
            wire::Error::BadChecksum => DropReason::BadChecksum,
        }
    }
}

/// Judges `datagram`, received from underlay address `outer_src`. Never panics, whatever the bytes.
pub fn decapsulate(
    outer_src: Ipv4Addr,
    datagram: &[u8],
    routes: &RouteSnapshot,
    policy: &DecapPolicy,
) -> Verdict {
    let packet = match ipv4::Packet::new_checked(datagram) {
        Ok(p) => p,
        Err(e) => return Verdict::Drop(e.into()),
    };
    if !packet.verify_checksum() {
        return Verdict::Drop(DropReason::BadChecksum);
    }
    if !policy.local.contains(packet.dst_addr()) {
        return Verdict::Drop(DropReason::NotLocal);
    }
    if !policy.accept_any_source {
        if !routes.is_peer(outer_src) {
            return Verdict::Drop(DropReason::UnknownSender);
        }
        let src = packet.src_addr();
        if policy.network.contains(src) {
            match routes.lookup(src) {
                Some(peer) if *peer.ip() == outer_src => {}
                _ => return Verdict::Drop(DropReason::Spoofed),
            }
        }
    }
    Verdict::Deliver(0..datagram.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Route;
    use std::net::SocketAddrV4;

    const PEER_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const PEER_C: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);

    /// Golden datagram: ICMP echo 10.1.2.2 → 10.1.1.2 as host B's weft sends it.
    #[rustfmt::skip]
    static DATAGRAM: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x00, 0x01, 0x40, 0x00, 0x3f, 0x01, 0x24, 0xdb, 10, 1, 2, 2, 10, 1, 1, 2,
        0x08, 0x00, 0xf7, 0xfe, 0x00, 0x01, 0x00, 0x00,
    ];

    fn routes() -> RouteSnapshot {
        RouteSnapshot::build(
            1,
            [
                Route {
                    subnet: "10.1.2.0/24".parse().expect("valid"),
                    peer: SocketAddrV4::new(PEER_B, 8285),
                },
                Route {
                    subnet: "10.1.3.0/24".parse().expect("valid"),
                    peer: SocketAddrV4::new(PEER_C, 8285),
                },
            ],
        )
        .expect("disjoint")
    }

    fn policy() -> DecapPolicy {
        DecapPolicy {
            network: "10.1.0.0/16".parse().expect("valid"),
            local: "10.1.1.0/24".parse().expect("valid"),
            accept_any_source: false,
        }
    }

    fn judge(src: Ipv4Addr, d: &[u8]) -> Verdict {
        decapsulate(src, d, &routes(), &policy())
    }

    #[test]
    fn golden_checksum_is_right() {
        assert!(ipv4::Packet::new_checked(&DATAGRAM[..])
            .expect("valid")
            .verify_checksum());
    }

    #[test]
    fn delivers_from_the_leasing_peer() {
        assert_eq!(judge(PEER_B, &DATAGRAM), Verdict::Deliver(0..28));
    }

    #[test]
    fn drop_truncated() {
        assert_eq!(
            judge(PEER_B, &DATAGRAM[..19]),
            Verdict::Drop(DropReason::Truncated)
        );
        assert_eq!(judge(PEER_B, &[]), Verdict::Drop(DropReason::Truncated));
    }

    #[test]
    fn drop_not_ipv4() {
        let mut d = DATAGRAM;
        d[0] = 0x65;
        assert_eq!(judge(PEER_B, &d), Verdict::Drop(DropReason::NotIpv4));
    }

    #[test]
    fn drop_bad_header_len() {
        let mut d = DATAGRAM;
        d[0] = 0x43;
        assert_eq!(judge(PEER_B, &d), Verdict::Drop(DropReason::BadHeaderLen));
        d[0] = 0x48; // 32-byte header in a 28-byte datagram
        assert_eq!(judge(PEER_B, &d), Verdict::Drop(DropReason::BadHeaderLen));
    }

    #[test]
    fn drop_length_mismatch() {
        // The datagram lost its last byte: no silent truncation.
        assert_eq!(
            judge(PEER_B, &DATAGRAM[..27]),
            Verdict::Drop(DropReason::LengthMismatch)
        );
        let mut longer = DATAGRAM.to_vec();
        longer.extend_from_slice(&[0; 4]);
        assert_eq!(
            judge(PEER_B, &longer),
            Verdict::Drop(DropReason::LengthMismatch)
        );
    }

    #[test]
    fn drop_bad_checksum() {
        let mut d = DATAGRAM;
        d[11] ^= 1;
        assert_eq!(judge(PEER_B, &d), Verdict::Drop(DropReason::BadChecksum));
    }

    #[test]
    fn drop_not_local() {
        let mut d = DATAGRAM;
        let mut p = ipv4::Packet::new_unchecked(&mut d[..]);
        p.set_dst_addr(Ipv4Addr::new(10, 1, 3, 2));
        p.fill_checksum();
        assert_eq!(judge(PEER_B, &d), Verdict::Drop(DropReason::NotLocal));
    }

    #[test]
    fn drop_unknown_sender() {
        assert_eq!(
            judge(Ipv4Addr::new(198, 51, 100, 7), &DATAGRAM),
            Verdict::Drop(DropReason::UnknownSender)
        );
    }

    #[test]
    fn drop_spoofed() {
        // Peer C sends a packet claiming to come from B's subnet.
        assert_eq!(judge(PEER_C, &DATAGRAM), Verdict::Drop(DropReason::Spoofed));
        // B sends a packet from a subnet nobody leases (or from ours).
        let mut d = DATAGRAM;
        let mut p = ipv4::Packet::new_unchecked(&mut d[..]);
        p.set_src_addr(Ipv4Addr::new(10, 1, 1, 9));
        p.fill_checksum();
        assert_eq!(judge(PEER_B, &d), Verdict::Drop(DropReason::Spoofed));
    }

    #[test]
    fn peer_host_addresses_outside_the_network_are_accepted() {
        // Host B's reply from its underlay address to our container, tunnelled by B.
        let mut d = DATAGRAM;
        let mut p = ipv4::Packet::new_unchecked(&mut d[..]);
        p.set_src_addr(PEER_B);
        p.fill_checksum();
        assert_eq!(judge(PEER_B, &d), Verdict::Deliver(0..28));
        assert_eq!(judge(PEER_C, &d), Verdict::Deliver(0..28));
        // But not from a stranger.
        assert_eq!(
            judge(Ipv4Addr::new(198, 51, 100, 7), &d),
            Verdict::Drop(DropReason::UnknownSender)
        );
    }

    #[test]
    fn accept_any_source_skips_sender_checks() {
        let p = DecapPolicy {
            accept_any_source: true,
            ..policy()
        };
        let unknown = Ipv4Addr::new(198, 51, 100, 7);
        assert_eq!(
            decapsulate(unknown, &DATAGRAM, &routes(), &p),
            Verdict::Deliver(0..28)
        );
        assert_eq!(
            decapsulate(PEER_C, &DATAGRAM, &routes(), &p),
            Verdict::Deliver(0..28)
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let r = routes();
        let p = policy();
        let mut state = 0x9e37_79b9_u32;
        let mut buf = [0u8; 80];
        for i in 0..200_000usize {
            let len = i % buf.len();
            for b in &mut buf[..len] {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *b = state as u8;
            }
            if i % 3 == 0 && len > 0 {
                buf[0] = 0x45;
            }
            let _ = decapsulate(PEER_B, &buf[..len], &r, &p);
        }
    }
}
