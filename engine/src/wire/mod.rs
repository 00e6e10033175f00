//! Views over packet bytes, in the manner of smoltcp's `wire` module.
//!
//! Each format has a `Packet<T: AsRef<[u8]>>` view with field accessors whose offsets live in a private
//! `field` module. When parsing untrusted input it is *necessary* to construct the view with
//! `Packet::new_checked`, which validates every length the accessors rely on; once that succeeded no
//! accessor can panic. When emitting into a buffer of known size, `Packet::new_unchecked` is used.
//!
//! Nothing here allocates or performs I/O.

pub mod icmp;
pub mod ipv4;

/// Byte range of a field inside a header.
pub(crate) type Field = core::ops::Range<usize>;

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
}

/// Result of a wire operation.
pub type Result<T> = core::result::Result<T, Error>;

/// Internet checksum helpers (RFC 1071, RFC 1624).
pub mod checksum {
    /// One's complement sum of `data` as big-endian 16-bit words, folded to 16 bits (not inverted).
    pub fn sum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            acc += u32::from(u16::from_be_bytes([*last, 0]));
        }
        fold(acc)
    }

    /// Folds a 32-bit accumulator into 16 bits with end-around carry.
    pub fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    /// The checksum field value for `data` (the inverted one's complement sum).
    pub fn compute(data: &[u8]) -> u16 {
        !sum(data)
    }

    /// RFC 1624 eqn. 3: the new checksum after one 16-bit word of the covered data changed.
    pub fn update(checksum: u16, old_word: u16, new_word: u16) -> u16 {
        let acc = u32::from(!checksum) + u32::from(!old_word) + u32::from(new_word);
        !fold(acc)
    }
}
