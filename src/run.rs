//! `weft run`: the daemon's main thread, the only code that knows both the control plane and the
//! backends.
//!
//! Static mode turns the static peers into the engine's route table. etcd mode starts the control
//! thread ([`control::start`] returns at once), creates the backend on this thread when the
//! control thread has read the config (before our lease is acquired, since the lease carries the
//! backend's attributes) and owns it from then on: every lease set the control thread sends is
//! applied here, and so is the backend's tick, so the backend's netlink calls never run on the
//! etcd client's thread. Both modes then wait on one `select!` for signals (SIGUSR1 logs the
//! counters, SIGHUP reloads static peers, SIGINT/SIGTERM stop), the lease sets and a one-second
//! tick (worker health, our lease's subnet, the backend's repairs).

use crate::backend::{self, engine_net, Backend, HostInfo};
use crate::blackhole::BlackholeRoute;
use crate::cli::{PeerArg, RunArgs, VxlanDataplane};
use crate::health::{self, Status};
use crate::iface::{self, Stack, Underlay};
use crate::masq;
use crate::nft;
use anyhow::{Context, Result};
use crossbeam_channel::Receiver;
use engine::{Dataplane, DataplaneConfig, Ipv4Net, Route, RouteTable, Wire};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A mistake in the flags or their values: reported with exit code 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: String) -> anyhow::Error {
    UsageError(msg).into()
}

/// The traffic rules of this run, kept in place by their keeper threads while held; the rules
/// stay when weft exits, as with flanneld.
#[derive(Debug, Default)]
struct RuleKeepers {
    _iptables: Option<masq::Keeper>,
    _nftables: Option<nft::NftKeeper>,
}

/// Installs the traffic rules asked for (`--ip-masq`, forward rules when `forward`), with
/// iptables or, with `EnableNFTables` (`nftables`), nftables; the other manager's rules are
/// removed first, as flanneld does. `previous` (network and subnet of the last run) has its
/// masquerade rules removed first when they differ from the current ones. `v6` (EnableIPv6) adds
/// the same rules for the IPv6 network and subnet (ip6tables, or the `ip6 flannel-ipv6` table);
/// `ipv4` false (an IPv6-only network) leaves the IPv4 rules out.
#[allow(clippy::too_many_arguments)] // one per rule input; a struct would only rename them
fn setup_rules(
    args: &RunArgs,
    ipv4: bool,
    network: Ipv4Net,
    local: Ipv4Net,
    previous: Option<(Ipv4Net, Ipv4Net)>,
    v6: Option<&RulesV6>,
    nftables: bool,
    forward: bool,
) -> Result<RuleKeepers> {
    let period = Duration::from_secs(args.iptables_resync);
    if nftables {
        if ipv4 {
            remove_iptables_rules(network, local, previous);
        }
        if let Some(v6) = v6 {
            remove_ip6tables_rules(v6);
        }
        let cfg = nft::NftConfig {
            cluster: network,
            pod: local,
            ipv4,
            v6: v6.map(|v| (v.network, v.local)),
            masq: args.ip_masq,
            forward,
            random_fully_disabled: args.ip_masq_fully_random_disable,
        };
        let keeper = nft::NftKeeper::start(cfg, period)
            .context("EnableNFTables: installing the nftables rules")?;
        tracing::info!(
            ip_masq = args.ip_masq,
            forward_rules = forward,
            random_fully = keeper.random_fully(),
            "nftables rules installed (tables ip flannel-ipv4, ip6 flannel-ipv6)"
        );
        return Ok(RuleKeepers {
            _iptables: None,
            _nftables: Some(keeper),
        });
    }
    if let Err(e) = nft::delete_tables() {
        tracing::warn!("removing the nftables tables of an earlier run: {e:#}");
    }
    let random_fully = !args.ip_masq_fully_random_disable && masq::supports_random_fully();
    let mut rules = Vec::new();
    if args.ip_masq {
        if let Some((net, sub)) = previous.filter(|p| ipv4 && *p != (network, local)) {
            let removed = masq::delete_flannel_rules(net, sub, false)
                .context("removing the masquerade rules of the previous subnet")?;
            tracing::info!(network = %net, subnet = %sub, removed, "removed the masquerade rules of the previous network/subnet");
        }
        if ipv4 {
            rules.extend(masq::masq_rules(network, local, random_fully));
        }
        if let Some(v6) = v6 {
            if let Some((net, sub)) = v6.previous.filter(|p| *p != (v6.network, v6.local)) {
                let removed = masq::delete_flannel_rules6(net, sub)
                    .context("removing the IPv6 masquerade rules of the previous subnet")?;
                tracing::info!(network = %net, subnet = %sub, removed, "removed the IPv6 masquerade rules of the previous network/subnet");
            }
            rules.extend(masq::masq6_rules(v6.network, v6.local, random_fully));
        }
    }
    if forward {
        if ipv4 {
            rules.extend(masq::forward_rules(network));
        }
        if let Some(v6) = v6 {
            rules.extend(masq::forward6_rules(v6.network));
        }
    }
    if rules.is_empty() {
        return Ok(RuleKeepers::default());
    }
    match masq::Keeper::start(rules, period) {
        Ok(k) => {
            tracing::info!(
                ip_masq = args.ip_masq,
                forward_rules = forward,
                random_fully,
                "iptables rules installed"
            );
            Ok(RuleKeepers {
                _iptables: Some(k),
                _nftables: None,
            })
        }
        Err(e) if args.ip_masq => Err(e.context("installing the --ip-masq rules")),
        Err(e) => {
            tracing::warn!(
                "FORWARD rules not installed (--iptables-forward-rules=false to skip them): {e:#}"
            );
            Ok(RuleKeepers::default())
        }
    }
}

