//! The WireGuard workers: one thread per TUN queue and socket (SO_REUSEPORT), as the udp and
//! vxlan data planes run theirs.
//!
//! ```text
//!  TUN read ×batch → peer by inner dst → encrypt (peer lock) → sendmmsg, runs to one peer as UDP GSO
//!  recvmmsg (+GRO) → peer by receiver index → decrypt (peer lock) → allowed-IPs check → TUN write
//!  worker 0, every 250 ms: each peer's timers (rekey, retransmit, keepalive, expiry)
//! ```

use super::{PeerTable, RxVerdict, TxVerdict, WgCore, MIN_OUT, SEAL_OVERHEAD};
use crate::dataplane::StartError;
use crate::net::Ipv4Net;
use crate::stats::{Counter, DropReason, StatsSnapshot, WorkerStats};
use crate::tun::{self, TunConfig, TunQueue};
use crate::udp::{
    BatchSocket, Offload, RecvMeta, SendMsg, MAX_BATCH, MAX_GSO_BYTES, MAX_GSO_SEGMENTS,
};
use crate::worker::{ErrorLog, TUN_SPLIT_MAX};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TUN: Token = Token(0);
const UDP: Token = Token(1);
const WAKE: Token = Token(2);
/// How often worker 0 runs the peers' timers (boringtun's device uses 250 ms too).
const TIMER_TICK: Duration = Duration::from_millis(250);
/// How often the handshake rate limit's count resets.
const RATE_LIMIT_RESET: Duration = Duration::from_secs(1);
/// Longest sleep of the other workers (so their heartbeat shows they live).
const IDLE_WAKEUP: Duration = Duration::from_secs(1);
/// Largest datagram one receive slot holds (a GRO run is one UDP datagram at most).
const RX_SLOT: usize = 65_536;
/// Where packets start in the TUN buffers with offloads (room for the virtio header that
/// tun-rs writes in front when coalescing).
const TUN_OFFSET: usize = 16;
/// Decrypted packets staged for one coalescing TUN write.
const RX_STAGE: usize = 128;

/// What to start.
#[derive(Debug, Clone)]
pub struct WgDataplaneConfig {
    /// TUN device name (flannel: `flannel-wg`).
    pub tun_name: String,
    /// MTU of the device (flannel: base MTU − 80).
    pub mtu: u32,
    /// This host's subnet (its network address becomes the device address, /32).
    pub local: Ipv4Net,
    /// Underlay address and port to bind (flannel: `ListenPort`).
    pub bind: SocketAddrV4,
    /// Number of workers.
    pub workers: usize,
    /// Packets per batch, 1..=128.
    pub batch_size: usize,
    /// Socket buffer size in bytes.
    pub socket_buffer: usize,
    /// Kernel offloads: UDP GSO/GRO on the sockets, and vnet_hdr TSO/USO on the TUN device
    /// (reads return super-packets cut into packets, writes coalesce TCP segments). `Auto` falls
    /// back to a plain device where the kernel refuses.
    pub offload: Offload,
}

/// A running WireGuard data plane.
#[derive(Debug)]
pub struct WgDataplane {
    threads: Vec<JoinHandle<()>>,
    wakers: Vec<Waker>,
    stop: Arc<AtomicBool>,
    stats: Vec<Arc<WorkerStats>>,
    live: Arc<AtomicUsize>,
    core: Arc<WgCore>,
    gso: bool,
    tun_offload: bool,
}

/// A cheap, shareable view of a running WireGuard data plane: its counters, its workers'
/// health and its peers. Reading it never touches the workers' hot path except for each peer's
/// lock, taken once per peer by [`Peer::stats`](super::Peer::stats).
#[derive(Debug, Clone)]
pub struct WgStatsSource {
    stats: Vec<Arc<WorkerStats>>,
    live: Arc<AtomicUsize>,
    workers: usize,
    core: Arc<WgCore>,
}

