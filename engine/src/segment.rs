//! Cutting a TSO/USO super-packet in place: no copy of the payload.
//!
//! A read from a TUN device opened with `IFF_VNET_HDR` and TSO/USO returns a virtio_net_hdr and a
//! super-packet of up to 64 KiB: one IPv4 or IPv6 header (with the extension headers
//! [`ipv6::Packet::transport`] walks), one TCP (or UDP) header and a payload that the receiver of
//! the packets must see cut into `gso_size` pieces. [`Cut::plan`] checks the header against the
//! packet; [`Cut::write_header`] then writes segment *i*'s own IP and TCP/UDP headers (IPv4 total
//! length, IP ID + *i*, header checksum; IPv6 payload length; TCP sequence number + *i* ×
//! `gso_size`, FIN and PSH only on the last segment, CWR only on the first; UDP length) into a
//! header area the caller owns, and [`Cut::payload`] names segment *i*'s payload inside the read
//! buffer, so a UDP GSO send can gather header and payload slices without the payload ever being
//! copied in user space.
//!
//! The same cut serves the receive side: a decapsulated inner TCP packet longer than the TUN MTU
//! (a peer's kernel handed its GSO super-packet across a veth underlay whole) is planned with
//! [`Cut::for_mtu`] and either written as one GSO packet ([`Cut::write_gso_header`]) for the
//! kernel to cut, or cut here.
//!
//! The TCP/UDP checksum of each segment is computed incrementally: the pseudo-header sum of the
//! addresses and protocol is summed once per super-packet; per segment only its length, its
//! header (a few dozen bytes) and its payload are added, the payload read once and never written.
//! The segments are byte for byte what tun-rs's `gso_split` (wireguard-go's algorithm) produces,
//! which the tests check.

use crate::wire::{checksum, ipv6};
use std::ops::Range;

/// virtio_net_hdr `gso_type` of IPv4 TCP (TSO).
pub const GSO_TCPV4: u8 = 1;
/// virtio_net_hdr `gso_type` of IPv6 TCP (TSO6).
pub const GSO_TCPV6: u8 = 4;
/// virtio_net_hdr `gso_type` of UDP (USO, IPv4 and IPv6).
pub const GSO_UDP_L4: u8 = 5;
/// virtio_net_hdr `gso_type` bit: the TCP segments carry ECN (CWR only on the first).
pub const GSO_ECN: u8 = 0x80;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: complete the checksum at `csum_start + csum_offset`.
pub const VNET_F_NEEDS_CSUM: u8 = 1;

/// The fields of a virtio_net_hdr that cutting uses (host byte order, as tun-rs decodes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetHdr {
    /// GSO type (TCPv4 may carry the ECN bit, 0x80).
    pub gso_type: u8,
    /// Bytes of IP (extension headers included) + TCP/UDP header.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Start of the TCP/UDP header (the IPv4 header length; for IPv6, 40 plus the extension
    /// headers).
    pub csum_start: u16,
    /// Offset of the checksum field inside the TCP/UDP header.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// This header with `hdr_len` taken from the packet rather than from the kernel: the IP
    /// header length (`csum_start`) plus 8 for UDP, plus the TCP header's data offset (20 to 60
    /// bytes, else `None`) for TCP. On the forward path the kernel can report the length of the
    /// whole first segment as `hdr_len` (wireguard-go and tun-rs distrust it for that reason);
    /// other GSO types are returned unchanged.
    pub fn with_packet_header_len(self, pkt: &[u8]) -> Option<VnetHdr> {
        let start = usize::from(self.csum_start);
        let l4 = match self.gso_type & 0x7f {
            GSO_UDP_L4 => 8,
            GSO_TCPV4 | GSO_TCPV6 => {
                let len = usize::from(*pkt.get(start + 12)? >> 4) * 4;
                if !(20..=MAX_L4_HEADER).contains(&len) {
                    return None;
                }
                len
            }
            _ => return Some(self),
        };
        Some(VnetHdr {
            hdr_len: u16::try_from(start + l4).ok()?,
            ..self
        })
    }
}

/// Why a super-packet cannot be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutError {
    /// A GSO type other than TCPv4, TCPv6 and UDP; for [`Cut::for_mtu`], a packet that is not
    /// TCP, is a fragment, or carries SYN, RST or URG.
    Unsupported,
    /// The virtio header's lengths do not describe the packet (or the packet is not the IP
    /// version the GSO type names, or its headers do not lead to the TCP/UDP header at
    /// `csum_start`).
    Malformed,
    /// More segments than the caller has room for.
    TooManySegments,
}

/// A checked plan for cutting one super-packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    tcp: bool,
    /// IPv6 (else IPv4).
    v6: bool,
    /// IP header length, IPv6 extension headers included (= csum_start).
    ip_len: usize,
    /// IP + TCP/UDP header length.
    hdr_len: usize,
    gso_size: usize,
    /// Bytes of payload after the headers.
    payload_len: usize,
    segments: usize,
    /// Unfolded sum of the addresses and protocol (the pseudo-header without its length).
    pseudo: u64,
}