/// In nftables mode: flannel's iptables rules of this and the previous network/subnet go, so that
/// a host switched from iptables to nftables keeps no stale NAT. Failures are only logged (an
/// nftables-only host may have no iptables at all).
fn remove_iptables_rules(network: Ipv4Net, local: Ipv4Net, previous: Option<(Ipv4Net, Ipv4Net)>) {
    let mut removed = 0;
    for (net, sub) in std::iter::once((network, local)).chain(previous) {
        match masq::delete_flannel_rules(net, sub, true) {
            Ok(n) => removed += n,
            Err(e) => {
                tracing::warn!("EnableNFTables: removing flannel's iptables rules: {e:#}");
                return;
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, "EnableNFTables: removed flannel's iptables rules");
    }
}

/// The IPv6 half of the traffic rules: the IPv6 network, our IPv6 subnet and those of the last
/// run (subnet.env's `FLANNEL_IPV6_NETWORK`/`FLANNEL_IPV6_SUBNET`).
#[derive(Debug, Clone, Copy)]
struct RulesV6 {
    network: control::subnet::Ipv6Net,
    local: control::subnet::Ipv6Net,
    previous: Option<(control::subnet::Ipv6Net, control::subnet::Ipv6Net)>,
}

/// [`remove_iptables_rules`] for ip6tables.
fn remove_ip6tables_rules(v6: &RulesV6) {
    let mut removed = 0;
    for (net, sub) in std::iter::once((v6.network, v6.local)).chain(v6.previous) {
        let forward = masq::delete(&masq::forward6_rules(net));
        match masq::delete_flannel_rules6(net, sub).and_then(|n| Ok(n + forward?)) {
            Ok(n) => removed += n,
            Err(e) => {
                tracing::warn!("EnableNFTables: removing flannel's ip6tables rules: {e:#}");
                return;
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, "EnableNFTables: removed flannel's ip6tables rules");
    }
}

/// How often the main thread checks the workers, the lease and the backend.
const TICK: Duration = Duration::from_secs(1);

/// Signals caught from the very start, delivered on a channel so the main thread can also wait
/// for other things.
fn signal_channel() -> Result<Receiver<i32>> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1]).context("installing signal handlers")?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("weft-signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if tx.send(s).is_err() {
                    break;
                }
            }
        })
        .context("spawning the signal thread")?;
    Ok(rx)
}

/// Reads a peers file: one `SUBNET=IP` per line, blank lines and `#` comments ignored.
pub(crate) fn read_peers_file(path: &Path) -> Result<Vec<PeerArg>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut peers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let p = line
            .parse::<PeerArg>()
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
        peers.push(p);
    }
    Ok(peers)
}

