//! The multiqueue TUN device: one queue per worker.

use crate::sys;
use std::io::{self, IoSlice};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

/// How to create the device.
#[derive(Debug, Clone)]
pub struct TunConfig {
    /// Interface name (`weft0`).
    pub name: String,
    /// Address of the device, set as /32 (flannel uses the lease's network address).
    pub addr: Ipv4Addr,
    /// Device MTU (underlay MTU − 28 for the udp wire format).
    pub mtu: u16,
    /// Number of queues (one per worker).
    pub queues: usize,
    /// Open the device with IFF_VNET_HDR and TSO/USO offloads: reads return TCP/UDP
    /// super-packets of up to 64 KiB that [`TunQueue::recv_multiple`] cuts into packets, and
    /// [`TunQueue::send_multiple`] coalesces TCP segments into super-packets; the workers write
    /// runs of received TCP segments as super-packets themselves ([`TunQueue::write_gathered`]).
    pub offload: bool,
}

/// Kernel-side queue length of the device: packets the kernel holds for us to read. The default of
/// 500 overflows under TCP bursts while a worker is busy with the other direction.
const TX_QUEUE_LEN: u32 = 4096;

/// One queue of the device, owned by one worker. The device disappears when the last queue closes.
pub struct TunQueue {
    dev: tun_rs::SyncDevice,
    offload: bool,
}

/// A virtio_net_hdr saying "no offload": prefixed to single packets written with offloads on.
const PLAIN_VNET_HDR: [u8; tun_rs::VIRTIO_NET_HDR_LEN] = [0; tun_rs::VIRTIO_NET_HDR_LEN];

impl std::fmt::Debug for TunQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunQueue")
            .field("fd", &self.dev.as_raw_fd())
            .finish()
    }
}

impl TunQueue {
    /// Reads one packet without blocking (`WouldBlock` when none is waiting).
    #[inline]
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf)
    }

    /// Writes one packet (with offloads on, behind a "no offload" virtio header).
    #[inline]
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        if self.offload {
            let iov = [io::IoSlice::new(&PLAIN_VNET_HDR), io::IoSlice::new(packet)];
            self.dev
                .send_vectored(&iov)
                .map(|n| n.saturating_sub(PLAIN_VNET_HDR.len()))
        } else {
            self.dev.send(packet)
        }
    }

    /// With offloads: writes one packet gathered from `parts` with one `writev`. The first part
    /// starts with the packet's virtio_net_hdr (a TSO super-packet's: see `tso`); the kernel
    /// takes the packet whole or not at all. Returns the bytes written, header included.
    #[inline]
    pub fn write_gathered(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        sys::writev(self.dev.as_fd(), parts)
    }

    /// Whether the queue was opened with offloads.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// With offloads: reads one (super-)packet into `scratch` and cuts it into packets placed at
    /// `bufs[i][offset..][..sizes[i]]`; returns how many. Checksums are completed.
    #[inline]
    pub fn recv_multiple(
        &self,
        scratch: &mut [u8],
        bufs: &mut [Vec<u8>],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        self.dev.recv_multiple(scratch, bufs, sizes, offset)
    }

    /// With offloads: writes the packets `bufs[i][offset..]` (each buffer's length ends its
    /// packet), coalescing consecutive TCP segments of a flow into super-packets first. Buffers
    /// need spare capacity (2 × offset + 64 KiB) so that coalescing never reallocates.
    #[inline]
    pub fn send_multiple(
        &self,
        gro: &mut tun_rs::GROTable,
        bufs: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<usize> {
        self.dev.send_multiple(gro, bufs, offset)
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

/// Creates the device with `cfg.queues` queues, addresses it, sets its MTU and brings it up (routes
/// through it are the caller's). Fails if a device of that name exists already (another weft, or a stale
/// flannel), rather than attaching to it as another queue.
pub fn create(cfg: &TunConfig) -> io::Result<Vec<TunQueue>> {
    if cfg.name.is_empty() || cfg.name.len() > 15 || cfg.name.contains(['/', ' ']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} is not a valid interface name (1-15 characters)",
                cfg.name
            ),
        ));
    }
    if Path::new("/sys/class/net").join(&cfg.name).exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "network device {} already exists (is another weft or flanneld running?)",
                cfg.name
            ),
        ));
    }
    let first = tun_rs::DeviceBuilder::new()
        .name(&cfg.name)
        .ipv4(cfg.addr, 32u8, None)
        .mtu(cfg.mtu)
        .multi_queue(true)
        .offload(cfg.offload)
        .tx_queue_len(TX_QUEUE_LEN)
        .enable(false)
        .build_sync()?;
    // The overlay carries IPv4 only; without this the kernel sends router solicitations and MLD
    // reports into the device, which would be counted as drops. Done before the link goes up.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", cfg.name),
        "1",
    );
    // ICMP errors weft originates carry the device's own address as source (as flannel's do); the
    // kernel drops packets with a local source arriving on an interface unless accept_local is set.
    std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{}/accept_local", cfg.name),
        "1",
    )?;
    first.enabled(true)?;
    let mut queues = Vec::with_capacity(cfg.queues);
    for _ in 1..cfg.queues.max(1) {
        let q = first.try_clone()?;
        q.set_nonblocking(true)?;
        queues.push(TunQueue {
            dev: q,
            offload: cfg.offload,
        });
    }
    first.set_nonblocking(true)?;
    queues.insert(
        0,
        TunQueue {
            dev: first,
            offload: cfg.offload,
        },
    );
    Ok(queues)
}

