//! End-to-end tests of the backends (udp, kernel vxlan with and without DirectRouting,
//! userspace vxlan, host-gw) against a real etcd in its own namespace, with weft hosts on a
//! shared underlay switch (see `support/cluster.rs`). Root is required (namespaces, TUN, vxlan).
//!
//! Every test builds its own [`Cluster`]; daemons are declared after it, so they stop before the
//! namespaces go, also when a test panics. Every wait is bounded.

mod support;

use std::time::{Duration, Instant};
use support::cluster::{Cluster, PREFIX};
use support::daemon::Daemon;
use testkit::netns::{self, VxlanEnd};
use testkit::wait::within;

const VXLAN: &str = r#"{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
const VXLAN_USER: &str =
    r#"{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","Userspace":true}}"#;
const VXLAN_DIRECT: &str =
    r#"{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","DirectRouting":true}}"#;
const HOST_GW: &str = r#"{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#;
const UDP: &str = r#"{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"}}"#;
/// Time a lease change may take to reach the kernel of another host.
const PROPAGATION: Duration = Duration::from_secs(10);
/// Bytes of each checked TCP transfer.
const TRANSFER_BYTES: u64 = 32 << 20;

/// The network address of host `i`'s subnet, `10.1.X.0`.
fn net_addr(c: &Cluster, i: usize) -> String {
    c.subnet(i).trim_end_matches("/24").to_string()
}

/// `ip <args>` in host `i`'s namespace.
fn ip(c: &Cluster, i: usize, args: &[&str]) -> String {
    c.hosts[i]
        .ns
        .ip(args)
        .unwrap_or_else(|e| panic!("host{}: ip {args:?}: {e}", i + 1))
}

/// `bridge fdb show dev <dev>` in host `i`'s namespace.
fn fdb(c: &Cluster, i: usize, dev: &str) -> String {
    c.hosts[i]
        .ns
        .run(&["bridge", "fdb", "show", "dev", dev])
        .unwrap_or_else(|e| panic!("host{}: bridge fdb: {e}", i + 1))
}

/// Whether host `i` has a link called `dev`.
fn has_link(c: &Cluster, i: usize, dev: &str) -> bool {
    c.hosts[i].ns.ip(&["link", "show", "dev", dev]).is_ok()
}

/// The MAC address of `dev` on host `i`.
fn link_mac(c: &Cluster, i: usize, dev: &str) -> String {
    let out = ip(c, i, &["link", "show", "dev", dev]);
    out.split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {out}"))
        .to_string()
}

/// flannel's vxlan lease value for host `i` with VTEP MAC `mac`.
fn vxlan_lease(c: &Cluster, i: usize, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
        c.hosts[i].ip
    )
}

/// What host `i` has on `flannel.1` for peer `p` (subnet `s`, network address `n`, public IP,
/// VTEP MAC): neighbour, FDB entry and onlink route, each present or not.
fn vxlan_entries(c: &Cluster, i: usize, s: &str, n: &str, pip: &str, mac: &str) -> [bool; 3] {
    let neigh = ip(c, i, &["neigh", "show", "dev", "flannel.1"]);
    let fdb = fdb(c, i, "flannel.1");
    let routes = ip(c, i, &["route", "show", "dev", "flannel.1"]);
    [
        neigh
            .lines()
            .any(|l| l.starts_with(&format!("{n} lladdr {mac} PERMANENT"))),
        fdb.lines()
            .any(|l| l.trim() == format!("{mac} dst {pip} self permanent")),
        routes
            .lines()
            .any(|l| l.trim() == format!("{s} via {n} onlink")),
    ]
}

