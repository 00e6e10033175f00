//! Receive-side TCP segmentation offload: a run of received TCP segments written back into the
//! TUN device as one super-packet.
//!
//! A UDP GRO buffer from one peer normally holds the cut-up of one TSO super-packet that the peer
//! read from its TUN device: consecutive segments of one TCP flow with identical headers. With TUN
//! offloads such a run goes into the TUN device as one packet: a virtio_net_hdr asking for
//! segmentation (`GSO_TCPV4` or `GSO_TCPV6`, `gso_size` = the segments' payload size) and checksum
//! completion (`NEEDS_CSUM`), the first segment's IP and TCP headers rewritten for the whole run,
//! then every segment's payload, gathered by one `writev` from where it lies in the receive
//! buffer. The header is filled exactly as tun-rs's coalescing (a port of wireguard-go's `tcpGRO`)
//! fills it: IPv4 total length and header checksum recomputed (IPv6: the payload length), and the
//! TCP checksum field holding the folded pseudo-header sum (not complemented), which is what the
//! kernel expects of `CHECKSUM_PARTIAL`.
//!
//! The rules follow wireguard-go's `tcpPacketsCanCoalesce`, restricted to runs in arrival order:
//! IPv4 without options, not a fragment, or IPv6 without extension headers (TCP the fixed
//! header's next header); same addresses, TOS, TTL and DF (IPv6: traffic class, flow label and
//! hop limit); same ports, TCP header (options included), acknowledgment number, window and
//! urgent pointer; flags
//! exactly ACK (PSH only on the last); consecutive sequence numbers; equal payload sizes except a
//! shorter last one; at most [`MAX_SEGMENTS`] segments and 65 535 bytes of IP packet (as tun-rs's
//! coalescing, for both families). A run never mixes the two families.
//!
//! Segmenting what the TUN device reads, and coalescing what does not form a run, is tun-rs's
//! (`recv_multiple`, `send_multiple`); both use the same virtio header.

use crate::wire::{ipv4, ipv6, tcp};
use tun_rs::{
    VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEN,
};