/// Received TCP segments written back as one TSO super-packet.
///
/// A UDP GRO buffer from one peer normally holds the cut-up of one TSO super-packet that the peer
/// read from its TUN device: consecutive segments of one TCP flow with identical headers. With
/// offloads such a run goes into the TUN device as one packet: a virtio_net_hdr asking for
/// segmentation (`GSO_TCPV4`, `gso_size` = the segments' payload size) and checksum completion
/// (`NEEDS_CSUM`), the first segment's IPv4 and TCP headers rewritten for the whole run, then every
/// segment's payload, gathered by one `writev` from where it lies in the receive buffer. The
/// header is filled exactly as tun-rs's coalescing (a port of wireguard-go's `tcpGRO`) fills it:
/// IPv4 total length and header checksum recomputed, and the TCP checksum field holding the folded
/// pseudo-header sum (not complemented), which is what the kernel expects of `CHECKSUM_PARTIAL`.
///
/// The rules follow wireguard-go's `tcpPacketsCanCoalesce`, restricted to runs in arrival order:
/// IPv4 without options, not a fragment; same addresses, TOS, TTL and DF; same ports, TCP header
/// (options included), acknowledgment number and window; flags exactly ACK (PSH only on the last);
/// consecutive sequence numbers; equal payload sizes except a shorter last one; at most
/// [`MAX_SEGMENTS`](tso::MAX_SEGMENTS) segments and 65 535 bytes of IPv4 packet.
pub(crate) mod tso {
    use std::ops::Range;

    /// Most segments gathered into one super-packet (as the kernel's GRO and UDP GSO allow).
    pub(crate) const MAX_SEGMENTS: usize = 64;
    /// Largest IPv4 packet.
    const MAX_IP_LEN: usize = 65_535;
    /// Bytes of an IPv4 header without options (the only kind coalesced).
    const IPV4_LEN: usize = 20;
    /// Bytes of a virtio_net_hdr (without `num_buffers`, as tun-rs sets the device up).
    pub(crate) const VNET_LEN: usize = tun_rs::VIRTIO_NET_HDR_LEN;
    /// Room for a super-packet's header: virtio_net_hdr, IPv4 and the longest TCP header.
    pub(crate) const MAX_HEADER: usize = VNET_LEN + IPV4_LEN + 60;
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM` (linux/virtio_net.h): complete the checksum at
    /// `csum_start + csum_offset`.
    const VNET_F_NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_GSO_TCPV4`.
    const VNET_GSO_TCPV4: u8 = 1;
    /// IP protocol number of TCP.
    const PROTO_TCP: u8 = 6;
    /// TCP flag bits.
    const TCP_PSH: u8 = 0x08;
    const TCP_ACK: u8 = 0x10;