/// Checks static peers against the network and the local subnet and turns them into routes.
fn peer_routes(
    peers: &[PeerArg],
    network: Ipv4Net,
    local: Ipv4Net,
    port: u16,
    wire: Wire,
) -> Result<Vec<Route>, String> {
    peers
        .iter()
        .map(|p| {
            if !network.contains_net(&p.subnet) {
                return Err(format!(
                    "--peer {}={}: subnet is outside --network {network}",
                    p.subnet, p.ip
                ));
            }
            if p.subnet.overlaps(&local) {
                return Err(format!(
                    "--peer {}={}: subnet overlaps this host's --subnet {local}",
                    p.subnet, p.ip
                ));
            }
            let peer = SocketAddrV4::new(p.ip, port);
            match (wire, p.mac) {
                (Wire::Udp, None) => Ok(Route::udp(p.subnet, peer)),
                (Wire::Udp, Some(_)) => Err(format!(
                    "--peer {}={}: a VTEP MAC is only used with --vni",
                    p.subnet, p.ip
                )),
                (Wire::Vxlan { .. }, Some(mac)) => Ok(Route::vxlan(p.subnet, peer, mac)),
                (Wire::Vxlan { .. }, None) => Err(format!(
                    "--peer {}={}: --vni needs the peer's VTEP MAC (SUBNET=IP,MAC)",
                    p.subnet, p.ip
                )),
            }
        })
        .collect()
}

/// All static peers: the command line's, then the peers file's.
fn static_peers(args: &RunArgs) -> Result<Vec<PeerArg>> {
    let mut peers = args.peers.clone();
    if let Some(f) = &args.peers_file {
        peers.extend(read_peers_file(f)?);
    }
    Ok(peers)
}

/// Runs the daemon until SIGINT or SIGTERM.
pub(crate) fn run(args: RunArgs) -> Result<()> {
    // Catch signals first, so that a SIGTERM during start-up still ends in an orderly exit.
    let signals = signal_channel()?;
    // As flanneld (the Go runtime): the soft descriptor limit up to the hard one, for the
    // workers' sockets, netlink, etcd and the health port alike.
    health::raise_nofile();
    let static_mode = args.network.is_some()
        || args.subnet.is_some()
        || !args.peers.is_empty()
        || args.peers_file.is_some()
        || args.vni.is_some();
    if static_mode {
        if let Some(flag) = args.first_given(crate::cli::ETCD_ONLY) {
            return Err(usage(format!(
                "{flag}: only in etcd mode; --network/--subnet/--peer/--peers-file/--vni select \
                 static mode, which has no etcd"
            )));
        }
    } else if let Some(flag) = args.first_given(crate::cli::STATIC_ONLY) {
        return Err(usage(format!(
            "{flag}: only in static mode (with --network, --subnet and --peer); in etcd mode the \
             network config's Backend section decides"
        )));
    }
    if crate::cli::password_on_command_line(std::env::args()) {
        tracing::warn!(
            "--etcd-password on the command line is visible to every user (ps); use --etcd-password-file or FLANNELD_ETCD_PASSWORD"
        );
    }
    // Read now, so that a bad --etcd-password-file is a usage error at once.
    let etcd_password = args.etcd_password().map_err(usage)?;
    // By IPv4 rules (static mode is IPv4; so are most etcd networks). In etcd mode the network
    // config, read later, may say IPv6 only (EnableIPv4=false): then the interface is picked again
    // by IPv6 rules, and the flags are a usage error now only if they fit neither.
    let underlay = underlay_for(&args, Stack::Ipv4);
    if let Err(e4) = &underlay {
        let e6 = match static_mode {
            true => None,
            false => underlay_for(&args, Stack::Ipv6Only).err(),
        };
        if static_mode || e6.is_some() {
            let also = e6
                .map(|e6| format!("; for an IPv6-only network (EnableIPv4=false): {e6:#}"))
                .unwrap_or_default();
            return Err(usage(format!("{e4:#}{also}")));
        }
    }
    let status = Arc::new(Status::default());
    if args.healthz_port > 0 {
        health::serve(
            std::net::SocketAddr::new(args.healthz_ip, args.healthz_port),
            Arc::clone(&status),
        )
        .map_err(|e| usage(format!("{e:#}")))?;
    }
    match underlay {
        Ok(underlay) if static_mode => run_static(&args, &underlay, &signals, &status),
        Err(e) if static_mode => Err(usage(format!("{e:#}"))),
        underlay => run_etcd(&args, etcd_password, underlay, &signals, &status),
    }
}

