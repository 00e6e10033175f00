//! Decapsulation: a pure function from what arrived to a verdict.
//!
//! flannel's udp wire format has no header: the UDP payload is the bare inner IPv4 packet. flannel's
//! proxy accepts any datagram of 20 bytes or more from anyone and silently truncates long ones; weft
//! checks the packet and its origin before anything reaches the TUN device.
//!
//! With the vxlan wire format ([`Decapsulator`] with [`Wire::Vxlan`]) the datagram first has to be a
//! frame the kernel's vxlan device would accept (`vxlan_rcv`, docs/compatibility.md §6.2), checked in this
//! order:
//!
//! * at least the 8-byte VXLAN header and 14-byte inner Ethernet header (`Truncated`);
//! * flags exactly the I bit, reserved bits zero (`VxlanBadHeader`);
//! * our VNI (`VxlanWrongVni`);
//! * inner Ethernet destination our VTEP MAC, source not our MAC (`VxlanWrongMac`): the kernel
//!   hands other destinations up as PACKET_OTHERHOST, which IP ignores, and drops its own source
//!   as a loop;
//! * ethertype IPv4 (`VxlanNotIpv4`): IPv6 frames come over the IPv6 underlay, judged by
//!   [`Decapsulator6`] (flannel's `flannel-v6.<VNI>` device sends them there too).
//!
//! Then the inner packet (the rest of the datagram) is judged as a udp datagram is:
//!
//! 1. the datagram is a well-formed IPv4 packet whose total length is the datagram length;
//! 2. the header checksum verifies;
//! 3. the inner destination lies in the local subnet;
//! 4. the outer source is a peer (`UnknownSender` otherwise) and, when the inner source lies in the
//!    overlay network, is the very peer whose subnet holds it (`Spoofed` otherwise), unless the
//!    operator accepts any source. An inner source outside the overlay network is a peer host's own
//!    address (its reply to a container that reached it unmasqueraded, say) and is accepted from
//!    any peer: no peer can claim another peer's containers.

use crate::net::{Ipv4Net, Ipv6Net};
use crate::route::RouteSnapshot;
use crate::stats::DropReason;
use crate::wire::{self, ipv4, ipv6, vxlan, Wire};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

/// What to do with a received datagram (the outcome of decapsulation; [`EncapVerdict`] is the
/// sending side's).
///
/// [`EncapVerdict`]: crate::encap::EncapVerdict
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecapVerdict {
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
            wire::Error::BadFlags => DropReason::VxlanBadHeader,
            wire::Error::NotIpv6 => DropReason::NotIpv6,
            wire::Error::Jumbo => DropReason::Ipv6Jumbo,
            wire::Error::ExtChainTooLong => DropReason::Ipv6ExtChainTooLong,
            wire::Error::BadExtHeader => DropReason::Ipv6BadExtHeader,
        }
    }
}

/// Judges `datagram` in flannel's udp wire format (the bare inner IPv4 packet), received from
/// underlay address `outer_src` (any source port). Never panics, whatever the bytes.
pub fn decapsulate_udp(
    outer_src: Ipv4Addr,
    datagram: &[u8],
    routes: &RouteSnapshot,
    policy: &DecapPolicy,
) -> DecapVerdict {
    let packet = match ipv4::Packet::new_checked(datagram) {
        Ok(p) => p,
        Err(e) => return DecapVerdict::Drop(e.into()),
    };
    if !packet.verify_checksum() {
        return DecapVerdict::Drop(DropReason::BadChecksum);
    }
    if !policy.local.contains(packet.dst_addr()) {
        return DecapVerdict::Drop(DropReason::NotLocal);
    }
    if !policy.accept_any_source {
        if !routes.is_peer(outer_src) {
            return DecapVerdict::Drop(DropReason::UnknownSender);
        }
        let src = packet.src_addr();
        if policy.network.contains(src) {
            match routes.lookup(src) {
                Some(hop) if *hop.peer.ip() == outer_src => {}
                _ => return DecapVerdict::Drop(DropReason::Spoofed),
            }
        }
    }
    DecapVerdict::Deliver(0..datagram.len())
}

/// Decapsulation for one wire format, with what it checks against.
#[derive(Debug, Clone, Copy)]
pub struct Decapsulator {
    /// The wire format (for vxlan: our VNI and VTEP MAC).
    pub wire: Wire,
    /// The inner-packet and sender checks.
    pub policy: DecapPolicy,
}

impl Decapsulator {
    /// A decapsulator for `wire` under `policy`.
    pub const fn new(wire: Wire, policy: DecapPolicy) -> Decapsulator {
        Decapsulator { wire, policy }
    }

