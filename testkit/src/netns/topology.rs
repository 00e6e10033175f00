//! Two hosts with one container each, and flannel's kernel VXLAN device, on [`Netns`].
//!
//! # Addressing of [`two_hosts`] (interface names are fixed inside each namespace)
//! ```text
//!   ctr_a eth0 10.1.1.2/24            ctr_b eth0 10.1.2.2/24        (default via 10.1.x.1)
//!        |  veth                          |  veth
//!   host_a veth0 (Routed)             host_b veth0 (Routed)
//!      or br0 10.1.1.1/24 + port veth0   or br0 10.1.2.1/24 + port veth0 (Bridge, like cni0/docker0)
//!   host_a ul0 192.0.2.1/24           host_b ul0 192.0.2.2/24       edge ul0 192.0.2.3/24
//!        \__________________ wire: bridge sw0 (ports pa, pb, pe) __________/    (Underlay::Switched)
//!   or host_a ul0 <-veth-> host_b ul0 directly, no edge, no wire           (Underlay::Direct, as
//!                                                                            performance-anchors.md)
//! ```
//! Underlay MTU 1500. Overlay network 10.1.0.0/16; host_a leases 10.1.1.0/24, host_b 10.1.2.0/24.
//! Hosts have `ip_forward=1` and `rp_filter=0` (all, default and every interface created here).
//! The optional `edge` namespace sits on the same L2 underlay and is meant for injecting garbage datagrams.
//!
//! Backends: [`TwoHosts::add_hostgw_routes`] (`10.1.2.0/24 via 192.0.2.2 dev ul0` and mirror) and
//! [`TwoHosts::add_kernel_vxlan`] ([`add_flannel_vxlan`] on both hosts).

use super::{output_timeout, veth, Netns};
use std::fmt::Write as _;
use std::io;
use std::thread;
use std::time::{Duration, Instant};

/// Underlay addresses.
pub const HOST_A_UL: &str = "192.0.2.1";
/// host_b's underlay address.
pub const HOST_B_UL: &str = "192.0.2.2";
/// The edge namespace's underlay address.
pub const EDGE_UL: &str = "192.0.2.3";
/// Overlay network.
pub const OVERLAY_NET: &str = "10.1.0.0/16";
/// host_a's lease.
pub const SUBNET_A: &str = "10.1.1.0/24";
/// host_b's lease.
pub const SUBNET_B: &str = "10.1.2.0/24";
/// host_a's gateway address for its container.
pub const GW_A: &str = "10.1.1.1";
/// host_b's gateway address for its container.
pub const GW_B: &str = "10.1.2.1";
/// ctr_a's address.
pub const CTR_A: &str = "10.1.1.2";
/// ctr_b's address.
pub const CTR_B: &str = "10.1.2.2";
/// Underlay MTU.
pub const UNDERLAY_MTU: u32 = 1500;
/// Container MTU over VXLAN (50 bytes of overhead).
pub const VXLAN_MTU: u32 = 1450;
/// Container MTU over flannel's udp backend (28 bytes of overhead).
pub const UDP_BACKEND_MTU: u32 = 1472;
/// flannel's VXLAN device name.
pub const VXLAN_DEV: &str = "flannel.1";
/// flannel's default VNI.
pub const VXLAN_VNI: u32 = 1;
/// flannel's (and Linux's) VXLAN port, for tests that cannot see the daemon's constant
/// (`control::config::VXLAN_DEFAULT_PORT`; `tests/netns_topology.rs` checks that both agree).
pub const VXLAN_PORT: u16 = 8472;
/// host_a's VTEP MAC in [`TwoHosts::add_kernel_vxlan`].
pub const VXLAN_MAC_A: &str = "02:42:0a:01:01:00";
/// host_b's VTEP MAC in [`TwoHosts::add_kernel_vxlan`].
pub const VXLAN_MAC_B: &str = "02:42:0a:01:02:00";

