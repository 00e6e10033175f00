//! `Dataplane`: creates the TUN device and sockets, starts the pinned workers, and stops them.

use crate::decap::{DecapPolicy, DecapPolicy6, Decapsulator6};
use crate::encap::Encapsulator6;
use crate::net::{Ipv4Net, Ipv6Net};
use crate::route::RouteTable;
use crate::spread::{self, RxSpread};
use crate::stats::{DropReason, StatsSnapshot, WorkerStats};
use crate::tun::{self, TunConfig};
use crate::udp::{BatchSocket, Offload};
use crate::wire::Wire;
use crate::worker::{self, V6Setup, Worker, WorkerSetup};
use mio::{Poll, Waker};
use std::fs::File;
use std::io;
use std::io::{Read, Seek};
use std::net::{Ipv4Addr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// IPv4 + UDP header bytes the udp wire format adds to every packet (flannel's MTU rule).
pub const UDP_OVERHEAD: u32 = Wire::Udp.overhead();
/// IPv4 + UDP + VXLAN + inner Ethernet header bytes the vxlan wire format adds to every packet
/// (flannel's vxlan MTU rule).
pub const VXLAN_OVERHEAD: u32 = Wire::Vxlan {
    vni: 0,
    mac: [0; 6],
}
.overhead();
const _: () = assert!(UDP_OVERHEAD == 28 && VXLAN_OVERHEAD == 50);
/// Default batch size (packets per recvmmsg / sendmmsg).
pub const DEFAULT_BATCH: usize = 64;
/// Default socket buffer size: large enough to ride out a scheduling gap at line rate.
pub const DEFAULT_SOCKET_BUFFER: usize = 8 << 20;

/// IPv6 + UDP + VXLAN + inner Ethernet header bytes of VXLAN over an IPv6 underlay (the kernel's
/// MTU rule for `flannel-v6.<VNI>`: underlay MTU − 70).
pub const VXLAN6_OVERHEAD: u32 = 70;

/// The IPv6 half of a dual-stack (or IPv6-only) data plane, vxlan only
/// ([`Dataplane::start_dual`]): inner IPv6 over the IPv6 underlay, as flannel's
/// `flannel-v6.<VNI>` device carries it.
#[derive(Debug, Clone)]
pub struct DataplaneV6 {
    /// The whole IPv6 overlay network (sender checks as for IPv4).
    pub network: Ipv6Net,
    /// This host's IPv6 subnet (its network address is the TUN device's IPv6 address).
    pub local: Ipv6Net,
    /// IPv6 underlay address and port to bind (one IPV6_V6ONLY socket per worker).
    pub bind: SocketAddrV6,
    /// This host's IPv6 VTEP MAC (published in `BackendV6Data`).
    pub mac: [u8; 6],
    /// MTU of the IPv6 underlay: the TUN MTU is at most this minus [`VXLAN6_OVERHEAD`].
    pub underlay_mtu: u32,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// TUN device name.
    pub tun_name: String,
    /// Underlay MTU; the TUN MTU is this minus the wire format's overhead ([`UDP_OVERHEAD`] or
    /// [`VXLAN_OVERHEAD`]).
    pub underlay_mtu: u32,
    /// How packets are carried: flannel's udp format or VXLAN (with our VNI and VTEP MAC). Peers'
    /// routes must match: [`crate::Route::vxlan`] with their VTEP MACs for vxlan.
    pub wire: Wire,
    /// The whole overlay network: inner sources inside it must belong to the sending peer's subnet
    /// (see [`DecapPolicy`]). The engine installs no route; the caller routes the network through
    /// the TUN device once the data plane runs.
    pub network: Ipv4Net,
    /// This host's subnet (its network address is the TUN address).
    pub local: Ipv4Net,
    /// Underlay address and port to bind: the IPv4 half. `None` (IPv6 only, with a
    /// [`DataplaneV6`] half; see [`Dataplane::start_dual`]): no IPv4 socket is bound, the TUN
    /// device gets no IPv4 address, and inner IPv4 packets read from it are dropped as
    /// [`DropReason::NoRoute`] without an ICMP error (there is no IPv4 address to send one from).
    pub bind: Option<SocketAddrV4>,
    /// Number of workers (one TUN queue and one socket each).
    pub workers: usize,
    /// Packets per batch, 1..=128.
    pub batch_size: usize,
    /// Skip the sender checks on received datagrams.
    pub accept_any_source: bool,
    /// Socket buffer size in bytes.
    pub socket_buffer: usize,
    /// Use of kernel offloads: UDP GSO/GRO on the sockets, vnet_hdr TSO/USO on the TUN device.
    pub offload: Offload,
    /// With TUN offloads: write runs of received TCP segments into the TUN device as TSO
    /// super-packets (`rx_tso_writes`); off, they go through tun-rs's coalescing like the rest.
    pub tso_writes: bool,
}

impl DataplaneConfig {
    /// MTU of the TUN device.
    pub fn tun_mtu(&self) -> u32 {
        self.underlay_mtu.saturating_sub(self.wire.overhead())
    }
}

/// The TUN device's own drop figure (`tx_dropped`: packets the kernel dropped because the device's
/// queues were full), read from `/proc/net/dev` when the counters are read, never by the workers.
/// The file is opened when the data plane starts, in the thread that created the device, so it
/// shows the device's network namespace whichever thread reads it later.
#[derive(Debug)]
struct TunDrops {
    dev: String,
    file: Mutex<Option<File>>,
    /// `tx_dropped` when the data plane started (0 for a device weft created).
    base: u64,
    /// The last figure read, kept when a read fails (the device is gone, say).
    last: AtomicU64,
}

impl TunDrops {
    fn open(dev: &str) -> TunDrops {
        let file = File::open("/proc/thread-self/net/dev")
            .or_else(|_| File::open("/proc/self/net/dev"))
            .map_err(
                |e| tracing::warn!(error = %e, "cannot read /proc/net/dev; tun_tx_dropped stays 0"),
            )
            .ok();
        let mut t = TunDrops {
            dev: dev.to_string(),
            file: Mutex::new(file),
            base: 0,
            last: AtomicU64::new(0),
        };
        t.base = t.read_raw().unwrap_or(0);
        t.last.store(t.base, Ordering::Relaxed);
        t
    }

    fn read_raw(&self) -> Option<u64> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let file = guard.as_mut()?;
        let mut text = String::new();
        file.rewind().ok()?;
        file.read_to_string(&mut text).ok()?;
        proc_net_dev_tx_dropped(&text, &self.dev)
    }

    /// Drops since the data plane started.
    fn since_start(&self) -> u64 {
        let now = match self.read_raw() {
            Some(v) => {
                self.last.store(v, Ordering::Relaxed);
                v
            }
            None => self.last.load(Ordering::Relaxed),
        };
        now.saturating_sub(self.base)
    }
}

