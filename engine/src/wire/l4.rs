//! TCP and UDP checksums of inner IPv4 and IPv6 packets.
//!
//! A Linux sender that hands checksumming to the NIC (`CHECKSUM_PARTIAL`) leaves only the
//! pseudo-header sum in the TCP or UDP checksum field. A physical NIC completes it on the way out;
//! a veth pair does not, because inside one kernel the packet's checksum state travels with it.
//! So when a kernel vxlan device sends over veth (containers, kind, k3d), a userspace receiver gets
//! packets whose inner checksum is unfinished, and the container's stack would drop them.
//! [`complete_partial`] finishes such a checksum in place; complete checksums are left alone.

use super::{checksum, ipv4, ipv6, tcp, udp};

/// Where the checksum of an unfragmented TCP or UDP IPv4 packet lies: the IPv4 view (its total
/// length matching the buffer), the offset of the L4 checksum field in the packet, and the
/// protocol. `None` for anything else, or an L4 header shorter than its fixed part.
#[inline]
fn l4<T: AsRef<[u8]>>(packet: T) -> Option<(ipv4::Packet<T>, usize, u8)> {
    let ip = ipv4::Packet::new_checked(packet).ok()?;
    if ip.is_fragment() {
        return None; // its checksum covers other fragments too
    }
    let proto = ip.protocol();
    let (field, min) = match proto {
        ipv4::PROTO_TCP => (tcp::CHECKSUM_OFFSET, tcp::HEADER_LEN),
        ipv4::PROTO_UDP => (udp::CHECKSUM_OFFSET, udp::HEADER_LEN),
        _ => return None,
    };
    let ihl = ip.header_len();
    (ip.payload().len() >= min).then_some((ip, ihl + field, proto))
}

/// The pseudo-header sum of `ip`'s payload.
#[inline]
fn pseudo_sum<T: AsRef<[u8]>>(ip: &ipv4::Packet<T>) -> u16 {
    // The total length fits 16 bits, so the payload's length does too.
    ip.pseudo_header_sum(ip.payload().len() as u16)
}

/// A TCP or UDP IPv4 packet whose checksum field holds the pseudo-header sum.
struct Candidate {
    /// Offset of the L4 segment (the IPv4 header length).
    segment: usize,
    /// Offset of the checksum field.
    field: usize,
    proto: u8,
    /// The pseudo-header sum, which the field holds.
    pseudo: u16,
}

#[inline]
fn candidate(packet: &[u8]) -> Option<Candidate> {
    if packet.first().map(|b| b >> 4) == Some(6) {
        return candidate6(packet);
    }
    let (ip, at, proto) = l4(packet)?;
    let pseudo = pseudo_sum(&ip);
    let field = u16::from_be_bytes([packet[at], packet[at + 1]]);
    // UDP's 0 means "no checksum"; the pseudo-header sum is never 0 (the protocol is in it).
    (field == pseudo).then_some(Candidate {
        segment: ip.header_len(),
        field: at,
        proto,
        pseudo,
    })
}

/// [`candidate`] for an IPv6 packet: TCP or UDP after the extension headers, not a fragment (its
/// checksum would cover other fragments too).
fn candidate6(packet: &[u8]) -> Option<Candidate> {
    let ip = ipv6::Packet::new_checked(packet).ok()?;
    let t = ip.transport().ok()?;
    if t.fragmented || !t.is_readable() {
        return None;
    }
    let (field, min) = match t.protocol {
        ipv6::NH_TCP => (tcp::CHECKSUM_OFFSET, tcp::HEADER_LEN),
        ipv6::NH_UDP => (udp::CHECKSUM_OFFSET, udp::HEADER_LEN),
        _ => return None,
    };
    let len = packet.len() - t.offset;
    if len < min {
        return None;
    }
    let pseudo = ip.pseudo_header_sum(t.protocol, len as u32);
    let at = t.offset + field;
    let value = u16::from_be_bytes([packet[at], packet[at + 1]]);
    (value == pseudo).then_some(Candidate {
        segment: t.offset,
        field: at,
        // UDP's "computed 0 is sent as all ones" holds for IPv6 too (RFC 8200 §8.1).
        proto: if t.protocol == ipv6::NH_UDP {
            ipv4::PROTO_UDP
        } else {
            ipv4::PROTO_TCP
        },
        pseudo,
    })
}

/// The one's complement sum of `c`'s segment as it is (field included), if its checksum does not
/// verify; `None` if it does (a complete checksum that equals the pseudo-header sum by chance).
#[inline]
fn unverified_sum(packet: &[u8], c: &Candidate) -> Option<u16> {
    let sum = checksum::sum(&packet[c.segment..]);
    (checksum::combine(c.pseudo, sum) != 0xffff).then_some(sum)
}

