//! One worker: a thread pinned to a core that owns one TUN queue and one UDP socket and moves
//! packets both ways in batches.
//!
//! ```text
//!   TUN queue ──read──▶ encapsulate ──▶ plan_messages ──▶ one sendmmsg ──▶ peers
//!   TUN queue ◀─ sink ◀─ decapsulate ◀── split GRO runs ◀── one recvmmsg ◀── peers
//! ```
//!
//! Both wire formats run through the same loops: the worker's [`Encapsulator`] writes the wire
//! header (none for udp, VXLAN + inner Ethernet for vxlan) into the headroom in front of each packet
//! read from the TUN device, and sends from there; its [`Decapsulator`] checks that header on each
//! received datagram (each segment of a UDP GRO run) and hands back the inner packet's range.
//!
//! Sending: each TUN read fills a tx slot; forwarded packets are grouped by [`plan_messages`] into
//! messages (with UDP GSO, runs of equal-size datagrams of one inner flow to one peer) and go out
//! with one `sendmmsg`. With TUN offloads a TSO/USO super-packet stays in the read buffer and is
//! cut in place ([`crate::segment`]): its segments' headers are written apart and each datagram
//! is gathered from its header and its payload in the read buffer.
//!
//! Dual stack (vxlan): the worker has a second, IPv6 underlay socket. Packets read from the TUN
//! device with version nibble 6 are encapsulated by [`Encapsulator6`], swapped into the tx6 slots
//! and planned and sent exactly as the IPv4 ones (one sendmmsg, UDP GSO); the IPv6 socket is
//! received like the IPv4 one (one recvmmsg, UDP GRO, its `SO_RXQ_OVFL` drops counted into the
//! same `SocketRxOverflow`). Both families run through one generic send ([`send_planned`]) and
//! one generic receive ([`receive`]), each compiled for its address type.
//!
//! Receiving is one straight pipeline: receive a batch, split each message into its datagrams
//! (a UDP GRO run holds several), decapsulate each, and push the inner packet into the pass's
//! [`sink::Delivery`], which owns how packets reach the TUN device: with TUN offloads, a run of
//! segments of one TCP flow (normally a UDP GRO buffer holds the cut-up of one super-packet the
//! peer read from its TUN device) goes in as one TSO super-packet (see [`crate::offload`]), the
//! payloads gathered with one `writev` from the receive buffer without copying; everything else is
//! staged and written with tun-rs's coalescing call, in arrival order.
//!
//! Each wakeup moves at most one batch per direction, then checks the other direction, so neither
//! starves the other; while a direction filled its batch the worker loops without waiting in poll.
//! Nothing on this path allocates, locks or makes a system call per packet beyond the TUN read and
//! write themselves (without TUN offloads the kernel offers no batched TUN I/O).

mod sink;

use crate::batch::{Meta, PacketBatch, HEADROOM};
use crate::decap::{DecapPolicy, DecapVerdict, Decapsulator, Decapsulator6};
use crate::encap::{EncapVerdict, EncapVerdict6, Encapsulator, Encapsulator6};
use crate::route::RouteCache;
use crate::route::RouteSnapshot;
use crate::segment::{Cut, VnetHdr};
use crate::spread;
use crate::stats::{Counter, DropReason, WorkerStats};
use crate::tun::TunQueue;
use crate::udp::{
    BatchSocket, RecvMeta, SendMsg, UnderlayAddr, MAX_BATCH, MAX_GSO_BYTES, MAX_GSO_SEGMENTS,
};
use crate::wire::{checksum, icmp, icmpv6, Wire};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use sink::TunSink;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
const TUN: Token = Token(0);
const UDP: Token = Token(1);
/// The IPv6 underlay socket of a dual-stack worker.
const UDP6: Token = Token(3);
/// Token of the waker that asks the worker to stop.
pub(crate) const WAKE: Token = Token(2);

/// Most packets one TUN offload read may be cut into (64 KiB at the smallest MSS worth allowing).
pub(crate) const TUN_SPLIT_MAX: usize = 128;

/// With TUN offloads: where in `tun_scratch` a read super-packet starts. The virtio header is
/// read into the bytes just before it; once decoded, they and the ones before take the wire
/// header, so the super-packet is encapsulated in place like a packet in a tx slot.
const SCRATCH_HEAD: usize = 32;
const _: () = assert!(SCRATCH_HEAD >= tun_rs::VIRTIO_NET_HDR_LEN + crate::wire::vxlan::HEADER_LEN);

/// Room for one cut segment's headers: the wire header, an IPv4 and a TCP header with options.
const SEG_HDR_MAX: usize = crate::wire::vxlan::HEADER_LEN + crate::segment::MAX_HEADER;

/// virtio_net_hdr flag: the packet's TCP/UDP checksum holds only the pseudo-header sum.
const VNET_NEEDS_CSUM: u8 = 1;

/// What one TUN read produced.
#[derive(Debug, Clone, Copy)]
enum TunRead {
    /// This many packets in consecutive tx slots.
    Slots(usize),
    /// A TSO/USO super-packet of `len` bytes at `SCRATCH_HEAD` in `tun_scratch`, to be sent cut
    /// in place as `cut` plans.
    Super { cut: Cut, len: usize },
}

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
pub(crate) struct ErrorLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    pub(crate) fn new(what: &'static str) -> Self {
        ErrorLog {
            what,
            last: None,
            suppressed: 0,
        }
    }

    #[cold]
    pub(crate) fn report(&mut self, worker: usize, e: &io::Error) {
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
    /// The IPv4 underlay socket: the IPv4 half. `None` on an IPv6-only overlay (then `v6` is
    /// given): inner IPv4 packets find no route and are dropped as `NoRoute`, without an ICMP
    /// error (the device has no IPv4 address to send one from).
    pub(crate) sock: Option<BatchSocket>,
    pub(crate) routes: RouteCache,
    pub(crate) policy: DecapPolicy,
    pub(crate) wire: Wire,
    pub(crate) icmp_src: Ipv4Addr,
    pub(crate) batch_size: usize,
    /// With TUN offloads: write runs of received TCP segments as TSO super-packets.
    pub(crate) tso_writes: bool,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) poll: Poll,
    /// With an IPv6 overlay (vxlan only): the IPv6 half.
    pub(crate) v6: Option<V6Setup>,
}

