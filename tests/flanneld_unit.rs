//! A flanneld host switched over without touching its unit file: weft started exactly as a
//! flanneld unit starts flanneld (as a binary named `flanneld`, no subcommand, Go-style
//! single-dash flags, `FLANNELD_*` variables), with the flags flanneld v0.28.9 adds
//! (`-iface-regex`, `-iface-can-reach`, `-ip-blackhole-route`), against a real etcd; then
//! `EnableNFTables` and the static-mode flags. Root is required (namespaces, TUN).

mod support;

use std::time::Duration;
use support::cluster::{Cluster, CONFIG};
use support::daemon::{self, Daemon};
use testkit::netns::{self, TwoHosts};
use testkit::wait::within;

const PREFIX: &str = "/coreos.com/network";

/// The weft binary under flanneld's name (a symlink in the cluster's directory).
fn flanneld_link(c: &Cluster) -> String {
    let link = c.dir.join("flanneld");
    if !link.exists() {
        std::os::unix::fs::symlink(daemon::weft_bin(), &link).expect("symlink flanneld");
    }
    link.to_string_lossy().into_owned()
}

#[test]
fn a_flanneld_unit_starts_weft_unchanged() {
    let Some(mut c) = Cluster::with_etcd("a_flanneld_unit_starts_weft_unchanged", 2, CONFIG) else {
        return;
    };
    let flanneld = flanneld_link(&c);
    let url = c.url().to_string();
    let files: Vec<String> = (0..2)
        .map(|i| c.subnet_file(i).to_string_lossy().into_owned())
        .collect();
    // Host 1: the seeds' unit flags, one dash each, plus the v0.28 interface and route flags.
    let endpoints = format!("-etcd-endpoints={url}");
    let subnet_file = format!("-subnet-file={}", files[0]);
    let a = Daemon::start_program(
        c.hosts[0].ns.name(),
        "flanneld-host1",
        &flanneld,
        &[
            &endpoints,
            &format!("-etcd-prefix={PREFIX}"),
            "-iface-regex=^nomatch[0-9]$",
            "-iface-regex=^ul[0-9]$",
            &subnet_file,
            "-ip-masq",
            "-iptables-resync=1",
            "-ip-blackhole-route",
            "-subnet-lease-renew-margin=30",
            "-v=2",
        ],
        &[],
    );
    // Host 2: the same from FLANNELD_* variables (as an EnvironmentFile= would set them), the
    // interface found by the route to host 1.
    let b = Daemon::start_program(
        c.hosts[1].ns.name(),
        "flanneld-host2",
        &flanneld,
        &[],
        &[
            ("FLANNELD_ETCD_ENDPOINTS", url.as_str()),
            ("FLANNELD_IFACE_CAN_REACH", c.hosts[0].ip.as_str()),
            ("FLANNELD_SUBNET_FILE", files[1].as_str()),
            ("FLANNELD_IP_MASQ", "true"),
            ("FLANNELD_KUBE_SUBNET_MGR", "false"),
        ],
    );
    a.wait_running();
    b.wait_running();
    for (d, i) in [(&a, 0), (&b, 1)] {
        assert!(
            d.logged("underlay=ul0"),
            "host {i}: underlay ul0 not chosen:\n{}",
            d.lines().join("\n")
        );
        let env = c.subnet_env(i);
        assert_eq!(env["FLANNEL_NETWORK"], "10.1.0.0/16");
        assert_eq!(env["FLANNEL_IPMASQ"], "true");
        let nat = c.hosts[i]
            .ns
            .run(&["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"])
            .expect("masquerade chain");
        assert!(nat.contains("MASQUERADE"), "host {i}: {nat}");
    }
    // -v=2 raised the log level to debug.
    assert!(
        a.lines().iter().any(|l| l.contains("DEBUG")),
        "-v=2 gave no debug lines:\n{}",
        a.lines().join("\n")
    );
    // -ip-blackhole-route: after one resync interval, the own subnet, not the peer's.
    let own = c.subnet_env(0)["FLANNEL_SUBNET"].replace(".1/", ".0/");
    within(Duration::from_secs(10), "blackhole route on host 1", || {
        c.hosts[0]
            .ns
            .ip(&["route", "show", "type", "blackhole"])
            .is_ok_and(|r| r.trim() == format!("blackhole {own} metric 4294967295"))
    });
    let none = c.hosts[1]
        .ns
        .ip(&["route", "show", "type", "blackhole"])
        .expect("routes");
    assert!(
        none.trim().is_empty(),
        "host 2 was not asked for one: {none}"
    );
    // The route is put back when deleted.
    c.hosts[0]
        .ns
        .ip(&["route", "del", "blackhole", &own])
        .expect("delete it");
    within(Duration::from_secs(10), "blackhole route back", || {
        c.hosts[0]
            .ns
            .ip(&["route", "show", "type", "blackhole"])
            .is_ok_and(|r| r.contains(&own))
    });
    // And the overlay carries traffic.
    for i in 0..2 {
        c.attach_container(i);
    }
    c.ping(0, 1, Duration::from_secs(10))
        .expect("container 1 reaches container 2");
    c.ping(1, 0, Duration::from_secs(10))
        .expect("container 2 reaches container 1");
}