/// Waits until host `i` has all three `flannel.1` entries for host `p` (whose MAC is `mac`).
fn wait_vxlan_peer(c: &Cluster, i: usize, p: usize, mac: &str) {
    let (s, n, pip) = (c.subnet(p), net_addr(c, p), c.hosts[p].ip.clone());
    let mut last = [false; 3];
    let ok = Instant::now() + PROPAGATION;
    while Instant::now() < ok {
        last = vxlan_entries(c, i, &s, &n, &pip, mac);
        if last == [true; 3] {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "host{} lacks flannel.1 entries for host{} ({s} {pip} {mac}): [neigh, fdb, route] = {last:?}\n\
         neigh:\n{}\nfdb:\n{}\nroutes:\n{}",
        i + 1,
        p + 1,
        ip(c, i, &["neigh", "show", "dev", "flannel.1"]),
        fdb(c, i, "flannel.1"),
        ip(c, i, &["route", "show", "dev", "flannel.1"])
    );
}

/// `ip route show` of host `i` has the host-gw route to host `p`'s subnet.
fn has_hostgw_route(c: &Cluster, i: usize, p: usize) -> bool {
    let want = format!("{} via {} dev ul0 proto 153", c.subnet(p), c.hosts[p].ip);
    ip(c, i, &["route", "show"])
        .lines()
        .any(|l| l.trim() == want)
}

/// Routes with weft's protocol (153) on host `i`.
fn weft_routes(c: &Cluster, i: usize) -> String {
    ip(c, i, &["route", "show", "proto", "153"])
}

/// Average RTT (ms) of 5 pings from container `from` to container `to`.
fn rtt_ms(c: &Cluster, from: usize, to: usize) -> f64 {
    let dst = c.hosts[to].ctr_ip();
    let out = c.hosts[from]
        .ctr
        .run(&["ping", "-n", "-q", "-c", "5", "-i", "0.2", "-W", "2", &dst])
        .unwrap_or_else(|e| panic!("ctr{} -> ctr{}: {e}", from + 1, to + 1));
    out.split("rtt min/avg/max/mdev = ")
        .nth(1)
        .and_then(|r| r.split('/').nth(1))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no rtt in {out}"))
}

/// Every container reaches every other one (first answer within 10 s); returns the mean RTTs.
fn ping_all(c: &Cluster, hosts: &[usize]) -> Vec<(usize, usize, f64)> {
    let mut out = Vec::new();
    for &a in hosts {
        for &b in hosts {
            if a != b {
                c.ping(a, b, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("{e}"));
                out.push((a, b, rtt_ms(c, a, b)));
            }
        }
    }
    out
}

fn report_rtts(test: &str, rtts: &[(usize, usize, f64)]) {
    let all: Vec<f64> = rtts.iter().map(|r| r.2).collect();
    let max = all.iter().copied().fold(0.0, f64::max);
    let mean = all.iter().sum::<f64>() / all.len().max(1) as f64;
    eprintln!(
        "{test}: {} container pairs ping; mean RTT {mean:.3} ms, worst pair {max:.3} ms",
        all.len()
    );
}

/// A checked TCP transfer of [`TRANSFER_BYTES`] from container `from` to container `to`.
fn transfer(c: &Cluster, test: &str, from: usize, to: usize) -> u64 {
    let start = Instant::now();
    let t = c.transfer(from, to, TRANSFER_BYTES, false);
    let bytes = t.finish();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{test}: ctr{} -> ctr{}: {} MiB intact in {secs:.2} s ({:.0} Mbit/s)",
        from + 1,
        to + 1,
        bytes >> 20,
        bytes as f64 * 8.0 / secs / 1e6
    );
    assert!(bytes >= TRANSFER_BYTES);
    bytes
}