/// The transmit `drop` column of device `dev` in the text of `/proc/net/dev`.
fn proc_net_dev_tx_dropped(text: &str, dev: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, fields) = line.trim_start().split_once(':')?;
        if name != dev {
            return None;
        }
        // Receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes
        // packets errs drop ...
        fields.split_whitespace().nth(11)?.parse().ok()
    })
}

/// Counters summed over `stats`, plus the device's drops.
fn snapshot(stats: &[Arc<WorkerStats>], tun: &TunDrops) -> StatsSnapshot {
    let mut s = StatsSnapshot::sum(stats.iter().map(|s| &**s));
    s.add_dropped(DropReason::TunTxDropped, tun.since_start());
    s
}

/// A cheap, shareable view of a running data plane's counters and health (for a metrics server
/// on another thread).
#[derive(Debug, Clone)]
pub struct StatsSource {
    stats: Vec<Arc<WorkerStats>>,
    tun_drops: Arc<TunDrops>,
    routes: Arc<RouteTable>,
    live: Arc<AtomicUsize>,
    workers: usize,
    rx_spread: RxSpread,
}

impl StatsSource {
    /// Counters summed over all workers, and the TUN device's drops (`tun_tx_dropped`).
    pub fn snapshot(&self) -> StatsSnapshot {
        snapshot(&self.stats, &self.tun_drops)
    }

