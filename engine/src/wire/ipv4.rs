//! IPv4 header view (RFC 791): only what forwarding needs.

use super::{checksum, Error, Field, Result};
use std::net::Ipv4Addr;

mod field {
    use super::Field;
    pub(super) const VER_IHL: usize = 0;
    pub(super) const TOS: usize = 1;
    pub(super) const LENGTH: Field = 2..4;
    pub(super) const IDENT: Field = 4..6;
    pub(super) const FLG_OFF: Field = 6..8;
    pub(super) const TTL: usize = 8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: Field = 10..12;
    pub(super) const SRC_ADDR: Field = 12..16;
    pub(super) const DST_ADDR: Field = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// The more-fragments flag and the fragment offset in [`Packet::flags_and_offset`].
const MF_AND_OFFSET: u16 = 0x3fff;

/// A read/write view of an IPv4 packet.
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

    /// Checks, in this order, that the fixed header fits, the version is 4, the header length
    /// is sane and fits, and the total length equals the buffer length (no silent truncation
    /// or trailing bytes).
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::NotIpv4);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN || hl > data.len() {
            return Err(Error::BadHeaderLen);
        }
        if usize::from(self.total_len()) != data.len() {
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

    /// IP version nibble.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// Total length field.
    pub fn total_len(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::LENGTH.start], d[field::LENGTH.start + 1]])
    }

    /// Type-of-service byte (DSCP and ECN).
    #[inline]
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    /// Flags (reserved, DF, MF) and fragment offset, as the one 16-bit word they share.
    #[inline]
    pub fn flags_and_offset(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::FLG_OFF.start], d[field::FLG_OFF.start + 1]])
    }

    /// Fragment offset in 8-byte units.
    pub fn frag_offset(&self) -> u16 {
        self.flags_and_offset() & 0x1fff
    }

    /// Whether this is a fragment (MF set or an offset): its L4 header and checksum, if any,
    /// cover other fragments too.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.flags_and_offset() & MF_AND_OFFSET != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol number of the payload.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::CHECKSUM.start], d[field::CHECKSUM.start + 1]])
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        addr_at(self.buffer.as_ref(), field::SRC_ADDR)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        addr_at(self.buffer.as_ref(), field::DST_ADDR)
    }

    /// The payload (everything after the header, up to the end of the buffer).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// The folded (not inverted) pseudo-header sum of a TCP or UDP payload of `length` bytes
    /// (RFC 9293 §3.1, RFC 768): what a `CHECKSUM_PARTIAL` sender leaves in the checksum field.
    #[inline]
    pub fn pseudo_header_sum(&self, length: u16) -> u16 {
        let d = self.buffer.as_ref();
        checksum::pseudo_header(
            &d[field::SRC_ADDR],
            &d[field::DST_ADDR],
            self.protocol(),
            length,
        )
    }

    /// Whether the header checksum verifies (always true under `cfg(fuzzing)`, so fuzzers get past it).
    pub fn verify_checksum(&self) -> bool {
        if cfg!(fuzzing) {
            return true;
        }
        checksum::sum(&self.buffer.as_ref()[..self.header_len()]) == 0xffff
    }
}

