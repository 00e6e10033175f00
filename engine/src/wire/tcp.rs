//! TCP header view (RFC 9293 §3.1): what segmentation offload and checksum completion need.

use super::{be16, Error, Field, Result};

mod field {
    use super::Field;
    pub(super) const SRC_PORT: Field = 0..2;
    pub(super) const DST_PORT: Field = 2..4;
    pub(super) const SEQ_NUM: Field = 4..8;
    pub(super) const ACK_NUM: Field = 8..12;
    pub(super) const DATA_OFF: usize = 12;
    pub(super) const FLAGS: usize = 13;
    pub(super) const WINDOW: Field = 14..16;
    pub(super) const CHECKSUM: Field = 16..18;
    pub(super) const OPTIONS: usize = 20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::OPTIONS;
/// Length of the longest header (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;
/// Offset of the checksum field from the start of the header.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// TCP flag bits (the byte at offset 13).
pub mod flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment number is significant.
    pub const ACK: u8 = 0x10;
}

/// A read/write view of a TCP segment (header and payload).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without any check; accessors may panic on short buffers. Accessors of the
    /// fixed header ([`HEADER_LEN`] bytes) are safe once the buffer is that long.
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

    /// Checks that the fixed header fits (`Truncated`) and that the data offset is at least 20
    /// bytes and within the buffer (`BadHeaderLen`); after that no accessor panics.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN || hl > len {
            return Err(Error::BadHeaderLen);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        let d = &self.buffer.as_ref()[field::SEQ_NUM];
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    /// Acknowledgment number.
    #[inline]
    pub fn ack_number(&self) -> u32 {
        let d = &self.buffer.as_ref()[field::ACK_NUM];
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    /// Header length in bytes (data offset × 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The data offset byte whole: the header length and the reserved and AE bits.
    #[inline]
    pub fn data_offset_byte(&self) -> u8 {
        self.buffer.as_ref()[field::DATA_OFF]
    }

    /// The flags byte (see [`flags`]).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Receive window.
    #[inline]
    pub fn window(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WINDOW)
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The options (the header after its fixed 20 bytes).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..self.header_len()]
    }

    /// The payload (everything after the header).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags byte.
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, checksum: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40000 → 5201, seq 1000, ack 0x12345678, data offset 8 (12 bytes of timestamp option),
    /// ACK|PSH, window 501, checksum 0xabcd, then 3 bytes of payload.
    #[rustfmt::skip]
    static PACKET_BYTES: [u8; 35] = [
        0x9c, 0x40, 0x14, 0x51, 0x00, 0x00, 0x03, 0xe8, 0x12, 0x34, 0x56, 0x78,
        0x80, 0x18, 0x01, 0xf5, 0xab, 0xcd, 0x00, 0x00,
        1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9,
        0xaa, 0xbb, 0xcc,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET_BYTES[..]).expect("golden segment is valid");
        assert_eq!(p.src_port(), 40000);
        assert_eq!(p.dst_port(), 5201);
        assert_eq!(p.seq_number(), 1000);
        assert_eq!(p.ack_number(), 0x1234_5678);
        assert_eq!(p.header_len(), 32);
        assert_eq!(p.data_offset_byte(), 0x80);
        assert_eq!(p.flags(), flags::ACK | flags::PSH);
        assert_eq!(p.window(), 501);
        assert_eq!(p.checksum(), 0xabcd);
        assert_eq!(p.options(), &PACKET_BYTES[20..32]);
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc]);
    }

    #[test]
    fn construct() {
        let mut v = PACKET_BYTES;
        let mut p = Packet::new_unchecked(&mut v[..]);
        p.set_flags(flags::ACK);
        p.set_checksum(0x0102);
        assert_eq!(v[13], 0x10);
        assert_eq!(v[16..18], [0x01, 0x02]);
        assert_eq!(v[..13], PACKET_BYTES[..13]);
        assert_eq!(v[18..], PACKET_BYTES[18..]);
    }

    #[test]
    fn impossible_len() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&PACKET_BYTES[..len]).err(),
                Some(Error::Truncated)
            );
        }
        // The options do not fit.
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..31]).err(),
            Some(Error::BadHeaderLen)
        );
        let mut short = PACKET_BYTES;
        short[12] = 0x40; // 16 bytes
        assert_eq!(
            Packet::new_checked(&short[..]).err(),
            Some(Error::BadHeaderLen)
        );
        let bare = Packet::new_checked(&PACKET_BYTES[..32]).expect("header only");
        assert!(bare.payload().is_empty());
    }
}
