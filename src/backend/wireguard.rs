//! flannel's wireguard backend, carried by weft's engine ([`engine::wg`]) instead of kernel
//! WireGuard, wire-compatible with hosts running flannel on kernel WireGuard.
//!
//! As flannel: the private key comes from `/run/flannel/wgkey` (or `$WIREGUARD_KEY_FILE`),
//! created on first start; our lease publishes `{"PublicKey":..,"Port":<ListenPort>}` in
//! `BackendData` (IPv4 enabled) and `{"PublicKey":..,"Port":<ListenPortV6>}` in `BackendV6Data`
//! (IPv6 enabled); every wireguard lease becomes a peer with the network's PSK and keepalive;
//! devices get MTU base − 80, our subnet's network address (/32, /128) and the route of the
//! overlay network of their family. Lease changes add, change and remove peers live; a peer
//! whose key stays keeps its session.
//!
//! Device layout by `Mode` (docs/compatibility.md §2.4):
//!
//! | Mode | devices | sockets | peer |
//! |---|---|---|---|
//! | `separate` | `flannel-wg` (IPv4), `flannel-wg-v6` (IPv6), each if its family is on | v4 on `ListenPort`; v6 on `ListenPortV6` | one per device: `PublicIP:Port`, v4 subnet; `[PublicIPv6]:Port6`, v6 subnet |
//! | `auto`, `ipv4`, `ipv6` | `flannel-wg`, both families | v4 on `ListenPort`, v6 on `ListenPortV6` | one with both subnets, endpoint by mode |
//!
//! Port 0 in a peer's data (flannel before v0.26.6) means our own port of that family.

use super::family::usable_of;
use super::{Backend, HostInfo, SkipLog};
use crate::netlink::{Netlink, NlAddr, RouteSpec};
use anyhow::{Context, Result};
use control::subnet::Ipv6Net as CIpv6Net;
use control::wireguard::{self as wgc, Mode, WireguardConfig};
use control::{Lease, LeaseAttrs};
use engine::udp::Offload;
use engine::wg::{Identity, PeerConfig, WgCore, WgDataplane, WgDataplaneConfig};
use engine::{Ipv4Net, Ipv6Net, StatsSource};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

/// flannel's device name (IPv4 in `separate` mode, both families in the others).
pub(crate) const DEVICE: &str = "flannel-wg";
/// flannel's IPv6 device name in `separate` mode.
pub(crate) const DEVICE_V6: &str = "flannel-wg-v6";
/// `RTPROT_BOOT`: what netlink's RouteReplace gives a route when no protocol is set, as
/// flannel's network routes have.
const RTPROT_BOOT: u8 = 3;

/// One WireGuard device: its name, the families it carries and its running data plane.
#[derive(Debug)]
struct Device {
    name: String,
    /// Carries inner IPv4 (its peers' IPv4 subnets; an IPv4 socket on `ListenPort`).
    v4: bool,
    /// Carries inner IPv6 (an IPv6 socket on `ListenPortV6`).
    v6: bool,
    core: Arc<WgCore>,
    dp: Option<WgDataplane>,
}

/// The wireguard backend.
#[derive(Debug)]
pub(crate) struct Wireguard {
    host: HostInfo,
    cfg: WireguardConfig,
    public_key: wgc::Key,
    /// `separate`: the IPv4 device and the IPv6 device, each if its family is on; otherwise
    /// the one device.
    devices: Vec<Device>,
    net: Option<(Ipv4Net, Ipv4Net)>,
    net6: Option<(CIpv6Net, CIpv6Net)>,
    started: bool,
    leases: Vec<Lease>,
    skip: SkipLog,
}