    /// Judges `datagram`, received from underlay address `outer_src` (any source port: the kernel
    /// sends VXLAN from a port hashed from the inner flow). A `Deliver` range is the inner IPv4
    /// packet, after the wire format's header. Never panics, whatever the bytes.
    #[inline]
    pub fn decapsulate(
        &self,
        outer_src: Ipv4Addr,
        datagram: &[u8],
        routes: &RouteSnapshot,
    ) -> DecapVerdict {
        match self.wire {
            Wire::Udp => decapsulate_udp(outer_src, datagram, routes, &self.policy),
            Wire::Vxlan { vni, mac } => {
                if let Err(reason) = check_vxlan(datagram, vni, mac) {
                    return DecapVerdict::Drop(reason);
                }
                let inner = &datagram[vxlan::HEADER_LEN..];
                match decapsulate_udp(outer_src, inner, routes, &self.policy) {
                    DecapVerdict::Deliver(r) => DecapVerdict::Deliver(
                        r.start + vxlan::HEADER_LEN..r.end + vxlan::HEADER_LEN,
                    ),
                    drop => drop,
                }
            }
        }
    }
}

/// The VXLAN and inner Ethernet checks, in the order the module doc lists them: the headers'
/// length and flags by [`vxlan::Repr::parse`] (`Truncated`, `VxlanBadHeader`), then what they say.
#[inline]
fn check_vxlan(datagram: &[u8], vni: u32, mac: [u8; 6]) -> Result<(), DropReason> {
    check_vxlan_type(
        datagram,
        vni,
        mac,
        vxlan::ETHERTYPE_IPV4,
        DropReason::VxlanNotIpv4,
    )
}

/// [`check_vxlan`] for the ethertype `ethertype`, `wrong_type` when the frame carries another.
#[inline]
fn check_vxlan_type(
    datagram: &[u8],
    vni: u32,
    mac: [u8; 6],
    ethertype: u16,
    wrong_type: DropReason,
) -> Result<(), DropReason> {
    let frame = vxlan::Repr::parse(&vxlan::Packet::new_unchecked(datagram))?;
    if frame.vni != vni & vxlan::VNI_MASK {
        return Err(DropReason::VxlanWrongVni);
    }
    if frame.dst_mac != mac || frame.src_mac == mac {
        return Err(DropReason::VxlanWrongMac);
    }
    if frame.ethertype != ethertype {
        return Err(wrong_type);
    }
    Ok(())
}

/// Whether an IPv6 source makes no sense for a packet crossing the overlay (one router hop):
/// unspecified, loopback, multicast, link-local (RFC 4291 §2.5.6: routers never forward it) or
/// IPv4-mapped (RFC 4291 §2.5.5.2: never on the wire).
pub fn bad_ipv6_source(src: Ipv6Addr) -> bool {
    src.is_unspecified()
        || src.is_loopback()
        || src.is_multicast()
        || src.is_unicast_link_local()
        || src.to_ipv4_mapped().is_some()
}

/// What IPv6 decapsulation checks against (the IPv6 half of a dual-stack [`DecapPolicy`]).
#[derive(Debug, Clone, Copy)]
pub struct DecapPolicy6 {
    /// The whole IPv6 overlay network.
    pub network: Ipv6Net,
    /// The IPv6 subnet this host leases.
    pub local: Ipv6Net,
    /// Skip the sender checks, as [`DecapPolicy::accept_any_source`].
    pub accept_any_source: bool,
}

/// Decapsulation of VXLAN frames received over the IPv6 underlay: inner IPv6 packets, as the
/// kernel's `flannel-v6.<VNI>` device sends them (same VNI as IPv4, its own VTEP MAC).
///
/// Checked in this order, each failure dropped under its own reason:
///
/// * the VXLAN and inner Ethernet checks of [`Decapsulator`] (`Truncated`, `VxlanBadHeader`,
///   `VxlanWrongVni`, `VxlanWrongMac`), then ethertype IPv6 (`VxlanNotIpv6`);
/// * the fixed IPv6 header: its length (`Truncated`), version 6 (`NotIpv6`), no jumbogram
///   (`Ipv6Jumbo`), payload length equal to the bytes received (`LengthMismatch`);
/// * the extension-header walk (`Truncated`, `Ipv6BadExtHeader`, `Ipv6Jumbo`,
///   `Ipv6ExtChainTooLong`);
/// * a unicast destination (`Ipv6Multicast`) and a source that makes sense ([`bad_ipv6_source`]:
///   `Ipv6BadSource`);
/// * the destination in the local IPv6 subnet (`NotLocal`);
/// * unless any source is accepted: the outer source is an IPv6 peer (`UnknownSender`) and, when
///   the inner source lies in the IPv6 overlay network, the very peer whose subnet holds it
///   (`Spoofed`), as for IPv4.
#[derive(Debug, Clone, Copy)]
pub struct Decapsulator6 {
    /// VXLAN network identifier (the same as IPv4's).
    pub vni: u32,
    /// This host's IPv6 VTEP MAC.
    pub mac: [u8; 6],
    /// The inner-packet and sender checks.
    pub policy: DecapPolicy6,
}