    /// The route table.
    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.routes
    }

    /// Each worker's own counters, in worker order.
    pub fn per_worker(&self) -> Vec<StatsSnapshot> {
        self.stats
            .iter()
            .map(|s| StatsSnapshot::sum(std::iter::once(&**s)))
            .collect()
    }

    /// How received datagrams are spread over the workers.
    pub fn rx_spread(&self) -> RxSpread {
        self.rx_spread
    }

    /// Time since each worker last went round its loop (workers wake at least every second, so
    /// an age of several seconds means a stalled worker).
    pub fn heartbeat_ages(&self) -> Vec<std::time::Duration> {
        self.stats.iter().map(|s| s.heartbeat_age()).collect()
    }

    /// Workers still running.
    pub fn live_workers(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Whether every worker is still running.
    pub fn healthy(&self) -> bool {
        self.live_workers() == self.workers
    }
}

/// Decrements the live-worker count when a worker thread ends, however it ends.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running data plane.
#[derive(Debug)]
pub struct Dataplane {
    threads: Vec<JoinHandle<()>>,
    gso: bool,
    gro: bool,
    tun_offload: bool,
    wakers: Vec<Waker>,
    stop: Arc<AtomicBool>,
    stats: Vec<Arc<WorkerStats>>,
    tun_drops: Arc<TunDrops>,
    routes: Arc<RouteTable>,
    pinned: bool,
    live: Arc<AtomicUsize>,
    rx_spread: RxSpread,
}

