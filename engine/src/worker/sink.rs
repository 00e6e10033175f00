//! Where a worker's received packets go: the TUN device, in arrival order.
//!
//! With TUN offloads each packet is staged for one coalescing write of the batch (tun-rs's GRO),
//! except runs of TCP segments, which go in as one TSO super-packet each ([`TcpRun`]): their
//! payloads gathered behind one rewritten header with one `writev`, straight from the receive
//! buffer. Without offloads each packet is written by itself. Either way a packet whose L4
//! checksum holds only the pseudo-header sum is completed first.

use super::{tun_detached, ErrorLog};
use crate::batch::{HEADROOM, MAX_PACKET};
use crate::offload::{TcpRun, MAX_HEADER, MAX_SEGMENTS};
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
    errors: ErrorLog,
    /// A write found the TUN queue detached (the device was deleted from outside).
    gone: bool,
}

impl std::fmt::Debug for TunSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunSink")
            .field("staging", &self.stage.len())
            .field("tso_writes", &self.tso_writes)
            .field("gone", &self.gone)
            .finish()
    }
}

impl TunSink {
    /// A sink for a device with or without `offload`, staging up to `batch` packets per write;
    /// `tso_writes` asks for TSO super-packets (only possible with offloads).
    pub(super) fn new(offload: bool, tso_writes: bool, batch: usize) -> TunSink {
        let stage = if offload { batch.max(1) } else { 1 };
        TunSink {
            gro: tun_rs::GROTable::new(),
            stage: (0..stage)
                .map(|_| Vec::with_capacity(2 * HEADROOM + MAX_PACKET))
                .collect(),
            tso_writes: offload && tso_writes,
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
}

impl<'a, W: TunWrite> Delivery<'a, W> {
    /// Delivers one inner packet: into the current TCP run if it continues it (or starts one),
    /// else after the run, the ordinary way.
    #[inline]
    pub(super) fn push(&mut self, packet: &'a [u8]) {
        if !self.sink.tso_writes {
            // Off from the start, or since the kernel refused a super-packet (the run is empty).
            self.deliver(packet);
            return;
        }
        if self.run.push(packet) {
            return;
        }
        // The packet does not continue the run: the run goes first, keeping the order.
        self.write_run();
        if !self.run.push(packet) {
            self.deliver(packet);
        }
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
        self.stats.add(Counter::RxPackets, self.delivered);
        self.stats.add(Counter::RxBytes, self.bytes);
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
        let packet = if l4::is_partial(packet) {
            // Rare (a kernel sender over veth): complete it in the scratch buffer.
            let out = &mut self.sink.stage[0];
            out.clear();
            out.extend_from_slice(packet);
            l4::complete_partial(out);
            self.stats.add(Counter::RxChecksumsCompleted, 1);
            &out[..]
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