/// host_a's IPv6 underlay address ([`TwoHosts::add_ipv6`]).
pub const HOST_A_UL6: &str = "fd00:192::1";
/// host_b's IPv6 underlay address.
pub const HOST_B_UL6: &str = "fd00:192::2";
/// The IPv6 overlay network (flannel's `IPv6Network`).
pub const OVERLAY_NET6: &str = "fc00::/48";
/// host_a's IPv6 lease.
pub const SUBNET6_A: &str = "fc00:0:0:1::/64";
/// host_b's IPv6 lease.
pub const SUBNET6_B: &str = "fc00:0:0:2::/64";
/// host_a's IPv6 gateway address for its container.
pub const GW6_A: &str = "fc00:0:0:1::1";
/// host_b's IPv6 gateway address for its container.
pub const GW6_B: &str = "fc00:0:0:2::1";
/// ctr_a's IPv6 address.
pub const CTR6_A: &str = "fc00:0:0:1::2";
/// ctr_b's IPv6 address.
pub const CTR6_B: &str = "fc00:0:0:2::2";
/// Container MTU over VXLAN on an IPv6 underlay (flannel: underlay MTU − 70).
pub const VXLAN6_MTU: u32 = 1430;
/// flannel's IPv6 VXLAN device name (`flannel-v6.<VNI>`).
pub const VXLAN6_DEV: &str = "flannel-v6.1";
/// host_a's IPv6 VTEP MAC in [`TwoHosts::add_kernel_vxlan6`].
pub const VXLAN6_MAC_A: &str = "02:42:fc:01:01:00";
/// host_b's IPv6 VTEP MAC in [`TwoHosts::add_kernel_vxlan6`].
pub const VXLAN6_MAC_B: &str = "02:42:fc:01:02:00";

/// `aa:bb:cc:dd:ee:ff`, as `ip` prints and takes a MAC.
pub fn mac_str(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The arguments of `weft run` without etcd on a host of [`TwoHosts`]: underlay `ul0`, network
/// [`OVERLAY_NET`], lease `subnet`, and the static `peer` (`<subnet>=<underlay ip>`; none if empty).
pub fn weft_run_args<'a>(subnet: &'a str, peer: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--iface",
        "ul0",
        "--network",
        OVERLAY_NET,
        "--subnet",
        subnet,
    ];
    if !peer.is_empty() {
        args.extend(["--peer", peer]);
    }
    args
}

/// One host's end of flannel's kernel VXLAN, as flannel's vxlan backend programs it.
#[derive(Debug, Clone, Copy)]
pub struct VxlanEnd<'a> {
    /// Underlay address (the device's `local`, the peer's FDB `dst`).
    pub underlay: &'a str,
    /// VTEP MAC.
    pub mac: &'a str,
    /// The lease's network address: the device's `/32` address and the peer's gateway.
    pub addr: &'a str,
    /// The lease (`10.1.1.0/24`).
    pub subnet: &'a str,
}

/// Programs `flannel.1` in `ns` exactly as flannel's vxlan backend does, with `peer` as its one
/// peer: [`add_flannel_vxlan_device`], then [`add_flannel_vxlan_peer`].
pub fn add_flannel_vxlan(ns: &Netns, own: VxlanEnd<'_>, peer: VxlanEnd<'_>) -> io::Result<()> {
    add_flannel_vxlan_device(ns, own)?;
    add_flannel_vxlan_peer(ns, peer)
}

