//! End-to-end test of TUN offloads for IPv6 in weft's own data plane: two userspace vxlan hosts
//! on a dual-stack underlay (see `support/cluster.rs`), a real etcd, real TUN devices with TSO,
//! and a checked TCP transfer over IPv6 each way. The sender's TSO super-packets must be cut in
//! place (`tx_super_cuts`) and leave as UDP GSO runs over the IPv6 socket; the receiver must write
//! each received run of segments into its TUN device as one TCPV6 super-packet
//! (`rx_tso_writes`). Root is required (namespaces, TUN).
//!
//! The cluster is declared before the daemons, so they stop before the namespaces go, also when
//! the test panics.

mod support;

use std::collections::HashMap;
use support::cluster::Cluster;

const UVXLAN6: &str = r#"{"Network":"10.1.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan","Userspace":true}}"#;

const MB: u64 = 1 << 20;

fn stat(m: &HashMap<String, f64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0.0) as u64
}

#[test]
fn ipv6_tcp_is_cut_in_place_and_written_as_tso_super_packets() {
    const T: &str = "ipv6_tcp_is_cut_in_place_and_written_as_tso_super_packets";
    let Some(mut c) = Cluster::for_test(T, 2) else {
        return;
    };
    c.enable_ipv6_underlay().expect("IPv6 underlay");
    c.start_etcd();
    c.put_config(UVXLAN6);
    let d = c.start_weft_all(0..2, &["--offload", "on"]);
    for i in 0..2 {
        c.attach_container(i);
        c.attach_container6(i);
    }
    c.ping6(0, 1, std::time::Duration::from_secs(10))
        .expect("IPv6 ping ctr1 -> ctr2");
    for (from, to, bytes) in [(0, 1, 64 * MB), (1, 0, 32 * MB)] {
        let got = testkit::transfer::Transfer::start(
            &c.hosts[from].ctr,
            &c.hosts[to].ctr,
            &c.ctr_ip6(to),
            bytes,
            false,
        )
        .finish();
        assert!(
            got >= bytes,
            "ctr{} -> ctr{}: {got} of {bytes}",
            from + 1,
            to + 1
        );
    }
    let (sa, sb) = (d[0].stats(), d[1].stats());
    eprintln!("host1: {sa:?}\nhost2: {sb:?}");
    for (name, s) in [("host1", &sa), ("host2", &sb)] {
        // Both hosts sent TCP data (and acknowledgments): the data as cut super-packets.
        assert!(stat(s, "tx_super_cuts") > 0, "{name}: {s:?}");
        assert!(stat(s, "tx_gso_sends") > 0, "{name}: {s:?}");
        assert!(stat(s, "rx_gro_runs") > 0, "{name}: {s:?}");
        assert!(stat(s, "rx_tso_writes") > 0, "{name}: {s:?}");
        // Nothing dropped but the TUN device's own neighbour discovery and MLD.
        assert_eq!(
            stat(s, "dropped"),
            stat(s, "drop_ipv6_multicast"),
            "{name}: {s:?}"
        );
    }
    // The receiver of the larger transfer wrote super-packets of several segments each, and
    // every inner packet and byte is counted.
    assert!(
        stat(&sb, "rx_packets") > 2 * stat(&sb, "rx_tso_writes"),
        "{sb:?}"
    );
    assert!(stat(&sb, "rx_bytes") >= 64 * MB, "{sb:?}");
    for x in d {
        assert!(x.stop().success());
    }
}
