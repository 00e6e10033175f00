//! Cutting a TSO/USO super-packet read from the TUN device in place: no copy of the payload.
//!
//! A read from a TUN device opened with `IFF_VNET_HDR` and TSO/USO returns a virtio_net_hdr and a
//! super-packet of up to 64 KiB: one IPv4 header, one TCP (or UDP) header and a payload that the
//! receiver of the packets must see cut into `gso_size` pieces. [`Cut::plan`] checks the header
//! against the packet; [`Cut::write_header`] then writes segment *i*'s own IPv4 and TCP/UDP headers
//! (total length, IP ID + *i*, header checksum; TCP sequence number + *i* × `gso_size`, FIN and
//! PSH only on the last segment, CWR only on the first; UDP length) into a header area the caller
//! owns, and [`Cut::payload`] names segment *i*'s payload inside the read buffer, so a UDP GSO send
//! can gather header and payload slices without the payload ever being copied in user space.
//!
//! The TCP/UDP checksum of each segment is computed incrementally: the pseudo-header sum of the
//! addresses and protocol is summed once per super-packet; per segment only its length, its
//! header (a few dozen bytes) and its payload are added, the payload read once and never written.
//! The segments are byte for byte what tun-rs's `gso_split` (wireguard-go's algorithm) produces,
//! which the tests check.

use crate::wire::checksum;
use std::ops::Range;

/// virtio_net_hdr `gso_type` of IPv4 TCP (TSO).
pub const GSO_TCPV4: u8 = 1;
/// virtio_net_hdr `gso_type` of IPv6 TCP (not cut here; tun-rs cuts it).
pub const GSO_TCPV6: u8 = 4;
/// virtio_net_hdr `gso_type` of UDP (USO, IPv4 and IPv6; weft's overlay is IPv4).
pub const GSO_UDP_L4: u8 = 5;

/// The fields of a virtio_net_hdr that cutting uses (host byte order, as tun-rs decodes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetHdr {
    /// GSO type (TCPv4 may carry the ECN bit, 0x80).
    pub gso_type: u8,
    /// Bytes of IPv4 + TCP/UDP header.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Start of the TCP/UDP header (the IPv4 header length).
    pub csum_start: u16,
    /// Offset of the checksum field inside the TCP/UDP header.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// This header with `hdr_len` taken from the packet rather than from the kernel: the IPv4
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
    /// A GSO type other than TCPv4 and UDP.
    Unsupported,
    /// The virtio header's lengths do not describe the packet (or the packet is not IPv4).
    Malformed,
    /// More segments than the caller has room for.
    TooManySegments,
}

/// A checked plan for cutting one super-packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    tcp: bool,
    /// IPv4 header length (= csum_start).
    ip_len: usize,
    /// IPv4 + TCP/UDP header length.
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
/// Longest IPv4 + TCP/UDP header [`Cut::header_len`] can be.
pub const MAX_HEADER: usize = 60 + MAX_L4_HEADER;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

impl Cut {
    /// Checks `hdr` against the super-packet `pkt` (IPv4 header first) and plans its cut into at
    /// most `max_segments` segments.
    pub fn plan(hdr: VnetHdr, pkt: &[u8], max_segments: usize) -> Result<Cut, CutError> {
        // The ECN bit (0x80) is only valid with TCP, as tun-rs and the kernel have it.
        let tcp = match hdr.gso_type {
            t if t & 0x7f == GSO_TCPV4 => true,
            GSO_UDP_L4 => false,
            _ => return Err(CutError::Unsupported),
        };
        let (ip_len, hdr_len, gso_size) = (
            usize::from(hdr.csum_start),
            usize::from(hdr.hdr_len),
            usize::from(hdr.gso_size),
        );
        let l4_min = if tcp { 20 } else { 8 };
        let csum_offset = if tcp { 16 } else { 6 };
        let bad = gso_size == 0
            || usize::from(hdr.csum_offset) != csum_offset
            || ip_len < 20
            || hdr_len < ip_len + l4_min
            || hdr_len > ip_len + MAX_L4_HEADER
            // An odd header length would put each payload at an odd offset of its segment's
            // checksummed bytes (no TCP or UDP header has one).
            || hdr_len % 2 != 0
            || pkt.len() < hdr_len
            || pkt[0] >> 4 != 4
            || usize::from(pkt[0] & 0x0f) * 4 != ip_len;
        if bad {
            return Err(CutError::Malformed);
        }
        let payload_len = pkt.len() - hdr_len;
        let segments = payload_len.div_ceil(gso_size);
        // The largest segment must still fit an IPv4 total length.
        if hdr_len + gso_size.min(payload_len) > usize::from(u16::MAX) {
            return Err(CutError::Malformed);
        }
        if segments > max_segments {
            return Err(CutError::TooManySegments);
        }
        let proto = if tcp { 6u64 } else { 17 };
        Ok(Cut {
            tcp,
            ip_len,
            hdr_len,
            gso_size,
            payload_len,
            segments,
            pseudo: checksum::accumulate(&pkt[12..20], 0) + proto,
        })
    }

    /// Number of segments (0 for a super-packet without payload).
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Bytes of IPv4 + TCP/UDP header of every segment.
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

    /// Range of segment `i`'s payload in the super-packet.
    pub fn payload(&self, i: usize) -> Range<usize> {
        let start = self.hdr_len + i * self.gso_size;
        start..(start + self.gso_size).min(self.hdr_len + self.payload_len)
    }

    /// Writes segment `i`'s IPv4 and TCP/UDP headers, checksums included, into
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
        let total = (l4 + payload.len()) as u16;
        out[2..4].copy_from_slice(&total.to_be_bytes());
        let id = u16::from_be_bytes([out[4], out[5]]).wrapping_add(i as u16);
        out[4..6].copy_from_slice(&id.to_be_bytes());
        out[10..12].fill(0);
        let ip_csum = !checksum::sum(&out[..ip]);
        out[10..12].copy_from_slice(&ip_csum.to_be_bytes());
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
        let n = tun_rs::gso_split(&mut input, vnet, &mut bufs, &mut sizes, 0, false)
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
        for t in [0, 4, GSO_UDP_L4 | 0x80] {
            assert_eq!(
                Cut::plan(VnetHdr { gso_type: t, ..hdr }, &p, 64),
                Err(CutError::Unsupported)
            );
        }
        let mut v6 = p.clone();
        v6[0] = 0x65;
        assert_eq!(Cut::plan(hdr, &v6, 64), Err(CutError::Malformed));
        assert_eq!(Cut::plan(hdr, &p[..30], 64), Err(CutError::Malformed));
    }
}
