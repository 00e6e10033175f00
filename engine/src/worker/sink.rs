//! Where a worker's received packets go: the TUN device, in arrival order.
//!
//! With TUN offloads each packet is staged for one coalescing write of the batch (tun-rs's GRO),
//! except runs of TCP segments, which go in as one TSO super-packet each ([`TcpRun`]): their
//! payloads gathered behind one rewritten header with one `writev`, straight from the receive
//! buffer. Without offloads each packet is written by itself. Either way a packet whose L4
//! checksum holds only the pseudo-header sum is completed first.
//!
//! An inner packet longer than the device's MTU cannot be forwarded by the kernel whole: a peer's
//! kernel vxlan device on a veth underlay hands its GSO super-packets across whole, so they
//! arrive as one datagram. A TCP one is cut into segments that fit the MTU
//! ([`Cut::for_mtu`]): with offloads written as one GSO packet for the kernel to cut, without
//! (or once the kernel refused such a write) cut here; anything else is dropped
//! (`DropReason::InnerTooBig`).

use super::{tun_detached, ErrorLog};
use crate::batch::{HEADROOM, MAX_PACKET};
use crate::offload::{self, TcpRun, MAX_HEADER, MAX_SEGMENTS, VNET_LEN};
use crate::segment::{self, Cut, VNET_F_NEEDS_CSUM};
use crate::stats::{Counter, DropReason, WorkerStats};
use crate::tun::TunQueue;
use crate::wire::l4;
use std::io::{self, IoSlice};

/// The TUN writes the sink makes (a trait so that tests can record them).
pub(crate) trait TunWrite {
    /// Whether the device was opened with offloads (every write carries a virtio header).
    fn offload(&self) -> bool;
    /// Writes one packet.
    fn write(&self, packet: &[u8]) -> io::Result<usize>;
    /// Writes one packet gathered from `parts`, the first starting with its virtio header.
    fn write_gathered(&self, parts: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Writes `bufs[i][offset..]`, coalescing what it can.
    fn send_multiple(
        &self,
        gro: &mut tun_rs::GROTable,
        bufs: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<usize>;
}

impl TunWrite for TunQueue {
    #[inline]
    fn offload(&self) -> bool {
        TunQueue::offload(self)
    }

    #[inline]
    fn write(&self, packet: &[u8]) -> io::Result<usize> {
        TunQueue::write(self, packet)
    }

    #[inline]
    fn write_gathered(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        TunQueue::write_gathered(self, parts)
    }

    #[inline]
    fn send_multiple(
        &self,
        gro: &mut tun_rs::GROTable,
        bufs: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<usize> {
        TunQueue::send_multiple(self, gro, bufs, offset)
    }
}

/// A worker's TUN write state, kept across receive passes.
pub(super) struct TunSink {
    /// With TUN offloads: state of tun-rs's TCP/UDP coalescing.
    gro: tun_rs::GROTable,
    /// Staging buffers: with offloads one per batch slot, packets at `HEADROOM` awaiting one
    /// coalescing write; without, one scratch buffer for completing a checksum.
    stage: Box<[Vec<u8>]>,
    /// Write runs of TCP segments as TSO super-packets: on with offloads unless configured off,
    /// and off for good once the kernel refused one.
    tso_writes: bool,
    /// The device's MTU: a longer inner packet is cut or dropped.
    mtu: usize,
    /// With offloads and `tso_writes` configured: write an inner TCP packet longer than the MTU
    /// as one GSO packet; off for good once the kernel refused one (then weft cuts them).
    gso_cuts: bool,
    errors: ErrorLog,
    /// A write found the TUN queue detached (the device was deleted from outside).
    gone: bool,
}

impl std::fmt::Debug for TunSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunSink")
            .field("staging", &self.stage.len())
            .field("tso_writes", &self.tso_writes)
            .field("mtu", &self.mtu)
            .field("gso_cuts", &self.gso_cuts)
            .field("gone", &self.gone)
            .finish()
    }
}

impl TunSink {
    /// A sink for a device with or without `offload`, staging up to `batch` packets per write;
    /// `tso_writes` asks for TSO super-packets (only possible with offloads: runs of segments,
    /// and inner TCP packets longer than `mtu` bytes for the kernel to cut; without, weft cuts
    /// those itself). Other inner packets longer than `mtu` are dropped.
    pub(super) fn new(offload: bool, tso_writes: bool, batch: usize, mtu: usize) -> TunSink {
        let stage = if offload { batch.max(1) } else { 1 };
        TunSink {
            gro: tun_rs::GROTable::new(),
            stage: (0..stage)
                .map(|_| Vec::with_capacity(2 * HEADROOM + MAX_PACKET))
                .collect(),
            tso_writes: offload && tso_writes,
            mtu,
            gso_cuts: offload && tso_writes,
            errors: ErrorLog::new("TUN write failed"),
            gone: false,
        }
    }