/// Longest TCP header (data offset 15); a virtio header claiming more is refused.
pub const MAX_L4_HEADER: usize = 60;
/// Longest IP + TCP/UDP header [`Cut::header_len`] can be: the longest IPv4 header and TCP header;
/// an IPv6 packet whose extension headers make its header longer is refused.
pub const MAX_HEADER: usize = 60 + MAX_L4_HEADER;

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_URG: u8 = 0x20;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

impl Cut {
    /// Checks `hdr` against the super-packet `pkt` (IP header first) and plans its cut into at
    /// most `max_segments` segments. TCPv4 wants an IPv4 packet, TCPv6 an IPv6 one, UDP either;
    /// an IPv6 packet's extension headers must lead, unfragmented, to the TCP/UDP header at
    /// `csum_start`.
    pub fn plan(hdr: VnetHdr, pkt: &[u8], max_segments: usize) -> Result<Cut, CutError> {
        // The ECN bit (0x80) is only valid with TCP, as tun-rs and the kernel have it.
        let (tcp, version) = match hdr.gso_type {
            t if t & !GSO_ECN == GSO_TCPV4 => (true, Some(4)),
            t if t & !GSO_ECN == GSO_TCPV6 => (true, Some(6)),
            GSO_UDP_L4 => (false, None),
            _ => return Err(CutError::Unsupported),
        };
        let (ip_len, hdr_len, gso_size) = (
            usize::from(hdr.csum_start),
            usize::from(hdr.hdr_len),
            usize::from(hdr.gso_size),
        );
        let l4_min = if tcp { 20 } else { 8 };
        let csum_offset = if tcp { 16 } else { 6 };
        let got = pkt.first().map(|b| b >> 4);
        let v6 = got == Some(6);
        let bad = gso_size == 0
            || version.is_some_and(|v| got != Some(v))
            || usize::from(hdr.csum_offset) != csum_offset
            || hdr_len < ip_len + l4_min
            || hdr_len > ip_len + MAX_L4_HEADER
            || hdr_len > MAX_HEADER
            // An odd header length would put each payload at an odd offset of its segment's
            // checksummed bytes (no TCP or UDP header has one).
            || hdr_len % 2 != 0
            || pkt.len() < hdr_len
            || !match got {
                Some(4) => ip_len >= 20 && usize::from(pkt[0] & 0x0f) * 4 == ip_len,
                Some(6) => v6_leads_to(pkt, ip_len, if tcp { ipv6::NH_TCP } else { ipv6::NH_UDP }),
                _ => false,
            };
        if bad {
            return Err(CutError::Malformed);
        }
        let payload_len = pkt.len() - hdr_len;
        let segments = payload_len.div_ceil(gso_size);
        // The largest segment must still fit an IPv4 total length (an IPv6 payload length).
        if hdr_len + gso_size.min(payload_len) > usize::from(u16::MAX) {
            return Err(CutError::Malformed);
        }
        if segments > max_segments {
            return Err(CutError::TooManySegments);
        }
        let proto = if tcp { 6u64 } else { 17 };
        let addrs = if v6 { &pkt[8..40] } else { &pkt[12..20] };
        Ok(Cut {
            tcp,
            v6,
            ip_len,
            hdr_len,
            gso_size,
            payload_len,
            segments,
            pseudo: checksum::accumulate(addrs, 0) + proto,
        })
    }