/// Asserts that the data plane dropped nothing for a vxlan reason (a malformed, misaddressed or
/// foreign frame) and returns the packet counters for the report.
fn no_vxlan_drops(d: &Daemon, who: &str) -> (f64, f64) {
    let s = d.stats();
    let bad: Vec<String> = s
        .iter()
        .filter(|(k, v)| k.starts_with("drop_vxlan") && **v > 0.0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert!(bad.is_empty(), "{who}: vxlan drops {bad:?}");
    let (tx, rx) = (s["tx_packets"], s["rx_packets"]);
    assert!(tx > 0.0 && rx > 0.0, "{who}: no traffic counted: {s:?}");
    (tx, rx)
}

/// Writes a subnet.env for host `i` as weft would (for hosts that run without a lease).
fn write_subnet_env(c: &Cluster, i: usize, subnet: &str, mtu: u32) {
    let gw = subnet.replace(".0/24", ".1/24");
    std::fs::write(
        c.subnet_file(i),
        format!("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET={gw}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n"),
    )
    .expect("write subnet.env");
}

/// The device details `ip -d link show flannel.1` must show for host `i`.
fn check_vxlan_device(c: &Cluster, i: usize) -> String {
    let link = ip(c, i, &["-d", "link", "show", "flannel.1"]);
    for want in [
        format!("vxlan id 1 local {} dev ul0 ", c.hosts[i].ip),
        format!("dstport {} ", control::config::VXLAN_DEFAULT_PORT),
        " nolearning ".to_string(),
        " mtu 1450 ".to_string(),
        ",UP,".to_string(),
    ] {
        assert!(
            link.contains(&want),
            "host{}: {want:?} missing:\n{link}",
            i + 1
        );
    }
    let addrs = ip(c, i, &["-4", "addr", "show", "dev", "flannel.1"]);
    let inet: Vec<&str> = addrs
        .lines()
        .filter_map(|l| l.trim().strip_prefix("inet "))
        .collect();
    assert_eq!(inet.len(), 1, "host{}: {addrs}", i + 1);
    assert!(
        inet[0].starts_with(&format!("{}/32 ", net_addr(c, i))),
        "host{}: {addrs}",
        i + 1
    );
    link_mac(c, i, "flannel.1")
}

#[test]
fn vxlan_kernel_three_hosts() {
    const T: &str = "vxlan_kernel_three_hosts";
    let Some(mut c) = Cluster::with_etcd(T, 3, VXLAN) else {
        return;
    };
    let mut d = c.start_weft_all(0..3, &[]);
    let mut macs = Vec::new();
    for i in 0..3 {
        assert_eq!(c.subnet_env(i)["FLANNEL_MTU"], "1450");
        let mac = check_vxlan_device(&c, i);
        assert_eq!(
            c.get(&c.lease_key(i)),
            vxlan_lease(&c, i, &mac),
            "lease of host{}",
            i + 1
        );
        macs.push(mac);
    }
    for i in 0..3 {
        for p in (0..3).filter(|&p| p != i) {
            wait_vxlan_peer(&c, i, p, &macs[p]);
        }
        // Nothing else on the device: one entry of each kind per peer.
        let neigh = ip(&c, i, &["neigh", "show", "dev", "flannel.1"]);
        assert_eq!(neigh.lines().count(), 2, "{neigh}");
        assert_eq!(fdb(&c, i, "flannel.1").lines().count(), 2);
    }
    for i in 0..3 {
        c.attach_container(i);
    }
    report_rtts(T, &ping_all(&c, &[0, 1, 2]));
    transfer(&c, T, 0, 1);
    transfer(&c, T, 2, 0);

    // Restart host 1: the device is reused with its MAC, so the lease value does not change.
    let lease = c.get(&c.lease_key(0));
    let index = ip(&c, 0, &["-o", "link", "show", "flannel.1"]);
    assert!(d.remove(0).stop().success());
    assert!(has_link(&c, 0, "flannel.1"), "device left in place");
    d.insert(0, c.start_weft(0, &[]));
    d[0].wait_running();
    assert!(
        d[0].wait_line(
            0,
            "reusing the existing vxlan device",
            Duration::from_secs(1)
        )
        .is_some(),
        "{}",
        d[0].lines().join("\n")
    );
    assert_eq!(link_mac(&c, 0, "flannel.1"), macs[0]);
    assert_eq!(
        ip(&c, 0, &["-o", "link", "show", "flannel.1"])
            .split(':')
            .next(),
        index.split(':').next(),
        "same ifindex: not recreated"
    );
    assert_eq!(c.get(&c.lease_key(0)), lease);
    for (p, mac) in macs.iter().enumerate().skip(1) {
        wait_vxlan_peer(&c, 0, p, mac);
    }
    c.ping(0, 1, Duration::from_secs(5)).expect("after restart");
    c.ping(2, 0, Duration::from_secs(5)).expect("after restart");
    assert_eq!(d[0].stat("peers"), 2.0);
    assert_eq!(d[0].stat("failures"), 0.0);
}

#[test]
fn host_gw_three_hosts() {
    const T: &str = "host_gw_three_hosts";
    let Some(mut c) = Cluster::with_etcd(T, 3, HOST_GW) else {
        return;
    };
    let mut d = c.start_weft_all(0..3, &[]);
    for i in 0..3 {
        assert_eq!(c.subnet_env(i)["FLANNEL_MTU"], "1500");
        assert_eq!(
            c.get(&c.lease_key(i)),
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
                c.hosts[i].ip
            )
        );
    }
    for i in 0..3 {
        for p in (0..3).filter(|&p| p != i) {
            within(
                PROPAGATION,
                &format!("host{} route to host{}", i + 1, p + 1),
                || has_hostgw_route(&c, i, p),
            );
        }
        assert_eq!(weft_routes(&c, i).lines().count(), 2);
        c.attach_container(i);
    }
    report_rtts(T, &ping_all(&c, &[0, 1, 2]));
    transfer(&c, T, 0, 1);

    // A route deleted from outside is back at the next resync (every 10 s).
    let (s2, p2) = (c.subnet(1), c.hosts[1].ip.clone());
    ip(&c, 0, &["route", "del", &s2, "via", &p2, "dev", "ul0"]);
    assert!(!has_hostgw_route(&c, 0, 1));
    let took = within(Duration::from_secs(15), "deleted route re-added", || {
        has_hostgw_route(&c, 0, 1)
    });
    eprintln!("{T}: route deleted from outside re-added after {took:?}");
    assert_eq!(d[0].stat("routes_readded"), 1.0);
    c.ping(0, 1, Duration::from_secs(5)).expect("ping again");

    // Host 3 stops and its lease is deleted: the others drop its route.
    let key3 = c.lease_key(2);
    let s3 = c.subnet(2);
    assert!(d.remove(2).stop().success());
    c.etcdctl(&["del", &key3]);
    let took = within(PROPAGATION, "route of the removed lease gone", || {
        !weft_routes(&c, 0).contains(&s3) && !weft_routes(&c, 1).contains(&s3)
    });
    eprintln!("{T}: removed lease's route gone after {took:?}");
    assert_eq!(d[0].stat("routes"), 1.0);
    c.ping(1, 0, Duration::from_secs(5))
        .expect("others unaffected");

    // A public IP other than the interface's: host-gw refuses, as flannel does.
    let mut nat = c.start_weft(2, &["--public-ip", "203.0.113.3"]);
    let st = nat
        .wait_exit(Duration::from_secs(20))
        .expect("host-gw with a foreign --public-ip exits");
    let log = nat.lines().join("\n");
    assert!(!st.success(), "exit status {st}:\n{log}");
    assert!(
        log.contains("differs from interface IP")
            && log.contains("you're on a NAT, which is not supported by host-gw backend"),
        "{log}"
    );
    assert_eq!(c.get(&key3), "", "no lease written");

    // A peer behind a router (not on-link): the kernel refuses its route; logged, counted and
    // retried, as in flannel, and the others are unaffected.
    let r = c.add_routed_host().expect("routed host");
    let dr = c.start_weft(r, &[]);
    dr.wait_running();
    within(PROPAGATION, "route failure counted", || {
        d[0].stat("route_failures") >= 1.0
    });
    assert!(!weft_routes(&c, 0).contains(&c.subnet(r)));
    assert!(d[0]
        .wait_line(0, "peer not on-link?", Duration::from_secs(1))
        .is_some());
    c.ping(0, 1, Duration::from_secs(5))
        .expect("on-link peers unaffected");
    assert_eq!(
        d[0].stat("routes"),
        2.0,
        "desired: host 2 and the routed host"
    );
}