    /// Whether a write found the TUN queue detached.
    pub(super) fn gone(&self) -> bool {
        self.gone
    }

    /// Starts one receive pass writing into `tun`: the packets pushed are borrowed from the
    /// receive buffers for `'a`. Counters go to `stats` (worker `id`'s).
    pub(super) fn pass<'a, W: TunWrite>(
        &'a mut self,
        tun: &'a W,
        id: usize,
        stats: &'a WorkerStats,
    ) -> Delivery<'a, W> {
        Delivery {
            sink: self,
            tun,
            id,
            stats,
            staged: 0,
            run: TcpRun::default(),
            delivered: 0,
            bytes: 0,
            tso_writes: 0,
            inner_cuts: 0,
        }
    }

    /// Counts `n` packets a TUN write lost.
    #[cold]
    pub(super) fn failed(&mut self, id: usize, stats: &WorkerStats, n: u64, e: &io::Error) {
        stats.drop_packets(DropReason::TunWriteFailed, n);
        self.errors.report(id, e);
        self.gone |= tun_detached(e);
    }
}

/// One receive pass's deliveries: [`push`](Delivery::push) each inner packet,
/// [`end_message`](Delivery::end_message) after each received message (a run of TCP segments
/// never spans two), then [`finish`](Delivery::finish).
pub(super) struct Delivery<'a, W> {
    sink: &'a mut TunSink,
    tun: &'a W,
    id: usize,
    stats: &'a WorkerStats,
    /// `sink.stage[..staged]` hold packets not yet written.
    staged: usize,
    /// TCP segments not yet written, to go in as one super-packet.
    run: TcpRun<'a>,
    delivered: u64,
    bytes: u64,
    tso_writes: u64,
    inner_cuts: u64,
}

impl<'a, W: TunWrite> Delivery<'a, W> {
    /// Delivers one inner packet: into the current TCP run if it continues it (or starts one),
    /// else after the run, the ordinary way.
    #[inline]
    pub(super) fn push(&mut self, packet: &'a [u8]) {
        if packet.len() > self.sink.mtu {
            self.too_big(packet);
            return;
        }
        if !self.sink.tso_writes {
            // Off from the start, or since the kernel refused a super-packet (the run is empty).
            self.deliver(packet);
            return;
        }
        let Some(segment) = offload::segment(packet) else {
            // Not a candidate: the run goes first, keeping the order.
            self.write_run();
            self.deliver(packet);
            return;
        };
        if self.run.push(packet, segment) {
            return;
        }
        // The segment does not continue the run: the run goes first, and it starts the next.
        self.write_run();
        let started = self.run.push(packet, segment);
        debug_assert!(started, "an empty run takes any segment");
    }

    /// Ends the current received message: its TCP run is written.
    #[inline]
    pub(super) fn end_message(&mut self) {
        self.write_run();
    }

    /// Writes whatever is pending and adds the pass's counters.
    pub(super) fn finish(mut self) {
        self.write_run();
        self.flush();
        if self.tso_writes > 0 {
            self.stats.add(Counter::RxTsoWrites, self.tso_writes);
        }
        if self.inner_cuts > 0 {
            self.stats.add(Counter::RxInnerCuts, self.inner_cuts);
        }
        self.stats.add(Counter::RxPackets, self.delivered);
        self.stats.add(Counter::RxBytes, self.bytes);
    }