/// flannel's `flannel.1` in `ns`: VNI [`VXLAN_VNI`], dstport [`VXLAN_PORT`] on `ul0`, local
/// `own.underlay`, address `own.mac`, nolearning, MTU [`VXLAN_MTU`], up, `own.addr/32`.
pub fn add_flannel_vxlan_device(ns: &Netns, own: VxlanEnd<'_>) -> io::Result<()> {
    let (vni, port, mtu) = (
        VXLAN_VNI.to_string(),
        VXLAN_PORT.to_string(),
        VXLAN_MTU.to_string(),
    );
    ns.ip(&[
        "link",
        "add",
        VXLAN_DEV,
        "address",
        own.mac,
        "type",
        "vxlan",
        "id",
        &vni,
        "local",
        own.underlay,
        "dev",
        "ul0",
        "dstport",
        &port,
        "nolearning",
    ])?;
    ns.ip(&["link", "set", VXLAN_DEV, "mtu", &mtu, "up"])?;
    ns.ip(&["addr", "add", &format!("{}/32", own.addr), "dev", VXLAN_DEV])?;
    Ok(())
}

/// What flannel programs on `flannel.1` in `ns` for one peer: an onlink route to its subnet via
/// its network address, a permanent neighbour for that address, `bridge fdb append` to its
/// underlay address.
pub fn add_flannel_vxlan_peer(ns: &Netns, peer: VxlanEnd<'_>) -> io::Result<()> {
    ns.ip(&[
        "route",
        "add",
        peer.subnet,
        "via",
        peer.addr,
        "dev",
        VXLAN_DEV,
        "onlink",
    ])?;
    ns.ip(&[
        "neigh",
        "replace",
        peer.addr,
        "lladdr",
        peer.mac,
        "dev",
        VXLAN_DEV,
        "nud",
        "permanent",
    ])?;
    ns.run(&[
        "bridge",
        "fdb",
        "append",
        peer.mac,
        "dev",
        VXLAN_DEV,
        "dst",
        peer.underlay,
        "self",
        "permanent",
    ])?;
    Ok(())
}

/// flannel's `flannel-v6.1` in `ns` with `peer` as its one peer, as flannel's vxlan backend
/// programs its IPv6 device: VNI [`VXLAN_VNI`], dstport [`VXLAN_PORT`] on `ul0`, local
/// `own.underlay` (IPv6), address `own.mac`, nolearning, MTU [`VXLAN6_MTU`], up, `own.addr/128`;
/// then an onlink route to the peer's subnet via its network address, a permanent neighbour for
/// that address and `bridge fdb append` to the peer's IPv6 underlay address.
pub fn add_flannel_vxlan6(ns: &Netns, own: VxlanEnd<'_>, peer: VxlanEnd<'_>) -> io::Result<()> {
    let (vni, port, mtu) = (
        VXLAN_VNI.to_string(),
        VXLAN_PORT.to_string(),
        VXLAN6_MTU.to_string(),
    );
    ns.ip(&[
        "link",
        "add",
        VXLAN6_DEV,
        "address",
        own.mac,
        "type",
        "vxlan",
        "id",
        &vni,
        "local",
        own.underlay,
        "dev",
        "ul0",
        "dstport",
        &port,
        "nolearning",
    ])?;
    ns.ip(&["link", "set", VXLAN6_DEV, "mtu", &mtu, "up"])?;
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/128", own.addr),
        "dev",
        VXLAN6_DEV,
        "nodad",
    ])?;
    ns.ip(&[
        "-6",
        "route",
        "add",
        peer.subnet,
        "via",
        peer.addr,
        "dev",
        VXLAN6_DEV,
        "onlink",
    ])?;
    ns.ip(&[
        "-6",
        "neigh",
        "replace",
        peer.addr,
        "lladdr",
        peer.mac,
        "dev",
        VXLAN6_DEV,
        "nud",
        "permanent",
    ])?;
    ns.run(&[
        "bridge",
        "fdb",
        "append",
        peer.mac,
        "dev",
        VXLAN6_DEV,
        "dst",
        peer.underlay,
        "self",
        "permanent",
    ])?;
    Ok(())
}

/// How a container attaches to its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// Behind a Linux bridge `br0` holding the gateway address (like cni0/docker0).
    Bridge,
    /// A routed veth pair, gateway address on the host end `veth0` (as performance-anchors.md).
    Routed,
}