    /// Plans cutting a whole TCP packet `pkt` (IPv4, or IPv6 with the extension headers
    /// [`ipv6::Packet::transport`] walks) into segments of at most `mtu` bytes, as a TSO
    /// super-packet with the returned virtio header would be cut. Refuses (`Unsupported`) what is
    /// not TCP, a fragment, and a segment with SYN, RST or URG (cutting would repeat them); a
    /// packet whose length fields disagree with its length, or whose headers leave no payload
    /// room in `mtu`, is `Malformed`. Never panics.
    pub fn for_mtu(
        pkt: &[u8],
        mtu: usize,
        max_segments: usize,
    ) -> Result<(VnetHdr, Cut), CutError> {
        let (gso_type, ip_len) = match pkt.first().map(|b| b >> 4) {
            Some(4) if pkt.len() >= 20 => {
                let ip_len = usize::from(pkt[0] & 0x0f) * 4;
                if usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) != pkt.len() || ip_len < 20 {
                    return Err(CutError::Malformed);
                }
                // MF set or a fragment offset.
                if pkt[9] != 6 || u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
                    return Err(CutError::Unsupported);
                }
                (GSO_TCPV4, ip_len)
            }
            Some(6) if pkt.len() >= ipv6::HEADER_LEN => {
                let ip = ipv6::Packet::new_unchecked(pkt);
                if usize::from(ip.payload_len()) + ipv6::HEADER_LEN != pkt.len() {
                    return Err(CutError::Malformed);
                }
                let t = ip.transport().map_err(|_| CutError::Malformed)?;
                if t.protocol != ipv6::NH_TCP || t.fragmented {
                    return Err(CutError::Unsupported);
                }
                (GSO_TCPV6, t.offset)
            }
            _ => return Err(CutError::Malformed),
        };
        let flags = *pkt.get(ip_len + 13).ok_or(CutError::Malformed)?;
        if flags & (TCP_SYN | TCP_RST | TCP_URG) != 0 {
            return Err(CutError::Unsupported);
        }
        let probe = VnetHdr {
            gso_type: if flags & TCP_CWR != 0 {
                gso_type | GSO_ECN
            } else {
                gso_type
            },
            hdr_len: 0,
            gso_size: 0,
            csum_start: u16::try_from(ip_len).map_err(|_| CutError::Malformed)?,
            csum_offset: 16,
        };
        let mut hdr = probe
            .with_packet_header_len(pkt)
            .ok_or(CutError::Malformed)?;
        let room = mtu
            .checked_sub(usize::from(hdr.hdr_len))
            .filter(|&r| r > 0)
            .ok_or(CutError::Malformed)?;
        hdr.gso_size = u16::try_from(room).unwrap_or(u16::MAX);
        Ok((hdr, Cut::plan(hdr, pkt, max_segments)?))
    }

    /// Number of segments (0 for a super-packet without payload).
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Bytes of IP + TCP/UDP header of every segment.
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    /// Payload bytes of a full segment (`gso_size`); the last may be shorter.
    pub fn segment_payload(&self) -> usize {
        self.gso_size
    }

    /// Whether the segments are TCP (else UDP).
    pub fn is_tcp(&self) -> bool {
        self.tcp
    }

    /// Whether the segments are IPv6 (else IPv4).
    pub fn is_ipv6(&self) -> bool {
        self.v6
    }

    /// Bytes of all segments together: the payload once and the header once per segment.
    pub fn total_len(&self) -> usize {
        self.payload_len + self.segments * self.hdr_len
    }

    /// Range of segment `i`'s payload in the super-packet.
    pub fn payload(&self, i: usize) -> Range<usize> {
        let start = self.hdr_len + i * self.gso_size;
        start..(start + self.gso_size).min(self.hdr_len + self.payload_len)
    }

    /// Writes segment `i`'s IP and TCP/UDP headers, checksums included, into
    /// `out[..header_len()]`; `pkt` is the super-packet the plan was made for.
    ///
    /// # Panics
    /// If `out` is shorter than [`Cut::header_len`], `i` is not below [`Cut::segments`] or `pkt`
    /// is not the planned packet's length.
    pub fn write_header(&self, pkt: &[u8], i: usize, out: &mut [u8]) {
        let (ip, l4) = (self.ip_len, self.hdr_len);
        let payload = &pkt[self.payload(i)];
        let out = &mut out[..l4];
        out.copy_from_slice(&pkt[..l4]);
        if self.v6 {
            let len = (l4 - ipv6::HEADER_LEN + payload.len()) as u16;
            out[4..6].copy_from_slice(&len.to_be_bytes());
        } else {
            let total = (l4 + payload.len()) as u16;
            out[2..4].copy_from_slice(&total.to_be_bytes());
            let id = u16::from_be_bytes([out[4], out[5]]).wrapping_add(i as u16);
            out[4..6].copy_from_slice(&id.to_be_bytes());
            out[10..12].fill(0);
            let ip_csum = !checksum::sum(&out[..ip]);
            out[10..12].copy_from_slice(&ip_csum.to_be_bytes());
        }
        let l4_len = (l4 - ip + payload.len()) as u16;
        let csum_at = if self.tcp {
            let seq = u32::from_be_bytes([out[ip + 4], out[ip + 5], out[ip + 6], out[ip + 7]])
                .wrapping_add((self.gso_size * i) as u32);
            out[ip + 4..ip + 8].copy_from_slice(&seq.to_be_bytes());
            if i > 0 {
                out[ip + 13] &= !TCP_CWR;
            }
            if i + 1 < self.segments {
                out[ip + 13] &= !(TCP_FIN | TCP_PSH);
            }
            ip + 16
        } else {
            out[ip + 4..ip + 6].copy_from_slice(&l4_len.to_be_bytes());
            ip + 6
        };
        out[csum_at..csum_at + 2].fill(0);
        let acc = checksum::accumulate(&out[ip..], self.pseudo + u64::from(l4_len));
        let mut csum = !checksum::fold(payload_sum(payload, acc));
        if !self.tcp && csum == 0 {
            csum = 0xffff;
        }
        out[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
    }

    /// Writes `pkt`'s headers as one GSO packet's, for a device to cut: the packet's own headers
    /// with the TCP/UDP checksum field holding the folded pseudo-header sum of the whole packet
    /// (not complemented: the kernel's `CHECKSUM_PARTIAL`), and an IPv4 header checksum made
    /// good. `out[..header_len()]` gets them; the payload is `pkt[header_len()..]` unchanged.
    ///
    /// # Panics
    /// If `out` is shorter than [`Cut::header_len`] or `pkt` is not the planned packet's length.
    pub fn write_gso_header(&self, pkt: &[u8], out: &mut [u8]) {
        let (ip, l4) = (self.ip_len, self.hdr_len);
        let out = &mut out[..l4];
        out.copy_from_slice(&pkt[..l4]);
        if !self.v6 {
            out[10..12].fill(0);
            let ip_csum = !checksum::sum(&out[..ip]);
            out[10..12].copy_from_slice(&ip_csum.to_be_bytes());
        }
        let csum_at = ip + if self.tcp { 16 } else { 6 };
        let partial = checksum::fold(self.pseudo + (l4 - ip + self.payload_len) as u64);
        out[csum_at..csum_at + 2].copy_from_slice(&partial.to_be_bytes());
    }
}