impl Decapsulator6 {
    /// Judges `datagram`, received over the IPv6 underlay from `outer_src` (any source port). A
    /// `Deliver` range is the inner IPv6 packet, after the 22 header bytes. Never panics,
    /// whatever the bytes.
    pub fn decapsulate(
        &self,
        outer_src: Ipv6Addr,
        datagram: &[u8],
        routes: &RouteSnapshot,
    ) -> DecapVerdict {
        if let Err(reason) = check_vxlan_type(
            datagram,
            self.vni,
            self.mac,
            vxlan::ETHERTYPE_IPV6,
            DropReason::VxlanNotIpv6,
        ) {
            return DecapVerdict::Drop(reason);
        }
        match judge_ipv6(
            outer_src,
            &datagram[vxlan::HEADER_LEN..],
            routes,
            &self.policy,
        ) {
            Ok(()) => DecapVerdict::Deliver(vxlan::HEADER_LEN..datagram.len()),
            Err(reason) => DecapVerdict::Drop(reason),
        }
    }
}

/// The inner-packet and sender checks of [`Decapsulator6`] on the bare inner IPv6 packet.
fn judge_ipv6(
    outer_src: Ipv6Addr,
    inner: &[u8],
    routes: &RouteSnapshot,
    policy: &DecapPolicy6,
) -> Result<(), DropReason> {
    let packet = ipv6::Packet::new_checked(inner)?;
    packet.transport()?;
    let (src, dst) = (packet.src_addr(), packet.dst_addr());
    if dst.is_multicast() {
        return Err(DropReason::Ipv6Multicast);
    }
    if bad_ipv6_source(src) {
        return Err(DropReason::Ipv6BadSource);
    }
    if !policy.local.contains(dst) {
        return Err(DropReason::NotLocal);
    }
    if !policy.accept_any_source {
        if !routes.is_peer6(outer_src) {
            return Err(DropReason::UnknownSender);
        }
        if policy.network.contains(src) {
            match routes.lookup6(src) {
                Some(hop) if *hop.peer.ip() == outer_src => {}
                _ => return Err(DropReason::Spoofed),
            }
        }
    }
    Ok(())
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
                Route::udp(
                    "10.1.2.0/24".parse().expect("valid"),
                    SocketAddrV4::new(PEER_B, 8285),
                ),
                Route::udp(
                    "10.1.3.0/24".parse().expect("valid"),
                    SocketAddrV4::new(PEER_C, 8285),
                ),
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

    fn judge(src: Ipv4Addr, d: &[u8]) -> DecapVerdict {
        decapsulate_udp(src, d, &routes(), &policy())
    }

    #[test]
    fn golden_checksum_is_right() {
        assert!(ipv4::Packet::new_checked(&DATAGRAM[..])
            .expect("valid")
            .verify_checksum());
    }

    #[test]
    fn delivers_from_the_leasing_peer() {
        assert_eq!(judge(PEER_B, &DATAGRAM), DecapVerdict::Deliver(0..28));
    }

    #[test]
    fn drop_truncated() {
        assert_eq!(
            judge(PEER_B, &DATAGRAM[..19]),
            DecapVerdict::Drop(DropReason::Truncated)
        );
        assert_eq!(
            judge(PEER_B, &[]),
            DecapVerdict::Drop(DropReason::Truncated)
        );
    }

    #[test]
    fn drop_not_ipv4() {
        let mut d = DATAGRAM;
        d[0] = 0x65;
        assert_eq!(judge(PEER_B, &d), DecapVerdict::Drop(DropReason::NotIpv4));
    }

    #[test]
    fn drop_bad_header_len() {
        let mut d = DATAGRAM;
        d[0] = 0x43;
        assert_eq!(
            judge(PEER_B, &d),
            DecapVerdict::Drop(DropReason::BadHeaderLen)
        );
        d[0] = 0x48; // 32-byte header in a 28-byte datagram
        assert_eq!(
            judge(PEER_B, &d),
            DecapVerdict::Drop(DropReason::BadHeaderLen)
        );
    }

    #[test]
    fn drop_length_mismatch() {
        // The datagram lost its last byte: no silent truncation.
        assert_eq!(
            judge(PEER_B, &DATAGRAM[..27]),
            DecapVerdict::Drop(DropReason::LengthMismatch)
        );
        let mut longer = DATAGRAM.to_vec();
        longer.extend_from_slice(&[0; 4]);
        assert_eq!(
            judge(PEER_B, &longer),
            DecapVerdict::Drop(DropReason::LengthMismatch)
        );
    }

    #[test]
    fn drop_bad_checksum() {
        let mut d = DATAGRAM;
        d[11] ^= 1;
        assert_eq!(
            judge(PEER_B, &d),
            DecapVerdict::Drop(DropReason::BadChecksum)
        );
    }

    #[test]
    fn drop_not_local() {
        let mut d = DATAGRAM;
        let mut p = ipv4::Packet::new_unchecked(&mut d[..]);
        p.set_dst_addr(Ipv4Addr::new(10, 1, 3, 2));
        p.fill_checksum();
        assert_eq!(judge(PEER_B, &d), DecapVerdict::Drop(DropReason::NotLocal));
    }

    #[test]
    fn drop_unknown_sender() {
        assert_eq!(
            judge(Ipv4Addr::new(198, 51, 100, 7), &DATAGRAM),
            DecapVerdict::Drop(DropReason::UnknownSender)
        );
    }

    #[test]
    fn drop_spoofed() {
        // Peer C sends a packet claiming to come from B's subnet.
        assert_eq!(
            judge(PEER_C, &DATAGRAM),
            DecapVerdict::Drop(DropReason::Spoofed)
        );
        // B sends a packet from a subnet nobody leases (or from ours).
        let mut d = DATAGRAM;
        let mut p = ipv4::Packet::new_unchecked(&mut d[..]);
        p.set_src_addr(Ipv4Addr::new(10, 1, 1, 9));
        p.fill_checksum();
        assert_eq!(judge(PEER_B, &d), DecapVerdict::Drop(DropReason::Spoofed));
    }

    #[test]
    fn peer_host_addresses_outside_the_network_are_accepted() {
        // Host B's reply from its underlay address to our container, tunnelled by B.
        let mut d = DATAGRAM;
        let mut p = ipv4::Packet::new_unchecked(&mut d[..]);
        p.set_src_addr(PEER_B);
        p.fill_checksum();
        assert_eq!(judge(PEER_B, &d), DecapVerdict::Deliver(0..28));
        assert_eq!(judge(PEER_C, &d), DecapVerdict::Deliver(0..28));
        // But not from a stranger.
        assert_eq!(
            judge(Ipv4Addr::new(198, 51, 100, 7), &d),
            DecapVerdict::Drop(DropReason::UnknownSender)
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
            decapsulate_udp(unknown, &DATAGRAM, &routes(), &p),
            DecapVerdict::Deliver(0..28)
        );
        assert_eq!(
            decapsulate_udp(PEER_C, &DATAGRAM, &routes(), &p),
            DecapVerdict::Deliver(0..28)
        );
    }

    /// Our VTEP MAC (host A, leasing 10.1.1.0/24).
    const MAC_A: [u8; 6] = [0x0a, 0x58, 0x0a, 0x01, 0x01, 0x00];
    /// Host B's VTEP MAC.
    const MAC_B: [u8; 6] = [0x0a, 0x58, 0x0a, 0x01, 0x02, 0x00];
    const VNI: u32 = 1;

    /// Golden VXLAN frame, in exactly the form Linux's vxlan driver emits: flags 08 00 00 00,
    /// VNI 1, 00; inner Ethernet to our MAC from B's; ethertype IPv4; then [`DATAGRAM`].
    #[rustfmt::skip]
    static VXLAN_FRAME: [u8; 50] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
        0x0a, 0x58, 0x0a, 0x01, 0x01, 0x00,
        0x0a, 0x58, 0x0a, 0x01, 0x02, 0x00,
        0x08, 0x00,
        0x45, 0x00, 0x00, 0x1c, 0x00, 0x01, 0x40, 0x00, 0x3f, 0x01, 0x24, 0xdb, 10, 1, 2, 2, 10, 1, 1, 2,
        0x08, 0x00, 0xf7, 0xfe, 0x00, 0x01, 0x00, 0x00,
    ];

    fn vxlan() -> Decapsulator {
        Decapsulator::new(
            Wire::Vxlan {
                vni: VNI,
                mac: MAC_A,
            },
            policy(),
        )
    }

    fn judge_vxlan(src: Ipv4Addr, d: &[u8]) -> DecapVerdict {
        vxlan().decapsulate(src, d, &routes())
    }

    #[test]
    fn vxlan_delivers_a_linux_frame() {
        assert_eq!(VXLAN_FRAME[8..14], MAC_A);
        assert_eq!(VXLAN_FRAME[14..20], MAC_B);
        assert_eq!(VXLAN_FRAME[22..], DATAGRAM);
        assert_eq!(
            judge_vxlan(PEER_B, &VXLAN_FRAME),
            DecapVerdict::Deliver(22..50)
        );
    }

    #[test]
    fn vxlan_drop_truncated() {
        for len in 0..vxlan::HEADER_LEN {
            assert_eq!(
                judge_vxlan(PEER_B, &VXLAN_FRAME[..len]),
                DecapVerdict::Drop(DropReason::Truncated),
                "{len} bytes"
            );
        }
        // Headers but no (or a short) inner packet.
        assert_eq!(
            judge_vxlan(PEER_B, &VXLAN_FRAME[..22]),
            DecapVerdict::Drop(DropReason::Truncated)
        );
        assert_eq!(
            judge_vxlan(PEER_B, &VXLAN_FRAME[..41]),
            DecapVerdict::Drop(DropReason::Truncated)
        );
    }

    #[test]
    fn vxlan_drop_bad_header() {
        // No I bit; GBP (G bit); another flag; each reserved byte.
        for (at, value) in [
            (0, 0x00),
            (0, 0x88),
            (0, 0x09),
            (1, 0x01),
            (2, 0x40),
            (3, 0x80),
            (7, 0x01),
        ] {
            let mut d = VXLAN_FRAME;
            d[at] = value;
            assert_eq!(
                judge_vxlan(PEER_B, &d),
                DecapVerdict::Drop(DropReason::VxlanBadHeader),
                "byte {at} = {value:#04x}"
            );
        }
    }

    #[test]
    fn vxlan_drop_wrong_vni() {
        let mut d = VXLAN_FRAME;
        d[6] = 2;
        assert_eq!(
            judge_vxlan(PEER_B, &d),
            DecapVerdict::Drop(DropReason::VxlanWrongVni)
        );
        let mut d = VXLAN_FRAME;
        d[4] = 1; // VNI 0x010001: only the low byte matches
        assert_eq!(
            judge_vxlan(PEER_B, &d),
            DecapVerdict::Drop(DropReason::VxlanWrongVni)
        );
    }

    #[test]
    fn vxlan_drop_wrong_mac() {
        // Addressed to another VTEP, to broadcast, or sent from our own MAC (a loop).
        let mut other = VXLAN_FRAME;
        other[13] = 0x01;
        let mut broadcast = VXLAN_FRAME;
        broadcast[8..14].fill(0xff);
        let mut looped = VXLAN_FRAME;
        looped[14..20].copy_from_slice(&MAC_A);
        for d in [other, broadcast, looped] {
            assert_eq!(
                judge_vxlan(PEER_B, &d),
                DecapVerdict::Drop(DropReason::VxlanWrongMac)
            );
        }
    }

    #[test]
    fn vxlan_drop_not_ipv4() {
        for ethertype in [[0x86, 0xdd], [0x08, 0x06], [0x81, 0x00], [0x00, 0x00]] {
            let mut d = VXLAN_FRAME;
            d[20..22].copy_from_slice(&ethertype);
            assert_eq!(
                judge_vxlan(PEER_B, &d),
                DecapVerdict::Drop(DropReason::VxlanNotIpv4),
                "ethertype {ethertype:02x?}"
            );
        }
    }

    #[test]
    fn vxlan_checks_come_in_order() {
        // Everything wrong at once: the first check in the documented order decides.
        let mut d = VXLAN_FRAME;
        d[0] = 0;
        d[6] = 9;
        d[8] = 0xff;
        d[20] = 0x86;
        assert_eq!(
            judge_vxlan(PEER_B, &d),
            DecapVerdict::Drop(DropReason::VxlanBadHeader)
        );
        d[0] = 0x08;
        assert_eq!(
            judge_vxlan(PEER_B, &d),
            DecapVerdict::Drop(DropReason::VxlanWrongVni)
        );
        d[6] = 1;
        assert_eq!(
            judge_vxlan(PEER_B, &d),
            DecapVerdict::Drop(DropReason::VxlanWrongMac)
        );
        d[8] = MAC_A[0];
        assert_eq!(
            judge_vxlan(PEER_B, &d),
            DecapVerdict::Drop(DropReason::VxlanNotIpv4)
        );
        d[20] = 0x08;
        assert_eq!(judge_vxlan(PEER_B, &d), DecapVerdict::Deliver(22..50));
    }

    #[test]
    fn vxlan_inner_checks_and_sender_policy_apply() {
        let mut bad_sum = VXLAN_FRAME;
        bad_sum[22 + 11] ^= 1;
        assert_eq!(
            judge_vxlan(PEER_B, &bad_sum),
            DecapVerdict::Drop(DropReason::BadChecksum)
        );
        let mut six = VXLAN_FRAME;
        six[22] = 0x65;
        assert_eq!(
            judge_vxlan(PEER_B, &six),
            DecapVerdict::Drop(DropReason::NotIpv4)
        );
        let mut padded = VXLAN_FRAME.to_vec();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(
            judge_vxlan(PEER_B, &padded),
            DecapVerdict::Drop(DropReason::LengthMismatch)
        );
        // The sender policy looks at the outer source address only (the port is the kernel's
        // flow hash, never checked).
        assert_eq!(
            judge_vxlan(PEER_C, &VXLAN_FRAME),
            DecapVerdict::Drop(DropReason::Spoofed)
        );
        assert_eq!(
            judge_vxlan(Ipv4Addr::new(198, 51, 100, 7), &VXLAN_FRAME),
            DecapVerdict::Drop(DropReason::UnknownSender)
        );
        let mut not_local = VXLAN_FRAME;
        let mut p = ipv4::Packet::new_unchecked(&mut not_local[22..]);
        p.set_dst_addr(Ipv4Addr::new(10, 1, 3, 2));
        p.fill_checksum();
        assert_eq!(
            judge_vxlan(PEER_B, &not_local),
            DecapVerdict::Drop(DropReason::NotLocal)
        );
    }

    #[test]
    fn vxlan_vni_uses_24_bits() {
        let d = Decapsulator::new(
            Wire::Vxlan {
                vni: 0x0100_0001, // bits above 24 are not part of a VNI
                mac: MAC_A,
            },
            policy(),
        );
        assert_eq!(
            d.decapsulate(PEER_B, &VXLAN_FRAME, &routes()),
            DecapVerdict::Deliver(22..50)
        );
    }

    #[test]
    fn udp_decapsulator_is_the_udp_function() {
        let d = Decapsulator::new(Wire::Udp, policy());
        assert_eq!(
            d.decapsulate(PEER_B, &DATAGRAM, &routes()),
            DecapVerdict::Deliver(0..28)
        );
        // A VXLAN frame is not a udp datagram.
        assert_eq!(
            d.decapsulate(PEER_B, &VXLAN_FRAME, &routes()),
            DecapVerdict::Drop(DropReason::NotIpv4)
        );
    }

    #[test]
    fn vxlan_random_bytes_never_panic() {
        let r = routes();
        let d = vxlan();
        let mut state = 0x7f4a_7c15_u32;
        let mut buf = [0u8; 100];
        for i in 0..200_000usize {
            let len = i % buf.len();
            for b in &mut buf[..len] {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *b = state as u8;
            }
            // Often make the headers right so the inner checks are reached too.
            if i % 2 == 0 && len >= 23 {
                buf[..22].copy_from_slice(&VXLAN_FRAME[..22]);
                buf[22] = 0x45;
            }
            if let DecapVerdict::Deliver(range) = d.decapsulate(PEER_B, &buf[..len], &r) {
                assert!(range.start == 22 && range.end == len);
            }
        }
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
            let _ = decapsulate_udp(PEER_B, &buf[..len], &r, &p);
        }
    }
}