/// How the two hosts are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underlay {
    /// A bridge `sw0` in a `wire` namespace joining host_a, host_b and `edge` (default of [`two_hosts`]).
    Switched,
    /// One veth pair host_a `ul0` <-> host_b `ul0`, no edge (the anchors' topology; for benchmarks).
    Direct,
}

/// Two hosts with one container each; see the module doc for the addressing.
/// Field order is drop order: containers, hosts, edge, wire.
#[derive(Debug)]
pub struct TwoHosts {
    /// The container behind host_a.
    pub ctr_a: Netns,
    /// The container behind host_b.
    pub ctr_b: Netns,
    /// The first host.
    pub host_a: Netns,
    /// The second host.
    pub host_b: Netns,
    /// On the underlay as 192.0.2.3 (only with [`Underlay::Switched`]).
    pub edge: Option<Netns>,
    /// Holds the underlay switch (only with [`Underlay::Switched`]).
    pub wire: Option<Netns>,
    /// How the containers attach.
    pub attach: Attach,
}

/// [`two_hosts_with`] on a switched underlay (with the `edge` namespace).
pub fn two_hosts(attach: Attach) -> io::Result<TwoHosts> {
    two_hosts_with(attach, Underlay::Switched)
}

/// Builds the topology of the module doc. On error everything created so far is removed again.
pub fn two_hosts_with(attach: Attach, underlay: Underlay) -> io::Result<TwoHosts> {
    let switched = underlay == Underlay::Switched;
    let t = TwoHosts {
        ctr_a: Netns::new("ctra")?,
        ctr_b: Netns::new("ctrb")?,
        host_a: Netns::new("hosta")?,
        host_b: Netns::new("hostb")?,
        edge: if switched {
            Some(Netns::new("edge")?)
        } else {
            None
        },
        wire: if switched {
            Some(Netns::new("wire")?)
        } else {
            None
        },
        attach,
    };
    for h in [&t.host_a, &t.host_b] {
        h.enable_forwarding()?;
    }
    let mtu = UNDERLAY_MTU.to_string();
    match (&t.wire, &t.edge) {
        (Some(wire), Some(edge)) => {
            wire.ip(&["link", "add", "sw0", "type", "bridge"])?;
            wire.ip(&["link", "set", "sw0", "up"])?;
            for (ns, port, addr) in [
                (&t.host_a, "pa", HOST_A_UL),
                (&t.host_b, "pb", HOST_B_UL),
                (edge, "pe", EDGE_UL),
            ] {
                veth(ns, "ul0", wire, port)?;
                wire.ip(&["link", "set", port, "mtu", &mtu, "master", "sw0", "up"])?;
                ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "ul0"])?;
                ns.ip(&["link", "set", "ul0", "mtu", &mtu, "up"])?;
            }
        }
        _ => {
            veth(&t.host_a, "ul0", &t.host_b, "ul0")?;
            for (ns, addr) in [(&t.host_a, HOST_A_UL), (&t.host_b, HOST_B_UL)] {
                ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "ul0"])?;
                ns.ip(&["link", "set", "ul0", "mtu", &mtu, "up"])?;
            }
        }
    }
    for (host, ctr, gw, addr) in [
        (&t.host_a, &t.ctr_a, GW_A, CTR_A),
        (&t.host_b, &t.ctr_b, GW_B, CTR_B),
    ] {
        veth(ctr, "eth0", host, "veth0")?;
        let gw_dev = match attach {
            Attach::Bridge => {
                host.ip(&["link", "add", "br0", "type", "bridge"])?;
                host.ip(&["link", "set", "veth0", "master", "br0", "up"])?;
                host.ip(&["link", "set", "br0", "up"])?;
                "br0"
            }
            Attach::Routed => {
                host.ip(&["link", "set", "veth0", "up"])?;
                "veth0"
            }
        };
        host.ip(&["addr", "add", &format!("{gw}/24"), "dev", gw_dev])?;
        ctr.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ctr.ip(&["link", "set", "eth0", "up"])?;
        ctr.ip(&["route", "add", "default", "via", gw])?;
        for dev in ["ul0", "veth0", "br0"] {
            if dev != "br0" || attach == Attach::Bridge {
                host.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0")?;
            }
        }
    }
    Ok(t)
}

