//! The WireGuard workers: one thread per TUN queue and socket (SO_REUSEPORT), as the udp and
//! vxlan data planes run theirs.
//!
//! ```text
//!  TUN read ×batch → peer by inner dst → encrypt (peer lock) → sendmmsg, runs to one peer as UDP GSO
//!  recvmmsg (+GRO) → peer by receiver index → decrypt (peer lock) → allowed-IPs check → TUN write
//!  worker 0, every 250 ms: each peer's timers (rekey, retransmit, keepalive, expiry)
//! ```
//!
//! A device carries IPv4, IPv6 or both inside (by the inner version nibble: the peer by the
//! longest prefix of its family) and has an IPv4 socket, an IPv6 one (IPV6_V6ONLY) or both per
//! worker: each datagram leaves by the socket of its endpoint's family, one sendmmsg per family
//! and batch, UDP GSO and GRO on either socket where the kernel allows.

use super::{PeerTable, RxVerdict, TxVerdict, WgCore, MIN_OUT, SEAL_OVERHEAD};
use crate::dataplane::StartError;
use crate::net::{Ipv4Net, Ipv6Net};
use crate::stats::{Counter, DropReason, StatsSnapshot, WorkerStats};
use crate::tun::{self, TunConfig, TunQueue};
use crate::udp::{
    BatchSocket, Offload, RecvMeta, SendMsg, UnderlayAddr, MAX_BATCH, MAX_GSO_BYTES,
    MAX_GSO_SEGMENTS,
};
use crate::worker::{ErrorLog, TUN_SPLIT_MAX};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TUN: Token = Token(0);
const UDP: Token = Token(1);
const WAKE: Token = Token(2);
const UDP6: Token = Token(3);
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
    /// This host's IPv4 subnet, if the device carries IPv4 (its network address becomes the
    /// device address, /32).
    pub local: Option<Ipv4Net>,
    /// This host's IPv6 subnet, if the device carries IPv6 (its network address becomes the
    /// device's IPv6 address, /128).
    pub local6: Option<Ipv6Net>,
    /// IPv4 underlay address and port to bind (flannel: `ListenPort`), if the device has
    /// peers with IPv4 endpoints.
    pub bind: Option<SocketAddrV4>,
    /// IPv6 underlay address and port to bind, if the device has peers with IPv6 endpoints.
    pub bind6: Option<SocketAddrV6>,
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
/// Views of several data planes (flannel's `separate` mode: `flannel-wg` and `flannel-wg-v6`)
/// join into one with [`WgStatsSource::join`].
#[derive(Debug, Clone)]
pub struct WgStatsSource {
    stats: Vec<Arc<WorkerStats>>,
    live: Vec<Arc<AtomicUsize>>,
    workers: usize,
    cores: Vec<Arc<WgCore>>,
}

/// The peers of one or more data planes.
#[derive(Debug, Clone, Default)]
pub struct PeerList(Vec<Arc<super::Peer>>);

impl PeerList {
    /// All peers.
    pub fn peers(&self) -> &[Arc<super::Peer>] {
        &self.0
    }
}

impl WgStatsSource {
    /// One view of both data planes: counters summed, workers and peers of both.
    #[must_use]
    pub fn join(mut self, other: WgStatsSource) -> WgStatsSource {
        self.stats.extend(other.stats);
        self.live.extend(other.live);
        self.workers += other.workers;
        self.cores.extend(other.cores);
        self
    }