/// The IPv6 half of a dual-stack worker: inner IPv6 packets (version nibble 6) read from the TUN
/// device go out VXLAN-encapsulated over the IPv6 underlay socket, and frames received on it are
/// judged by [`Decapsulator6`] and written into the same TUN device.
///
/// It runs through the same batch code as IPv4 (generic over the address family): one recvmmsg
/// per batch with UDP GRO and `SO_RXQ_OVFL`, and one sendmmsg per batch planned by
/// [`plan_messages`] with UDP GSO. The TUN side is shared with IPv4 (TSO6 super-packets are cut
/// into tx slots by tun-rs, received packets go through the sink).
#[derive(Debug)]
pub(crate) struct V6Setup {
    /// IPv6 underlay socket (IPV6_V6ONLY, SO_REUSEPORT), offloads as the IPv4 one's.
    pub(crate) sock: BatchSocket<SocketAddrV6>,
    pub(crate) encap: Encapsulator6,
    pub(crate) decap: Decapsulator6,
    /// Source of originated ICMPv6 errors: the device's IPv6 address.
    pub(crate) icmp_src: Ipv6Addr,
}

pub(crate) struct Worker {
    setup: WorkerSetup,
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
    /// With TUN offloads: the raw read of one super-packet (virtio header + up to 64 KiB) at
    /// `SCRATCH_HEAD`, with room for the wire header in front.
    tun_scratch: Vec<u8>,
    /// With TUN offloads: each cut segment's headers (wire, IPv4, TCP/UDP), and the segments'
    /// sizes for planning the GSO messages.
    seg_hdrs: Box<[[u8; SEG_HDR_MAX]]>,
    seg_metas: Box<[Meta]>,
    /// By tx slot: the size of the packet the last TUN read put there (one packet per read, or
    /// with TUN offloads up to `TUN_SPLIT_MAX`).
    read_sizes: Box<[usize]>,
    /// Where received packets are written: the TUN queue's write side.
    sink: TunSink,
    icmp: IcmpLimiter,
    icmp_buf: [u8; icmp::MAX_ERROR_LEN],
    send_errors: ErrorLog,
    tun_read_errors: ErrorLog,
    recv_errors: ErrorLog,
    /// A TUN read found the queue detached (the device was deleted from outside): the worker
    /// ends, and the daemon, seeing a worker gone, exits so that a supervisor starts it afresh.
    /// A write that finds it detached says so through `sink.gone()`.
    tun_gone: bool,
    /// The socket's cumulative drop count as of the last received message that carried one
    /// (`SO_RXQ_OVFL`); the growth is counted as `SocketRxOverflow`.
    rxq_drops_seen: u32,
    /// With an IPv6 overlay: the IPv6 socket's receive metadata and drop count (its own
    /// `sk_drops`, counted into the same `SocketRxOverflow`), the tx slots of encapsulated IPv6
    /// packets (a forwarded one is swapped over from `tx`, not copied), their messages, and room
    /// for one ICMPv6 error. Empty without.
    rx_meta6: Box<[RecvMeta<SocketAddrV6>]>,
    rxq6_drops_seen: u32,
    tx6: PacketBatch<SocketAddrV6>,
    msgs6: Box<[SendMsg<SocketAddrV6>]>,
    icmp6_buf: Box<[u8]>,
}

/// Whether a TUN I/O error means the device is gone (the kernel detached our queue).
fn tun_detached(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EBADFD)
}

/// The most one UDP GSO message may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GsoLimits {
    /// Datagrams per message.
    segments: usize,
    /// Bytes of UDP payload per message.
    bytes: usize,
}

/// What the kernel takes (`UDP_MAX_SEGMENTS`, and the largest UDP payload).
const GSO_LIMITS: GsoLimits = GsoLimits {
    segments: MAX_GSO_SEGMENTS,
    bytes: MAX_GSO_BYTES,
};

/// Completes the TCP/UDP checksum of a packet the kernel handed over with only the pseudo-header
/// sum in it (virtio `NEEDS_CSUM`): the sum from `start` on, the field at `start + offset`.
fn complete_checksum(packet: &mut [u8], start: u16, offset: u16) -> io::Result<()> {
    let (start, at) = (usize::from(start), usize::from(start) + usize::from(offset));
    if at + 2 > packet.len() {
        return Err(io::Error::other(
            "virtio checksum offsets beyond the packet",
        ));
    }
    let initial = u16::from_be_bytes([packet[at], packet[at + 1]]);
    packet[at..at + 2].fill(0);
    let sum = checksum::fold(checksum::accumulate(&packet[start..], u64::from(initial)));
    // A UDP checksum field (offset 6 in the UDP header) of 0 means "none": a sum of 0 is sent
    // as 0xffff (RFC 768); TCP has no such value.
    let value = match (!sum, offset) {
        (0, 6) => 0xffff,
        (v, _) => v,
    };
    packet[at..at + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// Groups the packets `packets[from..]` (each `header` bytes of wire header plus `len` bytes of
/// packet, to `addr`) into messages written to `msgs`; returns how many were written. With `gso`,
/// each run of packets of one inner flow (one [`Meta::flow`]) to the same peer whose sizes equal the
/// run's first (the last may be shorter) becomes one message, within the limits; without, every packet is its own message.
/// Every datagram is the wire header plus one packet, so equal packets make equal segments.
fn plan_messages<A: UnderlayAddr>(
    packets: &[Meta<A>],
    from: usize,
    header: usize,
    gso: Option<GsoLimits>,
    msgs: &mut [SendMsg<A>],
) -> usize {
    let mut planned = 0;
    let mut i = from;
    while i < packets.len() && planned < msgs.len() {
        let head = packets[i];
        let mut j = i + 1;
        let mut bytes = header + head.len;
        if let Some(limits) = gso {
            while j < packets.len() && j - i < limits.segments {
                let m = packets[j];
                if m.addr != head.addr
                    || m.flow != head.flow
                    || m.len > head.len
                    || bytes + header + m.len > limits.bytes
                {
                    break;
                }
                bytes += header + m.len;
                j += 1;
                if m.len < head.len {
                    break; // a shorter packet can only end a run
                }
            }
        }
        msgs[planned] = SendMsg {
            first: i,
            count: j - i,
            dst: head.addr,
            segment: (header + head.len) as u16,
        };
        planned += 1;
        i = j;
    }
    planned
}

/// The datagrams of one received message of `segment` bytes each (the last may be shorter): a
/// UDP GRO run, or with `segment` 0 the message as one datagram. Nothing for an empty message.
#[inline]
fn gro_datagrams(message: &[u8], segment: usize) -> std::slice::Chunks<'_, u8> {
    let size = if segment > 0 {
        segment
    } else {
        message.len().max(1)
    };
    message.chunks(size)
}

/// The underlay family a worker's socket carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// An address family's decapsulator, as the receive loop calls it.
trait Decap<A>: Copy {
    /// Judges one datagram from `src`; see [`Decapsulator::decapsulate`].
    fn judge(&self, src: A, datagram: &[u8], routes: &RouteSnapshot) -> DecapVerdict;
}

impl Decap<SocketAddrV4> for Decapsulator {
    #[inline]
    fn judge(&self, src: SocketAddrV4, datagram: &[u8], routes: &RouteSnapshot) -> DecapVerdict {
        self.decapsulate(*src.ip(), datagram, routes)
    }
}

impl Decap<SocketAddrV6> for Decapsulator6 {
    #[inline]
    fn judge(&self, src: SocketAddrV6, datagram: &[u8], routes: &RouteSnapshot) -> DecapVerdict {
        self.decapsulate(*src.ip(), datagram, routes)
    }
}

/// Counts the growth of a socket's kernel drop count (`SO_RXQ_OVFL`) that `metas` (one received
/// batch) report beyond `seen` as `SocketRxOverflow`, and remembers it.
#[inline]
fn count_rxq_drops<A>(metas: &[RecvMeta<A>], seen: &mut u32, stats: &WorkerStats) {
    // The count only grows from message to message, so the last one that carries it is news.
    if let Some(drops) = metas.iter().rev().find_map(|m| m.rxq_drops) {
        let new = drops.saturating_sub(*seen);
        if new > 0 {
            stats.drop_packets(DropReason::SocketRxOverflow, u64::from(new));
            *seen = drops;
        }
    }
}

/// What one receive pass borrows of its worker, whichever family's socket it reads.
struct RxPass<'a> {
    id: usize,
    tun: &'a TunQueue,
    stats: &'a WorkerStats,
    /// The receive slots (shared by both families: a pass ends with the sink flushed).
    rx: &'a mut PacketBatch,
    sink: &'a mut TunSink,
    errors: &'a mut ErrorLog,
    routes: &'a RouteSnapshot,
}

