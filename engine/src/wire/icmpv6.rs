//! The three ICMPv6 error messages the forwarder originates (RFC 4443): destination unreachable
//! (no route) when no peer leases the destination, time exceeded when the hop limit runs out, and
//! packet too big when a packet does not fit the path. The checksum covers the IPv6 pseudo-header
//! (RFC 8200 §8.1).

use super::checksum;
use super::ipv6::{self, Packet as Ipv6Packet, NH_ICMPV6};
use std::net::Ipv6Addr;

mod field {
    pub(super) const TYPE: usize = 0;
    pub(super) const CODE: usize = 1;
    pub(super) const CHECKSUM: core::ops::Range<usize> = 2..4;
    pub(super) const PARAM: core::ops::Range<usize> = 4..8;
}

/// ICMPv6 header length (type, code, checksum and the 4-byte parameter).
pub const HEADER_LEN: usize = 8;
/// IPv6's minimum MTU: an error message, quote included, never exceeds it (RFC 4443 §2.4 (c)).
pub const MIN_MTU: usize = 1280;
/// Largest error message this module emits.
pub const MAX_ERROR_LEN: usize = MIN_MTU;
/// Hop limit of originated errors (Linux's default hop limit).
pub const ERROR_HOP_LIMIT: u8 = 64;

/// Which error to originate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Type 1 code 0: no route to the destination.
    NoRoute,
    /// Type 3 code 0: hop limit exceeded in transit.
    HopLimitExceeded,
    /// Type 2 code 0: the packet is larger than `mtu`, the MTU of the next link.
    PacketTooBig {
        /// MTU of the link the packet did not fit.
        mtu: u32,
    },
}

impl ErrorKind {
    fn type_code_param(self) -> (u8, u8, u32) {
        match self {
            ErrorKind::NoRoute => (1, 0, 0),
            ErrorKind::HopLimitExceeded => (3, 0, 0),
            ErrorKind::PacketTooBig { mtu } => (2, 0, mtu),
        }
    }
}

/// Whether an ICMPv6 error of `kind` may be sent about `offending` (RFC 4443 §2.4 (e)): never about
/// an ICMPv6 error message (types below 128), a packet from an unspecified or multicast source,
/// a packet to a multicast destination (packet too big excepted), or a non-first fragment.
/// `offending` must have passed `Packet::check_len`.
pub fn may_reply_to(offending: &Ipv6Packet<&[u8]>, kind: ErrorKind) -> bool {
    let src = offending.src_addr();
    if src.is_unspecified() || src.is_multicast() {
        return false;
    }
    if offending.dst_addr().is_multicast() && !matches!(kind, ErrorKind::PacketTooBig { .. }) {
        return false;
    }
    let Ok(t) = offending.transport() else {
        return false;
    };
    if t.later_fragment {
        return false;
    }
    if t.protocol == NH_ICMPV6 {
        match offending.as_bytes().get(t.offset) {
            Some(ty) if *ty >= 128 => {}
            _ => return false,
        }
    }
    true
}