/// The underlay by the rules of `stack`, with an MTU that leaves room for the overlay.
fn underlay_for(args: &RunArgs, stack: Stack) -> Result<Underlay> {
    let underlay = iface::from_args(args, stack)?;
    // IPv6 only: the TUN device (underlay − 70) must carry IPv6's minimum MTU of 1280.
    let least = match stack {
        Stack::Ipv4 => engine::dataplane::UDP_OVERHEAD + 68 + 1,
        Stack::Ipv6Only => engine::dataplane::VXLAN6_OVERHEAD + 1280,
    };
    if underlay.mtu < least {
        anyhow::bail!(
            "--iface {}: MTU {} is too small for an overlay{}",
            underlay.name,
            underlay.mtu,
            match stack {
                Stack::Ipv4 => String::new(),
                Stack::Ipv6Only => format!(" over IPv6 (at least {least})"),
            }
        );
    }
    Ok(underlay)
}

fn log_started(mode: &str, cfg: &DataplaneConfig, dp: &Dataplane, public_ip: Ipv4Addr) {
    tracing::info!(
        tun = %cfg.tun_name,
        mtu = cfg.tun_mtu(),
        address = %cfg.local.addr(),
        network = %cfg.network,
        bind = ?cfg.bind,
        public_ip = %public_ip,
        wire = ?cfg.wire,
        workers = dp.workers(),
        pinned = dp.pinned(),
        batch = cfg.batch_size,
        udp_gso = dp.offloads().0,
        udp_gro = dp.offloads().1,
        tun_offload = dp.tun_offload(),
        routes = dp.routes().load().len(),
        "weft running ({mode})"
    );
}

fn log_stats(dp: &Dataplane) {
    tracing::info!("stats{}", backend::stats_line(dp));
}

/// What wakes the main thread.
enum Wake {
    /// SIGUSR1: log the counters.
    Stats,
    /// SIGHUP.
    Reload,
    /// A new lease set for the backend (etcd mode).
    Leases(Vec<control::Lease>),
    /// [`TICK`] passed: health checks and periodic repair.
    Tick,
    /// SIGINT or SIGTERM (`Ok`), or the signal thread ended (`Err`): the daemon stops.
    Shutdown(Result<()>),
}

/// Waits for the next signal, tick or lease set (`lease_sets` never fires in static mode).
fn next_wake(
    signals: &Receiver<i32>,
    ticks: &Receiver<Instant>,
    lease_sets: &Receiver<Vec<control::Lease>>,
) -> Wake {
    crossbeam_channel::select! {
        recv(signals) -> s => match s {
            Ok(SIGUSR1) => Wake::Stats,
            Ok(SIGHUP) => Wake::Reload,
            Ok(sig) => {
                tracing::info!(signal = sig, "shutting down");
                Wake::Shutdown(Ok(()))
            }
            Err(_) => Wake::Shutdown(Err(anyhow::anyhow!("signal thread ended"))),
        },
        recv(lease_sets) -> l => match l {
            Ok(leases) => Wake::Leases(leases),
            // Cannot happen while the sender holds a receiver too; a tick is harmless.
            Err(_) => Wake::Tick,
        },
        recv(ticks) -> _ => Wake::Tick,
    }
}

/// The wire of static mode: udp, or VXLAN with `--vni`.
fn static_wire(args: &RunArgs, public_ip: Ipv4Addr) -> Wire {
    match args.vni {
        Some(vni) => Wire::Vxlan {
            vni,
            mac: args
                .vtep_mac
                .unwrap_or_else(|| backend::vxlan_user::vtep_mac(public_ip)),
        },
        None => Wire::Udp,
    }
}