impl WgStatsSource {
    /// Counters summed over all workers.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot::sum(self.stats.iter().map(|s| &**s))
    }

    /// Workers still running.
    pub fn live_workers(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Whether every worker is still running.
    pub fn healthy(&self) -> bool {
        self.live_workers() == self.workers
    }

    /// Time since each worker last went round its loop.
    pub fn heartbeat_ages(&self) -> Vec<std::time::Duration> {
        self.stats.iter().map(|s| s.heartbeat_age()).collect()
    }

    /// The current peer table.
    pub fn peers(&self) -> Arc<super::PeerTable> {
        self.core.table().clone()
    }
}

struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn ctx(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> StartError {
    move |source| StartError {
        what: what(),
        source,
    }
}

impl WgDataplane {
    /// Creates the TUN device and one socket per worker, and starts the workers. On error
    /// nothing is left behind (the queues close, so the device goes).
    pub fn start(cfg: &WgDataplaneConfig, core: Arc<WgCore>) -> Result<WgDataplane, StartError> {
        let workers = cfg.workers.clamp(1, 64);
        let mtu = u16::try_from(cfg.mtu).unwrap_or(u16::MAX);
        let mut tun_cfg = TunConfig {
            name: cfg.tun_name.clone(),
            addr: cfg.local.addr(),
            mtu,
            queues: workers,
            offload: cfg.offload != Offload::Off,
        };
        let queues = match tun::create(&tun_cfg) {
            Err(e) if cfg.offload == Offload::Auto && e.kind() != io::ErrorKind::AlreadyExists => {
                tracing::warn!(error = %e, "TUN offloads unavailable; using plain TUN reads and writes");
                tun_cfg.offload = false;
                tun::create(&tun_cfg)
            }
            r => r,
        }
        .map_err(ctx(|| format!("creating TUN device {}", cfg.tun_name)))?;
        let tun_offload = tun_cfg.offload;
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(AtomicUsize::new(0));
        let mut dp = WgDataplane {
            threads: Vec::with_capacity(workers),
            wakers: Vec::with_capacity(workers),
            stop: Arc::clone(&stop),
            stats: Vec::with_capacity(workers),
            live: Arc::clone(&live),
            core: Arc::clone(&core),
            gso: true,
            tun_offload,
        };
        let mut setups = Vec::with_capacity(workers);
        for (id, tun) in queues.into_iter().enumerate() {
            let sock = BatchSocket::bind(cfg.bind, cfg.socket_buffer, cfg.offload)
                .map_err(ctx(|| format!("binding UDP {}", cfg.bind)))?;
            dp.gso &= sock.gso();
            let poll = Poll::new().map_err(ctx(|| "creating poll".to_string()))?;
            dp.wakers.push(
                Waker::new(poll.registry(), WAKE).map_err(ctx(|| "creating waker".to_string()))?,
            );
            let st = Arc::new(WorkerStats::default());
            dp.stats.push(Arc::clone(&st));
            setups.push((id, tun, sock, poll, st));
        }
        for (id, tun, sock, poll, st) in setups {
            let w = Worker::new(
                id,
                tun,
                sock,
                poll,
                Arc::clone(&core),
                st,
                Arc::clone(&stop),
                cfg,
            )
            .map_err(ctx(|| format!("registering worker {id}")))?;
            live.fetch_add(1, Ordering::AcqRel);
            let guard = LiveGuard(Arc::clone(&live));
            let t = std::thread::Builder::new()
                .name(format!("weft-wg-{id}"))
                .spawn(move || {
                    let _guard = guard;
                    w.run();
                })
                .map_err(ctx(|| format!("spawning worker {id}")))?;
            dp.threads.push(t);
        }
        Ok(dp)
    }

    /// The shared peer state (to replace peers).
    pub fn core(&self) -> &Arc<WgCore> {
        &self.core
    }

    /// Counters summed over all workers.
    pub fn stats(&self) -> StatsSnapshot {
        StatsSnapshot::sum(self.stats.iter().map(|s| &**s))
    }

    /// A shareable view of the counters, the workers' health and the peers (for a metrics
    /// server on another thread).
    pub fn stats_source(&self) -> WgStatsSource {
        WgStatsSource {
            stats: self.stats.clone(),
            live: Arc::clone(&self.live),
            workers: self.threads.len(),
            core: Arc::clone(&self.core),
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Whether the sockets use UDP GSO.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Whether the TUN device runs with offloads.
    pub fn tun_offload(&self) -> bool {
        self.tun_offload
    }

    /// Whether every worker still runs.
    pub fn healthy(&self) -> bool {
        self.live.load(Ordering::Acquire) == self.threads.len()
    }

    /// Stops and joins the workers (the device goes with the last queue); returns the counters.
    pub fn stop(mut self) -> StatsSnapshot {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a wireguard worker panicked");
            }
        }
    }
}

impl Drop for WgDataplane {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
        }
    }
}

