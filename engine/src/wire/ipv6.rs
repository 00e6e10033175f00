//! IPv6 header view (RFC 8200): the fixed header and a bounded walk over the extension headers to
//! the transport header, only what forwarding needs.
//!
//! [`Packet::check_len`] validates the fixed header and the payload length; [`Packet::transport`]
//! walks the extension-header chain (hop-by-hop, routing, fragment, destination options) within the
//! packet and at most [`MAX_EXT_HEADERS`] deep. AH and ESP end the walk (what follows them is not
//! readable here), as does any other next-header value. Jumbograms (RFC 2675) are refused: a payload
//! length of zero with a hop-by-hop header, or a jumbo payload option anywhere in it.

use super::{checksum, Error, Field, Result};
use std::net::Ipv6Addr;

mod field {
    use super::Field;
    pub(super) const VER_TC_FLOW: Field = 0..4;
    pub(super) const PAYLOAD_LEN: Field = 4..6;
    pub(super) const NEXT_HEADER: usize = 6;
    pub(super) const HOP_LIMIT: usize = 7;
    pub(super) const SRC_ADDR: Field = 8..24;
    pub(super) const DST_ADDR: Field = 24..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Next header: hop-by-hop options (only directly after the fixed header, RFC 8200 §4.1).
pub const NH_HOP_BY_HOP: u8 = 0;
/// Next header: TCP.
pub const NH_TCP: u8 = 6;
/// Next header: UDP.
pub const NH_UDP: u8 = 17;
/// Next header: routing header.
pub const NH_ROUTING: u8 = 43;
/// Next header: fragment header.
pub const NH_FRAGMENT: u8 = 44;
/// Next header: encapsulating security payload (ends the walk).
pub const NH_ESP: u8 = 50;
/// Next header: authentication header (ends the walk).
pub const NH_AH: u8 = 51;
/// Next header: ICMPv6.
pub const NH_ICMPV6: u8 = 58;
/// Next header: no next header.
pub const NH_NONE: u8 = 59;
/// Next header: destination options.
pub const NH_DEST_OPTS: u8 = 60;
/// Most extension headers [`Packet::transport`] walks before refusing the chain
/// ([`Error::ExtChainTooLong`]). RFC 8200 §4.1 recommends at most one of each kind (two of
/// destination options); eight leaves room for that and bounds the work per packet.
pub const MAX_EXT_HEADERS: usize = 8;
/// Length of a fragment header.
pub const FRAGMENT_HEADER_LEN: usize = 8;
/// Option type of the jumbo payload option (RFC 2675).
const OPT_JUMBO: u8 = 0xc2;
/// Option type of Pad1, the one option without a length byte.
const OPT_PAD1: u8 = 0;

/// Where the walk over the extension headers ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// The next-header value that ended the walk: TCP, UDP, ICMPv6, AH, ESP, no-next-header or any
    /// other protocol.
    pub protocol: u8,
    /// Offset of that header from the start of the packet.
    pub offset: usize,
    /// Whether a fragment header with a non-zero offset was seen: the transport header is in
    /// another fragment and the bytes at `offset` are not it.
    pub later_fragment: bool,
    /// Whether a fragment header was seen at all (first or later fragment, or an atomic fragment
    /// with M clear and offset 0).
    pub fragmented: bool,
}

impl Transport {
    /// Whether the header at `offset` is the transport header of the whole datagram (not a later
    /// fragment, not behind AH/ESP).
    pub fn is_readable(&self) -> bool {
        !self.later_fragment && self.protocol != NH_AH && self.protocol != NH_ESP
    }
}