fn run_static(
    args: &RunArgs,
    underlay: &Underlay,
    signals: &Receiver<i32>,
    status: &Status,
) -> Result<()> {
    let (Some(network), Some(local)) = (args.network, args.subnet) else {
        return Err(usage(
            "static mode needs both --network and --subnet (and --peer or --peers-file)".into(),
        ));
    };
    if !network.contains_net(&local) {
        return Err(usage(format!(
            "--subnet {local} is not inside --network {network}"
        )));
    }
    let public_ip = args.public_ip.unwrap_or(underlay.addr);
    let wire = static_wire(args, public_ip);
    let port = args.port.unwrap_or(match wire {
        Wire::Udp => control::config::UDP_DEFAULT_PORT,
        Wire::Vxlan { .. } => control::config::VXLAN_DEFAULT_PORT,
    });
    let peers = static_peers(args).map_err(|e| usage(format!("{e:#}")))?;
    let routes = peer_routes(&peers, network, local, port, wire).map_err(usage)?;
    let table = Arc::new(RouteTable::new());
    table
        .replace(routes)
        .map_err(|e| usage(format!("--peer: {e}")))?;

    let host = HostInfo::new(args, underlay, public_ip, None)?;
    let cfg = backend::tunnel_config(&host, network, local, port, wire);
    let dp = backend::start_dataplane(&cfg, Arc::clone(&table))?;
    log_started("static peers", &cfg, &dp, public_ip);
    // Static mode has no network config: rules only when their flags are given, iptables only.
    let forward = args.iptables_forward_rules == Some(true);
    let _rules = setup_rules(args, true, network, local, None, None, false, forward)?;
    let mut blackhole = blackhole_route(args, local)?;
    let _ = status.dataplane.set(dp.stats_source());
    let written = match &args.subnet_file {
        Some(path) => write_static_subnet_file(path, network, local, cfg.tun_mtu(), args.ip_masq),
        None => true,
    };
    if written {
        status
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
    }
    let (ticks, no_leases) = (crossbeam_channel::tick(TICK), crossbeam_channel::never());
    let result = loop {
        match next_wake(signals, &ticks, &no_leases) {
            Wake::Stats => log_stats(&dp),
            Wake::Reload => match static_peers(args)
                .and_then(|p| {
                    peer_routes(&p, network, local, port, wire).map_err(anyhow::Error::msg)
                })
                .and_then(|r| table.replace(r).map_err(anyhow::Error::from))
            {
                Ok(generation) => tracing::info!(
                    generation,
                    routes = table.load().len(),
                    "route table replaced"
                ),
                Err(e) => tracing::error!("SIGHUP: keeping the current routes: {e:#}"),
            },
            Wake::Tick if !dp.healthy() => {
                break Err(anyhow::anyhow!("a worker thread stopped; exiting"));
            }
            Wake::Tick => {
                if let Some(b) = blackhole.as_mut() {
                    b.tick();
                }
            }
            Wake::Leases(_) => {}
            Wake::Shutdown(r) => break r,
        }
    };
    let stats = dp.stop();
    tracing::info!("final stats {stats}");
    result
}

/// `--ip-blackhole-route`'s keeper for our subnet, when asked for.
fn blackhole_route(args: &RunArgs, local: Ipv4Net) -> Result<Option<BlackholeRoute>> {
    if !args.ip_blackhole_route {
        return Ok(None);
    }
    let period = Duration::from_secs(args.iptables_resync);
    BlackholeRoute::new(local, period).map(Some)
}

/// Static mode with `--subnet-file`: subnet.env as in etcd mode, for Docker and CNI. Returns
/// whether it was written (a failure is logged and the daemon is not ready, as in etcd mode).
fn write_static_subnet_file(
    path: &Path,
    network: Ipv4Net,
    local: Ipv4Net,
    mtu: u32,
    ip_masq: bool,
) -> bool {
    let env = control::env_file::SubnetEnv {
        network: backend::control_net(network),
        subnet: backend::control_net(local),
        ipv6: None,
        mtu,
        ip_masq,
    };
    match env.write(path) {
        Ok(()) => {
            tracing::info!(file = %path.display(), "subnet file written");
            true
        }
        Err(e) => {
            tracing::error!("writing {}: {e}", path.display());
            false
        }
    }
}

/// What the host information is made from once the network config is known.
struct Hosts<'a> {
    args: &'a RunArgs,
    /// `--public-ip`, else the IPv4 underlay's address (`0.0.0.0` without one).
    public_ip: Ipv4Addr,
    /// The underlay picked by IPv4 rules, or why none could be.
    v4: std::result::Result<Underlay, String>,
}

impl Hosts<'_> {
    /// The host for `config`: on the IPv4 underlay, or IPv6 only (`EnableIPv4: false`) on the
    /// interface IPv6 rules pick.
    fn host_for(&self, config: &control::NetworkConfig) -> Result<HostInfo> {
        let args = self.args;
        let underlay = if config.enable_ipv4 {
            self.v4.clone().map_err(anyhow::Error::msg)?
        } else {
            if args.public_ip.is_some() {
                anyhow::bail!(
                    "--public-ip: the network config has EnableIPv4=false, so no IPv4 address \
                     is published; remove the flag (--public-ipv6 names the IPv6 one)"
                );
            }
            let u = underlay_for(args, Stack::Ipv6Only)?;
            if self.v4.as_ref().is_ok_and(|v4| v4.name != u.name) {
                tracing::info!(underlay = %u.name, "IPv6 only: the underlay is picked by IPv6 rules");
            }
            u
        };
        let public_ipv6 = args.public_ipv6.or(underlay.addr6);
        HostInfo::new(args, &underlay, self.public_ip, public_ipv6)
    }
}