#[cfg(test)]
mod tests6 {
    use super::*;
    use crate::encap::{EncapVerdict6, Encapsulator6};
    use crate::route::Route6;
    use crate::wire::{icmpv6, ipv6::NH_UDP};
    use std::net::SocketAddrV6;

    const VNI: u32 = 1;
    const MAC_A: [u8; 6] = [0x0a, 0x58, 0, 0, 0, 0xa1];
    const MAC_B: [u8; 6] = [0x0a, 0x58, 0, 0, 0, 0xb1];
    const MAC_C: [u8; 6] = [0x0a, 0x58, 0, 0, 0, 0xc1];

    fn a6(s: &str) -> Ipv6Addr {
        s.parse().expect("literal address")
    }

    fn peer_b() -> Ipv6Addr {
        a6("2001:db8::b")
    }

    fn peer_c() -> Ipv6Addr {
        a6("2001:db8::c")
    }

    /// Host A's view: B leases fd00:1:0:2::/64, C fd00:1:0:3::/64; A is fd00:1:0:1::/64.
    fn routes_at_a() -> RouteSnapshot {
        let r = |net: &str, peer: Ipv6Addr, mac| {
            Route6::vxlan(
                net.parse().unwrap(),
                SocketAddrV6::new(peer, 8472, 0, 0),
                mac,
            )
        };
        RouteSnapshot::build_dual(
            1,
            [],
            [
                r("fd00:1:0:2::/64", peer_b(), MAC_B),
                r("fd00:1:0:3::/64", peer_c(), MAC_C),
            ],
        )
        .unwrap()
    }