#[test]
fn udp_three_hosts() {
    const T: &str = "udp_three_hosts";
    let Some(mut c) = Cluster::with_etcd(T, 3, UDP) else {
        return;
    };
    let d = c.start_weft_all(0..3, &[]);
    for i in 0..3 {
        assert_eq!(c.subnet_env(i)["FLANNEL_MTU"], "1472");
        assert!(has_link(&c, i, "weft0"));
        c.attach_container(i);
    }
    for x in &d {
        within(PROPAGATION, "udp routes", || x.stat("routes") == 2.0);
    }
    report_rtts(T, &ping_all(&c, &[0, 1, 2]));
    transfer(&c, T, 0, 2);
}

/// Checks that userspace VXLAN host `d` received a kernel vxlan sender's TCP super-packets whole
/// and cut them to its MTU: the kernel hosts keep a veth underlay's TX offloads (checksum and
/// TSO on), so their vxlan devices hand GSO super-packets across the underlay uncut, and the
/// inner packets weft takes out of them are longer than its MTU (`rx_inner_cuts`); nothing was
/// dropped for being too long.
fn cut_super_packets(d: &Daemon, who: &str) -> i64 {
    let cuts = d.counter("rx_inner_cuts");
    assert!(
        cuts > 0,
        "{who}: no super-packet from the kernel sender was cut: {:?}",
        d.stats()
    );
    assert!(
        d.counter("drop_inner_too_big") <= 0,
        "{who}: {:?}",
        d.stats()
    );
    cuts
}

/// Starts weft on host `i` in static mode with the VXLAN wire (VNI 1), leasing nothing.
fn start_static_vxlan(c: &Cluster, i: usize, subnet: &str, peers: &[String]) -> Daemon {
    let mut args = vec![
        "run",
        "--iface",
        "ul0",
        "--network",
        "10.1.0.0/16",
        "--subnet",
        subnet,
        "--vni",
        "1",
    ];
    for p in peers {
        args.extend(["--peer", p.as_str()]);
    }
    let d = Daemon::start(c.hosts[i].ns.name(), &format!("weft-host{}", i + 1), &args);
    d.wait_running();
    d
}

#[test]
fn vxlan_mixed_kernel_and_userspace() {
    const T: &str = "vxlan_mixed_kernel_and_userspace";
    // Hosts 1-2: kernel vxlan (the config's choice); host 3: the same config through weft's
    // workers (--vxlan-dataplane=userspace); host 4: weft in static mode with the VXLAN wire and
    // a lease written by hand, so the kernel hosts route to it.
    let Some(mut c) = Cluster::with_etcd(T, 4, VXLAN) else {
        return;
    };
    let s4 = "10.1.250.0/24";
    let mac4 = "0e:57:c0:00:02:04";
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.1.250.0-24"),
        &vxlan_lease(&c, 3, mac4),
    ]);
    let mut d = c.start_weft_all(0..2, &[]);
    d.extend(c.start_weft_all(2..3, &["--vxlan-dataplane", "userspace"]));
    let mac3 = "0e:57:c0:00:02:03";
    assert!(
        !has_link(&c, 2, "flannel.1"),
        "userspace host has no device"
    );
    assert!(has_link(&c, 2, "weft0"));
    assert_eq!(c.subnet_env(2)["FLANNEL_MTU"], "1450");
    assert_eq!(c.get(&c.lease_key(2)), vxlan_lease(&c, 2, mac3));
    let macs: Vec<String> = (0..2).map(|i| check_vxlan_device(&c, i)).collect();
    for i in 0..2 {
        wait_vxlan_peer(&c, i, 1 - i, &macs[1 - i]);
        wait_vxlan_peer(&c, i, 2, mac3);
        let [n, f, r] = vxlan_entries(&c, i, s4, "10.1.250.0", "192.0.2.4", mac4);
        assert!(n && f && r, "host{} entries for the static host", i + 1);
    }
    let peers: Vec<String> = [(0, macs[0].as_str()), (1, macs[1].as_str()), (2, mac3)]
        .iter()
        .map(|(i, m)| format!("{}={},{m}", c.subnet(*i), c.hosts[*i].ip))
        .collect();
    d.push(start_static_vxlan(&c, 3, s4, &peers));
    write_subnet_env(&c, 3, s4, 1450);
    for i in 0..4 {
        c.attach_container(i);
    }
    within(PROPAGATION, "userspace host's routes", || {
        d[2].stat("routes") == 3.0
    });
    report_rtts(T, &ping_all(&c, &[0, 1, 2, 3]));
    transfer(&c, T, 0, 2); // kernel -> userspace (etcd)
    transfer(&c, T, 2, 1); // userspace -> kernel
    transfer(&c, T, 1, 3); // kernel -> static userspace
    transfer(&c, T, 3, 0); // static userspace -> kernel
    transfer(&c, T, 2, 3); // userspace -> userspace
    for (x, who) in [
        (&d[2], "host3 (etcd, userspace)"),
        (&d[3], "host4 (static)"),
    ] {
        let (tx, rx) = no_vxlan_drops(x, who);
        let cuts = cut_super_packets(x, who);
        eprintln!(
            "{T}: {who}: tx_packets={tx} rx_packets={rx} rx_inner_cuts={cuts}, no vxlan drops"
        );
    }
}

