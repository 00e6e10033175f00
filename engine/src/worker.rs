//! One worker: a thread pinned to a core that owns one TUN queue and one UDP socket and moves
//! packets both ways in batches.
//!
//! ```text
//!   TUN queue ──read×n──▶ encapsulate ──▶ one sendmmsg ──▶ peers
//!   TUN queue ◀─write×n── decapsulate ◀── one recvmmsg ◀── peers
//! ```
//!
//! Both wire formats run through the same loops: the worker's [`Encapsulator`] writes the wire
//! header (none for udp, VXLAN + inner Ethernet for vxlan) into the headroom in front of each packet
//! read from the TUN device, and sends from there; its [`Decapsulator`] checks that header on each
//! received datagram (each segment of a UDP GRO run) and hands back the inner packet's range, which
//! is written to the TUN device as before.
//!
//! With TUN offloads, a run of received segments of one TCP flow (normally a UDP GRO buffer holds
//! the cut-up of one super-packet the peer read from its TUN device) goes back into the TUN device
//! as one TSO super-packet: a rewritten header and the payloads gathered with one `writev` from the
//! receive buffer, without copying them (see `tun::tso`). Everything else is staged and written
//! with tun-rs's coalescing call, in arrival order.
//!
//! Each wakeup moves at most one batch per direction, then checks the other direction, so neither
//! starves the other; while a direction filled its batch the worker loops without waiting in poll.
//! Nothing on this path allocates, locks or makes a system call per packet beyond the TUN read and
//! write themselves (without TUN offloads the kernel offers no batched TUN I/O).

use crate::batch::{Meta, PacketBatch, HEADROOM, MAX_PACKET};
use crate::decap::{DecapPolicy, Decapsulator, Verdict};
use crate::encap::{Encap, Encapsulator};
use crate::route::RouteCache;
use crate::stats::{Counter, DropReason, WorkerStats};
use crate::tun::{tso, TunQueue};
use crate::udp::{BatchSocket, RecvMeta, SendMsg, MAX_BATCH, MAX_GSO_BYTES, MAX_GSO_SEGMENTS};
use crate::wire::{icmp, l4, Wire};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{self, IoSlice};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TUN: Token = Token(0);
const UDP: Token = Token(1);
/// Token of the waker that asks the worker to stop.
pub(crate) const WAKE: Token = Token(2);

/// Most packets one TUN offload read may be cut into (64 KiB at the smallest MSS worth allowing).
const TUN_SPLIT_MAX: usize = 128;

/// ICMP errors a worker may originate per second (and its burst).
const ICMP_PER_SEC: u32 = 100;
/// Longest an idle worker waits in poll before going round its loop (and its heartbeat).
const IDLE_WAKEUP: Duration = Duration::from_secs(1);
/// Least time between two log lines about the same kind of I/O error.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Token bucket for ICMP errors (RFC 1812 §4.3.2.8: rate-limit them).
#[derive(Debug)]
struct IcmpLimiter {
    tokens: u32,
    refilled: Instant,
}

