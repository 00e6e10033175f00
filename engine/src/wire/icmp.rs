//! The two ICMPv4 error messages the forwarder originates (RFC 792): destination net unreachable
//! when no peer leases the destination, and time exceeded when the TTL runs out.

use super::checksum;
use super::ipv4::{self, Packet as Ipv4Packet, PROTO_ICMP};
use std::net::Ipv4Addr;

mod field {
    pub(super) const TYPE: usize = 0;
    pub(super) const CODE: usize = 1;
    pub(super) const CHECKSUM: core::ops::Range<usize> = 2..4;
    pub(super) const UNUSED: core::ops::Range<usize> = 4..8;
}

/// ICMP header length.
pub const HEADER_LEN: usize = 8;
/// Bytes of the offending datagram quoted after its IP header (RFC 792).
pub const QUOTED_PAYLOAD: usize = 8;
/// Largest error message this module emits: IP header, ICMP header, a 60-byte quoted header and 8 bytes.
pub const MAX_ERROR_LEN: usize = ipv4::HEADER_LEN + HEADER_LEN + 60 + QUOTED_PAYLOAD;
/// TTL of originated errors, as flannel's proxy uses.
pub const ERROR_TTL: u8 = 8;

/// Which error to originate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Type 3 code 0: no route to the destination network.
    NetUnreachable,
    /// Type 11 code 0: TTL exceeded in transit.
    TimeExceeded,
}

impl ErrorKind {
    fn type_code(self) -> (u8, u8) {
        match self {
            ErrorKind::NetUnreachable => (3, 0),
            ErrorKind::TimeExceeded => (11, 0),
        }
    }
}

/// Whether an ICMP error may be sent about `offending` (RFC 1812 §4.3.2.7): never about an ICMP
/// error message, a non-first fragment, or a packet from an unspecified, broadcast or multicast
/// source. `offending` must have passed `Packet::check_len`.
pub fn may_reply_to(offending: &Ipv4Packet<&[u8]>) -> bool {
    let src = offending.src_addr();
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() {
        return false;
    }
    if offending.dst_addr().is_broadcast() || offending.dst_addr().is_multicast() {
        return false;
    }
    if offending.frag_offset() != 0 {
        return false;
    }
    if offending.protocol() == PROTO_ICMP {
        match offending.as_bytes().get(offending.header_len()) {
            // Echo reply, echo request, timestamp, info and address mask messages may be answered.
            Some(0 | 8 | 13 | 14 | 15 | 16 | 17 | 18) => {}
            _ => return false,
        }
    }
    true
}

/// Writes an ICMP error of `kind` from `src` about `offending` into `buf` and returns its length.
/// `offending` must have passed `Packet::check_len`; `buf` must hold [`MAX_ERROR_LEN`] bytes.
pub fn emit_error(buf: &mut [u8], kind: ErrorKind, src: Ipv4Addr, offending: &[u8]) -> usize {
    let off = Ipv4Packet::new_unchecked(offending);
    let quoted = (off.header_len() + QUOTED_PAYLOAD).min(offending.len());
    let icmp_len = HEADER_LEN + quoted;
    let total = ipv4::HEADER_LEN + icmp_len;
    let buf = &mut buf[..total];
    buf.fill(0);
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
        ip.set_version_and_header_len(ipv4::HEADER_LEN);
        ip.set_total_len(total as u16);
        ip.set_ttl(ERROR_TTL);
        ip.set_protocol(PROTO_ICMP);
        ip.set_src_addr(src);
        ip.set_dst_addr(off.src_addr());
        ip.fill_checksum();
    }
    let icmp = &mut buf[ipv4::HEADER_LEN..];
    let (ty, code) = kind.type_code();
    icmp[field::TYPE] = ty;
    icmp[field::CODE] = code;
    icmp[field::UNUSED].fill(0);
    icmp[HEADER_LEN..].copy_from_slice(&offending[..quoted]);
    let c = checksum::compute(icmp);
    icmp[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_packet(ttl: u8) -> Vec<u8> {
        let mut v = vec![0u8; 48];
        let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
        p.set_version_and_header_len(20);
        p.set_total_len(48);
        p.set_ttl(ttl);
        p.set_protocol(17);
        p.set_src_addr(Ipv4Addr::new(10, 1, 1, 2));
        p.set_dst_addr(Ipv4Addr::new(10, 1, 9, 9));
        p.fill_checksum();
        for (i, b) in v[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        v
    }

    /// Golden bytes of a net-unreachable error from 10.1.1.0 about the UDP packet above.
    #[rustfmt::skip]
    static UNREACHABLE_BYTES: [u8; 56] = [
        0x45, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x00, 0x08, 0x01, 0x9c, 0xc2, 10, 1, 1, 0, 10, 1, 1, 2,
        0x03, 0x00, 0xf0, 0xef, 0x00, 0x00, 0x00, 0x00,
        0x45, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0x40, 0x11, 0x5c, 0xb1, 10, 1, 1, 2, 10, 1, 9, 9,
        0, 1, 2, 3, 4, 5, 6, 7,
    ];

    #[test]
    fn emits_net_unreachable() {
        let off = udp_packet(64);
        let mut buf = [0u8; MAX_ERROR_LEN];
        let n = emit_error(
            &mut buf,
            ErrorKind::NetUnreachable,
            Ipv4Addr::new(10, 1, 1, 0),
            &off,
        );
        assert_eq!(&buf[..n], &UNREACHABLE_BYTES[..]);
        let ip = Ipv4Packet::new_checked(&buf[..n]).expect("valid");
        assert!(ip.verify_checksum());
        assert_eq!(checksum::sum(&buf[20..n]), 0xffff);
    }

    #[test]
    fn emits_time_exceeded() {
        let off = udp_packet(1);
        let mut buf = [0u8; MAX_ERROR_LEN];
        let n = emit_error(
            &mut buf,
            ErrorKind::TimeExceeded,
            Ipv4Addr::new(10, 1, 1, 0),
            &off,
        );
        assert_eq!((buf[20], buf[21]), (11, 0));
        assert_eq!(checksum::sum(&buf[20..n]), 0xffff);
    }

    #[test]
    fn no_error_about_errors_or_fragments() {
        let mut v = udp_packet(64);
        assert!(may_reply_to(&Ipv4Packet::new_unchecked(&v[..])));
        v[9] = PROTO_ICMP;
        v[20] = 3; // destination unreachable
        assert!(!may_reply_to(&Ipv4Packet::new_unchecked(&v[..])));
        v[20] = 8; // echo request
        assert!(may_reply_to(&Ipv4Packet::new_unchecked(&v[..])));
        v[9] = 17;
        v[6] = 0x00;
        v[7] = 0x10; // fragment offset 16
        assert!(!may_reply_to(&Ipv4Packet::new_unchecked(&v[..])));
    }
}
