//! `PacketBatch`: a worker's packet buffers, allocated once and reused for every batch.
//!
//! Each slot is its own `Vec<u8>` of `HEADROOM + MAX_PACKET` bytes: room in front for headers a
//! wire format or the TUN offload (`virtio_net_hdr`) needs, and room for a 64 KiB super-packet or
//! a UDP GRO run. Separate vectors (rather than one slab) let the TUN offload code split
//! super-packets into them and coalesce into them without copying between layouts.

use crate::udp::UnderlayAddr;
use std::net::SocketAddrV4;

/// Bytes kept free in front of each packet (virtio_net_hdr 10 + VXLAN 8 + Ethernet 14).
pub const HEADROOM: usize = 32;
// The vxlan wire format writes its headers into the headroom in front of the packet.
const _: () = assert!(HEADROOM >= crate::wire::vxlan::HEADER_LEN);
/// Largest packet a slot holds (an IPv4 datagram, a TUN GSO super-packet or a UDP GRO run).
pub const MAX_PACKET: usize = 65_536;
/// Size of one slot.
pub const SLOT_LEN: usize = HEADROOM + MAX_PACKET;

/// Per-slot metadata of a filled slot; `A` is the peer's address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta<A = SocketAddrV4> {
    /// Bytes of packet data, starting at `HEADROOM`.
    pub len: usize,
    /// Peer address (destination when sending, source when received).
    pub addr: A,
    /// When sending: the inner packet's flow key ([`crate::spread::flow_key`]); one UDP GSO
    /// message carries one key only, so a peer spreading by inner flow hands it to one worker.
    pub flow: u32,
}

impl<A: UnderlayAddr> Default for Meta<A> {
    fn default() -> Self {
        Meta {
            len: 0,
            addr: A::UNSPECIFIED,
            flow: 0,
        }
    }
}

/// `capacity` slots plus their metadata, for peers of address family `A`.
#[derive(Debug)]
pub struct PacketBatch<A = SocketAddrV4> {
    slots: Vec<Vec<u8>>,
    meta: Box<[Meta<A>]>,
}

impl<A: UnderlayAddr> PacketBatch<A> {
    /// Allocates `capacity` slots (pages are touched only as packets are written).
    pub fn new(capacity: usize) -> PacketBatch<A> {
        PacketBatch {
            slots: (0..capacity).map(|_| vec![0u8; SLOT_LEN]).collect(),
            meta: vec![Meta::default(); capacity].into_boxed_slice(),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The slots themselves (each `SLOT_LEN` bytes), for batched I/O into several at once.
    pub fn slots_mut(&mut self) -> &mut [Vec<u8>] {
        &mut self.slots
    }

    /// Writable packet area of slot `i` (after the headroom).
    #[inline]
    pub fn packet_area_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.slots[i][HEADROOM..]
    }

    /// The packet in slot `i`, `meta(i).len` bytes.
    #[inline]
    pub fn packet(&self, i: usize) -> &[u8] {
        &self.slots[i][HEADROOM..HEADROOM + self.meta[i].len]
    }

    /// The packet in slot `i` (`meta(i).len` bytes) with the `header` bytes in front of it: the
    /// datagram a wire format with a `header`-byte header sends.
    ///
    /// # Panics
    /// If `header` exceeds [`HEADROOM`].
    #[inline]
    pub fn frame(&self, i: usize, header: usize) -> &[u8] {
        &self.slots[i][HEADROOM - header..HEADROOM + self.meta[i].len]
    }

    /// `len` bytes of slot `i`'s packet area with the `header` bytes in front of it, writable (for
    /// encapsulating in place).
    ///
    /// # Panics
    /// If `header` exceeds [`HEADROOM`] or `len` exceeds [`MAX_PACKET`].
    #[inline]
    pub fn frame_mut(&mut self, i: usize, header: usize, len: usize) -> &mut [u8] {
        &mut self.slots[i][HEADROOM - header..HEADROOM + len]
    }

    /// The first `len` bytes of slot `i`'s packet area (fewer if the area is shorter): what a
    /// receive of `len` bytes at [`HEADROOM`] put there.
    #[inline]
    pub fn filled(&self, i: usize, len: usize) -> &[u8] {
        let area = &self.slots[i][HEADROOM..];
        &area[..len.min(area.len())]
    }

    /// Metadata of every slot, in order.
    #[inline]
    pub fn metas(&self) -> &[Meta<A>] {
        &self.meta
    }

    /// Metadata of slot `i`.
    #[inline]
    pub fn meta(&self, i: usize) -> Meta<A> {
        self.meta[i]
    }

    /// Sets the metadata of slot `i`.
    #[inline]
    pub fn set_meta(&mut self, i: usize, m: Meta<A>) {
        self.meta[i] = m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn slots_are_disjoint() {
        let mut b = PacketBatch::<SocketAddrV4>::new(3);
        for i in 0..3 {
            b.packet_area_mut(i)[..4].copy_from_slice(&[i as u8; 4]);
            b.set_meta(
                i,
                Meta {
                    len: 4,
                    addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, i as u16),
                    flow: 0,
                },
            );
        }
        for i in 0..3 {
            assert_eq!(b.packet(i), &[i as u8; 4]);
            assert_eq!(b.meta(i).addr.port(), i as u16);
            assert_eq!(b.packet_area_mut(i).len(), MAX_PACKET);
        }
        assert_eq!(b.slots_mut().len(), 3);
        b.frame_mut(1, 2, 4)[..2].copy_from_slice(&[9, 9]);
        assert_eq!(b.frame(1, 2), &[9, 9, 1, 1, 1, 1]);
        assert_eq!(b.frame(2, 0), b.packet(2));
        assert_eq!(b.filled(2, 4), &[2; 4]);
        assert_eq!(b.filled(2, SLOT_LEN).len(), MAX_PACKET);
        assert_eq!(b.metas().len(), 3);
        assert_eq!(b.metas()[1], b.meta(1));
        assert!(b.slots_mut().iter().all(|s| s.len() == SLOT_LEN));
    }
}