impl IcmpLimiter {
    fn new() -> Self {
        IcmpLimiter {
            tokens: ICMP_PER_SEC,
            refilled: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        if self.tokens == 0 {
            let now = Instant::now();
            let elapsed = now.duration_since(self.refilled);
            let add = (elapsed.as_millis() as u64 * u64::from(ICMP_PER_SEC) / 1000) as u32;
            if add > 0 {
                self.tokens = add.min(ICMP_PER_SEC);
                self.refilled = now;
            }
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// Logs an I/O error at most once per interval, with the number suppressed meanwhile.
#[derive(Debug)]
struct ErrorLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn new(what: &'static str) -> Self {
        ErrorLog {
            what,
            last: None,
            suppressed: 0,
        }
    }

    #[cold]
    fn report(&mut self, worker: usize, e: &io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < ERROR_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(worker, error = %e, suppressed = self.suppressed, "{}", self.what);
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Everything a worker needs; moved into its thread.
#[derive(Debug)]
pub(crate) struct WorkerSetup {
    pub(crate) id: usize,
    pub(crate) tun: TunQueue,
    pub(crate) sock: BatchSocket,
    pub(crate) routes: RouteCache,
    pub(crate) policy: DecapPolicy,
    pub(crate) wire: Wire,
    pub(crate) icmp_src: Ipv4Addr,
    pub(crate) batch_size: usize,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) poll: Poll,
}

pub(crate) struct Worker {
    s: WorkerSetup,
    /// Writes the wire header in front of each packet to send.
    encap: Encapsulator,
    /// Checks and strips the wire header of each received datagram.
    decap: Decapsulator,
    /// Bytes of wire header in front of each tx packet (`encap.header_len()`).
    header: usize,
    tx: PacketBatch,
    rx: PacketBatch,
    rx_meta: Box<[RecvMeta]>,
    msgs: Box<[SendMsg]>,
    /// With TUN offloads: the raw read of one super-packet (virtio header + up to 64 KiB).
    tun_scratch: Vec<u8>,
    /// With TUN offloads: sizes of the packets recv_multiple cut.
    sizes: Box<[usize]>,
    /// With TUN offloads: packets staged for one coalescing TUN write.
    tun_out: Vec<Vec<u8>>,
    /// With TUN offloads: state of the TCP/UDP coalescing.
    gro: tun_rs::GROTable,
    /// With TUN offloads: write runs of received TCP segments as TSO super-packets
    /// (`TunSink::write_run`). Off without offloads, with `WEFT_NO_TSO_WRITE=1` in the
    /// environment (for comparisons), or once the kernel refused a super-packet.
    tso_write: bool,
    icmp: IcmpLimiter,
    icmp_buf: [u8; icmp::MAX_ERROR_LEN],
    send_errors: ErrorLog,
    tun_read_errors: ErrorLog,
    tun_write_errors: ErrorLog,
    recv_errors: ErrorLog,
    /// The TUN queue was detached (the device was deleted from outside): the worker ends, and the
    /// daemon, seeing a worker gone, exits so that a supervisor starts it afresh.
    tun_gone: bool,
}

/// Whether a TUN I/O error means the device is gone (the kernel detached our queue).
fn tun_detached(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EBADFD)
}

impl Worker {
    /// Registers the TUN queue and socket with the worker's poll and allocates its buffers.
    pub(crate) fn new(s: WorkerSetup) -> io::Result<Worker> {
        let tun_fd = s.tun.as_raw_fd();
        let udp_fd = s.sock.as_raw_fd();
        s.poll
            .registry()
            .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)?;
        s.poll
            .registry()
            .register(&mut SourceFd(&udp_fd), UDP, Interest::READABLE)?;
        let batch = s.batch_size.clamp(1, MAX_BATCH);
        let offload = s.tun.offload();
        // With offloads one TUN read may yield up to TUN_SPLIT_MAX packets, so the tx side keeps
        // room for that many beyond a batch.
        let tx_slots = if offload {
            batch + TUN_SPLIT_MAX
        } else {
            batch
        };
        // With offloads: one staging buffer per batch slot. Without: one scratch buffer, for the
        // rare packet whose checksum must be completed before it is written.
        let stage = if offload { batch } else { 1 };
        let encap = Encapsulator::new(s.wire);
        Ok(Worker {
            encap,
            decap: Decapsulator::new(s.wire, s.policy),
            header: encap.header_len(),
            tx: PacketBatch::new(tx_slots),
            tun_scratch: vec![
                0u8;
                if offload {
                    tun_rs::VIRTIO_NET_HDR_LEN + 65_535
                } else {
                    0
                }
            ],
            sizes: vec![0usize; tx_slots].into_boxed_slice(),
            tun_out: (0..stage)
                .map(|_| Vec::with_capacity(2 * HEADROOM + MAX_PACKET))
                .collect(),
            gro: tun_rs::GROTable::new(),
            tso_write: offload && !matches!(std::env::var("WEFT_NO_TSO_WRITE").as_deref(), Ok("1")),
            rx: PacketBatch::new(batch),
            rx_meta: vec![RecvMeta::default(); batch].into_boxed_slice(),
            msgs: vec![
                SendMsg {
                    first: 0,
                    count: 0,
                    dst: std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                    segment: 0,
                };
                batch
            ]
            .into_boxed_slice(),
            icmp: IcmpLimiter::new(),
            icmp_buf: [0; icmp::MAX_ERROR_LEN],
            send_errors: ErrorLog::new("UDP send failed"),
            tun_read_errors: ErrorLog::new("TUN read failed"),
            tun_write_errors: ErrorLog::new("TUN write failed"),
            recv_errors: ErrorLog::new("UDP receive failed"),
            tun_gone: false,
            s: WorkerSetup {
                batch_size: batch,
                ..s
            },
        })
    }

    /// Runs until the stop flag is set.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(8);
        // Edge-triggered readiness: a source is ready until a read on it comes back short.
        let mut tun_ready = true;
        let mut udp_ready = true;
        loop {
            self.s.stats.beat();
            if self.s.stop.load(Ordering::Acquire) {
                break;
            }
            if self.tun_gone {
                tracing::error!(
                    worker = self.s.id,
                    "the TUN device is gone (deleted from outside?); worker stops"
                );
                break;
            }
            if !tun_ready && !udp_ready {
                match self.s.poll.poll(&mut events, Some(IDLE_WAKEUP)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!(worker = self.s.id, error = %e, "poll failed; worker stops");
                        break;
                    }
                }
                for ev in events.iter() {
                    match ev.token() {
                        TUN => tun_ready = true,
                        UDP => udp_ready = true,
                        _ => {}
                    }
                }
                continue;
            }
            if tun_ready {
                tun_ready = self.tun_to_udp();
            }
            if udp_ready {
                udp_ready = self.udp_to_tun();
            }
        }
    }