    mod field {
        // IPv4 header.
        pub(super) const VER_IHL: usize = 0;
        pub(super) const TOS: usize = 1;
        pub(super) const TOTAL_LEN: super::Range<usize> = 2..4;
        pub(super) const FLAGS_FRAG: super::Range<usize> = 6..8;
        pub(super) const TTL: usize = 8;
        pub(super) const PROTOCOL: usize = 9;
        pub(super) const IP_CHECKSUM: super::Range<usize> = 10..12;
        pub(super) const SRC: super::Range<usize> = 12..16;
        pub(super) const DST: super::Range<usize> = 16..20;
        // TCP header, from its start.
        pub(super) const PORTS: super::Range<usize> = 0..4;
        pub(super) const SEQ: super::Range<usize> = 4..8;
        pub(super) const ACK: super::Range<usize> = 8..12;
        pub(super) const DATA_OFF: usize = 12;
        pub(super) const FLAGS: usize = 13;
        pub(super) const WINDOW: super::Range<usize> = 14..16;
        pub(super) const TCP_CHECKSUM: super::Range<usize> = 16..18;
        pub(super) const OPTIONS: usize = 20;
    }
    /// IPv4 flags: more fragments, and the fragment offset.
    const MF_AND_OFFSET: u16 = 0x3fff;