#[test]
fn vxlan_direct_routing() {
    const T: &str = "vxlan_direct_routing";
    let Some(mut c) = Cluster::with_etcd(T, 2, VXLAN_DIRECT) else {
        return;
    };
    let r = c.add_routed_host().expect("routed host");
    assert_eq!(c.hosts[r].ip, "198.51.100.3");
    let d = c.start_weft_all(0..3, &[]);
    let macs: Vec<String> = (0..3).map(|i| check_vxlan_device(&c, i)).collect();
    for i in 0..2 {
        let p = 1 - i;
        // The on-link peer: a plain route, nothing on the device.
        within(PROPAGATION, "direct route", || has_hostgw_route(&c, i, p));
        let [n, f, r_] = vxlan_entries(
            &c,
            i,
            &c.subnet(p),
            &net_addr(&c, p),
            &c.hosts[p].ip,
            &macs[p],
        );
        assert!(
            !n && !f && !r_,
            "host{}: flannel.1 entries for an on-link peer",
            i + 1
        );
        assert!(!fdb(&c, i, "flannel.1").contains(&macs[p]));
        // The routed peer: through the vxlan device.
        wait_vxlan_peer(&c, i, r, &macs[r]);
        assert_eq!(
            weft_routes(&c, i).lines().count(),
            1,
            "{}",
            weft_routes(&c, i)
        );
    }
    for (p, mac) in macs.iter().enumerate().take(2) {
        wait_vxlan_peer(&c, r, p, mac);
    }
    assert_eq!(
        weft_routes(&c, r).trim(),
        "",
        "routed host has no direct route"
    );
    for i in 0..3 {
        c.attach_container(i);
    }
    report_rtts(T, &ping_all(&c, &[0, 1, 2]));
    transfer(&c, T, 0, 2);
    transfer(&c, T, 1, 0);
    assert_eq!(d[0].stat("direct"), 1.0);
    assert_eq!(d[0].stat("peers"), 2.0);
    assert_eq!(d[2].stat("direct"), 0.0);
}

#[test]
fn leases_change_while_traffic_flows() {
    const T: &str = "leases_change_while_traffic_flows";
    let Some(mut c) = Cluster::with_etcd(T, 3, VXLAN) else {
        return;
    };
    let d = c.start_weft_all(0..2, &[]);
    let macs: Vec<String> = (0..2).map(|i| link_mac(&c, i, "flannel.1")).collect();
    wait_vxlan_peer(&c, 0, 1, &macs[1]);
    wait_vxlan_peer(&c, 1, 0, &macs[0]);
    c.attach_container(0);
    c.attach_container(1);
    c.ping(0, 1, Duration::from_secs(10)).expect("ping");
    let started = Instant::now();
    let flow = c.transfer(0, 1, 16 << 20, true);

    // Host 3 joins: host 1 programs it.
    let d3 = c.start_weft(2, &[]);
    d3.wait_running();
    let mac3 = link_mac(&c, 2, "flannel.1");
    wait_vxlan_peer(&c, 0, 2, &mac3);
    c.attach_container(2);
    c.ping(2, 0, Duration::from_secs(10))
        .expect("joined host reachable");
    let (s3, n3) = (c.subnet(2), net_addr(&c, 2));

    // A vxlan lease with a bad VtepMAC: skipped, nothing programmed, the daemon goes on.
    let from = d[0].line_count();
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.1.250.0-24"),
        r#"{"PublicIP":"192.0.2.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"not-a-mac"}}"#,
    ]);
    assert!(
        d[0].wait_line(from, "leases not usable", PROPAGATION)
            .is_some(),
        "{}",
        d[0].lines()[from..].join("\n")
    );
    assert!(!ip(&c, 0, &["route", "show"]).contains("10.1.250.0"));

    // Host 3 leaves (daemon stopped, lease deleted): its entries vanish on host 1.
    assert!(d3.stop().success());
    c.etcdctl(&["del", &c.lease_key(2)]);
    let took = within(PROPAGATION, "host 3's entries removed", || {
        vxlan_entries(&c, 0, &s3, &n3, &c.hosts[2].ip, &mac3) == [false; 3]
    });
    eprintln!("{T}: departed host's neighbour/fdb/route removed after {took:?}");
    assert_eq!(d[0].stat("peers"), 1.0);
    std::thread::sleep(Duration::from_secs(1));
    let (bytes, gap) = flow.finish_with_gap();
    eprintln!(
        "{T}: {} MiB intact in {:.1} s across the changes, longest stall {gap:?}",
        bytes >> 20,
        started.elapsed().as_secs_f64()
    );
    assert!(
        gap < Duration::from_secs(2),
        "forwarding stalled for {gap:?}"
    );
    wait_vxlan_peer(&c, 0, 1, &macs[1]);
}