    /// Host B's view: A leases fd00:1:0:1::/64 at 2001:db8::a.
    fn routes_at_b() -> RouteSnapshot {
        RouteSnapshot::build_dual(
            1,
            [],
            [Route6::vxlan(
                "fd00:1:0:1::/64".parse().unwrap(),
                SocketAddrV6::new(a6("2001:db8::a"), 8472, 0, 0),
                MAC_A,
            )],
        )
        .unwrap()
    }

    fn policy_at_a() -> DecapPolicy6 {
        DecapPolicy6 {
            network: "fd00:1::/56".parse().unwrap(),
            local: "fd00:1:0:1::/64".parse().unwrap(),
            accept_any_source: false,
        }
    }

    fn decap_a() -> Decapsulator6 {
        Decapsulator6 {
            vni: VNI,
            mac: MAC_A,
            policy: policy_at_a(),
        }
    }

    /// An IPv6 UDP packet `src` → `dst` with `hop_limit`, 16 bytes of payload.
    fn packet(src: &str, dst: &str, hop_limit: u8) -> Vec<u8> {
        let mut v = vec![0u8; 40 + 24];
        let mut p = ipv6::Packet::new_unchecked(&mut v[..]);
        p.set_version_tc_flow(0, 0);
        p.set_payload_len(24);
        p.set_next_header(NH_UDP);
        p.set_hop_limit(hop_limit);
        p.set_src_addr(a6(src));
        p.set_dst_addr(a6(dst));
        v[40..48].copy_from_slice(&[0x30, 0x39, 0x00, 0x35, 0x00, 0x18, 0, 0]);
        v
    }

