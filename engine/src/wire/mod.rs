//! Views over packet bytes, in the manner of smoltcp's `wire` module.
//!
//! Each format has a `Packet<T: AsRef<[u8]>>` view with field accessors whose offsets live in a private
//! `field` module. When parsing untrusted input it is *necessary* to construct the view with
//! `Packet::new_checked`, which validates every length the accessors rely on; once that succeeded no
//! accessor can panic. When emitting into a buffer of known size, `Packet::new_unchecked` is used.
//!
//! Nothing here allocates or performs I/O.
//!
//! [`Wire`] names the two ways weft carries an inner packet in UDP: flannel's udp format (no header
//! at all) and VXLAN as Linux's vxlan driver speaks it ([`vxlan`]).

pub mod icmp;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod l4;
pub mod tcp;
pub mod udp;
pub mod vxlan;

/// Byte range of a field inside a header.
pub(crate) type Field = core::ops::Range<usize>;

/// The big-endian 16-bit field at `f` in `d`.
#[inline]
pub(crate) fn be16(d: &[u8], f: Field) -> u16 {
    u16::from_be_bytes([d[f.start], d[f.start + 1]])
}

/// Why bytes could not be read as a packet. Each variant maps to one drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Shorter than the fixed header.
    Truncated,
    /// The IP version nibble is not 4.
    NotIpv4,
    /// The header length field is below 20 bytes or beyond the buffer.
    BadHeaderLen,
    /// The total length field differs from the number of bytes received.
    LengthMismatch,
    /// The header checksum does not verify.
    BadChecksum,
    /// A VXLAN header whose flags are not exactly the I bit, or whose reserved bits are not zero.
    BadFlags,
    /// The IP version nibble is not 6.
    NotIpv6,
    /// An IPv6 jumbogram (RFC 2675): payload length 0 with a hop-by-hop header, or a jumbo payload
    /// option.
    Jumbo,
    /// More IPv6 extension headers than [`ipv6::MAX_EXT_HEADERS`].
    ExtChainTooLong,
    /// An IPv6 hop-by-hop header anywhere but directly after the fixed header.
    BadExtHeader,
}

/// How inner packets are carried in UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// flannel's udp backend: the UDP payload is the bare IPv4 packet (28 bytes of overhead).
    Udp,
    /// VXLAN (RFC 7348) as Linux's vxlan driver speaks it: 8-byte header carrying `vni`, then an
    /// inner Ethernet header from `mac` (this host's VTEP MAC) to the peer's VTEP MAC (50 bytes of
    /// overhead).
    ///
    /// A VNI is 24 bits; higher bits of `vni` are ignored on both send and receive (the daemon's
    /// configuration check rejects such a VNI before it gets here).
    Vxlan {
        /// VXLAN network identifier (24 bits; flannel's default is 1).
        vni: u32,
        /// This host's VTEP MAC: the source of every inner Ethernet header we send, and the only
        /// destination we accept.
        mac: [u8; 6],
    },
}

impl Wire {
    /// Bytes each packet grows by on the underlay: outer IPv4 (20) + UDP (8), plus VXLAN (8) and
    /// inner Ethernet (14) for vxlan. The TUN MTU is the underlay MTU minus this.
    pub const fn overhead(&self) -> u32 {
        (ipv4::HEADER_LEN + UDP_HEADER_LEN + self.header_len()) as u32
    }

    /// Bytes this wire format puts in front of the inner packet inside the UDP payload: 0 for udp,
    /// 22 (VXLAN + inner Ethernet) for vxlan.
    pub const fn header_len(&self) -> usize {
        match self {
            Wire::Udp => 0,
            Wire::Vxlan { .. } => vxlan::HEADER_LEN,
        }
    }
}

/// Length of a UDP header (RFC 768).
pub const UDP_HEADER_LEN: usize = udp::HEADER_LEN;

/// Result of a wire operation.
pub type Result<T> = core::result::Result<T, Error>;

/// Internet checksum helpers (RFC 1071, RFC 1624).
pub mod checksum {
    /// One's complement sum of `data` as big-endian 16-bit words (an odd last byte padded with
    /// zero), folded to 16 bits (not inverted).
    pub fn sum(data: &[u8]) -> u16 {
        fold(accumulate(data, 0))
    }

    /// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero) to `acc`,
    /// unfolded. A 64-bit accumulator cannot overflow for any buffer that fits in memory.
    #[inline]
    pub fn accumulate(data: &[u8], mut acc: u64) -> u64 {
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            acc += u64::from(u16::from_be_bytes([*last, 0]));
        }
        acc
    }

    /// Folds an accumulator into 16 bits with end-around carry.
    #[inline]
    pub fn fold(mut acc: u64) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    /// One's complement sum of two folded sums.
    #[inline]
    pub fn combine(a: u16, b: u16) -> u16 {
        fold(u64::from(a) + u64::from(b))
    }

    /// The folded (not inverted) IPv4 pseudo-header sum for a TCP or UDP segment of `length`
    /// bytes from `src` to `dst` (4-byte addresses).
    #[inline]
    pub fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8, length: u16) -> u16 {
        let acc = accumulate(src, accumulate(dst, 0));
        fold(acc + u64::from(protocol) + u64::from(length))
    }

    /// The checksum field value for `data` (the inverted one's complement sum).
    pub fn compute(data: &[u8]) -> u16 {
        !sum(data)
    }

    /// RFC 1624 eqn. 3: the new checksum after one 16-bit word of the covered data changed.
    pub fn update(checksum: u16, old_word: u16, new_word: u16) -> u16 {
        let acc = u64::from(!checksum) + u64::from(!old_word) + u64::from(new_word);
        !fold(acc)
    }
}