#[test]
fn backend_switch_cleans_up() {
    const T: &str = "backend_switch_cleans_up";
    let Some(mut c) = Cluster::with_etcd(T, 2, VXLAN) else {
        return;
    };
    let put = |c: &Cluster, cfg: &str| {
        c.etcdctl(&["put", &format!("{PREFIX}/config"), cfg]);
    };
    let stop = |d: Vec<Daemon>| {
        for x in d {
            assert!(x.stop().success());
        }
    };
    let d = c.start_weft_all(0..2, &[]);
    for i in 0..2 {
        c.attach_container(i);
    }
    c.ping(0, 1, Duration::from_secs(10)).expect("vxlan");
    let subnets = [c.subnet(0), c.subnet(1)];
    stop(d);

    // vxlan -> host-gw: the vxlan device goes, routes come.
    put(&c, HOST_GW);
    let d = c.start_weft_all(0..2, &[]);
    for (i, s) in subnets.iter().enumerate() {
        assert_eq!(&c.subnet(i), s, "same subnet across the switch");
        assert!(
            !has_link(&c, i, "flannel.1"),
            "host{}: flannel.1 left",
            i + 1
        );
        within(PROPAGATION, "host-gw route", || {
            has_hostgw_route(&c, i, 1 - i)
        });
        assert_eq!(
            c.get(&c.lease_key(i)),
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
                c.hosts[i].ip
            )
        );
        c.attach_container(i);
    }
    c.ping(0, 1, Duration::from_secs(10)).expect("host-gw");
    stop(d);
    assert!(has_hostgw_route(&c, 0, 1), "routes stay while weft is down");

    // host-gw -> udp: weft's routes go, the TUN device comes.
    put(&c, UDP);
    let d = c.start_weft_all(0..2, &[]);
    for i in 0..2 {
        assert_eq!(
            weft_routes(&c, i).trim(),
            "",
            "host{}: proto 153 routes left",
            i + 1
        );
        assert!(has_link(&c, i, "weft0"));
        assert_eq!(
            c.get(&c.lease_key(i)),
            format!(r#"{{"PublicIP":"{}","PublicIPv6":null}}"#, c.hosts[i].ip)
        );
        c.attach_container(i);
    }
    for x in &d {
        within(PROPAGATION, "udp route", || x.stat("routes") == 1.0);
    }
    c.ping(0, 1, Duration::from_secs(10)).expect("udp");
    c.ping(1, 0, Duration::from_secs(10)).expect("udp");
    stop(d);

    // udp -> vxlan: the device is created again.
    put(&c, VXLAN);
    let d = c.start_weft_all(0..2, &[]);
    for (i, x) in d.iter().enumerate() {
        assert!(
            x.wait_line(0, "vxlan device created", Duration::from_secs(1))
                .is_some(),
            "{}",
            x.lines().join("\n")
        );
        assert!(!has_link(&c, i, "weft0"));
        let mac = check_vxlan_device(&c, i);
        assert_eq!(c.get(&c.lease_key(i)), vxlan_lease(&c, i, &mac));
        c.attach_container(i);
    }
    let macs: Vec<String> = (0..2).map(|i| link_mac(&c, i, "flannel.1")).collect();
    for i in 0..2 {
        wait_vxlan_peer(&c, i, 1 - i, &macs[1 - i]);
    }
    c.ping(0, 1, Duration::from_secs(10)).expect("vxlan again");
    c.ping(1, 0, Duration::from_secs(10)).expect("vxlan again");
    stop(d);

    // Kernel vxlan -> userspace vxlan: the device (whose socket holds port 8472) goes, weft's
    // workers take over with the derived VTEP MAC.
    put(&c, VXLAN_USER);
    let d = c.start_weft_all(0..2, &[]);
    for (i, x) in d.iter().enumerate() {
        assert!(
            !has_link(&c, i, "flannel.1"),
            "host{}: flannel.1 left",
            i + 1
        );
        assert!(has_link(&c, i, "weft0"));
        let mac = format!("0e:57:c0:00:02:0{}", i + 1);
        assert_eq!(c.get(&c.lease_key(i)), vxlan_lease(&c, i, &mac));
        within(PROPAGATION, "userspace route", || x.stat("routes") == 1.0);
    }
    c.ping(0, 1, Duration::from_secs(10))
        .expect("userspace vxlan");
    c.ping(1, 0, Duration::from_secs(10))
        .expect("userspace vxlan");
    drop(d);
}

