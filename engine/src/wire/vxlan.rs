//! VXLAN header (RFC 7348 §5) followed by the inner Ethernet header, as Linux's vxlan driver puts
//! them in front of every inner packet:
//!
//! ```text
//!  0      1      2      3      4      5      6      7
//! ┌──────┬────────────────────┬────────────────────┬──────┐
//! │flags │ reserved (0)       │ VNI (24 bits, BE)  │ rsvd │  VXLAN, flags = 0x08 (I bit)
//! ├──────┴────────────────────┴──────┬─────────────┴──────┤
//! │ destination MAC (receiver's VTEP)│ source MAC …       │  inner Ethernet (no VLAN tag,
//! ├──────────────────────────────────┼────────────┬───────┘  no FCS)
//! │ … source MAC (sender's VTEP)     │ ethertype  │ inner packet …
//! └──────────────────────────────────┴────────────┘
//! ```
//!
//! The view only reads and writes these 22 bytes; which VNI and MACs are acceptable is decided by
//! [`crate::decap`]. The kernel drops a frame whose flags are not exactly the I bit or whose
//! reserved bits are set (`vxlan_rcv`: "invalid vxlan flags"), so [`Packet::header_valid`] does too.

use super::{Error, Field, Result};

mod field {
    use super::Field;
    pub(super) const FLAGS: usize = 0;
    pub(super) const RESERVED_0: Field = 1..4;
    pub(super) const VNI: Field = 4..7;
    pub(super) const RESERVED_1: usize = 7;
    pub(super) const DST_MAC: Field = 8..14;
    pub(super) const SRC_MAC: Field = 14..20;
    pub(super) const ETHERTYPE: Field = 20..22;
    pub(super) const PAYLOAD: usize = 22;
}

/// Length of the VXLAN header.
pub const VXLAN_HEADER_LEN: usize = 8;
/// Length of the inner Ethernet header (no VLAN tag).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Bytes in front of the inner packet: VXLAN header plus inner Ethernet header.
pub const HEADER_LEN: usize = VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN;
const _: () = assert!(HEADER_LEN == field::PAYLOAD);
/// The only flags value accepted and sent: the I bit ("VNI valid").
pub const FLAGS_VNI_VALID: u8 = 0x08;
/// Largest VNI (24 bits).
pub const VNI_MASK: u32 = 0x00ff_ffff;
/// Ethertype of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype of IPv6 (frames over the IPv6 underlay).
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// A read/write view of a VXLAN header, inner Ethernet header and inner packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without any check; accessors may panic on buffers shorter than
    /// [`HEADER_LEN`].
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps `buffer` after [`Packet::check_len`]; the only constructor to use on untrusted input.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that both headers fit (`Truncated` otherwise); after that no accessor panics.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The VXLAN flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the flags are exactly the I bit and every reserved bit is zero.
    #[inline]
    pub fn header_valid(&self) -> bool {
        let d = self.buffer.as_ref();
        let mut word = [0u8; 8];
        word.copy_from_slice(&d[..VXLAN_HEADER_LEN]);
        // One load: flags and the reserved bytes 1..4 and 7 under a mask, the VNI masked out.
        u64::from_be_bytes(word) & 0xffff_ffff_0000_00ff == u64::from(FLAGS_VNI_VALID) << 56
    }

    /// The 24-bit VXLAN network identifier.
    #[inline]
    pub fn vni(&self) -> u32 {
        let d = self.buffer.as_ref();
        u32::from_be_bytes([
            0,
            d[field::VNI.start],
            d[field::VNI.start + 1],
            d[field::VNI.start + 2],
        ])
    }

    /// Inner Ethernet destination MAC.
    #[inline]
    pub fn dst_mac(&self) -> [u8; 6] {
        mac_at(self.buffer.as_ref(), field::DST_MAC)
    }

    /// Inner Ethernet source MAC.
    #[inline]
    pub fn src_mac(&self) -> [u8; 6] {
        mac_at(self.buffer.as_ref(), field::SRC_MAC)
    }

    /// Inner Ethernet type.
    #[inline]
    pub fn ethertype(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::ETHERTYPE.start], d[field::ETHERTYPE.start + 1]])
    }

    /// The inner packet (everything after the Ethernet header).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

#[inline]
fn mac_at(d: &[u8], f: Field) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&d[f]);
    m
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags byte.
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Zeroes the reserved bytes (1..4 and 7).
    #[inline]
    pub fn clear_reserved(&mut self) {
        let d = self.buffer.as_mut();
        d[field::RESERVED_0].fill(0);
        d[field::RESERVED_1] = 0;
    }

    /// Sets the VNI (its low 24 bits).
    #[inline]
    pub fn set_vni(&mut self, vni: u32) {
        let b = (vni & VNI_MASK).to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..]);
    }

    /// Sets the inner Ethernet destination MAC.
    #[inline]
    pub fn set_dst_mac(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::DST_MAC].copy_from_slice(&mac);
    }

    /// Sets the inner Ethernet source MAC.
    #[inline]
    pub fn set_src_mac(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::SRC_MAC].copy_from_slice(&mac);
    }

    /// Sets the inner Ethernet type.
    #[inline]
    pub fn set_ethertype(&mut self, ethertype: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
    }

    /// The inner packet, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// The header fields of a VXLAN frame, parsed or to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// Inner Ethernet destination (the receiver's VTEP MAC).
    pub dst_mac: [u8; 6],
    /// Inner Ethernet source (the sender's VTEP MAC).
    pub src_mac: [u8; 6],
    /// Inner Ethernet type.
    pub ethertype: u16,
}

