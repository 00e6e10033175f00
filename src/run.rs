//! `weft run`: wires the command line, the data plane and (later) the control plane together.

use crate::cli::{PeerArg, RunArgs};
use crate::iface;
use anyhow::{Context, Result};
use engine::{Dataplane, DataplaneConfig, Ipv4Net, Route, RouteTable};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::net::SocketAddrV4;
use std::path::Path;
use std::sync::Arc;

/// A mistake in the flags or their values: reported with exit code 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: String) -> anyhow::Error {
    UsageError(msg).into()
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

/// Checks the peers against the network and the local subnet and turns them into routes.
fn peer_routes(
    peers: &[PeerArg],
    network: Ipv4Net,
    local: Ipv4Net,
    port: u16,
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
            Ok(Route {
                subnet: p.subnet,
                peer: SocketAddrV4::new(p.ip, port),
            })
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
    // Catch signals first, so that a SIGTERM during start-up still ends in an orderly clean-up.
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1]).context("installing signal handlers")?;

    let (Some(network), Some(local)) = (args.network, args.subnet) else {
        return Err(usage(
            "static mode needs --network and --subnet (with --peer or --peers-file)".to_string(),
        ));
    };
    if !network.contains_net(&local) {
        return Err(usage(format!(
            "--subnet {local} is not inside --network {network}"
        )));
    }
    let peers = static_peers(&args).map_err(|e| usage(format!("{e:#}")))?;
    let routes = peer_routes(&peers, network, local, args.port).map_err(usage)?;
    let table = Arc::new(RouteTable::new());
    table
        .replace(routes)
        .map_err(|e| usage(format!("--peer: {e}")))?;

    let underlay = iface::resolve(args.iface.as_deref()).map_err(|e| usage(format!("{e:#}")))?;
    if underlay.mtu <= engine::dataplane::UDP_OVERHEAD + 68 {
        return Err(usage(format!(
            "--iface {}: MTU {} is too small for an overlay",
            underlay.name, underlay.mtu
        )));
    }
    let workers = args.workers.unwrap_or_else(|| core_count().unwrap_or(1));
    let cfg = DataplaneConfig {
        tun_name: args.tun_name.clone(),
        underlay_mtu: underlay.mtu,
        network,
        local,
        bind: SocketAddrV4::new(underlay.addr, args.port),
        workers,
        batch_size: args.batch_size,
        accept_any_source: args.accept_any_source,
        socket_buffer: engine::dataplane::DEFAULT_SOCKET_BUFFER,
        offload: args.offload.into(),
    };
    let dp = Dataplane::start(&cfg, Arc::clone(&table)).context("starting the data plane")?;
    tracing::info!(
        tun = %cfg.tun_name,
        mtu = cfg.tun_mtu(),
        address = %local.addr(),
        underlay = %underlay.name,
        bind = %cfg.bind,
        public_ip = %args.public_ip.unwrap_or(underlay.addr),
        workers = dp.workers(),
        pinned = dp.pinned(),
        batch = cfg.batch_size,
        udp_gso = dp.offloads().0,
        udp_gro = dp.offloads().1,
        routes = table.load().len(),
        "weft running (static peers)"
    );

    for sig in signals.forever() {
        match sig {
            SIGUSR1 => log_stats(&dp, &table),
            SIGHUP => match static_peers(&args)
                .and_then(|p| {
                    peer_routes(&p, network, local, args.port).map_err(anyhow::Error::msg)
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
            _ => {
                tracing::info!(signal = sig, "shutting down");
                break;
            }
        }
    }
    let stats = dp.stop();
    tracing::info!(
        generation = table.load().generation(),
        routes = table.load().len(),
        "stats {stats}"
    );
    Ok(())
}

fn log_stats(dp: &Dataplane, table: &RouteTable) {
    let snap = table.load();
    tracing::info!(
        generation = snap.generation(),
        routes = snap.len(),
        healthy = dp.healthy(),
        "stats {}",
        dp.stats()
    );
}

/// CPUs this process may run on.
fn core_count() -> Option<usize> {
    std::thread::available_parallelism().ok().map(|n| n.get())
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
            peer_routes(&[p("10.1.2.0/24=192.0.2.2")], n, l, 8285).expect("ok")[0].peer,
            "192.0.2.2:8285".parse().expect("valid")
        );
        let e = peer_routes(&[p("10.2.0.0/24=192.0.2.2")], n, l, 8285).unwrap_err();
        assert!(e.contains("outside --network 10.1.0.0/16"), "{e}");
        let e = peer_routes(&[p("10.1.0.0/23=192.0.2.2")], n, l, 8285).unwrap_err();
        assert!(e.contains("overlaps"), "{e}");
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
