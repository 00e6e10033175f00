//! TCP and UDP checksums of inner IPv4 packets.
//!
//! A Linux sender that hands checksumming to the NIC (`CHECKSUM_PARTIAL`) leaves only the
//! pseudo-header sum in the TCP or UDP checksum field. A physical NIC completes it on the way out;
//! a veth pair does not, because inside one kernel the packet's checksum state travels with it.
//! So when a kernel vxlan device sends over veth (containers, kind, k3d), a userspace receiver gets
//! packets whose inner checksum is unfinished, and the container's stack would drop them.
//! [`complete_partial`] finishes such a checksum in place; complete checksums are left alone.

use super::{checksum, ipv4, tcp, udp};

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

/// Whether `packet` is a TCP or UDP IPv4 packet whose checksum field holds only the pseudo-header
/// sum. Cheap: reads 12 bytes.
#[inline]
pub fn is_partial(packet: &[u8]) -> bool {
    let Some((ip, at, _)) = l4(packet) else {
        return false;
    };
    let field = u16::from_be_bytes([packet[at], packet[at + 1]]);
    // UDP's 0 means "no checksum"; the pseudo-header sum is never 0 (the protocol is in it).
    field == pseudo_sum(&ip)
}

/// Completes the checksum of a packet for which [`is_partial`] holds; returns whether it did.
/// A complete checksum that happens to equal the pseudo-header sum is recomputed to an equivalent
/// valid value, so this can never make a good packet bad.
pub fn complete_partial(packet: &mut [u8]) -> bool {
    if !is_partial(packet) {
        return false;
    }
    let Some((mut ip, _, proto)) = l4(packet) else {
        return false;
    };
    let pseudo = pseudo_sum(&ip);
    let segment = ip.payload_mut();
    match proto {
        ipv4::PROTO_TCP => {
            let mut t = tcp::Packet::new_unchecked(segment);
            t.set_checksum(0);
            let c = !checksum::combine(pseudo, checksum::sum(t.into_inner()));
            tcp::Packet::new_unchecked(ip.payload_mut()).set_checksum(c);
        }
        _ => {
            let mut u = udp::Packet::new_unchecked(segment);
            u.set_checksum(0);
            let mut c = !checksum::combine(pseudo, checksum::sum(u.into_inner()));
            if c == 0 {
                c = 0xffff; // RFC 768: a computed 0 is sent as all ones
            }
            udp::Packet::new_unchecked(ip.payload_mut()).set_checksum(c);
        }
    }
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
}