/// Why the data plane could not start.
#[derive(Debug)]
pub struct StartError {
    /// What was being done.
    pub what: String,
    /// The underlying error.
    pub source: io::Error,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn ctx(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> StartError {
    move |source| StartError {
        what: what(),
        source,
    }
}

/// Attaches the receive-spread program to the group of the workers' IPv4 sockets (bound in worker
/// order, so socket index = worker index); says which spread applies, with one warning if the
/// program could not be attached. Without an IPv4 half (IPv6 only) the kernel's hash of the outer
/// addresses and ports spreads the IPv6 sockets' datagrams (the program reads inner IPv4 flows).
fn attach_spread(setups: &[WorkerSetup], wire: Wire) -> RxSpread {
    let n = setups.len();
    let (Some(first), true) = (setups.first(), n > 1) else {
        return RxSpread::OneWorker;
    };
    let Some(sock) = &first.sock else {
        return RxSpread::OuterHash;
    };
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    match sock.attach_reuseport_program(&spread::program(wire, n32)) {
        Ok(()) => {
            tracing::info!(
                workers = n,
                "receive spread by inner flow (reuseport cBPF: hash of inner addresses and ports mod {n})"
            );
            RxSpread::InnerFlow
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot attach the receive-spread program (SO_ATTACH_REUSEPORT_CBPF); the kernel's \
                 hash of the outer addresses and ports picks the worker, so one peer host's \
                 traffic reaches one worker"
            );
            RxSpread::OuterHash
        }
    }
}

/// One worker's IPv6 half: its socket on `v6.bind` (a [`BatchSocket`] as the IPv4 one, with the
/// same buffers and offloads; IPV6_V6ONLY) and the IPv6 encapsulator and decapsulator for inner
/// packets of at most `mtu` bytes.
fn v6_setup(
    v6: &DataplaneV6,
    vni: u32,
    mtu: u32,
    cfg: &DataplaneConfig,
) -> Result<V6Setup, StartError> {
    let sock = BatchSocket::bind(v6.bind, cfg.socket_buffer, cfg.offload)
        .map_err(ctx(|| format!("binding UDP {}", v6.bind)))?;
    Ok(V6Setup {
        sock,
        encap: Encapsulator6 {
            vni,
            mac: v6.mac,
            mtu: mtu as usize,
        },
        decap: Decapsulator6 {
            vni,
            mac: v6.mac,
            policy: DecapPolicy6 {
                network: v6.network,
                local: v6.local,
                accept_any_source: cfg.accept_any_source,
            },
        },
        icmp_src: v6.local.addr(),
    })
}

/// Registers worker `s.id` and starts its thread, pinned to `core` when given; `live` counts it
/// while it runs.
fn spawn_worker(
    s: WorkerSetup,
    core: Option<core_affinity::CoreId>,
    live: &Arc<AtomicUsize>,
) -> Result<JoinHandle<()>, StartError> {
    let id = s.id;
    #[cfg(test)]
    fault::check(id).map_err(ctx(|| format!("registering worker {id}")))?;
    let w = Worker::new(s).map_err(ctx(|| format!("registering worker {id}")))?;
    live.fetch_add(1, Ordering::AcqRel);
    let guard = LiveGuard(Arc::clone(live));
    std::thread::Builder::new()
        .name(format!("weft-worker-{id}"))
        .spawn(move || {
            let _guard = guard;
            if let Some(c) = core {
                if !core_affinity::set_for_current(c) {
                    tracing::warn!(worker = id, core = c.id, "could not pin worker to core");
                }
            }
            tracing::debug!(worker = id, core = ?core.map(|c| c.id), "worker started");
            w.run();
        })
        .map_err(ctx(|| format!("spawning worker {id}")))
}

impl Dataplane {
    /// Creates the TUN device (one queue per worker), binds one socket per worker, and starts the
    /// workers, each pinned to its own core when the process may run on enough cores. Forwarding
    /// follows whatever `routes` holds, now and after every `RouteTable::replace`.
    ///
    /// On error nothing is left behind: workers already running are stopped and joined, and every
    /// queue and socket is closed, so the device is gone too.
    pub fn start(cfg: &DataplaneConfig, routes: Arc<RouteTable>) -> Result<Dataplane, StartError> {
        Self::start_dual(cfg, None, routes)
    }

    /// [`Dataplane::start`] with an IPv6 half when `v6` is given (vxlan only): the one TUN device
    /// carries both families (the worker picks by the version nibble) and gets `v6.local`'s
    /// address; its MTU is the smaller of the IPv4 one and the IPv6 underlay's minus 70; each
    /// worker binds an IPv6 socket beside its IPv4 one.
    ///
    /// IPv6 only: `cfg.bind` is `None` and `v6` given. The workers bind the IPv6 sockets only,
    /// the TUN device has only the IPv6 address and its MTU is the IPv6 underlay's minus 70
    /// (`cfg.network`, `cfg.local` and `cfg.underlay_mtu` are not used).
    pub fn start_dual(
        cfg: &DataplaneConfig,
        v6: Option<&DataplaneV6>,
        routes: Arc<RouteTable>,
    ) -> Result<Dataplane, StartError> {
        if cfg.bind.is_none() && v6.is_none() {
            return Err(StartError {
                what: "starting the data plane".to_string(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither an IPv4 nor an IPv6 underlay address to bind",
                ),
            });
        }
        let Wire::Vxlan { vni, .. } = cfg.wire else {
            if v6.is_some() {
                return Err(StartError {
                    what: "starting the IPv6 data plane".to_string(),
                    source: io::Error::new(
                        io::ErrorKind::Unsupported,
                        "IPv6 is carried by the vxlan wire format only",
                    ),
                });
            }
            return Self::start_with_mtu(cfg, None, cfg.tun_mtu(), routes);
        };
        let mtu = match (v6, cfg.bind) {
            (Some(v6), Some(_)) => cfg
                .tun_mtu()
                .min(v6.underlay_mtu.saturating_sub(VXLAN6_OVERHEAD)),
            (Some(v6), None) => v6.underlay_mtu.saturating_sub(VXLAN6_OVERHEAD),
            (None, _) => cfg.tun_mtu(),
        };
        Self::start_with_mtu(cfg, v6.map(|v| (v, vni)), mtu, routes)
    }