    /// Delivers an inner packet longer than the MTU, after everything before it: a TCP one cut
    /// into segments that fit (one GSO write with offloads, else one write per segment), anything
    /// else dropped and counted.
    #[cold]
    fn too_big(&mut self, packet: &[u8]) {
        self.write_run();
        self.flush();
        let Ok((vnet, cut)) = Cut::for_mtu(packet, self.sink.mtu, usize::MAX) else {
            self.stats.drop_packets(DropReason::InnerTooBig, 1);
            return;
        };
        self.inner_cuts += 1;
        let (n, hl) = (cut.segments(), cut.header_len());
        if self.tun.offload() && self.sink.gso_cuts {
            let mut header = [0u8; VNET_LEN + segment::MAX_HEADER];
            let hdr = tun_rs::VirtioNetHdr {
                flags: VNET_F_NEEDS_CSUM,
                gso_type: vnet.gso_type,
                hdr_len: vnet.hdr_len,
                gso_size: vnet.gso_size,
                csum_start: vnet.csum_start,
                csum_offset: vnet.csum_offset,
            };
            // Native byte order, as the kernel reads a legacy virtio header on a little-endian
            // host.
            if hdr.encode(&mut header[..]).is_ok() {
                cut.write_gso_header(packet, &mut header[VNET_LEN..]);
                let parts = [
                    IoSlice::new(&header[..VNET_LEN + hl]),
                    IoSlice::new(&packet[hl..]),
                ];
                match self.tun.write_gathered(&parts) {
                    Ok(_) => {
                        self.delivered += n as u64;
                        self.bytes += cut.total_len() as u64;
                        return;
                    }
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO)) => {
                        tracing::warn!(worker = self.id, error = %e, "TUN refused a GSO packet; cutting long inner packets in user space");
                        self.sink.gso_cuts = false;
                    }
                    Err(e) => {
                        self.sink.failed(self.id, self.stats, n as u64, &e);
                        return;
                    }
                }
            }
        }
        for i in 0..n {
            let out = &mut self.sink.stage[0];
            out.clear();
            out.resize(hl, 0);
            cut.write_header(packet, i, out);
            out.extend_from_slice(&packet[cut.payload(i)]);
            match self.tun.write(out) {
                Ok(w) => {
                    self.delivered += 1;
                    self.bytes += w as u64;
                }
                Err(e) => {
                    self.sink.failed(self.id, self.stats, (n - i) as u64, &e);
                    return;
                }
            }
        }
    }

    /// Delivers one packet the ordinary way.
    #[inline]
    fn deliver(&mut self, packet: &[u8]) {
        if self.tun.offload() {
            // Staged for one coalescing write of the whole batch (or until a run is written).
            let out = &mut self.sink.stage[self.staged];
            out.clear();
            out.resize(HEADROOM, 0);
            out.extend_from_slice(packet);
            if l4::complete_partial(&mut out[HEADROOM..]) {
                self.stats.add(Counter::RxChecksumsCompleted, 1);
            }
            self.staged += 1;
            if self.staged == self.sink.stage.len() {
                self.flush();
            }
            return;
        }
        let packet = if l4::may_be_partial(packet) {
            // Rare (a kernel sender over veth, or a valid checksum that equals the pseudo-header
            // sum by chance): complete it in the scratch buffer if it is partial.
            let out = &mut self.sink.stage[0];
            out.clear();
            out.extend_from_slice(packet);
            if l4::complete_partial(out) {
                self.stats.add(Counter::RxChecksumsCompleted, 1);
                &out[..]
            } else {
                packet
            }
        } else {
            packet
        };
        match self.tun.write(packet) {
            Ok(w) => {
                self.delivered += 1;
                self.bytes += w as u64;
            }
            Err(e) => self.sink.failed(self.id, self.stats, 1, &e),
        }
    }

    /// Writes the staged packets with one coalescing call.
    fn flush(&mut self) {
        if self.staged == 0 {
            return;
        }
        let out = &mut self.sink.stage[..self.staged];
        self.staged = 0;
        let n = out.len() as u64;
        let bytes: usize = out.iter().map(|b| b.len() - HEADROOM).sum();
        match self.tun.send_multiple(&mut self.sink.gro, out, HEADROOM) {
            Ok(_) => {
                self.delivered += n;
                self.bytes += bytes as u64;
            }
            Err(e) => self.sink.failed(self.id, self.stats, n, &e),
        }
    }

    /// Writes the current run, after whatever is staged, as one TSO super-packet; a run of one,
    /// or any run once super-packets are off, goes the ordinary way. The run is empty after.
    fn write_run(&mut self) {
        let n = self.run.len();
        if n < 2 || !self.sink.tso_writes {
            for i in 0..n {
                let packet = self.run.packets()[i];
                self.deliver(packet);
            }
            self.run.clear();
            return;
        }
        self.flush();
        let mut header = [0u8; MAX_HEADER];
        let header_len = self.run.write_header(&mut header);
        let skip = self.run.segment_header_len();
        let mut parts = [IoSlice::new(&[]); MAX_SEGMENTS + 1];
        parts[0] = IoSlice::new(&header[..header_len]);
        let mut bytes = 0;
        for (part, &packet) in parts[1..].iter_mut().zip(self.run.packets()) {
            *part = IoSlice::new(&packet[skip..]);
            bytes += packet.len();
        }
        match self.tun.write_gathered(&parts[..=n]) {
            Ok(_) => {
                self.delivered += n as u64;
                self.bytes += bytes as u64;
                self.tso_writes += 1;
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO)) => {
                // The kernel refuses our super-packets: segments go the ordinary way from now on
                // (this run included, so nothing is lost).
                tracing::warn!(worker = self.id, error = %e, "TUN refused a TSO super-packet; writing segments without it");
                self.sink.tso_writes = false;
                for i in 0..n {
                    let packet = self.run.packets()[i];
                    self.deliver(packet);
                }
            }
            Err(e) => self.sink.failed(self.id, self.stats, n as u64, &e),
        }
        self.run.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::tests::{seg6_pkt, seg_pkt, stream, stream6, TS};
    use crate::stats::StatsSnapshot;
    use crate::wire::ipv4;
    use std::cell::{Cell, RefCell};

    /// The MTU of the sinks under test (above every packet of `stream`).
    const MTU: usize = 1500;

    /// One write the sink made.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Write {
        /// A packet written alone.
        Single(Vec<u8>),
        /// A gathered write: the header part's length and the payloads after it.
        Gathered {
            header: usize,
            payloads: Vec<Vec<u8>>,
        },
        /// A coalescing write of these packets.
        Multiple(Vec<Vec<u8>>),
    }

    /// A TUN queue that records writes; `refuse` makes gathered writes fail with that errno.
    struct FakeTun {
        offload: bool,
        writes: RefCell<Vec<Write>>,
        /// The header part of every gathered write.
        heads: RefCell<Vec<Vec<u8>>>,
        refuse: Cell<Option<i32>>,
        fail_single: Cell<bool>,
    }

    impl FakeTun {
        fn new(offload: bool) -> FakeTun {
            FakeTun {
                offload,
                writes: RefCell::new(Vec::new()),
                heads: RefCell::new(Vec::new()),
                refuse: Cell::new(None),
                fail_single: Cell::new(false),
            }
        }

        fn take(&self) -> Vec<Write> {
            std::mem::take(&mut *self.writes.borrow_mut())
        }
    }

    impl TunWrite for FakeTun {
        fn offload(&self) -> bool {
            self.offload
        }

        fn write(&self, packet: &[u8]) -> io::Result<usize> {
            if self.fail_single.get() {
                return Err(io::Error::from_raw_os_error(libc::EBADFD));
            }
            self.writes
                .borrow_mut()
                .push(Write::Single(packet.to_vec()));
            Ok(packet.len())
        }

        fn write_gathered(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
            if let Some(errno) = self.refuse.get() {
                return Err(io::Error::from_raw_os_error(errno));
            }
            self.heads.borrow_mut().push(parts[0].to_vec());
            self.writes.borrow_mut().push(Write::Gathered {
                header: parts[0].len(),
                payloads: parts[1..].iter().map(|p| p.to_vec()).collect(),
            });
            Ok(parts.iter().map(|p| p.len()).sum())
        }

        fn send_multiple(
            &self,
            _gro: &mut tun_rs::GROTable,
            bufs: &mut [Vec<u8>],
            offset: usize,
        ) -> io::Result<usize> {
            let packets = bufs.iter().map(|b| b[offset..].to_vec()).collect();
            self.writes.borrow_mut().push(Write::Multiple(packets));
            Ok(bufs.len())
        }
    }

    /// A UDP packet 10.1.1.2 → 10.1.2.3 with `len` bytes of payload and a complete (zero)
    /// checksum.
    fn udp_pkt(len: usize) -> Vec<u8> {
        let total = 28 + len;
        let mut p = vec![0u8; total];
        let mut ip = ipv4::Packet::new_unchecked(&mut p[..]);
        ip.set_version_and_header_len(20);
        ip.set_total_len(total as u16);
        ip.set_ttl(63);
        ip.set_protocol(ipv4::PROTO_UDP);
        ip.set_src_addr([10, 1, 1, 2].into());
        ip.set_dst_addr([10, 1, 2, 3].into());
        ip.fill_checksum();
        p[24..26].copy_from_slice(&((8 + len) as u16).to_be_bytes());
        p
    }

    /// Pushes `messages` (each a list of inner packets) through one pass.
    fn deliver(sink: &mut TunSink, tun: &FakeTun, stats: &WorkerStats, messages: &[&[Vec<u8>]]) {
        let mut pass = sink.pass(tun, 0, stats);
        for message in messages {
            for packet in message.iter() {
                pass.push(packet);
            }
            pass.end_message();
        }
        pass.finish();
    }

    fn payloads(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        packets.iter().map(|p| p[52..].to_vec()).collect()
    }

    #[test]
    fn a_tcp_run_is_one_gathered_write() {
        let (tun, stats) = (FakeTun::new(true), WorkerStats::default());
        let mut sink = TunSink::new(true, true, 8, MTU);
        let run = stream(5, 1388, 600);
        deliver(&mut sink, &tun, &stats, &[&run]);
        assert_eq!(
            tun.take(),
            [Write::Gathered {
                header: crate::offload::VNET_LEN + 52,
                payloads: payloads(&run),
            }]
        );
        let s = StatsSnapshot::sum([&stats]);
        assert_eq!(s.get(Counter::RxTsoWrites), 1);
        assert_eq!(s.get(Counter::RxPackets), 5);
        assert_eq!(
            s.get(Counter::RxBytes),
            run.iter().map(|p| p.len() as u64).sum::<u64>()
        );
    }

    #[test]
    fn an_ipv6_tcp_run_is_one_tcpv6_write_and_families_do_not_mix() {
        let (tun, stats) = (FakeTun::new(true), WorkerStats::default());
        let mut sink = TunSink::new(true, true, 8, MTU);
        let run6 = stream6(4, 1368, 500);
        let run4 = stream(2, 1000, 1000);
        // IPv6, then IPv4, then IPv6 again in one message: three super-packets in order.
        let more6 = [
            seg6_pkt(7000 + 3 * 1368 + 500, 1368, false, &TS),
            seg6_pkt(7000 + 4 * 1368 + 500, 1368, false, &TS),
        ];
        let message: Vec<Vec<u8>> = run6.iter().chain(&run4).chain(&more6).cloned().collect();
        deliver(&mut sink, &tun, &stats, &[&message]);
        let v6_payloads = |ps: &[Vec<u8>]| ps.iter().map(|p| p[72..].to_vec()).collect();
        assert_eq!(
            tun.take(),
            [
                Write::Gathered {
                    header: crate::offload::VNET_LEN + 72,
                    payloads: v6_payloads(&run6),
                },
                Write::Gathered {
                    header: crate::offload::VNET_LEN + 52,
                    payloads: payloads(&run4),
                },
                Write::Gathered {
                    header: crate::offload::VNET_LEN + 72,
                    payloads: v6_payloads(&more6),
                },
            ]
        );
        let heads = tun.heads.borrow();
        for (head, want) in heads.iter().zip([4u8, 1, 4]) {
            let vnet = tun_rs::VirtioNetHdr::decode(head).expect("virtio header");
            assert_eq!(vnet.gso_type, want);
        }
        let s = StatsSnapshot::sum([&stats]);
        assert_eq!(s.get(Counter::RxTsoWrites), 3);
        assert_eq!(s.get(Counter::RxPackets), 8);
        assert_eq!(
            s.get(Counter::RxBytes),
            message.iter().map(|p| p.len() as u64).sum::<u64>()
        );
    }

    #[test]
    fn non_tcp_in_the_middle_splits_the_run_in_order() {
        let (tun, stats) = (FakeTun::new(true), WorkerStats::default());
        let mut sink = TunSink::new(true, true, 8, MTU);
        let run = stream(4, 1000, 1000);
        let udp = udp_pkt(100);
        let message = [
            run[0].clone(),
            run[1].clone(),
            udp.clone(),
            run[2].clone(),
            run[3].clone(),
        ];
        deliver(&mut sink, &tun, &stats, &[&message]);
        // The UDP packet is staged and written before the second run goes in.
        assert_eq!(
            tun.take(),
            [
                Write::Gathered {
                    header: crate::offload::VNET_LEN + 52,
                    payloads: payloads(&run[..2]),
                },
                Write::Multiple(vec![udp]),
                Write::Gathered {
                    header: crate::offload::VNET_LEN + 52,
                    payloads: payloads(&run[2..]),
                },
            ]
        );
        let s = StatsSnapshot::sum([&stats]);
        assert_eq!(s.get(Counter::RxTsoWrites), 2);
        assert_eq!(s.get(Counter::RxPackets), 5);
    }

    #[test]
    fn runs_end_with_their_message_and_runs_of_one_are_staged() {
        let (tun, stats) = (FakeTun::new(true), WorkerStats::default());
        let mut sink = TunSink::new(true, true, 8, MTU);
        let run = stream(4, 1000, 1000);
        // Two messages continuing one flow: two super-packets, never one across both.
        deliver(&mut sink, &tun, &stats, &[&run[..2], &run[2..]]);
        let writes = tun.take();
        assert_eq!(writes.len(), 2, "{writes:?}");
        // A lone segment goes the ordinary way.
        deliver(&mut sink, &tun, &stats, &[&run[..1]]);
        assert_eq!(tun.take(), [Write::Multiple(vec![run[0].clone()])]);
        // So does every segment with super-packets configured off.
        let mut off = TunSink::new(true, false, 8, MTU);
        deliver(&mut off, &tun, &stats, &[&run]);
        assert_eq!(tun.take(), [Write::Multiple(run.clone())]);
        // A full stage is written without waiting for the end of the pass.
        let mut small = TunSink::new(true, false, 3, MTU);
        deliver(&mut small, &tun, &stats, &[&run]);
        assert_eq!(
            tun.take(),
            [
                Write::Multiple(run[..3].to_vec()),
                Write::Multiple(run[3..].to_vec())
            ]
        );
    }

    #[test]
    fn a_refused_super_packet_turns_them_off_and_loses_nothing() {
        for errno in [libc::EINVAL, libc::EIO] {
            let (tun, stats) = (FakeTun::new(true), WorkerStats::default());
            let mut sink = TunSink::new(true, true, 8, MTU);
            let run = stream(3, 1000, 1000);
            tun.refuse.set(Some(errno));
            deliver(&mut sink, &tun, &stats, &[&run]);
            assert_eq!(tun.take(), [Write::Multiple(run.clone())]);
            // Off for good: the next pass does not try again.
            tun.refuse.set(None);
            deliver(&mut sink, &tun, &stats, &[&run]);
            assert_eq!(tun.take(), [Write::Multiple(run.clone())]);
            let s = StatsSnapshot::sum([&stats]);
            assert_eq!(s.get(Counter::RxPackets), 6);
            assert_eq!(s.get(Counter::RxTsoWrites), 0);
            assert_eq!(s.dropped_total(), 0);
        }
        // Another error loses the run, and counts it.
        let (tun, stats) = (FakeTun::new(true), WorkerStats::default());
        let mut sink = TunSink::new(true, true, 8, MTU);
        tun.refuse.set(Some(libc::ENOBUFS));
        deliver(&mut sink, &tun, &stats, &[&stream(3, 1000, 1000)]);
        let s = StatsSnapshot::sum([&stats]);
        assert_eq!(s.dropped(DropReason::TunWriteFailed), 3);
        assert_eq!(s.get(Counter::RxPackets), 0);
        assert!(!sink.gone());
    }

    #[test]
    fn without_offloads_each_packet_is_written_and_partial_checksums_completed() {
        let (tun, stats) = (FakeTun::new(false), WorkerStats::default());
        let mut sink = TunSink::new(false, true, 8, MTU);
        let run = stream(2, 500, 500);
        let mut partial = seg_pkt(5000, 100, true, &TS);
        let pseudo = ipv4::Packet::new_checked(&partial[..])
            .expect("IPv4")
            .pseudo_header_sum((partial.len() - 20) as u16);
        partial[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let mut completed = partial.clone();
        assert!(l4::complete_partial(&mut completed));
        deliver(
            &mut sink,
            &tun,
            &stats,
            &[&[run[0].clone(), partial, run[1].clone()]],
        );
        assert_eq!(
            tun.take(),
            [
                Write::Single(run[0].clone()),
                Write::Single(completed),
                Write::Single(run[1].clone())
            ]
        );
        let s = StatsSnapshot::sum([&stats]);
        assert_eq!(s.get(Counter::RxChecksumsCompleted), 1);
        assert_eq!(s.get(Counter::RxPackets), 3);
        // A detached queue: counted, and the sink says the device is gone.
        tun.fail_single.set(true);
        deliver(&mut sink, &tun, &stats, &[&run]);
        assert_eq!(
            StatsSnapshot::sum([&stats]).dropped(DropReason::TunWriteFailed),
            2
        );
        assert!(sink.gone());
    }

    /// An IPv6 TCP segment fd00::1 → fd00::2 with the timestamp option, flags ACK|PSH and `len`
    /// bytes of payload: what a GSO super-packet of a kernel sender decapsulates to.
    fn tcp6_pkt(seq: u32, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + 32 + len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((32 + len) as u16).to_be_bytes());
        p[6] = 6;
        p[7] = 63;
        p[8] = 0xfd;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 2;
        let t = &mut p[40..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[12] = 8 << 4;
        t[13] = 0x18;
        t[20..32].copy_from_slice(&TS);
        for (i, b) in t[32..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    /// Checks `segments`, the cut of `long` (one TCP packet), against an MTU of `mtu`: each fits,
    /// their sequence numbers follow on, only the last carries PSH, the payloads are `long`'s.
    fn check_cut(long: &[u8], segments: &[Vec<u8>], mtu: usize) {
        use etherparse::SlicedPacket;
        let want = SlicedPacket::from_ip(long).expect("IP");
        let Some(etherparse::TransportSlice::Tcp(want)) = want.transport else {
            panic!("not TCP");
        };
        let mut payload = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            assert!(s.len() <= mtu, "segment {i}: {} bytes", s.len());
            let got = SlicedPacket::from_ip(s).expect("IP");
            let Some(etherparse::TransportSlice::Tcp(t)) = got.transport else {
                panic!("segment {i} not TCP");
            };
            assert_eq!(
                t.sequence_number(),
                want.sequence_number().wrapping_add(payload.len() as u32)
            );
            assert_eq!(t.psh(), i + 1 == segments.len());
            payload.extend_from_slice(t.payload());
        }
        assert_eq!(payload, want.payload());
    }

    #[test]
    fn a_long_tcp_packet_is_one_gso_write_after_what_came_before() {
        for long in [tcp6_pkt(7, 2 * 1358), seg_pkt(7, 2 * 1378, true, &TS)] {
            let v6 = long[0] >> 4 == 6;
            let (tun, stats) = (FakeTun::new(true), WorkerStats::default());
            let mut sink = TunSink::new(true, true, 8, 1430);
            let run = stream(2, 1000, 1000);
            let message = [run[0].clone(), run[1].clone(), long.clone()];
            deliver(&mut sink, &tun, &stats, &[&message]);
            let hl = if v6 { 72 } else { 52 };
            assert_eq!(
                tun.take(),
                [
                    Write::Gathered {
                        header: crate::offload::VNET_LEN + 52,
                        payloads: payloads(&run),
                    },
                    Write::Gathered {
                        header: crate::offload::VNET_LEN + hl,
                        payloads: vec![long[hl..].to_vec()],
                    },
                ]
            );
            // The virtio header asks for TSO at the MTU and a completed checksum.
            let head = tun.heads.borrow()[1].clone();
            let vnet = tun_rs::VirtioNetHdr::decode(&head).expect("virtio header");
            assert_eq!(vnet.flags, 1);
            assert_eq!(vnet.gso_type, if v6 { 4 } else { 1 });
            assert_eq!(usize::from(vnet.hdr_len), hl);
            assert_eq!(usize::from(vnet.gso_size), 1430 - hl);
            assert_eq!(usize::from(vnet.csum_start), hl - 32);
            assert_eq!(vnet.csum_offset, 16);
            let s = StatsSnapshot::sum([&stats]);
            assert_eq!(s.get(Counter::RxInnerCuts), 1);
            assert_eq!(s.get(Counter::RxPackets), 4);
            assert_eq!(s.get(Counter::RxBytes), (2 * 1052 + long.len() + hl) as u64);
            assert_eq!(s.dropped_total(), 0);
        }
    }

    #[test]
    fn a_long_tcp_packet_is_cut_here_without_offloads_or_when_the_kernel_refuses() {
        for long in [tcp6_pkt(7, 5000), seg_pkt(7, 5000, true, &TS)] {
            // Without offloads: one write per segment.
            let (tun, stats) = (FakeTun::new(false), WorkerStats::default());
            let mut sink = TunSink::new(false, true, 8, 1430);
            deliver(&mut sink, &tun, &stats, &[std::slice::from_ref(&long)]);
            let writes = tun.take();
            let segments: Vec<Vec<u8>> = writes
                .iter()
                .map(|w| match w {
                    Write::Single(p) => p.clone(),
                    w => panic!("{w:?}"),
                })
                .collect();
            assert_eq!(segments.len(), 4);
            check_cut(&long, &segments, 1430);
            let s = StatsSnapshot::sum([&stats]);
            assert_eq!(s.get(Counter::RxInnerCuts), 1);
            assert_eq!(s.get(Counter::RxPackets), 4);
            // With offloads but super-packet writes configured off: cut here too.
            let (tun, stats) = (FakeTun::new(true), WorkerStats::default());
            let mut sink = TunSink::new(true, false, 8, 1430);
            deliver(&mut sink, &tun, &stats, &[std::slice::from_ref(&long)]);
            let writes = tun.take();
            assert_eq!(writes.len(), 4, "{writes:?}");
            assert!(writes.iter().all(|w| matches!(w, Write::Single(_))));
            assert_eq!(StatsSnapshot::sum([&stats]).get(Counter::RxInnerCuts), 1);
            // With offloads, a refused GSO write: cut here, and from then on without trying.
            let (tun, stats) = (FakeTun::new(true), WorkerStats::default());
            let mut sink = TunSink::new(true, true, 8, 1430);
            tun.refuse.set(Some(libc::EINVAL));
            deliver(&mut sink, &tun, &stats, &[std::slice::from_ref(&long)]);
            tun.refuse.set(None);
            deliver(&mut sink, &tun, &stats, &[std::slice::from_ref(&long)]);
            let writes = tun.take();
            assert_eq!(writes.len(), 8, "{writes:?}");
            for w in &writes {
                assert!(matches!(w, Write::Single(p) if p.len() <= 1430), "{w:?}");
            }
            let s = StatsSnapshot::sum([&stats]);
            assert_eq!(s.get(Counter::RxInnerCuts), 2);
            assert_eq!(s.get(Counter::RxPackets), 8);
            assert_eq!(s.dropped_total(), 0);
        }
    }

    #[test]
    fn a_long_packet_that_is_not_tcp_is_dropped_and_counted() {
        let (tun, stats) = (FakeTun::new(true), WorkerStats::default());
        let mut sink = TunSink::new(true, true, 8, 1430);
        let mut syn = seg_pkt(7, 3000, false, &TS);
        syn[33] = 0x02;
        deliver(
            &mut sink,
            &tun,
            &stats,
            &[&[udp_pkt(3000), syn, udp_pkt(100)]],
        );
        // Exactly the MTU is not too long.
        let fits = udp_pkt(1430 - 28);
        deliver(&mut sink, &tun, &stats, &[std::slice::from_ref(&fits)]);
        assert_eq!(
            tun.take(),
            [
                Write::Multiple(vec![udp_pkt(100)]),
                Write::Multiple(vec![fits])
            ]
        );
        let s = StatsSnapshot::sum([&stats]);
        assert_eq!(s.dropped(DropReason::InnerTooBig), 2);
        assert_eq!(s.get(Counter::RxInnerCuts), 0);
        assert_eq!(s.get(Counter::RxPackets), 2);
    }
}