    /// `inner` encapsulated by host B toward A (B's frame as A receives it).
    fn frame_from_b(inner: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; vxlan::HEADER_LEN];
        f.extend_from_slice(inner);
        let enc = Encapsulator6 {
            vni: VNI,
            mac: MAC_B,
            mtu: 1430,
        };
        let v = enc.encapsulate(&mut f, &routes_at_b());
        assert_eq!(
            v,
            EncapVerdict6::Forward(SocketAddrV6::new(a6("2001:db8::a"), 8472, 0, 0))
        );
        f
    }

    /// A frame as B would send it, without B's encapsulator checks (for hostile inner packets).
    fn raw_frame_from_b(inner: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; vxlan::HEADER_LEN];
        vxlan::Repr {
            vni: VNI,
            dst_mac: MAC_A,
            src_mac: MAC_B,
            ethertype: vxlan::ETHERTYPE_IPV6,
        }
        .emit(&mut vxlan::Packet::new_unchecked(&mut f[..]));
        f.extend_from_slice(inner);
        f
    }

    #[test]
    fn round_trip_b_to_a() {
        let inner = packet("fd00:1:0:2::5", "fd00:1:0:1::7", 64);
        let f = frame_from_b(&inner);
        assert_eq!(
            &f[8..14],
            &MAC_A,
            "inner Ethernet destination: A's IPv6 VTEP MAC"
        );
        assert_eq!(&f[14..20], &MAC_B);
        assert_eq!(&f[20..22], &[0x86, 0xdd]);
        assert_eq!(f[22 + 7], 63, "hop limit decremented once");
        let v = decap_a().decapsulate(peer_b(), &f, &routes_at_a());
        assert_eq!(v, DecapVerdict::Deliver(22..f.len()));
        let DecapVerdict::Deliver(r) = v else {
            unreachable!()
        };
        let mut want = inner.clone();
        want[7] = 63;
        assert_eq!(&f[r], &want[..]);
    }

    #[test]
    fn sender_checks() {
        let f = frame_from_b(&packet("fd00:1:0:2::5", "fd00:1:0:1::7", 64));
        let routes = routes_at_a();
        // C claims B's container.
        assert_eq!(
            decap_a().decapsulate(peer_c(), &f, &routes),
            DecapVerdict::Drop(DropReason::Spoofed)
        );
        // A stranger.
        assert_eq!(
            decap_a().decapsulate(a6("2001:db8::99"), &f, &routes),
            DecapVerdict::Drop(DropReason::UnknownSender)
        );
        // An inner source outside the overlay (a peer host's own address) from any peer.
        let f = frame_from_b(&packet("2001:db8::b", "fd00:1:0:1::7", 64));
        assert!(matches!(
            decap_a().decapsulate(peer_c(), &f, &routes),
            DecapVerdict::Deliver(_)
        ));
        // Accept any source.
        let f = frame_from_b(&packet("fd00:1:0:2::5", "fd00:1:0:1::7", 64));
        let mut any = decap_a();
        any.policy.accept_any_source = true;
        assert!(matches!(
            any.decapsulate(a6("2001:db8::99"), &f, &routes),
            DecapVerdict::Deliver(_)
        ));
        // Not for us.
        let f = raw_frame_from_b(&packet("fd00:1:0:2::5", "fd00:1:0:3::7", 64));
        assert_eq!(
            decap_a().decapsulate(peer_b(), &f, &routes),
            DecapVerdict::Drop(DropReason::NotLocal)
        );
    }

    #[test]
    fn hostile_datagrams() {
        let routes = routes_at_a();
        let judge = |f: &[u8]| decap_a().decapsulate(peer_b(), f, &routes);
        let good = packet("fd00:1:0:2::5", "fd00:1:0:1::7", 64);
        let drop = |r| DecapVerdict::Drop(r);
        // Truncated at every length short of the fixed header.
        for n in 0..40 {
            let f = raw_frame_from_b(&good[..n]);
            assert_eq!(judge(&f), drop(DropReason::Truncated), "{n} bytes");
        }
        // IPv4 inside 0x86DD.
        let mut four = good.clone();
        four[0] = 0x45;
        assert_eq!(judge(&raw_frame_from_b(&four)), drop(DropReason::NotIpv6));
        // An IPv4 frame over the IPv6 underlay.
        let mut v4type = raw_frame_from_b(&good);
        v4type[20..22].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(judge(&v4type), drop(DropReason::VxlanNotIpv6));
        // Payload length says more than arrived.
        let mut long = good.clone();
        long[5] += 1;
        assert_eq!(
            judge(&raw_frame_from_b(&long)),
            drop(DropReason::LengthMismatch)
        );
        // Jumbogram: payload length 0 with a hop-by-hop header carrying a jumbo option.
        let mut jumbo = good[..40].to_vec();
        jumbo[4..6].fill(0);
        jumbo[6] = 0;
        jumbo.extend_from_slice(&[NH_UDP, 0, 0xc2, 4, 0, 1, 0, 0]);
        assert_eq!(
            judge(&raw_frame_from_b(&jumbo)),
            drop(DropReason::Ipv6Jumbo)
        );
        // Nine destination-options headers.
        let mut chain = good[..40].to_vec();
        chain[6] = 60;
        for i in 0..9 {
            chain.extend_from_slice(&[if i == 8 { NH_UDP } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
        }
        let len = (chain.len() - 40) as u16;
        chain[4..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            judge(&raw_frame_from_b(&chain)),
            drop(DropReason::Ipv6ExtChainTooLong)
        );
        // Multicast destination, link-local and IPv4-mapped sources.
        let m = packet("fd00:1:0:2::5", "ff02::1", 64);
        assert_eq!(
            judge(&raw_frame_from_b(&m)),
            drop(DropReason::Ipv6Multicast)
        );
        for src in ["fe80::1", "::ffff:10.1.2.5", "::", "::1", "ff02::2"] {
            let p = packet(src, "fd00:1:0:1::7", 64);
            assert_eq!(
                judge(&raw_frame_from_b(&p)),
                drop(DropReason::Ipv6BadSource),
                "{src}"
            );
        }
    }

    #[test]
    fn encap_refusals_and_icmpv6() {
        let routes = routes_at_a();
        let enc = Encapsulator6 {
            vni: VNI,
            mac: MAC_A,
            mtu: 1430,
        };
        let run = |inner: &[u8]| {
            let mut f = vec![0u8; vxlan::HEADER_LEN];
            f.extend_from_slice(inner);
            let before = f.clone();
            let v = enc.encapsulate(&mut f, &routes);
            if matches!(v, EncapVerdict6::Drop { .. }) {
                assert_eq!(f, before, "a dropped frame is left untouched");
            }
            v
        };
        let v = run(&packet("fd00:1:0:1::7", "fd00:1:0:3::1", 64));
        assert_eq!(
            v,
            EncapVerdict6::Forward(SocketAddrV6::new(peer_c(), 8472, 0, 0))
        );
        assert_eq!(
            run(&packet("fd00:1:0:1::7", "fd00:1:0:9::1", 64)),
            EncapVerdict6::Drop {
                reason: DropReason::NoRoute,
                reply: Some(icmpv6::ErrorKind::NoRoute)
            }
        );
        assert_eq!(
            run(&packet("fd00:1:0:1::7", "fd00:1:0:3::1", 1)),
            EncapVerdict6::Drop {
                reason: DropReason::TtlExceeded,
                reply: Some(icmpv6::ErrorKind::HopLimitExceeded)
            }
        );
        let mut big = packet("fd00:1:0:1::7", "fd00:1:0:3::1", 64);
        big.resize(1431, 0);
        big[4..6].copy_from_slice(&(1431u16 - 40).to_be_bytes());
        assert_eq!(
            run(&big),
            EncapVerdict6::Drop {
                reason: DropReason::TxTooBig,
                reply: Some(icmpv6::ErrorKind::PacketTooBig { mtu: 1430 })
            }
        );
        // The kernel's own neighbour discovery and MLD into the device: no reply.
        assert_eq!(
            run(&packet("fe80::1", "ff02::2", 255)),
            EncapVerdict6::Drop {
                reason: DropReason::Ipv6Multicast,
                reply: None
            }
        );
        assert_eq!(
            run(&packet("fe80::1", "fd00:1:0:3::1", 64)),
            EncapVerdict6::Drop {
                reason: DropReason::Ipv6BadSource,
                reply: None
            }
        );
        // Malformed.
        let mut bad = packet("fd00:1:0:1::7", "fd00:1:0:3::1", 64);
        bad.pop();
        assert_eq!(
            run(&bad),
            EncapVerdict6::Drop {
                reason: DropReason::TxMalformed,
                reply: None
            }
        );
        assert_eq!(
            enc.encapsulate(&mut [0u8; 10], &routes),
            EncapVerdict6::Drop {
                reason: DropReason::TxMalformed,
                reply: None
            }
        );
    }
}