    fn start_with_mtu(
        cfg: &DataplaneConfig,
        v6: Option<(&DataplaneV6, u32)>,
        tun_mtu: u32,
        routes: Arc<RouteTable>,
    ) -> Result<Dataplane, StartError> {
        let workers = cfg.workers.max(1);
        let mtu = u16::try_from(tun_mtu).unwrap_or(u16::MAX);
        // Read the affinity mask before any thread is pinned (core_affinity reads the caller's mask).
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut tun_cfg = TunConfig {
            name: cfg.tun_name.clone(),
            addr: cfg.bind.map_or(Ipv4Addr::UNSPECIFIED, |_| cfg.local.addr()),
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
        if let Some((v6, _)) = v6 {
            tun::enable_ipv6(&cfg.tun_name, &queues[0], v6.local.addr()).map_err(ctx(|| {
                format!(
                    "giving {} the IPv6 address {}",
                    cfg.tun_name,
                    v6.local.addr()
                )
            }))?;
        }
        let tun_drops = Arc::new(TunDrops::open(&cfg.tun_name));
        let stop = Arc::new(AtomicBool::new(false));
        let policy = DecapPolicy {
            network: cfg.network,
            local: cfg.local,
            accept_any_source: cfg.accept_any_source,
        };
        let mut setups: Vec<WorkerSetup> = Vec::with_capacity(workers);
        let mut wakers = Vec::with_capacity(workers);
        let mut stats = Vec::with_capacity(workers);
        for (id, tun) in queues.into_iter().enumerate() {
            let sock = match cfg.bind {
                Some(bind) => Some(
                    BatchSocket::bind(bind, cfg.socket_buffer, cfg.offload)
                        .map_err(ctx(|| format!("binding UDP {bind}")))?,
                ),
                None => None,
            };
            let poll = Poll::new().map_err(ctx(|| "creating poll".to_string()))?;
            wakers.push(worker::waker(&poll).map_err(ctx(|| "creating waker".to_string()))?);
            let st = Arc::new(WorkerStats::default());
            stats.push(Arc::clone(&st));
            setups.push(WorkerSetup {
                id,
                tun,
                sock,
                routes: routes.cache(),
                policy,
                wire: cfg.wire,
                icmp_src: cfg.local.addr(),
                batch_size: cfg.batch_size,
                tso_writes: cfg.tso_writes,
                stats: st,
                stop: Arc::clone(&stop),
                poll,
                v6: match v6 {
                    Some((v6, vni)) => Some(v6_setup(v6, vni, u32::from(mtu), cfg)?),
                    None => None,
                },
            });
        }
        let rx_spread = attach_spread(&setups, cfg.wire);
        // The IPv4 sockets' offloads, or the IPv6 ones' without an IPv4 half.
        let gso = setups.iter().all(|s| match (&s.sock, &s.v6) {
            (Some(sock), _) => sock.gso(),
            (None, Some(v6)) => v6.sock.gso(),
            (None, None) => false,
        });
        let gro = setups.iter().all(|s| match (&s.sock, &s.v6) {
            (Some(sock), _) => sock.gro(),
            (None, Some(v6)) => v6.sock.gro(),
            (None, None) => false,
        });
        let pinned = cores.len() >= 2 || workers == 1;
        // From here on `dp` owns what started: if a worker fails to start, returning drops `dp`,
        // which stops and joins the workers already running; the queues of the others close with
        // `setups`, and with the last queue the device goes.
        let mut dp = Dataplane {
            threads: Vec::with_capacity(workers),
            gso,
            gro,
            tun_offload,
            wakers,
            stop,
            stats,
            tun_drops,
            routes,
            pinned,
            live: Arc::new(AtomicUsize::new(0)),
            rx_spread,
        };
        for s in setups {
            let core = if pinned && !cores.is_empty() {
                Some(cores[s.id % cores.len()])
            } else {
                None
            };
            let t = spawn_worker(s, core, &dp.live)?;
            dp.threads.push(t);
        }
        Ok(dp)
    }

    /// A shareable view of the counters and worker health.
    pub fn stats_source(&self) -> StatsSource {
        StatsSource {
            stats: self.stats.clone(),
            tun_drops: Arc::clone(&self.tun_drops),
            routes: Arc::clone(&self.routes),
            live: Arc::clone(&self.live),
            workers: self.threads.len(),
            rx_spread: self.rx_spread,
        }
    }

    /// Counters summed over all workers, and the TUN device's drops (`tun_tx_dropped`).
    pub fn stats(&self) -> StatsSnapshot {
        snapshot(&self.stats, &self.tun_drops)
    }

    /// The route table the workers follow.
    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.routes
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Whether the workers were pinned to cores.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Whether the sockets use UDP GSO and GRO at start.
    pub fn offloads(&self) -> (bool, bool) {
        (self.gso, self.gro)
    }

    /// Whether the TUN device runs with offloads (vnet_hdr, TSO/USO, GRO on write).
    pub fn tun_offload(&self) -> bool {
        self.tun_offload
    }

    /// How received datagrams are spread over the workers.
    pub fn rx_spread(&self) -> RxSpread {
        self.rx_spread
    }

    /// Whether every worker thread is still running.
    pub fn healthy(&self) -> bool {
        self.live.load(Ordering::Acquire) == self.threads.len()
    }

    /// Stops and joins the workers; their TUN queues close, which removes the device (and with it
    /// the kernel removes every route through it).
    /// Returns the final counters.
    pub fn stop(mut self) -> StatsSnapshot {
        // The device's figure goes with the device: read it while the queues are open.
        let tun = self.tun_drops.since_start();
        self.shutdown();
        let mut s = StatsSnapshot::sum(self.stats.iter().map(|s| &**s));
        s.add_dropped(DropReason::TunTxDropped, tun);
        s
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        for w in &self.wakers {
            if let Err(e) = w.wake() {
                tracing::warn!(error = %e, "waking a worker failed");
            }
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
        }
    }
}

/// Test-only fault injection: make the start of one worker fail, as a failed poll registration or
/// thread spawn would, after the workers before it are running.
#[cfg(test)]
mod fault {
    use std::cell::Cell;
    use std::io;

