//! Control-plane tests against a real etcd (Debian's etcd-server) in its own namespace, with
//! weft hosts on a shared underlay switch. Root is required (namespaces, TUN).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/netns.rs"]
mod netns;

use cluster::{Cluster, CONFIG};
use daemon::Daemon;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const PREFIX: &str = "/coreos.com/network";

fn cluster(test: &str, hosts: usize) -> Option<Cluster> {
    if !netns::require_root(test) {
        return None;
    }
    netns::sweep_stale();
    let mut c = Cluster::new(hosts).expect("build the cluster topology");
    c.start_etcd();
    c.etcdctl(&["put", &format!("{PREFIX}/config"), CONFIG]);
    Some(c)
}

fn stat(d: &Daemon, key: &str) -> u64 {
    d.stats().get(key).copied().unwrap_or(-1.0) as u64
}

/// Waits until `cond` holds, polling every 50 ms; returns the time it took.
fn within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn hosts_lease_distinct_subnets_join_and_leave_live() {
    let Some(mut c) = cluster("hosts_lease_distinct_subnets_join_and_leave_live", 3) else {
        return;
    };
    let mut daemons: Vec<Daemon> = (0..3).map(|i| c.start_weft(i, &[])).collect();
    for d in &daemons {
        d.wait_running();
    }
    let mut subnets = HashSet::new();
    for i in 0..3 {
        let text = std::fs::read_to_string(c.subnet_file(i)).expect("subnet.env");
        let env = c.subnet_env(i);
        let subnet = env["FLANNEL_SUBNET"].clone();
        assert_eq!(
            text,
            format!("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
        );
        let third: u8 = subnet.split('.').nth(2).expect("octet").parse().expect("number");
        assert!((15..=20).contains(&third) && subnet.ends_with(".1/24"), "{subnet}");
        assert!(subnets.insert(subnet.clone()), "duplicate subnet {subnet}");
        // The lease is flannel's udp lease, byte for byte, under a ~24 h etcd lease.
        let key = format!("{PREFIX}/subnets/10.1.{third}.0-24");
        let value = c.etcdctl(&["get", &key, "--print-value-only"]);
        assert_eq!(value.trim(), format!(r#"{{"PublicIP":"192.0.2.{}","PublicIPv6":null}}"#, i + 1));
    }
    for i in 0..3 {
        c.attach_container(i);
    }
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                c.ping(from, to, Duration::from_secs(5)).expect("containers reach each other");
            }
        }
    }

    // A fourth host joins: reachable from all within 2 s, with no restart of the others.
    let idx = c.add_host().expect("add host");
    let d4 = c.start_weft(idx, &[]);
    d4.wait_running();
    c.attach_container(idx);
    let joined = Instant::now();
    for i in 0..3 {
        c.ping(i, idx, Duration::from_secs(2)).expect("new host reachable");
        c.ping(idx, i, Duration::from_secs(2)).expect("new host reaches the others");
    }
    eprintln!("fourth host reachable from all after {:?}", joined.elapsed());
    daemons.push(d4);
    for d in &daemons[..3] {
        assert_eq!(stat(d, "routes"), 3);
    }

    // Host 3 stops and its lease is deleted: it leaves the others' routes within 2 s.
    let gone = daemons.remove(2);
    assert!(gone.stop().success());
    let third = c.subnet_env(2)["FLANNEL_SUBNET"].split('.').nth(2).expect("octet").to_string();
    c.etcdctl(&["del", &format!("{PREFIX}/subnets/10.1.{third}.0-24")]);
    let took = within(Duration::from_secs(2), "route removal", || {
        stat(&daemons[0], "routes") == 2 && stat(&daemons[2], "routes") == 2
    });
    eprintln!("deleted lease left the routes after {took:?}");
    assert!(c.ping(0, 2, Duration::from_millis(500)).is_err());
    c.ping(0, 3, Duration::from_secs(2)).expect("others unaffected");
}