    /// A packet that may take part in a run: an IPv4 TCP segment with data.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Segment {
        /// Bytes of IPv4 and TCP header.
        pub(crate) header_len: usize,
        /// Bytes of TCP payload.
        pub(crate) payload_len: usize,
        seq: u32,
        psh: bool,
    }

    fn be16(b: &[u8], r: Range<usize>) -> u16 {
        u16::from_be_bytes([b[r.start], b[r.start + 1]])
    }

    fn be32(b: &[u8], r: Range<usize>) -> u32 {
        u32::from_be_bytes([b[r.start], b[r.start + 1], b[r.start + 2], b[r.start + 3]])
    }

    /// Parses `pkt` (a whole inner IPv4 packet) as a candidate: IPv4 without options, TCP, not a
    /// fragment, total length equal to `pkt.len()`, TCP header complete, flags exactly ACK or
    /// ACK|PSH, some payload. Anything else is `None` and is written as it is.
    pub(crate) fn segment(pkt: &[u8]) -> Option<Segment> {
        if pkt.len() < IPV4_LEN + field::OPTIONS
            || pkt[field::VER_IHL] != 0x45
            || pkt[field::PROTOCOL] != PROTO_TCP
            || usize::from(be16(pkt, field::TOTAL_LEN)) != pkt.len()
            || be16(pkt, field::FLAGS_FRAG) & MF_AND_OFFSET != 0
        {
            return None;
        }
        let tcp = &pkt[IPV4_LEN..];
        let tcp_len = usize::from(tcp[field::DATA_OFF] >> 4) * 4;
        if tcp_len < field::OPTIONS || tcp_len >= tcp.len() {
            return None; // a bad data offset, or no payload
        }
        let flags = tcp[field::FLAGS];
        if flags != TCP_ACK && flags != TCP_ACK | TCP_PSH {
            return None;
        }
        Some(Segment {
            header_len: IPV4_LEN + tcp_len,
            payload_len: tcp.len() - tcp_len,
            seq: be32(tcp, field::SEQ),
            psh: flags & TCP_PSH != 0,
        })
    }

    /// A run of segments that can go into the TUN device as one super-packet. The caller keeps
    /// the first segment's bytes (`head_pkt`) and where each payload lies.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Run {
        head: Segment,
        count: usize,
        /// Total length of the super-packet's IPv4 packet.
        ip_len: usize,
        next_seq: u32,
        /// A shorter segment or one with PSH ended the run.
        closed: bool,
        /// The last segment carries PSH (the super-packet carries it too).
        psh: bool,
    }

    impl Run {
        /// A run of the one segment `head`.
        pub(crate) fn start(head: Segment) -> Run {
            Run {
                head,
                count: 1,
                ip_len: head.header_len + head.payload_len,
                next_seq: head.seq.wrapping_add(head.payload_len as u32),
                closed: head.psh,
                psh: head.psh,
            }
        }

        /// Number of segments.
        pub(crate) fn count(&self) -> usize {
            self.count
        }

        /// Appends `pkt` (parsed as `seg`) if it may follow the run whose first packet is
        /// `head_pkt`; returns whether it did.
        pub(crate) fn push(&mut self, head_pkt: &[u8], pkt: &[u8], seg: Segment) -> bool {
            let h = self.head;
            let hl = h.header_len;
            if self.closed
                || self.count >= MAX_SEGMENTS
                || seg.header_len != hl
                || seg.payload_len > h.payload_len
                || self.ip_len + seg.payload_len > MAX_IP_LEN
                || seg.seq != self.next_seq
                || head_pkt.len() < hl
                || pkt.len() < hl
            {
                return false;
            }
            let (a, b) = (&head_pkt[..hl], &pkt[..hl]);
            // Flags and fragment offset are zero but for DF and the reserved bit (segment()).
            let same_ip = a[field::TOS] == b[field::TOS]
                && a[field::TTL] == b[field::TTL]
                && a[field::FLAGS_FRAG] == b[field::FLAGS_FRAG]
                && a[field::SRC] == b[field::SRC]
                && a[field::DST] == b[field::DST];
            let (ta, tb) = (&a[IPV4_LEN..], &b[IPV4_LEN..]);
            let same_tcp = ta[field::PORTS] == tb[field::PORTS]
                && ta[field::ACK] == tb[field::ACK]
                && ta[field::DATA_OFF] == tb[field::DATA_OFF]
                && ta[field::WINDOW] == tb[field::WINDOW]
                && ta[field::OPTIONS..] == tb[field::OPTIONS..];
            if !same_ip || !same_tcp {
                return false;
            }
            self.count += 1;
            self.ip_len += seg.payload_len;
            self.next_seq = seg.seq.wrapping_add(seg.payload_len as u32);
            self.closed = seg.psh || seg.payload_len < h.payload_len;
            self.psh = seg.psh;
            true
        }

        /// Writes the super-packet's header into `out`: the virtio_net_hdr, then `head_pkt`'s
        /// IPv4 and TCP headers with the run's total length, a new IPv4 checksum, PSH if the last
        /// segment had it, and the pseudo-header sum in the TCP checksum field. Returns its length;
        /// the segments' payloads follow it.
        pub(crate) fn write_header(&self, head_pkt: &[u8], out: &mut [u8; MAX_HEADER]) -> usize {
            let hl = self.head.header_len;
            let vnet = [
                VNET_F_NEEDS_CSUM,
                VNET_GSO_TCPV4,
                // hdr_len, gso_size, csum_start, csum_offset: native byte order, as the kernel
                // reads a legacy virtio header on a little-endian host and tun-rs writes it.
            ];
            out[..2].copy_from_slice(&vnet);
            out[2..4].copy_from_slice(&(hl as u16).to_ne_bytes());
            out[4..6].copy_from_slice(&(self.head.payload_len as u16).to_ne_bytes());
            out[6..8].copy_from_slice(&(IPV4_LEN as u16).to_ne_bytes());
            out[8..10].copy_from_slice(&(field::TCP_CHECKSUM.start as u16).to_ne_bytes());
            let ip = &mut out[VNET_LEN..VNET_LEN + hl];
            ip.copy_from_slice(&head_pkt[..hl]);
            ip[field::TOTAL_LEN].copy_from_slice(&(self.ip_len as u16).to_be_bytes());
            ip[field::IP_CHECKSUM].fill(0);
            let ip_sum = !fold(sum_words(&ip[..IPV4_LEN], 0));
            ip[field::IP_CHECKSUM].copy_from_slice(&ip_sum.to_be_bytes());
            let tcp_len = (self.ip_len - IPV4_LEN) as u16;
            let mut pseudo = sum_words(&ip[field::SRC], 0);
            pseudo = sum_words(&ip[field::DST], pseudo);
            pseudo = sum_words(&[0, PROTO_TCP], pseudo);
            pseudo = sum_words(&tcp_len.to_be_bytes(), pseudo);
            let tcp = &mut ip[IPV4_LEN..];
            if self.psh {
                tcp[field::FLAGS] |= TCP_PSH;
            }
            tcp[field::TCP_CHECKSUM].copy_from_slice(&fold(pseudo).to_be_bytes());
            VNET_LEN + hl
        }
    }

    /// Adds `b` as big-endian 16-bit words (an odd last byte padded with zero) to `acc`.
    fn sum_words(b: &[u8], acc: u64) -> u64 {
        let mut acc = acc;
        let mut words = b.chunks_exact(2);
        for w in &mut words {
            acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            acc += u64::from(*last) << 8;
        }
        acc
    }

    /// Folds a one's-complement sum into 16 bits.
    fn fold(mut acc: u64) -> u16 {
        while acc > 0xffff {
            acc = (acc >> 16) + (acc & 0xffff);
        }
        acc as u16
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const SRC: [u8; 4] = [10, 1, 1, 2];
        const DST: [u8; 4] = [10, 1, 2, 3];

        /// A TCP segment with `opts` options bytes, flags ACK (| PSH), payload `len` bytes of `fill`.
        fn seg_pkt(seq: u32, len: usize, psh: bool, opts: &[u8]) -> Vec<u8> {
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

        const TS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9];

        /// Runs `pkts` through start/push; returns the run and how many were taken.
        fn build(pkts: &[Vec<u8>]) -> (Run, usize) {
            let mut run = Run::start(segment(&pkts[0]).expect("head qualifies"));
            let mut taken = 1;
            for p in &pkts[1..] {
                let Some(s) = segment(p) else { break };
                if !run.push(&pkts[0], p, s) {
                    break;
                }
                taken += 1;
            }
            (run, taken)
        }

        fn stream(n: usize, size: usize, last: usize) -> Vec<Vec<u8>> {
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
            assert_eq!(run.count(), 5);
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
        fn psh_only_on_the_last() {
            let mut pkts = stream(4, 1000, 1000);
            pkts[2] = seg_pkt(1000 + 2000, 1000, true, &TS);
            let (run, taken) = build(&pkts);
            assert_eq!(taken, 3, "PSH ends the run");
            assert!(run.psh);
            // A PSH head is a run of one.
            let (run, taken) = build(&[pkts[2].clone(), pkts[3].clone()]);
            assert_eq!((run.count(), taken), (1, 1));
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
                let mut run = Run::start(segment(&pkts[0]).expect("head"));
                match segment(&second) {
                    Some(s) => run.push(&pkts[0], &second, s),
                    None => false,
                }
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
            assert!(!differ(&|p| p[32] = 0x81), "reserved/AE bits");
            assert!(!differ(&|p| p[44] ^= 1), "options bytes");
            // A different TCP header length.
            let mut run = Run::start(segment(&pkts[0]).expect("head"));
            let other = seg_pkt(1500, 500, false, &TS[..8]);
            assert!(!run.push(&pkts[0], &other, segment(&other).expect("seg")));
            // A longer segment than the first.
            let mut run = Run::start(segment(&pkts[0]).expect("head"));
            let longer = seg_pkt(1500, 501, false, &TS);
            assert!(!run.push(&pkts[0], &longer, segment(&longer).expect("seg")));
        }

        #[test]
        fn limits_segments_and_bytes() {
            let (run, taken) = build(&stream(70, 100, 100));
            assert_eq!((run.count(), taken), (MAX_SEGMENTS, MAX_SEGMENTS));
            // 52 + 47 × 1388 = 65 288 fits; one more does not.
            let (run, taken) = build(&stream(49, 1388, 1388));
            assert_eq!(taken, 47);
            assert!(run.ip_len <= MAX_IP_LEN);
        }

        /// RFC 1071 checksum written out the textbook way, independent of `sum_words`/`fold`.
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
            let n = run.write_header(&pkts[0], &mut out);
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
            let n = run.write_header(&pkts[0], &mut out);
            assert_eq!(out[VNET_LEN + 33], 0x18);
            assert_eq!(n, VNET_LEN + 52);
        }
    }
}