    thread_local! {
        /// The worker whose start fails in this thread's `Dataplane::start` calls.
        static FAIL_WORKER: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Makes worker `id` fail to start (`None`: none fails).
    pub(super) fn fail_worker(id: Option<usize>) {
        FAIL_WORKER.set(id);
    }

    /// The injected error, if worker `id` is the one to fail.
    pub(super) fn check(id: usize) -> io::Result<()> {
        if FAIL_WORKER.get() == Some(id) {
            Err(io::Error::other("injected failure"))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod proc_net_dev_tests {
    use super::proc_net_dev_tx_dropped;

    #[test]
    fn tx_drop_column_of_the_named_device() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
 weft0: 5000000    4000    0    0    0     0          0         0  9000000    7000    0  65123    0     0       0          0
weft01:       1       1    0    0    0     0          0         0        1       1    0    9    0     0       0          0
";
        assert_eq!(proc_net_dev_tx_dropped(text, "weft0"), Some(65123));
        assert_eq!(proc_net_dev_tx_dropped(text, "weft01"), Some(9));
        assert_eq!(proc_net_dev_tx_dropped(text, "lo"), Some(0));
        assert_eq!(proc_net_dev_tx_dropped(text, "weft"), None);
    }
}

#[cfg(test)]
mod tests {
    //! Privileged: run as root, in a network namespace of their own (unshared by a test thread).
    //! Not root: they fail, unless `WEFT_SKIP_PRIVILEGED=1`.
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    /// `true` = run the privileged test; not root: panics, unless `WEFT_SKIP_PRIVILEGED=1`.
    fn require_root(test: &str) -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1));
        if euid == Some("0") {
            return true;
        }
        if std::env::var("WEFT_SKIP_PRIVILEGED").as_deref() == Ok("1") {
            eprintln!("SKIPPED {test}: needs root (WEFT_SKIP_PRIVILEGED=1)");
            return false;
        }
        panic!("{test} needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); or set WEFT_SKIP_PRIVILEGED=1");
    }