/// Writes an ICMPv6 error of `kind` from `src` about `offending` into `buf` and returns its
/// length: as much of `offending` as fits in [`MIN_MTU`]. `offending` must have passed
/// `Packet::check_len`; `buf` must hold [`MAX_ERROR_LEN`] bytes.
pub fn emit_error(buf: &mut [u8], kind: ErrorKind, src: Ipv6Addr, offending: &[u8]) -> usize {
    let off = Ipv6Packet::new_unchecked(offending);
    let quoted = offending.len().min(MIN_MTU - ipv6::HEADER_LEN - HEADER_LEN);
    let icmp_len = HEADER_LEN + quoted;
    let total = ipv6::HEADER_LEN + icmp_len;
    let buf = &mut buf[..total];
    {
        let mut ip = Ipv6Packet::new_unchecked(&mut buf[..]);
        ip.set_version_tc_flow(0, 0);
        ip.set_payload_len(icmp_len as u16);
        ip.set_next_header(NH_ICMPV6);
        ip.set_hop_limit(ERROR_HOP_LIMIT);
        ip.set_src_addr(src);
        ip.set_dst_addr(off.src_addr());
    }
    let pseudo = Ipv6Packet::new_unchecked(&buf[..]).pseudo_header_sum(NH_ICMPV6, icmp_len as u32);
    let icmp = &mut buf[ipv6::HEADER_LEN..];
    let (ty, code, param) = kind.type_code_param();
    icmp[field::TYPE] = ty;
    icmp[field::CODE] = code;
    icmp[field::CHECKSUM].fill(0);
    icmp[field::PARAM].copy_from_slice(&param.to_be_bytes());
    icmp[HEADER_LEN..].copy_from_slice(&offending[..quoted]);
    let c = !checksum::combine(pseudo, checksum::sum(icmp));
    icmp[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv6::{NH_FRAGMENT, NH_UDP};

    fn host() -> Ipv6Addr {
        "fd00:1:1::".parse().unwrap()
    }

    /// A UDP packet fd00:1:1::2 → fd00:1:9::9 with `payload` bytes after the UDP header.
    fn udp_packet(hop_limit: u8, payload: usize) -> Vec<u8> {
        let len = ipv6::HEADER_LEN + 8 + payload;
        let mut v = vec![0u8; len];
        let mut p = Ipv6Packet::new_unchecked(&mut v[..]);
        p.set_version_tc_flow(0, 0);
        p.set_payload_len((len - ipv6::HEADER_LEN) as u16);
        p.set_next_header(NH_UDP);
        p.set_hop_limit(hop_limit);
        p.set_src_addr("fd00:1:1::2".parse().unwrap());
        p.set_dst_addr("fd00:1:9::9".parse().unwrap());
        for (i, b) in v[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        v
    }

    /// Verifies the ICMPv6 checksum of `msg` with the pseudo-header written out as RFC 8200 §8.1
    /// draws it.
    fn checksum_ok(msg: &[u8]) -> bool {
        let mut ph = Vec::new();
        ph.extend_from_slice(&msg[8..40]);
        ph.extend_from_slice(&((msg.len() - 40) as u32).to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, NH_ICMPV6]);
        ph.extend_from_slice(&msg[40..]);
        let ours = checksum::sum(&ph) == 0xffff;
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&msg[8..24]);
        dst.copy_from_slice(&msg[24..40]);
        let theirs = etherparse::Icmpv6Slice::from_slice(&msg[40..])
            .expect("an ICMPv6 message")
            .is_checksum_valid(src, dst);
        assert_eq!(ours, theirs, "etherparse disagrees");
        ours
    }

    #[test]
    fn emits_no_route() {
        let off = udp_packet(64, 8);
        let mut buf = [0u8; MAX_ERROR_LEN];
        let n = emit_error(&mut buf, ErrorKind::NoRoute, host(), &off);
        assert_eq!(n, 40 + 8 + off.len());
        let ip = Ipv6Packet::new_checked(&buf[..n]).expect("valid");
        assert_eq!(ip.src_addr(), host());
        assert_eq!(ip.dst_addr(), "fd00:1:1::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.next_header(), NH_ICMPV6);
        assert_eq!(ip.hop_limit(), ERROR_HOP_LIMIT);
        assert_eq!(&buf[40..44], &[1, 0, buf[42], buf[43]]);
        assert_eq!(&buf[44..48], &[0; 4]);
        assert_eq!(&buf[48..n], &off[..]);
        assert!(checksum_ok(&buf[..n]));
    }

    #[test]
    fn emits_hop_limit_exceeded_and_packet_too_big() {
        let off = udp_packet(1, 8);
        let mut buf = [0u8; MAX_ERROR_LEN];
        let n = emit_error(&mut buf, ErrorKind::HopLimitExceeded, host(), &off);
        assert_eq!((buf[40], buf[41]), (3, 0));
        assert!(checksum_ok(&buf[..n]));
        let n = emit_error(
            &mut buf,
            ErrorKind::PacketTooBig { mtu: 1430 },
            host(),
            &off,
        );
        assert_eq!((buf[40], buf[41]), (2, 0));
        assert_eq!(
            u32::from_be_bytes([buf[44], buf[45], buf[46], buf[47]]),
            1430
        );
        assert!(checksum_ok(&buf[..n]));
    }

    #[test]
    fn quote_stops_at_the_minimum_mtu() {
        let off = udp_packet(64, 9000);
        let mut buf = [0u8; MAX_ERROR_LEN];
        let n = emit_error(
            &mut buf,
            ErrorKind::PacketTooBig { mtu: 1430 },
            host(),
            &off,
        );
        assert_eq!(n, MIN_MTU);
        assert_eq!(&buf[48..n], &off[..n - 48]);
        assert!(Ipv6Packet::new_checked(&buf[..n]).is_ok());
        assert!(checksum_ok(&buf[..n]));
    }

    #[test]
    fn no_error_about_errors_multicast_or_later_fragments() {
        let no_route = ErrorKind::NoRoute;
        let ptb = ErrorKind::PacketTooBig { mtu: 1280 };
        let mut v = udp_packet(64, 8);
        assert!(may_reply_to(&Ipv6Packet::new_unchecked(&v[..]), no_route));
        v[6] = NH_ICMPV6;
        v[40] = 1; // destination unreachable
        assert!(!may_reply_to(&Ipv6Packet::new_unchecked(&v[..]), no_route));
        v[40] = 128; // echo request
        assert!(may_reply_to(&Ipv6Packet::new_unchecked(&v[..]), no_route));
        let mut m = udp_packet(64, 8);
        m[24] = 0xff; // ff00:… destination
        assert!(!may_reply_to(&Ipv6Packet::new_unchecked(&m[..]), no_route));
        assert!(may_reply_to(&Ipv6Packet::new_unchecked(&m[..]), ptb));
        let mut s = udp_packet(64, 8);
        s[8..24].fill(0); // unspecified source
        assert!(!may_reply_to(&Ipv6Packet::new_unchecked(&s[..]), ptb));
        // A later fragment: fragment header with offset 8 units.
        let mut f = udp_packet(64, 8);
        f[6] = NH_FRAGMENT;
        f[40..48].copy_from_slice(&[NH_UDP, 0, 0, 64, 0, 0, 0, 1]);
        assert!(!may_reply_to(&Ipv6Packet::new_unchecked(&f[..]), no_route));
        f[42..44].fill(0); // first fragment
        assert!(may_reply_to(&Ipv6Packet::new_unchecked(&f[..]), no_route));
    }
}