/// Sets up the backend `config` selects (`--vxlan-dataplane` overrides the config's choice of
/// vxlan data plane) on the host `hosts` gives for it.
fn create_backend(
    config: &control::NetworkConfig,
    hosts: &Hosts<'_>,
    dataplane: Option<VxlanDataplane>,
) -> Result<(Box<dyn Backend>, HostInfo)> {
    let host = &hosts.host_for(config)?;
    let mut config = config.clone();
    if let (Some(d), control::Backend::Vxlan(v)) = (dataplane, &mut config.backend) {
        v.userspace = d == VxlanDataplane::Userspace;
        if v.userspace && (v.gbp || v.direct_routing) {
            anyhow::bail!(
                "--vxlan-dataplane=userspace: the config's GBP and DirectRouting need the kernel \
                 data plane"
            );
        }
    }
    let kind = backend::kind(&config);
    if host.args.public_ipv6.is_some() && config.ipv6.is_none() {
        anyhow::bail!(
            "--public-ipv6: the network config has no EnableIPv6, so no IPv6 address is \
             published; remove the flag or enable IPv6 in the config"
        );
    }
    if dataplane.is_some() && !matches!(config.backend, control::Backend::Vxlan(_)) {
        anyhow::bail!("--vxlan-dataplane: the network config's backend is {kind}, not vxlan");
    }
    let uses_engine = match &config.backend {
        control::Backend::Udp { .. } => true,
        control::Backend::Vxlan(v) => v.userspace,
        control::Backend::Wireguard(_) => true,
        _ => false,
    };
    if let Some(flag) = host
        .args
        .first_given(crate::cli::DATAPLANE_ONLY)
        .filter(|_| !uses_engine)
    {
        anyhow::bail!(
            "{flag}: applies to weft's own data plane, which the {kind} backend of the network \
             config does not use; remove the flag"
        );
    }
    let b =
        backend::create(&config, host).with_context(|| format!("setting up the {kind} backend"))?;
    Ok((b, host.clone()))
}

/// Our lease is held: the running control plane and the backend, set up but not started, and
/// the host it was set up for.
type Started = (control::ControlHandle, Box<dyn Backend>, HostInfo);

/// Runs the control plane's start-up exchange: the backend is created here, on the main thread
/// that owns it, when the config is known and before our lease is acquired (its attributes,
/// e.g. the VTEP MAC, go into the lease). `None` if SIGINT or SIGTERM ended the wait.
fn start_control(
    opts: control::ControlOptions,
    on_peers: control::OnPeers,
    hosts: &Hosts<'_>,
    dataplane: Option<VxlanDataplane>,
    signals: &Receiver<i32>,
) -> Result<Option<Started>> {
    let mut startup = control::start(opts, on_peers).context("control plane start-up")?;
    let events = startup.events().clone();
    let mut backend = None;
    loop {
        crossbeam_channel::select! {
            recv(events) -> ev => match ev {
                Ok(control::StartupEvent::Config(config)) => {
                    match create_backend(&config, hosts, dataplane) {
                        Ok((b, host)) => {
                            startup.answer(Ok(b.lease_attrs()));
                            backend = Some((b, host));
                        }
                        Err(e) => {
                            startup.answer(Err(format!("{e:#}")));
                            return Err(e.context("control plane start-up"));
                        }
                    }
                }
                Ok(control::StartupEvent::LeaseHeld(held)) => {
                    let (b, host) = backend
                        .context("the control plane started without setting up a backend")?;
                    return Ok(Some((startup.finish(held), b, host)));
                }
                Ok(control::StartupEvent::Failed(e)) => {
                    return Err(anyhow::Error::new(e).context("control plane start-up"));
                }
                Err(_) => return Err(anyhow::anyhow!("the control thread ended during start-up")),
            },
            recv(signals) -> s => match s {
                Ok(SIGINT | SIGTERM) => {
                    tracing::info!("interrupted while waiting for etcd; nothing to clean up");
                    startup.stop();
                    return Ok(None);
                }
                Ok(_) => {}
                Err(_) => return Err(anyhow::anyhow!("signal thread ended")),
            },
        }
    }
}