    /// Threads of this process named `weft-worker-*`, once that number has stayed at `want` for
    /// 100 ms (a joined thread can linger in /proc for a moment, and a new one names itself only
    /// once it runs); gives up after two seconds and returns the last count.
    fn worker_threads(want: usize) -> usize {
        let count = || {
            std::fs::read_dir("/proc/self/task")
                .expect("/proc/self/task")
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("weft-worker-"))
                })
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut steady = 0;
        loop {
            let n = count();
            steady = if n == want { steady + 1 } else { 0 };
            if steady == 10 || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn device_exists(name: &str) -> bool {
        nix::net::if_::if_nametoindex(name).is_ok()
    }

    #[test]
    fn neither_half_is_refused() {
        let cfg = DataplaneConfig {
            tun_name: "weftnone0".into(),
            underlay_mtu: 1500,
            wire: Wire::Vxlan {
                vni: 1,
                mac: [0x0e, 0x57, 0, 0, 0, 1],
            },
            network: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0"),
            local: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0"),
            bind: None,
            workers: 1,
            batch_size: DEFAULT_BATCH,
            accept_any_source: false,
            socket_buffer: 1 << 20,
            offload: Offload::Off,
            tso_writes: false,
        };
        let e = Dataplane::start(&cfg, Arc::new(RouteTable::new())).expect_err("nothing to bind");
        assert_eq!(e.what, "starting the data plane");
        assert!(
            e.to_string()
                .contains("neither an IPv4 nor an IPv6 underlay address to bind"),
            "{e}"
        );
        assert!(!device_exists("weftnone0"), "no device made");
    }

    #[test]
    fn a_failed_start_stops_the_started_workers_and_removes_the_device() {
        if !require_root("a_failed_start_stops_the_started_workers_and_removes_the_device") {
            return;
        }
        let name = format!("wefts{}", std::process::id() % 1_000_000);
        let cfg = DataplaneConfig {
            tun_name: name.clone(),
            underlay_mtu: 1500,
            wire: Wire::Udp,
            network: Ipv4Net::new(Ipv4Addr::new(10, 1, 0, 0), 16).expect("/16"),
            local: Ipv4Net::new(Ipv4Addr::new(10, 1, 1, 0), 24).expect("/24"),
            bind: Some(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            workers: 3,
            batch_size: DEFAULT_BATCH,
            accept_any_source: false,
            socket_buffer: 1 << 20,
            offload: Offload::Off,
            tso_writes: false,
        };
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
            for k in 0..cfg.workers {
                fault::fail_worker(Some(k));
                let e = Dataplane::start(&cfg, Arc::new(RouteTable::new()))
                    .expect_err("worker k fails to start");
                assert_eq!(e.what, format!("registering worker {k}"), "{e}");
                assert_eq!(
                    worker_threads(0),
                    0,
                    "workers left running after failing at {k}"
                );
                assert!(
                    !device_exists(&name),
                    "{name} left behind after failing at {k}"
                );
            }
            fault::fail_worker(None);
            let dp = Dataplane::start(&cfg, Arc::new(RouteTable::new())).expect("start");
            assert_eq!(dp.workers(), cfg.workers);
            assert_eq!(worker_threads(cfg.workers), cfg.workers);
            assert!(dp.healthy());
            assert!(device_exists(&name));
            dp.stop();
            assert_eq!(worker_threads(0), 0);
            assert!(!device_exists(&name), "{name} left behind by stop");
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    }
}