struct Worker {
    id: usize,
    tun: TunQueue,
    sock: BatchSocket,
    poll: Poll,
    core: Arc<WgCore>,
    stats: Arc<WorkerStats>,
    stop: Arc<AtomicBool>,
    batch: usize,
    /// Plaintext packets of one TUN read (with offloads, a super-packet's segments at
    /// `TUN_OFFSET`; without, one packet at 0).
    tx_in: Vec<Vec<u8>>,
    tx_in_len: Box<[usize]>,
    /// The raw super-packet of a read with offloads.
    tun_scratch: Vec<u8>,
    /// With offloads: decrypted packets at `TUN_OFFSET`, written with one coalescing call.
    rx_stage: Vec<Vec<u8>>,
    gro: tun_rs::GROTable,
    /// Their datagrams, and each one's length and destination.
    tx_out: Vec<Vec<u8>>,
    tx_len: Box<[usize]>,
    /// Per tx datagram: the inner packet's length if it carries one (0 for handshakes,
    /// keepalives and cookies), counted once the kernel took it.
    tx_data_len: Box<[usize]>,
    tx_dst: Box<[SocketAddrV4]>,
    msgs: Vec<SendMsg>,
    rx: Vec<Vec<u8>>,
    rx_meta: Box<[RecvMeta]>,
    /// Decrypted packet on its way into the TUN device.
    plain: Vec<u8>,
    /// Handshake messages, cookies, keepalives, queued packets: sent one at a time.
    control: Vec<u8>,
    rxq_drops_seen: u32,
    send_errors: ErrorLog,
    recv_errors: ErrorLog,
    tun_errors: ErrorLog,
    tun_gone: bool,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: usize,
        tun: TunQueue,
        sock: BatchSocket,
        poll: Poll,
        core: Arc<WgCore>,
        stats: Arc<WorkerStats>,
        stop: Arc<AtomicBool>,
        cfg: &WgDataplaneConfig,
    ) -> io::Result<Worker> {
        let tun_fd = tun.as_raw_fd();
        let udp_fd = sock.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)?;
        poll.registry()
            .register(&mut SourceFd(&udp_fd), UDP, Interest::READABLE)?;
        let batch = cfg.batch_size.clamp(1, MAX_BATCH);
        let offload = tun.offload();
        // The device hands us packets of at most its MTU (with offloads: segments of at most
        // the MTU, cut from the super-packet).
        let packet = (cfg.mtu as usize).max(1500) + 64 + TUN_OFFSET;
        let sealed = (packet + SEAL_OVERHEAD).max(MIN_OUT);
        let unspec = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        let split = if offload { TUN_SPLIT_MAX } else { 1 };
        let tx_slots = batch + split;
        Ok(Worker {
            id,
            tun,
            sock,
            poll,
            core,
            stats,
            stop,
            batch,
            tx_in: vec![vec![0u8; packet]; split],
            tx_in_len: vec![0; split].into_boxed_slice(),
            tun_scratch: vec![
                0u8;
                if offload {
                    tun_rs::VIRTIO_NET_HDR_LEN + 65_535
                } else {
                    0
                }
            ],
            rx_stage: if offload {
                (0..RX_STAGE)
                    .map(|_| Vec::with_capacity(2 * TUN_OFFSET + RX_SLOT))
                    .collect()
            } else {
                Vec::new()
            },
            gro: tun_rs::GROTable::new(),
            tx_out: vec![vec![0u8; sealed]; tx_slots],
            tx_len: vec![0; tx_slots].into_boxed_slice(),
            tx_data_len: vec![0; tx_slots].into_boxed_slice(),
            tx_dst: vec![unspec; tx_slots].into_boxed_slice(),
            msgs: Vec::with_capacity(tx_slots),
            rx: vec![vec![0u8; RX_SLOT]; batch],
            rx_meta: vec![RecvMeta::default(); batch].into_boxed_slice(),
            plain: vec![0u8; RX_SLOT],
            control: vec![0u8; sealed],
            rxq_drops_seen: 0,
            send_errors: ErrorLog::new("UDP send failed"),
            recv_errors: ErrorLog::new("UDP receive failed"),
            tun_errors: ErrorLog::new("TUN I/O failed"),
            tun_gone: false,
        })
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(8);
        let mut tun_ready = true;
        let mut udp_ready = true;
        let timers = self.id == 0;
        let mut next_tick = Instant::now();
        let mut next_reset = Instant::now() + RATE_LIMIT_RESET;
        loop {
            self.stats.beat();
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            if self.tun_gone {
                tracing::error!(worker = self.id, "the TUN device is gone; worker stops");
                break;
            }
            if timers {
                let now = Instant::now();
                if now >= next_tick {
                    self.run_timers();
                    next_tick = now + TIMER_TICK;
                }
                if now >= next_reset {
                    self.core.reset_rate_limit();
                    next_reset = now + RATE_LIMIT_RESET;
                }
            }
            if !tun_ready && !udp_ready {
                let wait = if timers {
                    next_tick.saturating_duration_since(Instant::now())
                } else {
                    IDLE_WAKEUP
                };
                match self.poll.poll(&mut events, Some(wait)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!(worker = self.id, error = %e, "poll failed; worker stops");
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

    fn run_timers(&mut self) {
        let table = self.core.table();
        for peer in table.peers() {
            if let Some(p) = peer.update_timers(&mut self.control) {
                let to = peer.endpoint();
                send_one(
                    &self.sock,
                    &self.stats,
                    &mut self.send_errors,
                    self.id,
                    to,
                    p,
                );
            }
        }
    }

    /// Reads, encrypts and sends up to one batch of reads. Returns whether the TUN queue may
    /// hold more.
    fn tun_to_udp(&mut self) -> bool {
        let table = self.core.table();
        let offload = self.tun.offload();
        let (split, at) = if offload {
            (TUN_SPLIT_MAX, TUN_OFFSET)
        } else {
            (1, 0)
        };
        let mut n = 0;
        let mut reads = 0;
        let mut more = true;
        while reads < self.batch && n + split <= self.tx_out.len() {
            let read = if offload {
                self.tun.recv_multiple(
                    &mut self.tun_scratch,
                    &mut self.tx_in,
                    &mut self.tx_in_len,
                    TUN_OFFSET,
                )
            } else {
                self.tun.read(&mut self.tx_in[0]).map(|len| {
                    self.tx_in_len[0] = len;
                    1
                })
            };
            let k = match read {
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error().is_none() => {
                    // A super-packet tun-rs could not cut (more segments than slots, a bad
                    // virtio header): it was read, so drop it and go on.
                    self.stats.drop_packets(DropReason::TxMalformed, 1);
                    self.tun_errors.report(self.id, &e);
                    continue;
                }
                Err(e) => {
                    self.tun_errors.report(self.id, &e);
                    self.tun_gone |= e.raw_os_error() == Some(libc::EBADFD);
                    more = false;
                    break;
                }
            };
            reads += 1;
            for j in 0..k {
                let len = self.tx_in_len[j];
                let Some(packet) = self.tx_in[j].get(at..at + len) else {
                    self.stats.drop_packets(DropReason::TxMalformed, 1);
                    continue;
                };
                match self.core.encapsulate(&table, packet, &mut self.tx_out[n]) {
                    TxVerdict::Send { to, packet, data } => {
                        self.tx_len[n] = packet.len();
                        self.tx_dst[n] = to;
                        self.tx_data_len[n] = if data { len } else { 0 };
                        n += 1;
                    }
                    TxVerdict::Queued => {}
                    TxVerdict::Drop(r) => self.stats.drop_packets(r, 1),
                }
            }
        }
        drop(table);
        if n > 0 {
            self.send(n);
        }
        more
    }

    /// Sends datagrams `0..n`: runs of equal-length datagrams to one peer as one GSO message.
    fn send(&mut self, n: usize) {
        plan(
            &self.tx_len[..n],
            &self.tx_dst[..n],
            self.sock.gso(),
            &mut self.msgs,
        );
        let mut at = 0;
        while at < self.msgs.len() {
            let out = &self.tx_out;
            let lens = &self.tx_len;
            match self
                .sock
                .send_batch(&self.msgs[at..], |i| &out[i][..lens[i]])
            {
                Ok(0) => {
                    // Should not happen for UDP; never spin on it.
                    let lost: usize = self.msgs[at..].iter().map(|m| m.count).sum();
                    self.stats.drop_packets(DropReason::SendFailed, lost as u64);
                    break;
                }
                Ok(k) => {
                    self.stats.add(Counter::TxBatches, 1);
                    let (mut packets, mut bytes) = (0u64, 0u64);
                    for m in &self.msgs[at..at + k] {
                        if m.count > 1 {
                            self.stats.add(Counter::TxGsoSends, 1);
                        }
                        for &len in &self.tx_data_len[m.first..m.first + m.count] {
                            if len > 0 {
                                packets += 1;
                                bytes += len as u64;
                            }
                        }
                    }
                    self.stats.add(Counter::TxPackets, packets);
                    self.stats.add(Counter::TxBytes, bytes);
                    at += k;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let m = self.msgs[at];
                    if m.count > 1 && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) {
                        tracing::warn!(worker = self.id, error = %e, "UDP GSO send refused; sending plain datagrams from now on");
                        self.sock.disable_gso();
                        // Re-plan what is left without GSO.
                        let first = m.first;
                        let lens: Vec<usize> = self.tx_len[first..n].to_vec();
                        let dsts: Vec<SocketAddrV4> = self.tx_dst[first..n].to_vec();
                        plan(&lens, &dsts, false, &mut self.msgs);
                        for msg in &mut self.msgs {
                            msg.first += first;
                        }
                        at = 0;
                        continue;
                    }
                    self.stats
                        .drop_packets(DropReason::SendFailed, m.count as u64);
                    self.send_errors.report(self.id, &e);
                    at += 1;
                }
            }
        }
    }

    /// Receives, decrypts and writes up to one batch. Returns whether the socket may hold more.
    fn udp_to_tun(&mut self) -> bool {
        let k = match self.sock.recv_batch(&mut self.rx, 0, &mut self.rx_meta) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
            Err(e) => {
                self.recv_errors.report(self.id, &e);
                return false;
            }
        };
        self.stats.add(Counter::RxBatches, 1);
        let table = self.core.table();
        let mut staged = 0;
        for i in 0..k {
            let m = self.rx_meta[i];
            if let Some(d) = m.rxq_drops {
                let delta = d.wrapping_sub(self.rxq_drops_seen);
                if delta < u32::MAX / 2 {
                    self.stats
                        .drop_packets(DropReason::SocketRxOverflow, u64::from(delta));
                }
                self.rxq_drops_seen = d;
            }
            if m.truncated {
                self.stats.drop_packets(DropReason::RecvTruncated, 1);
                continue;
            }
            let seg = if m.segment > 0 {
                m.segment
            } else {
                m.len.max(1)
            };
            if m.segment > 0 {
                self.stats.add(Counter::RxGroRuns, 1);
            }
            // Each datagram of a GRO run in turn (`seg` ≥ 1, so this ends).
            let mut at = 0;
            while at < m.len {
                let end = m.len.min(at + seg);
                staged = self.rx_datagram(&table, m.src, i, at..end, staged);
                at = end;
            }
        }
        drop(table);
        if staged > 0 {
            self.tun_gone |= flush_stage(
                &self.tun,
                &mut self.gro,
                &mut self.rx_stage[..staged],
                &self.stats,
                &mut self.tun_errors,
                self.id,
            );
        }
        k == self.batch
    }

    /// Decrypts one datagram, `self.rx[slot][range]` from `src`, and acts on what it holds: a
    /// packet goes into the TUN device (with offloads into stage slot `staged`, flushed with one
    /// coalescing write when the stage is full or the batch is done; without, written at once),
    /// a handshake response or cookie reply goes back. Returns how many packets are staged now.
    fn rx_datagram(
        &mut self,
        table: &PeerTable,
        src: SocketAddrV4,
        slot: usize,
        range: Range<usize>,
        mut staged: usize,
    ) -> usize {
        self.stats.add(Counter::RxDatagrams, 1);
        let d = &self.rx[slot][range];
        let staging = !self.rx_stage.is_empty();
        if staging && staged == self.rx_stage.len() {
            self.tun_gone |= flush_stage(
                &self.tun,
                &mut self.gro,
                &mut self.rx_stage[..staged],
                &self.stats,
                &mut self.tun_errors,
                self.id,
            );
            staged = 0;
        }
        let out: &mut [u8] = if staging {
            let buf = &mut self.rx_stage[staged];
            buf.clear();
            buf.resize(TUN_OFFSET + d.len().max(MIN_OUT), 0);
            &mut buf[TUN_OFFSET..]
        } else {
            &mut self.plain
        };
        let base = out.as_ptr() as usize;
        match self.core.decapsulate(table, src, d, out) {
            RxVerdict::Deliver(p) if staging => {
                // boringtun writes the plaintext at the start of the buffer it is given; should
                // that change, move it there.
                let (start, len) = ((p.as_ptr() as usize).wrapping_sub(base), p.len());
                let buf = &mut self.rx_stage[staged];
                if start
                    .checked_add(len)
                    .is_none_or(|end| end > buf.len() - TUN_OFFSET)
                {
                    self.stats.drop_packets(DropReason::WgBadPacket, 1);
                    return staged;
                }
                if start != 0 {
                    buf.copy_within(TUN_OFFSET + start..TUN_OFFSET + start + len, TUN_OFFSET);
                }
                buf.truncate(TUN_OFFSET + len);
                staged += 1;
            }
            RxVerdict::Deliver(p) => match self.tun.write(p) {
                Ok(_) => {
                    self.stats.add(Counter::RxPackets, 1);
                    self.stats.add(Counter::RxBytes, p.len() as u64);
                }
                Err(e) => {
                    self.stats.drop_packets(DropReason::TunWriteFailed, 1);
                    self.tun_errors.report(self.id, &e);
                    self.tun_gone |= e.raw_os_error() == Some(libc::EBADFD);
                }
            },
            RxVerdict::Reply { to, packet, peer } => {
                send_one(
                    &self.sock,
                    &self.stats,
                    &mut self.send_errors,
                    self.id,
                    to,
                    packet,
                );
                match peer {
                    // A cookie reply: the initiation itself is refused under load.
                    None => self.stats.drop_packets(DropReason::WgUnderLoad, 1),
                    Some(peer) => {
                        while let Some(q) = peer.drain_queued(&mut self.control) {
                            send_one(
                                &self.sock,
                                &self.stats,
                                &mut self.send_errors,
                                self.id,
                                peer.endpoint(),
                                q,
                            );
                        }
                    }
                }
            }
            RxVerdict::Done(_) => {}
            RxVerdict::Drop(r) => self.stats.drop_packets(r, 1),
        }
        staged
    }
}