#[inline]
fn addr_at(d: &[u8], f: Field) -> Ipv4Addr {
    Ipv4Addr::new(d[f.start], d[f.start + 1], d[f.start + 2], d[f.start + 3])
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the version to 4 and the header length in bytes (a multiple of 4).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }

    /// Sets the type-of-service byte.
    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::TOS] = tos;
    }

    /// Sets the total length field.
    pub fn set_total_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets identification, flags and fragment offset to zero.
    pub fn clear_ident_and_frag(&mut self) {
        let d = self.buffer.as_mut();
        d[field::IDENT].fill(0);
        d[field::FLG_OFF].fill(0);
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the protocol number.
    pub fn set_protocol(&mut self, proto: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = proto;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[hl..]
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let d = self.buffer.as_mut();
        d[field::CHECKSUM].fill(0);
        let c = checksum::compute(&d[..hl]);
        d[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }

    /// Decrements the TTL by one and patches the checksum incrementally (RFC 1624), as a router does.
    /// The caller has checked that the TTL is above 1.
    pub fn decrement_ttl(&mut self) {
        let ttl = self.ttl();
        let proto = self.protocol();
        let old = u16::from_be_bytes([ttl, proto]);
        let new = u16::from_be_bytes([ttl.wrapping_sub(1), proto]);
        let c = checksum::update(self.checksum(), old, new);
        let d = self.buffer.as_mut();
        d[field::TTL] = ttl.wrapping_sub(1);
        d[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ICMP echo request 10.1.1.2 → 10.1.2.2, TTL 64, 28 bytes (header + 8 bytes of ICMP).
    pub(crate) static PACKET_BYTES: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 1, 1, 2, 10, 1,
        2, 2, 0x08, 0x00, 0xf7, 0xfe, 0x00, 0x01, 0x00, 0x00,
    ];

    fn golden() -> Vec<u8> {
        let mut v = PACKET_BYTES.to_vec();
        Packet::new_unchecked(&mut v[..]).fill_checksum();
        v
    }

    #[test]
    fn deconstruct() {
        let v = golden();
        let p = Packet::new_checked(&v[..]).expect("golden packet is valid");
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), PROTO_ICMP);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 1, 1, 2));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 1, 2, 2));
        assert_eq!(p.frag_offset(), 0);
        assert!(p.verify_checksum());
    }

    #[test]
    fn construct() {
        let mut v = vec![0u8; 28];
        let mut p = Packet::new_unchecked(&mut v[..]);
        p.set_version_and_header_len(20);
        p.set_total_len(28);
        p.set_ttl(64);
        p.set_protocol(PROTO_ICMP);
        p.set_src_addr(Ipv4Addr::new(10, 1, 1, 2));
        p.set_dst_addr(Ipv4Addr::new(10, 1, 2, 2));
        v[4..8].copy_from_slice(&PACKET_BYTES[4..8]);
        v[20..].copy_from_slice(&PACKET_BYTES[20..]);
        Packet::new_unchecked(&mut v[..]).fill_checksum();
        assert_eq!(v, golden());
    }

    #[test]
    fn checked_errors() {
        let v = golden();
        assert_eq!(Packet::new_checked(&v[..19]).err(), Some(Error::Truncated));
        let mut six = v.clone();
        six[0] = 0x60;
        assert_eq!(Packet::new_checked(&six[..]).err(), Some(Error::NotIpv4));
        let mut short_ihl = v.clone();
        short_ihl[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&short_ihl[..]).err(),
            Some(Error::BadHeaderLen)
        );
        let mut long_ihl = v.clone();
        long_ihl[0] = 0x4f; // 60 bytes of header in a 28-byte packet
        assert_eq!(
            Packet::new_checked(&long_ihl[..]).err(),
            Some(Error::BadHeaderLen)
        );
        assert_eq!(
            Packet::new_checked(&v[..27]).err(),
            Some(Error::LengthMismatch)
        );
        let mut longer = v.clone();
        longer.push(0);
        assert_eq!(
            Packet::new_checked(&longer[..]).err(),
            Some(Error::LengthMismatch)
        );
    }

    #[test]
    fn ttl_decrement_matches_full_recompute() {
        let mut state = 0x1234_5678_u32;
        for _ in 0..10_000 {
            let mut v = golden();
            for b in &mut v[..20] {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *b = state as u8;
            }
            v[0] = 0x45;
            v[8] = (state >> 8) as u8 | 2; // TTL ≥ 2
            Packet::new_unchecked(&mut v[..]).fill_checksum();
            let mut p = Packet::new_unchecked(&mut v[..]);
            let ttl = p.ttl();
            p.decrement_ttl();
            assert_eq!(p.ttl(), ttl - 1);
            assert!(
                p.verify_checksum(),
                "incremental checksum wrong for {:02x?}",
                &v[..20]
            );
        }
    }
}
