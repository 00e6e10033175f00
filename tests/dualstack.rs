//! End-to-end tests of dual stack (`EnableIPv6`) with the kernel backends and weft's own data
//! plane (userspace vxlan, alone and mixed with kernel vxlan): two weft hosts on a
//! dual-stack underlay (IPv4 192.0.2.<n>/24 and IPv6 fd00:192::<n>/64 on one switch, see
//! `support/cluster.rs`), a real etcd, and containers with an IPv4 and an IPv6 address each.
//! Every container pings every other one over both families; lease changes must reach the IPv6
//! entries; repairs and restarts keep both subnets. Root is required (namespaces, vxlan); `ping`
//! is iputils' (`ping -6`).
//!
//! Every test builds its own [`Cluster`]; daemons are declared after it, so they stop before the
//! namespaces go, also when a test panics. Every wait is bounded.

mod support;

use std::time::Duration;
use support::cluster::{Cluster, PREFIX};
use support::daemon::Daemon;
use testkit::wait::within;

const VXLAN6: &str = r#"{"Network":"10.1.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;
const HOST_GW6: &str = r#"{"Network":"10.1.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}"#;
/// Time a lease change may take to reach the kernel of another host.
const PROPAGATION: Duration = Duration::from_secs(10);
/// host-gw's repair period (10 s) plus margin.
const REPAIR: Duration = Duration::from_secs(15);

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

/// The MAC address of `dev` on host `i`.
fn link_mac(c: &Cluster, i: usize, dev: &str) -> String {
    let out = ip(c, i, &["link", "show", "dev", dev]);
    out.split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {out}"))
        .to_string()
}

/// The network address of an IPv6 subnet `fc00:0:0:5::/64` → `fc00:0:0:5::`.
fn addr_of(subnet: &str) -> &str {
    subnet.split('/').next().expect("address")
}

/// What host `i` has on `flannel-v6.1` for subnet `s` at public IPv6 `pip` with VTEP MAC `mac`:
/// neighbour, FDB entry and onlink route, each present or not.
fn v6_entries(c: &Cluster, i: usize, s: &str, pip: &str, mac: &str) -> [bool; 3] {
    let n = addr_of(s);
    let neigh = ip(c, i, &["-6", "neigh", "show", "dev", "flannel-v6.1"]);
    let fdb = fdb(c, i, "flannel-v6.1");
    let routes = ip(c, i, &["-6", "route", "show", "dev", "flannel-v6.1"]);
    [
        neigh
            .lines()
            .any(|l| l.starts_with(&format!("{n} lladdr {mac} PERMANENT"))),
        fdb.lines()
            .any(|l| l.trim() == format!("{mac} dst {pip} self permanent")),
        routes
            .lines()
            .any(|l| l.trim().starts_with(&format!("{s} via {n} ")) && l.contains(" onlink")),
    ]
}

/// Waits until host `i` has the three `flannel-v6.1` entries given (or, with `want` false, none
/// of them).
fn wait_v6_entries(c: &Cluster, i: usize, s: &str, pip: &str, mac: &str, want: bool) {
    let goal = [want; 3];
    let mut last = [!want; 3];
    let found = testkit::wait::poll(
        PROPAGATION,
        Duration::from_millis(100),
        "IPv6 vxlan entries",
        || {
            last = v6_entries(c, i, s, pip, mac);
            last == goal
        },
    );
    eprintln!(
        "host{}: flannel-v6.1 entries for {s} {}present after {found:?}",
        i + 1,
        if want { "" } else { "no longer " }
    );
}

/// Every container pings every other one over IPv4 and IPv6 (first answer within 10 s).
fn ping_both(c: &Cluster, hosts: &[usize]) {
    for &a in hosts {
        for &b in hosts {
            if a != b {
                let t4 = c
                    .ping(a, b, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("{e}"));
                let t6 = c
                    .ping6(a, b, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("{e}"));
                eprintln!(
                    "ctr{} -> ctr{}: IPv4 {} after {t4:?}, IPv6 {} after {t6:?}",
                    a + 1,
                    b + 1,
                    c.hosts[b].ctr_ip(),
                    c.ctr_ip6(b)
                );
            }
        }
    }
}

/// subnet.env of host `i` has flannel's lines in flannel's order, with the IPv6 pair.
fn check_env_order(c: &Cluster, i: usize) {
    let text = std::fs::read_to_string(c.subnet_file(i)).expect("subnet.env");
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert_eq!(
        keys,
        [
            "FLANNEL_NETWORK",
            "FLANNEL_SUBNET",
            "FLANNEL_IPV6_NETWORK",
            "FLANNEL_IPV6_SUBNET",
            "FLANNEL_MTU",
            "FLANNEL_IPMASQ"
        ],
        "host{}: {text}",
        i + 1
    );
    let env = c.subnet_env(i);
    assert_eq!(env["FLANNEL_IPV6_NETWORK"], "fc00::/48");
    let s6 = c.subnet6(i);
    assert!(s6.starts_with("fc00:0:0:") && s6.ends_with("::/64"), "{s6}");
    assert_eq!(
        env["FLANNEL_IPV6_SUBNET"],
        format!("{}1/64", addr_of(&s6)),
        "the first address of the subnet"
    );
}

/// A cluster of `n` hosts with the IPv6 underlay, etcd and `config`.
fn dual_cluster(test: &str, n: usize, config: &str) -> Option<Cluster> {
    let mut c = Cluster::for_test(test, n)?;
    c.enable_ipv6_underlay().expect("IPv6 underlay");
    c.start_etcd();
    c.put_config(config);
    Some(c)
}

/// `sysctl` value `key` inside host `i`.
fn sysctl(c: &Cluster, i: usize, path: &str) -> String {
    c.hosts[i]
        .ns
        .run(&["cat", path])
        .unwrap_or_else(|e| panic!("host{}: cat {path}: {e}", i + 1))
        .trim()
        .to_string()
}