/// The engine's form of a control-plane IPv6 prefix.
fn engine_net6(n: CIpv6Net) -> Ipv6Net {
    Ipv6Net::new(n.addr(), n.prefix_len()).expect("control::Ipv6Net keeps its prefix at most 128")
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
        let ipv6 = host.public_ipv6.is_some();
        match cfg.mode {
            Mode::Ipv6 if !ipv6 => anyhow::bail!(
                "Backend.Mode \"ipv6\": IPv6 endpoints need an IPv6 network (EnableIPv6 and \
                 IPv6Network); use \"separate\" or \"ipv4\""
            ),
            Mode::Ipv4 if !host.ipv4 => anyhow::bail!(
                "Backend.Mode \"ipv4\": IPv4 endpoints need an IPv4 network, and EnableIPv4 is \
                 false; use \"separate\", \"auto\" or \"ipv6\""
            ),
            _ => {}
        }
        let path = wgc::key_file_path();
        let private = wgc::load_or_create_key(&path).context("the wireguard private key")?;
        let public_key = wgc::public_key(&private);
        tracing::info!(key_file = %path.display(), public_key = %wgc::format_key(&public_key), "wireguard key");
        let core = || {
            Arc::new(WgCore::new(Identity {
                private_key: private,
                psk: cfg.psk,
                keepalive: cfg.persistent_keepalive,
            }))
        };
        let named = host.args.given.iter().any(|g| g == "tun_name");
        let name = if named {
            host.args.tun_name.clone()
        } else {
            DEVICE.to_string()
        };
        let name6 = if named {
            format!("{}-v6", host.args.tun_name)
        } else {
            DEVICE_V6.to_string()
        };
        let device = |name: String, v4: bool, v6: bool| Device {
            name,
            v4,
            v6,
            core: core(),
            dp: None,
        };
        let devices = if cfg.mode.single_device() {
            vec![device(name, host.ipv4, ipv6)]
        } else {
            let mut d = Vec::new();
            if host.ipv4 {
                d.push(device(name, true, false));
            }
            if ipv6 {
                d.push(device(name6, false, true));
            }
            d
        };
        Ok(Wireguard {
            host: host.clone(),
            cfg: cfg.clone(),
            public_key,
            devices,
            net: None,
            net6: None,
            started: false,
            leases: Vec::new(),
            skip: SkipLog::default(),
        })
    }

    fn publish(&mut self) {
        if !self.started {
            return;
        }
        let mut skipped = 0;
        let layout = Layout {
            mode: self.cfg.mode,
            port: self.cfg.listen_port,
            port6: self.cfg.listen_port_v6,
            own_v4: self.host.ipv4.then_some(self.host.public_ip),
            own_v6: self.host.public_ipv6,
            net: self.net,
            net6: self.net6,
        };
        for dev in &self.devices {
            let (peers, s) = layout.peers(&self.leases, dev.v4, dev.v6);
            let dup = dev.core.set_peers(&peers);
            skipped = skipped.max(s + dup);
            tracing::debug!(device = %dev.name, peers = peers.len() - dup, "wireguard peers updated");
        }
        self.skip.report("wireguard", skipped);
    }
}

/// What the peers of a device follow from: the mode, our ports and addresses, the networks.
#[derive(Debug, Clone, Copy)]
struct Layout {
    mode: Mode,
    /// `ListenPort` (a peer's IPv4 Port 0 means this).
    port: u16,
    /// `ListenPortV6` (a peer's IPv6 Port 0 means this).
    port6: u16,
    own_v4: Option<Ipv4Addr>,
    own_v6: Option<Ipv6Addr>,
    net: Option<(Ipv4Net, Ipv4Net)>,
    net6: Option<(CIpv6Net, CIpv6Net)>,
}

impl Layout {
    /// The peers of a device carrying IPv4 (`v4`) and/or IPv6 (`v6`): one per usable lease,
    /// with the subnets of the families the device carries and the endpoint the mode picks.
    /// Returns them and how many leases gave none.
    fn peers(&self, leases: &[Lease], v4: bool, v6: bool) -> (Vec<PeerConfig>, usize) {
        type V4 = (Ipv4Net, SocketAddrV4, wgc::Key);
        type V6 = (Ipv6Net, SocketAddrV6, wgc::Key);
        let port = self.port;
        let by4: BTreeMap<String, V4> = match self.net {
            Some((network, local)) if v4 => {
                let (m, _) = super::usable(leases, network, local, |l| {
                    v4_peer(l, port)
                        .map(|(ep, key)| (l.key(), (super::engine_net(l.subnet), ep, key)))
                });
                m.into_values().collect()
            }
            _ => BTreeMap::new(),
        };
        let port6 = self.port6;
        let by6: BTreeMap<String, V6> = match self.net6 {
            Some((network, local)) if v6 => {
                let (m, _) = usable_of(leases, network, local, |l, ip6| {
                    let subnet = engine_net6(l.ipv6_subnet?);
                    v6_peer(l, ip6, port6).map(|(ep, key)| (l.key(), (subnet, ep, key)))
                });
                m.into_values().collect()
            }
            _ => BTreeMap::new(),
        };
        let mut keys: Vec<&String> = by4.keys().chain(by6.keys()).collect();
        keys.sort();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let (a, b) = (by4.get(k), by6.get(k));
            let endpoint = match (self.mode, a, b) {
                (Mode::Separate | Mode::Ipv4, Some(a), _) => SocketAddr::V4(a.1),
                (Mode::Separate | Mode::Ipv6, _, Some(b)) => SocketAddr::V6(b.1),
                (Mode::Auto, Some(a), Some(b)) => {
                    if wgc::auto_prefers_ipv6(
                        Some(*a.1.ip()),
                        Some(*b.1.ip()),
                        self.own_v4,
                        self.own_v6,
                    ) {
                        SocketAddr::V6(b.1)
                    } else {
                        SocketAddr::V4(a.1)
                    }
                }
                (Mode::Auto, Some(a), None) => SocketAddr::V4(a.1),
                (Mode::Auto, None, Some(b)) => SocketAddr::V6(b.1),
                // No endpoint of the mode's family (`ipv6` mode, a peer without IPv6): as
                // flannel, no peer.
                _ => continue,
            };
            let Some(public_key) = a.map(|a| a.2).or(b.map(|b| b.2)) else {
                continue;
            };
            out.push(PeerConfig {
                public_key,
                endpoint,
                allowed: a.map(|a| a.0),
                allowed6: b.map(|b| b.0),
            });
        }
        let skipped = leases.len().saturating_sub(out.len());
        (out, skipped)
    }
}