/// Receives one batch from `sock` (at most `meta.len()` messages), splits each message into its
/// datagrams, judges each with `decap` and pushes the inner packets into the TUN sink; counts the
/// kernel's drops on the socket beyond `rxq_seen` (the count the socket's last batch reported). Returns whether the socket may hold more (the
/// batch filled up).
#[inline]
fn receive<A: UnderlayAddr, D: Decap<A>>(
    p: RxPass<'_>,
    sock: &BatchSocket<A>,
    (meta, rxq_seen): (&mut [RecvMeta<A>], &mut u32),
    decap: D,
) -> bool {
    let want = meta.len();
    let n = match sock.recv_batch(p.rx.slots_mut(), HEADROOM, meta) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
        Err(e) => {
            p.errors.report(p.id, &e);
            return false;
        }
    };
    let stats = p.stats;
    stats.add(Counter::RxBatches, 1);
    count_rxq_drops(&meta[..n], rxq_seen, stats);
    let mut datagrams = 0u64;
    let mut gro_runs = 0u64;
    let mut sink = p.sink.pass(p.tun, p.id, stats);
    for (i, meta) in meta[..n].iter().enumerate() {
        if meta.segment > 0 && meta.len > meta.segment {
            gro_runs += 1;
        }
        if meta.truncated {
            // Cannot happen with 64 KiB slots; counted rather than assumed.
            stats.drop_packets(DropReason::RecvTruncated, 1);
            datagrams += 1;
            continue;
        }
        let message = p.rx.filled(i, meta.len);
        if message.is_empty() {
            // An empty datagram: it still arrived, and is dropped.
            datagrams += 1;
            stats.drop_packets(DropReason::Truncated, 1);
            continue;
        }
        for datagram in gro_datagrams(message, meta.segment) {
            datagrams += 1;
            match decap.judge(meta.src, datagram, p.routes) {
                DecapVerdict::Deliver(inner) => sink.push(&datagram[inner]),
                DecapVerdict::Drop(reason) => stats.drop_packets(reason, 1),
            }
        }
        sink.end_message();
    }
    sink.finish();
    stats.add(Counter::RxDatagrams, datagrams);
    if gro_runs > 0 {
        stats.add(Counter::RxGroRuns, gro_runs);
    }
    n == want
}

/// What one send borrows of its worker, whichever family's socket it writes.
struct TxPass<'a> {
    id: usize,
    stats: &'a WorkerStats,
    errors: &'a mut ErrorLog,
}

/// Sends the packets `metas` describe (each `header` bytes of wire header plus its packet) over
/// `sock`: planned by [`plan_messages`] into `msgs` (with UDP GSO while the socket has it), one
/// `send(sock, msgs)` (one sendmmsg) per round until all went or were counted as dropped.
#[inline]
fn send_planned<A: UnderlayAddr>(
    p: TxPass<'_>,
    (sock, msgs): (&mut BatchSocket<A>, &mut [SendMsg<A>]),
    metas: &[Meta<A>],
    header: usize,
    send: impl Fn(&BatchSocket<A>, &[SendMsg<A>]) -> io::Result<usize>,
) {
    let count = metas.len();
    let mut sent = 0;
    while sent < count {
        let gso = sock.gso().then_some(GSO_LIMITS);
        let planned = plan_messages(metas, sent, header, gso, msgs);
        match send(sock, &msgs[..planned]) {
            Ok(0) => {
                // Should not happen for UDP; never spin on it.
                p.stats
                    .drop_packets(DropReason::SendFailed, (count - sent) as u64);
                break;
            }
            Ok(n) => {
                let went = &msgs[..n];
                let packets: usize = went.iter().map(|m| m.count).sum();
                let bytes: usize = metas[sent..sent + packets].iter().map(|m| m.len).sum();
                let gso = went.iter().filter(|m| m.count > 1).count();
                p.stats.add(Counter::TxBatches, 1);
                p.stats.add(Counter::TxPackets, packets as u64);
                p.stats.add(Counter::TxBytes, bytes as u64);
                p.stats.add(Counter::TxGsoSends, gso as u64);
                sent += packets;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if msgs[0].count > 1
                    && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) =>
            {
                // The egress device cannot segment (no checksum offload, say): plain batches
                // from now on, as quinn-udp and wireguard-go do.
                tracing::warn!(worker = p.id, error = %e, "UDP GSO refused by the kernel; sending without it");
                sock.disable_gso();
            }
            Err(e) => {
                // The first message of this call failed (no route on the underlay, firewall):
                // count its packets and go on with the rest.
                let lost = msgs[0].count;
                p.stats.drop_packets(DropReason::SendFailed, lost as u64);
                p.errors.report(p.id, &e);
                sent += lost;
            }
        }
    }
}