#[test]
fn dual_stack_kernel_vxlan_two_hosts() {
    const T: &str = "dual_stack_kernel_vxlan_two_hosts";
    let Some(mut c) = dual_cluster(T, 2, VXLAN6) else {
        return;
    };
    let flags = [
        "--ip-masq",
        "--ip-blackhole-route",
        "--iptables-resync",
        "1",
    ];
    let mut d = c.start_weft_all(0..2, &flags);
    let mut macs6 = Vec::new();
    for i in 0..2 {
        check_env_order(&c, i);
        assert_eq!(c.subnet_env(i)["FLANNEL_MTU"], "1450");
        // The IPv6 device as flannel makes it.
        let link = ip(&c, i, &["-d", "link", "show", "flannel-v6.1"]);
        for want in [
            format!("vxlan id 1 local {} dev ul0 ", c.host_ip6(i)),
            " nolearning ".to_string(),
            // 1500 − 70: the kernel's cap for VXLAN over IPv6.
            " mtu 1430 ".to_string(),
            ",UP,".to_string(),
        ] {
            assert!(
                link.contains(&want),
                "host{}: {want:?} missing:\n{link}",
                i + 1
            );
        }
        let addrs = ip(
            &c,
            i,
            &[
                "-6",
                "addr",
                "show",
                "dev",
                "flannel-v6.1",
                "scope",
                "global",
            ],
        );
        let inet6: Vec<&str> = addrs
            .lines()
            .filter_map(|l| l.trim().strip_prefix("inet6 "))
            .collect();
        assert_eq!(inet6.len(), 1, "host{}: {addrs}", i + 1);
        assert!(
            inet6[0].starts_with(&format!("{}/128 ", addr_of(&c.subnet6(i)))),
            "host{}: {addrs}",
            i + 1
        );
        assert_eq!(
            sysctl(&c, i, "/proc/sys/net/ipv6/conf/flannel-v6.1/accept_ra"),
            "0"
        );
        // One key with both subnets, holding both MACs and our public IPv6 address.
        let (mac4, mac6) = (
            link_mac(&c, i, "flannel.1"),
            link_mac(&c, i, "flannel-v6.1"),
        );
        assert_ne!(mac4, mac6);
        assert_eq!(
            c.get(&c.lease_key_dual(i)),
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac4}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#,
                c.hosts[i].ip,
                c.host_ip6(i)
            ),
            "lease of host{}",
            i + 1
        );
        assert_eq!(c.get(&c.lease_key(i)), "", "no IPv4-only key");
        macs6.push(mac6);
        // ip6tables: flannel's IPv6 masquerade rules for the IPv6 network and subnet.
        let nat6 = c.hosts[i]
            .ns
            .run(&["ip6tables", "-t", "nat", "-S", "FLANNEL-POSTRTG"])
            .expect("ip6tables");
        let want = format!(
            "-A FLANNEL-POSTRTG -s {} -d fc00::/48 -m comment --comment \"flanneld masq\" -j RETURN",
            c.subnet6(i)
        );
        assert!(nat6.lines().any(|l| l == want), "{want:?} missing:\n{nat6}");
        assert!(nat6.contains("! -d ff00::/8"), "{nat6}");
        // --ip-blackhole-route: both subnets, with the lowest priority metric.
        let (s4, s6) = (c.subnet(i), c.subnet6(i));
        let has = |args: &[&str], s: &str| {
            ip(&c, i, args).lines().any(|l| {
                l.starts_with(&format!("blackhole {s} ")) && l.contains(" metric 4294967295")
            })
        };
        within(Duration::from_secs(5), "blackhole routes", || {
            has(&["route", "show", "type", "blackhole"], &s4)
                && has(&["-6", "route", "show", "type", "blackhole"], &s6)
        });
    }
    for (i, p) in [(0, 1), (1, 0)] {
        wait_v6_entries(&c, i, &c.subnet6(p), &c.host_ip6(p), &macs6[p], true);
    }
    for i in 0..2 {
        c.attach_container(i);
        c.attach_container6(i);
    }
    ping_both(&c, &[0, 1]);

    // A lease change reaches the IPv6 entries: a peer appears, moves, goes.
    let key = format!("{PREFIX}/subnets/10.1.200.0-24&fc00:0:0:fff0::-64");
    let value = |pip6: &str| {
        format!(
            r#"{{"PublicIP":"192.0.2.99","PublicIPv6":"{pip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:99:04"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"0e:00:00:00:99:06"}}}}"#
        )
    };
    let s = "fc00:0:0:fff0::/64";
    c.etcdctl(&["put", &key, &value("fd00:192::99")]);
    wait_v6_entries(&c, 0, s, "fd00:192::99", "0e:00:00:00:99:06", true);
    c.etcdctl(&["put", &key, &value("fd00:192::98")]);
    wait_v6_entries(&c, 0, s, "fd00:192::98", "0e:00:00:00:99:06", true);
    assert!(
        !fdb(&c, 0, "flannel-v6.1").contains("dst fd00:192::99 "),
        "the old remote is gone"
    );
    c.etcdctl(&["del", &key]);
    wait_v6_entries(&c, 0, s, "fd00:192::98", "0e:00:00:00:99:06", false);

    // The IPv6 device deleted from outside: recreated with its MAC and reprogrammed (flanneld
    // would leave it gone).
    ip(&c, 0, &["link", "del", "flannel-v6.1"]);
    within(Duration::from_secs(5), "flannel-v6.1 recreated", || {
        c.hosts[0].ns.ip(&["link", "show", "flannel-v6.1"]).is_ok()
    });
    assert_eq!(link_mac(&c, 0, "flannel-v6.1"), macs6[0]);
    wait_v6_entries(&c, 0, &c.subnet6(1), &c.host_ip6(1), &macs6[1], true);
    c.ping6(1, 0, Duration::from_secs(10))
        .expect("IPv6 after the device was recreated");
    within(Duration::from_secs(5), "recreated6 counted", || {
        d[0].stat("recreated6") == 1.0
    });
    assert_eq!(
        d[0].stat("recreated"),
        0.0,
        "the IPv4 device was not touched"
    );

    // Restart host 1: both subnets kept (the lease is found by PublicIP), same lease value.
    let (env, lease) = (c.subnet_env(0), c.get(&c.lease_key_dual(0)));
    assert!(d.remove(0).stop().success());
    d.insert(0, c.start_weft(0, &flags));
    d[0].wait_running();
    assert_eq!(c.subnet_env(0), env, "both subnets kept");
    assert_eq!(c.get(&c.lease_key_dual(0)), lease);
    ping_both(&c, &[0, 1]);
    assert_eq!(d[0].stat("peers6"), 1.0);
    assert_eq!(d[0].stat("failures6"), 0.0);
    // Restart after the lease is gone: both subnets come back from subnet.env.
    assert!(d.remove(1).stop().success());
    let (env1, key1) = (c.subnet_env(1), c.lease_key_dual(1));
    c.etcdctl(&["del", &key1]);
    d.insert(1, c.start_weft(1, &flags));
    d[1].wait_running();
    assert_eq!(c.subnet_env(1), env1, "previous pair reused");
    ping_both(&c, &[0, 1]);
}

