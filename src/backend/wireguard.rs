//! flannel's wireguard backend, carried by weft's engine ([`engine::wg`]) instead of kernel
//! WireGuard, wire-compatible with hosts running flannel on kernel WireGuard.
//!
//! As flannel: the private key comes from `/run/flannel/wgkey` (or `$WIREGUARD_KEY_FILE`),
//! created on first start; our lease publishes `{"PublicKey":..,"Port":<ListenPort>}`; every
//! wireguard lease becomes a peer with endpoint `PublicIP:Port` (Port 0, from peers older than
//! flannel v0.26.6, means our own port), allowed IPs its subnet, the network's PSK and
//! keepalive; the device `flannel-wg` (or `--tun-name`) has our subnet's network address as /32
//! and MTU base − 80, and `<Network> dev flannel-wg scope link` routes the overlay. Lease
//! changes add, change and remove peers live; a peer whose key stays keeps its session.

use super::{Backend, HostInfo, SkipLog};
use crate::netlink::{Netlink, RouteSpec};
use anyhow::{Context, Result};
use control::wireguard::{self as wgc, WireguardConfig};
use control::{Lease, LeaseAttrs};
use engine::udp::Offload;
use engine::wg::{Identity, PeerConfig, WgCore, WgDataplane, WgDataplaneConfig};
use engine::{Ipv4Net, StatsSource};
use std::net::SocketAddrV4;
use std::sync::Arc;

/// flannel's device name.
pub(crate) const DEVICE: &str = "flannel-wg";
/// `RTPROT_BOOT`: what netlink's RouteReplace gives a route when no protocol is set, as
/// flannel's network route has.
const RTPROT_BOOT: u8 = 3;

/// The wireguard backend.
#[derive(Debug)]
pub(crate) struct Wireguard {
    host: HostInfo,
    cfg: WireguardConfig,
    public_key: wgc::Key,
    core: Arc<WgCore>,
    tun_name: String,
    net: Option<(Ipv4Net, Ipv4Net)>,
    leases: Vec<Lease>,
    dp: Option<WgDataplane>,
    skip: SkipLog,
}

impl Wireguard {
    /// Reads or creates the key; nothing else happens before [`Backend::start`].
    pub(crate) fn new(host: &HostInfo, cfg: &WireguardConfig) -> Result<Self> {
        if host.args.given.iter().any(|g| g == "accept_any_source") {
            anyhow::bail!(
                "--accept-any-source: does not apply to the wireguard backend (peers are \
                 identified by their keys, sources by their allowed IPs); remove the flag"
            );
        }
        let path = wgc::key_file_path();
        let private = wgc::load_or_create_key(&path).context("the wireguard private key")?;
        let public_key = wgc::public_key(&private);
        tracing::info!(key_file = %path.display(), public_key = %wgc::format_key(&public_key), "wireguard key");
        let core = Arc::new(WgCore::new(Identity {
            private_key: private,
            psk: cfg.psk,
            keepalive: cfg.persistent_keepalive,
        }));
        let tun_name = if host.args.given.iter().any(|g| g == "tun_name") {
            host.args.tun_name.clone()
        } else {
            DEVICE.to_string()
        };
        Ok(Wireguard {
            host: host.clone(),
            cfg: cfg.clone(),
            public_key,
            core,
            tun_name,
            net: None,
            leases: Vec::new(),
            dp: None,
            skip: SkipLog::default(),
        })
    }

    fn publish(&mut self) {
        let Some((network, local)) = self.net else {
            return;
        };
        let own_port = self.cfg.listen_port;
        let (peers, skipped) = super::usable(&self.leases, network, local, |l| {
            peer_config(l, super::engine_net(l.subnet), own_port)
        });
        let peers: Vec<PeerConfig> = peers.into_values().collect();
        let dup = self.core.set_peers(&peers);
        self.skip.report("wireguard", skipped + dup);
        tracing::debug!(peers = peers.len() - dup, "wireguard peers updated");
    }
}

/// A wireguard lease as a peer; `None` for another backend type or bad `BackendData`.
fn peer_config(l: &Lease, subnet: Ipv4Net, own_port: u16) -> Option<PeerConfig> {
    if !l.attrs.is_backend("wireguard") {
        return None;
    }
    match l.attrs.wireguard_data() {
        Ok(d) => Some(PeerConfig {
            public_key: d.public_key,
            endpoint: SocketAddrV4::new(
                l.attrs.public_ip,
                if d.port == 0 { own_port } else { d.port },
            ),
            allowed: subnet,
        }),
        Err(e) => {
            tracing::debug!(subnet = %l.subnet, "ignoring a wireguard lease: {e}");
            None
        }
    }
}