/// Whether `packet` is a TCP or UDP IPv4 packet whose checksum field equals the pseudo-header
/// sum: what a sender that left the checksum to the NIC writes, and what one complete checksum in
/// 65 536 equals by chance. Cheap: reads 12 bytes. [`is_partial`] tells the two apart.
#[inline]
pub fn may_be_partial(packet: &[u8]) -> bool {
    candidate(packet).is_some()
}

/// Whether `packet` is a TCP or UDP IPv4 packet whose checksum is unfinished: the field holds
/// only the pseudo-header sum and the checksum does not verify. A complete checksum that equals
/// the pseudo-header sum by chance verifies and is not partial. Reads 12 bytes, and the whole
/// segment only when the field equals the pseudo-header sum.
pub fn is_partial(packet: &[u8]) -> bool {
    candidate(packet).is_some_and(|c| unverified_sum(packet, &c).is_some())
}

/// Completes the checksum of a packet for which [`is_partial`] holds; returns whether it did. Any
/// other packet, a valid one whose checksum equals the pseudo-header sum by chance included, is
/// left alone, so this can never make a good packet bad. One pass over the segment.
pub fn complete_partial(packet: &mut [u8]) -> bool {
    let Some(c) = candidate(packet) else {
        return false;
    };
    let Some(sum) = unverified_sum(packet, &c) else {
        return false;
    };
    // The segment's sum without the field (which holds `pseudo`), then the checksum over both.
    let rest = checksum::combine(sum, !c.pseudo);
    let mut value = !checksum::combine(c.pseudo, rest);
    if c.proto == ipv4::PROTO_UDP && value == 0 {
        value = 0xffff; // RFC 768: a computed 0 is sent as all ones
    }
    packet[c.field..c.field + 2].copy_from_slice(&value.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};

    /// An IPv4 packet from 10.1.1.2 to 10.1.2.2 with a valid header checksum.
    fn packet(proto: u8, l4: &[u8]) -> Vec<u8> {
        let total = 20 + l4.len();
        let mut p = vec![
            0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0, 10, 1, 1, 2, 10, 1, 2, 2,
        ];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        let c = checksum::compute(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(l4);
        p
    }

    /// Verifies an L4 checksum independently: the sum over pseudo-header and segment is 0xffff.
    fn verifies(p: &[u8]) -> bool {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, p[9]]);
        pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        pseudo.extend_from_slice(&p[20..]);
        checksum::sum(&pseudo) == 0xffff
    }

    fn tcp(payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x18;
        t.extend_from_slice(payload);
        t
    }

    /// Puts the pseudo-header sum into the checksum field, as a CHECKSUM_PARTIAL sender does.
    fn make_partial(p: &mut [u8], field: usize) {
        let s = pseudo_sum(&ipv4::Packet::new_checked(&p[..]).expect("IPv4"));
        p[20 + field..22 + field].copy_from_slice(&s.to_be_bytes());
    }

    #[test]
    fn partial_tcp_and_udp_are_completed() {
        for payload_len in [0usize, 1, 2, 7, 1000, 1409] {
            let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 + 3) as u8).collect();
            let mut p = packet(PROTO_TCP, &tcp(&payload));
            make_partial(&mut p, 16);
            assert!(is_partial(&p));
            assert!(!verifies(&p));
            assert!(complete_partial(&mut p));
            assert!(verifies(&p), "tcp {payload_len}");
            assert!(!is_partial(&p) || verifies(&p));

            let mut u = vec![0u8; 8];
            u[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
            u.extend_from_slice(&payload);
            let mut p = packet(PROTO_UDP, &u);
            make_partial(&mut p, 6);
            assert!(complete_partial(&mut p));
            assert!(verifies(&p), "udp {payload_len}");
        }
    }

    #[test]
    fn a_valid_checksum_equal_to_the_pseudo_sum_is_not_partial() {
        for (proto, field) in [(PROTO_TCP, 16), (PROTO_UDP, 6)] {
            // Two payload bytes chosen so that, with the pseudo-header sum in the field, the
            // checksum verifies: a complete checksum that equals the pseudo-header sum.
            let mut l4 = if proto == PROTO_TCP {
                tcp(&[0x5a; 30])
            } else {
                let mut u = vec![0u8; 8];
                u[4..6].copy_from_slice(&38u16.to_be_bytes());
                u.extend_from_slice(&[0x5a; 30]);
                u
            };
            let free = l4.len() - 2;
            l4[free] = 0;
            l4[free + 1] = 0;
            let mut p = packet(proto, &l4);
            make_partial(&mut p, field);
            let c = candidate(&p).expect("field holds the pseudo-header sum");
            let word = !checksum::combine(c.pseudo, checksum::sum(&p[20..]));
            let at = 20 + free;
            p[at..at + 2].copy_from_slice(&word.to_be_bytes());
            assert!(
                may_be_partial(&p),
                "{proto}: field equals the pseudo-header sum"
            );
            assert!(verifies(&p), "{proto}: and the checksum is valid");
            assert!(!is_partial(&p), "{proto}");
            let before = p.clone();
            assert!(
                !complete_partial(&mut p),
                "{proto}: not completed, not counted"
            );
            assert_eq!(p, before);
        }
    }

    #[test]
    fn a_real_partial_checksum_is_partial_and_completed() {
        let mut p = packet(PROTO_TCP, &tcp(b"a partial checksum"));
        make_partial(&mut p, 16);
        assert!(may_be_partial(&p));
        assert!(!verifies(&p));
        assert!(is_partial(&p));
        assert!(complete_partial(&mut p));
        assert!(verifies(&p));
        assert!(!is_partial(&p));
        assert!(!complete_partial(&mut p), "once only");
    }

    #[test]
    fn complete_checksums_and_others_are_left_alone() {
        let mut p = packet(PROTO_TCP, &tcp(b"hello"));
        let c = {
            let mut q = p.clone();
            make_partial(&mut q, 16);
            complete_partial(&mut q);
            [q[36], q[37]]
        };
        p[36..38].copy_from_slice(&c);
        let before = p.clone();
        assert!(!complete_partial(&mut p));
        assert_eq!(p, before);
        // UDP without a checksum.
        let mut u = packet(PROTO_UDP, &[0, 1, 0, 2, 0, 9, 0, 0, 42]);
        assert!(!complete_partial(&mut u));
        // ICMP, a fragment, a length mismatch, short input, not IPv4.
        let mut icmp = packet(1, &[8, 0, 0, 0, 0, 0, 0, 0]);
        assert!(!complete_partial(&mut icmp));
        let mut frag = packet(PROTO_TCP, &tcp(b"x"));
        make_partial(&mut frag, 16);
        frag[6] = 0x20; // MF
        assert!(!complete_partial(&mut frag));
        let mut long = packet(PROTO_TCP, &tcp(b"x"));
        make_partial(&mut long, 16);
        long.push(0);
        assert!(!complete_partial(&mut long));
        for short in [&[][..], &[0x45][..], &[0x45, 0, 0, 20][..]] {
            assert!(!is_partial(short));
        }
        let mut v6 = packet(PROTO_TCP, &tcp(b"x"));
        v6[0] = 0x65;
        assert!(!complete_partial(&mut v6));
    }

    #[test]
    fn any_bytes_never_panic() {
        let mut x: u32 = 0x1234_5678;
        for len in 0..200usize {
            let mut b: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            if len >= 20 {
                b[0] = 0x45;
                b[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                b[6] = 0;
                b[7] = 0;
            }
            let _ = complete_partial(&mut b);
        }
    }

    /// An IPv6 TCP packet fd00:1:1::2 → fd00:1:2::2 behind one destination-options header, its
    /// checksum left as a CHECKSUM_PARTIAL sender leaves it (the pseudo-header sum).
    fn partial_tcp6(payload: &[u8]) -> Vec<u8> {
        let seg = tcp(payload);
        let mut v = vec![0u8; 40];
        let mut ip = ipv6::Packet::new_unchecked(&mut v[..]);
        ip.set_version_tc_flow(0, 0);
        ip.set_payload_len((8 + seg.len()) as u16);
        ip.set_next_header(ipv6::NH_DEST_OPTS);
        ip.set_hop_limit(64);
        ip.set_src_addr("fd00:1:1::2".parse().unwrap());
        ip.set_dst_addr("fd00:1:2::2".parse().unwrap());
        v.extend_from_slice(&[ipv6::NH_TCP, 0, 1, 4, 0, 0, 0, 0]);
        v.extend_from_slice(&seg);
        let pseudo =
            ipv6::Packet::new_unchecked(&v[..]).pseudo_header_sum(ipv6::NH_TCP, seg.len() as u32);
        v[48 + 16..48 + 18].copy_from_slice(&pseudo.to_be_bytes());
        v
    }

    fn verifies6(p: &[u8]) -> bool {
        let seg = &p[48..];
        let mut ph = Vec::new();
        ph.extend_from_slice(&p[8..40]);
        ph.extend_from_slice(&(seg.len() as u32).to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, ipv6::NH_TCP]);
        ph.extend_from_slice(seg);
        checksum::sum(&ph) == 0xffff
    }

    #[test]
    fn partial_ipv6_tcp_is_completed_behind_extension_headers() {
        let mut p = partial_tcp6(b"hello over IPv6");
        assert!(may_be_partial(&p) && is_partial(&p));
        assert!(!verifies6(&p));
        assert!(complete_partial(&mut p));
        assert!(verifies6(&p), "completed checksum verifies");
        // Now complete: left alone.
        let before = p.clone();
        assert!(!complete_partial(&mut p));
        assert_eq!(p, before);
        // A fragment is never touched.
        let mut f = partial_tcp6(b"frag");
        f[6] = ipv6::NH_FRAGMENT;
        f[40..48].copy_from_slice(&[ipv6::NH_TCP, 0, 0, 0, 0, 0, 0, 1]);
        assert!(!complete_partial(&mut f));
    }
}