/// A wireguard lease's IPv4 endpoint and key (`PublicIP`, `BackendData`); `None` for another
/// backend type or bad data. Port 0 (a peer older than flannel v0.26.6) means `own_port`.
fn v4_peer(l: &Lease, own_port: u16) -> Option<(SocketAddrV4, wgc::Key)> {
    if !l.attrs.is_backend("wireguard") || l.attrs.public_ip.is_unspecified() {
        return None;
    }
    match l.attrs.wireguard_data() {
        Ok(d) => Some((
            SocketAddrV4::new(
                l.attrs.public_ip,
                if d.port == 0 { own_port } else { d.port },
            ),
            d.public_key,
        )),
        Err(e) => {
            tracing::debug!(key = %l.key(), "ignoring a wireguard lease: {e}");
            None
        }
    }
}

/// The same for IPv6 (`PublicIPv6` given as `ip6`, `BackendV6Data`).
fn v6_peer(l: &Lease, ip6: Ipv6Addr, own_port: u16) -> Option<(SocketAddrV6, wgc::Key)> {
    if !l.attrs.is_backend("wireguard") {
        return None;
    }
    match l.attrs.wireguard_v6_data() {
        Ok(d) => Some((
            SocketAddrV6::new(ip6, if d.port == 0 { own_port } else { d.port }, 0, 0),
            d.public_key,
        )),
        Err(e) => {
            tracing::debug!(key = %l.key(), "ignoring the IPv6 part of a wireguard lease: {e}");
            None
        }
    }
}

/// `ip route replace <network> dev <tun>`, as flannel routes the overlay of each family.
fn route_network<A: NlAddr>(tun: &str, dst: A, prefix: u8) -> std::io::Result<()> {
    let mut nl = Netlink::new()?;
    let link = nl.link_by_name(tun)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{tun} vanished right after its creation"),
        )
    })?;
    let spec = RouteSpec {
        dst,
        prefix,
        gateway: None,
        oif: link.index,
        onlink: false,
        protocol: RTPROT_BOOT,
    };
    if A::BITS == 128 {
        nl.replace_device_route(&spec)
    } else {
        nl.replace_route(&spec)
    }
}