impl Worker {
    /// Registers the TUN queue and socket with the worker's poll and allocates its buffers.
    pub(crate) fn new(setup: WorkerSetup) -> io::Result<Worker> {
        let tun_fd = setup.tun.as_raw_fd();
        setup
            .poll
            .registry()
            .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)?;
        if let Some(sock) = &setup.sock {
            let udp_fd = sock.as_raw_fd();
            setup
                .poll
                .registry()
                .register(&mut SourceFd(&udp_fd), UDP, Interest::READABLE)?;
        }
        let batch = setup.batch_size.clamp(1, MAX_BATCH);
        let offload = setup.tun.offload();
        // With offloads one TUN read may yield up to TUN_SPLIT_MAX packets, so the tx side keeps
        // room for that many beyond a batch.
        let tx_slots = if offload {
            batch + TUN_SPLIT_MAX
        } else {
            batch
        };
        if let Some(v6) = &setup.v6 {
            let fd = v6.sock.as_raw_fd();
            setup
                .poll
                .registry()
                .register(&mut SourceFd(&fd), UDP6, Interest::READABLE)?;
        }
        let v6 = setup.v6.is_some();
        let (batch6, tx6_slots) = if v6 { (batch, tx_slots) } else { (0, 0) };
        let encap = Encapsulator::new(setup.wire);
        Ok(Worker {
            rx_meta6: vec![RecvMeta::default(); batch6].into_boxed_slice(),
            rxq6_drops_seen: 0,
            tx6: PacketBatch::new(tx6_slots),
            msgs6: vec![
                SendMsg {
                    first: 0,
                    count: 0,
                    dst: SocketAddrV6::UNSPECIFIED,
                    segment: 0,
                };
                batch6
            ]
            .into_boxed_slice(),
            icmp6_buf: vec![0u8; if v6 { icmpv6::MAX_ERROR_LEN } else { 0 }].into_boxed_slice(),
            encap,
            decap: Decapsulator::new(setup.wire, setup.policy),
            header: encap.header_len(),
            tx: PacketBatch::new(tx_slots),
            tun_scratch: vec![0u8; if offload { SCRATCH_HEAD + 65_535 } else { 0 }],
            seg_hdrs: vec![[0u8; SEG_HDR_MAX]; if offload { TUN_SPLIT_MAX } else { 0 }]
                .into_boxed_slice(),
            seg_metas: vec![Meta::default(); if offload { TUN_SPLIT_MAX } else { 0 }]
                .into_boxed_slice(),
            read_sizes: vec![0usize; tx_slots].into_boxed_slice(),
            sink: TunSink::new(offload, setup.tso_writes, batch, setup.tun.mtu()?.into()),
            rx: PacketBatch::new(batch),
            rx_meta: vec![RecvMeta::default(); batch].into_boxed_slice(),
            msgs: vec![
                SendMsg {
                    first: 0,
                    count: 0,
                    dst: SocketAddrV4::UNSPECIFIED,
                    segment: 0,
                };
                batch
            ]
            .into_boxed_slice(),
            icmp: IcmpLimiter::new(),
            icmp_buf: [0; icmp::MAX_ERROR_LEN],
            send_errors: ErrorLog::new("UDP send failed"),
            tun_read_errors: ErrorLog::new("TUN read failed"),
            recv_errors: ErrorLog::new("UDP receive failed"),
            tun_gone: false,
            rxq_drops_seen: 0,
            setup: WorkerSetup {
                batch_size: batch,
                ..setup
            },
        })
    }

    /// Runs until the stop flag is set.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(8);
        // Edge-triggered readiness: a source is ready until a read on it comes back short.
        let mut tun_ready = true;
        let mut udp_ready = self.setup.sock.is_some();
        let mut udp6_ready = self.setup.v6.is_some();
        loop {
            self.setup.stats.beat();
            if self.setup.stop.load(Ordering::Acquire) {
                break;
            }
            if self.tun_gone || self.sink.gone() {
                tracing::error!(
                    worker = self.setup.id,
                    "the TUN device is gone (deleted from outside?); worker stops"
                );
                break;
            }
            if !tun_ready && !udp_ready && !udp6_ready {
                match self.setup.poll.poll(&mut events, Some(IDLE_WAKEUP)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!(worker = self.setup.id, error = %e, "poll failed; worker stops");
                        break;
                    }
                }
                for ev in events.iter() {
                    match ev.token() {
                        TUN => tun_ready = true,
                        UDP => udp_ready = true,
                        UDP6 => udp6_ready = true,
                        _ => {}
                    }
                }
                continue;
            }
            if tun_ready {
                tun_ready = self.tun_to_udp();
            }
            if udp_ready {
                udp_ready = self.udp_to_tun(Family::V4);
            }
            if udp6_ready {
                udp6_ready = self.udp_to_tun(Family::V6);
            }
        }
    }

    /// Reads one packet from the TUN queue into tx slot `at` (its size in `self.read_sizes`); with
    /// TUN offloads a TSO/USO super-packet stays in `tun_scratch` to be cut in place
    /// ([`TunRead::Super`]), a super-packet of another kind is cut into tx slots from `at` on by
    /// tun-rs, and a single packet is copied into slot `at` with its checksum completed.
    #[inline]
    fn read_tun(&mut self, at: usize) -> io::Result<TunRead> {
        if !self.setup.tun.offload() {
            self.read_sizes[at] = self.setup.tun.read(self.tx.packet_area_mut(at))?;
            return Ok(TunRead::Slots(1));
        }
        let vnet_at = SCRATCH_HEAD - tun_rs::VIRTIO_NET_HDR_LEN;
        let n = self.setup.tun.read(&mut self.tun_scratch[vnet_at..])?;
        let Some(len) = n.checked_sub(tun_rs::VIRTIO_NET_HDR_LEN).filter(|&l| l > 0) else {
            return Err(io::Error::other(format!(
                "TUN read of {n} bytes: no packet after the virtio header"
            )));
        };
        let vnet = tun_rs::VirtioNetHdr::decode(&self.tun_scratch[vnet_at..SCRATCH_HEAD])?;
        let pkt = &mut self.tun_scratch[SCRATCH_HEAD..SCRATCH_HEAD + len];
        if vnet.gso_type == 0 {
            let area = self.tx.packet_area_mut(at);
            let Some(dst) = area.get_mut(..len) else {
                return Err(io::Error::other("TUN packet larger than a slot"));
            };
            dst.copy_from_slice(pkt);
            if vnet.flags & VNET_NEEDS_CSUM != 0 {
                complete_checksum(dst, vnet.csum_start, vnet.csum_offset)?;
            }
            self.read_sizes[at] = len;
            return Ok(TunRead::Slots(1));
        }
        let Some(hdr) = (VnetHdr {
            gso_type: vnet.gso_type,
            hdr_len: vnet.hdr_len,
            gso_size: vnet.gso_size,
            csum_start: vnet.csum_start,
            csum_offset: vnet.csum_offset,
        })
        .with_packet_header_len(pkt) else {
            return Err(io::Error::other(
                "super-packet with a TCP header length outside 20..=60",
            ));
        };
        match Cut::plan(hdr, pkt, TUN_SPLIT_MAX) {
            Ok(cut) => Ok(TunRead::Super { cut, len }),
            Err(_) => {
                // Not ours to cut (an unexpected header, IPv6 extension headers longer than a
                // segment header may be): tun-rs cuts it into slots or says why not.
                let is_v6 = pkt[0] >> 4 == 6;
                let n = tun_rs::gso_split(
                    pkt,
                    tun_rs::VirtioNetHdr {
                        hdr_len: hdr.hdr_len,
                        ..vnet
                    },
                    &mut self.tx.slots_mut()[at..],
                    &mut self.read_sizes[at..],
                    HEADROOM,
                    is_v6,
                )?;
                Ok(TunRead::Slots(n))
            }
        }
    }

    /// Reads up to one batch of reads from the TUN queue, encapsulates and sends it. Returns
    /// whether the TUN queue may hold more (the batch filled up).
    fn tun_to_udp(&mut self) -> bool {
        let routes = Arc::clone(self.setup.routes.load());
        // Room one read may need: with offloads a super-packet becomes up to TUN_SPLIT_MAX packets.
        let per_read = if self.setup.tun.offload() {
            TUN_SPLIT_MAX
        } else {
            1
        };
        let has_v6 = self.setup.v6.is_some();
        let mut queued = 0;
        let mut queued6 = 0;
        let mut reads = 0;
        let mut more = true;
        while reads < self.setup.batch_size
            && queued + per_read <= self.tx.capacity()
            && (!has_v6 || queued6 + per_read <= self.tx6.capacity())
        {
            let n = match self.read_tun(queued) {
                Ok(TunRead::Slots(n)) => n,
                Ok(TunRead::Super { cut, len }) => {
                    reads += 1;
                    // Packets read before it go first: nothing of one flow overtakes (and the
                    // slots are free for an ICMP error about it).
                    if queued > 0 {
                        self.send_queued(Family::V4, queued);
                        queued = 0;
                    }
                    if queued6 > 0 {
                        self.send_queued(Family::V6, queued6);
                        queued6 = 0;
                    }
                    self.forward_super(&cut, len, &routes);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error().is_none() => {
                    // A super-packet that could not be cut (more segments than slots, a bad
                    // virtio header): it was read, so drop it and go on.
                    self.setup.stats.drop_packets(DropReason::TxMalformed, 1);
                    self.tun_read_errors.report(self.setup.id, &e);
                    continue;
                }
                Err(e) => {
                    self.tun_read_errors.report(self.setup.id, &e);
                    self.tun_gone |= tun_detached(&e);
                    more = false;
                    break;
                }
            };
            reads += 1;
            let read_at = queued;
            let encap = self.encap;
            for k in read_at..read_at + n {
                let len = self.read_sizes[k];
                if has_v6 && self.tx.filled(k, len).first().map(|b| b >> 4) == Some(6) {
                    queued6 += self.queue_v6(k, len, queued6, &routes);
                    continue;
                }
                match encap.encapsulate(self.tx.frame_mut(k, self.header, len), &routes) {
                    EncapVerdict::Forward(peer) => {
                        let flow = spread::flow_key(self.tx.filled(k, len));
                        // Keep the forwarded packets contiguous: move this one down over drops.
                        self.tx.slots_mut().swap(queued, k);
                        self.tx.set_meta(
                            queued,
                            Meta {
                                len,
                                addr: peer,
                                flow,
                            },
                        );
                        queued += 1;
                    }
                    EncapVerdict::Drop { reason, reply } => {
                        self.setup.stats.drop_packets(reason, 1);
                        if let Some(kind) = reply {
                            self.reply_icmp(kind, k, len);
                        }
                    }
                }
            }
        }
        self.send_queued(Family::V4, queued);
        self.send_queued(Family::V6, queued6);
        more
    }

    /// Routes the super-packet in `tun_scratch` (as one packet: one route lookup and TTL decrement
    /// for all its segments) and sends it cut in place, or counts each of its segments as dropped
    /// (answering with an ICMP error about its first segment where one is due). An IPv6 one goes
    /// over the IPv6 socket ([`Worker::forward_super6`]); without one it is dropped as any IPv6
    /// packet is then (`TxNotIpv4`).
    fn forward_super(&mut self, cut: &Cut, len: usize, routes: &crate::route::RouteSnapshot) {
        let h = self.header;
        if cut.segments() == 0 {
            self.setup.stats.drop_packets(DropReason::TxMalformed, 1);
            return;
        }
        if cut.is_ipv6() && self.setup.v6.is_some() {
            self.forward_super6(cut, len, routes);
            return;
        }
        let frame = &mut self.tun_scratch[SCRATCH_HEAD - h..SCRATCH_HEAD + len];
        match self.encap.encapsulate(frame, routes) {
            EncapVerdict::Forward(peer) => {
                self.setup.stats.add(Counter::TxSuperCuts, 1);
                self.send_cut(cut, len, peer);
            }
            EncapVerdict::Drop { reason, reply } => {
                self.setup.stats.drop_packets(reason, cut.segments() as u64);
                if let Some(kind) = reply {
                    let pkt = &self.tun_scratch[SCRATCH_HEAD..SCRATCH_HEAD + len];
                    let (hl, payload) = (cut.header_len(), cut.payload(0));
                    let area = self.tx.packet_area_mut(0);
                    cut.write_header(pkt, 0, &mut area[..hl]);
                    area[hl..hl + payload.len()].copy_from_slice(&pkt[payload.clone()]);
                    self.reply_icmp(kind, 0, hl + payload.len());
                }
            }
        }
    }

    /// [`Worker::forward_super`] for an IPv6 super-packet: routed by [`Encapsulator6`] as its
    /// first segment (the payload length set to that segment's for the check against the MTU,
    /// which a super-packet as a whole would fail; the hop limit decremented for all segments),
    /// then sent cut in place over the IPv6 socket. The tx6 slots' metadata describe the
    /// segments (the caller sent what was queued there).
    fn forward_super6(&mut self, cut: &Cut, len: usize, routes: &RouteSnapshot) {
        let Some(v6) = &self.setup.v6 else {
            return;
        };
        let h = self.header;
        let first = cut.header_len() + cut.payload(0).len();
        let pkt = &mut self.tun_scratch[SCRATCH_HEAD..SCRATCH_HEAD + len];
        let whole = [pkt[4], pkt[5]];
        let first_len = (first - crate::wire::ipv6::HEADER_LEN) as u16;
        pkt[4..6].copy_from_slice(&first_len.to_be_bytes());
        let frame = &mut self.tun_scratch[SCRATCH_HEAD - h..SCRATCH_HEAD + first];
        let verdict = v6.encap.encapsulate(frame, routes);
        self.tun_scratch[SCRATCH_HEAD + 4..SCRATCH_HEAD + 6].copy_from_slice(&whole);
        match verdict {
            EncapVerdict6::Forward(peer) => {
                self.setup.stats.add(Counter::TxSuperCuts, 1);
                let n = self.cut_headers(cut, len);
                for i in 0..n {
                    let meta = Meta {
                        len: cut.header_len() + cut.payload(i).len(),
                        addr: peer,
                        flow: 0,
                    };
                    self.tx6.set_meta(i, meta);
                }
                let (hl, pkt) = (cut.header_len(), &self.tun_scratch[SCRATCH_HEAD..]);
                let seg_hdrs = &self.seg_hdrs;
                let parts =
                    |p: usize| -> [&[u8]; 2] { [&seg_hdrs[p][..h + hl], &pkt[cut.payload(p)]] };
                let pass = TxPass {
                    id: self.setup.id,
                    stats: &self.setup.stats,
                    errors: &mut self.send_errors,
                };
                if let Some(v6) = &mut self.setup.v6 {
                    send_planned(
                        pass,
                        (&mut v6.sock, &mut self.msgs6),
                        &self.tx6.metas()[..n],
                        h,
                        |sock, msgs| sock.send_batch_gathered(msgs, parts),
                    );
                }
            }
            EncapVerdict6::Drop { reason, reply } => {
                self.setup.stats.drop_packets(reason, cut.segments() as u64);
                if let Some(kind) = reply {
                    let pkt = &self.tun_scratch[SCRATCH_HEAD..SCRATCH_HEAD + len];
                    let (hl, payload) = (cut.header_len(), cut.payload(0));
                    let area = self.tx.packet_area_mut(0);
                    cut.write_header(pkt, 0, &mut area[..hl]);
                    area[hl..hl + payload.len()].copy_from_slice(&pkt[payload.clone()]);
                    self.reply_icmp6(kind, 0, hl + payload.len());
                }
            }
        }
    }

    /// Writes each segment's headers of the encapsulated super-packet in `tun_scratch` (the wire
    /// header, then [`Cut::write_header`]'s) into `seg_hdrs`; returns the number of segments.
    fn cut_headers(&mut self, cut: &Cut, len: usize) -> usize {
        let h = self.header;
        let hl = cut.header_len();
        let (wire, pkt) = self.tun_scratch[SCRATCH_HEAD - h..SCRATCH_HEAD + len].split_at(h);
        for (i, hdr) in self.seg_hdrs[..cut.segments()].iter_mut().enumerate() {
            hdr[..h].copy_from_slice(wire);
            cut.write_header(pkt, i, &mut hdr[h..h + hl]);
        }
        cut.segments()
    }

    /// Sends the encapsulated super-packet in `tun_scratch` as its segments: each segment's
    /// headers are written into `seg_hdrs` ([`Worker::cut_headers`]), and every datagram is
    /// gathered from its header slot and its payload in the read buffer, so the payload is read
    /// once (for its checksum) and copied only by the kernel. With UDP GSO runs of equal segments
    /// go as one message each, as in [`Worker::send_queued`].
    fn send_cut(&mut self, cut: &Cut, len: usize, peer: SocketAddrV4) {
        let h = self.header;
        let hl = cut.header_len();
        let n = self.cut_headers(cut, len);
        for (i, meta) in self.seg_metas[..n].iter_mut().enumerate() {
            *meta = Meta {
                len: hl + cut.payload(i).len(),
                addr: peer,
                flow: 0,
            };
        }
        let pkt = &self.tun_scratch[SCRATCH_HEAD..SCRATCH_HEAD + len];
        let seg_hdrs = &self.seg_hdrs;
        let parts = |p: usize| -> [&[u8]; 2] { [&seg_hdrs[p][..h + hl], &pkt[cut.payload(p)]] };
        let Some(sock) = &mut self.setup.sock else {
            // No IPv4 half: no route is IPv4, so nothing gets here.
            self.setup.stats.drop_packets(DropReason::NoRoute, n as u64);
            return;
        };
        let pass = TxPass {
            id: self.setup.id,
            stats: &self.setup.stats,
            errors: &mut self.send_errors,
        };
        send_planned(
            pass,
            (sock, &mut self.msgs),
            &self.seg_metas[..n],
            h,
            |sock, msgs| sock.send_batch_gathered(msgs, parts),
        );
    }

    /// Writes an ICMP error about the packet in tx slot `slot` back into the TUN device.
    #[cold]
    fn reply_icmp(&mut self, kind: icmp::ErrorKind, slot: usize, len: usize) {
        if self.setup.sock.is_none() {
            // IPv6 only: the device has no IPv4 address to send an ICMP error from (the drop
            // itself is counted).
            return;
        }
        let stats = &*self.setup.stats;
        if !self.icmp.allow() {
            stats.add(Counter::IcmpRateLimited, 1);
            return;
        }
        let offending = &self.tx.packet_area_mut(slot)[..len];
        let n = icmp::emit_error(&mut self.icmp_buf, kind, self.setup.icmp_src, offending);
        match self.setup.tun.write(&self.icmp_buf[..n]) {
            Ok(_) => stats.add(Counter::IcmpSent, 1),
            Err(e) => self.sink.failed(self.setup.id, stats, 1, &e),
        }
    }

    /// Sends the first `count` queued packets of `family` (tx slots for IPv4, tx6 slots for
    /// IPv6) over its socket, one sendmmsg per call until all went or failed.
    fn send_queued(&mut self, family: Family, count: usize) {
        let h = self.header;
        let pass = TxPass {
            id: self.setup.id,
            stats: &self.setup.stats,
            errors: &mut self.send_errors,
        };
        let (tx, tx6) = (&self.tx, &self.tx6);
        match (family, &mut self.setup.sock, &mut self.setup.v6) {
            (Family::V4, Some(sock), _) => send_planned(
                pass,
                (sock, &mut self.msgs),
                &tx.metas()[..count],
                h,
                |sock, msgs| sock.send_batch(msgs, |p| tx.frame(p, h)),
            ),
            // No IPv4 half: no route is IPv4, so nothing is queued (counted should it be).
            (Family::V4, None, _) => pass.stats.drop_packets(DropReason::NoRoute, count as u64),
            (Family::V6, _, Some(v6)) => send_planned(
                pass,
                (&mut v6.sock, &mut self.msgs6),
                &tx6.metas()[..count],
                h,
                |sock, msgs| sock.send_batch(msgs, |p| tx6.frame(p, h)),
            ),
            (Family::V6, _, None) => {}
        }
    }

    /// Receives one batch from `family`'s socket into the TUN sink (judged by [`Decapsulator`] or
    /// [`Decapsulator6`]); see [`receive`]. Returns whether the socket may hold more.
    fn udp_to_tun(&mut self, family: Family) -> bool {
        let routes = Arc::clone(self.setup.routes.load());
        let pass = RxPass {
            id: self.setup.id,
            tun: &self.setup.tun,
            stats: &self.setup.stats,
            rx: &mut self.rx,
            sink: &mut self.sink,
            errors: &mut self.recv_errors,
            routes: &routes,
        };
        let want = self.setup.batch_size;
        match (family, &self.setup.sock, &self.setup.v6) {
            (Family::V4, Some(sock), _) => receive(
                pass,
                sock,
                (&mut self.rx_meta[..want], &mut self.rxq_drops_seen),
                self.decap,
            ),
            (Family::V4, None, _) => false,
            (Family::V6, _, Some(v6)) => receive(
                pass,
                &v6.sock,
                (&mut self.rx_meta6[..want], &mut self.rxq6_drops_seen),
                v6.decap,
            ),
            (Family::V6, _, None) => false,
        }
    }
}