impl TwoHosts {
    /// Sets the MTU of both ends of each container link (and `br0`), as flannel's CNI plugin would.
    pub fn set_container_mtu(&self, mtu: u32) -> io::Result<()> {
        let m = mtu.to_string();
        for (host, ctr) in [(&self.host_a, &self.ctr_a), (&self.host_b, &self.ctr_b)] {
            ctr.ip(&["link", "set", "eth0", "mtu", &m])?;
            host.ip(&["link", "set", "veth0", "mtu", &m])?;
            if self.attach == Attach::Bridge {
                host.ip(&["link", "set", "br0", "mtu", &m])?;
            }
        }
        Ok(())
    }

    /// host-gw backend: `ip route add <peer subnet> via <peer underlay> dev ul0` on both hosts.
    pub fn add_hostgw_routes(&self) -> io::Result<()> {
        self.hostgw_routes("add")
    }

    /// Removes the host-gw routes again.
    pub fn remove_hostgw_routes(&self) -> io::Result<()> {
        self.hostgw_routes("del")
    }

    /// `ip route <op> <peer subnet> via <peer underlay> dev ul0` on both hosts.
    fn hostgw_routes(&self, op: &str) -> io::Result<()> {
        for (host, subnet, via) in [
            (&self.host_a, SUBNET_B, HOST_B_UL),
            (&self.host_b, SUBNET_A, HOST_A_UL),
        ] {
            host.ip(&["route", op, subnet, "via", via, "dev", "ul0"])?;
        }
        Ok(())
    }

    /// Kernel VXLAN exactly as flannel's vxlan backend programs it ([`add_flannel_vxlan`] on both
    /// hosts, performance-anchors.md (2)).
    pub fn add_kernel_vxlan(&self) -> io::Result<()> {
        let a = VxlanEnd {
            underlay: HOST_A_UL,
            mac: VXLAN_MAC_A,
            addr: "10.1.1.0",
            subnet: SUBNET_A,
        };
        let b = VxlanEnd {
            underlay: HOST_B_UL,
            mac: VXLAN_MAC_B,
            addr: "10.1.2.0",
            subnet: SUBNET_B,
        };
        add_flannel_vxlan(&self.host_a, a, b)?;
        add_flannel_vxlan(&self.host_b, b, a)
    }

    /// Deletes `flannel.1` on both hosts (its route, neighbour and FDB entries go with it).
    pub fn remove_kernel_vxlan(&self) -> io::Result<()> {
        self.host_a.ip(&["link", "del", VXLAN_DEV])?;
        self.host_b.ip(&["link", "del", VXLAN_DEV])?;
        Ok(())
    }