/// Programs host `i` by hand exactly as flannel's vxlan backend would (docs/compatibility.md §7.2):
/// `flannel.1` with `mac`, local = host IP, dstport 8472, nolearning, MTU 1450, the subnet's
/// network address /32, and per peer (subnet, public IP, VTEP MAC) an onlink route, a permanent
/// neighbour and an FDB entry (`testkit::netns::add_flannel_vxlan_device` and `_peer`).
fn flannel_by_hand(
    c: &Cluster,
    i: usize,
    mac: &str,
    own: &str,
    peers: &[(String, String, String)],
) {
    let h = &c.hosts[i];
    let own_end = VxlanEnd {
        underlay: &h.ip,
        mac,
        addr: own.trim_end_matches("/24"),
        subnet: own,
    };
    netns::add_flannel_vxlan_device(&h.ns, own_end)
        .unwrap_or_else(|e| panic!("host{}: flannel.1: {e}", i + 1));
    for (s, pip, pmac) in peers {
        let peer = VxlanEnd {
            underlay: pip,
            mac: pmac,
            addr: s.trim_end_matches("/24"),
            subnet: s,
        };
        netns::add_flannel_vxlan_peer(&h.ns, peer)
            .unwrap_or_else(|e| panic!("host{}: flannel.1 peer {s}: {e}", i + 1));
    }
}

#[test]
fn userspace_vxlan_three_hosts() {
    const T: &str = "userspace_vxlan_three_hosts";
    // Hosts 1-3: weft's userspace VXLAN via etcd. Host 4: flannel's kernel vxlan programmed by
    // hand (what flannel would program), its lease written with etcdctl.
    let Some(mut c) = Cluster::with_etcd(T, 4, VXLAN_USER) else {
        return;
    };
    let (s4, mac4) = ("10.1.250.0/24", "02:42:c0:00:02:04");
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.1.250.0-24"),
        &vxlan_lease(&c, 3, mac4),
    ]);
    let d = c.start_weft_all(0..3, &[]);
    for (i, x) in d.iter().enumerate() {
        let mac = format!("0e:57:c0:00:02:0{}", i + 1);
        assert_eq!(c.subnet_env(i)["FLANNEL_MTU"], "1450");
        assert_eq!(c.get(&c.lease_key(i)), vxlan_lease(&c, i, &mac));
        assert!(!has_link(&c, i, "flannel.1"));
        assert!(has_link(&c, i, "weft0"));
        within(PROPAGATION, "userspace routes", || x.stat("routes") == 3.0);
    }
    let peers: Vec<(String, String, String)> = (0..3)
        .map(|i| {
            (
                c.subnet(i),
                c.hosts[i].ip.clone(),
                format!("0e:57:c0:00:02:0{}", i + 1),
            )
        })
        .collect();
    flannel_by_hand(&c, 3, mac4, s4, &peers);
    write_subnet_env(&c, 3, s4, 1450);
    for i in 0..4 {
        c.attach_container(i);
    }
    report_rtts(T, &ping_all(&c, &[0, 1, 2, 3]));
    transfer(&c, T, 0, 1); // userspace -> userspace
    transfer(&c, T, 2, 3); // userspace -> flannel's kernel vxlan
    transfer(&c, T, 3, 0); // flannel's kernel vxlan -> userspace
    for (i, x) in d.iter().enumerate() {
        let who = format!("host{}", i + 1);
        let (tx, rx) = no_vxlan_drops(x, &who);
        eprintln!("{T}: {who}: tx_packets={tx} rx_packets={rx}, no vxlan drops");
    }
    let cuts = cut_super_packets(&d[0], "host1");
    eprintln!("{T}: host1: rx_inner_cuts={cuts} from the kernel vxlan host");
}