impl Worker {
    /// Encapsulates the IPv6 packet in tx slot `k` and queues it for the IPv6 socket as tx6 slot
    /// `at` (swapping the slots, so nothing is copied), or drops it (answering with an ICMPv6
    /// error where one is due). Returns how many packets it queued (1 or 0).
    #[inline]
    fn queue_v6(&mut self, k: usize, len: usize, at: usize, routes: &RouteSnapshot) -> usize {
        let Some(v6) = &self.setup.v6 else {
            return 0;
        };
        let frame = self.tx.frame_mut(k, self.header, len);
        match v6.encap.encapsulate(frame, routes) {
            EncapVerdict6::Forward(peer) => {
                std::mem::swap(&mut self.tx.slots_mut()[k], &mut self.tx6.slots_mut()[at]);
                self.tx6.set_meta(
                    at,
                    Meta {
                        len,
                        addr: peer,
                        flow: 0,
                    },
                );
                1
            }
            EncapVerdict6::Drop { reason, reply } => {
                self.setup.stats.drop_packets(reason, 1);
                if let Some(kind) = reply {
                    self.reply_icmp6(kind, k, len);
                }
                0
            }
        }
    }

    /// Writes an ICMPv6 error about the packet in tx slot `slot` back into the TUN device.
    #[cold]
    fn reply_icmp6(&mut self, kind: icmpv6::ErrorKind, slot: usize, len: usize) {
        let Some(v6) = &self.setup.v6 else {
            return;
        };
        let stats = &*self.setup.stats;
        if !self.icmp.allow() {
            stats.add(Counter::IcmpRateLimited, 1);
            return;
        }
        let offending = &self.tx.packet_area_mut(slot)[..len];
        let n = icmpv6::emit_error(&mut self.icmp6_buf, kind, v6.icmp_src, offending);
        match self.setup.tun.write(&self.icmp6_buf[..n]) {
            Ok(_) => stats.add(Counter::IcmpSent, 1),
            Err(e) => self.sink.failed(self.setup.id, stats, 1, &e),
        }
    }
}