/// A read/write view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without any check; accessors may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps `buffer` after [`Packet::check_len`]; the only constructor to use on untrusted input.
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks, in this order, that the fixed header fits (`Truncated`), the version is 6
    /// (`NotIpv6`), the packet is no jumbogram (payload length 0 with a hop-by-hop header:
    /// `Jumbo`) and the payload length equals the bytes after the fixed header (`LengthMismatch`:
    /// no silent truncation or trailing bytes). After that no accessor panics; the extension
    /// headers are checked by [`Packet::transport`].
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 6 {
            return Err(Error::NotIpv6);
        }
        if self.payload_len() == 0 && self.next_header() == NH_HOP_BY_HOP {
            return Err(Error::Jumbo);
        }
        if HEADER_LEN + usize::from(self.payload_len()) != data.len() {
            return Err(Error::LengthMismatch);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole buffer.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn first_word(&self) -> u32 {
        let d = self.buffer.as_ref();
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    /// IP version nibble.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW.start] >> 4
    }

    /// Traffic class (DSCP and ECN).
    pub fn traffic_class(&self) -> u8 {
        (self.first_word() >> 20) as u8
    }

    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        self.first_word() & 0x000f_ffff
    }

    /// Payload length: the bytes after the fixed header, extension headers included.
    pub fn payload_len(&self) -> u16 {
        super::be16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    /// Next header of the fixed header.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), field::SRC_ADDR)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), field::DST_ADDR)
    }

    /// Everything after the fixed header (extension headers included).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Walks the extension headers to the transport header. Refuses a header that runs past the
    /// packet (`Truncated`), a hop-by-hop header anywhere but first (`BadExtHeader`), a jumbo
    /// payload option (`Jumbo`) and a chain of more than [`MAX_EXT_HEADERS`] headers
    /// (`ExtChainTooLong`). The packet must have passed [`Packet::check_len`]. Never panics.
    pub fn transport(&self) -> Result<Transport> {
        let d = self.buffer.as_ref();
        let mut nh = self.next_header();
        let mut off = HEADER_LEN;
        let mut fragmented = false;
        let mut later_fragment = false;
        for n in 0..=MAX_EXT_HEADERS {
            match nh {
                NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS | NH_FRAGMENT => {}
                _ => {
                    return Ok(Transport {
                        protocol: nh,
                        offset: off,
                        later_fragment,
                        fragmented,
                    })
                }
            }
            if n == MAX_EXT_HEADERS {
                return Err(Error::ExtChainTooLong);
            }
            if nh == NH_HOP_BY_HOP && n != 0 {
                return Err(Error::BadExtHeader);
            }
            let head = d.get(off..off + 2).ok_or(Error::Truncated)?;
            let len = if nh == NH_FRAGMENT {
                FRAGMENT_HEADER_LEN
            } else {
                (usize::from(head[1]) + 1) * 8
            };
            let ext = d.get(off..off + len).ok_or(Error::Truncated)?;
            match nh {
                NH_FRAGMENT => {
                    fragmented = true;
                    if super::be16(ext, 2..4) & 0xfff8 != 0 {
                        later_fragment = true;
                    }
                }
                NH_HOP_BY_HOP => check_options(&ext[2..])?,
                _ => {}
            }
            nh = ext[0];
            off += len;
            if later_fragment {
                // What follows a later fragment's header is payload, not another header.
                return Ok(Transport {
                    protocol: nh,
                    offset: off,
                    later_fragment,
                    fragmented,
                });
            }
        }
        unreachable!("the loop returns at n == MAX_EXT_HEADERS")
    }

    /// The folded (not inverted) pseudo-header sum (RFC 8200 §8.1) of an upper-layer payload of
    /// `length` bytes with next header `next_header`.
    pub fn pseudo_header_sum(&self, next_header: u8, length: u32) -> u16 {
        let d = self.buffer.as_ref();
        pseudo_header(
            &d[field::SRC_ADDR],
            &d[field::DST_ADDR],
            next_header,
            length,
        )
    }
}