/// Writes the staged packets `bufs` with one coalescing call (TCP segments of a flow become one
/// super-packet). Returns whether the TUN queue is gone.
fn flush_stage(
    tun: &TunQueue,
    gro: &mut tun_rs::GROTable,
    bufs: &mut [Vec<u8>],
    stats: &WorkerStats,
    log: &mut ErrorLog,
    id: usize,
) -> bool {
    let bytes: usize = bufs.iter().map(|b| b.len() - TUN_OFFSET).sum();
    match tun.send_multiple(gro, bufs, TUN_OFFSET) {
        Ok(_) => {
            stats.add(Counter::RxPackets, bufs.len() as u64);
            stats.add(Counter::RxBytes, bytes as u64);
            false
        }
        Err(e) => {
            // Which of them went is unknown: count the batch.
            stats.drop_packets(DropReason::TunWriteFailed, bufs.len() as u64);
            log.report(id, &e);
            e.raw_os_error() == Some(libc::EBADFD)
        }
    }
}

/// Sends one datagram (handshake, cookie, keepalive, queued packet).
fn send_one(
    sock: &BatchSocket,
    stats: &WorkerStats,
    log: &mut ErrorLog,
    id: usize,
    to: SocketAddrV4,
    packet: &[u8],
) {
    let msg = [SendMsg {
        first: 0,
        count: 1,
        dst: to,
        segment: 0,
    }];
    if let Err(e) = sock.send_batch(&msg, |_| packet) {
        stats.drop_packets(DropReason::SendFailed, 1);
        log.report(id, &e);
    }
}