/// Wakes a worker out of poll.
pub(crate) fn waker(poll: &Poll) -> io::Result<Waker> {
    Waker::new(poll.registry(), WAKE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 8285);
    const OTHER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 3), 8285);

    fn metas(lens: &[(usize, SocketAddrV4)]) -> Vec<Meta> {
        lens.iter()
            .map(|&(len, addr)| Meta { len, addr, flow: 0 })
            .collect()
    }

    /// Plans `packets` from `from` with room for `room` messages; returns (first, count,
    /// segment) of each.
    fn plan(
        packets: &[Meta],
        from: usize,
        header: usize,
        gso: Option<GsoLimits>,
        room: usize,
    ) -> Vec<(usize, usize, u16)> {
        let mut msgs = vec![
            SendMsg {
                first: 0,
                count: 0,
                dst: PEER,
                segment: 0,
            };
            room
        ];
        let n = plan_messages(packets, from, header, gso, &mut msgs);
        for m in &msgs[..n] {
            assert_eq!(m.dst, packets[m.first].addr);
        }
        msgs[..n]
            .iter()
            .map(|m| (m.first, m.count, m.segment))
            .collect()
    }

    #[test]
    fn plan_equal_sizes_and_a_short_tail_make_one_message() {
        let p = metas(&[(1400, PEER), (1400, PEER), (1400, PEER), (900, PEER)]);
        assert_eq!(plan(&p, 0, 0, Some(GSO_LIMITS), 8), [(0, 4, 1400)]);
        // The wire header is part of every segment.
        assert_eq!(plan(&p, 0, 22, Some(GSO_LIMITS), 8), [(0, 4, 1422)]);
        // A shorter packet ends the run; a longer one starts a new message.
        let p = metas(&[
            (1400, PEER),
            (900, PEER),
            (900, PEER),
            (900, PEER),
            (1500, PEER),
        ]);
        assert_eq!(
            plan(&p, 0, 0, Some(GSO_LIMITS), 8),
            [(0, 2, 1400), (2, 2, 900), (4, 1, 1500)]
        );
        // Without GSO each packet is its own message.
        assert_eq!(
            plan(&p[..3], 0, 0, None, 8),
            [(0, 1, 1400), (1, 1, 900), (2, 1, 900)]
        );
    }

    #[test]
    fn plan_a_different_peer_ends_a_message() {
        let p = metas(&[(1000, PEER), (1000, PEER), (1000, OTHER), (1000, PEER)]);
        assert_eq!(
            plan(&p, 0, 0, Some(GSO_LIMITS), 8),
            [(0, 2, 1000), (2, 1, 1000), (3, 1, 1000)]
        );
        // Planning resumes where the last send stopped, and stops when the messages run out.
        assert_eq!(
            plan(&p, 2, 0, Some(GSO_LIMITS), 8),
            [(2, 1, 1000), (3, 1, 1000)]
        );
        assert_eq!(plan(&p, 0, 0, Some(GSO_LIMITS), 1), [(0, 2, 1000)]);
        assert_eq!(plan(&p, 4, 0, Some(GSO_LIMITS), 8), []);
    }

    #[test]
    fn plan_another_inner_flow_ends_a_message() {
        let mut p = metas(&[(1000, PEER); 5]);
        for (m, flow) in p.iter_mut().zip([7, 7, 9, 9, 7]) {
            m.flow = flow;
        }
        assert_eq!(
            plan(&p, 0, 0, Some(GSO_LIMITS), 8),
            [(0, 2, 1000), (2, 2, 1000), (4, 1, 1000)]
        );
    }

    #[test]
    fn plan_keeps_to_the_segment_and_byte_limits() {
        // 64 datagrams at most per message.
        let p = metas(&[(100, PEER); 130]);
        assert_eq!(
            plan(&p, 0, 0, Some(GSO_LIMITS), 8),
            [(0, 64, 100), (64, 64, 100), (128, 2, 100)]
        );
        // 65 507 bytes of UDP payload at most: 46 × 1400 = 64 400 fits, 47 would not.
        let p = metas(&[(1400, PEER); 50]);
        assert_eq!(
            plan(&p, 0, 0, Some(GSO_LIMITS), 8),
            [(0, 46, 1400), (46, 4, 1400)]
        );
        // Exactly at the limit: 65 507 = 7 × 9 001 + 2 500.
        let mut exact = metas(&[(9001, PEER); 7]);
        exact.extend(metas(&[(2500, PEER), (1, PEER)]));
        assert_eq!(
            plan(&exact, 0, 0, Some(GSO_LIMITS), 8),
            [(0, 8, 9001), (8, 1, 1)]
        );
        // Limits are inputs: smaller ones are kept too.
        let small = GsoLimits {
            segments: 3,
            bytes: 65_507,
        };
        let p = metas(&[(100, PEER); 5]);
        assert_eq!(plan(&p, 0, 0, Some(small), 8), [(0, 3, 100), (3, 2, 100)]);
    }

    #[test]
    fn plan_groups_ipv6_peers_as_ipv4_ones() {
        let a = SocketAddrV6::new("fd00::2".parse().expect("addr"), 8472, 0, 0);
        let b = SocketAddrV6::new("fd00::3".parse().expect("addr"), 8472, 0, 0);
        let p: Vec<Meta<SocketAddrV6>> = [(1000, a), (1000, a), (400, a), (1000, b)]
            .iter()
            .map(|&(len, addr)| Meta { len, addr, flow: 0 })
            .collect();
        let mut msgs = [SendMsg {
            first: 0,
            count: 0,
            dst: SocketAddrV6::UNSPECIFIED,
            segment: 0,
        }; 8];
        let n = plan_messages(&p, 0, 8, Some(GSO_LIMITS), &mut msgs);
        let got: Vec<_> = msgs[..n]
            .iter()
            .map(|m| (m.first, m.count, m.dst, m.segment))
            .collect();
        assert_eq!(got, [(0, 3, a, 1008), (3, 1, b, 1008)]);
    }

    #[test]
    fn gro_datagrams_cut_a_message_into_segments() {
        let message: Vec<u8> = (0..10).collect();
        let cut: Vec<&[u8]> = gro_datagrams(&message, 4).collect();
        assert_eq!(cut, [&[0, 1, 2, 3][..], &[4, 5, 6, 7], &[8, 9]]);
        let whole: Vec<&[u8]> = gro_datagrams(&message, 0).collect();
        assert_eq!(whole, [&message[..]]);
        assert_eq!(gro_datagrams(&[], 0).count(), 0);
    }

    /// The IPv4/UDP pseudo-header sum of `p` (addresses, protocol 17, the UDP length).
    fn pseudo_of(p: &[u8]) -> u16 {
        let len = u16::from_be_bytes([p[24], p[25]]);
        checksum::fold(checksum::accumulate(&p[12..20], 17 + u64::from(len)))
    }

    #[test]
    fn a_udp_checksum_that_sums_to_zero_is_sent_as_all_ones() {
        // IPv4 + UDP, 4 payload bytes; the checksum field holds the pseudo-header sum, as the
        // kernel leaves it with NEEDS_CSUM (csum_start 20, csum_offset 6).
        let mut p = [0u8; 32];
        p[0] = 0x45;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 1, 1, 2]);
        p[16..20].copy_from_slice(&[10, 1, 2, 2]);
        p[20..22].copy_from_slice(&1000u16.to_be_bytes());
        p[22..24].copy_from_slice(&2000u16.to_be_bytes());
        p[24..26].copy_from_slice(&12u16.to_be_bytes());
        let pseudo = checksum::fold(checksum::accumulate(&p[12..20], 17 + 12));
        p[26..28].copy_from_slice(&pseudo.to_be_bytes());
        // Choose the last payload word so that the whole sum is 0xffff (its complement 0).
        let rest = checksum::fold(checksum::accumulate(&p[20..26], u64::from(pseudo)));
        p[30..32].copy_from_slice(&(!rest).to_be_bytes());
        complete_checksum(&mut p, 20, 6).expect("in range");
        assert_eq!(u16::from_be_bytes([p[26], p[27]]), 0xffff);
        // 0xffff and 0 are the same number in ones' complement: the datagram still verifies.
        let verify = checksum::fold(checksum::accumulate(&p[20..], u64::from(pseudo_of(&p))));
        assert_eq!(verify, 0xffff);
    }

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