/// The folded (not inverted) IPv6 pseudo-header sum (RFC 8200 §8.1) for 16-byte `src` and `dst`.
pub fn pseudo_header(src: &[u8], dst: &[u8], next_header: u8, length: u32) -> u16 {
    let acc = checksum::accumulate(src, checksum::accumulate(dst, 0));
    checksum::fold(
        acc + u64::from(length >> 16) + u64::from(length & 0xffff) + u64::from(next_header),
    )
}

/// Refuses a jumbo payload option among the hop-by-hop `options`; an option running past the
/// header is `Truncated`.
fn check_options(options: &[u8]) -> Result<()> {
    let mut i = 0;
    while i < options.len() {
        let ty = options[i];
        if ty == OPT_PAD1 {
            i += 1;
            continue;
        }
        let len = usize::from(*options.get(i + 1).ok_or(Error::Truncated)?);
        if ty == OPT_JUMBO {
            return Err(Error::Jumbo);
        }
        i += 2 + len;
        if i > options.len() {
            return Err(Error::Truncated);
        }
    }
    Ok(())
}

#[inline]
fn addr_at(d: &[u8], f: Field) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&d[f]);
    Ipv6Addr::from(a)
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 6, the traffic class and the flow label (low 20 bits).
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let w = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&w.to_be_bytes());
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the next header of the fixed header.
    pub fn set_next_header(&mut self, nh: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = nh;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, hl: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hl;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Decrements the hop limit by one, as a router does (IPv6 has no header checksum to patch).
    /// The caller has checked that the hop limit is above 1.
    pub fn decrement_hop_limit(&mut self) {
        let d = self.buffer.as_mut();
        d[field::HOP_LIMIT] = d[field::HOP_LIMIT].wrapping_sub(1);
    }

    /// Everything after the fixed header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ICMPv6 echo request fd00:1:1::2 → fd00:1:2::2, hop limit 64, traffic class 0xb8, flow
    /// label 0x12345, 8 bytes of ICMPv6 (checksum left zero).
    #[rustfmt::skip]
    pub(crate) static PACKET_BYTES: [u8; 48] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x08, 58, 64,
        0xfd, 0x00, 0x00, 0x01, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
        0xfd, 0x00, 0x00, 0x01, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
        0x80, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    fn src() -> Ipv6Addr {
        "fd00:1:1::2".parse().unwrap()
    }

    fn dst() -> Ipv6Addr {
        "fd00:1:2::2".parse().unwrap()
    }

    /// A packet with `exts` (each `(kind, bytes)` with its next-header byte filled in here) before
    /// an 8-byte UDP header.
    fn with_exts(exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, (_, bytes)) in exts.iter().enumerate() {
            let mut b = bytes.clone();
            b[0] = exts.get(i + 1).map_or(NH_UDP, |e| e.0);
            body.extend_from_slice(&b);
        }
        body.extend_from_slice(&[0x12, 0x34, 0x00, 0x35, 0x00, 0x08, 0, 0]);
        let mut v = vec![0u8; HEADER_LEN];
        let mut p = Packet::new_unchecked(&mut v[..]);
        p.set_version_tc_flow(0, 0);
        p.set_payload_len(body.len() as u16);
        p.set_next_header(exts.first().map_or(NH_UDP, |e| e.0));
        p.set_hop_limit(64);
        p.set_src_addr(src());
        p.set_dst_addr(dst());
        v.extend_from_slice(&body);
        v
    }

    /// An 8-byte options header (hop-by-hop or destination options) of PadN.
    fn opts8() -> Vec<u8> {
        vec![0, 0, 1, 4, 0, 0, 0, 0]
    }

    fn frag(offset_units: u16, more: bool) -> Vec<u8> {
        let w = (offset_units << 3) | u16::from(more);
        let [a, b] = w.to_be_bytes();
        vec![0, 0, a, b, 0, 0, 0, 7]
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET_BYTES[..]).expect("golden packet is valid");
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.next_header(), NH_ICMPV6);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), src());
        assert_eq!(p.dst_addr(), dst());
        assert_eq!(p.payload(), &PACKET_BYTES[40..]);
        let t = p.transport().unwrap();
        assert_eq!(
            t,
            Transport {
                protocol: NH_ICMPV6,
                offset: 40,
                later_fragment: false,
                fragmented: false
            }
        );
        assert!(t.is_readable());
    }

    #[test]
    fn construct() {
        let mut v = [0u8; 48];
        let mut p = Packet::new_unchecked(&mut v[..]);
        p.set_version_tc_flow(0xb8, 0x12345);
        p.set_payload_len(8);
        p.set_next_header(NH_ICMPV6);
        p.set_hop_limit(64);
        p.set_src_addr(src());
        p.set_dst_addr(dst());
        p.payload_mut().copy_from_slice(&PACKET_BYTES[40..]);
        assert_eq!(v[..], PACKET_BYTES[..]);
    }

    #[test]
    fn checked_errors() {
        let v = PACKET_BYTES.to_vec();
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&v[..n]).err(),
                Some(Error::Truncated),
                "{n} bytes"
            );
        }
        let mut four = v.clone();
        four[0] = 0x45;
        assert_eq!(Packet::new_checked(&four[..]).err(), Some(Error::NotIpv6));
        assert_eq!(
            Packet::new_checked(&v[..47]).err(),
            Some(Error::LengthMismatch)
        );
        let mut longer = v.clone();
        longer.push(0);
        assert_eq!(
            Packet::new_checked(&longer[..]).err(),
            Some(Error::LengthMismatch)
        );
        // Payload length 0 is fine without a hop-by-hop header (an empty payload) ...
        let mut empty = v[..40].to_vec();
        empty[4..6].fill(0);
        empty[6] = NH_NONE;
        assert!(Packet::new_checked(&empty[..]).is_ok());
        // ... and a jumbogram with one.
        empty[6] = NH_HOP_BY_HOP;
        assert_eq!(Packet::new_checked(&empty[..]).err(), Some(Error::Jumbo));
    }

    #[test]
    fn walk_to_transport() {
        let v = with_exts(&[
            (NH_HOP_BY_HOP, opts8()),
            (
                NH_ROUTING,
                vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
            (NH_FRAGMENT, frag(0, true)),
            (NH_DEST_OPTS, opts8()),
        ]);
        let p = Packet::new_checked(&v[..]).unwrap();
        let t = p.transport().unwrap();
        assert_eq!(t.protocol, NH_UDP);
        assert_eq!(t.offset, 40 + 8 + 16 + 8 + 8);
        assert!(t.fragmented && !t.later_fragment && t.is_readable());
        assert_eq!(&v[t.offset..t.offset + 2], &[0x12, 0x34]);
    }

    #[test]
    fn later_fragment_stops_the_walk() {
        let v = with_exts(&[(NH_FRAGMENT, frag(185, false))]);
        let t = Packet::new_checked(&v[..]).unwrap().transport().unwrap();
        assert_eq!(t.protocol, NH_UDP);
        assert_eq!(t.offset, 48);
        assert!(t.fragmented && t.later_fragment && !t.is_readable());
    }

    #[test]
    fn ah_and_esp_end_the_walk() {
        for nh in [NH_AH, NH_ESP] {
            let mut v = with_exts(&[(NH_DEST_OPTS, opts8())]);
            v[40] = nh;
            let t = Packet::new_checked(&v[..]).unwrap().transport().unwrap();
            assert_eq!((t.protocol, t.offset), (nh, 48));
            assert!(!t.is_readable());
        }
    }

    #[test]
    fn chain_bound() {
        let at_bound: Vec<_> = (0..MAX_EXT_HEADERS)
            .map(|_| (NH_DEST_OPTS, opts8()))
            .collect();
        let v = with_exts(&at_bound);
        let t = Packet::new_checked(&v[..]).unwrap().transport().unwrap();
        assert_eq!(t.protocol, NH_UDP);
        assert_eq!(t.offset, 40 + 8 * MAX_EXT_HEADERS);
        let over: Vec<_> = (0..=MAX_EXT_HEADERS)
            .map(|_| (NH_DEST_OPTS, opts8()))
            .collect();
        let v = with_exts(&over);
        assert_eq!(
            Packet::new_checked(&v[..]).unwrap().transport(),
            Err(Error::ExtChainTooLong)
        );
    }

    #[test]
    fn hostile_chains() {
        // Hop-by-hop after another header.
        let v = with_exts(&[(NH_DEST_OPTS, opts8()), (NH_HOP_BY_HOP, opts8())]);
        assert_eq!(
            Packet::new_checked(&v[..]).unwrap().transport(),
            Err(Error::BadExtHeader)
        );
        // A jumbo payload option in the hop-by-hop header.
        let v = with_exts(&[(NH_HOP_BY_HOP, vec![0, 0, OPT_JUMBO, 4, 0, 1, 0, 0])]);
        assert_eq!(
            Packet::new_checked(&v[..]).unwrap().transport(),
            Err(Error::Jumbo)
        );
        // An option running past its header.
        let v = with_exts(&[(NH_HOP_BY_HOP, vec![0, 0, 1, 9, 0, 0, 0, 0])]);
        assert_eq!(
            Packet::new_checked(&v[..]).unwrap().transport(),
            Err(Error::Truncated)
        );
        // A header whose length runs past the packet, cut at every byte.
        let mut v = with_exts(&[(NH_ROUTING, vec![0, 1, 0, 0, 0, 0, 0, 0])]);
        v.truncate(48);
        let len = (v.len() - HEADER_LEN) as u16;
        Packet::new_unchecked(&mut v[..]).set_payload_len(len);
        assert_eq!(
            Packet::new_checked(&v[..]).unwrap().transport(),
            Err(Error::Truncated)
        );
        for cut in HEADER_LEN..v.len() {
            let mut c = v[..cut].to_vec();
            Packet::new_unchecked(&mut c[..]).set_payload_len((cut - HEADER_LEN) as u16);
            assert_eq!(
                Packet::new_checked(&c[..]).unwrap().transport(),
                Err(Error::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn walk_never_panics_on_noise() {
        let mut state = 0x9e37_79b9_u32;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let len = HEADER_LEN + (state as usize % 120);
            let mut v = vec![0u8; len];
            for b in &mut v {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                // Mostly extension-header next-header values, so the walk goes deep.
                *b = [0, 43, 44, 60, 6, 17, 51, (state >> 8) as u8][state as usize % 8];
            }
            let mut p = Packet::new_unchecked(&mut v[..]);
            p.set_version_tc_flow(0, 0);
            p.set_payload_len((len - HEADER_LEN) as u16);
            if let Ok(p) = Packet::new_checked(&v[..]) {
                if let Ok(t) = p.transport() {
                    assert!(t.offset <= len);
                }
            }
        }
    }

    #[test]
    fn pseudo_header_matches_rfc_layout() {
        // The pseudo-header laid out as RFC 8200 §8.1 draws it, summed as plain data.
        let p = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        let mut ph = Vec::new();
        ph.extend_from_slice(&src().octets());
        ph.extend_from_slice(&dst().octets());
        ph.extend_from_slice(&70_000u32.to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, NH_ICMPV6]);
        assert_eq!(p.pseudo_header_sum(NH_ICMPV6, 70_000), checksum::sum(&ph));
    }

    #[test]
    fn hop_limit_decrement() {
        let mut v = PACKET_BYTES.to_vec();
        let mut p = Packet::new_unchecked(&mut v[..]);
        p.decrement_hop_limit();
        assert_eq!(p.hop_limit(), 63);
        assert_eq!(v[..7], PACKET_BYTES[..7]);
        assert_eq!(v[8..], PACKET_BYTES[8..]);
    }
}
