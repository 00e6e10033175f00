//! What the udp and userspace VXLAN backends share: weft's workers ([`engine::Dataplane`]) and
//! the route snapshots built from leases. Only the wire and the per-lease route differ.

use super::{HostInfo, SkipLog};
use anyhow::{Context, Result};
use control::Lease;
use engine::{Dataplane, DataplaneConfig, Ipv4Net, Route, RouteTable, StatsSource, Wire};
use std::net::SocketAddrV4;
use std::sync::Arc;

/// Turns one lease into a route, or refuses it (wrong backend type, VNI, bad data).
pub(crate) type ToRoute = fn(&Lease, Ipv4Net, &TunnelParams) -> Option<Route>;

/// What routes are built with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TunnelParams {
    /// Peers' UDP port.
    pub(crate) port: u16,
    /// Our wire.
    pub(crate) wire: Wire,
}

/// The engine-based data path of a backend.
#[derive(Debug)]
pub(crate) struct Tunnel {
    host: HostInfo,
    params: TunnelParams,
    to_route: ToRoute,
    table: Arc<RouteTable>,
    net: Option<(Ipv4Net, Ipv4Net)>,
    leases: Vec<Lease>,
    dp: Option<Dataplane>,
    skip: SkipLog,
    name: &'static str,
}

/// The data plane's configuration for `host` (shared with static mode).
pub(crate) fn dataplane_config(
    host: &HostInfo,
    network: Ipv4Net,
    local: Ipv4Net,
    port: u16,
    wire: Wire,
) -> DataplaneConfig {
    let args = &host.args;
    DataplaneConfig {
        tun_name: args.tun_name.clone(),
        underlay_mtu: host.underlay.mtu,
        network,
        local,
        bind: SocketAddrV4::new(host.underlay.addr, port),
        workers: args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        batch_size: args.batch_size,
        accept_any_source: args.accept_any_source,
        socket_buffer: engine::dataplane::DEFAULT_SOCKET_BUFFER,
        offload: args.offload.into(),
        wire,
    }
}

impl Tunnel {
    pub(crate) fn new(
        name: &'static str,
        host: &HostInfo,
        params: TunnelParams,
        to_route: ToRoute,
    ) -> Self {
        Tunnel {
            host: host.clone(),
            params,
            to_route,
            table: Arc::new(RouteTable::new()),
            net: None,
            leases: Vec::new(),
            dp: None,
            skip: SkipLog::default(),
            name,
        }
    }

    /// The TUN MTU: underlay MTU minus the wire's overhead.
    pub(crate) fn mtu(&self) -> u32 {
        self.host
            .underlay
            .mtu
            .saturating_sub(self.params.wire.overhead())
    }

    pub(crate) fn start(&mut self, network: Ipv4Net, local: Ipv4Net) -> Result<()> {
        let cfg = dataplane_config(
            &self.host,
            network,
            local,
            self.params.port,
            self.params.wire,
        );
        let dp =
            Dataplane::start(&cfg, Arc::clone(&self.table)).context("starting the data plane")?;
        tracing::info!(
            backend = self.name,
            tun = %cfg.tun_name,
            mtu = cfg.tun_mtu(),
            address = %local.addr(),
            bind = %cfg.bind,
            workers = dp.workers(),
            pinned = dp.pinned(),
            batch = cfg.batch_size,
            udp_gso = dp.offloads().0,
            udp_gro = dp.offloads().1,
            tun_offload = dp.tun_offload(),
            "data plane running"
        );
        self.dp = Some(dp);
        self.net = Some((network, local));
        self.publish();
        Ok(())
    }

    pub(crate) fn set_leases(&mut self, leases: &[Lease]) {
        self.leases = leases.to_vec();
        self.publish();
    }

    fn publish(&mut self) {
        let Some((network, local)) = self.net else {
            return;
        };
        let (to_route, params) = (self.to_route, self.params);
        let (routes, skipped) = super::usable(&self.leases, network, local, |l| {
            to_route(l, l_subnet(l)?, &params)
        });
        self.skip.report(self.name, skipped);
        match self.table.replace(routes.into_values()) {
            Ok(generation) => {
                tracing::debug!(
                    generation,
                    routes = self.table.load().len(),
                    "routes updated"
                )
            }
            Err(e) => tracing::error!("keeping the current routes: {e}"),
        }
    }

    pub(crate) fn tick(&mut self) -> Result<()> {
        match &self.dp {
            Some(dp) if !dp.healthy() => Err(anyhow::anyhow!("a worker thread stopped; exiting")),
            _ => Ok(()),
        }
    }

    pub(crate) fn stats(&self) -> String {
        let Some(dp) = &self.dp else {
            return String::new();
        };
        let snap = dp.routes().load();
        let beat = dp
            .stats_source()
            .heartbeat_ages()
            .into_iter()
            .max()
            .unwrap_or_default();
        format!(
            " generation={} routes={} healthy={} heartbeat_max_age_ms={} {}",
            snap.generation(),
            snap.len(),
            dp.healthy(),
            beat.as_millis(),
            dp.stats()
        )
    }

    pub(crate) fn dataplane(&self) -> Option<StatsSource> {
        self.dp.as_ref().map(Dataplane::stats_source)
    }

    pub(crate) fn stop(self) -> String {
        self.dp.map(|dp| dp.stop().to_string()).unwrap_or_default()
    }
}

/// The lease's subnet in the engine's type.
fn l_subnet(l: &Lease) -> Option<Ipv4Net> {
    Ipv4Net::new(l.subnet.addr(), l.subnet.prefix_len())
}