    /// Reads from the TUN queue into tx slots from `at` on: one packet, or with TUN offloads one
    /// super-packet cut into packets with their checksums. Returns how many slots were filled
    /// (their sizes in `self.sizes`).
    #[inline]
    fn read_tun(&mut self, at: usize) -> io::Result<usize> {
        if self.s.tun.offload() {
            self.s.tun.recv_multiple(
                &mut self.tun_scratch,
                &mut self.tx.slots_mut()[at..],
                &mut self.sizes[at..],
                HEADROOM,
            )
        } else {
            self.sizes[at] = self.s.tun.read(self.tx.packet_area_mut(at))?;
            Ok(1)
        }
    }

    /// Reads up to one batch of reads from the TUN queue, encapsulates and sends it. Returns
    /// whether the TUN queue may hold more (the batch filled up).
    fn tun_to_udp(&mut self) -> bool {
        let routes = Arc::clone(self.s.routes.load());
        // Room one read may need: with offloads a super-packet becomes up to TUN_SPLIT_MAX packets.
        let per_read = if self.s.tun.offload() {
            TUN_SPLIT_MAX
        } else {
            1
        };
        let mut queued = 0;
        let mut reads = 0;
        let mut more = true;
        while reads < self.s.batch_size && queued + per_read <= self.tx.capacity() {
            let n = match self.read_tun(queued) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error().is_none() => {
                    // A super-packet that could not be cut (more segments than slots, a bad
                    // virtio header): it was read, so drop it and go on.
                    self.s.stats.drop_packets(DropReason::TxMalformed, 1);
                    self.tun_read_errors.report(self.s.id, &e);
                    continue;
                }
                Err(e) => {
                    self.tun_read_errors.report(self.s.id, &e);
                    self.tun_gone |= tun_detached(&e);
                    more = false;
                    break;
                }
            };
            reads += 1;
            let read_at = queued;
            let encap = self.encap;
            for k in read_at..read_at + n {
                let len = self.sizes[k];
                match encap.encapsulate(self.tx.frame_mut(k, self.header, len), &routes) {
                    Encap::Forward(peer) => {
                        // Keep the forwarded packets contiguous: move this one down over drops.
                        self.tx.slots_mut().swap(queued, k);
                        self.tx.set_meta(queued, Meta { len, addr: peer });
                        queued += 1;
                    }
                    Encap::Drop { reason, reply } => {
                        self.s.stats.drop_packets(reason, 1);
                        if let Some(kind) = reply {
                            self.reply_icmp(kind, k, len);
                        }
                    }
                }
            }
        }
        self.send_queued(queued);
        more
    }

    /// Writes an ICMP error about the packet in tx slot `slot` back into the TUN device.
    #[cold]
    fn reply_icmp(&mut self, kind: icmp::ErrorKind, slot: usize, len: usize) {
        if !self.icmp.allow() {
            self.s.stats.add(Counter::IcmpRateLimited, 1);
            return;
        }
        let offending = &self.tx.packet_area_mut(slot)[..len];
        let n = icmp::emit_error(&mut self.icmp_buf, kind, self.s.icmp_src, offending);
        match self.s.tun.write(&self.icmp_buf[..n]) {
            Ok(_) => self.s.stats.add(Counter::IcmpSent, 1),
            Err(e) => {
                self.s.stats.drop_packets(DropReason::TunWriteFailed, 1);
                self.tun_write_errors.report(self.s.id, &e);
                self.tun_gone |= tun_detached(&e);
            }
        }
    }

    /// Groups tx slots `from..count` into messages: with GSO, each run of packets to the same peer
    /// whose sizes equal the run's first (the last may be shorter) becomes one message. Every
    /// datagram is the wire header plus one packet, so equal packets make equal segments. Returns
    /// the number of messages written to `self.msgs`.
    fn plan_messages(&mut self, from: usize, count: usize) -> usize {
        let gso = self.s.sock.gso();
        let h = self.header;
        let mut k = 0;
        let mut i = from;
        while i < count && k < self.msgs.len() {
            let head = self.tx.meta(i);
            let mut j = i + 1;
            let mut bytes = h + head.len;
            if gso {
                while j < count && j - i < MAX_GSO_SEGMENTS {
                    let m = self.tx.meta(j);
                    if m.addr != head.addr || m.len > head.len || bytes + h + m.len > MAX_GSO_BYTES
                    {
                        break;
                    }
                    bytes += h + m.len;
                    j += 1;
                    if m.len < head.len {
                        break; // a shorter packet can only end a run
                    }
                }
            }
            self.msgs[k] = SendMsg {
                first: i,
                count: j - i,
                dst: head.addr,
                segment: (h + head.len) as u16,
            };
            k += 1;
            i = j;
        }
        k
    }

    /// Sends tx slots `0..count`, one sendmmsg per call until all went or failed.
    fn send_queued(&mut self, count: usize) {
        let mut sent = 0;
        while sent < count {
            let planned = self.plan_messages(sent, count);
            let tx = &self.tx;
            let h = self.header;
            match self
                .s
                .sock
                .send_batch(&self.msgs[..planned], |p| tx.frame(p, h))
            {
                Ok(0) => {
                    // Should not happen for UDP; never spin on it.
                    self.s
                        .stats
                        .drop_packets(DropReason::SendFailed, (count - sent) as u64);
                    break;
                }
                Ok(n) => {
                    let msgs = &self.msgs[..n];
                    let packets: usize = msgs.iter().map(|m| m.count).sum();
                    let bytes: usize = (sent..sent + packets).map(|i| tx.meta(i).len).sum();
                    let gso = msgs.iter().filter(|m| m.count > 1).count();
                    self.s.stats.add(Counter::TxBatches, 1);
                    self.s.stats.add(Counter::TxPackets, packets as u64);
                    self.s.stats.add(Counter::TxBytes, bytes as u64);
                    self.s.stats.add(Counter::TxGsoSends, gso as u64);
                    sent += packets;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if self.msgs[0].count > 1
                        && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) =>
                {
                    // The egress device cannot segment (no checksum offload, say): plain batches
                    // from now on, as quinn-udp and wireguard-go do.
                    tracing::warn!(worker = self.s.id, error = %e, "UDP GSO refused by the kernel; sending without it");
                    self.s.sock.disable_gso();
                }
                Err(e) => {
                    // The first message of this call failed (no route on the underlay, firewall):
                    // count its packets and go on with the rest.
                    let lost = self.msgs[0].count;
                    self.s
                        .stats
                        .drop_packets(DropReason::SendFailed, lost as u64);
                    self.send_errors.report(self.s.id, &e);
                    sent += lost;
                }
            }
        }
    }

    /// Receives one batch from the socket, decapsulates and writes it to the TUN queue. Returns
    /// whether the socket may hold more (the batch filled up).
    fn udp_to_tun(&mut self) -> bool {
        let want = self.s.batch_size;
        let n =
            match self
                .s
                .sock
                .recv_batch(self.rx.slots_mut(), HEADROOM, &mut self.rx_meta[..want])
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
                Err(e) => {
                    self.recv_errors.report(self.s.id, &e);
                    return false;
                }
            };
        self.s.stats.add(Counter::RxBatches, 1);
        let routes = Arc::clone(self.s.routes.load());
        let mut datagrams = 0u64;
        let mut sink = TunSink {
            s: &self.s,
            gro: &mut self.gro,
            out: &mut self.tun_out,
            staged: 0,
            errors: &mut self.tun_write_errors,
            gone: &mut self.tun_gone,
            tso: &mut self.tso_write,
            delivered: 0,
            bytes: 0,
            tso_writes: 0,
        };
        // Where each segment of the current run lies in the message (its whole inner packet).
        let mut run_at = [(0usize, 0usize); tso::MAX_SEGMENTS];
        for i in 0..n {
            let m = self.rx_meta[i];
            if m.truncated {
                // Cannot happen with 64 KiB slots; counted rather than assumed.
                self.s.stats.drop_packets(DropReason::LengthMismatch, 1);
                datagrams += 1;
                continue;
            }
            self.rx.set_meta(
                i,
                Meta {
                    len: m.len,
                    addr: m.src,
                },
            );
            let buffer = self.rx.packet(i);
            // A GRO run holds several datagrams of `segment` bytes (the last may be shorter).
            let seg = if m.segment > 0 {
                m.segment
            } else {
                buffer.len().max(1)
            };
            // Consecutive segments of one TCP flow, to be written as one super-packet.
            let mut run: Option<tso::Run> = None;
            for (k, datagram) in buffer.chunks(seg).enumerate() {
                datagrams += 1;
                let range = match self.decap.decapsulate(*m.src.ip(), datagram, &routes) {
                    Verdict::Deliver(range) => range,
                    Verdict::Drop(reason) => {
                        self.s.stats.drop_packets(reason, 1);
                        continue;
                    }
                };
                let at = (k * seg + range.start, k * seg + range.end);
                let packet = &buffer[at.0..at.1];
                if !*sink.tso {
                    // Off from the start, or since the kernel refused a super-packet just now.
                    if let Some(r) = run.take() {
                        sink.write_run(buffer, &r, &run_at[..r.count()]);
                    }
                    sink.deliver(packet);
                    continue;
                }
                let segment = tso::segment(packet);
                if let (Some(r), Some(sg)) = (run.as_mut(), segment) {
                    if r.push(&buffer[run_at[0].0..run_at[0].1], packet, sg) {
                        run_at[r.count() - 1] = at;
                        continue;
                    }
                }
                // The packet does not continue the run: the run goes first, keeping the order.
                if let Some(r) = run.take() {
                    sink.write_run(buffer, &r, &run_at[..r.count()]);
                }
                match segment {
                    Some(sg) => {
                        run = Some(tso::Run::start(sg));
                        run_at[0] = at;
                    }
                    None => sink.deliver(packet),
                }
            }
            if let Some(r) = run.take() {
                sink.write_run(buffer, &r, &run_at[..r.count()]);
            }
            if buffer.is_empty() {
                // An empty datagram: chunks() yields nothing, but it still arrived and is dropped.
                datagrams += 1;
                self.s.stats.drop_packets(DropReason::Truncated, 1);
            }
        }
        sink.flush();
        let (delivered, bytes, tso_writes) = (sink.delivered, sink.bytes, sink.tso_writes);
        self.s.stats.add(Counter::RxDatagrams, datagrams);
        let runs = gro_runs(&self.rx_meta[..n]);
        if runs > 0 {
            self.s.stats.add(Counter::RxGroRuns, runs);
        }
        if tso_writes > 0 {
            self.s.stats.add(Counter::RxTsoWrites, tso_writes);
        }
        self.s.stats.add(Counter::RxPackets, delivered);
        self.s.stats.add(Counter::RxBytes, bytes);
        n == want
    }
}