/// `ip route replace <network> dev <tun> scope link`, as flannel routes the overlay.
fn route_network(tun: &str, network: Ipv4Net) -> std::io::Result<()> {
    let mut nl = Netlink::new()?;
    let link = nl.link_by_name(tun)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{tun} vanished right after its creation"),
        )
    })?;
    nl.replace_route(&RouteSpec {
        dst: network.addr(),
        prefix: network.prefix(),
        gateway: None,
        oif: link.index,
        onlink: false,
        protocol: RTPROT_BOOT,
    })
}

impl Backend for Wireguard {
    fn name(&self) -> &'static str {
        "wireguard"
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs::wireguard(self.host.public_ip, &self.public_key, self.cfg.listen_port)
    }

    /// Base MTU (the config's `MTU`, else the underlay's) minus 80, as flannel.
    fn mtu(&self) -> u32 {
        self.cfg
            .mtu
            .unwrap_or(self.host.underlay.mtu)
            .saturating_sub(wgc::OVERHEAD)
    }

    fn start(&mut self, network: Ipv4Net, local: Ipv4Net) -> Result<()> {
        let args = &self.host.args;
        let offload: Offload = args.offload.into();
        let cfg = WgDataplaneConfig {
            tun_name: self.tun_name.clone(),
            mtu: self.mtu(),
            local,
            bind: SocketAddrV4::new(self.host.underlay.addr, self.cfg.listen_port),
            workers: args
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            batch_size: args.batch_size,
            socket_buffer: engine::dataplane::DEFAULT_SOCKET_BUFFER,
            offload,
        };
        let dp = WgDataplane::start(&cfg, Arc::clone(&self.core))
            .context("starting the wireguard data plane")?;
        route_network(&cfg.tun_name, network).with_context(|| {
            format!(
                "routing the overlay network {network} through {}",
                cfg.tun_name
            )
        })?;
        tracing::info!(
            backend = "wireguard",
            tun = %cfg.tun_name,
            mtu = cfg.mtu,
            address = %local.addr(),
            bind = %cfg.bind,
            workers = dp.workers(),
            udp_gso = dp.gso(),
            tun_offload = dp.tun_offload(),
            "data plane running"
        );
        self.dp = Some(dp);
        self.net = Some((network, local));
        self.publish();
        Ok(())
    }

    fn set_leases(&mut self, leases: &[Lease]) {
        self.leases = leases.to_vec();
        self.publish();
    }

    fn tick(&mut self) -> Result<()> {
        match &self.dp {
            Some(dp) if !dp.healthy() => {
                Err(anyhow::anyhow!("a wireguard worker stopped; exiting"))
            }
            _ => Ok(()),
        }
    }

    fn stats(&self) -> String {
        let Some(dp) = &self.dp else {
            return String::new();
        };
        let table = self.core.table();
        let handshaken = table
            .peers()
            .iter()
            .filter(|p| p.last_handshake().is_some())
            .count();
        let contended: u64 = table.peers().iter().map(|p| p.lock_contended()).sum();
        format!(
            " wg_peers={} wg_peers_with_session={handshaken} wg_lock_contended={contended} {}",
            table.peers().len(),
            dp.stats()
        )
    }

    fn dataplane(&self) -> Option<StatsSource> {
        None
    }

    fn stop(self: Box<Self>) -> String {
        self.dp.map(|dp| dp.stop().to_string()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn leases_become_peers_as_flannel_programs_them() {
        let key = wgc::public_key(&wgc::generate_private_key().expect("random"));
        let mut l = Lease {
            subnet: "10.5.7.0/24".parse().expect("valid"),
            ipv6_subnet: None,
            attrs: LeaseAttrs::wireguard(Ipv4Addr::new(192, 0, 2, 7), &key, 5000),
            expiration: None,
        };
        let subnet = super::super::engine_net(l.subnet);
        let p = peer_config(&l, subnet, 51_820).expect("a peer");
        assert_eq!(p.public_key, key);
        assert_eq!(p.endpoint, "192.0.2.7:5000".parse().expect("addr"));
        assert_eq!(p.allowed, subnet);
        // Port 0 (a peer older than v0.26.6): our own port.
        l.attrs = LeaseAttrs::wireguard(Ipv4Addr::new(192, 0, 2, 7), &key, 0);
        let p = peer_config(&l, subnet, 51_820).expect("a peer");
        assert_eq!(p.endpoint.port(), 51_820);
        // Another backend's lease is not a peer.
        l.attrs = LeaseAttrs::vxlan(Ipv4Addr::new(192, 0, 2, 7), 1, [2, 0, 0, 0, 0, 1]);
        assert!(peer_config(&l, subnet, 51_820).is_none());
    }
}