#[test]
fn dual_stack_host_gw_two_hosts() {
    const T: &str = "dual_stack_host_gw_two_hosts";
    let Some(mut c) = dual_cluster(T, 2, HOST_GW6) else {
        return;
    };
    let d = c.start_weft_all(0..2, &[]);
    let route6 = |c: &Cluster, i: usize, s: &str, via: &str| -> bool {
        ip(c, i, &["-6", "route", "show", "proto", "153"])
            .lines()
            .any(|l| l.trim().starts_with(&format!("{s} via {via} dev ul0 ")))
    };
    for i in 0..2 {
        check_env_order(&c, i);
        assert_eq!(c.subnet_env(i)["FLANNEL_MTU"], "1500");
        assert_eq!(
            c.get(&c.lease_key_dual(i)),
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":"{}","BackendType":"host-gw"}}"#,
                c.hosts[i].ip,
                c.host_ip6(i)
            )
        );
    }
    for (i, p) in [(0, 1), (1, 0)] {
        let (s, via) = (c.subnet6(p), c.host_ip6(p));
        within(PROPAGATION, "IPv6 host-gw route", || {
            route6(&c, i, &s, &via)
        });
    }
    for i in 0..2 {
        c.attach_container(i);
        c.attach_container6(i);
    }
    ping_both(&c, &[0, 1]);

    // The IPv6 route deleted from outside: re-added by the 10 s repair.
    let (s1, via1) = (c.subnet6(1), c.host_ip6(1));
    ip(&c, 0, &["-6", "route", "del", &s1]);
    assert!(!route6(&c, 0, &s1, &via1));
    let took = within(REPAIR, "IPv6 route re-added", || route6(&c, 0, &s1, &via1));
    eprintln!("{T}: deleted IPv6 route re-added after {took:?}");
    within(Duration::from_secs(3), "routes6_readded counted", || {
        d[0].stat("routes6_readded") >= 1.0
    });
    c.ping6(0, 1, Duration::from_secs(5))
        .expect("IPv6 after the repair");

    // A lease change reaches the IPv6 routes: a host-gw peer appears, moves, goes; a peer
    // without PublicIPv6 gets only its IPv4 route.
    let key = format!("{PREFIX}/subnets/10.1.200.0-24&fc00:0:0:fff0::-64");
    let s = "fc00:0:0:fff0::/64";
    let value = |pip6: &str| {
        format!(r#"{{"PublicIP":"192.0.2.99","PublicIPv6":"{pip6}","BackendType":"host-gw"}}"#)
    };
    c.etcdctl(&["put", &key, &value("fd00:192::99")]);
    within(PROPAGATION, "peer's IPv6 route", || {
        route6(&c, 0, s, "fd00:192::99")
    });
    c.etcdctl(&["put", &key, &value("fd00:192::98")]);
    within(PROPAGATION, "moved IPv6 route", || {
        route6(&c, 0, s, "fd00:192::98") && !route6(&c, 0, s, "fd00:192::99")
    });
    c.etcdctl(&[
        "put",
        &key,
        r#"{"PublicIP":"192.0.2.99","PublicIPv6":null,"BackendType":"host-gw"}"#,
    ]);
    within(PROPAGATION, "no IPv6 route without PublicIPv6", || {
        !ip(&c, 0, &["-6", "route", "show", "proto", "153"]).contains(s)
            && ip(&c, 0, &["route", "show", "proto", "153"])
                .contains("10.1.200.0/24 via 192.0.2.99")
    });
    c.etcdctl(&["del", &key]);
    within(PROPAGATION, "route gone", || {
        !ip(&c, 0, &["route", "show", "proto", "153"]).contains("10.1.200.0/24")
    });
    assert_eq!(d[0].stat("routes6"), 1.0);
    assert_eq!(d[0].stat("route6_failures"), 0.0);
}

/// Starts weft on host 0 with `config` and `extra` flags and returns its log once it exited
/// with a failure.
fn refused(c: &Cluster, config: &str, extra: &[&str]) -> String {
    c.put_config(config);
    exit_log(c.start_weft(0, extra))
}