#[test]
fn enable_nftables_installs_flannels_nftables_rules_instead_of_iptables() {
    let config = r#"{"Network": "10.1.0.0/16", "SubnetLen": 24, "SubnetMin": "10.1.15.0", "SubnetMax": "10.1.20.0", "EnableNFTables": true, "Backend": {"Type": "udp"}}"#;
    let Some(c) = Cluster::with_etcd(
        "enable_nftables_installs_flannels_nftables_rules_instead_of_iptables",
        1,
        config,
    ) else {
        return;
    };
    let ns = &c.hosts[0].ns;
    // A previous iptables run's rules, to be removed at start.
    for rule in [
        &["-t", "nat", "-N", "FLANNEL-POSTRTG"][..],
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ],
    ] {
        let mut args = vec!["iptables"];
        args.extend_from_slice(rule);
        ns.run(&args).expect("iptables");
    }
    let d = c.start_weft(0, &["--ip-masq"]);
    d.wait_running();
    let table = ns
        .run(&["nft", "list", "table", "ip", "flannel-ipv4"])
        .expect("the nftables table exists");
    let subnet = c.subnet_env(0)["FLANNEL_SUBNET"].replace(".1/", ".0/");
    for needle in [
        "chain postrtg".to_string(),
        "type nat hook postrouting priority srcnat; policy accept;".to_string(),
        "meta mark 0x00004000 return".to_string(),
        format!("ip saddr {subnet} ip daddr 10.1.0.0/16 return"),
        "chain forward".to_string(),
        "ip saddr 10.1.0.0/16 accept".to_string(),
        "ip daddr 10.1.0.0/16 accept".to_string(),
    ] {
        assert!(table.contains(&needle), "lacks {needle:?}:\n{table}");
    }
    ns.run(&["nft", "list", "table", "ip6", "flannel-ipv6"])
        .expect("the v6 table exists too");
    let nat = ns
        .run(&["iptables", "-t", "nat", "-S", "POSTROUTING"])
        .expect("iptables");
    assert!(
        !nat.contains("FLANNEL-POSTRTG"),
        "iptables jump left: {nat}"
    );
    // Deleted from outside: back within a resync interval (5 s by default).
    ns.run(&["nft", "delete", "table", "ip", "flannel-ipv4"])
        .expect("delete");
    within(Duration::from_secs(15), "nftables table back", || {
        ns.run(&["nft", "list", "table", "ip", "flannel-ipv4"])
            .is_ok_and(|t| t.contains("masquerade"))
    });
}

#[test]
fn static_mode_writes_the_subnet_file_and_installs_the_rules_it_is_asked_for() {
    let test = "static_mode_writes_the_subnet_file_and_installs_the_rules_it_is_asked_for";
    if !netns::require_root(test) {
        return;
    }
    netns::sweep_stale();
    let t: TwoHosts = netns::two_hosts(netns::Attach::Bridge).expect("topology");
    let dir = std::env::temp_dir().join(format!("weft-static-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("subnet.env");
    let file_s = file.to_string_lossy().into_owned();
    let peer = format!("{}={}", netns::SUBNET_B, netns::HOST_B_UL);
    let mut args = netns::weft_run_args(netns::SUBNET_A, &peer);
    args.extend([
        "--subnet-file",
        &file_s,
        "--ip-masq",
        "--iptables-forward-rules=true",
    ]);
    let a = Daemon::start(t.host_a.name(), "weft-a", &args);
    a.wait_running();
    within(Duration::from_secs(5), "subnet.env written", || {
        file.exists()
    });
    let text = std::fs::read_to_string(&file).expect("subnet.env");
    let first = netns::SUBNET_A.replace(".0/", ".1/");
    assert_eq!(
        text,
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={first}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ=true\n",
            netns::OVERLAY_NET,
            netns::UDP_BACKEND_MTU
        )
    );
    let nat = t
        .host_a
        .run(&["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"])
        .expect("masquerade chain");
    assert!(nat.contains("MASQUERADE"), "{nat}");
    let fwd = t
        .host_a
        .run(&["iptables", "-S", "FLANNEL-FWD"])
        .expect("forward chain");
    assert!(fwd.contains(netns::OVERLAY_NET), "{fwd}");
    // Without the flags, static mode writes and installs nothing (host B).
    let b = Daemon::start(
        t.host_b.name(),
        "weft-b",
        &netns::weft_run_args(
            netns::SUBNET_B,
            &format!("{}={}", netns::SUBNET_A, netns::HOST_A_UL),
        ),
    );
    b.wait_running();
    let chains = t.host_b.run(&["iptables-save"]).expect("iptables-save");
    assert!(!chains.contains("FLANNEL"), "{chains}");
    drop((a, b));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn data_plane_flags_with_a_kernel_backend_are_refused() {
    let config = r#"{"Network": "10.1.0.0/16", "SubnetLen": 24, "Backend": {"Type": "host-gw"}}"#;
    let Some(c) = Cluster::with_etcd(
        "data_plane_flags_with_a_kernel_backend_are_refused",
        1,
        config,
    ) else {
        return;
    };
    for extra in [&["--workers", "2"][..], &["--vxlan-dataplane", "userspace"]] {
        let mut d = c.start_weft(0, extra);
        let status = d
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{extra:?}: weft kept running:\n{}", d.lines().join("\n")));
        assert_eq!(status.code(), Some(1), "{extra:?}");
        assert!(
            d.logged(&format!("{}:", extra[0])),
            "{extra:?}: no error naming the flag:\n{}",
            d.lines().join("\n")
        );
    }
}