/// Where delivered packets go during one receive pass: with TUN offloads, staged for one
/// coalescing write (tun-rs's GRO) or, for runs of TCP segments, written as TSO super-packets;
/// without, written one by one. Packets reach the device in the order they arrived.
struct TunSink<'a> {
    s: &'a WorkerSetup,
    gro: &'a mut tun_rs::GROTable,
    /// Staging buffers; `out[..staged]` hold packets (at `HEADROOM`) not yet written.
    out: &'a mut [Vec<u8>],
    staged: usize,
    errors: &'a mut ErrorLog,
    gone: &'a mut bool,
    /// Runs of TCP segments go out as super-packets (offloads on, and the kernel takes them).
    tso: &'a mut bool,
    delivered: u64,
    bytes: u64,
    tso_writes: u64,
}

impl TunSink<'_> {
    /// Delivers one packet the ordinary way.
    #[inline]
    fn deliver(&mut self, packet: &[u8]) {
        if self.s.tun.offload() {
            // Staged for one coalescing write of the whole batch (or until a run is written).
            let out = &mut self.out[self.staged];
            out.clear();
            out.resize(HEADROOM, 0);
            out.extend_from_slice(packet);
            if l4::complete_partial(&mut out[HEADROOM..]) {
                self.s.stats.add(Counter::RxChecksumsCompleted, 1);
            }
            self.staged += 1;
            if self.staged == self.out.len() {
                self.flush();
            }
            return;
        }
        let packet = if l4::is_partial(packet) {
            // Rare (a kernel sender over veth): complete it in a staging buffer, unused without
            // offloads.
            let out = &mut self.out[0];
            out.clear();
            out.extend_from_slice(packet);
            l4::complete_partial(out);
            self.s.stats.add(Counter::RxChecksumsCompleted, 1);
            &out[..]
        } else {
            packet
        };
        match self.s.tun.write(packet) {
            Ok(w) => {
                self.delivered += 1;
                self.bytes += w as u64;
            }
            Err(e) => self.failed(1, &e),
        }
    }

    /// Writes the staged packets with one coalescing call.
    fn flush(&mut self) {
        if self.staged == 0 {
            return;
        }
        let out = &mut self.out[..self.staged];
        self.staged = 0;
        let n = out.len() as u64;
        let bytes: usize = out.iter().map(|b| b.len() - HEADROOM).sum();
        match self.s.tun.send_multiple(self.gro, out, HEADROOM) {
            Ok(_) => {
                self.delivered += n;
                self.bytes += bytes as u64;
            }
            Err(e) => self.failed(n, &e),
        }
    }

    /// Writes the run of segments lying at `at` in `buffer` (whole inner packets, the first one
    /// the run's head) as one TSO super-packet, after whatever is staged; a run of one, or any run
    /// once super-packets are off, goes the ordinary way.
    fn write_run(&mut self, buffer: &[u8], run: &tso::Run, at: &[(usize, usize)]) {
        if at.len() < 2 || !*self.tso {
            for &(from, to) in at {
                self.deliver(&buffer[from..to]);
            }
            return;
        }
        let head = &buffer[at[0].0..at[0].1];
        self.flush();
        let mut header = [0u8; tso::MAX_HEADER];
        let header_len = run.write_header(head, &mut header);
        let skip = header_len - tso::VNET_LEN; // IPv4 + TCP header of every segment
        let mut parts = [IoSlice::new(&[]); tso::MAX_SEGMENTS + 1];
        parts[0] = IoSlice::new(&header[..header_len]);
        let mut bytes = 0;
        for (part, &(from, to)) in parts[1..].iter_mut().zip(at) {
            *part = IoSlice::new(&buffer[from + skip..to]);
            bytes += to - from;
        }
        match self.s.tun.write_gathered(&parts[..=at.len()]) {
            Ok(_) => {
                self.delivered += at.len() as u64;
                self.bytes += bytes as u64;
                self.tso_writes += 1;
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO)) => {
                // The kernel refuses our super-packets: segments go the ordinary way from now on
                // (this run included, so nothing is lost).
                tracing::warn!(worker = self.s.id, error = %e, "TUN refused a TSO super-packet; writing segments without it");
                *self.tso = false;
                for &(from, to) in at {
                    self.deliver(&buffer[from..to]);
                }
            }
            Err(e) => self.failed(at.len() as u64, &e),
        }
    }

    /// Counts `n` packets a TUN write lost.
    #[cold]
    fn failed(&mut self, n: u64, e: &io::Error) {
        self.s.stats.drop_packets(DropReason::TunWriteFailed, n);
        self.errors.report(self.s.id, e);
        *self.gone |= tun_detached(e);
    }
}

/// Messages in `meta` that carried a GRO run of more than one datagram.
fn gro_runs(meta: &[RecvMeta]) -> u64 {
    meta.iter()
        .filter(|m| m.segment > 0 && m.len > m.segment)
        .count() as u64
}

/// Wakes a worker out of poll.
pub(crate) fn waker(poll: &Poll) -> io::Result<Waker> {
    Waker::new(poll.registry(), WAKE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_limiter_caps_bursts() {
        let mut l = IcmpLimiter::new();
        let allowed = (0..1000).filter(|_| l.allow()).count();
        assert!(
            allowed >= ICMP_PER_SEC as usize && allowed <= ICMP_PER_SEC as usize + 5,
            "{allowed}"
        );
    }
}