fn run_etcd(
    args: &RunArgs,
    etcd_password: Option<crate::cli::Secret>,
    underlay: Result<Underlay>,
    signals: &Receiver<i32>,
    status: &Status,
) -> Result<()> {
    // No IPv4 underlay (an IPv6-only host): PublicIP 0.0.0.0, as an IPv6-only lease has it.
    let public_ip = args
        .public_ip
        .unwrap_or(underlay.as_ref().map_or(Ipv4Addr::UNSPECIFIED, |u| u.addr));
    let hosts = Hosts {
        args,
        public_ip,
        v4: underlay.map_err(|e| format!("{e:#}")),
    };
    let opts = control::ControlOptions {
        etcd: control::EtcdOptions {
            endpoints: args.etcd_endpoints.0.clone(),
            prefix: args.etcd_prefix.clone(),
            ca_file: args.etcd_cafile.clone(),
            cert_file: args.etcd_certfile.clone(),
            key_file: args.etcd_keyfile.clone(),
            username: args.etcd_username.clone(),
            password: etcd_password.map(|p| p.expose().to_string()),
        },
        public_ip,
        subnet_file: args.subnet_file(),
        renew_margin: Duration::from_secs(u64::from(args.subnet_lease_renew_margin) * 60),
        ip_masq: args.ip_masq,
    };
    let prev = control::env_file::read_previous(&args.subnet_file());
    let previous = prev
        .network
        .zip(prev.subnet)
        .map(|(n, s)| (engine_net(n), engine_net(s)));
    let previous6 = prev.ipv6_network.zip(prev.ipv6_subnet);
    let (lease_tx, lease_sets) = backend::lease_sets();
    let on_peers: control::OnPeers = Box::new(move |leases| lease_tx.send(leases));

    // Start-up waits for etcd and the config as long as it takes; a signal ends the wait.
    tracing::info!(endpoints = ?opts.etcd.endpoints, prefix = %opts.etcd.prefix, %public_ip, "acquiring a subnet lease");
    let Some((handle, mut backend, host)) =
        start_control(opts, on_peers, &hosts, args.vxlan_dataplane, signals)?
    else {
        return Ok(());
    };

    let network = engine_net(handle.config().network);
    let local = engine_net(handle.lease().subnet);
    // Dual stack: the IPv6 subnet leased with the IPv4 one.
    let rules6 = match (handle.config().ipv6, handle.lease().ipv6_subnet) {
        (None, _) => None,
        (Some(c6), Some(local6)) => Some(RulesV6 {
            network: c6.network,
            local: local6,
            previous: previous6,
        }),
        (Some(_), None) => anyhow::bail!("EnableIPv6: our lease has no IPv6 subnet"),
    };
    if let Some(v6) = &rules6 {
        backend
            .set_ipv6_subnet(v6.network, v6.local)
            .with_context(|| format!("starting the {} backend", backend.name()))?;
    }
    // The first lease set was sent before the lease was reported held: the backend applies it
    // as it starts.
    if let Ok(leases) = lease_sets.try_recv() {
        backend.set_leases(&leases);
    }
    backend
        .start(network, local)
        .with_context(|| format!("starting the {} backend", backend.name()))?;
    let (name, mtu) = (backend.name(), backend.mtu());
    let nftables = handle.config().enable_nftables;
    let ipv4 = handle.config().enable_ipv4;
    let _rules = setup_rules(
        args,
        ipv4,
        network,
        local,
        previous,
        rules6.as_ref(),
        nftables,
        args.forward_rules(),
    )?;
    let mut blackhole = blackhole_route(args, local)?;
    if let Some(v6) = &rules6 {
        blackhole = blackhole.map(|b| b.with_ipv6(v6.local));
    }
    if !ipv4 {
        blackhole = blackhole.map(BlackholeRoute::without_ipv4);
    }
    if let Some(d) = backend.dataplane() {
        let _ = status.dataplane.set(d);
    }
    if let Some(w) = backend.wireguard() {
        let _ = status.wireguard.set(w);
    }
    let _ = status.control.set(Box::new(handle.stats_fn()));
    let subnet_file_written = match handle.data_plane_ready(mtu) {
        Ok(()) => {
            status
                .ready
                .store(true, std::sync::atomic::Ordering::Release);
            true
        }
        Err(e) => {
            tracing::error!("writing {}: {e}; not ready", args.subnet_file().display());
            false
        }
    };
    tracing::info!(backend = name, subnet = %local, network = %network, subnet6 = ?rules6.map(|v| v.local.to_string()), public_ipv6 = ?host.public_ipv6.filter(|_| rules6.is_some()), mtu, public_ip = %backend.lease_attrs().public_ip, underlay = %host.underlay.name, file = %args.subnet_file().display(), subnet_file_written, "weft running (etcd): lease held");

    let ticks = crossbeam_channel::tick(TICK);
    let result = loop {
        match next_wake(signals, &ticks, &lease_sets) {
            Wake::Leases(leases) => backend.set_leases(&leases),
            Wake::Stats => {
                let c = handle.stats();
                tracing::info!(
                    "stats backend={name}{}{}",
                    backend.stats(),
                    crate::metrics::line(&crate::metrics::control(&c))
                );
            }
            Wake::Reload => tracing::info!("SIGHUP: routes follow etcd; nothing to reload"),
            Wake::Tick => {
                let lease = handle.lease();
                let now = lease.subnet;
                if engine_net(now) != local {
                    break Err(anyhow::anyhow!(
                        "our lease moved from {local} to {now} (the old subnet was taken while \
                         the lease was lost); exiting so that a restart uses the new subnet"
                    ));
                }
                if let Some(v6) = &rules6 {
                    if lease.ipv6_subnet != Some(v6.local) {
                        break Err(anyhow::anyhow!(
                            "our IPv6 subnet moved from {} to {:?} (taken while the lease was \
                             lost); exiting so that a restart uses the new subnet",
                            v6.local,
                            lease.ipv6_subnet.map(|s| s.to_string())
                        ));
                    }
                }
                if let Err(e) = backend.tick() {
                    break Err(e);
                }
                if let Some(b) = blackhole.as_mut() {
                    b.tick();
                }
            }
            Wake::Shutdown(r) => break r,
        }
    };
    handle.stop();
    tracing::info!("final stats {}", backend.stop());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("valid")
    }

    #[test]
    fn peers_are_validated() {
        let p = |s: &str| s.parse::<PeerArg>().expect("valid");
        let n = net("10.1.0.0/16");
        let l = net("10.1.1.0/24");
        assert_eq!(
            peer_routes(&[p("10.1.2.0/24=192.0.2.2")], n, l, 8285, Wire::Udp).expect("ok")[0].peer,
            "192.0.2.2:8285".parse().expect("valid")
        );
        let e = peer_routes(&[p("10.2.0.0/24=192.0.2.2")], n, l, 8285, Wire::Udp).unwrap_err();
        assert!(e.contains("outside --network 10.1.0.0/16"), "{e}");
        let e = peer_routes(&[p("10.1.0.0/23=192.0.2.2")], n, l, 8285, Wire::Udp).unwrap_err();
        assert!(e.contains("overlaps"), "{e}");
        let vx = Wire::Vxlan {
            vni: 1,
            mac: [2, 0, 0, 0, 0, 1],
        };
        let r = peer_routes(
            &[p("10.1.2.0/24=192.0.2.2,02:00:00:00:00:02")],
            n,
            l,
            8472,
            vx,
        )
        .expect("ok");
        assert_eq!(r[0].mac, [2, 0, 0, 0, 0, 2]);
        let e = peer_routes(&[p("10.1.2.0/24=192.0.2.2")], n, l, 8472, vx).unwrap_err();
        assert!(e.contains("VTEP MAC"), "{e}");
        let e = peer_routes(
            &[p("10.1.2.0/24=192.0.2.2,02:00:00:00:00:02")],
            n,
            l,
            8285,
            Wire::Udp,
        )
        .unwrap_err();
        assert!(e.contains("only used with --vni"), "{e}");
    }

    #[test]
    fn peers_file_format() {
        let dir = std::env::temp_dir().join(format!("weft-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let f = dir.join("peers");
        std::fs::write(
            &f,
            "# hosts\n10.1.2.0/24=192.0.2.2\n\n10.1.3.0/24 = 192.0.2.3 # c\n",
        )
        .expect("write");
        let peers = read_peers_file(&f).expect("valid");
        assert_eq!(peers.len(), 2);
        std::fs::write(&f, "10.1.2.0/24=192.0.2.2\n10.1.3.0/24\n").expect("write");
        let e = format!("{:#}", read_peers_file(&f).unwrap_err());
        assert!(e.contains(":2:"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