/// Most segments gathered into one super-packet (as the kernel's GRO and UDP GSO allow).
pub(crate) const MAX_SEGMENTS: usize = 64;
/// Largest super-packet (IP header included), either family.
const MAX_IP_LEN: usize = 65_535;
/// Bytes of a virtio_net_hdr (without `num_buffers`, as tun-rs sets the device up).
pub(crate) const VNET_LEN: usize = VIRTIO_NET_HDR_LEN;
/// Room for a super-packet's header: virtio_net_hdr, the fixed IPv6 header (longer than IPv4's
/// without options) and the longest TCP header.
pub(crate) const MAX_HEADER: usize = VNET_LEN + ipv6::HEADER_LEN + tcp::MAX_HEADER_LEN;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` (linux/virtio_net.h): complete the checksum at
/// `csum_start + csum_offset`.
const VNET_F_NEEDS_CSUM: u8 = 1;

/// What a packet that may take part in a run says about itself: an IPv4 or IPv6 TCP segment with
/// data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// IPv6 (else IPv4).
    v6: bool,
    /// Bytes of IP and TCP header.
    header_len: usize,
    /// Bytes of TCP payload.
    payload_len: usize,
    seq: u32,
    psh: bool,
}

/// Parses `packet` (a whole inner IP packet) as a candidate: IPv4 without options, TCP, not a
/// fragment, total length equal to `packet.len()`; or IPv6 with TCP as the fixed header's next
/// header (no extension headers), payload length equal to the bytes after the fixed header; TCP
/// header complete, flags exactly ACK or ACK|PSH, some payload. Anything else is `None` and is
/// written as it is.
pub(crate) fn segment(packet: &[u8]) -> Option<Segment> {
    let (v6, ip_len, l4) = match packet.first()? >> 4 {
        4 => {
            let ip = ipv4::Packet::new_checked(packet).ok()?;
            if ip.header_len() != ipv4::HEADER_LEN
                || ip.protocol() != ipv4::PROTO_TCP
                || ip.is_fragment()
            {
                return None;
            }
            (false, ipv4::HEADER_LEN, &packet[ipv4::HEADER_LEN..])
        }
        6 => {
            let ip = ipv6::Packet::new_checked(packet).ok()?;
            if ip.next_header() != ipv6::NH_TCP {
                return None;
            }
            (true, ipv6::HEADER_LEN, &packet[ipv6::HEADER_LEN..])
        }
        _ => return None,
    };
    let tcp = tcp::Packet::new_checked(l4).ok()?;
    let payload_len = tcp.payload().len();
    if payload_len == 0 {
        return None;
    }
    let flags = tcp.flags();
    if flags != tcp::flags::ACK && flags != tcp::flags::ACK | tcp::flags::PSH {
        return None;
    }
    Some(Segment {
        v6,
        header_len: ip_len + tcp.header_len(),
        payload_len,
        seq: tcp.seq_number(),
        psh: flags & tcp::flags::PSH != 0,
    })
}

/// Offset of the TCP urgent pointer (2 bytes).
const URGENT: usize = 18;

/// Whether the headers of `a` and `b` (both accepted by [`segment`], of one family and with
/// equal header lengths) agree on everything but IP ID, total (payload) length, checksums,
/// sequence number and PSH.
fn same_flow(v6: bool, a: &[u8], b: &[u8]) -> bool {
    let (same_ip, ip_len) = if v6 {
        // Version, traffic class and flow label; next header (TCP in both) and hop limit;
        // addresses. Only the payload length (bytes 4..6) may differ.
        (
            a[..4] == b[..4] && a[6..ipv6::HEADER_LEN] == b[6..ipv6::HEADER_LEN],
            ipv6::HEADER_LEN,
        )
    } else {
        let (ia, ib) = (
            ipv4::Packet::new_unchecked(a),
            ipv4::Packet::new_unchecked(b),
        );
        // Flags and fragment offset are zero but for DF and the reserved bit (segment()).
        let same = ia.tos() == ib.tos()
            && ia.ttl() == ib.ttl()
            && ia.flags_and_offset() == ib.flags_and_offset()
            && ia.src_addr() == ib.src_addr()
            && ia.dst_addr() == ib.dst_addr();
        (same, ipv4::HEADER_LEN)
    };
    let (ta, tb) = (
        tcp::Packet::new_unchecked(&a[ip_len..]),
        tcp::Packet::new_unchecked(&b[ip_len..]),
    );
    same_ip
        && ta.src_port() == tb.src_port()
        && ta.dst_port() == tb.dst_port()
        && ta.ack_number() == tb.ack_number()
        && ta.data_offset_byte() == tb.data_offset_byte()
        && ta.window() == tb.window()
        // The urgent pointer means nothing without URG (which no candidate has), but a cut of
        // the super-packet repeats the first one's: only identical headers are joined.
        && a[ip_len + URGENT..ip_len + URGENT + 2] == b[ip_len + URGENT..ip_len + URGENT + 2]
        && ta.options() == tb.options()
}

/// A run of received TCP segments that can go into the TUN device as one super-packet: the
/// packets themselves (borrowed from the receive buffer) and what the next one must match.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpRun<'a> {
    packets: [&'a [u8]; MAX_SEGMENTS],
    count: usize,
    /// The first segment.
    head: Segment,
    /// Total length of the super-packet's IP packet.
    ip_len: usize,
    next_seq: u32,
    /// A shorter segment or one with PSH ended the run.
    closed: bool,
    /// The last segment carries PSH (the super-packet carries it too).
    psh: bool,
}

impl Default for TcpRun<'_> {
    fn default() -> Self {
        TcpRun {
            packets: [&[]; MAX_SEGMENTS],
            count: 0,
            head: Segment {
                v6: false,
                header_len: 0,
                payload_len: 0,
                seq: 0,
                psh: false,
            },
            ip_len: 0,
            next_seq: 0,
            closed: true,
            psh: false,
        }
    }
}

impl<'a> TcpRun<'a> {
    /// Number of segments.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The segments, whole inner packets, in arrival order.
    #[inline]
    pub(crate) fn packets(&self) -> &[&'a [u8]] {
        &self.packets[..self.count]
    }

    /// Empties the run.
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.count = 0;
    }

    /// Takes `packet` (parsed by [`segment`] as `seg`) into the run: as its first segment if the
    /// run is empty (always taken), or as its next one if it continues the run. Returns whether it
    /// did; a packet not taken ends the run (write the run, then start a new one with it).
    #[inline]
    pub(crate) fn push(&mut self, packet: &'a [u8], seg: Segment) -> bool {
        if self.count == 0 {
            self.packets[0] = packet;
            self.count = 1;
            self.head = seg;
            self.ip_len = seg.header_len + seg.payload_len;
            self.next_seq = seg.seq.wrapping_add(seg.payload_len as u32);
            self.closed = seg.psh;
            self.psh = seg.psh;
            return true;
        }
        let h = self.head;
        if self.closed
            || self.count >= MAX_SEGMENTS
            || seg.v6 != h.v6
            || seg.header_len != h.header_len
            || seg.payload_len > h.payload_len
            || self.ip_len + seg.payload_len > MAX_IP_LEN
            || seg.seq != self.next_seq
            || !same_flow(h.v6, self.packets[0], packet)
        {
            return false;
        }
        self.packets[self.count] = packet;
        self.count += 1;
        self.ip_len += seg.payload_len;
        self.next_seq = seg.seq.wrapping_add(seg.payload_len as u32);
        self.closed = seg.psh || seg.payload_len < h.payload_len;
        self.psh = seg.psh;
        true
    }

    /// Bytes of IP and TCP header in front of every segment's payload.
    #[inline]
    pub(crate) fn segment_header_len(&self) -> usize {
        self.head.header_len
    }

    /// Writes the super-packet's header into `out`: the virtio_net_hdr, then the first segment's
    /// IP and TCP headers with the run's total length (IPv4: and a new header checksum; IPv6: as
    /// the payload length), PSH if the last segment had it, and the pseudo-header sum in the TCP
    /// checksum field. Returns its length;
    /// each segment's payload (`packet[segment_header_len()..]`) follows it. The run must not be
    /// empty.
    pub(crate) fn write_header(&self, out: &mut [u8; MAX_HEADER]) -> usize {
        let hl = self.head.header_len;
        let (gso_type, ip_hl) = if self.head.v6 {
            (VIRTIO_NET_HDR_GSO_TCPV6, ipv6::HEADER_LEN)
        } else {
            (VIRTIO_NET_HDR_GSO_TCPV4, ipv4::HEADER_LEN)
        };
        let vnet = VirtioNetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type,
            hdr_len: hl as u16,
            gso_size: self.head.payload_len as u16,
            csum_start: ip_hl as u16,
            csum_offset: tcp::CHECKSUM_OFFSET as u16,
        };
        // Native byte order, as the kernel reads a legacy virtio header on a little-endian host.
        vnet.encode(&mut out[..])
            .expect("MAX_HEADER holds a virtio header");
        let header = &mut out[VNET_LEN..VNET_LEN + hl];
        header.copy_from_slice(&self.packets[0][..hl]);
        let l4_len = self.ip_len - ip_hl;
        let pseudo = if self.head.v6 {
            let mut ip = ipv6::Packet::new_unchecked(&mut header[..]);
            ip.set_payload_len(l4_len as u16);
            ip.pseudo_header_sum(ipv6::NH_TCP, l4_len as u32)
        } else {
            let mut ip = ipv4::Packet::new_unchecked(&mut header[..]);
            ip.set_total_len(self.ip_len as u16);
            ip.fill_checksum();
            ip.pseudo_header_sum(l4_len as u16)
        };
        let mut tcp = tcp::Packet::new_unchecked(&mut header[ip_hl..]);
        if self.psh {
            let flags = tcp.flags();
            tcp.set_flags(flags | tcp::flags::PSH);
        }
        tcp.set_checksum(pseudo);
        VNET_LEN + hl
    }
}

const _: () = assert!(MAX_HEADER >= VNET_LEN + ipv4::HEADER_LEN + tcp::HEADER_LEN);

/// The coalescing as the fuzz targets drive it (only under `cfg(fuzzing)`).
#[cfg(fuzzing)]
pub mod fuzzing {
    use super::{segment, TcpRun, MAX_HEADER, VNET_LEN};

    /// One write [`coalesce`] makes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Written {
        /// `packets[index]` as it is.
        Alone(usize),
        /// `count` packets from `packets[first]` on as one super-packet: its virtio header, and
        /// the packet (the rewritten header, then each segment's payload).
        Super {
            /// Index of the first segment.
            first: usize,
            /// Number of segments (at least 2).
            count: usize,
            /// The virtio_net_hdr.
            vnet: [u8; VNET_LEN],
            /// The super-packet.
            packet: Vec<u8>,
        },
    }

    /// Runs `packets` through [`TcpRun`] as the TUN sink does (a packet that is no candidate,
    /// or does not continue the run, ends it; a run of one goes alone) and returns the writes in
    /// order.
    pub fn coalesce(packets: &[&[u8]]) -> Vec<Written> {
        let mut out = Vec::new();
        let mut run = TcpRun::default();
        let mut first = 0;
        let flush = |run: &mut TcpRun<'_>, first: usize, out: &mut Vec<Written>| {
            match run.len() {
                0 => {}
                1 => out.push(Written::Alone(first)),
                n => {
                    let mut header = [0u8; MAX_HEADER];
                    let len = run.write_header(&mut header);
                    let mut packet = header[VNET_LEN..len].to_vec();
                    for p in run.packets() {
                        packet.extend_from_slice(&p[run.segment_header_len()..]);
                    }
                    let mut vnet = [0u8; VNET_LEN];
                    vnet.copy_from_slice(&header[..VNET_LEN]);
                    out.push(Written::Super {
                        first,
                        count: n,
                        vnet,
                        packet,
                    });
                }
            }
            run.clear();
        };
        for (i, &p) in packets.iter().enumerate() {
            let Some(seg) = segment(p) else {
                flush(&mut run, first, &mut out);
                out.push(Written::Alone(i));
                continue;
            };
            if run.push(p, seg) {
                if run.len() == 1 {
                    first = i;
                }
                continue;
            }
            flush(&mut run, first, &mut out);
            first = i;
            let started = run.push(p, seg);
            debug_assert!(started);
        }
        flush(&mut run, first, &mut out);
        out
    }
}
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const SRC: [u8; 4] = [10, 1, 1, 2];
    const DST: [u8; 4] = [10, 1, 2, 3];

    /// A TCP segment with `opts` options bytes, flags ACK (| PSH), payload `len` bytes of `fill`.
    pub(crate) fn seg_pkt(seq: u32, len: usize, psh: bool, opts: &[u8]) -> Vec<u8> {
        let tcp_len = 20 + opts.len();
        let total = 20 + tcp_len + len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[1] = 0x02;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&seq.to_be_bytes()[2..]); // some IP ID
        p[6] = 0x40; // DF
        p[8] = 63;
        p[9] = 6;
        p[12..16].copy_from_slice(&SRC);
        p[16..20].copy_from_slice(&DST);
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        t[12] = ((tcp_len / 4) as u8) << 4;
        t[13] = if psh { 0x18 } else { 0x10 };
        t[14..16].copy_from_slice(&501u16.to_be_bytes());
        t[16..18].copy_from_slice(&[0xab, 0xcd]); // whatever the sender's checksum was
        t[20..tcp_len].copy_from_slice(opts);
        for (i, b) in t[tcp_len..].iter_mut().enumerate() {
            *b = (seq as usize + i) as u8;
        }
        p
    }

    pub(crate) const TS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9];

    /// Runs `pkts` through start/push; returns the run and how many were taken.
    fn build(pkts: &[Vec<u8>]) -> (TcpRun<'_>, usize) {
        let mut run = TcpRun::default();
        assert!(offer(&mut run, &pkts[0]), "head qualifies");
        let mut taken = 1;
        for p in &pkts[1..] {
            if !offer(&mut run, p) {
                break;
            }
            taken += 1;
        }
        (run, taken)
    }

    /// Pushes `packet` if it is a candidate at all.
    fn offer<'a>(run: &mut TcpRun<'a>, packet: &'a [u8]) -> bool {
        segment(packet).is_some_and(|seg| run.push(packet, seg))
    }

    pub(crate) fn stream(n: usize, size: usize, last: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let len = if i + 1 == n { last } else { size };
                seg_pkt(1000 + (i * size) as u32, len, false, &TS)
            })
            .collect()
    }

    #[test]
    fn consecutive_segments_form_one_run() {
        let pkts = stream(5, 1388, 600);
        let (run, taken) = build(&pkts);
        assert_eq!(taken, 5);
        assert_eq!(run.len(), 5);
        assert_eq!(run.ip_len, 52 + 4 * 1388 + 600);
        // A shorter segment ends the run.
        let mut more = pkts.clone();
        more.push(seg_pkt(1000 + 4 * 1388 + 600, 600, false, &TS));
        assert_eq!(build(&more).1, 5);
        // Sequence numbers may wrap.
        let wrap: Vec<Vec<u8>> = (0..3)
            .map(|i| seg_pkt(u32::MAX - 99 + i * 100, 100, false, &[]))
            .collect();
        assert_eq!(build(&wrap).1, 3);
    }

    #[test]
    fn non_tcp_in_the_middle_is_not_taken() {
        let pkts = stream(3, 500, 500);
        let mut udp = pkts[1].clone();
        udp[9] = 17;
        let mut run = TcpRun::default();
        assert!(!offer(&mut run, &udp), "a run does not start with UDP");
        assert_eq!(run.len(), 0);
        assert!(offer(&mut run, &pkts[0]));
        assert!(!offer(&mut run, &udp), "not TCP");
        assert!(offer(&mut run, &pkts[1]), "the run is as it was");
        assert_eq!(run.packets(), [&pkts[0][..], &pkts[1][..]]);
        run.clear();
        assert_eq!(run.len(), 0);
        assert!(offer(&mut run, &pkts[2]), "a cleared run starts afresh");
        assert_eq!(run.packets(), [&pkts[2][..]]);
    }

    #[test]
    fn psh_only_on_the_last() {
        let mut pkts = stream(4, 1000, 1000);
        pkts[2] = seg_pkt(1000 + 2000, 1000, true, &TS);
        let (run, taken) = build(&pkts);
        assert_eq!(taken, 3, "PSH ends the run");
        assert!(run.psh);
        // A PSH head is a run of one.
        let psh_head = [pkts[2].clone(), pkts[3].clone()];
        let (run, taken) = build(&psh_head);
        assert_eq!((run.len(), taken), (1, 1));
    }

    #[test]
    fn candidates_are_plain_ipv4_tcp_with_data() {
        let good = seg_pkt(1, 100, false, &TS);
        assert!(segment(&good).is_some());
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = good.clone();
            f(&mut p);
            segment(&p)
        };
        assert_eq!(bad(&|p| p[0] = 0x46), None, "IP options");
        assert_eq!(bad(&|p| p[0] = 0x65), None, "not IPv4");
        assert_eq!(bad(&|p| p[9] = 17), None, "UDP");
        assert_eq!(bad(&|p| p[6] = 0x20), None, "more fragments");
        assert_eq!(bad(&|p| p[7] = 0x01), None, "fragment offset");
        assert_eq!(bad(&|p| p[3] ^= 1), None, "length mismatch");
        for flags in [
            0x02, 0x01, 0x04, 0x20, 0x30, 0x50, 0x90, 0x00, 0x11, 0x12, 0x14,
        ] {
            assert_eq!(bad(&|p| p[20 + 13] = flags), None, "flags {flags:#x}");
        }
        assert_eq!(bad(&|p| p[20 + 12] = 0x40), None, "data offset < 20");
        let mut short = seg_pkt(1, 10, false, &[]);
        short[20 + 12] = 0xf0;
        assert_eq!(segment(&short), None, "data offset past the packet");
        assert_eq!(segment(&seg_pkt(1, 0, false, &TS)), None, "no payload");
        assert_eq!(segment(&good[..30]), None, "truncated");
        assert_eq!(segment(&[]), None);
    }

    #[test]
    fn each_difference_ends_a_run() {
        let pkts = stream(2, 500, 500);
        assert_eq!(build(&pkts).1, 2);
        let differ = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut second = pkts[1].clone();
            f(&mut second);
            let mut run = TcpRun::default();
            assert!(offer(&mut run, &pkts[0]), "head");
            offer(&mut run, &second)
        };
        assert!(differ(&|_| {}), "control");
        assert!(differ(&|p| p[4] ^= 0xff), "IP ID may differ");
        assert!(!differ(&|p| p[1] = 0), "TOS");
        assert!(!differ(&|p| p[8] = 64), "TTL");
        assert!(!differ(&|p| p[6] = 0), "DF");
        assert!(!differ(&|p| p[15] = 9), "source");
        assert!(!differ(&|p| p[19] = 9), "destination");
        assert!(!differ(&|p| p[21] = 9), "source port");
        assert!(!differ(&|p| p[23] = 9), "destination port");
        assert!(!differ(&|p| p[27] ^= 1), "sequence gap");
        assert!(!differ(&|p| p[31] ^= 1), "ack");
        assert!(!differ(&|p| p[35] ^= 1), "window");
        assert!(!differ(&|p| p[39] ^= 1), "urgent pointer");
        assert!(!differ(&|p| p[32] = 0x81), "reserved/AE bits");
        assert!(!differ(&|p| p[44] ^= 1), "options bytes");
        // A different TCP header length.
        let mut run = TcpRun::default();
        assert!(offer(&mut run, &pkts[0]), "head");
        let other = seg_pkt(1500, 500, false, &TS[..8]);
        assert!(segment(&other).is_some());
        assert!(!offer(&mut run, &other));
        // A longer segment than the first.
        let mut run = TcpRun::default();
        assert!(offer(&mut run, &pkts[0]), "head");
        let longer = seg_pkt(1500, 501, false, &TS);
        assert!(segment(&longer).is_some());
        assert!(!offer(&mut run, &longer));
        assert_eq!(run.len(), 1);
        assert_eq!(run.packets(), &[&pkts[0][..]]);
    }

    #[test]
    fn limits_segments_and_bytes() {
        let many = stream(70, 100, 100);
        let (run, taken) = build(&many);
        assert_eq!((run.len(), taken), (MAX_SEGMENTS, MAX_SEGMENTS));
        // 52 + 47 × 1388 = 65 288 fits; one more does not.
        let big = stream(49, 1388, 1388);
        let (run, taken) = build(&big);
        assert_eq!(taken, 47);
        assert!(run.ip_len <= MAX_IP_LEN);
    }

    /// RFC 1071 checksum written out the textbook way, independent of `wire::checksum`.
    fn rfc1071(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < data.len() {
            let hi = u32::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |b| u32::from(*b));
            sum += hi | lo;
            sum = (sum & 0xffff) + (sum >> 16);
            i += 2;
        }
        !(sum as u16)
    }

    #[test]
    fn header_rewrite_matches_an_independent_computation() {
        let pkts = stream(3, 1388, 700);
        let (run, _) = build(&pkts);
        let mut out = [0u8; MAX_HEADER];
        let n = run.write_header(&mut out);
        assert_eq!(n, VNET_LEN + 52);
        // The virtio header is what tun-rs's coalescing writes.
        let mut want = [0u8; VNET_LEN];
        tun_rs::VirtioNetHdr {
            flags: 1,
            gso_type: tun_rs::VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1388,
            csum_start: 20,
            csum_offset: 16,
        }
        .encode(&mut want)
        .expect("10 bytes");
        assert_eq!(out[..VNET_LEN], want);
        let hdr = &out[VNET_LEN..n];
        let total = 52 + 2 * 1388 + 700;
        assert_eq!(hdr[2..4], (total as u16).to_be_bytes());
        // Everything but total length and checksums is the first segment's header.
        let mut a = hdr.to_vec();
        let mut b = pkts[0][..52].to_vec();
        for v in [&mut a, &mut b] {
            v[2..4].fill(0);
            v[10..12].fill(0);
            v[36..38].fill(0);
        }
        assert_eq!(a, b);
        // A valid IPv4 header sums to zero.
        assert_eq!(rfc1071(&hdr[..20]), 0);
        // The TCP field holds the uncomplemented pseudo-header sum: completing the checksum
        // over the super-packet from there (what the kernel does for CHECKSUM_PARTIAL) must
        // give the full TCP checksum computed from scratch.
        let mut packet = hdr.to_vec();
        for p in &pkts {
            packet.extend_from_slice(&p[52..]);
        }
        assert_eq!(packet.len(), total);
        let tcp_len = (total - 20) as u16;
        let pseudo_field = u16::from_be_bytes([hdr[36], hdr[37]]);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&SRC);
        pseudo.extend_from_slice(&DST);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&tcp_len.to_be_bytes());
        assert_eq!(pseudo_field, !rfc1071(&pseudo));
        let completed = rfc1071(&packet[20..]);
        let mut zeroed = packet.clone();
        zeroed[36..38].fill(0);
        let mut whole = pseudo.clone();
        whole.extend_from_slice(&zeroed[20..]);
        assert_eq!(completed, rfc1071(&whole));
        // No PSH anywhere: none in the header.
        assert_eq!(hdr[33], 0x10);
    }

    #[test]
    fn psh_of_the_last_segment_goes_into_the_header() {
        let mut pkts = stream(2, 800, 300);
        pkts[1] = seg_pkt(1800, 300, true, &TS);
        let (run, taken) = build(&pkts);
        assert_eq!(taken, 2);
        let mut out = [0u8; MAX_HEADER];
        let n = run.write_header(&mut out);
        assert_eq!(out[VNET_LEN + 33], 0x18);
        assert_eq!(n, VNET_LEN + 52);
    }

    const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x02];
    const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x03];

    /// An IPv6 TCP segment fd00::102 → fd00::203 (traffic class 0x02, a flow label, hop limit
    /// 63) with `opts` options bytes, flags ACK (| PSH), payload `len` bytes, and a valid TCP
    /// checksum (computed by etherparse).
    pub(crate) fn seg6_pkt(seq: u32, len: usize, psh: bool, opts: &[u8]) -> Vec<u8> {
        let tcp_len = 20 + opts.len();
        let mut p = vec![0u8; 40 + tcp_len + len];
        p[..4].copy_from_slice(&0x6020_abcdu32.to_be_bytes());
        p[4..6].copy_from_slice(&((tcp_len + len) as u16).to_be_bytes());
        p[6] = 6;
        p[7] = 63;
        p[8..24].copy_from_slice(&SRC6);
        p[24..40].copy_from_slice(&DST6);
        let t = &mut p[40..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        t[12] = ((tcp_len / 4) as u8) << 4;
        t[13] = if psh { 0x18 } else { 0x10 };
        t[14..16].copy_from_slice(&501u16.to_be_bytes());
        t[20..tcp_len].copy_from_slice(opts);
        for (i, b) in t[tcp_len..].iter_mut().enumerate() {
            *b = (seq as usize + i) as u8;
        }
        let tcp = etherparse::TcpSlice::from_slice(&p[40..]).expect("TCP");
        let sum = tcp
            .to_header()
            .calc_checksum_ipv6_raw(SRC6, DST6, tcp.payload())
            .expect("checksum");
        p[40 + 16..40 + 18].copy_from_slice(&sum.to_be_bytes());
        p
    }

    pub(crate) fn stream6(n: usize, size: usize, last: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let len = if i + 1 == n { last } else { size };
                seg6_pkt(7000 + (i * size) as u32, len, i + 1 == n, &TS)
            })
            .collect()
    }

    /// The super-packet `run` makes: its virtio header decoded, and the packet (header, then
    /// every segment's payload).
    fn super_packet(run: &TcpRun<'_>) -> (tun_rs::VirtioNetHdr, Vec<u8>) {
        let mut out = [0u8; MAX_HEADER];
        let n = run.write_header(&mut out);
        let vnet = tun_rs::VirtioNetHdr::decode(&out[..VNET_LEN]).expect("virtio header");
        let mut packet = out[VNET_LEN..n].to_vec();
        for p in run.packets() {
            packet.extend_from_slice(&p[run.segment_header_len()..]);
        }
        (vnet, packet)
    }

    #[test]
    fn ipv6_segments_form_one_tcpv6_super_packet() {
        use etherparse::{Ipv6Slice, TcpSlice};
        for (n, size, last, opts) in [
            (5, 1368, 600, &TS[..]),
            (2, 1000, 1000, &[][..]),
            (47, 1368, 1368, &TS[..]),
        ] {
            let pkts = stream6(n, size, last);
            let (run, taken) = build(&pkts);
            let hl = 40 + 20 + opts.len();
            // 47 × (1368 + 72) would pass 65 535 bytes: the run stops before.
            let want_taken = n.min((MAX_IP_LEN - hl) / size);
            assert_eq!((run.len(), taken), (want_taken, want_taken));
            let (vnet, packet) = super_packet(&run);
            assert_eq!(vnet.flags, 1);
            assert_eq!(vnet.gso_type, tun_rs::VIRTIO_NET_HDR_GSO_TCPV6);
            assert_eq!(usize::from(vnet.hdr_len), 40 + 32);
            assert_eq!(usize::from(vnet.gso_size), size);
            assert_eq!(vnet.csum_start, 40);
            assert_eq!(vnet.csum_offset, 16);
            // etherparse reads the super-packet as one IPv6 TCP packet with the first segment's
            // headers.
            let ip = Ipv6Slice::from_slice(&packet).expect("IPv6");
            let h = ip.header();
            assert_eq!(usize::from(h.payload_length()) + 40, packet.len());
            assert_eq!(h.traffic_class(), 0x02);
            assert_eq!(h.flow_label().value(), 0xabcd);
            assert_eq!(h.hop_limit(), 63);
            let tcp = TcpSlice::from_slice(ip.payload().payload).expect("TCP");
            assert_eq!(tcp.sequence_number(), 7000);
            assert_eq!(tcp.psh(), taken == n, "PSH only if the last segment is in");
            assert!(tcp.ack() && !tcp.fin() && !tcp.syn());
            // The checksum field holds the uncomplemented pseudo-header sum: completing it over
            // the whole super-packet (what the kernel does for CHECKSUM_PARTIAL) gives the TCP
            // checksum etherparse computes from scratch.
            let tcp_len = packet.len() - 40;
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&SRC6);
            pseudo.extend_from_slice(&DST6);
            pseudo.extend_from_slice(&(tcp_len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
            assert_eq!(tcp.checksum(), !rfc1071(&pseudo));
            let want = tcp
                .to_header()
                .calc_checksum_ipv6_raw(SRC6, DST6, tcp.payload())
                .expect("checksum");
            assert_eq!(rfc1071(&packet[40..]), want);
            // tun-rs cuts it back into exactly the segments it was made of.
            let mut input = packet.clone();
            let mut bufs = vec![vec![0u8; 2048]; MAX_SEGMENTS];
            let mut sizes = vec![0usize; MAX_SEGMENTS];
            let hdr = tun_rs::VirtioNetHdr { flags: 0, ..vnet };
            let got = tun_rs::gso_split(&mut input, hdr, &mut bufs, &mut sizes, 0, true)
                .expect("tun-rs cuts it");
            assert_eq!(got, taken);
            for (i, p) in pkts[..taken].iter().enumerate() {
                let mut want = p.clone();
                if i + 1 == taken {
                    // The last segment tun-rs makes carries the super-packet's PSH.
                    want[40 + 13] = packet[40 + 13];
                    let t = TcpSlice::from_slice(&want[40..]).expect("TCP");
                    let sum = t
                        .to_header()
                        .calc_checksum_ipv6_raw(SRC6, DST6, t.payload())
                        .expect("checksum");
                    want[56..58].copy_from_slice(&sum.to_be_bytes());
                }
                assert!(bufs[i][..sizes[i]] == want[..], "segment {i} of {n}");
            }
        }
    }

    #[test]
    fn ipv6_candidates_have_no_extension_headers() {
        let good = seg6_pkt(1, 100, false, &TS);
        let seg = segment(&good).expect("a candidate");
        assert!(seg.v6);
        assert_eq!(seg.header_len, 72);
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = good.clone();
            f(&mut p);
            segment(&p)
        };
        // A destination options header (8 bytes, padding) in front of TCP.
        let mut ext = good[..40].to_vec();
        ext[6] = 60;
        ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        ext.extend_from_slice(&good[40..]);
        let len = (ext.len() - 40) as u16;
        ext[4..6].copy_from_slice(&len.to_be_bytes());
        assert!(
            etherparse::SlicedPacket::from_ip(&ext).is_ok(),
            "a well-formed packet"
        );
        assert_eq!(segment(&ext), None, "extension header");
        for nh in [0, 43, 44, 17, 58, 59] {
            assert_eq!(bad(&|p| p[6] = nh), None, "next header {nh}");
        }
        assert_eq!(bad(&|p| p[5] ^= 1), None, "payload length mismatch");
        assert_eq!(bad(&|p| p[4..6].fill(0)), None, "payload length 0");
        assert_eq!(bad(&|p| p[0] = 0x70), None, "version 7");
        assert_eq!(bad(&|p| p[40 + 13] = 0x11), None, "FIN");
        assert_eq!(bad(&|p| p[40 + 13] = 0x90), None, "CWR");
        let mut short = seg6_pkt(1, 10, false, &[]);
        short[40 + 12] = 0xf0;
        assert_eq!(segment(&short), None, "data offset past the packet");
        assert_eq!(bad(&|p| p[40 + 12] = 0x40), None, "data offset < 20");
        assert_eq!(segment(&seg6_pkt(1, 0, false, &TS)), None, "no payload");
        assert_eq!(segment(&good[..39]), None, "truncated");
        assert_eq!(segment(&[0x60]), None);
    }

    #[test]
    fn each_ipv6_difference_ends_a_run() {
        let pkts: Vec<Vec<u8>> = (0..2)
            .map(|i| seg6_pkt(100 + i * 500, 500, false, &TS))
            .collect();
        let differ = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut second = pkts[1].clone();
            f(&mut second);
            let mut run = TcpRun::default();
            assert!(offer(&mut run, &pkts[0]), "head");
            offer(&mut run, &second)
        };
        assert!(differ(&|_| {}), "control");
        assert!(differ(&|p| p[56] ^= 0xff), "checksum may differ");
        assert!(!differ(&|p| p[1] ^= 0x10), "traffic class");
        assert!(!differ(&|p| p[0] ^= 0x01), "traffic class, high bits");
        assert!(!differ(&|p| p[3] ^= 1), "flow label");
        assert!(!differ(&|p| p[7] = 64), "hop limit");
        assert!(!differ(&|p| p[9] = 9), "source");
        assert!(!differ(&|p| p[39] = 9), "destination");
        assert!(!differ(&|p| p[41] = 9), "source port");
        assert!(!differ(&|p| p[43] = 9), "destination port");
        assert!(!differ(&|p| p[47] ^= 1), "sequence gap");
        assert!(!differ(&|p| p[51] ^= 1), "ack");
        assert!(!differ(&|p| p[55] ^= 1), "window");
        assert!(!differ(&|p| p[58] ^= 1), "urgent pointer");
        assert!(!differ(&|p| p[64] ^= 1), "options bytes");
        // The families never mix, even with equal header lengths: IPv4 with 40 bytes of TCP
        // header and IPv6 with 20 are 60 bytes each.
        let v4 = seg_pkt(100, 500, false, &[1; 20]);
        let v6 = seg6_pkt(600, 500, false, &[]);
        let (a, b) = (segment(&v4).expect("IPv4"), segment(&v6).expect("IPv6"));
        assert_eq!(a.header_len, b.header_len);
        for (first, second) in [(&v4, &v6), (&v6, &v4)] {
            let mut run = TcpRun::default();
            assert!(offer(&mut run, first));
            assert!(!offer(&mut run, second));
        }
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Mutated segments of both families and random bytes: parsing, pushing and writing the
        // header of whatever run forms never panic.
        let mut rng = Rng(0x5eed_1234_abcd_9876);
        let bases = [stream(4, 700, 300), stream6(4, 700, 300)];
        for round in 0..20_000 {
            let base = &bases[round % 2];
            let mut pkts: Vec<Vec<u8>> = base.clone();
            for p in pkts.iter_mut() {
                for _ in 0..(rng.next() % 3) {
                    let r = rng.next() as usize;
                    let at = r % p.len();
                    p[at] ^= (r >> 32) as u8;
                }
                if rng.next() % 8 == 0 {
                    let cut = rng.next() as usize % (p.len() + 1);
                    p.truncate(cut);
                }
            }
            let mut run = TcpRun::default();
            for p in &pkts {
                if let Some(seg) = segment(p) {
                    if !run.push(p, seg) {
                        run.clear();
                        assert!(run.push(p, seg));
                    }
                }
            }
            if run.len() > 0 {
                let mut out = [0u8; MAX_HEADER];
                let n = run.write_header(&mut out);
                assert_eq!(n, VNET_LEN + run.segment_header_len());
            }
        }
    }
}