#[test]
fn vxlan_kernel_repairs_and_peer_changes() {
    const T: &str = "vxlan_kernel_repairs_and_peer_changes";
    let Some(mut c) = Cluster::with_etcd(T, 3, VXLAN) else {
        return;
    };
    let mut d = c.start_weft_all(0..3, &[]);
    let mut macs: Vec<String> = (0..3).map(|i| link_mac(&c, i, "flannel.1")).collect();
    for (p, mac) in macs.iter().enumerate().skip(1) {
        wait_vxlan_peer(&c, 0, p, mac);
    }
    for i in 0..3 {
        c.attach_container(i);
    }
    c.ping(0, 1, Duration::from_secs(10)).expect("ping");

    // The device is deleted from outside: recreated with its MAC, every peer reprogrammed.
    ip(&c, 0, &["link", "del", "flannel.1"]);
    let took = within(Duration::from_secs(5), "flannel.1 recreated", || {
        has_link(&c, 0, "flannel.1")
    });
    assert_eq!(link_mac(&c, 0, "flannel.1"), macs[0], "same MAC");
    for (p, mac) in macs.iter().enumerate().skip(1) {
        wait_vxlan_peer(&c, 0, p, mac);
    }
    check_vxlan_device(&c, 0);
    c.ping(0, 1, Duration::from_secs(5))
        .expect("after recreation");
    eprintln!("{T}: deleted device recreated after {took:?}");
    assert_eq!(d[0].stat("recreated"), 1.0);

    // Down and up from outside: the kernel flushes the neighbours and routes of the device.
    ip(&c, 0, &["link", "set", "flannel.1", "down"]);
    ip(&c, 0, &["link", "set", "flannel.1", "up"]);
    let took = within(
        Duration::from_secs(15),
        "entries back after down/up",
        || {
            (1..3).all(|p| {
                vxlan_entries(
                    &c,
                    0,
                    &c.subnet(p),
                    &net_addr(&c, p),
                    &c.hosts[p].ip,
                    &macs[p],
                ) == [true; 3]
            })
        },
    );
    eprintln!("{T}: entries back {took:?} after the device went down and up");
    c.ping(0, 2, Duration::from_secs(5)).expect("after down/up");
    assert_eq!(d[0].stat("repaired"), 2.0);

    // A route deleted from outside comes back at the next check.
    ip(&c, 0, &["route", "del", &c.subnet(1), "dev", "flannel.1"]);
    let took = within(Duration::from_secs(15), "deleted route back", || {
        vxlan_entries(
            &c,
            0,
            &c.subnet(1),
            &net_addr(&c, 1),
            &c.hosts[1].ip,
            &macs[1],
        ) == [true; 3]
    });
    eprintln!("{T}: deleted flannel.1 route back after {took:?}");
    c.ping(0, 1, Duration::from_secs(5))
        .expect("after route repair");

    // Host 2 comes back with a new VTEP MAC (its device was lost while weft was down, as after
    // a reboot): host 1 follows, and the old MAC's FDB entry goes.
    let old = macs[1].clone();
    assert!(d.remove(1).stop().success());
    ip(&c, 1, &["link", "del", "flannel.1"]);
    d.insert(1, c.start_weft(1, &[]));
    d[1].wait_running();
    macs[1] = link_mac(&c, 1, "flannel.1");
    assert_ne!(macs[1], old);
    assert_eq!(c.get(&c.lease_key(1)), vxlan_lease(&c, 1, &macs[1]));
    wait_vxlan_peer(&c, 0, 1, &macs[1]);
    let f = fdb(&c, 0, "flannel.1");
    assert!(!f.contains(&old), "old MAC's FDB entry left:\n{f}");
    assert_eq!(f.lines().count(), 2, "{f}");
    c.ping(0, 1, Duration::from_secs(5))
        .expect("after the MAC change");
    c.ping(1, 0, Duration::from_secs(5))
        .expect("after the MAC change");

    // Host 3 leaves while host 1's weft is down: pruned when host 1 starts again.
    let (s3, n3, p3) = (c.subnet(2), net_addr(&c, 2), c.hosts[2].ip.clone());
    assert!(d.remove(0).stop().success());
    assert!(d.remove(1).stop().success());
    c.etcdctl(&["del", &c.lease_key(2)]);
    d.insert(0, c.start_weft(0, &[]));
    d[0].wait_running();
    within(PROPAGATION, "departed peer pruned", || {
        vxlan_entries(&c, 0, &s3, &n3, &p3, &macs[2]) == [false; 3]
    });
    wait_vxlan_peer(&c, 0, 1, &macs[1]);
    assert_eq!(fdb(&c, 0, "flannel.1").lines().count(), 1);
    c.ping(0, 1, Duration::from_secs(5))
        .expect("after the restart");
}

#[test]
fn vxlan_custom_vni_and_port_kernel_and_userspace() {
    const T: &str = "vxlan_custom_vni_and_port_kernel_and_userspace";
    let config = r#"{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":42,"Port":4789}}"#;
    let Some(mut c) = Cluster::with_etcd(T, 2, config) else {
        return;
    };
    let mut d = c.start_weft_all(0..1, &[]);
    d.extend(c.start_weft_all(1..2, &["--vxlan-dataplane", "userspace"]));
    let link = ip(&c, 0, &["-d", "link", "show", "flannel.42"]);
    assert!(
        link.contains("vxlan id 42 local 192.0.2.1 dev ul0 ") && link.contains("dstport 4789 "),
        "{link}"
    );
    assert!(!has_link(&c, 0, "flannel.1"));
    let mac = link_mac(&c, 0, "flannel.42");
    let lease = |i: usize, mac: &str| {
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":42,"VtepMAC":"{mac}"}}}}"#,
            c.hosts[i].ip
        )
    };
    assert_eq!(c.get(&c.lease_key(0)), lease(0, &mac));
    assert_eq!(c.get(&c.lease_key(1)), lease(1, "0e:57:c0:00:02:02"));
    within(PROPAGATION, "fdb entry for the userspace host", || {
        fdb(&c, 0, "flannel.42").contains("0e:57:c0:00:02:02 dst 192.0.2.2 self permanent")
    });
    within(PROPAGATION, "userspace route", || {
        d[1].stat("routes") == 1.0
    });
    c.attach_container(0);
    c.attach_container(1);
    report_rtts(T, &ping_all(&c, &[0, 1]));
    transfer(&c, T, 0, 1);
    transfer(&c, T, 1, 0);
    no_vxlan_drops(&d[1], "host2");
    let cuts = cut_super_packets(&d[1], "host2");
    eprintln!("{T}: host2: rx_inner_cuts={cuts} from the kernel vxlan host");
}