    /// IPv6 beside the IPv4 addressing: [`HOST_A_UL6`]/[`HOST_B_UL6`] `/64` on `ul0`, the
    /// gateways [`GW6_A`]/[`GW6_B`] `/64` where the IPv4 gateways are, the containers
    /// [`CTR6_A`]/[`CTR6_B`] `/64` with a default route via their gateway, IPv6 forwarding on
    /// in the hosts. Every address `nodad` (usable at once).
    pub fn add_ipv6(&self) -> io::Result<()> {
        let gw_dev = if self.attach == Attach::Bridge {
            "br0"
        } else {
            "veth0"
        };
        for (host, ul, ctr, gw, addr) in [
            (&self.host_a, HOST_A_UL6, &self.ctr_a, GW6_A, CTR6_A),
            (&self.host_b, HOST_B_UL6, &self.ctr_b, GW6_B, CTR6_B),
        ] {
            host.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            host.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ul}/64"),
                "dev",
                "ul0",
                "nodad",
            ])?;
            host.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{gw}/64"),
                "dev",
                gw_dev,
                "nodad",
            ])?;
            ctr.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ctr.ip(&["-6", "route", "add", "default", "via", gw])?;
        }
        Ok(())
    }

    /// Kernel VXLAN over the IPv6 underlay with inner IPv6, as flannel's vxlan backend programs
    /// `flannel-v6.1` ([`add_flannel_vxlan6`] on both hosts; needs [`TwoHosts::add_ipv6`]).
    pub fn add_kernel_vxlan6(&self) -> io::Result<()> {
        let a = VxlanEnd {
            underlay: HOST_A_UL6,
            mac: VXLAN6_MAC_A,
            addr: "fc00:0:0:1::",
            subnet: SUBNET6_A,
        };
        let b = VxlanEnd {
            underlay: HOST_B_UL6,
            mac: VXLAN6_MAC_B,
            addr: "fc00:0:0:2::",
            subnet: SUBNET6_B,
        };
        add_flannel_vxlan6(&self.host_a, a, b)?;
        add_flannel_vxlan6(&self.host_b, b, a)
    }

    /// `ping -6 -c 1 -W 1` from ctr_a to [`CTR6_B`] until it answers or `timeout` passes.
    pub fn wait_ping6(&self, timeout: Duration) -> io::Result<()> {
        self.wait_ping_to(CTR6_B, timeout)
    }

    /// `ping -c <count> -W 2` from ctr_a to ctr_b and from ctr_b to ctr_a; `Err` names the direction.
    pub fn ping_both_ways(&self, count: u32) -> io::Result<()> {
        let count = count.to_string();
        for (from, name, to) in [(&self.ctr_a, "ctr_a", CTR_B), (&self.ctr_b, "ctr_b", CTR_A)] {
            from.run(&["ping", "-n", "-c", &count, "-W", "2", to])
                .map_err(|e| io::Error::new(e.kind(), format!("{name} pings {to}: {e}")))?;
        }
        Ok(())
    }

    /// `ping -c 1 -W 1` from ctr_a to ctr_b until it answers or `timeout` passes.
    pub fn wait_ping(&self, timeout: Duration) -> io::Result<()> {
        self.wait_ping_to(CTR_B, timeout)
    }

    /// `ping -c 1 -W 1` from ctr_a to `dst` (IPv4 or IPv6) until it answers or `timeout` passes.
    fn wait_ping_to(&self, dst: &str, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = output_timeout(
                self.ctr_a
                    .cmd("ping")
                    .args(["-n", "-c", "1", "-W", "1", dst]),
                Duration::from_secs(5),
            )?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{dst} not reachable from ctr_a within {timeout:?}: {}",
                        String::from_utf8_lossy(&out.stdout).trim()
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// All namespace names (for asserting they are gone after drop).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = [&self.ctr_a, &self.ctr_b, &self.host_a, &self.host_b]
            .iter()
            .map(|n| n.name().to_string())
            .collect();
        v.extend(
            self.edge
                .iter()
                .chain(self.wire.iter())
                .map(|n| n.name().to_string()),
        );
        v
    }

    /// A short description of the topology (for reports).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "attach={:?} underlay={}",
            self.attach,
            if self.wire.is_some() {
                "switched"
            } else {
                "direct"
            }
        );
        s
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        // Stop every process first (daemons may still be forwarding), then the fields drop and delete.
        for ns in [&self.ctr_a, &self.ctr_b, &self.host_a, &self.host_b] {
            ns.kill_all();
        }
        for ns in self.edge.iter().chain(self.wire.iter()) {
            ns.kill_all();
        }
    }
}