impl Backend for Wireguard {
    fn name(&self) -> &'static str {
        "wireguard"
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        match self.host.public_ipv6 {
            Some(ip6) => LeaseAttrs::wireguard_dual(
                self.host.public_ip,
                ip6,
                &self.public_key,
                self.host.ipv4.then_some(self.cfg.listen_port),
                self.cfg.listen_port_v6,
            ),
            None => {
                LeaseAttrs::wireguard(self.host.public_ip, &self.public_key, self.cfg.listen_port)
            }
        }
    }

    /// Base MTU (the config's `MTU`, else the underlay's) minus 80, as flannel, for every
    /// device.
    fn mtu(&self) -> u32 {
        self.cfg
            .mtu
            .unwrap_or(self.host.underlay.mtu)
            .saturating_sub(wgc::OVERHEAD)
    }

    fn set_ipv6_subnet(&mut self, network: CIpv6Net, local: CIpv6Net) -> Result<()> {
        self.net6 = Some((network, local));
        Ok(())
    }

    fn start(&mut self, network: Ipv4Net, local: Ipv4Net) -> Result<()> {
        let args = &self.host.args;
        let offload: Offload = args.offload.into();
        let workers = args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mtu = self.mtu();
        for dev in &mut self.devices {
            let v6 = match (dev.v6, self.net6, self.host.public_ipv6) {
                (false, ..) => None,
                (true, Some((network6, local6)), Some(ip6)) => {
                    Some((engine_net6(network6), engine_net6(local6), ip6))
                }
                (true, ..) => anyhow::bail!(
                    "wireguard: {} carries IPv6 but the IPv6 subnet or public address is unknown",
                    dev.name
                ),
            };
            let cfg = WgDataplaneConfig {
                tun_name: dev.name.clone(),
                mtu,
                local: dev.v4.then_some(local),
                local6: v6.map(|v| v.1),
                bind: dev
                    .v4
                    .then(|| SocketAddrV4::new(self.host.underlay.addr, self.cfg.listen_port)),
                bind6: v6.map(|v| SocketAddrV6::new(v.2, self.cfg.listen_port_v6, 0, 0)),
                workers,
                batch_size: args.batch_size,
                socket_buffer: engine::dataplane::DEFAULT_SOCKET_BUFFER,
                offload,
            };
            let dp = WgDataplane::start(&cfg, Arc::clone(&dev.core))
                .with_context(|| format!("starting the wireguard data plane of {}", dev.name))?;
            if dev.v4 {
                route_network(&dev.name, network.addr(), network.prefix()).with_context(|| {
                    format!("routing the overlay network {network} through {}", dev.name)
                })?;
            }
            if let Some((network6, ..)) = v6 {
                route_network(&dev.name, network6.addr(), network6.prefix()).with_context(
                    || {
                        format!(
                            "routing the IPv6 overlay network {network6} through {}",
                            dev.name
                        )
                    },
                )?;
            }
            tracing::info!(
                backend = "wireguard",
                mode = ?self.cfg.mode,
                tun = %dev.name,
                mtu,
                address = ?cfg.local.map(|l| l.addr()),
                address6 = ?cfg.local6.map(|l| l.addr()),
                bind = ?cfg.bind,
                bind6 = ?cfg.bind6,
                workers = dp.workers(),
                udp_gso = dp.gso(),
                tun_offload = dp.tun_offload(),
                "data plane running"
            );
            dev.dp = Some(dp);
        }
        if self.host.ipv4 {
            self.net = Some((network, local));
        }
        self.started = true;
        self.publish();
        Ok(())
    }

    fn set_leases(&mut self, leases: &[Lease]) {
        self.leases = leases.to_vec();
        self.publish();
    }

    fn tick(&mut self) -> Result<()> {
        for dev in &self.devices {
            if dev.dp.as_ref().is_some_and(|dp| !dp.healthy()) {
                anyhow::bail!("a wireguard worker of {} stopped; exiting", dev.name);
            }
        }
        Ok(())
    }

    fn stats(&self) -> String {
        self.wireguard()
            .map(|s| crate::metrics::line(&crate::metrics::wireguard(&s)))
            .unwrap_or_default()
    }

    fn dataplane(&self) -> Option<StatsSource> {
        None
    }

    fn wireguard(&self) -> Option<engine::wg::WgStatsSource> {
        self.devices
            .iter()
            .filter_map(|d| d.dp.as_ref().map(WgDataplane::stats_source))
            .reduce(engine::wg::WgStatsSource::join)
    }

    fn stop(self: Box<Self>) -> String {
        self.devices
            .into_iter()
            .filter_map(|d| d.dp.map(|dp| format!("{}: {}", d.name, dp.stop())))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> wgc::Key {
        wgc::public_key(&wgc::generate_private_key().expect("random"))
    }

    fn lease(v4: &str, v6: Option<&str>, ip: [u8; 4], ip6: Option<&str>, k: &wgc::Key) -> Lease {
        let ip = Ipv4Addr::from(ip);
        Lease {
            subnet: v4.parse().expect("valid"),
            ipv6_subnet: v6.map(|s| s.parse().expect("valid")),
            attrs: match ip6 {
                Some(a) => LeaseAttrs::wireguard_dual(
                    ip,
                    a.parse().expect("valid"),
                    k,
                    (!ip.is_unspecified()).then_some(5000),
                    6000,
                ),
                None => LeaseAttrs::wireguard(ip, k, 5000),
            },
            expiration: None,
        }
    }

    fn layout(mode: Mode, own6: &str) -> Layout {
        Layout {
            mode,
            port: 51_820,
            port6: 51_821,
            own_v4: Some(Ipv4Addr::new(10, 0, 0, 1)),
            own_v6: Some(own6.parse().expect("valid")),
            net: Some((
                "10.5.0.0/16".parse().expect("valid"),
                "10.5.1.0/24".parse().expect("valid"),
            )),
            net6: Some((
                "fc00:5::/48".parse().expect("valid"),
                "fc00:5:0:1::/64".parse().expect("valid"),
            )),
        }
    }

    #[test]
    fn leases_become_peers_as_flannel_programs_them() {
        let k = key();
        let mut l = lease("10.5.7.0/24", None, [192, 0, 2, 7], None, &k);
        let (ep, got) = v4_peer(&l, 51_820).expect("a peer");
        assert_eq!((ep, got), ("192.0.2.7:5000".parse().expect("addr"), k));
        // Port 0 (a peer older than v0.26.6): our own port.
        l.attrs = LeaseAttrs::wireguard(Ipv4Addr::new(192, 0, 2, 7), &k, 0);
        assert_eq!(v4_peer(&l, 51_820).expect("a peer").0.port(), 51_820);
        assert!(
            v6_peer(&l, "fd00::7".parse().expect("ip"), 51_821).is_none(),
            "no BackendV6Data"
        );
        // Another backend's lease is not a peer.
        l.attrs = LeaseAttrs::vxlan(Ipv4Addr::new(192, 0, 2, 7), 1, [2, 0, 0, 0, 0, 1]);
        assert!(v4_peer(&l, 51_820).is_none());
    }

    #[test]
    fn separate_mode_gives_each_device_its_family() {
        let (k2, k3) = (key(), key());
        let leases = [
            lease(
                "10.5.2.0/24",
                Some("fc00:5:0:2::/64"),
                [10, 0, 0, 2],
                Some("fd00::2"),
                &k2,
            ),
            // No IPv6 part: a peer of the IPv4 device only.
            lease("10.5.3.0/24", None, [10, 0, 0, 3], None, &k3),
        ];
        let l = layout(Mode::Separate, "fd00::1");
        let (p4, skipped) = l.peers(&leases, true, false);
        assert_eq!(skipped, 0);
        assert_eq!(p4.len(), 2);
        assert_eq!(
            p4[0].endpoint,
            "10.0.0.2:5000".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(p4[0].allowed, Some("10.5.2.0/24".parse().expect("valid")));
        assert_eq!(p4[0].allowed6, None);
        let (p6, skipped) = l.peers(&leases, false, true);
        assert_eq!(skipped, 1);
        assert_eq!(p6.len(), 1);
        assert_eq!(p6[0].public_key, k2);
        assert_eq!(
            p6[0].endpoint,
            "[fd00::2]:6000".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            (p6[0].allowed, p6[0].allowed6),
            (None, Some("fc00:5:0:2::/64".parse().expect("valid")))
        );
    }

    #[test]
    fn single_device_modes_pick_the_endpoint_and_carry_both_subnets() {
        let k2 = key();
        let leases = [lease(
            "10.5.2.0/24",
            Some("fc00:5:0:2::/64"),
            [10, 0, 0, 2],
            Some("2001:db8::2"),
            &k2,
        )];
        let both = |p: &PeerConfig| {
            assert_eq!(p.allowed, Some("10.5.2.0/24".parse().expect("valid")));
            assert_eq!(p.allowed6, Some("fc00:5:0:2::/64".parse().expect("valid")));
            p.endpoint
        };
        let v4: SocketAddr = "10.0.0.2:5000".parse().expect("addr");
        let v6: SocketAddr = "[2001:db8::2]:6000".parse().expect("addr");
        let (p, _) = layout(Mode::Ipv4, "2001:db8::1").peers(&leases, true, true);
        assert_eq!(both(&p[0]), v4);
        let (p, _) = layout(Mode::Ipv6, "2001:db8::1").peers(&leases, true, true);
        assert_eq!(both(&p[0]), v6);
        // auto: private IPv4, global IPv6 on both sides → IPv6; our IPv6 unique-local → IPv4.
        let (p, _) = layout(Mode::Auto, "2001:db8::1").peers(&leases, true, true);
        assert_eq!(both(&p[0]), v6);
        let (p, _) = layout(Mode::Auto, "fd00::1").peers(&leases, true, true);
        assert_eq!(both(&p[0]), v4);
        // ipv6 mode and a peer without IPv6: no peer.
        let v4only = [lease("10.5.3.0/24", None, [10, 0, 0, 3], None, &k2)];
        let (p, skipped) = layout(Mode::Ipv6, "2001:db8::1").peers(&v4only, true, true);
        assert!(p.is_empty());
        assert_eq!(skipped, 1);
    }
}