impl Repr {
    /// Reads the headers of a checked packet; `BadFlags` unless [`Packet::header_valid`].
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if !packet.header_valid() {
            return Err(Error::BadFlags);
        }
        Ok(Repr {
            vni: packet.vni(),
            dst_mac: packet.dst_mac(),
            src_mac: packet.src_mac(),
            ethertype: packet.ethertype(),
        })
    }

    /// Bytes [`Repr::emit`] writes.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes both headers (flags = I bit, reserved zero) into the first [`HEADER_LEN`] bytes of
    /// `packet`; the payload is left alone.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_flags(FLAGS_VNI_VALID);
        packet.clear_reserved();
        packet.set_vni(self.vni);
        packet.set_dst_mac(self.dst_mac);
        packet.set_src_mac(self.src_mac);
        packet.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as Linux's vxlan driver sends it (VNI 1, from VTEP 02:…:02 to VTEP 02:…:01) around
    /// a 4-byte stand-in payload.
    #[rustfmt::skip]
    static PACKET_BYTES: [u8; 26] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01,
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02,
        0x08, 0x00,
        0xaa, 0xbb, 0xcc, 0xdd,
    ];

    const OURS: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn repr() -> Repr {
        Repr {
            vni: 1,
            dst_mac: OURS,
            src_mac: PEER,
            ethertype: ETHERTYPE_IPV4,
        }
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET_BYTES[..]).expect("golden frame is long enough");
        assert_eq!(p.flags(), FLAGS_VNI_VALID);
        assert!(p.header_valid());
        assert_eq!(p.vni(), 1);
        assert_eq!(p.dst_mac(), OURS);
        assert_eq!(p.src_mac(), PEER);
        assert_eq!(p.ethertype(), ETHERTYPE_IPV4);
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
    }

    #[test]
    fn construct() {
        let mut v = [0xffu8; 26];
        let mut p = Packet::new_unchecked(&mut v[..]);
        p.set_flags(FLAGS_VNI_VALID);
        p.clear_reserved();
        p.set_vni(1);
        p.set_dst_mac(OURS);
        p.set_src_mac(PEER);
        p.set_ethertype(ETHERTYPE_IPV4);
        p.payload_mut().copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(v, PACKET_BYTES);
    }

    #[test]
    fn parse() {
        let p = Packet::new_checked(&PACKET_BYTES[..]).expect("long enough");
        assert_eq!(Repr::parse(&p), Ok(repr()));
    }

    #[test]
    fn emit() {
        let mut v = [0xffu8; 26];
        v[HEADER_LEN..].copy_from_slice(&PACKET_BYTES[HEADER_LEN..]);
        let r = repr();
        assert_eq!(r.buffer_len(), HEADER_LEN);
        r.emit(&mut Packet::new_unchecked(&mut v[..]));
        assert_eq!(v, PACKET_BYTES);
    }

    #[test]
    fn vni_is_24_bits_big_endian() {
        let mut v = PACKET_BYTES;
        let mut p = Packet::new_unchecked(&mut v[..]);
        p.set_vni(0x0123_4567); // the top byte is not part of a VNI
        assert_eq!(&v[4..8], &[0x23, 0x45, 0x67, 0x00]);
        assert_eq!(Packet::new_unchecked(&v[..]).vni(), 0x23_4567);
    }

    #[test]
    fn bad_flags_and_reserved() {
        for (at, value) in [
            (0, 0x00),
            (0, 0x88),
            (0, 0x0c),
            (1, 1),
            (2, 0x80),
            (3, 1),
            (7, 1),
        ] {
            let mut v = PACKET_BYTES;
            v[at] = value;
            let p = Packet::new_checked(&v[..]).expect("long enough");
            assert!(!p.header_valid(), "byte {at} = {value:#04x}");
            assert_eq!(Repr::parse(&p), Err(Error::BadFlags));
        }
    }

    #[test]
    fn truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&PACKET_BYTES[..len]).err(),
                Some(Error::Truncated)
            );
            assert_eq!(
                Repr::parse(&Packet::new_unchecked(&PACKET_BYTES[..len])),
                Err(Error::Truncated)
            );
        }
        let bare = Packet::new_checked(&PACKET_BYTES[..HEADER_LEN]).expect("headers only");
        assert!(bare.payload().is_empty());
    }
}
