//! `PacketBatch`: a worker's packet buffers, allocated once and reused for every batch.
//!
//! Each slot is `HEADROOM + MAX_PACKET` bytes: room in front for headers a wire format or the TUN
//! offload (`virtio_net_hdr`) needs, and room for a 64 KiB super-packet, so TUN offloads and UDP
//! GSO/GRO need no new buffers.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Bytes kept free in front of each packet (virtio_net_hdr 10 + VXLAN 8 + Ethernet 14).
pub const HEADROOM: usize = 32;
/// Largest packet a slot holds (an IPv4 datagram, or a TUN GSO super-packet).
pub const MAX_PACKET: usize = 65_536;
/// Size of one slot.
pub const SLOT_LEN: usize = HEADROOM + MAX_PACKET;

/// Per-slot metadata of a filled slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Bytes of packet data, starting at `HEADROOM`.
    pub len: usize,
    /// Peer address (destination when sending, source when received).
    pub addr: SocketAddrV4,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            len: 0,
            addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        }
    }
}

/// `capacity` slots plus their metadata.
#[derive(Debug)]
pub struct PacketBatch {
    buf: Box<[u8]>,
    meta: Box<[Meta]>,
    capacity: usize,
}

impl PacketBatch {
    /// Allocates `capacity` slots (pages are touched only as packets are written).
    pub fn new(capacity: usize) -> PacketBatch {
        PacketBatch {
            buf: vec![0u8; capacity * SLOT_LEN].into_boxed_slice(),
            meta: vec![Meta::default(); capacity].into_boxed_slice(),
            capacity,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The whole slot area (for batched receives into every slot at once).
    pub fn slots_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Writable packet area of slot `i` (after the headroom).
    #[inline]
    pub fn packet_area_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.buf[i * SLOT_LEN + HEADROOM..(i + 1) * SLOT_LEN]
    }

    /// The packet in slot `i`, `meta(i).len` bytes.
    #[inline]
    pub fn packet(&self, i: usize) -> &[u8] {
        let start = i * SLOT_LEN + HEADROOM;
        &self.buf[start..start + self.meta[i].len]
    }

    /// Metadata of slot `i`.
    #[inline]
    pub fn meta(&self, i: usize) -> Meta {
        self.meta[i]
    }

    /// Sets the metadata of slot `i`.
    #[inline]
    pub fn set_meta(&mut self, i: usize, m: Meta) {
        self.meta[i] = m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint() {
        let mut b = PacketBatch::new(3);
        for i in 0..3 {
            b.packet_area_mut(i)[..4].copy_from_slice(&[i as u8; 4]);
            b.set_meta(
                i,
                Meta {
                    len: 4,
                    addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, i as u16),
                },
            );
        }
        for i in 0..3 {
            assert_eq!(b.packet(i), &[i as u8; 4]);
            assert_eq!(b.meta(i).addr.port(), i as u16);
            assert_eq!(b.packet_area_mut(i).len(), MAX_PACKET);
        }
        assert_eq!(b.slots_mut().len(), 3 * SLOT_LEN);
    }
}