/// The log of `w` once it exited with a failure (within 20 s).
fn exit_log(mut w: Daemon) -> String {
    let st = w
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("weft keeps running:\n{}", w.lines().join("\n")));
    let log = w.lines().join("\n");
    assert!(!st.success(), "exit status {st}:\n{log}");
    log
}

#[test]
fn dual_stack_refusals_name_what_is_not_carried() {
    const T: &str = "dual_stack_refusals_name_what_is_not_carried";
    let Some(c) = dual_cluster(T, 1, VXLAN6) else {
        return;
    };
    let v6 = r#""EnableIPv6":true,"IPv6Network":"fc00::/48""#;
    for (config, extra, needle) in [
        (
            format!(r#"{{"Network":"10.1.0.0/16",{v6},"Backend":{{"Type":"udp"}}}}"#),
            &[][..],
            "IPv6 is not supported with the udp backend",
        ),
        // IPv6 only (weft's own data plane runs it): an IPv4 public address means nothing.
        (
            format!(r#"{{"EnableIPv4":false,{v6},"Backend":{{"Type":"vxlan","Userspace":true}}}}"#),
            &["--public-ip", "192.0.2.1"][..],
            "--public-ip: the network config has EnableIPv4=false",
        ),
        (
            format!(r#"{{"EnableIPv4":false,{v6},"Backend":{{"Type":"udp"}}}}"#),
            &[][..],
            "IPv6 is not supported with the udp backend",
        ),
        (
            r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#.to_string(),
            &["--public-ipv6", "fd00:192::1"][..],
            "--public-ipv6: the network config has no EnableIPv6",
        ),
        (
            format!(
                r#"{{"Network":"10.1.0.0/16",{v6},"IPv6SubnetLen":127,"Backend":{{"Type":"vxlan"}}}}"#
            ),
            &[][..],
            "IPv6SubnetLen=127: SubnetLen must be less than /127",
        ),
    ] {
        let log = refused(&c, &config, extra);
        assert!(
            log.contains(needle),
            "{config} {extra:?}: {needle:?} missing:\n{log}"
        );
        assert_eq!(
            c.etcdctl(&[
                "get",
                "--prefix",
                &format!("{PREFIX}/subnets/"),
                "--keys-only"
            ])
            .trim(),
            "",
            "{config}: nothing leased"
        );
    }
    // IPv6 only picks the underlay by IPv6 rules: an IPv4 --iface-can-reach target cannot pick
    // it (the IPv4 rules could, so this is known only once the config is read).
    let uvxlan6_only =
        format!(r#"{{"EnableIPv4":false,{v6},"Backend":{{"Type":"vxlan","Userspace":true}}}}"#);
    c.put_config(&uvxlan6_only);
    let log = exit_log(c.start_weft_default_iface(0, &["--iface-can-reach", "192.0.2.250"]));
    let needle = "--iface-can-reach 192.0.2.250: an IPv6-only network (EnableIPv4=false) needs \
                  an IPv6 address here";
    assert!(log.contains(needle), "{needle:?} missing:\n{log}");
    // An interface that fits neither rule (br0 has no IPv4 and no usable IPv6 address yet): a
    // usage error at once, naming both.
    let log = exit_log(c.start_weft_default_iface(0, &["--iface", "br0"]));
    for needle in [
        "--iface br0: the interface has no IPv4 address",
        "for an IPv6-only network (EnableIPv4=false)",
        "--iface br0: interface br0 has no usable IPv6 address (global or unique local)",
    ] {
        assert!(log.contains(needle), "{needle:?} missing:\n{log}");
    }
    // No IPv6 address on the underlay and none given: refused, naming the interface.
    c.hosts[0]
        .ns
        .ip(&["-6", "addr", "flush", "dev", "ul0", "scope", "global"])
        .expect("flush");
    let log = refused(&c, VXLAN6, &[]);
    assert!(
        log.contains("EnableIPv6: no public IPv6 address: ul0 has no global IPv6 address"),
        "{log}"
    );
}

#[test]
fn dual_stack_vxlan_direct_routing_for_on_link_ipv6_peers() {
    const T: &str = "dual_stack_vxlan_direct_routing_for_on_link_ipv6_peers";
    let config = r#"{"Network":"10.1.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
    let Some(mut c) = dual_cluster(T, 2, config) else {
        return;
    };
    let d = c.start_weft_all(0..2, &[]);
    let direct6 = |c: &Cluster, i: usize, p: usize| -> bool {
        let want = format!("{} via {} dev ul0 ", c.subnet6(p), c.host_ip6(p));
        ip(c, i, &["-6", "route", "show", "proto", "153"])
            .lines()
            .any(|l| l.trim().starts_with(&want))
    };
    for (i, p) in [(0, 1), (1, 0)] {
        // `ip -6 route get` of the peer's PublicIPv6 has no gateway: a plain route, nothing on
        // the device.
        within(PROPAGATION, "direct IPv6 route", || direct6(&c, i, p));
        let mac6 = link_mac(&c, p, "flannel-v6.1");
        assert_eq!(
            v6_entries(&c, i, &c.subnet6(p), &c.host_ip6(p), &mac6),
            [false; 3],
            "host{}: flannel-v6.1 entries for an on-link peer",
            i + 1
        );
    }
    for i in 0..2 {
        c.attach_container(i);
        c.attach_container6(i);
    }
    ping_both(&c, &[0, 1]);
    // A peer whose PublicIPv6 is not on-link goes through flannel-v6.1.
    let key = format!("{PREFIX}/subnets/10.1.200.0-24&fc00:0:0:fff0::-64");
    c.etcdctl(&[
        "put",
        &key,
        r#"{"PublicIP":"203.0.113.9","PublicIPv6":"2001:db8:ff::9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:99:04"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:99:06"}}"#,
    ]);
    wait_v6_entries(
        &c,
        0,
        "fc00:0:0:fff0::/64",
        "2001:db8:ff::9",
        "0e:00:00:00:99:06",
        true,
    );
    assert_eq!(d[0].stat("direct6"), 1.0);
    assert_eq!(d[0].stat("peers6"), 2.0);
    c.etcdctl(&["del", &key]);
    wait_v6_entries(
        &c,
        0,
        "fc00:0:0:fff0::/64",
        "2001:db8:ff::9",
        "0e:00:00:00:99:06",
        false,
    );
}

const VXLAN6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;
const HOST_GW6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}"#;

/// `<prefix>/subnets/0.0.0.0-0&fc00:…::-64`, host `i`'s IPv6-only lease key.
fn v6_only_key(c: &Cluster, i: usize) -> String {
    format!(
        "{PREFIX}/subnets/0.0.0.0-0&{}",
        c.subnet6(i).replace('/', "-")
    )
}

/// subnet.env of an IPv6-only host: the IPv6 pair, MTU and IPMASQ only.
fn check_v6_only_env(c: &Cluster, i: usize) {
    let text = std::fs::read_to_string(c.subnet_file(i)).expect("subnet.env");
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert_eq!(
        keys,
        [
            "FLANNEL_IPV6_NETWORK",
            "FLANNEL_IPV6_SUBNET",
            "FLANNEL_MTU",
            "FLANNEL_IPMASQ"
        ],
        "host{}: {text}",
        i + 1
    );
}

#[test]
fn ipv6_only_kernel_vxlan_two_hosts() {
    const T: &str = "ipv6_only_kernel_vxlan_two_hosts";
    let Some(c) = dual_cluster(T, 2, VXLAN6_ONLY) else {
        return;
    };
    let mut d = c.start_weft_all(0..2, &["--ip-masq"]);
    let mut macs6 = Vec::new();
    for i in 0..2 {
        check_v6_only_env(&c, i);
        assert_eq!(
            c.subnet_env(i)["FLANNEL_MTU"],
            "1430",
            "the IPv6 device's MTU"
        );
        assert!(
            c.hosts[i].ns.ip(&["link", "show", "flannel.1"]).is_err(),
            "host{}: no IPv4 device",
            i + 1
        );
        let mac6 = link_mac(&c, i, "flannel-v6.1");
        // PublicIP 0.0.0.0 and no BackendData, as flannel writes an IPv6-only lease.
        assert_eq!(
            c.get(&v6_only_key(&c, i)),
            format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#,
                c.host_ip6(i)
            )
        );
        // No IPv4 rules, the IPv6 ones in place.
        let nat4 = c.hosts[i]
            .ns
            .run(&["iptables", "-t", "nat", "-S"])
            .expect("iptables");
        assert!(!nat4.contains("FLANNEL-POSTRTG"), "{nat4}");
        let nat6 = c.hosts[i]
            .ns
            .run(&["ip6tables", "-t", "nat", "-S"])
            .expect("ip6tables");
        assert!(
            nat6.contains("-A FLANNEL-POSTRTG -s fc00::/48 ! -d ff00::/8"),
            "{nat6}"
        );
        macs6.push(mac6);
    }
    // Two IPv6-only hosts: two leases (flannel's PublicIP match would make them share one).
    assert_ne!(c.subnet6(0), c.subnet6(1));
    for (i, p) in [(0, 1), (1, 0)] {
        wait_v6_entries(&c, i, &c.subnet6(p), &c.host_ip6(p), &macs6[p], true);
    }
    for i in 0..2 {
        c.attach_container6(i);
    }
    for (a, b) in [(0, 1), (1, 0)] {
        c.ping6(a, b, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // Restart: the same lease, found by PublicIPv6.
    let (env, key) = (c.subnet_env(0), v6_only_key(&c, 0));
    let lease = c.get(&key);
    assert!(d.remove(0).stop().success());
    d.insert(0, c.start_weft(0, &["--ip-masq"]));
    d[0].wait_running();
    assert_eq!(c.subnet_env(0), env);
    assert_eq!(c.get(&key), lease);
    c.ping6(1, 0, Duration::from_secs(10))
        .expect("after the restart");
    assert_eq!(d[0].stat("peers6"), 1.0);
}

#[test]
fn ipv6_only_host_gw_two_hosts() {
    const T: &str = "ipv6_only_host_gw_two_hosts";
    let Some(c) = dual_cluster(T, 2, HOST_GW6_ONLY) else {
        return;
    };
    let d = c.start_weft_all(0..2, &[]);
    for i in 0..2 {
        check_v6_only_env(&c, i);
        assert_eq!(c.subnet_env(i)["FLANNEL_MTU"], "1500");
        assert_eq!(
            c.get(&v6_only_key(&c, i)),
            format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}","BackendType":"host-gw"}}"#,
                c.host_ip6(i)
            )
        );
        assert_eq!(
            ip(&c, i, &["route", "show", "proto", "153"]).trim(),
            "",
            "no IPv4 route"
        );
    }
    for (i, p) in [(0, 1), (1, 0)] {
        let want = format!("{} via {} dev ul0 ", c.subnet6(p), c.host_ip6(p));
        within(PROPAGATION, "IPv6-only host-gw route", || {
            ip(&c, i, &["-6", "route", "show", "proto", "153"])
                .lines()
                .any(|l| l.trim().starts_with(&want))
        });
    }
    for i in 0..2 {
        c.attach_container6(i);
    }
    for (a, b) in [(0, 1), (1, 0)] {
        c.ping6(a, b, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(d[0].stat("routes6"), 1.0);
}

const UVXLAN6: &str = r#"{"Network":"10.1.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan","Userspace":true}}"#;

/// The VTEP MAC a userspace vxlan host with public IP 192.0.2.<i + 1> publishes (both families).
fn user_mac(i: usize) -> String {
    format!("0e:57:c0:00:02:{:02x}", i + 1)
}

/// A checked TCP transfer of at least `bytes` over IPv6 from container `from` to container `to`.
fn transfer6(c: &Cluster, from: usize, to: usize, bytes: u64) -> u64 {
    let t = testkit::transfer::Transfer::start(
        &c.hosts[from].ctr,
        &c.hosts[to].ctr,
        &c.ctr_ip6(to),
        bytes,
        false,
    );
    let got = t.finish();
    assert!(
        got >= bytes,
        "ctr{} -> ctr{}: {got} of {bytes} bytes",
        from + 1,
        to + 1
    );
    eprintln!(
        "ctr{} -> ctr{} over IPv6: {got} bytes, all checked",
        from + 1,
        to + 1
    );
    got
}

#[test]
fn dual_stack_userspace_vxlan_two_hosts() {
    const T: &str = "dual_stack_userspace_vxlan_two_hosts";
    let Some(mut c) = dual_cluster(T, 2, UVXLAN6) else {
        return;
    };
    let d = c.start_weft_all(0..2, &[]);
    for i in 0..2 {
        check_env_order(&c, i);
        // One TUN device for both families: the smaller MTU, 1500 − 70 (VXLAN over IPv6).
        assert_eq!(c.subnet_env(i)["FLANNEL_MTU"], "1430");
        let mac = user_mac(i);
        assert_eq!(
            c.get(&c.lease_key_dual(i)),
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
                c.hosts[i].ip,
                c.host_ip6(i)
            ),
            "lease of host{}",
            i + 1
        );
        // The TUN device has the IPv6 subnet's address and routes the IPv6 network.
        let addrs = ip(
            &c,
            i,
            &["-6", "addr", "show", "dev", "weft0", "scope", "global"],
        );
        assert!(
            addrs.contains(&format!("inet6 {}/128 ", addr_of(&c.subnet6(i)))),
            "host{}: {addrs}",
            i + 1
        );
        let routes = ip(&c, i, &["-6", "route", "show", "dev", "weft0"]);
        assert!(
            routes.lines().any(|l| l.starts_with("fc00::/48 ")),
            "host{}: {routes}",
            i + 1
        );
        let link = ip(&c, i, &["link", "show", "dev", "weft0"]);
        assert!(link.contains(" mtu 1430 "), "host{}: {link}", i + 1);
    }
    for i in 0..2 {
        c.attach_container(i);
        c.attach_container6(i);
    }
    ping_both(&c, &[0, 1]);
    transfer6(&c, 0, 1, 16 << 20);
    transfer6(&c, 1, 0, 16 << 20);
    for (i, dm) in d.iter().enumerate() {
        let (tx, rx) = (dm.counter("tx_packets"), dm.counter("rx_packets"));
        eprintln!("host{}: tx_packets {tx} rx_packets {rx}", i + 1);
        assert!(
            tx > 1000 && rx > 1000,
            "host{}: the transfers went through weft",
            i + 1
        );
        for bad in ["drop_spoofed", "drop_unknown_sender", "drop_vxlan_not_ipv6"] {
            assert!(
                dm.counter(bad) <= 0,
                "host{}: {bad} {}",
                i + 1,
                dm.counter(bad)
            );
        }
    }

    // A frame from host 2's underlay address claiming host 1's own IPv6 subnet as inner source
    // is refused as spoofed; host 2's container is still reached afterwards.
    let before = d[0].counter("drop_spoofed").max(0);
    let spoof = format!(
        "import socket\n\
         mac=bytes.fromhex('{}')\n\
         src=socket.inet_pton(socket.AF_INET6,'{}')\n\
         dst=socket.inet_pton(socket.AF_INET6,'{}')\n\
         udp=bytes([0x30,0x39,0,53,0,8,0,0])\n\
         ip6=bytes([0x60,0,0,0,0,8,17,64])+src+dst\n\
         f=bytes([8,0,0,0,0,0,1,0])+mac+bytes.fromhex('0e5700000099')+bytes([0x86,0xdd])+ip6+udp\n\
         s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n\
         s.bind(('{}',0))\n\
         s.sendto(f,('{}',8472))\n",
        user_mac(0).replace(':', ""),
        c.ctr_ip6(0),
        c.ctr_ip6(0),
        c.host_ip6(1),
        c.host_ip6(0),
    );
    c.hosts[1]
        .ns
        .run(&["python3", "-c", &spoof])
        .expect("send the spoofed frame");
    within(Duration::from_secs(5), "spoofed frame counted", || {
        d[0].counter("drop_spoofed") > before
    });
    c.ping6(1, 0, Duration::from_secs(10))
        .expect("IPv6 after the spoofed frame");
}

#[test]
fn dual_stack_mixed_kernel_and_userspace_vxlan() {
    // Host 1's underlay leaves with complete checksums and no TSO, as from a NIC.
    mixed_kernel_and_userspace(
        "dual_stack_mixed_kernel_and_userspace_vxlan",
        TxOffload::Off,
    );
}

#[test]
fn dual_stack_mixed_kernel_and_userspace_vxlan_with_tx_offload() {
    // Host 1's underlay keeps TX checksum offload and TSO (a veth's defaults): its kernel vxlan
    // devices' GSO super-packets cross into host 2 whole, and the inner TCP packets weft takes
    // out of them are longer than host 2's MTU; weft cuts them to it (rx_inner_cuts).
    mixed_kernel_and_userspace(
        "dual_stack_mixed_kernel_and_userspace_vxlan_with_tx_offload",
        TxOffload::On,
    );
}

/// Longest a 4 MiB transfer of [`mixed_kernel_and_userspace`] may take.
const TRANSFER_TIME: Duration = Duration::from_secs(15);

/// Host 1's underlay TX offloads in [`mixed_kernel_and_userspace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxOffload {
    /// Turned off: the kernel vxlan device's packets leave segmented, checksums complete.
    Off,
    /// Left on: super-packets cross the veth underlay whole.
    On,
}

/// Host 1 kernel vxlan (flannel.1 and flannel-v6.1), host 2 weft's own data plane: pings both
/// ways and families, then 4 MiB of TCP each way over IPv6 and (with TX offload on) over IPv4,
/// each within the transfer's deadline.
fn mixed_kernel_and_userspace(test: &str, offload: TxOffload) {
    let Some(mut c) = dual_cluster(test, 2, VXLAN6) else {
        return;
    };
    if offload == TxOffload::Off {
        c.underlay_tx_checksum_off(0)
            .expect("host1: tx checksum offload off");
    }
    let k = c.start_weft(0, &[]);
    let u = c.start_weft(1, &["--vxlan-dataplane=userspace"]);
    k.wait_running();
    u.wait_running();
    // The kernel host programs the userspace host's IPv6 VTEP (its one MAC) on flannel-v6.1.
    wait_v6_entries(&c, 0, &c.subnet6(1), &c.host_ip6(1), &user_mac(1), true);
    for i in 0..2 {
        c.attach_container(i);
        c.attach_container6(i);
    }
    ping_both(&c, &[0, 1]);
    let mut families = vec![("IPv6", c.ctr_ip6(0), c.ctr_ip6(1))];
    if offload == TxOffload::On {
        families.push(("IPv4", c.hosts[0].ctr_ip(), c.hosts[1].ctr_ip()));
    }
    for (family, ip0, ip1) in &families {
        for (from, to, dst) in [(1, 0, ip0), (0, 1, ip1)] {
            let started = std::time::Instant::now();
            let t = testkit::transfer::Transfer::start(
                &c.hosts[from].ctr,
                &c.hosts[to].ctr,
                dst,
                4 << 20,
                false,
            );
            let gap = match t.try_finish() {
                Ok((_, gap)) => gap,
                Err(e) => panic!(
                    "ctr{} -> ctr{} over {family}: {e}; userspace host: {:?}",
                    from + 1,
                    to + 1,
                    u.stats()
                ),
            };
            let took = started.elapsed();
            eprintln!(
                "{test}: ctr{} -> ctr{} over {family}: 4 MiB, checked, in {took:.2?} \
                 (longest wait {gap:.2?}); rx_inner_cuts {}",
                from + 1,
                to + 1,
                u.counter("rx_inner_cuts")
            );
            // A few hundred milliseconds on a loaded machine; a flow that loses its long
            // packets crawls through retransmission timeouts instead.
            assert!(
                took < TRANSFER_TIME,
                "ctr{} -> ctr{} over {family}: 4 MiB took {took:?}",
                from + 1,
                to + 1
            );
        }
    }
    assert!(
        u.counter("tx_packets") > 1000,
        "the userspace host sent the transfer"
    );
    assert!(u.counter("drop_vxlan_wrong_mac") <= 0);
    assert!(u.counter("drop_inner_too_big") <= 0, "{:?}", u.stats());
    if offload == TxOffload::On {
        assert!(
            u.counter("rx_inner_cuts") > 0,
            "the kernel host's super-packets arrived whole and were cut: {:?}",
            u.stats()
        );
    }
}

const UVXLAN6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan","Userspace":true}}"#;

/// The VTEP MAC an IPv6-only userspace vxlan host `i` publishes: `0e:57:` and the 32-bit FNV-1a
/// hash of its public IPv6 address (offset basis 0x811c9dc5, prime 0x01000193).
fn user_mac6(c: &Cluster, i: usize) -> String {
    let ip: std::net::Ipv6Addr = c.host_ip6(i).parse().expect("host IPv6");
    let mut h: u32 = 0x811c_9dc5;
    for b in ip.octets() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let h = h.to_be_bytes();
    format!("0e:57:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3])
}

/// What weft's own data plane shows on host `i` of an IPv6-only network: the lease as an
/// IPv6-only vxlan one, the TUN device with only the IPv6 address and route (MTU 1430), and
/// UDP port 8472 bound on the IPv6 underlay address only.
fn check_v6_only_userspace_host(c: &Cluster, i: usize) {
    check_v6_only_env(c, i);
    assert_eq!(c.subnet_env(i)["FLANNEL_MTU"], "1430", "underlay − 70");
    assert_eq!(
        c.get(&v6_only_key(c, i)),
        format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            c.host_ip6(i),
            user_mac6(c, i)
        ),
        "lease of host{}",
        i + 1
    );
    let h = i + 1;
    assert_eq!(
        ip(c, i, &["-4", "addr", "show", "dev", "weft0"]).trim(),
        "",
        "host{h}: no IPv4 address on weft0"
    );
    assert_eq!(
        ip(c, i, &["-4", "route", "show", "dev", "weft0"]).trim(),
        "",
        "host{h}: no IPv4 route through weft0"
    );
    let addrs = ip(
        c,
        i,
        &["-6", "addr", "show", "dev", "weft0", "scope", "global"],
    );
    assert!(
        addrs.contains(&format!("inet6 {}/128 ", addr_of(&c.subnet6(i)))),
        "host{h}: {addrs}"
    );
    let routes = ip(c, i, &["-6", "route", "show", "dev", "weft0"]);
    assert!(
        routes.lines().any(|l| l.starts_with("fc00::/48 ")),
        "host{h}: {routes}"
    );
    let link = ip(c, i, &["link", "show", "dev", "weft0"]);
    assert!(link.contains(" mtu 1430 "), "host{h}: {link}");
    let udp = c.hosts[i]
        .ns
        .run(&["ss", "-Hunl", "sport", "=", ":8472"])
        .expect("ss");
    let bound: Vec<&str> = udp
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert!(!bound.is_empty(), "host{h}: nothing bound on 8472");
    let want = format!("[{}]:8472", c.host_ip6(i));
    assert!(
        bound.iter().all(|b| *b == want),
        "host{h}: 8472 bound on {bound:?}, want only {want}"
    );
}

/// Pings over IPv6 both ways and a checked TCP transfer over IPv6 each way between the containers
/// of hosts 0 and 1; each host's weft carried at least `min` packets each way.
fn v6_only_traffic(c: &Cluster, d: &[Daemon], bytes: u64, min: i64) {
    for (a, b) in [(0, 1), (1, 0)] {
        c.ping6(a, b, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    transfer6(c, 0, 1, bytes);
    transfer6(c, 1, 0, bytes);
    for (i, dm) in d.iter().enumerate() {
        let (tx, rx) = (dm.counter("tx_packets"), dm.counter("rx_packets"));
        eprintln!("host{}: tx_packets {tx} rx_packets {rx}", i + 1);
        assert!(
            tx > min && rx > min,
            "host{}: the traffic went through weft (tx {tx}, rx {rx})",
            i + 1
        );
        for bad in ["drop_spoofed", "drop_unknown_sender", "drop_vxlan_not_ipv6"] {
            assert!(dm.counter(bad) <= 0, "host{}: {bad}", i + 1);
        }
    }
}

#[test]
fn ipv6_only_userspace_vxlan_two_hosts() {
    const T: &str = "ipv6_only_userspace_vxlan_two_hosts";
    let Some(c) = dual_cluster(T, 2, UVXLAN6_ONLY) else {
        return;
    };
    let d = c.start_weft_all(0..2, &["--ip-masq"]);
    for i in 0..2 {
        check_v6_only_userspace_host(&c, i);
    }
    assert_ne!(c.subnet6(0), c.subnet6(1));
    for i in 0..2 {
        c.attach_container6(i);
    }
    v6_only_traffic(&c, &d, 16 << 20, 1000);

    // An inner IPv4 packet read from the TUN device has nowhere to go: counted as no_route, and
    // no ICMP error (weft0 has no IPv4 address to send one from).
    let (no_route, icmp) = (d[0].counter("drop_no_route"), d[0].counter("icmp_sent"));
    ip(&c, 0, &["route", "replace", "10.99.0.0/16", "dev", "weft0"]);
    let _ = c.hosts[0]
        .ns
        .run(&["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "10.99.0.1"]);
    within(Duration::from_secs(5), "IPv4 drops counted", || {
        d[0].counter("drop_no_route") >= no_route + 3
    });
    assert_eq!(
        d[0].counter("icmp_sent"),
        icmp,
        "no ICMP error without IPv4"
    );
    ip(&c, 0, &["route", "del", "10.99.0.0/16", "dev", "weft0"]);
    c.ping6(1, 0, Duration::from_secs(10))
        .expect("IPv6 after the IPv4 packets");
}

/// Two hosts whose underlay has no IPv4 address at all (etcd reached over IPv6), `config` in etcd.
fn v6_only_underlay_cluster(test: &str, config: &str) -> Option<Cluster> {
    let mut c = Cluster::for_test(test, 2)?;
    c.ipv6_only_underlay().expect("IPv6-only underlay");
    c.start_etcd();
    c.put_config(config);
    for i in 0..2 {
        let v4 = ip(&c, i, &["-4", "addr", "show", "dev", "ul0"]);
        assert_eq!(v4.trim(), "", "host{}: IPv4 left on ul0", i + 1);
    }
    Some(c)
}

#[test]
fn ipv6_only_without_ipv4_on_the_underlay() {
    const T: &str = "ipv6_only_without_ipv4_on_the_underlay";
    // Kernel host-gw, then weft's own data plane, on hosts with no IPv4 address: host 1 names
    // its underlay (--iface ul0), host 2 runs on the IPv6 default route's interface.
    let Some(c) = v6_only_underlay_cluster(T, HOST_GW6_ONLY) else {
        return;
    };
    let start = |c: &Cluster| {
        let d = vec![c.start_weft(0, &[]), c.start_weft_default_iface(1, &[])];
        for x in &d {
            x.wait_running();
        }
        d
    };
    let d = start(&c);
    for i in 0..2 {
        check_v6_only_env(&c, i);
        assert_eq!(c.subnet_env(i)["FLANNEL_MTU"], "1500");
        assert_eq!(
            c.get(&v6_only_key(&c, i)),
            format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}","BackendType":"host-gw"}}"#,
                c.host_ip6(i)
            )
        );
    }
    for (i, p) in [(0, 1), (1, 0)] {
        let want = format!("{} via {} dev ul0 ", c.subnet6(p), c.host_ip6(p));
        within(PROPAGATION, "IPv6-only host-gw route", || {
            ip(&c, i, &["-6", "route", "show", "proto", "153"])
                .lines()
                .any(|l| l.trim().starts_with(&want))
        });
    }
    for i in 0..2 {
        c.attach_container6(i);
    }
    for (a, b) in [(0, 1), (1, 0)] {
        c.ping6(a, b, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for x in d {
        assert!(x.stop().success());
    }

    // The same hosts with weft's own data plane: the leases are kept (found by PublicIPv6) with
    // the new backend's attributes.
    c.put_config(UVXLAN6_ONLY);
    let d = start(&c);
    for i in 0..2 {
        check_v6_only_userspace_host(&c, i);
        c.attach_container6(i);
    }
    // host-gw's routes go with the backend switch; the overlay now runs through weft0.
    for i in 0..2 {
        let routes = ip(&c, i, &["-6", "route", "show", "proto", "153"]);
        assert_eq!(routes.trim(), "", "host{}: host-gw routes left", i + 1);
    }
    v6_only_traffic(&c, &d, 8 << 20, 500);
}