/// Groups datagrams into messages: with `gso`, a run to one destination whose datagrams all have
/// the first one's length (the last may be shorter) becomes one message, within the kernel's
/// segment and size limits.
fn plan(lens: &[usize], dsts: &[SocketAddrV4], gso: bool, msgs: &mut Vec<SendMsg>) {
    msgs.clear();
    let mut i = 0;
    while i < lens.len() {
        let seg = lens[i];
        let mut j = i + 1;
        if gso {
            let mut bytes = seg;
            while j < lens.len()
                && dsts[j] == dsts[i]
                && lens[j] <= seg
                && j - i < MAX_GSO_SEGMENTS
                && bytes + lens[j] <= MAX_GSO_BYTES
            {
                bytes += lens[j];
                j += 1;
                if lens[j - 1] < seg {
                    break;
                }
            }
        }
        msgs.push(SendMsg {
            first: i,
            count: j - i,
            dst: dsts[i],
            segment: u16::try_from(seg).unwrap_or(u16::MAX),
        });
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_groups_equal_runs_per_peer() {
        let a: SocketAddrV4 = "192.0.2.1:51820".parse().expect("addr");
        let b: SocketAddrV4 = "192.0.2.2:51820".parse().expect("addr");
        let mut msgs = Vec::new();
        plan(
            &[1000, 1000, 1000, 400, 1000, 1000, 1000],
            &[a, a, a, a, a, b, b],
            true,
            &mut msgs,
        );
        let got: Vec<(usize, usize, u16)> =
            msgs.iter().map(|m| (m.first, m.count, m.segment)).collect();
        assert_eq!(got, [(0, 4, 1000), (4, 1, 1000), (5, 2, 1000)]);
        plan(&[1000, 1000], &[a, a], false, &mut msgs);
        assert_eq!(msgs.len(), 2);
        let lens = vec![1500; 100];
        let dsts = vec![a; 100];
        plan(&lens, &dsts, true, &mut msgs);
        assert!(msgs.iter().all(|m| m.count * 1500 <= MAX_GSO_BYTES));
        assert_eq!(msgs.iter().map(|m| m.count).sum::<usize>(), 100);
    }
}