    /// Counters summed over all workers.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot::sum(self.stats.iter().map(|s| &**s))
    }

    /// Workers still running.
    pub fn live_workers(&self) -> usize {
        self.live.iter().map(|l| l.load(Ordering::Acquire)).sum()
    }

    /// Whether every worker is still running.
    pub fn healthy(&self) -> bool {
        self.live_workers() == self.workers
    }

    /// Time since each worker last went round its loop.
    pub fn heartbeat_ages(&self) -> Vec<std::time::Duration> {
        self.stats.iter().map(|s| s.heartbeat_age()).collect()
    }

    /// The current peers.
    pub fn peers(&self) -> PeerList {
        PeerList(
            self.cores
                .iter()
                .flat_map(|c| c.table().peers().to_vec())
                .collect(),
        )
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
        if cfg.bind.is_none() && cfg.bind6.is_none() {
            return Err(StartError {
                what: format!("starting {}", cfg.tun_name),
                source: io::Error::new(io::ErrorKind::InvalidInput, "no underlay socket to bind"),
            });
        }
        let mtu = u16::try_from(cfg.mtu).unwrap_or(u16::MAX);
        let mut tun_cfg = TunConfig {
            name: cfg.tun_name.clone(),
            // A device without IPv4 (flannel-wg-v6) gets no IPv4 address.
            addr: cfg.local.map_or(Ipv4Addr::UNSPECIFIED, |l| l.addr()),
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
        if let (Some(l6), Some(q)) = (cfg.local6, queues.first()) {
            tun::enable_ipv6(&cfg.tun_name, q, l6.addr())
                .map_err(ctx(|| format!("giving {} its IPv6 address", cfg.tun_name)))?;
        }
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
            let v4 = match cfg.bind {
                Some(b) => Some(
                    BatchSocket::bind(b, cfg.socket_buffer, cfg.offload)
                        .map_err(ctx(|| format!("binding UDP {b}")))?,
                ),
                None => None,
            };
            let v6 = match cfg.bind6 {
                Some(b) => Some(
                    BatchSocket::bind(b, cfg.socket_buffer, cfg.offload)
                        .map_err(ctx(|| format!("binding UDP {b}")))?,
                ),
                None => None,
            };
            let sock = Sockets { v4, v6 };
            dp.gso &= sock.v4.as_ref().is_none_or(BatchSocket::gso)
                && sock.v6.as_ref().is_none_or(BatchSocket::gso);
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
            live: vec![Arc::clone(&self.live)],
            workers: self.threads.len(),
            cores: vec![Arc::clone(&self.core)],
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

/// A worker's underlay sockets: one per family the device's peers use.
struct Sockets {
    v4: Option<BatchSocket<SocketAddrV4>>,
    v6: Option<BatchSocket<SocketAddrV6>>,
}

impl Sockets {
    /// Sends one datagram (handshake, cookie, keepalive, queued packet) by the socket of `to`'s
    /// family.
    fn send_one(
        &self,
        stats: &WorkerStats,
        log: &mut ErrorLog,
        id: usize,
        to: SocketAddr,
        packet: &[u8],
    ) {
        let r = match to {
            SocketAddr::V4(a) => self.v4.as_ref().map(|s| send_one(s, a, packet)),
            SocketAddr::V6(a) => self.v6.as_ref().map(|s| send_one(s, a, packet)),
        };
        match r {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                stats.drop_packets(DropReason::SendFailed, 1);
                log.report(id, &e);
            }
            // No socket of that family (cannot happen: peers get endpoints of the device's
            // families only).
            None => stats.drop_packets(DropReason::NoRoute, 1),
        }
    }
}

struct Worker {
    id: usize,
    tun: TunQueue,
    sock: Sockets,
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
    tx_dst: Box<[SocketAddr]>,
    msgs: Vec<SendMsg<SocketAddrV4>>,
    msgs6: Vec<SendMsg<SocketAddrV6>>,
    rx: Vec<Vec<u8>>,
    rx_meta: Box<[RecvMeta<SocketAddrV4>]>,
    rx_meta6: Box<[RecvMeta<SocketAddrV6>]>,
    /// Decrypted packet on its way into the TUN device.
    plain: Vec<u8>,
    /// Handshake messages, cookies, keepalives, queued packets: sent one at a time.
    control: Vec<u8>,
    /// Per socket (IPv4, IPv6): the kernel's drop count last seen.
    rxq_drops_seen: [u32; 2],
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
        sock: Sockets,
        poll: Poll,
        core: Arc<WgCore>,
        stats: Arc<WorkerStats>,
        stop: Arc<AtomicBool>,
        cfg: &WgDataplaneConfig,
    ) -> io::Result<Worker> {
        let tun_fd = tun.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)?;
        if let Some(s) = &sock.v4 {
            poll.registry()
                .register(&mut SourceFd(&s.as_raw_fd()), UDP, Interest::READABLE)?;
        }
        if let Some(s) = &sock.v6 {
            poll.registry()
                .register(&mut SourceFd(&s.as_raw_fd()), UDP6, Interest::READABLE)?;
        }
        let batch = cfg.batch_size.clamp(1, MAX_BATCH);
        let offload = tun.offload();
        // The device hands us packets of at most its MTU (with offloads: segments of at most
        // the MTU, cut from the super-packet).
        let packet = (cfg.mtu as usize).max(1500) + 64 + TUN_OFFSET;
        let sealed = (packet + SEAL_OVERHEAD).max(MIN_OUT);
        let unspec = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
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
            msgs6: Vec::with_capacity(tx_slots),
            rx: vec![vec![0u8; RX_SLOT]; batch],
            rx_meta: vec![RecvMeta::default(); batch].into_boxed_slice(),
            rx_meta6: vec![RecvMeta::default(); batch].into_boxed_slice(),
            plain: vec![0u8; RX_SLOT],
            control: vec![0u8; sealed],
            rxq_drops_seen: [0; 2],
            send_errors: ErrorLog::new("UDP send failed"),
            recv_errors: ErrorLog::new("UDP receive failed"),
            tun_errors: ErrorLog::new("TUN I/O failed"),
            tun_gone: false,
        })
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(8);
        let mut tun_ready = true;
        let mut udp_ready = self.sock.v4.is_some();
        let mut udp6_ready = self.sock.v6.is_some();
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
            if !tun_ready && !udp_ready && !udp6_ready {
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
                udp_ready = self.udp_to_tun(false);
            }
            if udp6_ready {
                udp6_ready = self.udp_to_tun(true);
            }
        }
    }

    fn run_timers(&mut self) {
        let table = self.core.table();
        for peer in table.peers() {
            if let Some((to, p)) = peer.update_timers(&mut self.control) {
                self.sock
                    .send_one(&self.stats, &mut self.send_errors, self.id, to, p);
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
                    TxVerdict::Send {
                        to,
                        packet,
                        data,
                        queue_full,
                    } => {
                        if queue_full {
                            self.stats.drop_packets(DropReason::WgQueueFull, 1);
                        }
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

    /// Sends datagrams `0..n`, each by the socket of its destination's family: runs of
    /// equal-length datagrams to one peer as one GSO message.
    fn send(&mut self, n: usize) {
        let tx = TxSlots {
            out: &self.tx_out,
            lens: &self.tx_len[..n],
            data_lens: &self.tx_data_len[..n],
            dsts: &self.tx_dst[..n],
        };
        if let Some(sock) = self.sock.v4.as_mut() {
            send_family(
                sock,
                &mut self.msgs,
                &tx,
                &self.stats,
                &mut self.send_errors,
                self.id,
            );
        }
        if let Some(sock) = self.sock.v6.as_mut() {
            send_family(
                sock,
                &mut self.msgs6,
                &tx,
                &self.stats,
                &mut self.send_errors,
                self.id,
            );
        } // A datagram for a family this device has no socket of (no peer of such a device gets
          // such an endpoint; counted should one ever).
        let (no4, no6) = (self.sock.v4.is_none(), self.sock.v6.is_none());
        if no4 || no6 {
            let lost = tx
                .dsts
                .iter()
                .filter(|d| if d.is_ipv4() { no4 } else { no6 })
                .count();
            if lost > 0 {
                self.stats.drop_packets(DropReason::NoRoute, lost as u64);
            }
        }
    }

    /// Receives, decrypts and writes up to one batch. Returns whether the socket may hold more.
    fn udp_to_tun(&mut self, v6: bool) -> bool {
        let got = match (v6, &self.sock.v4, &self.sock.v6) {
            (false, Some(s), _) => s.recv_batch(&mut self.rx, 0, &mut self.rx_meta),
            (true, _, Some(s)) => s.recv_batch(&mut self.rx, 0, &mut self.rx_meta6),
            _ => return false,
        };
        let k = match got {
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
            let m = if v6 {
                let m = self.rx_meta6[i];
                Meta {
                    len: m.len,
                    src: m.src.into(),
                    truncated: m.truncated,
                    segment: m.segment,
                    rxq_drops: m.rxq_drops,
                }
            } else {
                let m = self.rx_meta[i];
                Meta {
                    len: m.len,
                    src: m.src.into(),
                    truncated: m.truncated,
                    segment: m.segment,
                    rxq_drops: m.rxq_drops,
                }
            };
            if let Some(d) = m.rxq_drops {
                let seen = &mut self.rxq_drops_seen[usize::from(v6)];
                let delta = d.wrapping_sub(*seen);
                if delta < u32::MAX / 2 {
                    self.stats
                        .drop_packets(DropReason::SocketRxOverflow, u64::from(delta));
                }
                *seen = d;
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
        src: SocketAddr,
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
                self.sock
                    .send_one(&self.stats, &mut self.send_errors, self.id, to, packet);
                match peer {
                    // A cookie reply: the initiation itself is refused under load.
                    None => self.stats.drop_packets(DropReason::WgUnderLoad, 1),
                    Some(peer) => {
                        while let Some((to, q)) = peer.drain_queued(&mut self.control) {
                            self.sock
                                .send_one(&self.stats, &mut self.send_errors, self.id, to, q);
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

/// One received message's metadata, of either family.
#[derive(Clone, Copy)]
struct Meta {
    len: usize,
    src: SocketAddr,
    truncated: bool,
    segment: usize,
    rxq_drops: Option<u32>,
}

/// The datagrams of one TUN batch, ready to go.
struct TxSlots<'a> {
    out: &'a [Vec<u8>],
    lens: &'a [usize],
    /// The inner packet's length of each (0 for handshakes and the like).
    data_lens: &'a [usize],
    dsts: &'a [SocketAddr],
}

/// Sends the datagrams of `tx` whose destination is of family `A` over `sock`.
fn send_family<A: UnderlayAddr>(
    sock: &mut BatchSocket<A>,
    msgs: &mut Vec<SendMsg<A>>,
    tx: &TxSlots<'_>,
    stats: &WorkerStats,
    log: &mut ErrorLog,
    id: usize,
) {
    plan(tx.lens, tx.dsts, 0, sock.gso(), msgs);
    let mut at = 0;
    while at < msgs.len() {
        match sock.send_batch(&msgs[at..], |i| &tx.out[i][..tx.lens[i]]) {
            Ok(0) => {
                // Should not happen for UDP; never spin on it.
                let lost: usize = msgs[at..].iter().map(|m| m.count).sum();
                stats.drop_packets(DropReason::SendFailed, lost as u64);
                break;
            }
            Ok(k) => {
                stats.add(Counter::TxBatches, 1);
                let (mut packets, mut bytes) = (0u64, 0u64);
                for m in &msgs[at..at + k] {
                    if m.count > 1 {
                        stats.add(Counter::TxGsoSends, 1);
                    }
                    for &len in &tx.data_lens[m.first..m.first + m.count] {
                        if len > 0 {
                            packets += 1;
                            bytes += len as u64;
                        }
                    }
                }
                stats.add(Counter::TxPackets, packets);
                stats.add(Counter::TxBytes, bytes);
                at += k;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let m = msgs[at];
                if m.count > 1 && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) {
                    tracing::warn!(worker = id, error = %e, "UDP GSO send refused; sending plain datagrams from now on");
                    sock.disable_gso();
                    // Re-plan what is left without GSO.
                    plan(tx.lens, tx.dsts, m.first, false, msgs);
                    at = 0;
                    continue;
                }
                stats.drop_packets(DropReason::SendFailed, m.count as u64);
                log.report(id, &e);
                at += 1;
            }
        }
    }
}

/// Sends one datagram.
fn send_one<A: UnderlayAddr>(sock: &BatchSocket<A>, to: A, packet: &[u8]) -> io::Result<usize> {
    let msg = [SendMsg {
        first: 0,
        count: 1,
        dst: to,
        segment: 0,
    }];
    sock.send_batch(&msg, |_| packet)
}

/// Groups the datagrams from index `from` on whose destination is of family `A` into
/// messages: with `gso`, a run to one destination whose datagrams all have the first one's
/// length (the last may be shorter) becomes one message, within the kernel's segment and size
/// limits.
fn plan<A: UnderlayAddr>(
    lens: &[usize],
    dsts: &[SocketAddr],
    from: usize,
    gso: bool,
    msgs: &mut Vec<SendMsg<A>>,
) {
    msgs.clear();
    let mut i = from;
    while i < lens.len() {
        let Some(dst) = A::from_std(dsts[i]) else {
            i += 1;
            continue;
        };
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
            dst,
            segment: u16::try_from(seg).unwrap_or(u16::MAX),
        });
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_groups_equal_runs_per_peer_and_family() {
        let a: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
        let b: SocketAddr = "192.0.2.2:51820".parse().expect("addr");
        let c: SocketAddr = "[fd00::3]:51821".parse().expect("addr");
        let mut msgs: Vec<SendMsg<SocketAddrV4>> = Vec::new();
        plan(
            &[1000, 1000, 1000, 400, 1000, 1000, 1000],
            &[a, a, a, a, a, b, b],
            0,
            true,
            &mut msgs,
        );
        let got: Vec<(usize, usize, u16)> =
            msgs.iter().map(|m| (m.first, m.count, m.segment)).collect();
        assert_eq!(got, [(0, 4, 1000), (4, 1, 1000), (5, 2, 1000)]);
        plan(&[1000, 1000], &[a, a], 0, false, &mut msgs);
        assert_eq!(msgs.len(), 2);
        let lens = vec![1500; 100];
        let dsts = vec![a; 100];
        plan(&lens, &dsts, 0, true, &mut msgs);
        assert!(msgs.iter().all(|m| m.count * 1500 <= MAX_GSO_BYTES));
        assert_eq!(msgs.iter().map(|m| m.count).sum::<usize>(), 100);
        // Mixed families: each plan takes its own family's datagrams, runs broken by the other.
        let lens = [1000, 1000, 1000, 1000, 1000];
        let dsts = [a, a, c, c, a];
        plan(&lens, &dsts, 0, true, &mut msgs);
        let got: Vec<(usize, usize)> = msgs.iter().map(|m| (m.first, m.count)).collect();
        assert_eq!(got, [(0, 2), (4, 1)]);
        let mut msgs6: Vec<SendMsg<SocketAddrV6>> = Vec::new();
        plan(&lens, &dsts, 0, true, &mut msgs6);
        let got: Vec<(usize, usize)> = msgs6.iter().map(|m| (m.first, m.count)).collect();
        assert_eq!(got, [(2, 2)]);
        assert_eq!(SocketAddr::V6(msgs6[0].dst), c);
        // A re-plan from the middle.
        plan(&lens, &dsts, 1, false, &mut msgs);
        let got: Vec<usize> = msgs.iter().map(|m| m.first).collect();
        assert_eq!(got, [1, 4]);
    }
}