/// Whether the IPv6 packet `pkt`'s extension headers lead, without a fragment header, to a
/// header of type `proto` at `offset`.
fn v6_leads_to(pkt: &[u8], offset: usize, proto: u8) -> bool {
    if pkt.len() < ipv6::HEADER_LEN {
        return false;
    }
    matches!(
        ipv6::Packet::new_unchecked(pkt).transport(),
        Ok(t) if t.protocol == proto && t.offset == offset && !t.fragmented
    )
}

/// Adds `data` (starting at an even offset of the checksummed bytes) to `acc` as the one's
/// complement sum of big-endian 16-bit words, unfolded. tun-rs's sum, which picks AVX2 or SSE4.1
/// at run time (the one pass over the payload is most of a cut's cost).
#[inline]
fn payload_sum(data: &[u8], acc: u64) -> u64 {
    tun_rs::checksum_no_fold(data, acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    /// A super-packet as a TUN read returns it: IPv4 (with `ip_opts` bytes of options), TCP
    /// (with `tcp_opts` bytes of options) or UDP, `payload` bytes, and its virtio header.
    fn super_packet(
        rng: &mut Rng,
        tcp: bool,
        ip_opts: usize,
        tcp_opts: usize,
        payload: usize,
        gso: u16,
    ) -> (VnetHdr, Vec<u8>) {
        let ip = 20 + ip_opts;
        let l4 = if tcp { 20 + tcp_opts } else { 8 };
        let mut p = vec![0u8; ip + l4 + payload];
        for b in p.iter_mut() {
            *b = rng.next() as u8;
        }
        p[0] = 0x40 | (ip / 4) as u8;
        p[6] = 0x40;
        p[7] = 0;
        p[9] = if tcp { 6 } else { 17 };
        let total = (p.len().min(65_535)) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        if tcp {
            p[ip + 12] = ((l4 / 4) as u8) << 4;
        }
        let hdr = VnetHdr {
            gso_type: if tcp { GSO_TCPV4 } else { GSO_UDP_L4 },
            hdr_len: (ip + l4) as u16,
            gso_size: gso,
            csum_start: ip as u16,
            csum_offset: if tcp { 16 } else { 6 },
        };
        (hdr, p)
    }

    /// An IPv6 super-packet as a TUN read returns it: IPv6 with `ext` bytes of destination
    /// options (0, or a multiple of 8), TCP (with `tcp_opts` bytes of options) or UDP,
    /// `payload` bytes, and its virtio header.
    fn super_packet6(
        rng: &mut Rng,
        tcp: bool,
        ext: usize,
        tcp_opts: usize,
        payload: usize,
        gso: u16,
    ) -> (VnetHdr, Vec<u8>) {
        let ip = 40 + ext;
        let l4 = if tcp { 20 + tcp_opts } else { 8 };
        let mut p = vec![0u8; ip + l4 + payload];
        for b in p.iter_mut() {
            *b = rng.next() as u8;
        }
        p[0] = 0x60 | (p[0] & 0x0f);
        let proto = if tcp { 6 } else { 17 };
        let len = (p.len() - 40).min(65_535) as u16;
        p[4..6].copy_from_slice(&len.to_be_bytes());
        if ext > 0 {
            p[6] = ipv6::NH_DEST_OPTS;
            p[40] = proto;
            p[41] = (ext / 8 - 1) as u8;
            // PadN over the rest of the header.
            p[42] = 1;
            p[43] = (ext - 4) as u8;
        } else {
            p[6] = proto;
        }
        if tcp {
            p[ip + 12] = ((l4 / 4) as u8) << 4;
        }
        let hdr = VnetHdr {
            gso_type: if tcp { GSO_TCPV6 } else { GSO_UDP_L4 },
            hdr_len: (ip + l4) as u16,
            gso_size: gso,
            csum_start: ip as u16,
            csum_offset: if tcp { 16 } else { 6 },
        };
        (hdr, p)
    }

    fn cut_all(hdr: VnetHdr, p: &[u8]) -> Vec<Vec<u8>> {
        let cut = Cut::plan(hdr, p, 1024).expect("plan");
        (0..cut.segments())
            .map(|i| {
                let mut h = vec![0u8; cut.header_len()];
                cut.write_header(p, i, &mut h);
                h.extend_from_slice(&p[cut.payload(i)]);
                h
            })
            .collect()
    }

    fn tun_rs_split(hdr: VnetHdr, p: &[u8]) -> Vec<Vec<u8>> {
        let vnet = tun_rs::VirtioNetHdr {
            flags: 1,
            gso_type: hdr.gso_type,
            hdr_len: hdr.hdr_len,
            gso_size: hdr.gso_size,
            csum_start: hdr.csum_start,
            csum_offset: hdr.csum_offset,
        };
        let mut input = p.to_vec();
        let mut bufs = vec![vec![0u8; 65_536]; 1024];
        let mut sizes = vec![0usize; 1024];
        let v6 = p[0] >> 4 == 6;
        let n = tun_rs::gso_split(&mut input, vnet, &mut bufs, &mut sizes, 0, v6)
            .expect("tun-rs splits it");
        (0..n).map(|i| bufs[i][..sizes[i]].to_vec()).collect()
    }

    #[test]
    fn segments_equal_tun_rs_gso_split() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..400 {
            let tcp = round % 4 != 3;
            let r = rng.next();
            let ip_opts = [0, 0, 4, 12, 40][(r % 5) as usize];
            let tcp_opts = [0, 12, 12, 20, 40][((r >> 8) % 5) as usize];
            let gso = [1, 7, 536, 1398, 1400, 1448, 8960][((r >> 16) % 7) as usize];
            let max = 65_535 - 20 - ip_opts - 20 - tcp_opts;
            let payload = ((r >> 24) as usize % max.min(gso as usize * 60)).max(1);
            let (hdr, p) = super_packet(&mut rng, tcp, ip_opts, tcp_opts, payload, gso);
            let want = tun_rs_split(hdr, &p);
            let got = cut_all(hdr, &p);
            assert_eq!(got.len(), want.len(), "round {round}");
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(g == w, "round {round} segment {k}: {hdr:?}");
            }
        }
    }

    #[test]
    fn segments_verify_with_etherparse() {
        use etherparse::{Ipv4Slice, TcpSlice, UdpSlice};
        let mut rng = Rng(7);
        for tcp in [true, false] {
            let (hdr, p) = super_packet(&mut rng, tcp, 0, if tcp { 12 } else { 0 }, 10_001, 1400);
            let segs = cut_all(hdr, &p);
            assert_eq!(segs.len(), 8);
            let mut payload = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                let ip = Ipv4Slice::from_slice(s).expect("IPv4");
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum(), "segment {i}");
                assert_eq!(usize::from(h.total_len), s.len());
                let (src, dst) = (h.source, h.destination);
                let l4 = ip.payload().payload;
                if tcp {
                    let t = TcpSlice::from_slice(l4).expect("TCP");
                    let want = t
                        .to_header()
                        .calc_checksum_ipv4_raw(src, dst, t.payload())
                        .expect("checksum");
                    assert_eq!(t.checksum(), want, "segment {i}");
                    assert_eq!(t.psh(), i == 7 && p[20 + 13] & TCP_PSH != 0);
                    payload.extend_from_slice(t.payload());
                } else {
                    let u = UdpSlice::from_slice(l4).expect("UDP");
                    let want = u
                        .to_header()
                        .calc_checksum_ipv4_raw(src, dst, u.payload())
                        .expect("checksum");
                    assert_eq!(u.checksum(), want, "segment {i}");
                    payload.extend_from_slice(u.payload());
                }
            }
            assert_eq!(payload, p[usize::from(hdr.hdr_len)..]);
        }
    }

    #[test]
    fn ipv6_segments_equal_tun_rs_gso_split() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for round in 0..300 {
            let tcp = round % 4 != 3;
            let r = rng.next();
            let ext = [0, 0, 8, 16][(r % 4) as usize];
            let tcp_opts = [0, 12, 12, 20, 40][((r >> 8) % 5) as usize];
            let gso = [1, 7, 536, 1358, 1378, 1440, 8940][((r >> 16) % 7) as usize];
            let max = 65_535 - ext - 20 - tcp_opts;
            let payload = ((r >> 24) as usize % max.min(gso as usize * 60)).max(1);
            let (hdr, p) = super_packet6(&mut rng, tcp, ext, tcp_opts, payload, gso);
            let want = tun_rs_split(hdr, &p);
            let got = cut_all(hdr, &p);
            assert_eq!(got.len(), want.len(), "round {round}");
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(g == w, "round {round} segment {k}: {hdr:?}");
            }
        }
    }

    /// Checks `segs` (the cut of `orig`) with etherparse: each segment's IP length fields and
    /// TCP/UDP checksum, IPv4 header checksum and ID, TCP sequence numbers and flags (FIN and
    /// PSH only on the last, CWR only on the first), at most `mtu` bytes; the payloads in order
    /// are `orig`'s.
    fn verify(orig: &[u8], segs: &[Vec<u8>], hdr_len: usize, mtu: usize) {
        use etherparse::{IpSlice, TcpSlice, UdpSlice};
        let first = IpSlice::from_slice(orig).expect("IP");
        let tcp = first.payload().ip_number.0 == 6;
        let mut payload = Vec::new();
        let n = segs.len();
        for (i, s) in segs.iter().enumerate() {
            assert!(s.len() <= mtu, "segment {i}: {} bytes", s.len());
            let ip = IpSlice::from_slice(s).expect("IP");
            let (l4, v4id) = match &ip {
                IpSlice::Ipv4(v4) => {
                    let h = v4.header().to_header();
                    assert_eq!(h.header_checksum, h.calc_header_checksum(), "segment {i}");
                    assert_eq!(usize::from(h.total_len), s.len());
                    (v4.payload().payload, Some(h.identification))
                }
                IpSlice::Ipv6(v6) => {
                    assert_eq!(usize::from(v6.header().payload_length()) + 40, s.len());
                    (v6.payload().payload, None)
                }
            };
            if let Some(id) = v4id {
                let id0 = u16::from_be_bytes([orig[4], orig[5]]);
                assert_eq!(id, id0.wrapping_add(i as u16), "segment {i} IP ID");
            }
            let sum_ok = |want: u16, got: u16| assert_eq!(got, want, "segment {i} checksum");
            if tcp {
                let t = TcpSlice::from_slice(l4).expect("TCP");
                let want = match &ip {
                    IpSlice::Ipv4(v4) => t.to_header().calc_checksum_ipv4_raw(
                        v4.header().source(),
                        v4.header().destination(),
                        t.payload(),
                    ),
                    IpSlice::Ipv6(v6) => t.to_header().calc_checksum_ipv6_raw(
                        v6.header().source(),
                        v6.header().destination(),
                        t.payload(),
                    ),
                }
                .expect("checksum");
                sum_ok(want, t.checksum());
                let o = TcpSlice::from_slice(first.payload().payload).expect("TCP");
                assert_eq!(
                    t.sequence_number(),
                    o.sequence_number().wrapping_add(payload.len() as u32),
                    "segment {i}"
                );
                let last = i + 1 == n;
                assert_eq!(t.fin(), last && o.fin(), "segment {i} FIN");
                assert_eq!(t.psh(), last && o.psh(), "segment {i} PSH");
                assert_eq!(t.cwr(), i == 0 && o.cwr(), "segment {i} CWR");
                assert_eq!(t.ack(), o.ack());
                assert_eq!(t.acknowledgment_number(), o.acknowledgment_number());
                payload.extend_from_slice(t.payload());
            } else {
                let u = UdpSlice::from_slice(l4).expect("UDP");
                let want = match &ip {
                    IpSlice::Ipv4(v4) => u.to_header().calc_checksum_ipv4_raw(
                        v4.header().source(),
                        v4.header().destination(),
                        u.payload(),
                    ),
                    IpSlice::Ipv6(v6) => u.to_header().calc_checksum_ipv6_raw(
                        v6.header().source(),
                        v6.header().destination(),
                        u.payload(),
                    ),
                }
                .expect("checksum");
                sum_ok(want, u.checksum());
                payload.extend_from_slice(u.payload());
            }
        }
        assert_eq!(payload, orig[hdr_len..]);
    }

    #[test]
    fn ipv6_segments_verify_with_etherparse() {
        let mut rng = Rng(17);
        for (tcp, ext) in [(true, 0), (true, 16), (false, 0), (false, 8)] {
            let (hdr, mut p) =
                super_packet6(&mut rng, tcp, ext, if tcp { 12 } else { 0 }, 10_001, 1358);
            if tcp {
                let at = 40 + ext + 13;
                p[at] = 0x10 | TCP_FIN | TCP_PSH | TCP_CWR;
            }
            let segs = cut_all(hdr, &p);
            assert_eq!(segs.len(), 8);
            verify(&p, &segs, usize::from(hdr.hdr_len), usize::MAX);
        }
    }

    /// A whole TCP packet as it comes out of a decapsulated GSO super-packet: `payload` bytes,
    /// the timestamp option, ACK|PSH (|FIN|CWR with `more_flags`), IPv4 or IPv6 (`ext` bytes of
    /// destination options), its length fields right.
    fn long_tcp(rng: &mut Rng, v6: bool, ext: usize, payload: usize, more_flags: bool) -> Vec<u8> {
        let (_, mut p) = if v6 {
            super_packet6(rng, true, ext, 12, payload, 1)
        } else {
            super_packet(rng, true, 0, 12, payload, 1)
        };
        let ip = if v6 { 40 + ext } else { 20 };
        if !v6 {
            p[6] = 0x40;
            p[7] = 0;
        }
        p[ip + 13] = 0x18 | if more_flags { TCP_FIN | TCP_CWR } else { 0 };
        p
    }

    #[test]
    fn a_long_tcp_packet_is_cut_to_the_mtu() {
        let mut rng = Rng(23);
        for (v6, ext, payload, mtu, segments) in [
            // 2 x MSS 1358 of a 1430 MTU, as tcpdump saw it.
            (true, 0, 2716, 1430, 2),
            (true, 16, 2716, 1430, 3),
            (true, 0, 65_000, 1430, 48),
            (false, 0, 2 * 1378, 1430, 2),
            (false, 0, 2 * 1378 + 1, 1430, 3),
            (false, 0, 60_000, 1280, 49),
        ] {
            for more_flags in [false, true] {
                let p = long_tcp(&mut rng, v6, ext, payload, more_flags);
                let (hdr, cut) = Cut::for_mtu(&p, mtu, 64).expect("plan");
                let hl = if v6 { 40 + ext } else { 20 } + 32;
                assert_eq!(usize::from(hdr.hdr_len), hl);
                assert_eq!(usize::from(hdr.hdr_len + hdr.gso_size), mtu);
                assert_eq!(hdr.gso_type & GSO_ECN != 0, more_flags);
                assert_eq!(cut.segments(), segments, "{v6} {ext} {payload}");
                assert_eq!(cut.is_ipv6(), v6);
                let segs = cut_all(hdr, &p);
                assert_eq!(cut.total_len(), segs.iter().map(Vec::len).sum::<usize>());
                verify(&p, &segs, hl, mtu);
                // What the kernel would make of the GSO packet: the same segments.
                assert_eq!(tun_rs_split(hdr, &p), segs);
            }
        }
    }

    #[test]
    fn the_gso_header_holds_the_partial_checksum() {
        let mut rng = Rng(29);
        for v6 in [false, true] {
            let p = long_tcp(&mut rng, v6, 0, 5000, false);
            let (hdr, cut) = Cut::for_mtu(&p, 1430, 64).expect("plan");
            let hl = cut.header_len();
            let mut gso = vec![0u8; hl];
            cut.write_gso_header(&p, &mut gso);
            gso.extend_from_slice(&p[hl..]);
            // Completing it as the kernel does (sum from csum_start, the field included) makes
            // the whole packet's checksum right.
            let start = usize::from(hdr.csum_start);
            let at = start + 16;
            let csum = !checksum::sum(&gso[start..]);
            gso[at..at + 2].copy_from_slice(&csum.to_be_bytes());
            verify(&p, &[gso.clone()], hl, usize::MAX);
            let kept = if v6 { 0..at } else { 12..at };
            assert_eq!(gso[kept.clone()], p[kept], "headers kept");
        }
    }

    #[test]
    fn what_cannot_be_cut_is_refused() {
        let mut rng = Rng(31);
        let p4 = long_tcp(&mut rng, false, 0, 3000, false);
        let p6 = long_tcp(&mut rng, true, 0, 3000, false);
        assert!(Cut::for_mtu(&p4, 1430, 64).is_ok());
        assert!(Cut::for_mtu(&p6, 1430, 64).is_ok());
        let edit = |p: &[u8], at: usize, v: u8| {
            let mut q = p.to_vec();
            q[at] = v;
            q
        };
        let unsupported = [
            edit(&p4, 9, 17),         // UDP
            edit(&p4, 6, 0x20),       // MF
            edit(&p4, 7, 0x01),       // a fragment offset
            edit(&p4, 20 + 13, 0x12), // SYN
            edit(&p4, 20 + 13, 0x14), // RST
            edit(&p4, 20 + 13, 0x30), // URG
            edit(&p6, 6, 17),         // UDP
            edit(&p6, 6, ipv6::NH_FRAGMENT),
            edit(&p6, 40 + 13, 0x12),
        ];
        for (k, q) in unsupported.iter().enumerate() {
            assert_eq!(
                Cut::for_mtu(q, 1430, 64).err(),
                Some(CutError::Unsupported),
                "{k}"
            );
        }
        let malformed = [
            edit(&p4, 2, 0x7f),                // total length
            edit(&p4, 0, 0x44),                // header length 16
            edit(&p4, 0, 0x55),                // not IPv4 (version 5)
            edit(&p4, 20 + 12, 0x40),          // data offset 16
            edit(&p6, 4, 0x7f),                // payload length
            edit(&p6, 6, ipv6::NH_HOP_BY_HOP), // runs into garbage
            p4[..30].to_vec(),
            p6[..39].to_vec(),
            Vec::new(),
        ];
        for (k, q) in malformed.iter().enumerate() {
            assert!(
                matches!(
                    Cut::for_mtu(q, 1430, 64),
                    Err(CutError::Malformed | CutError::Unsupported)
                ),
                "{k}"
            );
        }
        assert_eq!(Cut::for_mtu(&p4, 52, 64).err(), Some(CutError::Malformed));
        assert_eq!(
            Cut::for_mtu(&p4, 100, 16).err(),
            Some(CutError::TooManySegments)
        );
    }

    #[test]
    fn the_header_length_comes_from_the_packet() {
        let mut rng = Rng(11);
        let (hdr, p) = super_packet(&mut rng, true, 4, 12, 5000, 1448);
        // The kernel's forward path may report the whole first segment as header.
        let claimed = VnetHdr {
            hdr_len: 24 + 32 + 1448,
            ..hdr
        };
        assert_eq!(claimed.with_packet_header_len(&p), Some(hdr));
        let mut bad = p.clone();
        bad[24 + 12] = 4 << 4;
        assert_eq!(claimed.with_packet_header_len(&bad), None);
        assert_eq!(claimed.with_packet_header_len(&p[..30]), None);
        let (uhdr, up) = super_packet(&mut rng, false, 0, 0, 3000, 1000);
        let claimed = VnetHdr {
            hdr_len: 1028,
            ..uhdr
        };
        assert_eq!(claimed.with_packet_header_len(&up), Some(uhdr));
        let other = VnetHdr {
            gso_type: 3,
            ..uhdr
        };
        assert_eq!(other.with_packet_header_len(&up), Some(other));
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut rng = Rng(3);
        let (hdr, p) = super_packet(&mut rng, true, 0, 0, 3000, 1000);
        assert_eq!(Cut::plan(hdr, &p, 3).map(|c| c.segments()), Ok(3));
        assert_eq!(Cut::plan(hdr, &p, 2), Err(CutError::TooManySegments));
        for bad in [
            VnetHdr { gso_size: 0, ..hdr },
            VnetHdr {
                csum_offset: 6,
                ..hdr
            },
            VnetHdr {
                csum_start: 24,
                ..hdr
            },
            VnetHdr { hdr_len: 30, ..hdr },
            VnetHdr {
                hdr_len: 4000,
                ..hdr
            },
        ] {
            assert_eq!(Cut::plan(bad, &p, 64), Err(CutError::Malformed), "{bad:?}");
        }
        for t in [0, 3, GSO_UDP_L4 | 0x80] {
            assert_eq!(
                Cut::plan(VnetHdr { gso_type: t, ..hdr }, &p, 64),
                Err(CutError::Unsupported)
            );
        }
        let mut v6 = p.clone();
        v6[0] = 0x65;
        assert_eq!(Cut::plan(hdr, &v6, 64), Err(CutError::Malformed));
        assert_eq!(Cut::plan(hdr, &p[..30], 64), Err(CutError::Malformed));
        // TCPv6 wants IPv6, with the TCP header where csum_start says.
        let tcp6 = VnetHdr {
            gso_type: GSO_TCPV6,
            ..hdr
        };
        assert_eq!(Cut::plan(tcp6, &p, 64), Err(CutError::Malformed));
        let (h6, p6) = super_packet6(&mut rng, true, 8, 0, 3000, 1000);
        assert_eq!(Cut::plan(h6, &p6, 64).map(|c| c.segments()), Ok(3));
        for bad in [
            VnetHdr {
                csum_start: 40,
                hdr_len: 60,
                ..h6
            },
            VnetHdr {
                gso_type: GSO_TCPV4,
                ..h6
            },
            VnetHdr {
                gso_type: GSO_UDP_L4,
                csum_offset: 6,
                ..h6
            },
        ] {
            assert_eq!(Cut::plan(bad, &p6, 64), Err(CutError::Malformed), "{bad:?}");
        }
        let mut frag = p6.clone();
        frag[40] = ipv6::NH_FRAGMENT;
        assert_eq!(Cut::plan(h6, &frag, 64), Err(CutError::Malformed));
        // Extension headers that make the header longer than MAX_HEADER.
        let (hl, pl) = super_packet6(&mut rng, true, 48, 40, 3000, 1000);
        assert_eq!(Cut::plan(hl, &pl, 64), Err(CutError::Malformed));
    }
}
